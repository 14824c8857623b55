#!/usr/bin/env bash
# Builds tansu 0.6.0, the Kafka-API broker of the local lab, with txlab's
# patches to its storage crate (scripts/tansu/*.patch, each explained at
# its top: fetch-by-offset.patch, a fetch walks from its offset instead of
# listing everything the partition holds; fetch-answers-when-found.patch,
# a fetch that found records answers at once instead of waiting out its
# max_wait; fetch-wakes-on-produce.patch, a fetch that found nothing is
# woken by the next produce to one of its topics instead of sleeping out
# its max_wait) and
# installs it as $CARGO_HOME/bin/tansu-0.6.0-txlab4, the
# name the lab looks for. About 15 minutes on 2 cores, once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# The name says which patch it carries: raise txlab<N> with every change
# to the patches (here, in setup.sh, tools.rs and the nightly workflow), so
# that no older build is taken for it.
name=tansu-0.6.0-txlab4
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
EOF
cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml"
for crate in tansu-0.6.0 tansu-storage-0.6.0; do
  archive="$(find "$cargo_home/registry/cache" -name "$crate.crate" -print -quit)"
  [ -n "$archive" ] || { echo "install-tansu: cargo fetched no $crate.crate" >&2; exit 1; }
  tar -xzf "$archive" -C "$work"
done

# The patches, and tansu built against the patched storage crate; every
# other dependency stays at the version tansu's own lock file names.
for patch in "$here"/tansu/*.patch; do
  (cd "$work/tansu-storage-0.6.0" && git apply -p1 "$patch")
done
cat >>"$work/tansu-0.6.0/Cargo.toml" <<'EOF'

[patch.crates-io]
tansu-storage = { path = "../tansu-storage-0.6.0" }
EOF
cargo update --quiet --manifest-path "$work/tansu-0.6.0/Cargo.toml" -p tansu-storage
cargo install --quiet --locked --features dynostore --path "$work/tansu-0.6.0" --root "$work/root"
mkdir -p "$cargo_home/bin"
install -m 0755 "$work/root/bin/tansu" "$cargo_home/bin/$name"
echo "install-tansu: installed $cargo_home/bin/$name"
