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
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use scale_core::{Action, Target};
use scale_scaler::serve::kube::{HISTORY_ANNOTATION, Kube};
use scale_scaler::serve::leader::{LEADER_LABEL, LEADER_LABEL_VALUE};
use scale_scaler::serve::metrics::Metrics;
use scale_scaler::serve::orchestrator::{Observed, Orchestrator, OrchestratorError, Why};
use scale_scaler::serve::planner::History;
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
/// below min, and not before a quiet period has passed since the daemon started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_after_quiet_never_below_min() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 4).await;
    let started = std::time::Instant::now();
    let d = Daemon::start(
        &c,
        &rules(", min: 2, max: 5, step: 1, cooldown: 1s, scale_down_after: 2s"),
        &[],
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        replicas(&admin, "checkout").await,
        4,
        "nothing happens before the quiet period"
    );
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 3 }).await,
        "{}",
        d.logs()
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 2 }).await,
        "{}",
        d.logs()
    );
    // Several more quiet periods: it stays at min.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(replicas(&admin, "checkout").await, 2, "never below min");
    let downs: Vec<_> = events(&admin, "checkout")
        .await
        .into_iter()
        .filter(|e| reason(e) == "ScaledDown")
        .collect();
    assert_eq!(downs.len(), 2);
    assert!(
        note(&downs[0]).contains("quiet for 2 s"),
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
        history: &History,
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
        self.inner.set_replicas(t, o, to, why, history).await
    }
    async fn resize(
        &mut self,
        t: &Target,
        a: &Action,
        cpu: u64,
        mem: u64,
        why: &Why,
        history: &History,
    ) -> Result<(), OrchestratorError> {
        self.inner.resize(t, a, cpu, mem, why, history).await
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

/// Namespace of the daemon (`configs/k8s/scale-daemon.yaml`).
const DAEMON_NS: &str = "scale-system";

/// A Pod object for a daemon replica in [`DAEMON_NS`], as its Deployment would make it (there
/// is no kubelet: the object just exists, for the daemon to label).
async fn daemon_pod(admin: &kube::Client, name: &str) {
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": DAEMON_NS, "labels": {"app.kubernetes.io/name": "scale"}},
        "spec": {"serviceAccountName": "scale", "containers": [{"name": "scale", "image": "scale-autoscaler/scale:0.1.0"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), DAEMON_NS)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
}

/// Whether the daemon pod `name` carries the leader label.
async fn labelled(admin: &kube::Client, name: &str) -> bool {
    let p = Api::<Pod>::namespaced(admin.clone(), DAEMON_NS)
        .get(name)
        .await
        .unwrap();
    p.metadata
        .labels
        .unwrap_or_default()
        .get(LEADER_LABEL)
        .map(String::as_str)
        == Some(LEADER_LABEL_VALUE)
}

/// The pods that the OTLP Service of configs/k8s/scale-daemon.yaml (as applied to the API
/// server) selects, by name.
async fn service_pods(admin: &kube::Client) -> Vec<String> {
    let svc = Api::<Service>::namespaced(admin.clone(), DAEMON_NS)
        .get("scale")
        .await
        .unwrap();
    let selector = svc
        .spec
        .unwrap()
        .selector
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut names: Vec<String> = Api::<Pod>::namespaced(admin.clone(), DAEMON_NS)
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    names
}

fn ready(d: &Daemon) -> bool {
    d.http_get("/readyz")
        .map(|(code, _)| code == 200)
        .unwrap_or(false)
}

fn leads(d: &Daemon) -> bool {
    d.metric("scale_leader ") == 1.0
}

/// Must show 6 (issue 5) and issue 15's must show 6: two daemons compete for the Lease; both
/// are ready (so a two-replica Deployment is Available and can roll), exactly one shows
/// `scale_leader 1` and has its pod labelled, so the OTLP Service of configs/k8s/ selects that
/// pod only; only the holder acts, the standby refuses decisions (UNAVAILABLE). When the
/// holder is SIGKILLed, the standby takes over, moves the label to its own pod and acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_acts() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    daemon_pod(&admin, "scale-a").await;
    daemon_pod(&admin, "scale-b").await;
    let r = rules(", min: 1, max: 5, cooldown: 1s, scale_down_after: 10m");
    let lease = ["--lease", "scale-system/scale", "--lease-duration", "3s"];
    let start = |pod: &str| {
        Daemon::start_with_env(
            &c,
            &r,
            &[&lease[..], &["--identity", pod]].concat(),
            &[("POD_NAME", pod), ("POD_NAMESPACE", DAEMON_NS)],
        )
    };
    let a = start("scale-a");
    let b = start("scale-b");
    assert!(
        eventually(LONG, || async {
            ready(&a) && ready(&b) && (leads(&a) ^ leads(&b))
        })
        .await,
        "both ready, exactly one leader:\n{}\n{}",
        a.logs(),
        b.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ready(&a) && ready(&b), "both stay ready");
    assert!(leads(&a) ^ leads(&b), "still exactly one leader");
    let (mut leader, standby, leader_pod, standby_pod) = if leads(&a) {
        (a, b, "scale-a", "scale-b")
    } else {
        (b, a, "scale-b", "scale-a")
    };
    assert_eq!(standby.metric("scale_leader "), 0.0);
    assert!(
        eventually(LONG, || async {
            labelled(&admin, leader_pod).await && !labelled(&admin, standby_pod).await
        })
        .await,
        "the leader's pod alone is labelled:\n{}",
        leader.logs()
    );
    assert_eq!(service_pods(&admin).await, vec![leader_pod.to_string()]);
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
    // Failover: the leader dies without releasing the Lease or removing its label; the
    // standby takes the Lease after it expires and moves the label to its own pod.
    leader.kill();
    let survivor = standby;
    assert!(
        eventually(Duration::from_secs(30), || async { leads(&survivor) }).await,
        "{}",
        survivor.logs()
    );
    assert!(ready(&survivor));
    assert!(
        eventually(LONG, || async {
            labelled(&admin, standby_pod).await && !labelled(&admin, leader_pod).await
        })
        .await,
        "the label moves to the new leader's pod:\n{}",
        survivor.logs()
    );
    assert_eq!(service_pods(&admin).await, vec![standby_pod.to_string()]);
    send(survivor.otlp, "checkout-latency", 3).await.unwrap();
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 3 }).await,
        "{}",
        survivor.logs()
    );
    // A graceful stop removes the label (the Service then selects no pod until the next leader
    // labels its own).
    drop(survivor);
    assert!(!labelled(&admin, standby_pod).await);
}

/// Times of the ScaledUp Events of `name`, ns since the epoch (set by the daemon's clock when
/// it wrote each step).
async fn scale_up_times(admin: &kube::Client, name: &str) -> Vec<i128> {
    events(admin, name)
        .await
        .into_iter()
        .filter(|e| reason(e) == "ScaledUp")
        .map(|e| e.event_time.unwrap().0.as_nanosecond())
        .collect()
}

/// The planner's history recorded on a Deployment.
async fn recorded_history(admin: &kube::Client, name: &str) -> Option<History> {
    let d = Api::<Deployment>::namespaced(admin.clone(), NS)
        .get(name)
        .await
        .unwrap();
    let text = d.metadata.annotations?.get(HISTORY_ANNOTATION)?.clone();
    Some(History::from_record(&text).expect("a readable history record"))
}

/// Issue 15, must show 2: a decision whose window completed 5 minutes before it arrives (held
/// back, then replayed by an exporter) causes no action and is counted as stale; a fresh one
/// right after it still scales.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_a_decision_five_minutes_late_is_refused_and_counted() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    // window: 30s, so the default max_decision_age is 60 s.
    let d = Daemon::start(
        &c,
        &rules(", min: 1, max: 5, cooldown: 1s, scale_down_after: 10m"),
        &[],
    );
    let five_minutes_ago = now_ns() - 300_000_000_000;
    send_at(d.otlp, "checkout-latency", 1, five_minutes_ago)
        .await
        .unwrap();
    assert!(
        eventually(LONG, || async {
            d.metric("scale_decisions_refused_total{reason=\"stale\"}") == 1.0
        })
        .await,
        "{}",
        d.logs()
    );
    // Several ticks: nothing happens.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(replicas(&admin, "checkout").await, 1, "no action");
    assert!(events(&admin, "checkout").await.is_empty());
    assert_eq!(d.metric("scale_actions_total"), 0.0);
    assert_eq!(d.metric("scale_decisions_received_total"), 0.0);
    assert!(
        d.logs().contains("Refused a stale decision"),
        "{}",
        d.logs()
    );
    send(d.otlp, "checkout-latency", 2).await.unwrap();
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 2 }).await,
        "{}",
        d.logs()
    );
    assert_eq!(
        d.metric("scale_decisions_refused_total{reason=\"stale\"}"),
        1.0
    );
}

/// Send a decision for `rule` to each of `daemons` every 250 ms (errors ignored: a daemon may
/// be dead or a standby) until `done` or `timeout`; calls `each` after every round.
async fn keep_deciding<F, Fut>(daemons: &[&Daemon], rule: &str, timeout: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    let mut i = 0u8;
    while std::time::Instant::now() < deadline {
        for d in daemons {
            let _ = send(d.otlp, rule, i).await;
        }
        i = i.wrapping_add(1);
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Issue 15, must show 3 (restart): the daemon scales up and is killed; a new process starts,
/// decisions keep arriving, and it does not scale again before the cooldown since the first
/// scale-up has passed (it reads the history back from the workload) — then it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_the_cooldown_survives_a_restart() {
    const COOLDOWN_S: f64 = 8.0;
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let r = rules(", min: 1, max: 5, cooldown: 8s, scale_down_after: 10m");
    let mut first = Daemon::start(&c, &r, &[]);
    send(first.otlp, "checkout-latency", 1).await.unwrap();
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 2 }).await,
        "{}",
        first.logs()
    );
    // The Event follows the write; wait for it, so the kill does not cut it off.
    assert!(
        eventually(LONG, || async {
            scale_up_times(&admin, "checkout").await.len() == 1
        })
        .await
    );
    let h = recorded_history(&admin, "checkout")
        .await
        .expect("the scale-up is recorded on the workload");
    let up = h.last_up.expect("last scale-up");
    assert_eq!(up.cause, "latency rule checkout-latency");
    first.kill();
    let second = Daemon::start(&c, &r, &[]);
    let restarted = now_ns();
    keep_deciding(
        &[&second],
        "checkout-latency",
        Duration::from_secs(30),
        || async { replicas(&admin, "checkout").await == 3 },
    )
    .await;
    assert_eq!(replicas(&admin, "checkout").await, 3, "{}", second.logs());
    let ups = scale_up_times(&admin, "checkout").await;
    assert_eq!(
        ups.len(),
        2,
        "1→2 by the first process, 2→3 by the second: {:?}\n{}",
        events(&admin, "checkout")
            .await
            .iter()
            .map(note)
            .collect::<Vec<_>>(),
        second.logs()
    );
    // The cooldown runs from the first scale-up as recorded (its plan time, just before the
    // write and the Event).
    let first_up = up.at as i128;
    assert!(
        (restarted as i128 - first_up) < (COOLDOWN_S as i128 - 4) * 1_000_000_000,
        "the restart came well within the cooldown"
    );
    let gap = (ups[1] - first_up) as f64 / 1e9;
    assert!(
        gap >= COOLDOWN_S,
        "second scale-up {gap:.2} s after the first, cooldown {COOLDOWN_S} s:\n{}",
        second.logs()
    );
    assert!(
        second.metric("scale_actions_refused_total{reason=\"cooldown\"") >= 1.0,
        "the new process held decisions for the cooldown"
    );
}

/// Issue 15, must show 3 (failover): the leader scales up and is SIGKILLed; decisions keep
/// arriving (sent to both); the standby takes the Lease and does not scale again before the
/// cooldown since the first scale-up has passed — then it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_a_new_leader_keeps_the_cooldown_of_the_old_one() {
    const COOLDOWN_S: f64 = 12.0;
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let r = rules(", min: 1, max: 5, cooldown: 12s, scale_down_after: 10m");
    let lease = ["--lease", "scale-system/scale", "--lease-duration", "3s"];
    let a = Daemon::start(&c, &r, &[&lease[..], &["--identity", "scale-a"]].concat());
    let b = Daemon::start(&c, &r, &[&lease[..], &["--identity", "scale-b"]].concat());
    assert!(
        eventually(LONG, || async { leads(&a) ^ leads(&b) }).await,
        "exactly one leader:\n{}\n{}",
        a.logs(),
        b.logs()
    );
    let (mut leader, standby) = if leads(&a) { (a, b) } else { (b, a) };
    send(leader.otlp, "checkout-latency", 1).await.unwrap();
    assert!(
        eventually(LONG, || async {
            scale_up_times(&admin, "checkout").await.len() == 1
        })
        .await,
        "{}",
        leader.logs()
    );
    assert_eq!(replicas(&admin, "checkout").await, 2);
    let first_up = recorded_history(&admin, "checkout")
        .await
        .and_then(|h| h.last_up)
        .expect("the scale-up is recorded on the workload")
        .at as i128;
    leader.kill();
    let mut took_over: Option<u64> = None;
    keep_deciding(
        &[&leader, &standby],
        "checkout-latency",
        Duration::from_secs(40),
        || {
            if took_over.is_none() && leads(&standby) {
                took_over = Some(now_ns());
            }
            let admin = admin.clone();
            async move { replicas(&admin, "checkout").await == 3 }
        },
    )
    .await;
    assert_eq!(replicas(&admin, "checkout").await, 3, "{}", standby.logs());
    let ups = scale_up_times(&admin, "checkout").await;
    assert_eq!(ups.len(), 2, "1→2 by the old leader, 2→3 by the new one");
    let took_over = took_over.expect("the standby took over") as i128;
    assert!(
        took_over - first_up < (COOLDOWN_S as i128 - 3) * 1_000_000_000,
        "the standby took over {:.1} s after the first scale-up, well within the cooldown",
        (took_over - first_up) as f64 / 1e9
    );
    let gap = (ups[1] - first_up) as f64 / 1e9;
    assert!(
        gap >= COOLDOWN_S,
        "second scale-up {gap:.2} s after the first, cooldown {COOLDOWN_S} s:\n{}",
        standby.logs()
    );
    assert!(
        standby.metric("scale_actions_refused_total{reason=\"cooldown\"") >= 1.0,
        "the new leader held decisions for the cooldown:\n{}",
        standby.logs()
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
