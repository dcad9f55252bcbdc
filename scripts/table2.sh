#!/usr/bin/env bash
# The paper's Table 2 (TraceMesh column) with `scale eval`: the paper's own per-span result
# (seed_results.csv.gz), SCALE's `paper` mode with the paper's tuned parameters, and SCALE's
# default (`keyed`) mode, on the same 57,908-span test stream after the 19,302-span training prefix.
# Writes the text reports and SVG plots under docs/eval/ and prints a Markdown table.
#
# Usage: scripts/table2.sh   (builds target/release/scale if missing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${SCALE_BIN:-$ROOT/target/release/scale}"
[ -x "$BIN" ] || cargo build --workspace --release >&2
DATA=data/seed-tracemesh/spans.csv.gz
SEED=data/seed-tracemesh/seed_results.csv.gz
OUT=docs/eval
mkdir -p "$OUT/paper" "$OUT/keyed"

"$BIN" eval --mode paper --n-trees 16 --height 8 --window-size 175 --min-score 0.6 \
    --max-duration 50s --train-size 19302 --compare-seed "$SEED" --plots "$OUT/paper" \
    "$DATA" 2>/dev/null | tee "$OUT/paper/report.txt" >&2
"$BIN" eval --mode paper --n-trees 16 --height 8 --window-size 175 --min-score 0.6 \
    --max-duration 50s --train-size 19302 --compare-seed "$SEED" --json "$DATA" 2>/dev/null > "$OUT/paper/report.json"
"$BIN" eval --train-size 19302 --plots "$OUT/keyed" "$DATA" 2>/dev/null | tee "$OUT/keyed/report.txt" >&2
"$BIN" eval --train-size 19302 --json "$DATA" 2>/dev/null > "$OUT/keyed/report.json"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
p = json.load(open(f"{out}/paper/report.json"))
k = json.load(open(f"{out}/keyed/report.json"))
def row(name, m):
    return f"| {name} | {m['tp']} | {m['fp']} | {m['fn']} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {100*m['fpr']:.2f} % | {m['roc_auc']:.3f} |"
print("| detector (57,908 test spans, 2,895 anomalous) | TP | FP | FN | precision | recall | F1 | FPR | ROC AUC |")
print("|---|---|---|---|---|---|---|---|---|")
print(row("paper's published result (seed_results.csv)", p["seed"]))
print(row("SCALE `paper` mode (16, 8, 175, min_score 0.6)", p["metrics"]))
c = k["config"]
print(row(f"SCALE `keyed` mode, defaults ({c['n_trees']}, {c['height']}, {c['window_size']}, keep_budget {c['keep_budget']})", k["metrics"]))
PY
