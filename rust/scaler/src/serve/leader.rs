//! Leader election over a Kubernetes Lease (kube-lease-manager), so that two replicas of the
//! daemon never both act, and how the leader shows itself.
//!
//! The lease manager runs in the background and keeps the Lease renewed while this replica
//! holds it; its state is kept in a [`Leadership`] handle, which the actor (a standby never
//! acts) and the intake (a standby answers UNAVAILABLE) consult and which the `scale_leader`
//! gauge mirrors. That state can be stale — a replica cut off from the API server still
//! believes it leads until its task notices — so every write is preceded by
//! [`Leader::confirm`], which re-reads the Lease from the API server and checks that this
//! replica is the holder and that the lease has not expired by the server's own record.
//!
//! # Showing who leads: a metric and a pod label
//!
//! Readiness (`/readyz`) means "this process serves", so both replicas of a Deployment are
//! ready and a rolling update can proceed. Leadership is shown by the `scale_leader` gauge and,
//! when the daemon knows its own pod (`POD_NAME` and `POD_NAMESPACE` from the downward API), by
//! the label [`LEADER_LABEL`]` = `[`LEADER_LABEL_VALUE`] on that pod: the OTLP Service selects
//! on it, so decisions reach the replica that acts. The label follows the Lease state:
//!
//! - on becoming leader, this replica labels its own pod, then removes the label from every
//!   other pod of its namespace that has it (a leader that was SIGKILLed, or cut off from the
//!   API server, cannot remove its own);
//! - on losing the Lease, at start-up as a standby, and on shutdown, it removes the label from
//!   its own pod (a restarted container does not inherit a stale label).
//!
//! A label write that fails is retried every [`LABEL_RETRY`] until it succeeds (the first
//! failure is logged as a warning, later ones at debug). Without `POD_NAME`/`POD_NAMESPACE`
//! (outside a pod) there is no label, only the gauge. Without a Lease (`--lease` not given) the
//! replica always leads: gauge 1, label on its pod. What this costs in RBAC: `list` and `patch`
//! of pods in the daemon's own namespace (`configs/k8s/scale-daemon.yaml`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::gauge::Gauge;

use super::kube::FIELD_MANAGER;

/// Label the leader puts on its own pod (and removes from any other); the OTLP Service of
/// `configs/k8s/scale-daemon.yaml` selects on it.
pub const LEADER_LABEL: &str = "scale.autoscaler.dev/leader";

/// Value of [`LEADER_LABEL`] on the leader's pod.
pub const LEADER_LABEL_VALUE: &str = "true";

/// How often a failed label write is retried.
pub const LABEL_RETRY: Duration = Duration::from_secs(2);

/// Leader-election settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    /// Lease duration in seconds.
    pub duration_s: u64,
    /// Grace period before the duration ends when the holder renews, seconds.
    pub grace_s: u64,
}

/// This replica's own pod (from the downward API), which carries [`LEADER_LABEL`] while it
/// leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// `metadata.namespace` (`POD_NAMESPACE`).
    pub namespace: String,
    /// `metadata.name` (`POD_NAME`).
    pub name: String,
}

/// Whether this replica may act: one flag, shared (clones are the same handle). The Lease code
/// ([`Leader::start`]) sets it; the actor and the intake read it; a gauge (the `scale_leader`
/// metric, see [`Leadership::mirror`]) follows it. Without leader election it stays `true`.
#[derive(Clone, Debug)]
pub struct Leadership(Arc<LeadershipInner>);

#[derive(Debug)]
struct LeadershipInner {
    leading: AtomicBool,
    gauge: parking_lot::Mutex<Option<Gauge>>,
}

impl Default for Leadership {
    /// Leading (no election).
    fn default() -> Self {
        Self::new(true)
    }
}

impl Leadership {
    /// A handle, leading or not.
    pub fn new(leading: bool) -> Self {
        Leadership(Arc::new(LeadershipInner {
            leading: AtomicBool::new(leading),
            gauge: parking_lot::Mutex::new(None),
        }))
    }

    /// Whether this replica may act.
    pub fn is_leader(&self) -> bool {
        self.0.leading.load(Ordering::Relaxed)
    }

    /// Lead, or stand by (and update the mirrored gauge).
    pub fn set(&self, leading: bool) {
        let gauge = self.0.gauge.lock();
        self.0.leading.store(leading, Ordering::Relaxed);
        if let Some(g) = &*gauge {
            g.set(i64::from(leading));
        }
    }

    /// Keep `gauge` (the metrics' `scale_leader`) at 1 while leading, else 0, from now on; it
    /// replaces any gauge mirrored before.
    pub fn mirror(&self, gauge: Gauge) {
        let mut g = self.0.gauge.lock();
        gauge.set(i64::from(self.is_leader()));
        *g = Some(gauge);
    }
}

/// This replica's view of the Lease.
#[derive(Clone)]
pub struct Leader {
    api: Api<Lease>,
    cfg: LeaseConfig,
    state: watch::Receiver<bool>,
}

impl Leader {
    /// Start competing for the Lease; `leadership` (and with it the `scale_leader` gauge) and
    /// the label on `pod` (if given) follow the lease state. Stops when `shutdown` is cancelled: the returned task
    /// ends once the label is removed and the Lease released (await it before exiting; the
    /// Lease is released when every clone of this `Leader` is dropped too).
    pub async fn start(
        client: kube::Client,
        cfg: LeaseConfig,
        pod: Option<PodRef>,
        leadership: Leadership,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        leadership.set(false);
        let manager = LeaseManagerBuilder::new(client.clone(), cfg.name.clone())
            .with_namespace(cfg.namespace.clone())
            .with_identity(cfg.identity.clone())
            .with_duration(cfg.duration_s)
            .with_grace(cfg.grace_s)
            .build()
            .await?;
        let (mut rx, task) = manager.watch().await;
        leadership.set(*rx.borrow());
        let state = rx.clone();
        let labels = spawn_pod_label(client.clone(), pod, rx.clone(), shutdown.clone());
        let identity = cfg.identity.clone();
        let stopped = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let leading = *rx.borrow_and_update();
                        leadership.set(leading);
                        tracing::info!(identity = %identity, leading, "Lease state changed.");
                    }
                }
            }
            leadership.set(false);
            // The label goes first, so the Service stops routing here before the Lease is free.
            let _ = labels.await;
            // Dropping the receiver makes the manager release the Lease and end.
            drop(rx);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        });
        let leader = Leader {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            state,
        };
        Ok((leader, stopped))
    }

    /// Whether the background task believes this replica leads (may be stale; see
    /// [`Leader::confirm`]).
    pub fn believes_leading(&self) -> bool {
        *self.state.borrow()
    }

    /// Re-read the Lease and check that this replica holds it and it has not expired.
    pub async fn confirm(&self) -> Result<bool, kube::Error> {
        if !self.believes_leading() {
            return Ok(false);
        }
        let lease = self.api.get(&self.cfg.name).await?;
        let Some(spec) = lease.spec else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(false);
        }
        let duration = spec
            .lease_duration_seconds
            .unwrap_or(self.cfg.duration_s as i32)
            .max(0) as i64;
        let Some(renewed) = spec.renew_time.map(|t| t.0) else {
            return Ok(false);
        };
        let age = age_seconds(renewed);
        Ok(age < duration)
    }
}

/// Without leader election this replica always acts: label `pod` (if given) as the leader's
/// until `shutdown`, then remove the label (the returned task ends then). [`Leadership`] stays
/// `true` (its default), and the `scale_leader` gauge 1.
pub fn label_without_election(
    client: kube::Client,
    pod: Option<PodRef>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = watch::channel(true);
    let task = spawn_pod_label(client, pod, rx, shutdown);
    tokio::spawn(async move {
        let _ = task.await;
        drop(tx);
    })
}

/// Keep [`LEADER_LABEL`] on `pod` in step with `leading` until `shutdown` (then remove it).
fn spawn_pod_label(
    client: kube::Client,
    pod: Option<PodRef>,
    mut leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(pod) = pod else {
            tracing::info!(
                "POD_NAME or POD_NAMESPACE not set: leadership is shown by the scale_leader metric only, not by a pod label."
            );
            return;
        };
        let labeler = PodLabel {
            api: Api::namespaced(client, &pod.namespace),
            pod,
        };
        let mut want = *leading.borrow_and_update();
        let mut failed = false;
        loop {
            match labeler.reconcile(want).await {
                Ok(()) => {
                    if std::mem::take(&mut failed) {
                        tracing::info!(pod = %labeler.pod.name, leading = want, "Pod label updated after all.");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        changed = leading.changed() => if changed.is_err() { break },
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut failed, true) {
                        tracing::warn!(pod = %labeler.pod.name, leading = want, error = %e, retry_s = LABEL_RETRY.as_secs(), "Cannot update the leader label of this pod; retrying.");
                    } else {
                        tracing::debug!(pod = %labeler.pod.name, error = %e, "Leader label still not updated.");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        changed = leading.changed() => if changed.is_err() { break },
                        _ = tokio::time::sleep(LABEL_RETRY) => {}
                    }
                }
            }
            want = *leading.borrow_and_update();
        }
        match tokio::time::timeout(Duration::from_secs(2), labeler.reconcile(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(pod = %labeler.pod.name, error = %e, "Could not remove the leader label on shutdown.")
            }
            Err(_) => {
                tracing::warn!(pod = %labeler.pod.name, "Timed out removing the leader label on shutdown.")
            }
        }
    })
}

struct PodLabel {
    api: Api<Pod>,
    pod: PodRef,
}

impl PodLabel {
    async fn set(&self, name: &str, on: bool) -> Result<(), kube::Error> {
        let value = if on {
            json!(LEADER_LABEL_VALUE)
        } else {
            json!(null)
        };
        let patch = json!({"metadata": {"labels": {LEADER_LABEL: value}}});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        self.api.patch(name, &pp, &Patch::Merge(patch)).await?;
        Ok(())
    }

    /// Label this pod if `leading` (and unlabel every other pod that has the label), else
    /// unlabel it.
    async fn reconcile(&self, leading: bool) -> Result<(), kube::Error> {
        if !leading {
            return self.set(&self.pod.name, false).await;
        }
        self.set(&self.pod.name, true).await?;
        let labelled = self
            .api
            .list(&ListParams::default().labels(LEADER_LABEL))
            .await?;
        for p in labelled.items {
            let Some(name) = p.metadata.name else {
                continue;
            };
            if name != self.pod.name {
                self.set(&name, false).await?;
                tracing::info!(pod = %name, "Removed the leader label from a former leader's pod.");
            }
        }
        tracing::info!(pod = %self.pod.name, "This pod is labelled as the leader's.");
        Ok(())
    }
}

/// Seconds since `t` (negative if `t` is in the future), from the system clock.
fn age_seconds(t: k8s_openapi::jiff::Timestamp) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    now - t.as_second()
}
