# The two commands of the README, and what they build on.
CARGO ?= cargo
PROFILE ?= profiles/quick.yaml

.PHONY: setup demo test unit build

# Installs PostgreSQL (apt, when root) and tansu (cargo) if missing.
setup:
	@scripts/setup.sh

# Builds in release mode and runs the quick profile on the embedded local lab.
demo: setup
	$(CARGO) build --release --workspace --bins
	./target/release/txlab run --profile $(PROFILE)

# Unit tests and integration tests (real PostgreSQL and tansu, started by the lab's own code).
test: setup
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

# Only the fast tests that need no database or broker.
unit:
	$(CARGO) test --workspace --lib
