//! Reading span files for `scale eval` and `scale train`: CSV, OTLP JSON lines and OTLP
//! protobuf, plain or gzip.
//!
//! # Formats
//!
//! * **CSV** with a header naming its columns: `operation` and `duration_ms` are required,
//!   `service` (default `unknown_service`), `label` (`0`/`1`/`true`/`false`) and `start_unix_nano`
//!   (the span's start, ns since the Unix epoch: a timeline, see [`super`]) and `arrival_unix_nano`
//!   (when the span reached the collector, with `start_unix_nano`: `scale eval` gives spans to the
//!   engine in that order; `scale train` learns a store's spans by their end and ignores it) are
//!   optional, in any order; other columns are ignored (so the paper's `seed_results.csv` reads
//!   too). With `start_unix_nano` a row's timing is its start and its end (start + duration); a
//!   start or arrival that does not parse makes the row a bad line. Fields may be double-quoted
//!   (RFC 4180, one line per record). A duration that does not parse becomes `NaN`, which the
//!   engine counts as skipped (`invalid_duration`), so stream positions are kept. A row with the
//!   wrong number of fields or a bad label is a *bad line*: counted, not fed.
//! * **OTLP JSON lines**: one `ExportTraceServiceRequest` per line, as written by the collector's
//!   file exporter and read by its `otlpjsonfile` receiver. Parsed with `opentelemetry-proto`'s
//!   serde support, which decodes hex trace/span ids and string-encoded 64-bit integers. Service
//!   = resource attribute `service.name` (else `unknown_service`), operation = span name, label =
//!   span attribute `scale.label` (int 0/1, bool, or the strings `0`/`1`/`true`/`false`). Ids of
//!   the wrong length become zeros. A line that does not parse is a bad line. (One library gap is
//!   bridged: string-encoded `doubleValue`s such as `"NaN"`, see [`null_string_doubles`].)
//! * **OTLP protobuf**: `TracesData` (= `ExportTraceServiceRequest`) messages, each after its
//!   length as a 4-byte big-endian integer: the collector file exporter's `format: proto`.
//!   Fields as for JSON. A message that does not decode is a bad line; a length past the end of
//!   the file (or over [`MAX_PROTO_MESSAGE`]) ends the file as one bad line.
//!
//! # Detection
//!
//! Gzip by its magic bytes (`.gz` or not; concatenated members are read with `MultiGzDecoder`);
//! then OTLP JSON if the first non-blank byte is `{`, OTLP protobuf if the first byte is NUL (a
//! length under 16 MiB; no text starts so), CSV otherwise; an empty file falls back to the
//! extension. Bad lines never stop a file; an I/O or decompression error mid-file is logged,
//! counted as one bad line, and ends that file only.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use scale_core::Timing;

/// Service name used when a span has none.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Errors that stop reading a file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or its start could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// A CSV file whose header lacks required columns.
    #[error("{path}: not a span CSV: header {header:?} needs columns {needed}")]
    Header {
        /// The file.
        path: String,
        /// The header line as read.
        header: String,
        /// The missing columns.
        needed: String,
    },
}

/// A protobuf message in a file may be at most this long (the collector's default gRPC limit
/// is 4 MiB; the file exporter writes what it received).
pub const MAX_PROTO_MESSAGE: usize = 64 << 20;

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `service,operation,duration_ms[,label]`.
    Csv,
    /// One `ExportTraceServiceRequest` JSON object per line.
    OtlpJson,
    /// Length-prefixed `TracesData` protobuf messages.
    OtlpProto,
}

impl Format {
    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::OtlpJson => "otlp-json",
            Format::OtlpProto => "otlp-proto",
        }
    }
}

/// One span as read, borrowing the reader's buffers.
#[derive(Debug, Clone, Copy)]
pub struct SpanRecord<'a> {
    /// `service.name`.
    pub service: &'a str,
    /// Span name.
    pub operation: &'a str,
    /// Duration (CSV) or start/end (OTLP).
    pub timing: Timing,
    /// Trace id (zeros if absent or malformed).
    pub trace_id: [u8; 16],
    /// Span id (zeros if absent or malformed).
    pub span_id: [u8; 8],
    /// Ground truth, if the input carries it.
    pub label: Option<bool>,
    /// When the span reached the collector (CSV `arrival_unix_nano`), if the input says; a span
    /// with times and no arrival arrives when it ends.
    pub arrival_ns: Option<u64>,
}

/// What reading one file found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileSummary {
    /// Detected format.
    pub format: Option<Format>,
    /// Whether the file was gzip.
    pub gzip: bool,
    /// Spans emitted.
    pub spans: u64,
    /// Lines or rows that could not be used.
    pub bad_lines: u64,
    /// Whether a CSV file had a label column.
    pub has_label_column: bool,
}

/// A reader that counts the (compressed) bytes read through it, for progress.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Open `path`, undo gzip, and detect the format. `count` accumulates raw bytes read.
pub fn open(
    path: &Path,
    count: Rc<Cell<u64>>,
) -> Result<(Box<dyn BufRead>, Format, bool), InputError> {
    let io_err = |source| InputError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut raw = BufReader::with_capacity(1 << 16, Counting { inner: file, count });
    let gzip = raw.fill_buf().map_err(io_err)?.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn BufRead> = if gzip {
        Box::new(BufReader::with_capacity(1 << 16, MultiGzDecoder::new(raw)))
    } else {
        Box::new(raw)
    };
    let head = reader.fill_buf().map_err(io_err)?;
    let first = head.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let format = match first {
        _ if head.first() == Some(&0) => Format::OtlpProto,
        Some(b'{') => Format::OtlpJson,
        Some(_) => Format::Csv,
        None => {
            let name = path.to_string_lossy();
            let name = name.strip_suffix(".gz").unwrap_or(&name);
            if name.ends_with(".json") || name.ends_with(".jsonl") || name.ends_with(".ndjson") {
                Format::OtlpJson
            } else if name.ends_with(".pb") || name.ends_with(".binpb") {
                Format::OtlpProto
            } else {
                Format::Csv
            }
        }
    };
    Ok((reader, format, gzip))
}

/// Read every span of `path` in order, calling `emit` for each. Bad lines are counted in the
/// summary; only a failure to open the file or an unusable CSV header is an error.
pub fn read_file(
    path: &Path,
    count: Rc<Cell<u64>>,
    mut emit: impl FnMut(&SpanRecord<'_>),
) -> Result<FileSummary, InputError> {
    let (reader, format, gzip) = open(path, count)?;
    let mut summary = FileSummary {
        format: Some(format),
        gzip,
        ..FileSummary::default()
    };
    let name = path.display().to_string();
    match format {
        Format::Csv => read_csv(reader, &name, &mut summary, &mut emit)?,
        Format::OtlpJson => read_otlp(reader, &name, &mut summary, &mut emit),
        Format::OtlpProto => read_proto(reader, &name, &mut summary, &mut emit),
    }
    Ok(summary)
}

/// Read lines as bytes so that invalid UTF-8 is one bad line, not an error. Returns `None` at the
/// end or after a read error (logged and counted as a bad line).
fn next_line<'b>(
    reader: &mut dyn BufRead,
    buf: &'b mut Vec<u8>,
    name: &str,
    summary: &mut FileSummary,
) -> Option<Result<&'b str, ()>> {
    buf.clear();
    match reader.read_until(b'\n', buf) {
        Ok(0) => None,
        Ok(_) => {
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            Some(std::str::from_utf8(buf).map_err(|_| ()))
        }
        Err(e) => {
            tracing::warn!(file = name, error = %e, "read error; the rest of the file is ignored");
            summary.bad_lines += 1;
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CSV

/// Split one CSV record into fields: RFC 4180 quoting (`""` is a quote inside a quoted field).
/// Returns `None` for an unterminated quote or text after a closing quote.
pub fn split_csv(line: &str) -> Option<Vec<std::borrow::Cow<'_, str>>> {
    use std::borrow::Cow;
    if !line.contains('"') {
        return Some(line.split(',').map(Cow::Borrowed).collect());
    }
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return None,
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(Cow::Owned(field));
                    return Some(fields);
                }
                Some(',') => fields.push(Cow::Owned(field)),
                Some(_) => return None,
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(Cow::Owned(field));
                        return Some(fields);
                    }
                    Some(',') => break,
                    Some('"') => return None,
                    Some(c) => field.push(c),
                }
            }
            fields.push(Cow::Owned(field));
        }
    }
}

/// Column positions of a span CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvColumns {
    /// Fields per row.
    pub width: usize,
    /// `service`, if present.
    pub service: Option<usize>,
    /// `operation`.
    pub operation: usize,
    /// `duration_ms`.
    pub duration: usize,
    /// `label`, if present.
    pub label: Option<usize>,
    /// `start_unix_nano`, if present.
    pub start: Option<usize>,
    /// `arrival_unix_nano`, if present.
    pub arrival: Option<usize>,
}

impl CsvColumns {
    /// Find the columns in a header line; `Err` lists the missing required ones.
    pub fn from_header(header: &str) -> Result<Self, String> {
        let fields = split_csv(header.trim_start_matches('\u{feff}')).unwrap_or_default();
        let find = |name: &str| {
            fields
                .iter()
                .position(|f| f.trim().eq_ignore_ascii_case(name))
        };
        match (find("operation"), find("duration_ms")) {
            (Some(operation), Some(duration)) => Ok(Self {
                width: fields.len(),
                service: find("service"),
                operation,
                duration,
                label: find("label"),
                start: find("start_unix_nano"),
                arrival: find("arrival_unix_nano"),
            }),
            (o, d) => Err([(o.is_none(), "operation"), (d.is_none(), "duration_ms")]
                .iter()
                .filter(|(missing, _)| *missing)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ")),
        }
    }
}

/// A label field that is none of `0`/`1`/`true`/`false`/empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLabel;

/// Parse a label: `0`/`1`/`true`/`false`; `Ok(None)` for an empty field.
pub fn parse_label(s: &str) -> Result<Option<bool>, BadLabel> {
    match s.trim() {
        "" => Ok(None),
        "0" | "false" | "False" | "FALSE" => Ok(Some(false)),
        "1" | "true" | "True" | "TRUE" => Ok(Some(true)),
        _ => Err(BadLabel),
    }
}

fn read_csv(
    mut reader: Box<dyn BufRead>,
    name: &str,
    summary: &mut FileSummary,
    emit: &mut dyn FnMut(&SpanRecord<'_>),
) -> Result<(), InputError> {
    let mut buf = Vec::with_capacity(256);
    let mut cols = None;
    while let Some(line) = next_line(&mut *reader, &mut buf, name, summary) {
        let Ok(line) = line else {
            summary.bad_lines += 1;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let Some(c) = cols else {
            let c = CsvColumns::from_header(line).map_err(|needed| InputError::Header {
                path: name.to_string(),
                header: line.to_string(),
                needed,
            })?;
            summary.has_label_column = c.label.is_some();
            cols = Some(c);
            continue;
        };
        let Some(fields) = split_csv(line).filter(|f| f.len() == c.width) else {
            summary.bad_lines += 1;
            continue;
        };
        let Ok(label) = c.label.map_or(Ok(None), |i| parse_label(&fields[i])) else {
            summary.bad_lines += 1;
            continue;
        };
        let duration = fields[c.duration].trim().parse::<f64>().unwrap_or(f64::NAN);
        let timing = match c.start.map(|i| fields[i].trim().parse::<u64>()) {
            None => Timing::DurationMs(duration),
            Some(Err(_)) => {
                summary.bad_lines += 1;
                continue;
            }
            // A duration that is not a usable number stays one, so the engine counts the span
            // as skipped (`invalid_duration`) at its place in the stream.
            Some(Ok(start_ns)) => match scale_core::features::check_duration_ms(duration) {
                Ok(d) => Timing::StartEnd {
                    start_ns,
                    end_ns: start_ns.saturating_add((d * 1e6).round() as u64),
                },
                Err(_) => Timing::DurationMs(duration),
            },
        };
        let arrival_ns = match c.arrival.map(|i| fields[i].trim().parse::<u64>()) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => {
                summary.bad_lines += 1;
                continue;
            }
        };
        let service = c
            .service
            .map(|i| fields[i].as_ref())
            .filter(|s| !s.is_empty())
            .unwrap_or(UNKNOWN_SERVICE);
        summary.spans += 1;
        emit(&SpanRecord {
            service,
            operation: &fields[c.operation],
            timing,
            trace_id: [0; 16],
            span_id: [0; 8],
            label,
            arrival_ns,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// OTLP JSON

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn label_of(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::BoolValue(b) => Some(*b),
        Value::IntValue(0) => Some(false),
        Value::IntValue(1) => Some(true),
        Value::StringValue(s) => parse_label(s).ok().flatten(),
        _ => None,
    }
}

fn id<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().unwrap_or([0; N])
}

/// Replace every string value of a `doubleValue` key by `null`.
///
/// Proto3 JSON writes non-finite doubles as strings (`{"doubleValue":"NaN"}`, `"Infinity"`), and
/// collectors do emit them, but `opentelemetry-proto` 0.33's `AnyValue` deserializer only accepts
/// JSON numbers there, so one such attribute would lose the whole line. Attribute values are not
/// used by `scale eval`, so the retry after a failed parse simply drops them.
pub fn null_string_doubles(line: &str) -> Option<String> {
    const KEY: &str = "\"doubleValue\"";
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    let mut changed = false;
    while let Some(i) = rest.find(KEY) {
        let (head, tail) = rest.split_at(i + KEY.len());
        out.push_str(head);
        let after = tail.trim_start();
        let Some(after_colon) = after.strip_prefix(':') else {
            rest = tail;
            continue;
        };
        let value = after_colon.trim_start();
        if let Some(body) = value.strip_prefix('"')
            && let Some(end) = body.find('"')
        {
            out.push_str(":null");
            rest = &body[end + 1..];
            changed = true;
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// Parse one OTLP JSON line and emit its spans; `Err` if the line is not a request.
pub fn parse_otlp_line(
    line: &str,
    emit: &mut dyn FnMut(&SpanRecord<'_>),
) -> Result<u64, serde_json::Error> {
    let req: ExportTraceServiceRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => match null_string_doubles(line) {
            Some(fixed) => serde_json::from_str(&fixed).map_err(|_| e)?,
            None => return Err(e),
        },
    };
    Ok(emit_request(&req.resource_spans, emit))
}

/// Emit every span of a request (or `TracesData`); returns how many.
pub fn emit_request(
    resource_spans: &[ResourceSpans],
    emit: &mut dyn FnMut(&SpanRecord<'_>),
) -> u64 {
    let mut n = 0;
    for rs in resource_spans {
        let service = match rs
            .resource
            .as_ref()
            .and_then(|r| attr(&r.attributes, "service.name"))
        {
            Some(Value::StringValue(s)) if !s.is_empty() => s.as_str(),
            _ => UNKNOWN_SERVICE,
        };
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                n += 1;
                emit(&SpanRecord {
                    service,
                    operation: &span.name,
                    timing: Timing::StartEnd {
                        start_ns: span.start_time_unix_nano,
                        end_ns: span.end_time_unix_nano,
                    },
                    trace_id: id(&span.trace_id),
                    span_id: id(&span.span_id),
                    label: label_of(attr(&span.attributes, "scale.label")),
                    arrival_ns: None,
                });
            }
        }
    }
    n
}

fn read_proto(
    mut reader: Box<dyn BufRead>,
    name: &str,
    summary: &mut FileSummary,
    emit: &mut dyn FnMut(&SpanRecord<'_>),
) {
    use prost::Message;
    let mut buf = Vec::new();
    let mut at = 0u64;
    loop {
        match reader.fill_buf() {
            Ok([]) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = name, error = %e, "read error; the rest of the file is ignored");
                summary.bad_lines += 1;
                return;
            }
        }
        let mut len = [0u8; 4];
        if let Err(e) = reader.read_exact(&mut len) {
            tracing::warn!(file = name, offset = at, error = %e, "protobuf length cut short; the rest of the file is ignored");
            summary.bad_lines += 1;
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_PROTO_MESSAGE {
            tracing::warn!(
                file = name,
                offset = at,
                length = n,
                "protobuf message length too large; the rest of the file is ignored"
            );
            summary.bad_lines += 1;
            return;
        }
        buf.resize(n, 0);
        if let Err(e) = reader.read_exact(&mut buf) {
            tracing::warn!(file = name, offset = at, error = %e, "protobuf message cut short; the rest of the file is ignored");
            summary.bad_lines += 1;
            return;
        }
        at += 4 + n as u64;
        match ExportTraceServiceRequest::decode(buf.as_slice()) {
            Ok(req) => summary.spans += emit_request(&req.resource_spans, emit),
            Err(e) => {
                if summary.bad_lines < 5 {
                    tracing::debug!(file = name, offset = at, error = %e, "bad protobuf message");
                }
                summary.bad_lines += 1;
            }
        }
    }
}

fn read_otlp(
    mut reader: Box<dyn BufRead>,
    name: &str,
    summary: &mut FileSummary,
    emit: &mut dyn FnMut(&SpanRecord<'_>),
) {
    let mut buf = Vec::with_capacity(1 << 16);
    let mut line_no = 0u64;
    while let Some(line) = next_line(&mut *reader, &mut buf, name, summary) {
        line_no += 1;
        let Ok(line) = line else {
            summary.bad_lines += 1;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_otlp_line(line, emit) {
            Ok(n) => summary.spans += n,
            Err(e) => {
                if summary.bad_lines < 5 {
                    tracing::debug!(file = name, line = line_no, error = %e, "bad OTLP JSON line");
                }
                summary.bad_lines += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An owned copy of a record, for assertions.
    #[derive(Debug, Clone, PartialEq)]
    struct Owned {
        service: String,
        operation: String,
        duration: Option<f64>,
        start_end: Option<(u64, u64)>,
        trace_id: [u8; 16],
        span_id: [u8; 8],
        label: Option<bool>,
    }

    fn own(r: &SpanRecord<'_>) -> Owned {
        let (duration, start_end) = match r.timing {
            Timing::DurationMs(d) => (Some(d), None),
            Timing::StartEnd { start_ns, end_ns } => (None, Some((start_ns, end_ns))),
        };
        Owned {
            service: r.service.into(),
            operation: r.operation.into(),
            duration,
            start_end,
            trace_id: r.trace_id,
            span_id: r.span_id,
            label: r.label,
        }
    }

    fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("scale-input-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn read(path: &Path) -> (Vec<Owned>, FileSummary) {
        let mut v = Vec::new();
        let s = read_file(path, Rc::default(), |r| v.push(own(r))).unwrap();
        (v, s)
    }

    #[test]
    fn csv_rows_labels_and_bad_lines() {
        let text = "service,operation,duration_ms,label\n\
                    a,op1,1.5,0\n\
                    \n\
                    a,\"op,2\",2.5,1\n\
                    a,op3,oops,0\n\
                    a,op4,1.0\n\
                    a,op5,1.0,maybe\n\
                    ,op6,3,\n";
        let (v, s) = read(&temp("a.csv", text.as_bytes()));
        assert_eq!(s.format, Some(Format::Csv));
        assert!(s.has_label_column && !s.gzip);
        assert_eq!((s.spans, s.bad_lines), (4, 2));
        assert_eq!(v[0].operation, "op1");
        assert_eq!((v[0].duration, v[0].label), (Some(1.5), Some(false)));
        assert_eq!((v[1].operation.as_str(), v[1].label), ("op,2", Some(true)));
        assert!(
            v[2].duration.unwrap().is_nan(),
            "unparsable duration is NaN, still fed"
        );
        assert_eq!((v[3].service.as_str(), v[3].label), (UNKNOWN_SERVICE, None));
    }

    #[test]
    fn csv_without_label_and_gzip() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"operation,service,duration_ms\nx,s,4\n")
            .unwrap();
        let bytes = gz.finish().unwrap();
        let (v, s) = read(&temp("b.csv.gz", &bytes));
        assert!(s.gzip && !s.has_label_column);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (
                v[0].service.as_str(),
                v[0].operation.as_str(),
                v[0].duration,
                v[0].label
            ),
            ("s", "x", Some(4.0), None)
        );
    }

    #[test]
    fn csv_with_start_times_is_a_timeline() {
        let text = "start_unix_nano,service,operation,duration_ms,label\n\
                    1661140339209875609,frontend,Recv,362.453,0\n\
                    1661140339210020096,frontend,Get,-1,1\n\
                    soon,frontend,Get,1,1\n";
        let (v, s) = read(&temp("t.csv", text.as_bytes()));
        assert_eq!((s.spans, s.bad_lines), (2, 1));
        assert_eq!(
            v[0].start_end,
            Some((1_661_140_339_209_875_609, 1_661_140_339_572_328_609))
        );
        assert_eq!(
            v[1].duration,
            Some(-1.0),
            "a bad duration is kept for the engine to skip"
        );
    }

    #[test]
    fn csv_header_errors() {
        let p = temp("c.csv", b"service,name,ms\na,b,1\n");
        let e = read_file(&p, Rc::default(), |_| {}).unwrap_err();
        assert!(e.to_string().contains("operation, duration_ms"), "{e}");
    }

    #[test]
    fn split_csv_quotes() {
        let f = split_csv(r#"a,"b ""q"", c",,d"#).unwrap();
        assert_eq!(f, vec!["a", r#"b "q", c"#, "", "d"]);
        assert!(split_csv(r#"a,"b"#).is_none());
        assert!(split_csv(r#"a,"b"c"#).is_none());
        assert_eq!(split_csv("").unwrap(), vec![""]);
    }

    const OTLP: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},"scopeSpans":[{"scope":{"name":"x"},"spans":[{"traceId":"01b25355e07592f3e5cc8e0c61cd3479","spanId":"2e28e57833e20d89","name":"GetCart","kind":2,"startTimeUnixNano":"1731031818330000000","endTimeUnixNano":"1731031818335018801","attributes":[{"key":"scale.label","value":{"intValue":"1"}}]},{"traceId":"abcd","spanId":"","name":"Other","startTimeUnixNano":1731031818330000000,"endTimeUnixNano":"1731031818340000000","attributes":[{"key":"scale.label","value":{"boolValue":false}}]}]}]},{"resource":{"attributes":[]},"scopeSpans":[{"spans":[{"name":"anon","startTimeUnixNano":"5","endTimeUnixNano":"6"}]}]}]}"#;

    #[test]
    fn otlp_lines_and_bad_lines() {
        let text = format!("{OTLP}\n\nnot json\n{{\"resourceSpans\": 3}}\n{OTLP}\n");
        let (v, s) = read(&temp("d.jsonl", text.as_bytes()));
        assert_eq!(s.format, Some(Format::OtlpJson));
        assert_eq!((s.spans, s.bad_lines), (6, 2));
        let a = &v[0];
        assert_eq!(
            (a.service.as_str(), a.operation.as_str(), a.label),
            ("cart", "GetCart", Some(true))
        );
        assert_eq!(
            a.start_end,
            Some((1_731_031_818_330_000_000, 1_731_031_818_335_018_801))
        );
        assert_eq!(a.trace_id[..4], [0x01, 0xb2, 0x53, 0x55]);
        assert_eq!(a.span_id, [0x2e, 0x28, 0xe5, 0x78, 0x33, 0xe2, 0x0d, 0x89]);
        let b = &v[1];
        assert_eq!(
            (b.trace_id, b.span_id, b.label),
            ([0; 16], [0; 8], Some(false)),
            "short ids become zeros"
        );
        assert_eq!(
            b.start_end.unwrap().0,
            1_731_031_818_330_000_000,
            "numbers accepted as well as strings"
        );
        assert_eq!((v[2].service.as_str(), v[2].label), (UNKNOWN_SERVICE, None));
    }

    #[test]
    fn otlp_string_doubles_are_tolerated() {
        let line = OTLP.replace(r#"{"intValue":"1"}"#, r#"{"intValue":"1"}},{"key":"amount","value":{"doubleValue" : "NaN"}},{"key":"x","value":{"doubleValue":2.5}},{"key":"y","value":{"doubleValue":"-Infinity"}"#);
        assert!(
            serde_json::from_str::<ExportTraceServiceRequest>(&line).is_err(),
            "the library alone refuses it"
        );
        let mut n = 0;
        assert_eq!(parse_otlp_line(&line, &mut |_| n += 1).unwrap(), 3);
        assert_eq!(n, 3);
        assert_eq!(null_string_doubles(r#"{"doubleValue":1}"#), None);
        assert_eq!(
            null_string_doubles(r#"{"doubleValue": "NaN", "k": "doubleValue"}"#).unwrap(),
            r#"{"doubleValue":null, "k": "doubleValue"}"#
        );
    }

    #[test]
    fn otlp_detected_by_content_and_gzip() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(format!("  {OTLP}\n").as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        let (v, s) = read(&temp("e.data", &bytes));
        assert_eq!(
            (s.format, s.gzip, v.len()),
            (Some(Format::OtlpJson), true, 3)
        );
    }

    #[test]
    fn invalid_utf8_and_truncated_gzip_do_not_panic() {
        let (v, s) = read(&temp("f.csv", b"operation,duration_ms\n\xff\xfe,1\nok,2\n"));
        assert_eq!((v.len(), s.bad_lines), (1, 1));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        writeln!(gz, "operation,duration_ms").unwrap();
        for i in 0..20_000 {
            writeln!(gz, "op{i},{i}").unwrap();
        }
        let mut bytes = gz.finish().unwrap();
        bytes.truncate(bytes.len() / 2);
        let (_, s) = read(&temp("g.csv.gz", &bytes));
        assert!(s.bad_lines >= 1);
    }

    #[test]
    fn empty_file_uses_extension() {
        let (v, s) = read(&temp("h.jsonl", b""));
        assert_eq!((v.len(), s.format), (0, Some(Format::OtlpJson)));
    }
}
