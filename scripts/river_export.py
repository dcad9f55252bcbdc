#!/usr/bin/env python3
"""Export River 0.26.1 HalfSpaceTrees trees and scores as a parity fixture for scale-core.

Runs River's `anomaly.HalfSpaceTrees` on the first N spans of a trace CSV with scale-core's
`paper`-mode features, score_one before learn_one on every span, and writes (gzip JSON):

  river_version, params, features (River's sorted feature names of the first span),
  trees   (per tree, internal nodes in heap order: [feature_index, threshold IEEE-754 bits]),
  scores  (per span, the score's IEEE-754 bits as u64, or null while River returns 0 before
           its first window completes),
  river_ns_per_span (wall time of score_one + learn_one, informational).

Bit patterns avoid any decimal round trip. Run with the venv from scripts/river-venv.sh:

  $(scripts/river-venv.sh) scripts/river_export.py
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import struct
import time
from collections import deque

import river
from river import anomaly
from river.tree.padded import PaddedBranch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def f64_bits(v: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", float(v)))[0]


def read_spans(path: str, rows: int | None):
    """(service, operation, duration_ms) of the first `rows` spans (all if None)."""
    out = []
    with gzip.open(path, "rt", newline="") as f:
        r = csv.DictReader(f)
        for row in r:
            if rows is not None and len(out) >= rows:
                break
            out.append((row["service"], row["operation"], float(row["duration_ms"])))
    return out


def paper_features(spans, max_duration: float):
    """scale-core's `paper` mode: {service::operation: 1.0, "duration": min(d, max)/max}."""
    return [{f"{s}::{o}": 1.0, "duration": min(d, max_duration) / max_duration} for s, o, d in spans]


def heap_nodes(root, height: int):
    """Internal nodes of a complete padded tree in breadth-first (heap) order."""
    nodes = []
    q = deque([root])
    while q:
        n = q.popleft()
        if isinstance(n, PaddedBranch):
            nodes.append(n)
            q.extend(n.children)
    assert len(nodes) == 2**height - 1, (len(nodes), height)
    # Heap order check: node i's children are 2i+1 and 2i+2.
    for i, n in enumerate(nodes):
        if 2 * i + 2 < len(nodes):
            assert n.children[0] is nodes[2 * i + 1] and n.children[1] is nodes[2 * i + 2]
    return nodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=os.path.join(ROOT, "data/seed-tracemesh/spans.csv.gz"))
    ap.add_argument("--output", default=os.path.join(ROOT, "rust/core/tests/fixtures/river_parity.json.gz"))
    ap.add_argument("--rows", type=int, default=12_000)
    ap.add_argument("--n-trees", type=int, default=16)
    ap.add_argument("--height", type=int, default=8)
    ap.add_argument("--window-size", type=int, default=175)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-duration", type=float, default=50_000.0, help="ms")
    a = ap.parse_args()

    spans = read_spans(a.input, a.rows)
    xs = paper_features(spans, a.max_duration)
    hst = anomaly.HalfSpaceTrees(n_trees=a.n_trees, height=a.height, window_size=a.window_size, seed=a.seed)

    raw = []
    t0 = time.perf_counter_ns()
    for x in xs:
        raw.append(hst.score_one(x))
        hst.learn_one(x)
    elapsed = time.perf_counter_ns() - t0

    # River returns the int 0 while its first window is filling; real scores are floats.
    scores = [None if type(s) is int else f64_bits(s) for s in raw]
    assert all(s is None for s in scores[: a.window_size])
    assert all(s is not None for s in scores[a.window_size :])

    features = sorted(xs[0])
    index = {f: i for i, f in enumerate(features)}
    trees = [[[index[n.feature], f64_bits(n.threshold)] for n in heap_nodes(t, a.height)] for t in hst.trees]

    fixture = {
        "river_version": river.__version__,
        "params": {
            "n_trees": a.n_trees,
            "height": a.height,
            "window_size": a.window_size,
            "seed": a.seed,
            "max_duration_ms": a.max_duration,
            "rows": len(xs),
        },
        "features": features,
        "trees": trees,
        "scores": scores,
        "river_ns_per_span": elapsed / len(xs),
    }
    os.makedirs(os.path.dirname(a.output), exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as g:
        g.write(json.dumps(fixture, separators=(",", ":")).encode())
    with open(a.output, "wb") as f:
        f.write(buf.getvalue())
    print(
        f"wrote {a.output}: {len(xs)} rows, {sum(s is not None for s in scores)} scored, "
        f"{len(buf.getvalue())} bytes; River {elapsed / len(xs):.0f} ns/span"
    )


if __name__ == "__main__":
    main()
