# SCALE: the one entry point for builds, tests and benchmarks.
#
#   make build     build everything (release)
#   make test      every test (the README's test command; .ci/run calls it)
#   make bench     benchmarks (criterion + River comparison); results go to BENCHMARKS.md by hand
#   make eval      the paper's Table 2 with `scale eval`
#   make detection detection at the defaults on every data set, side by side (BENCHMARKS.md)
#   make demo      trace-driven scaling on a real kube-apiserver, a few minutes (docs/demo/)
#
# Caches live outside the repository, under $(SCALE_CACHE).

SHELL := /bin/bash
export SCALE_CACHE ?= $(HOME)/.cache/scale
CARGO ?= cargo
# A fresh clone's `target` and `fuzz/target` are links into the cache (scripts/cargo-target.sh).
CARGO_TARGET_LINKS := $(shell scripts/cargo-target.sh)

.PHONY: build test lint test-rust k8s-bins jaeger-bin helm-bin test-helm bench bench-core bench-river bench-daemon eval detection check-fmt demo

build:
	$(CARGO) build --workspace --release

test: check-fmt lint test-helm test-rust test-ffi test-fuzz test-go test-e2e

# Rust code is formatted by rustfmt with its default settings (`cargo fmt --all` fixes it).
check-fmt:
	$(CARGO) fmt --all --check

# Lints: clippy with warnings as errors, go vet with cgo (test-go vets the build without), and
# cargo-deny's licence and ban checks, offline (scripts/cargo-deny.sh builds it once).
lint: libscale
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd collector-go && $(GO_ENV) $(GO) vet ./...
	scripts/cargo-deny.sh

# The daemon's integration tests (rust/scaler/tests/it/k8s.rs) start a real kube-apiserver + etcd,
# built once per machine from the Go module proxy into $(SCALE_CACHE)/k8s/bin (~14 min cold).
# rust/scaler/tests/it/evidence.rs also runs the ocb-built collector, so it is built first.
# rust/scaler/tests/it/train.rs reads spans from a real Jaeger v2, built once per machine from the
# Go module proxy into $(SCALE_CACHE)/jaeger/bin (scripts/jaeger.sh, ~9 min cold).
# rust/scaler/tests/it/helm.rs renders the Helm chart with Helm from scripts/helm.sh (SCALE_HELM).
test-rust: k8s-bins collector jaeger-bin helm-bin
	SCALE_OTELCOL=$(CURDIR)/$(COLLECTOR) SCALE_JAEGER=$$(scripts/jaeger.sh | tail -n 1) \
		SCALE_HELM=$$(scripts/helm.sh | tail -n 1)/helm $(CARGO) test --workspace --release

k8s-bins:
	scripts/k8s-bins.sh >/dev/null

jaeger-bin:
	scripts/jaeger.sh >/dev/null

# Helm v4.3.2, built once per machine from the Go module proxy into $(SCALE_CACHE)/helm/bin
# (scripts/helm.sh, ~3.5 min cold).
helm-bin:
	scripts/helm.sh >/dev/null

# The Helm chart (deploy/helm/scale): `helm lint --strict` and `helm template` with the default
# values and with ci/all-values.yaml (every option). rust/scaler/tests/it/helm.rs applies both
# renderings to a real API server and runs the daemon with the chart's RBAC.
HELM_CHART := deploy/helm/scale
test-helm: helm-bin
	helm="$$(scripts/helm.sh | tail -n 1)/helm" && \
	for values in "" "-f $(HELM_CHART)/ci/all-values.yaml"; do \
		$$helm lint --strict $(HELM_CHART) $$values && \
		$$helm template scale $(HELM_CHART) --namespace scale-system $$values >/dev/null || exit 1; \
	done

bench: bench-core bench-river

bench-core:
	$(CARGO) bench --workspace --bench engine

bench-river:
	scripts/bench-river.sh

# The daemon: decision → API request against a real kube-apiserver, local-engine ingest, decode.
bench-daemon: k8s-bins
	$(CARGO) bench --workspace --bench daemon

eval: build
	scripts/table2.sh

# The paper's stream, the real fault data (NEZHA_DIR, default ../shared/data/nezha-ob), the demo
# replay and synthetic timelines, at keep budgets of 0.5, 1 and 2 %; reports under docs/eval/detection.
detection: build
	python3 scripts/detection.py

# The demo: builds what it needs (cached), then scripts/demo.py (Python standard library) starts
# scale-testcluster (etcd + kube-apiserver), `scale serve` and otelcol-scale on 127.0.0.1,
# replays data/otel-demo with a latency fault in checkout, shows the decision, the Kubernetes
# Events and the replicas, and writes $(DEMO_OUT)/demo.svg and output.txt. docs/demo/ holds an
# example run (`make demo DEMO_OUT=docs/demo`); `DEMO_ARGS=--help` lists the knobs.
DEMO_OUT ?= _build/demo
demo: build collector k8s-bins
	python3 scripts/demo.py --out $(DEMO_OUT) $(DEMO_ARGS)

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

# --- Go collector component (collector-go) and the custom collector (otelcol-scale) ---------
# collector-go links target/release/libscale.a statically through cgo, so libscale comes first.
GO ?= go
# Go's build cache does not hash libraries named in #cgo LDFLAGS, so a rebuilt libscale.a would
# not be relinked: its hash goes into CGO_CFLAGS (part of every cgo action's cache key).
LIBSCALE_HASH = $(shell sha256sum target/release/libscale.a 2>/dev/null | cut -c1-16)
GO_ENV = GOFLAGS=-mod=mod CGO_CFLAGS="-O2 -g -DSCALE_LIBSCALE_SHA=$(LIBSCALE_HASH)"
OCB_VERSION := v0.161.0
OCB := $(SCALE_CACHE)/bin/builder
MDATAGEN := $(SCALE_CACHE)/bin/mdatagen
COLLECTOR := _build/otelcol-scale/otelcol-scale
COLLECTOR_INPUTS := builder-config.yaml target/release/libscale.a include/scale.h \
	collector-go/go.mod collector-go/go.sum $(filter-out %_test.go,$(shell find collector-go -name '*.go' 2>/dev/null))

.PHONY: libscale test-go bench-go collector mdatagen go-generate validate-collector-configs

libscale:
	$(CARGO) build --workspace --release

# Go tests with the real static library: -race (including `otelcol-scale validate` on every
# file in configs/collector), then the `debug` tag (GC before every C call), then the build
# without cgo (which must compile and refuse to create the processor); then the benchmark's load
# generator (tests/otlpreplay).
test-go: libscale collector
	cd collector-go && $(GO_ENV) SCALE_OTELCOL=$(CURDIR)/$(COLLECTOR) $(GO) test -race -count=1 ./...
	cd collector-go && $(GO_ENV) $(GO) test -tags debug -count=1 .
	cd collector-go && CGO_ENABLED=0 $(GO_ENV) $(GO) build ./... && CGO_ENABLED=0 $(GO_ENV) $(GO) vet ./...
	cd collector-go && CGO_ENABLED=0 $(GO_ENV) $(GO) test -count=1 -run TestNoCgo .
	cd tests/otlpreplay && $(GO_ENV) GOTOOLCHAIN=local $(GO) vet ./... && $(GO_ENV) GOTOOLCHAIN=local $(GO) test -count=1 ./...

# The processor's Go benchmark (whole processor with libscale, and its Go side alone with a fake
# engine), BENCH_COUNT runs each: compare two trees with scripts/benchstat.sh.
BENCH_COUNT ?= 5
bench-go: libscale
	cd collector-go && $(GO_ENV) $(GO) test -run '^$$' -bench ConsumeTraces -benchtime 2000x -count $(BENCH_COUNT) .

$(OCB):
	mkdir -p $(SCALE_CACHE)/bin
	GOBIN=$(SCALE_CACHE)/bin $(GO) install go.opentelemetry.io/collector/cmd/builder@$(OCB_VERSION)

# mdatagen (collector-go's `go generate`): `go install ...@v0.161.0` fails here (no version list
# is served for it), so it is built inside a throw-away module.
$(MDATAGEN):
	collector-go/internal/tools/install-mdatagen.sh $(OCB_VERSION) $(SCALE_CACHE)/bin

mdatagen: $(MDATAGEN)

go-generate: $(MDATAGEN)
	cd collector-go && $(GO) generate ./...

# otelcol-scale, built by ocb from builder-config.yaml; rebuilt only when an input is newer.
collector: libscale $(OCB)
	@$(MAKE) --no-print-directory $(COLLECTOR)

$(COLLECTOR): $(COLLECTOR_INPUTS) | $(OCB)
	mkdir -p _build
	$(GO_ENV) $(OCB) --config builder-config.yaml
	@touch $@

# Every collector config in the repository must pass `otelcol-scale validate` (also in test-go).
validate-collector-configs: collector
	cd collector-go && $(GO_ENV) SCALE_OTELCOL=$(CURDIR)/$(COLLECTOR) $(GO) test -count=1 -run TestCollectorConfigsValidate .

# --- End-to-end: otelcol-scale against real OTLP clients -------------------------------------
# tests/e2e (Go) starts the collector built above, sends spans with telemetrygen (installed
# once by scripts/telemetrygen.sh) and replays data/otel-demo over OTLP/HTTP JSON, and checks
# the file exporters' output; it also runs configs/collector/tail-sampling.yaml, and drives
# `scale serve --keda-listen` with KEDA's own external scaler client (its only dependency). Throughput: scripts/bench-collector.sh
# (telemetrygen, and tests/otlpreplay against a collector pinned to one CPU; docs/bench/collector.md).
.PHONY: test-e2e bench-collector

# A private TMPDIR, removed even when the test binary is killed (the collector and telemetrygen
# die with it: Pdeathsig).
test-e2e: collector
	tgen="$$(set -o pipefail; scripts/telemetrygen.sh | tail -n 1)" && tmp="$$(mktemp -d)" && \
		trap 'rm -rf "$$tmp"' EXIT && cd tests/e2e && \
		TMPDIR="$$tmp" SCALE_OTELCOL=$(CURDIR)/$(COLLECTOR) SCALE_BIN=$(CURDIR)/target/release/scale \
		SCALE_TELEMETRYGEN="$$tgen" $(GO_ENV) GOTOOLCHAIN=local \
		$(GO) test -count=1 -v -timeout 10m ./...

bench-collector: collector
	scripts/bench-collector.sh
