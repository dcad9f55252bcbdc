//! Daemon benchmarks (issue 5, "Must show" 9), one run, printed as Markdown:
//!
//! 1. **Decision → API request**: `scale serve --orchestrator kubernetes` against a real
//!    kube-apiserver + etcd on loopback (scale-testcluster); `DECISIONS` decisions, one every
//!    `GAP_MS`, each one step (cooldown 1 ms); the latency from a decision's arrival at the
//!    intake to the scale request being sent is read from the daemon's own JSON log
//!    (`decision_to_request_ms`; the same value feeds the `scale_decision_to_request_seconds`
//!    histogram). Includes the read of the scale subresource and the HPA list that precede
//!    every write.
//! 2. **Local-engine ingest**: `scale serve --engine configs/engine/default.yaml` (dry run)
//!    pinned to CPU 0 with `taskset`; this process, on the other CPU, replays the recorded
//!    OpenTelemetry demo traces (`data/otel-demo/traces.jsonl.gz`, 24,023 spans, re-batched into
//!    requests of ~`BATCH` spans) over OTLP/gRPC, `STREAMS` concurrent requests multiplexed over
//!    `CONNS` HTTP/2 connections (as a collector's exporter does), for `SECONDS`. Each request is
//!    encoded to protobuf once, before the run, and sent as those bytes (a pass-through codec),
//!    so the load costs little more than the copy into the HTTP/2 stream (its CPU is reported
//!    too). Spans/s from the daemon's `scale_otlp_spans_total`, and spans per daemon CPU-second
//!    from `/proc/<pid>/stat` — protobuf decode, gRPC and scoring all included. (One request at
//!    a time per connection stalls about 40 ms per request on Nagle + delayed ACK: the daemon's
//!    accepted sockets do not set `TCP_NODELAY`.)
//! 3. **Decode alone**: in this process, ns per span for the daemon's protobuf walker
//!    (`serve::local::span_refs`, up to the span list handed to the engine) and for prost's full
//!    `ExportTraceServiceRequest`, on the same requests.
//!
//! ```text
//! cargo bench --workspace --bench daemon          # or: make bench-daemon
//! PARTS=ingest,decode SECONDS=5 cargo bench --workspace --bench daemon   # skip part 1
//! ```
//! Environment: PARTS (decision,ingest,decode), DECISIONS (300), GAP_MS (20), SECONDS (10),
//! STREAMS (8), CONNS (1), BATCH (512).

#[path = "../tests/it/harness/mod.rs"]
mod harness;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

async fn decision_latency() -> String {
    let n = env("DECISIONS", 300) as u32;
    let gap = Duration::from_millis(env("GAP_MS", 20));
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let max = n + 10;
    let d = Daemon::start(
        &c,
        &rules(&format!(
            ", min: 1, max: {max}, cooldown: 1ms, scale_down_after: 60m"
        )),
        &["--log-format", "json"],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..n {
        send(d.otlp, "checkout-latency", (i % 251) as u8)
            .await
            .expect("send decision");
        tokio::time::sleep(gap).await;
    }
    let done = eventually(Duration::from_secs(60), || async {
        replicas(&admin, "checkout").await as u32 > n
    })
    .await;
    let mut lat: Vec<f64> = std::fs::read_to_string(&d.log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "Scaling workload.")
        .filter_map(|v| v["fields"]["decision_to_request_ms"].as_f64())
        .collect();
    lat.sort_by(f64::total_cmp);
    let final_replicas = replicas(&admin, "checkout").await;
    format!(
        "| decisions sent | scale requests | final replicas | p50 ms | p90 ms | p99 ms | max ms |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n| {n} | {} | {final_replicas}{} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        lat.len(),
        if done { "" } else { " (incomplete)" },
        quantile(&lat, 0.5),
        quantile(&lat, 0.9),
        quantile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    )
}

/// The recorded demo traces, re-batched into requests of about `batch` spans.
fn demo_requests(batch: usize) -> (Vec<ExportTraceServiceRequest>, usize) {
    let f = std::fs::File::open(root().join("data/otel-demo/traces.jsonl.gz")).unwrap();
    let r = std::io::BufReader::new(flate2::read::GzDecoder::new(f));
    let mut out = Vec::new();
    let mut cur = ExportTraceServiceRequest::default();
    let (mut in_cur, mut total) = (0usize, 0usize);
    for line in r.lines() {
        let line = line.unwrap();
        let req: ExportTraceServiceRequest = serde_json::from_str(&line)
            .or_else(|e| {
                scale_scaler::eval::input::null_string_doubles(&line)
                    .map(|f| serde_json::from_str(&f))
                    .unwrap_or(Err(e))
            })
            .unwrap();
        let n: usize = req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        cur.resource_spans.extend(req.resource_spans);
        in_cur += n;
        total += n;
        if in_cur >= batch {
            out.push(std::mem::take(&mut cur));
            in_cur = 0;
        }
    }
    if in_cur > 0 {
        out.push(cur);
    }
    (out, total)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// A client codec that sends already encoded protobuf bytes as they are and ignores the
/// (empty) response.
#[derive(Clone, Copy, Default)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

async fn export(c: &mut tonic::client::Grpc<Channel>, body: Bytes) {
    c.ready().await.unwrap();
    c.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT),
        PreEncoded,
    )
    .await
    .unwrap();
}

async fn client(addr: std::net::SocketAddr) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// ns per span of `f` over every request, best of 20 passes.
fn ns_per_span(reqs: &[Bytes], spans: usize, mut f: impl FnMut(&Bytes) -> usize) -> f64 {
    (0..20)
        .map(|_| {
            let t = Instant::now();
            let n: usize = reqs.iter().map(&mut f).sum();
            assert_eq!(n, spans);
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

async fn ingest() -> String {
    // This process (the load) on CPU 1, the daemon on CPU 0.
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    let seconds = env("SECONDS", 10);
    let streams = env("STREAMS", 8) as usize;
    let conns_n = (env("CONNS", 1) as usize).clamp(1, streams.max(1));
    let batch = env("BATCH", 512) as usize;
    let (reqs, total_spans) = demo_requests(batch);
    let bodies: Vec<Bytes> = reqs
        .iter()
        .map(|r| Bytes::from(r.encode_to_vec()))
        .collect();
    let wire_bytes: usize = bodies.iter().map(Bytes::len).sum();
    drop(reqs);
    let dir = std::env::temp_dir().join(format!("scale-bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rules.yaml"),
        std::fs::read_to_string(root().join("configs/rules/otel-demo.yaml")).unwrap(),
    )
    .unwrap();
    let (otlp, http) = (free_addr(), free_addr());
    let mut child = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_scale"), "serve", "--engine"])
        .arg(root().join("configs/engine/default.yaml"))
        .arg("--rules")
        .arg(dir.join("rules.yaml"))
        .args([
            "--listen",
            &otlp.to_string(),
            "--metrics-listen",
            &http.to_string(),
        ])
        .env("SCALE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("taskset + scale serve");
    let pid = child.id();
    let metric = |name: &str| -> f64 {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(http) else {
            return f64::NAN;
        };
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut t = String::new();
        let _ = s.read_to_string(&mut t);
        t.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric("scale_otlp_spans_total").is_nan() {
        assert!(
            Instant::now() < deadline,
            "scale serve --engine did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let bodies = std::sync::Arc::new(bodies);
    // Warm-up: one pass over the traces (trains the model, interns the keys).
    let mut c = client(otlp).await;
    for b in bodies.iter() {
        export(&mut c, b.clone()).await;
    }
    let me = std::process::id();
    let (spans0, cpu0, load0, t0) = (
        metric("scale_otlp_spans_total"),
        cpu_seconds(pid),
        cpu_seconds(me),
        Instant::now(),
    );
    let stop = t0 + Duration::from_secs(seconds);
    let mut conns = Vec::new();
    for _ in 0..conns_n {
        conns.push(client(otlp).await);
    }
    let mut tasks = Vec::new();
    for s in 0..streams {
        let bodies = bodies.clone();
        let mut c = conns[s % conns_n].clone();
        tasks.push(tokio::spawn(async move {
            let mut i = s;
            while Instant::now() < stop {
                export(&mut c, bodies[i % bodies.len()].clone()).await;
                i += streams;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (spans1, cpu1, load1, el) = (
        metric("scale_otlp_spans_total"),
        cpu_seconds(pid),
        cpu_seconds(me),
        t0.elapsed().as_secs_f64(),
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let spans = spans1 - spans0;
    let cpu = cpu1 - cpu0;
    format!(
        "| spans | seconds | spans/s | daemon CPU (cores, pinned to 1) | spans per daemon CPU-second | load CPU (cores) |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n| {spans:.0} | {el:.1} | {:.0} | {:.2} | {:.0} | {:.2} |\n\n({} recorded demo spans re-batched into {} requests of ~{batch} spans, {:.0} KiB each, sent pre-encoded; {streams} concurrent streams over {conns_n} connection(s).)\n",
        spans / el,
        cpu / el,
        spans / cpu,
        (load1 - load0) / el,
        total_spans,
        bodies.len(),
        wire_bytes as f64 / bodies.len() as f64 / 1024.0,
    )
}

/// The decode alone, in this process (on CPU 1 when run after `ingest`).
fn decode_alone() -> String {
    let batch = env("BATCH", 512) as usize;
    let (reqs, total_spans) = demo_requests(batch);
    let bodies: Vec<Bytes> = reqs
        .iter()
        .map(|r| Bytes::from(r.encode_to_vec()))
        .collect();
    drop(reqs);
    let walker = ns_per_span(&bodies, total_spans, |b| {
        let mut refs = Vec::new();
        scale_scaler::serve::local::span_refs(b, &mut refs).unwrap();
        refs.len()
    });
    let full = ns_per_span(&bodies, total_spans, |b| {
        let req = ExportTraceServiceRequest::decode(b.clone()).unwrap();
        req.resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum()
    });
    format!(
        "| decode | ns per span |\n| --- | ---: |\n| walker (`serve::local::span_refs`: the span list for the engine, borrowed from the request) | {walker:.0} |\n| full `ExportTraceServiceRequest` (prost) | {full:.0} |\n\n(Requests of ~{batch} spans; best of 20 passes over the {total_spans} spans.)\n"
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and must not run it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let parts = std::env::var("PARTS").unwrap_or_else(|_| "decision,ingest,decode".into());
        if parts.split(',').any(|p| p == "decision") {
            println!("## Decision → API request (real kube-apiserver v1.37.2 + etcd v3.7.3 on loopback)\n");
            println!("{}", decision_latency().await);
        }
        if parts.split(',').any(|p| p == "ingest") {
            println!("## Local-engine ingest over OTLP/gRPC (decode included)\n");
            println!("{}", ingest().await);
        }
        if parts.split(',').any(|p| p == "decode") {
            println!("## Protobuf decode alone (one thread)\n");
            println!("{}", decode_alone());
        }
    });
}
