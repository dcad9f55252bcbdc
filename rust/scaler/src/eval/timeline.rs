//! `scale eval` on a timeline: what happened around each fault, and how the keep rate of ordinary
//! spans moved over time.
//!
//! A *timeline* is a span file with times (OTLP, or CSV with `start_unix_nano`); the spans reach
//! the engine at their end ([`super`]). With `--faults FILE` (CSV
//! `fault_id,service,fault_type,start_unix_nano,end_unix_nano`, other columns ignored), spans are
//! placed relative to the fault windows by the time they reach the engine:
//!
//! * **during**: inside a fault window `[start, end)`;
//! * **after**: not during, and within `--after` (default 5 min) of a window's end;
//! * **before**: everything else (before the first fault, or long after one).
//!
//! For each phase the report gives the keep rate of the spans labelled 0 (or of all spans, for
//! unlabelled input), of those of services that no fault names (the ones a fault should leave
//! alone), and of the labelled ones; over time, the same per bucket of `--bucket` (default 60 s).
//! Per fault: the labelled spans that *started* inside its window (how the recorded data labels
//! them), how many were kept, and how long after the onset the first of them was kept.
//!
//! With `--rules FILE`, every decision is listed with the service of the span that completed its
//! window; a decision for a service counts for that service's fault whose window (plus
//! `--grace`, default 2 min, after its end) contains it, and is *false* when there is none. Per
//! fault: the first decision for its service, and its delay after the onset.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{EvalError, TestSpan, input};

/// A fault window from `--faults`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    /// Its id.
    #[serde(rename = "fault_id")]
    pub id: String,
    /// The faulted service.
    pub service: String,
    /// What was injected (`cpu_contention`, `network_delay`, ...).
    pub fault_type: String,
    /// Onset, ns since the Unix epoch.
    pub start_ns: u64,
    /// End (exclusive).
    pub end_ns: u64,
}

/// Read a faults CSV.
pub fn read_faults(path: &Path) -> Result<Vec<Fault>, EvalError> {
    let name = path.display().to_string();
    let err = |message: String| EvalError::Faults {
        path: name.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| err("empty file".into()))?;
    let cols = input::split_csv(header.trim_start_matches('\u{feff}')).unwrap_or_default();
    let find = |n: &str| cols.iter().position(|c| c.trim().eq_ignore_ascii_case(n));
    let (Some(id), Some(svc), Some(kind), Some(start), Some(end)) = (
        find("fault_id"),
        find("service"),
        find("fault_type"),
        find("start_unix_nano"),
        find("end_unix_nano"),
    ) else {
        return Err(err(format!(
            "header {header:?} needs columns fault_id, service, fault_type, start_unix_nano, end_unix_nano"
        )));
    };
    let mut out = Vec::new();
    for (i, line) in lines {
        let f = input::split_csv(line)
            .filter(|f| f.len() == cols.len())
            .ok_or_else(|| err(format!("line {}: expected {} fields", i + 1, cols.len())))?;
        let num = |j: usize| {
            f[j].trim()
                .parse::<u64>()
                .map_err(|_| err(format!("line {}: {:?} is not a time in ns", i + 1, f[j])))
        };
        let (start_ns, end_ns) = (num(start)?, num(end)?);
        if end_ns <= start_ns {
            return Err(err(format!(
                "line {}: the window ends before it starts",
                i + 1
            )));
        }
        out.push(Fault {
            id: f[id].trim().to_string(),
            service: f[svc].trim().to_string(),
            fault_type: f[kind].trim().to_string(),
            start_ns,
            end_ns,
        });
    }
    out.sort_by_key(|f| f.start_ns);
    Ok(out)
}

/// A decision `scale eval` saw, on the data's clock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRow {
    /// When it fired (the data's clock), ns.
    pub time_ns: u64,
    /// The rule.
    pub rule: String,
    /// The service of the span that completed the window.
    pub service: String,
    /// `horizontal` or `vertical`.
    pub action: &'static str,
    /// The workload it is for (`Kind/namespace/name`).
    pub target: String,
    /// Whether the daemon would act on it: the first for its target since the rule's cooldown
    /// (later ones within the cooldown are refused as cooling down).
    pub acted: bool,
    /// The fault it counts for (its service's, window + grace), if any.
    pub fault: Option<String>,
}

/// Keep rates in one phase (or one time bucket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Spans labelled 0 (all spans, for unlabelled input).
    pub normal: u64,
    /// Of those, kept.
    pub normal_kept: u64,
    /// Normal spans of services no fault names.
    pub unaffected: u64,
    /// Of those, kept.
    pub unaffected_kept: u64,
    /// Spans labelled 1.
    pub labelled: u64,
    /// Of those, kept.
    pub labelled_kept: u64,
}

impl Rates {
    fn add(&mut self, s: &TestSpan, unaffected: bool) {
        let kept = u64::from(s.keep);
        if s.label == Some(true) {
            self.labelled += 1;
            self.labelled_kept += kept;
        } else {
            self.normal += 1;
            self.normal_kept += kept;
            if unaffected {
                self.unaffected += 1;
                self.unaffected_kept += kept;
            }
        }
    }

    /// Kept share of the normal spans.
    pub fn normal_rate(&self) -> f64 {
        ratio(self.normal_kept, self.normal)
    }

    /// Kept share of the unaffected services' normal spans.
    pub fn unaffected_rate(&self) -> f64 {
        ratio(self.unaffected_kept, self.unaffected)
    }

    /// Kept share of the labelled spans.
    pub fn labelled_rate(&self) -> f64 {
        ratio(self.labelled_kept, self.labelled)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// One time bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// Its start, ns.
    pub start_ns: u64,
    /// Whether a fault window overlaps it.
    pub fault: bool,
    /// What was kept in it.
    #[serde(flatten)]
    pub rates: Rates,
}

/// What happened around one fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultReport {
    /// The fault.
    #[serde(flatten)]
    pub fault: Fault,
    /// Labelled spans that started in its window.
    pub labelled: u64,
    /// Of those, kept.
    pub labelled_kept: u64,
    /// Kept share of them.
    pub recall: f64,
    /// Seconds from the onset to the first of them kept.
    pub first_kept_after_s: Option<f64>,
    /// With rules: decisions for its service in its window plus grace.
    pub decisions: Option<u32>,
    /// With rules: seconds from the onset to the first of them.
    pub first_decision_after_s: Option<f64>,
}

/// Decisions by fault type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RulesByType {
    /// The fault type.
    pub fault_type: String,
    /// Faults of this type.
    pub faults: u32,
    /// Of those, with labelled spans in the stream.
    pub with_labelled_spans: u32,
    /// Of those, with a decision for their service within `within_s` of the onset.
    pub decided_in_time: u32,
    /// Of those with labelled spans, with any decision for their service.
    pub decided: u32,
}

/// The rules' record on the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RulesReport {
    /// Every decision.
    pub decisions: Vec<DecisionRow>,
    /// Decisions for a service outside its fault windows (plus grace).
    pub false_decisions: u64,
    /// Of those, the ones the daemon would act on (outside the rule's cooldown).
    pub false_acted: u64,
    /// Decisions the daemon would act on.
    pub acted: u64,
    /// The grace after a fault window, s.
    pub grace_s: f64,
    /// "In time" means within this many seconds of the onset.
    pub within_s: f64,
    /// The longest break between breaches a rule's `for` run survives, s (what the engine
    /// used; for replays of its rules).
    pub for_break_s: f64,
    /// By fault type.
    pub by_type: Vec<RulesByType>,
}

/// Everything about the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineReport {
    /// Bucket width, s.
    pub bucket_s: f64,
    /// The "after" phase's length, s.
    pub after_s: f64,
    /// Keep rates per phase: `before`, `during`, `after` (with faults), or `all`.
    pub phases: BTreeMap<&'static str, Rates>,
    /// Keep rates per bucket (buckets without spans left out).
    pub buckets: Vec<Bucket>,
    /// Per fault.
    pub faults: Vec<FaultReport>,
    /// With rules.
    pub rules: Option<RulesReport>,
}

/// How to place spans and decisions.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Bucket width, ns.
    pub bucket_ns: u64,
    /// Length of the "after" phase, ns.
    pub after_ns: u64,
    /// Grace after a window for decisions, ns.
    pub grace_ns: u64,
    /// "In time" for decisions, ns.
    pub within_ns: u64,
    /// The engine's `for` break ([`scale_core::rules::RuleSet::for_break_ms`]), ns.
    pub for_break_ns: u64,
}

/// Build the timeline report. `service_of` names the service of a key id.
pub fn report<'a>(
    spans: &[TestSpan],
    faults: &[Fault],
    decisions: Option<Vec<DecisionRow>>,
    service_of: impl Fn(scale_core::KeyId) -> &'a str,
    o: Options,
) -> TimelineReport {
    let faulted: std::collections::HashSet<&str> =
        faults.iter().map(|f| f.service.as_str()).collect();
    let phase_of = |t: u64| -> &'static str {
        if faults.is_empty() {
            "all"
        } else if faults.iter().any(|f| (f.start_ns..f.end_ns).contains(&t)) {
            "during"
        } else if faults
            .iter()
            .any(|f| t >= f.end_ns && t - f.end_ns < o.after_ns)
        {
            "after"
        } else {
            "before"
        }
    };
    let mut phases: BTreeMap<&'static str, Rates> = BTreeMap::new();
    let mut buckets: BTreeMap<u64, Rates> = BTreeMap::new();
    let mut per_fault: Vec<(u64, u64, Option<u64>)> = vec![(0, 0, None); faults.len()];
    for s in spans {
        let svc = service_of(s.key);
        let unaffected = !faulted.contains(svc);
        phases
            .entry(phase_of(s.arrival_ns))
            .or_default()
            .add(s, unaffected);
        buckets
            .entry(s.arrival_ns / o.bucket_ns)
            .or_default()
            .add(s, unaffected);
        if s.label == Some(true) {
            let start = s
                .arrival_ns
                .saturating_sub((s.duration_ms.max(0.0) * 1e6) as u64);
            // The fault whose window holds the span's start: the latest onset at or before it.
            let i = faults.partition_point(|f| f.start_ns <= start);
            if i > 0 && start < faults[i - 1].end_ns {
                let pf = &mut per_fault[i - 1];
                pf.0 += 1;
                if s.keep {
                    pf.1 += 1;
                    pf.2 = Some(pf.2.map_or(s.arrival_ns, |t| t.min(s.arrival_ns)));
                }
            }
        }
    }
    let buckets = buckets
        .into_iter()
        .map(|(b, rates)| {
            let start_ns = b * o.bucket_ns;
            let end = start_ns + o.bucket_ns;
            Bucket {
                start_ns,
                fault: faults
                    .iter()
                    .any(|f| f.start_ns < end && f.end_ns > start_ns),
                rates,
            }
        })
        .collect();
    // Decisions: attribute each to its service's fault.
    let rules = decisions.map(|mut rows| {
        let mut first: Vec<Option<u64>> = vec![None; faults.len()];
        let mut count = vec![0u32; faults.len()];
        let (mut false_decisions, mut false_acted) = (0, 0);
        for d in &mut rows {
            let hit = faults.iter().position(|f| {
                f.service == d.service
                    && d.time_ns >= f.start_ns
                    && d.time_ns < f.end_ns + o.grace_ns
            });
            match hit {
                Some(i) => {
                    d.fault = Some(faults[i].id.clone());
                    count[i] += 1;
                    first[i] = Some(first[i].map_or(d.time_ns, |t| t.min(d.time_ns)));
                }
                None => {
                    false_decisions += 1;
                    false_acted += u64::from(d.acted);
                }
            }
        }
        (rows, first, count, false_decisions, false_acted)
    });
    let faults_out: Vec<FaultReport> = faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (labelled, kept, first_kept) = per_fault[i];
            let secs = |t: u64| t.saturating_sub(f.start_ns) as f64 / 1e9;
            FaultReport {
                fault: f.clone(),
                labelled,
                labelled_kept: kept,
                recall: ratio(kept, labelled),
                first_kept_after_s: first_kept.map(secs),
                decisions: rules.as_ref().map(|r| r.2[i]),
                first_decision_after_s: rules.as_ref().and_then(|r| r.1[i].map(secs)),
            }
        })
        .collect();
    let rules = rules.map(|(decisions, _, _, false_decisions, false_acted)| {
        let mut by_type: BTreeMap<&str, RulesByType> = BTreeMap::new();
        for fr in &faults_out {
            let e = by_type
                .entry(fr.fault.fault_type.as_str())
                .or_insert_with(|| RulesByType {
                    fault_type: fr.fault.fault_type.clone(),
                    faults: 0,
                    with_labelled_spans: 0,
                    decided_in_time: 0,
                    decided: 0,
                });
            e.faults += 1;
            if fr.labelled > 0 {
                e.with_labelled_spans += 1;
                if let Some(t) = fr.first_decision_after_s {
                    e.decided += 1;
                    if t * 1e9 <= o.within_ns as f64 {
                        e.decided_in_time += 1;
                    }
                }
            }
        }
        RulesReport {
            acted: decisions.iter().filter(|d| d.acted).count() as u64,
            decisions,
            false_decisions,
            false_acted,
            grace_s: o.grace_ns as f64 / 1e9,
            within_s: o.within_ns as f64 / 1e9,
            for_break_s: o.for_break_ns as f64 / 1e9,
            by_type: by_type.into_values().collect(),
        }
    });
    TimelineReport {
        bucket_s: o.bucket_ns as f64 / 1e9,
        after_s: o.after_ns as f64 / 1e9,
        phases,
        buckets,
        faults: faults_out,
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn span(t: u64, key: u32, keep: bool, label: Option<bool>) -> TestSpan {
        TestSpan {
            index: 0,
            score: Some(0.5),
            keep,
            label,
            duration_ms: 100.0,
            arrival_ns: t,
            key,
            learned: !keep,
            incident: false,
            judged_ns: t,
        }
    }

    #[test]
    fn phases_faults_and_decisions() {
        let faults = vec![Fault {
            id: "f1".into(),
            service: "a".into(),
            fault_type: "cpu_contention".into(),
            start_ns: 100 * S,
            end_ns: 200 * S,
        }];
        let spans = vec![
            span(10 * S, 1, false, Some(false)),
            span(20 * S, 1, true, Some(false)),
            span(110 * S, 0, false, Some(true)),
            span(150 * S, 0, true, Some(true)),
            span(250 * S, 1, false, Some(false)),
            span(900 * S, 1, false, Some(false)),
        ];
        let decisions = vec![
            DecisionRow {
                time_ns: 160 * S,
                rule: "r".into(),
                service: "a".into(),
                action: "vertical",
                target: "Deployment/default/a".into(),
                acted: true,
                fault: None,
            },
            DecisionRow {
                time_ns: 500 * S,
                rule: "r".into(),
                service: "a".into(),
                action: "vertical",
                target: "Deployment/default/a".into(),
                acted: true,
                fault: None,
            },
        ];
        let o = Options {
            bucket_ns: 60 * S,
            after_ns: 300 * S,
            grace_ns: 120 * S,
            within_ns: 60 * S,
            for_break_ns: 2_500_000_000,
        };
        let r = report(
            &spans,
            &faults,
            Some(decisions),
            |k| if k == 0 { "a" } else { "b" },
            o,
        );
        assert_eq!(r.phases["before"].normal, 3);
        assert_eq!(r.phases["before"].normal_kept, 1);
        assert_eq!(r.phases["after"].normal, 1);
        assert_eq!(r.phases["during"].labelled, 2);
        assert_eq!(r.phases["before"].unaffected, 3, "service b is unaffected");
        let f = &r.faults[0];
        assert_eq!((f.labelled, f.labelled_kept), (2, 1));
        assert_eq!(f.first_kept_after_s, Some(50.0));
        assert_eq!(f.first_decision_after_s, Some(60.0));
        let rules = r.rules.unwrap();
        assert_eq!(
            (rules.false_decisions, rules.false_acted, rules.acted),
            (1, 1, 2)
        );
        assert_eq!(rules.decisions[0].fault.as_deref(), Some("f1"));
        assert_eq!(rules.by_type[0].decided_in_time, 1);
        assert_eq!(r.buckets.len(), 5);
        assert!(r.buckets.iter().any(|b| b.fault));
    }

    #[test]
    fn faults_file_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("scale-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.csv");
        std::fs::write(
            &p,
            "fault_id,service,fault_type,start_unix_nano,end_unix_nano\nx,a,t,5,3\n",
        )
        .unwrap();
        assert!(read_faults(&p).unwrap_err().to_string().contains("line 2"));
        std::fs::write(&p, "id,service\n").unwrap();
        assert!(
            read_faults(&p)
                .unwrap_err()
                .to_string()
                .contains("needs columns")
        );
        std::fs::write(
            &p,
            "fault_id,service,fault_type,start_unix_nano,end_unix_nano,extra\nb,s,t,20,30,x\na,s,t,1,2,y\n",
        )
        .unwrap();
        let f = read_faults(&p).unwrap();
        assert_eq!((f[0].id.as_str(), f[1].start_ns), ("a", 20));
    }
}
