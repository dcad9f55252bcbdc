//! Orchestrators: where plans are carried out. [`Orchestrator`] is the seam; [`DryRun`] is the
//! embedded default (log and append every action to a JSON-lines audit file, keep the scale it
//! would have set, and the planner's history, in memory). The Kubernetes implementation is
//! [`super::kube::Kube`].
//!
//! An orchestrator keeps the planner's [`History`] of each workload with the workload, written
//! with every change ([`Orchestrator::set_replicas`] and [`Orchestrator::resize`] get the
//! history to keep if the change is applied) and read back by [`Orchestrator::get`], so that a
//! restarted daemon or a new leader knows when the workload was last scaled and why.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use scale_core::{Action, Target};
use serde_json::json;

use super::planner::{History, Scale};

/// Errors of an orchestrator. The actor treats them differently: a [`Conflict`] is re-read and
/// re-planned at once; [`Unavailable`] keeps the action pending and retries on the next tick;
/// [`Controlled`] is reported through [`Orchestrator::report_refusal`] like the planner's
/// refusal; the rest are reported and the decisions dropped.
///
/// [`Conflict`]: OrchestratorError::Conflict
/// [`Unavailable`]: OrchestratorError::Unavailable
/// [`Controlled`]: OrchestratorError::Controlled
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The audit file could not be written.
    #[error("audit file {path}: {source}")]
    Audit {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Someone else changed the object since it was read (HTTP 409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The API could not be reached or answered 5xx/429: retry later.
    #[error("API unavailable: {0}")]
    Unavailable(String),
    /// RBAC refused the request (HTTP 403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The workload does not exist (HTTP 404).
    #[error("not found: {0}")]
    NotFound(String),
    /// This replica does not hold the Lease: it must not write.
    #[error("not the leader")]
    NotLeader,
    /// Another controller owns what the action would change (a VerticalPodAutoscaler, for a
    /// vertical action): who, and what it controls. Reported like a planner refusal.
    #[error("controlled: {0}")]
    Controlled(String),
    /// A pod cannot be resized in place and `vertical.fallback` is `none`: why.
    #[error("in-place resize refused: {0}")]
    InPlaceRefused(String),
    /// Anything else the API refused (HTTP 4xx), or an unsupported workload.
    #[error("{0}")]
    Other(String),
}

impl OrchestratorError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Audit { .. } => "audit",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::NotLeader => "not_leader",
            Self::Controlled(_) => "controlled",
            Self::InPlaceRefused(_) => "in_place_refused",
            Self::Other(_) => "other",
        }
    }
}

/// What an orchestrator read about a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Its scale.
    pub scale: Scale,
    /// The HPA or KEDA ScaledObject that controls its replicas, if any.
    pub controlled_by: Option<String>,
    /// Opaque version for optimistic concurrency (Kubernetes `resourceVersion` of the
    /// workload).
    pub version: Option<String>,
    /// The planner's history kept with the workload, if there is one (none yet, or not
    /// readable: the daemon then goes by what it remembers itself).
    pub history: Option<History>,
}

/// Why an action is taken: what the Kubernetes Event, the audit and the logs say.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Why {
    /// The planner's reason ("latency rule checkout-latency", "quiet for 300 s").
    pub reason: String,
    /// Rules whose decisions are behind it.
    pub rules: Vec<String>,
    /// Largest observed latency among those decisions, ms.
    pub observed_ms: Option<f64>,
    /// Breaches in the window, as the decision reported.
    pub count: Option<i64>,
    /// A trace id to look at.
    pub evidence_trace_id: Option<String>,
}

impl Why {
    /// One line for humans.
    pub fn message(&self, what: &str) -> String {
        let mut m = format!("{what}: {}", self.reason);
        if let Some(c) = self.count {
            m.push_str(&format!("; {c} breaches in the window"));
        }
        if let Some(o) = self.observed_ms.filter(|o| o.is_finite()) {
            m.push_str(&format!("; observed {o:.1} ms"));
        }
        if let Some(t) = &self.evidence_trace_id {
            m.push_str(&format!("; evidence trace {t}"));
        }
        m
    }
}

/// Reads and changes the scale of workloads. `async` so the Kubernetes implementation does not
/// block the runtime; the actor is generic over it (no boxing).
pub trait Orchestrator: Send + 'static {
    /// Current scale of `target` (replicas; cpu/memory of `action`'s container when the action
    /// can be vertical) and who else controls it.
    fn get(
        &mut self,
        target: &Target,
        action: &Action,
    ) -> impl Future<Output = Result<Observed, OrchestratorError>> + Send;
    /// Set the replica count, provided the object is still at `observed.version`, and keep
    /// `history` with the workload (in the same write where the API allows).
    fn set_replicas(
        &mut self,
        target: &Target,
        observed: &Observed,
        to: u32,
        why: &Why,
        history: &History,
    ) -> impl Future<Output = Result<(), OrchestratorError>> + Send;
    /// Resize cpu/memory requests of `action.vertical.container`, and keep `history` with the
    /// workload.
    fn resize(
        &mut self,
        target: &Target,
        action: &Action,
        cpu_millis: u64,
        memory_mib: u64,
        why: &Why,
        history: &History,
    ) -> impl Future<Output = Result<(), OrchestratorError>> + Send;
    /// Report that an action was refused because another controller owns the workload:
    /// `controller` names it, and `why.reason` says what it controls.
    fn report_refusal(
        &mut self,
        target: &Target,
        controller: &str,
        why: &Why,
    ) -> impl Future<Output = ()> + Send;
    /// Report that a scale-down waits for evidence of healthy latency (`note` says why).
    /// Default: nothing (the daemon logs it and sets a metric either way).
    fn report_hold(&mut self, _target: &Target, _note: &str) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// Periodic upkeep for a target (the Kubernetes one applies recorded vertical sizes to pods
    /// created since). Default: nothing.
    fn reconcile(
        &mut self,
        _target: &Target,
        _action: &Action,
    ) -> impl Future<Output = Result<(), OrchestratorError>> + Send {
        async { Ok(()) }
    }
}

/// Dry run: nothing is changed anywhere; every action is logged and appended to the audit file,
/// and the scale it would have set is remembered (starting from `initial`).
pub struct DryRun {
    audit: Option<(PathBuf, File)>,
    scales: HashMap<Target, Scale>,
    histories: HashMap<Target, History>,
    initial: Scale,
}

impl DryRun {
    /// A dry run writing to `audit` (if given); workloads start at `initial`.
    pub fn new(audit: Option<&Path>, initial: Scale) -> Result<Self, OrchestratorError> {
        let audit = match audit {
            Some(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| OrchestratorError::Audit {
                        path: p.to_path_buf(),
                        source,
                    })?;
                Some((p.to_path_buf(), f))
            }
            None => None,
        };
        Ok(Self {
            audit,
            scales: HashMap::new(),
            histories: HashMap::new(),
            initial,
        })
    }

    fn record(&mut self, entry: serde_json::Value) -> Result<(), OrchestratorError> {
        tracing::info!(action = %entry, "Dry run: would act.");
        if let Some((path, f)) = &mut self.audit {
            // One write per line, so a reader never sees half an entry.
            let line = format!("{entry}\n");
            f.write_all(line.as_bytes())
                .and_then(|_| f.flush())
                .map_err(|source| OrchestratorError::Audit {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Orchestrator for DryRun {
    async fn get(
        &mut self,
        target: &Target,
        _action: &Action,
    ) -> Result<Observed, OrchestratorError> {
        let scale = *self.scales.entry(target.clone()).or_insert(self.initial);
        Ok(Observed {
            scale,
            controlled_by: None,
            version: None,
            history: self.histories.get(target).cloned(),
        })
    }

    async fn set_replicas(
        &mut self,
        target: &Target,
        observed: &Observed,
        to: u32,
        why: &Why,
        history: &History,
    ) -> Result<(), OrchestratorError> {
        self.record(json!({
            "time_ms": now_ms(), "dry_run": true, "action": "set_replicas",
            "target": target.to_string(), "from": observed.scale.replicas, "to": to, "why": why,
        }))?;
        self.scales
            .entry(target.clone())
            .or_insert(self.initial)
            .replicas = to;
        self.histories.insert(target.clone(), history.clone());
        Ok(())
    }

    async fn resize(
        &mut self,
        target: &Target,
        _action: &Action,
        cpu_millis: u64,
        memory_mib: u64,
        why: &Why,
        history: &History,
    ) -> Result<(), OrchestratorError> {
        self.record(json!({
            "time_ms": now_ms(), "dry_run": true, "action": "resize",
            "target": target.to_string(), "cpu_millis": cpu_millis, "memory_mib": memory_mib, "why": why,
        }))?;
        let s = self.scales.entry(target.clone()).or_insert(self.initial);
        s.cpu_millis = cpu_millis;
        s.memory_mib = memory_mib;
        self.histories.insert(target.clone(), history.clone());
        Ok(())
    }

    async fn report_refusal(&mut self, target: &Target, controller: &str, why: &Why) {
        let _ = self.record(json!({
            "time_ms": now_ms(), "dry_run": true, "action": "refused",
            "target": target.to_string(), "controller": controller, "why": why,
        }));
    }
}
