#!/usr/bin/env bash
# The whole test suite: set-up if needed (scripts/setup.sh is idempotent), build, then ctest runs the
# GoogleTest binaries and the Python oracle tests. Ends with one summary line.
# Usage: scripts/test.sh [ctest args...]   e.g. scripts/test.sh -L oracle    scripts/test.sh -LE slow
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
. scripts/env.sh

t0=$(date +%s)
scripts/setup.sh
echo "[test] running ctest in $QTRAIN_BUILD_DIR"
junit="$QTRAIN_BUILD_DIR/ctest-results.xml"
rm -f "$junit"
# ctest runs tests side by side, each with libtorch's OpenMP pool of nproc threads: more threads than
# cores. Spinning idle OpenMP workers then burn the cores the other tests need (docs/PERFORMANCE.md:
# half the samples of a loaded 2-core run); passive workers sleep instead. libgomp reads the variable
# when it loads, so it is set here for every test process (and the Python oracles' torch).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
set +e
ctest --test-dir "$QTRAIN_BUILD_DIR" -j "${QTRAIN_JOBS:-$(nproc)}" --output-on-failure --timeout 1800 \
  --output-junit "$junit" "$@"
rc=$?
set -e
# One closing line in the plain 'N passed, N failed, N skipped' form, from ctest's JUnit report.
python3 - "$junit" "$(( $(date +%s) - t0 ))" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
except (OSError, ET.ParseError):
    print("tests: 0 passed, 1 failed (no ctest report)"); sys.exit(0)
p = f = s = 0
for c in cases:
    st = c.get("status", "")
    if st == "run" and c.find("failure") is None: p += 1
    elif st in ("notrun", "disabled") or c.find("skipped") is not None: s += 1
    else: f += 1
print(f"[test] finished in {sys.argv[2]}s")
print(f"tests: {p} passed, {f} failed, {s} skipped")
PY
exit $rc
