#!/usr/bin/env bash
# Installs what the fuzz targets need, once per machine, outside the repository:
# cargo-fuzz (from crates.io) into $SCALE_CACHE/cargo/bin; the nightly toolchain comes with the
# machine's rustup (installed with `rustup toolchain install nightly` if missing).
# Prints the directory holding cargo-fuzz as its last line.
set -euo pipefail
CACHE="${SCALE_CACHE:-$HOME/.cache/scale}"
ROOT="$CACHE/cargo"
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal >&2
fi
if [ ! -x "$ROOT/bin/cargo-fuzz" ]; then
    cargo install cargo-fuzz --locked --root "$ROOT" >&2
fi
echo "$ROOT/bin"
