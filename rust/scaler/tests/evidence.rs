//! Silence is not calm (issue 15, must show 1), end to end: the ocb-built `otelcol-scale`
//! scores real OTLP spans and sends decisions and its rules' evidence reports to `scale serve`,
//! which scales a Deployment on a real kube-apiserver + etcd. During an incident the daemon
//! scales up; the collector is then killed (SIGKILL: no goodbye) and the replicas are held for
//! more than three quiet periods, said by a metric and a Warning Event; the collector comes back
//! with healthy latency, and the scale-down follows a quiet period of healthy reports.
//!
//! Needs `_build/otelcol-scale/otelcol-scale` (`make collector`; `make test` builds it before
//! the Rust tests) or `$SCALE_OTELCOL`.

mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

const QUIET: Duration = Duration::from_secs(6);

fn otelcol() -> PathBuf {
    let p = std::env::var_os("SCALE_OTELCOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("_build/otelcol-scale/otelcol-scale"));
    assert!(
        p.exists(),
        "{} is missing: run `make collector` (make test does) or set SCALE_OTELCOL",
        p.display()
    );
    p
}

/// A running otelcol-scale: OTLP/gRPC in, `scale` with `rules_file`, reports every 500 ms, out
/// to the daemon.
struct Collector {
    child: Child,
    otlp: SocketAddr,
    log: PathBuf,
}

impl Collector {
    fn start(dir: &Path, rules_file: &Path, daemon: SocketAddr) -> Collector {
        let (otlp, health, metrics) = (free_addr(), free_addr(), free_addr());
        let cfg = format!(
            r#"
extensions:
  health_check:
    endpoint: {health}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {otlp}
processors:
  scale:
    sampler: {{ train_size: 200 }}
    rules_file: {rules}
    report_interval: 500ms
exporters:
  otlp_grpc/daemon:
    endpoint: {daemon}
    tls: {{ insecure: true }}
    compression: gzip
service:
  extensions: [health_check]
  telemetry:
    metrics:
      readers:
        - pull:
            exporter:
              prometheus: {{ host: 127.0.0.1, port: {mport} }}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [scale]
      exporters: [otlp_grpc/daemon]
"#,
            rules = rules_file.display(),
            mport = metrics.port(),
        );
        let path = dir.join(format!("collector-{}.yaml", otlp.port()));
        std::fs::write(&path, cfg).unwrap();
        let log = dir.join(format!("collector-{}.log", otlp.port()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(otelcol())
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start otelcol-scale");
        let c = Collector { child, otlp, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(health).is_err() {
            assert!(
                Instant::now() < deadline,
                "otelcol-scale did not come up:\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no last report.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// One request of `n` checkout PlaceOrder spans of `ms` each, ending now.
fn place_orders(n: usize, ms: u64, seq: &AtomicU64) -> ExportTraceServiceRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let spans = (0..n)
        .map(|_| {
            let id = seq.fetch_add(1, Ordering::Relaxed);
            Span {
                trace_id: [id.to_be_bytes(), 1u64.to_be_bytes()].concat(),
                span_id: id.to_be_bytes().to_vec(),
                name: "PlaceOrder".into(),
                start_time_unix_nano: now - ms * 1_000_000,
                end_time_unix_nano: now,
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "checkout")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Traffic to the collector at `addr`: 10 spans every 100 ms, each lasting what `ms` says now;
/// bounded by `until` (the test's deadline). Errors (the collector is down) are ignored.
fn traffic(addr: SocketAddr, ms: Arc<AtomicU64>, until: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let seq = AtomicU64::new(1);
        let mut client = None;
        while Instant::now() < until {
            if client.is_none() {
                client = TraceServiceClient::connect(format!("http://{addr}"))
                    .await
                    .ok();
            }
            if let Some(c) = client.as_mut() {
                if c.export(place_orders(10, ms.load(Ordering::Relaxed), &seq))
                    .await
                    .is_err()
                {
                    client = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_holds_the_scale_and_healthy_reports_bring_it_down() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let rules = format!(
        "rules:\n- name: checkout-latency\n  match: {{ service: checkout, operation: PlaceOrder }}\n  when: {{ duration_above: 500ms }}\n  count: 5\n  window: 5s\n  action: {{ kind: horizontal, target: {{ kind: Deployment, namespace: {NS}, name: checkout }}, min: 1, max: 2, cooldown: 2s, scale_down_after: {}s }}\n",
        QUIET.as_secs()
    );
    let d = Daemon::start(&c, &rules, &["--evidence-timeout", "2s"]);
    let rules_file = d.dir.join("rules.yaml");
    let deadline = Instant::now() + Duration::from_secs(150);
    let latency = Arc::new(AtomicU64::new(50));

    // Healthy traffic through the collector, then an incident: the daemon scales up.
    let mut col = Collector::start(&d.dir, &rules_file, d.otlp);
    let load = traffic(col.otlp, latency.clone(), deadline);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        d.metric("scale_reports_received_total") > 0.0,
        "reports arrive:\n{}",
        d.logs()
    );
    latency.store(900, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(20), || async {
            replicas(&admin, "checkout").await == 2
        })
        .await,
        "scaled up during the incident:\n{}\n{}",
        d.logs(),
        col.logs()
    );

    // The collector dies in the middle of the incident: no decision, no report. Held for more
    // than three quiet periods.
    col.kill();
    let killed = Instant::now();
    while killed.elapsed() < 3 * QUIET + Duration::from_secs(2) {
        assert_eq!(
            replicas(&admin, "checkout").await,
            2,
            "held while the collector is dead ({:?} after the kill):\n{}",
            killed.elapsed(),
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        d.metric("scale_evidence_missing{target=\"Deployment/otel-demo/checkout\"}"),
        1.0,
        "{}",
        d.logs()
    );
    let held: Vec<_> = events(&admin, "checkout")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ScaleDownHeld"))
        .collect();
    assert_eq!(held.len(), 1, "one Warning Event for the episode");

    // The collector comes back and latency is healthy: down one step once a quiet period of
    // healthy reports has passed, not before.
    latency.store(50, Ordering::Relaxed);
    load.abort();
    let col2 = Collector::start(&d.dir, &rules_file, d.otlp);
    let back = Instant::now();
    let load2 = traffic(col2.otlp, latency.clone(), deadline);
    assert!(
        eventually(Duration::from_secs(40), || async {
            replicas(&admin, "checkout").await == 1
        })
        .await,
        "scaled down on healthy reports:\n{}\n{}",
        d.logs(),
        col2.logs()
    );
    assert!(
        back.elapsed() >= QUIET,
        "not before a quiet period of reports: {:?}",
        back.elapsed()
    );
    assert_eq!(
        d.metric("scale_evidence_missing{target=\"Deployment/otel-demo/checkout\"}"),
        0.0
    );
    let down = events(&admin, "checkout")
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("ScaledDown"))
        .expect("a ScaledDown Event");
    assert!(
        down.note
            .as_deref()
            .unwrap_or("")
            .contains("latency healthy (checkout-latency: "),
        "{:?}",
        down.note
    );
    load2.abort();
}
