#!/usr/bin/env bash
# Create (once) a Python 3.11 virtual environment with River 0.26.1, the reference
# implementation scale-core's `paper` mode is checked against. Idempotent: a venv that already
# imports river 0.26.1 is reused without touching the network. Prints the venv's python path
# as the last line of stdout; everything else goes to stderr.
#
# Usage: scripts/river-venv.sh            (venv at ${SCALE_CACHE:-$HOME/.cache/scale}/venv-river)
#        PYTHON=/path/to/python3.11 scripts/river-venv.sh
set -euo pipefail

RIVER_VERSION=0.26.1
CACHE="${SCALE_CACHE:-$HOME/.cache/scale}"
VENV="$CACHE/venv-river"
PY="$VENV/bin/python"

has_river() {
    [ -x "$PY" ] && "$PY" -c "import river; assert river.__version__ == '$RIVER_VERSION'" >/dev/null 2>&1
}

if ! has_river; then
    base="${PYTHON:-}"
    if [ -z "$base" ]; then
        for cand in python3.11 python3; do
            if command -v "$cand" >/dev/null 2>&1 &&
                "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1; then
                base="$cand"
                break
            fi
        done
    fi
    if [ -z "$base" ]; then
        echo "river-venv: no Python 3.11 found (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    mkdir -p "$CACHE"
    if [ ! -x "$PY" ]; then
        echo "river-venv: creating $VENV with $base" >&2
        "$base" -m venv "$VENV" >&2
    fi
    echo "river-venv: installing river==$RIVER_VERSION" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check "river==$RIVER_VERSION" >&2
    if ! has_river; then
        echo "river-venv: river $RIVER_VERSION still not importable from $PY" >&2
        exit 1
    fi
fi

echo "$PY"
