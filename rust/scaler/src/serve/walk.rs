//! A zero-allocation protobuf walker over an OTLP `ExportTraceServiceRequest`: the spans the
//! local engine scores, borrowed from the request bytes.
//!
//! It reads, under their numbers in opentelemetry-proto's `collector/trace/v1`, `trace/v1`,
//! `resource/v1` and `common/v1` protos:
//!
//! ```text
//! ExportTraceServiceRequest.resource_spans = 1
//!   ResourceSpans.resource = 1 → Resource.attributes = 1 → KeyValue { key = 1, value = 2 }
//!       AnyValue { string_value = 1, bool 2, int 3, double 4, array 5, kvlist 6, bytes 7, 8 }
//!   ResourceSpans.scope_spans = 2 → ScopeSpans.spans = 2
//!       Span { trace_id = 1, span_id = 2, name = 5, start_time_unix_nano = 7, end_time_unix_nano = 8 }
//! ```
//!
//! and skips every other field by its wire type, without looking into it. Nothing is allocated
//! but the caller's span and resource lists; names and ids are slices of the request.
//!
//! # Semantics
//!
//! Exactly those of prost decoding the same fields (the `lean` prost messages, kept as the
//! reference in the tests), which on well-formed requests are those of the full
//! `ExportTraceServiceRequest`:
//!
//! - the last occurrence of a singular field wins (ids, name, times, a `KeyValue`'s key);
//!   occurrences of a singular message merge (two `resource` fields: their attributes
//!   concatenated; two `value`s of one `KeyValue`: the last oneof member seen wins);
//! - the spans of repeated `scope_spans` are concatenated in order;
//! - `service.name` is the first resource attribute with that key: its value if that is a
//!   `string_value`, else `unknown_service`, as is a resource without one;
//! - missing fields are proto3 defaults (empty name, zero times; ids that are not 16 and 8 bytes
//!   long become zeros);
//! - the resource's attributes are decoded in full (every member of `AnyValue` is type-checked,
//!   arrays and kvlists walked as messages of skipped fields), the fields read are type-checked,
//!   and groups (wire types 3/4) of unknown fields are skipped to their matching end, with
//!   prost's recursion limit of 100 nested messages and groups.
//!
//! Malformed protobuf (a truncated varint or field, a length past the end of its message, a bad
//! wire type or key, an unmatched end group) is an error, never a panic: every read is bounds
//! checked. Strings are checked for UTF-8 only where used (`service.name`, span names), after the
//! structure: a request that is malformed *and* has a non-UTF-8 name reports the protobuf error.

use scale_core::{SpanKey, SpanRef, Timing};

/// Why a request could not be walked. Displayed like prost's `DecodeError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// Malformed protobuf.
    Malformed(&'static str),
    /// A string the engine uses is not UTF-8 (`what` names the field).
    NotUtf8(&'static str),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::Malformed(why) => write!(f, "failed to decode Protobuf message: {why}"),
            WalkError::NotUtf8(what) => {
                write!(
                    f,
                    "failed to decode Protobuf message: {what}: invalid string value: data is not UTF-8 encoded"
                )
            }
        }
    }
}

impl std::error::Error for WalkError {}

type Result<T> = std::result::Result<T, WalkError>;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// prost's recursion budget: fields of the top-level message are read with 100, each nested
/// message or group takes one, and a field cannot be skipped with 0 left.
const DEPTH_TOP: u32 = 100;

#[cold]
fn malformed(why: &'static str) -> WalkError {
    WalkError::Malformed(why)
}

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline(always)]
    fn has_more(&self) -> bool {
        !self.buf.is_empty()
    }

    /// A base-128 varint of at most 10 bytes (the tenth at most 1, as prost requires).
    #[inline(always)]
    fn varint(&mut self) -> Result<u64> {
        // One and two bytes inline (keys, and lengths below 16 KiB); the cursor stays in
        // registers because nothing here takes its address.
        match *self.buf {
            [b0, ..] if b0 < 0x80 => {
                self.buf = &self.buf[1..];
                Ok(u64::from(b0))
            }
            [b0, b1, ..] if b1 < 0x80 => {
                self.buf = &self.buf[2..];
                Ok(u64::from(b0 & 0x7f) | u64::from(b1) << 7)
            }
            _ => {
                let (value, n) = varint_long(self.buf)?;
                self.buf = &self.buf[n..];
                Ok(value)
            }
        }
    }

    /// A field key: (field number, wire type).
    #[inline(always)]
    fn key(&mut self) -> Result<(u32, u8)> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(malformed("invalid key value"));
        }
        let wire_type = (key & 7) as u8;
        if wire_type > FIXED32 {
            return Err(malformed("invalid wire type value"));
        }
        let tag = key as u32 >> 3;
        if tag == 0 {
            return Err(malformed("invalid tag value: 0"));
        }
        Ok((tag, wire_type))
    }

    #[inline(always)]
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.buf.len() as u64 {
            return Err(malformed("buffer underflow"));
        }
        let (head, tail) = self.buf.split_at(n as usize);
        self.buf = tail;
        Ok(head)
    }

    /// A length-delimited field's bytes (string, bytes or message) after checking its wire type.
    #[inline(always)]
    fn bytes(&mut self, wire_type: u8) -> Result<&'a [u8]> {
        if wire_type != LEN {
            return Err(malformed("invalid wire type (expected LengthDelimited)"));
        }
        let n = self.varint()?;
        self.take(n)
    }

    #[inline(always)]
    fn fixed64(&mut self, wire_type: u8) -> Result<u64> {
        if wire_type != FIXED64 {
            return Err(malformed("invalid wire type (expected SixtyFourBit)"));
        }
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    #[inline(always)]
    fn check_varint(&mut self, wire_type: u8) -> Result<()> {
        if wire_type != VARINT {
            return Err(malformed("invalid wire type (expected Varint)"));
        }
        self.varint().map(drop)
    }

    /// Skip a field of `wire_type` whose key was just read, with `depth` recursion left.
    #[inline(always)]
    fn skip(&mut self, wire_type: u8, tag: u32, depth: u32) -> Result<()> {
        if depth == 0 {
            return Err(malformed("recursion limit reached"));
        }
        // Tests in order of frequency (attributes, events, ids: length-delimited), rather than
        // a jump table: one well-predicted branch in the common case.
        if wire_type == LEN {
            let n = self.varint()?;
            self.take(n).map(drop)
        } else if wire_type == VARINT {
            self.varint().map(drop)
        } else if wire_type == FIXED64 {
            self.take(8).map(drop)
        } else if wire_type == FIXED32 {
            self.take(4).map(drop)
        } else if wire_type == START_GROUP {
            self.buf = skip_group(self.buf, tag, depth)?;
            Ok(())
        } else {
            Err(malformed("unexpected end group tag"))
        }
    }
}

/// A varint of three bytes or more, or an error: (value, bytes read).
#[inline(never)]
fn varint_long(buf: &[u8]) -> Result<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            if i == 9 && b >= 0x02 {
                break;
            }
            return Ok((value, i + 1));
        }
    }
    Err(malformed("invalid varint"))
}

/// The bytes after the group whose start key (field `tag`) was just read, with `depth` left.
#[cold]
#[inline(never)]
fn skip_group(buf: &[u8], tag: u32, depth: u32) -> Result<&[u8]> {
    let mut r = Reader { buf };
    loop {
        let (inner, wire_type) = r.key()?;
        if wire_type == END_GROUP {
            return if inner == tag {
                Ok(r.buf)
            } else {
                Err(malformed("unexpected end group tag"))
            };
        }
        r.skip(wire_type, inner, depth - 1)?;
    }
}

/// The spans of one `ResourceSpans`, `spans[start..end]` of the list filled by [`walk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceRange<'a> {
    /// `service.name`, or `unknown_service`.
    pub service: &'a str,
    /// First span.
    pub start: usize,
    /// One past the last span.
    pub end: usize,
}

/// The oneof of an `AnyValue`, as far as it matters here.
#[derive(Clone, Copy)]
enum Value<'a> {
    Unset,
    String(&'a [u8]),
    Other,
}

/// The first `service.name` attribute of a resource, once seen.
#[derive(Clone, Copy)]
enum Service<'a> {
    NotSeen,
    Seen(Value<'a>),
}

/// Append every span of the request `wire` to `spans` (keys are [`SpanKey::Names`]), and one
/// [`ResourceRange`] per `ResourceSpans` to `resources`. On error both lists may hold a prefix.
pub fn walk<'a>(
    wire: &'a [u8],
    spans: &mut Vec<SpanRef<'a>>,
    resources: &mut Vec<ResourceRange<'a>>,
) -> Result<()> {
    let mut r = Reader { buf: wire };
    // The first name that is not UTF-8: reported only if the structure is sound.
    let mut not_utf8: Option<WalkError> = None;
    while r.has_more() {
        let (tag, wire_type) = r.key()?;
        if tag == 1 {
            let start = spans.len();
            let service = resource_spans(r.bytes(wire_type)?, spans, &mut not_utf8)?;
            resources.push(ResourceRange {
                service,
                start,
                end: spans.len(),
            });
        } else {
            r.skip(wire_type, tag, DEPTH_TOP)?;
        }
    }
    not_utf8.map_or(Ok(()), Err)
}

/// `ResourceSpans`: its spans appended to `spans`, named by the returned service.
fn resource_spans<'a>(
    buf: &'a [u8],
    spans: &mut Vec<SpanRef<'a>>,
    not_utf8: &mut Option<WalkError>,
) -> Result<&'a str> {
    const DEPTH: u32 = DEPTH_TOP - 1;
    let mut r = Reader { buf };
    let start = spans.len();
    let mut service = Service::NotSeen;
    // The first span name of this resource that is not UTF-8.
    let mut bad_name = false;
    while r.has_more() {
        let (tag, wire_type) = r.key()?;
        match tag {
            1 => resource(r.bytes(wire_type)?, &mut service)?,
            2 => scope_spans(r.bytes(wire_type)?, spans, &mut bad_name)?,
            _ => r.skip(wire_type, tag, DEPTH)?,
        }
    }
    let name = match service {
        Service::Seen(Value::String(s)) => match std::str::from_utf8(s) {
            Ok(s) => s,
            Err(_) => {
                not_utf8.get_or_insert(WalkError::NotUtf8("AnyValue.string_value"));
                ""
            }
        },
        _ => "unknown_service",
    };
    if bad_name {
        not_utf8.get_or_insert(WalkError::NotUtf8("Span.name"));
    }
    for s in &mut spans[start..] {
        if let SpanKey::Names { service, .. } = &mut s.key {
            *service = name;
        }
    }
    Ok(name)
}

/// `Resource`: the first `service.name` attribute, if not seen yet.
fn resource<'a>(buf: &'a [u8], service: &mut Service<'a>) -> Result<()> {
    const DEPTH: u32 = DEPTH_TOP - 2;
    let mut r = Reader { buf };
    while r.has_more() {
        let (tag, wire_type) = r.key()?;
        if tag == 1 {
            let (key, value) = key_value(r.bytes(wire_type)?)?;
            if matches!(service, Service::NotSeen) && key == b"service.name" {
                *service = Service::Seen(value);
            }
        } else {
            r.skip(wire_type, tag, DEPTH)?;
        }
    }
    Ok(())
}

/// `KeyValue`: (key, value).
fn key_value(buf: &[u8]) -> Result<(&[u8], Value<'_>)> {
    const DEPTH: u32 = DEPTH_TOP - 3;
    let mut r = Reader { buf };
    let (mut key, mut value) = (&b""[..], Value::Unset);
    while r.has_more() {
        let (tag, wire_type) = r.key()?;
        match tag {
            1 => key = r.bytes(wire_type)?,
            2 => any_value(r.bytes(wire_type)?, &mut value)?,
            _ => r.skip(wire_type, tag, DEPTH)?,
        }
    }
    Ok((key, value))
}

/// `AnyValue`, merged into `value`: the last member of the oneof on the wire wins.
fn any_value<'a>(buf: &'a [u8], value: &mut Value<'a>) -> Result<()> {
    const DEPTH: u32 = DEPTH_TOP - 4;
    let mut r = Reader { buf };
    while r.has_more() {
        let (tag, wire_type) = r.key()?;
        match tag {
            1 => *value = Value::String(r.bytes(wire_type)?),
            // bool, int64, string_value_strindex (int32).
            2 | 3 | 8 => {
                r.check_varint(wire_type)?;
                *value = Value::Other;
            }
            4 => {
                r.fixed64(wire_type)?;
                *value = Value::Other;
            }
            // array_value, kvlist_value: messages whose fields are all skipped.
            5 | 6 => {
                skipped_message(r.bytes(wire_type)?, DEPTH - 1)?;
                *value = Value::Other;
            }
            7 => {
                r.bytes(wire_type)?;
                *value = Value::Other;
            }
            _ => r.skip(wire_type, tag, DEPTH)?,
        }
    }
    Ok(())
}

/// A message of which no field is read: every field skipped, with `depth` left.
fn skipped_message(buf: &[u8], depth: u32) -> Result<()> {
    let mut r = Reader { buf };
    while r.has_more() {
        let (tag, wire_type) = r.key()?;
        r.skip(wire_type, tag, depth)?;
    }
    Ok(())
}

/// `ScopeSpans`: its spans appended.
fn scope_spans<'a>(buf: &'a [u8], spans: &mut Vec<SpanRef<'a>>, bad_name: &mut bool) -> Result<()> {
    const DEPTH: u32 = DEPTH_TOP - 2;
    let mut r = Reader { buf };
    while r.has_more() {
        let (tag, wire_type) = r.key()?;
        if tag == 2 {
            spans.push(span(r.bytes(wire_type)?, bad_name)?);
        } else {
            r.skip(wire_type, tag, DEPTH)?;
        }
    }
    Ok(())
}

fn fixed<const N: usize>(b: &[u8]) -> [u8; N] {
    b.try_into().unwrap_or([0; N])
}

/// `Span`: ids, name and times (its service is filled in by [`resource_spans`]).
#[inline(always)]
fn span<'a>(buf: &'a [u8], bad_name: &mut bool) -> Result<SpanRef<'a>> {
    const DEPTH: u32 = DEPTH_TOP - 3;
    let mut r = Reader { buf };
    let (mut trace_id, mut span_id, mut name) = (&b""[..], &b""[..], &b""[..]);
    let (mut start_ns, mut end_ns) = (0, 0);
    while r.has_more() {
        let (tag, wire_type) = r.key()?;
        // Most fields of a span are skipped (attributes, events, parent id, kind, status).
        const READ: u32 = 1 << 1 | 1 << 2 | 1 << 5 | 1 << 7 | 1 << 8;
        if tag > 8 || READ & (1 << tag) == 0 {
            r.skip(wire_type, tag, DEPTH)?;
            continue;
        }
        match tag {
            1 => trace_id = r.bytes(wire_type)?,
            2 => span_id = r.bytes(wire_type)?,
            5 => name = r.bytes(wire_type)?,
            7 => start_ns = r.fixed64(wire_type)?,
            8 => end_ns = r.fixed64(wire_type)?,
            _ => r.skip(wire_type, tag, DEPTH)?,
        }
    }
    let operation = std::str::from_utf8(name).unwrap_or_else(|_| {
        *bad_name = true;
        ""
    });
    Ok(SpanRef {
        key: SpanKey::Names {
            service: "",
            operation,
        },
        timing: Timing::StartEnd { start_ns, end_ns },
        trace_id: fixed(trace_id),
        span_id: fixed(span_id),
    })
}

#[cfg(test)]
mod tests {
    //! The walker against the prost decodes it replaces: the `lean` messages (the daemon's
    //! decode before the walker, copied here as the reference: same spans, same errors, on any
    //! bytes) and the full `ExportTraceServiceRequest` (same spans on well-formed requests).

    use std::io::BufRead;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use proptest::prelude::*;
    use prost::Message;
    use tonic::Status;

    use super::*;

    type Result<T, E> = std::result::Result<T, E>;

    /// The lean messages of the daemon before the walker (`serve::local::lean`).
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
    fn decode_request(buf: &[u8]) -> Result<lean::ExportRequest, Status> {
        // Sized from the length (a resource with its spans usually takes a kilobyte or more on the
        // wire; 2 KiB in the demo traces), so the list of resources is allocated once instead of
        // grown: at most 16 Ki entries of 48 bytes for the largest message.
        let mut req = lean::ExportRequest {
            resource_spans: Vec::with_capacity(buf.len() / 1024 + 1),
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
    /// key decides).
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
    fn lean_span_refs<'a>(
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
                        operation: std::str::from_utf8(&s.name)
                            .map_err(|_| not_utf8("Span.name"))?,
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

    /// (service, name, start, end, trace id, span id) of each span, as the engine sees it.
    type Row = (String, String, u64, u64, [u8; 16], [u8; 8]);

    fn rows(refs: &[SpanRef<'_>]) -> Vec<Row> {
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
                    s.trace_id,
                    s.span_id,
                )
            })
            .collect()
    }

    /// The walker's spans, or its error as the daemon answers it; also checks the resource ranges.
    fn walked(wire: &[u8]) -> Result<Vec<Row>, Status> {
        let (mut spans, mut resources) = (Vec::new(), Vec::new());
        walk(wire, &mut spans, &mut resources).map_err(|e| Status::internal(e.to_string()))?;
        let mut next = 0;
        for r in &resources {
            assert_eq!(r.start, next);
            assert!(
                spans[r.start..r.end].iter().all(
                    |s| matches!(s.key, SpanKey::Names { service, .. } if service == r.service)
                )
            );
            next = r.end;
        }
        assert_eq!(next, spans.len());
        Ok(rows(&spans))
    }

    /// The daemon's spans before the walker (lean prost decode, then the span list).
    fn lean_decoded(wire: &[u8]) -> Result<Vec<Row>, Status> {
        let req = decode_request(wire)?;
        let mut refs = Vec::new();
        lean_span_refs(&req, &mut refs)?;
        Ok(rows(&refs))
    }

    /// The spans of a fully decoded request, as the engine saw them before the lean decode.
    fn full_rows(req: &ExportTraceServiceRequest) -> Vec<Row> {
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
                    fixed(&s.trace_id),
                    fixed(&s.span_id),
                ));
            }
        }
        out
    }

    /// The walker and the lean decode agree on `wire`: the same spans, or both an error (with
    /// the same code; the message may differ).
    fn assert_same_as_lean(wire: &[u8]) {
        match (walked(wire), lean_decoded(wire)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.code(), b.code()),
            (a, b) => panic!("walker {a:?} but lean decode {b:?} on {wire:02x?}"),
        }
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
    fn walker_agrees_with_full_and_lean_decodes_on_demo_traces() {
        let mut n = 0;
        for full in &demo_requests() {
            let wire = full.encode_to_vec();
            let spans = walked(&wire).unwrap();
            assert_eq!(spans, full_rows(full));
            assert_eq!(
                spans,
                full_rows(&ExportTraceServiceRequest::decode(&wire[..]).unwrap())
            );
            assert_eq!(spans, lean_decoded(&wire).unwrap());
            n += spans.len();
        }
        assert_eq!(n, 24_023);
    }

    #[test]
    fn malformed_protobuf_is_an_error_not_a_panic() {
        let full = demo_requests().swap_remove(0);
        let wire = full.encode_to_vec();
        // Every truncation: an error exactly when prost's decodes give one, else a valid prefix.
        for cut in 0..wire.len() {
            let w = &wire[..cut];
            assert_same_as_lean(w);
            assert_eq!(
                walked(w).is_err(),
                ExportTraceServiceRequest::decode(w).is_err(),
                "cut at {cut}"
            );
        }
        // Corrupted bytes (a fixed pseudo-random sequence): never a panic, same as lean.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut w = wire.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % w.len() as u64) as usize;
                w[at] = (x >> 32) as u8;
            }
            assert_same_as_lean(&w);
        }
        // An unterminated varint, a length past the end, a bad wire type, a group for a message,
        // a tenth varint byte above 1, field 0, an unmatched end group, a key above u32.
        for bad in [
            &[0xff; 11][..],
            &[0x0a, 0x7f, 0x01],
            &[0x0f],
            &[0x0b, 0x0c],
            &[0x0a, 0x02, 0x12, 0x05],
            &[
                0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02,
            ],
            &[0x00, 0x00],
            &[0x14],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            &[0x1b, 0x08, 0x01, 0x24],
        ] {
            assert_eq!(
                walked(bad).unwrap_err().code(),
                tonic::Code::Internal,
                "{bad:02x?}"
            );
            assert!(decode_request(bad).is_err(), "{bad:02x?}");
        }
        // The largest tenth byte, a group skipped to its end, empty messages: fine.
        for good in [
            &[
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ][..],
            &[0x1b, 0x08, 0x01, 0x1c],
            &[0x0a, 0x00],
            &[],
        ] {
            assert_eq!(
                walked(good).unwrap(),
                lean_decoded(good).unwrap(),
                "{good:02x?}"
            );
        }
    }

    #[test]
    fn nested_groups_stop_where_prost_stops() {
        // Groups nested `depth` deep in an unknown field, at the top level and inside a span,
        // each with a varint field in the innermost group or empty.
        let mut outcomes = [0; 2];
        for depth in 90..=102 {
            for inner in [false, true] {
                // Field 3: `depth` start groups, maybe a varint field, `depth` end groups.
                let mut g: Vec<u8> = std::iter::repeat_n(0x1b, depth).collect();
                if inner {
                    g.extend([0x08, 0x01]);
                }
                g.extend(std::iter::repeat_n(0x1c, depth));
                assert_same_as_lean(&g);
                let mut span = vec![0x2a, 0x01, b'x'];
                span.extend(&g);
                let mut w = Enc::default();
                w.msg(1, |rs| rs.msg(2, |ss| ss.bytes(2, &span)));
                assert_same_as_lean(&w.0);
                outcomes[usize::from(walked(&g).is_ok())] += 1;
                outcomes[usize::from(walked(&w.0).is_ok())] += 1;
            }
        }
        assert!(
            outcomes[0] > 0 && outcomes[1] > 0,
            "both sides of the limit: {outcomes:?}"
        );
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
        assert_eq!(walked(&wire).unwrap(), full_rows(&full));
        for needle in ["span-name-to-corrupt", "service-to-corrupt"] {
            let mut w = wire.clone();
            let at = w
                .windows(needle.len())
                .position(|x| x == needle.as_bytes())
                .unwrap();
            w[at] = 0xff;
            assert!(ExportTraceServiceRequest::decode(&w[..]).is_err());
            let err = walked(&w).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Internal, "{needle}");
            assert_eq!(err.message(), lean_decoded(&w).unwrap_err().message());
            // Malformed as well: the protobuf error is reported, as prost does.
            w.push(0x0f);
            for err in [walked(&w).unwrap_err(), lean_decoded(&w).unwrap_err()] {
                assert_eq!(err.code(), tonic::Code::Internal);
                assert!(
                    err.message().contains("wire type") && !err.message().contains("UTF-8"),
                    "{err:?}"
                );
            }
        }
    }

    /// A protobuf writer for made-up requests: any field order, repeats and unknown fields.
    #[derive(Default)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn varint(&mut self, mut v: u64) {
            while v >= 0x80 {
                self.0.push(v as u8 | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
        }
        fn key(&mut self, tag: u32, wire_type: u8) {
            self.varint(u64::from(tag) << 3 | u64::from(wire_type));
        }
        fn bytes(&mut self, tag: u32, b: &[u8]) {
            self.key(tag, LEN);
            self.varint(b.len() as u64);
            self.0.extend_from_slice(b);
        }
        fn uint(&mut self, tag: u32, v: u64) {
            self.key(tag, VARINT);
            self.varint(v);
        }
        fn fixed64(&mut self, tag: u32, v: u64) {
            self.key(tag, FIXED64);
            self.0.extend(v.to_le_bytes());
        }
        fn fixed32(&mut self, tag: u32, v: u32) {
            self.key(tag, FIXED32);
            self.0.extend(v.to_le_bytes());
        }
        fn msg(&mut self, tag: u32, f: impl FnOnce(&mut Enc)) {
            let mut inner = Enc::default();
            f(&mut inner);
            self.bytes(tag, &inner.0);
        }
    }

    /// A deterministic generator of made-up requests from a seed.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'s>(&mut self, xs: &[&'s str]) -> &'s str {
            xs[self.below(xs.len() as u64) as usize]
        }
        fn blob(&mut self, max: u64) -> Vec<u8> {
            (0..self.below(max + 1))
                .map(|_| self.next() as u8)
                .collect()
        }
        /// An id: usually `n` bytes, sometimes another length.
        fn id(&mut self, n: u64) -> Vec<u8> {
            let len = if self.below(5) == 0 {
                self.below(n + 4)
            } else {
                n
            };
            (0..len).map(|_| self.next() as u8).collect()
        }

        /// A field unknown to every OTLP message here (numbers 100+), of any wire type.
        fn unknown(&mut self, e: &mut Enc) {
            let tag = 100 + self.below(20) as u32;
            match self.below(5) {
                0 => e.uint(tag, self.next() >> self.below(64)),
                1 => e.fixed64(tag, self.next()),
                2 => {
                    let b = self.blob(12);
                    e.bytes(tag, &b)
                }
                3 => e.fixed32(tag, self.next() as u32),
                _ => {
                    e.key(tag, START_GROUP);
                    for _ in 0..self.below(3) {
                        e.uint(1 + self.below(30) as u32, self.below(1000));
                    }
                    e.key(tag, END_GROUP);
                }
            }
        }

        fn any_value(&mut self, e: &mut Enc) {
            for _ in 0..self.below(4) {
                match self.below(10) {
                    0..=2 => e.bytes(
                        1,
                        self.pick(&["checkout", "cart", "", "frontend-proxy", "é✓"])
                            .as_bytes(),
                    ),
                    3 => e.uint(2, self.below(2)),
                    4 => e.uint(3, self.next()),
                    5 => e.fixed64(4, self.next()),
                    6 => e.msg(5, |a| {
                        for _ in 0..self.below(3) {
                            a.msg(1, |v| v.bytes(1, b"x"));
                        }
                    }),
                    7 => e.msg(6, |l| {
                        for _ in 0..self.below(3) {
                            l.msg(1, |kv| {
                                kv.bytes(1, b"k");
                                kv.msg(2, |v| v.uint(3, 7));
                            });
                        }
                    }),
                    8 => {
                        let b = self.blob(6);
                        e.bytes(7, &b)
                    }
                    _ => e.uint(8, self.below(100)),
                }
                if self.below(8) == 0 {
                    self.unknown(e);
                }
            }
        }

        fn key_value(&mut self, e: &mut Enc) {
            for _ in 0..1 + self.below(3) {
                match self.below(6) {
                    0..=2 => e.bytes(
                        1,
                        self.pick(&[
                            "service.name",
                            "service.name",
                            "host.name",
                            "",
                            "service.namespace",
                        ])
                        .as_bytes(),
                    ),
                    3..=4 => e.msg(2, |v| self.any_value(v)),
                    _ => self.unknown(e),
                }
            }
        }

        fn resource(&mut self, e: &mut Enc) {
            for _ in 0..self.below(5) {
                match self.below(6) {
                    0..=3 => e.msg(1, |kv| self.key_value(kv)),
                    4 => e.uint(2, self.below(10)),
                    _ => self.unknown(e),
                }
            }
        }

        fn span(&mut self, e: &mut Enc) {
            for _ in 0..self.below(12) {
                match self.below(16) {
                    0 => e.bytes(1, &self.id(16)),
                    1 => e.bytes(2, &self.id(8)),
                    2 => e.bytes(3, self.pick(&["", "k=v"]).as_bytes()),
                    3 => e.bytes(4, &self.id(8)),
                    4..=5 => e.bytes(
                        5,
                        self.pick(&[
                            "GET /",
                            "PlaceOrder",
                            "",
                            "ünïcode",
                            "oneverylongspannamethatgoesonandon",
                        ])
                        .as_bytes(),
                    ),
                    6 => e.uint(6, self.below(6)),
                    7..=8 => e.fixed64(7, self.next()),
                    9..=10 => e.fixed64(8, self.next()),
                    11 => e.msg(9, |kv| self.key_value(kv)),
                    12 => e.uint(10, self.below(5)),
                    13 => e.msg(11, |ev| {
                        ev.fixed64(1, 5);
                        ev.bytes(2, b"exception");
                    }),
                    14 => e.msg(15, |st| {
                        st.bytes(2, b"oops");
                        st.uint(3, 2);
                    }),
                    _ => {
                        if self.below(2) == 0 {
                            e.fixed32(16, 1)
                        } else {
                            self.unknown(e)
                        }
                    }
                }
            }
        }

        fn scope_spans(&mut self, e: &mut Enc) {
            for _ in 0..self.below(6) {
                match self.below(8) {
                    0 => e.msg(1, |sc| {
                        sc.bytes(1, b"io.opentelemetry");
                        sc.bytes(2, b"1.0");
                    }),
                    1..=5 => e.msg(2, |s| self.span(s)),
                    6 => e.bytes(3, b"https://opentelemetry.io/schemas/1.4.0"),
                    _ => self.unknown(e),
                }
            }
        }

        fn request(&mut self) -> Vec<u8> {
            let mut e = Enc::default();
            for _ in 0..self.below(4) {
                if self.below(6) == 0 {
                    self.unknown(&mut e);
                }
                e.msg(1, |rs| {
                    for _ in 0..self.below(5) {
                        match self.below(6) {
                            0..=1 => rs.msg(1, |r| self.resource(r)),
                            2..=4 => rs.msg(2, |ss| self.scope_spans(ss)),
                            _ => {
                                if self.below(2) == 0 {
                                    rs.bytes(3, b"")
                                } else {
                                    self.unknown(rs)
                                }
                            }
                        }
                    }
                });
            }
            e.0
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Made-up requests (unknown fields of every wire type, repeated scopes and resources,
        /// several or no `service.name`, values of every type, fields in any order, missing or
        /// repeated): the walker yields the full decode's spans, and agrees with the lean decode
        /// on every truncation and on corrupted copies.
        #[test]
        fn walker_agrees_with_prost_on_made_up_requests(seed in any::<u64>()) {
            let mut g = Gen(seed);
            let wire = g.request();
            let full = ExportTraceServiceRequest::decode(&wire[..]).expect("made-up requests are well formed");
            prop_assert_eq!(walked(&wire).unwrap(), full_rows(&full));
            assert_same_as_lean(&wire);
            for cut in 0..wire.len() {
                let w = &wire[..cut];
                assert_same_as_lean(w);
                prop_assert_eq!(walked(w).is_err(), ExportTraceServiceRequest::decode(w).is_err(), "cut at {}", cut);
            }
            for _ in 0..8 {
                let mut w = wire.clone();
                if w.is_empty() {
                    break;
                }
                for _ in 0..1 + g.below(3) {
                    let at = g.below(w.len() as u64) as usize;
                    w[at] = g.next() as u8;
                }
                assert_same_as_lean(&w);
            }
        }
    }
}
