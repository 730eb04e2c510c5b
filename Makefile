# The two commands of the README: `make demo` and `make test`.
# Each installs what it needs first (scripts/install-deps.sh).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test deps test-deps build lint unit python pytest bench bench-store bench-python fuzz clean

deps:
	@./scripts/install-deps.sh

## What only the tests need besides: schemathesis for the REST schema test.
test-deps:
	@./scripts/install-deps.sh --test

build: deps
	$(CARGO) build --release --bins

## The main job: `yr demo` (a two-node cluster: a 256 MiB pipeline, function services, a 256 MiB
## object between two processes), then the same kind of pipeline in Python: the package built
## into the Makefile's environment, examples/python/pipeline.py on a fresh two-node cluster.
demo: build python
	./target/release/yr demo
	./scripts/demo-python.sh

## Every test: formatting, lints, unit, property and integration tests, and the Python package's.
test: test-deps lint unit pytest

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

## The Python package `yr` (python/), built into the virtual environment the Makefile owns
## (~/.cache/yr/py), and its tests against a real cluster.
python: deps
	@./scripts/python-env.sh

pytest: python
	$(CARGO) build --workspace --bins
	YR_BIN=$(CURDIR)/target/debug/yr $(HOME)/.cache/yr/py/bin/pytest -q python/tests

## Benchmarks: every criterion group of `cargo bench` (store, invoke, transfer, rest). The
## JSON summaries with their same-run ratios are `yr bench store|invoke|transfer|rest --json`.
bench: deps
	$(CARGO) bench --workspace

bench-store: build
	./target/release/yr bench store --json

## The Python package's speed (issue 11): `yr` and the package's extension built for release
## (the environment `make python` owns; `make pytest` puts its debug build back), then
## `yr bench python`, which starts and stops its own one-node cluster.
bench-python: build
	@YR_PY_RELEASE=1 ./scripts/python-env.sh
	./target/release/yr bench python --json

## Fuzz every decoder that takes outside bytes, FUZZ_SECONDS each (needs a nightly toolchain;
## installs cargo-fuzz if missing): the data worker's request and response decoders, the
## transfer port's peer request decoder, and the instance socket's frames (yr-proto).
FUZZ_TARGETS := decode_request decode_response decode_peer_request decode_instance_frame
FUZZ_SECONDS ?= 30
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		$(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
