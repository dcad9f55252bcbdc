#!/usr/bin/env python3
"""Replay `incident: true` rules offline from `scale eval --scores`, to weigh rule shapes.

`scale eval --rules FILE --scores S.csv --json` writes, per span, whether its service was in an
incident of its own (the `incident` column: what `when: { incident: true }` counts). This script
replays rule windows over that column, per service, and judges the decisions the way
`scale eval` does (a decision acts unless its service acted within the cooldown; a decision for
a service outside its fault windows plus the grace is false; a CPU fault with labelled spans is
caught when an acting decision comes within `within_s` of its onset).

It first replays the rule `scale eval` ran (`--count`, `--window`, `--cooldown`, `--for`,
`--break`: those of configs/rules/nezha-ob.yaml and the report's by default) and checks
that it finds the engine's own decisions (the count, the false ones and the ones that acted,
from the JSON report); it then prints the same for each variant: `--hold S` the rule with
`for: S` seconds instead (the service's spans in an incident of its own for S seconds, with no
break between two of them over `--break`, as the engine does), `--hold-break D:G` with `for: D`
and breaks of up to G seconds.

Usage (the nezha-ob data, see scripts/nezha-eval.sh):
  scale eval --json --rules configs/rules/nezha-ob.yaml --faults FAULTS --scores /tmp/s.csv \\
      SPANS > /tmp/r.json
  scripts/rule_persistence.py /tmp/s.csv /tmp/r.json --hold 0 5 7 15 20 --hold-break 10:2 10:3
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import sys

S = 1_000_000_000
CPU = ("cpu_contention", "cpu_consumed")

ap = argparse.ArgumentParser()
ap.add_argument("scores", help="scale eval --scores CSV (with the incident column)")
ap.add_argument("report", help="scale eval --json report of the same run (with --faults and --rules)")
ap.add_argument("--count", type=int, default=50)
ap.add_argument("--window", type=float, default=30.0, help="s")
ap.add_argument("--cooldown", type=float, default=60.0, help="s")
ap.add_argument("--for", dest="hold", type=float, default=10.0, help="the rule's `for`, s")
ap.add_argument("--break", dest="brk", type=float, default=None,
                help="the longest break a `for` run survives, s (default: the engine's, from the report)")
ap.add_argument("--hold", dest="holds", nargs="*", default=[], metavar="S",
                help="variants: the rule with `for` of S seconds instead")
ap.add_argument("--hold-break", nargs="*", default=[], metavar="D:G",
                help="variants: `for: D` with breaks of up to G s")
args = ap.parse_args()

report = json.load(open(args.report))["timeline"]
rules = report["rules"]
faults = [dict(f["fault"] if "fault" in f else f, labelled=f["labelled"]) for f in report["faults"]]
grace, within = rules["grace_s"] * S, rules["within_s"] * S
if args.brk is None:
    args.brk = rules["for_break_s"]

# Per service, the times the engine judged its spans (their batch's clock, what rule windows see), and whether its service was in an incident of its own.
spans: dict[str, list[tuple[int, bool]]] = collections.defaultdict(list)
with open(args.scores, newline="") as f:
    for r in csv.DictReader(f):
        spans[r["service"]].append((int(r["judged_unix_nano"]), r["incident"] == "1"))


def replay(count: int, window: float, hold: float = 0.0, brk: float = 0.0) -> list[tuple[int, str]]:
    """Decisions (time, service): `count` breaches within `window` (the ring then cleared, as
    the engine does); with `hold` (the rule's `for`, s), the service's spans in an incident for
    that long with no break between two of them over `brk` s (nor a whole window)."""
    out = []
    for svc, times in spans.items():
        ring: collections.deque[int] = collections.deque()
        run = None  # hold: (since, last)
        for t, inc in times:
            if not inc:
                continue
            if hold:
                keep = run and t - run[1] <= brk * S and t - run[1] < window * S
                run = (run[0] if keep else t, t)
            while ring and t - ring[0] >= window * S:
                ring.popleft()
            ring.append(t)
            held = not hold or t - run[0] >= hold * S
            if len(ring) >= count and held:
                out.append((t, svc))
                ring.clear()
    return sorted(out)


def judge(decisions: list[tuple[int, str]]) -> dict:
    acted, last = [], {}
    for t, s in decisions:
        if s not in last or t - last[s] >= args.cooldown * S:
            last[s] = t
            acted.append((t, s))

    def fault_of(t: int, s: str):
        return next((f for f in faults if f["service"] == s and f["start_ns"] <= t < f["end_ns"] + grace), None)

    first: dict[str, int] = {}
    false_acted = 0
    for t, s in acted:
        f = fault_of(t, s)
        if f is None:
            false_acted += 1
        else:
            first.setdefault(f["fault_id"], t - f["start_ns"])
    cpu = [f for f in faults if f["fault_type"] in CPU and f["labelled"] > 0]
    return {
        "false": sum(1 for t, s in decisions if fault_of(t, s) is None),
        "acted": len(acted),
        "false_acted": false_acted,
        "cpu_in_time": sum(1 for f in cpu if first.get(f["fault_id"], within + 1) <= within),
        "cpu": len(cpu),
    }


base = judge(replay(args.count, args.window, args.hold, args.brk))
# Decisions of one batch for one target are merged into one by the engine, so their total
# depends on batching; the acting ones (one per cooldown) and the false ones do not.
engine = {"false": rules["false_decisions"], "acted": rules["acted"], "false_acted": rules["false_acted"]}
if any(base[k] != v for k, v in engine.items()):
    sys.exit(f"the replay does not find the engine's decisions: {base} vs {engine} "
             "(are --count/--window/--cooldown the rule's?)")
print(f"| rule | false decisions | acting | false acting | CPU faults decided within {within / S:.0f} s |")
print("| --- | ---: | ---: | ---: | ---: |")
rows = [(f"count {args.count} in {args.window:g} s, for {args.hold:g} s, breaks ≤ {args.brk:g} s (as run)",
         base)]
for v in args.holds:
    rows.append((f"count {args.count} in {args.window:g} s, for {float(v):g} s",
                 judge(replay(args.count, args.window, float(v), args.brk))))
for v in args.hold_break:
    d, g = (float(x) for x in v.split(":"))
    rows.append((f"count {args.count} in {args.window:g} s, for {d:g} s, breaks ≤ {g:g} s",
                 judge(replay(args.count, args.window, d, g))))
for name, r in rows:
    print(f"| {name} | {r['false']} | {r['acted']} | {r['false_acted']} | {r['cpu_in_time']}/{r['cpu']} |")
