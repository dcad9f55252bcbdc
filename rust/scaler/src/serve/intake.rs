//! Decision intake: an OTLP/gRPC TraceService that reads `scale.decision` span events.
//!
//! The collector's `scale` processor adds a span event named `scale.decision` to the span that
//! completed a rule's window (attributes `scale.rule`, `scale.action`, `scale.count`,
//! `scale.window_ms`, `scale.threshold_ms`, `scale.observed_ms`, …; the span is the evidence).
//! Each such event becomes a [`Received`] decision; the target is *not* read from the span but
//! looked up by rule name in the daemon's own rules, and a decision naming an unknown rule is
//! refused and counted.
//!
//! Backpressure: decisions go into a bounded channel with `try_send`; when it is full the whole
//! request is answered `UNAVAILABLE` (the exporter retries) and counted. gzip is accepted and the
//! largest decoded message is [`MAX_MESSAGE_BYTES`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use scale_core::{ActionKind, Rule};
use tokio::sync::mpsc;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

/// Largest accepted (decoded) OTLP message.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Name of the span event that carries a decision.
pub const DECISION_EVENT: &str = "scale.decision";

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
    /// Evidence trace id, hex.
    pub trace_id: String,
    /// When it was received.
    pub received: Instant,
}

/// Intake counters (exported as metrics by the daemon).
#[derive(Debug, Default)]
pub struct IntakeStats {
    /// Export requests answered OK.
    pub requests: AtomicU64,
    /// Spans seen in those requests.
    pub spans: AtomicU64,
    /// Decisions accepted into the queue.
    pub decisions: AtomicU64,
    /// Decisions naming a rule the daemon does not have.
    pub unknown_rule: AtomicU64,
    /// Decisions whose attributes were missing or malformed.
    pub malformed: AtomicU64,
    /// Requests refused with UNAVAILABLE because the queue was full.
    pub refused_full: AtomicU64,
}

/// The TraceService implementation.
pub struct Intake {
    rules: Arc<Vec<Rule>>,
    tx: mpsc::Sender<Received>,
    stats: Arc<IntakeStats>,
}

impl Intake {
    /// An intake that resolves rule names against `rules` and queues decisions on `tx`.
    pub fn new(rules: Arc<Vec<Rule>>, tx: mpsc::Sender<Received>, stats: Arc<IntakeStats>) -> Self {
        Self { rules, tx, stats }
    }

    /// The tonic service, gzip accepted, message size bounded.
    pub fn into_service(self) -> TraceServiceServer<Self> {
        TraceServiceServer::new(self)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Every decision in a request, resolved against the rules; unknown or malformed ones are
    /// counted and left out.
    pub fn decisions(&self, req: &ExportTraceServiceRequest, now: Instant) -> (Vec<Received>, u64) {
        let mut out = Vec::new();
        let mut spans = 0u64;
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    spans += 1;
                    for ev in span.events.iter().filter(|e| e.name == DECISION_EVENT) {
                        match self.resolve(&ev.attributes, &span.trace_id, now) {
                            Ok(d) => out.push(d),
                            Err(Refusal::UnknownRule(name)) => {
                                self.stats.unknown_rule.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(rule = %name, "Refused a decision naming a rule this daemon does not have.");
                            }
                            Err(Refusal::Malformed(why)) => {
                                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(reason = %why, "Refused a malformed decision event.");
                            }
                        }
                    }
                }
            }
        }
        (out, spans)
    }

    fn resolve(&self, attrs: &[KeyValue], trace_id: &[u8], now: Instant) -> Result<Received, Refusal> {
        let rule = str_attr(attrs, "scale.rule").ok_or(Refusal::Malformed("no scale.rule"))?;
        let rule_index = self.rules.iter().position(|r| r.name == rule).ok_or_else(|| Refusal::UnknownRule(rule.to_string()))?;
        let action = match str_attr(attrs, "scale.action") {
            Some("horizontal") => ActionKind::Horizontal,
            Some("vertical") => ActionKind::Vertical,
            _ => return Err(Refusal::Malformed("scale.action is not horizontal or vertical")),
        };
        Ok(Received {
            rule_index,
            rule: rule.to_string(),
            action,
            count: int_attr(attrs, "scale.count").unwrap_or(0),
            observed_ms: f64_attr(attrs, "scale.observed_ms").unwrap_or(f64::NAN),
            trace_id: trace_id.iter().map(|b| format!("{b:02x}")).collect(),
            received: now,
        })
    }
}

enum Refusal {
    UnknownRule(String),
    Malformed(&'static str),
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v: &AnyValue| v.value.as_ref())
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
    async fn export(&self, request: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let (decisions, spans) = self.decisions(request.get_ref(), Instant::now());
        // Reserve room for every decision first, so a request is taken whole or refused whole.
        let mut permits = Vec::with_capacity(decisions.len());
        for _ in 0..decisions.len() {
            match self.tx.try_reserve() {
                Ok(p) => permits.push(p),
                Err(_) => {
                    self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                    return Err(Status::unavailable("decision queue is full; retry later"));
                }
            }
        }
        let n = decisions.len() as u64;
        for (p, d) in permits.into_iter().zip(decisions) {
            p.send(d);
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.spans.fetch_add(spans, Ordering::Relaxed);
        self.stats.decisions.fetch_add(n, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}
