//! Local-engine mode: for users without the custom collector, the daemon receives raw spans
//! over OTLP/gRPC (any collector's `otlp_grpc` exporter, or an SDK) and runs scale-core on them
//! itself. Decisions go into the same queue as those read from `scale.decision` events, so
//! planning and acting are identical in both modes.
//!
//! One engine behind a mutex: the engine is a single sequential model (its rule windows and
//! trees must see every span), and one batch is scored in well under a millisecond.
//!
//! # Cost: a lean decode
//!
//! The service answers the standard `opentelemetry.proto.collector.trace.v1.TraceService/Export`
//! method but does not decode the full OTLP messages: turning every attribute, event and link
//! into owned `String`s costs about 2 µs per span of the recorded demo traces, five times what the
//! engine spends on the span. Requests are decoded into the [`lean`] messages instead, which
//! declare only the fields the engine reads (the resource's attributes, to find `service.name`; a
//! span's ids, name, start and end) under their OTLP field numbers. prost skips every other field
//! without looking into it, and the kept ones are [`Bytes`](prost::bytes::Bytes) slices of the
//! received buffer (a reference count each, no copy). The decode allocates the list of resources
//! and, per resource, its attribute list and its span list (the spans of all its scopes
//! together), nothing per span or attribute: about 0.3 µs per span (`benches/daemon.rs`, part 3).
//! The decoded request keeps the whole received buffer alive until it is scored.
//!
//! Strings are checked for UTF-8 only where they are used (`service.name` and span names): a
//! request whose *other* strings are not UTF-8 is accepted, where the full decode would refuse
//! it. Malformed protobuf is answered with `INTERNAL`, as tonic's prost codec does.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::SERVICE_NAME;
use prost::Message;
use prost::bytes::Buf;
use scale_core::{BatchOutput, Engine, EngineConfig, Rule, SpanKey, SpanRef, Timing};
use tokio::sync::mpsc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::intake::{MAX_MESSAGE_BYTES, Received, check_token};
use super::metrics::{Metrics, OutcomeLabel};

/// The gRPC path of the one method served.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Minimal OTLP trace messages: the fields the engine reads, under their numbers in
/// opentelemetry-proto's `collector/trace/v1/trace_service.proto`, `trace/v1/trace.proto`,
/// `resource/v1/resource.proto` and `common/v1/common.proto`. Every other field is skipped by
/// prost. Strings are kept as bytes (same wire type) and checked for UTF-8 where they are used.
pub mod lean {
    use prost::bytes::Bytes;

    /// `ExportTraceServiceRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportRequest {
        /// `resource_spans = 1`.
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    /// `ResourceSpans`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        /// `resource = 1`.
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        /// `repeated ScopeSpans scope_spans = 2`, declared as one message: protobuf merges the
        /// occurrences of a singular message field, so the spans of every scope end up in one
        /// list, in order, without a `Vec` of scopes.
        #[prost(message, optional, tag = "2")]
        pub scope_spans: Option<ScopeSpans>,
    }

    /// `Resource`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        /// `attributes = 1`.
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    /// `KeyValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        /// `key = 1` (a string).
        #[prost(bytes = "bytes", tag = "1")]
        pub key: Bytes,
        /// `value = 2`.
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    /// `AnyValue`. Every member of the oneof is declared, so that the last one on the wire wins
    /// as in the full message; arrays and maps are skipped.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        /// `oneof value`.
        #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
        pub value: Option<Value>,
    }

    /// `AnyValue.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// `string_value = 1` (a string).
        #[prost(bytes = "bytes", tag = "1")]
        String(Bytes),
        /// `bool_value = 2`.
        #[prost(bool, tag = "2")]
        Bool(bool),
        /// `int_value = 3`.
        #[prost(int64, tag = "3")]
        Int(i64),
        /// `double_value = 4`.
        #[prost(double, tag = "4")]
        Double(f64),
        /// `array_value = 5`, not looked into.
        #[prost(message, tag = "5")]
        Array(Skipped),
        /// `kvlist_value = 6`, not looked into.
        #[prost(message, tag = "6")]
        Kvlist(Skipped),
        /// `bytes_value = 7`.
        #[prost(bytes = "bytes", tag = "7")]
        Bytes(Bytes),
        /// `string_value_strindex = 8` (profiles only).
        #[prost(int32, tag = "8")]
        StringIndex(i32),
    }

    /// A message whose fields are all skipped.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Skipped {}

    /// `ScopeSpans` (the scope itself is skipped), all of a resource's merged into one.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        /// `spans = 2`.
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    /// `Span`: ids, name and times; attributes, events, links and status are skipped.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        /// `trace_id = 1`.
        #[prost(bytes = "bytes", tag = "1")]
        pub trace_id: Bytes,
        /// `span_id = 2`.
        #[prost(bytes = "bytes", tag = "2")]
        pub span_id: Bytes,
        /// `name = 5` (a string).
        #[prost(bytes = "bytes", tag = "5")]
        pub name: Bytes,
        /// `start_time_unix_nano = 7`.
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        /// `end_time_unix_nano = 8`.
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
    }
}

/// Decode a request; malformed protobuf is `INTERNAL`, as with tonic's prost codec.
pub fn decode_request(buf: impl Buf) -> Result<lean::ExportRequest, Status> {
    // Sized from the length (a resource with its spans usually takes a kilobyte or more on the
    // wire; 2 KiB in the demo traces), so the list of resources is allocated once instead of
    // grown: at most 16 Ki entries of 48 bytes for the largest message.
    let mut req = lean::ExportRequest {
        resource_spans: Vec::with_capacity(buf.remaining() / 1024 + 1),
    };
    req.merge(buf)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(req)
}

fn not_utf8(what: &str) -> Status {
    Status::internal(format!(
        "failed to decode Protobuf message: {what}: invalid string value: data is not UTF-8 encoded"
    ))
}

/// `service.name` of a resource, `unknown_service` without one (the first attribute with that
/// key decides, as before).
fn service_name(rs: &lean::ResourceSpans) -> Result<&str, Status> {
    let value = rs
        .resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == b"service.name"[..]))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match v.value.as_ref() {
            Some(lean::Value::String(s)) => Some(s),
            _ => None,
        });
    match value {
        Some(s) => std::str::from_utf8(s).map_err(|_| not_utf8("AnyValue.string_value")),
        None => Ok("unknown_service"),
    }
}

fn fixed<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    if b.len() == N {
        a.copy_from_slice(b);
    }
    a
}

/// Every span of `req` as the engine sees it, borrowed from the request, appended to `out`.
pub fn span_refs<'a>(
    req: &'a lean::ExportRequest,
    out: &mut Vec<SpanRef<'a>>,
) -> Result<(), Status> {
    out.reserve(
        req.resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum(),
    );
    for rs in &req.resource_spans {
        let service = service_name(rs)?;
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            out.push(SpanRef {
                key: SpanKey::Names {
                    service,
                    operation: std::str::from_utf8(&s.name).map_err(|_| not_utf8("Span.name"))?,
                },
                timing: Timing::StartEnd {
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                },
                trace_id: fixed(&s.trace_id),
                span_id: fixed(&s.span_id),
            });
        }
    }
    Ok(())
}

/// The engine, its reusable output buffers and the span list.
struct Scorer {
    engine: Engine,
    out: BatchOutput,
}

/// The OTLP trace receiver that scores raw spans in the daemon.
pub struct LocalEngine {
    scorer: parking_lot::Mutex<Scorer>,
    rules: Arc<Vec<Rule>>,
    tx: mpsc::Sender<Received>,
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
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
        Ok(Self {
            scorer: parking_lot::Mutex::new(Scorer {
                engine: Engine::new(cfg),
                out: BatchOutput::default(),
            }),
            rules,
            tx,
            metrics,
            token: None,
        })
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

    /// Score every span of `req`; returns the decisions (already resolved against the rules)
    /// and (spans, kept, skipped). Fails, before scoring anything, if `service.name` or a span
    /// name is not UTF-8.
    pub fn score(&self, req: &lean::ExportRequest) -> Result<(Vec<Received>, [u64; 3]), Status> {
        let mut spans: Vec<SpanRef<'_>> = Vec::new();
        span_refs(req, &mut spans)?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
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
        Ok((decisions, [spans.len() as u64, kept, skipped]))
    }

    /// The `Export` method.
    fn export(
        &self,
        request: Request<lean::ExportRequest>,
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

/// Lean requests in, full (empty) responses out.
#[derive(Debug, Clone, Copy, Default)]
struct LeanCodec;

impl Codec for LeanCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = lean::ExportRequest;
    type Encoder = LeanCodec;
    type Decoder = LeanCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for LeanCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for LeanCodec {
    type Item = lean::ExportRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        // One contiguous `Bytes` (split off tonic's buffer, not copied): slicing it for the kept
        // fields is a reference count, and it advances faster than the `BytesMut` behind `src`.
        decode_request(src.copy_to_bytes(src.remaining())).map(Some)
    }
}

/// The `Export` method as a tonic unary service (scoring is synchronous).
struct ExportSvc(Arc<LocalEngine>);

impl UnaryService<lean::ExportRequest> for ExportSvc {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<Response<ExportTraceServiceResponse>, Status>>;

    fn call(&mut self, request: Request<lean::ExportRequest>) -> Self::Future {
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
            let mut grpc = Grpc::new(LeanCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
            Ok(grpc.unary(svc, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::bytes::Bytes;

    use super::*;

    /// The spans of a fully decoded request, as the engine saw them before the lean decode.
    fn full_spans(
        req: &ExportTraceServiceRequest,
    ) -> Vec<(String, String, u64, u64, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match v.value.as_ref() {
                    Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
                    _ => None,
                })
                .unwrap_or("unknown_service");
            for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                out.push((
                    service.to_owned(),
                    s.name.clone(),
                    s.start_time_unix_nano,
                    s.end_time_unix_nano,
                    s.trace_id.clone(),
                    s.span_id.clone(),
                ));
            }
        }
        out
    }

    fn lean_spans(req: &lean::ExportRequest) -> Vec<(String, String, u64, u64, Vec<u8>, Vec<u8>)> {
        let mut refs = Vec::new();
        span_refs(req, &mut refs).unwrap();
        refs.iter()
            .map(|s| {
                let SpanKey::Names { service, operation } = s.key else {
                    panic!("names expected")
                };
                let Timing::StartEnd { start_ns, end_ns } = s.timing else {
                    panic!("start/end expected")
                };
                (
                    service.to_owned(),
                    operation.to_owned(),
                    start_ns,
                    end_ns,
                    s.trace_id.to_vec(),
                    s.span_id.to_vec(),
                )
            })
            .collect()
    }

    fn demo_requests() -> Vec<ExportTraceServiceRequest> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/otel-demo/traces.jsonl.gz"
        );
        let r = std::io::BufReader::new(flate2::read::GzDecoder::new(
            std::fs::File::open(path).unwrap(),
        ));
        r.lines()
            .map(|line| {
                let line = line.unwrap();
                serde_json::from_str(&line)
                    .or_else(|e| {
                        crate::eval::input::null_string_doubles(&line)
                            .map(|f| serde_json::from_str(&f))
                            .unwrap_or(Err(e))
                    })
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn lean_decode_agrees_with_full_decode_on_demo_traces() {
        let reqs = demo_requests();
        let mut n = 0;
        for full in &reqs {
            let wire = Bytes::from(full.encode_to_vec());
            let lean = decode_request(wire.clone()).unwrap();
            let (a, b) = (full_spans(full), lean_spans(&lean));
            // The ids are 16 and 8 bytes in the recording, so the fixed-size copy loses nothing.
            assert_eq!(a, b);
            // Both decoders read the same wire bytes the same way.
            assert_eq!(
                full_spans(&ExportTraceServiceRequest::decode(wire).unwrap()),
                b
            );
            n += b.len();
        }
        assert_eq!(n, 24_023);
    }

    #[test]
    fn malformed_protobuf_is_an_error_not_a_panic() {
        let full = demo_requests().swap_remove(0);
        let wire = full.encode_to_vec();
        // Every truncation: an error or a valid prefix, never a panic.
        for cut in 0..wire.len() {
            if let Ok(lean) = decode_request(&wire[..cut]) {
                let _ = span_refs(&lean, &mut Vec::new());
            }
        }
        // Corrupted bytes (a fixed pseudo-random sequence): never a panic.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut w = wire.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % w.len() as u64) as usize;
                w[at] = (x >> 32) as u8;
            }
            if let Ok(lean) = decode_request(&w[..]) {
                let _ = span_refs(&lean, &mut Vec::new());
            }
        }
        // An unterminated varint, a length past the end, a bad wire type, a group for a message.
        for bad in [
            &[0xff; 11][..],
            &[0x0a, 0x7f, 0x01],
            &[0x0f],
            &[0x0b, 0x0c],
            &[0x0a, 0x02, 0x12, 0x05],
        ] {
            assert_eq!(
                decode_request(bad).unwrap_err().code(),
                tonic::Code::Internal,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_that_are_not_utf8_are_refused() {
        let mut full = demo_requests().swap_remove(0);
        full.resource_spans.truncate(1);
        full.resource_spans[0].scope_spans[0].spans[0].name = "span-name-to-corrupt".into();
        let kv = full.resource_spans[0]
            .resource
            .as_mut()
            .unwrap()
            .attributes
            .iter_mut()
            .find(|kv| kv.key == "service.name")
            .unwrap();
        kv.value = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
            value: Some(any_value::Value::StringValue("service-to-corrupt".into())),
        });
        let wire = full.encode_to_vec();
        assert_eq!(
            lean_spans(&decode_request(&wire[..]).unwrap()),
            full_spans(&full)
        );
        for needle in ["span-name-to-corrupt", "service-to-corrupt"] {
            let mut w = wire.clone();
            let at = w
                .windows(needle.len())
                .position(|x| x == needle.as_bytes())
                .unwrap();
            w[at] = 0xff;
            assert!(ExportTraceServiceRequest::decode(&w[..]).is_err());
            let lean = decode_request(&w[..]).unwrap();
            assert_eq!(
                span_refs(&lean, &mut Vec::new()).unwrap_err().code(),
                tonic::Code::Internal,
                "{needle}"
            );
        }
    }
}
