#!/usr/bin/env bash
# Builds Helm (the `helm` command line), used by `make test-helm` and by the chart test
# rust/scaler/tests/it/helm.rs, from the Go module proxy, into a cache outside the repository (once
# per machine):
#
#   $SCALE_CACHE/helm/bin/helm   helm.sh/helm/v4 v4.3.2 (cmd/helm)
#
# Helm's go.mod has no replace directives, so `go install helm.sh/helm/v4/cmd/helm@v4.3.2`
# builds it as is, in module mode, with the exact dependency versions of Helm's own go.mod
# (Go 1.26.8, GOTOOLCHAIN=local; CGO_ENABLED=0 and the version ldflags as in Helm's own
# Makefile, so `helm version` says v4.3.2). Idempotent: returns at once when the binary of this
# version is already built. Prints the bin directory as its last line. Measured on two busy
# cores: 3 min 22 s cold (module downloads included); the binary is 64 MiB (stripped).
set -euo pipefail
VERSION=v4.3.2
MODULE=helm.sh/helm/v4
CACHE="${SCALE_CACHE:-$HOME/.cache/scale}/helm"
BIN="$CACHE/bin"
STAMP="$BIN/.version"
WANT="helm $VERSION"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

if [ -x "$BIN/helm" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$BIN"

echo "helm.sh: building helm $VERSION" >&2
CGO_ENABLED=0 GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X $MODULE/internal/version.version=$VERSION" "$MODULE/cmd/helm@$VERSION" >&2

echo "$WANT" > "$STAMP"
"$BIN/helm" version >&2
echo "$BIN"
