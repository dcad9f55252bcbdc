//! The Kubernetes orchestrator (kube 5).
//!
//! - **Read**: the Deployment or StatefulSet (replicas, the `resourceVersion` every write is
//!   conditioned on, and the planner's history in the [`HISTORY_ANNOTATION`] annotation); the
//!   HorizontalPodAutoscalers and, when the CRD exists, KEDA ScaledObjects of the namespace, to
//!   find another controller; for actions that can be vertical, the pod template (requests of
//!   `vertical.container`, or the size SCALE last chose, recorded in the
//!   [`RESOURCES_ANNOTATION`] annotation).
//! - **Horizontal**: one merge patch of the workload sets `spec.replicas` *and* the history
//!   annotation, with the `resourceVersion` that was read as a precondition. A concurrent writer
//!   makes it fail with 409 ([`OrchestratorError::Conflict`]); the actor re-reads and re-plans.
//!   Not `PUT …/scale`: the scale subresource cannot carry an annotation, and a second write
//!   after it would leave a moment in which a crash loses the cooldown (a new leader would then
//!   scale again at once). One request makes the change and its memory atomic.
//! - **Vertical**: the chosen requests are recorded on the workload (annotation), then every pod
//!   of the workload is resized in place through the `resize` subresource (Kubernetes ≥ 1.33).
//!   [`Orchestrator::reconcile`] re-applies the recorded size to pods created later. Where the
//!   `resize` subresource is unavailable (older clusters: 404/405) the fallback patches the pod
//!   template's requests instead, which rolls the workload out.
//! - **Leadership**: with a [`Leader`], every write is preceded by [`Leader::confirm`].
//! - **Events**: every action and refusal is published as a Kubernetes Event
//!   (`events.k8s.io/v1`) on the workload, with the rule, observed latency, window count and an
//!   evidence trace id.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale as K8sScale;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use scale_core::{Action, ActionKind, Target};
use serde_json::json;

use super::leader::Leader;
use super::metrics::Metrics;
use super::orchestrator::{Observed, Orchestrator, OrchestratorError, Why};
use super::planner::{History, Scale};

/// Annotation on the workload holding the requests SCALE chose for it, as JSON
/// `{"container": "...", "cpu_millis": n, "memory_mib": n}`.
pub const RESOURCES_ANNOTATION: &str = "scale.autoscaler.dev/resources";

/// Annotation on the workload holding the planner's memory of it — last scale-up, scale-down
/// and decision with their causes — as versioned JSON ([`History::to_record`]). Written with
/// every change, read before every plan.
pub const HISTORY_ANNOTATION: &str = "scale.autoscaler.dev/history";

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "scale-autoscaler";

/// Who reports Events: the controller name and this replica's identity.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// `reportingController`, e.g. `scale-autoscaler`.
    pub controller: String,
    /// `reportingInstance`: the pod name.
    pub instance: String,
}

/// Severity of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// An action was taken.
    Normal,
    /// An action was refused.
    Warning,
}

/// The Kubernetes orchestrator.
pub struct Kube {
    client: Client,
    reporter: Reporter,
    events_sent: u64,
    leader: Option<Leader>,
    metrics: Arc<Metrics>,
    keda_absent: bool,
    /// Targets whose history annotation could not be read (warned about once).
    bad_history: std::collections::HashSet<Target>,
}

fn classify(op: &str, e: kube::Error, metrics: &Metrics) -> OrchestratorError {
    let err = match e {
        kube::Error::Api(s) if s.is_conflict() => OrchestratorError::Conflict(s.message.clone()),
        kube::Error::Api(s) if s.is_forbidden() => OrchestratorError::Forbidden(s.message.clone()),
        kube::Error::Api(s) if s.code == 404 => OrchestratorError::NotFound(s.message.clone()),
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => {
            OrchestratorError::Unavailable(format!("{} ({})", s.message, s.code))
        }
        kube::Error::Api(s) => OrchestratorError::Other(format!("{} ({})", s.message, s.code)),
        // Transport, TLS, timeouts: the API server is unreachable.
        other => OrchestratorError::Unavailable(other.to_string()),
    };
    metrics.api_error(op, err.kind());
    err
}

/// Parse a Kubernetes CPU quantity into millicores ("250m", "1", "0.5", "2k" is not a CPU).
pub fn cpu_millis(q: &str) -> Option<u64> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<f64>().ok().map(|v| v.round() as u64);
    }
    q.parse::<f64>().ok().map(|v| (v * 1000.0).round() as u64)
}

/// Parse a Kubernetes memory quantity into MiB ("128Mi", "1Gi", "500M", "1048576").
pub fn memory_mib(q: &str) -> Option<u64> {
    let q = q.trim();
    const UNITS: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, mult) in UNITS {
        if let Some(n) = q.strip_suffix(suffix) {
            return n
                .parse::<f64>()
                .ok()
                .map(|v| (v * mult / (1024.0 * 1024.0)).round() as u64);
        }
    }
    q.parse::<f64>()
        .ok()
        .map(|v| (v / (1024.0 * 1024.0)).round() as u64)
}

fn selector_string(sel: &LabelSelector) -> Option<String> {
    // matchLabels only; matchExpressions are rare for workloads and would need the full syntax.
    let labels = sel.match_labels.as_ref()?;
    if labels.is_empty() {
        return None;
    }
    Some(
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The container a vertical action resizes: the configured one, else the template's first.
fn container_name(action: &Action, template: &PodTemplateSpec) -> String {
    action
        .vertical
        .container
        .clone()
        .or_else(|| {
            template
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .map(|c| c.name.clone())
        })
        .unwrap_or_default()
}

/// cpu (millicores) and memory (MiB) requests of `container` in a pod spec, where set.
fn container_requests(spec: Option<&PodSpec>, container: &str) -> (Option<u64>, Option<u64>) {
    let c = spec.and_then(|s| s.containers.iter().find(|c| c.name == container));
    let req = c
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.requests.as_ref());
    (
        req.and_then(|r| r.get("cpu"))
            .and_then(|q| cpu_millis(&q.0)),
        req.and_then(|r| r.get("memory"))
            .and_then(|q| memory_mib(&q.0)),
    )
}

fn requests_of(template: &PodTemplateSpec, container: &str) -> (u64, u64) {
    let (cpu, mem) = container_requests(template.spec.as_ref(), container);
    (cpu.unwrap_or(0), mem.unwrap_or(0))
}

/// What a workload looks like to the planner and the vertical path.
struct Workload {
    meta: ObjectMeta,
    replicas: u32,
    template: PodTemplateSpec,
    selector: LabelSelector,
}

impl Kube {
    /// An orchestrator using `client`; events are reported as `reporter`; with `leader`, every
    /// write is preceded by a Lease check.
    pub fn new(
        client: Client,
        reporter: Reporter,
        leader: Option<Leader>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Kube {
            client,
            reporter,
            events_sent: 0,
            leader,
            metrics,
            keda_absent: false,
            bad_history: Default::default(),
        }
    }

    async fn ensure_leader(&self, op: &str) -> Result<(), OrchestratorError> {
        match &self.leader {
            None => Ok(()),
            Some(l) => match l.confirm().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(OrchestratorError::NotLeader),
                Err(e) => Err(classify(op, e, &self.metrics)),
            },
        }
    }

    async fn get_scale(&self, target: &Target) -> Result<K8sScale, OrchestratorError> {
        let r = match target.kind.as_str() {
            "Deployment" => {
                Api::<Deployment>::namespaced(self.client.clone(), &target.namespace)
                    .get_scale(&target.name)
                    .await
            }
            "StatefulSet" => {
                Api::<StatefulSet>::namespaced(self.client.clone(), &target.namespace)
                    .get_scale(&target.name)
                    .await
            }
            k => {
                return Err(OrchestratorError::Other(format!(
                    "unsupported kind {k} (Deployment or StatefulSet)"
                )));
            }
        };
        r.map_err(|e| classify("get_scale", e, &self.metrics))
    }

    async fn workload(&self, target: &Target) -> Result<Workload, OrchestratorError> {
        let (meta, spec) = match target.kind.as_str() {
            "Deployment" => {
                let d = Api::<Deployment>::namespaced(self.client.clone(), &target.namespace)
                    .get(&target.name)
                    .await
                    .map_err(|e| classify("get_workload", e, &self.metrics))?;
                (
                    d.metadata,
                    (d.spec.replicas, d.spec.template, d.spec.selector),
                )
            }
            "StatefulSet" => {
                let d = Api::<StatefulSet>::namespaced(self.client.clone(), &target.namespace)
                    .get(&target.name)
                    .await
                    .map_err(|e| classify("get_workload", e, &self.metrics))?;
                (
                    d.metadata,
                    (d.spec.replicas, d.spec.template, d.spec.selector),
                )
            }
            k => {
                return Err(OrchestratorError::Other(format!(
                    "unsupported kind {k} (Deployment or StatefulSet)"
                )));
            }
        };
        let (replicas, template, selector) = spec;
        Ok(Workload {
            meta,
            // The API server defaults an absent `spec.replicas` to 1.
            replicas: replicas.unwrap_or(1).max(0) as u32,
            template,
            selector,
        })
    }

    /// The planner's history recorded on the workload; an unreadable record is warned about
    /// once (until it is readable again) and read as none — the next change overwrites it.
    fn history_of(&mut self, target: &Target, meta: &ObjectMeta) -> Option<History> {
        let text = meta.annotations.as_ref()?.get(HISTORY_ANNOTATION)?;
        match History::from_record(text) {
            Ok(h) => {
                self.bad_history.remove(target);
                Some(h)
            }
            Err(e) => {
                if self.bad_history.insert(target.clone()) {
                    tracing::warn!(target = %target, annotation = HISTORY_ANNOTATION, error = %e, "Ignoring the workload's history record; the next change rewrites it.");
                }
                None
            }
        }
    }

    /// The HPA or KEDA ScaledObject targeting the workload. Lists are served from the API
    /// server's watch cache (`resourceVersion=0`): a consistent list waits for the cache to
    /// catch up with etcd (~100 ms on every call here), and an HPA created milliseconds ago
    /// is caught on the next decision anyway.
    async fn controller_of(
        &mut self,
        target: &Target,
    ) -> Result<Option<String>, OrchestratorError> {
        let hpas =
            Api::<HorizontalPodAutoscaler>::namespaced(self.client.clone(), &target.namespace)
                .list(&ListParams::default().match_any())
                .await
                .map_err(|e| classify("list_hpa", e, &self.metrics))?;
        for h in hpas.items {
            let r = &h.spec.scale_target_ref;
            if r.kind == target.kind && r.name == target.name {
                return Ok(Some(format!(
                    "HorizontalPodAutoscaler {}/{}",
                    target.namespace,
                    h.metadata.name.unwrap_or_default()
                )));
            }
        }
        if self.keda_absent {
            return Ok(None);
        }
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "keda.sh",
            "v1alpha1",
            "ScaledObject",
        ));
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &target.namespace, &ar);
        match api.list(&ListParams::default().match_any()).await {
            Ok(list) => {
                for so in list.items {
                    let r = &so.data["spec"]["scaleTargetRef"];
                    let kind = r["kind"].as_str().unwrap_or("Deployment");
                    if kind == target.kind && r["name"].as_str() == Some(target.name.as_str()) {
                        return Ok(Some(format!(
                            "KEDA ScaledObject {}/{}",
                            target.namespace,
                            so.metadata.name.unwrap_or_default()
                        )));
                    }
                }
                Ok(None)
            }
            // No KEDA CRD in this cluster: remember and stop asking.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::debug!("No KEDA ScaledObject API in this cluster.");
                self.keda_absent = true;
                Ok(None)
            }
            Err(e) => Err(classify("list_scaledobject", e, &self.metrics)),
        }
    }

    fn reference(target: &Target, uid: Option<String>) -> ObjectReference {
        ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(target.kind.clone()),
            name: Some(target.name.clone()),
            namespace: Some(target.namespace.clone()),
            uid,
            ..Default::default()
        }
    }

    /// Publish one `events.k8s.io/v1` Event per action. Not kube-runtime's `Recorder`: it folds
    /// repeated (reason, action) pairs into a series and keeps only the first note, and every
    /// step must keep its own explanation.
    async fn event(
        &mut self,
        target: &Target,
        uid: Option<String>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.events_sent += 1;
        let now = k8s_openapi::jiff::Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}{:04x}",
                    target.name,
                    now.as_nanosecond(),
                    self.events_sent & 0xffff
                )),
                namespace: Some(target.namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                if type_ == EventType::Normal {
                    "Normal"
                } else {
                    "Warning"
                }
                .into(),
            ),
            reason: Some(reason.into()),
            action: Some(action.into()),
            note: Some(truncate(note, 1000)),
            regarding: Some(Self::reference(target, uid)),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(self.reporter.instance.clone()),
            ..Default::default()
        };
        let api = Api::<Event>::namespaced(self.client.clone(), &target.namespace);
        if let Err(e) = api
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &ev,
            )
            .await
        {
            let kind = classify("event", e, &self.metrics);
            tracing::warn!(target = %target, error = %kind, "Could not publish the Kubernetes Event.");
        }
    }

    async fn pods(&self, target: &Target, w: &Workload) -> Result<Vec<Pod>, OrchestratorError> {
        let Some(sel) = selector_string(&w.selector) else {
            return Ok(Vec::new());
        };
        let pods = Api::<Pod>::namespaced(self.client.clone(), &target.namespace)
            .list(&ListParams::default().match_any().labels(&sel))
            .await
            .map_err(|e| classify("list_pods", e, &self.metrics))?;
        Ok(pods.items)
    }

    /// Resize `pods` in place; returns how many were resized, or `Ok(None)` when the `resize`
    /// subresource does not exist on this cluster.
    async fn resize_pods(
        &self,
        target: &Target,
        pods: &[Pod],
        container: &str,
        cpu: u64,
        mem: u64,
    ) -> Result<Option<usize>, OrchestratorError> {
        let api = Api::<Pod>::namespaced(self.client.clone(), &target.namespace);
        let mut n = 0;
        for p in pods {
            let Some(name) = p.metadata.name.as_deref() else {
                continue;
            };
            let current = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == container));
            let Some(c) = current else { continue };
            if container_requests(p.spec.as_ref(), container) == (Some(cpu), Some(mem)) {
                continue;
            }
            let mut resources =
                json!({"requests": {"cpu": format!("{cpu}m"), "memory": format!("{mem}Mi")}});
            // Requests may not exceed limits: raise limits that would be below the new requests.
            if let Some(lim) = c.resources.as_ref().and_then(|r| r.limits.as_ref()) {
                if lim
                    .get("cpu")
                    .and_then(|q| cpu_millis(&q.0))
                    .is_some_and(|l| l < cpu)
                {
                    resources["limits"]["cpu"] = json!(format!("{cpu}m"));
                }
                if lim
                    .get("memory")
                    .and_then(|q| memory_mib(&q.0))
                    .is_some_and(|l| l < mem)
                {
                    resources["limits"]["memory"] = json!(format!("{mem}Mi"));
                }
            }
            let patch =
                json!({"spec": {"containers": [{"name": container, "resources": resources}]}});
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match api
                .patch_subresource("resize", name, &pp, &Patch::Strategic(patch))
                .await
            {
                Ok(_) => n += 1,
                Err(kube::Error::Api(s))
                    if (s.code == 404 && s.message.contains("resize")) || s.code == 405 =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(classify("resize", e, &self.metrics)),
            }
        }
        Ok(Some(n))
    }

    async fn patch_workload(
        &self,
        target: &Target,
        patch: serde_json::Value,
        op: &str,
    ) -> Result<(), OrchestratorError> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let r = match target.kind.as_str() {
            "Deployment" => Api::<Deployment>::namespaced(self.client.clone(), &target.namespace)
                .patch(&target.name, &pp, &Patch::Strategic(patch))
                .await
                .map(|_| ()),
            "StatefulSet" => Api::<StatefulSet>::namespaced(self.client.clone(), &target.namespace)
                .patch(&target.name, &pp, &Patch::Strategic(patch))
                .await
                .map(|_| ()),
            k => return Err(OrchestratorError::Other(format!("unsupported kind {k}"))),
        };
        r.map_err(|e| classify(op, e, &self.metrics))
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn recorded(meta: &ObjectMeta) -> Option<(String, u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_str(meta.annotations.as_ref()?.get(RESOURCES_ANNOTATION)?).ok()?;
    Some((
        v["container"].as_str()?.to_string(),
        v["cpu_millis"].as_u64()?,
        v["memory_mib"].as_u64()?,
    ))
}

impl Orchestrator for Kube {
    async fn get(
        &mut self,
        target: &Target,
        action: &Action,
    ) -> Result<Observed, OrchestratorError> {
        let w = self.workload(target).await?;
        let replicas = w.replicas;
        let version = w.meta.resource_version.clone();
        let history = self.history_of(target, &w.meta);
        let controlled_by = self.controller_of(target).await?;
        let (mut cpu, mut mem) = (0, 0);
        if action.kind != ActionKind::Horizontal {
            let container = container_name(action, &w.template);
            (cpu, mem) = match recorded(&w.meta) {
                Some((c, cpu, mem)) if c == container => (cpu, mem),
                _ => requests_of(&w.template, &container),
            };
        }
        Ok(Observed {
            scale: Scale {
                replicas,
                cpu_millis: cpu,
                memory_mib: mem,
            },
            controlled_by,
            version,
            history,
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
        self.ensure_leader("set_replicas").await?;
        let mut patch = json!({
            "metadata": {"annotations": {HISTORY_ANNOTATION: history.to_record()}},
            "spec": {"replicas": to},
        });
        if let Some(v) = &observed.version {
            // A precondition: 409 if the workload changed since it was read.
            patch["metadata"]["resourceVersion"] = json!(v);
        }
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let uid = match target.kind.as_str() {
            "Deployment" => Api::<Deployment>::namespaced(self.client.clone(), &target.namespace)
                .patch(&target.name, &pp, &Patch::Merge(&patch))
                .await
                .map(|d| d.metadata.uid),
            "StatefulSet" => Api::<StatefulSet>::namespaced(self.client.clone(), &target.namespace)
                .patch(&target.name, &pp, &Patch::Merge(&patch))
                .await
                .map(|d| d.metadata.uid),
            k => return Err(OrchestratorError::Other(format!("unsupported kind {k}"))),
        }
        .map_err(|e| classify("set_replicas", e, &self.metrics))?;
        let from = observed.scale.replicas;
        let (reason, what) = if to > from {
            ("ScaledUp", "Scaled up")
        } else {
            ("ScaledDown", "Scaled down")
        };
        self.event(
            target,
            uid,
            EventType::Normal,
            reason,
            "Scale",
            why.message(&format!("{what} from {from} to {to} replicas")),
        )
        .await;
        Ok(())
    }

    async fn resize(
        &mut self,
        target: &Target,
        action: &Action,
        cpu: u64,
        mem: u64,
        why: &Why,
        history: &History,
    ) -> Result<(), OrchestratorError> {
        self.ensure_leader("resize").await?;
        let w = self.workload(target).await?;
        let container = container_name(action, &w.template);
        let record =
            json!({"container": container, "cpu_millis": cpu, "memory_mib": mem}).to_string();
        self.patch_workload(
            target,
            json!({"metadata": {"annotations": {
                RESOURCES_ANNOTATION: record,
                HISTORY_ANNOTATION: history.to_record(),
            }}}),
            "record_resources",
        )
        .await?;
        let pods = self.pods(target, &w).await?;
        let how = match self
            .resize_pods(target, &pods, &container, cpu, mem)
            .await?
        {
            Some(n) => format!("resized {n} pod(s) in place"),
            None => {
                // No in-place resize on this cluster: change the template (rolls the pods out).
                let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": container, "resources": {"requests": {"cpu": format!("{cpu}m"), "memory": format!("{mem}Mi")}}}]}}}});
                self.patch_workload(target, patch, "patch_template").await?;
                "in-place resize unavailable: pod template patched (rollout)".to_string()
            }
        };
        self.event(
            target,
            w.meta.uid,
            EventType::Normal,
            "Resized",
            "Resize",
            why.message(&format!(
                "Requests of container {container} set to cpu {cpu}m, memory {mem}Mi; {how}"
            )),
        )
        .await;
        Ok(())
    }

    async fn report_refusal(&mut self, target: &Target, controller: &str, why: &Why) {
        if self.ensure_leader("event").await.is_err() {
            return;
        }
        let uid = self
            .get_scale(target)
            .await
            .ok()
            .and_then(|s| s.metadata.uid);
        self.event(
            target,
            uid,
            EventType::Warning,
            "ScalingRefused",
            "Scale",
            why.message(&format!(
                "Not scaled: {controller} controls this workload's replicas"
            )),
        )
        .await;
    }

    async fn reconcile(
        &mut self,
        target: &Target,
        action: &Action,
    ) -> Result<(), OrchestratorError> {
        if action.kind == ActionKind::Horizontal {
            return Ok(());
        }
        let w = self.workload(target).await?;
        let Some((container, cpu, mem)) = recorded(&w.meta) else {
            return Ok(());
        };
        let pods = self.pods(target, &w).await?;
        if pods
            .iter()
            .all(|p| container_requests(p.spec.as_ref(), &container) == (Some(cpu), Some(mem)))
        {
            return Ok(());
        }
        self.ensure_leader("resize").await?;
        // resize_pods skips the pods that already have the size.
        if let Some(n) = self
            .resize_pods(target, &pods, &container, cpu, mem)
            .await?
        {
            tracing::info!(target = %target, pods = n, cpu_millis = cpu, memory_mib = mem, "Applied the recorded size to new pods.");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(cpu_millis("250m"), Some(250));
        assert_eq!(cpu_millis("1"), Some(1000));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(cpu_millis("x"), None);
        assert_eq!(memory_mib("128Mi"), Some(128));
        assert_eq!(memory_mib("1Gi"), Some(1024));
        assert_eq!(memory_mib("1048576"), Some(1));
        assert_eq!(memory_mib("500M"), Some(477));
        assert_eq!(memory_mib("lots"), None);
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate("ééé".into(), 3), "é");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
