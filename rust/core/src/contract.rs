//! The collector → daemon contract: the names the `scale` processor writes on spans and the
//! daemon reads, defined once, here.
//!
//! The daemon (`scale serve`) uses these constants directly. The C ABI exports each as a
//! `SCALE_<NAME>` string macro in `include/scale.h`, and the Go processor gets them as Go
//! constants (`collector-go/contract_gen.go`, CamelCase: `ATTR_RULE` → `AttrRule`); both files
//! are generated from [`NAMES`] by rust/ffi (`make header`), and its tests fail when either is
//! stale. Action labels are [`crate::ActionKind::as_str`]; skip reasons
//! [`crate::SkipReason::as_str`].
//!
//! A kept span carries [`ATTR_ANOMALY_SCORE`]. A span that completed a rule's window carries a
//! [`EVENT_DECISION`] event (its time: when the window completed) with the `ATTR_*` attributes
//! below. Every `report_interval` the processor also sends one [`SPAN_REPORT`] span per rule
//! window (start and end: the interval), scope [`SCOPE_REPORT`], resource attribute
//! [`RESOURCE_COLLECTOR`] naming the collector, with [`ATTR_RULE`], [`ATTR_SERVICE`],
//! [`ATTR_COUNT`], [`ATTR_WINDOW_MS`], [`ATTR_THRESHOLD_MS`] and the `ATTR_REPORT_*` attributes.

macro_rules! names {
    ($( $(#[doc = $doc:literal])+ $name:ident = $value:literal; )+) => {
        $( $(#[doc = $doc])+ pub const $name: &str = $value; )+

        /// Every name of the contract: `(identifier, value, documentation)`, in definition
        /// order; what the generated C and Go constants are made from.
        pub const NAMES: &[(&str, &str, &str)] = &[
            $( (stringify!($name), $value, concat!($($doc, "\n"),+)) ),+
        ];
    };
}

names! {
    /// Span attribute (double, 0–1): the anomaly score of a span the processor kept (with
    /// `drop: false`, of every span it scored).
    ATTR_ANOMALY_SCORE = "scale.anomaly.score";
    /// Span attribute (bool), with `drop: false` only: whether the processor judged the span
    /// anomalous (or a rule fired on it), i.e. would have kept it; on every span it scored.
    ATTR_ANOMALOUS = "scale.anomalous";
    /// Span event: a latency rule fired; the span is the breach that completed its window.
    EVENT_DECISION = "scale.decision";
    /// Decision and report attribute (string): the rule's name.
    ATTR_RULE = "scale.rule";
    /// Decision attribute (string): what the rule asks for, `horizontal` or `vertical`.
    ATTR_ACTION = "scale.action";
    /// Decision and report attribute (int): breaches counted in the window (a decision), or the
    /// rule's `count` (a report).
    ATTR_COUNT = "scale.count";
    /// Decision and report attribute (double): the rule's window, ms.
    ATTR_WINDOW_MS = "scale.window_ms";
    /// Decision and report attribute (double): the rule's duration threshold, ms (absent if
    /// the rule has none).
    ATTR_THRESHOLD_MS = "scale.threshold_ms";
    /// Decision attribute (double): the evidence span's duration, ms.
    ATTR_OBSERVED_MS = "scale.observed_ms";
    /// Decision attribute (double): the evidence span's score (absent if it has none).
    ATTR_SCORE = "scale.score";
    /// Decision attribute (double): an `auto` rule's arrival ratio (absent otherwise).
    ATTR_LOAD_RATIO = "scale.load_ratio";
    /// Decision attribute (int): decisions of the batch for the same target merged into this one.
    ATTR_CONFLATED = "scale.conflated";
    /// Span name of an evidence report; its start and end are the reporting interval.
    SPAN_REPORT = "scale.report";
    /// Instrumentation scope of evidence report spans.
    SCOPE_REPORT = "scale";
    /// Report attribute (string): the service, for a rule whose target is named after it
    /// (absent otherwise).
    ATTR_SERVICE = "scale.service";
    /// Report attribute (int): spans the rule's window matched in the interval.
    ATTR_REPORT_MATCHED = "scale.report.matched";
    /// Report attribute (int): of them, breaches.
    ATTR_REPORT_BREACHES = "scale.report.breaches";
    /// Report attribute (int): breaches inside the rule's window at the end of the interval.
    ATTR_REPORT_IN_WINDOW = "scale.report.in_window";
    /// Report attribute (double): median latency of the matched spans, ms (absent if none).
    ATTR_REPORT_P50_MS = "scale.report.p50_ms";
    /// Report attribute (double): 90th percentile latency of the matched spans, ms (absent if
    /// none).
    ATTR_REPORT_P90_MS = "scale.report.p90_ms";
    /// Report attribute (double): 99th percentile latency of the matched spans, ms (absent if
    /// none).
    ATTR_REPORT_P99_MS = "scale.report.p99_ms";
    /// Report attribute (double): the largest latency of the matched spans, ms (absent if none).
    ATTR_REPORT_MAX_MS = "scale.report.max_ms";
    /// Resource attribute of reports (string): the collector that sent them (its
    /// `service.instance.id`), so that the daemon can merge reports from several collectors.
    RESOURCE_COLLECTOR = "service.instance.id";
}

/// How often the processor reports each rule's evidence by default (`report_interval`), ms. The
/// daemon's default evidence timeout is three of these.
pub const DEFAULT_REPORT_INTERVAL_MS: u64 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_documented() {
        let mut seen = std::collections::HashSet::new();
        for (id, value, doc) in NAMES {
            assert!(seen.insert(*id), "{id} twice");
            assert!(!value.is_empty() && !doc.trim().is_empty(), "{id}");
        }
        let rule = NAMES.iter().find(|n| n.0 == "ATTR_RULE").expect("listed");
        assert_eq!(rule.1, ATTR_RULE);
    }
}
