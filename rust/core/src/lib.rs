//! `scale-core`: the SCALE engine. Every span is featurized, scored by Half-Space-Trees (an
//! online anomaly detector), kept if anomalous, and counted by latency rules whose sliding
//! windows turn breaches into scaling decisions. No I/O, no async, no FFI: the C ABI
//! (`scale-ffi`), the daemon and `scale eval` all drive this crate.
//!
//! The pieces, in the order a span meets them:
//!
//! * [`features`]: timing validation (bad spans are counted and skipped, never a panic) and the
//!   two featurization modes, [`Mode::Paper`] (the source paper's, reproduced bit for bit against
//!   River) and [`Mode::Keyed`] (the default: each span against its own key's baseline);
//! * [`keys`]: the bounded `service::operation` table;
//! * [`hst`]: Half-Space-Trees with River 0.26.1's semantics, flat and allocation-free;
//! * [`rules`]: `Count(D > T, W) ≥ N` windows and [`Decision`]s;
//! * [`Engine`]: all of it, batch by batch, with snapshot/restore.
//!
//! Scores: **higher means more anomalous**, in `[0, 1]`; there is no score until the first
//! `window_size` spans have been learned ([`Engine::is_warm`]).
//!
//! # Example: score a batch
//!
//! ```
//! use scale_core::{BatchOutput, Engine, SpanKey, SpanRef, Timing};
//!
//! let mut engine = Engine::from_yaml("sampler: { window_size: 100, train_size: 500 }")?;
//! let checkout = engine.intern("checkout", "PlaceOrder");
//! let mut out = BatchOutput::default();
//! let spans: Vec<SpanRef> = (0..1_000)
//!     .map(|i| SpanRef {
//!         key: SpanKey::Id(checkout),
//!         timing: Timing::DurationMs(20.0 + (i % 10) as f64),
//!         trace_id: [0; 16],
//!         span_id: [0; 8],
//!     })
//!     .collect();
//! engine.process_batch(&spans, 0, &mut out);
//! assert!(engine.is_warm());
//! let slow = SpanRef { timing: Timing::DurationMs(900.0), ..spans[0] };
//! engine.process_batch(&[slow], 0, &mut out);
//! assert!(out.verdicts[0].keep);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Cost
//!
//! Per span: one key look-up (hash of the names, or none with a cached id), a few floating-point
//! operations, and one walk of `height + 1` nodes in each of `n_trees` trees. Nothing allocates
//! per span except a new key's name. Memory is set by the configuration alone: trees
//! (`24 · n_trees · (2^(height+1) − 1)` bytes), keys (bounded by `keys.max_keys`), and rule
//! windows (`8 · count` bytes per rule).

#![deny(missing_docs)]

pub mod calibrate;
pub mod config;
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
    SamplerConfig, Target,
};
pub use engine::{
    BatchOutput, Clock, Engine, Explain, SNAPSHOT_VERSION, SpanKey, SpanRef, Stats, SystemClock, Timing,
    Verdict,
};
pub use error::{ConfigError, ConfigProblem, Error, Result};
pub use features::SkipReason;
pub use keys::{KeyId, OVERFLOW};
pub use rules::Decision;
