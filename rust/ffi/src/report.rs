//! `scale_rule_report`: what a rule's window saw over one reporting interval
//! (`scale_engine_rule_reports`), the evidence the daemon scales down on.

use safer_ffi::prelude::*;
use scale_core::RuleReport;

/// One window's evidence over one reporting interval.
///
/// Plain data, written by `scale_engine_rule_reports` into the caller's array; the service name
/// (for a rule whose target is named after the service) is in the caller's names buffer at
/// `service_offset`, `service_len` bytes of UTF-8 (`service_len` 0: a rule with a fixed target).
#[derive_ReprC]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct scale_rule_report {
    /// Index of the rule in the configuration's `rules:` list (name: `scale_engine_rule_name`).
    pub rule_index: u32,
    /// The rule's `count`.
    pub count: u32,
    /// Breaches inside the rule's window at `until_ns`.
    pub in_window: u32,
    /// Offset of the service's name in the names buffer.
    pub service_offset: u32,
    /// Length of the service's name; 0 for a rule with a fixed target.
    pub service_len: u32,
    /// Start of the interval (the engine's clock, ns).
    pub since_ns: u64,
    /// End of the interval: the call's `now_ns`.
    pub until_ns: u64,
    /// Spans the window matched in the interval.
    pub matched: u64,
    /// Of them, breaches (what the rule counts).
    pub breaches: u64,
    /// The rule's window, ms.
    pub window_ms: f64,
    /// The rule's duration threshold, ms; NaN if the rule has none.
    pub threshold_ms: f64,
    /// Median latency of the matched spans, ms (at most 25 % high); NaN if none matched.
    pub p50_ms: f64,
    /// 90th percentile, ms; NaN if none matched.
    pub p90_ms: f64,
    /// 99th percentile, ms; NaN if none matched.
    pub p99_ms: f64,
    /// The largest, ms; NaN if none matched.
    pub max_ms: f64,
}

impl scale_rule_report {
    /// The C view of `r`, its service's name at `service_offset`.
    pub(crate) fn new(r: &RuleReport, service_offset: u32) -> Self {
        let nan = |x: Option<f64>| x.unwrap_or(f64::NAN);
        scale_rule_report {
            rule_index: r.rule_index,
            count: r.count,
            in_window: r.in_window,
            service_offset,
            service_len: r.service.as_ref().map_or(0, |s| s.len() as u32),
            since_ns: r.since_ns,
            until_ns: r.until_ns,
            matched: r.matched,
            breaches: r.breaches,
            window_ms: r.window_ms,
            threshold_ms: nan(r.threshold_ms),
            p50_ms: nan(r.p50_ms),
            p90_ms: nan(r.p90_ms),
            p99_ms: nan(r.p99_ms),
            max_ms: nan(r.max_ms),
        }
    }
}
