#!/usr/bin/env python3
"""`make demo`: trace-driven scaling, for real, in a few minutes (Python 3.11 standard library).

What runs, all on 127.0.0.1 and all started (and stopped) by this script:

  scale-testcluster   etcd v3.7.3 + kube-apiserver v1.37.2, with configs/k8s/scale-daemon.yaml and
                      configs/k8s/rbac-otel-demo.yaml applied and Deployment otel-demo/checkout (1)
  scale serve         the daemon, Kubernetes orchestrator, as the service account scale-system/scale
  otelcol-scale       configs/collector/sidecar.yaml (the `scale` processor, rules configs/rules/demo.yaml)
  otelcol-scale       a stand-in trace store for the sidecar's traces/store pipeline (otlp -> debug)

This script replays data/otel-demo/traces.jsonl.gz (its steady part: `steady_part`) to the sidecar
over OTLP/HTTP JSON, timestamps shifted to now, in a loop at a steady rate; after --normal seconds
it multiplies the durations of every `checkoutservice` span by --factor for --fault seconds, then
sends normal traffic again until the daemon has scaled the Deployment back to its minimum (bounded
by --recover-max). Meanwhile it shows the kept spans and decisions (from the daemon's JSON log),
the Kubernetes Events and the Deployment's replicas (scale subresource, as the admin). At the end:
a timeline, and an SVG plot plus the transcript in --out.

Binaries come from `make demo` (cargo build --workspace --release, make collector,
scripts/k8s-bins.sh). Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gzip
import http.client
import json
import secrets
import math
import os
import random
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "configs/rules/demo.yaml"
SIDECAR = ROOT / "configs/collector/sidecar.yaml"
TRACES = ROOT / "data/otel-demo/traces.jsonl.gz"
OTELCOL = ROOT / "_build/otelcol-scale/otelcol-scale"
SCALE = ROOT / "target/release/scale"
TESTCLUSTER = ROOT / "target/release/scale-testcluster"

NAMESPACE, DEPLOYMENT = "otel-demo", "checkout"
FAULT_SERVICE = "checkoutservice"  # the recording's name for the demo's checkout service
RULE_OPERATION = "oteldemo.CheckoutService/PlaceOrder"
RULE_THRESHOLD_MS = 5000.0  # configs/rules/demo.yaml: duration_above


# --- console -------------------------------------------------------------------------------


class Console:
    """Timestamped lines (seconds since the demo started) on stdout and in a transcript."""

    COLORS = {"fault": "1;31", "decision": "1;33", "event": "1;32", "replicas": "1;36", "kept": "35", "dim": "2", "head": "1"}

    def __init__(self) -> None:
        self.t0 = time.time()
        self.lock = threading.Lock()
        self.lines: list[str] = []
        self.color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None

    def rel(self, t: float | None = None) -> float:
        return (time.time() if t is None else t) - self.t0

    def say(self, text: str, kind: str = "", t: float | None = None) -> None:
        line = f"[{self.rel(t):6.1f}s] {text}"
        with self.lock:
            self.lines.append(line)
            if self.color and kind in self.COLORS:
                print(f"\x1b[{self.COLORS[kind]}m{line}\x1b[0m", flush=True)
            else:
                print(line, flush=True)

    def plain(self, text: str = "") -> None:
        with self.lock:
            self.lines.append(text)
            print(text, flush=True)


OUT = Console()


# --- processes -----------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    # Die with this script even if it is killed with SIGKILL (the spawning thread is the main
    # thread, which lives until the end).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    stop_timeout: float


class Procs:
    """Every process the demo starts, each in its own process group (its children too)."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], log: Path, env: dict | None = None, stdout_pipe: bool = False,
              stderr_pipe: bool = False, stdin_pipe: bool = False, stop_timeout: float = 15.0) -> Proc:
        logf = open(log, "ab")
        p = subprocess.Popen(
            [str(a) for a in argv],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else logf,
            stderr=subprocess.PIPE if stderr_pipe else logf,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        logf.close()
        proc = Proc(name, p, log, stop_timeout)
        self.procs.append(proc)
        return proc

    def dead(self) -> list[Proc]:
        return [p for p in self.procs if p.popen.poll() is not None]

    def stop_all(self) -> list[str]:
        """Stop in reverse start order: SIGTERM, wait, then SIGKILL the whole group. Returns the
        names of groups that still had processes after that (should be none)."""
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                try:
                    p.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    p.popen.wait(timeout=p.stop_timeout)
                except subprocess.TimeoutExpired:
                    OUT.say(f"{p.name} did not stop within {p.stop_timeout:.0f} s of SIGTERM; killing it", "fault")
            # Whatever is left in the group (etcd, kube-apiserver if scale-testcluster died).
            _killpg(p.popen.pid, signal.SIGKILL)
            if p.popen.poll() is None:
                p.popen.wait(timeout=5)
            for s in (p.popen.stdin, p.popen.stdout, p.popen.stderr):
                if s:
                    try:
                        s.close()
                    except OSError:
                        pass
        time.sleep(0.2)
        return [p.name for p in self.procs if _group_alive(p.popen.pid)]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Any process (not a zombie) left in process group `pgid`?"""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str) -> bool:
    try:
        with NO_PROXY.open(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_until(what: str, ok, timeout: float, procs: Procs) -> None:
    deadline = time.time() + timeout
    while not ok():
        dead = procs.dead()
        if dead:
            raise DemoError(f"{dead[0].name} exited while waiting for {what}", dead[0].log)
        if time.time() > deadline:
            raise DemoError(f"{what}: not ready within {timeout:.0f} s")
        time.sleep(0.2)


class DemoError(Exception):
    def __init__(self, msg: str, log: Path | None = None) -> None:
        super().__init__(msg)
        self.log = log


def tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"(no log: {e})"


# --- Kubernetes, as the admin, over raw HTTPS ----------------------------------------------


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        kc = json.loads(kubeconfig.read_text())  # scale-testcluster writes JSON kubeconfigs
        cluster = kc["clusters"][0]["cluster"]
        self.server = cluster["server"]
        self.token = kc["users"][0]["user"]["token"]
        ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))

    def get(self, path: str) -> dict:
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"})
        with self.opener.open(req, timeout=5) as r:
            return json.load(r)

    def replicas(self) -> int:
        return int(self.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{DEPLOYMENT}/scale")["spec"].get("replicas", 0))

    def events(self) -> list[dict]:
        return self.get(f"/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events").get("items", [])


# --- what happened (shared by the threads) ----------------------------------------------------


@dataclass
class Record:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent_po: list = field(default_factory=list)  # (t, duration_ms, faulted) of each PlaceOrder sent
    kept: list = field(default_factory=list)  # (t, service, operation, duration_ms, score)
    decisions: list = field(default_factory=list)  # (t, rule, action, count, observed_ms, trace_id)
    scalings: list = field(default_factory=list)  # (t, from, to, reason, decision_to_request_ms)
    replicas: list = field(default_factory=list)  # (t, replicas) at every change (and the first read)
    events: list = field(default_factory=list)  # (t_seen, reason, note)
    phases: list = field(default_factory=list)  # (t, name)
    sent_traces: int = 0
    sent_spans: int = 0
    post_errors: int = 0
    daemon_warnings: list = field(default_factory=list)
    collector_metrics: dict = field(default_factory=dict)
    sent_log: list = field(default_factory=list)  # (t, spans, FAULT_SERVICE spans) sent so far, after each request
    sent_fault_svc: int = 0

    def sent_at(self, t: float) -> tuple[int, int]:
        n = (0, 0)
        for tt, c, f in self.sent_log:
            if tt > t:
                break
            n = (c, f)
        return n

    def phase(self, name: str) -> float:
        t = time.time()
        with self.lock:
            self.phases.append((t, name))
        return t


# --- replay --------------------------------------------------------------------------------


@dataclass
class Trace:
    resource_spans: list
    spans: list  # (service, span dict, start, end, trace_id, [(event dict, time)])
    start: int
    place_order: bool
    fault_svc_spans: int


def load_traces(path: Path) -> list[Trace]:
    traces = []
    with gzip.open(path, "rt") as f:
        for line in f:
            req = json.loads(line)
            spans = []
            for rs in req.get("resourceSpans", []):
                svc = ""
                for kv in rs.get("resource", {}).get("attributes", []):
                    if kv.get("key") == "service.name":
                        svc = kv.get("value", {}).get("stringValue", "")
                for ss in rs.get("scopeSpans", []):
                    for sp in ss.get("spans", []):
                        st, en = int(sp["startTimeUnixNano"]), int(sp["endTimeUnixNano"])
                        evs = [(ev, int(ev.get("timeUnixNano", 0))) for ev in sp.get("events", [])]
                        spans.append((svc, sp, st, en, sp.get("traceId", ""), evs))
            if spans:
                traces.append(Trace(req["resourceSpans"], spans, min(s[2] for s in spans),
                                    any(s[1]["name"] == RULE_OPERATION for s in spans), sum(1 for s in spans if s[0] == FAULT_SERVICE)))
    return traces


FRONT_DOOR = "frontend"  # the recording's web front end: its failing spans mark start-up and shutdown


def failed(span: dict) -> bool:
    return span.get("status", {}).get("code") in (2, "STATUS_CODE_ERROR")


def steady_part(traces: list[Trace]) -> list[Trace]:
    """The part of the recording in which the demo was up: the longest run of traces (by start)
    in which no span of FRONT_DOOR failed. The recording also holds the demo starting and
    stopping, which are not normal traffic: for its first 6.2 minutes cart, checkout, shipping,
    quote, payment and email services had not come up (their first spans are 5.6–6.0 min in), and
    911 of the frontend's spans failed, every cart call among them, fast; from 14.3 min requests
    time out at 5 s as the demo stops. Between them (971 of 1,876 traces, 29 of the 34 holding a
    PlaceOrder) no frontend span fails. Replayed whole, every pass was a cart outage and its
    recovery, the cart calls 40–70 times slower from a third of the way in (BENCHMARKS.md, "The
    demo replay, offline")."""
    ordered = sorted(traces, key=lambda t: t.start)
    bad = [i for i, t in enumerate(ordered) if any(s[0] == FRONT_DOOR and failed(s[1]) for s in t.spans)]
    edges = [-1, *bad, len(ordered)]
    a, b = max(zip(edges, edges[1:]), key=lambda e: e[1] - e[0])
    return ordered[a + 1:b]


def request_end(spans: list) -> int:
    """When a trace's request ended: the latest end among its spans that start before its root
    span (the earliest without a parent) ends. The replay shifts each trace so that its request
    ends when it is sent. Three traces of the recording also hold 85 spans that start minutes after
    their request ended (DNS look-ups and TCP connects of pooled connections, a flagd event
    stream, which kept the request's context); counted in, they would pull the request minutes
    into the past (a faulted PlaceOrder 367 s before the fault). They keep their offset from the
    request instead, and arrive when they end. `spans`: (service, span, start, end, ...) tuples."""
    roots = [s for s in spans if not s[1].get("parentSpanId")] or spans
    root_end = min(roots, key=lambda s: s[2])[3]
    return max(s[3] for s in spans if s[2] <= root_end)


def replay_order(traces: list[Trace]) -> list[Trace]:
    """The recording's order (by start time), with the traces holding a PlaceOrder spread evenly
    over the loop, so the rule's operation arrives at a steady pace (the recording has them all
    in its second half)."""
    po = sorted((t for t in traces if t.place_order), key=lambda t: t.start)
    rest = sorted((t for t in traces if not t.place_order), key=lambda t: t.start)
    if not po:
        return rest
    out, every = [], len(traces) / len(po)
    slots = {int(i * every + every / 2) for i in range(len(po))}
    pi = iter(po)
    ri = iter(rest)
    for i in range(len(traces)):
        nxt = next(pi, None) if i in slots else next(ri, None)
        if nxt is None:
            nxt = next(ri, None) or next(pi)
        out.append(nxt)
    return out


class Replay(threading.Thread):
    """Posts traces to the sidecar's OTLP/HTTP endpoint at `rate` traces/s, in batches every
    `interval` s; each trace is shifted so that its request ends now (`request_end`), gets a fresh
    trace id per loop, and, while `factor` > 1, has its FAULT_SERVICE spans' durations multiplied."""

    def __init__(self, order: list[Trace], endpoint: str, rate: float, rec: Record, stop: threading.Event) -> None:
        super().__init__(name="replay", daemon=True)
        self.order, self.rate, self.rec, self.stop_ev = order, rate, rec, stop
        self.host, port = endpoint.split(":")
        self.port = int(port)
        self.factor = 1
        self.salt = random.Random().getrandbits(32)

    def render(self, tr: Trace, loop: int, now_ns: int, factor: int) -> tuple[list, list]:
        spans = []
        for svc, sp, st, en, tid, evs in tr.spans:
            if factor != 1 and svc == FAULT_SERVICE and en > st:
                en = st + (en - st) * factor
            spans.append((svc, sp, st, en, tid, evs))
        shift = now_ns - request_end(spans)
        prefix = (self.salt ^ (loop * 0x9E3779B1)) & 0xFFFFFFFF
        placed = []
        for svc, sp, st, en, tid, evs in spans:
            sp["startTimeUnixNano"] = str(st + shift)
            sp["endTimeUnixNano"] = str(en + shift)
            if len(tid) == 32:
                sp["traceId"] = f"{int(tid[:8], 16) ^ prefix:08x}{tid[8:]}"
            for ev, t in evs:
                ev["timeUnixNano"] = str(t + shift)
            if sp["name"] == RULE_OPERATION:
                placed.append(((en - st) / 1e6, factor != 1))
        return tr.resource_spans, placed

    def run(self) -> None:
        n = len(self.order)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        start, sent, interval = time.time(), 0, 0.25
        while not self.stop_ev.is_set():
            due = min(int((time.time() - start) * self.rate), sent + 64)
            rss, po = [], []
            factor = self.factor
            now_ns = time.time_ns()
            spans = batch = fault_svc = 0
            while sent < due:
                tr = self.order[sent % n]
                r, placed = self.render(tr, sent // n, now_ns, factor)
                rss.extend(r)
                po.extend(placed)
                spans += len(tr.spans)
                fault_svc += tr.fault_svc_spans
                sent += 1
                batch += 1
            if rss:
                body = json.dumps({"resourceSpans": rss}, separators=(",", ":")).encode()
                ok = False
                for _ in range(2):
                    try:
                        conn.request("POST", "/v1/traces", body, {"Content-Type": "application/json"})
                        resp = conn.getresponse()
                        resp.read()
                        ok = resp.status == 200
                        break
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                t = time.time()
                with self.rec.lock:
                    if ok:
                        self.rec.sent_traces += batch
                        self.rec.sent_spans += spans
                        self.rec.sent_fault_svc += fault_svc
                        self.rec.sent_log.append((t, self.rec.sent_spans, self.rec.sent_fault_svc))
                        for d, faulted in po:
                            self.rec.sent_po.append((t, d, faulted))
                    else:
                        self.rec.post_errors += 1
            self.stop_ev.wait(max(0.0, start + (int((time.time() - start) / interval) + 1) * interval - time.time()))
        conn.close()


# --- the daemon's log ----------------------------------------------------------------------


class DaemonLog(threading.Thread):
    """Reads `scale serve`'s JSON log (stderr), keeps a copy, records and shows what matters."""

    def __init__(self, stream, path: Path, rec: Record) -> None:
        super().__init__(name="daemon-log", daemon=True)
        self.stream, self.path, self.rec = stream, path, rec
        self.last_po_line = 0.0
        self.po_suppressed = 0
        self.last_svc_line = 0.0

    def run(self) -> None:
        with open(self.path, "ab") as out:
            for raw in iter(self.stream.readline, b""):
                out.write(raw)
                t = time.time()
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue
                f = obj.get("fields", {})
                msg = f.get("message", "")
                if msg == "Kept span.":
                    self.kept(t, f)
                elif msg == "Decision received.":
                    d = (t, f.get("rule"), str(f.get("action", "")).lower(), f.get("count"), float(f.get("observed_ms", "nan")), f.get("trace_id", ""))
                    with self.rec.lock:
                        self.rec.decisions.append(d)
                    OUT.say(f"DECISION  scale.decision from the collector: rule {d[1]}, action {d[2]}, {d[3]} breaches in the window, "
                            f"observed {d[4]:,.0f} ms, evidence trace {d[5]}", "decision", t)
                elif msg == "Scaling workload.":
                    s = (t, f.get("from"), f.get("to"), f.get("reason", ""), f.get("decision_to_request_ms"))
                    with self.rec.lock:
                        self.rec.scalings.append(s)
                    lat = f", {s[4]:.1f} ms after the decision" if isinstance(s[4], (int, float)) else ""
                    OUT.say(f"daemon    scaling {f.get('target')} from {s[1]} to {s[2]} replicas ({s[3]}){lat}", "replicas", t)
                elif obj.get("level") in ("WARN", "ERROR"):
                    with self.rec.lock:
                        self.rec.daemon_warnings.append(msg)
                    OUT.say(f"daemon    {obj.get('level')}: {msg} {json.dumps({k: v for k, v in f.items() if k != 'message'})}", "fault", t)

    def kept(self, t: float, f: dict) -> None:
        svc, op = f.get("service", ""), f.get("operation", "")
        d, score = float(f.get("duration_ms", 0.0)), f.get("score")
        score = float(score) if isinstance(score, (int, float)) else float("nan")
        with self.rec.lock:
            self.rec.kept.append((t, svc, op, d, score))
        # Rate-limited: the rule's operation at most once a second, the faulted service's other
        # spans once every 5 s; the rest only in the status lines.
        if op == RULE_OPERATION:
            if t - self.last_po_line >= 1.0:
                more = f" (+{self.po_suppressed} more)" if self.po_suppressed else ""
                OUT.say(f"kept      {svc} {op}  {d:,.0f} ms  score {score:.3f}  trace {f.get('trace_id', '')}{more}", "kept", t)
                self.last_po_line, self.po_suppressed = t, 0
            else:
                self.po_suppressed += 1
        elif svc == FAULT_SERVICE and t - self.last_svc_line >= 5.0:
            OUT.say(f"kept      {svc} {op}  {d:,.0f} ms  score {score:.3f}", "kept", t)
            self.last_svc_line = t


# --- Kubernetes watcher ----------------------------------------------------------------------


class Watcher(threading.Thread):
    """Polls the Deployment's scale subresource (every 0.5 s) and the namespace's Events (1 s)."""

    def __init__(self, kube: Kube, rec: Record, stop: threading.Event) -> None:
        super().__init__(name="watcher", daemon=True)
        self.kube, self.rec, self.stop_ev = kube, rec, stop
        self.seen: set[str] = set()
        self.current: int | None = None

    def run(self) -> None:
        i = 0
        while not self.stop_ev.is_set():
            try:
                r = self.kube.replicas()
                t = time.time()
                if r != self.current:
                    if self.current is not None:
                        OUT.say(f"REPLICAS  Deployment {NAMESPACE}/{DEPLOYMENT}: {self.current} -> {r}", "replicas", t)
                    with self.rec.lock:
                        self.rec.replicas.append((t, r))
                    self.current = r
                if i % 2 == 0:
                    self.poll_events()
            except OSError as e:
                OUT.say(f"watcher   cannot read from the API server: {e}", "fault")
            i += 1
            self.stop_ev.wait(0.5)

    def poll_events(self) -> None:
        items = sorted(self.kube.events(), key=lambda e: e.get("eventTime") or "")
        for e in items:
            name = e["metadata"]["name"]
            if name in self.seen:
                continue
            self.seen.add(name)
            t = time.time()
            reason, note = e.get("reason", ""), e.get("note", "")
            with self.rec.lock:
                self.rec.events.append((t, reason, note))
            who = e.get("regarding", {})
            OUT.say(f"EVENT     {e.get('type')} {reason} on {who.get('kind')} {NAMESPACE}/{who.get('name')} "
                    f"(by {e.get('reportingController')}): {note}", "event", t)


# --- status lines --------------------------------------------------------------------------


def status(rec: Record, since: dict, replicas: int | None) -> None:
    with rec.lock:
        spans, kept = rec.sent_spans, len(rec.kept)
        new_kept = rec.kept[since["kept"]:]
        po = [d for t, d, _ in rec.sent_po[since["po"]:]]
        since.update(kept=kept, po=len(rec.sent_po))
    d_spans, d_kept = spans - since["spans"], len(new_kept)
    dt = max(1e-9, time.time() - since["t"])
    since.update(spans=spans, t=time.time())
    by_svc = collections.Counter(k[1] for k in new_kept).most_common(3)
    top = ", ".join(f"{s} {n}" for s, n in by_svc) or "-"
    po.sort()
    p50 = f"{po[len(po) // 2]:,.0f} ms" if po else "-"
    pct = 100.0 * d_kept / d_spans if d_spans else 0.0
    OUT.say(f"traffic   {d_spans / dt:4.0f} spans/s sent, {d_kept} kept ({pct:.1f} %; most: {top}); "
            f"PlaceOrder p50 {p50} ({len(po)} sent); replicas {replicas if replicas is not None else '?'}", "dim")


# --- SVG -----------------------------------------------------------------------------------


def svg_plot(rec: Record, path: Path, t_start: float, t_end: float, fault: tuple[float, float]) -> None:
    W, left, right = 980, 70, 20
    panels = [("PlaceOrder latency as sent (log scale)", 190), ("anomaly score of kept spans", 190), ("checkout replicas", 140)]
    top, gap = 84, 34
    H = top + sum(h for _, h in panels) + gap * len(panels) + 34
    pw = W - left - right
    T = max(1.0, t_end - t_start)

    def x(t: float) -> float:
        return left + pw * min(1.0, max(0.0, (t - t_start) / T))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">SCALE demo: a latency fault in checkout, the rule fires, '
           f'the Deployment scales out and back</text>',
           f'<text x="{left}" y="42" fill="#555">x: seconds since the demo started (as in the transcript). Shaded: the fault, every '
           f'checkoutservice span {ARGS.factor}x longer.</text>',
           f'<text x="{left}" y="58" fill="#555">Dashed orange: a scale.decision reached the daemon. Green: the Deployment\'s replicas '
           f'changed (scale subresource).</text>']
    y0 = top
    frames = []
    for title, h in panels:
        frames.append((y0, h))
        y0 += h + gap
    with rec.lock:
        sent_po, kept = list(rec.sent_po), list(rec.kept)
        decisions, replicas = list(rec.decisions), list(rec.replicas)
    for (py, ph), (title, _) in zip(frames, panels):
        out.append(f'<rect x="{left}" y="{py}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>')
        out.append(f'<rect x="{x(fault[0]):.1f}" y="{py}" width="{max(0.0, x(fault[1]) - x(fault[0])):.1f}" height="{ph}" fill="#e53935" fill-opacity="0.10"/>')
        out.append(f'<text x="{left}" y="{py - 6}" font-weight="bold">{title}</text>')
        for d in decisions:
            out.append(f'<line x1="{x(d[0]):.1f}" y1="{py}" x2="{x(d[0]):.1f}" y2="{py + ph}" stroke="#fb8c00" stroke-dasharray="4,3"/>')
        prev = None
        for t, r in replicas:
            if prev is not None and r != prev:
                out.append(f'<line x1="{x(t):.1f}" y1="{py}" x2="{x(t):.1f}" y2="{py + ph}" stroke="#43a047" stroke-opacity="0.6"/>')
            prev = r
        # x ticks
        step = 30 if T > 150 else 15
        tt = 0.0
        while tt <= (t_end - OUT.t0) + 1e-9:
            xt = x(OUT.t0 + tt)
            if OUT.t0 + tt >= t_start:
                out.append(f'<line x1="{xt:.1f}" y1="{py + ph}" x2="{xt:.1f}" y2="{py + ph + 4}" stroke="#555"/>')
                out.append(f'<text x="{xt:.1f}" y="{py + ph + 16}" text-anchor="middle" fill="#555">{tt:.0f}</text>')
            tt += step

    # Panel 1: latency, log scale.
    (py, ph) = frames[0]
    lo, hi = math.log10(300), math.log10(300_000)

    def ylat(ms: float) -> float:
        v = (math.log10(max(ms, 1.0)) - lo) / (hi - lo)
        return py + ph - ph * min(1.0, max(0.0, v))

    for ms, label in [(1000, "1 s"), (10_000, "10 s"), (100_000, "100 s")]:
        out.append(f'<line x1="{left}" y1="{ylat(ms):.1f}" x2="{left + pw}" y2="{ylat(ms):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{ylat(ms) + 4:.1f}" text-anchor="end" fill="#555">{label}</text>')
    out.append(f'<line x1="{left}" y1="{ylat(RULE_THRESHOLD_MS):.1f}" x2="{left + pw}" y2="{ylat(RULE_THRESHOLD_MS):.1f}" stroke="#c62828" stroke-dasharray="6,4"/>')
    out.append(f'<text x="{left + pw - 4}" y="{ylat(RULE_THRESHOLD_MS) - 4:.1f}" text-anchor="end" fill="#c62828">rule: duration &gt; 5 s, 5 times in 30 s</text>')
    for t, ms, faulted in sent_po:
        out.append(f'<circle cx="{x(t):.1f}" cy="{ylat(ms):.1f}" r="2.6" fill="{"#e53935" if faulted else "#1e88e5"}"/>')

    # Panel 2: scores of kept spans (other services thinned to 4 a second).
    (py, ph) = frames[1]
    scores = [k[4] for k in kept if k[4] == k[4]]
    slo = min([0.9] + scores)
    slo = math.floor(slo * 20) / 20

    def ysc(s: float) -> float:
        return py + ph - ph * (s - slo) / (1.0 - slo)

    v = slo
    while v <= 1.0 + 1e-9:
        out.append(f'<line x1="{left}" y1="{ysc(v):.1f}" x2="{left + pw}" y2="{ysc(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{ysc(v) + 4:.1f}" text-anchor="end" fill="#555">{v:.3f}</text>')
        v += 0.05 if 1.0 - slo > 0.15 else 0.025
    out.append(f'<text x="{left + pw - 4}" y="{py + ph - 6:.1f}" text-anchor="end" fill="#6a1b9a">'
               f'the keep threshold is calibrated online to keep_budget 1 % of ordinary traffic</text>')
    per_sec: collections.Counter = collections.Counter()
    others, fault_svc, po_pts = [], [], []
    for t, svc, op, d, s in kept:
        if s != s:
            continue
        if op == RULE_OPERATION:
            po_pts.append((t, s))
        elif svc == FAULT_SERVICE:
            fault_svc.append((t, s))
        else:
            sec = int(t)
            per_sec[sec] += 1
            if per_sec[sec] <= 4:
                others.append((t, s))
    for pts, color, r in [(others, "#9e9e9e", 1.8), (fault_svc, "#fb8c00", 2.2), (po_pts, "#e53935", 3.0)]:
        for t, s in pts:
            out.append(f'<circle cx="{x(t):.1f}" cy="{ysc(s):.1f}" r="{r}" fill="{color}" fill-opacity="0.8"/>')

    # Panel 3: replicas.
    (py, ph) = frames[2]
    rmax = max([4] + [r for _, r in replicas])

    def yr(r: float) -> float:
        return py + ph - ph * r / (rmax + 0.5)

    for r in range(0, rmax + 1):
        out.append(f'<line x1="{left}" y1="{yr(r):.1f}" x2="{left + pw}" y2="{yr(r):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{yr(r) + 4:.1f}" text-anchor="end" fill="#555">{r}</text>')
    if replicas:
        pts = []
        cur = replicas[0][1]
        pts.append((x(t_start), yr(cur)))
        for t, r in replicas[1:]:
            pts.append((x(t), yr(cur)))
            pts.append((x(t), yr(r)))
            cur = r
        pts.append((x(t_end), yr(cur)))
        out.append('<polyline fill="none" stroke="#43a047" stroke-width="2.5" points="' + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')

    # Legend, two rows.
    items = [("#1e88e5", "PlaceOrder sent, normal"), ("#e53935", "PlaceOrder sent faulted (top) / kept (middle)"),
             ("#fb8c00", "other checkoutservice spans kept"), ("#9e9e9e", "other services' kept spans (at most 4 a second drawn)")]
    for i, (color, label) in enumerate(items):
        lx, ly = left + (i % 2) * 420, H - 26 + (i // 2) * 16
        out.append(f'<circle cx="{lx + 4}" cy="{ly - 4}" r="4" fill="{color}"/><text x="{lx + 12}" y="{ly}" fill="#333">{label}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


# --- main ----------------------------------------------------------------------------------

ARGS: argparse.Namespace


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--normal", type=float, default=120,
                   help="seconds of normal traffic before the fault: two passes over the recording at the default pace (120)")
    p.add_argument("--fault", type=float, default=40, help="seconds the fault lasts (40)")
    p.add_argument("--factor", type=int, default=10, help="checkoutservice durations are multiplied by this during the fault (10)")
    p.add_argument("--loop-seconds", type=float, default=60, help="one pass over the recording's steady part (971 traces) takes this long (60)")
    p.add_argument("--recover-max", type=float, default=150, help="after the fault, wait at most this long for the scale-down to min (150)")
    p.add_argument("--out", type=Path, default=ROOT / "_build/demo", help="where demo.svg and output.txt go (_build/demo)")
    p.add_argument("--keep", action="store_true", help="keep the working directory (configs, logs) afterwards")
    return p.parse_args()


def check_binaries() -> None:
    missing = [str(b.relative_to(ROOT)) for b in (SCALE, TESTCLUSTER, OTELCOL) if not b.exists()]
    if missing:
        raise DemoError(f"missing {', '.join(missing)}: run `make demo` (it builds them)")


STORE_CONFIG = """# A stand-in trace store for the demo: accepts the sidecar's traces/store pipeline and drops them.
extensions:
  health_check: {{ endpoint: "127.0.0.1:{health}" }}
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{grpc}" }}
exporters:
  debug: {{ verbosity: basic, sampling_initial: 1, sampling_thereafter: 1000 }}
service:
  telemetry:
    logs: {{ level: warn }}
    metrics:
      readers:
        - pull: {{ exporter: {{ prometheus: {{ host: 127.0.0.1, port: {metrics} }} }} }}
  extensions: [health_check]
  pipelines:
    traces: {{ receivers: [otlp], exporters: [debug] }}
"""


def run(procs: Procs, work: Path, rec: Record, stop: threading.Event) -> tuple[float, float, float, float]:
    check_binaries()
    OUT.say("SCALE demo: trace-driven autoscaling on a real kube-apiserver, all on 127.0.0.1", "head")
    OUT.say(f"working directory {work} (logs of every process)", "dim")

    r = subprocess.run([SCALE, "check", "--rules", RULES], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise DemoError(f"scale check --rules {RULES.relative_to(ROOT)} failed:\n{r.stdout}{r.stderr}")
    OUT.say(f"rules     scale check: {r.stdout.strip()}")

    # 1. Kubernetes.
    k8s = procs.start("scale-testcluster", [TESTCLUSTER, "--dir", work / "k8s", "--namespace", NAMESPACE,
                                            "--apply", ROOT / "configs/k8s/scale-daemon.yaml",
                                            "--apply", ROOT / "configs/k8s/rbac-otel-demo.yaml",
                                            "--deployment", f"{NAMESPACE}/{DEPLOYMENT}=1"],
                      work / "testcluster.log", stdout_pipe=True, stdin_pipe=True, stop_timeout=30)
    deadline, line = time.time() + 120, b""
    while not line.endswith(b"\n"):
        if k8s.popen.poll() is not None:
            raise DemoError("scale-testcluster failed", k8s.log)
        if time.time() > deadline:
            raise DemoError("scale-testcluster: no cluster within 120 s", k8s.log)
        ready, _, _ = select.select([k8s.popen.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(k8s.popen.stdout.fileno(), 4096)
            if not chunk:
                raise DemoError("scale-testcluster closed its output", k8s.log)
            line += chunk
    info = json.loads(line)
    kube = Kube(Path(info["admin_kubeconfig"]))
    applied = [l.split(" ", 1)[1] for l in k8s.log.read_text().splitlines() if l.startswith(("applied", "created"))]
    OUT.say(f"k8s       etcd v3.7.3 + kube-apiserver v1.37.2 at {info['server']} (RBAC on, no controllers)")
    OUT.say(f"k8s       {len(applied)} objects: Namespace otel-demo, configs/k8s/scale-daemon.yaml, configs/k8s/rbac-otel-demo.yaml, "
            f"Deployment {NAMESPACE}/{DEPLOYMENT} (replicas {kube.replicas()})")

    # 2. The daemon, as its own service account; the collector must present a bearer token.
    otlp, metrics = free_port(), free_port()
    token = secrets.token_hex(32)
    (work / "otlp-token").write_text(token + "\n")
    daemon = procs.start("scale serve", [SCALE, "serve", "--orchestrator", "kubernetes", "--kubeconfig", info["daemon_kubeconfig"],
                                         "--rules", RULES, "--listen", f"127.0.0.1:{otlp}", "--metrics-listen", f"127.0.0.1:{metrics}",
                                         "--token-file", work / "otlp-token", "--tick", "500ms", "--log-format", "json"],
                         work / "scale-serve.log", env={"SCALE_LOG": "info,scale_scaler::serve::intake::spans=debug"}, stderr_pipe=True)
    DaemonLog(daemon.popen.stderr, work / "scale-serve.log", rec).start()
    wait_until("scale serve /readyz", lambda: http_ok(f"http://127.0.0.1:{metrics}/readyz"), 30, procs)
    OUT.say(f"daemon    scale serve --orchestrator kubernetes: OTLP/gRPC 127.0.0.1:{otlp}, /metrics 127.0.0.1:{metrics}, "
            f"as system:serviceaccount:scale-system:scale; OTLP requires a bearer token")

    # 3. The trace store stand-in and the sidecar collector.
    sg, sh, sm = free_port(), free_port(), free_port()
    (work / "store.yaml").write_text(STORE_CONFIG.format(grpc=sg, health=sh, metrics=sm))
    procs.start("otelcol-scale (trace store)", [OTELCOL, "--config", work / "store.yaml"], work / "store.log")
    grpc, http_port, health, cmetrics = free_port(), free_port(), free_port(), free_port()
    env = {
        "SCALE_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{grpc}",
        "SCALE_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
        "SCALE_TRACE_STORE_ENDPOINT": f"127.0.0.1:{sg}",
        "SCALE_DAEMON_ENDPOINT": f"127.0.0.1:{otlp}",
        "SCALE_DAEMON_AUTHORIZATION": f"Bearer {token}",
        "SCALE_RULES_FILE": str(RULES),
        "SCALE_SNAPSHOT_PATH": str(work / "scale.snapshot"),
        "SCALE_HEALTH_ENDPOINT": f"127.0.0.1:{health}",
    }
    telemetry = f"yaml:service::telemetry::metrics::readers: [{{pull: {{exporter: {{prometheus: {{host: 127.0.0.1, port: {cmetrics}}}}}}}}}]"
    procs.start("otelcol-scale (sidecar)", [OTELCOL, "--config", SIDECAR, "--config", telemetry], work / "sidecar.log", env=env)
    wait_until("trace store health", lambda: http_ok(f"http://127.0.0.1:{sh}"), 60, procs)
    wait_until("sidecar health", lambda: http_ok(f"http://127.0.0.1:{health}"), 60, procs)
    OUT.say(f"collector otelcol-scale --config configs/collector/sidecar.yaml: OTLP/HTTP 127.0.0.1:{http_port}; "
            f"traces/scale -> scale serve, traces/store -> a second otelcol-scale (127.0.0.1:{sg})")

    # 4. Traffic.
    traces = steady_part(load_traces(TRACES))
    order = replay_order(traces)
    rate = len(order) / ARGS.loop_seconds
    n_spans = sum(len(t.spans) for t in traces)
    watcher = Watcher(kube, rec, stop)
    watcher.start()
    replay = Replay(order, f"127.0.0.1:{http_port}", rate, rec, stop)
    t_traffic = rec.phase("normal traffic")
    replay.start()
    OUT.say(f"traffic   replaying {len(traces):,} recorded OpenTelemetry demo traces ({n_spans:,} spans) to /v1/traces, "
            f"timestamps shifted to now: {rate:.0f} traces/s, one pass every {ARGS.loop_seconds:.0f} s "
            f"(PlaceOrder every {ARGS.loop_seconds / max(1, sum(t.place_order for t in traces)):.1f} s)", "head")
    OUT.say(f"traffic   normal for {ARGS.normal:.0f} s: the engine trains on the first 1,000 spans, then keeps only spans it finds anomalous")

    since = {"spans": 0, "kept": 0, "po": 0, "t": time.time(), "next": time.time() + 10}

    def run_for(seconds: float, until=None) -> bool:
        end = time.time() + seconds
        while time.time() < end:
            dead = procs.dead()
            if dead:
                raise DemoError(f"{dead[0].name} exited during the demo", dead[0].log)
            if until is not None and until():
                return True
            if time.time() >= since["next"]:
                status(rec, since, watcher.current)
                since["next"] += 10
            time.sleep(0.25)
        return False

    run_for(ARGS.normal)
    t_fault = rec.phase("fault on")
    replay.factor = ARGS.factor
    OUT.say(f"FAULT     checkoutservice is now {ARGS.factor}x slower (every span of it, PlaceOrder included) for {ARGS.fault:.0f} s", "fault")
    run_for(ARGS.fault)
    t_fault_off = rec.phase("fault off")
    replay.factor = 1
    OUT.say(f"FAULT     removed: normal traffic again; the daemon scales down after 30 s without a decision, one step at a time", "fault")

    def recovered() -> bool:
        with rec.lock:
            downs = [s for s in rec.scalings if s[0] > t_fault_off]
        return bool(downs) and watcher.current == 1
    if not run_for(ARGS.recover_max, recovered):
        OUT.say(f"recovery  not back at 1 replica within {ARGS.recover_max:.0f} s", "fault")
    run_for(3)  # the last Event and status
    t_end = rec.phase("end")
    stop.set()
    replay.join(5)
    watcher.join(5)
    try:
        with NO_PROXY.open(f"http://127.0.0.1:{cmetrics}/metrics", timeout=3) as r:
            prom = r.read().decode()
    except OSError:
        prom = ""
    rec.collector_metrics = {m: sum(float(l.rsplit(" ", 1)[1]) for l in prom.splitlines() if l.startswith(f"otelcol_processor_scale_{m}"))
                             for m in ("spans_scored", "spans_kept", "spans_dropped", "decisions")}
    return t_traffic, t_fault, t_fault_off, t_end


def timeline(rec: Record, t_traffic: float, t_fault: float, t_fault_off: float, t_end: float) -> None:
    R = OUT.rel
    OUT.plain()
    OUT.plain("Timeline (seconds since the demo started)")
    rows = [(t, f"{name}") for t, name in rec.phases]
    faulted = [s for s in rec.sent_po if s[2]]
    if faulted:
        rows.append((faulted[0][0], f"first faulted PlaceOrder sent ({faulted[0][1]:,.0f} ms)"))
    kept_f = [k for k in rec.kept if k[2] == RULE_OPERATION and t_fault <= k[0] and k[3] > RULE_THRESHOLD_MS]
    if kept_f:
        rows.append((kept_f[0][0], f"first PlaceOrder above 5 s kept by the collector reaches the daemon (score {kept_f[0][4]:.3f})"))
    for d in rec.decisions:
        rows.append((d[0], f"scale.decision {d[1]} ({d[2]}, {d[3]} breaches, observed {d[4]:,.0f} ms)"))
    for s in rec.scalings:
        rows.append((s[0], f"daemon scales checkout {s[1]} -> {s[2]} ({s[3]})"))
    prev = None
    for t, r in rec.replicas:
        if prev is not None:
            rows.append((t, f"replicas {prev} -> {r} (read from the scale subresource)"))
        prev = r
    for t, reason, note in rec.events:
        rows.append((t, f"Event {reason}: {note}"))
    for t, text in sorted(rows, key=lambda r: r[0]):
        OUT.plain(f"  {R(t):6.1f}  {text}")
    OUT.plain()
    first_dec = next((d[0] for d in rec.decisions if d[0] >= t_fault), None)
    ups = [s for s in rec.scalings if s[2] > s[1]]
    downs = [s for s in rec.scalings if s[2] < s[1] and s[0] > t_fault_off]
    kept_normal = [k for k in rec.kept if k[0] < t_fault]
    spans_sent = rec.sent_spans
    m = rec.collector_metrics
    OUT.plain("Summary")
    OUT.plain(f"  spans sent {spans_sent:,} ({rec.sent_traces:,} traces, {rec.post_errors} failed requests); collector: scored "
              f"{m.get('spans_scored', 0):,.0f}, kept {m.get('spans_kept', 0):,.0f}, dropped {m.get('spans_dropped', 0):,.0f}, "
              f"decisions {m.get('decisions', 0):,.0f}")
    OUT.plain(f"  kept spans received by the daemon: {len(rec.kept):,} ({len(kept_normal):,} before the fault)")
    if first_dec:
        OUT.plain(f"  fault -> first decision: {first_dec - t_fault:.1f} s; decisions during the fault: "
                  f"{sum(1 for d in rec.decisions if t_fault <= d[0] <= t_fault_off + 5)}; outside it: "
                  f"{sum(1 for d in rec.decisions if not (t_fault <= d[0] <= t_fault_off + 5))}")
    if ups:
        OUT.plain(f"  scale-ups: {', '.join(f'{s[1]}->{s[2]} at {R(s[0]):.1f} s' for s in ups)}; "
                  f"decision -> API request: {', '.join(f'{s[4]:.1f} ms' for s in ups if isinstance(s[4], (int, float)))}")
    if downs:
        OUT.plain(f"  scale-downs after the fault: {', '.join(f'{s[1]}->{s[2]} at {R(s[0]):.1f} s' for s in downs)} "
                  f"(fault removed at {R(t_fault_off):.1f} s)")
    phases = [("before the fault", t_traffic, t_fault), (f"fault (x{ARGS.factor})", t_fault, t_fault_off),
              ("after the fault", t_fault_off, t_end)]
    OUT.plain("  spans kept (kept/sent)            all services               of them checkoutservice")
    for name, a, b in phases:
        (s0, f0), (s1, f1) = rec.sent_at(a), rec.sent_at(b)
        k = [x for x in rec.kept if a <= x[0] < b]
        kf = sum(1 for x in k if x[1] == FAULT_SERVICE)
        OUT.plain(f"    {name:<32} {len(k):>6,}/{s1 - s0:<7,} {100.0 * len(k) / max(1, s1 - s0):5.1f} %    "
                  f"{kf:>5,}/{f1 - f0:<6,} {100.0 * kf / max(1, f1 - f0):5.1f} %")
    po_f = [x for x in rec.sent_po if x[2]]
    po_k = [x for x in rec.kept if x[2] == RULE_OPERATION and t_fault <= x[0] < t_fault_off + 2 and x[3] > RULE_THRESHOLD_MS]
    if po_f:
        OUT.plain(f"  faulted PlaceOrder spans: {len(po_f)} sent, all above the rule's 5 s: {all(x[1] > RULE_THRESHOLD_MS for x in po_f)}; "
                  f"{len(po_k)} kept as anomalous")

    # The keep rate of the services the fault does not touch, pass by pass before the fault and
    # after it: a sampler whose budget holds keeps about as much after an incident as before, and
    # judges a second replay of the same recording no more anomalous than the first.
    def unaffected(a: float, b: float) -> tuple[int, int]:
        (s0, f0), (s1, f1) = rec.sent_at(a), rec.sent_at(b)
        k = sum(1 for x in rec.kept if a <= x[0] < b and x[1] != FAULT_SERVICE)
        return k, (s1 - f1) - (s0 - f0)

    def pct(kn: tuple[int, int]) -> float:
        return 100.0 * kn[0] / max(1, kn[1])

    passes = []
    a = t_traffic
    while a + ARGS.loop_seconds <= t_fault + 1.0:
        passes.append(unaffected(a, min(a + ARGS.loop_seconds, t_fault)))
        a += ARGS.loop_seconds
    last_before = unaffected(max(t_traffic, t_fault - ARGS.loop_seconds), t_fault)
    after = unaffected(t_fault_off, t_end)
    OUT.plain("  the other services (not checkoutservice), kept/sent:")
    for i, kn in enumerate(passes):
        OUT.plain(f"    replay pass {i + 1} before the fault{' (learning from cold)' if i == 0 else '':<22} {kn[0]:>5,}/{kn[1]:<7,} {pct(kn):5.2f} %")
    OUT.plain(f"    {'after the fault':<55} {after[0]:>5,}/{after[1]:<7,} {pct(after):5.2f} %")

    OUT.plain("Checks")

    def check(ok: bool, text: str) -> None:
        OUT.plain(f"  {'ok ' if ok else 'NOT'}  {text}")

    if len(passes) >= 2:
        r2 = pct(passes[1]) / max(1e-9, pct(passes[0]))
        check(r2 <= 1.2, f"a second replay of the recording is not judged more anomalous than the first: "
                         f"{pct(passes[1]):.2f} % / {pct(passes[0]):.2f} % = {r2:.2f} (at most 1.2)")
    ra = pct(after) / max(1e-9, pct(last_before))
    check(ra <= 1.5, f"the other services after the fault keep at most 1.5x what they kept in the pass before it: "
                     f"{pct(after):.2f} % / {pct(last_before):.2f} % = {ra:.2f}")
    check(bool(po_f) and len(po_k) >= len(po_f), f"every faulted PlaceOrder span kept: {len(po_k)} of {len(po_f)}")
    up = next((s for s in ups if s[0] >= t_fault), None)
    check(up is not None and up[0] - t_fault <= 10.0,
          f"the scale-up comes within 10 s of the fault: " + (f"{up[0] - t_fault:.1f} s" if up else "none"))
    if rec.daemon_warnings:
        OUT.plain(f"  daemon warnings: {len(rec.daemon_warnings)} (see above)")


def main() -> int:
    global ARGS
    ARGS = parse_args()
    work = Path(tempfile.mkdtemp(prefix="scale-demo-"))
    procs, rec, stop = Procs(), Record(), threading.Event()

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    ok, keep = False, ARGS.keep
    began = time.time()
    try:
        t_traffic, t_fault, t_fault_off, t_end = run(procs, work, rec, stop)
        ok = True
    except KeyboardInterrupt:
        OUT.say("interrupted: stopping everything", "fault")
    except DemoError as e:
        OUT.say(f"error: {e}", "fault")
        if e.log:
            OUT.plain(tail(e.log))
        keep = True
    finally:
        stop.set()
        # Ctrl-C again must not leave processes behind: ignore it during the clean-up.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        names = [p.name for p in procs.procs]
        left = procs.stop_all()
        if names:
            OUT.say(f"cleanup   stopped {', '.join(names)} (with etcd and kube-apiserver); "
                    + ("no process left" if not left else f"STILL RUNNING: {', '.join(left)}"), "fault" if left else "dim")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if ok:
        timeline(rec, t_traffic, t_fault, t_fault_off, t_end)
        ARGS.out.mkdir(parents=True, exist_ok=True)
        svg = ARGS.out / "demo.svg"
        svg_plot(rec, svg, t_traffic, t_end, (t_fault, t_fault_off))
        OUT.plain()
        OUT.plain(f"Plot: {svg}   transcript: {ARGS.out / 'output.txt'}   wall time {time.time() - began:.0f} s")
        (ARGS.out / "output.txt").write_text("\n".join(OUT.lines) + "\n")
    if keep:
        OUT.plain(f"Logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
