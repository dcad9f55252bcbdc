//! `scale serve` against a real kube-apiserver v1.37.2 + etcd v3.7.3 (issue 5, "Must show"
//! 1–8). Each test starts its own control plane on loopback (scale-testcluster; the binaries
//! come from `scripts/k8s-bins.sh`), applies `configs/k8s/` as the admin, creates Deployments,
//! runs the daemon as a real process with its own service-account token (so the RBAC of
//! `configs/k8s/` is exercised by every test), sends `scale.decision` events over OTLP/gRPC
//! and reads replicas, Events and the daemon's metrics back. There are no controllers: replicas
//! are read from the scale subresource.

use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::Scale as K8sScale;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use scale_core::{Action, Target};
use scale_scaler::serve::kube::{HISTORY_ANNOTATION, Kube};
use scale_scaler::serve::leader::{LEADER_LABEL, LEADER_LABEL_VALUE};
use scale_scaler::serve::metrics::Metrics;
use scale_scaler::serve::orchestrator::{Observed, Orchestrator, OrchestratorError, Why};
use scale_scaler::serve::planner::History;
use scale_scaler::serve::{ServeOptions, bind, serve};

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

/// Must show 5 (and issue 15, must show 7): the API server is stopped for 60 s while decisions
/// keep arriving, then comes back: the pending action is applied once it is back, exactly once;
/// over the outage the daemon logs fewer than 20 ERROR lines (a rate-limited "unavailable"
/// line, not one per failed call), and one line when the API is reachable again.
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
    let errors = |log: &str| log.lines().filter(|l| l.contains(" ERROR ")).count();
    let before = d.logs();
    tokio::task::block_in_place(|| c.stop_apiserver());
    // A decision a second for 60 s; every one of them is accepted (the intake does not need the
    // API) and they all wait for the API server.
    let outage = std::time::Instant::now();
    let mut sent = 0u8;
    while outage.elapsed() < Duration::from_secs(60) {
        send(d.otlp, "checkout-latency", 0x10 + sent).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let during = d.logs();
    let failed_calls = d.metric("scale_api_errors_total{");
    assert!(
        failed_calls >= 100.0,
        "the daemon should have kept failing to reach the API (5 ticks a second): {failed_calls}\n{during}"
    );
    let outage_log = &during[before.len()..];
    let outage_errors = errors(outage_log);
    assert!(
        (1..20).contains(&outage_errors),
        "{outage_errors} ERROR lines over the 60 s outage ({failed_calls} failed calls):\n{outage_log}"
    );
    assert!(
        outage_log.contains("The Kubernetes API is unavailable"),
        "{outage_log}"
    );
    assert_eq!(d.metric("scale_decisions_received_total"), f64::from(sent));
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
        "the decisions of the outage conflate into one step, applied exactly once"
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
    let after = d.logs();
    assert!(
        after[during.len()..].contains("The Kubernetes API is reachable again."),
        "{after}"
    );
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
    assert_eq!(
        service_pods(&admin, DAEMON_NS).await,
        vec![leader_pod.to_string()]
    );
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
    assert_eq!(
        service_pods(&admin, DAEMON_NS).await,
        vec![standby_pod.to_string()]
    );
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
    checkout_readable_cart_forbidden(&c, &admin).await;
    let d = Daemon::start(
        &c,
        &rules(", min: 1, max: 5, cooldown: 1s, scale_down_after: 10m"),
        &[],
    );
    checkout_scales_and_cart_is_forbidden(&d, &admin, "the Role").await;
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

/// The controller of pods made by [`pod`]: a ReplicaSet of a Deployment, or nothing.
struct Owner {
    kind: &'static str,
    name: String,
    uid: Option<String>,
    labels: serde_json::Value,
}

impl Owner {
    /// No controller (a bare pod someone created with the same labels).
    fn none(labels: serde_json::Value) -> Owner {
        Owner {
            kind: "",
            name: String::new(),
            uid: None,
            labels,
        }
    }
}

/// A Deployment named `name` whose pods carry `labels`, selected by `selector` (a
/// `LabelSelector` in JSON), with one container `app` requesting 100m / 128Mi.
async fn deployment_with(
    admin: &kube::Client,
    name: &str,
    selector: serde_json::Value,
    labels: serde_json::Value,
) {
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 2,
            "selector": selector,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "example/app:1", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

/// The ReplicaSet `name` of Deployment `deployment`, controlled by it (as the Deployment
/// controller would create it; there are no controllers here); its pods carry the Deployment's
/// template labels.
async fn replicaset(admin: &kube::Client, deployment: &str, name: &str) -> Owner {
    let d = Api::<Deployment>::namespaced(admin.clone(), NS)
        .get(deployment)
        .await
        .unwrap();
    let mut labels = serde_json::to_value(d.spec.template.metadata.unwrap().labels).unwrap();
    labels["pod-template-hash"] = serde_json::json!(name.rsplit('-').next().unwrap());
    let rs: k8s_openapi::api::apps::v1::ReplicaSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NS, "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                "uid": d.metadata.uid, "controller": true}]},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}}
        }
    }))
    .unwrap();
    let rs = Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &rs)
        .await
        .unwrap();
    Owner {
        kind: "ReplicaSet",
        name: name.into(),
        uid: rs.metadata.uid,
        labels,
    }
}

/// Create a pod of `owner` with container `app` requesting 100m / 128Mi (limits 150m / 512Mi).
async fn pod(admin: &kube::Client, owner: &Owner, name: &str) {
    pod_with(
        admin,
        owner,
        name,
        serde_json::json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "150m", "memory": "512Mi"}}),
    )
    .await
}

/// Create a pod of `owner` whose container `app` has `resources`.
async fn pod_with(admin: &kube::Client, owner: &Owner, name: &str, resources: serde_json::Value) {
    let mut meta = serde_json::json!({"name": name, "namespace": NS, "labels": owner.labels});
    if let Some(uid) = &owner.uid {
        meta["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1", "kind": owner.kind,
            "name": owner.name, "uid": uid, "controller": true}]);
    }
    let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "example/app:1", "resources": resources}]}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
}

/// cpu and memory requests of container `app` of a pod ("-" where unset).
async fn pod_requests(admin: &kube::Client, name: &str) -> (String, String) {
    let p = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), NS)
        .get(name)
        .await
        .unwrap();
    let r = p.spec.unwrap().containers[0]
        .resources
        .clone()
        .and_then(|r| r.requests)
        .unwrap_or_default();
    let q = |k: &str| r.get(k).map_or("-".to_string(), |q| q.0.clone());
    (q("cpu"), q("memory"))
}

/// Send one decision for `rule` asking for a `vertical` (or `horizontal`) action.
async fn send_action(addr: std::net::SocketAddr, rule: &str, action: &str, trace_byte: u8) {
    let mut req = decision(rule, trace_byte);
    for ev in &mut req.resource_spans[0].scope_spans[0].spans[0].events {
        for kv in &mut ev.attributes {
            if kv.key == "scale.action" {
                kv.value = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            action.into(),
                        ),
                    ),
                });
            }
        }
    }
    opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .export(req)
        .await
        .unwrap();
}

/// A vertical rule `name` for Deployment `target` (factor `factor`, caps 1000m / 1024Mi);
/// `extra` is appended to the `vertical` mapping.
fn vertical_rule(name: &str, target: &str, kind: &str, factor: f64, extra: &str) -> String {
    format!(
        "- name: {name}\n  when: {{ duration_above: 500ms }}\n  count: 5\n  window: 30s\n  action: {{ kind: {kind}, target: {{ kind: Deployment, namespace: {NS}, name: {target} }}, max: 4, cooldown: 1s, scale_down_after: 10m, vertical: {{ container: app, factor: {factor:.1}, max_cpu_millis: 1000, max_memory_mib: 1024{extra} }} }}\n"
    )
}

/// Vertical: a decision resizes the workload's pods in place through the `resize` subresource
/// (limits below the new requests are raised), the chosen size is recorded on the Deployment,
/// a pod created afterwards gets it too, and an Event explains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vertical_decision_resizes_pods_in_place_and_new_pods_follow() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 2).await;
    let rs = replicaset(&admin, "checkout", "checkout-5d8f7").await;
    pod(&admin, &rs, "checkout-1").await;
    pod(&admin, &rs, "checkout-2").await;
    let rules = format!(
        "rules:\n{}",
        vertical_rule("checkout-latency", "checkout", "vertical", 2.0, "")
    );
    let d = Daemon::start(&c, &rules, &[]);
    send_action(d.otlp, "checkout-latency", "vertical", 9).await;
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
    pod(&admin, &rs, "checkout-3").await;
    assert!(
        eventually(LONG, || async {
            pod_requests(&admin, "checkout-3").await == want
        })
        .await,
        "{}",
        d.logs()
    );
}

/// Let the daemon's identity get and patch Deployment `name` too (configs/k8s/ lists only the
/// workloads of configs/rules/otel-demo.yaml by name).
fn allow_deployment(c: &Cluster, name: &str) {
    let role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{ name: scale-{name}, namespace: {NS} }}\nrules:\n  - apiGroups: [apps]\n    resources: [deployments, deployments/scale]\n    resourceNames: [{name}]\n    verbs: [get, update, patch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{ name: scale-{name}, namespace: {NS} }}\nroleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: scale-{name} }}\nsubjects: [{{ kind: ServiceAccount, name: scale, namespace: scale-system }}]\n"
    );
    c.apply_yaml(&role).unwrap();
}

/// Issue 15, must show 4: two Deployments share `app: checkout`; `checkout` also selects
/// `track notin (canary)`, `checkout-canary` selects `track: canary`; a bare pod carries
/// checkout's labels but belongs to neither. A vertical decision for either Deployment resizes
/// its own pods only: the full label selector (matchExpressions too) and the owner references
/// (pod → ReplicaSet → Deployment, by uid) decide, not `app: checkout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vertical_decision_resizes_only_the_workloads_own_pods() {
    let (c, admin) = cluster().await;
    allow_deployment(&c, "checkout-canary");
    deployment_with(
        &admin,
        "checkout",
        serde_json::json!({"matchLabels": {"app": "checkout"},
            "matchExpressions": [{"key": "track", "operator": "NotIn", "values": ["canary"]}]}),
        serde_json::json!({"app": "checkout", "track": "stable"}),
    )
    .await;
    deployment_with(
        &admin,
        "checkout-canary",
        serde_json::json!({"matchLabels": {"app": "checkout", "track": "canary"}}),
        serde_json::json!({"app": "checkout", "track": "canary"}),
    )
    .await;
    let stable = replicaset(&admin, "checkout", "checkout-6b9c4").await;
    let canary = replicaset(&admin, "checkout-canary", "checkout-canary-7f2d1").await;
    pod(&admin, &stable, "checkout-a").await;
    pod(&admin, &stable, "checkout-b").await;
    pod(&admin, &canary, "checkout-canary-a").await;
    // Same labels as checkout's pods, selected by checkout's selector, controlled by nobody.
    pod(
        &admin,
        &Owner::none(serde_json::json!({"app": "checkout", "track": "stable"})),
        "checkout-debug",
    )
    .await;
    let rules = format!(
        "rules:\n{}{}",
        vertical_rule("checkout-latency", "checkout", "vertical", 2.0, ""),
        vertical_rule("canary-latency", "checkout-canary", "vertical", 3.0, "")
    );
    let d = Daemon::start(&c, &rules, &[]);
    let requests = |names: &'static [&'static str]| {
        let admin = admin.clone();
        async move {
            let mut v = Vec::new();
            for n in names {
                v.push(pod_requests(&admin, n).await);
            }
            v
        }
    };
    let q = |cpu: &str, mem: &str| (cpu.to_string(), mem.to_string());
    let original = q("100m", "128Mi");
    let resized_events = |name: &'static str| {
        let admin = admin.clone();
        async move {
            events(&admin, name)
                .await
                .into_iter()
                .filter(|e| reason(e) == "Resized")
                .collect::<Vec<_>>()
        }
    };

    // The canary first (factor 3): its one pod, nothing of checkout's, not the bare pod.
    send_action(d.otlp, "canary-latency", "vertical", 1).await;
    assert!(
        eventually(LONG, || async {
            resized_events("checkout-canary").await.len() == 1
        })
        .await,
        "{}",
        d.logs()
    );
    assert_eq!(
        requests(&[
            "checkout-canary-a",
            "checkout-a",
            "checkout-b",
            "checkout-debug"
        ])
        .await,
        vec![
            q("300m", "384Mi"),
            original.clone(),
            original.clone(),
            original.clone()
        ]
    );
    let ev = resized_events("checkout-canary").await;
    assert!(
        note(&ev[0]).contains("resized 1 pod(s) in place"),
        "{}",
        note(&ev[0])
    );

    // Then checkout (factor 2): its two pods; the canary's keeps the canary's size, and the
    // bare pod with checkout's labels is not checkout's.
    send_action(d.otlp, "checkout-latency", "vertical", 2).await;
    assert!(
        eventually(LONG, || async {
            resized_events("checkout").await.len() == 1
        })
        .await,
        "{}",
        d.logs()
    );
    assert_eq!(
        requests(&[
            "checkout-a",
            "checkout-b",
            "checkout-canary-a",
            "checkout-debug"
        ])
        .await,
        vec![
            q("200m", "256Mi"),
            q("200m", "256Mi"),
            q("300m", "384Mi"),
            original.clone()
        ]
    );
    let ev = resized_events("checkout").await;
    assert!(
        note(&ev[0]).contains("resized 2 pod(s) in place"),
        "{}",
        note(&ev[0])
    );
    // Reconciliation (every tick) keeps to the same pods.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        requests(&["checkout-canary-a", "checkout-debug"]).await,
        vec![q("300m", "384Mi"), original]
    );
    assert_eq!(d.metric("scale_actions_total{action=\"resize\""), 2.0);
}

/// `vertical.fallback`: pods that cannot be resized in place (here: BestEffort pods, whose QoS
/// class a resize would change, which the API server refuses with 422). With `none`, nothing
/// restarts: a Warning Event, the refusal metric and an ERROR line, the pod template untouched
/// and no size recorded. With the default (`rollout`), the pod template is patched instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertical_fallback_none_reports_a_refused_resize_and_never_patches_the_template() {
    let (c, admin) = cluster().await;
    for name in ["checkout", "product-catalog"] {
        deployment(&admin, name, 1).await;
        let rs = replicaset(&admin, name, &format!("{name}-4c5d6")).await;
        pod_with(&admin, &rs, &format!("{name}-1"), serde_json::json!({})).await;
    }
    let rules = format!(
        "rules:\n{}{}",
        vertical_rule(
            "checkout-latency",
            "checkout",
            "vertical",
            2.0,
            ", fallback: none"
        ),
        vertical_rule("catalog-latency", "product-catalog", "vertical", 2.0, "")
    );
    let d = Daemon::start(&c, &rules, &[]);
    send_action(d.otlp, "checkout-latency", "vertical", 3).await;
    send_action(d.otlp, "catalog-latency", "vertical", 4).await;
    let template_requests = |name: &'static str| {
        let admin = admin.clone();
        async move {
            let dep = Api::<Deployment>::namespaced(admin.clone(), NS)
                .get(name)
                .await
                .unwrap();
            let r = dep.spec.template.spec.unwrap().containers[0]
                .resources
                .clone()
                .unwrap()
                .requests
                .unwrap();
            (
                r["cpu"].0.clone(),
                r["memory"].0.clone(),
                dep.metadata
                    .annotations
                    .unwrap_or_default()
                    .contains_key(scale_scaler::serve::kube::RESOURCES_ANNOTATION),
            )
        }
    };
    // fallback none: refused, reported, nothing restarted.
    assert!(
        eventually(LONG, || async {
            events(&admin, "checkout")
                .await
                .iter()
                .any(|e| reason(e) == scale_scaler::serve::kube::REASON_RESIZE_REFUSED)
        })
        .await,
        "{}",
        d.logs()
    );
    let ev = events(&admin, "checkout").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].type_.as_deref(), Some("Warning"));
    let n = note(&ev[0]);
    for part in [
        "cpu 200m, memory 256Mi",
        "pod checkout-1",
        "vertical.fallback is none",
        "no restart",
        "checkout-latency",
    ] {
        assert!(n.contains(part), "event note {n:?} lacks {part:?}");
    }
    assert!(
        eventually(LONG, || async {
            d.metric("scale_actions_refused_total{reason=\"in_place_refused\",target=\"Deployment/otel-demo/checkout\"}") == 1.0
        })
        .await,
        "{}",
        d.logs()
    );
    assert_eq!(
        template_requests("checkout").await,
        ("100m".to_string(), "128Mi".to_string(), false),
        "template not patched, no size recorded"
    );
    assert_eq!(
        pod_requests(&admin, "checkout-1").await,
        ("-".into(), "-".into())
    );
    assert!(
        d.logs()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("in-place resize refused")),
        "{}",
        d.logs()
    );
    // fallback rollout (the default): the template is patched instead.
    assert!(
        eventually(LONG, || async {
            template_requests("product-catalog").await
                == ("200m".to_string(), "256Mi".to_string(), true)
        })
        .await,
        "{}",
        d.logs()
    );
    // The Event is written after the patch: wait for it too.
    assert!(
        eventually(LONG, || async {
            events(&admin, "product-catalog").await.iter().any(|e| {
                reason(e) == "Resized" && note(e).contains("pod template patched (rollout)")
            })
        })
        .await,
        "{:?}",
        events(&admin, "product-catalog").await
    );
    assert_eq!(d.metric("scale_actions_total{action=\"resize\""), 1.0);
}

/// Install a minimal VerticalPodAutoscaler CRD (any content is kept) and wait until it is
/// served.
async fn install_vpa_crd(admin: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let (group, version, kind) = scale_scaler::serve::kube::VPA_API;
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        // *.k8s.io groups are protected; the VPA's own CRD carries this approval.
        "metadata": {"name": format!("verticalpodautoscalers.{group}"),
            "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes/kubernetes/pull/63797"}},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "verticalpodautoscalers", "singular": "verticalpodautoscaler",
                "kind": kind, "listKind": format!("{kind}List")},
            "versions": [{"name": version, "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap();
    Api::<CustomResourceDefinition>::all(admin.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    assert!(
        eventually(LONG, || async {
            vpas(admin).list(&Default::default()).await.is_ok()
        })
        .await,
        "the VPA CRD is not served"
    );
}

fn vpas(admin: &kube::Client) -> Api<kube::api::DynamicObject> {
    let (group, version, kind) = scale_scaler::serve::kube::VPA_API;
    let ar =
        kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(admin.clone(), NS, &ar)
}

/// A VPA `name` targeting Deployment `target`; `update_mode` None leaves the mode unset (the
/// VPA's default, `Auto`).
async fn vpa(admin: &kube::Client, name: &str, target: &str, update_mode: Option<&str>) {
    let (group, version, kind) = scale_scaler::serve::kube::VPA_API;
    let mut spec = serde_json::json!({"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}});
    if let Some(m) = update_mode {
        spec["updatePolicy"] = serde_json::json!({"updateMode": m});
    }
    let obj: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": format!("{group}/{version}"), "kind": kind,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }))
    .unwrap();
    vpas(admin)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
}

/// Issue 15, must show 5: a VPA in an active mode (no updateMode: `Auto`) targets checkout: a
/// vertical decision is refused with a Warning Event and the `controlled` refusal metric, and
/// the pods keep their size; a horizontal decision for the same workload scales it. Once the
/// VPA is set to `Off`, vertical decisions resize again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vpa_makes_vertical_actions_refuse_and_horizontal_ones_go_ahead() {
    let (c, admin) = cluster().await;
    install_vpa_crd(&admin).await;
    deployment(&admin, "checkout", 1).await;
    let rs = replicaset(&admin, "checkout", "checkout-8e1f2").await;
    pod(&admin, &rs, "checkout-1").await;
    vpa(&admin, "checkout", "checkout", None).await;
    let rules = format!(
        "rules:\n{}",
        vertical_rule("checkout-latency", "checkout", "auto", 2.0, "")
    );
    let d = Daemon::start(&c, &rules, &[]);
    let refusals = || async {
        events(&admin, "checkout")
            .await
            .into_iter()
            .filter(|e| reason(e) == scale_scaler::serve::kube::REASON_SCALING_REFUSED)
            .collect::<Vec<_>>()
    };
    send_action(d.otlp, "checkout-latency", "vertical", 5).await;
    assert!(
        eventually(LONG, || async { !refusals().await.is_empty() }).await,
        "{}",
        d.logs()
    );
    let r = &refusals().await[0];
    assert_eq!(r.type_.as_deref(), Some("Warning"));
    assert!(
        note(r).contains("VerticalPodAutoscaler otel-demo/checkout")
            && note(r).contains("pod resources"),
        "{}",
        note(r)
    );
    assert_eq!(
        d.metric("scale_actions_refused_total{reason=\"controlled\",target=\"Deployment/otel-demo/checkout\"}"),
        1.0
    );
    assert_eq!(
        pod_requests(&admin, "checkout-1").await,
        ("100m".to_string(), "128Mi".to_string())
    );
    // Horizontal: the VPA does not own replicas.
    send_action(d.otlp, "checkout-latency", "horizontal", 6).await;
    assert!(
        eventually(LONG, || async { replicas(&admin, "checkout").await == 2 }).await,
        "{}",
        d.logs()
    );
    assert_eq!(pod_requests(&admin, "checkout-1").await.0, "100m");
    assert_eq!(d.metric("scale_actions_total{action=\"resize\""), 0.0);
    // updateMode Off: the VPA only recommends; resizing goes ahead.
    vpas(&admin)
        .patch(
            "checkout",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"updatePolicy": {"updateMode": "Off"}}}),
            ),
        )
        .await
        .unwrap();
    // After the cooldown of the scale-up.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send_action(d.otlp, "checkout-latency", "vertical", 7).await;
    assert!(
        eventually(LONG, || async {
            pod_requests(&admin, "checkout-1").await == ("200m".to_string(), "256Mi".to_string())
        })
        .await,
        "{}",
        d.logs()
    );
    assert_eq!(refusals().await.len(), 1);
}

/// An absent VPA CRD means no VPA, but is asked again: a CRD (and a VPA) installed while the
/// daemon runs makes vertical actions refuse once the recheck interval has passed (five
/// minutes by default; one second here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vpa_crd_installed_later_is_noticed_after_the_recheck_interval() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let rs = replicaset(&admin, "checkout", "checkout-9a3b4").await;
    pod(&admin, &rs, "checkout-1").await;
    let recheck = Duration::from_secs(1);
    let mut kube = Kube::new(
        client(&c.daemon_kubeconfig()).await,
        scale_scaler::serve::kube::Reporter {
            controller: "scale-autoscaler".into(),
            instance: "test".into(),
        },
        None,
        Arc::new(Metrics::new()),
    )
    .with_absent_api_recheck(recheck);
    let rule = scale_core::RulesFile::from_yaml(&format!(
        "rules:\n{}",
        vertical_rule("checkout-latency", "checkout", "vertical", 2.0, "")
    ))
    .unwrap()
    .rules
    .remove(0);
    let (target, action) = (rule.action.target.clone(), rule.action);
    // No CRD: no VPA, the resize goes ahead (and the 404 is remembered).
    kube.resize(
        &target,
        &action,
        200,
        256,
        &Why::default(),
        &History::default(),
    )
    .await
    .unwrap();
    assert_eq!(pod_requests(&admin, "checkout-1").await.0, "200m");
    install_vpa_crd(&admin).await;
    vpa(&admin, "checkout", "checkout", Some("Auto")).await;
    tokio::time::sleep(recheck + Duration::from_millis(200)).await;
    match kube
        .resize(
            &target,
            &action,
            400,
            512,
            &Why::default(),
            &History::default(),
        )
        .await
    {
        Err(OrchestratorError::Controlled(by)) => assert!(
            by.contains("VerticalPodAutoscaler otel-demo/checkout (updateMode Auto)"),
            "{by}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(pod_requests(&admin, "checkout-1").await.0, "200m");
}
