#!/usr/bin/env bash
# Screenshots of a run's report.html in headless Chromium (Debian's `chromium`), at a desktop and a
# narrow (phone) width, to look at: the page has no scripts, so what Chromium paints is what anyone sees.
#   scripts/report_screenshot.sh RUN_DIR|REPORT.html [OUT_DIR]    → OUT_DIR/report-desktop.png, report-narrow.png
# The report is (re)written first when given a run directory (build/qtrain report).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:?usage: $0 RUN_DIR|REPORT.html [OUT_DIR]}"
out="${2:-.}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[[ -n "$browser" ]] || { echo "no chromium found (apt-get install chromium)" >&2; exit 2; }
if [[ -d "$target" ]]; then
  "${QTRAIN_BINARY:-$here/build/qtrain}" report "$target" >/dev/null
  target="$target/report.html"
fi
mkdir -p "$out"
page="file://$(realpath "$target")"
shot() {  # name width height
  # --no-sandbox: CI containers run as root; --virtual-time-budget lets layout settle without a timer.
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --virtual-time-budget=2000 --window-size="$2,$3" --screenshot="$out/report-$1.png" "$page" >/dev/null 2>&1
  echo "$out/report-$1.png"
}
shot desktop 1280 2400
shot narrow 420 5200
