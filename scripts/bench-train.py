#!/usr/bin/env python3
"""`scale train` reading from Jaeger: spans per second and peak memory, by store size.

Starts Jaeger v2 (scripts/jaeger.sh, memory storage, loopback), fills it with telemetrygen
traces (10 spans each: a root and 9 children, 5,000 traces/s) up to each store size, and runs
`scale train --jaeger ... --max-spans M` against it, measuring wall time and the peak resident
memory of the `scale` process (getrusage of the child). The point: memory is set by
--max-spans (and one page of Jaeger's answer), not by the size of the store paged through.

Usage: scripts/bench-train.py [--sizes 100000,1000000] [--max-spans 200000]
Prints a Markdown table (BENCHMARKS.md, "Pre-training"). Needs `make build`.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCALE = ROOT / "target/release/scale"


def last_line(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) of this child alone (wait4), stdout."""
    t = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{err.read().decode()}")
        return wall, usage.ru_maxrss, out.read().decode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--max-spans", type=int, default=200_000)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    jaeger = last_line([str(ROOT / "scripts/jaeger.sh")])
    tgen = last_line([str(ROOT / "scripts/telemetrygen.sh")])
    grpc, http, query = free_port(), free_port(), free_port()
    env = dict(os.environ,
               JAEGER_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{grpc}",
               JAEGER_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{http}",
               JAEGER_QUERY_HTTP_ENDPOINT=f"127.0.0.1:{query}",
               JAEGER_MAX_TRACES=str(max(sizes) // 10 + 1000))
    log = tempfile.NamedTemporaryFile(prefix="jaeger-", suffix=".log", delete=False)
    j = subprocess.Popen([jaeger, "--config", str(ROOT / "configs/jaeger/test.yaml")], env=env,
                         stdout=log, stderr=log)
    rows = []
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{query}/api/v3/services", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        stored = 0
        since = time.time() - 60
        for size in sizes:
            traces = (size - stored) // 10
            if traces > 0:
                subprocess.run([tgen, "traces", "--otlp-insecure", "--otlp-endpoint",
                                f"127.0.0.1:{grpc}", "--traces", str(traces), "--child-spans", "9",
                                # Throttled: unthrottled, the SDK's queue drops spans.
                                "--rate", "5000", "--service", "bench"],
                               check=True, capture_output=True)
                stored += traces * 10
            with tempfile.TemporaryDirectory() as d:
                for max_spans in (args.max_spans, 2_000_000):
                    out = Path(d) / "s.snap"
                    wall, rss_kib, text = run_measured(
                        [str(SCALE), "train", "--jaeger", f"http://127.0.0.1:{query}",
                         "--since", f"{int(time.time() - since) + 60}s", "--max-spans",
                         str(max_spans), "-o", str(out)])
                    read = int(text.split("read")[1].split()[0])
                    learned = int(text.split("learned")[1].split()[0])
                    rows.append((learned, max_spans, read, wall, read / wall, rss_kib / 1024))
    finally:
        j.terminate()
        j.wait()
    print("| spans learned (of the store) | --max-spans | spans read (with pages' overlaps) | seconds | spans read/s | peak RSS of scale |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for learned, m, read, wall, rate, rss in rows:
        print(f"| {learned:,} | {m:,} | {read:,} | {wall:.1f} | {rate:,.0f} | {rss:,.0f} MiB |")


if __name__ == "__main__":
    main()
