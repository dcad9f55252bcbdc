#!/usr/bin/env bash
# Cargo's build directories, in the cache outside the checkout (the Makefile runs this first).
#
# In a checkout that has no `target` (a fresh clone: CI), `target` and `fuzz/target` become links
# to $SCALE_CACHE/cargo-target/{target,fuzz-target}. The project's ~400 dependencies then build
# once per machine instead of once per clone (about 9 of a cold `make test`'s 18 minutes); Cargo
# keeps the project's own crates apart per checkout path, so checkouts never see each other's. A
# checkout with its own directories keeps them. The cache is emptied when a new link would be
# made while it holds more than SCALE_CARGO_TARGET_MAX_GB (default 20): the next build is cold.
# Prints nothing on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${SCALE_CACHE:-$HOME/.cache/scale}/cargo-target"
MAX_GB="${SCALE_CARGO_TARGET_MAX_GB:-20}"
for t in target fuzz/target; do
    link="$ROOT/$t"
    if [ -e "$link" ] || [ -L "$link" ]; then
        continue
    fi
    if [ -d "$CACHE" ] && [ "$(du -s --block-size=1G "$CACHE" | cut -f1)" -gt "$MAX_GB" ]; then
        echo "cargo-target.sh: $CACHE holds over $MAX_GB GB: emptying it" >&2
        rm -rf "${CACHE:?}"
    fi
    dir="$CACHE/${t//\//-}"
    mkdir -p "$dir"
    ln -s "$dir" "$link"
done
