#!/usr/bin/env bash
# The nightly comparison on Kubernetes: on a kind cluster that has Chaos
# Mesh, Prometheus, Strimzi's Kafka and CloudNativePG's PostgreSQL
# (.github/workflows/nightly.yml sets them up), builds the images of a
# baseline commit and of this checkout, runs the profile with each inside
# the cluster (`txlab run --target k8s --in-cluster`, deploy/runner/), and
# judges the second run against the first with `txlab compare`.
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

(cd "$repo" && cargo build --release -p txlab-cli --bin txlab)
txlab="$repo/target/release/txlab"
# CloudNativePG's superuser, which may create the services' databases.
admin_url=$(kubectl -n txlab-infra get secret txlab-pg-superuser -o jsonpath='{.data.uri}' | base64 -d)
# Its URI names the database `*` (any); connect to `postgres`.
admin_url="${admin_url%/\*}/postgres"

# One run: images built from `src`, loaded into kind, run inside the cluster.
run() {
    local name=$1 src=$2
    echo "nightly-k8s: $name ($(git -C "$src" rev-parse --short HEAD))"
    docker build --target svc -t "txlab-svc:$name" "$src"
    docker build --target cli -t "txlab:$name" "$src"
    kind load docker-image --name txlab "txlab-svc:$name" "txlab:$name"
    rm -rf "${shared:?}/$name" && mkdir -p "$shared/$name" && chmod 777 "$shared/$name"
    printf 'image:\n  repository: txlab-svc\n  tag: %s\n  pullPolicy: Never\nserviceMonitor:\n  enabled: true\n  labels:\n    release: monitoring\n' \
        "$name" > "$work/values-$name.yaml"
    # Exit codes 3 and 4 (violations, thresholds) still leave a run to compare.
    (cd "$repo" && "$txlab" run --target k8s --in-cluster "txlab:$name" --profile "$profile" \
        --results-host-path "/txlab-results/$name" --values "$work/values-$name.yaml" \
        --database-url "$admin_url" --kafka-brokers txlab-kafka-kafka-bootstrap.txlab-infra.svc:9092 \
        --prometheus-url http://monitoring-kube-prometheus-prometheus.monitoring.svc:9090) \
        > "$work/runner-$name.log" || true
    ls -d "$shared/$name"/*/ >/dev/null 2>&1 || { echo "nightly-k8s: $name left no run" >&2; cat "$work/runner-$name.log" >&2; exit 1; }
}
run baseline "$baseline_src"
run current "$repo"

"$txlab" compare "$(ls -d "$shared"/baseline/*/)" "$(ls -d "$shared"/current/*/)" --out "$work/report-k8s"
