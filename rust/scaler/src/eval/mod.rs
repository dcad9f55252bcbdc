//! `scale eval`: run the engine over recorded spans and measure how well it keeps anomalies.
//!
//! # What happens
//!
//! 1. The engine configuration is read (`--config`, else the defaults) and the command-line
//!    overrides are applied to its fields; the engine is built with [`Engine::new`].
//! 2. Each file is read in order ([`input`]: CSV or OTLP JSON lines, plain or gzip) and its spans
//!    are fed to [`Engine::process_batch`] in batches of [`BATCH`], by key id ([`SpanKey::Id`],
//!    names interned just before the call, as the C ABI's callers cache ids), with one
//!    [`BatchOutput`] reused throughout. Batches run across file boundaries.
//! 3. **Timelines.** Spans with start and end times (OTLP, or CSV with `start_unix_nano`) reach the
//!    engine when they *end*, as they reach a collector: a reorder buffer holds each span until the
//!    input has moved past its end (exact for input ordered by start time, like the recorded fault
//!    data; a span that ends before spans already given is counted as `late` and goes in at once).
//!    A CSV with `arrival_unix_nano` says when each span reached the collector instead (an SDK or a
//!    replay sends a trace's spans together, after the request ends), and is read in that order;
//!    the engine still gets each span's own times. The data's clock is the latest arrival so far;
//!    CSV rows without times advance it by 1 ms each. A batch ends after [`BATCH`] spans or
//!    [`BATCH_SPAN_NS`] of the clock and is processed at the clock's value after its last span, so
//!    rule windows run on the data's own time.
//! 4. Skipped spans (bad timing; see [`scale_core::SkipReason`]) are counted by the engine and
//!    excluded from everything else. Of the rest, the first `train_size` are the training prefix
//!    (the engine learns them and keeps none — the same count the engine uses); all later
//!    spans are the **test stream**, over which the metrics are computed. Only labelled test
//!    spans count towards the metrics; with no labels at all they are omitted.
//! 5. Only the `process_batch` calls are timed (wall clock), not parsing or interning (River's
//!    timing in `scripts/river_bench.py` likewise excludes building its feature dicts).
//!
//! Outputs: a [`Report`] (printed as text or one JSON object by `main`), and optionally a
//! per-span scores CSV (`--scores`), SVG plots (`--plots`, see [`plot`]) and the paper's own
//! per-span results for comparison (`--compare-seed`, read by [`read_seed`]).
//!
//! Memory: one [`TestSpan`] (40 bytes) per test-stream span is kept for the AUC and the plots.

pub mod input;
pub mod metrics;
pub mod plot;
pub mod timeline;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{ValueEnum, value_parser};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use scale_core::config::limits;
use scale_core::{
    BatchOutput, ConfigError, Engine, EngineConfig, Mode, SkipReason, SpanKey, SpanRef, Timing,
};
use serde::Serialize;

use input::{InputError, SpanRecord};
use metrics::{Confusion, Metrics, roc_auc};

/// Spans per `process_batch` call.
pub const BATCH: usize = 1_024;
/// Show the progress bar once this many spans have been read (and stderr is a terminal).
pub const PROGRESS_AFTER_SPANS: u64 = 100_000;
/// A batch also ends once it spans this much of the data's clock (1 s), so that rule windows,
/// which see a batch's spans at the batch's time, are replayed to the second.
pub const BATCH_SPAN_NS: u64 = 1_000_000_000;

/// `--mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The paper's featurization.
    Paper,
    /// Per-key baselines (the engine default).
    Keyed,
}

/// Arguments of `scale eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Span files, read in order: CSV (`service,operation,duration_ms[,label]`) or OTLP JSON lines,
    /// optionally gzip-compressed.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Engine configuration (YAML); defaults otherwise. The options below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Start from this engine snapshot (`scale train`, or a collector's snapshot_path) instead
    /// of a fresh engine: every span is judged (no training). Its model settings must be the
    /// configuration's.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// Featurization mode.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Half-Space-Trees in the forest.
    #[arg(long, value_parser = value_parser!(u32).range(limits::N_TREES.0..=limits::N_TREES.1))]
    pub n_trees: Option<u32>,
    /// Tree height.
    #[arg(long, value_parser = value_parser!(u32).range(limits::HEIGHT.0..=limits::HEIGHT.1))]
    pub height: Option<u32>,
    /// Spans per mass window.
    #[arg(long, value_parser = value_parser!(u32).range(limits::WINDOW_SIZE.0..=limits::WINDOW_SIZE.1))]
    pub window_size: Option<u32>,
    /// Fraction of ordinary spans to keep (0-1, exclusive): the keep threshold is calibrated to it.
    #[arg(long, value_parser = parse_budget, conflicts_with = "min_score")]
    pub keep_budget: Option<f64>,
    /// A fixed keep threshold instead of the budget: keep a span iff its score is at least this (0-1).
    #[arg(long, value_parser = parse_unit)]
    pub min_score: Option<f64>,
    /// Durations are capped here (a duration, > 0, such as 50s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub max_duration: Option<f64>,
    /// Spans only learned before any keep decision; metrics start after them.
    #[arg(long)]
    pub train_size: Option<u64>,
    /// Seed for tree construction.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The paper's per-span results (`operation,duration_ms,seed_score,seed_sampled,label`, may be
    /// gzip) to compare against.
    #[arg(long, value_name = "FILE")]
    pub compare_seed: Option<PathBuf>,
    /// Write the test stream's
    /// `index,score,keep,label,learned,arrival_unix_nano,service,operation,incident,judged_unix_nano`
    /// here (CSV; `incident`: with rules, the span's service was in an incident of its own;
    /// `judged_unix_nano`: the engine's clock when it judged the span's batch, which rule
    /// windows see).
    #[arg(long, value_name = "FILE")]
    pub scores: Option<PathBuf>,
    /// Write scores.svg, confusion.svg and durations.svg (and timeline.svg for a timeline) into
    /// this directory.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Fault windows (CSV `fault_id,service,fault_type,start_unix_nano,end_unix_nano`): report
    /// keep rates before, during and after them, and each fault's recall.
    #[arg(long, value_name = "FILE")]
    pub faults: Option<PathBuf>,
    /// A rules file: replay its windows on the data's clock and report every decision (with
    /// --faults: per fault, and the false ones). Rules may also be given in --config.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Timeline buckets for the keep rate over time.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration_ns)]
    pub bucket: u64,
    /// How long after a fault window spans count as "after" it.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration_ns)]
    pub after: u64,
    /// A decision for a service counts for its fault up to this long after the window.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration_ns)]
    pub grace: u64,
    /// A fault is decided "in time" when its first decision comes within this of the onset.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration_ns)]
    pub within: u64,
}

/// A positive duration in the one grammar ([`scale_core::config::parse_duration_ms`]), in ms.
fn parse_duration_ms(s: &str) -> Result<f64, String> {
    match scale_core::config::parse_duration_ms(s)? {
        ms if ms > 0.0 && ms.is_finite() => Ok(ms),
        ms => Err(format!("must be a positive duration, got {ms} ms")),
    }
}

/// [`parse_duration_ms`], in ns.
fn parse_duration_ns(s: &str) -> Result<u64, String> {
    parse_duration_ms(s).map(|ms| (ms * 1e6) as u64)
}

fn parse_unit(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("must be a number between 0 and 1, got {s:?}")),
    }
}

fn parse_budget(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!(
            "must be a number between 0 and 1 (exclusive), got {s:?}"
        )),
    }
}

/// Errors that stop an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A span file could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The configuration file could not be read.
    #[error("{path}: cannot read: {source}")]
    ReadConfig {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The configuration file is invalid.
    #[error("{path}: {source}")]
    Config {
        /// The file.
        path: String,
        /// Every problem.
        source: ConfigError,
    },
    /// The options do not make a usable configuration.
    #[error("{0}")]
    Options(String),
    /// The faults file is unusable.
    #[error("--faults {path}: {message}")]
    Faults {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The rules file could not be read.
    #[error("--rules {path}: {message}")]
    Rules {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The snapshot cannot be used.
    #[error("--snapshot {path}: {message}")]
    Snapshot {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The seed results file is unusable.
    #[error("--compare-seed {path}: {message}")]
    Seed {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An output could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

/// One span of the test stream, as the metrics and plots need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestSpan {
    /// Position in the whole input (0-based, skipped spans included).
    pub index: u64,
    /// The engine's score.
    pub score: Option<f64>,
    /// The engine kept it.
    pub keep: bool,
    /// Ground truth.
    pub label: Option<bool>,
    /// Duration in ms (for the duration plot).
    pub duration_ms: f64,
    /// When it reached the engine on the data's clock (its end time for timed input), ns.
    pub arrival_ns: u64,
    /// Its key id in the engine (names from [`Engine::keys`]).
    pub key: scale_core::KeyId,
    /// With rules: its service was in an incident of its own (what `incident: true` counts).
    pub incident: bool,
    /// The engine's clock when it judged the span's batch (what rule windows see), ns.
    pub judged_ns: u64,
    /// The engine took it as ordinary and learned it.
    pub learned: bool,
}

/// The configuration the run used.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    /// `paper` or `keyed`.
    pub mode: &'static str,
    /// The sampler parameters (flattened into this object in JSON).
    #[serde(flatten)]
    pub sampler: scale_core::SamplerConfig,
    /// Key table bound.
    pub max_keys: u32,
    /// Rules configured.
    pub rules: usize,
}

/// Span counts.
#[derive(Debug, Clone, Serialize)]
pub struct SpanCounts {
    /// Spans given to the engine.
    pub total: u64,
    /// Training prefix (not skipped).
    pub training: u64,
    /// Test stream (not skipped).
    pub tested: u64,
    /// Test-stream spans with a label.
    pub labelled: u64,
    /// Spans the engine skipped.
    pub skipped: u64,
    /// Skipped spans by reason.
    pub skipped_by_reason: BTreeMap<&'static str, u64>,
    /// Input lines/rows that could not be used (not given to the engine).
    pub bad_input_lines: u64,
    /// Timed spans that arrived (ended, or at their `arrival_unix_nano`) before spans already
    /// processed (input not in order).
    pub late: u64,
}

/// Engine cost.
#[derive(Debug, Clone, Serialize)]
pub struct Performance {
    /// Wall time inside `process_batch`, seconds.
    pub engine_seconds: f64,
    /// Engine time per span, ns.
    pub ns_per_span: f64,
    /// Spans per second of engine time.
    pub spans_per_second: f64,
    /// `Engine::memory_bytes()` at the end.
    pub memory_bytes: usize,
}

/// Engine counters at the end.
#[derive(Debug, Clone, Serialize)]
pub struct EngineCounters {
    /// Distinct keys.
    pub keys: u64,
    /// Spans in the overflow key.
    pub keys_overflow: u64,
    /// Decisions emitted.
    pub decisions: u64,
    /// Spans scored.
    pub spans_scored: u64,
    /// Spans kept.
    pub spans_kept: u64,
}

/// The paper's own results, measured the same way.
#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    /// The file.
    pub file: String,
    /// Usable rows.
    pub rows: u64,
    /// Rows that could not be used.
    pub bad_lines: u64,
    /// Metrics of `seed_sampled` (and AUC of `seed_score`).
    #[serde(flatten)]
    pub metrics: Metrics,
}

/// Everything `scale eval` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `scale` version.
    pub version: &'static str,
    /// Inputs, in order.
    pub files: Vec<String>,
    /// Configuration used.
    pub config: ConfigReport,
    /// Span counts.
    pub spans: SpanCounts,
    /// Metrics over the labelled test stream (`null` without labels).
    pub metrics: Option<Metrics>,
    /// The paper's results (with `--compare-seed`).
    pub seed: Option<SeedReport>,
    /// Engine cost.
    pub performance: Performance,
    /// Engine counters.
    pub engine: EngineCounters,
    /// For a timeline (spans with times): keep rates over time and around faults, decisions.
    pub timeline: Option<timeline::TimelineReport>,
}

/// The configuration: `--config` (or defaults) with the overrides applied and checked.
pub fn build_config(args: &EvalArgs) -> Result<EngineConfig, EvalError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| EvalError::ReadConfig {
            path: p.display().to_string(),
            source,
        })
    };
    let engine_text = args.config.as_deref().map(read).transpose()?;
    let rules_text = args.rules.as_deref().map(read).transpose()?;
    let mut cfg =
        EngineConfig::from_parts(engine_text.as_deref().unwrap_or(""), rules_text.as_deref())
            .map_err(|source| EvalError::Config {
                path: [&args.config, &args.rules]
                    .iter()
                    .filter_map(|p| p.as_ref().map(|p| p.display().to_string()))
                    .collect::<Vec<_>>()
                    .join(" + "),
                source,
            })?;
    if let Some(m) = args.mode {
        cfg.mode = match m {
            ModeArg::Paper => Mode::Paper,
            ModeArg::Keyed => Mode::Keyed,
        };
    }
    let s = &mut cfg.sampler;
    s.n_trees = args.n_trees.unwrap_or(s.n_trees);
    s.height = args.height.unwrap_or(s.height);
    s.window_size = args.window_size.unwrap_or(s.window_size);
    if let Some(b) = args.keep_budget {
        s.keep_budget = b;
        s.min_score = None;
    }
    if args.min_score.is_some() {
        s.min_score = args.min_score;
    }
    s.max_duration_ms = args.max_duration.unwrap_or(s.max_duration_ms);
    s.train_size = args.train_size.unwrap_or(s.train_size);
    s.seed = args.seed.unwrap_or(s.seed);
    // The bound EngineConfig::from_yaml enforces.
    if let Some(mib) = limits::forest_too_large_mib(s.n_trees, s.height) {
        return Err(EvalError::Options(format!(
            "height {} with n_trees {} needs {mib} MiB of trees; lower --height or --n-trees",
            s.height, s.n_trees
        )));
    }
    Ok(cfg)
}

/// An owned span waiting in the batch or the reorder buffer.
#[derive(Debug, Default)]
struct Slot {
    service: String,
    operation: String,
    timing: Option<Timing>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    label: Option<bool>,
    /// When the span reaches the engine (its end, for a timeline), ns; 0 without one.
    arrival_ns: u64,
}

impl Slot {
    fn fill(&mut self, r: &SpanRecord<'_>) {
        self.service.clear();
        self.service.push_str(r.service);
        self.operation.clear();
        self.operation.push_str(r.operation);
        self.timing = Some(r.timing);
        self.trace_id = r.trace_id;
        self.span_id = r.span_id;
        self.label = r.label;
        self.arrival_ns = 0;
    }
}

/// A timed span in the reorder buffer, ordered by end time, then by input order.
#[derive(Debug)]
struct Pending {
    /// When the span reaches the engine: its arrival if the input gives one, else its end.
    arrive_ns: u64,
    seq: u64,
    slot: Slot,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.arrive_ns, self.seq) == (o.arrive_ns, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest arrival must come out first.
        (o.arrive_ns, o.seq).cmp(&(self.arrive_ns, self.seq))
    }
}

/// The progress bar: hidden until stderr is a terminal and the input proves long.
struct Progress {
    bar: ProgressBar,
    tty: bool,
    shown: bool,
    bytes: Rc<Cell<u64>>,
}

impl Progress {
    fn new(files: &[PathBuf]) -> Self {
        let sizes: Option<u64> = files
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
            })
            .sum();
        let tty = io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(sizes, ProgressDrawTarget::hidden());
        let template = if sizes.is_some() {
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} read, {msg}"
        } else {
            "{spinner} [{elapsed_precise}] {bytes} read, {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        let mut p = Self {
            bar,
            tty,
            shown: false,
            bytes: Rc::default(),
        };
        // Unknown length (a pipe or a device): show from the start.
        if sizes.is_none() {
            p.show();
        }
        p
    }

    fn show(&mut self) {
        if self.tty && !self.shown {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
    }

    fn update(&mut self, spans: u64) {
        if spans > PROGRESS_AFTER_SPANS {
            self.show();
        }
        if self.shown {
            self.bar.set_position(self.bytes.get());
            self.bar.set_message(format!("{spans} spans"));
        }
    }
}

/// The engine loop: puts timed spans in arrival order, batches spans, times the engine, splits
/// training from test.
struct Runner {
    engine: Engine,
    out: BatchOutput,
    slots: Vec<Slot>,
    len: usize,
    /// The data's clock: the latest arrival so far (ns).
    clock_ns: u64,
    /// The clock when the current batch began.
    batch_start_ns: u64,
    /// Timed spans not yet arrived, and the latest start (or arrival, for input that gives
    /// arrivals) read so far: a span whose end is at or before it has arrived, for every later
    /// span of a start-ordered input starts after it (of an arrival-ordered one, arrives).
    pending: std::collections::BinaryHeap<Pending>,
    frontier_ns: u64,
    seq: u64,
    /// Timed spans that ended before spans already given to the engine (input not ordered by
    /// start time): processed at the clock's time instead of their own.
    late: u64,
    /// Decisions so far, with the data's clock.
    decisions: Vec<timeline::DecisionRow>,
    /// When the daemon would last have acted, by target.
    acted: std::collections::HashMap<String, u64>,
    /// Whether any span had times.
    timed: bool,
    engine_time: Duration,
    fed: u64,
    unskipped: u64,
    train_size: u64,
    training: u64,
    test: Vec<TestSpan>,
    progress: Progress,
}

impl Runner {
    fn push(&mut self, r: &SpanRecord<'_>) {
        match r.timing {
            Timing::StartEnd { start_ns, end_ns } if start_ns > 0 && end_ns >= start_ns => {
                self.timed = true;
                let mut slot = Slot::default();
                slot.fill(r);
                self.seq += 1;
                let arrive_ns = r.arrival_ns.unwrap_or(end_ns);
                self.pending.push(Pending {
                    arrive_ns,
                    seq: self.seq,
                    slot,
                });
                self.frontier_ns = self.frontier_ns.max(r.arrival_ns.unwrap_or(start_ns));
                self.release(false);
            }
            // Untimed rows, and timing the engine will refuse, go in as read; CSV rows without
            // a time advance the clock by 1 ms each.
            timing => {
                if matches!(timing, Timing::DurationMs(_)) {
                    self.clock_ns = self.clock_ns.saturating_add(1_000_000);
                }
                let at = self.clock_ns;
                let s = self.next_slot();
                s.fill(r);
                s.arrival_ns = at;
                self.admit();
            }
        }
    }

    /// Give the engine every pending span that has arrived (all of them at the end).
    fn release(&mut self, all: bool) {
        while let Some(p) = self.pending.peek() {
            if !all && p.arrive_ns > self.frontier_ns {
                break;
            }
            let Pending {
                arrive_ns, slot, ..
            } = self.pending.pop().expect("peeked");
            if arrive_ns < self.clock_ns {
                self.late += 1;
            }
            self.clock_ns = self.clock_ns.max(arrive_ns);
            let at = self.clock_ns;
            let s = self.next_slot();
            *s = slot;
            s.arrival_ns = at;
            self.admit();
        }
    }

    fn next_slot(&mut self) -> &mut Slot {
        if self.len == self.slots.len() {
            self.slots.push(Slot::default());
        }
        &mut self.slots[self.len]
    }

    /// The slot at `len` is filled: count it, and run the batch when it is full or spans more
    /// than [`BATCH_SPAN_NS`] of the data's clock (rule windows see a batch's spans at one time).
    fn admit(&mut self) {
        if self.len == 0 {
            self.batch_start_ns = self.clock_ns;
        }
        self.len += 1;
        if self.len == BATCH || self.clock_ns.saturating_sub(self.batch_start_ns) >= BATCH_SPAN_NS {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        let batch = &self.slots[..self.len];
        let engine = &mut self.engine;
        let spans: Vec<SpanRef<'_>> = batch
            .iter()
            .map(|s| SpanRef {
                key: SpanKey::Id(engine.intern(&s.service, &s.operation)),
                timing: s.timing.unwrap_or(Timing::DurationMs(f64::NAN)),
                trace_id: s.trace_id,
                span_id: s.span_id,
            })
            .collect();
        let t = Instant::now();
        self.engine
            .process_batch(&spans, self.clock_ns, &mut self.out);
        self.engine_time += t.elapsed();
        for d in &self.out.decisions {
            let service = self.engine.keys().names(d.key).map_or("", |n| n.0);
            let target = self.engine.rules().target_of(d).to_string();
            let cooldown_ns = (self.engine.rules().rules()[d.rule_index as usize]
                .action
                .cooldown_ms
                * 1e6) as u64;
            let last = self.acted.get(&target).copied();
            let acted = last.is_none_or(|t| d.time_ns.saturating_sub(t) >= cooldown_ns);
            if acted {
                self.acted.insert(target.clone(), d.time_ns);
            }
            self.decisions.push(timeline::DecisionRow {
                time_ns: d.time_ns,
                rule: d.rule.clone(),
                service: service.to_string(),
                action: d.action.as_str(),
                target,
                acted,
                fault: None,
            });
        }
        for (i, ((v, s), r)) in self.out.verdicts.iter().zip(batch).zip(&spans).enumerate() {
            if v.skipped.is_some() {
                continue;
            }
            self.unskipped += 1;
            if self.unskipped <= self.train_size {
                self.training += 1;
                continue;
            }
            let duration_ms = match s.timing {
                Some(Timing::DurationMs(d)) => d,
                Some(Timing::StartEnd { start_ns, end_ns }) => {
                    scale_core::features::duration_ms(start_ns, end_ns).unwrap_or(f64::NAN)
                }
                None => f64::NAN,
            };
            let SpanKey::Id(key) = r.key else {
                unreachable!("spans are given by id")
            };
            self.test.push(TestSpan {
                index: self.fed + i as u64,
                score: v.score,
                keep: v.keep,
                label: s.label,
                duration_ms,
                arrival_ns: s.arrival_ns,
                key,
                learned: v.learned,
                incident: v.incident,
                judged_ns: self.clock_ns,
            });
        }
        self.fed += self.len as u64;
        self.len = 0;
        self.progress.update(self.fed);
    }
}

/// Confusion and AUC over the labelled spans of `spans`; `None` if none is labelled.
pub fn test_metrics(spans: &[TestSpan]) -> Option<Metrics> {
    let mut c = Confusion::default();
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for s in spans {
        if let Some(l) = s.label {
            c.add(s.keep, l);
            scores.push(s.score.unwrap_or(0.0));
            labels.push(l);
        }
    }
    (c.total() > 0).then(|| c.summary(roc_auc(&scores, &labels)))
}

/// Read the paper's per-span results: confusion of `seed_sampled` against `label`, AUC of
/// `seed_score` (a missing or unparsable score counts as 0.0). Rows with a missing or bad
/// `seed_sampled` or `label` are bad lines.
pub fn read_seed(path: &Path) -> Result<SeedReport, EvalError> {
    let name = path.display().to_string();
    let err = |message: String| EvalError::Seed {
        path: name.clone(),
        message,
    };
    let (mut reader, _, _) = input::open(path, Rc::default())?;
    let mut line = Vec::new();
    let mut cols: Option<(usize, usize, usize, usize)> = None;
    let (mut c, mut scores, mut labels, mut bad) =
        (Confusion::default(), Vec::new(), Vec::new(), 0u64);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = name, error = %e, "read error; the rest of the file is ignored");
                bad += 1;
                break;
            }
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            bad += 1;
            continue;
        };
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let Some((width, score_i, sampled_i, label_i)) = cols else {
            let fields = input::split_csv(text.trim_start_matches('\u{feff}')).unwrap_or_default();
            let find = |n: &str| fields.iter().position(|f| f.trim().eq_ignore_ascii_case(n));
            match (find("seed_score"), find("seed_sampled"), find("label")) {
                (Some(a), Some(b), Some(l)) => cols = Some((fields.len(), a, b, l)),
                _ => {
                    return Err(err(format!(
                        "header {text:?} needs columns seed_score, seed_sampled, label"
                    )));
                }
            }
            continue;
        };
        let Some(f) = input::split_csv(text).filter(|f| f.len() == width) else {
            bad += 1;
            continue;
        };
        let (Ok(Some(sampled)), Ok(Some(label))) = (
            input::parse_label(&f[sampled_i]),
            input::parse_label(&f[label_i]),
        ) else {
            bad += 1;
            continue;
        };
        c.add(sampled, label);
        scores.push(
            f[score_i]
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .unwrap_or(0.0),
        );
        labels.push(label);
    }
    if cols.is_none() {
        return Err(err("empty file".into()));
    }
    Ok(SeedReport {
        file: name,
        rows: c.total(),
        bad_lines: bad,
        metrics: c.summary(roc_auc(&scores, &labels)),
    })
}

/// A one-line description of the configuration, for titles.
fn describe(c: &ConfigReport) -> String {
    format!(
        "{} mode, n_trees {}, height {}, window_size {}, {}, train_size {}",
        c.mode,
        c.sampler.n_trees,
        c.sampler.height,
        c.sampler.window_size,
        match c.sampler.min_score {
            Some(t) => format!("min_score {t}"),
            None => format!("keep_budget {}", c.sampler.keep_budget),
        },
        c.sampler.train_size
    )
}

fn write_file(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<std::fs::File>) -> io::Result<()>,
) -> Result<(), EvalError> {
    let werr = |source| EvalError::Write {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::create(path).map_err(werr)?;
    let mut w = BufWriter::new(f);
    body(&mut w).and_then(|_| w.flush()).map_err(werr)
}

fn write_scores(
    path: &Path,
    spans: &[TestSpan],
    keys: &scale_core::keys::KeyTable,
) -> Result<(), EvalError> {
    write_file(path, |w| {
        writeln!(
            w,
            "index,score,keep,label,learned,arrival_unix_nano,service,operation,incident,judged_unix_nano"
        )?;
        for s in spans {
            let score = s.score.map(|v| v.to_string()).unwrap_or_default();
            let label = s.label.map(|l| if l { "1" } else { "0" }).unwrap_or("");
            let (svc, op) = keys.names(s.key).unwrap_or(("", ""));
            let q = |t: &str| {
                if t.contains([',', '"', '\n']) {
                    format!("\"{}\"", t.replace('"', "\"\""))
                } else {
                    t.to_string()
                }
            };
            writeln!(
                w,
                "{},{score},{},{label},{},{},{},{},{},{}",
                s.index,
                u8::from(s.keep),
                u8::from(s.learned),
                s.arrival_ns,
                q(svc),
                q(op),
                u8::from(s.incident),
                s.judged_ns
            )?;
        }
        Ok(())
    })
}

fn write_plots(
    dir: &Path,
    spans: &[TestSpan],
    metrics: Option<&Metrics>,
    cfg: &ConfigReport,
    threshold: &plot::Threshold,
) -> Result<(), EvalError> {
    std::fs::create_dir_all(dir).map_err(|source| EvalError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let d = describe(cfg);
    let svg =
        |name: &str, text: String| write_file(&dir.join(name), |w| w.write_all(text.as_bytes()));
    svg(
        "scores.svg",
        plot::scores_svg(
            spans,
            threshold,
            &format!("Anomaly scores of the test stream\n{d}"),
        ),
    )?;
    svg(
        "durations.svg",
        plot::durations_svg(spans, threshold, &format!("Score vs duration\n{d}")),
    )?;
    match metrics {
        Some(m) => svg(
            "confusion.svg",
            plot::confusion_svg(&m.confusion, &format!("Confusion matrix\n{d}")),
        )?,
        None => tracing::info!("no labels in the test stream: confusion.svg not written"),
    }
    Ok(())
}

/// Run the evaluation described by `args`; also writes the `--scores` and `--plots` outputs.
pub fn run(args: &EvalArgs) -> Result<Report, EvalError> {
    let cfg = build_config(args)?;
    let config = ConfigReport {
        mode: cfg.mode.as_str(),
        sampler: cfg.sampler,
        max_keys: cfg.keys.max_keys,
        rules: cfg.rules.len(),
    };
    // Fail on an unusable seed or faults file before the long run.
    let seed = args.compare_seed.as_deref().map(read_seed).transpose()?;
    let faults = args
        .faults
        .as_deref()
        .map(timeline::read_faults)
        .transpose()?
        .unwrap_or_default();
    // A snapshot (from `scale train` or a collector) is a trained engine: every span is judged.
    let (engine, train_size) = match &args.snapshot {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|source| EvalError::ReadConfig {
                path: p.display().to_string(),
                source,
            })?;
            let e = Engine::restore(cfg, &bytes).map_err(|e| EvalError::Snapshot {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            (e, 0)
        }
        None => (Engine::new(cfg), config.sampler.train_size),
    };
    let progress = Progress::new(&args.files);
    let bytes = progress.bytes.clone();
    let mut r = Runner {
        engine,
        out: BatchOutput::default(),
        slots: Vec::with_capacity(BATCH),
        len: 0,
        clock_ns: 0,
        batch_start_ns: 0,
        pending: Default::default(),
        frontier_ns: 0,
        seq: 0,
        late: 0,
        decisions: Vec::new(),
        acted: Default::default(),
        timed: false,
        engine_time: Duration::ZERO,
        fed: 0,
        unskipped: 0,
        train_size,
        training: 0,
        test: Vec::new(),
        progress,
    };
    let mut bad_lines = 0;
    for f in &args.files {
        let summary = input::read_file(f, bytes.clone(), |rec| r.push(rec))?;
        bad_lines += summary.bad_lines;
        tracing::info!(
            file = %f.display(),
            format = summary.format.map(|f| f.as_str()).unwrap_or("?"),
            gzip = summary.gzip,
            spans = summary.spans,
            bad_lines = summary.bad_lines,
            "read"
        );
    }
    r.release(true);
    r.flush();
    r.progress.bar.finish_and_clear();
    if bad_lines > 0 {
        tracing::warn!(bad_lines, "input lines could not be used");
    }

    let stats = r.engine.stats();
    let metrics = test_metrics(&r.test);
    if let (Some(sd), Some(m)) = (&seed, &metrics)
        && sd.rows != m.confusion.total()
    {
        tracing::warn!(
            seed_rows = sd.rows,
            tested = m.confusion.total(),
            "the seed results and our test stream differ in length"
        );
    }
    if let Some(p) = &args.scores {
        write_scores(p, &r.test, r.engine.keys())?;
    }
    let timeline = (r.timed || !faults.is_empty()).then(|| {
        let has_rules = !r.engine.rules().rules().is_empty();
        let keys = r.engine.keys();
        timeline::report(
            &r.test,
            &faults,
            has_rules.then(|| std::mem::take(&mut r.decisions)),
            |k| keys.names(k).map_or("", |n| n.0),
            timeline::Options {
                bucket_ns: args.bucket,
                after_ns: args.after,
                grace_ns: args.grace,
                within_ns: args.within,
                for_break_ns: (r.engine.rules().for_break_ms() * 1e6) as u64,
            },
        )
    });
    if let (Some(dir), Some(t)) = (&args.plots, &timeline) {
        std::fs::create_dir_all(dir).map_err(|source| EvalError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let title = format!(
            "Keep rate over time ({}-s buckets)\n{}",
            t.bucket_s,
            describe(&config)
        );
        let path = dir.join("timeline.svg");
        write_file(&path, |w| {
            w.write_all(plot::timeline_svg(t, &title).as_bytes())
        })?;
    }
    if let Some(dir) = &args.plots {
        let threshold = match (config.sampler.min_score, r.engine.keep_threshold()) {
            (Some(t), _) => plot::Threshold {
                score: t,
                name: "min_score",
            },
            (None, t) => plot::Threshold {
                score: t.unwrap_or(1.0),
                name: "calibrated threshold at the end",
            },
        };
        write_plots(dir, &r.test, metrics.as_ref(), &config, &threshold)?;
    }
    let secs = r.engine_time.as_secs_f64();
    Ok(Report {
        version: env!("CARGO_PKG_VERSION"),
        files: args.files.iter().map(|f| f.display().to_string()).collect(),
        config,
        spans: SpanCounts {
            total: r.fed,
            training: r.training,
            tested: r.test.len() as u64,
            labelled: r.test.iter().filter(|t| t.label.is_some()).count() as u64,
            skipped: stats.spans_skipped.iter().sum(),
            skipped_by_reason: SkipReason::ALL
                .iter()
                .map(|&k| (k.as_str(), stats.spans_skipped[k as usize]))
                .collect(),
            bad_input_lines: bad_lines,
            late: r.late,
        },
        metrics,
        seed,
        performance: Performance {
            engine_seconds: secs,
            ns_per_span: if r.fed == 0 {
                0.0
            } else {
                secs * 1e9 / r.fed as f64
            },
            spans_per_second: if secs > 0.0 { r.fed as f64 / secs } else { 0.0 },
            memory_bytes: r.engine.memory_bytes(),
        },
        engine: EngineCounters {
            keys: stats.keys,
            keys_overflow: stats.keys_overflow,
            decisions: stats.decisions,
            spans_scored: stats.spans_scored,
            spans_kept: stats.spans_kept,
        },
        timeline,
    })
}

fn pct(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

fn render_timeline(o: &mut String, t: &timeline::TimelineReport) {
    let _ = writeln!(
        o,
        "{:<10}{:>12}{:>10}{:>14}{:>10}{:>12}{:>10}",
        "phase", "normal", "kept", "unaffected", "kept", "labelled", "kept"
    );
    for (name, r) in &t.phases {
        let _ = writeln!(
            o,
            "{name:<10}{:>12}{:>10}{:>14}{:>10}{:>12}{:>10}",
            r.normal,
            pct(r.normal_rate()),
            r.unaffected,
            pct(r.unaffected_rate()),
            r.labelled,
            pct(r.labelled_rate())
        );
    }
    let _ = writeln!(
        o,
        "(by the time spans reach the engine: during a fault window, within {} s after one, or \
         before; \"unaffected\": services no fault names)",
        t.after_s
    );
    if !t.faults.is_empty() {
        o.push('\n');
        let _ = write!(
            o,
            "{:<20} {:<24} {:<16} {:>9} {:>8} {:>11}",
            "fault", "service", "type", "labelled", "recall", "first kept"
        );
        if t.rules.is_some() {
            let _ = write!(o, " {:>10} {:>14}", "decisions", "first decision");
        }
        o.push('\n');
        let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} s"));
        for f in &t.faults {
            let _ = write!(
                o,
                "{:<20} {:<24} {:<16} {:>9} {:>8} {:>11}",
                f.fault.id,
                f.fault.service,
                f.fault.fault_type,
                f.labelled,
                if f.labelled > 0 {
                    format!("{:.3}", f.recall)
                } else {
                    "-".into()
                },
                secs(f.first_kept_after_s)
            );
            if let Some(n) = f.decisions {
                let _ = write!(o, " {:>10} {:>14}", n, secs(f.first_decision_after_s));
            }
            o.push('\n');
        }
    }
    if let Some(rules) = &t.rules {
        o.push('\n');
        let _ = writeln!(
            o,
            "decisions {} in all ({} outside their rule's cooldown, which the daemon would act \
             on), {} false (for a service outside its fault windows + {} s; {} outside the \
             cooldown)",
            rules.decisions.len(),
            rules.acted,
            rules.false_decisions,
            rules.grace_s,
            rules.false_acted
        );
        for b in &rules.by_type {
            let _ = writeln!(
                o,
                "  {:<16} {} faults, {} with labelled spans: {} decided within {} s, {} at all",
                b.fault_type,
                b.faults,
                b.with_labelled_spans,
                b.decided_in_time,
                rules.within_s,
                b.decided
            );
        }
    }
    o.push('\n');
}

/// The report as a human-readable table.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let c = &r.config;
    let _ = writeln!(
        o,
        "config    {}, max_duration {} ms, seed {}, max_keys {}, {} rule{}",
        describe(c),
        c.sampler.max_duration_ms,
        c.sampler.seed,
        c.max_keys,
        c.rules,
        if c.rules == 1 { "" } else { "s" }
    );
    let _ = writeln!(o, "files     {}", r.files.join(" "));
    let s = &r.spans;
    let _ = writeln!(
        o,
        "spans     {} total: {} training, {} tested ({} labelled), {} skipped, {} bad input lines",
        s.total, s.training, s.tested, s.labelled, s.skipped, s.bad_input_lines
    );
    if s.skipped > 0 {
        let reasons: Vec<_> = s
            .skipped_by_reason
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(o, "skipped   {}", reasons.join(", "));
    }
    o.push('\n');
    let seed = r.seed.as_ref().map(|s| &s.metrics);
    if r.metrics.is_none() && seed.is_none() {
        let _ = writeln!(o, "metrics   none: the test stream has no labels");
    } else {
        let cols: Vec<Option<&Metrics>> = if seed.is_some() {
            vec![r.metrics.as_ref(), seed]
        } else {
            vec![r.metrics.as_ref()]
        };
        let _ = write!(o, "{:<12}", "metric");
        for name in ["scale", "seed"].iter().take(cols.len()) {
            let _ = write!(o, "{name:>12}");
        }
        o.push('\n');
        type Cell = fn(&Metrics) -> String;
        let rows: [(&str, Cell); 9] = [
            ("TP", |m| m.confusion.tp.to_string()),
            ("FP", |m| m.confusion.fp.to_string()),
            ("FN", |m| m.confusion.fn_.to_string()),
            ("TN", |m| m.confusion.tn.to_string()),
            ("precision", |m| format!("{:.4}", m.precision)),
            ("recall", |m| format!("{:.4}", m.recall)),
            ("F1", |m| format!("{:.4}", m.f1)),
            ("FPR", |m| format!("{:.2} %", 100.0 * m.fpr)),
            ("ROC AUC", |m| {
                m.roc_auc
                    .map(|a| format!("{a:.4}"))
                    .unwrap_or_else(|| "-".into())
            }),
        ];
        for (name, cell) in rows {
            let _ = write!(o, "{name:<12}");
            for m in &cols {
                let _ = write!(o, "{:>12}", m.map(cell).unwrap_or_else(|| "-".into()));
            }
            o.push('\n');
        }
        if r.metrics.is_none() {
            let _ = writeln!(o, "(scale: the test stream has no labels)");
        }
        if let Some(sd) = &r.seed {
            let _ = writeln!(
                o,
                "(seed: {} rows, {} bad, from {})",
                sd.rows, sd.bad_lines, sd.file
            );
        }
    }
    o.push('\n');
    if let Some(t) = &r.timeline {
        render_timeline(&mut o, t);
    }
    let p = &r.performance;
    let e = &r.engine;
    let _ = writeln!(
        o,
        "engine    {:.1} ns/span, {:.2} M spans/s ({:.3} s in process_batch), memory {:.2} MiB",
        p.ns_per_span,
        p.spans_per_second / 1e6,
        p.engine_seconds,
        p.memory_bytes as f64 / (1 << 20) as f64
    );
    let _ = writeln!(
        o,
        "counters  {} keys ({} overflow), {} scored, {} kept, {} decisions",
        e.keys, e.keys_overflow, e.spans_scored, e.spans_kept, e.decisions
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        eval: EvalArgs,
    }

    fn args(a: &[&str]) -> EvalArgs {
        Cli::try_parse_from(std::iter::once("eval").chain(a.iter().copied()))
            .unwrap()
            .eval
    }

    #[test]
    fn overrides_apply_to_the_config() {
        let a = args(&[
            "--mode",
            "paper",
            "--n-trees",
            "16",
            "--height",
            "8",
            "--window-size",
            "175",
            "--min-score",
            "0.6",
            "--train-size",
            "5",
            "--seed",
            "3",
            "--max-duration",
            "100ms",
            "x.csv",
        ]);
        let c = build_config(&a).unwrap();
        assert_eq!(c.mode, Mode::Paper);
        let s = c.sampler;
        assert_eq!(
            (
                s.n_trees,
                s.height,
                s.window_size,
                s.min_score,
                s.train_size,
                s.seed,
                s.max_duration_ms
            ),
            (16, 8, 175, Some(0.6), 5, 3, 100.0)
        );
        assert!(Cli::try_parse_from(["eval", "--min-score", "1.5", "x"]).is_err());
        assert!(Cli::try_parse_from(["eval", "--n-trees", "0", "x"]).is_err());
        assert!(Cli::try_parse_from(["eval"]).is_err(), "a file is required");
        let huge = args(&["--height", "20", "--n-trees", "1000", "x"]);
        assert!(matches!(build_config(&huge), Err(EvalError::Options(_))));
    }

    fn temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scale-eval-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn run_splits_training_skips_and_reports() {
        let mut csv = String::from("service,operation,duration_ms,label\n");
        for i in 0..3000 {
            let anomalous = i >= 2000 && i % 50 == 0;
            let d = if anomalous {
                400.0
            } else {
                10.0 + (i % 7) as f64
            };
            csv.push_str(&format!("s,op{},{d},{}\n", i % 3, u8::from(anomalous)));
        }
        csv.push_str("s,op0,NaN,0\ns,op0\n");
        let p = temp("run.csv", &csv);
        let a = args(&[
            "--train-size",
            "1000",
            "--window-size",
            "100",
            p.to_str().unwrap(),
        ]);
        let r = run(&a).unwrap();
        assert_eq!(
            (
                r.spans.total,
                r.spans.training,
                r.spans.tested,
                r.spans.skipped,
                r.spans.bad_input_lines
            ),
            (3001, 1000, 2000, 1, 1)
        );
        assert_eq!(r.spans.skipped_by_reason["invalid_duration"], 1);
        let m = r.metrics.unwrap();
        assert_eq!(m.confusion.total(), 2000);
        assert_eq!(m.confusion.tp + m.confusion.fn_, 20);
        assert!(m.recall > 0.9, "{m:?}");
        assert!(m.roc_auc.unwrap() > 0.9, "{m:?}");
        let text = render_text(&r);
        assert!(
            text.contains("ROC AUC") && text.contains("invalid_duration 1"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["metrics"]["tp"], m.confusion.tp);
        assert_eq!(json["config"]["mode"], "keyed");
    }

    #[test]
    fn spans_arrive_at_their_arrival_when_the_input_gives_one() {
        // A trace sent whole when its request ends (60 ms): its child ended at 6 ms, its root at
        // 60 ms; they arrive together, in input order, not by end. Then a span alone.
        const T: u64 = 1_700_000_000_000_000_000;
        let ms = |m: u64| T + m * 1_000_000;
        let csv = format!(
            "start_unix_nano,arrival_unix_nano,service,operation,duration_ms\n\
             {},{},s,root,60\n{},{},s,child,1\n{},{},s,alone,1\n{},x,s,bad,1\n",
            ms(0),
            ms(60),
            ms(5),
            ms(60),
            ms(70),
            ms(71),
            ms(80),
        );
        let p = temp("arrival.csv", &csv);
        let scores = p.with_extension("scores.csv");
        let a = args(&[
            "--train-size",
            "0",
            "--scores",
            scores.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
        let r = run(&a).unwrap();
        assert_eq!(
            (r.spans.total, r.spans.late, r.spans.bad_input_lines),
            (3, 0, 1)
        );
        let text = std::fs::read_to_string(&scores).unwrap();
        let rows: Vec<(String, u64)> = text
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[7].to_string(), f[5].parse().unwrap())
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("root".to_string(), ms(60)),
                ("child".to_string(), ms(60)),
                ("alone".to_string(), ms(71)),
            ]
        );
    }

    #[test]
    fn seed_file_metrics() {
        let p = temp(
            "seed.csv",
            "operation,duration_ms,seed_score,seed_sampled,label\na,1,0.9,1,1\nb,1,0.2,0,0\nc,1,0.7,1,0\nd,1,,0,0\ne,1,0.1,x,0\n",
        );
        let s = read_seed(&p).unwrap();
        assert_eq!((s.rows, s.bad_lines), (4, 1));
        assert_eq!(
            s.metrics.confusion,
            Confusion {
                tp: 1,
                fp: 1,
                fn_: 0,
                tn: 2
            }
        );
        assert_eq!(s.metrics.roc_auc, Some(1.0));
        assert!(read_seed(&temp("notseed.csv", "a,b\n1,2\n")).is_err());
    }
}
