//! Test harness for `scale serve` against a real kube-apiserver + etcd (scale-testcluster):
//! the cluster with `configs/k8s/` applied, workloads, the daemon as a real process, an OTLP
//! client that sends `scale.decision` events, and readers for replicas, Events and metrics.
#![allow(dead_code)]

pub mod collector;
pub mod jaeger;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, span::Event as SpanEvent,
};
pub use scale_testcluster::Cluster;

/// The repository root.
/// How long the tests wait for the daemon to act.
pub const LONG: Duration = Duration::from_secs(20);

/// `$ENV`, or `$SCALE_CACHE/<rel>` (default cache `~/.cache/scale`): a tool that `script`
/// builds into the cache. A missing one fails the test: it is never skipped.
pub fn cached_binary(env: &str, rel: &str, script: &str) -> PathBuf {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("SCALE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/scale")
            });
        cache.join(rel)
    });
    assert!(
        p.exists(),
        "{} is missing: run {script} (make test does) or set {env}",
        p.display()
    );
    p
}

/// The pods, by name (sorted), that the Service `scale` in `namespace` (the daemon's OTLP
/// Service, from `configs/k8s/scale-daemon.yaml` or the chart) selects.
pub async fn service_pods(admin: &Client, namespace: &str) -> Vec<String> {
    let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin.clone(), namespace)
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
    let mut names: Vec<String> =
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), namespace)
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

/// Deployments checkout and cart (1 replica each), and the RBAC itself: the daemon's identity
/// may read checkout's scale, not cart's (403).
pub async fn checkout_readable_cart_forbidden(c: &Cluster, admin: &Client) {
    deployment(admin, "checkout", 1).await;
    deployment(admin, "cart", 1).await;
    let daemon_client = client(&c.daemon_kubeconfig()).await;
    let deps = Api::<Deployment>::namespaced(daemon_client, NS);
    assert!(deps.get_scale("checkout").await.is_ok());
    match deps.get_scale("cart").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("expected 403 for cart, got {other:?}"),
    }
}

/// A decision for `checkout-latency` scales checkout 1 → 2 and one for `cart-latency` is
/// refused as `forbidden` (counted and logged), cart staying at 1: the daemon's RBAC lists
/// checkout, not cart (`why` says where).
pub async fn checkout_scales_and_cart_is_forbidden(d: &Daemon, admin: &Client, why: &str) {
    send(d.otlp, "cart-latency", 4).await.unwrap();
    send(d.otlp, "checkout-latency", 5).await.unwrap();
    assert!(
        eventually(LONG, || async { replicas(admin, "checkout").await == 2 }).await,
        "{}",
        d.logs()
    );
    assert!(eventually(LONG, || async { d.metric("scale_actions_refused_total{reason=\"forbidden\",target=\"Deployment/otel-demo/cart\"}") == 1.0 }).await, "{}", d.logs());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        replicas(admin, "cart").await,
        1,
        "cart is not listed in {why}"
    );
    assert!(d.logs().contains("forbidden"), "the refusal is logged");
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Namespace of the workloads in `configs/k8s/rbac-otel-demo.yaml`.
pub const NS: &str = "otel-demo";

/// A loopback address free now (see [`scale_testcluster::free_port`]).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], scale_testcluster::free_port().unwrap()))
}

/// A kube client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// Start a cluster, create the workloads' namespace (and its default ServiceAccount) and apply
/// every manifest of `configs/k8s/` as the admin (scale-testcluster's server-side apply).
/// Returns the cluster and an admin client.
pub async fn cluster() -> (Cluster, Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = tokio::task::spawn_blocking(|| -> anyhow::Result<Cluster> {
        let c = Cluster::start(Default::default())?;
        c.create_namespace(NS)?;
        for f in [
            "scale-daemon.yaml",
            "rbac-otel-demo.yaml",
            "collector-warm.yaml",
        ] {
            c.apply_yaml(&std::fs::read_to_string(
                root().join("configs/k8s").join(f),
            )?)?;
        }
        Ok(c)
    })
    .await
    .unwrap()
    .expect("start kube-apiserver + etcd and apply configs/k8s");
    let admin = client(&c.admin_kubeconfig()).await;
    (c, admin)
}

/// Create a Deployment with `replicas` and one container `app` requesting 100m / 128Mi
/// (scale-testcluster's shape).
pub async fn deployment(admin: &Client, name: &str, replicas: i32) {
    let d: Deployment =
        serde_json::from_value(scale_testcluster::deployment(NS, name, replicas as u32)).unwrap();
    Api::<Deployment>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

/// Current `spec.replicas` of a Deployment, through its scale subresource.
pub async fn replicas(admin: &Client, name: &str) -> i32 {
    Api::<Deployment>::namespaced(admin.clone(), NS)
        .get_scale(name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas
        .unwrap_or(0)
}

/// Events (events.k8s.io/v1) regarding a workload, oldest first.
pub async fn events(admin: &Client, name: &str) -> Vec<Event> {
    let mut v: Vec<Event> = Api::<Event>::namespaced(admin.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    v.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    v
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rules for the tests: `checkout` and `cart` (horizontal) and `product-catalog`, in
/// [`NS`]; `extra` is appended to each action's flow mapping.
pub fn rules(extra: &str) -> String {
    let mut s = String::from("rules:\n");
    for (rule, target) in [
        ("checkout-latency", "checkout"),
        ("cart-latency", "cart"),
        ("catalog-latency", "product-catalog"),
    ] {
        s.push_str(&format!(
            "- name: {rule}\n  when: {{ duration_above: 500ms }}\n  count: 5\n  window: 30s\n  action: {{ kind: horizontal, target: {{ kind: Deployment, namespace: {NS}, name: {target} }}{extra} }}\n"
        ));
    }
    s
}

/// A running `scale serve` process.
pub struct Daemon {
    child: Child,
    pub otlp: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    pub dir: PathBuf,
}

impl Daemon {
    /// Start `scale serve --orchestrator kubernetes` with the daemon's own kubeconfig and `rules`.
    pub fn start(cluster: &Cluster, rules: &str, extra: &[&str]) -> Daemon {
        Self::start_with_env(cluster, rules, extra, &[])
    }

    /// [`Daemon::start`] with environment variables (`POD_NAME`, `POD_NAMESPACE`, …).
    pub fn start_with_env(
        cluster: &Cluster,
        rules: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let otlp = free_addr();
        let http = free_addr();
        let dir = cluster.dir().join(format!("daemon-{}", otlp.port()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rules.yaml"), rules).unwrap();
        let log = dir.join("scale.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_scale"))
            .args(["serve", "--orchestrator", "kubernetes", "--tick", "200ms"])
            .arg("--kubeconfig")
            .arg(cluster.daemon_kubeconfig())
            .arg("--rules")
            .arg(dir.join("rules.yaml"))
            .arg("--listen")
            .arg(otlp.to_string())
            .arg("--metrics-listen")
            .arg(http.to_string())
            .args(extra)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .envs(env.iter().copied())
            .env("SCALE_LOG", "info,kube=warn,tower=warn,hyper=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start scale serve");
        let d = Daemon {
            child,
            otlp,
            http,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.http_get("/healthz").is_none() {
            assert!(
                Instant::now() < deadline,
                "scale serve did not come up:\n{}",
                d.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (status, body) of GET `path` on the metrics listener.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(self.http).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut t = String::new();
        s.read_to_string(&mut t).ok()?;
        let code = t.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            code,
            t.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        ))
    }

    /// A metric's value (sum over series whose line starts with `prefix`).
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGKILL (no Lease release).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Already gone (a test killed it): nothing to say.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// The wall clock, ns since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// An export request with one span carrying a `scale.decision` event for `rule`, whose window
/// completed just now.
pub fn decision(rule: &str, trace_byte: u8) -> ExportTraceServiceRequest {
    decision_at(rule, trace_byte, now_ns())
}

/// [`decision`] for a window that completed at `window_end_ns` (the event's time).
pub fn decision_at(rule: &str, trace_byte: u8, window_end_ns: u64) -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: vec![trace_byte; 16],
        span_id: vec![1; 8],
        name: "PlaceOrder".into(),
        events: vec![SpanEvent {
            name: "scale.decision".into(),
            time_unix_nano: window_end_ns,
            attributes: vec![
                kv("scale.rule", any_value::Value::StringValue(rule.into())),
                kv(
                    "scale.action",
                    any_value::Value::StringValue("horizontal".into()),
                ),
                kv("scale.count", any_value::Value::IntValue(5)),
                kv("scale.observed_ms", any_value::Value::DoubleValue(812.5)),
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// An export request with one `scale.report` span for `rule` (a fixed target): `matched` spans,
/// `breaches` of them, over the last `interval`, as the collector's `scale` processor sends them.
pub fn report(
    rule: &str,
    matched: i64,
    breaches: i64,
    interval: Duration,
) -> ExportTraceServiceRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let span = Span {
        trace_id: vec![7; 16],
        span_id: vec![1; 8],
        name: "scale.report".into(),
        start_time_unix_nano: now - interval.as_nanos() as u64,
        end_time_unix_nano: now,
        attributes: vec![
            kv("scale.rule", any_value::Value::StringValue(rule.into())),
            kv("scale.count", any_value::Value::IntValue(5)),
            kv("scale.window_ms", any_value::Value::DoubleValue(30_000.0)),
            kv("scale.report.matched", any_value::Value::IntValue(matched)),
            kv(
                "scale.report.breaches",
                any_value::Value::IntValue(breaches),
            ),
            kv("scale.report.in_window", any_value::Value::IntValue(0)),
            kv("scale.report.p90_ms", any_value::Value::DoubleValue(120.0)),
        ],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![
                    kv(
                        "service.name",
                        any_value::Value::StringValue("otelcol-scale".into()),
                    ),
                    kv(
                        "service.instance.id",
                        any_value::Value::StringValue("test".into()),
                    ),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Send healthy reports (100 spans, no breach) for `rule` every `every` until the returned
/// handle is aborted.
pub fn healthy_reports(
    addr: SocketAddr,
    rule: &'static str,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(mut c) = TraceServiceClient::connect(format!("http://{addr}")).await {
                let _ = c.export(report(rule, 100, 0, every)).await;
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Send one decision for `rule` to the daemon at `addr`.
pub async fn send(addr: SocketAddr, rule: &str, trace_byte: u8) -> Result<(), tonic::Status> {
    send_at(addr, rule, trace_byte, now_ns()).await
}

/// Send one decision for `rule` whose window completed at `window_end_ns`.
pub async fn send_at(
    addr: SocketAddr,
    rule: &str,
    trace_byte: u8,
    window_end_ns: u64,
) -> Result<(), tonic::Status> {
    let mut c = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.export(decision_at(rule, trace_byte, window_end_ns))
        .await
        .map(|_| ())
}

/// Runs the `scale` binary with `args` (logging at `warn`) and waits for it.
pub fn scale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scale"))
        .args(args)
        .env("SCALE_LOG", "warn")
        .output()
        .expect("run scale")
}
