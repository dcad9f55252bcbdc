//! The daemon's operator surface over HTTP: Prometheus `/metrics`, `/healthz` (the process is
//! up), `/readyz` (this process serves: its OTLP listener is bound and its planner runs) and
//! `/evidence` (every target's scale-down verdict and the reports behind it).
//!
//! Readiness is not leadership. Both replicas of a two-replica Deployment are ready, so the
//! Deployment becomes Available and a rolling update proceeds; which one acts is shown by the
//! `scale_leader` gauge and by the leader's pod label ([`super::leader::LEADER_LABEL`]), which
//! the OTLP Service selects on so that decisions reach the replica that acts.
//!
//! Metric names (all prefixed `scale_`):
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `scale_otlp_requests_total` | | export requests answered OK |
//! | `scale_otlp_spans_total` | | spans in those requests |
//! | `scale_decisions_received_total` | | decisions accepted into the queue |
//! | `scale_decisions_refused_total` | `reason` | `unknown_rule`, `malformed`, `stale`, `bad_service`, `queue_full`, `not_leader`, `unauthenticated`, `too_many_targets` |
//! | `scale_actions_total` | `action`, `target` | `scale_up`, `scale_down`, `resize` applied |
//! | `scale_actions_refused_total` | `reason`, `target` | `controlled` (HPA/KEDA; VPA for vertical actions), `at_max`, `cooldown`, `forbidden`, `not_found`, `not_leader`, `in_place_refused` (`vertical.fallback: none`) |
//! | `scale_api_errors_total` | `op`, `kind` | Kubernetes API errors (`conflict`, `unavailable`, `forbidden`, …; `resize` also `in_place_unavailable`, `in_place_refused`) |
//! | `scale_decision_to_request_seconds` | | decision received → scaling request sent |
//! | `scale_engine_spans_total` | `outcome` | local-engine mode: spans `scored`, `kept`, `skipped` |
//! | `scale_reports_received_total` | | rule evidence reports (`scale.report` spans) accepted |
//! | `scale_reports_refused_total` | `reason` | reports refused: `unknown_rule`, `bad_service`, `malformed` |
//! | `scale_evidence_missing` | `target` | 1 while a target that would scale down holds because its reports do not show healthy latency for the quiet period (none, no spans, or breaches) |
//! | `scale_leader` | | 1 while this replica acts (holds the Lease, or runs without one), else 0 |
//! | `scale_keda_requests_total` | `method`, `code` | KEDA external scaler calls (`--keda-listen`): `IsActive`, `StreamIsActive`, `GetMetricSpec`, `GetMetrics`; `ok`, `unavailable` (evidence missing), `not_found`, `failed_precondition`, `invalid_argument` |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Label: a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// Labels of an action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `scale_up`, `scale_down`, `resize`.
    pub action: String,
    /// `Kind/namespace/name`.
    pub target: String,
}

/// Labels of a refused action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Why.
    pub reason: String,
    /// `Kind/namespace/name`.
    pub target: String,
}

/// Labels of an API error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiErrorLabels {
    /// `get_scale`, `set_replicas`, `resize`, `event`, `lease`, …
    pub op: String,
    /// `conflict`, `unavailable`, `forbidden`, `not_found`, `other`.
    pub kind: String,
}

/// Labels of local-engine span counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `scored`, `kept`, `skipped`.
    pub outcome: String,
}

/// Label: a target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// `Kind/namespace/name`.
    pub target: String,
}

/// Labels of a KEDA external scaler call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KedaLabels {
    /// `IsActive`, `StreamIsActive`, `GetMetricSpec`, `GetMetrics`.
    pub method: String,
    /// `ok` or the gRPC status, in snake case.
    pub code: String,
}

/// Every metric of the daemon, registered once.
#[derive(Debug)]
pub struct Metrics {
    /// Export requests answered OK.
    pub requests: Counter,
    /// Spans seen in those requests.
    pub spans: Counter,
    /// Decisions accepted into the queue.
    pub decisions: Counter,
    /// Decisions refused, by reason.
    pub decisions_refused: Family<ReasonLabel, Counter>,
    /// Actions applied.
    pub actions: Family<ActionLabels, Counter>,
    /// Actions not taken.
    pub actions_refused: Family<RefusedLabels, Counter>,
    /// Kubernetes API errors.
    pub api_errors: Family<ApiErrorLabels, Counter>,
    /// Decision received → request sent, seconds.
    pub decision_to_request: Histogram,
    /// Local-engine span outcomes.
    pub engine_spans: Family<OutcomeLabel, Counter>,
    /// Evidence reports accepted.
    pub reports: Counter,
    /// Evidence reports refused, by reason.
    pub reports_refused: Family<ReasonLabel, Counter>,
    /// 1 while a target holds for want of evidence of healthy latency.
    pub evidence_missing: Family<TargetLabel, Gauge>,
    /// KEDA external scaler calls, by method and answer.
    pub keda_requests: Family<KedaLabels, Counter>,
    /// 1 while this replica may act (holds the Lease, or runs without election), else 0: a
    /// mirror of the [`super::leader::Leadership`] handle (see [`super::leader::Leadership::mirror`]).
    pub leader: Gauge,
    /// Whether this process serves (`/readyz`): set by [`super::serve`] while it runs.
    pub serving: AtomicBool,
    /// The evidence behind `/evidence`: set by [`super::serve`] while it runs.
    pub evidence: parking_lot::Mutex<Option<EvidenceSource>>,
    registry: Registry,
}

/// Where `/evidence` reads from: the daemon's reports and the rules they are judged against.
pub type EvidenceSource = (
    Arc<super::evidence::EvidenceStore>,
    Arc<Vec<scale_core::Rule>>,
);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("scale");
        let m = Metrics {
            requests: Counter::default(),
            spans: Counter::default(),
            decisions: Counter::default(),
            decisions_refused: Family::default(),
            actions: Family::default(),
            actions_refused: Family::default(),
            api_errors: Family::default(),
            // 0.25 ms … ~14 s, 25 % apart.
            decision_to_request: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00025, 1.25, 50),
            ),
            engine_spans: Family::default(),
            reports: Counter::default(),
            reports_refused: Family::default(),
            evidence_missing: Family::default(),
            keda_requests: Family::default(),
            leader: Gauge::default(),
            serving: AtomicBool::new(false),
            evidence: parking_lot::Mutex::new(None),
            registry: Registry::default(),
        };
        // Without leader election this replica acts; a `Leadership` mirrored into the gauge
        // takes it over.
        m.leader.set(1);
        registry.register(
            "otlp_requests",
            "OTLP export requests answered OK",
            m.requests.clone(),
        );
        registry.register(
            "otlp_spans",
            "Spans in OTLP export requests answered OK",
            m.spans.clone(),
        );
        registry.register(
            "decisions_received",
            "Decisions accepted into the queue",
            m.decisions.clone(),
        );
        registry.register(
            "decisions_refused",
            "Decisions refused, by reason",
            m.decisions_refused.clone(),
        );
        registry.register("actions", "Scaling actions applied", m.actions.clone());
        registry.register(
            "actions_refused",
            "Scaling actions not taken, by reason",
            m.actions_refused.clone(),
        );
        registry.register(
            "api_errors",
            "Kubernetes API errors, by operation and kind",
            m.api_errors.clone(),
        );
        registry.register(
            "decision_to_request_seconds",
            "Time from a decision's arrival to the scaling request being sent",
            m.decision_to_request.clone(),
        );
        registry.register(
            "engine_spans",
            "Local-engine mode: spans by outcome",
            m.engine_spans.clone(),
        );
        registry.register(
            "reports_received",
            "Rule evidence reports (scale.report spans) accepted",
            m.reports.clone(),
        );
        registry.register(
            "reports_refused",
            "Rule evidence reports refused, by reason",
            m.reports_refused.clone(),
        );
        registry.register(
            "evidence_missing",
            "1 while a target that would scale down holds: its reports do not show healthy latency for the quiet period",
            m.evidence_missing.clone(),
        );
        registry.register(
            "keda_requests",
            "KEDA external scaler calls, by method and answer",
            m.keda_requests.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica acts (holds the Lease, or runs without one), else 0",
            m.leader.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Count a KEDA external scaler call.
    pub fn keda_request(&self, method: &str, code: &str) {
        self.keda_requests
            .get_or_create(&KedaLabels {
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// Count a refused report.
    pub fn refuse_report(&self, reason: &str) {
        self.reports_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Set whether `target` holds for want of evidence.
    pub fn set_evidence_missing(&self, target: &str, missing: bool) {
        self.evidence_missing
            .get_or_create(&TargetLabel {
                target: target.to_string(),
            })
            .set(i64::from(missing));
    }

    /// Count a refused decision.
    pub fn refuse_decision(&self, reason: &str) {
        self.decisions_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Count a refused decision `n` times.
    pub fn refuse_decisions(&self, reason: &str, n: u64) {
        self.decisions_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    /// Value of a refused-decision counter (tests, logs).
    pub fn decisions_refused_count(&self, reason: &str) -> u64 {
        self.decisions_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    /// Count an applied action.
    pub fn action(&self, action: &str, target: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                action: action.into(),
                target: target.into(),
            })
            .inc();
    }

    /// Count an action not taken.
    pub fn action_refused(&self, reason: &str, target: &str) {
        self.actions_refused
            .get_or_create(&RefusedLabels {
                reason: reason.into(),
                target: target.into(),
            })
            .inc();
    }

    /// Value of an action-not-taken counter.
    pub fn actions_refused_count(&self, reason: &str, target: &str) -> u64 {
        self.actions_refused
            .get_or_create(&RefusedLabels {
                reason: reason.into(),
                target: target.into(),
            })
            .get()
    }

    /// Count an API error.
    pub fn api_error(&self, op: &str, kind: &str) {
        self.api_errors
            .get_or_create(&ApiErrorLabels {
                op: op.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// Value of an API error counter.
    pub fn api_errors_count(&self, op: &str, kind: &str) -> u64 {
        self.api_errors
            .get_or_create(&ApiErrorLabels {
                op: op.into(),
                kind: kind.into(),
            })
            .get()
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// Whether this process serves (`/readyz`).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }
}

/// `/evidence`: every target's scale-down verdict and the reports behind it, per rule and
/// collector, over its quiet period (JSON; see [`super::evidence::View`]).
pub fn evidence_json(metrics: &Metrics) -> Option<serde_json::Value> {
    let (store, rules) = metrics.evidence.lock().clone()?;
    let targets: Vec<serde_json::Value> = store
        .views(&rules, std::time::Instant::now())
        .into_iter()
        .map(|(t, v)| {
            serde_json::json!({
                "target": t.to_string(),
                "verdict": v.quiet.verdict(),
                "detail": super::evidence::describe(&v.quiet),
                "rules": v.rules,
            })
        })
        .collect();
    Some(serde_json::json!({
        "evidence_timeout_seconds": store.timeout().as_secs_f64(),
        "targets": targets,
    }))
}

/// Serve `/metrics`, `/healthz`, `/readyz` and `/evidence` on `listener` until `shutdown`.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let m = metrics.clone();
    let r = metrics.clone();
    let e = metrics;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/evidence",
            get(move || {
                let e = e.clone();
                async move {
                    match evidence_json(&e) {
                        Some(v) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "application/json")],
                            format!("{v:#}\n"),
                        ),
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [(header::CONTENT_TYPE, "text/plain")],
                            "not serving\n".to_string(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    if r.is_serving() {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
