//! `scale_stats`: the engine's counters.

use safer_ffi::prelude::*;
use scale_core::Stats;

/// Counters since the engine was created or restored (restoring keeps the snapshot's).
///
/// Plain data written by `scale_engine_stats` into the caller's struct.
#[derive_ReprC]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct scale_stats {
    /// Spans given to the engine.
    pub spans_seen: u64,
    /// Spans that got a score.
    pub spans_scored: u64,
    /// Spans kept (judged anomalous).
    pub spans_kept: u64,
    /// Spans skipped, indexed by `scale_skip` value minus 1 (zero timestamp, end before start,
    /// absurd timestamp, absurd duration, invalid duration, invalid key).
    pub spans_skipped: [u64; 6],
    /// Distinct keys held.
    pub keys: u64,
    /// Spans (and intern calls) that fell into the overflow key.
    pub keys_overflow: u64,
    /// Decisions emitted (after conflation), including any lost to truncation. Includes those
    /// of batches given in chunks (`scale_engine_process_chunk`), which snapshots do not carry.
    pub decisions: u64,
}

impl From<&Stats> for scale_stats {
    fn from(s: &Stats) -> Self {
        scale_stats {
            spans_seen: s.spans_seen,
            spans_scored: s.spans_scored,
            spans_kept: s.spans_kept,
            spans_skipped: s.spans_skipped,
            keys: s.keys,
            keys_overflow: s.keys_overflow,
            decisions: s.decisions,
        }
    }
}
