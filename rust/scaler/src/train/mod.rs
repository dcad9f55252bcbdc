//! `scale train`: learn recorded spans, from a trace store (Jaeger v2's query API, see
//! [`jaeger`]) or from span files (the formats `scale eval` reads), and write the engine
//! snapshot that a collector loads to start warm (the processor's `initial_snapshot`), that
//! `scale eval --snapshot` and `scale serve --engine-snapshot` load, to a file or to a
//! Kubernetes ConfigMap ([`configmap`]).
//!
//! # Determinism
//!
//! The same spans give the same snapshot, byte for byte, whichever source they came from and in
//! whatever order it returned them: spans are gathered first ([`Gathered`]), duplicates (the same
//! trace and span id, as overlapping store pages return them) dropped, then learned in one
//! defined order, by end time (then start, trace id, span id, service and operation names), the
//! order in which they reach a collector. Keys are interned in that order too. The engine's
//! model clock is each span's end (`Engine::process_span`), so the model means the same as one a
//! collector learned live. CSV rows carry no time: a file of them is learned in its own order,
//! and cannot be mixed with timed spans.
//!
//! # What is learned
//!
//! Everything the engine would do with the spans as a collector does, from a fresh engine: the
//! trees and windows, the per-key latency baselines, the keep threshold's calibration, the
//! key table. Rules are not trained (their windows would count historical breaches as live
//! ones): the configuration's rules are set aside, and a collector that loads the snapshot with
//! rules starts their windows empty.
//!
//! # Memory
//!
//! A gathered span takes 48 bytes (ids, times and a name index; names are held once). At most
//! `--max-spans` are kept, the latest by end time: the store is compacted (deduplicated, then
//! the oldest dropped) whenever it holds twice that, so memory stays bounded by
//! `96 · max_spans` bytes plus the names, however large the store being read.

pub mod configmap;
pub mod jaeger;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use scale_core::{BatchOutput, Engine, EngineConfig, SpanKey, SpanRef, Timing};
use serde::Serialize;

use crate::eval::input::{self, SpanRecord};

/// Spans per `process_batch` call while learning (the same as `scale eval`).
pub const BATCH: usize = crate::eval::BATCH;
/// Default of `--max-spans`.
pub const DEFAULT_MAX_SPANS: u64 = 2_000_000;

/// Arguments of `scale train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Span files: CSV, OTLP JSON lines or OTLP protobuf (the file exporter's formats),
    /// optionally gzip-compressed. Not with --jaeger.
    #[arg(
        value_name = "FILE",
        required_unless_present = "jaeger",
        conflicts_with = "jaeger"
    )]
    pub files: Vec<PathBuf>,
    /// Read the spans from Jaeger v2's query API at this URL (e.g. http://jaeger:16686).
    #[arg(long, value_name = "URL")]
    pub jaeger: Option<String>,
    /// Start of the time range to read from Jaeger: RFC 3339 (2026-12-01T00:00:00Z) or a
    /// duration back from now (24h).
    #[arg(long, value_name = "TIME", default_value = "24h")]
    pub since: String,
    /// End of the time range: RFC 3339 or a duration back from now. Default: now.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only these services (repeatable). Default: every service Jaeger knows.
    #[arg(long = "service", value_name = "NAME")]
    pub services: Vec<String>,
    /// Send `authorization: Bearer <token>` to Jaeger, the token read from this file (or the
    /// SCALE_JAEGER_TOKEN environment variable).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Jaeger pages: the time range is read this much at a time (a page that reaches
    /// --page-traces is split in two).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub page: std::time::Duration,
    /// Jaeger pages: traces asked for per query.
    #[arg(long, value_name = "N", default_value_t = jaeger::DEFAULT_PAGE_TRACES, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub page_traces: u32,
    /// Engine configuration (YAML); defaults otherwise. Its rules, if any, are not trained.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write the snapshot to this file (atomically).
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present = "configmap"
    )]
    pub out: Option<PathBuf>,
    /// Write the snapshot into this ConfigMap (NAMESPACE/NAME), key `scale.snapshot` of its
    /// binaryData, creating or updating it (server-side apply).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub configmap: Option<String>,
    /// Kubernetes: kubeconfig file (default: in-cluster service account, then $KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Learn at most the latest N spans (by end time); memory is about 96 bytes per span.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SPANS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_spans: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match scale_core::config::parse_duration_ms(s)? {
        ms if ms > 0.0 && ms.is_finite() => Ok(std::time::Duration::from_secs_f64(ms / 1e3)),
        _ => Err(format!("{s:?} must be a positive duration")),
    }
}

/// Errors that stop training; nothing is written after one.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A span file could not be read.
    #[error(transparent)]
    Input(#[from] input::InputError),
    /// The configuration could not be read or is invalid.
    #[error("{0}")]
    Config(String),
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// Jaeger could not be read.
    #[error("jaeger: {0}")]
    Jaeger(String),
    /// Nothing to learn.
    #[error("no spans to learn from ({0}); no snapshot written")]
    Empty(String),
    /// The snapshot could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The ConfigMap could not be written.
    #[error("configmap {0}")]
    ConfigMap(String),
}

/// One gathered span: 48 bytes.
#[derive(Debug, Clone, Copy)]
struct Rec {
    /// End time, ns (for CSV rows: the row's position).
    end_ns: u64,
    /// Start time, ns (for CSV rows: the duration's bits).
    start_ns: u64,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// Index into [`Gathered::names`].
    name: u32,
}

impl Rec {
    fn ids(&self) -> Option<([u8; 16], [u8; 8])> {
        (self.trace_id != [0; 16] || self.span_id != [0; 8])
            .then_some((self.trace_id, self.span_id))
    }
}

/// Spans gathered from a source, bounded to the latest `max_spans`.
#[derive(Debug, Default)]
pub struct Gathered {
    names: Vec<(String, String)>,
    index: HashMap<Box<str>, HashMap<Box<str>, u32>>,
    spans: Vec<Rec>,
    max_spans: usize,
    /// Whether the spans have times (OTLP) or are CSV rows.
    timed: Option<bool>,
    /// Spans given, duplicates dropped, spans older than the latest `max_spans` dropped, timed
    /// spans whose times the engine would refuse.
    read: u64,
    duplicates: u64,
    dropped_old: u64,
    untimed_mixed: bool,
}

impl Gathered {
    /// An empty store keeping at most `max_spans`.
    pub fn new(max_spans: u64) -> Self {
        Self {
            max_spans: usize::try_from(max_spans).unwrap_or(usize::MAX).max(1),
            ..Self::default()
        }
    }

    /// Spans held.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether no span is held.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn name(&mut self, service: &str, operation: &str) -> u32 {
        // Look up without allocating; only a new pair is copied.
        if let Some(&i) = self.index.get(service).and_then(|ops| ops.get(operation)) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names
            .push((service.to_string(), operation.to_string()));
        self.index
            .entry(service.into())
            .or_default()
            .insert(operation.into(), i);
        i
    }

    /// Add one span as read.
    pub fn push(&mut self, r: &SpanRecord<'_>) {
        let (timed, end_ns, start_ns) = match r.timing {
            Timing::StartEnd { start_ns, end_ns } => (true, end_ns, start_ns),
            Timing::DurationMs(d) => (false, self.read, d.to_bits()),
        };
        if *self.timed.get_or_insert(timed) != timed {
            self.untimed_mixed = true;
            return;
        }
        self.read += 1;
        let name = self.name(r.service, r.operation);
        self.spans.push(Rec {
            end_ns,
            start_ns,
            trace_id: r.trace_id,
            span_id: r.span_id,
            name,
        });
        if self.spans.len() >= 2 * self.max_spans {
            self.compact();
        }
    }

    /// Drop duplicates, then all but the latest `max_spans`.
    fn compact(&mut self) {
        if self.timed == Some(true) {
            let before = self.spans.len();
            // Duplicates: the same ids (spans without ids are never duplicates).
            self.spans.sort_unstable_by(|a, b| {
                (a.ids(), a.end_ns, a.start_ns).cmp(&(b.ids(), b.end_ns, b.start_ns))
            });
            self.spans
                .dedup_by(|a, b| a.ids().is_some() && a.ids() == b.ids());
            self.duplicates += (before - self.spans.len()) as u64;
        }
        if self.spans.len() > self.max_spans {
            let drop = self.spans.len() - self.max_spans;
            let names = &self.names;
            self.spans
                .select_nth_unstable_by(drop, |a, b| order(names, a, b));
            self.spans.drain(..drop);
            self.dropped_old += drop as u64;
        }
    }

    /// Compact, then sort into learning order.
    fn finish(&mut self) {
        self.compact();
        let names = &self.names;
        self.spans.sort_unstable_by(|a, b| order(names, a, b));
    }
}

/// The learning order: end, start, trace id, span id, service, operation.
fn order(names: &[(String, String)], a: &Rec, b: &Rec) -> std::cmp::Ordering {
    (a.end_ns, a.start_ns, a.trace_id, a.span_id)
        .cmp(&(b.end_ns, b.start_ns, b.trace_id, b.span_id))
        .then_with(|| names[a.name as usize].cmp(&names[b.name as usize]))
}

/// What training did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Where the spans came from.
    pub source: String,
    /// Spans read from the source.
    pub spans_read: u64,
    /// Duplicates dropped (the same trace and span id).
    pub duplicates: u64,
    /// Spans dropped for being older than the latest `--max-spans`.
    pub dropped_old: u64,
    /// Input lines that could not be used.
    pub bad_lines: u64,
    /// Spans learned.
    pub spans_learned: u64,
    /// Spans the engine skipped (bad times or durations).
    pub spans_skipped: u64,
    /// Distinct service::operation keys.
    pub keys: u64,
    /// End time of the first and the last span learned (ns since the epoch; 0 for CSV).
    pub first_end_ns: u64,
    /// See `first_end_ns`.
    pub last_end_ns: u64,
    /// The snapshot's size.
    pub snapshot_bytes: usize,
    /// Where it was written.
    pub written_to: String,
}

/// The engine configuration for training: `--config` (or the defaults) without its rules.
pub fn config(path: Option<&Path>) -> Result<EngineConfig, TrainError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| TrainError::Config(format!("{}: cannot read: {e}", p.display())))?,
        None => String::new(),
    };
    let mut cfg = EngineConfig::from_yaml(&text).map_err(|e| {
        TrainError::Config(format!(
            "{}: {e}",
            path.map_or("--config".into(), |p| p.display().to_string())
        ))
    })?;
    if !cfg.rules.is_empty() {
        tracing::info!(
            rules = cfg.rules.len(),
            "the configuration's rules are not trained (a collector starts their windows empty)"
        );
        cfg.rules.clear();
    }
    Ok(cfg)
}

/// Read span files into `g`; returns the bad lines.
pub fn gather_files(files: &[PathBuf], g: &mut Gathered) -> Result<u64, TrainError> {
    let mut bad = 0;
    for f in files {
        let s = input::read_file(f, Rc::default(), |r| g.push(r))?;
        tracing::info!(
            file = %f.display(),
            format = s.format.map(|f| f.as_str()).unwrap_or("?"),
            spans = s.spans,
            bad_lines = s.bad_lines,
            "read"
        );
        bad += s.bad_lines;
    }
    Ok(bad)
}

/// Learn the gathered spans with a fresh engine of `cfg`; returns the engine. Deterministic:
/// the same spans give the same engine (see the module docs).
pub fn learn(cfg: EngineConfig, g: &mut Gathered) -> Result<Engine, TrainError> {
    if g.untimed_mixed {
        return Err(TrainError::Options(
            "spans with times (OTLP) and CSV rows without times cannot be trained together".into(),
        ));
    }
    g.finish();
    if g.spans.is_empty() {
        return Err(TrainError::Empty(format!("{} spans read", g.read)));
    }
    Ok(learn_sorted(cfg, g))
}

fn learn_sorted(cfg: EngineConfig, g: &Gathered) -> Engine {
    let timed = g.timed == Some(true);
    let mut engine = Engine::new(cfg);
    let mut out = BatchOutput::default();
    let mut batch: Vec<SpanRef<'_>> = Vec::with_capacity(BATCH);
    for chunk in g.spans.chunks(BATCH) {
        batch.clear();
        batch.extend(chunk.iter().map(|r| {
            let (service, operation) = &g.names[r.name as usize];
            SpanRef {
                key: SpanKey::Names { service, operation },
                timing: if timed {
                    Timing::StartEnd {
                        start_ns: r.start_ns,
                        end_ns: r.end_ns,
                    }
                } else {
                    Timing::DurationMs(f64::from_bits(r.start_ns))
                },
                trace_id: r.trace_id,
                span_id: r.span_id,
            }
        }));
        // The batch's clock: its last end (timed spans arrive at their end), or one millisecond
        // per CSV row, as `scale eval` replays them.
        let last = chunk.last().expect("chunks are not empty").end_ns;
        let now = if timed { last } else { (last + 1) * 1_000_000 };
        engine.process_batch(&batch, now, &mut out);
    }
    engine
}

/// Write `bytes` to `path` atomically (a temporary file in the same directory, then a rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let err = |source| TrainError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot".into()),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Run `scale train`.
pub fn run(args: &TrainArgs) -> Result<Summary, TrainError> {
    let cfg = config(args.config.as_deref())?;
    let mut g = Gathered::new(args.max_spans);
    let (source, bad_lines) = match &args.jaeger {
        Some(url) => {
            let q = jaeger::Query::from_args(args)?;
            let source = format!("jaeger {url} {}", q.describe());
            let bad = jaeger::gather(url, &q, &mut g)?;
            (source, bad)
        }
        None => {
            let bad = gather_files(&args.files, &mut g)?;
            let names: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
            (names.join(" "), bad)
        }
    };
    let engine = learn(cfg.clone(), &mut g)?;
    let snapshot = engine.snapshot();
    let stats = engine.stats();
    let timed = g.timed == Some(true);
    let mut summary = Summary {
        source,
        spans_read: g.read,
        duplicates: g.duplicates,
        dropped_old: g.dropped_old,
        bad_lines,
        spans_learned: g.spans.len() as u64,
        spans_skipped: stats.spans_skipped.iter().sum(),
        keys: stats.keys,
        first_end_ns: if timed { g.spans[0].end_ns } else { 0 },
        last_end_ns: if timed {
            g.spans[g.spans.len() - 1].end_ns
        } else {
            0
        },
        snapshot_bytes: snapshot.len(),
        written_to: String::new(),
    };
    let mut places = Vec::new();
    if let Some(cm) = &args.configmap {
        let target = configmap::Target::parse(cm)?;
        if snapshot.len() > configmap::MAX_BYTES {
            return Err(TrainError::ConfigMap(format!(
                "{cm}: the snapshot is {} bytes, over the {} a ConfigMap holds; {}",
                snapshot.len(),
                configmap::MAX_BYTES,
                fitting_config(&cfg, &g)
            )));
        }
        configmap::write(&target, args.kubeconfig.as_deref(), &snapshot, &summary)?;
        places.push(format!("configmap {cm} (binaryData.{})", configmap::KEY));
    }
    if let Some(out) = &args.out {
        write_atomically(out, &snapshot)?;
        places.push(out.display().to_string());
    }
    summary.written_to = places.join(", ");
    Ok(summary)
}

/// Which smaller forest would make the snapshot fit a ConfigMap: found by training the same
/// spans again at lower heights (each height halves the trees).
fn fitting_config(cfg: &EngineConfig, g: &Gathered) -> String {
    let s = &cfg.sampler;
    for height in (1..s.height).rev() {
        let mut c = cfg.clone();
        c.sampler.height = height;
        let bytes = learn_sorted(c, g).snapshot().len();
        if bytes <= configmap::MAX_BYTES {
            return format!(
                "sampler.height {height} (n_trees {}) gives {bytes} bytes; or write it to a file \
                 (--out) on a volume",
                s.n_trees
            );
        }
    }
    "no height fits with these keys; write it to a file (--out) on a volume".into()
}

/// The summary as text.
pub fn render_text(s: &Summary) -> String {
    let span_times = if s.first_end_ns > 0 {
        format!(
            ", ending {} .. {}",
            format_time(s.first_end_ns),
            format_time(s.last_end_ns)
        )
    } else {
        String::new()
    };
    format!(
        "source    {}\nread      {} spans ({} duplicates, {} older than --max-spans, {} bad lines)\n\
         learned   {} spans of {} keys ({} skipped){span_times}\nsnapshot  {} bytes -> {}\n",
        s.source,
        s.spans_read,
        s.duplicates,
        s.dropped_old,
        s.bad_lines,
        s.spans_learned,
        s.keys,
        s.spans_skipped,
        s.snapshot_bytes,
        s.written_to
    )
}

/// RFC 3339 of a time in ns since the epoch.
pub fn format_time(ns: u64) -> String {
    jiff::Timestamp::from_nanosecond(ns as i128)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ns.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(service: &'a str, op: &'a str, start: u64, end: u64, id: u8) -> SpanRecord<'a> {
        SpanRecord {
            service,
            operation: op,
            timing: Timing::StartEnd {
                start_ns: start,
                end_ns: end,
            },
            trace_id: [id; 16],
            span_id: [id; 8],
            label: None,
            arrival_ns: None,
        }
    }

    const T0: u64 = 1_700_000_000_000_000_000;

    fn spans() -> Vec<(String, String, u64, u64, u8)> {
        let mut v = Vec::new();
        for i in 0..3000u64 {
            let d = 1_000_000 * (5 + (i * 7919) % 11);
            let s = T0 + i * 3_000_000;
            v.push((
                format!("svc{}", i % 3),
                format!("op{}", i % 5),
                s,
                s + d,
                (i % 251) as u8,
            ));
        }
        v
    }

    fn train(order: impl Iterator<Item = usize>, v: &[(String, String, u64, u64, u8)]) -> Vec<u8> {
        let mut g = Gathered::new(DEFAULT_MAX_SPANS);
        for i in order {
            let (s, o, a, b, id) = &v[i];
            let mut r = rec(s, o, *a, *b, *id);
            // Ids from 1: spans without ids are never taken for duplicates.
            r.span_id = (i as u64 + 1).to_le_bytes();
            g.push(&r);
        }
        learn(EngineConfig::default(), &mut g).unwrap().snapshot()
    }

    #[test]
    fn the_same_spans_in_any_order_with_duplicates_give_the_same_snapshot() {
        let v = spans();
        let a = train(0..v.len(), &v);
        let b = train((0..v.len()).rev(), &v);
        // Interleaved, with every tenth span given twice (overlapping pages).
        let c = train(
            (0..v.len())
                .map(|i| (i * 7) % v.len())
                .chain((0..v.len()).step_by(10)),
            &v,
        );
        assert!(a == b, "reversed input: another snapshot");
        assert!(
            a == c,
            "interleaved input with duplicates: another snapshot"
        );
        // And differs from a cold engine's.
        assert!(a != Engine::new(EngineConfig::default()).snapshot());
    }

    #[test]
    fn keeps_the_latest_max_spans_and_counts_what_it_dropped() {
        let v = spans();
        let mut g = Gathered::new(1000);
        for (i, (s, o, a, b, id)) in v.iter().enumerate().rev() {
            let mut r = rec(s, o, *a, *b, *id);
            r.span_id = (i as u64).to_le_bytes();
            g.push(&r);
            assert!(g.len() < 2000);
        }
        learn(EngineConfig::default(), &mut g).unwrap();
        assert_eq!(g.len(), 1000);
        assert_eq!(g.dropped_old, 2000);
        // The latest by end time.
        let mut ends: Vec<u64> = v.iter().map(|x| x.3).collect();
        ends.sort_unstable();
        assert_eq!(g.spans[0].end_ns, ends[2000]);
    }

    #[test]
    fn nothing_to_learn_and_mixed_inputs_are_errors() {
        let mut g = Gathered::new(10);
        assert!(matches!(
            learn(EngineConfig::default(), &mut g),
            Err(TrainError::Empty(_))
        ));
        let mut g = Gathered::new(10);
        g.push(&rec("a", "b", T0, T0 + 5, 1));
        g.push(&SpanRecord {
            timing: Timing::DurationMs(5.0),
            ..rec("a", "b", 0, 0, 2)
        });
        assert!(matches!(
            learn(EngineConfig::default(), &mut g),
            Err(TrainError::Options(_))
        ));
    }
}
