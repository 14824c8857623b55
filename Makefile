# The two commands of the README, and what they build on.
CARGO ?= cargo
PROFILE ?= profiles/quick.yaml
# helm for the chart's tests: TXLAB_HELM, helm on PATH, or the one setup installs.
HELM = $${TXLAB_HELM:-$$(command -v helm || echo $(CURDIR)/.txlab/tools/bin/helm)}

.PHONY: setup demo test unit lint build

# Installs PostgreSQL (apt, when root) and tansu (cargo) if missing.
setup:
	@scripts/setup.sh

# Builds in release mode and runs the quick profile on the embedded local lab.
demo: setup
	$(CARGO) build --release --workspace --bins
	./target/release/txlab run --profile $(PROFILE)

# Formatting and lints, then unit tests and integration tests (real
# PostgreSQL and tansu, started by the lab's own code).
test: setup lint
	$(CARGO) build --workspace --bins
	TXLAB_HELM="$(HELM)" $(CARGO) test --workspace --no-fail-fast

# One formatting (rustfmt.toml) and no clippy warnings.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Only the fast tests that need no database or broker.
unit:
	$(CARGO) test --workspace --lib
