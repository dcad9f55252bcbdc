#!/usr/bin/env python3
"""Span timelines for `scale eval` besides the recorded ones (Python standard library only).

Each stream is a CSV `start_unix_nano,service,operation,duration_ms,label` ordered by start time,
the shape `scale eval` reads as a timeline (spans arrive when they end); the demo's also has
`arrival_unix_nano` and is ordered by it. Deterministic (seeded).

  demo        the recorded OpenTelemetry demo traces (data/otel-demo) replayed as `make demo` does:
              one pass over the 1,876 traces every 60 s, every trace shifted so that its
              request ends when it is sent (scripts/demo.py `request_end`), and all its spans
              arriving then, together (as the collector receives them); two normal passes,
              then every checkoutservice span 10x slower for 40 s (label 1), then normal passes
              again for 120 s. Also writes demo-faults.csv.
  regular     3 operations at 5, 50 and 500 ms (uniform +-10 % jitter), 30 spans/s each for
              10 min; after the first 2 min, 1 % of spans are 3x slower (label 1).
  speedups    the same, but the 1 % are 3x faster (label 1: none of them should be kept).
  steady      a telemetrygen-shaped load with no fault: one service, a parent and a child span per
              trace, 200 traces/s for 10 min, durations 123 us +- 5 %.
  services    a fault-free microservice system: 12 services x 4 operations, log-normal
              latencies (some two-mode), arrival rates from 1 to 80 spans/s, and load waves that
              slow every operation of a service together by up to 30 % for tens of seconds; 20 min.

Usage: scripts/streams.py OUTDIR [NAME ...]    (all of them by default; gzip-compressed)
"""

from __future__ import annotations

import gzip
import math
import random
import sys
from pathlib import Path

import demo as demo_py  # scripts/demo.py: the replay this stream reproduces

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
S = 1_000_000_000
# The demo stream's timeline (scripts/detection.py reads it too): passes of DEMO_LOOP_S, the fault
# after DEMO_PASSES_BEFORE of them, for DEMO_FAULT_S, then DEMO_AFTER_S of normal passes.
DEMO_LOOP_S, DEMO_PASSES_BEFORE, DEMO_FAULT_S, DEMO_AFTER_S, DEMO_FACTOR = 60.0, 2, 40.0, 120.0, 10
DEMO_SECONDS = DEMO_LOOP_S * DEMO_PASSES_BEFORE + DEMO_FAULT_S + DEMO_AFTER_S


def write(path: Path, rows: list[tuple[int, str, str, float, int]]) -> None:
    rows.sort(key=lambda r: r[0])
    with gzip.open(path, "wt", newline="") as f:
        f.write("start_unix_nano,service,operation,duration_ms,label\n")
        for st, svc, op, d, lab in rows:
            f.write(f"{st},{svc},{op},{d:.6f},{lab}\n")


def write_arrivals(path: Path, rows: list[tuple[int, int, str, str, float, int]]) -> None:
    """Rows `(arrival, start, service, operation, duration_ms, label)`, in arrival order: `scale
    eval` gives each span to the engine at its arrival, not at its end."""
    rows.sort(key=lambda r: (r[0], r[1]))
    with gzip.open(path, "wt", newline="") as f:
        f.write("arrival_unix_nano,start_unix_nano,service,operation,duration_ms,label\n")
        for at, st, svc, op, d, lab in rows:
            f.write(f"{at},{st},{svc},{op},{d:.6f},{lab}\n")


def demo(out: Path) -> None:
    """The `make demo` replay, offline: passes of the recording, a 10x checkout fault."""
    # The traces, their order, the fault and the shift as scripts/demo.py sends them.
    traces = demo_py.replay_order(demo_py.steady_part(demo_py.load_traces(demo_py.TRACES)))
    fault_svc = demo_py.FAULT_SERVICE
    loop_s, passes_before, fault_s, factor = DEMO_LOOP_S, DEMO_PASSES_BEFORE, DEMO_FAULT_S, DEMO_FACTOR
    rate = len(traces) / loop_s
    fault = (T0 + int(passes_before * loop_s * S), T0 + int((passes_before * loop_s + fault_s) * S))
    end = T0 + int(DEMO_SECONDS * S)
    rows, i = [], 0
    while True:
        sent = T0 + int(i / rate * S)
        if sent >= end:
            break
        tr = traces[i % len(traces)]
        faulty = fault[0] <= sent < fault[1]
        spans = [(svc, sp, st, st + (en - st) * factor if faulty and svc == fault_svc and en > st else en)
                 for svc, sp, st, en, *_ in tr.spans]
        shift = sent - demo_py.request_end(spans)
        # The whole trace reaches the collector when it is sent, as scripts/demo.py sends it.
        for svc, sp, st, en in spans:
            lab = 1 if faulty and svc == fault_svc else 0
            rows.append((sent, st + shift, svc, sp["name"], max(0, en - st) / 1e6, lab))
        i += 1
    write_arrivals(out / "demo.csv.gz", rows)
    (out / "demo-faults.csv").write_text(
        "fault_id,service,fault_type,start_unix_nano,end_unix_nano\n"
        f"demo-checkout,checkoutservice,latency_x{factor},{fault[0]},{fault[1]}\n")


def regular(out: Path, name: str, factor: float) -> None:
    rng = random.Random(11)
    rows = []
    for op, base in [("fast", 5.0), ("medium", 50.0), ("slow", 500.0)]:
        t = T0
        while t < T0 + 600 * S:
            t += int(rng.expovariate(30.0) * S)
            d = base * rng.uniform(0.9, 1.1)
            lab = 0
            if t > T0 + 120 * S and rng.random() < 0.01:
                d, lab = d * factor, 1
            rows.append((t, "regular", op, d, lab))
    write(out / f"{name}.csv.gz", rows)


def steady(out: Path) -> None:
    rng = random.Random(5)
    rows, t = [], T0
    while t < T0 + 600 * S:
        t += int(rng.expovariate(200.0) * S)
        d = 0.123 * rng.uniform(0.95, 1.05)
        rows.append((t, "telemetrygen", "lets-go", d, 0))
        rows.append((t + 1000, "telemetrygen", "okey-dokey-0", d * rng.uniform(0.95, 1.0), 0))
    write(out / "steady.csv.gz", rows)


def services(out: Path) -> None:
    rng = random.Random(7)
    dur = 1200
    rows = []
    for si in range(12):
        svc = f"svc-{si:02d}"
        # Load waves: every so often the whole service slows down together for a while.
        waves, t = [], 0.0
        while t < dur:
            t += rng.expovariate(1 / 90.0)
            waves.append((t, rng.uniform(10, 60), rng.uniform(0.05, 0.3)))

        def slow(at: float) -> float:
            f = 1.0
            for w0, wl, amp in waves:
                if w0 <= at < w0 + wl:
                    f *= 1 + amp * math.sin(math.pi * (at - w0) / wl)
            return f

        for oi in range(4):
            op = f"op-{oi}"
            rate = math.exp(rng.uniform(math.log(1), math.log(80)))
            mu = rng.uniform(math.log(0.2), math.log(800))
            sigma = rng.uniform(0.1, 0.9)
            two = rng.random() < 0.3
            t = 0.0
            while t < dur:
                t += rng.expovariate(rate)
                m = mu + (math.log(rng.uniform(3, 10)) if two and rng.random() < 0.25 else 0.0)
                d = math.exp(rng.gauss(m, sigma)) * slow(t)
                rows.append((T0 + int(t * S), svc, op, d, 0))
    write(out / "services.csv.gz", rows)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    names = sys.argv[2:] or ["demo", "regular", "speedups", "steady", "services"]
    for n in names:
        {"demo": lambda: demo(out), "regular": lambda: regular(out, "regular", 3.0),
         "speedups": lambda: regular(out, "speedups", 1 / 3), "steady": lambda: steady(out),
         "services": lambda: services(out)}[n]()
        print(out / f"{n}.csv.gz")


if __name__ == "__main__":
    main()
