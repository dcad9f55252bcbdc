//! `scale serve`, the daemon that turns decisions into scaling.
//!
//! ```text
//! OTLP/gRPC (collector's otlp_grpc exporter) ─► intake: scale.decision events ─► bounded queue
//!     ─► actor: per-target planner (conflation, bounds, cooldown, scale-down) ─► orchestrator
//! ```
//!
//! One actor task owns all planning state and the orchestrator, so plans for one target never
//! race. It wakes for each batch of decisions and once a second to consider scale-downs. Today the
//! orchestrator is the dry run ([`orchestrator::DryRun`]); the Kubernetes one plugs into the same
//! trait.

pub mod intake;
pub mod orchestrator;
pub mod planner;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scale_core::{Rule, Target};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::intake::{Intake, IntakeStats, Received};
use self::orchestrator::Orchestrator;
use self::planner::{History, Intent, Plan};

/// Decisions the queue holds before the intake answers UNAVAILABLE.
pub const QUEUE_CAPACITY: usize = 4_096;

/// Serve on `listener` until `shutdown` is cancelled: the OTLP intake and the planning actor.
pub async fn serve(
    listener: TcpListener,
    rules: Vec<Rule>,
    orchestrator: Box<dyn Orchestrator>,
    stats: Arc<IntakeStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rules = Arc::new(rules);
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let intake = Intake::new(rules.clone(), tx, stats).into_service();
    let actor = tokio::spawn(run_actor(rules, orchestrator, rx, shutdown.clone()));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(intake)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    actor.await?;
    Ok(())
}

/// Bind `addr` (use port 0 in tests) and return the listener and its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

async fn run_actor(rules: Arc<Vec<Rule>>, mut orch: Box<dyn Orchestrator>, mut rx: mpsc::Receiver<Received>, shutdown: CancellationToken) {
    let mut history: HashMap<Target, History> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            n = rx.recv_many(&mut batch, QUEUE_CAPACITY) => if n == 0 { break },
            _ = tick.tick() => {}
        }
        // Group by target (several rules may name one workload).
        let mut by_target: HashMap<Target, (usize, Vec<Intent>, Vec<Received>)> = HashMap::new();
        for d in batch {
            let target = rules[d.rule_index].action.target.clone();
            let e = by_target.entry(target).or_insert_with(|| (d.rule_index, Vec::new(), Vec::new()));
            e.1.push(Intent { rule: d.rule.clone(), action: d.action, at: now_ns() });
            e.2.push(d);
        }
        // Targets without decisions are considered for scale-down on every wake-up.
        for (i, r) in rules.iter().enumerate() {
            by_target.entry(r.action.target.clone()).or_insert_with(|| (i, Vec::new(), Vec::new()));
        }
        for (target, (rule_index, intents, received)) in by_target {
            let action = &rules[rule_index].action;
            let (current, controlled_by) = match orch.get(&target) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "Could not read the workload's scale.");
                    continue;
                }
            };
            let h = history.entry(target.clone()).or_default();
            let (plan, next) = planner::plan(&intents, current, action, controlled_by.as_deref(), h, now_ns());
            let why = serde_json::json!({
                "rules": received.iter().map(|d| d.rule.as_str()).collect::<Vec<_>>(),
                "observed_ms": received.iter().map(|d| d.observed_ms).fold(f64::NAN, f64::max),
                "count": received.first().map(|d| d.count),
                "evidence_trace_id": received.first().map(|d| d.trace_id.as_str()),
            });
            let applied = match &plan {
                Plan::Replicas { from, to, reason } => {
                    tracing::info!(target = %target, from, to, reason = %reason, "Scaling workload.");
                    orch.set_replicas(&target, *from, *to, &why)
                }
                Plan::Resize { cpu_millis, memory_mib, reason } => {
                    tracing::info!(target = %target, cpu_millis, memory_mib, reason = %reason, "Resizing workload.");
                    orch.resize(&target, *cpu_millis, *memory_mib, &why)
                }
                Plan::Refuse { reason } => {
                    tracing::warn!(target = %target, reason = %reason, "Refused to scale a workload another controller owns.");
                    Ok(())
                }
                Plan::Hold(hold) => {
                    if !intents.is_empty() {
                        tracing::debug!(target = %target, ?hold, "Holding.");
                    }
                    Ok(())
                }
            };
            match applied {
                Ok(()) => *h = next,
                Err(e) => tracing::error!(target = %target, error = %e, "Scaling action failed; will retry on the next decision."),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Event};
    use tonic::codec::CompressionEncoding;

    use super::*;
    use crate::serve::orchestrator::DryRun;
    use crate::serve::planner::Scale;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
    }

    fn decision_span(rule: &str) -> Span {
        Span {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            name: "PlaceOrder".into(),
            events: vec![Event {
                name: "scale.decision".into(),
                attributes: vec![
                    kv("scale.rule", any_value::Value::StringValue(rule.into())),
                    kv("scale.action", any_value::Value::StringValue("horizontal".into())),
                    kv("scale.count", any_value::Value::IntValue(5)),
                    kv("scale.observed_ms", any_value::Value::DoubleValue(812.5)),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decisions_over_otlp_grpc_scale_in_dry_run_and_unknown_rules_are_refused() {
        let rules = scale_core::RulesFile::from_yaml(
            "rules:\n- name: checkout-latency\n  when: { duration_above: 500ms }\n  count: 5\n  window: 30s\n  action: { kind: horizontal, target: { kind: Deployment, namespace: shop, name: checkout }, max: 4 }\n",
        )
        .unwrap()
        .rules;
        let dir = std::env::temp_dir().join(format!("scale-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let audit = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&audit);
        let orch = DryRun::new(Some(&audit), Scale { replicas: 1, cpu_millis: 100, memory_mib: 128 }).unwrap();
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let stats = Arc::new(IntakeStats::default());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, rules, Box::new(orch), stats.clone(), shutdown.clone()));

        let mut client = TraceServiceClient::connect(format!("http://{addr}")).await.unwrap().send_compressed(CompressionEncoding::Gzip);
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![decision_span("checkout-latency"), decision_span("checkout-latency"), decision_span("no-such-rule")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        client.export(req).await.unwrap();

        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let t = std::fs::read_to_string(&audit).unwrap_or_default();
            if !t.is_empty() || std::time::Instant::now() > deadline {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        shutdown.cancel();
        server.await.unwrap().unwrap();

        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "two decisions for one target make one step: {text}");
        let a = &lines[0];
        assert_eq!((a["action"].as_str(), a["target"].as_str(), a["from"].as_u64(), a["to"].as_u64()), (Some("set_replicas"), Some("Deployment/shop/checkout"), Some(1), Some(2)));
        assert_eq!(a["why"]["evidence_trace_id"].as_str(), Some("abababababababababababababababab"));
        assert_eq!(a["why"]["observed_ms"].as_f64(), Some(812.5));
        assert_eq!(stats.decisions.load(Ordering::Relaxed), 2);
        assert_eq!(stats.unknown_rule.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_full_queue_answers_unavailable() {
        let rules = Arc::new(
            scale_core::RulesFile::from_yaml(
                "rules:\n- name: r\n  when: { duration_above: 1ms }\n  count: 1\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, name: x }, max: 4 }\n",
            )
            .unwrap()
            .rules,
        );
        let (tx, _rx) = mpsc::channel(1);
        let stats = Arc::new(IntakeStats::default());
        let intake = Intake::new(rules, tx, stats.clone());
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
        let req = || {
            tonic::Request::new(ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans { spans: vec![decision_span("r")], ..Default::default() }],
                    ..Default::default()
                }],
            })
        };
        assert!(intake.export(req()).await.is_ok());
        let err = intake.export(req()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(stats.refused_full.load(Ordering::Relaxed), 1);
    }
}
