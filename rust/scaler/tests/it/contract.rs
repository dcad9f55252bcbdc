//! The collector → daemon contract end to end (issue 12): the ocb-built `otelcol-scale` scores
//! real OTLP spans and sends what it keeps to `scale serve --orchestrator dry-run`; beside the
//! daemon's exporter, a file exporter writes the very same spans. Every `scale.decision` the
//! collector emitted is received and accepted by the daemon, and every action in the daemon's
//! audit is one of those decisions (its rule, action, breach count, observed latency and
//! evidence trace). Both sides use `scale_core::contract`; this test checks they meet.
//!
//! Needs `_build/otelcol-scale/otelcol-scale` (`make collector`; `make test` builds it before
//! the Rust tests) or `$SCALE_OTELCOL`.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crate::harness::collector::*;
use crate::harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use scale_core::contract::{
    ATTR_ACTION, ATTR_COUNT, ATTR_OBSERVED_MS, ATTR_RULE, EVENT_DECISION, SPAN_REPORT,
};

/// One decision event as the collector wrote it (OTLP JSON of the file exporter).
#[derive(Debug, Clone, PartialEq)]
struct Emitted {
    rule: String,
    action: String,
    count: i64,
    observed_ms: f64,
    trace_id: String,
}

fn attr<'a>(attrs: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    attrs
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// Every decision event in the file exporter's output, and the number of report spans.
fn emitted(path: &std::path::Path) -> (Vec<Emitted>, usize) {
    let Ok(f) = std::fs::File::open(path) else {
        return (Vec::new(), 0);
    };
    let (mut out, mut reports) = (Vec::new(), 0);
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let spans = v["resourceSpans"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default());
        for s in spans {
            if s["name"] == SPAN_REPORT {
                reports += 1;
            }
            for e in s["events"].as_array().into_iter().flatten() {
                if e["name"] != EVENT_DECISION {
                    continue;
                }
                let a = &e["attributes"];
                let int = |k: &str| {
                    attr(a, k).and_then(|v| {
                        v["intValue"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .or(v["intValue"].as_i64())
                    })
                };
                out.push(Emitted {
                    rule: attr(a, ATTR_RULE).unwrap()["stringValue"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    action: attr(a, ATTR_ACTION).unwrap()["stringValue"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    count: int(ATTR_COUNT).unwrap(),
                    observed_ms: attr(a, ATTR_OBSERVED_MS).unwrap()["doubleValue"]
                        .as_f64()
                        .unwrap(),
                    // The file exporter writes trace ids as hex, as the daemon does.
                    trace_id: s["traceId"].as_str().unwrap().to_ascii_lowercase(),
                });
            }
        }
    }
    (out, reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_the_collector_emits_is_the_one_the_daemon_acts_on() {
    let dir = std::env::temp_dir().join(format!("scale-contract-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A horizontal and a vertical rule; a cooldown of 1 ms, so that most decisions become actions.
    let rules = format!(
        "rules:\n\
         - name: checkout-latency\n  match: {{ service: checkout, operation: PlaceOrder }}\n  when: {{ duration_above: 500ms }}\n  count: 5\n  window: 5s\n  action: {{ kind: horizontal, target: {{ kind: Deployment, namespace: {NS}, name: checkout }}, max: 1000, cooldown: 1ms }}\n\
         - name: cart-latency\n  match: {{ service: cart, operation: PlaceOrder }}\n  when: {{ duration_above: 500ms }}\n  count: 5\n  window: 5s\n  action: {{ kind: vertical, target: {{ kind: Deployment, namespace: {NS}, name: cart }}, max: 4, cooldown: 1ms, vertical: {{ container: app, factor: 1.1, max_cpu_millis: 100000, max_memory_mib: 100000 }} }}\n"
    );
    let rules_file = dir.join("rules.yaml");
    std::fs::write(&rules_file, &rules).unwrap();

    // The daemon, dry run: every action goes to the audit file.
    let (otlp, http) = (free_addr(), free_addr());
    let audit = dir.join("audit.jsonl");
    let log = std::fs::File::create(dir.join("scale.log")).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_scale"))
        .args(["serve", "--orchestrator", "dry-run", "--tick", "200ms"])
        .arg("--rules")
        .arg(&rules_file)
        .arg("--audit")
        .arg(&audit)
        .arg("--listen")
        .arg(otlp.to_string())
        .arg("--metrics-listen")
        .arg(http.to_string())
        .env("SCALE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start scale serve");
    let daemon_logs = || std::fs::read_to_string(dir.join("scale.log")).unwrap_or_default();
    let metric = |name: &str| -> f64 {
        let Ok(mut s) = std::net::TcpStream::connect(http) else {
            return f64::NAN;
        };
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut body);
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(otlp).is_err() {
        assert!(
            Instant::now() < deadline,
            "scale serve did not come up:\n{}",
            daemon_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The collector: scale -> the daemon, and the same spans to a file.
    let (col_otlp, health) = (free_addr(), free_addr());
    let out = dir.join("collector-out.jsonl");
    let cfg = format!(
        r#"
extensions:
  health_check: {{ endpoint: {health} }}
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: {col_otlp} }}
processors:
  scale:
    sampler: {{ train_size: 200 }}
    rules_file: {rules}
    report_interval: 1s
exporters:
  otlp_grpc/daemon:
    endpoint: {otlp}
    tls: {{ insecure: true }}
    sending_queue: {{ enabled: false }}
  file/out:
    path: {out}
    format: json
service:
  extensions: [health_check]
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [scale]
      exporters: [otlp_grpc/daemon, file/out]
"#,
        rules = rules_file.display(),
        out = out.display(),
    );
    let cfg_path = dir.join("collector.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut col = Collector::spawn(
        &dir,
        "collector",
        &[cfg_path.display().to_string()],
        &[],
        col_otlp,
        health,
    );

    // Normal traffic for the model to learn, then slow PlaceOrders in both services. Bounded:
    // 40 requests of 20 spans (2 s), then 60 slow ones (6 s).
    let seq = AtomicU64::new(1);
    let mut client = TraceServiceClient::connect(format!("http://{col_otlp}"))
        .await
        .unwrap();
    for i in 0..100 {
        let ms = if i < 40 { 50 } else { 900 };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                orders_of("checkout", 10, ms, &seq),
                orders_of("cart", 10, ms, &seq),
            ],
        };
        client.export(req).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Until everything emitted has reached the daemon and been acted on.
    let settled = eventually(Duration::from_secs(20), || {
        let (e, _) = emitted(&out);
        let n = e.len() as f64;
        let done = n > 0.0 && metric("scale_decisions_received_total") >= n;
        async move { done }
    })
    .await;
    // A graceful stop: the file exporter flushes what it holds.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(col.child.id().to_string())
        .status();
    let _ = col.child.wait();
    let (decisions, reports) = emitted(&out);
    assert!(
        settled,
        "the daemon received {} of {} decisions:\n{}\n{}",
        metric("scale_decisions_received_total"),
        decisions.len(),
        daemon_logs(),
        col.logs()
    );
    // Every decision emitted was received, and none refused.
    assert_eq!(
        metric("scale_decisions_received_total"),
        decisions.len() as f64,
        "{}",
        daemon_logs()
    );
    assert_eq!(
        metric("scale_decisions_refused_total"),
        0.0,
        "{}",
        daemon_logs()
    );
    std::thread::sleep(Duration::from_millis(600));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status();
    let _ = daemon.wait();

    // Both rules fired, both actions are in the contract, and the reports went too.
    for (rule, action) in [
        ("checkout-latency", "horizontal"),
        ("cart-latency", "vertical"),
    ] {
        assert!(
            decisions
                .iter()
                .any(|d| d.rule == rule && d.action == action),
            "{rule} ({action}) fired: {decisions:?}"
        );
    }
    assert!(reports > 0, "evidence reports were emitted");
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        audit.iter().any(|a| a["action"] == "set_replicas")
            && audit.iter().any(|a| a["action"] == "resize"),
        "both kinds of action were taken: {audit:#?}\n{}",
        daemon_logs()
    );
    eprintln!(
        "{} decisions emitted and received, {} actions audited, {reports} reports",
        decisions.len(),
        audit.len()
    );
    // Every action is one of the decisions the collector emitted: its rule, breach count,
    // observed latency and evidence trace.
    for a in &audit {
        let why = &a["why"];
        let rule = why["rules"][0].as_str().unwrap_or("");
        let matched = decisions.iter().any(|d| {
            d.rule == rule
                && Some(d.count) == why["count"].as_i64()
                && why["observed_ms"].as_f64() == Some(d.observed_ms)
                && why["evidence_trace_id"].as_str() == Some(d.trace_id.as_str())
                && (a["action"] == "set_replicas") == (d.action == "horizontal")
        });
        assert!(
            matched,
            "an action no emitted decision explains: {a:#}\nemitted: {decisions:#?}"
        );
    }
}
