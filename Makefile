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

test: test-rust test-ffi test-fuzz

test-rust:
	$(CARGO) test --workspace --release

bench: bench-core bench-river

bench-core:
	$(CARGO) bench --workspace --bench engine

bench-river:
	scripts/bench-river.sh

eval: build
	scripts/table2.sh

# --- C ABI (rust/ffi): header, C smoke test ------------------------------------------------
# The native libraries to link after -lscale come from rust/ffi/README.md ("Static linking"),
# which a Rust test checks against rustc's --print native-static-libs.
FFI_NATIVE_LIBS = $(shell sed -n 's/^    -lscale //p' rust/ffi/README.md)
C_OUT := target/c
C_FLAGS := -std=c11 -Wall -Wextra -Werror -O1 -g -Iinclude

.PHONY: header test-ffi bench-ffi

header:
	SCALE_WRITE_HEADER=1 $(CARGO) test -p scale-ffi --release --lib header::

test-ffi:
	$(CARGO) build --workspace --release
	mkdir -p $(C_OUT)/lib
	cp target/release/libscale.a $(C_OUT)/lib/
	@test -n "$(FFI_NATIVE_LIBS)" || { echo "no link line in rust/ffi/README.md"; exit 1; }
	gcc $(C_FLAGS) tests/c/smoke.c -L$(C_OUT)/lib -lscale $(FFI_NATIVE_LIBS) -o $(C_OUT)/smoke
	if command -v valgrind >/dev/null; then \
		valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,possible $(C_OUT)/smoke; \
	else \
		gcc $(C_FLAGS) -fsanitize=address,undefined -fno-omit-frame-pointer tests/c/smoke.c \
			-L$(C_OUT)/lib -lscale $(FFI_NATIVE_LIBS) -o $(C_OUT)/smoke-asan && $(C_OUT)/smoke-asan; \
	fi

bench-ffi:
	$(CARGO) bench -p scale-ffi --bench abi

# --- Fuzzing (nightly + cargo-fuzz, installed by scripts/fuzz-tools.sh) ----------------------
# `make test` runs test-fuzz: the committed regressions, then a short smoke run per target.
# Long runs: `make fuzz-smoke FUZZ_SECONDS=600`.
FUZZ_TARGETS := config batch restore
FUZZ_SECONDS ?= 30
FUZZ_PATH = $(shell scripts/fuzz-tools.sh | tail -n 1):$(PATH)

.PHONY: fuzz-smoke fuzz-regressions test-fuzz

fuzz-smoke:
	cd fuzz && export PATH="$(FUZZ_PATH)" && for t in $(FUZZ_TARGETS); do \
		cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 || exit 1; \
	done

# Replays every committed crash (fuzz/regressions/<target>/*) once.
fuzz-regressions:
	cd fuzz && export PATH="$(FUZZ_PATH)" && for t in $(FUZZ_TARGETS); do \
		if ls regressions/$$t/* >/dev/null 2>&1; then cargo +nightly fuzz run $$t regressions/$$t/* || exit 1; fi; \
	done

test-fuzz:
	$(MAKE) fuzz-regressions
	$(MAKE) fuzz-smoke FUZZ_SECONDS=10
