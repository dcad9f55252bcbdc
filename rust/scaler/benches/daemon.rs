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
//!    requests of ~`BATCH` spans) over OTLP/gRPC from `STREAMS` concurrent streams for
//!    `SECONDS`. Spans/s from the daemon's `scale_otlp_spans_total`, and spans per daemon
//!    CPU-second from `/proc/<pid>/stat` — protobuf decode, gRPC and scoring all included.
//!
//! ```text
//! cargo bench --workspace --bench daemon          # or: make bench-daemon
//! ```
//! Environment: DECISIONS (300), GAP_MS (20), SECONDS (10), STREAMS (4), BATCH (512).

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
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
    let d = Daemon::start(&c, &rules(&format!(", min: 1, max: {max}, cooldown: 1ms, scale_down_after: 60m")), &["--log-format", "json"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..n {
        send(d.otlp, "checkout-latency", (i % 251) as u8).await.expect("send decision");
        tokio::time::sleep(gap).await;
    }
    let done = eventually(Duration::from_secs(60), || async { replicas(&admin, "checkout").await as u32 >= 1 + n }).await;
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
            .or_else(|e| scale_scaler::eval::input::null_string_doubles(&line).map(|f| serde_json::from_str(&f)).unwrap_or(Err(e)))
            .unwrap();
        let n: usize = req.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum();
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

async fn ingest() -> String {
    // This process (the load) on CPU 1, the daemon on CPU 0.
    let _ = Command::new("taskset").args(["-a", "-p", "-c", "1", &std::process::id().to_string()]).stdout(Stdio::null()).status();
    let seconds = env("SECONDS", 10);
    let streams = env("STREAMS", 4) as usize;
    let batch = env("BATCH", 512) as usize;
    let (reqs, total_spans) = demo_requests(batch);
    let dir = std::env::temp_dir().join(format!("scale-bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.yaml"), std::fs::read_to_string(root().join("configs/rules/otel-demo.yaml")).unwrap()).unwrap();
    let (otlp, http) = (free_addr(), free_addr());
    let mut child = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_scale"), "serve", "--engine"])
        .arg(root().join("configs/engine/default.yaml"))
        .arg("--rules")
        .arg(dir.join("rules.yaml"))
        .args(["--listen", &otlp.to_string(), "--metrics-listen", &http.to_string()])
        .env("SCALE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("taskset + scale serve");
    let pid = child.id();
    let metric = |name: &str| -> f64 {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(http) else { return f64::NAN };
        let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut t = String::new();
        let _ = s.read_to_string(&mut t);
        t.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric("scale_otlp_spans_total").is_nan() {
        assert!(Instant::now() < deadline, "scale serve --engine did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reqs = std::sync::Arc::new(reqs);
    // Warm-up: one pass over the traces (trains the model, interns the keys).
    let mut c = TraceServiceClient::connect(format!("http://{otlp}")).await.unwrap().max_encoding_message_size(64 << 20);
    for r in reqs.iter() {
        c.export(r.clone()).await.unwrap();
    }
    let (spans0, cpu0, t0) = (metric("scale_otlp_spans_total"), cpu_seconds(pid), Instant::now());
    let stop = t0 + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for s in 0..streams {
        let reqs = reqs.clone();
        let mut c = TraceServiceClient::connect(format!("http://{otlp}")).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut i = s;
            while Instant::now() < stop {
                c.export(reqs[i % reqs.len()].clone()).await.unwrap();
                i += streams;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (spans1, cpu1, el) = (metric("scale_otlp_spans_total"), cpu_seconds(pid), t0.elapsed().as_secs_f64());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let spans = spans1 - spans0;
    let cpu = cpu1 - cpu0;
    format!(
        "| spans | seconds | spans/s | daemon CPU (cores, pinned to 1) | spans per daemon CPU-second |\n| ---: | ---: | ---: | ---: | ---: |\n| {spans:.0} | {el:.1} | {:.0} | {:.2} | {:.0} |\n\n({} recorded demo spans re-batched into {} requests of ~{batch} spans; {streams} streams.)\n",
        spans / el,
        cpu / el,
        spans / cpu,
        total_spans,
        reqs.len(),
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and must not run it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        println!("## Decision → API request (real kube-apiserver v1.37.2 + etcd v3.7.3 on loopback)\n");
        println!("{}", decision_latency().await);
        println!("## Local-engine ingest over OTLP/gRPC (decode included)\n");
        println!("{}", ingest().await);
    });
}
