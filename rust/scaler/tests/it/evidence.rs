//! Silence is not calm (issue 15, must show 1), end to end: the ocb-built `otelcol-scale`
//! scores real OTLP spans and sends decisions and its rules' evidence reports to `scale serve`,
//! which scales a Deployment on a real kube-apiserver + etcd. During an incident the daemon
//! scales up; the collector is then killed (SIGKILL: no goodbye) and the replicas are held for
//! more than three quiet periods, said by a metric and a Warning Event; the collector comes back
//! with healthy latency, and the scale-down follows a quiet period of healthy reports.
//!
//! Needs `_build/otelcol-scale/otelcol-scale` (`make collector`; `make test` builds it before
//! the Rust tests) or `$SCALE_OTELCOL`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::collector::*;
use crate::harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

const QUIET: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_holds_the_scale_and_healthy_reports_bring_it_down() {
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    let rules = format!(
        "rules:\n- name: checkout-latency\n  match: {{ service: checkout, operation: PlaceOrder }}\n  when: {{ duration_above: 500ms }}\n  count: 5\n  window: 5s\n  action: {{ kind: horizontal, target: {{ kind: Deployment, namespace: {NS}, name: checkout }}, min: 1, max: 2, cooldown: 2s, scale_down_after: {}s }}\n",
        QUIET.as_secs()
    );
    let d = Daemon::start(&c, &rules, &["--evidence-timeout", "2s"]);
    let rules_file = d.dir.join("rules.yaml");
    let deadline = Instant::now() + Duration::from_secs(150);
    let latency = Arc::new(AtomicU64::new(50));

    // Healthy traffic through the collector, then an incident: the daemon scales up.
    let mut col = Collector::start(&d.dir, &rules_file, d.otlp);
    let load = traffic(col.otlp, latency.clone(), deadline);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        d.metric("scale_reports_received_total") > 0.0,
        "reports arrive:\n{}",
        d.logs()
    );
    latency.store(900, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(20), || async {
            replicas(&admin, "checkout").await == 2
        })
        .await,
        "scaled up during the incident:\n{}\n{}",
        d.logs(),
        col.logs()
    );

    // The collector dies in the middle of the incident: no decision, no report. Held for more
    // than three quiet periods.
    col.kill();
    let killed = Instant::now();
    while killed.elapsed() < 3 * QUIET + Duration::from_secs(2) {
        assert_eq!(
            replicas(&admin, "checkout").await,
            2,
            "held while the collector is dead ({:?} after the kill):\n{}",
            killed.elapsed(),
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        d.metric("scale_evidence_missing{target=\"Deployment/otel-demo/checkout\"}"),
        1.0,
        "{}",
        d.logs()
    );
    let held: Vec<_> = events(&admin, "checkout")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ScaleDownHeld"))
        .collect();
    assert_eq!(held.len(), 1, "one Warning Event for the episode");

    // The collector comes back and latency is healthy: down one step once a quiet period of
    // healthy reports has passed, not before.
    latency.store(50, Ordering::Relaxed);
    load.abort();
    let col2 = Collector::start(&d.dir, &rules_file, d.otlp);
    let back = Instant::now();
    let load2 = traffic(col2.otlp, latency.clone(), deadline);
    assert!(
        eventually(Duration::from_secs(40), || async {
            replicas(&admin, "checkout").await == 1
        })
        .await,
        "scaled down on healthy reports:\n{}\n{}",
        d.logs(),
        col2.logs()
    );
    assert!(
        back.elapsed() >= QUIET,
        "not before a quiet period of reports: {:?}",
        back.elapsed()
    );
    assert_eq!(
        d.metric("scale_evidence_missing{target=\"Deployment/otel-demo/checkout\"}"),
        0.0
    );
    // The Event follows the write that the replicas show: wait for it.
    let event_deadline = Instant::now() + Duration::from_secs(10);
    let down = loop {
        if let Some(e) = events(&admin, "checkout")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ScaledDown"))
        {
            break e;
        }
        assert!(
            Instant::now() < event_deadline,
            "a ScaledDown Event:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        down.note
            .as_deref()
            .unwrap_or("")
            .contains("latency healthy (checkout-latency: "),
        "{:?}",
        down.note
    );
    load2.abort();
}

/// The services of the multi-collector test: `checkout` (faulted; its Deployment is in the
/// demo's RBAC) and eleven others, so that the front tier's hash ring gives each `scale`
/// collector some of them (all twelve on one of two collectors: odds about 1 in 2,000).
fn services() -> Vec<String> {
    std::iter::once("checkout".to_string())
        .chain((1..12).map(|i| format!("svc-{i:02}")))
        .collect()
}

/// Traffic to the front tier: every 100 ms, two PlaceOrder spans of every service, to each
/// front collector in turn; `faulted`'s last 900 ms, the others 50 ms. Bounded by `until`;
/// errors (a dead collector behind the front) are ignored.
fn multi_traffic(
    fronts: [SocketAddr; 2],
    faulted: Arc<parking_lot::Mutex<Option<String>>>,
    until: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let seq = AtomicU64::new(1);
        let mut clients: [Option<TraceServiceClient<tonic::transport::Channel>>; 2] = [None, None];
        let mut turn = 0;
        while Instant::now() < until {
            turn = (turn + 1) % 2;
            let slow = faulted.lock().clone();
            let req = ExportTraceServiceRequest {
                resource_spans: services()
                    .iter()
                    .map(|s| {
                        let ms = if slow.as_deref() == Some(s) { 900 } else { 50 };
                        orders_of(s, 2, ms, &seq)
                    })
                    .collect(),
            };
            if clients[turn].is_none() {
                clients[turn] = TraceServiceClient::connect(format!("http://{}", fronts[turn]))
                    .await
                    .ok();
            }
            if let Some(c) = clients[turn].as_mut() {
                // A front collector whose backend is dead answers with an error: keep sending.
                let _ = tokio::time::timeout(Duration::from_secs(2), c.export(req)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The daemon's `/evidence`.
fn evidence(d: &Daemon) -> serde_json::Value {
    let (code, body) = d.http_get("/evidence").expect("GET /evidence");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/evidence is JSON")
}

/// A target's entry in `/evidence`.
fn evidence_of(ev: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    let want = format!("Deployment/{NS}/{name}");
    ev["targets"]
        .as_array()?
        .iter()
        .find(|t| t["target"] == want.as_str())
        .cloned()
}

/// The collectors whose reports matched spans of `rule` for `target`, with their span counts.
fn reporters(target: &serde_json::Value, rule: &str) -> Vec<(String, u64)> {
    target["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["rule"] == rule)
        .flat_map(|r| r["collectors"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["matched"].as_u64().unwrap_or(0) > 0)
        .map(|c| {
            (
                c["collector"].as_str().unwrap_or("").to_string(),
                c["matched"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Issue 15, must show 8: the shipped multi-collector layout run for real. Two front
/// collectors (`configs/collector/multi-collector.yaml`, the load-balancing exporter routing by
/// service) → two `scale` collectors (`configs/collector/scale-collector.yaml`) → the daemon.
/// Each service's rule is reported by the one collector that owns it; a rule over every service
/// is reported by both and merged; a fault scales its workload up as with one collector; killing
/// the `scale` collector that owns the faulted service holds that workload, while the services
/// of the other collector keep their healthy evidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multi_collector_layout_merges_reports_and_a_dead_scale_collector_holds_its_workloads()
{
    let (c, admin) = cluster().await;
    deployment(&admin, "checkout", 1).await;
    deployment(&admin, "product-catalog", 1).await;
    let q = QUIET.as_secs();
    let rules = format!(
        r#"rules:
- name: service-latency
  match: {{ service: "*", operation: PlaceOrder }}
  when: {{ duration_above: 500ms }}
  count: 5
  window: 5s
  action: {{ kind: horizontal, target: {{ kind: Deployment, namespace: {NS}, name: "${{service}}" }}, min: 1, max: 2, cooldown: 2s, scale_down_after: {q}s }}
- name: orders-slo
  match: {{ operation: PlaceOrder }}
  when: {{ duration_above: 5s }}
  count: 5
  window: 5s
  action: {{ kind: horizontal, target: {{ kind: Deployment, namespace: {NS}, name: product-catalog }}, min: 1, max: 2, scale_down_after: {q}s }}
"#
    );
    let d = Daemon::start(&c, &rules, &["--evidence-timeout", "2s"]);
    let rules_file = d.dir.join("rules.yaml");
    let deadline = Instant::now() + Duration::from_secs(180);
    // Test-only settings over the shipped files: reports every 500 ms, a short training, no
    // telemetry listener (four collectors on one host would all want :8888), and names.
    let quick = |name: &str| {
        vec![
            "yaml:service::telemetry::metrics::level: none".to_string(),
            format!("yaml:service::telemetry::resource::service.instance.id: {name}"),
        ]
    };
    let scale_cfg = root().join("configs/collector/scale-collector.yaml");
    let start_scale = |name: &str| {
        let (otlp, health) = (free_addr(), free_addr());
        let mut configs = vec![
            scale_cfg.display().to_string(),
            "yaml:processors::scale::report_interval: 500ms".to_string(),
            "yaml:processors::scale::sampler::train_size: 200".to_string(),
        ];
        configs.extend(quick(name));
        Collector::spawn(
            &d.dir,
            name,
            &configs,
            &[
                ("SCALE_OTLP_GRPC_ENDPOINT", otlp.to_string()),
                ("SCALE_HEALTH_ENDPOINT", health.to_string()),
                ("SCALE_DAEMON_ENDPOINT", d.otlp.to_string()),
                ("SCALE_RULES_FILE", rules_file.display().to_string()),
                (
                    "SCALE_SNAPSHOT_PATH",
                    d.dir.join(format!("{name}.snapshot")).display().to_string(),
                ),
            ],
            otlp,
            health,
        )
    };
    let mut scale = [start_scale("scale-a"), start_scale("scale-b")];
    let front_cfg = root().join("configs/collector/multi-collector.yaml");
    let start_front = |name: &str| {
        let (otlp, http, health) = (free_addr(), free_addr(), free_addr());
        let mut configs = vec![front_cfg.display().to_string()];
        configs.extend(quick(name));
        Collector::spawn(
            &d.dir,
            name,
            &configs,
            &[
                ("SCALE_OTLP_GRPC_ENDPOINT", otlp.to_string()),
                ("SCALE_OTLP_HTTP_ENDPOINT", http.to_string()),
                ("SCALE_HEALTH_ENDPOINT", health.to_string()),
                // The daemon accepts any OTLP: it stands in for the trace store.
                ("SCALE_TRACE_STORE_ENDPOINT", d.otlp.to_string()),
                ("SCALE_COLLECTOR_1", scale[0].otlp.to_string()),
                ("SCALE_COLLECTOR_2", scale[1].otlp.to_string()),
            ],
            otlp,
            health,
        )
    };
    let fronts = [start_front("front-1"), start_front("front-2")];
    let faulted = Arc::new(parking_lot::Mutex::new(None));
    let load = multi_traffic([fronts[0].otlp, fronts[1].otlp], faulted.clone(), deadline);
    let all_logs = |scale: &[Collector]| {
        let mut s = d.logs();
        for c in scale.iter().chain(&fronts) {
            s.push_str(&format!("\n--- {}\n{}", c.log.display(), c.logs()));
        }
        s
    };

    // Every service's rule is reported, with spans, by exactly one collector: its owner.
    let mut owners: Vec<(String, String)> = Vec::new();
    let found = eventually(Duration::from_secs(30), || {
        let ev = evidence(&d);
        let mut found = Vec::new();
        for s in services() {
            if let Some(t) = evidence_of(&ev, &s) {
                let r = reporters(&t, "service-latency");
                assert!(
                    r.len() <= 1,
                    "{s} is reported by {r:?}: one owner per service"
                );
                if let Some((c, _)) = r.first() {
                    found.push((s, c.clone()));
                }
            }
        }
        let done = found.len() == services().len();
        owners = found;
        async move { done }
    })
    .await;
    assert!(
        found,
        "every service has an owner: {owners:?}\n{}",
        all_logs(&scale)
    );
    let owner_of_checkout = owners[0].1.clone();
    let other = owners
        .iter()
        .find(|(_, c)| *c != owner_of_checkout)
        .map(|(s, c)| (s.clone(), c.clone()))
        .unwrap_or_else(|| panic!("the ring gave every service to one collector: {owners:?}"));
    // A rule over every service is reported by both, and merged: its total is their sum.
    let ev = evidence(&d);
    let slo = evidence_of(&ev, "product-catalog").expect("product-catalog's evidence");
    let parts = reporters(&slo, "orders-slo");
    assert_eq!(parts.len(), 2, "both collectors report orders-slo: {slo:#}");
    let merged = slo["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "orders-slo")
        .unwrap()["matched"]
        .as_u64()
        .unwrap();
    assert_eq!(merged, parts.iter().map(|p| p.1).sum::<u64>(), "{slo:#}");

    // A fault in checkout: scaled up as with one collector (the same 20 s bound).
    *faulted.lock() = Some("checkout".to_string());
    assert!(
        eventually(Duration::from_secs(20), || async {
            replicas(&admin, "checkout").await == 2
        })
        .await,
        "scaled up during the incident:\n{}",
        all_logs(&scale)
    );

    // Checkout's `scale` collector dies in the incident: checkout is held for more than three
    // quiet periods; the other collector's services keep healthy evidence; the rule over every
    // service lost a part and says so.
    let dead = if owner_of_checkout == "scale-a" { 0 } else { 1 };
    scale[dead].kill();
    let killed = Instant::now();
    let mut saw_lost = false;
    while killed.elapsed() < 3 * QUIET + Duration::from_secs(2) {
        assert_eq!(
            replicas(&admin, "checkout").await,
            2,
            "held while checkout's collector is dead ({:?} after the kill):\n{}",
            killed.elapsed(),
            all_logs(&scale)
        );
        let ev = evidence(&d);
        let slo = evidence_of(&ev, "product-catalog").unwrap();
        if slo["verdict"] == "lost" {
            assert!(
                slo["detail"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("collector {owner_of_checkout}")),
                "{slo:#}"
            );
            saw_lost = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        saw_lost,
        "the rule over every service lost a collector's part"
    );
    assert_eq!(
        d.metric("scale_evidence_missing{target=\"Deployment/otel-demo/checkout\"}"),
        1.0,
        "{}",
        d.logs()
    );
    let ev = evidence(&d);
    assert_eq!(
        evidence_of(&ev, "checkout").unwrap()["verdict"],
        "missing",
        "{ev:#}"
    );
    let survivor = evidence_of(&ev, &other.0).unwrap();
    assert_eq!(survivor["verdict"], "healthy", "{survivor:#}");
    assert_eq!(
        reporters(&survivor, "service-latency")
            .into_iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        std::slice::from_ref(&other.1)
    );
    load.abort();
}
