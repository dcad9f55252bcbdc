#!/usr/bin/env bash
# Licences and banned crates (deny.toml), offline: builds cargo-deny once per machine from
# crates.io into $SCALE_CACHE/cargo/bin (a few minutes cold), then runs
# `cargo deny --offline check licenses bans` (no advisory database is fetched).
set -euo pipefail
CACHE="${SCALE_CACHE:-$HOME/.cache/scale}"
ROOT="$CACHE/cargo"
VERSION=0.20.2
if ! "$ROOT/bin/cargo-deny" --version 2>/dev/null | grep -q " $VERSION\$"; then
    cargo install cargo-deny --version "$VERSION" --locked --root "$ROOT" >&2
fi
cd "$(dirname "$0")/.."
# cargo-deny reads the whole dependency graph, every platform's crates included (a build
# downloads only this platform's): `cargo fetch` gets them all into cargo's cache (a no-op once
# they are there), so the check itself can run offline.
cargo fetch --locked --quiet
exec "$ROOT/bin/cargo-deny" --offline check licenses bans
