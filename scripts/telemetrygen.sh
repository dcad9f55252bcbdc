#!/usr/bin/env bash
# Installs telemetrygen (the OpenTelemetry Collector contrib load generator, an OTLP client) at
# the collector release the project pins, into a cache outside the repository, once per machine:
#
#   $SCALE_CACHE/bin/telemetrygen   github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen v0.161.0
#
# A plain `go install ...@v0.161.0` resolves every dependency through the module proxy reachable
# here, so no wrapper module (and no `replace`) is needed, unlike mdatagen or the ocb build.
# Idempotent: returns at once when the binary of this version is already installed.
# Prints the binary's path as its last line.
set -euo pipefail
VERSION=v0.161.0
MODULE=github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen
BIN="${SCALE_CACHE:-$HOME/.cache/scale}/bin"
STAMP="$BIN/.telemetrygen.version"

if [ -x "$BIN/telemetrygen" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    echo "$BIN/telemetrygen"
    exit 0
fi
mkdir -p "$BIN"
echo "telemetrygen.sh: installing telemetrygen $VERSION into $BIN" >&2
# Outside any module, so the repository's go.mod files play no part; GOFLAGS=-mod=mod would be
# refused by `go install pkg@version`.
cd "$BIN"
GOTOOLCHAIN=local GOFLAGS= GOBIN="$BIN" go install "$MODULE@$VERSION" >&2
echo "$VERSION" > "$STAMP"
echo "$BIN/telemetrygen"
