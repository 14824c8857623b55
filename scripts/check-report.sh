#!/usr/bin/env bash
# Loads a report's index.html in headless Chromium and checks what a
# reader would see: every chart the page names loads (the DOM Chromium
# built says so) and a screenshot of the page is a real picture, not an
# empty or broken page. Usage: scripts/check-report.sh reports/<run-id>
# Needs Debian's chromium-headless-shell (or chromium, or Google Chrome as
# GitHub's runners have it); writes
# <report>/screenshot.png.
set -euo pipefail
report=${1:?usage: scripts/check-report.sh reports/<run-id>}
page="$(cd "$report" && pwd)/index.html"
[ -f "$page" ] || { echo "check-report: no index.html in $report" >&2; exit 1; }
browser=$(command -v chromium-headless-shell || command -v chromium || command -v google-chrome || true)
[ -n "$browser" ] || { echo "check-report: install chromium-headless-shell (Debian) first" >&2; exit 1; }
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --run-all-compositor-stages-before-draw)

# Every chart must have decoded: the page marks on its body how many of its
# images have a width once loaded (naturalWidth is 0 for a broken one).
dom=$(timeout 60 "$browser" "${flags[@]}" --virtual-time-budget=5000 --dump-dom "file://$page" 2>/dev/null)
marked=$(grep -o 'data-charts="[0-9]*/[0-9]*"' <<<"$dom" | head -1 | tr -dc '0-9/')
named=$(grep -o '<img src="[^"]*"' "$page" | wc -l)
if [ -z "$marked" ]; then
  echo "check-report: the page did not finish loading in the browser" >&2
  exit 1
fi
if [ "$marked" != "$named/$named" ]; then
  echo "check-report: $marked charts decoded; the page names $named" >&2
  exit 1
fi
echo "check-report: all $named charts decoded"

shot="$report/screenshot.png"
timeout 60 "$browser" "${flags[@]}" --window-size=1280,2400 --screenshot="$shot" "file://$page" 2>/dev/null
size=$(stat -c %s "$shot")
# A page of text only is some tens of KB; with its charts well over 100 KB.
if [ "$size" -lt 100000 ]; then
  echo "check-report: the screenshot is only $size bytes: the charts did not render" >&2
  exit 1
fi
echo "check-report: $shot ($size bytes)"
