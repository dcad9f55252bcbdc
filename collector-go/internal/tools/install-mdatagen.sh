#!/bin/sh
# Builds mdatagen at the given collector release into the given directory.
#
#   install-mdatagen.sh v0.161.0 ~/.cache/scale/bin
#
# `go install go.opentelemetry.io/collector/cmd/mdatagen@v0.161.0` fails with the module proxy
# reachable here: it serves no version list for mdatagen (needed for the deprecation check), and
# not go.opentelemetry.io/collector/internal/schemagen v0.161.0 either. So mdatagen is built
# inside a throw-away module, with schemagen pinned to v0.159.0 (the nearest version served;
# mdatagen only uses it for config schemas, which collector-go does not generate).
set -eu
version=$1
bin=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$bin"
cd "$tmp"
cat > go.mod <<MOD
module local/mdatagen-build

go 1.26

require go.opentelemetry.io/collector/cmd/mdatagen $version

replace go.opentelemetry.io/collector/internal/schemagen => go.opentelemetry.io/collector/internal/schemagen v0.159.0
MOD
GOFLAGS=-mod=mod go build -o "$bin/mdatagen" go.opentelemetry.io/collector/cmd/mdatagen
echo "installed $bin/mdatagen"
