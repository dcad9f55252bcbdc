//! `scale train --configmap NAMESPACE/NAME`: the snapshot as a ConfigMap's binary data, for
//! collectors to mount read-only as their `initial_snapshot` (`configs/k8s/collector-warm.yaml`).
//!
//! Written by server-side apply (field manager [`FIELD_MANAGER`]), so the ConfigMap is created
//! or updated in one request and other fields' owners are left alone. Kubernetes refuses a
//! ConfigMap whose data exceed 1 MiB ([`MAX_BYTES`]); a larger snapshot is refused here, before
//! any request, with a configuration that would fit.

use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};

use super::{Summary, TrainError, format_time};

/// The binaryData key that holds the snapshot (the file name a mounted ConfigMap shows).
pub const KEY: &str = "scale.snapshot";
/// The most data a ConfigMap may hold (the API server's limit on a ConfigMap's data).
pub const MAX_BYTES: usize = 1 << 20;
/// The server-side apply field manager.
pub const FIELD_MANAGER: &str = "scale-train";
/// Annotations describing what was learned.
pub const ANNOTATION_SOURCE: &str = "scale.autoscaler.dev/trained-from";
/// See [`ANNOTATION_SOURCE`].
pub const ANNOTATION_SPANS: &str = "scale.autoscaler.dev/trained-spans";
/// See [`ANNOTATION_SOURCE`].
pub const ANNOTATION_RANGE: &str = "scale.autoscaler.dev/trained-range";

/// A ConfigMap's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Target {
    /// Parse `NAMESPACE/NAME`.
    pub fn parse(s: &str) -> Result<Self, TrainError> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(TrainError::Options(format!(
                "--configmap {s:?}: give NAMESPACE/NAME"
            ))),
        }
    }
}

/// The ConfigMap holding `snapshot`, as applied.
pub fn manifest(t: &Target, snapshot: &[u8], s: &Summary) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(t.name.clone());
    cm.metadata.namespace = Some(t.namespace.clone());
    cm.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        )]
        .into(),
    );
    let mut notes = vec![
        (ANNOTATION_SOURCE.to_string(), s.source.clone()),
        (ANNOTATION_SPANS.to_string(), s.spans_learned.to_string()),
    ];
    if s.first_end_ns > 0 {
        notes.push((
            ANNOTATION_RANGE.to_string(),
            format!(
                "{} .. {}",
                format_time(s.first_end_ns),
                format_time(s.last_end_ns)
            ),
        ));
    }
    cm.metadata.annotations = Some(notes.into_iter().collect());
    cm.binary_data = Some([(KEY.to_string(), ByteString(snapshot.to_vec()))].into());
    cm
}

/// Apply the ConfigMap with the snapshot.
pub fn write(
    t: &Target,
    kubeconfig: Option<&Path>,
    snapshot: &[u8],
    s: &Summary,
) -> Result<(), TrainError> {
    let cm = manifest(t, snapshot, s);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainError::ConfigMap(format!("starting the runtime: {e}")))?;
    rt.block_on(async {
        let client = crate::serve::kube::client(kubeconfig)
            .await
            .map_err(|e| TrainError::ConfigMap(format!("{e:#}")))?;
        let api: Api<ConfigMap> = Api::namespaced(client, &t.namespace);
        api.patch(
            &t.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map_err(|e| TrainError::ConfigMap(format!("{}/{}: {e}", t.namespace, t.name)))?;
        Ok(())
    })
}

/// Read the snapshot back from the ConfigMap.
pub async fn read(client: kube::Client, t: &Target) -> Result<Vec<u8>, TrainError> {
    let api: Api<ConfigMap> = Api::namespaced(client, &t.namespace);
    let cm = api
        .get(&t.name)
        .await
        .map_err(|e| TrainError::ConfigMap(format!("{}/{}: {e}", t.namespace, t.name)))?;
    cm.binary_data
        .and_then(|mut d| d.remove(KEY))
        .map(|b| b.0)
        .ok_or_else(|| {
            TrainError::ConfigMap(format!("{}/{}: no binaryData.{KEY}", t.namespace, t.name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// configs/k8s/collector-warm.yaml mounts the key this writes, from the ConfigMap its
    /// CronJob writes.
    #[test]
    fn the_shipped_manifest_mounts_the_key_written_here() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../configs/k8s/collector-warm.yaml"),
        )
        .unwrap();
        assert!(text.contains(&format!("items: [{{ key: {KEY}, path: {KEY} }}]")));
        assert!(text.contains(&format!("/etc/scale/snapshot/{KEY}")));
        assert!(text.contains("--configmap=scale-system/scale-snapshot"));
        assert!(text.contains("name: scale-snapshot\n"));
    }

    #[test]
    fn targets_parse_or_say_what_to_give() {
        assert_eq!(
            Target::parse("obs/scale-snapshot").unwrap(),
            Target {
                namespace: "obs".into(),
                name: "scale-snapshot".into()
            }
        );
        for bad in ["obs", "/x", "x/", "a/b/c"] {
            assert!(
                Target::parse(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("NAMESPACE/NAME")
            );
        }
    }
}
