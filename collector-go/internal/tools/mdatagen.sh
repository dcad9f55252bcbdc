#!/bin/sh
# Runs mdatagen on ../../metadata.yaml (via `go generate` in collector-go).
#
# mdatagen names the generated package after the directory holding metadata.yaml; ours is
# `collector-go` (not a Go identifier), so it runs on a symlink named after the package.
# mdatagen v0.161.0 itself: `make mdatagen` at the repository root installs it into
# $SCALE_CACHE/bin (default ~/.cache/scale/bin).
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SCALE_CACHE:-$HOME/.cache/scale}/bin
PATH=$bin:$PATH
command -v mdatagen >/dev/null || { echo "mdatagen not found: run 'make mdatagen' at the repository root" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -f "$tmp/scaleprocessor"; rmdir "$tmp"' EXIT
ln -s "$here" "$tmp/scaleprocessor"
mdatagen "$tmp/scaleprocessor/metadata.yaml"
