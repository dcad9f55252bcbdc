#!/usr/bin/env bash
# Installs benchstat (golang.org/x/perf, compares `go test -bench` runs) at a pinned version
# into a cache outside the repository, once per machine:
#
#   $SCALE_CACHE/bin/benchstat   golang.org/x/perf/cmd/benchstat (pseudo-version below; x/perf has no tags)
#
# Used to compare collector-go's Go benchmarks before and after a change:
#
#   go test -run '^$' -bench ConsumeTraces -count 10 . > new.txt   (and old.txt from the old tree)
#   "$(scripts/benchstat.sh | tail -n 1)" old.txt new.txt
#
# Idempotent: returns at once when the binary of this version is already installed.
# Prints the binary's path as its last line.
set -euo pipefail
VERSION=v0.0.0-20260908200009-22c9c6c9d4da
MODULE=golang.org/x/perf/cmd/benchstat
BIN="${SCALE_CACHE:-$HOME/.cache/scale}/bin"
STAMP="$BIN/.benchstat.version"

if [ -x "$BIN/benchstat" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    echo "$BIN/benchstat"
    exit 0
fi
mkdir -p "$BIN"
echo "benchstat.sh: installing benchstat $VERSION into $BIN" >&2
# Outside any module, so the repository's go.mod files play no part.
cd "$BIN"
GOTOOLCHAIN=local GOFLAGS= GOBIN="$BIN" go install "$MODULE@$VERSION" >&2
echo "$VERSION" > "$STAMP"
echo "$BIN/benchstat"
