#!/usr/bin/env bash
# The nightly comparison on Kubernetes: on a kind cluster that has Chaos
# Mesh, Prometheus, Strimzi's Kafka and CloudNativePG's PostgreSQL
# (.github/workflows/nightly.yml sets them up), builds the images of a
# baseline commit and of this checkout, runs the profile with each as a
# txlab Job inside the cluster (deploy/runner/), and judges the second
# run against the first with `txlab compare`.
#
#   scripts/nightly-k8s.sh <baseline-ref> [profile]
#
# Results land in /tmp/txlab-nightly-k8s/{baseline,current} (mounted into
# the nodes by deploy/kind/cluster.yaml); the report in
# $NIGHTLY_WORK/report-k8s. Exit code: compare's (0, 5 on a regression, 1).
set -euo pipefail

baseline_ref=${1:?usage: scripts/nightly-k8s.sh <baseline-ref> [profile]}
profile=${2:-profiles/nightly.yaml}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${NIGHTLY_WORK:-$repo/target/nightly}
shared=/tmp/txlab-nightly-k8s
mkdir -p "$work"

baseline_src="$work/baseline-src-k8s"
git -C "$repo" worktree remove --force "$baseline_src" 2>/dev/null || true
git -C "$repo" worktree add --detach "$baseline_src" "$baseline_ref"
trap 'git -C "$repo" worktree remove --force "$baseline_src" 2>/dev/null || true' EXIT

# The runner's namespace and rights, and CloudNativePG's superuser URL in it.
kubectl apply -f "$repo/deploy/runner/access.yaml"
admin_url=$(kubectl -n txlab-infra get secret txlab-pg-superuser -o jsonpath='{.data.uri}' | base64 -d)
kubectl -n txlab-runner create secret generic txlab-admin-db --from-literal "url=$admin_url" \
    --dry-run=client -o yaml | kubectl apply -f -

# One run: images built from `src`, loaded into kind, the Job run to its end.
run() {
    local name=$1 src=$2
    echo "nightly-k8s: $name ($(git -C "$src" rev-parse --short HEAD))"
    docker build --target svc -t "txlab-svc:$name" "$src"
    docker build --target cli -t "txlab:$name" "$src"
    kind load docker-image "txlab-svc:$name" "txlab:$name"
    rm -rf "${shared:?}/$name" && mkdir -p "$shared/$name" && chmod 777 "$shared/$name"
    printf 'image:\n  repository: txlab-svc\n  tag: %s\n  pullPolicy: Never\nserviceMonitor:\n  enabled: true\n  labels:\n    release: monitoring\n' "$name" \
        > "$work/values-$name.yaml"
    kubectl -n txlab-runner create configmap txlab-run-values --from-file "values.yaml=$work/values-$name.yaml" \
        --dry-run=client -o yaml | kubectl apply -f -
    kubectl -n txlab-runner delete job txlab-run --ignore-not-found --wait
    sed -e "s/__IMAGE__/txlab:$name/" -e "s|__PROFILE__|$profile|" -e "s|__RESULTS__|/txlab-results/$name|" \
        "$repo/deploy/runner/job.yaml" | kubectl apply -f -
    # Bounded by the Job's own activeDeadlineSeconds (90 min).
    kubectl -n txlab-runner wait job/txlab-run --for=condition=complete --timeout=95m &
    local complete=$!
    kubectl -n txlab-runner wait job/txlab-run --for=condition=failed --timeout=95m &
    local failed=$!
    wait -n "$complete" "$failed" || true
    kill "$complete" "$failed" 2>/dev/null || true
    kubectl -n txlab-runner logs job/txlab-run > "$work/runner-$name.log" || true
    # Exit codes 3 and 4 (violations, thresholds) still leave a run to compare.
    ls -d "$shared/$name"/*/ >/dev/null 2>&1 || { echo "nightly-k8s: $name left no run" >&2; exit 1; }
}
run baseline "$baseline_src"
run current "$repo"

(cd "$repo" && cargo build --release -p txlab-cli --bin txlab)
"$repo/target/release/txlab" compare \
    "$(ls -d "$shared"/baseline/*/)" "$(ls -d "$shared"/current/*/)" \
    --out "$work/report-k8s"
