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

/// What the planner remembers per target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Last scale-up (or vertical resize) applied.
    pub last_up: Option<Nanos>,
    /// Last scale-down applied.
    pub last_down: Option<Nanos>,
    /// Last decision received.
    pub last_decision: Option<Nanos>,
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
    if let Some(last) = intents.iter().map(|i| i.at).max() {
        next.last_decision = Some(next.last_decision.map_or(last, |p| p.max(last)));
    }
    let cooldown = (action.cooldown_ms * MS as f64) as u64;
    let quiet = (action.scale_down_after_ms * MS as f64) as u64;
    if !intents.is_empty() {
        let vertical = intents.iter().all(|i| i.action == ActionKind::Vertical);
        if !vertical {
            if let Some(c) = controlled_by {
                return (
                    Plan::Refuse {
                        reason: format!("{c} controls this workload's replicas"),
                    },
                    next,
                );
            }
        }
        if let Some(last) = history.last_up {
            let since = now.saturating_sub(last);
            if since < cooldown {
                return (
                    Plan::Hold(Hold::Cooldown {
                        remaining_ms: (cooldown - since) / MS,
                    }),
                    next,
                );
            }
        }
        let mut rules: Vec<&str> = intents.iter().map(|i| i.rule.as_str()).collect();
        rules.sort_unstable();
        rules.dedup();
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
            next.last_up = Some(now);
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
        next.last_up = Some(now);
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
        .map_or(u64::MAX, |t| now.saturating_sub(t));
    let since_change = [history.last_up, history.last_down]
        .into_iter()
        .flatten()
        .map(|t| now.saturating_sub(t))
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
    next.last_down = Some(now);
    let mut reason = format!("quiet for {} s", quiet / 1_000 / MS);
    if !summary.is_empty() {
        reason.push_str(&format!(", latency healthy ({summary})"));
    }
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
        assert_eq!(h.last_up, Some(100 * S));
        assert_eq!(h.last_decision, Some(12));
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
            last_up: Some(100 * S),
            last_decision: Some(100 * S),
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
            last_up: Some(100 * S),
            last_decision: Some(100 * S),
            last_down: None,
        };
        for q in [
            Quiet::Missing { since_last: None },
            Quiet::NoTraffic,
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
            &[v.clone()],
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
        let (p, _) = plan(&[v.clone()], cur, &a, None, &h, &ok(), 120 * S);
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
}
