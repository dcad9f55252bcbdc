//! `scale_decision` and `scale_action`: what a latency rule reports when it fires.

use safer_ffi::prelude::*;
use scale_core::{ActionKind, Decision};

/// What a fired rule asks for. Has the ABI of `uint8_t`.
#[derive_ReprC]
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum scale_action {
    /// Change the replica count of the rule's target.
    Horizontal = 1,
    /// Change the cpu/memory of the target's pods.
    Vertical = 2,
}

/// One decision: a latency rule fired during a batch.
///
/// Plain data, written by `scale_engine_process*` into the caller's array; the caller owns it
/// and nothing in it points into the engine. Decisions of one batch that name the same target
/// are merged into the first (`conflated` counts the others).
#[derive_ReprC]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct scale_decision {
    /// Index of the rule in the configuration's `rules:` list (name: `scale_engine_rule_name`).
    pub rule_index: u32,
    /// Breaches counted in the window (the rule's `count`).
    pub count: u32,
    /// The rule's window, ms.
    pub window_ms: f64,
    /// The rule's duration threshold, ms; NaN if the rule has none.
    pub threshold_ms: f64,
    /// Duration of the span that completed the window, ms.
    pub observed_ms: f64,
    /// That span's anomaly score in [0, 1]; NaN if it had none.
    pub score: f64,
    /// `auto` rules: arrivals in the window over the usual rate; NaN otherwise.
    pub load_ratio: f64,
    /// When the rule fired: the batch's `now_ns`.
    pub time_ns: u64,
    /// Index, in its batch, of the span that completed the window.
    pub span_index: u32,
    /// Decisions for the same target in the same batch merged into this one.
    pub conflated: u32,
    /// Trace id of the span that completed the window (evidence).
    pub trace_id: [u8; 16],
    /// Span id of that span (evidence).
    pub span_id: [u8; 8],
    /// Horizontal or vertical (`auto` rules are resolved).
    pub action: scale_action,
}

impl From<&Decision> for scale_decision {
    fn from(d: &Decision) -> Self {
        scale_decision {
            rule_index: d.rule_index,
            count: d.count,
            window_ms: d.window_ms,
            threshold_ms: d.threshold_ms.unwrap_or(f64::NAN),
            observed_ms: d.observed_ms,
            score: d.score.unwrap_or(f64::NAN),
            load_ratio: d.load_ratio.unwrap_or(f64::NAN),
            time_ns: d.time_ns,
            span_index: d.span_index,
            conflated: d.conflated,
            trace_id: d.trace_id,
            span_id: d.span_id,
            action: match d.action {
                ActionKind::Horizontal => scale_action::Horizontal,
                // The engine resolves `auto`; if it ever did not, vertical is the safe choice.
                ActionKind::Vertical | ActionKind::Auto => scale_action::Vertical,
            },
        }
    }
}
