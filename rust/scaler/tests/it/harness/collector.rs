//! `otelcol-scale` as a real process for the tests that need the collector (`make collector`
//! builds it; `make test` does before the Rust tests), and OTLP traffic to send it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::{free_addr, root};

/// `$SCALE_OTELCOL`, or `_build/otelcol-scale/otelcol-scale`.
pub fn otelcol() -> PathBuf {
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
pub struct Collector {
    pub child: Child,
    pub otlp: SocketAddr,
    pub log: PathBuf,
}

impl Collector {
    pub fn start(dir: &Path, rules_file: &Path, daemon: SocketAddr) -> Collector {
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
        Collector::spawn(
            dir,
            &format!("collector-{}", otlp.port()),
            &[path.display().to_string()],
            &[],
            otlp,
            health,
        )
    }

    /// otelcol-scale with `configs` (files, or `yaml:` snippets merged over them) and `env`,
    /// once its health check at `health` answers.
    pub fn spawn(
        dir: &Path,
        name: &str,
        configs: &[String],
        env: &[(&str, String)],
        otlp: SocketAddr,
        health: SocketAddr,
    ) -> Collector {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(otelcol());
        for c in configs {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start otelcol-scale");
        let c = Collector { child, otlp, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        // health_check listens from the extensions' start, before the receivers bind: ready
        // when both accept.
        while std::net::TcpStream::connect(health).is_err()
            || std::net::TcpStream::connect(otlp).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "otelcol-scale did not come up:\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no last report.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn str_kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// One request of `n` checkout PlaceOrder spans of `ms` each, ending now.
pub fn place_orders(n: usize, ms: u64, seq: &AtomicU64) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![orders_of("checkout", n, ms, seq)],
    }
}

/// `n` PlaceOrder spans of `service`, of `ms` each, ending now, one trace each.
pub fn orders_of(service: &str, n: usize, ms: u64, seq: &AtomicU64) -> ResourceSpans {
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
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![str_kv("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Traffic to the collector at `addr`: 10 spans every 100 ms, each lasting what `ms` says now;
/// bounded by `until` (the test's deadline). Errors (the collector is down) are ignored.
pub fn traffic(
    addr: SocketAddr,
    ms: Arc<AtomicU64>,
    until: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let seq = AtomicU64::new(1);
        let mut client = None;
        while Instant::now() < until {
            if client.is_none() {
                client = TraceServiceClient::connect(format!("http://{addr}"))
                    .await
                    .ok();
            }
            if let Some(c) = client.as_mut()
                && c.export(place_orders(10, ms.load(Ordering::Relaxed), &seq))
                    .await
                    .is_err()
            {
                client = None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
