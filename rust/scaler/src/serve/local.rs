//! Local-engine mode: for users without the custom collector, the daemon receives raw spans
//! over OTLP/gRPC (any collector's `otlp_grpc` exporter, or an SDK) and runs scale-core on them
//! itself. Decisions go into the same queue as those read from `scale.decision` events, so
//! planning and acting are identical in both modes.
//!
//! One engine behind a mutex: the engine is a single sequential model (its rule windows and
//! trees must see every span), and one batch is scored in well under a millisecond.
//!
//! # Cost: a protobuf walker, cached key ids
//!
//! The service answers the standard `opentelemetry.proto.collector.trace.v1.TraceService/Export`
//! method but never decodes the OTLP messages: turning every attribute, event and link into owned
//! `String`s costs about 2 µs per span of the recorded demo traces, several times what the engine
//! spends on the span. The codec hands the handler the request's bytes (one `Bytes`, split off
//! tonic's buffer), and [`walk`] reads them in place: it follows only `resource_spans` → the
//! resource's attributes (for `service.name`) and `scope_spans` → `spans` → ids, name, start and
//! end, skips every other field by its wire type, and borrows names and ids from the buffer. No
//! allocation but the span list (sized from the request length) and a list of one entry per
//! resource; no reference counts. Its semantics are prost's on those fields (last occurrence
//! wins, repeated scopes concatenated, proto3 defaults), checked against the full
//! `ExportTraceServiceRequest` decode and the `lean` prost messages by a property test (see the
//! [`walk`] module). Its speed against both decodes is measured by `benches/daemon.rs` (part 3;
//! BENCHMARKS.md).
//!
//! Spans then reach the engine by key id, not by names: a key cache maps `(service, span
//! name)` to the id `Engine::intern` gave it (looked up by span name in the resource's service
//! map), so the engine does not hash both names into its key table for every span. Keys not yet
//! cached are interned in span order before the batch, as `process_batch` would intern them; once
//! the table is full they go by names, so overflow counting and rule matching by names are
//! unchanged: verdicts, decisions and engine state are identical (tested).
//!
//! What is left per span (perf on the running daemon, demo traces, ~0.75 µs per span in all):
//! the engine ~45 % (its trees ~36 %), the walker ~11 %, key look-ups ~5 %, HTTP/2 and the
//! socket most of the rest, of which tonic copying each message out of its HTTP/2 frames into one
//! buffer ~5 % (kept: avoiding it means re-implementing tonic's gRPC framing).
//!
//! Strings are checked for UTF-8 only where they are used (`service.name` and span names): a
//! request whose *other* strings are not UTF-8 is accepted, where the full decode would refuse
//! it. Malformed protobuf and names that are not UTF-8 are answered with `INTERNAL`, as tonic's
//! prost codec does; the bearer token is checked first.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::SERVICE_NAME;
use prost::Message;
use prost::bytes::{Buf, Bytes};
use scale_core::{BatchOutput, Engine, EngineConfig, KeyId, Rule, SpanKey, SpanRef};
use tokio::sync::mpsc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::evidence::EvidenceStore;
use super::intake::{MAX_MESSAGE_BYTES, Received, check_token};
use super::metrics::{Metrics, OutcomeLabel};
use super::walk;

/// The gRPC path of the one method served.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Every span of the request `wire` as the engine sees it (keys by names), borrowed from the
/// request, appended to `out`. Malformed protobuf, or a `service.name` or span name that is not
/// UTF-8, is `INTERNAL`, as with tonic's prost codec.
pub fn span_refs<'a>(wire: &'a [u8], out: &mut Vec<SpanRef<'a>>) -> Result<(), Status> {
    out.reserve(wire.len() / 512 + 8);
    walk::walk(wire, out, &mut Vec::new()).map_err(|e| Status::internal(e.to_string()))
}

/// Keys already interned: `(service, operation)` → the engine's id (stable for the engine's
/// life), so that a span costs one look-up by its name in its service's map (looked up once
/// per resource) instead of hashing both names into the engine's key table. Bounded: only real
/// ids are cached (at most `keys.max_keys` entries, as many as the engine's table); a span whose
/// key is not cached while the table is full keeps its names, so the engine counts it into the
/// overflow key and matches rules by its names. Names are copied in, so the
/// cache never holds on to a request.
#[derive(Default)]
struct KeyCache {
    services: HashMap<Box<str>, HashMap<Box<str>, KeyId, FastHash>, FastHash>,
}

impl KeyCache {
    /// Turn the keys of `spans` (by names) into ids: cached ones directly, others interned in
    /// span order while the engine's table has room (the ids `process_batch` would give them,
    /// interning them in the same order). Verdicts and decisions are unchanged.
    fn resolve(
        &mut self,
        engine: &mut Engine,
        max_keys: u32,
        spans: &mut [SpanRef<'_>],
        resources: &[walk::ResourceRange<'_>],
    ) {
        let mut held = engine.keys().len() as u64;
        for res in resources {
            let mut ops = self.services.get_mut(res.service);
            for s in &mut spans[res.start..res.end] {
                let SpanKey::Names { operation, .. } = s.key else {
                    continue;
                };
                if let Some(&id) = ops.as_ref().and_then(|m| m.get(operation)) {
                    s.key = SpanKey::Id(id);
                    continue;
                }
                if held >= u64::from(max_keys) {
                    continue; // The engine counts it into the overflow key, by its names.
                }
                let id = engine.intern(res.service, operation);
                if u64::from(id) == held {
                    held += 1;
                }
                let m = match ops {
                    Some(m) => m,
                    None => self.services.entry(res.service.into()).or_default(),
                };
                m.insert(operation.into(), id);
                ops = Some(m);
                s.key = SpanKey::Id(id);
            }
        }
    }
}

/// A word-at-a-time multiplicative hash (FxHash's) for the short names of [`KeyCache`]: the
/// cache is bounded and only ever holds keys the engine's own (unkeyed FNV) table holds.
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

type FastHash = std::hash::BuildHasherDefault<FastHasher>;

impl FastHasher {
    #[inline(always)]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // The table uses the top bits too: fold the high product bits down.
        self.0 ^ (self.0 >> 29)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }
}

/// The engine, its reusable output buffers and the key cache.
struct Scorer {
    engine: Engine,
    out: BatchOutput,
    keys: KeyCache,
    /// When the rules' evidence was last drained into the store.
    last_report: Option<Instant>,
}

/// How often local-engine mode turns its rules' windows into evidence reports (the collector's
/// default `report_interval`), checked as batches arrive: no spans, no evidence.
pub const LOCAL_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The collector named on the evidence of the daemon's own engine (`/evidence`).
pub const LOCAL_COLLECTOR: &str = "scale serve --engine";

/// The OTLP trace receiver that scores raw spans in the daemon.
pub struct LocalEngine {
    scorer: parking_lot::Mutex<Scorer>,
    max_keys: u32,
    rules: Arc<Vec<Rule>>,
    tx: mpsc::Sender<Received>,
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
    evidence: Option<Arc<EvidenceStore>>,
}

impl LocalEngine {
    /// An engine with `cfg` (its rules must be the daemon's `rules`).
    pub fn new(
        cfg: EngineConfig,
        rules: Arc<Vec<Rule>>,
        tx: mpsc::Sender<Received>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cfg.rules
                .iter()
                .map(|r| &r.name)
                .eq(rules.iter().map(|r| &r.name)),
            "the engine's rules differ from the daemon's rules"
        );
        let max_keys = cfg.keys.max_keys;
        let scorer = Scorer {
            engine: Engine::new(cfg),
            out: BatchOutput::default(),
            keys: KeyCache::default(),
            last_report: None,
        };
        Ok(Self {
            scorer: parking_lot::Mutex::new(scorer),
            max_keys,
            rules,
            tx,
            metrics,
            token: None,
            evidence: None,
        })
    }

    /// Start the engine from `snapshot` (from `scale train`; its model settings must be the
    /// configuration's) instead of cold; `None` keeps the cold engine.
    pub fn with_snapshot(self, snapshot: Option<&[u8]>) -> anyhow::Result<Self> {
        if let Some(bytes) = snapshot {
            let mut s = self.scorer.lock();
            let cfg = s.engine.config().clone();
            s.engine = Engine::restore(cfg, bytes)
                .map_err(|e| anyhow::anyhow!("--engine-snapshot: {e}"))?;
        }
        Ok(self)
    }

    /// Record the rules' evidence into `store` every [`LOCAL_REPORT_INTERVAL`].
    pub fn with_evidence(mut self, store: Arc<EvidenceStore>) -> Self {
        self.evidence = Some(store);
        self
    }

    /// Require a bearer token.
    pub fn with_token(mut self, token: Option<Arc<str>>) -> Self {
        self.token = token;
        self
    }

    /// The tonic service, gzip accepted, message size bounded.
    pub fn into_service(self) -> LocalEngineServer {
        LocalEngineServer {
            inner: Arc::new(self),
        }
    }

    /// Score every span of the request `wire`; returns the decisions (already resolved against
    /// the rules) and (spans, kept, skipped). Fails, before scoring anything, if the request is
    /// malformed or `service.name` or a span name is not UTF-8 (`INTERNAL`, as tonic's prost
    /// codec answered).
    pub fn score(&self, wire: &[u8]) -> Result<(Vec<Received>, [u64; 3]), Status> {
        // Sized from the length (the demo traces take ~700 bytes a span on the wire).
        let mut spans: Vec<SpanRef<'_>> = Vec::with_capacity(wire.len() / 512 + 8);
        let mut resources = Vec::new();
        walk::walk(wire, &mut spans, &mut resources)
            .map_err(|e| Status::internal(e.to_string()))?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut guard = self.scorer.lock();
        let Scorer {
            engine,
            out,
            keys,
            last_report,
        } = &mut *guard;
        keys.resolve(engine, self.max_keys, &mut spans, &resources);
        engine.process_batch(&spans, now_ns, out);
        if let Some(store) = &self.evidence {
            let at = Instant::now();
            match last_report {
                None => *last_report = Some(at),
                Some(l) if at.duration_since(*l) >= LOCAL_REPORT_INTERVAL => {
                    *last_report = Some(at);
                    for r in engine.rule_reports(now_ns) {
                        let i = r.rule_index as usize;
                        if let Some(Ok(t)) = self
                            .rules
                            .get(i)
                            .map(|x| x.resolve_target(r.service.as_deref()))
                        {
                            self.metrics.reports.inc();
                            store.record(t, i, LOCAL_COLLECTOR, &r, at);
                        }
                    }
                }
                Some(_) => {}
            }
        }
        let kept = out.verdicts.iter().filter(|v| v.keep).count() as u64;
        let skipped = out.verdicts.iter().filter(|v| v.skipped.is_some()).count() as u64;
        let now = Instant::now();
        let decisions = out
            .decisions
            .iter()
            .filter_map(|d| {
                let rule_index = d.rule_index as usize;
                let target = self.rules.get(rule_index)?.resolve_target(d.service.as_deref());
                let target = match target {
                    Ok(t) => t,
                    Err(why) => {
                        tracing::warn!(reason = %why, "Refused a decision for a service its rule does not cover.");
                        return None;
                    }
                };
                Some(Received {
                    rule_index,
                    rule: d.rule.clone(),
                    target,
                    action: d.action,
                    count: i64::from(d.count),
                    observed_ms: d.observed_ms,
                    trace_id: d.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
                    // The engine fired just now, on this daemon's clock: never stale.
                    window_end_ns: d.time_ns,
                    received: now,
                })
            })
            .collect();
        Ok((decisions, [spans.len() as u64, kept, skipped]))
    }

    /// The `Export` method.
    fn export(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        check_token(self.token.as_deref(), request.metadata(), &self.metrics)?;
        let (decisions, [n, kept, skipped]) = self.score(request.get_ref())?;
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
        m.get_or_create(&OutcomeLabel {
            outcome: "scored".into(),
        })
        .inc_by(n - skipped);
        m.get_or_create(&OutcomeLabel {
            outcome: "kept".into(),
        })
        .inc_by(kept);
        m.get_or_create(&OutcomeLabel {
            outcome: "skipped".into(),
        })
        .inc_by(skipped);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Request bytes in (walked by the handler), full (empty) responses out.
#[derive(Debug, Clone, Copy, Default)]
struct WireCodec;

impl Codec for WireCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = WireCodec;
    type Decoder = WireCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for WireCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for WireCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        // The message as one contiguous `Bytes`, split off tonic's buffer (not copied).
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The `Export` method as a tonic unary service (scoring is synchronous).
struct ExportSvc(Arc<LocalEngine>);

impl UnaryService<Bytes> for ExportSvc {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<Response<ExportTraceServiceResponse>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        std::future::ready(self.0.export(request))
    }
}

/// The gRPC `TraceService` of [`LocalEngine`], for `tonic::transport::Server::add_service`.
#[derive(Clone)]
pub struct LocalEngineServer {
    inner: Arc<LocalEngine>,
}

impl NamedService for LocalEngineServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for LocalEngineServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let svc = ExportSvc(self.inner.clone());
        Box::pin(async move {
            let mut grpc = Grpc::new(WireCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
            Ok(grpc.unary(svc, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use scale_core::Timing;

    use super::*;

    const RULES: &str = "rules:
- name: slow-checkout
  match: { service: checkout }
  when: { duration_above: 500ms }
  count: 3
  window: 30s
  action: { kind: horizontal, target: { kind: Deployment, namespace: shop, name: checkout }, max: 4, cooldown: 1s }
- name: slow-op3
  match: { operation: op3 }
  when: { duration_above: 200ms }
  count: 2
  window: 30s
  action: { kind: horizontal, target: { kind: Deployment, namespace: shop, name: op3 }, max: 4, cooldown: 1s }
";

    /// Keys resolved through the cache score exactly as keys by names: same verdicts, same
    /// decisions, same engine state (key table, overflow count, model, windows) after every
    /// batch — through a key table that fills up (`max_keys: 6` of 3 × 8 keys), spans with
    /// invalid timings, and rules matched by names on overflowed keys.
    #[test]
    fn cached_key_ids_score_exactly_as_names() {
        for mode in ["keyed", "paper"] {
            let cfg = EngineConfig::from_parts(
                &format!("mode: {mode}\nsampler: {{ train_size: 40, window_size: 16 }}\nkeys: {{ max_keys: 6 }}\n"),
                Some(RULES),
            )
            .unwrap();
            let (mut by_names, mut by_ids) = (Engine::new(cfg.clone()), Engine::new(cfg.clone()));
            let (mut out_names, mut out_ids) = (BatchOutput::default(), BatchOutput::default());
            let mut cache = KeyCache::default();
            let services = ["checkout", "cart", "frontend"];
            let ops: Vec<String> = (0..8).map(|i| format!("op{i}")).collect();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut rnd = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut decisions = 0;
            for batch in 0..60u64 {
                let now_ns = 1_700_000_000_000_000_000 + batch * 100_000_000;
                let mut spans = Vec::new();
                let mut resources = Vec::new();
                for _ in 0..1 + rnd(4) {
                    let service = services[rnd(3) as usize];
                    let start = spans.len();
                    for _ in 0..rnd(12) {
                        let ms = if rnd(10) == 0 { 900 } else { 10 + rnd(40) };
                        let start_ns = now_ns - 1_000_000_000;
                        // One span in 20 ends before it starts (skipped, but its key is interned).
                        let end_ns = if rnd(20) == 0 {
                            start_ns - 1
                        } else {
                            start_ns + ms * 1_000_000
                        };
                        let op = &ops[(rnd(8) * rnd(8) / 7) as usize];
                        spans.push(SpanRef {
                            key: SpanKey::Names {
                                service,
                                operation: op,
                            },
                            timing: Timing::StartEnd { start_ns, end_ns },
                            trace_id: [batch as u8; 16],
                            span_id: [spans.len() as u8; 8],
                        });
                    }
                    resources.push(walk::ResourceRange {
                        service,
                        start,
                        end: spans.len(),
                    });
                }
                by_names.process_batch(&spans, now_ns, &mut out_names);
                cache.resolve(&mut by_ids, cfg.keys.max_keys, &mut spans, &resources);
                by_ids.process_batch(&spans, now_ns, &mut out_ids);
                assert_eq!(out_names.verdicts, out_ids.verdicts, "{mode} batch {batch}");
                assert_eq!(
                    out_names.decisions, out_ids.decisions,
                    "{mode} batch {batch}"
                );
                assert!(
                    by_names.snapshot() == by_ids.snapshot(),
                    "{mode} batch {batch}: engine states differ"
                );
                decisions += out_ids.decisions.len();
            }
            let stats = by_ids.stats();
            assert_eq!(stats.keys, 6);
            assert!(stats.keys_overflow > 0, "{mode}: the key table filled up");
            assert!(decisions > 0, "{mode}: rules fired");
            assert!(
                cache.services.values().map(HashMap::len).sum::<usize>() <= 6,
                "the cache is bounded by max_keys"
            );
        }
    }
}
