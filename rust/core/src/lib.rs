//! `scale-core`: the SCALE engine. Every span is featurized, scored by Half-Space-Trees (an
//! online anomaly detector), kept if anomalous, and counted by latency rules whose sliding
//! windows turn breaches into scaling decisions. No I/O, no async, no FFI: the C ABI
//! (`scale-ffi`), the daemon and `scale eval` all drive this crate.
//!
//! The pieces, in the order a span meets them:
//!
//! * [`features`]: timing validation (bad spans are counted and skipped, never a panic) and the
//!   two featurization modes, [`Mode::Paper`] (the source paper's, reproduced bit for bit against
//!   River) and [`Mode::Keyed`] (the default: each span against its own key's latency);
//! * [`keys`]: the bounded `service::operation` table;
//! * [`latency`]: per-key latency histograms and the contexts of keys and services;
//! * [`hst`]: Half-Space-Trees with River 0.26.1's semantics, flat and allocation-free;
//! * [`calibrate`]: the keep threshold, calibrated to the keep budget;
//! * [`rules`]: `Count(D > T, W) ≥ N` windows and [`Decision`]s;
//! * [`Engine`]: all of it, batch by batch, with snapshot/restore.
//!
//! Scores: **higher means more anomalous**, in `[0, 1]`; there is no score until the first
//! `window_size` spans have been learned ([`Engine::is_warm`]), and nothing is kept until the
//! keep threshold has enough scores behind it (about `10 / keep_budget` spans).
//!
//! # Example: score a batch
//!
//! ```
//! use scale_core::{BatchOutput, Engine, SpanKey, SpanRef, Timing};
//!
//! let mut engine = Engine::from_yaml("sampler: { window_size: 100, train_size: 500 }")?;
//! let checkout = engine.intern("checkout", "PlaceOrder");
//! let mut out = BatchOutput::default();
//! let spans: Vec<SpanRef> = (0..3_000)
//!     .map(|i| SpanRef {
//!         key: SpanKey::Id(checkout),
//!         timing: Timing::DurationMs(20.0 + (i * 7 % 10) as f64),
//!         trace_id: [0; 16],
//!         span_id: [0; 8],
//!     })
//!     .collect();
//! engine.process_batch(&spans, 0, &mut out);
//! assert!(engine.is_warm() && engine.keep_threshold().is_some());
//! let slow = SpanRef { timing: Timing::DurationMs(900.0), ..spans[0] };
//! engine.process_batch(&[slow], 0, &mut out);
//! assert!(out.verdicts[0].keep);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Detection: what is kept, what is learned, and why (`keyed` mode)
//!
//! The defaults are chosen by reasoning that does not depend on one system, and checked on
//! several (the paper's stream, real fault data from OnlineBoutique, the OpenTelemetry demo,
//! synthetic steady, regular and fault-free loads; BENCHMARKS.md has them side by side).
//!
//! * **A keep budget, not a score threshold.** A raw score threshold keeps very different shares
//!   of different traffic (the same `min_score` kept 1.4 % of one stream's ordinary spans and
//!   4.3 % and 9.5 % of others'). The operator sets `keep_budget` (1 %); the threshold is the
//!   `1 − keep_budget` quantile of recent scores ([`calibrate`]), so the keep rate of ordinary
//!   traffic is the budget on any system.
//! * **Features that mean the same everywhere.** A span's surprise is its *tail probability*
//!   under its own key's latency histogram ([`latency`]): by construction one ordinary span in a
//!   hundred is beyond the 1 % tail, on every key, whatever the shape of its latency. A histogram
//!   and not a mean and a deviation, because real latencies have several modes and heavy tails:
//!   on the fault data a per-key robust z-score ranks faulted spans far worse (F1 0.29 at 1 %
//!   false positives, with the true per-key scales) than the per-key tail probability (0.56).
//! * **Slower, not faster.** Latency anomalies that call for scaling are slow spans; a span
//!   faster than its key's median has no surprise (`keyed.sides: both` to judge both).
//! * **Context, for faults no single span shows.** A CPU-starved service makes every call a
//!   little slower; the mean position of a key's (and its service's) spans over the last
//!   `context_window` (5 s: a busy key shows a shift within a second and a fault lasts minutes,
//!   while load waves of a few seconds average out; 3 s let the demo's ordinary waves through,
//!   10 s answered more slowly on the fault data) shows it plainly. It is a feature only beyond three standard deviations of chance,
//!   so quiet keys (a few spans per window) never get one by luck.
//! * **Incidents are not ordinary traffic.** A key is in an incident when its recent spans as a
//!   whole are far slower than usual ([`features`]: a mean position above 0.8, or one span in ten
//!   beyond the 1 % tail, four standard deviations beyond chance). The thresholds are large on
//!   purpose: ordinary traffic has load waves (a route a few times slower for tens of seconds),
//!   and those must stay within the budget; a slowdown of 40–70 times that lasts (the demo's
//!   recording starts with one: frontend's calls to cartservice, failing in milliseconds until
//!   cartservice was up, then working in 200 ms) is an incident. And rare spans, one in a
//!   hundred of ordinary traffic by construction, in excess across the engine (over 1.5 % of
//!   the last ~4,000 scored spans) are an incident spread over keys.
//! * **No poisoning.** The spans of a key in an incident, the slow spans (slower than 90 % of
//!   their key) of a service in an incident, and rare spans while they are in excess, are not
//!   learned (one in [`INCIDENT_LEARN_EVERY`] is, so that a lasting change is absorbed, in about
//!   an hour at the default memory). A key with a span every few seconds never shows an
//!   incident of its own within `context_window`, while its service, all its operations
//!   together, does: without the service's view such a key learned the fault one slow span at a
//!   time (the demo's PlaceOrder). These spans also count little towards the keep
//!   threshold, so an incident is kept beyond the budget and does not raise the threshold its
//!   own spans are judged by. Everything else is learned, the slowest ordinary spans included:
//!   a model that did not learn its own tail would find that tail rarer every time it saw it,
//!   and keep more and more of the same traffic (which a replayed recording showed).
//! * **Memory by time, with a floor.** A key forgets with a time constant (`memory`, 10 min), not
//!   a span count: a three-minute fault on a key with thousands of spans a minute must not be all
//!   of what it remembers. A quiet key never forgets faster than one part in 256 per span: silence
//!   is not evidence, and a restart from a snapshot resumes what it knew.
//! * **Young keys are not judged.** A key is judged from its `min_key_count`th span, and until it
//!   has tens of spans its tail probabilities inside its range cannot go below `1 / (n + 1)`; past
//!   its slowest span they fall on a spread shrunk towards a factor of 1.65.
//!
//! * **The cause, not its callers.** A fault in one service slows its callers too, and scaling a
//!   caller does not help. For rules (`when: { incident: true }`), a service's incident is
//!   judged on its own work, its server and internal spans: a CPU-starved service is slower in
//!   what it does itself, while its client spans are mostly its callees' time and, a dozen a
//!   request, would dilute it (frontend's `cpu_consumed` on the fault data). And it is in an
//!   incident of its own only while no service it calls explains it. Calls come from the keys' names alone,
//!   so this holds on any system instrumented with the RPC conventions (a client span and its
//!   server span are both named `package.Service/Method`; a leading `/` or an instrumentation's
//!   prefix aside), and the direction from latency alone (a client span holds its server span,
//!   so the server's key of a call is the shortest). A callee counts as in an incident when
//!   its service is, or its own key of the call is (a busy caller can show an incident before a
//!   quieter callee as a whole does). A delay on the way into a callee (a network delay)
//!   slows its callers' client spans of the call and not the callee's own, so it is told from
//!   the caller's own slowness by the company it keeps: the same call is slow from another
//!   caller too, or, of the caller's calls, only those into that callee are slow; a CPU-starved
//!   caller is slow in every call it makes, and the other callers of its callees are not.
//!   Either explanation must also account for the time, in absolute terms: what the callee's
//!   side added (its recent spans' geometric mean over what it learned) must be at least half
//!   of what the caller's client spans of the call added. Only then is the callee the larger
//!   part of the delay; a CPU-starved caller whose calls take 90 ms more while its callees on
//!   the same node take 3 ms more is slow of its own, on any system, whatever the callees'
//!   incidents say. Which side serves a call is settled once both sides are established, since
//!   a long incident brings what they learn too close to tell.
//!   Anything broader (a callee merely slower than usual, or any slow call into a callee that
//!   is not) also silenced CPU-starved callers, whose callees look slower from a shared node.
//!   On the fault data the callee's incident cut the decisions for services that were not
//!   faulted from 690 to 136 (69 to 39 outside the cooldown), the delay on the way from 136 to
//!   63 (24 outside the cooldown), and kept every faulted service's.
//! * **Acting on an incident that lasts.** A rule's `for` (see [`rules`]) asks the spans it
//!   matched to have breached for that long, with no break over half of `context_window` (the
//!   incident verdict's own wobble near its bar). Scaling helps only once a new pod has started, so
//!   a slowdown over sooner (a garbage collection, a burst, a neighbour's moment on the node) is
//!   not worth acting on, and a fault that needs capacity lasts minutes: `for: 10s` in our
//!   rules, for any system, not fitted to one (BENCHMARKS.md has the whole range measured).
//!
//! Known limits: a caller whose calls are not named as RPCs (`GET`) is still decided for when
//! its callee is faulted; a network delay into the only callee of a caller that no other
//! service calls cannot be told from that caller's own slowness (that needs the spans' own
//! time, without their children's, which needs the trace's structure); and a stream with a
//! steady 5 % of isolated anomalies in every key (the paper's) is partly learned as ordinary.

//! # Cost
//!
//! Per span: one key look-up (hash of the names, or none with a cached id), a few floating-point
//! operations, and one walk of `height + 1` nodes in each of `n_trees` trees. Nothing allocates
//! per span except a new key's name. Memory is set by the configuration alone: trees
//! (`24 · n_trees · (2^(height+1) − 1)` bytes), keys (bounded by `keys.max_keys`, about 400 bytes
//! each with their latency histogram), the keep threshold's histogram (5 KB), and rule windows
//! (`8 · count` bytes per rule and, for rules named after the service, per service).

#![deny(missing_docs)]

pub mod calibrate;
pub mod config;
pub mod contract;
pub mod engine;
mod error;
pub mod features;
pub mod hst;
pub mod keys;
pub mod latency;
pub mod rng;
pub mod rules;

pub use config::{
    Action, ActionKind, EngineConfig, KeyedConfig, KeysConfig, Match, Mode, Rule, RulesFile,
    SamplerConfig, Target, VerticalConfig, VerticalFallback,
};
pub use engine::{
    BatchOutput, Engine, Explain, INCIDENT_LEARN_EVERY, SNAPSHOT_VERSION, SpanKey, SpanRef, Stats,
    Timing, Verdict,
};
pub use error::{ConfigError, ConfigProblem, Error, Result};
pub use features::SkipReason;
pub use keys::{KeyId, OVERFLOW};
pub use rules::{Decision, RuleReport};
