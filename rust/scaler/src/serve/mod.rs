//! `scale serve`, the daemon that turns decisions into scaling.
//!
//! ```text
//! OTLP/gRPC (collector's otlp_grpc exporter) ─► intake: scale.decision events ─┐
//! OTLP/gRPC raw spans (--engine) ─► local: scale-core in the daemon ───────────┴► bounded queue
//!     ─► actor: per-target planner (conflation, bounds, cooldown, scale-down) ─► orchestrator
//!        (kube: scale subresource, pods/resize, Events; or the dry run)
//! ```
//!
//! - [`intake`] / [`local`]: the two TraceServices (bearer token checked in both; TLS/mTLS by
//!   the transport); [`walk`]: the protobuf walker `local` reads raw spans with.
//! - [`planner`]: a pure function; all the policy lives there and is unit-tested with made-up
//!   times.
//! - The actor: one task (`run_actor`, this module) owns all planning state and the
//!   orchestrator, so plans for one target never race. It wakes for each batch of decisions and
//!   every `tick` to consider scale-downs, retry pending actions and reconcile vertical sizes,
//!   and hands both to [`actor::Actor`]: the per-target state machine ([`actor::TargetActor`])
//!   with the time injected ([`actor::Clock`]), unit-tested with a fake orchestrator. Error
//!   handling: 409 → re-read and re-plan at once; unreachable API → keep everything pending,
//!   and recognise a write whose answer was lost; another controller found by the orchestrator
//!   (a VPA, on a resize) → reported and counted like the planner's refusal, without starting
//!   the cooldown; 403/404 on read → keep decisions for [`REFUSED_READS_BEFORE_DROP`] ticks (a
//!   restarted API server refuses until its RBAC cache is warm), then drop and count them.
//! - [`orchestrator`]: the trait and the dry run; [`kube`]: Kubernetes; [`leader`]: the Lease
//!   (re-checked before every write), the leader's pod label and the [`leader::Leadership`]
//!   handle the actor and the intake consult; [`metrics`]: `/metrics`,
//!   `/healthz`, `/readyz` (this process serves — readiness is not leadership), `/evidence`;
//!   [`throttle`]: API failures logged at a limited rate; [`evidence`]: the collectors' reports
//!   that a scale-down needs; [`keda`]: KEDA's external scaler (`--keda-listen`, its own
//!   listener, [`ServeOptions::keda`]), answering from the same evidence for workloads a
//!   ScaledObject owns.
//!
//! # Memory
//!
//! The planner's [`planner::History`] of a target (last scale-up, scale-down and decision, with causes)
//! lives in the actor and with the workload: every change is written together with the history
//! to keep ([`Orchestrator::set_replicas`], [`Orchestrator::resize`]), and every plan starts by
//! merging the history read back ([`orchestrator::Observed::history`]; the later of each mark wins). So a
//! restarted daemon, or the replica that takes over the Lease, keeps the cooldown of a
//! scale-up it did not make, and never scales down sooner after a change than the quiet period.
//!
//! Decisions are not written as they come (a write per decision would churn the workload
//! during an incident, when decisions are held in cooldown or at max); instead, whenever this
//! replica *begins acting* — at start, or on taking over the Lease — that moment counts as the
//! last decision of every target, since what the previous process was told is unknown. The
//! quiet period before a scale-down therefore runs from the later of the last change (read
//! back) and that moment: a restart or failover delays a scale-down, never hastens it. (A
//! standby that has waited for an hour must not scale down the moment it takes over a workload
//! whose incident the old leader was still holding at max.)
//!
//! Times in the history are the acting daemon's wall clock; after a failover the new leader
//! compares them with its own, so a clock behind by a few seconds lengthens a cooldown by as
//! much, and one ahead shortens it: keep nodes synchronised (the same holds for the stale
//! check in [`intake`]).
//!
//! Tested against a real kube-apiserver + etcd in `tests/it/k8s.rs` (scale-testcluster).

pub mod actor;
pub mod evidence;
pub mod intake;
pub mod keda;
pub mod kube;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod orchestrator;
pub mod planner;
pub mod throttle;
pub mod walk;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scale_core::Rule;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::actor::{Actor, SystemClock};
use self::evidence::EvidenceStore;
use self::intake::{Intake, Received};
use self::leader::Leadership;
use self::metrics::Metrics;
use self::orchestrator::Orchestrator;

/// Decisions the queue holds before the intake answers UNAVAILABLE.
pub const QUEUE_CAPACITY: usize = 4_096;

/// Most targets the daemon keeps (rules named after the service make them from decisions).
pub const MAX_TARGETS: usize = 4096;

/// Decisions remembered per target while an action is pending (the oldest are dropped beyond
/// this; they would all conflate into one step anyway).
pub const PENDING_CAP: usize = 256;

/// Runtime options of [`serve`].
#[derive(Clone)]
pub struct ServeOptions {
    /// How often targets without decisions are reconsidered (scale-down, retries).
    pub tick: Duration,
    /// Bearer token required on the OTLP endpoint.
    pub token: Option<Arc<str>>,
    /// TLS (and client-certificate verification, for mTLS) on the OTLP endpoint.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Local-engine mode: score raw spans in the daemon with this engine configuration.
    pub engine: Option<scale_core::EngineConfig>,
    /// Local-engine mode: start the engine from this snapshot (`scale train`) instead of cold.
    pub engine_snapshot: Option<Arc<[u8]>>,
    /// A target whose rules have sent no evidence report for this long holds its scale
    /// ([`evidence`]); must exceed the collectors' `report_interval`.
    pub evidence_timeout: Duration,
    /// Whether this replica may act (the Lease's, or always, by default): a standby's actor
    /// drops what reaches it and its intake refuses decisions. `serve` mirrors it into the
    /// `scale_leader` gauge of its metrics.
    pub leadership: Leadership,
    /// Serve KEDA's external scaler here too ([`keda`]), with the OTLP endpoint's TLS.
    pub keda: Option<Arc<std::net::TcpListener>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            token: None,
            tls: None,
            engine: None,
            engine_snapshot: None,
            evidence_timeout: evidence::DEFAULT_EVIDENCE_TIMEOUT,
            leadership: Leadership::default(),
            keda: None,
        }
    }
}

/// Serve on `listener` until `shutdown` is cancelled: the OTLP intake and the planning actor.
pub async fn serve<O: Orchestrator>(
    listener: TcpListener,
    rules: Vec<Rule>,
    orchestrator: O,
    metrics: Arc<Metrics>,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rules = Arc::new(rules);
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let store = Arc::new(EvidenceStore::new(opts.evidence_timeout));
    *metrics.evidence.lock() = Some((store.clone(), rules.clone()));
    opts.leadership.mirror(metrics.leader.clone());
    // Ready (`/readyz`) from here until the server stops: the listener is bound, the actor runs.
    metrics
        .serving
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let actor = tokio::spawn(run_actor(
        Actor::new(rules.clone(), opts.leadership.clone(), store.clone()),
        orchestrator,
        rx,
        metrics.clone(),
        opts.tick,
        shutdown.clone(),
    ));
    let keda = match &opts.keda {
        Some(l) => {
            let l = l.try_clone()?;
            l.set_nonblocking(true)?;
            let scaler = keda::KedaScaler::new(
                rules.clone(),
                store.clone(),
                metrics.clone(),
                opts.tick,
                shutdown.clone(),
            );
            Some(tokio::spawn(keda::serve_keda(
                TcpListener::from_std(l)?,
                scaler,
                opts.tls.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    // TCP_NODELAY: with Nagle on, each response waits ~40 ms for the client's delayed ACK, so
    // one request at a time per connection topped out near 23 requests/s.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = opts.tls.clone() {
        builder = builder.tls_config(tls)?;
    }
    let router = match &opts.engine {
        Some(cfg) => builder.add_service(
            local::LocalEngine::new(cfg.clone(), rules.clone(), tx, metrics.clone())?
                .with_snapshot(opts.engine_snapshot.as_deref())?
                .with_token(opts.token.clone())
                .with_evidence(store.clone())
                .into_service(),
        ),
        None => builder.add_service(
            Intake::new(rules.clone(), tx, metrics.clone())
                .with_token(opts.token.clone())
                .with_leadership(opts.leadership.clone())
                .with_evidence(store.clone())
                .into_service(),
        ),
    };
    let served = router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    metrics
        .serving
        .store(false, std::sync::atomic::Ordering::Relaxed);
    *metrics.evidence.lock() = None;
    served?;
    actor.await?;
    if let Some(k) = keda {
        k.await??;
    }
    Ok(())
}

/// Bind `addr` (use port 0 in tests) and return the listener and its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// The wall clock, ns since the Unix epoch.
pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Decisions survive this many consecutive refused reads (ticks) before they are dropped: an
/// API server that has just restarted answers 403 until its RBAC caches are warm.
pub const REFUSED_READS_BEFORE_DROP: u32 = 10;

/// The actor's task: wait for decisions or the tick, and hand them to `actor` with the real
/// clocks.
async fn run_actor<O: Orchestrator>(
    mut actor: Actor,
    mut orch: O,
    mut rx: mpsc::Receiver<Received>,
    metrics: Arc<Metrics>,
    tick: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        let ticked = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = rx.recv_many(&mut batch, QUEUE_CAPACITY) => { if n == 0 { break } false }
            _ = ticker.tick() => true,
        };
        actor.receive(batch, &metrics, &SystemClock);
        actor.round(&mut orch, ticked, &metrics, &SystemClock).await;
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Event};
    use tonic::codec::CompressionEncoding;

    use super::*;
    use crate::serve::orchestrator::DryRun;
    use crate::serve::planner::Scale;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn decision_span(rule: &str) -> Span {
        Span {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            name: "PlaceOrder".into(),
            events: vec![Event {
                name: scale_core::contract::EVENT_DECISION.into(),
                time_unix_nano: now_ns(),
                attributes: vec![
                    kv(
                        scale_core::contract::ATTR_RULE,
                        any_value::Value::StringValue(rule.into()),
                    ),
                    kv(
                        scale_core::contract::ATTR_ACTION,
                        any_value::Value::StringValue("horizontal".into()),
                    ),
                    kv(
                        scale_core::contract::ATTR_COUNT,
                        any_value::Value::IntValue(5),
                    ),
                    kv(
                        scale_core::contract::ATTR_OBSERVED_MS,
                        any_value::Value::DoubleValue(812.5),
                    ),
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
        let orch = DryRun::new(
            Some(&audit),
            Scale {
                replicas: 1,
                cpu_millis: 100,
                memory_mib: 128,
            },
        )
        .unwrap();
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let stats = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            rules,
            orch,
            stats.clone(),
            ServeOptions::default(),
            shutdown.clone(),
        ));

        let mut client = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
            .send_compressed(CompressionEncoding::Gzip);
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        decision_span("checkout-latency"),
                        decision_span("checkout-latency"),
                        decision_span("no-such-rule"),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        client.export(req).await.unwrap();

        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let t = std::fs::read_to_string(&audit).unwrap_or_default();
            if t.ends_with('\n') || std::time::Instant::now() > deadline {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        shutdown.cancel();
        server.await.unwrap().unwrap();

        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "two decisions for one target make one step: {text}"
        );
        let a = &lines[0];
        assert_eq!(
            (
                a["action"].as_str(),
                a["target"].as_str(),
                a["from"].as_u64(),
                a["to"].as_u64()
            ),
            (
                Some("set_replicas"),
                Some("Deployment/shop/checkout"),
                Some(1),
                Some(2)
            )
        );
        assert_eq!(
            a["why"]["evidence_trace_id"].as_str(),
            Some("abababababababababababababababab")
        );
        assert_eq!(a["why"]["observed_ms"].as_f64(), Some(812.5));
        assert_eq!(stats.decisions.get(), 2);
        assert_eq!(stats.decisions_refused_count("unknown_rule"), 1);
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
        let stats = Arc::new(Metrics::new());
        let intake = Intake::new(rules, tx, stats.clone());
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
        let req = || {
            tonic::Request::new(ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![decision_span("r")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            })
        };
        assert!(intake.export(req()).await.is_ok());
        let err = intake.export(req()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(stats.decisions_refused_count("queue_full"), 1);
    }

    /// Issue 15: a replica that takes over the Lease does not know which decisions the old
    /// leader had; it waits a full quiet period from the takeover before scaling down, however
    /// long it stood by — even with reports of healthy latency all along (the actor is driven
    /// directly, so that the evidence can reach it while it stands by).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r15_a_new_leader_waits_a_quiet_period_before_scaling_down() {
        let rules = Arc::new(
            scale_core::RulesFile::from_yaml(
                "rules:\n- name: r\n  when: { duration_above: 1ms }\n  count: 5\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, name: x }, min: 1, max: 5, cooldown: 1s, scale_down_after: 1s }\n",
            )
            .unwrap()
            .rules,
        );
        let dir = std::env::temp_dir().join(format!("scale-takeover-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let audit = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&audit);
        let orch = DryRun::new(
            Some(&audit),
            Scale {
                replicas: 3,
                cpu_millis: 100,
                memory_mib: 128,
            },
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let leadership = Leadership::new(false);
        let store = Arc::new(EvidenceStore::new(Duration::from_secs(30)));
        let shutdown = CancellationToken::new();
        // Healthy reports every 100 ms from the start: evidence never holds the scale-down.
        let reports = {
            let (store, rule, shutdown) = (store.clone(), rules[0].clone(), shutdown.clone());
            tokio::spawn(async move {
                while !shutdown.is_cancelled() {
                    let until = now_ns();
                    let r = scale_core::RuleReport {
                        rule_index: 0,
                        rule: rule.name.clone(),
                        service: None,
                        since_ns: until - 100_000_000,
                        until_ns: until,
                        matched: 50,
                        breaches: 0,
                        in_window: 0,
                        count: rule.count,
                        window_ms: rule.window_ms,
                        threshold_ms: rule.duration_above_ms,
                        p50_ms: Some(0.5),
                        p90_ms: Some(0.8),
                        p99_ms: Some(0.9),
                        max_ms: Some(0.95),
                    };
                    store.record(
                        rule.action.target.clone(),
                        0,
                        "test",
                        &r,
                        std::time::Instant::now(),
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let (_tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let actor = tokio::spawn(run_actor(
            Actor::new(rules, leadership.clone(), store),
            orch,
            rx,
            metrics.clone(),
            Duration::from_millis(50),
            shutdown.clone(),
        ));
        // A standby for longer than the quiet period.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(std::fs::read_to_string(&audit).unwrap_or_default(), "");
        leadership.set(true);
        let took_over = std::time::Instant::now();
        let deadline = took_over + Duration::from_secs(10);
        let text = loop {
            let t = std::fs::read_to_string(&audit).unwrap_or_default();
            if t.ends_with('\n') || std::time::Instant::now() > deadline {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let waited = took_over.elapsed();
        shutdown.cancel();
        actor.await.unwrap();
        reports.await.unwrap();
        let a: serde_json::Value = serde_json::from_str(
            text.lines()
                .next()
                .expect("a scale-down after the takeover"),
        )
        .unwrap();
        assert_eq!((a["from"].as_u64(), a["to"].as_u64()), (Some(3), Some(2)));
        assert!(
            a["why"]["reason"]
                .as_str()
                .unwrap()
                .starts_with("quiet for 1 s, latency healthy"),
            "{a}"
        );
        assert!(
            waited >= Duration::from_millis(950),
            "scaled down {waited:?} after taking over; the quiet period is 1 s"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `/readyz` follows `serve`: ready while it runs, whether or not this replica leads.
    #[tokio::test]
    async fn a_standby_is_ready_while_it_serves() {
        let rules = scale_core::RulesFile::from_yaml(
            "rules:\n- name: r\n  when: { duration_above: 1ms }\n  count: 1\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, name: x }, max: 4 }\n",
        )
        .unwrap()
        .rules;
        let orch = DryRun::new(
            None,
            Scale {
                replicas: 1,
                cpu_millis: 100,
                memory_mib: 128,
            },
        )
        .unwrap();
        let (listener, _) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let leadership = Leadership::new(false);
        assert!(!metrics.is_serving());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            rules,
            orch,
            metrics.clone(),
            ServeOptions {
                leadership: leadership.clone(),
                ..Default::default()
            },
            shutdown.clone(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !metrics.is_serving() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(metrics.is_serving(), "a standby is ready");
        assert!(!leadership.is_leader());
        assert_eq!(metrics.leader.get(), 0, "the gauge mirrors the standby");
        shutdown.cancel();
        server.await.unwrap().unwrap();
        assert!(!metrics.is_serving(), "not ready once stopped");
    }
}
