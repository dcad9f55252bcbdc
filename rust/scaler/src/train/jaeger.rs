//! Reading spans from Jaeger v2's query API (`/api/v3/traces`, OTLP JSON).
//!
//! # What is read
//!
//! The spans that *start* in `[since, until)`, of the `--service`s if given (else of every
//! service). Jaeger's search matches a trace when any one of its spans matches, and returns the
//! whole trace, so spans outside the range or of other services come back too: they are
//! filtered out here, which makes the set learned independent of how the range was paged.
//!
//! # Paging
//!
//! The range is read [`TrainArgs::page`] at a time, oldest first. Jaeger returns at most
//! `query.num_traces` traces per search, in its storage's order (most recently stored first,
//! not by time), so a full answer cannot be continued from its last trace: a page whose answer
//! holds `num_traces` distinct traces is split in two halves, each read the same way (down to
//! a nanosecond). A trace that matches in two pages comes back twice; [`super::Gathered`] drops
//! the duplicates by trace and span id. Each answer is parsed and dropped before the next
//! request, so memory holds one answer and the gathered spans (bounded by `--max-spans`).
//!
//! # Spans as recorded
//!
//! Jaeger's storage exporter sanitizes spans as it stores them: a span whose end is not after
//! its start is made to last 1 ns, the original end written into the span's `@jaeger@warnings`
//! attribute; a missing or empty `service.name` becomes `missing-service-name` or
//! `empty-service-name`. Both are undone here ([`unsanitize`]), so the engine learns the spans
//! a collector saw (a zero-length span is judged as one, not as a 1 ns span), and a snapshot
//! trained from Jaeger equals one trained from the recording that filled it.
//!
//! Every search sends `query.raw_traces=true`: without it Jaeger's adjusters rewrite the stored
//! trace they return (v1.75.0's memory store hands out its own copy). A 404 ("No traces found")
//! is an empty page. `authorization: Bearer` is sent when a token is given, for a proxy or a
//! Jaeger with an authenticator in front of its query port.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use opentelemetry_proto::tonic::trace::v1::TracesData;
use serde::Deserialize;
use std::io::IsTerminal;

use super::{Gathered, TrainArgs, TrainError, format_time};
use crate::eval::input;

/// Default of `--page-traces` (Jaeger's own UI asks for 20; its memory store allows up to its
/// `max_traces`).
pub const DEFAULT_PAGE_TRACES: u32 = 1_000;
/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read (a page that would be larger must be split: lower `--page-traces`).
pub const MAX_ANSWER_BYTES: usize = 512 << 20;

/// What to read.
#[derive(Debug, Clone)]
pub struct Query {
    /// Range start, ns since the epoch (inclusive).
    pub since_ns: u64,
    /// Range end, ns (exclusive).
    pub until_ns: u64,
    /// Services (empty: all).
    pub services: Vec<String>,
    /// Page length, ns.
    pub page_ns: u64,
    /// `query.num_traces`.
    pub page_traces: u32,
    /// Bearer token.
    pub token: Option<String>,
}

impl Query {
    /// The query `args` describe, times taken relative to now.
    pub fn from_args(args: &TrainArgs) -> Result<Self, TrainError> {
        let now = jiff::Timestamp::now().as_nanosecond().max(0) as u64;
        let since_ns = parse_time(&args.since, now)
            .map_err(|e| TrainError::Options(format!("--since {:?}: {e}", args.since)))?;
        let until_ns = match &args.until {
            Some(u) => parse_time(u, now)
                .map_err(|e| TrainError::Options(format!("--until {u:?}: {e}")))?,
            None => now,
        };
        if until_ns <= since_ns {
            return Err(TrainError::Options(format!(
                "the time range is empty: --since {} is not before --until {}",
                format_time(since_ns),
                format_time(until_ns)
            )));
        }
        let token = match (&args.token_file, std::env::var("SCALE_JAEGER_TOKEN").ok()) {
            (Some(f), _) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| TrainError::Options(format!("--token-file {}: {e}", f.display())))?
                    .trim()
                    .to_string(),
            ),
            (None, t) => t.map(|t| t.trim().to_string()),
        };
        if token.as_deref() == Some("") {
            return Err(TrainError::Options("the bearer token is empty".into()));
        }
        Ok(Self {
            since_ns,
            until_ns,
            services: args.services.clone(),
            page_ns: (args.page.as_nanos().min(u64::MAX as u128) as u64).max(1),
            page_traces: args.page_traces,
            token,
        })
    }

    /// For logs and the summary.
    pub fn describe(&self) -> String {
        let services = if self.services.is_empty() {
            "every service".to_string()
        } else {
            self.services.join(",")
        };
        format!(
            "{} .. {} ({services})",
            format_time(self.since_ns),
            format_time(self.until_ns)
        )
    }
}

/// A time: RFC 3339, or a duration back from `now_ns` (`24h`, `90m`).
pub fn parse_time(s: &str, now_ns: u64) -> Result<u64, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return u64::try_from(t.as_nanosecond()).map_err(|_| "is before 1970".to_string());
    }
    match scale_core::config::parse_duration_ms(s) {
        Ok(ms) if ms >= 0.0 && ms.is_finite() => Ok(now_ns.saturating_sub((ms * 1e6) as u64)),
        _ => Err(
            "give an RFC 3339 time (2026-12-01T00:00:00Z) or a duration back from now (24h)".into(),
        ),
    }
}

/// Jaeger's answer to a search.
#[derive(Debug, Deserialize)]
struct Answer {
    result: Option<TracesData>,
}

/// An HTTP(S) client for the query API.
struct Http {
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<Bytes>,
    >,
    base: String,
    token: Option<String>,
    requests: u64,
}

impl Http {
    fn new(base: &str, token: Option<String>) -> Result<Self, TrainError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| {
                TrainError::Jaeger(format!("loading the system's root certificates: {e}"))
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            base: base.trim_end_matches('/').to_string(),
            token,
            requests: 0,
        })
    }

    /// GET `path_and_query`; `Ok(None)` on 404.
    async fn get(&mut self, path_and_query: &str) -> Result<Option<Bytes>, TrainError> {
        let url = format!("{}{path_and_query}", self.base);
        let mut req = hyper::Request::get(&url);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| TrainError::Jaeger(format!("{}: bad URL: {e}", self.base)))?;
        self.requests += 1;
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                TrainError::Jaeger(format!("cannot reach {}: {msg}", self.base))
            })?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| TrainError::Jaeger(format!("{}: reading the answer: {e}", self.base)))?
                .to_bytes();
            match status.as_u16() {
                200 => Ok(Some(body)),
                404 => Ok(None),
                code => Err(TrainError::Jaeger(format!(
                    "{}: HTTP {code}: {}",
                    self.base,
                    String::from_utf8_lossy(&body[..body.len().min(500)]).trim()
                ))),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| {
                TrainError::Jaeger(format!(
                    "{}: no answer within {REQUEST_TIMEOUT:?}",
                    self.base
                ))
            })?
    }
}

/// Percent-encode a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One page's spans: `(spans matched, distinct traces in the answer)`.
async fn search(
    http: &mut Http,
    q: &Query,
    service: Option<&str>,
    lo: u64,
    hi: u64,
    g: &mut Gathered,
) -> Result<(u64, usize), TrainError> {
    let mut path = format!(
        "/api/v3/traces?query.start_time_min={}&query.start_time_max={}&query.num_traces={}&query.raw_traces=true",
        encode(&format_time(lo)),
        encode(&format_time(hi - 1)),
        q.page_traces
    );
    if let Some(s) = service {
        path.push_str(&format!("&query.service_name={}", encode(s)));
    }
    let Some(body) = http.get(&path).await? else {
        return Ok((0, 0));
    };
    let bad = |e: serde_json::Error| {
        TrainError::Jaeger(format!("{}: the answer is not OTLP JSON: {e}", http.base))
    };
    let answer: Answer = match serde_json::from_slice(&body) {
        Ok(a) => a,
        // Doubles written as strings ("NaN"), as pdata writes them; bridged as for files.
        Err(e) => {
            let text = std::str::from_utf8(&body).map_err(|_| bad(e))?;
            let fixed = input::null_string_doubles(text).ok_or_else(|| {
                bad(serde_json::from_str::<Answer>(text).expect_err("failed above"))
            })?;
            serde_json::from_str(&fixed).map_err(bad)?
        }
    };
    let Some(mut data) = answer.result else {
        return Ok((0, 0));
    };
    unsanitize(&mut data);
    // A full answer is split and read again by halves: its spans are not taken from it.
    let mut traces = std::collections::HashSet::new();
    input::emit_request(&data.resource_spans, &mut |r| {
        traces.insert(r.trace_id);
    });
    if traces.len() >= q.page_traces as usize && hi - lo > 1 {
        return Ok((0, traces.len()));
    }
    let mut matched = 0;
    input::emit_request(&data.resource_spans, &mut |r| {
        let start = match r.timing {
            scale_core::Timing::StartEnd { start_ns, .. } => start_ns,
            scale_core::Timing::DurationMs(_) => return,
        };
        let wanted = q.services.is_empty() || q.services.iter().any(|s| s == r.service);
        if wanted && start >= q.since_ns && start < q.until_ns {
            matched += 1;
            g.push(r);
        }
    });
    Ok((matched, traces.len()))
}

/// Jaeger's span attribute for what it changed.
pub const WARNINGS_ATTRIBUTE: &str = "@jaeger@warnings";
/// The service names Jaeger gives spans without one.
pub const JAEGER_NO_SERVICE: [&str; 2] = ["missing-service-name", "empty-service-name"];

/// Undo Jaeger's storage sanitizers (see the module docs).
pub fn unsanitize(data: &mut TracesData) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    for rs in &mut data.resource_spans {
        if let Some(r) = rs.resource.as_mut() {
            r.attributes.retain(|kv| {
                !(kv.key == "service.name"
                    && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                        Some(Value::StringValue(s)) if JAEGER_NO_SERVICE.contains(&s.as_str())))
            });
        }
        for ss in &mut rs.scope_spans {
            for span in &mut ss.spans {
                let Some(w) = span
                    .attributes
                    .iter()
                    .find(|kv| kv.key == WARNINGS_ATTRIBUTE)
                else {
                    continue;
                };
                let Some(Value::ArrayValue(a)) = w.value.as_ref().and_then(|v| v.value.as_ref())
                else {
                    continue;
                };
                let original = a.values.iter().find_map(|v| match &v.value {
                    Some(Value::StringValue(s)) => original_end(s),
                    _ => None,
                });
                if let Some(end) = original {
                    span.end_time_unix_nano = end;
                }
            }
        }
    }
}

/// The original end in the negative-duration sanitizer's warning ("... Original end
/// timestamp: 2024-11-08 02:10:15.429 +0000 UTC, adjusted to: ..."), Go's `Time.String()`.
fn original_end(warning: &str) -> Option<u64> {
    let rest = warning.split_once("Original end timestamp: ")?.1;
    let text = rest.split_once(", adjusted to")?.0;
    // Date, time, offset; the zone's abbreviation after them is redundant.
    let mut parts = text.split(' ');
    let (date, time, offset) = (parts.next()?, parts.next()?, parts.next()?);
    let t = jiff::fmt::strtime::parse("%Y-%m-%d %H:%M:%S%.f %z", format!("{date} {time} {offset}"))
        .ok()?
        .to_timestamp()
        .ok()?;
    u64::try_from(t.as_nanosecond()).ok()
}

/// Read the query's spans from Jaeger at `url` into `g`. Returns the bad lines (always 0: an
/// answer that does not parse is an error).
pub fn gather(url: &str, q: &Query, g: &mut Gathered) -> Result<u64, TrainError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainError::Jaeger(format!("starting the runtime: {e}")))?;
    rt.block_on(gather_async(url, q, g))
}

async fn gather_async(url: &str, q: &Query, g: &mut Gathered) -> Result<u64, TrainError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(TrainError::Options(format!(
            "--jaeger {url:?}: give the query API's http:// or https:// URL"
        )));
    }
    let mut http = Http::new(url, q.token.clone())?;
    let bar = progress(q.until_ns - q.since_ns);
    let services: Vec<Option<&str>> = if q.services.is_empty() {
        vec![None]
    } else {
        q.services.iter().map(|s| Some(s.as_str())).collect()
    };
    let (mut pages, mut spans) = (0u64, 0u64);
    let mut lo = q.since_ns;
    while lo < q.until_ns {
        let hi = lo.saturating_add(q.page_ns).min(q.until_ns);
        for &service in &services {
            // Depth-first over halves, oldest first.
            let mut stack = vec![(lo, hi)];
            while let Some((a, b)) = stack.pop() {
                let (n, traces) = search(&mut http, q, service, a, b, g).await?;
                pages += 1;
                if traces >= q.page_traces as usize && b - a > 1 {
                    let mid = a + (b - a) / 2;
                    stack.push((mid, b));
                    stack.push((a, mid));
                    tracing::debug!(from = %format_time(a), to = %format_time(b), "page full; split");
                    continue;
                }
                if traces >= q.page_traces as usize {
                    tracing::warn!(at = %format_time(a), traces, "more traces start in one nanosecond than --page-traces; some may be missing");
                }
                spans += n;
            }
        }
        bar.set_position(hi - q.since_ns);
        bar.set_message(format!("{spans} spans"));
        lo = hi;
    }
    bar.finish_and_clear();
    tracing::info!(url, range = %q.describe(), requests = http.requests, pages, spans, "read from Jaeger");
    Ok(0)
}

/// A progress bar over the time range, on a terminal only.
fn progress(total_ns: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total_ns), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {percent}% of the range, {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_duration_back_from_now() {
        let now = 1_800_000_000_000_000_000;
        assert_eq!(parse_time("24h", now).unwrap(), now - 86_400_000_000_000);
        assert_eq!(parse_time("1m30s", now).unwrap(), now - 90_000_000_000);
        assert_eq!(
            parse_time("2026-12-01T00:00:00Z", now).unwrap(),
            1_796_083_200_000_000_000
        );
        assert_eq!(
            parse_time("2026-12-01T00:00:00.000000001+00:00", now).unwrap(),
            1_796_083_200_000_000_001
        );
        assert!(
            parse_time("yesterday", now)
                .unwrap_err()
                .contains("RFC 3339")
        );
        // Formatting round-trips to the nanosecond (the pages' bounds).
        let t = 1_796_083_200_123_456_789;
        assert_eq!(parse_time(&format_time(t), now).unwrap(), t);
    }

    #[test]
    fn jaegers_sanitized_ends_and_service_names_are_restored() {
        assert_eq!(
            original_end(
                "Negative duration detected, sanitizing end timestamp. Original end timestamp: \
                 2024-11-08 02:10:15.429 +0000 UTC, adjusted to: 2024-11-08 02:10:15.429000001 \
                 +0000 UTC"
            ),
            Some(1_731_031_815_429_000_000)
        );
        assert_eq!(
            original_end("Original end timestamp: 1970-01-01 00:00:00 +0000 UTC, adjusted to: x"),
            Some(0)
        );
        assert_eq!(
            original_end("Original end timestamp: 2024-11-08 03:10:15.5 +0100 CET, adjusted to: x"),
            Some(1_731_031_815_500_000_000)
        );
        assert_eq!(original_end("clock skew adjustment disabled"), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("2026-12-01T00:00:00.5+01:00"),
            "2026-12-01T00%3A00%3A00.5%2B01%3A00"
        );
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
