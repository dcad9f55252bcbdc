#!/usr/bin/env python3
"""Upper bound for any per-span detector on the paper's stream.

A span in data/seed-tracemesh/spans.csv.gz carries only (service, operation, duration). This script
cuts the test stream (rows after the 19,302-row training prefix) into cells of (operation,
log-duration bin) and, *knowing the labels*, picks the cells with the best anomalous/normal ratio
until the false-positive budget (FPR 0.5 %) is spent. No detector that sees one span at a time can
beat this oracle at the same bin width, since it cannot tell two spans of one cell apart.

Usage: scripts/oracle_bound.py [--fpr 0.005]
"""
import argparse
import collections
import csv
import gzip
import io
import math
import os

ap = argparse.ArgumentParser()
ap.add_argument("--fpr", type=float, default=0.005)
ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "data", "seed-tracemesh", "spans.csv.gz"))
args = ap.parse_args()

with gzip.open(args.data, "rt") as f:
    rows = list(csv.DictReader(f))[19302:]
P = sum(1 for r in rows if r["label"] == "1")
N = len(rows) - P
budget = int(args.fpr * N)
print(f"test stream: {len(rows)} spans, {P} anomalous, {N} normal; FP budget at FPR {args.fpr:.2%}: {budget}")
print("| bin width (ln ms) | best recall | FP | F1 | best F1 (any FPR) |")
print("|---|---|---|---|---|")
for bw in (0.05, 0.1, 0.25, 0.5):
    cells = collections.defaultdict(lambda: [0, 0])
    for r in rows:
        b = (r["service"], r["operation"], math.floor(math.log(max(float(r["duration_ms"]), 1e-4)) / bw))
        cells[b][int(r["label"])] += 1
    ranked = sorted(cells.values(), key=lambda c: -(c[1] + 1e-9) / (c[0] + 1e-9))
    tp = fp = 0
    for n, p in ranked:
        if fp + n <= budget:
            tp += p
            fp += n
    bayes_tp = sum(p for n, p in cells.values() if p > n)
    bayes_fp = sum(n for n, p in cells.values() if p > n)
    f1 = 2 * tp / (2 * tp + fp + P - tp)
    bf1 = 2 * bayes_tp / (2 * bayes_tp + bayes_fp + P - bayes_tp)
    print(f"| {bw} | {tp / P:.4f} | {fp} | {f1:.4f} | {bf1:.4f} |")
