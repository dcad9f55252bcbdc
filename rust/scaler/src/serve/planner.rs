//! The planner: what to do about a workload, as a pure function of (decisions, current scale,
//! bounds, cooldowns, now) and the target's own history. No I/O, no clock: the daemon passes
//! `now` and applies the [`Plan`]; tests drive it with made-up times.
//!
//! # Rules, in the order they are checked
//!
//! 1. **Someone else controls it.** If a HorizontalPodAutoscaler or a KEDA ScaledObject targets
//!    the workload, horizontal plans are [`Plan::Refuse`]d (reported, never fought).
//! 2. **Conflation.** All decisions for one target that arrive together (and all decisions
//!    within one cooldown) make one step, never one step each.
//! 3. **Scale up** (decisions present, horizontal): `min(current + step, max)`; nothing if
//!    already at `max` ([`Hold::AtMax`]) or within `cooldown` of the last scale-up
//!    ([`Hold::Cooldown`]).
//! 4. **Vertical** (decisions present, vertical): cpu and memory times `factor`, capped at the
//!    rule's limits; the same cooldown.
//! 5. **Scale down** (no decision): one `step` down, never below `min`, once the target has been
//!    quiet (no decision) for `scale_down_after`, and no sooner than `scale_down_after` after the
//!    last scale-down (the stabilization window: a scale-up is never undone by a blip of
//!    silence, and down-steps are spaced out) — and only if the collectors' reports show healthy
//!    latency for that whole period ([`Quiet::Healthy`], see [`super::evidence`]): no decision
//!    is not evidence of calm, and without reports the planner holds ([`Hold::NoEvidence`]).
//!
//! # History
//!
//! [`History`] is everything the rules above remember: the last scale-up, scale-down and
//! decision, each a [`Mark`] (time and cause). The daemon keeps it with the workload as a
//! versioned JSON record ([`History::to_record`], [`History::from_record`]) and merges what it
//! reads back into what it remembers ([`History::merge`], the later mark of each kind wins), so
//! that cooldowns and quiet periods hold across restarts and failovers. New kinds of memory
//! (say, the last report of healthy latency, for scaling down on evidence) are new `Option`
//! fields: older records read as `None`, and older daemons ignore fields they do not know.

use scale_core::{Action, ActionKind};

pub use super::evidence::Quiet;

/// Nanoseconds since the Unix epoch.
pub type Nanos = u64;

const MS: u64 = 1_000_000;

/// Current size of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Replicas (spec).
    pub replicas: u32,
    /// CPU request of the resized container, millicores (0 when unknown).
    pub cpu_millis: u64,
    /// Memory request of the resized container, MiB (0 when unknown).
    pub memory_mib: u64,
}

/// A decision as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// Rule name.
    pub rule: String,
    /// horizontal or vertical (auto resolved by the engine).
    pub action: ActionKind,
    /// When the decision was received.
    pub at: Nanos,
}

/// A moment in a target's history and what caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// When, by the acting daemon's clock.
    pub at: Nanos,
    /// Why: the planner's reason for a change (`latency rule checkout-latency`, `quiet for
    /// 300 s`), the rules behind a decision, or what stood in for one (`daemon started`).
    pub cause: String,
}

impl Mark {
    /// A mark at `at` caused by `cause`.
    pub fn new(at: Nanos, cause: impl Into<String>) -> Self {
        Mark {
            at,
            cause: cause.into(),
        }
    }
}

/// What the planner remembers per target. The daemon keeps it on the workload too (see
/// [`History::to_record`]), so that cooldowns and quiet periods survive a restart or a change
/// of leader; new kinds of memory are new `Option` fields (a record without them reads as
/// `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Last scale-up (or vertical resize) applied.
    pub last_up: Option<Mark>,
    /// Last scale-down applied.
    pub last_down: Option<Mark>,
    /// Last decision received (or the moment this daemon began acting, which stands for one:
    /// it does not know what came before).
    pub last_decision: Option<Mark>,
}

/// Version of the [`History`] record; see [`History::to_record`].
pub const HISTORY_RECORD_VERSION: u32 = 1;

/// A [`History`] record that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not JSON of the record's shape.
    #[error("not a history record: {0}")]
    Json(#[source] serde_json::Error),
    /// Written by a newer daemon whose fields mean something this one does not know.
    #[error("history record version {0} is newer than this daemon's ({HISTORY_RECORD_VERSION})")]
    Version(u32),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MarkRecord {
    at: k8s_openapi::jiff::Timestamp,
    cause: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct HistoryRecord {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_up: Option<MarkRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_down: Option<MarkRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_decision: Option<MarkRecord>,
}

fn later(a: &mut Option<Mark>, b: &Option<Mark>) {
    if let Some(b) = b
        && a.as_ref().is_none_or(|a| b.at > a.at)
    {
        *a = Some(b.clone());
    }
}

impl History {
    /// Take the later of each mark of `self` and `other` (a history read back from the workload
    /// merged into the one in memory: whichever daemon acted last is right, and a record
    /// that lags behind, or was removed, never makes this daemon forget).
    pub fn merge(&mut self, other: &History) {
        later(&mut self.last_up, &other.last_up);
        later(&mut self.last_down, &other.last_down);
        later(&mut self.last_decision, &other.last_decision);
    }

    /// Count `mark` as a decision if it is later than the last one: a daemon that starts, or
    /// takes over the Lease, does not know which decisions came before, so it treats that
    /// moment as the last decision (no scale-down before a full quiet period).
    pub fn decided(&mut self, mark: Mark) {
        later(&mut self.last_decision, &Some(mark));
    }

    /// The history as kept on the workload: JSON with a version `v` and, per mark, `at`
    /// (RFC 3339, UTC, to the nanosecond) and `cause`, e.g.
    /// `{"v":1,"last_up":{"at":"2026-11-27T10:00:00.25Z","cause":"latency rule checkout-latency"}}`.
    /// Fields are only ever added (readers ignore what they do not know and read a missing mark
    /// as none); `v` is raised only when an existing field changes meaning.
    pub fn to_record(&self) -> String {
        let mark = |m: &Option<Mark>| {
            m.as_ref().map(|m| MarkRecord {
                at: k8s_openapi::jiff::Timestamp::from_nanosecond(m.at as i128)
                    .unwrap_or(k8s_openapi::jiff::Timestamp::MAX),
                cause: m.cause.clone(),
            })
        };
        let r = HistoryRecord {
            v: HISTORY_RECORD_VERSION,
            last_up: mark(&self.last_up),
            last_down: mark(&self.last_down),
            last_decision: mark(&self.last_decision),
        };
        serde_json::to_string(&r).expect("a history record serializes")
    }

    /// Read a record written by [`History::to_record`] (this version or an older one).
    pub fn from_record(text: &str) -> Result<History, RecordError> {
        let r: HistoryRecord = serde_json::from_str(text).map_err(RecordError::Json)?;
        if r.v > HISTORY_RECORD_VERSION {
            return Err(RecordError::Version(r.v));
        }
        let mark = |m: Option<MarkRecord>| {
            m.map(|m| Mark {
                at: u64::try_from(m.at.as_nanosecond()).unwrap_or(0),
                cause: m.cause,
            })
        };
        Ok(History {
            last_up: mark(r.last_up),
            last_down: mark(r.last_down),
            last_decision: mark(r.last_decision),
        })
    }
}

/// Why nothing happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    /// No decision and not quiet long enough to scale down (or nothing to scale down).
    Idle,
    /// Already at `max` (or the vertical limits).
    AtMax,
    /// Already at `min`.
    AtMin,
    /// Within the cooldown after the last change; `remaining_ms` until it ends.
    Cooldown {
        /// Time left.
        remaining_ms: u64,
    },
    /// Quiet long enough to scale down, but the reports do not show healthy latency for the
    /// quiet period (none arrived, no spans, or breaches at the firing rate): holding.
    NoEvidence(Quiet),
}

/// The planner's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Do nothing.
    Hold(Hold),
    /// Set the replica count.
    Replicas {
        /// From.
        from: u32,
        /// To.
        to: u32,
        /// Up because of `rules`, or down after quiet.
        reason: String,
    },
    /// Resize the pods.
    Resize {
        /// New cpu request, millicores.
        cpu_millis: u64,
        /// New memory request, MiB.
        memory_mib: u64,
        /// Why.
        reason: String,
    },
    /// Another controller owns this workload's scale; not acted on.
    Refuse {
        /// Which controller.
        reason: String,
    },
}

/// Plan for one target. `intents` are the decisions received since the last call; `controlled_by`
/// names an HPA or KEDA object managing the workload, if any; `quiet` is what the collectors'
/// reports say about the last `scale_down_after` (consulted only for a scale-down). Returns the
/// plan and the history to keep *if the plan is applied* (the caller keeps the old history when
/// applying fails).
pub fn plan(
    intents: &[Intent],
    current: Scale,
    action: &Action,
    controlled_by: Option<&str>,
    history: &History,
    quiet_evidence: &Quiet,
    now: Nanos,
) -> (Plan, History) {
    let mut next = history.clone();
    let mut rules: Vec<&str> = intents.iter().map(|i| i.rule.as_str()).collect();
    rules.sort_unstable();
    rules.dedup();
    if let Some(last) = intents.iter().map(|i| i.at).max() {
        next.decided(Mark::new(last, rules.join(", ")));
    }
    let cooldown = (action.cooldown_ms * MS as f64) as u64;
    let quiet = (action.scale_down_after_ms * MS as f64) as u64;
    if !intents.is_empty() {
        let vertical = intents.iter().all(|i| i.action == ActionKind::Vertical);
        if !vertical && let Some(c) = controlled_by {
            return (
                Plan::Refuse {
                    reason: format!("{c} controls this workload's replicas"),
                },
                next,
            );
        }
        if let Some(last) = &history.last_up {
            let since = now.saturating_sub(last.at);
            if since < cooldown {
                return (
                    Plan::Hold(Hold::Cooldown {
                        remaining_ms: (cooldown - since) / MS,
                    }),
                    next,
                );
            }
        }
        let reason = format!(
            "latency rule{} {}",
            if rules.len() == 1 { "" } else { "s" },
            rules.join(", ")
        );
        if vertical {
            let v = &action.vertical;
            let cpu = ((current.cpu_millis.max(1) as f64 * v.factor).round() as u64)
                .min(v.max_cpu_millis);
            let mem = ((current.memory_mib.max(1) as f64 * v.factor).round() as u64)
                .min(v.max_memory_mib);
            if cpu <= current.cpu_millis && mem <= current.memory_mib {
                return (Plan::Hold(Hold::AtMax), next);
            }
            next.last_up = Some(Mark::new(now, reason.clone()));
            return (
                Plan::Resize {
                    cpu_millis: cpu.max(current.cpu_millis),
                    memory_mib: mem.max(current.memory_mib),
                    reason,
                },
                next,
            );
        }
        if current.replicas >= action.max {
            return (Plan::Hold(Hold::AtMax), next);
        }
        let to = current
            .replicas
            .saturating_add(action.step)
            .min(action.max)
            .max(action.min);
        next.last_up = Some(Mark::new(now, reason.clone()));
        return (
            Plan::Replicas {
                from: current.replicas,
                to,
                reason,
            },
            next,
        );
    }
    // No decision: scale down after a quiet period.
    if controlled_by.is_some() {
        return (Plan::Hold(Hold::Idle), next);
    }
    if current.replicas <= action.min {
        return (
            Plan::Hold(if current.replicas == action.min {
                Hold::AtMin
            } else {
                Hold::Idle
            }),
            next,
        );
    }
    let since_decision = history
        .last_decision
        .as_ref()
        .map_or(u64::MAX, |t| now.saturating_sub(t.at));
    let since_change = [&history.last_up, &history.last_down]
        .into_iter()
        .flatten()
        .map(|t| now.saturating_sub(t.at))
        .min()
        .unwrap_or(u64::MAX);
    if since_decision < quiet || since_change < quiet {
        return (Plan::Hold(Hold::Idle), next);
    }
    let summary = match quiet_evidence {
        Quiet::Healthy { summary } => summary,
        other => return (Plan::Hold(Hold::NoEvidence(other.clone())), next),
    };
    let to = current.replicas.saturating_sub(action.step).max(action.min);
    let mut reason = format!("quiet for {} s", quiet / 1_000 / MS);
    if !summary.is_empty() {
        reason.push_str(&format!(", latency healthy ({summary})"));
    }
    next.last_down = Some(Mark::new(now, reason.clone()));
    (
        Plan::Replicas {
            from: current.replicas,
            to,
            reason,
        },
        next,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Quiet {
        Quiet::Healthy {
            summary: String::new(),
        }
    }
    use scale_core::RulesFile;

    const S: u64 = 1_000 * MS;

    fn action(extra: &str) -> Action {
        let y = format!(
            "rules:\n- name: r\n  when: {{ duration_above: 1ms }}\n  count: 1\n  window: 1s\n  action: {{ kind: horizontal, target: {{ kind: Deployment, name: x }}, min: 2, max: 5, cooldown: 60s, scale_down_after: 300s{extra} }}\n"
        );
        RulesFile::from_yaml(&y).unwrap().rules.remove(0).action
    }

    fn up(at: u64) -> Intent {
        Intent {
            rule: "r".into(),
            action: ActionKind::Horizontal,
            at,
        }
    }

    fn replicas(n: u32) -> Scale {
        Scale {
            replicas: n,
            cpu_millis: 100,
            memory_mib: 128,
        }
    }

    #[test]
    fn one_step_per_batch_of_decisions() {
        let (p, h) = plan(
            &[up(10), up(11), up(12)],
            replicas(2),
            &action(""),
            None,
            &History::default(),
            &ok(),
            100 * S,
        );
        assert_eq!(
            p,
            Plan::Replicas {
                from: 2,
                to: 3,
                reason: "latency rule r".into()
            }
        );
        assert_eq!(h.last_up, Some(Mark::new(100 * S, "latency rule r")));
        assert_eq!(h.last_decision, Some(Mark::new(12, "r")));
    }

    #[test]
    fn cooldown_then_max() {
        let a = action("");
        let (_, h) = plan(
            &[up(0)],
            replicas(2),
            &a,
            None,
            &History::default(),
            &ok(),
            100 * S,
        );
        let (p, _) = plan(&[up(0)], replicas(3), &a, None, &h, &ok(), 159 * S);
        assert_eq!(
            p,
            Plan::Hold(Hold::Cooldown {
                remaining_ms: 1_000
            })
        );
        let (p, _) = plan(&[up(0)], replicas(3), &a, None, &h, &ok(), 160 * S);
        assert!(matches!(p, Plan::Replicas { to: 4, .. }));
        let (p, _) = plan(
            &[up(0)],
            replicas(5),
            &a,
            None,
            &History::default(),
            &ok(),
            0,
        );
        assert_eq!(p, Plan::Hold(Hold::AtMax));
        // A flood never passes max.
        let mut h = History::default();
        let mut cur = 2;
        for t in 0..1_000u64 {
            let (p, nh) = plan(&[up(t * S)], replicas(cur), &a, None, &h, &ok(), t * S);
            if let Plan::Replicas { to, .. } = p {
                cur = to;
                h = nh;
            }
            assert!(cur <= 5);
        }
        assert_eq!(cur, 5);
    }

    #[test]
    fn step_is_bounded_by_max() {
        let (p, _) = plan(
            &[up(0)],
            replicas(4),
            &action(", step: 3"),
            None,
            &History::default(),
            &ok(),
            0,
        );
        assert!(matches!(p, Plan::Replicas { from: 4, to: 5, .. }));
    }

    #[test]
    fn refuses_when_an_hpa_controls_it() {
        let (p, _) = plan(
            &[up(0)],
            replicas(2),
            &action(""),
            Some("HorizontalPodAutoscaler shop/x"),
            &History::default(),
            &ok(),
            0,
        );
        assert_eq!(
            p,
            Plan::Refuse {
                reason: "HorizontalPodAutoscaler shop/x controls this workload's replicas".into()
            }
        );
        let (p, _) = plan(
            &[],
            replicas(4),
            &action(""),
            Some("hpa"),
            &History::default(),
            &ok(),
            10_000 * S,
        );
        assert_eq!(
            p,
            Plan::Hold(Hold::Idle),
            "never scales down an HPA's workload either"
        );
    }

    #[test]
    fn scale_down_after_quiet_never_below_min() {
        let a = action("");
        let h = History {
            last_up: Some(Mark::new(100 * S, "latency rule r")),
            last_decision: Some(Mark::new(100 * S, "r")),
            last_down: None,
        };
        let (p, _) = plan(&[], replicas(4), &a, None, &h, &ok(), 399 * S);
        assert_eq!(p, Plan::Hold(Hold::Idle));
        let (p, h2) = plan(&[], replicas(4), &a, None, &h, &ok(), 400 * S);
        assert!(matches!(p, Plan::Replicas { from: 4, to: 3, .. }), "{p:?}");
        // Stabilization: the next step down waits another quiet period.
        let (p, _) = plan(&[], replicas(3), &a, None, &h2, &ok(), 500 * S);
        assert_eq!(p, Plan::Hold(Hold::Idle));
        let (p, h3) = plan(&[], replicas(3), &a, None, &h2, &ok(), 700 * S);
        assert!(matches!(p, Plan::Replicas { to: 2, .. }));
        let (p, _) = plan(&[], replicas(2), &a, None, &h3, &ok(), 10_000 * S);
        assert_eq!(p, Plan::Hold(Hold::AtMin));
    }

    #[test]
    fn no_scale_down_without_evidence_of_healthy_latency() {
        let a = action("");
        let h = History {
            last_up: Some(Mark::new(100 * S, "latency rule r")),
            last_decision: Some(Mark::new(100 * S, "r")),
            last_down: None,
        };
        for q in [
            Quiet::Missing { since_last: None },
            Quiet::NoTraffic { rule: "r".into() },
            Quiet::Unhealthy {
                summary: "r: 10 spans, 9 breaches".into(),
            },
        ] {
            let (p, h2) = plan(&[], replicas(4), &a, None, &h, &q, 1_000 * S);
            assert_eq!(p, Plan::Hold(Hold::NoEvidence(q)));
            assert_eq!(h2, h, "holding changes nothing");
        }
        // Evidence matters only for a scale-down: decisions still scale up without it.
        let (p, _) = plan(
            &[up(0)],
            replicas(4),
            &a,
            None,
            &h,
            &Quiet::Missing { since_last: None },
            1_000 * S,
        );
        assert!(matches!(p, Plan::Replicas { from: 4, to: 5, .. }), "{p:?}");
    }

    #[test]
    fn vertical_resizes_within_limits() {
        let a = action(", vertical: { factor: 2, max_cpu_millis: 300, max_memory_mib: 200 }");
        let v = Intent {
            rule: "r".into(),
            action: ActionKind::Vertical,
            at: 0,
        };
        let (p, h) = plan(
            std::slice::from_ref(&v),
            replicas(2),
            &a,
            Some("hpa"),
            &History::default(),
            &ok(),
            0,
        );
        assert_eq!(
            p,
            Plan::Resize {
                cpu_millis: 200,
                memory_mib: 200,
                reason: "latency rule r".into()
            }
        );
        let cur = Scale {
            replicas: 2,
            cpu_millis: 200,
            memory_mib: 200,
        };
        let (p, _) = plan(std::slice::from_ref(&v), cur, &a, None, &h, &ok(), 120 * S);
        assert_eq!(
            p,
            Plan::Resize {
                cpu_millis: 300,
                memory_mib: 200,
                reason: "latency rule r".into()
            }
        );
        let cur = Scale {
            replicas: 2,
            cpu_millis: 300,
            memory_mib: 200,
        };
        let (p, _) = plan(&[v], cur, &a, None, &h, &ok(), 240 * S);
        assert_eq!(p, Plan::Hold(Hold::AtMax));
    }

    #[test]
    fn history_record_round_trips_and_is_versioned() {
        let h = History {
            last_up: Some(Mark::new(
                1_764_237_600_123_456_789,
                "latency rule checkout-latency",
            )),
            last_down: Some(Mark::new(1_764_237_000_000_000_000, "quiet for 300 s")),
            last_decision: Some(Mark::new(1_764_237_601_000_000_001, "checkout-latency")),
        };
        let text = h.to_record();
        assert!(
            text.starts_with(r#"{"v":1,"last_up":{"at":"2025-11-27T10:00:00.123456789Z","#),
            "{text}"
        );
        assert_eq!(History::from_record(&text).unwrap(), h);
        assert_eq!(
            History::from_record(&History::default().to_record()).unwrap(),
            History::default()
        );
        // Fields a newer daemon added are ignored; missing marks are none.
        let newer = r#"{"v":1,"last_up":{"at":"2025-11-27T10:00:00Z","cause":"x","by":"scale-b"},"evidence":{}}"#;
        assert_eq!(
            History::from_record(newer).unwrap(),
            History {
                last_up: Some(Mark::new(1_764_237_600_000_000_000, "x")),
                ..Default::default()
            }
        );
        assert!(matches!(
            History::from_record(r#"{"v":2}"#),
            Err(RecordError::Version(2))
        ));
        assert!(matches!(
            History::from_record("3 replicas"),
            Err(RecordError::Json(_))
        ));
        assert!(matches!(
            History::from_record(r#"{"v":1,"last_up":{"at":"yesterday","cause":""}}"#),
            Err(RecordError::Json(_))
        ));
    }

    #[test]
    fn merge_keeps_the_later_mark_of_each_kind() {
        let mut mem = History {
            last_up: Some(Mark::new(10, "a")),
            last_down: None,
            last_decision: Some(Mark::new(30, "a")),
        };
        let read = History {
            last_up: Some(Mark::new(20, "b")),
            last_down: Some(Mark::new(5, "quiet")),
            last_decision: Some(Mark::new(25, "b")),
        };
        mem.merge(&read);
        assert_eq!(
            mem,
            History {
                last_up: Some(Mark::new(20, "b")),
                last_down: Some(Mark::new(5, "quiet")),
                last_decision: Some(Mark::new(30, "a")),
            }
        );
        // An empty record (removed annotation) forgets nothing.
        let before = mem.clone();
        mem.merge(&History::default());
        assert_eq!(mem, before);
        mem.decided(Mark::new(29, "daemon started"));
        assert_eq!(mem.last_decision, Some(Mark::new(30, "a")));
        mem.decided(Mark::new(31, "daemon started"));
        assert_eq!(mem.last_decision, Some(Mark::new(31, "daemon started")));
    }

    /// Issue 15: a daemon that restarts (or takes over) with the history read back from the
    /// workload neither scales up again within the cooldown nor down before a quiet period.
    #[test]
    fn r15_a_history_read_back_holds_cooldown_and_quiet_period() {
        let a = action("");
        let (_, written) = plan(
            &[up(100 * S)],
            replicas(2),
            &a,
            None,
            &History::default(),
            &ok(),
            100 * S,
        );
        let read = History::from_record(&written.to_record()).unwrap();
        // A new process at 130 s: its start stands for the last decision.
        let mut h = History::default();
        h.decided(Mark::new(130 * S, "daemon started"));
        h.merge(&read);
        let (p, _) = plan(&[up(131 * S)], replicas(3), &a, None, &h, &ok(), 131 * S);
        assert_eq!(
            p,
            Plan::Hold(Hold::Cooldown {
                remaining_ms: 29_000
            })
        );
        let (p, _) = plan(&[up(160 * S)], replicas(3), &a, None, &h, &ok(), 160 * S);
        assert!(matches!(p, Plan::Replicas { from: 3, to: 4, .. }), "{p:?}");
        // No decisions after the restart: down only a quiet period after the start, not after
        // the scale-up (which was longer ago).
        let (p, _) = plan(&[], replicas(3), &a, None, &h, &ok(), 429 * S);
        assert_eq!(p, Plan::Hold(Hold::Idle));
        let (p, _) = plan(&[], replicas(3), &a, None, &h, &ok(), 430 * S);
        assert!(matches!(p, Plan::Replicas { from: 3, to: 2, .. }), "{p:?}");
    }
}
