#!/usr/bin/env bash
# Look at a validation report as a reader will: a full-page screenshot of REPORT/index.html in
# headless Chromium (Debian: apt-get install chromium). Writes REPORT/screenshot.png unless
# OUT is given.
#   bash validation/screenshot.sh runs/smoke/report_all [OUT.png] [WIDTH] [HEIGHT]
set -euo pipefail
REPORT=${1:?usage: bash validation/screenshot.sh REPORT_DIR [OUT.png] [WIDTH] [HEIGHT]}
OUT=${2:-$REPORT/screenshot.png}
WIDTH=${3:-1400}
HEIGHT=${4:-7000}
test -f "$REPORT/index.html" || { echo "Error: $REPORT/index.html: no report there" >&2; exit 2; }
BROWSER=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
test -n "$BROWSER" || { echo "Error: no Chromium found (Debian: apt-get install chromium)" >&2
                        exit 2; }
PAGE=$(cd "$(dirname "$REPORT/index.html")" && pwd)/index.html
"$BROWSER" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size="$WIDTH,$HEIGHT" --screenshot="$OUT" "file://$PAGE" > /dev/null 2>&1
echo "screenshot: $OUT (${WIDTH}x${HEIGHT} pixels; the page's blank end is part of it)"
