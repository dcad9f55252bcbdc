//! Decision intake: an OTLP/gRPC TraceService that reads `scale.decision` span events.
//!
//! The collector's `scale` processor adds a span event named `scale.decision` to the span that
//! completed a rule's window (attributes `scale.rule`, `scale.action`, `scale.count`,
//! `scale.window_ms`, `scale.threshold_ms`, `scale.observed_ms`, …; the span is the evidence).
//! Each such event becomes a [`Received`] decision; the target is *not* read from the span but
//! looked up by rule name in the daemon's own rules, and a decision naming an unknown rule is
//! refused and counted. A rule whose target name contains `${service}` is resolved with the
//! `service.name` of the span's resource, which must match the rule's service pattern and make a
//! valid object name (else refused as `bad_service`).
//!
//! # Stale decisions
//!
//! The event's `time_unix_nano` is when the rule's window completed, by the collector's clock
//! (the local engine stamps its own). A decision whose age on arrival (the daemon's clock minus
//! that time) exceeds its rule's `action.max_decision_age` (default
//! [`scale_core::config::default_max_decision_age_ms`]: two windows, at least 10 s) is refused
//! and counted (`reason="stale"`), logged at most once per [`STALE_LOG_EVERY`] with the number
//! held back: the exporter retries for minutes, and a breach reported that late is history
//! (while it lasts the rule fires again at least once a window, so a fresh decision follows).
//! The age is judged once, on arrival: a decision accepted in time stays pending through an API
//! outage, since that delay is the daemon's own. A time in the future (the collector's clock
//! ahead of the daemon's) counts as now; beyond [`CLOCK_SKEW_ALLOWANCE`] that is also logged
//! (at the same rate), since both clocks should be synchronised. An event without a time
//! (`0`) is refused as `malformed`: its age cannot be judged.
//!
//! Backpressure: decisions go into a bounded channel with `try_send`; when it is full the whole
//! request is answered `UNAVAILABLE` (the exporter retries) and counted. gzip is accepted and the
//! largest decoded message is [`MAX_MESSAGE_BYTES`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::Event;
use scale_core::{ActionKind, Rule};
use tokio::sync::mpsc;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::evidence::EvidenceStore;
use super::leader::Leadership;
use super::metrics::Metrics;
use super::throttle::LogLimiter;

/// Largest accepted (decoded) OTLP message.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

// The names read from spans (decisions, reports) are the contract's: scale_core::contract.
use scale_core::contract::{
    ATTR_ACTION, ATTR_ANOMALY_SCORE, ATTR_COUNT, ATTR_OBSERVED_MS, ATTR_REPORT_BREACHES,
    ATTR_REPORT_IN_WINDOW, ATTR_REPORT_MATCHED, ATTR_REPORT_MAX_MS, ATTR_REPORT_P50_MS,
    ATTR_REPORT_P90_MS, ATTR_REPORT_P99_MS, ATTR_RULE, ATTR_SERVICE, EVENT_DECISION,
    RESOURCE_COLLECTOR, SPAN_REPORT,
};

/// A decision this far in the future (the collector's clock ahead of the daemon's) is taken as
/// of now without a word; further ahead, it is too, but logged.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5);

/// Refusals of stale decisions are logged at most this often (each one is counted).
pub const STALE_LOG_EVERY: Duration = super::throttle::REPORT_EVERY;

/// A decision as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Index of the rule in the daemon's rules.
    pub rule_index: usize,
    /// Rule name.
    pub rule: String,
    /// horizontal or vertical.
    pub action: ActionKind,
    /// `scale.count`.
    pub count: i64,
    /// `scale.observed_ms`.
    pub observed_ms: f64,
    /// The workload: the rule's target (named after the span's service for a rule with
    /// `${service}` in its target's name).
    pub target: scale_core::Target,
    /// Evidence trace id, hex.
    pub trace_id: String,
    /// When the rule's window completed (the event's `time_unix_nano`), ns since the epoch, by
    /// the clock of whoever counted it.
    pub window_end_ns: u64,
    /// When it was received.
    pub received: Instant,
}

/// The TraceService implementation.
pub struct Intake {
    rules: Arc<Vec<Rule>>,
    tx: mpsc::Sender<Received>,
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
    stale_log: LogLimiter,
    skew_log: LogLimiter,
    evidence: Option<Arc<EvidenceStore>>,
    leadership: Leadership,
}

impl Intake {
    /// An intake that resolves rule names against `rules` and queues decisions on `tx`.
    pub fn new(rules: Arc<Vec<Rule>>, tx: mpsc::Sender<Received>, metrics: Arc<Metrics>) -> Self {
        Self {
            rules,
            tx,
            metrics,
            token: None,
            stale_log: LogLimiter::new(STALE_LOG_EVERY),
            skew_log: LogLimiter::new(STALE_LOG_EVERY),
            evidence: None,
            leadership: Leadership::default(),
        }
    }

    /// Refuse decisions (UNAVAILABLE, counted as `not_leader`) while `leadership` stands by
    /// (without it, the intake always takes them).
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }

    /// Record the collectors' `scale.report` spans into `store` (without one they are ignored).
    pub fn with_evidence(mut self, store: Arc<EvidenceStore>) -> Self {
        self.evidence = Some(store);
        self
    }

    /// Require `authorization: Bearer <token>` on every request (UNAUTHENTICATED otherwise).
    pub fn with_token(mut self, token: Option<Arc<str>>) -> Self {
        self.token = token;
        self
    }

    /// The tonic service, gzip accepted, message size bounded.
    pub fn into_service(self) -> TraceServiceServer<Self> {
        TraceServiceServer::new(self)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Every decision in a request, resolved against the rules; unknown, malformed and stale
    /// ones are counted and left out. `now` and `now_ns` (since the epoch) are the time of
    /// arrival.
    pub fn decisions(
        &self,
        req: &ExportTraceServiceRequest,
        now: Instant,
        now_ns: u64,
    ) -> (Vec<Received>, u64) {
        let mut out = Vec::new();
        let mut spans = 0u64;
        let log_spans =
            tracing::enabled!(target: "scale_scaler::serve::intake::spans", tracing::Level::DEBUG);
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| str_attr(&r.attributes, "service.name"));
            let collector = rs
                .resource
                .as_ref()
                .and_then(|r| str_attr(&r.attributes, RESOURCE_COLLECTOR))
                .unwrap_or("");
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    spans += 1;
                    if span.name == SPAN_REPORT && str_attr(&span.attributes, ATTR_RULE).is_some() {
                        self.report(span, collector, now);
                        continue;
                    }
                    if log_spans {
                        // The spans the collector kept, for operators (and the demo) to watch:
                        // SCALE_LOG=info,scale_scaler::serve::intake::spans=debug
                        tracing::debug!(
                            target: "scale_scaler::serve::intake::spans",
                            service = service.unwrap_or(""),
                            operation = %span.name,
                            duration_ms = span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) as f64 / 1e6,
                            score = f64_attr(&span.attributes, ATTR_ANOMALY_SCORE).unwrap_or(f64::NAN),
                            end_unix_ns = span.end_time_unix_nano,
                            trace_id = %span.trace_id.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                            "Kept span."
                        );
                    }
                    for ev in span.events.iter().filter(|e| e.name == EVENT_DECISION) {
                        match self.resolve(ev, service, &span.trace_id, now, now_ns) {
                            Ok(d) => {
                                let age_ms = now_ns.saturating_sub(d.window_end_ns) as f64 / 1e6;
                                tracing::info!(rule = %d.rule, target = %d.target, action = ?d.action, count = d.count, observed_ms = d.observed_ms, age_ms, trace_id = %d.trace_id, "Decision received.");
                                out.push(d)
                            }
                            Err(Refusal::Stale {
                                rule,
                                age_ms,
                                max_age_ms,
                            }) => {
                                self.metrics.refuse_decision("stale");
                                if let Some(held_back) = self.stale_log.allow(now_ns) {
                                    tracing::warn!(rule = %rule, age_s = age_ms / 1e3, max_age_s = max_age_ms / 1e3, held_back, "Refused a stale decision: its window completed longer ago than the rule's max_decision_age.");
                                }
                            }
                            Err(Refusal::BadService(why)) => {
                                self.metrics.refuse_decision("bad_service");
                                tracing::warn!(reason = %why, "Refused a decision for a service its rule does not cover.");
                            }
                            Err(Refusal::UnknownRule(name)) => {
                                self.metrics.refuse_decision("unknown_rule");
                                tracing::warn!(rule = %name, "Refused a decision naming a rule this daemon does not have.");
                            }
                            Err(Refusal::Malformed(why)) => {
                                self.metrics.refuse_decision("malformed");
                                tracing::warn!(reason = %why, "Refused a malformed decision event.");
                            }
                        }
                    }
                }
            }
        }
        (out, spans)
    }

    /// Record one `scale.report` span; refused ones are counted.
    fn report(
        &self,
        span: &opentelemetry_proto::tonic::trace::v1::Span,
        collector: &str,
        now: Instant,
    ) {
        let Some(store) = &self.evidence else { return };
        let a = &span.attributes;
        let rule = str_attr(a, ATTR_RULE).unwrap_or_default();
        let Some(rule_index) = self.rules.iter().position(|r| r.name == rule) else {
            self.metrics.refuse_report("unknown_rule");
            tracing::debug!(
                rule,
                "Refused a report naming a rule this daemon does not have."
            );
            return;
        };
        let r = &self.rules[rule_index];
        let service = str_attr(a, ATTR_SERVICE);
        let target = match r.resolve_target(service) {
            Ok(t) => t,
            Err(why) => {
                self.metrics.refuse_report("bad_service");
                tracing::debug!(rule, reason = %why, "Refused a report for a service its rule does not cover.");
                return;
            }
        };
        let count = |k: &str| int_attr(a, k).and_then(|v| u64::try_from(v).ok());
        let (Some(matched), Some(breaches)) =
            (count(ATTR_REPORT_MATCHED), count(ATTR_REPORT_BREACHES))
        else {
            self.metrics.refuse_report("malformed");
            tracing::debug!(rule, "Refused a report without its span and breach counts.");
            return;
        };
        let report = scale_core::RuleReport {
            rule_index: rule_index as u32,
            rule: r.name.clone(),
            service: service.map(str::to_string),
            since_ns: span.start_time_unix_nano,
            until_ns: span.end_time_unix_nano,
            matched,
            breaches,
            in_window: count(ATTR_REPORT_IN_WINDOW).unwrap_or(0) as u32,
            count: r.count,
            window_ms: r.window_ms,
            threshold_ms: r.duration_above_ms,
            p50_ms: f64_attr(a, ATTR_REPORT_P50_MS),
            p90_ms: f64_attr(a, ATTR_REPORT_P90_MS),
            p99_ms: f64_attr(a, ATTR_REPORT_P99_MS),
            max_ms: f64_attr(a, ATTR_REPORT_MAX_MS),
        };
        self.metrics.reports.inc();
        store.record(target, rule_index, collector, &report, now);
    }

    fn resolve(
        &self,
        ev: &Event,
        service: Option<&str>,
        trace_id: &[u8],
        now: Instant,
        now_ns: u64,
    ) -> Result<Received, Refusal> {
        let attrs = &ev.attributes[..];
        let rule = str_attr(attrs, ATTR_RULE).ok_or(Refusal::Malformed("no scale.rule"))?;
        let rule_index = self
            .rules
            .iter()
            .position(|r| r.name == rule)
            .ok_or_else(|| Refusal::UnknownRule(rule.to_string()))?;
        let action = match str_attr(attrs, ATTR_ACTION) {
            Some(a) if a == ActionKind::Horizontal.as_str() => ActionKind::Horizontal,
            Some(a) if a == ActionKind::Vertical.as_str() => ActionKind::Vertical,
            _ => {
                return Err(Refusal::Malformed(
                    "scale.action is not horizontal or vertical",
                ));
            }
        };
        if ev.time_unix_nano == 0 {
            return Err(Refusal::Malformed(
                "no time_unix_nano (when the window completed)",
            ));
        }
        let ahead = ev.time_unix_nano.saturating_sub(now_ns);
        if ahead > CLOCK_SKEW_ALLOWANCE.as_nanos() as u64
            && let Some(held_back) = self.skew_log.allow(now_ns)
        {
            tracing::warn!(rule = %rule, ahead_s = ahead as f64 / 1e9, held_back, "A decision is timed in the future: the collector's clock is ahead of the daemon's; taken as of now.");
        }
        let age_ms = now_ns.saturating_sub(ev.time_unix_nano) as f64 / 1e6;
        let max_age_ms = self.rules[rule_index].action.max_decision_age_ms;
        if age_ms > max_age_ms {
            return Err(Refusal::Stale {
                rule: rule.to_string(),
                age_ms,
                max_age_ms,
            });
        }
        let target = self.rules[rule_index]
            .resolve_target(service)
            .map_err(Refusal::BadService)?;
        Ok(Received {
            rule_index,
            rule: rule.to_string(),
            target,
            action,
            count: int_attr(attrs, ATTR_COUNT).unwrap_or(0),
            observed_ms: f64_attr(attrs, ATTR_OBSERVED_MS).unwrap_or(f64::NAN),
            trace_id: trace_id.iter().map(|b| format!("{b:02x}")).collect(),
            window_end_ns: ev.time_unix_nano.min(now_ns),
            received: now,
        })
    }
}

/// Check `authorization: Bearer <token>` when a token is configured; the comparison takes the
/// same time wherever the first difference is.
pub fn check_token(
    token: Option<&str>,
    md: &tonic::metadata::MetadataMap,
    metrics: &Metrics,
) -> Result<(), Status> {
    let Some(want) = token else { return Ok(()) };
    let got = md
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (want.as_bytes(), got.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    if diff == 0 {
        Ok(())
    } else {
        metrics.refuse_decision("unauthenticated");
        Err(Status::unauthenticated("missing or wrong bearer token"))
    }
}

enum Refusal {
    UnknownRule(String),
    Malformed(&'static str),
    BadService(String),
    Stale {
        rule: String,
        age_ms: f64,
        max_age_ms: f64,
    },
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        any_value::Value::IntValue(i) => Some(*i),
        any_value::Value::DoubleValue(d) => Some(*d as i64),
        _ => None,
    }
}

fn f64_attr(attrs: &[KeyValue], key: &str) -> Option<f64> {
    match attr(attrs, key)? {
        any_value::Value::DoubleValue(d) => Some(*d),
        any_value::Value::IntValue(i) => Some(*i as f64),
        _ => None,
    }
}

#[tonic::async_trait]
impl TraceService for Intake {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        check_token(self.token.as_deref(), request.metadata(), &self.metrics)?;
        if !self.leadership.is_leader() {
            self.metrics.refuse_decision("not_leader");
            return Err(Status::unavailable(
                "this replica is not the leader; retry (the Service routes to the leader)",
            ));
        }
        let (decisions, spans) = self.decisions(request.get_ref(), Instant::now(), super::now_ns());
        // Reserve room for every decision first, so a request is taken whole or refused whole.
        let mut permits = Vec::with_capacity(decisions.len());
        for _ in 0..decisions.len() {
            match self.tx.try_reserve() {
                Ok(p) => permits.push(p),
                Err(_) => {
                    self.metrics
                        .refuse_decisions("queue_full", decisions.len() as u64);
                    return Err(Status::unavailable("decision queue is full; retry later"));
                }
            }
        }
        let n = decisions.len() as u64;
        for (p, d) in permits.into_iter().zip(decisions) {
            p.send(d);
        }
        self.metrics.requests.inc();
        self.metrics.spans.inc_by(spans);
        self.metrics.decisions.inc_by(n);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    const S: u64 = 1_000_000_000;
    const NOW: u64 = 1_764_237_600 * S;

    fn intake(rules: &str) -> (Intake, Arc<Metrics>) {
        let rules = Arc::new(scale_core::RulesFile::from_yaml(rules).unwrap().rules);
        let (tx, _rx) = mpsc::channel(16);
        let m = Arc::new(Metrics::new());
        (Intake::new(rules, tx, m.clone()), m)
    }

    fn request(times: &[u64]) -> ExportTraceServiceRequest {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        let spans = times
            .iter()
            .map(|&t| Span {
                trace_id: vec![1; 16],
                events: vec![Event {
                    name: EVENT_DECISION.into(),
                    time_unix_nano: t,
                    attributes: vec![kv(ATTR_RULE, "r"), kv(ATTR_ACTION, "horizontal")],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn rules(extra: &str) -> String {
        format!(
            "rules:\n- name: r\n  when: {{ duration_above: 1ms }}\n  count: 1\n  window: 30s\n  action: {{ kind: horizontal, target: {{ kind: Deployment, name: x }}, max: 4{extra} }}\n"
        )
    }

    #[test]
    fn decisions_older_than_the_bound_are_refused_as_stale() {
        // window 30 s: the default bound is 60 s.
        let (i, m) = intake(&rules(""));
        let (got, spans) = i.decisions(
            &request(&[NOW - 300 * S, NOW - 60 * S - 1, NOW - 60 * S, NOW - S]),
            Instant::now(),
            NOW,
        );
        assert_eq!(spans, 4);
        assert_eq!(
            got.iter().map(|d| d.window_end_ns).collect::<Vec<_>>(),
            vec![NOW - 60 * S, NOW - S],
            "exactly at the bound is still accepted"
        );
        assert_eq!(m.decisions_refused_count("stale"), 2);
        // A rule's own bound.
        let (i, m) = intake(&rules(", max_decision_age: 10m"));
        let (got, _) = i.decisions(&request(&[NOW - 300 * S]), Instant::now(), NOW);
        assert_eq!(got.len(), 1);
        assert_eq!(m.decisions_refused_count("stale"), 0);
    }

    #[test]
    fn a_time_in_the_future_counts_as_now_and_no_time_is_malformed() {
        let (i, m) = intake(&rules(""));
        let (got, _) = i.decisions(
            &request(&[NOW + 2 * S, NOW + 3_600 * S, 0]),
            Instant::now(),
            NOW,
        );
        assert_eq!(
            got.iter().map(|d| d.window_end_ns).collect::<Vec<_>>(),
            vec![NOW, NOW]
        );
        assert_eq!(m.decisions_refused_count("malformed"), 1);
        assert_eq!(m.decisions_refused_count("stale"), 0);
    }
}
