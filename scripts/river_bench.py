#!/usr/bin/env python3
"""Time River 0.26.1 HalfSpaceTrees on a trace CSV with scale-core's `paper`-mode features.

For every span: score_one(x) then learn_one(x), as SCALE does. Features
{service::operation: 1.0, "duration": min(d, max_duration)/max_duration} are built before the
clock starts (River's cost only). The timed loop includes River's lazy tree construction on the
first learn_one and every window pivot. Prints one JSON object on stdout:

  {"rows", "n_trees", "height", "window_size", "seed", "seconds", "ns_per_span",
   "build_ms" (first span, which builds the trees), "ns_per_span_after_build", "river_version"}

Run with the venv from scripts/river-venv.sh.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import river
from river import anomaly

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from river_export import ROOT, paper_features, read_spans  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", nargs="?", default=os.path.join(ROOT, "data/seed-tracemesh/spans.csv.gz"))
    ap.add_argument("--rows", type=int, default=None, help="first N spans (default: all)")
    ap.add_argument("--n-trees", type=int, default=16)
    ap.add_argument("--height", type=int, default=8)
    ap.add_argument("--window-size", type=int, default=175)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-duration", type=float, default=50_000.0, help="ms")
    a = ap.parse_args()

    xs = paper_features(read_spans(a.input, a.rows), a.max_duration)
    hst = anomaly.HalfSpaceTrees(n_trees=a.n_trees, height=a.height, window_size=a.window_size, seed=a.seed)
    score_one, learn_one = hst.score_one, hst.learn_one
    clock = time.perf_counter_ns

    t0 = clock()
    score_one(xs[0])
    learn_one(xs[0])
    t1 = clock()
    for x in xs[1:]:
        score_one(x)
        learn_one(x)
    t2 = clock()

    n = len(xs)
    out = {
        "river_version": river.__version__,
        "rows": n,
        "n_trees": a.n_trees,
        "height": a.height,
        "window_size": a.window_size,
        "seed": a.seed,
        "seconds": (t2 - t0) / 1e9,
        "ns_per_span": (t2 - t0) / n,
        "build_ms": (t1 - t0) / 1e6,
        "ns_per_span_after_build": (t2 - t1) / max(n - 1, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
