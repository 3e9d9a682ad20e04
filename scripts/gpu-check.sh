#!/usr/bin/env bash
# One-call GPU check, for a bare CUDA machine (nvcc, CMake, ninja, python3 with PyTorch; none of our
# Debian packages; no network): configure + build with CUDA against .deps/gpu-sysroot (made here by
# scripts/gpu-deps.sh and carried along), run the gpu-labelled tests, the GPU benchmarks and the Python
# oracle tests whose modules that python has, and write everything into OUTDIR.
#
# Usage: scripts/gpu-check.sh OUTDIR
#   device tool: command "scripts/gpu-check.sh $OUT", carry [".deps/gpu-sysroot"], timeout_s 600.
# OUTDIR gets at most 8 files (the device tool's limit on what comes back):
#   summary.txt   pass/fail counts per stage, result, commit, date, card, timings
#   machine.txt   nvidia-smi, tool versions, torch, library resolution (ldd), environment
#   configure.log build.log   cmake configure and ninja output
#   ctest-gpu.log ctest-gpu.xml   `ctest -L gpu` output and its JUnit report
#   oracle.log    Python oracle tests that can run with this python (others listed as skipped)
#   bench.log     GPU benchmarks: scripts/bench/*{gpu,cuda}* and *_bench build targets
# Each stage logs and the script goes on where it can; summary.txt is rewritten after every stage, so
# a run cut short still leaves one. Stages share a time budget (QTRAIN_GPU_TIME_BUDGET, default 540 s)
# so the script ends inside the device tool's 600 s limit.
# Exit status: 0 when configure, build and every gpu test passed (and at least one ran); 1 otherwise;
# 2 when OUTDIR is missing.
#
# Environment (defaults suit the GPU machine; the CPU-only simulation in docs/GPU.md overrides some):
#   QTRAIN_PYTHON (python3)   QTRAIN_GPU_BUILD_DIR (build-gpu)   QTRAIN_JOBS (nproc)
#   QTRAIN_CUDA (ON)   QTRAIN_CUDA_ARCHITECTURES (90)   QTRAIN_GPU_SYSROOT (.deps/gpu-sysroot)
#   QTRAIN_GPU_TARGETS (empty = all)   QTRAIN_GPU_LABEL (gpu)   QTRAIN_GPU_ORACLE (1)   QTRAIN_GPU_BENCH (1)
#   QTRAIN_GPU_ALL_SYSROOT_LIBS (0; 1 = load every carried library from the sysroot, not only missing ones)
#   QTRAIN_GPU_CMAKE_ARGS, QTRAIN_GPU_CTEST_ARGS (extra cmake / ctest arguments, word-split)
#   QTRAIN_GPU_TIME_BUDGET (540 s)
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: scripts/gpu-check.sh OUTDIR" >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
mkdir -p "$1" || { echo "gpu-check: cannot create $1" >&2; exit 2; }
OUTDIR=$(cd "$1" && pwd)

T_START=$(date +%s)
BUDGET=${QTRAIN_GPU_TIME_BUDGET:-540}
PY=${QTRAIN_PYTHON:-python3}
PY=$(command -v "$PY" || echo "$PY")
BUILD=${QTRAIN_GPU_BUILD_DIR:-$root/build-gpu}
case "$BUILD" in /*) ;; *) BUILD=$root/$BUILD ;; esac
JOBS=${QTRAIN_JOBS:-$(nproc)}
CUDA_MODE=${QTRAIN_CUDA:-ON}
ARCHS=${QTRAIN_CUDA_ARCHITECTURES:-90}
SYSROOT=${QTRAIN_GPU_SYSROOT:-$root/.deps/gpu-sysroot}
LABEL=${QTRAIN_GPU_LABEL:-gpu}
TRIPLET=x86_64-linux-gnu
SYSLIB=$SYSROOT/usr/lib/$TRIPLET
SUMMARY=$OUTDIR/summary.txt
MACHINE=$OUTDIR/machine.txt

# ---- bookkeeping ----------------------------------------------------------------------------------
declare -A ST=()        # stage -> one-line status
STAGES=(machine sysroot configure deps build "tests($LABEL)" oracle bench)
FAIL_REASONS=()
CARD="unknown"
COMMIT="unknown"

log() { printf '[gpu-check %4ds] %s\n' $(( $(date +%s) - T_START )) "$*"; }
left() { echo $(( BUDGET - ($(date +%s) - T_START) )); }
fail() { FAIL_REASONS+=("$1"); }
write_summary() {
  local result="PASS"
  [ ${#FAIL_REASONS[@]} -gt 0 ] && result="FAIL"
  {
    echo "qtrain gpu-check"
    echo "result:  $result${FAIL_REASONS:+ (${FAIL_REASONS[*]})}"
    echo "commit:  $COMMIT"
    echo "date:    $(date -u +%FT%TZ) (started $(date -u -d @"$T_START" +%T), $(( $(date +%s) - T_START ))s so far)"
    echo "card:    $CARD"
    echo "build:   $BUILD (QTRAIN_CUDA=$CUDA_MODE, archs $ARCHS, -j$JOBS)"
    echo
    local s
    for s in "${STAGES[@]}"; do printf '%-12s %s\n' "$s:" "${ST[$s]:-not reached}"; done
  } > "$SUMMARY"
}
# junit_counts FILE -> "P F S" and the failing names on following lines (python3 of the machine).
junit_counts() {
  python3 - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
except (OSError, ET.ParseError):
    print("0 0 0"); sys.exit(0)
p = f = s = 0; bad = []
for c in cases:
    st = c.get("status", "")
    if st == "run" and c.find("failure") is None and c.find("error") is None: p += 1
    elif st in ("notrun", "disabled") or c.find("skipped") is not None: s += 1
    else: f += 1; bad.append(c.get("name", "?"))
print(p, f, s)
for b in bad: print(b)
PY
}
trap 'write_summary' EXIT
write_summary

# ---- 0. machine ------------------------------------------------------------------------------------
log "machine info -> machine.txt"
if git rev-parse HEAD >/dev/null 2>&1; then
  COMMIT="$(git rev-parse HEAD) ($(git status --porcelain 2>/dev/null | wc -l) uncommitted files)"
elif [ -f "$SYSROOT/README.txt" ]; then
  COMMIT="$(awk '/^commit/ {print $2}' "$SYSROOT/README.txt") (no .git here; commit recorded by gpu-deps.sh,
         $(awk '/^uncommitted_files/ {print $2}' "$SYSROOT/README.txt") uncommitted files then)"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  CARD=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
  [ -n "$CARD" ] || CARD="nvidia-smi failed"
else
  CARD="no nvidia-smi"
fi
[ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ] && export CUDACXX=/usr/local/cuda/bin/nvcc
{
  echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "(nvidia-smi unavailable)"
  echo "== uname"; uname -a; echo "nproc $(nproc)"
  echo "== os"; cat /etc/os-release 2>/dev/null | head -4
  echo "== nvcc"; ${CUDACXX:-nvcc} --version 2>&1 | tail -2
  echo "== c++"; c++ --version 2>&1 | head -1
  echo "== cmake"; cmake --version 2>&1 | head -1
  echo "== ninja"; ninja --version 2>&1
  echo "== python ($PY)"
  "$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
  "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1
  echo "== sysroot"; cat "$SYSROOT/README.txt" 2>&1; du -sh "$SYSROOT" 2>&1
} > "$MACHINE" 2>&1
ST[machine]="card $CARD"
write_summary

# ---- 1. sysroot and library path -------------------------------------------------------------------
# The sysroot's development libraries (those with a lib*.so link) are always loaded from the sysroot;
# their transitive runtime libraries only where this machine lacks the soname (QTRAIN_GPU_ALL_SYSROOT_LIBS=1:
# always). Both go into one folder of links, $BUILD/sysroot-ld, on LD_LIBRARY_PATH and -rpath-link.
LDDIR=$BUILD/sysroot-ld
if [ ! -d "$SYSLIB" ]; then
  ST[sysroot]="MISSING: $SYSROOT (run scripts/gpu-deps.sh here first and carry .deps/gpu-sysroot)"
  fail "no sysroot"
  log "${ST[sysroot]}"
  exit 1
fi
mkdir -p "$BUILD"
rm -rf "$LDDIR"; mkdir -p "$LDDIR"
declare -A ALWAYS=()
for dev in $(find "$SYSLIB" -name 'lib*.so' -type l); do
  so=$(readelf -d "$(readlink -f "$dev")" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
  [ -n "$so" ] && ALWAYS[$so]=1
done
system_sonames=$(ldconfig -p 2>/dev/null | awk '/x86-64/ {print $1}' | sort -u)
n_always=0; fallback=()
for f in $(find "$SYSLIB" -maxdepth 1 -name 'lib*.so.*' \( -type f -o -type l \)); do
  so=$(basename "$f")
  # only soname-named entries (lib*.so.N), not the fully versioned files they point to
  [ "$(readelf -d "$(readlink -f "$f")" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')" = "$so" ] || continue
  if [ -n "${ALWAYS[$so]:-}" ]; then
    ln -sf "$f" "$LDDIR/$so"; n_always=$((n_always + 1))
  elif [ "${QTRAIN_GPU_ALL_SYSROOT_LIBS:-0}" = 1 ] || ! grep -qxF "$so" <<< "$system_sonames"; then
    ln -sf "$f" "$LDDIR/$so"; fallback+=("$so")
  fi
done
export LD_LIBRARY_PATH=$LDDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_LIBDIR=$SYSLIB/pkgconfig:$SYSROOT/usr/share/pkgconfig
unset PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR
PKGCONF=$SYSROOT/usr/bin/pkgconf
if ! "$PKGCONF" --version >/dev/null 2>&1; then
  PKGCONF=$(command -v pkg-config || command -v pkgconf || echo "")
fi
why="missing on this machine"; [ "${QTRAIN_GPU_ALL_SYSROOT_LIBS:-0}" = 1 ] && why="all, QTRAIN_GPU_ALL_SYSROOT_LIBS=1"
ST[sysroot]="$(du -sh "$SYSROOT" | cut -f1); $n_always libraries always from it, ${#fallback[@]} transitive ones ($why): ${fallback[*]:-none}; pkg-config: ${PKGCONF:-NONE}"
{ echo "== LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; ls -l "$LDDIR"; } >> "$MACHINE"
log "sysroot: ${ST[sysroot]}"
write_summary

# ---- 2. configure ---------------------------------------------------------------------------------
torch_prefix=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>>"$MACHINE")
first() { ls -d $1 2>/dev/null | head -1; }  # first match of a glob
export TORCH_CUDA_ARCH_LIST=$(echo "$ARCHS" | tr ';' '\n' | sed -E 's/([0-9]+)([0-9])$/\1.\2/' | paste -sd';')
cmake_args=(
  -S "$root" -B "$BUILD" -G Ninja
  -DCMAKE_BUILD_TYPE=RelWithDebInfo
  -DQTRAIN_CUDA="$CUDA_MODE" -DQTRAIN_CUDA_ARCHITECTURES="$ARCHS"
  -DQTRAIN_PYTHON="$PY" -DQTRAIN_ASAN_TESTS=OFF
  -DCMAKE_PREFIX_PATH="$torch_prefix;$SYSROOT/usr"
  -DCMAKE_INCLUDE_PATH="$SYSROOT/usr/include"
  -DCMAKE_LIBRARY_PATH="$SYSLIB"
  -DBoost_DIR="$(first "$SYSLIB/cmake/Boost-*")"
  -Dboost_headers_DIR="$(first "$SYSLIB/cmake/boost_headers-*")"
  -Dboost_program_options_DIR="$(first "$SYSLIB/cmake/boost_program_options-*")"
  -DBoost_NO_SYSTEM_PATHS=ON
  -DGTest_DIR="$SYSLIB/cmake/GTest"
  -Dnlohmann_json_DIR="$SYSROOT/usr/share/cmake/nlohmann_json"
  -Dyaml-cpp_DIR="$SYSLIB/cmake/yaml-cpp"
  -DHDF5_ROOT="$SYSLIB/hdf5/serial"
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$LDDIR"
)
[ -n "$PKGCONF" ] && cmake_args+=(-DPKG_CONFIG_EXECUTABLE="$PKGCONF")
[ -n "${CUDACXX:-}" ] && cmake_args+=(-DCMAKE_CUDA_COMPILER="$CUDACXX")
# shellcheck disable=SC2206
[ -n "${QTRAIN_GPU_CMAKE_ARGS:-}" ] && cmake_args+=(${QTRAIN_GPU_CMAKE_ARGS})
log "configure -> configure.log"
t=$(date +%s)
rm -f "$BUILD/CMakeCache.txt"
{ echo "+ cmake ${cmake_args[*]}"; echo "+ TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST PKG_CONFIG_LIBDIR=$PKG_CONFIG_LIBDIR"; } > "$OUTDIR/configure.log"
timeout $(( $(left) > 60 ? $(left) : 60 )) cmake "${cmake_args[@]}" >> "$OUTDIR/configure.log" 2>&1
rc=$?
if [ $rc -eq 0 ]; then
  ST[configure]="ok ($(( $(date +%s) - t ))s; $(grep -o 'CUDA kernels [A-Z]*' "$OUTDIR/configure.log" | head -1))"
else
  ST[configure]="FAILED rc=$rc ($(( $(date +%s) - t ))s): $(grep -m1 -A2 'CMake Error' "$OUTDIR/configure.log" | tr '\n' ' ' | cut -c1-300)"
  fail "configure"
fi
log "configure: ${ST[configure]}"
write_summary

# ---- 3. where each dependency resolved (must be the sysroot) ---------------------------------------
if [ -f "$BUILD/CMakeCache.txt" ]; then
  outside=()
  while IFS= read -r line; do
    var=${line%%:*}; val=${line#*=}
    case "$val" in ""|*NOTFOUND*) continue ;; esac
    for v in ${val//;/ }; do
      case "$v" in "$SYSROOT"*|-*) ;; *) outside+=("$var=$v") ;; esac
    done
  done < <(grep -E '^(Boost_DIR|boost_[a-z_]+_DIR|GTest_DIR|nlohmann_json_DIR|yaml-cpp_DIR|HDF5_C_INCLUDE_DIR|HDF5_hdf5_LIBRARY_RELEASE|HDF5_C_LIBRARY_[a-z0-9_]+|pkgcfg_lib_(SENTENCEPIECE|PCRE2)_[a-z0-9_-]+|(SENTENCEPIECE|PCRE2)_INCLUDE_DIRS):' "$BUILD/CMakeCache.txt")
  for v in SENTENCEPIECE_INCLUDEDIR PCRE2_INCLUDEDIR SENTENCEPIECE_LIBDIR PCRE2_LIBDIR; do
    val=$(sed -n "s/^${v}:INTERNAL=//p" "$BUILD/CMakeCache.txt")
    [ -n "$val" ] && case "$val" in "$SYSROOT"*) ;; *) outside+=("$v=$val") ;; esac
  done
  { echo "== dependency resolution (CMakeCache)"
    grep -E '^(Boost_DIR|boost_[a-z_]+_DIR|GTest_DIR|nlohmann_json_DIR|yaml-cpp_DIR|HDF5_[A-Za-z_]+(DIR|LIBRARY[A-Z_]*|hdf5[A-Z_]*)|pkgcfg_lib_[A-Za-z0-9_-]+|(SENTENCEPIECE|PCRE2)_(INCLUDEDIR|LIBDIR)):' "$BUILD/CMakeCache.txt"
  } >> "$MACHINE"
  if [ ${#outside[@]} -eq 0 ]; then
    ST[deps]="all of Boost, GTest, nlohmann_json, yaml-cpp, HDF5, sentencepiece, PCRE2 resolved into the sysroot"
  else
    ST[deps]="resolved OUTSIDE the sysroot (works here, but not a bare machine): ${outside[*]}"
  fi
else
  ST[deps]="no CMakeCache.txt"
fi
log "deps: ${ST[deps]}"
write_summary

# ---- 4. build ---------------------------------------------------------------------------------------
build_ok=0
if [ -f "$BUILD/build.ninja" ]; then
  # shellcheck disable=SC2206
  targets=(${QTRAIN_GPU_TARGETS:-})
  log "build ${targets[*]:-all} -j$JOBS -> build.log"
  t=$(date +%s)
  timeout $(( $(left) - 120 > 60 ? $(left) - 120 : 60 )) ninja -C "$BUILD" -j "$JOBS" -k 0 "${targets[@]}" > "$OUTDIR/build.log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t ))
  if [ $rc -eq 0 ]; then
    build_ok=1
    ST[build]="ok (${dt}s, $(grep -c '^\[' "$OUTDIR/build.log") steps)"
  else
    [ $rc -eq 124 ] && why="TIMED OUT" || why="FAILED rc=$rc"
    ST[build]="$why (${dt}s): $(grep -m1 -E 'error|FAILED' "$OUTDIR/build.log" | cut -c1-300)"
    fail "build"
  fi
  # Keep build.log under the 16 MiB a returned file may have.
  [ "$(stat -c %s "$OUTDIR/build.log")" -gt 15000000 ] && { tail -c 15000000 "$OUTDIR/build.log" > "$OUTDIR/build.log.t"; mv "$OUTDIR/build.log.t" "$OUTDIR/build.log"; }
  # Run-time resolution of the built programs and of the carried libraries themselves (their
  # transitive dependencies: the sysroot's copy or this machine's own).
  lddout=$(for b in "$BUILD/qtrain" "$BUILD"/tests/*_tests "$BUILD/tests/nf4_tool" "$LDDIR"/*; do
      [ -e "$b" ] || continue
      echo "-- ${b#$BUILD/}"
      ldd "$b" 2>&1 | grep -vE 'torch|libc10|nvidia|cuda|linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.|librt\.|libutil' | sed 's/ (0x.*//'
    done)
  { echo "== ldd (libraries not from torch, CUDA or glibc)"; echo "$lddout"; } >> "$MACHINE"
  # Headers of the carried libraries must all have come from the sysroot (a machine with the Debian
  # packages would silently fall back to /usr/include for one the sysroot lacks, e.g. a pruned Boost header).
  leaked=$(ninja -C "$BUILD" -t deps 2>/dev/null | grep -oE '^ +/usr/include/(boost|gtest|gmock|yaml-cpp|nlohmann|hdf5|sentencepiece|pcre2)[^ ]*' | sort -u)
  { echo "== headers of carried libraries taken from /usr/include (should be none)"; echo "${leaked:-none}"; } >> "$MACHINE"
  if [ -n "$leaked" ]; then
    ST[deps]+="; HEADERS from /usr/include: $(echo "$leaked" | wc -l) (list in machine.txt)"
  fi
  if grep -q "not found" <<< "$lddout"; then
    ST[build]+="; UNRESOLVED libraries at run time: $(grep 'not found' <<< "$lddout" | awk '{print $1}' | sort -u | tr '\n' ' ')"
  fi
else
  ST[build]="skipped (not configured)"
  fail "build"
fi
log "build: ${ST[build]}"
write_summary

# ---- 5. ctest -L gpu --------------------------------------------------------------------------------
if [ -f "$BUILD/CTestTestfile.cmake" ]; then
  log "ctest -L $LABEL -> ctest-$LABEL.log"
  t=$(date +%s)
  xml=$OUTDIR/ctest-$LABEL.xml
  timeout $(( $(left) - 60 > 30 ? $(left) - 60 : 30 )) \
    ctest --test-dir "$BUILD" -L "$LABEL" -LE slow --output-on-failure --timeout 300 -j 4 \
      --output-junit "$xml" ${QTRAIN_GPU_CTEST_ARGS:-} > "$OUTDIR/ctest-$LABEL.log" 2>&1
  rc=$?
  read -r p f s < <(junit_counts "$xml" | head -1)
  failed=$(junit_counts "$xml" | tail -n +2 | tr '\n' ' ')
  ST["tests($LABEL)"]="$p passed, $f failed, $s skipped (ctest rc $rc, $(( $(date +%s) - t ))s)${failed:+; failed: $failed}"
  if [ "$rc" -ne 0 ] || [ "$f" -gt 0 ]; then fail "$LABEL tests"
  elif [ "$p" -eq 0 ]; then fail "no $LABEL test ran"; fi
  if [ "$LABEL" = gpu ] && [ "$s" -gt 0 ] && [[ "$CARD" != no* ]]; then
    ST["tests($LABEL)"]+="; WARNING: gpu tests skipped although nvidia-smi sees a card"
  fi
else
  ST["tests($LABEL)"]="skipped (no CTestTestfile.cmake)"
  fail "$LABEL tests"
fi
log "tests: ${ST["tests($LABEL)"]}"
write_summary

# ---- 6. Python oracle tests whose imports this python has --------------------------------------------
# A file runs only when every module it imports at top level (or via pytest.importorskip) is importable;
# the rest are listed with what is missing. Informational: they do not change the exit status (this
# machine's Python packages are not the versions pinned in scripts/requirements.txt).
importable() {  # importable FILE -> prints missing modules (empty when all importable)
  "$PY" - "$1" <<'PY'
import ast, importlib.util, sys
src = open(sys.argv[1]).read()
mods = set()
for node in ast.parse(src).body:
    if isinstance(node, ast.Import):
        mods.update(a.name.split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        mods.add(node.module.split(".")[0])
for node in ast.walk(ast.parse(src)):
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip" and node.args \
            and isinstance(node.args[0], ast.Constant):
        mods.add(node.args[0].value.split(".")[0])
print(" ".join(sorted(m for m in mods if importlib.util.find_spec(m) is None)))
PY
}
if [ "${QTRAIN_GPU_ORACLE:-1}" != 1 ]; then
  ST[oracle]="skipped (QTRAIN_GPU_ORACLE=${QTRAIN_GPU_ORACLE})"
elif [ "$build_ok" != 1 ] || [ ! -x "$BUILD/qtrain" ]; then
  ST[oracle]="skipped (build incomplete)"
elif [ "$(left)" -lt 90 ]; then
  ST[oracle]="skipped (time budget: $(left)s left)"
else
  run=(); skipped=()
  for t in tests/oracle/test_*.py; do
    n=$(basename "$t" .py)
    case "$n" in *_slow) skipped+=("$n(slow)"); continue ;; esac
    miss=$(importable "$t" 2>/dev/null)
    if [ -z "$miss" ]; then run+=("$n"); else skipped+=("$n(missing ${miss// /,})"); fi
  done
  {
    echo "runnable: ${run[*]:-none}"; echo "skipped:  ${skipped[*]:-none}"
    "$PY" -c 'import importlib.metadata as m
for p in ("torch","transformers","tokenizers","safetensors","sentencepiece","bitsandbytes","numpy","pytest"):
    try: print(p, m.version(p))
    except Exception: print(p, "not installed")' 2>&1
  } > "$OUTDIR/oracle.log"
  if [ ${#run[@]} -gt 0 ]; then
    re="^oracle\\.($(IFS='|'; echo "${run[*]}"))\$"
    log "oracle: ${run[*]} -> oracle.log"
    t=$(date +%s)
    junit=$BUILD/ctest-oracle.xml
    timeout $(( $(left) - 45 > 30 ? $(left) - 45 : 30 )) \
      ctest --test-dir "$BUILD" -R "$re" --output-on-failure --timeout 300 --output-junit "$junit" >> "$OUTDIR/oracle.log" 2>&1
    rc=$?
    read -r p f s < <(junit_counts "$junit" | head -1)
    ST[oracle]="$p passed, $f failed, $s skipped of ${#run[@]} runnable files (rc $rc, $(( $(date +%s) - t ))s); not run: ${skipped[*]:-none}"
  else
    ST[oracle]="none runnable; not run: ${skipped[*]}"
  fi
fi
log "oracle: ${ST[oracle]}"
write_summary

# ---- 7. GPU benchmarks -------------------------------------------------------------------------------
# A GPU benchmark is a file scripts/bench/*gpu* or *cuda* (the others are CPU benchmarks with their own
# arguments, listed as not run), run as `FILE BUILD_DIR` with QTRAIN_BINARY, QTRAIN_NF4_TOOL and
# QTRAIN_BUILD_DIR set, python ones only when their imports are available; or an executable *_bench in
# the build tree, run with no arguments. Each gets at most 120 s.
if [ "${QTRAIN_GPU_BENCH:-1}" != 1 ]; then
  ST[bench]="skipped (QTRAIN_GPU_BENCH=${QTRAIN_GPU_BENCH})"
elif [ "$build_ok" != 1 ]; then
  ST[bench]="skipped (build incomplete)"
else
  : > "$OUTDIR/bench.log"
  ran=(); notrun=(); bfail=()
  export QTRAIN_BINARY=$BUILD/qtrain QTRAIN_NF4_TOOL=$BUILD/tests/nf4_tool QTRAIN_BUILD_DIR=$BUILD
  benches=()
  for b in scripts/bench/*; do [ -f "$b" ] && benches+=("$b"); done
  while IFS= read -r b; do benches+=("$b"); done < <(find "$BUILD" -maxdepth 3 -type f -executable -name '*_bench' 2>/dev/null | sort)
  for b in "${benches[@]}"; do
    n=$(basename "$b")
    case "$b" in "$BUILD"/*) ;; *gpu*|*cuda*) ;; *) notrun+=("$n(cpu)"); continue ;; esac
    if [ "$(left)" -lt 40 ]; then notrun+=("$n(time)"); continue; fi
    case "$n" in
      *.py) miss=$(importable "$b" 2>/dev/null)
            if [ -n "$miss" ]; then notrun+=("$n(missing ${miss// /,})"); continue; fi
            cmd=("$PY" "$b" "$BUILD") ;;
      *.sh) cmd=(bash "$b" "$BUILD") ;;
      *) [ -x "$b" ] || { notrun+=("$n(not executable)"); continue; }
         case "$b" in "$BUILD"/*) cmd=("$b") ;; *) cmd=("$b" "$BUILD") ;; esac ;;
    esac
    echo "===== $n: ${cmd[*]}" >> "$OUTDIR/bench.log"
    t=$(date +%s)
    timeout $(( $(left) - 30 < 120 ? $(left) - 30 : 120 )) env PYTHONUNBUFFERED=1 "${cmd[@]}" >> "$OUTDIR/bench.log" 2>&1
    rc=$?
    echo "===== $n: rc $rc, $(( $(date +%s) - t ))s" >> "$OUTDIR/bench.log"
    if [ $rc -eq 0 ]; then ran+=("$n"); else bfail+=("$n(rc $rc)"); fi
  done
  ST[bench]="${#ran[@]} ran ok${ran:+ (${ran[*]})}, ${#bfail[@]} failed${bfail:+ (${bfail[*]})}; not run: ${notrun[*]:-none}"
  echo "not run: ${notrun[*]:-none}" >> "$OUTDIR/bench.log"
fi
log "bench: ${ST[bench]}"

write_summary
log "done: $(head -2 "$SUMMARY" | tail -1)"
cat "$SUMMARY"
[ ${#FAIL_REASONS[@]} -eq 0 ]
