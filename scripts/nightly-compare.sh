#!/usr/bin/env bash
# Runs one profile with a baseline commit and with this checkout, one after
# the other on the same machine (so hardware differences cancel out), and
# judges the second against the first with `txlab compare`.
#
#   scripts/nightly-compare.sh <baseline-ref> [profile]
#
# Both runs use this checkout's profile, scenarios and chaos files. The
# report lands in $NIGHTLY_WORK/report (comparison.md, comparison.csv);
# the exit code is compare's: 0 no regression, 5 a regression, 1 an error.
set -euo pipefail

baseline_ref=${1:?usage: scripts/nightly-compare.sh <baseline-ref> [profile]}
profile=${2:-profiles/nightly.yaml}
repo=$(cd "$(dirname "$0")/.." && pwd)
case $profile in /*) ;; *) profile="$repo/$profile" ;; esac
work=${NIGHTLY_WORK:-$repo/target/nightly}
export CARGO_TERM_COLOR=never

rm -rf "$work/results-baseline" "$work/results-current" "$work/report"
mkdir -p "$work"
baseline_src="$work/baseline-src"
git -C "$repo" worktree remove --force "$baseline_src" 2>/dev/null || true
git -C "$repo" worktree add --detach "$baseline_src" "$baseline_ref"
trap 'git -C "$repo" worktree remove --force "$baseline_src" 2>/dev/null || true' EXIT

echo "nightly: building the baseline ($(git -C "$baseline_src" rev-parse --short HEAD))"
(cd "$baseline_src" && CARGO_TARGET_DIR="$work/baseline-target" cargo build --release --workspace --bins)
echo "nightly: building the current checkout ($(git -C "$repo" rev-parse --short HEAD))"
(cd "$repo" && cargo build --release --workspace --bins)

# A run that finds violations or breaks thresholds exits 3 or 4: still
# compared, and compare flags what got worse.
run() {
    local binary=$1 results=$2
    "$binary" run --profile "$profile" --scenarios "$repo/scenarios" --results "$results" || {
        local status=$?
        if [ "$status" -ne 3 ] && [ "$status" -ne 4 ]; then
            echo "nightly: $binary run failed ($status)" >&2
            exit 1
        fi
    }
}
run "$work/baseline-target/release/txlab" "$work/results-baseline"
run "$repo/target/release/txlab" "$work/results-current"

"$repo/target/release/txlab" compare \
    "$(ls -d "$work"/results-baseline/*/)" "$(ls -d "$work"/results-current/*/)" \
    --out "$work/report"
