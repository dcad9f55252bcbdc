//! Evidence for scaling down: the collector's `scale.report` spans, kept per target.
//!
//! No decision does not mean healthy latency: it may mean that no collector is alive, that the
//! link to the daemon is down, or that the exporter's queue is stuck in the middle of an
//! incident. So the collector's `scale` processor reports, every `report_interval`, what each
//! rule's window saw (spans matched, breaches, their latency; [`scale_core::RuleReport`]), and
//! the daemon scales a target down only when those reports show, for the whole quiet period,
//! that its rules' latency was healthy ([`EvidenceStore::quiet`]):
//!
//! * reports for the target have been arriving without a gap longer than the *evidence
//!   timeout* (`--evidence-timeout`, default [`DEFAULT_EVIDENCE_TIMEOUT`], three default report
//!   intervals) since at least the start of the quiet period — after a gap, a full quiet period
//!   of reports is needed again;
//! * over the quiet period, each of the target's rules matched spans (no input is no evidence),
//!   and their breaches, summed over every collector that reported the rule, came slower than the
//!   rate at which the rule fires (`count` per `window`).
//!
//! Otherwise the planner holds the current scale ([`Quiet`] says why), and the daemon says so
//! (a metric, an Event, a log line once per episode). Reports from several collectors are
//! merged per rule by summing: each sees part of the traffic (a load-balancing tier in front
//! routes each service to one of them), and a collector that saw none of a rule's spans adds
//! nothing. Times are the daemon's receipt times, so collector clocks do not matter.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use scale_core::{Rule, RuleReport, Target};

/// Default `--evidence-timeout`: three of the collector's default report intervals (10 s).
pub const DEFAULT_EVIDENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most reports kept per target (older ones are dropped first; the quiet period's are needed).
pub const MAX_REPORTS_PER_TARGET: usize = 4096;

/// What the reports say about a target's quiet period.
#[derive(Debug, Clone, PartialEq)]
pub enum Quiet {
    /// Every rule of the target reported healthy latency for the whole period.
    Healthy {
        /// A summary for the Event: spans, breaches and the worst p90 reported.
        summary: String,
    },
    /// A rule's breaches came at the rate at which it fires: not calm.
    Unhealthy {
        /// Which rule and what it reported.
        summary: String,
    },
    /// Reports matched no spans in the period: no input is no evidence.
    NoTraffic,
    /// No report for longer than the evidence timeout, or reports came back less than a quiet
    /// period ago.
    Missing {
        /// Since the last report, if there ever was one.
        since_last: Option<Duration>,
    },
}

struct Entry {
    at: Instant,
    rule_index: usize,
    matched: u64,
    breaches: u64,
    p90_ms: Option<f64>,
}

#[derive(Default)]
struct TargetReports {
    entries: VecDeque<Entry>,
    /// Start of the current run of reports without a gap longer than the timeout.
    run_start: Option<Instant>,
    last: Option<Instant>,
}

/// Reports received, per target; shared by the intake (writes) and the planner loop (reads).
pub struct EvidenceStore {
    timeout: Duration,
    targets: Mutex<HashMap<Target, TargetReports>>,
}

impl EvidenceStore {
    /// A store that calls reports missing after `timeout` without one.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            targets: Mutex::new(HashMap::new()),
        }
    }

    /// The evidence timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Record a report of rule `rule_index` for `target`, received at `now`.
    pub fn record(&self, target: Target, rule_index: usize, r: &RuleReport, now: Instant) {
        let mut map = self.targets.lock();
        let t = map.entry(target).or_default();
        if t.last
            .is_none_or(|l| now.saturating_duration_since(l) > self.timeout)
        {
            t.run_start = Some(now);
        }
        t.last = Some(now);
        if t.entries.len() >= MAX_REPORTS_PER_TARGET {
            t.entries.pop_front();
        }
        t.entries.push_back(Entry {
            at: now,
            rule_index,
            matched: r.matched,
            breaches: r.breaches,
            p90_ms: r.p90_ms,
        });
    }

    /// What the reports say about `target` over the `period` before `now`, judged against
    /// `rules` (the daemon's; a report's rule index is into them).
    pub fn quiet(&self, target: &Target, rules: &[Rule], period: Duration, now: Instant) -> Quiet {
        let mut map = self.targets.lock();
        let Some(t) = map.get_mut(target) else {
            return Quiet::Missing { since_last: None };
        };
        let keep_from = now.checked_sub(period + self.timeout).unwrap_or(now);
        while t.entries.front().is_some_and(|e| e.at < keep_from) {
            t.entries.pop_front();
        }
        let since_last = t.last.map(|l| now.saturating_duration_since(l));
        if since_last.is_none_or(|s| s > self.timeout)
            || t.run_start
                .is_none_or(|s| now.saturating_duration_since(s) < period)
        {
            return Quiet::Missing { since_last };
        }
        let from = now.checked_sub(period).unwrap_or(now);
        // Per rule: spans, breaches, worst p90, merged over collectors and intervals.
        let mut per_rule: Vec<(usize, u64, u64, f64)> = Vec::new();
        for e in t.entries.iter().filter(|e| e.at > from) {
            let slot = match per_rule.iter_mut().find(|x| x.0 == e.rule_index) {
                Some(s) => s,
                None => {
                    per_rule.push((e.rule_index, 0, 0, f64::NAN));
                    per_rule.last_mut().unwrap()
                }
            };
            slot.1 += e.matched;
            slot.2 += e.breaches;
            if let Some(p) = e.p90_ms {
                slot.3 = if slot.3.is_nan() { p } else { slot.3.max(p) };
            }
        }
        if per_rule.iter().all(|r| r.1 == 0) {
            return Quiet::NoTraffic;
        }
        let period_ms = period.as_secs_f64() * 1e3;
        let mut summary = Vec::new();
        for &(i, matched, breaches, p90) in &per_rule {
            let Some(rule) = rules.get(i) else { continue };
            let p90 = if p90.is_nan() {
                String::new()
            } else {
                format!(", p90 {p90:.0} ms")
            };
            let text = format!("{}: {matched} spans, {breaches} breaches{p90}", rule.name);
            let firing = breaches as f64 * rule.window_ms >= f64::from(rule.count) * period_ms;
            if firing {
                return Quiet::Unhealthy { summary: text };
            }
            if matched > 0 {
                summary.push(text);
            }
        }
        Quiet::Healthy {
            summary: summary.join("; "),
        }
    }
}

/// The operator's sentence for a hold: why there is no scale-down.
pub fn describe(q: &Quiet) -> String {
    match q {
        Quiet::Healthy { summary } => format!("latency healthy ({summary})"),
        Quiet::Unhealthy { summary } => {
            format!("the collectors report latency breaches at the rule's rate ({summary})")
        }
        Quiet::NoTraffic => "the collectors report no spans for its rules".to_string(),
        Quiet::Missing { since_last: None } => {
            "no latency report from any collector yet (silence is not calm)".to_string()
        }
        Quiet::Missing {
            since_last: Some(d),
        } => format!(
            "no latency report from any collector for {} s, or not for a full quiet period since they resumed (silence is not calm)",
            d.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scale_core::RulesFile;

    const RULES: &str = "
rules:
  - name: r
    match: { service: a }
    when: { duration_above: 100ms }
    count: 5
    window: 30s
    action: { kind: horizontal, target: { kind: Deployment, name: a }, max: 4 }
";

    fn report(matched: u64, breaches: u64) -> RuleReport {
        RuleReport {
            rule_index: 0,
            rule: "r".into(),
            service: None,
            since_ns: 0,
            until_ns: 10_000_000_000,
            matched,
            breaches,
            in_window: 0,
            count: 5,
            window_ms: 30_000.0,
            threshold_ms: Some(100.0),
            p50_ms: Some(20.0),
            p90_ms: Some(40.0),
            p99_ms: Some(90.0),
            max_ms: Some(120.0),
        }
    }

    #[test]
    fn healthy_only_after_a_full_quiet_period_of_reports_and_never_on_silence() {
        let rules = RulesFile::from_yaml(RULES).unwrap().rules;
        let target = rules[0].action.target.clone();
        let s = EvidenceStore::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let period = Duration::from_secs(30);
        assert_eq!(
            s.quiet(&target, &rules, period, at(0)),
            Quiet::Missing { since_last: None }
        );
        for k in 0..=4 {
            s.record(target.clone(), 0, &report(100, 1), at(10 * k));
        }
        // Reports for 40 s, one breach per 10 s (the rule fires at 5 per 30 s): healthy.
        match s.quiet(&target, &rules, period, at(40)) {
            Quiet::Healthy { summary } => assert!(
                summary.contains("r: 300 spans, 3 breaches, p90 40 ms"),
                "{summary}"
            ),
            q => panic!("{q:?}"),
        }
        // Silence: missing once the timeout has passed, whatever came before.
        assert!(
            matches!(s.quiet(&target, &rules, period, at(75)), Quiet::Missing { since_last: Some(d) } if d == Duration::from_secs(35))
        );
        // Reports come back: not enough until a full quiet period of them.
        s.record(target.clone(), 0, &report(100, 0), at(80));
        s.record(target.clone(), 0, &report(100, 0), at(90));
        assert!(matches!(
            s.quiet(&target, &rules, period, at(100)),
            Quiet::Missing { .. }
        ));
        s.record(target.clone(), 0, &report(100, 0), at(100));
        s.record(target.clone(), 0, &report(100, 0), at(110));
        assert!(matches!(
            s.quiet(&target, &rules, period, at(110)),
            Quiet::Healthy { .. }
        ));
        // Breaches at the firing rate, from two collectors together: unhealthy.
        s.record(target.clone(), 0, &report(100, 3), at(115));
        s.record(target.clone(), 0, &report(100, 2), at(116));
        assert!(matches!(
            s.quiet(&target, &rules, period, at(120)),
            Quiet::Unhealthy { .. }
        ));
        // Reports with no spans: no evidence.
        for k in 0..4 {
            s.record(target.clone(), 0, &report(0, 0), at(150 + 10 * k));
        }
        assert_eq!(s.quiet(&target, &rules, period, at(180)), Quiet::NoTraffic);
    }
}
