#!/usr/bin/env bash
# Throughput of otelcol-scale with and without the `scale` processor (issue 4), on this machine,
# in one run: telemetrygen at full rate against the same collector binary configured as
#
#   pass-through   otlp → batch → debug
#   scale          otlp → scale (engine defaults, one latency rule) → batch → debug
#   tail_sampling  otlp → tail_sampling (latency policy, threshold_ms) → batch → debug
#
# The debug exporter (verbosity basic: one log line per sampled batch) is the cheapest exporter
# that still runs the export path; it is the same in all three. The variants run interleaved,
# ROUNDS times (pass, scale, tail, pass, scale, tail, ...), and the table reports the median of
# each. For each run: accepted spans/s from the collector's own metrics
# (otelcol_receiver_accepted_spans over the measured window, scraped from its Prometheus
# endpoint), the collector's CPU seconds in that window (/proc/<pid>/stat), spans per CPU second,
# and its peak RSS (VmHWM, /proc/<pid>/status). Prints a Markdown report on stdout; progress on
# stderr.
#
#   make collector && scripts/bench-collector.sh > report.md
#
# Environment (defaults): ROUNDS (3), WARMUP seconds before measuring (5), MEASURE seconds (15),
# SERVICES telemetrygen processes, one service each (2), WORKERS per process (2), CHILD_SPANS
# per trace (20: 21 span names per service), BATCH_SIZE spans per OTLP request (512),
# SCALE_OTELCOL (the collector binary; default _build/otelcol-scale/otelcol-scale).
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-5}"
MEASURE="${MEASURE:-15}"
SERVICES="${SERVICES:-2}"
WORKERS="${WORKERS:-2}"
CHILD_SPANS="${CHILD_SPANS:-20}"
BATCH_SIZE="${BATCH_SIZE:-512}"
SRC_OTELCOL="${SCALE_OTELCOL:-$ROOT/_build/otelcol-scale/otelcol-scale}"
LOAD_SECONDS=$((WARMUP + MEASURE + 2))
TICKS="$(getconf CLK_TCK)"

[ -x "$SRC_OTELCOL" ] || { echo "bench-collector: $SRC_OTELCOL not found: run \`make collector\`" >&2; exit 1; }
TGEN="$(set -o pipefail; "$ROOT/scripts/telemetrygen.sh" | tail -n 1)"

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

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# config VARIANT GRPC_PORT HEALTH_PORT METRICS_PORT
config() {
    local variant=$1 grpc=$2 health=$3 metrics=$4 procs
    case "$variant" in
        pass) procs="[batch]" ;;
        scale) procs="[scale, batch]" ;;
        tail) procs="[tail_sampling, batch]" ;;
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
    rules:
      - name: bench-latency
        match: { service: "bench-*", operation: "*" }
        when: { duration_above: 100ms }
        count: 100
        window: 30s
        action: { kind: horizontal, target: { kind: Deployment, namespace: bench, name: bench }, max: 5 }
  tail_sampling:
    decision_wait: 5s
    num_traces: 100000
    expected_new_traces_per_sec: 10000
    policies:
      - name: slow-traces
        type: latency
        latency: { threshold_ms: 100 }
exporters:
  debug:
    verbosity: basic
    sampling_initial: 1
    sampling_thereafter: 1000
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
      exporters: [debug]
YAML
}

# metric URL NAME: the sum of every series of NAME (counters carry a _total suffix).
metric() {
    curl -fsS --max-time 5 "$1" | awk -v n="$2" '
        $1 ~ "^"n"(_total)?({|$)" { s += $NF } END { printf "%.0f\n", s + 0 }'
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

stop_pid() {
    local p=$1
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
}

# run VARIANT ROUND: appends "variant round spans_per_s cpu_s rss_mib tgen_cpu_s sent_spans" to results.
run() {
    local variant=$1 round=$2 grpc health mport url pid i
    grpc=$(free_port); health=$(free_port); mport=$(free_port)
    url="http://127.0.0.1:$mport/metrics"
    config "$variant" "$grpc" "$health" "$mport" > "$WORK/$variant.yaml"
    "$OTELCOL" --config "$WORK/$variant.yaml" > "$WORK/$variant-$round.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for i in $(seq 300); do
        curl -fsS --max-time 1 "http://127.0.0.1:$health/" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { echo "otelcol-scale ($variant) exited:" >&2; tail -20 "$WORK/$variant-$round.log" >&2; exit 1; }
        [ "$i" -lt 300 ] || { echo "otelcol-scale ($variant) not healthy in 30 s" >&2; exit 1; }
        sleep 0.1
    done

    local tpids=()
    for i in $(seq 0 $((SERVICES - 1))); do
        "$TGEN" traces \
            --otlp-endpoint "127.0.0.1:$grpc" --otlp-insecure \
            --service "bench-$i" --child-spans "$CHILD_SPANS" --span-duration "$((i + 1))ms" \
            --workers "$WORKERS" --rate 0 --duration "${LOAD_SECONDS}s" \
            --batch-size "$BATCH_SIZE" --allow-export-failures \
            > "$WORK/tgen-$variant-$round-$i.log" 2>&1 &
        tpids+=("$!")
        PIDS+=("$!")
    done

    sleep "$WARMUP"
    local a0 c0 t0 a1 c1 t1
    a0=$(metric "$url" otelcol_receiver_accepted_spans); c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
    sleep "$MEASURE"
    a1=$(metric "$url" otelcol_receiver_accepted_spans); c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N)

    local tgen_ticks=0 p
    for p in "${tpids[@]}"; do
        tgen_ticks=$((tgen_ticks + $(cpu_ticks "$p" 2>/dev/null || echo 0)))
    done
    # telemetrygen stops by itself after --duration; bounded wait, then stopped.
    for p in "${tpids[@]}"; do
        for _ in $(seq $((10 * 30))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        stop_pid "$p"
        wait "$p" 2>/dev/null || true
    done
    local rss sent
    rss=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    sent=$(metric "$url" otelcol_exporter_sent_spans)
    curl -fsS --max-time 5 "$url" > "$WORK/metrics-$variant-$round.txt" 2>/dev/null || true
    # The scale processor's own time per span (its batch_duration histogram, wall time).
    local proc_ns
    proc_ns=$(awk '/^otelcol_processor_scale_batch_duration_sum/ { d += $NF }
                   /^otelcol_processor_scale_spans_scored/ { n += $NF }
                   END { printf "%.0f\n", (n > 0 ? 1e9 * d / n : 0) }' "$WORK/metrics-$variant-$round.txt")
    stop_pid "$pid"
    wait "$pid" 2>/dev/null || true

    awk -v v="$variant" -v r="$round" -v a0="$a0" -v a1="$a1" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" \
        -v hz="$TICKS" -v rss="$rss" -v tg="$tgen_ticks" -v sent="$sent" -v pns="$proc_ns" \
        'BEGIN { printf "%s %d %.0f %.2f %.1f %.2f %d %d\n", v, r, (a1 - a0) / (t1 - t0), (c1 - c0) / hz, rss / 1024, tg / hz, sent, pns }' \
        >> "$WORK/results"
    tail -n 1 "$WORK/results" | awk '{ printf "bench-collector: %-5s round %d: %.0f spans/s, collector %.2f CPU s in %s s, peak RSS %.0f MiB, telemetrygen %.1f CPU s\n", $1, $2, $3, $4, "'"$MEASURE"'", $5, $6 }' >&2
    if [ "$variant" = scale ]; then
        grep -E '^otelcol_processor_scale_(spans_scored|spans_kept|spans_dropped|spans_skipped|batch_duration_(sum|count))' "$WORK/metrics-$variant-$round.txt" | sed 's/^/bench-collector:   /' >&2 || true
    fi
}

echo "bench-collector: $ROUNDS rounds × (pass-through, scale, tail_sampling), ${LOAD_SECONDS}s of load each" >&2
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    for v in pass scale tail; do run "$v" "$r"; done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- report -------------------------------------------------------------------------------
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -v v="$1" -v c="$2" '$1 == v { print $c }' "$WORK/results" | median; }

pass_rate="$(col pass 3)"
pass_eff="$(awk '$1 == "pass" { print $3 * '"$MEASURE"' / $4 }' "$WORK/results" | median)"
echo "| collector | accepted spans/s | vs pass-through | collector CPU (cores) | spans per collector CPU s | vs pass-through | peak RSS MiB | exported spans |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for v in pass scale tail; do
    rate="$(col "$v" 3)"; cpu="$(col "$v" 4)"; rss="$(col "$v" 5)"; sent="$(col "$v" 7)"
    eff="$(awk -v v="$v" '$1 == v { print $3 * '"$MEASURE"' / $4 }' "$WORK/results" | median)"
    case "$v" in
        pass) name="pass-through (batch)" ;;
        scale) name="\`scale\` (defaults + 1 rule)" ;;
        tail) name="\`tail_sampling\` (latency 100 ms)" ;;
    esac
    awk -v n="$name" -v r="$rate" -v p="$pass_rate" -v c="$cpu" -v e="$eff" -v pe="$pass_eff" -v m="$rss" -v x="$sent" \
        'BEGIN { printf "| %s | %.0f | %.1f %% | %.2f | %.0f | %.1f %% | %.0f | %.0f |\n", n, r, 100 * r / p, c / '"$MEASURE"', e, 100 * e / pe, m, x }'
done
echo
echo "Medians of $ROUNDS interleaved rounds; $SERVICES telemetrygen processes × $WORKERS workers, unthrottled, $((CHILD_SPANS + 1)) span names per service ($((SERVICES * (CHILD_SPANS + 1))) keys), $BATCH_SIZE spans per request; ${WARMUP} s warm-up, ${MEASURE} s measured. $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)); load average before/after: $load_before / $load_after. telemetrygen CPU s per run (median, all processes, whole run): pass $(col pass 6), scale $(col scale 6), tail $(col tail 6). The scale processor's own time per span (wall, from its batch_duration histogram; median): $(col scale 8) ns."
echo
echo "Raw, one line per run (variant, round, accepted spans/s, collector CPU s in the ${MEASURE} s window, peak RSS MiB, telemetrygen CPU s, spans exported in the whole run, scale processor ns per span):"
echo
echo '```'
cat "$WORK/results"
echo '```'
