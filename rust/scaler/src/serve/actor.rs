//! The actor's policy, as a state machine with injected time.
//!
//! [`TargetActor`] is what the daemon keeps per target (its [`History`], the decisions pending,
//! a write whose outcome is unknown, the read errors seen) and [`TargetActor::step`] is one
//! read → plan → act round for it, against any [`Orchestrator`] and with the time from a
//! [`Clock`]: the retry, refusal and requeue rules below are decided here, and unit-tested with
//! a fake orchestrator and a hand-set clock (no API server, no sleeping). [`Actor`] holds every
//! target and the rounds' own rules (targets made from decisions, a standby drops what reaches
//! it, taking over counts as a decision); `run_actor` (in the parent module) only waits for
//! decisions or the tick and calls it.
//!
//! Rules of one [`TargetActor::step`], by what the orchestrator answers:
//!
//! - **read unavailable** (API unreachable): everything stays pending, the next tick retries
//!   ([`Outcome::Unavailable`]);
//! - **read refused** (403, 404, …): decisions are kept for [`REFUSED_READS_BEFORE_DROP`]
//!   rounds (a restarted API server refuses until its RBAC cache is warm), then dropped and
//!   counted ([`Outcome::Unreadable`]);
//! - **a write was in flight** when the API failed: the first successful read tells whether it
//!   was applied (the object has the history, or the replicas, it carried); if so it counts as
//!   done ([`Outcome::InFlightApplied`]) and is never written twice, else the decisions are
//!   planned again from what was read;
//! - **conflict** (409) on the write: re-read and re-plan at once, at most [`MAX_CONFLICTS`]
//!   times a round ([`Outcome::Conflicts`]: pending, next tick);
//! - **write unavailable**: the decisions stay pending and the write is remembered as in flight
//!   ([`Outcome::Unavailable`]); decisions arriving meanwhile join them and all make one step;
//! - **another controller** (the planner's refusal of an HPA/KEDA-owned workload, or the
//!   orchestrator's of a VPA-owned one): reported once (log, Event, `controlled`), the decisions
//!   dropped, so not retried in a loop; the orchestrator's refusal does not start the cooldown
//!   ([`Outcome::Refused`]);
//! - **any other refusal** of the write (403, 404, not the leader, in-place refused): logged,
//!   counted, decisions dropped ([`Outcome::Dropped`]);
//! - **a hold** (at max, cooldown, idle, no evidence): counted if decisions were pending, which
//!   are dropped — they conflate into the step that follows anyway ([`Outcome::Held`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scale_core::{Action, Rule, Target};

use super::evidence::{self, EvidenceStore, Quiet};
use super::intake::Received;
use super::leader::Leadership;
use super::metrics::Metrics;
use super::orchestrator::{Observed, Orchestrator, OrchestratorError, Why};
use super::planner::{self, History, Hold, Intent, Mark, Nanos, Plan};
use super::{MAX_TARGETS, PENDING_CAP, REFUSED_READS_BEFORE_DROP};

/// Conflicts (409) in a row that one round re-reads and re-plans before leaving the rest to the
/// next tick.
pub const MAX_CONFLICTS: usize = 5;

/// Where the actor gets the time: the wall clock (ns since the epoch, for the planner and the
/// history) and a monotonic instant (for the evidence and the latency metric).
pub trait Clock {
    /// ns since the Unix epoch.
    fn wall_ns(&self) -> Nanos;
    /// A monotonic instant.
    fn instant(&self) -> Instant;
}

/// The real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall_ns(&self) -> Nanos {
        super::now_ns()
    }
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A write whose outcome is unknown (the API failed while it was in flight).
#[derive(Debug, Clone)]
struct InFlight {
    to: u32,
    next: History,
}

/// How a [`TargetActor::step`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The plan was applied: `scale_up`, `scale_down` or `resize`.
    Applied(&'static str),
    /// The write in flight when the API failed turned out to be applied.
    InFlightApplied,
    /// The planner held (`at_max`, `cooldown`, `idle`, `no_evidence`); decisions, if any,
    /// counted and dropped.
    Held(&'static str),
    /// Another controller owns the workload: reported, decisions dropped.
    Refused,
    /// The write was refused (`forbidden`, `not_found`, `not_leader`, …): decisions dropped.
    Dropped(&'static str),
    /// The API is unreachable (on the read or the write): everything stays pending.
    Unavailable,
    /// The read was refused; `dropped` once the decisions have waited long enough.
    Unreadable {
        /// The decisions were dropped this time.
        dropped: bool,
    },
    /// [`MAX_CONFLICTS`] conflicts in a row: pending, the next tick tries again.
    Conflicts,
}

/// What the actor keeps per target, and its policy.
#[derive(Debug)]
pub struct TargetActor {
    target: Target,
    /// Label for metrics (`Kind/namespace/name`).
    tname: String,
    history: History,
    pending: Vec<Received>,
    in_flight: Option<InFlight>,
    /// Kind of the last read error, so a lasting problem is logged once, not every tick.
    last_error: Option<&'static str>,
    /// Consecutive reads refused (403, 404, …) while decisions were pending.
    refused_reads: u32,
    /// A scale-down is held for want of evidence (said once per episode).
    evidence_hold: bool,
}

impl TargetActor {
    /// A target with no history and nothing pending.
    pub fn new(target: Target) -> Self {
        TargetActor {
            tname: target.to_string(),
            target,
            history: History::default(),
            pending: Vec::new(),
            in_flight: None,
            last_error: None,
            refused_reads: 0,
            evidence_hold: false,
        }
    }

    /// What it remembers.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Decisions waiting for a step.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queue a decision (the oldest are dropped beyond [`PENDING_CAP`]).
    pub fn push(&mut self, d: Received) {
        if self.pending.len() >= PENDING_CAP {
            self.pending.remove(0);
        }
        self.pending.push(d);
    }

    /// Count a decision at `now` (a new target, or this replica beginning to act).
    pub fn decided(&mut self, mark: Mark) {
        self.history.decided(mark);
    }

    /// A standby drops what reached it (the leader got its own).
    fn drop_as_standby(&mut self, metrics: &Metrics) {
        if !self.pending.is_empty() {
            metrics.refuse_decisions("not_leader", self.pending.len() as u64);
            self.pending.clear();
        }
    }

    /// Read, plan and act; on 409 re-read and re-plan (bounded), on an unreachable API keep
    /// everything pending for the next round.
    pub async fn step<O: Orchestrator>(
        &mut self,
        orch: &mut O,
        action: &Action,
        quiet: &Quiet,
        metrics: &Metrics,
        clock: &impl Clock,
    ) -> Outcome {
        let target = self.target.clone();
        for _attempt in 0..MAX_CONFLICTS {
            let observed: Observed = match orch.get(&target, action).await {
                Ok(o) => {
                    self.read_ok();
                    o
                }
                Err(e) => return self.read_failed(&e, metrics),
            };
            if self.in_flight_applied(&observed) {
                return Outcome::InFlightApplied;
            }
            // What the workload remembers (written by this daemon before a restart, or by the
            // replica that led before): the later of each mark wins.
            if let Some(h) = &observed.history {
                self.history.merge(h);
            }
            let now = clock.wall_ns();
            let intents: Vec<Intent> = self
                .pending
                .iter()
                .map(|d| Intent {
                    rule: d.rule.clone(),
                    action: d.action,
                    at: now,
                })
                .collect();
            let (plan, next) = planner::plan(
                &intents,
                observed.scale,
                action,
                observed.controlled_by.as_deref(),
                &self.history,
                quiet,
                now,
            );
            if let Some(note) = self.evidence_episode(&plan, &observed, metrics) {
                orch.report_hold(&target, &note).await;
            }
            let started = self.pending.iter().map(|d| d.received).min();
            let latency = started.map(|t| clock.instant().saturating_duration_since(t));
            let result = match &plan {
                Plan::Replicas { from, to, reason } => {
                    let why = why_of(reason, &self.pending);
                    tracing::info!(target = %target, from, to, reason = %reason, rules = ?why.rules, decision_to_request_ms = latency.map(|l| l.as_secs_f64() * 1e3), "Scaling workload.");
                    if let Some(l) = latency {
                        metrics.decision_to_request.observe(l.as_secs_f64());
                    }
                    orch.set_replicas(&target, &observed, *to, &why, &next)
                        .await
                        .map(|()| if to > from { "scale_up" } else { "scale_down" })
                }
                Plan::Resize {
                    cpu_millis,
                    memory_mib,
                    reason,
                } => {
                    let why = why_of(reason, &self.pending);
                    tracing::info!(target = %target, cpu_millis, memory_mib, reason = %reason, decision_to_request_ms = latency.map(|l| l.as_secs_f64() * 1e3), "Resizing workload.");
                    if let Some(l) = latency {
                        metrics.decision_to_request.observe(l.as_secs_f64());
                    }
                    orch.resize(&target, action, *cpu_millis, *memory_mib, &why, &next)
                        .await
                        .map(|()| "resize")
                }
                Plan::Refuse { reason } => {
                    let why = why_of(reason, &self.pending);
                    tracing::warn!(target = %target, reason = %reason, "Refused to scale a workload another controller owns.");
                    orch.report_refusal(
                        &target,
                        observed
                            .controlled_by
                            .as_deref()
                            .unwrap_or("another controller"),
                        &why,
                    )
                    .await;
                    metrics.action_refused("controlled", &self.tname);
                    self.done(next);
                    return Outcome::Refused;
                }
                Plan::Hold(hold) => {
                    let reason = match hold {
                        Hold::AtMax => "at_max",
                        Hold::Cooldown { .. } => "cooldown",
                        Hold::AtMin | Hold::Idle => "idle",
                        Hold::NoEvidence(_) => "no_evidence",
                    };
                    if !self.pending.is_empty() {
                        tracing::debug!(target = %target, ?hold, decisions = self.pending.len(), "Holding.");
                        metrics.action_refused(reason, &self.tname);
                    }
                    self.done(next);
                    return Outcome::Held(reason);
                }
            };
            match result {
                Ok(what) => {
                    metrics.action(what, &self.tname);
                    self.done(next);
                    return Outcome::Applied(what);
                }
                Err(OrchestratorError::Conflict(m)) => {
                    tracing::info!(target = %target, conflict = %m, "The workload changed under us; re-reading and re-planning.");
                    continue;
                }
                Err(OrchestratorError::Controlled(by)) => {
                    // The orchestrator found another controller (a VPA, for a resize) before
                    // writing: reported and counted like the planner's refusal of an HPA-owned
                    // workload; nothing changed, so the cooldown does not start.
                    let why = why_of(&by, &self.pending);
                    tracing::warn!(target = %target, reason = %by, "Refused to scale a workload another controller owns.");
                    orch.report_refusal(&target, &by, &why).await;
                    metrics.action_refused("controlled", &self.tname);
                    let last_up = self.history.last_up.clone();
                    self.done(History { last_up, ..next });
                    return Outcome::Refused;
                }
                Err(e @ OrchestratorError::Unavailable(_)) => {
                    tracing::warn!(target = %target, error = %e, "The API failed during the write; the action stays pending.");
                    if let Plan::Replicas { to, .. } = plan {
                        self.in_flight = Some(InFlight { to, next });
                    }
                    return Outcome::Unavailable;
                }
                Err(e) => {
                    tracing::error!(target = %target, error = %e, "Scaling action refused; its decisions are dropped.");
                    metrics.action_refused(e.kind(), &self.tname);
                    self.pending.clear();
                    return Outcome::Dropped(e.kind());
                }
            }
        }
        tracing::warn!(target = %target, "Five conflicts in a row; trying again on the next tick.");
        Outcome::Conflicts
    }

    /// The plan is done with (applied, refused or held): keep `next`, drop the decisions.
    fn done(&mut self, next: History) {
        self.history = next;
        self.pending.clear();
    }

    fn read_ok(&mut self) {
        self.refused_reads = 0;
        if self.last_error.take().is_some() {
            tracing::info!(target = %self.target, "The workload can be read again.");
        }
    }

    /// A read failed: keep everything pending (unreachable API), or keep the decisions for
    /// [`REFUSED_READS_BEFORE_DROP`] refused reads, then drop them.
    fn read_failed(&mut self, e: &OrchestratorError, metrics: &Metrics) -> Outcome {
        let first = self.last_error != Some(e.kind());
        self.last_error = Some(e.kind());
        let target = &self.target;
        if let OrchestratorError::Unavailable(_) = e {
            // Keep everything pending: the next tick retries.
            if first {
                tracing::warn!(target = %target, error = %e, pending = self.pending.len(), "Cannot reach the API; retrying every tick.");
            }
            return Outcome::Unavailable;
        }
        if first {
            tracing::warn!(target = %target, error = %e, "Cannot read the workload.");
        }
        let mut dropped = false;
        if !self.pending.is_empty() {
            self.refused_reads += 1;
            if self.refused_reads >= REFUSED_READS_BEFORE_DROP {
                tracing::error!(target = %target, error = %e, decisions = self.pending.len(), "Cannot read the workload; its decisions are dropped.");
                metrics.action_refused(e.kind(), &self.tname);
                self.pending.clear();
                self.refused_reads = 0;
                dropped = true;
            }
        }
        Outcome::Unreadable { dropped }
    }

    /// A write whose answer was lost: if the object now has what we wrote (the history record,
    /// written with the replicas; or the replicas, where no record is kept), it was applied.
    fn in_flight_applied(&mut self, observed: &Observed) -> bool {
        let Some(f) = self.in_flight.take() else {
            return false;
        };
        let applied = match &observed.history {
            Some(h) => *h == f.next,
            None => observed.scale.replicas == f.to,
        };
        if applied {
            tracing::info!(target = %self.target, replicas = f.to, "The write that was in flight when the API failed had been applied.");
            self.done(f.next);
        }
        applied
    }

    /// Say once per episode that a scale-down waits for evidence, and when it is over: the note
    /// to report when one begins.
    fn evidence_episode(
        &mut self,
        plan: &Plan,
        observed: &Observed,
        metrics: &Metrics,
    ) -> Option<String> {
        let holding = matches!(plan, Plan::Hold(Hold::NoEvidence(_)));
        if holding == self.evidence_hold {
            return None;
        }
        self.evidence_hold = holding;
        metrics.set_evidence_missing(&self.tname, holding);
        if let Plan::Hold(Hold::NoEvidence(q)) = plan {
            let note = format!(
                "Holding at {} replicas: {}",
                observed.scale.replicas,
                evidence::describe(q)
            );
            tracing::warn!(target = %self.target, replicas = observed.scale.replicas, reason = %note, "Not scaling down without evidence of healthy latency.");
            Some(note)
        } else {
            tracing::info!(target = %self.target, "Evidence of the rules' latency is back.");
            None
        }
    }
}

fn why_of(reason: &str, pending: &[Received]) -> Why {
    let mut rules: Vec<String> = pending.iter().map(|d| d.rule.clone()).collect();
    rules.sort_unstable();
    rules.dedup();
    let last = pending.iter().max_by_key(|d| d.received);
    Why {
        reason: reason.to_string(),
        rules,
        observed_ms: pending
            .iter()
            .map(|d| d.observed_ms)
            .filter(|o| o.is_finite())
            .reduce(f64::max),
        count: last.map(|d| d.count),
        evidence_trace_id: last.map(|d| d.trace_id.clone()).filter(|t| !t.is_empty()),
    }
}

/// Every target and the rules of a round: one owner of all planning state, so plans for one
/// target never race.
pub struct Actor {
    rules: Arc<Vec<Rule>>,
    /// One action (the first rule's) per target: rules naming the same workload share its
    /// bounds.
    targets: Vec<(Target, usize)>,
    state: HashMap<Target, TargetActor>,
    /// Whether this replica acted on the previous round (see "Memory" in the module docs of
    /// [`super`]).
    acting: bool,
    leadership: Leadership,
    evidence: Arc<EvidenceStore>,
}

impl Actor {
    /// The targets the rules name (rules named after the service add theirs as decisions come).
    pub fn new(
        rules: Arc<Vec<Rule>>,
        leadership: Leadership,
        evidence: Arc<EvidenceStore>,
    ) -> Self {
        let mut targets: Vec<(Target, usize)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if !r.per_service() && !targets.iter().any(|(t, _)| *t == r.action.target) {
                targets.push((r.action.target.clone(), i));
            }
        }
        let state = targets
            .iter()
            .map(|(t, _)| (t.clone(), TargetActor::new(t.clone())))
            .collect();
        Actor {
            rules,
            targets,
            state,
            acting: false,
            leadership,
            evidence,
        }
    }

    /// A target's state.
    pub fn target(&self, t: &Target) -> Option<&TargetActor> {
        self.state.get(t)
    }

    /// Queue a batch of decisions.
    pub fn receive(&mut self, batch: Vec<Received>, metrics: &Metrics, clock: &impl Clock) {
        for d in batch {
            // A rule named after the service makes its targets as decisions come, up to
            // MAX_TARGETS: a new one starts as if just decided on (no scale-down before a quiet
            // period).
            if !self.targets.iter().any(|(t, _)| *t == d.target) {
                if self.targets.len() >= MAX_TARGETS {
                    metrics.refuse_decision("too_many_targets");
                    tracing::warn!(target = %d.target, max = MAX_TARGETS, "Refused a decision for a new target: too many targets.");
                    continue;
                }
                self.targets.push((d.target.clone(), d.rule_index));
                self.state
                    .entry(d.target.clone())
                    .or_insert_with(|| TargetActor::new(d.target.clone()))
                    .decided(Mark::new(clock.wall_ns(), "first decision for this target"));
            }
            self.state
                .entry(d.target.clone())
                .or_insert_with(|| TargetActor::new(d.target.clone()))
                .push(d);
        }
    }

    /// One round: a standby drops what is pending; the leader steps every target with news (or
    /// every target, on a tick, then lets the orchestrator reconcile it). Returns how each step
    /// ended.
    pub async fn round<O: Orchestrator>(
        &mut self,
        orch: &mut O,
        ticked: bool,
        metrics: &Metrics,
        clock: &impl Clock,
    ) -> Vec<(Target, Outcome)> {
        if !self.leadership.is_leader() {
            // A standby never acts; whatever reached it is dropped (the leader got its own).
            for st in self.state.values_mut() {
                st.drop_as_standby(metrics);
            }
            self.acting = false;
            return Vec::new();
        }
        if !self.acting {
            // Starting, or taking over the Lease: the decisions that came before are unknown,
            // so this moment stands for the last one (no scale-down before a quiet period).
            // Changes made before are read back from the workloads.
            self.acting = true;
            let now = clock.wall_ns();
            for st in self.state.values_mut() {
                st.decided(Mark::new(
                    now,
                    "began acting (started or took over the Lease)",
                ));
            }
        }
        let mut outcomes = Vec::new();
        for (target, rule_index) in &self.targets {
            let st = self
                .state
                .entry(target.clone())
                .or_insert_with(|| TargetActor::new(target.clone()));
            // Between ticks only targets with news are planned.
            if !ticked && st.pending.is_empty() {
                continue;
            }
            let action = &self.rules[*rule_index].action;
            let quiet = self.evidence.quiet(
                target,
                &self.rules,
                Duration::from_secs_f64(action.scale_down_after_ms / 1e3),
                clock.instant(),
            );
            let outcome = st.step(orch, action, &quiet, metrics, clock).await;
            outcomes.push((target.clone(), outcome));
            if ticked && let Err(e) = orch.reconcile(target, action).await {
                tracing::debug!(target = %target, error = %e, "Reconcile failed; next tick retries.");
            }
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    //! The policy against a fake orchestrator, with a hand-set clock: no API server, no network,
    //! no sleeping.

    use std::cell::Cell;
    use std::collections::VecDeque;

    use super::*;
    use crate::serve::metrics::ActionLabels;
    use crate::serve::planner::Scale;

    /// A clock that moves only when told to.
    struct ManualClock {
        wall0: Nanos,
        mono0: Instant,
        offset: Cell<Duration>,
    }

    impl ManualClock {
        fn new() -> Self {
            ManualClock {
                wall0: 1_700_000_000_000_000_000,
                mono0: Instant::now(),
                offset: Cell::new(Duration::ZERO),
            }
        }
        fn advance(&self, d: Duration) {
            self.offset.set(self.offset.get() + d);
        }
    }

    impl Clock for ManualClock {
        fn wall_ns(&self) -> Nanos {
            self.wall0 + self.offset.get().as_nanos() as Nanos
        }
        fn instant(&self) -> Instant {
            self.mono0 + self.offset.get()
        }
    }

    /// How the fake answers a write.
    enum Reply {
        /// This error; nothing changes.
        Fail(fn() -> OrchestratorError),
        /// Applied, but the answer is lost with the API (`Unavailable`).
        LostAnswer,
        /// Someone else sets the replicas to this first: 409.
        ConflictAfter(u32),
    }

    /// One workload behind a scriptable API.
    struct Fake {
        scale: Scale,
        history: Option<History>,
        controlled_by: Option<String>,
        /// The API is unreachable.
        down: bool,
        /// Reads fail with this.
        read_error: Option<fn() -> OrchestratorError>,
        /// Answers to the next writes (then: applied).
        answers: VecDeque<Reply>,
        /// Write attempts.
        attempts: usize,
        /// Changes applied: replicas, or cpu millicores for a resize.
        applied: Vec<u64>,
        /// The `why` of every write attempt.
        whys: Vec<Why>,
        /// Refusals reported: controller.
        refusals: Vec<String>,
    }

    impl Fake {
        fn at(replicas: u32) -> Self {
            Fake {
                scale: Scale {
                    replicas,
                    cpu_millis: 100,
                    memory_mib: 128,
                },
                history: None,
                controlled_by: None,
                down: false,
                read_error: None,
                answers: VecDeque::new(),
                attempts: 0,
                applied: Vec::new(),
                whys: Vec::new(),
                refusals: Vec::new(),
            }
        }

        /// A write: scripted answer, or applied.
        fn write(
            &mut self,
            apply: impl FnOnce(&mut Self),
            why: &Why,
        ) -> Result<(), OrchestratorError> {
            self.attempts += 1;
            self.whys.push(why.clone());
            if self.down {
                return Err(unavailable());
            }
            match self.answers.pop_front() {
                Some(Reply::Fail(e)) => Err(e()),
                Some(Reply::LostAnswer) => {
                    apply(self);
                    Err(unavailable())
                }
                Some(Reply::ConflictAfter(n)) => {
                    self.scale.replicas = n;
                    Err(OrchestratorError::Conflict(
                        "the object has been modified".into(),
                    ))
                }
                None => {
                    apply(self);
                    Ok(())
                }
            }
        }
    }

    fn unavailable() -> OrchestratorError {
        OrchestratorError::Unavailable("connection refused".into())
    }

    fn forbidden() -> OrchestratorError {
        OrchestratorError::Forbidden("deployments.apps is forbidden".into())
    }

    fn vpa() -> OrchestratorError {
        OrchestratorError::Controlled(
            "VerticalPodAutoscaler/x controls this workload's resources".into(),
        )
    }

    impl Orchestrator for Fake {
        async fn get(
            &mut self,
            _target: &Target,
            _action: &Action,
        ) -> Result<Observed, OrchestratorError> {
            if self.down {
                return Err(unavailable());
            }
            if let Some(e) = self.read_error {
                return Err(e());
            }
            Ok(Observed {
                scale: self.scale,
                controlled_by: self.controlled_by.clone(),
                version: None,
                history: self.history.clone(),
            })
        }

        async fn set_replicas(
            &mut self,
            _target: &Target,
            _observed: &Observed,
            to: u32,
            why: &Why,
            history: &History,
        ) -> Result<(), OrchestratorError> {
            let history = history.clone();
            self.write(
                |f| {
                    f.scale.replicas = to;
                    f.history = Some(history);
                    f.applied.push(u64::from(to));
                },
                why,
            )
        }

        async fn resize(
            &mut self,
            _target: &Target,
            _action: &Action,
            cpu_millis: u64,
            memory_mib: u64,
            why: &Why,
            history: &History,
        ) -> Result<(), OrchestratorError> {
            let history = history.clone();
            self.write(
                |f| {
                    f.scale.cpu_millis = cpu_millis;
                    f.scale.memory_mib = memory_mib;
                    f.history = Some(history);
                    f.applied.push(cpu_millis);
                },
                why,
            )
        }

        async fn report_refusal(&mut self, _target: &Target, controller: &str, _why: &Why) {
            self.refusals.push(controller.to_string());
        }
    }

    fn rules(kind: &str) -> Arc<Vec<Rule>> {
        Arc::new(
            scale_core::RulesFile::from_yaml(&format!(
                "rules:\n- name: r\n  when: {{ duration_above: 1ms }}\n  count: 5\n  window: 1s\n  action: {{ kind: {kind}, target: {{ kind: Deployment, name: x }}, min: 1, max: 5, cooldown: 1s, scale_down_after: 10s, vertical: {{ container: app, factor: 2.0, max_cpu_millis: 1000, max_memory_mib: 1024 }} }}\n"
            ))
            .unwrap()
            .rules,
        )
    }

    fn decision(rules: &[Rule], observed_ms: f64, clock: &ManualClock) -> Received {
        let r = &rules[0];
        Received {
            rule_index: 0,
            rule: r.name.clone(),
            action: r.action.kind,
            count: 5,
            observed_ms,
            target: r.action.target.clone(),
            trace_id: "abab".into(),
            window_end_ns: clock.wall_ns(),
            received: clock.instant(),
        }
    }

    /// One target, its action, and what a step needs.
    struct Bench {
        rules: Arc<Vec<Rule>>,
        actor: TargetActor,
        fake: Fake,
        metrics: Metrics,
        clock: ManualClock,
    }

    impl Bench {
        fn new(kind: &str, replicas: u32) -> Self {
            let rules = rules(kind);
            let actor = TargetActor::new(rules[0].action.target.clone());
            Bench {
                rules,
                actor,
                fake: Fake::at(replicas),
                metrics: Metrics::new(),
                clock: ManualClock::new(),
            }
        }
        fn decide(&mut self, observed_ms: f64) {
            let d = decision(&self.rules, observed_ms, &self.clock);
            self.actor.push(d);
        }
        async fn step(&mut self) -> Outcome {
            let quiet = Quiet::Missing { since_last: None };
            self.actor
                .step(
                    &mut self.fake,
                    &self.rules[0].action,
                    &quiet,
                    &self.metrics,
                    &self.clock,
                )
                .await
        }
        fn tick(&self) {
            self.clock.advance(Duration::from_millis(200));
        }
        fn actions(&self, what: &str) -> u64 {
            self.metrics
                .actions
                .get_or_create(&ActionLabels {
                    action: what.into(),
                    target: "Deployment/default/x".into(),
                })
                .get()
        }
        fn refused(&self, reason: &str) -> u64 {
            self.metrics
                .actions_refused_count(reason, "Deployment/default/x")
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_once_the_api_answers_and_applied_exactly_once() {
        let mut b = Bench::new("horizontal", 1);
        b.fake.answers.push_back(Reply::Fail(unavailable));
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Unavailable);
        assert_eq!((b.fake.attempts, b.actor.pending()), (1, 1));
        // The API stays down for a few ticks: the read fails, nothing is written, nothing lost.
        b.fake.down = true;
        for _ in 0..3 {
            b.tick();
            assert_eq!(b.step().await, Outcome::Unavailable);
        }
        assert_eq!((b.fake.attempts, b.actor.pending()), (1, 1));
        // Back: re-read (the write was not applied), re-planned, written once.
        b.fake.down = false;
        b.tick();
        let retried_at = b.clock.wall_ns();
        assert_eq!(b.step().await, Outcome::Applied("scale_up"));
        assert_eq!(b.fake.applied, vec![2]);
        assert_eq!((b.fake.attempts, b.actor.pending()), (2, 0));
        assert_eq!(b.actions("scale_up"), 1);
        // The cooldown runs from the write that was applied, not the one that failed.
        assert_eq!(b.actor.history().last_up.as_ref().unwrap().at, retried_at);
        for _ in 0..10 {
            b.tick();
            b.step().await;
        }
        assert_eq!(b.fake.applied, vec![2], "applied exactly once");
    }

    #[tokio::test]
    async fn a_write_whose_answer_was_lost_is_recognised_and_not_written_twice() {
        let mut b = Bench::new("horizontal", 1);
        b.fake.answers.push_back(Reply::LostAnswer);
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Unavailable);
        assert_eq!(b.fake.applied, vec![2]);
        b.fake.down = true;
        b.tick();
        assert_eq!(b.step().await, Outcome::Unavailable);
        assert_eq!(b.actor.pending(), 1);
        b.fake.down = false;
        b.tick();
        assert_eq!(b.step().await, Outcome::InFlightApplied);
        assert_eq!(b.actor.pending(), 0);
        assert_eq!(b.actor.history(), b.fake.history.as_ref().unwrap());
        for _ in 0..10 {
            b.tick();
            b.step().await;
        }
        assert_eq!((b.fake.attempts, b.fake.applied.clone()), (1, vec![2]));
    }

    #[tokio::test]
    async fn the_cooldown_holds_across_a_lost_write() {
        let mut b = Bench::new("horizontal", 1);
        b.fake.answers.push_back(Reply::LostAnswer);
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Unavailable);
        b.tick();
        assert_eq!(b.step().await, Outcome::InFlightApplied);
        // Within the 1 s cooldown of the write that was applied: held, counted, not written.
        b.tick();
        b.decide(900.0);
        assert_eq!(b.step().await, Outcome::Held("cooldown"));
        assert_eq!((b.fake.attempts, b.refused("cooldown")), (1, 1));
        // After it: the next decision takes the next step.
        b.clock.advance(Duration::from_secs(1));
        b.decide(900.0);
        assert_eq!(b.step().await, Outcome::Applied("scale_up"));
        assert_eq!(b.fake.applied, vec![2, 3]);
    }

    #[tokio::test]
    async fn decisions_arriving_while_an_action_fails_are_requeued_into_one_step() {
        let rules = rules("horizontal");
        let clock = ManualClock::new();
        let metrics = Metrics::new();
        let mut fake = Fake::at(1);
        fake.answers.push_back(Reply::Fail(unavailable));
        let mut actor = Actor::new(
            rules.clone(),
            Leadership::default(),
            Arc::new(EvidenceStore::new(Duration::from_secs(30))),
        );
        let target = rules[0].action.target.clone();
        actor.receive(vec![decision(&rules, 600.0, &clock)], &metrics, &clock);
        let out = actor.round(&mut fake, false, &metrics, &clock).await;
        assert_eq!(out, vec![(target.clone(), Outcome::Unavailable)]);
        // More decisions while the API is down: they join the pending one.
        fake.down = true;
        clock.advance(Duration::from_millis(100));
        actor.receive(
            vec![
                decision(&rules, 900.0, &clock),
                decision(&rules, 700.0, &clock),
            ],
            &metrics,
            &clock,
        );
        let out = actor.round(&mut fake, false, &metrics, &clock).await;
        assert_eq!(out, vec![(target.clone(), Outcome::Unavailable)]);
        assert_eq!(actor.target(&target).unwrap().pending(), 3, "none lost");
        // The API answers: one step (1 → 2, not 1 → 3) for all three, which the `why` carries.
        fake.down = false;
        clock.advance(Duration::from_millis(200));
        let out = actor.round(&mut fake, true, &metrics, &clock).await;
        assert_eq!(out, vec![(target.clone(), Outcome::Applied("scale_up"))]);
        assert_eq!(fake.applied, vec![2]);
        let why = fake.whys.last().unwrap();
        assert_eq!(
            (why.observed_ms, why.rules.clone()),
            (Some(900.0), vec!["r".to_string()])
        );
        assert_eq!(actor.target(&target).unwrap().pending(), 0);
        for _ in 0..5 {
            clock.advance(Duration::from_millis(200));
            actor.round(&mut fake, true, &metrics, &clock).await;
        }
        assert_eq!(fake.applied, vec![2], "not doubled");
    }

    #[tokio::test]
    async fn requeued_decisions_are_capped() {
        let mut b = Bench::new("horizontal", 1);
        b.fake.down = true;
        for i in 0..PENDING_CAP + 10 {
            b.decide(i as f64);
        }
        assert_eq!(b.step().await, Outcome::Unavailable);
        assert_eq!(b.actor.pending(), PENDING_CAP);
        b.fake.down = false;
        assert_eq!(b.step().await, Outcome::Applied("scale_up"));
        // The oldest were dropped, the newest kept.
        assert_eq!(
            b.fake.whys.last().unwrap().observed_ms,
            Some((PENDING_CAP + 9) as f64)
        );
    }

    #[tokio::test]
    async fn a_refusal_by_an_hpa_is_reported_once_and_not_retried() {
        let mut b = Bench::new("horizontal", 2);
        b.fake.controlled_by = Some("HorizontalPodAutoscaler/x".into());
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Refused);
        assert_eq!(
            b.fake.refusals,
            vec!["HorizontalPodAutoscaler/x".to_string()]
        );
        assert_eq!((b.refused("controlled"), b.actor.pending()), (1, 0));
        for _ in 0..20 {
            b.tick();
            assert_eq!(b.step().await, Outcome::Held("idle"));
        }
        assert_eq!((b.fake.refusals.len(), b.fake.attempts), (1, 0));
        // A new decision is refused (and reported) again, once.
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Refused);
        assert_eq!((b.fake.refusals.len(), b.refused("controlled")), (2, 2));
    }

    #[tokio::test]
    async fn a_vpa_refusal_is_reported_once_without_starting_the_cooldown() {
        let mut b = Bench::new("vertical", 2);
        b.fake.answers.push_back(Reply::Fail(vpa));
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Refused);
        assert_eq!(b.fake.refusals.len(), 1);
        assert_eq!((b.refused("controlled"), b.actor.pending()), (1, 0));
        assert!(b.actor.history().last_up.is_none(), "no cooldown");
        assert!(b.actor.history().last_decision.is_some());
        for _ in 0..5 {
            b.tick();
            b.step().await;
        }
        assert_eq!((b.fake.refusals.len(), b.fake.attempts), (1, 1));
        // The VPA is gone: the next decision resizes at once (no cooldown was started).
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Applied("resize"));
        assert_eq!(b.fake.applied, vec![200]);
    }

    #[tokio::test]
    async fn a_forbidden_write_drops_its_decisions_and_is_not_retried() {
        let mut b = Bench::new("horizontal", 1);
        b.fake.answers.push_back(Reply::Fail(forbidden));
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Dropped("forbidden"));
        assert_eq!((b.refused("forbidden"), b.actor.pending()), (1, 0));
        for _ in 0..10 {
            b.tick();
            b.step().await;
        }
        assert_eq!((b.fake.attempts, b.refused("forbidden")), (1, 1));
        assert!(
            b.actor.history().last_up.is_none(),
            "nothing changed, no cooldown"
        );
    }

    #[tokio::test]
    async fn refused_reads_keep_decisions_for_a_while_then_drop_them_once() {
        let mut b = Bench::new("horizontal", 1);
        b.fake.read_error = Some(forbidden);
        b.decide(800.0);
        for _ in 1..REFUSED_READS_BEFORE_DROP {
            assert_eq!(b.step().await, Outcome::Unreadable { dropped: false });
            assert_eq!(b.actor.pending(), 1);
            b.tick();
        }
        assert_eq!(b.step().await, Outcome::Unreadable { dropped: true });
        assert_eq!((b.actor.pending(), b.refused("forbidden")), (0, 1));
        for _ in 0..20 {
            b.tick();
            assert_eq!(b.step().await, Outcome::Unreadable { dropped: false });
        }
        assert_eq!(b.refused("forbidden"), 1);
        // Readable again (RBAC caches warm): a decision is acted on.
        b.fake.read_error = None;
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Applied("scale_up"));
        assert_eq!(b.fake.attempts, 1);
    }

    #[tokio::test]
    async fn a_conflict_is_re_read_and_re_planned_into_one_step() {
        let mut b = Bench::new("horizontal", 1);
        b.fake.answers.push_back(Reply::ConflictAfter(2));
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Applied("scale_up"));
        assert_eq!((b.fake.attempts, b.fake.applied.clone()), (2, vec![3]));
        assert_eq!(b.actions("scale_up"), 1);
    }

    #[tokio::test]
    async fn conflicts_in_a_row_wait_for_the_next_tick_with_decisions_kept() {
        let mut b = Bench::new("horizontal", 1);
        for _ in 0..MAX_CONFLICTS {
            b.fake.answers.push_back(Reply::ConflictAfter(1));
        }
        b.decide(800.0);
        assert_eq!(b.step().await, Outcome::Conflicts);
        assert_eq!((b.fake.attempts, b.actor.pending()), (MAX_CONFLICTS, 1));
        b.tick();
        assert_eq!(b.step().await, Outcome::Applied("scale_up"));
        assert_eq!(b.fake.applied, vec![2]);
    }

    #[tokio::test]
    async fn a_standby_drops_what_reaches_it_and_acts_once_it_leads() {
        let rules = rules("horizontal");
        let clock = ManualClock::new();
        let metrics = Metrics::new();
        let mut fake = Fake::at(1);
        let leadership = Leadership::new(false);
        let mut actor = Actor::new(
            rules.clone(),
            leadership.clone(),
            Arc::new(EvidenceStore::new(Duration::from_secs(30))),
        );
        let target = rules[0].action.target.clone();
        actor.receive(vec![decision(&rules, 600.0, &clock)], &metrics, &clock);
        assert!(
            actor
                .round(&mut fake, false, &metrics, &clock)
                .await
                .is_empty()
        );
        assert_eq!(metrics.decisions_refused_count("not_leader"), 1);
        assert_eq!(actor.target(&target).unwrap().pending(), 0);
        // Takes over: taking over counts as a decision, then acts on what comes.
        leadership.set(true);
        clock.advance(Duration::from_secs(60));
        let took_over = clock.wall_ns();
        let out = actor.round(&mut fake, true, &metrics, &clock).await;
        assert_eq!(out, vec![(target.clone(), Outcome::Held("idle"))]);
        assert_eq!(
            actor
                .target(&target)
                .unwrap()
                .history()
                .last_decision
                .as_ref()
                .map(|m| m.at),
            Some(took_over)
        );
        actor.receive(vec![decision(&rules, 600.0, &clock)], &metrics, &clock);
        let out = actor.round(&mut fake, false, &metrics, &clock).await;
        assert_eq!(out, vec![(target, Outcome::Applied("scale_up"))]);
        assert_eq!(fake.applied, vec![2]);
    }

    #[test]
    fn leadership_is_one_flag_that_the_gauge_mirrors() {
        let metrics = Metrics::new();
        let l = Leadership::new(false);
        l.mirror(metrics.leader.clone());
        assert_eq!(metrics.leader.get(), 0);
        let other = l.clone();
        other.set(true);
        assert!(l.is_leader());
        assert_eq!(metrics.leader.get(), 1);
        l.set(false);
        assert!(!other.is_leader());
        assert_eq!(metrics.leader.get(), 0);
        assert!(Leadership::default().is_leader());
    }
}
