#!/usr/bin/env bash
# Builds Jaeger v2 (the `jaeger` binary: an OpenTelemetry Collector distribution with Jaeger's
# storage, query and UI extensions), used as a real trace backend by tests that read traces back
# through its API v3, from the Go module proxy, into a cache outside the repository (once per
# machine):
#
#   $SCALE_CACHE/jaeger/bin/jaeger   github.com/jaegertracing/jaeger v1.75.0 (cmd/jaeger; Jaeger v2)
#
# v1.75.0 is the approved release; newer tags are served by the proxy but not approved. Jaeger
# lags the collector release the project uses (it is built on collector v0.139.0), so it gets a
# small wrapper module of its own (`go get -tool .../cmd/jaeger@v1.75.0`) instead of joining the
# project's Go modules. The wrapper resolves exactly the dependency versions of Jaeger's own
# go.mod; it repeats Jaeger's one `replace` (github.com/Shopify/sarama => v1.33.0, which the
# binary links), because a dependency's replace directives are ignored. It builds as is with
# Go 1.26.8: no other fix was needed. The UI assets are not in the module (Jaeger's release
# build embeds them from a separate npm build), so / serves a placeholder page; API v3 is whole.
# Idempotent: returns at once when the binary of this version is already built. Prints the
# binary's path as its last line. Measured on two busy cores: ~1 min to resolve the modules
# (cold module cache), ~8 min (477 s) for `go build`; the binary is 81 MiB (stripped).
#
# Run and flags verified with this binary (configs/jaeger/test.yaml; every listener on 127.0.0.1):
#   JAEGER_OTLP_GRPC_ENDPOINT=127.0.0.1:P1 JAEGER_OTLP_HTTP_ENDPOINT=127.0.0.1:P2
#   JAEGER_QUERY_HTTP_ENDPOINT=127.0.0.1:P3 jaeger --config configs/jaeger/test.yaml
#     in-memory storage (max_traces, ${env:JAEGER_MAX_TRACES:-100000}), OTLP receiver only, no
#     batch processor (a span is queryable once its OTLP export returns), the collector's own
#     metrics off (`service.telemetry.metrics.level: none`; 8888 otherwise), no healthcheck,
#     expvar, zpages, pprof or remote_sampling; query gRPC on 127.0.0.1:0 (any free port); query
#     HTTP needs `keep_alives_enabled: true` or every response is `Connection: close`.
#   Ready (~0.2 s) when GET http://P3/api/v3/services answers 200 and POST http://P2/v1/traces
#     with body `{}` (Content-Type: application/json) answers 200: receivers start last.
#   Stops cleanly on SIGTERM at once (memory storage: nothing to flush).
#   API v3 (HTTP, JSON): GET /api/v3/services -> {"services":[...]} ({} when none);
#     GET /api/v3/operations?service=S[&span_kind=K]; GET /api/v3/traces/{32-hex id};
#     GET /api/v3/traces?query.start_time_min=T&query.start_time_max=T&query.num_traces=N
#       [&query.service_name=S&query.operation_name=O&query.duration_min=D&query.duration_max=D
#       &query.raw_traces=true]. Times RFC 3339 (ns allowed), both required and inclusive;
#       service optional; N required, 1..max_traces (else 500). One OTLP/JSON object (not a
#       stream): {"result":{"resourceSpans":[...]}}, hex trace/span ids, nanosecond times as
#       strings; a trace may span several resourceSpans; no match -> 404 {"error":{...}}.
#       Memory storage returns the N most recently *stored* matching traces, whole (a trace
#       matches when one of its spans matches every filter): on N results, split the window.
#     Always send query.raw_traces=true (raw_traces=true by id): otherwise the adjusters edit
#       the stored trace in place ("@jaeger@warnings" attributes pile up, one set per query).
#     No authentication of its own (no bearertokenauth extension in this build): an
#     `Authorization: Bearer` header is accepted and ignored.
set -euo pipefail
VERSION=v1.75.0
MODULE=github.com/jaegertracing/jaeger
CACHE="${SCALE_CACHE:-$HOME/.cache/scale}/jaeger"
BIN="$CACHE/bin"
STAMP="$BIN/.version"
WANT="jaeger $VERSION"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

if [ -x "$BIN/jaeger" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
    echo "$BIN/jaeger"
    exit 0
fi
mkdir -p "$BIN" "$CACHE/src"

W="$CACHE/src/jaeger"
rm -rf "$W" && mkdir -p "$W" && cd "$W"
go mod init scale.local/jaeger >/dev/null 2>&1
# Jaeger's go.mod: replace github.com/Shopify/sarama => github.com/Shopify/sarama v1.33.0
go mod edit -replace=github.com/Shopify/sarama=github.com/Shopify/sarama@v1.33.0
echo "jaeger.sh: resolving $MODULE $VERSION modules" >&2
go get -tool "$MODULE/cmd/jaeger@$VERSION" >&2
echo "jaeger.sh: building jaeger $VERSION (about 8 minutes on two cores)" >&2
# latestVersion is what `jaeger --version` and the service.version resource attribute show.
go build -trimpath -ldflags "-s -w -X $MODULE/internal/version.latestVersion=$VERSION" \
    -o "$BIN/jaeger.tmp" "$MODULE/cmd/jaeger"
mv "$BIN/jaeger.tmp" "$BIN/jaeger"

echo "$WANT" > "$STAMP"
"$BIN/jaeger" --version >&2
echo "$BIN/jaeger"
