# blobsteer: `make run` starts the local stack, `make test` runs every test.
# Every target installs what it needs first (scripts/bootstrap is idempotent and quick when done).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
PYTHON ?= python3
WASM := target/wasm32-wasip1/release/blobsteer.wasm
CLI := target/release/blobsteer

.PHONY: all bootstrap build wasm cli run test unit wasm-test lint e2e ranges soak bench fuzz clean

all: build

bootstrap:
	@scripts/bootstrap

build: wasm cli

## wasm: the filter, and the no-op filter `make bench` measures it against
wasm: bootstrap
	$(CARGO) build --release --locked --target wasm32-wasip1 -p blobsteer-wasm -p blobsteer-noop

cli: bootstrap
	$(CARGO) build --release --locked -p blobsteer-cli

## run: the local stack in the foreground (registry, mirrors, Envoy with the filter) until Ctrl-C
run: build
	$(PYTHON) scripts/stack.py run

## test: unit tests natively and on wasm32, lints, then the end-to-end suite with real parts
test: lint unit wasm-test e2e

unit: bootstrap
	$(CARGO) test --locked --workspace

wasm-test: bootstrap
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  $(CARGO) test --locked -p blobsteer-core --target wasm32-unknown-unknown

lint: bootstrap
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) clippy --locked -p blobsteer-wasm -p blobsteer-noop --target wasm32-wasip1 -- -D warnings

e2e: build
	$(PYTHON) -m unittest discover -s scripts/e2e -v

## ranges: a filter config from provider range files (see scripts/ranges for the variables)
ranges: cli
	scripts/ranges

## bench: micro-benchmarks, startup and memory, blobsteer side by side with Envoy, Lua and nginx;
## writes BENCHMARKS.md (about 10 minutes)
bench: build
	scripts/bench/all

## fuzz: every cargo-fuzz target for FUZZ_SECONDS each (default 60), regressions replayed first
fuzz: bootstrap
	scripts/fuzz

## soak: the stack under saturating load for SOAK_SECONDS (default 180), watching Envoy's memory
SOAK_SECONDS ?= 180
soak: build
	$(PYTHON) scripts/soak.py --seconds $(SOAK_SECONDS)

clean:
	$(CARGO) clean
	rm -rf .run
