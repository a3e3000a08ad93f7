# blobsteer: `make run` starts the local stack, `make test` runs every test.
# Every target installs what it needs first, and only that: scripts/bootstrap has one piece per
# need, each idempotent and quick when done (see its header):
#   rust       Rust targets, clippy, rustfmt       build wasm cli unit lint fuzz ranges, and all below
#   wasm-test  Node.js, wasm-bindgen-test-runner   wasm-test
#   stack      Debian daemons and tools, Envoy     run e2e bench soak image
# A target checks every prerequisite of the pieces it needs before it installs or builds anything.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
PYTHON ?= python3
WASM := target/wasm32-wasip1/release/blobsteer.wasm
CLI := target/release/blobsteer

.PHONY: all bootstrap bootstrap-rust bootstrap-wasm-test bootstrap-stack build wasm cli run test unit wasm-test lint e2e ranges soak bench fuzz image clean

all: build

## bootstrap: every piece at once (what `make test` needs)
bootstrap:
	@scripts/bootstrap rust wasm-test stack

bootstrap-rust:
	@scripts/bootstrap rust

bootstrap-wasm-test:
	@scripts/bootstrap wasm-test

# The stack's targets also build, so Rust's prerequisites are checked with the stack's, up front.
bootstrap-stack:
	@scripts/bootstrap rust stack

build: wasm cli

## wasm: the filter, and the no-op filter `make bench` measures it against
wasm: bootstrap-rust
	$(CARGO) build --release --locked --target wasm32-wasip1 -p blobsteer-wasm -p blobsteer-noop

cli: bootstrap-rust
	$(CARGO) build --release --locked -p blobsteer-cli

## run: the local stack in the foreground (registry, mirrors, Envoy with the filter) until Ctrl-C;
##      FLEET=1: as a fleet (three etcd members, a second Envoy, a balancer; README "Running a fleet");
##      LIVE=1: the filter's configuration from ECDS, swapped without a restart ("Operating it live")
run: bootstrap-stack build
	$(PYTHON) scripts/$(if $(FLEET),fleet,stack).py run $(if $(LIVE),--live)

## image: the filter as an OCI image (one layer with plugin.wasm), pushed to the demo registry
##        of `make run` (or IMAGE_REF=host:port/name:tag); prints the digests to pin
image: bootstrap-stack wasm
	$(PYTHON) scripts/build_plugin_image.py $(if $(IMAGE_REF),--push $(IMAGE_REF))

## test: unit tests natively and on wasm32, lints, then the end-to-end suite with real parts
test: bootstrap lint unit wasm-test e2e

unit: bootstrap-rust
	$(CARGO) test --locked --workspace

wasm-test: bootstrap-wasm-test
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  $(CARGO) test --locked -p blobsteer-core --target wasm32-unknown-unknown

lint: bootstrap-rust
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) clippy --locked -p blobsteer-wasm -p blobsteer-noop --target wasm32-wasip1 -- -D warnings

e2e: bootstrap-stack build
	$(PYTHON) -m unittest discover -s scripts/e2e -v

## ranges: a filter config from provider range files (see scripts/ranges for the variables)
ranges: cli
	scripts/ranges

## bench: micro-benchmarks, startup and memory, blobsteer side by side with Envoy, Lua and nginx;
## writes BENCHMARKS.md (about 10 minutes)
bench: bootstrap-stack build
	scripts/bench/all

## fuzz: every cargo-fuzz target for FUZZ_SECONDS each (default 60), regressions replayed first
fuzz: bootstrap-rust
	scripts/fuzz

## soak: the stack under saturating load for SOAK_SECONDS (default 180), watching Envoy's memory
SOAK_SECONDS ?= 180
soak: bootstrap-stack build
	$(PYTHON) scripts/soak.py --seconds $(SOAK_SECONDS)

clean:
	$(CARGO) clean
	rm -rf .run
