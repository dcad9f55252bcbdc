//! `scale serve` against a real kube-apiserver v1.37.2 + etcd v3.7.3 (issue 5, "Must show"
//! 1–8). Each test starts its own control plane on loopback (scale-testcluster; the binaries
//! come from `scripts/k8s-bins.sh`), applies `configs/k8s/` as the admin, creates Deployments,
//! runs the daemon as a real process with its own service-account token (so the RBAC of
//! `configs/k8s/` is exercised by every test), sends `scale.decision` events over OTLP/gRPC
//! and reads replicas, Events and the daemon's metrics back. There are no controllers: replicas
//! are read from the scale subresource.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::Scale as K8sScale;
use kube::api::{Api, PostParams};
use scale_core::{Action, Target};
use scale_scaler::serve::kube::Kube;
use scale_scaler::serve::metrics::Metrics;
use scale_scaler::serve::orchestrator::{Observed, Orchestrator, OrchestratorError, Why};
use scale_scaler::serve::{ServeOptions, bind, serve};

const LONG: Duration = Duration::from_secs(20);

fn note(e: &k8s_openapi::api::events::v1::Event) -> String {
    e.note.clone().unwrap_or_default()
}

fn reason(e: &k8s_openapi::api::events::v1::Event) -> String {
    e.reason.clone().unwrap_or_default()
}

/// Must show 1: a decision scales a Deployment up through the scale subresource, and a
/// Kubernetes Event on the Deployment explains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_scales_up_and_an_event_explains_it() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let d = Daemon::start(
        &c,
        &rules(", min: 1, max: 5, cooldown: 1s, scale_down_after: 10m"),
        &[],
    );
    send(d.otlp, "checkout-latency", 0xab).await.unwrap();
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 2 }).await,
        "not scaled:\n{}",
        d.logs()
    );
    assert!(
        eventually(LONG, || async {
            !events(&admin, "checkout").await.is_empty()
        })
        .await,
        "no Event:\n{}",
        d.logs()
    );
    let ev = events(&admin, "checkout").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(reason(&ev[0]), "ScaledUp");
    assert_eq!(ev[0].type_.as_deref(), Some("Normal"));
    let n = note(&ev[0]);
    for part in [
        "from 1 to 2 replicas",
        "checkout-latency",
        "5 breaches",
        "observed 812.5 ms",
        "evidence trace abababababababababababababababab",
    ] {
        assert!(n.contains(part), "event note {n:?} lacks {part:?}");
    }
    assert_eq!(
        ev[0].reporting_controller.as_deref(),
        Some("scale-autoscaler")
    );
    assert_eq!(d.metric("scale_actions_total{action=\"scale_up\""), 1.0);
    assert!(d.metric("scale_decision_to_request_seconds_count") >= 1.0);
}

/// Must show 2: a flood of decisions never takes replicas past max; consecutive scale-ups are
/// at least the cooldown apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_never_passes_max_and_cooldown_holds() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let d = Daemon::start(
        &c,
        &rules(", min: 1, max: 3, cooldown: 1500ms, scale_down_after: 10m"),
        &[],
    );
    let watcher = {
        let admin = admin.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            for _ in 0..160 {
                seen = seen.max(replicas(&admin, "checkout").await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    // 120 decisions over ~6 s: enough for many steps if cooldown or max did not hold.
    for i in 0..120u8 {
        send(d.otlp, "checkout-latency", i).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let max_seen = watcher.await.unwrap();
    assert_eq!(max_seen, 3, "max is 3");
    assert_eq!(replicas(&admin, "checkout").await, 3);
    let ups: Vec<_> = events(&admin, "checkout")
        .await
        .into_iter()
        .filter(|e| reason(e) == "ScaledUp")
        .collect();
    assert_eq!(ups.len(), 2, "1→2→3: two steps, one Event each");
    let (t0, t1) = (
        ups[0].event_time.as_ref().unwrap().0,
        ups[1].event_time.as_ref().unwrap().0,
    );
    let gap = t1.duration_since(t0).as_secs_f64();
    assert!(gap >= 1.4, "scale-ups {gap:.3} s apart, cooldown is 1.5 s");
    assert_eq!(d.metric("scale_actions_total{action=\"scale_up\""), 2.0);
    assert!(d.metric("scale_actions_refused_total{reason=\"cooldown\"") >= 1.0);
    assert!(d.metric("scale_actions_refused_total{reason=\"at_max\"") >= 1.0);
}

/// Must show 3: without decisions the workload is scaled down one step per quiet period, never
/// below min, and not before a quiet period has passed since the daemon started — and only on
/// evidence (issue 15): while no report of healthy latency arrives, silence is not calm and the
/// scale holds, said by a metric and a Warning Event; with healthy reports flowing it steps down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_after_quiet_only_on_healthy_reports_never_below_min() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 4).await;
    let d = Daemon::start(
        &c,
        &rules(", min: 2, max: 5, step: 1, cooldown: 1s, scale_down_after: 2s"),
        &["--evidence-timeout", "1500ms"],
    );
    // No reports: held well past three quiet periods.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        replicas(&admin, "checkout").await,
        4,
        "no scale-down without evidence:\n{}",
        d.logs()
    );
    assert_eq!(
        d.metric("scale_evidence_missing{target=\"Deployment/otel-demo/checkout\"}"),
        1.0
    );
    let held: Vec<_> = events(&admin, "checkout")
        .await
        .into_iter()
        .filter(|e| reason(e) == "ScaleDownHeld")
        .collect();
    assert_eq!(held.len(), 1, "one Event per episode");
    assert!(
        note(&held[0]).contains("silence is not calm"),
        "{}",
        note(&held[0])
    );
    // Healthy reports flow: one step per quiet period (the first a full period after they began).
    let reports_began = std::time::Instant::now();
    let reporter = healthy_reports(d.otlp, "checkout-latency", Duration::from_millis(300));
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 3 }).await,
        "{}",
        d.logs()
    );
    assert!(reports_began.elapsed() >= Duration::from_secs(2));
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 2 }).await,
        "{}",
        d.logs()
    );
    // Several more quiet periods: it stays at min.
    tokio::time::sleep(Duration::from_secs(5)).await;
    reporter.abort();
    assert_eq!(replicas(&admin, "checkout").await, 2, "never below min");
    assert_eq!(
        d.metric("scale_evidence_missing{target=\"Deployment/otel-demo/checkout\"}"),
        0.0
    );
    let downs: Vec<_> = events(&admin, "checkout")
        .await
        .into_iter()
        .filter(|e| reason(e) == "ScaledDown")
        .collect();
    assert_eq!(downs.len(), 2);
    assert!(
        note(&downs[0]).contains("quiet for 2 s, latency healthy (checkout-latency: "),
        "{}",
        note(&downs[0])
    );
}

/// Wraps the Kubernetes orchestrator: before the daemon's first write, another writer (the
/// admin, a person with kubectl) changes the replicas, so the daemon's write carries a stale
/// resourceVersion and the API server answers 409.
struct ConcurrentWriter {
    inner: Kube,
    admin: kube::Client,
    fired: bool,
}

impl Orchestrator for ConcurrentWriter {
    async fn get(&mut self, t: &Target, a: &Action) -> Result<Observed, OrchestratorError> {
        self.inner.get(t, a).await
    }
    async fn set_replicas(
        &mut self,
        t: &Target,
        o: &Observed,
        to: u32,
        why: &Why,
    ) -> Result<(), OrchestratorError> {
        if !self.fired {
            self.fired = true;
            let api = Api::<Deployment>::namespaced(self.admin.clone(), &t.namespace);
            let mut s: K8sScale = api.get_scale(&t.name).await.unwrap();
            s.spec.as_mut().unwrap().replicas = Some(o.scale.replicas as i32 + 1);
            s.metadata.resource_version = None;
            api.replace_scale(&t.name, &PostParams::default(), &s)
                .await
                .unwrap();
        }
        self.inner.set_replicas(t, o, to, why).await
    }
    async fn resize(
        &mut self,
        t: &Target,
        a: &Action,
        cpu: u64,
        mem: u64,
        why: &Why,
    ) -> Result<(), OrchestratorError> {
        self.inner.resize(t, a, cpu, mem, why).await
    }
    async fn report_refusal(&mut self, t: &Target, c: &str, why: &Why) {
        self.inner.report_refusal(t, c, why).await
    }
}

/// Must show 4: a concurrent writer causes a 409; the daemon re-reads, re-plans from the new
/// count and takes exactly one step from there (2 → 3), not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_re_read_and_re_planned_without_a_double_step() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let daemon_client = client(&c.daemon_kubeconfig()).await;
    let metrics = Arc::new(Metrics::new());
    let reporter = scale_scaler::serve::kube::Reporter {
        controller: "scale-autoscaler".into(),
        instance: "test".into(),
    };
    let orch = ConcurrentWriter {
        inner: Kube::new(daemon_client, reporter, None, metrics.clone()),
        admin: admin.clone(),
        fired: false,
    };
    let rules = scale_core::RulesFile::from_yaml(&rules(
        ", min: 1, max: 5, cooldown: 1s, scale_down_after: 10m",
    ))
    .unwrap()
    .rules;
    let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let opts = ServeOptions {
        tick: Duration::from_millis(200),
        ..Default::default()
    };
    let server = tokio::spawn(serve(
        listener,
        rules,
        orch,
        metrics.clone(),
        opts,
        shutdown.clone(),
    ));
    send(addr, "checkout-latency", 0xcd).await.unwrap();
    assert!(eventually(LONG, || async { replicas(&admin, "checkout").await == 3 }).await);
    // Give a second (wrong) step every chance to happen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replicas(&admin, "checkout").await,
        3,
        "concurrent writer 1→2, then one daemon step 2→3"
    );
    assert_eq!(metrics.api_errors_count("set_replicas", "conflict"), 1);
    let ups: Vec<_> = events(&admin, "checkout")
        .await
        .into_iter()
        .filter(|e| reason(e) == "ScaledUp")
        .collect();
    assert_eq!(ups.len(), 1);
    assert!(note(&ups[0]).contains("from 2 to 3"), "{}", note(&ups[0]));
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// Must show 5: the API server is stopped, a decision arrives, the API server comes back: the
/// pending action is applied once it is back, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_delays_the_action_and_applies_it_exactly_once() {
    let (mut c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let d = Daemon::start(
        &c,
        &rules(", min: 1, max: 5, cooldown: 1s, scale_down_after: 10m"),
        &[],
    );
    // Wait for the daemon's first successful read, so the outage starts from a working state.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| c.stop_apiserver());
    send(d.otlp, "checkout-latency", 0xee).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        d.metric("scale_api_errors_total{") >= 1.0,
        "the daemon should have failed to reach the API:\n{}",
        d.logs()
    );
    tokio::task::block_in_place(|| c.start_apiserver()).expect("restart kube-apiserver");
    assert!(
        eventually(Duration::from_secs(30), || async {
            replicas(&admin, "checkout").await == 2
        })
        .await,
        "{}",
        d.logs()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replicas(&admin, "checkout").await,
        2,
        "applied exactly once"
    );
    assert_eq!(
        events(&admin, "checkout")
            .await
            .iter()
            .filter(|e| reason(e) == "ScaledUp")
            .count(),
        1
    );
    assert_eq!(d.metric("scale_actions_total{action=\"scale_up\""), 1.0);
}

/// Must show 6: two daemons compete for the Lease; only the holder is ready and acts, the
/// standby refuses decisions (UNAVAILABLE). When the holder dies, the standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_acts() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let r = rules(", min: 1, max: 5, cooldown: 1s, scale_down_after: 10m");
    let lease = ["--lease", "scale-system/scale", "--lease-duration", "3s"];
    let mut a = Daemon::start(&c, &r, &[&lease[..], &["--identity", "scale-a"]].concat());
    let b = Daemon::start(&c, &r, &[&lease[..], &["--identity", "scale-b"]].concat());
    let ready = |d: &Daemon| {
        d.http_get("/readyz")
            .map(|(code, _)| code == 200)
            .unwrap_or(false)
    };
    assert!(
        eventually(LONG, || async { ready(&a) ^ ready(&b) }).await,
        "exactly one leader:\n{}\n{}",
        a.logs(),
        b.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ready(&a) ^ ready(&b), "still exactly one leader");
    let (leader, standby) = if ready(&a) { (&a, &b) } else { (&b, &a) };
    let refused = send(standby.otlp, "checkout-latency", 1).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    send(leader.otlp, "checkout-latency", 2).await.unwrap();
    assert!(eventually(LONG, || async { replicas(&admin, "checkout").await == 2 }).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replicas(&admin, "checkout").await,
        2,
        "one step, by the leader"
    );
    assert_eq!(standby.metric("scale_actions_total"), 0.0);
    assert_eq!(
        standby.metric("scale_decisions_refused_total{reason=\"not_leader\"}"),
        1.0
    );
    // Failover: the leader dies without releasing; the standby takes the Lease after it expires.
    let a_leads = ready(&a);
    let survivor = if a_leads {
        a.kill();
        &b
    } else {
        drop(b);
        &a
    };
    assert!(
        eventually(Duration::from_secs(30), || async { ready(survivor) }).await,
        "{}",
        survivor.logs()
    );
    send(survivor.otlp, "checkout-latency", 3).await.unwrap();
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 3 }).await,
        "{}",
        survivor.logs()
    );
}

/// Must show 7: with the RBAC of configs/k8s/, the daemon's own token scales the listed
/// workloads and is refused for an unlisted one (reported, not retried forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_allows_listed_workloads_and_refuses_others() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    deployment(&admin, "cart", 1).await;
    // The RBAC itself: the daemon's identity may read checkout's scale, not cart's.
    let daemon_client = client(&c.daemon_kubeconfig()).await;
    let deps = Api::<Deployment>::namespaced(daemon_client, NS);
    assert!(deps.get_scale("checkout").await.is_ok());
    match deps.get_scale("cart").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("expected 403 for cart, got {other:?}"),
    }
    let d = Daemon::start(
        &c,
        &rules(", min: 1, max: 5, cooldown: 1s, scale_down_after: 10m"),
        &[],
    );
    send(d.otlp, "cart-latency", 4).await.unwrap();
    send(d.otlp, "checkout-latency", 5).await.unwrap();
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 2 }).await,
        "{}",
        d.logs()
    );
    assert!(eventually(LONG, || async { d.metric("scale_actions_refused_total{reason=\"forbidden\",target=\"Deployment/otel-demo/cart\"}") == 1.0 }).await, "{}", d.logs());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        replicas(&admin, "cart").await,
        1,
        "cart is not listed in the Role"
    );
    assert!(d.logs().contains("forbidden"), "the refusal is logged");
}

/// Must show 8: a workload with an HPA is left alone; the refusal is reported as a Warning
/// Event and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_with_an_hpa_is_left_alone() {
    let (c, admin) = cluster().await;
    deployment(&admin, "product-catalog", 2).await;
    let hpa: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "product-catalog", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "product-catalog"},
            "minReplicas": 2, "maxReplicas": 8,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
        }
    }))
    .unwrap();
    Api::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>::namespaced(
        admin.clone(),
        NS,
    )
    .create(&PostParams::default(), &hpa)
    .await
    .unwrap();
    let d = Daemon::start(
        &c,
        &rules(", min: 1, max: 5, cooldown: 1s, scale_down_after: 1s"),
        &[],
    );
    send(d.otlp, "catalog-latency", 6).await.unwrap();
    assert!(
        eventually(LONG, || async {
            events(&admin, "product-catalog")
                .await
                .iter()
                .any(|e| reason(e) == "ScalingRefused")
        })
        .await,
        "{}",
        d.logs()
    );
    let ev = events(&admin, "product-catalog").await;
    let refusal = ev.iter().find(|e| reason(e) == "ScalingRefused").unwrap();
    assert_eq!(refusal.type_.as_deref(), Some("Warning"));
    assert!(
        note(refusal).contains("HorizontalPodAutoscaler otel-demo/product-catalog"),
        "{}",
        note(refusal)
    );
    assert_eq!(
        d.metric("scale_actions_refused_total{reason=\"controlled\""),
        1.0
    );
    // Nor is it scaled down after the quiet period: the HPA owns its replicas.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&admin, "product-catalog").await, 2);
    assert_eq!(d.metric("scale_actions_total"), 0.0);
}

/// Create a pod of `deployment` (as its ReplicaSet would; there are no controllers here).
async fn pod(admin: &kube::Client, deployment: &str, name: &str) {
    let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"app": deployment}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "150m", "memory": "512Mi"}}}]}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
}

async fn pod_requests(admin: &kube::Client, name: &str) -> (String, String) {
    let p = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), NS)
        .get(name)
        .await
        .unwrap();
    let r = p.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap()
        .requests
        .unwrap();
    (r["cpu"].0.clone(), r["memory"].0.clone())
}

/// Vertical: a decision resizes the workload's pods in place through the `resize` subresource
/// (limits below the new requests are raised), the chosen size is recorded on the Deployment,
/// a pod created afterwards gets it too, and an Event explains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vertical_decision_resizes_pods_in_place_and_new_pods_follow() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 2).await;
    pod(&admin, "checkout", "checkout-1").await;
    pod(&admin, "checkout", "checkout-2").await;
    let rules = format!(
        "rules:\n- name: checkout-latency\n  when: {{ duration_above: 500ms }}\n  count: 5\n  window: 30s\n  action: {{ kind: vertical, target: {{ kind: Deployment, namespace: {NS}, name: checkout }}, max: 4, cooldown: 1s, scale_down_after: 10m, vertical: {{ container: app, factor: 2.0, max_cpu_millis: 1000, max_memory_mib: 1024 }} }}\n"
    );
    let d = Daemon::start(&c, &rules, &[]);
    let mut req = decision("checkout-latency", 9);
    for ev in &mut req.resource_spans[0].scope_spans[0].spans[0].events {
        for kv in &mut ev.attributes {
            if kv.key == "scale.action" {
                kv.value = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            "vertical".into(),
                        ),
                    ),
                });
            }
        }
    }
    opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(format!("http://{}", d.otlp))
        .await
        .unwrap()
        .export(req)
        .await
        .unwrap();
    let want = ("200m".to_string(), "256Mi".to_string());
    // The daemon resizes the pods one after the other, then records the size on the workload and
    // writes the Event: wait for all of it before looking at the details.
    assert!(
        eventually(LONG, || async {
            pod_requests(&admin, "checkout-1").await == want
                && pod_requests(&admin, "checkout-2").await == want
                && events(&admin, "checkout")
                    .await
                    .iter()
                    .any(|e| reason(e) == "Resized")
        })
        .await,
        "{}",
        d.logs()
    );
    let p = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), NS)
        .get("checkout-1")
        .await
        .unwrap();
    let limits = p.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap()
        .limits
        .unwrap();
    assert_eq!(
        limits["cpu"].0, "200m",
        "a limit below the new request is raised"
    );
    assert_eq!(limits["memory"].0, "512Mi", "a limit above it is kept");
    let dep = Api::<Deployment>::namespaced(admin.clone(), NS)
        .get("checkout")
        .await
        .unwrap();
    let recorded =
        dep.metadata.annotations.unwrap()[scale_scaler::serve::kube::RESOURCES_ANNOTATION].clone();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&recorded).unwrap(),
        serde_json::json!({"container": "app", "cpu_millis": 200, "memory_mib": 256})
    );
    assert_eq!(
        replicas(&admin, "checkout").await,
        2,
        "vertical leaves replicas alone"
    );
    let ev = events(&admin, "checkout").await;
    assert!(
        ev.iter().any(|e| reason(e) == "Resized"
            && note(e).contains("cpu 200m, memory 256Mi")
            && note(e).contains("resized 2 pod(s) in place")),
        "{ev:?}"
    );
    // A pod created later (a rollout, a restart) gets the recorded size on the next tick.
    pod(&admin, "checkout", "checkout-3").await;
    assert!(
        eventually(LONG, || async {
            pod_requests(&admin, "checkout-3").await == want
        })
        .await,
        "{}",
        d.logs()
    );
}
