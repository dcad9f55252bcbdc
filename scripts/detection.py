#!/usr/bin/env python3
"""Detection at the engine's defaults on every data set, side by side (Python standard library).

Runs `scale eval` (target/release/scale, or $SCALE_BIN) on:

  paper      data/seed-tracemesh (the source paper's stream; 19,302 training spans, its protocol)
  nezha-ob   the real fault data (OnlineBoutique, 2 million spans, 56 faults) from $NEZHA_DIR
             (default ../shared/data/nezha-ob; skipped when absent), at the defaults and with the
             first 20,000 spans learned only (the protocol of River's reference numbers); with
             --faults, and with configs/rules/nezha-ob.yaml (one anomaly rule for every service)
  demo       the OpenTelemetry demo recording replayed as `make demo` does (scripts/streams.py):
             two normal passes of 60 s, checkoutservice 10x slower for 40 s, normal again
  regular / speedups / steady / services   scripts/streams.py's synthetic timelines

and the keep budgets 0.5 %, 1 % and 2 %. Prints Markdown tables (BENCHMARKS.md, "Detection");
writes every report (JSON) and the plots of the default runs under docs/eval/detection/.

Usage: scripts/detection.py [--out DIR] [--streams DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import streams  # scripts/streams.py: the data sets it writes, and the demo stream's timeline

ROOT = Path(__file__).resolve().parent.parent
SCALE = Path(os.environ.get("SCALE_BIN", ROOT / "target/release/scale"))
NEZHA = Path(os.environ.get("NEZHA_DIR", ROOT.parent / "shared/data/nezha-ob"))
BUDGETS = [0.005, 0.01, 0.02]


def scale_eval(args: list[str], json_out: Path) -> dict:
    out = subprocess.run([str(SCALE), "eval", "--json", *args], capture_output=True, text=True,
                         env={**os.environ, "SCALE_LOG": "warn"})
    if out.returncode != 0:
        sys.exit(f"scale eval {' '.join(args)} failed:\n{out.stderr}")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(out.stdout)
    return json.loads(out.stdout)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def rate(ph: dict | None, k: str) -> float | None:
    if not ph or not ph.get(k):
        return None
    return ph[k + "_kept"] / ph[k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/eval/detection")
    ap.add_argument("--streams", type=Path, default=ROOT / "_build/streams")
    a = ap.parse_args()
    if not SCALE.exists():
        subprocess.run(["cargo", "build", "--workspace", "--release"], cwd=ROOT, check=True)
    st = a.streams
    # The streams are a cache of scripts/streams.py's output: made again when the script, or the
    # replay of scripts/demo.py it reproduces, changes.
    gen = ROOT / "scripts/streams.py"
    stamp = st / "streams.py.sha256"
    digest = hashlib.sha256(gen.read_bytes() + (ROOT / "scripts/demo.py").read_bytes()).hexdigest()
    if not (st / "services.csv.gz").exists() or not stamp.exists() or stamp.read_text() != digest:
        subprocess.run([sys.executable, str(gen), str(st)], check=True, stdout=subprocess.DEVNULL)
        stamp.write_text(digest)
    sets: dict[str, list[str]] = {
        "paper": ["--train-size", "19302", str(ROOT / "data/seed-tracemesh/spans.csv.gz")],
        "demo": ["--faults", str(st / "demo-faults.csv"), "--after", "120s", str(st / "demo.csv.gz")],
        "regular": [str(st / "regular.csv.gz")],
        "speedups": [str(st / "speedups.csv.gz")],
        "steady": [str(st / "steady.csv.gz")],
        "services": [str(st / "services.csv.gz")],
    }
    have_nezha = (NEZHA / "spans.csv.gz").exists()
    if have_nezha:
        sets["nezha-ob"] = ["--faults", str(NEZHA / "faults.csv"), str(NEZHA / "spans.csv.gz")]
        sets["nezha-ob, 20,000 training spans"] = ["--train-size", "20000", *sets["nezha-ob"]]
    else:
        print(f"(no {NEZHA}/spans.csv.gz: set NEZHA_DIR; the fault data is left out)", file=sys.stderr)
    slug = lambda n: n.split(",")[0]
    jobs = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, args in sets.items():
            for b in BUDGETS:
                extra = ["--keep-budget", str(b)]
                if b == 0.01 and "," not in name:
                    extra += ["--plots", str(a.out / slug(name))]
                    if name == "demo":
                        extra += ["--scores", str(st / "demo-scores.csv")]
                suffix = "" if b == 0.01 else f"-{b}"
                out = a.out / slug(name) / f"report{'-train20000' if ',' in name else ''}{suffix}.json"
                jobs[(name, b)] = pool.submit(scale_eval, [*extra, *args], out)
        rules = None
        if have_nezha:
            rules = pool.submit(scale_eval, ["--rules", str(ROOT / "configs/rules/nezha-ob.yaml"),
                                             *sets["nezha-ob"]], a.out / "nezha-ob/report-rules.json")
    r = {k: v.result() for k, v in jobs.items()}

    print("| data set (defaults: keep_budget 1 %) | normal spans kept (FPR) | recall | precision | F1 | ROC AUC |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in sets:
        m = r[(name, 0.01)].get("metrics")
        if m and m["tp"] + m["fn"] > 0:
            print(f"| {name} | {pct(m['fpr'])} | {m['recall']:.3f} | {m['precision']:.3f} | {m['f1']:.3f} | {m['roc_auc']:.3f} |")
        else:
            ph = r[(name, 0.01)]["timeline"]["phases"]
            print(f"| {name} | {pct(rate(ph.get('all'), 'normal'))} | | | | |")
    print()
    print("| data set: normal spans kept at keep_budget | 0.5 % | 1 % | 2 % |")
    print("| --- | ---: | ---: | ---: |")
    for name in sets:
        cells = []
        for b in BUDGETS:
            rep = r[(name, b)]
            m = rep.get("metrics")
            if m and m["tp"] + m["fn"] > 0:
                cells.append(pct(m["fpr"]))
            else:
                ph = (rep.get("timeline") or {}).get("phases", {})
                cells.append(pct(rate(ph.get("all") or ph.get("before"), "normal")))
        print(f"| {name} | {' | '.join(cells)} |")
    print()
    demo = r[("demo", 0.01)]["timeline"]["phases"]
    f0 = streams.DEMO_LOOP_S * streams.DEMO_PASSES_BEFORE
    print(f"| demo replay ({streams.DEMO_LOOP_S:.0f} s a pass; the fault {f0:.0f}–{f0 + streams.DEMO_FAULT_S:.0f} s, "
          "in checkoutservice) | normal spans kept | of services other than checkoutservice | faulted spans kept |")
    print("| --- | ---: | ---: | ---: |")
    for ph in ["before", "during", "after"]:
        p = demo.get(ph)
        print(f"| {ph} | {pct(rate(p, 'normal'))} | {pct(rate(p, 'unaffected'))} | {pct(rate(p, 'labelled'))} |")
    # Per pass: every normal span, and those of the services the fault does not touch (what
    # scripts/demo.py's checks compare; offline, the faulted service's first slow child spans
    # arrive up to 36 s before the fault, as they end that long before their trace: see
    # BENCHMARKS.md, "The demo replay, offline").
    passes: dict[int, list[int]] = {}
    others: dict[int, list[int]] = {}
    po = [0, 0]
    with open(st / "demo-scores.csv") as f:
        rows = list(csv.DictReader(f))
    # Passes of the replay; a few spans of three traces end minutes after it (scripts/demo.py
    # `request_end`), past its last pass, and are counted in no pass.
    t0 = min(int(x["arrival_unix_nano"]) for x in rows)
    n_passes = math.ceil(streams.DEMO_SECONDS / streams.DEMO_LOOP_S)
    for x in rows:
        p = int((int(x["arrival_unix_nano"]) - t0) / 1e9 // streams.DEMO_LOOP_S)
        if x["label"] == "0" and p < n_passes:
            untouched = x["service"] != streams.demo_py.FAULT_SERVICE
            for d in [passes, others] if untouched else [passes]:
                c = d.setdefault(p, [0, 0])
                c[0] += 1
                c[1] += int(x["keep"])
        elif x["operation"] == "oteldemo.CheckoutService/PlaceOrder":
            po[0] += 1
            po[1] += int(x["keep"])
    print()
    per_pass = lambda d: ", ".join(f"pass {p + 1} {pct(k / n)}" for p, (n, k) in sorted(d.items()))
    print(f"demo, normal spans kept per pass: {per_pass(passes)}; of services other than "
          f"{streams.demo_py.FAULT_SERVICE}: {per_pass(others)}; faulted PlaceOrder spans kept: {po[1]}/{po[0]}")
    if rules is not None:
        rr = rules.result()["timeline"]["rules"]
        print()
        print(f"rules on nezha-ob (configs/rules/nezha-ob.yaml): {len(rr['decisions'])} decisions, "
              f"{rr['acted']} outside their cooldown; false: {rr['false_decisions']} ({rr['false_acted']} outside the cooldown)")
        print("| fault type | faults | with labelled spans | decided within 60 s | decided at all |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for b in rr["by_type"]:
            print(f"| {b['fault_type']} | {b['faults']} | {b['with_labelled_spans']} | {b['decided_in_time']} | {b['decided']} |")


if __name__ == "__main__":
    main()
