//! Orchestrators: where plans are carried out. [`Orchestrator`] is the seam; [`DryRun`] is the
//! embedded default (log and append every action to a JSON-lines audit file, keep the scale it
//! would have set in memory). The Kubernetes implementation lives beside it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use scale_core::Target;
use serde_json::json;

use super::planner::Scale;

/// Errors of an orchestrator.
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
}

/// Reads and changes the scale of workloads.
pub trait Orchestrator: Send {
    /// Current scale of `target`, and the name of a controller (HPA, KEDA) that owns its
    /// replicas, if any.
    fn get(&mut self, target: &Target) -> Result<(Scale, Option<String>), OrchestratorError>;
    /// Set the replica count; `why` explains it (rule, evidence).
    fn set_replicas(&mut self, target: &Target, from: u32, to: u32, why: &serde_json::Value) -> Result<(), OrchestratorError>;
    /// Resize cpu/memory requests.
    fn resize(&mut self, target: &Target, cpu_millis: u64, memory_mib: u64, why: &serde_json::Value) -> Result<(), OrchestratorError>;
}

/// Dry run: nothing is changed anywhere; every action is logged and appended to the audit file,
/// and the scale it would have set is remembered (starting from `initial`).
pub struct DryRun {
    audit: Option<(PathBuf, File)>,
    scales: HashMap<Target, Scale>,
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
                    .map_err(|source| OrchestratorError::Audit { path: p.to_path_buf(), source })?;
                Some((p.to_path_buf(), f))
            }
            None => None,
        };
        Ok(Self { audit, scales: HashMap::new(), initial })
    }

    fn record(&mut self, entry: serde_json::Value) -> Result<(), OrchestratorError> {
        tracing::info!(action = %entry, "Dry run: would act.");
        if let Some((path, f)) = &mut self.audit {
            writeln!(f, "{entry}").and_then(|_| f.flush()).map_err(|source| OrchestratorError::Audit { path: path.clone(), source })?;
        }
        Ok(())
    }
}

fn now_rfc3339ish() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Orchestrator for DryRun {
    fn get(&mut self, target: &Target) -> Result<(Scale, Option<String>), OrchestratorError> {
        Ok((*self.scales.entry(target.clone()).or_insert(self.initial), None))
    }

    fn set_replicas(&mut self, target: &Target, from: u32, to: u32, why: &serde_json::Value) -> Result<(), OrchestratorError> {
        self.record(json!({
            "time_ms": now_rfc3339ish(), "dry_run": true, "action": "set_replicas",
            "target": target.to_string(), "from": from, "to": to, "why": why,
        }))?;
        self.scales.entry(target.clone()).or_insert(self.initial).replicas = to;
        Ok(())
    }

    fn resize(&mut self, target: &Target, cpu_millis: u64, memory_mib: u64, why: &serde_json::Value) -> Result<(), OrchestratorError> {
        self.record(json!({
            "time_ms": now_rfc3339ish(), "dry_run": true, "action": "resize",
            "target": target.to_string(), "cpu_millis": cpu_millis, "memory_mib": memory_mib, "why": why,
        }))?;
        let s = self.scales.entry(target.clone()).or_insert(self.initial);
        s.cpu_millis = cpu_millis;
        s.memory_mib = memory_mib;
        Ok(())
    }
}
