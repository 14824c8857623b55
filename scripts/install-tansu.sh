#!/usr/bin/env bash
# Builds tansu 0.6.0, the Kafka-API broker of the local lab, with txlab's
# patches to two of its crates, scripts/tansu/<crate>/*.patch for the
# crate tansu-<crate>, each explained at its top:
#  - storage/fetch-by-offset.patch: a fetch walks from its offset instead
#    of listing everything the partition holds;
#  - storage/fetch-answers-when-found.patch: a fetch that found records
#    answers at once instead of waiting out its max_wait;
#  - storage/fetch-stops-at-a-hole.patch: a fetch never answers past a
#    batch that is not stored yet, nor with only the batch before it;
#  - storage/fetch-wakes-on-produce.patch: a fetch that found nothing is
#    woken by the next produce to one of its topics instead of sleeping
#    out its max_wait;
#  - service/frames-on-the-worker.patch: requests are decoded and
#    responses encoded where they are handled, not on the blocking pool;
# and installs it as $CARGO_HOME/bin/tansu-0.6.0-txlab6, the
# name the lab looks for. About 15 minutes on 2 cores, once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# The name says which patch it carries: raise txlab<N> with every change
# to the patches (here, in setup.sh, tools.rs and the nightly workflow), so
# that no older build is taken for it.
name=tansu-0.6.0-txlab6
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The published sources, fetched by cargo for a throwaway manifest.
mkdir -p "$work/fetch/src"
echo 'fn main() {}' >"$work/fetch/src/main.rs"
cat >"$work/fetch/Cargo.toml" <<'EOF'
[package]
name = "fetch-tansu-sources"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tansu = { version = "=0.6.0", default-features = false }
tansu-storage = { version = "=0.6.0", default-features = false }
tansu-service = { version = "=0.6.0", default-features = false }
EOF
cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml"
patched=()
for dir in "$here"/tansu/*/; do
  patched+=("tansu-$(basename "$dir")")
done
for crate in tansu-0.6.0 "${patched[@]/%/-0.6.0}"; do
  archive="$(find "$cargo_home/registry/cache" -name "$crate.crate" -print -quit)"
  [ -n "$archive" ] || { echo "install-tansu: cargo fetched no $crate.crate" >&2; exit 1; }
  tar -xzf "$archive" -C "$work"
done

# The patches, and tansu built against the patched crates; every other
# dependency stays at the version tansu's own lock file names.
printf '\n[patch.crates-io]\n' >>"$work/tansu-0.6.0/Cargo.toml"
for crate in "${patched[@]}"; do
  for patch in "$here/tansu/${crate#tansu-}"/*.patch; do
    (cd "$work/$crate-0.6.0" && git apply -p1 "$patch")
  done
  echo "$crate = { path = \"../$crate-0.6.0\" }" >>"$work/tansu-0.6.0/Cargo.toml"
done
cargo update --quiet --manifest-path "$work/tansu-0.6.0/Cargo.toml" "${patched[@]/#/--package=}"
cargo install --quiet --locked --features dynostore --path "$work/tansu-0.6.0" --root "$work/root"
mkdir -p "$cargo_home/bin"
install -m 0755 "$work/root/bin/tansu" "$cargo_home/bin/$name"
echo "install-tansu: installed $cargo_home/bin/$name"
