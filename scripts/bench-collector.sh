#!/usr/bin/env bash
# Throughput of otelcol-scale with and without the `scale` processor (issue 4), on this machine,
# in one run: the same collector binary configured as
#
#   pass-through   otlp → batch → debug
#   scale          otlp → scale (engine defaults, one latency rule) → batch → debug
#   tail_sampling  otlp → tail_sampling (latency policy, threshold_ms) → batch → debug
#   annotate       otlp → scale (drop: false) → tail_sampling (a trace with a span judged
#                  anomalous: configs/collector/tail-sampling.yaml's policy) → batch → debug
#
# under one or more loads (LOADS):
#
#   telemetrygen  SERVICES telemetrygen processes at full rate (--rate 0), collector unpinned.
#                 telemetrygen needs far more CPU per span than the collector, so on a small
#                 machine it is the bottleneck: this shows whether a processor slows a real
#                 client down, not the collector's ceiling.
#   replay        tests/otlpreplay: pre-encoded OTLP/gRPC requests of telemetrygen's shape (same
#                 services, span names, durations, attributes; fresh trace ids per request) sent
#                 by REPLAY_WORKERS concurrent calls. The collector is pinned to one CPU
#                 (taskset -c COLLECTOR_CPU, GOMAXPROCS=1) and the load to another (LOAD_CPU),
#                 so the collector's one core saturates: its ceiling.
#   replay-demo   the same with the recorded OpenTelemetry demo traces (data/otel-demo: 17
#                 services, 1,044 span names, the demo's real attributes).
#
# The debug exporter (verbosity basic: one log line per sampled batch) is the cheapest exporter
# that still runs the export path; it is the same for all three variants. With EXPORTER=otlp the
# pipelines end in the otlp_grpc exporter instead (gzip, its defaults) sending to a trace store
# that costs next to nothing (`otlpreplay -sink`: receives and decompresses, does not decode; on
# LOAD_CPU when pinned): what a real pipeline pays to export, which `scale` pays only for the
# spans it keeps. The variants run
# interleaved (for each round, for each load: pass, scale, tail), ROUNDS times, and the tables
# report the median of each. For each run: accepted spans/s from the collector's own metrics
# (otelcol_receiver_accepted_spans over the measured window, scraped from its Prometheus
# endpoint), the collector's CPU seconds in that window (/proc/<pid>/stat), spans per collector
# CPU second, and its peak RSS (VmHWM, /proc/<pid>/status). Prints a Markdown report on stdout;
# progress on stderr.
#
#   make collector && scripts/bench-collector.sh > report.md
#
# Environment (defaults): LOADS ("telemetrygen replay replay-demo"), ROUNDS (5), WARMUP seconds
# before measuring (3), MEASURE seconds (10), BATCH_SIZE spans per OTLP request (512);
# telemetrygen: SERVICES processes, one service each (2), WORKERS per process (2), CHILD_SPANS
# per trace (20: 21 span names per service); replay: REPLAY_WORKERS concurrent calls (8),
# REPLAY_CONNS connections (2), COLLECTOR_CPU (0), LOAD_CPU (1), DEMO_TRACES
# (data/otel-demo/traces.jsonl.gz); SCALE_OTELCOL (the collector binary; default
# _build/otelcol-scale/otelcol-scale); EXPORTER (debug, or otlp); SIDECAR (0, or 1: also the
# sidecar layout, every span exported and a copy through `scale`); COMPARE (other binaries run
# with the `scale` pipeline as extra variants, NAME=PATH ...). Everything listens on 127.0.0.1; every load stops by
# itself after WARMUP + MEASURE + 2 s (and is stopped if it does not); every process started here
# is stopped on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOADS="${LOADS:-telemetrygen replay replay-demo}"
ROUNDS="${ROUNDS:-5}"
WARMUP="${WARMUP:-3}"
MEASURE="${MEASURE:-10}"
SERVICES="${SERVICES:-2}"
WORKERS="${WORKERS:-2}"
CHILD_SPANS="${CHILD_SPANS:-20}"
BATCH_SIZE="${BATCH_SIZE:-512}"
REPLAY_WORKERS="${REPLAY_WORKERS:-8}"
REPLAY_CONNS="${REPLAY_CONNS:-2}"
COLLECTOR_CPU="${COLLECTOR_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
DEMO_TRACES="${DEMO_TRACES:-$ROOT/data/otel-demo/traces.jsonl.gz}"
SRC_OTELCOL="${SCALE_OTELCOL:-$ROOT/_build/otelcol-scale/otelcol-scale}"
LOAD_SECONDS=$((WARMUP + MEASURE + 2))
EXPORTER="${EXPORTER:-debug}"
case "$EXPORTER" in debug | otlp) ;; *) echo "EXPORTER=$EXPORTER: debug or otlp" >&2; exit 2 ;; esac
TICKS="$(getconf CLK_TCK)"

[ -x "$SRC_OTELCOL" ] || { echo "bench-collector: $SRC_OTELCOL not found: run \`make collector\`" >&2; exit 1; }
for l in $LOADS; do
    case "$l" in
        telemetrygen | replay | replay-demo) ;;
        *) echo "bench-collector: unknown load $l (LOADS: telemetrygen replay replay-demo)" >&2; exit 1 ;;
    esac
done
case " $LOADS " in
    *" replay"*)
        [ "$(nproc)" -ge 2 ] || { echo "bench-collector: the replay loads pin the collector and the load to two CPUs; this machine has $(nproc)" >&2; exit 1; }
        [ "$COLLECTOR_CPU" != "$LOAD_CPU" ] || { echo "bench-collector: COLLECTOR_CPU and LOAD_CPU must differ" >&2; exit 1; }
        ;;
esac

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A stable copy: the build directory may be rebuilt by `make collector` while this runs.
cp "$SRC_OTELCOL" "$WORK/otelcol-scale"
OTELCOL="$WORK/otelcol-scale"
# COMPARE: other otelcol-scale binaries (NAME=PATH ...) run with the `scale` pipeline, as extra
# variants between `scale` and `tail_sampling` (e.g. the binary of a previous commit).
VARIANTS="pass scale"
for c in ${COMPARE:-}; do
    name="${c%%=*}"
    case "$name" in pass | scale | tail | annotate | sidecar | "" | *[!a-z0-9_-]*) echo "COMPARE: bad name in '$c'" >&2; exit 2 ;; esac
    cp "${c#*=}" "$WORK/otelcol-$name"
    VARIANTS="$VARIANTS $name"
done
VARIANTS="$VARIANTS tail annotate"
# SIDECAR=1: also the sidecar layout of configs/collector/sidecar.yaml, every span to the store
# and a copy through `scale` (two pipelines on one receiver; the receiver clones each batch for
# the pipeline whose processor changes it).
[ "${SIDECAR:-0}" = 0 ] || VARIANTS="$VARIANTS sidecar"
TGEN=""
case " $LOADS " in *" telemetrygen "*) TGEN="$(set -o pipefail; "$ROOT/scripts/telemetrygen.sh" | tail -n 1)" ;; esac
case " $LOADS ${EXPORTER} " in
    *" replay"* | *" otlp "*)
        echo "bench-collector: building tests/otlpreplay" >&2
        (cd "$ROOT/tests/otlpreplay" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -o "$WORK/otlpreplay" .)
        ;;
esac

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# config VARIANT GRPC_PORT HEALTH_PORT METRICS_PORT SINK_PORT
config() {
    local variant=$1 grpc=$2 health=$3 metrics=$4 sink=$5 procs exporter=debug
    [ "$EXPORTER" = debug ] || exporter=otlp_grpc
    case "$variant" in
        pass | sidecar) procs="[batch]" ;;
        tail) procs="[tail_sampling, batch]" ;;
        annotate) procs="[scale/annotate, tail_sampling/anomalous, batch]" ;;
        *) procs="[scale, batch]" ;;
    esac
    cat <<YAML
extensions:
  health_check:
    endpoint: 127.0.0.1:$health
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$grpc
processors:
  batch: {}
  scale:
    # engine defaults; one rule that every span is checked against
    rules: &rules
      - name: bench-latency
        match: { service: "*", operation: "*" }
        when: { duration_above: 100ms }
        count: 100
        window: 30s
        action: { kind: horizontal, target: { kind: Deployment, namespace: bench, name: bench }, max: 5 }
  scale/annotate:
    drop: false
    rules: *rules
  tail_sampling:
    decision_wait: 5s
    num_traces: 100000
    expected_new_traces_per_sec: 10000
    policies:
      - name: slow-traces
        type: latency
        latency: { threshold_ms: 100 }
  tail_sampling/anomalous:
    decision_wait: 5s
    num_traces: 100000
    expected_new_traces_per_sec: 10000
    policies:
      - name: judged-anomalous
        type: boolean_attribute
        boolean_attribute: { key: scale.anomalous, value: true }
exporters:
  debug:
    verbosity: basic
    sampling_initial: 1
    sampling_thereafter: 1000
  otlp_grpc:
    endpoint: 127.0.0.1:$sink
    tls: { insecure: true }
service:
  telemetry:
    logs: { level: warn }
    metrics:
      level: basic
      readers:
        - pull:
            exporter:
              prometheus: { host: 127.0.0.1, port: $metrics }
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      processors: $procs
      exporters: [$exporter]
YAML
    [ "$variant" != sidecar ] || cat <<YAML
    traces/scale:
      receivers: [otlp]
      processors: [scale, batch]
      exporters: [$exporter]
YAML
}

# metric URL NAME: the sum of every series of NAME (counters carry a _total suffix).
metric() {
    curl -fsS --max-time 5 "$1" | awk -v n="$2" '
        $1 ~ "^"n"(_total)?({|$)" { s += $NF } END { printf "%.0f\n", s + 0 }'
}

# ctxsw PID: voluntary + involuntary context switches of all the process's threads.
ctxsw() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }'; }
ivcsw() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^nonvoluntary_ctxt_switches/ { s += $2 } END { print s + 0 }'; }

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# busy_ticks CPU: ticks CPU has spent busy since boot (/proc/stat: all but idle and iowait).
busy_ticks() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

stop_pid() {
    local p=$1
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
}

# run LOAD VARIANT ROUND: appends "load variant round spans_per_s cpu_s rss_mib load_cpu_s
# sent_spans proc_ns others_cpu_s voluntary_ctxsw_per_request involuntary_ctxsw_per_request
# threads" to results.
run() {
    local load=$1 variant=$2 round=$3 grpc health mport url pid i tag="$1-$2-$3"
    local sink spid=""
    grpc=$(free_port); health=$(free_port); mport=$(free_port); sink=$(free_port)
    url="http://127.0.0.1:$mport/metrics"
    config "$variant" "$grpc" "$health" "$mport" "$sink" > "$WORK/$variant.yaml"
    if [ "$EXPORTER" = otlp ]; then
        # The trace store: receives, decompresses and drops; on the load's CPU when pinned.
        local pin=()
        [ "$load" = telemetrygen ] || pin=(taskset -c "$LOAD_CPU")
        "${pin[@]}" "$WORK/otlpreplay" -sink "127.0.0.1:$sink" -duration "$((LOAD_SECONDS + 60))s" > "$WORK/sink-$tag.log" 2>&1 &
        spid=$!
        PIDS+=("$spid")
    fi
    local bin="$OTELCOL"
    case "$variant" in pass | scale | tail | annotate | sidecar) ;; *) bin="$WORK/otelcol-$variant" ;; esac
    if [ "$load" = telemetrygen ]; then
        "$bin" --config "$WORK/$variant.yaml" > "$WORK/$tag.log" 2>&1 &
    else
        GOMAXPROCS=1 taskset -c "$COLLECTOR_CPU" "$bin" --config "$WORK/$variant.yaml" > "$WORK/$tag.log" 2>&1 &
    fi
    pid=$!
    PIDS+=("$pid")
    for i in $(seq 300); do
        curl -fsS --max-time 1 "http://127.0.0.1:$health/" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { echo "otelcol-scale ($variant) exited:" >&2; tail -20 "$WORK/$tag.log" >&2; exit 1; }
        [ "$i" -lt 300 ] || { echo "otelcol-scale ($variant) not healthy in 30 s" >&2; exit 1; }
        sleep 0.1
    done

    local lpids=()
    case "$load" in
        telemetrygen)
            for i in $(seq 0 $((SERVICES - 1))); do
                "$TGEN" traces \
                    --otlp-endpoint "127.0.0.1:$grpc" --otlp-insecure \
                    --service "bench-$i" --child-spans "$CHILD_SPANS" --span-duration "$((i + 1))ms" \
                    --workers "$WORKERS" --rate 0 --duration "${LOAD_SECONDS}s" \
                    --batch-size "$BATCH_SIZE" --allow-export-failures \
                    > "$WORK/load-$tag-$i.log" 2>&1 &
                lpids+=("$!")
                PIDS+=("$!")
            done
            ;;
        replay | replay-demo)
            local input=()
            [ "$load" = replay ] || input=(-input "$DEMO_TRACES")
            taskset -c "$LOAD_CPU" "$WORK/otlpreplay" -endpoint "127.0.0.1:$grpc" -duration "${LOAD_SECONDS}s" \
                -workers "$REPLAY_WORKERS" -conns "$REPLAY_CONNS" -batch "$BATCH_SIZE" \
                -services "$SERVICES" -child-spans "$CHILD_SPANS" "${input[@]}" \
                > "$WORK/load-$tag.log" 2>&1 &
            lpids+=("$!")
            PIDS+=("$!")
            ;;
    esac

    sleep "$WARMUP"
    local a0 c0 t0 a1 c1 t1 l0=0 l1=0 b0 b1 p
    a0=$(metric "$url" otelcol_receiver_accepted_spans); c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
    b0=$(busy_ticks "$COLLECTOR_CPU")
    local cs0 cs1 ic0 ic1 thr
    cs0=$(ctxsw "$pid"); ic0=$(ivcsw "$pid")
    for p in "${lpids[@]}"; do l0=$((l0 + $(cpu_ticks "$p" 2>/dev/null || echo 0))); done
    sleep "$MEASURE"
    a1=$(metric "$url" otelcol_receiver_accepted_spans); c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N)
    b1=$(busy_ticks "$COLLECTOR_CPU")
    cs1=$(ctxsw "$pid"); ic1=$(ivcsw "$pid"); thr=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
    for p in "${lpids[@]}"; do l1=$((l1 + $(cpu_ticks "$p" 2>/dev/null || echo 0))); done
    # Pinned: the time other processes took on the collector's CPU (a machine shared with other
    # jobs); the collector then gets less than a whole core, and spans per CPU second is the
    # figure to compare. Unpinned: not measured (-1).
    local others=-1
    [ "$load" = telemetrygen ] || others=$(( (b1 - b0) - (c1 - c0) ))

    # The loads stop by themselves after LOAD_SECONDS; bounded wait, then stopped.
    for p in "${lpids[@]}"; do
        for _ in $(seq $((10 * 30))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        stop_pid "$p"
        wait "$p" 2>/dev/null || true
    done
    local rss sent
    rss=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    sent=$(metric "$url" otelcol_exporter_sent_spans)
    curl -fsS --max-time 5 "$url" > "$WORK/metrics-$tag.txt" 2>/dev/null || true
    # The scale processor's own time per span (its batch_duration histogram, wall time).
    local proc_ns
    proc_ns=$(awk '/^otelcol_processor_scale_batch_duration_sum/ { d += $NF }
                   /^otelcol_processor_scale_spans_scored/ { n += $NF }
                   END { printf "%.0f\n", (n > 0 ? 1e9 * d / n : 0) }' "$WORK/metrics-$tag.txt")
    stop_pid "$pid"
    [ -z "$spid" ] || { stop_pid "$spid"; wait "$spid" 2>/dev/null || true; }
    wait "$pid" 2>/dev/null || true

    awk -v l="$load" -v v="$variant" -v r="$round" -v a0="$a0" -v a1="$a1" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" \
        -v hz="$TICKS" -v rss="$rss" -v lc="$((l1 - l0))" -v sent="$sent" -v pns="$proc_ns" -v oth="$others" \
        -v cs="$((cs1 - cs0))" -v ic="$((ic1 - ic0))" -v thr="$thr" -v bs="$BATCH_SIZE" \
        'BEGIN { printf "%s %s %d %.0f %.2f %.1f %.2f %d %d %.2f %.2f %.2f %d\n", l, v, r, (a1 - a0) / (t1 - t0), (c1 - c0) / hz, rss / 1024, lc / hz, sent, pns, (oth < 0 ? -1 : oth / hz), cs * bs / (a1 - a0), ic * bs / (a1 - a0), thr }' \
        >> "$WORK/results"
    tail -n 1 "$WORK/results" | awk '{ printf "bench-collector: %-12s %-5s round %d: %.0f spans/s, collector %.2f CPU s in %s s, peak RSS %.0f MiB, load %.2f CPU s\n", $1, $2, $3, $4, $5, "'"$MEASURE"'", $6, $7 }' >&2
}

echo "bench-collector: $ROUNDS rounds × ($LOADS) × ($VARIANTS), ${LOAD_SECONDS}s of load each" >&2
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    for l in $LOADS; do
        for v in $VARIANTS; do run "$l" "$v" "$r"; done
    done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- report -------------------------------------------------------------------------------
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# col LOAD VARIANT EXPR: the median over rounds of an awk expression of a result line's fields
# ($4 spans/s, $5 collector CPU s, $6 RSS, $7 load CPU s, $8 exported, $9 processor ns/span,
# $10 other processes' CPU s on the collector's CPU).
col() { awk -v l="$1" -v v="$2" '$1 == l && $2 == v { print '"$3"' }' "$WORK/results" | median; }
# ratio LOAD VARIANT EXPR: the median over rounds of EXPR(variant) / EXPR(pass-through) of the
# same round (the pair ran back to back, so a ratio cancels most of the machine's drift).
ratio() {
    awk -v l="$1" -v v="$2" '$1 == l && $2 == "pass" { p[$3] = '"$3"' } $1 == l && $2 == v { x[$3] = '"$3"' }
        END { for (r in x) if (p[r] > 0) print 100 * x[r] / p[r] }' "$WORK/results" | median
}

for l in $LOADS; do
    case "$l" in
        telemetrygen) echo "### Load: telemetrygen ($SERVICES processes × $WORKERS workers, unthrottled; collector unpinned)" ;;
        replay) echo "### Load: otlpreplay, telemetrygen's shape ($REPLAY_WORKERS concurrent calls; collector pinned to CPU $COLLECTOR_CPU, GOMAXPROCS=1)" ;;
        replay-demo) echo "### Load: otlpreplay, OpenTelemetry demo traces ($REPLAY_WORKERS concurrent calls; collector pinned to CPU $COLLECTOR_CPU, GOMAXPROCS=1)" ;;
    esac
    echo
    echo "| collector | accepted spans/s | vs pass-through | collector CPU (cores) | spans per collector CPU s | vs pass-through | peak RSS MiB | exported spans | load CPU (cores) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for v in $VARIANTS; do
        case "$v" in
            pass) name="pass-through (batch)" ;;
            scale) name="\`scale\` (defaults + 1 rule)" ;;
            tail) name="\`tail_sampling\` (latency 100 ms)" ;;
            annotate) name="\`scale\` (\`drop: false\`) → \`tail_sampling\` (a span judged anomalous)" ;;
            sidecar) name="sidecar: pass-through + a copy through \`scale\`" ;;
            *) name="\`scale\`, $v" ;;
        esac
        printf '| %s | %.0f | %.1f %% | %.2f | %.0f | %.1f %% | %.0f | %.0f | %.2f |\n' "$name" \
            "$(col "$l" "$v" '$4')" "$(ratio "$l" "$v" '$4')" "$(col "$l" "$v" '$5 / '"$MEASURE")" \
            "$(col "$l" "$v" '$4 * '"$MEASURE"' / $5')" "$(ratio "$l" "$v" '$4 * '"$MEASURE"' / $5')" \
            "$(col "$l" "$v" '$6')" "$(col "$l" "$v" '$8')" "$(col "$l" "$v" '$7 / '"$MEASURE")"
    done
    echo
    for v in $VARIANTS; do
        case "$v" in pass | tail) ;; *) echo "The scale processor's own time per span ($v; wall, from its batch_duration histogram; median): $(col "$l" "$v" '$9') ns." ;; esac
    done
    for v in $VARIANTS; do echo "Context switches per request ($v, median): voluntary $(col "$l" "$v" '$11'), involuntary $(col "$l" "$v" '$12'); threads: $(col "$l" "$v" '$13')."; done
    if [ "$l" != telemetrygen ]; then
        echo "Other processes on the collector's CPU $COLLECTOR_CPU (median over all runs of this load): $(awk -v l="$l" '$1 == l { print $10 / '"$MEASURE"' }' "$WORK/results" | median) cores."
    fi
    echo
done
echo "Exporter: $([ "$EXPORTER" = otlp ] && echo "otlp_grpc (gzip) to otlpreplay -sink" || echo "debug (basic)"). Medians of $ROUNDS interleaved rounds; \"vs pass-through\" is the median of the per-round ratios. $((CHILD_SPANS + 1)) span names per synthetic service, $BATCH_SIZE spans per request; ${WARMUP} s warm-up, ${MEASURE} s measured. $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)); load average before/after: $load_before / $load_after."
echo
echo "Raw, one line per run (load, variant, round, accepted spans/s, collector CPU s in the ${MEASURE} s window, peak RSS MiB, load generator CPU s in the window, spans exported in the whole run, scale processor ns per span, other processes' CPU s on the collector's CPU in the window or -1 when unpinned, voluntary and involuntary context switches per request, threads):"
echo
echo '```'
cat "$WORK/results"
echo '```'
