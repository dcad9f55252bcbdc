#!/usr/bin/env bash
# Speed of River 0.26.1's HalfSpaceTrees vs SCALE's engine (`paper` mode) on the same stream
# with the same forest parameters. Prints a Markdown table on stdout (progress on stderr).
#
# Usage: scripts/bench-river.sh [--rows N] [spans.csv.gz]
#   --rows N   use only the first N spans (both sides; default: the whole file)
# Env:   SCALE_BIN  the scale binary (default target/release/scale, built with
#                   `cargo build --workspace --release` if missing)
#        SCALE_RUNS SCALE passes per parameter set, median reported (default 7)
#
# River: scripts/river_bench.py times score_one + learn_one per span, including its lazy tree
# construction on the first span and every window pivot (features built before the clock).
# SCALE: `scale eval --json --mode paper ...`, its per-span engine time
# (`performance.ns_per_span`: wall time inside Engine::process_batch / spans fed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROWS=""
INPUT="data/seed-tracemesh/spans.csv.gz"
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) ROWS="$2"; shift 2 ;;
        --rows=*) ROWS="${1#--rows=}"; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) INPUT="$1"; shift ;;
    esac
done

PY="$(scripts/river-venv.sh | tail -n 1)"
SCALE_BIN="${SCALE_BIN:-$ROOT/target/release/scale}"
if [ ! -x "$SCALE_BIN" ]; then
    echo "bench-river: building $SCALE_BIN" >&2
    cargo build --workspace --release >&2
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
SOURCE="$INPUT"
if [ -n "$ROWS" ]; then
    # Same first N spans for both sides.
    gzip -dc "$INPUT" | awk -v n="$((ROWS + 1))" 'NR <= n' | gzip -c > "$TMP/spans.csv.gz"
    INPUT="$TMP/spans.csv.gz"
fi
N="$(gzip -dc "$INPUT" | tail -n +2 | wc -l | tr -d ' ')"
TRAIN=$((N / 4)) # 19302 for the full 77,210-span stream

# json_get FILE PATH: the value at dotted PATH in the JSON object in FILE, else the first value
# of its last key anywhere in it.
json_get() {
    "$PY" - "$1" "$2" <<'PYEOF'
import json, sys
def find(v, k):
    if isinstance(v, dict):
        if k in v:
            return v[k]
        for x in v.values():
            r = find(x, k)
            if r is not None:
                return r
    elif isinstance(v, list):
        for x in v:
            r = find(x, k)
            if r is not None:
                return r
    return None
doc = json.load(open(sys.argv[1]))
v = doc
for part in sys.argv[2].split("."):  # exact dotted path first, else the last key anywhere
    v = v.get(part) if isinstance(v, dict) else None
if v is None:
    v = find(doc, sys.argv[2].split(".")[-1])
if v is None:
    sys.exit(f"no {sys.argv[2]!r} in {sys.argv[1]}")
print(v)
PYEOF
}

SCALE_RUNS="${SCALE_RUNS:-7}"
echo "| n_trees | height | window_size | River ns/span | SCALE ns/span (median of $SCALE_RUNS) | River / SCALE | River tree build (ms) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for params in "16 8 175" "25 15 250" "10 8 250"; do
    read -r T H W <<<"$params"
    echo "bench-river: ($T, $H, $W) River on $N spans..." >&2
    "$PY" scripts/river_bench.py "$INPUT" --n-trees "$T" --height "$H" --window-size "$W" > "$TMP/river.json"
    # One SCALE pass takes tens of milliseconds, short enough for timer and frequency noise:
    # take the median of SCALE_RUNS passes (River's single pass takes seconds to minutes).
    echo "bench-river: ($T, $H, $W) SCALE x $SCALE_RUNS..." >&2
    runs=()
    for _ in $(seq "$SCALE_RUNS"); do
        "$SCALE_BIN" eval --json --mode paper --n-trees "$T" --height "$H" --window-size "$W" \
            --min-score 0.6 --train-size "$TRAIN" "$INPUT" > "$TMP/scale.json"
        runs+=("$(json_get "$TMP/scale.json" performance.ns_per_span)")
    done
    river_ns="$(json_get "$TMP/river.json" ns_per_span)"
    build_ms="$(json_get "$TMP/river.json" build_ms)"
    scale_ns="$(printf '%s\n' "${runs[@]}" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')"
    "$PY" -c 'import sys; t,h,w,r,s,b = sys.argv[1:]; r,s,b = float(r),float(s),float(b)
print(f"| {t} | {h} | {w} | {r:,.0f} | {s:,.1f} | {r/s:,.0f}x | {b:,.0f} |")' "$T" "$H" "$W" "$river_ns" "$scale_ns" "$build_ms"
done
echo
echo "Stream: $SOURCE, ${ROWS:+first }$N spans, paper-mode features, score then learn on every span."
