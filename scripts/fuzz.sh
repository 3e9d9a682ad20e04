#!/usr/bin/env bash
# libFuzzer harnesses (tests/fuzz/) for every parser of outside input, with ASan + UBSan: builds them
# with clang into build-fuzz/ (a CMake project of its own: the main build uses g++), makes the seed
# corpora from ../shared/data and recipes/, then runs each harness for a while over its seeds, the
# corpus earlier runs grew, and the committed inputs of fixed bugs (tests/fuzz/regressions/<name>/).
# A crash, a sanitizer report, a leak, a hang (> 10 s on one input) or an undocumented exception fails
# the run; the input is kept in build-fuzz/artifacts/<name>/ (replay: build-fuzz/<harness> FILE).
#
# Usage: scripts/fuzz.sh [--time SECONDS] [--build-only] [--no-build] [HARNESS...]
#   --time S      seconds per harness (default 10; docs/FUZZING.md records the long runs)
#   --build-only  configure, build and make the seeds only (ctest's fuzz.build fixture)
#   --no-build    run what is built (ctest's fuzz.<harness> tests)
#   HARNESS       e.g. hf_config or fuzz_hf_config; default: every harness that was built
# Environment: QTRAIN_FUZZ_BUILD_DIR (default build-fuzz), QTRAIN_JOBS, QTRAIN_FUZZ_ARGS (extra
# libFuzzer flags, e.g. "-jobs=2 -workers=2").
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
. scripts/env.sh

secs=10 build=1 run=1 names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) secs=$2; shift ;;
    --build-only) run=0 ;;
    --no-build) build=0 ;;
    -*) echo "fuzz.sh: unknown option '$1'" >&2; exit 2 ;;
    *) names+=("fuzz_${1#fuzz_}") ;;
  esac
  shift
done
B=${QTRAIN_FUZZ_BUILD_DIR:-$root/build-fuzz}
shared=$root/../shared/data

if [ "$build" = 1 ]; then
  command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (scripts/setup.sh installs clang)" >&2; exit 1; }
  torch_dir=""
  if [ -x "$QTRAIN_VENV/bin/python" ]; then
    torch_dir=$("$QTRAIN_VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null || true)
  fi
  mkdir -p "$B"
  launcher=""; command -v ccache >/dev/null && launcher="-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
  cmake -S tests/fuzz -B "$B" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ $launcher \
    -DQTRAIN_TORCH_DIR="$torch_dir" > "$B/configure.log" 2>&1 || { cat "$B/configure.log"; exit 1; }
  cmake --build "$B" -j "${QTRAIN_JOBS:-$(nproc)}" > "$B/build.log" 2>&1 || { tail -n 40 "$B/build.log"; exit 1; }
  # Seeds are rebuilt every time from the real files (never copied into the repository).
  rm -rf "$B/seeds"
  if [ -d "$shared" ]; then
    python3 tests/fuzz/make_seeds.py "$shared" "$root" "$B/seeds"
  else
    echo "fuzz.sh: $shared is absent; seeds from recipes/ and the writers only" >&2
    python3 tests/fuzz/make_seeds.py "$B/no-shared-data" "$root" "$B/seeds"
  fi
  # The HDF5 harnesses write their seeds through qtrain's own writers.
  for h in fuzz_token_cache fuzz_trainer_state; do
    [ -x "$B/$h" ] && QTRAIN_FUZZ_MAKE_SEEDS="$B/seeds/${h#fuzz_}" "$B/$h" > "$B/seeds-$h.log" 2>&1
  done
  echo "[fuzz] built $(ls "$B"/fuzz_* | wc -l) harnesses in $B; seeds in $B/seeds"
fi
[ "$run" = 1 ] || exit 0

if [ ${#names[@]} -eq 0 ]; then
  for f in "$B"/fuzz_*; do [ -x "$f" ] && [ -f "$f" ] && names+=("$(basename "$f")"); done
fi
[ ${#names[@]} -gt 0 ] || { echo "fuzz.sh: nothing built in $B (run without --no-build)" >&2; exit 1; }

failed=0
for h in "${names[@]}"; do
  name=${h#fuzz_}
  [ -x "$B/$h" ] || { echo "fuzz.sh: $B/$h is not built" >&2; failed=1; continue; }
  corpus=$B/corpus/$name artifacts=$B/artifacts/$name/ tmp=$B/tmp/$name
  mkdir -p "$corpus" "$artifacts" "$B/seeds/$name" "$B/logs"
  rm -rf "$tmp"; mkdir -p "$tmp"
  dirs=("$corpus" "$B/seeds/$name")
  [ -d "tests/fuzz/regressions/$name" ] && dirs+=("tests/fuzz/regressions/$name")
  log=$B/logs/$name.log
  budget=(-max_total_time="$secs")
  set +e
  # The first directory collects what the run finds; seeds and regressions are only read.
  TMPDIR=$tmp ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1} \
  LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$B/$h" "${budget[@]}" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
    -artifact_prefix="$artifacts" ${QTRAIN_FUZZ_ARGS:-} "${dirs[@]}" > "$log" 2>&1
  rc=$?
  set -e
  rm -rf "$tmp"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
  if [ "$rc" = 0 ]; then
    echo "[fuzz] $name: ok, ${execs:-?} executions in ${secs}s, ${cov:-cov ?}, corpus $(ls "$corpus" | wc -l) files"
  else
    failed=1
    echo "[fuzz] $name: FAILED (exit $rc); log $log, input in $artifacts"
    grep -E '==qtrain-fuzz==|ERROR: |SUMMARY: |runtime error|exception type|message:' "$log" | head -n 12 | sed 's/^/    /'
  fi
done
exit $failed
