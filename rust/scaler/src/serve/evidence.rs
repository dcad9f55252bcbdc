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
//! (a metric, an Event, a log line once per episode); `/evidence` on the metrics listener shows
//! every target's verdict and the reports behind it, per rule and collector ([`View`]). Reports from several collectors are
//! merged per rule by summing: each sees part of the traffic (a load-balancing tier in front
//! routes each service to one of them), and a collector that saw none of a rule's spans adds
//! nothing. A target's rules are all the rules that ever reported for it, so when the collector
//! that owns one of them dies while the others keep reporting, that rule matches nothing and the
//! target holds ([`Quiet::NoTraffic`]); and when a collector that reported spans of a rule falls
//! silent while others report, its part of the evidence is missing: the target holds until a
//! quiet period has passed since ([`Quiet::Lost`]; a restarted collector has a new
//! `service.instance.id` unless its configuration names one). Times are the daemon's receipt times, so collector clocks do not matter.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use scale_core::{Rule, RuleReport, Target};

/// Default `--evidence-timeout`: three of the collector's default report intervals.
pub const DEFAULT_EVIDENCE_TIMEOUT: Duration =
    Duration::from_millis(3 * scale_core::contract::DEFAULT_REPORT_INTERVAL_MS);

/// Most reports kept per target (older ones are dropped first; the quiet period's are needed).
pub const MAX_REPORTS_PER_TARGET: usize = 4096;

/// What the reports say about a target's quiet period.
#[derive(Debug, Clone, PartialEq)]
pub enum Quiet {
    /// Every rule of the target reported healthy latency for the whole period.
    Healthy {
        /// A summary for the Event: spans, collectors, breaches and the worst p90 reported.
        summary: String,
    },
    /// A rule's breaches came at the rate at which it fires: not calm.
    Unhealthy {
        /// Which rule and what it reported.
        summary: String,
    },
    /// A rule of the target matched no spans in the period (no input is no evidence): its
    /// service sent none, or the collector that owns it is gone while others still report.
    NoTraffic {
        /// The rule without spans.
        rule: String,
    },
    /// A collector that reported spans of one of the target's rules has sent no report for
    /// longer than the evidence timeout while others still report: its share of the evidence
    /// is gone, so the target holds until a quiet period has passed without it.
    Lost {
        /// The silent collector.
        collector: String,
        /// A rule it reported spans for.
        rule: String,
        /// Since its last report.
        silent: Duration,
    },
    /// No report for longer than the evidence timeout, or reports came back less than a quiet
    /// period ago.
    Missing {
        /// Since the last report, if there ever was one.
        since_last: Option<Duration>,
    },
}

impl Quiet {
    /// A short name for the verdict (`/evidence`).
    pub fn verdict(&self) -> &'static str {
        match self {
            Quiet::Healthy { .. } => "healthy",
            Quiet::Unhealthy { .. } => "unhealthy",
            Quiet::NoTraffic { .. } => "no_traffic",
            Quiet::Lost { .. } => "lost",
            Quiet::Missing { .. } => "missing",
        }
    }
}

/// A rule's reports for a target over a span of time ([`EvidenceStore::series`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Since the last report of any of the target's rules, if there ever was one.
    pub since_last: Option<Duration>,
    /// How far back the current run of reports (no gap longer than the evidence timeout)
    /// reaches; zero when reports are missing now.
    pub covered: Duration,
    /// The rule's reports, in the order received.
    pub points: Vec<Point>,
}

/// One report of a [`Series`].
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// When the daemon received it.
    pub at: Instant,
    /// Spans the rule matched in the report's interval.
    pub matched: u64,
    /// Breaches among them.
    pub breaches: u64,
    /// Their p90 latency, ms.
    pub p90_ms: Option<f64>,
}

/// One collector's part of a rule's evidence over a quiet period.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CollectorEvidence {
    /// The collector (the `service.instance.id` of its reports; empty when they had none).
    pub collector: String,
    /// Reports received from it in the period.
    pub reports: u64,
    /// Spans its reports matched.
    pub matched: u64,
    /// Breaches among them.
    pub breaches: u64,
}

/// A rule's evidence for a target over a quiet period, merged over collectors.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleEvidence {
    /// The rule's name.
    pub rule: String,
    /// Spans matched, summed over collectors and reports.
    pub matched: u64,
    /// Breaches among them.
    pub breaches: u64,
    /// The worst p90 reported, ms.
    pub p90_ms: Option<f64>,
    /// Whether the breaches came at the rate at which the rule fires.
    pub firing: bool,
    /// Every collector that reported the rule, whether or not it saw spans.
    pub collectors: Vec<CollectorEvidence>,
}

/// What the reports say about a target over a quiet period, and what they are.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The verdict the planner acts on.
    pub quiet: Quiet,
    /// Per rule of the target (every rule that ever reported for it), merged over collectors.
    pub rules: Vec<RuleEvidence>,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    rule_index: usize,
    collector: std::sync::Arc<str>,
    matched: u64,
    breaches: u64,
    p90_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct TargetReports {
    entries: VecDeque<Entry>,
    /// Every rule that has reported for the target: each must show healthy latency.
    rules: Vec<usize>,
    /// Start of the current run of reports without a gap longer than the timeout.
    run_start: Option<Instant>,
    last: Option<Instant>,
}

/// Reports received, per target; shared by the intake (writes) and the planner loop (reads).
#[derive(Debug)]
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

    /// Record a report of rule `rule_index` for `target` from `collector`, received at `now`.
    pub fn record(
        &self,
        target: Target,
        rule_index: usize,
        collector: &str,
        r: &RuleReport,
        now: Instant,
    ) {
        let mut map = self.targets.lock();
        let t = map.entry(target).or_default();
        if t.last
            .is_none_or(|l| now.saturating_duration_since(l) > self.timeout)
        {
            t.run_start = Some(now);
        }
        t.last = Some(now);
        if !t.rules.contains(&rule_index) {
            t.rules.push(rule_index);
        }
        if t.entries.len() >= MAX_REPORTS_PER_TARGET {
            t.entries.pop_front();
        }
        // One allocation per collector, not per report.
        let collector = t
            .entries
            .iter()
            .rev()
            .find(|e| &*e.collector == collector)
            .map(|e| e.collector.clone())
            .unwrap_or_else(|| collector.into());
        t.entries.push_back(Entry {
            at: now,
            rule_index,
            collector,
            matched: r.matched,
            breaches: r.breaches,
            p90_ms: r.p90_ms,
        });
    }

    /// What the reports say about `target` over the `period` before `now`, judged against
    /// `rules` (the daemon's; a report's rule index is into them).
    pub fn quiet(&self, target: &Target, rules: &[Rule], period: Duration, now: Instant) -> Quiet {
        self.view(target, rules, period, now).quiet
    }

    /// [`Self::quiet`] with the evidence behind it, per rule and collector.
    pub fn view(&self, target: &Target, rules: &[Rule], period: Duration, now: Instant) -> View {
        let mut map = self.targets.lock();
        let Some(t) = map.get_mut(target) else {
            return View {
                quiet: Quiet::Missing { since_last: None },
                rules: Vec::new(),
            };
        };
        let keep_from = now.checked_sub(period + self.timeout).unwrap_or(now);
        while t.entries.front().is_some_and(|e| e.at < keep_from) {
            t.entries.pop_front();
        }
        let from = now.checked_sub(period).unwrap_or(now);
        let period_ms = period.as_secs_f64() * 1e3;
        // Per rule: spans, breaches, worst p90, merged over collectors and intervals.
        let mut per_rule: Vec<RuleEvidence> = t
            .rules
            .iter()
            .filter_map(|&i| rules.get(i))
            .map(|r| RuleEvidence {
                rule: r.name.clone(),
                matched: 0,
                breaches: 0,
                p90_ms: None,
                firing: false,
                collectors: Vec::new(),
            })
            .collect();
        let known: Vec<usize> = t
            .rules
            .iter()
            .copied()
            .filter(|&i| i < rules.len())
            .collect();
        for e in t.entries.iter().filter(|e| e.at > from) {
            let Some(k) = known.iter().position(|&i| i == e.rule_index) else {
                continue;
            };
            let r = &mut per_rule[k];
            r.matched += e.matched;
            r.breaches += e.breaches;
            if let Some(p) = e.p90_ms {
                r.p90_ms = Some(r.p90_ms.map_or(p, |q| q.max(p)));
            }
            let c = match r
                .collectors
                .iter_mut()
                .find(|c| *c.collector == *e.collector)
            {
                Some(c) => c,
                None => {
                    r.collectors.push(CollectorEvidence {
                        collector: e.collector.to_string(),
                        reports: 0,
                        matched: 0,
                        breaches: 0,
                    });
                    r.collectors.last_mut().unwrap()
                }
            };
            c.reports += 1;
            c.matched += e.matched;
            c.breaches += e.breaches;
        }
        for (r, &i) in per_rule.iter_mut().zip(&known) {
            r.firing =
                r.breaches as f64 * rules[i].window_ms >= f64::from(rules[i].count) * period_ms;
            r.collectors.sort_by(|a, b| a.collector.cmp(&b.collector));
        }
        let since_last = t.last.map(|l| now.saturating_duration_since(l));
        let lost = || {
            // One pass: per collector (in the order first seen), its last report of any of the
            // target's rules and the first rule it reported spans for.
            let mut seen: Vec<(&str, Instant, Option<usize>)> = Vec::new();
            for e in &t.entries {
                let spans = (e.matched > 0).then_some(e.rule_index);
                match seen.iter_mut().find(|c| c.0 == &*e.collector) {
                    Some(c) => {
                        c.1 = e.at;
                        c.2 = c.2.or(spans);
                    }
                    None => seen.push((&e.collector, e.at, spans)),
                }
            }
            seen.into_iter().find_map(|(collector, last, rule)| {
                let silent = now.saturating_duration_since(last);
                (silent > self.timeout).then_some(())?;
                Some(Quiet::Lost {
                    collector: collector.to_string(),
                    rule: rules
                        .get(rule?)
                        .map_or_else(String::new, |r| r.name.clone()),
                    silent,
                })
            })
        };
        let quiet = if since_last.is_none_or(|s| s > self.timeout)
            || t.run_start
                .is_none_or(|s| now.saturating_duration_since(s) < period)
        {
            Quiet::Missing { since_last }
        } else if let Some(l) = lost() {
            l
        } else if let Some(r) = per_rule.iter().find(|r| r.firing) {
            Quiet::Unhealthy {
                summary: describe_rule(r),
            }
        } else if let Some(r) = per_rule.iter().find(|r| r.matched == 0) {
            Quiet::NoTraffic {
                rule: r.rule.clone(),
            }
        } else {
            Quiet::Healthy {
                summary: per_rule
                    .iter()
                    .map(describe_rule)
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        };
        View {
            quiet,
            rules: per_rule,
        }
    }

    /// Rule `rule_index`'s reports for `target` received after `now − span`, merged over
    /// collectors, oldest first, with how far back the current run of reports reaches (the
    /// KEDA external scaler reads these: [`crate::serve::keda`]). Does not drop entries.
    pub fn series(
        &self,
        target: &Target,
        rule_index: usize,
        span: Duration,
        now: Instant,
    ) -> Series {
        let map = self.targets.lock();
        let Some(t) = map.get(target) else {
            return Series::default();
        };
        let from = now.checked_sub(span);
        let alive = t
            .last
            .is_some_and(|l| now.saturating_duration_since(l) <= self.timeout);
        Series {
            since_last: t.last.map(|l| now.saturating_duration_since(l)),
            covered: match (alive, t.run_start) {
                (true, Some(s)) => now.saturating_duration_since(s),
                _ => Duration::ZERO,
            },
            points: t
                .entries
                .iter()
                .filter(|e| e.rule_index == rule_index && from.is_none_or(|f| e.at > f))
                .map(|e| Point {
                    at: e.at,
                    matched: e.matched,
                    breaches: e.breaches,
                    p90_ms: e.p90_ms,
                })
                .collect(),
        }
    }

    /// Every target with reports, with its [`View`] over its quiet period (the
    /// `scale_down_after` of the first rule that reported for it), for `/evidence`.
    pub fn views(&self, rules: &[Rule], now: Instant) -> Vec<(Target, View)> {
        let targets: Vec<(Target, Duration)> = self
            .targets
            .lock()
            .iter()
            .filter_map(|(t, r)| {
                let rule = rules.get(*r.rules.first()?)?;
                Some((
                    t.clone(),
                    Duration::from_secs_f64(rule.action.scale_down_after_ms / 1e3),
                ))
            })
            .collect();
        let mut out: Vec<(Target, View)> = targets
            .into_iter()
            .map(|(t, period)| {
                let v = self.view(&t, rules, period, now);
                (t, v)
            })
            .collect();
        out.sort_by_key(|(t, _)| t.to_string());
        out
    }
}

/// "rule: 300 spans from collector-a, 3 breaches, p90 40 ms".
fn describe_rule(r: &RuleEvidence) -> String {
    let from: Vec<&str> = r
        .collectors
        .iter()
        .filter(|c| c.matched > 0)
        .map(|c| c.collector.as_str())
        .collect();
    let from = match from.len() {
        0 => String::new(),
        1..=3 => format!(" from {}", from.join(", ")),
        n => format!(" from {} and {} more", from[..3].join(", "), n - 3),
    };
    let p90 = r
        .p90_ms
        .map(|p| format!(", p90 {p:.0} ms"))
        .unwrap_or_default();
    format!(
        "{}: {} spans{from}, {} breaches{p90}",
        r.rule, r.matched, r.breaches
    )
}

/// The operator's sentence for a hold: why there is no scale-down.
pub fn describe(q: &Quiet) -> String {
    match q {
        Quiet::Healthy { summary } => format!("latency healthy ({summary})"),
        Quiet::Unhealthy { summary } => {
            format!("the collectors report latency breaches at the rule's rate ({summary})")
        }
        Quiet::NoTraffic { rule } => format!("the collectors report no spans for rule {rule}"),
        Quiet::Lost {
            collector,
            rule,
            silent,
        } => format!(
            "collector {collector}, which reported spans for rule {rule}, has sent no report for {} s (its part of the evidence is missing for a quiet period)",
            silent.as_secs()
        ),
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
            s.record(target.clone(), 0, "c1", &report(100, 1), at(10 * k));
        }
        // Reports for 40 s, one breach per 10 s (the rule fires at 5 per 30 s): healthy.
        match s.quiet(&target, &rules, period, at(40)) {
            Quiet::Healthy { summary } => assert!(
                summary.contains("r: 300 spans from c1, 3 breaches, p90 40 ms"),
                "{summary}"
            ),
            q => panic!("{q:?}"),
        }
        // Silence: missing once the timeout has passed, whatever came before.
        assert!(
            matches!(s.quiet(&target, &rules, period, at(75)), Quiet::Missing { since_last: Some(d) } if d == Duration::from_secs(35))
        );
        // Reports come back: not enough until a full quiet period of them.
        s.record(target.clone(), 0, "c1", &report(100, 0), at(80));
        s.record(target.clone(), 0, "c1", &report(100, 0), at(90));
        assert!(matches!(
            s.quiet(&target, &rules, period, at(100)),
            Quiet::Missing { .. }
        ));
        s.record(target.clone(), 0, "c1", &report(100, 0), at(100));
        s.record(target.clone(), 0, "c1", &report(100, 0), at(110));
        assert!(matches!(
            s.quiet(&target, &rules, period, at(110)),
            Quiet::Healthy { .. }
        ));
        // Breaches at the firing rate, from two collectors together: unhealthy.
        s.record(target.clone(), 0, "c1", &report(100, 3), at(115));
        s.record(target.clone(), 0, "c2", &report(100, 2), at(116));
        assert!(matches!(
            s.quiet(&target, &rules, period, at(120)),
            Quiet::Unhealthy { .. }
        ));
        // Reports with no spans: no evidence.
        for k in 0..4 {
            s.record(target.clone(), 0, "c1", &report(0, 0), at(150 + 10 * k));
        }
        assert_eq!(
            s.quiet(&target, &rules, period, at(180)),
            Quiet::NoTraffic { rule: "r".into() }
        );
    }

    #[test]
    fn merged_per_rule_over_collectors_and_a_lost_collector_holds_for_a_quiet_period() {
        let rules = RulesFile::from_yaml(RULES).unwrap().rules;
        let target = rules[0].action.target.clone();
        let s = EvidenceStore::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let period = Duration::from_secs(30);
        // Two collectors each see part of the rule's spans: merged; a third sees none of them.
        for k in 0..=4 {
            s.record(target.clone(), 0, "b", &report(100, 1), at(10 * k));
            s.record(target.clone(), 0, "a", &report(50, 0), at(10 * k));
            s.record(target.clone(), 0, "c", &report(0, 0), at(10 * k));
        }
        let v = s.view(&target, &rules, period, at(40));
        match &v.quiet {
            Quiet::Healthy { summary } => {
                assert_eq!(summary, "r: 450 spans from a, b, 3 breaches, p90 40 ms")
            }
            q => panic!("{q:?}"),
        }
        let parts: Vec<_> = v.rules[0]
            .collectors
            .iter()
            .map(|c| (c.collector.as_str(), c.reports, c.matched))
            .collect();
        assert_eq!(parts, [("a", 3, 150), ("b", 3, 300), ("c", 3, 0)]);
        // b dies; a and c keep reporting: b's part is missing for a quiet period.
        for k in 5..=12 {
            s.record(target.clone(), 0, "a", &report(50, 0), at(10 * k));
            s.record(target.clone(), 0, "c", &report(0, 0), at(10 * k));
        }
        assert!(matches!(
            s.quiet(&target, &rules, period, at(80)),
            Quiet::Lost { ref collector, .. } if collector == "b"
        ));
        // A quiet period (and the timeout) after its last report, b is forgotten: a's spans
        // are the evidence.
        assert!(matches!(
            s.quiet(&target, &rules, period, at(101)),
            Quiet::Healthy { .. }
        ));
        // Only c (no spans of the rule) is left: a is lost, then there is no evidence at all.
        for k in 13..=20 {
            s.record(target.clone(), 0, "c", &report(0, 0), at(10 * k));
        }
        assert!(matches!(
            s.quiet(&target, &rules, period, at(180)),
            Quiet::Lost { ref collector, .. } if collector == "a"
        ));
        assert_eq!(
            s.quiet(&target, &rules, period, at(200)),
            Quiet::NoTraffic { rule: "r".into() }
        );
    }
}
