#!/usr/bin/env python3
"""What an online, per-key latency detector can reach on the paper's stream, told the labels of the past.

scripts/oracle_bound.py bounds any per-span detector that may look at the whole test stream with
its labels. SCALE's engine is more constrained: it sees each span once, in order, and knows only
the spans before it. This script plays a generous version of that: for every test span it takes
the histogram (log-duration bins of width --bin, in ln µs) of the *normal* spans of the same
`service::operation` seen so far (the labels of the past are given, so no anomaly ever poisons
the baseline, which no real detector can promise), and scores the span by the probability of its
key being at least this slow (mid-bin, +0.5 smoothing). It then reports F1 at the threshold where
1 % and 0.5 % of the normal test spans are kept, and the best F1 at any threshold.

The keyed engine's score is of this kind (its x0 is the same tail probability, from a time-decayed
sketch; see rust/core/src/lib.rs), so this is the ceiling the default design works under on this
stream; BENCHMARKS.md ("Detection") has the numbers.

`--score slowdown` scores a span by how much better a slowdown of its key explains it than the
key's ordinary latency: ln(p_slow / p), where p is a kernel density estimate over the key's bins
(a bandwidth of max(0.6, 3.5 n^-1/5) bins of 2^(1/4), the usual n^-1/5 rate, plus 5 % spread
wide, a standard deviation of a factor 2.8, so that nothing is impossible) and p_slow the same
density of the key's spans made slower by a factor log-uniform in x1.7..x32. It assumes nothing
of the stream's shock (x8-10). `--self-gate TAU` drops the labels: a span is learned unless its
score is above TAU (a key's first 5 spans always are), which is what an engine could do, if it
never learned what it held back.

Usage: scripts/online_bound.py [--bin 0.25] [--train 19302] [--score tail|density|slowdown]
                               [--self-gate TAU [--learn-every N]]
"""
import argparse
import bisect
import collections
import csv
import gzip
import math
import os

ap = argparse.ArgumentParser()
ap.add_argument("--bin", type=float, nargs="*", default=[0.1, 0.173, 0.25, 0.35],
                help="bin widths in ln(µs) (0.173 = the engine's 2^(1/4) bins)")
ap.add_argument("--train", type=int, default=19302, help="rows learned only (the paper's protocol)")
ap.add_argument("--score", choices=["tail", "density", "slowdown"], default="tail",
                help="tail: P(this slow or slower); density: the mass of the key's bins no denser than the "
                     "span's (a highest-density-region p-value, slower side of the median only), which ranks "
                     "a recurring slow mode (5 s time-outs) below an empty stretch of the tail; "
                     "slowdown: the likelihood ratio of a slowdown (see above)")
ap.add_argument("--self-gate", type=float, default=None, metavar="TAU",
                help="no labels: learn a span unless its score is above TAU (with --score slowdown)")
ap.add_argument("--learn-every", type=int, default=0, metavar="N",
                help="with --self-gate: learn one in N of the spans held back (the engine's INCIDENT_LEARN_EVERY)")
ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "data", "seed-tracemesh", "spans.csv.gz"))
args = ap.parse_args()

with gzip.open(args.data, "rt") as f:
    rows = [(r["service"] + "::" + r["operation"], math.log1p(float(r["duration_ms"]) * 1000.0), r["label"] == "1")
            for r in csv.DictReader(f)]


SLOW_LO, SLOW_HI = 0.75 * math.log(2), 5 * math.log(2)  # x1.68 .. x32, in ln
SMOOTH_MIN, SMOOTH_ONE, WIDE_SHARE, WIDE = 0.6, 3.5, 0.05, 6.0  # in bins of 2^(1/4)
ENGINE_BIN = math.log(2) / 4


class Kernels:
    """Kernel tables by integer bin distance, for bandwidths quantized to 0.1 engine bins."""

    def __init__(self, width: float):
        self.width = width
        self.reach = int(40 / width * ENGINE_BIN) + 1
        self.shifts = [k * width for k in range(int(SLOW_LO / width), int(SLOW_HI / width) + 1)]
        self.levels: dict[int, tuple[list[float], list[float]]] = {}

    def _gauss(self, d: float, sigma: float) -> float:
        return math.exp(-0.5 * (d / sigma) ** 2) / sigma

    def level(self, n: int) -> tuple[list[float], list[float]]:
        sigma_bins = max(SMOOTH_MIN, SMOOTH_ONE * n ** -0.2)
        q = round(sigma_bins * 10)
        if q not in self.levels:
            sigma, wide = q / 10 * ENGINE_BIN, WIDE * ENGINE_BIN  # in ln

            def k(d: float) -> float:
                return (1 - WIDE_SHARE) * self._gauss(d, sigma) + WIDE_SHARE * self._gauss(d, wide)

            ds = [(i - self.reach) * self.width for i in range(2 * self.reach + 1)]
            self.levels[q] = ([k(d) for d in ds],
                              [sum(k(d - s) for s in self.shifts) / len(self.shifts) for d in ds])
        return self.levels[q]

    def slowdown(self, h: collections.Counter, n: int, b: int) -> float:
        ordinary, slow = self.level(n)
        p = q = 0.0
        for x, c in h.items():
            d = b - x
            if -self.reach <= d <= self.reach:
                p += c * ordinary[d + self.reach]
                q += c * slow[d + self.reach]
        if p == 0.0 and q == 0.0:  # beyond reach of everything learned
            return 50.0 if b > max(h) else -50.0
        return math.log(q + 1e-300) - math.log(p + 1e-300)


def f1_at(scored: list[tuple[float, bool]], fpr: float | None) -> tuple[float, float, float]:
    """(F1, recall, FPR) keeping the spans scoring above the threshold that keeps at most `fpr` of
    the normal spans (None: the best F1 at any threshold)."""
    P = sum(1 for _, y in scored if y)
    N = len(scored) - P
    order = sorted(scored, key=lambda s: -s[0])
    tp = fp = 0
    best = (0.0, 0.0, 0.0)
    i = 0
    while i < len(order):
        j = i  # keep the whole tie group or none of it
        while j < len(order) and order[j][0] == order[i][0]:
            tp += order[j][1]
            fp += not order[j][1]
            j += 1
        if fpr is not None and fp > fpr * N:
            break
        f1 = 2 * tp / (2 * tp + fp + (P - tp)) if tp else 0.0
        if fpr is not None or f1 > best[0]:
            best = (f1, tp / P, fp / N)
        i = j
    return best


print(f"{len(rows) - args.train} test spans after {args.train} learned; per-key past normal spans only")
print("| bin (ln µs) | F1 at FPR ≤ 1 % (recall, FPR) | F1 at FPR ≤ 0.5 % | best F1 (FPR) |")
print("| ---: | ---: | ---: | ---: |")
for width in args.bin:
    hist: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    sorted_bins: dict[str, list[int]] = collections.defaultdict(list)
    total: collections.Counter = collections.Counter()
    scored = []
    kernels = Kernels(width)
    held = 0
    for i, (key, ld, anomalous) in enumerate(rows):
        b = int(ld / width)
        h, n = hist[key], total[key]
        score = None
        if args.score == "slowdown":
            score = kernels.slowdown(h, n, b) if n else 0.0
        if score is not None:
            if i >= args.train:
                scored.append((score, anomalous))
        elif i >= args.train:
            if n == 0:
                tail = 1.0
            else:
                bins = sorted_bins[key]
                above = sum(h[x] for x in bins[bisect.bisect_right(bins, b):])
                tail = (above + 0.5 * h.get(b, 0) + 0.5) / (n + 1)
                if args.score == "density":
                    below = sum(h[x] for x in bins[:bisect.bisect_left(bins, b)])
                    if below < n / 2:  # faster than the median: no surprise
                        tail = 1.0
                    else:
                        d0 = h.get(b, 0)
                        tail = (sum(c for c in h.values() if c <= d0) + 0.5) / (n + 1)
            scored.append((-math.log(tail), anomalous))
        if args.self_gate is not None:
            learn = n < 5 or score is None or score <= args.self_gate
            if not learn and args.learn_every:
                held += 1
                learn = held % args.learn_every == 0
        else:
            learn = not anomalous
        if learn:
            if b not in h:
                bisect.insort(sorted_bins[key], b)
            h[b] += 1
            total[key] += 1
    a, c, best = f1_at(scored, 0.01), f1_at(scored, 0.005), f1_at(scored, None)
    print(f"| {width} | {a[0]:.3f} ({a[1]:.3f}, {100 * a[2]:.2f} %) | {c[0]:.3f} | {best[0]:.3f} ({100 * best[2]:.2f} %) |")
