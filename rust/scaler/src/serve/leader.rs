//! Leader election over a Kubernetes Lease (kube-lease-manager), so that two replicas of the
//! daemon never both act.
//!
//! The lease manager runs in the background and keeps the Lease renewed while this replica
//! holds it; its state drives `/readyz` (the Service sends decisions to the leader only) and
//! the intake (a standby answers UNAVAILABLE). That state can be stale — a replica cut off from
//! the API server still believes it leads until its task notices — so every write is preceded
//! by [`Leader::confirm`], which re-reads the Lease from the API server and checks that this
//! replica is the holder and that the lease has not expired by the server's own record.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

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

/// This replica's view of the Lease.
#[derive(Clone)]
pub struct Leader {
    api: Api<Lease>,
    cfg: LeaseConfig,
    state: watch::Receiver<bool>,
}

impl Leader {
    /// Start competing for the Lease; `metrics.ready` follows the lease state. Stops (and
    /// releases the Lease) when `shutdown` is cancelled.
    pub async fn start(
        client: kube::Client,
        cfg: LeaseConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let manager = LeaseManagerBuilder::new(client.clone(), cfg.name.clone())
            .with_namespace(cfg.namespace.clone())
            .with_identity(cfg.identity.clone())
            .with_duration(cfg.duration_s)
            .with_grace(cfg.grace_s)
            .build()
            .await?;
        let (mut rx, task) = manager.watch().await;
        metrics.ready.store(*rx.borrow(), Ordering::Relaxed);
        let state = rx.clone();
        let identity = cfg.identity.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let leading = *rx.borrow_and_update();
                        metrics.ready.store(leading, Ordering::Relaxed);
                        tracing::info!(identity = %identity, leading, "Lease state changed.");
                    }
                }
            }
            metrics.ready.store(false, Ordering::Relaxed);
            // Dropping the receiver makes the manager release the Lease and end.
            drop(rx);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        });
        Ok(Leader {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            state,
        })
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

/// Seconds since `t` (negative if `t` is in the future), from the system clock.
fn age_seconds(t: k8s_openapi::jiff::Timestamp) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    now - t.as_second()
}
