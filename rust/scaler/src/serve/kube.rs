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
//! - **Vertical**: every pod of the workload is resized in place through the `resize`
//!   subresource (Kubernetes ≥ 1.33), then the chosen requests are recorded on the workload
//!   (annotation); [`Orchestrator::reconcile`] re-applies the recorded size to pods created
//!   later. When a pod cannot be resized in place — no `resize` subresource (older clusters:
//!   404/405) or the API server refuses the change in place (422, e.g. it would change the pod's
//!   QoS class) — `vertical.fallback` decides: `rollout` (the default) patches the pod
//!   template's requests instead, which rolls the workload out (its pods restart); `none` never
//!   restarts pods: the refusal is reported (Warning Event [`REASON_RESIZE_REFUSED`],
//!   `scale_actions_refused_total{reason="in_place_refused"}`, an ERROR line) and nothing is
//!   recorded, so the next decision tries again.
//! - **Which pods**: the workload's own, exactly. The full label selector (`matchLabels` *and*
//!   `matchExpressions`, through kube's [`Selector`]) narrows the list on the server, and owner
//!   references decide: a Deployment's pods are those whose controller is a ReplicaSet whose
//!   controller is that Deployment (by uid), a StatefulSet's those it controls itself. Labels
//!   alone are not enough: a canary Deployment or a second workload can carry the same labels
//!   (`app: checkout`), and resizing its pods would be acting on a workload no rule names.
//! - **Other controllers**: a workload that a HorizontalPodAutoscaler or KEDA ScaledObject
//!   targets is not scaled horizontally (the planner refuses). A workload that a
//!   VerticalPodAutoscaler (`autoscaling.k8s.io/v1`) targets in an active mode
//!   (`spec.updatePolicy.updateMode` absent or anything but `Off`) is not resized:
//!   [`Orchestrator::resize`] answers [`OrchestratorError::Controlled`] before writing anything,
//!   and the actor reports it like an HPA (Warning Event [`REASON_SCALING_REFUSED`],
//!   `scale_actions_refused_total{reason="controlled"}`); horizontal actions on it go ahead. The
//!   recorded size is not pushed onto new pods either while such a VPA exists. An optional API
//!   (the KEDA or VPA CRD) that answers 404 is taken as absent and not asked again for
//!   [`ABSENT_API_RECHECK`]: a CRD installed later is noticed within that time.
//! - **Leadership**: with a [`Leader`], every write is preceded by [`Leader::confirm`].
//! - **Events**: every action and refusal is published as a Kubernetes Event
//!   (`events.k8s.io/v1`) on the workload, with the rule, observed latency, window count and an
//!   evidence trace id.
//! - **An unreachable API server**: every call fails (each tick reads every target), so failures
//!   are counted (`scale_api_errors_total{op,kind}`) every time but logged through
//!   [`ApiFailures`]: one ERROR line per kind of failure per [`REPORT_EVERY`], with the number
//!   of failed calls since the previous line, and one INFO line when a call succeeds again.
//!   (kube_client's own per-request ERROR line is filtered out in `main.rs`.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale as K8sScale;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::Selector;
use kube::{Api, Client};
use scale_core::{Action, ActionKind, Target, VerticalFallback};
use serde_json::json;

use super::leader::Leader;
use super::metrics::Metrics;
use super::orchestrator::{Observed, Orchestrator, OrchestratorError, Why};
use super::planner::{History, Scale};
use super::throttle::{ApiFailures, REPORT_EVERY};

/// Annotation on the workload holding the requests SCALE chose for it, as JSON
/// `{"container": "...", "cpu_millis": n, "memory_mib": n}`.
pub const RESOURCES_ANNOTATION: &str = "scale.autoscaler.dev/resources";

/// Annotation on the workload holding the planner's memory of it — last scale-up, scale-down
/// and decision with their causes — as versioned JSON ([`History::to_record`]). Written with
/// every change, read before every plan.
pub const HISTORY_ANNOTATION: &str = "scale.autoscaler.dev/history";

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "scale-autoscaler";

/// Reason of the Warning Event when another controller (HPA, KEDA ScaledObject, VPA) owns what
/// an action would change.
pub const REASON_SCALING_REFUSED: &str = "ScalingRefused";

/// Reason of the Warning Event when a pod cannot be resized in place and `vertical.fallback`
/// is `none`.
pub const REASON_RESIZE_REFUSED: &str = "ResizeRefused";

/// The VerticalPodAutoscaler API: group, version, kind.
pub const VPA_API: (&str, &str, &str) = ("autoscaling.k8s.io", "v1", "VerticalPodAutoscaler");

/// The KEDA ScaledObject API: group, version, kind.
pub const KEDA_API: (&str, &str, &str) = ("keda.sh", "v1alpha1", "ScaledObject");

/// The VPA update mode that leaves pods alone; any other (or none: the default is `Auto`) is
/// active.
pub const VPA_MODE_OFF: &str = "Off";

/// How long an optional API (a CRD) that answered 404 is taken as absent before it is asked
/// again: a CRD installed later is noticed within this time.
pub const ABSENT_API_RECHECK: Duration = Duration::from_secs(300);

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

/// An optional API (a CRD that may or may not be installed): whether it answered 404 recently.
#[derive(Debug, Default)]
struct OptionalApi {
    /// When it last answered 404.
    absent_since: Option<Instant>,
}

impl OptionalApi {
    /// Whether to skip asking: it answered 404 less than `recheck` ago.
    fn skip(&self, now: Instant, recheck: Duration) -> bool {
        self.absent_since
            .is_some_and(|t| now.saturating_duration_since(t) < recheck)
    }

    /// It answered 404.
    fn absent(&mut self, now: Instant) {
        self.absent_since = Some(now);
    }

    /// It answered; returns whether it had been absent (so its arrival can be logged once).
    fn present(&mut self) -> bool {
        self.absent_since.take().is_some()
    }
}

/// The optional APIs the orchestrator looks at.
#[derive(Debug, Clone, Copy)]
enum OptionalKind {
    /// KEDA ScaledObjects.
    Keda,
    /// VerticalPodAutoscalers.
    Vpa,
}

impl OptionalKind {
    fn api(self) -> (&'static str, &'static str, &'static str) {
        match self {
            OptionalKind::Keda => KEDA_API,
            OptionalKind::Vpa => VPA_API,
        }
    }

    /// The `op` label of its errors in `scale_api_errors_total`.
    fn op(self) -> &'static str {
        match self {
            OptionalKind::Keda => "list_scaledobject",
            OptionalKind::Vpa => "list_vpa",
        }
    }
}

/// The Kubernetes orchestrator.
pub struct Kube {
    client: Client,
    reporter: Reporter,
    events_sent: u64,
    leader: Option<Leader>,
    metrics: Arc<Metrics>,
    keda: OptionalApi,
    vpa: OptionalApi,
    absent_api_recheck: Duration,
    failures: Mutex<ApiFailures>,
    /// Targets whose history annotation could not be read (warned about once).
    bad_history: std::collections::HashSet<Target>,
}

/// What an in-place resize of a workload's pods came to.
enum InPlace {
    /// Every pod that needed it was resized (`n` of them).
    Resized(usize),
    /// A pod cannot be resized in place: `reason`; `resized` pods had been before it.
    Refused { reason: String, resized: usize },
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

/// The uid of the object's controller (its owner reference with `controller: true`), if that
/// controller is a `kind`.
fn controller_uid<'a>(meta: &'a ObjectMeta, kind: &str) -> Option<&'a str> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.uid.as_str())
}

/// The objects among `items` whose controller is a `kind` with one of the `owners` uids.
fn controlled_by<T>(
    items: Vec<T>,
    meta: impl Fn(&T) -> &ObjectMeta,
    kind: &str,
    owners: &HashSet<String>,
) -> Vec<T> {
    items
        .into_iter()
        .filter(|i| controller_uid(meta(i), kind).is_some_and(|u| owners.contains(u)))
        .collect()
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

/// The VPA (`VerticalPodAutoscaler ns/name (updateMode m)`) among `vpas` that targets
/// `target` in an active mode, if any.
fn active_vpa(vpas: &[DynamicObject], target: &Target) -> Option<String> {
    vpas.iter().find_map(|v| {
        let r = &v.data["spec"]["targetRef"];
        if r["kind"].as_str() != Some(target.kind.as_str())
            || r["name"].as_str() != Some(target.name.as_str())
        {
            return None;
        }
        let mode = v.data["spec"]["updatePolicy"]["updateMode"].as_str();
        if mode == Some(VPA_MODE_OFF) {
            return None;
        }
        Some(format!(
            "{} {}/{} (updateMode {})",
            VPA_API.2,
            target.namespace,
            v.metadata.name.as_deref().unwrap_or_default(),
            mode.unwrap_or("Auto, the default")
        ))
    })
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
            keda: OptionalApi::default(),
            vpa: OptionalApi::default(),
            absent_api_recheck: ABSENT_API_RECHECK,
            failures: Mutex::new(ApiFailures::new(REPORT_EVERY)),
            bad_history: Default::default(),
        }
    }

    /// Ask an optional API (KEDA, VPA) that answered 404 again after `every` instead of
    /// [`ABSENT_API_RECHECK`] (tests).
    pub fn with_absent_api_recheck(mut self, every: Duration) -> Self {
        self.absent_api_recheck = every;
        self
    }

    /// Turn a kube error into an [`OrchestratorError`]; count it; log an unreachable API server
    /// at a limited rate (see [`ApiFailures`]). The callers log the rest with their context.
    fn classify(&self, op: &str, e: kube::Error) -> OrchestratorError {
        let err = match e {
            kube::Error::Api(s) if s.is_conflict() => {
                OrchestratorError::Conflict(s.message.clone())
            }
            kube::Error::Api(s) if s.is_forbidden() => {
                OrchestratorError::Forbidden(s.message.clone())
            }
            kube::Error::Api(s) if s.code == 404 => OrchestratorError::NotFound(s.message.clone()),
            kube::Error::Api(s) if s.code == 429 || s.code >= 500 => {
                OrchestratorError::Unavailable(format!("{} ({})", s.message, s.code))
            }
            kube::Error::Api(s) => OrchestratorError::Other(format!("{} ({})", s.message, s.code)),
            // Transport, TLS, timeouts: the API server is unreachable.
            other => OrchestratorError::Unavailable(other.to_string()),
        };
        self.metrics.api_error(op, err.kind());
        if let OrchestratorError::Unavailable(m) = &err {
            let due = self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .failure(err.kind(), Instant::now());
            if let Some(d) = due {
                tracing::error!(
                    op,
                    error = %m,
                    suppressed = d.suppressed,
                    failing_for_s = d.failing_for.as_secs(),
                    "The Kubernetes API is unavailable; actions stay pending and are retried every tick (logged at most every {} s, with the failed calls not logged since as `suppressed`).",
                    REPORT_EVERY.as_secs()
                );
            }
        }
        err
    }

    /// A call succeeded: if the API had been failing, say once that it is back.
    fn reachable(&self) {
        let back = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .success(Instant::now());
        if let Some(r) = back {
            tracing::info!(
                failed_calls = r.failed_calls,
                failed_for_s = r.failed_for.as_secs(),
                "The Kubernetes API is reachable again."
            );
        }
    }

    async fn ensure_leader(&self, op: &str) -> Result<(), OrchestratorError> {
        match &self.leader {
            None => Ok(()),
            Some(l) => match l.confirm().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(OrchestratorError::NotLeader),
                Err(e) => Err(self.classify(op, e)),
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
        let scale = r.map_err(|e| self.classify("get_scale", e))?;
        self.reachable();
        Ok(scale)
    }

    async fn workload(&self, target: &Target) -> Result<Workload, OrchestratorError> {
        let (meta, spec) = match target.kind.as_str() {
            "Deployment" => {
                let d = Api::<Deployment>::namespaced(self.client.clone(), &target.namespace)
                    .get(&target.name)
                    .await
                    .map_err(|e| self.classify("get_workload", e))?;
                (
                    d.metadata,
                    (d.spec.replicas, d.spec.template, d.spec.selector),
                )
            }
            "StatefulSet" => {
                let d = Api::<StatefulSet>::namespaced(self.client.clone(), &target.namespace)
                    .get(&target.name)
                    .await
                    .map_err(|e| self.classify("get_workload", e))?;
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
        self.reachable();
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
                .map_err(|e| self.classify("list_hpa", e))?;
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
        let objects = self.list_optional(target, OptionalKind::Keda).await?;
        Ok(objects.unwrap_or_default().into_iter().find_map(|so| {
            let r = &so.data["spec"]["scaleTargetRef"];
            let kind = r["kind"].as_str().unwrap_or("Deployment");
            (kind == target.kind && r["name"].as_str() == Some(target.name.as_str())).then(|| {
                format!(
                    "KEDA ScaledObject {}/{}",
                    target.namespace,
                    so.metadata.name.unwrap_or_default()
                )
            })
        }))
    }

    fn optional(&mut self, which: OptionalKind) -> &mut OptionalApi {
        match which {
            OptionalKind::Keda => &mut self.keda,
            OptionalKind::Vpa => &mut self.vpa,
        }
    }

    /// The objects of an optional API (KEDA's ScaledObjects, VPAs) in the target's namespace,
    /// or `None` when this cluster does not serve it. A 404 is remembered for
    /// [`Kube::with_absent_api_recheck`] (default [`ABSENT_API_RECHECK`]), then asked again.
    async fn list_optional(
        &mut self,
        target: &Target,
        which: OptionalKind,
    ) -> Result<Option<Vec<DynamicObject>>, OrchestratorError> {
        let now = Instant::now();
        let recheck = self.absent_api_recheck;
        if self.optional(which).skip(now, recheck) {
            return Ok(None);
        }
        let (group, version, kind) = which.api();
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &target.namespace, &ar);
        match api.list(&ListParams::default().match_any()).await {
            Ok(list) => {
                if self.optional(which).present() {
                    tracing::info!(api = %format!("{group}/{version}"), kind, "An API that was absent is now served; its objects are checked again.");
                }
                Ok(Some(list.items))
            }
            // The CRD is not installed: remember, and ask again later.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if self.optional(which).absent_since.is_none() {
                    tracing::debug!(api = %format!("{group}/{version}"), kind, recheck_s = recheck.as_secs(), "API not served in this cluster; taken as absent until the next check.");
                }
                self.optional(which).absent(now);
                Ok(None)
            }
            Err(e) => Err(self.classify(which.op(), e)),
        }
    }

    /// The VerticalPodAutoscaler that targets the workload in an active mode, if any.
    async fn vpa_of(&mut self, target: &Target) -> Result<Option<String>, OrchestratorError> {
        Ok(self
            .list_optional(target, OptionalKind::Vpa)
            .await?
            .and_then(|vpas| active_vpa(&vpas, target)))
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
            let kind = self.classify("event", e);
            tracing::warn!(target = %target, error = %kind, "Could not publish the Kubernetes Event.");
        }
    }

    /// The workload's own pods: those its full label selector selects (on the server) and that
    /// it controls (through a ReplicaSet it controls, for a Deployment). See the module docs.
    async fn pods(&self, target: &Target, w: &Workload) -> Result<Vec<Pod>, OrchestratorError> {
        let selector = Selector::try_from(w.selector.clone()).map_err(|e| {
            OrchestratorError::Other(format!("{target}: unusable spec.selector: {e}"))
        })?;
        // apps/v1 refuses an empty selector; were one ever read, it must not mean "every pod".
        if selector.selects_all() {
            return Err(OrchestratorError::Other(format!(
                "{target}: empty spec.selector"
            )));
        }
        let Some(uid) = w.meta.uid.clone() else {
            return Err(OrchestratorError::Other(format!(
                "{target}: no metadata.uid"
            )));
        };
        let lp = ListParams::default().match_any().labels_from(&selector);
        let (owner_kind, owners) = match target.kind.as_str() {
            "Deployment" => {
                let sets = Api::<ReplicaSet>::namespaced(self.client.clone(), &target.namespace)
                    .list(&lp)
                    .await
                    .map_err(|e| self.classify("list_replicasets", e))?;
                let own = HashSet::from([uid]);
                let sets = controlled_by(sets.items, |r| &r.metadata, "Deployment", &own);
                let uids: HashSet<String> =
                    sets.into_iter().filter_map(|r| r.metadata.uid).collect();
                ("ReplicaSet", uids)
            }
            "StatefulSet" => ("StatefulSet", HashSet::from([uid])),
            k => return Err(OrchestratorError::Other(format!("unsupported kind {k}"))),
        };
        if owners.is_empty() {
            return Ok(Vec::new());
        }
        let pods = Api::<Pod>::namespaced(self.client.clone(), &target.namespace)
            .list(&lp)
            .await
            .map_err(|e| self.classify("list_pods", e))?;
        Ok(controlled_by(
            pods.items,
            |p| &p.metadata,
            owner_kind,
            &owners,
        ))
    }

    /// Resize `pods` in place (those that do not have the size yet). Stops at the first pod that
    /// cannot be resized in place: no `resize` subresource on this cluster (404/405), or the
    /// change refused in place (422).
    async fn resize_pods(
        &self,
        target: &Target,
        pods: &[Pod],
        container: &str,
        cpu: u64,
        mem: u64,
    ) -> Result<InPlace, OrchestratorError> {
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
                    self.metrics.api_error("resize", "in_place_unavailable");
                    return Ok(InPlace::Refused {
                        reason: format!(
                            "this cluster has no pods/resize subresource ({}: {})",
                            s.code, s.message
                        ),
                        resized: n,
                    });
                }
                Err(kube::Error::Api(s)) if s.code == 422 => {
                    self.metrics.api_error("resize", "in_place_refused");
                    return Ok(InPlace::Refused {
                        reason: format!("pod {name}: {}", s.message),
                        resized: n,
                    });
                }
                Err(e) => return Err(self.classify("resize", e)),
            }
        }
        Ok(InPlace::Resized(n))
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
        r.map_err(|e| self.classify(op, e))
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
        .map_err(|e| self.classify("set_replicas", e))?;
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
        // Before any write: a VPA in an active mode owns the pods' requests.
        if let Some(vpa) = self.vpa_of(target).await? {
            return Err(OrchestratorError::Controlled(format!(
                "{vpa} controls this workload's pod resources"
            )));
        }
        let w = self.workload(target).await?;
        let container = container_name(action, &w.template);
        let pods = self.pods(target, &w).await?;
        let size = format!("cpu {cpu}m, memory {mem}Mi");
        let how = match self
            .resize_pods(target, &pods, &container, cpu, mem)
            .await?
        {
            InPlace::Resized(n) => format!("resized {n} pod(s) in place"),
            InPlace::Refused { reason, resized } => match action.vertical.fallback {
                VerticalFallback::Rollout => {
                    // Change the template instead: the workload rolls out (its pods restart).
                    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": container, "resources": {"requests": {"cpu": format!("{cpu}m"), "memory": format!("{mem}Mi")}}}]}}}});
                    self.patch_workload(target, patch, "patch_template").await?;
                    format!(
                        "in-place resize refused ({reason}); vertical.fallback is {}: pod template patched (rollout)",
                        VerticalFallback::Rollout.as_str()
                    )
                }
                VerticalFallback::None => {
                    let note = why.message(&format!(
                        "Not resized to {size} (container {container}): in-place resize refused ({reason}); {resized} pod(s) had been resized before; vertical.fallback is {}, so the pod template is left alone (no restart)",
                        VerticalFallback::None.as_str()
                    ));
                    self.event(
                        target,
                        w.meta.uid,
                        EventType::Warning,
                        REASON_RESIZE_REFUSED,
                        "Resize",
                        note,
                    )
                    .await;
                    return Err(OrchestratorError::InPlaceRefused(reason));
                }
            },
        };
        // Recorded once applied, so that a refused resize (fallback none) records nothing and
        // the next decision starts from the size the pods really have.
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
        self.event(
            target,
            w.meta.uid,
            EventType::Normal,
            "Resized",
            "Resize",
            why.message(&format!(
                "Requests of container {container} set to {size}; {how}"
            )),
        )
        .await;
        Ok(())
    }

    async fn report_refusal(&mut self, target: &Target, _controller: &str, why: &Why) {
        if self.ensure_leader("event").await.is_err() {
            return;
        }
        let uid = self
            .get_scale(target)
            .await
            .ok()
            .and_then(|s| s.metadata.uid);
        // `why.reason` names the controller and what it controls (replicas, pod resources).
        self.event(
            target,
            uid,
            EventType::Warning,
            REASON_SCALING_REFUSED,
            "Scale",
            why.message("Not scaled"),
        )
        .await;
    }

    async fn report_hold(&mut self, target: &Target, note: &str) {
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
            "ScaleDownHeld",
            "Scale",
            note.to_string(),
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
        // A VPA installed since owns the pods' requests now: leave them to it.
        if let Some(vpa) = self.vpa_of(target).await? {
            tracing::debug!(target = %target, vpa = %vpa, "Not applying the recorded size: a VPA controls this workload's pod resources.");
            return Ok(());
        }
        // resize_pods skips the pods that already have the size.
        match self
            .resize_pods(target, &pods, &container, cpu, mem)
            .await?
        {
            InPlace::Resized(n) => {
                tracing::info!(target = %target, pods = n, cpu_millis = cpu, memory_mib = mem, "Applied the recorded size to new pods.");
            }
            InPlace::Refused { reason, .. } => {
                tracing::debug!(target = %target, reason = %reason, "A new pod cannot be resized in place; next tick retries.");
            }
        }
        Ok(())
    }
}

/// A client from `kubeconfig`, else the in-cluster service account, then `$KUBECONFIG` or
/// `~/.kube/config`.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster service account and no kubeconfig (give --kubeconfig)")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
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

    fn meta(name: &str, uid: &str, owner: Option<(&str, &str, bool)>) -> ObjectMeta {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        ObjectMeta {
            name: Some(name.into()),
            uid: Some(uid.into()),
            owner_references: owner.map(|(kind, uid, controller)| {
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: kind.into(),
                    name: "owner".into(),
                    uid: uid.into(),
                    controller: Some(controller),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_objects_whose_controller_is_an_owner_are_kept() {
        let items = vec![
            meta("mine", "p1", Some(("ReplicaSet", "rs-1", true))),
            meta("other-rs", "p2", Some(("ReplicaSet", "rs-2", true))),
            meta("not-controller", "p3", Some(("ReplicaSet", "rs-1", false))),
            meta(
                "same-uid-other-kind",
                "p4",
                Some(("StatefulSet", "rs-1", true)),
            ),
            meta("bare", "p5", None),
        ];
        let owners = HashSet::from(["rs-1".to_string()]);
        let kept: Vec<_> = controlled_by(items, |m| m, "ReplicaSet", &owners)
            .into_iter()
            .filter_map(|m| m.name)
            .collect();
        assert_eq!(kept, ["mine"]);
    }

    fn vpa(name: &str, kind: &str, target: &str, mode: Option<&str>) -> DynamicObject {
        let mut spec =
            json!({"targetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target}});
        if let Some(m) = mode {
            spec["updatePolicy"] = json!({"updateMode": m});
        }
        serde_json::from_value(json!({
            "apiVersion": "autoscaling.k8s.io/v1", "kind": "VerticalPodAutoscaler",
            "metadata": {"name": name, "namespace": "shop"}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_vpa_is_active_unless_its_update_mode_is_off() {
        let target = Target {
            kind: "Deployment".into(),
            namespace: "shop".into(),
            name: "checkout".into(),
        };
        let off = vpa("a", "Deployment", "checkout", Some("Off"));
        let other_name = vpa("b", "Deployment", "cart", None);
        let other_kind = vpa("c", "StatefulSet", "checkout", None);
        assert_eq!(
            active_vpa(
                &[off.clone(), other_name.clone(), other_kind.clone()],
                &target
            ),
            None
        );
        assert_eq!(
            active_vpa(
                &[off.clone(), vpa("d", "Deployment", "checkout", None)],
                &target
            )
            .as_deref(),
            Some("VerticalPodAutoscaler shop/d (updateMode Auto, the default)")
        );
        for mode in ["Auto", "Recreate", "Initial", "InPlaceOrRecreate"] {
            assert_eq!(
                active_vpa(&[vpa("e", "Deployment", "checkout", Some(mode))], &target),
                Some(format!("VerticalPodAutoscaler shop/e (updateMode {mode})"))
            );
        }
    }

    #[test]
    fn an_absent_api_is_asked_again_after_the_recheck_interval() {
        let mut api = OptionalApi::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(300);
        assert!(!api.skip(t0, every), "never asked: ask");
        api.absent(t0);
        assert!(api.skip(t0 + Duration::from_secs(299), every));
        assert!(
            !api.skip(t0 + every, every),
            "asked again after the interval"
        );
        assert!(api.present(), "its arrival is reported once");
        assert!(!api.present());
        assert!(!api.skip(t0 + Duration::from_secs(1), every));
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate("ééé".into(), 3), "é");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
