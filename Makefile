# SCALE: the one entry point for builds, tests and benchmarks.
#
#   make build     build everything (release)
#   make test      every test (the README's test command; .ci/run calls it)
#   make bench     benchmarks (criterion + River comparison); results go to BENCHMARKS.md by hand
#   make eval      the paper's Table 2 with `scale eval`
#
# Caches live outside the repository, under $(SCALE_CACHE).

SHELL := /bin/bash
export SCALE_CACHE ?= $(HOME)/.cache/scale
CARGO ?= cargo

.PHONY: build test test-rust bench bench-core bench-river eval check-fmt

build:
	$(CARGO) build --workspace --release

test: test-rust

test-rust:
	$(CARGO) test --workspace --release

bench: bench-core bench-river

bench-core:
	$(CARGO) bench --workspace --bench engine

bench-river:
	scripts/bench-river.sh

eval: build
	scripts/table2.sh
