//! Local-engine mode: for users without the custom collector, the daemon receives raw spans
//! over OTLP/gRPC (any collector's `otlp_grpc` exporter, or an SDK) and runs scale-core on them
//! itself. Decisions go into the same queue as those read from `scale.decision` events, so
//! planning and acting are identical in both modes.
//!
//! One engine behind a mutex: the engine is a single sequential model (its rule windows and
//! trees must see every span), and one batch is scored in well under a millisecond. The
//! request's spans are borrowed, not copied: `service.name` and the span name are handed to the
//! engine as `&str` and interned there.

use std::sync::Arc;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use scale_core::{BatchOutput, Engine, EngineConfig, Rule, SpanKey, SpanRef, Timing};
use tokio::sync::mpsc;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::intake::{MAX_MESSAGE_BYTES, Received, check_token};
use super::metrics::{Metrics, OutcomeLabel};

/// The engine, its reusable output buffers and the span list.
struct Scorer {
    engine: Engine,
    out: BatchOutput,
}

/// A TraceService that scores raw spans in the daemon.
pub struct LocalEngine {
    scorer: parking_lot::Mutex<Scorer>,
    rules: Arc<Vec<Rule>>,
    tx: mpsc::Sender<Received>,
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
}

fn service_name(rs: &opentelemetry_proto::tonic::trace::v1::ResourceSpans) -> &str {
    rs.resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match v.value.as_ref() {
            Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("unknown_service")
}

fn fixed<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    if b.len() == N {
        a.copy_from_slice(b);
    }
    a
}

impl LocalEngine {
    /// An engine with `cfg` (its rules must be the daemon's `rules`).
    pub fn new(cfg: EngineConfig, rules: Arc<Vec<Rule>>, tx: mpsc::Sender<Received>, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cfg.rules.iter().map(|r| &r.name).eq(rules.iter().map(|r| &r.name)),
            "the engine's rules differ from the daemon's rules"
        );
        Ok(Self { scorer: parking_lot::Mutex::new(Scorer { engine: Engine::new(cfg), out: BatchOutput::default() }), rules, tx, metrics, token: None })
    }

    /// Require a bearer token.
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

    /// Score every span of `req`; returns the decisions (already resolved against the rules)
    /// and (spans, kept, skipped).
    pub fn score(&self, req: &ExportTraceServiceRequest) -> (Vec<Received>, [u64; 3]) {
        let mut spans: Vec<SpanRef<'_>> = Vec::new();
        for rs in &req.resource_spans {
            let service = service_name(rs);
            for ss in &rs.scope_spans {
                spans.extend(ss.spans.iter().map(|s| SpanRef {
                    key: SpanKey::Names { service, operation: &s.name },
                    timing: Timing::StartEnd { start_ns: s.start_time_unix_nano, end_ns: s.end_time_unix_nano },
                    trace_id: fixed(&s.trace_id),
                    span_id: fixed(&s.span_id),
                }));
            }
        }
        let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let mut guard = self.scorer.lock();
        let Scorer { engine, out } = &mut *guard;
        engine.process_batch(&spans, now_ns, out);
        let kept = out.verdicts.iter().filter(|v| v.keep).count() as u64;
        let skipped = out.verdicts.iter().filter(|v| v.skipped.is_some()).count() as u64;
        let now = Instant::now();
        let decisions = out
            .decisions
            .iter()
            .filter_map(|d| {
                let rule_index = d.rule_index as usize;
                (rule_index < self.rules.len()).then(|| Received {
                    rule_index,
                    rule: d.rule.clone(),
                    action: d.action,
                    count: i64::from(d.count),
                    observed_ms: d.observed_ms,
                    trace_id: d.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
                    received: now,
                })
            })
            .collect();
        (decisions, [spans.len() as u64, kept, skipped])
    }
}

#[tonic::async_trait]
impl TraceService for LocalEngine {
    async fn export(&self, request: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        check_token(self.token.as_deref(), request.metadata(), &self.metrics)?;
        let (decisions, [n, kept, skipped]) = self.score(request.get_ref());
        for d in decisions {
            // The spans are scored either way; a decision that finds the queue full is counted
            // (the engine's window will fire again while the latency lasts).
            if self.tx.try_send(d).is_err() {
                self.metrics.refuse_decision("queue_full");
            } else {
                self.metrics.decisions.inc();
            }
        }
        self.metrics.requests.inc();
        self.metrics.spans.inc_by(n);
        let m = &self.metrics.engine_spans;
        m.get_or_create(&OutcomeLabel { outcome: "scored".into() }).inc_by(n - skipped);
        m.get_or_create(&OutcomeLabel { outcome: "kept".into() }).inc_by(kept);
        m.get_or_create(&OutcomeLabel { outcome: "skipped".into() }).inc_by(skipped);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}
