//! `scale serve` in-process, dry run, over real OTLP/gRPC: authentication of the OTLP endpoint
//! (bearer token, mTLS) and local-engine mode (raw spans scored in the daemon).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Event};
use scale_scaler::serve::metrics::Metrics;
use scale_scaler::serve::orchestrator::DryRun;
use scale_scaler::serve::planner::Scale;
use scale_scaler::serve::{ServeOptions, bind, serve};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};

const RULES: &str = "rules:\n- name: checkout-latency\n  match: { service: checkout, operation: PlaceOrder }\n  when: { duration_above: 500ms }\n  count: 5\n  window: 30s\n  action: { kind: horizontal, target: { kind: Deployment, namespace: shop, name: checkout }, max: 4, cooldown: 1s }\n";

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn decision_request() -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: vec![7; 16],
        span_id: vec![1; 8],
        name: "PlaceOrder".into(),
        events: vec![Event {
            name: "scale.decision".into(),
            time_unix_nano: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
            attributes: vec![
                kv(
                    "scale.rule",
                    any_value::Value::StringValue("checkout-latency".into()),
                ),
                kv(
                    "scale.action",
                    any_value::Value::StringValue("horizontal".into()),
                ),
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

struct Server {
    addr: std::net::SocketAddr,
    audit: std::path::PathBuf,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(tag: &str, opts: ServeOptions) -> Server {
    let dir = std::env::temp_dir().join(format!("scale-serve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let orch = DryRun::new(
        Some(&audit),
        Scale {
            replicas: 1,
            cpu_millis: 100,
            memory_mib: 128,
        },
    )
    .unwrap();
    let rules = scale_core::RulesFile::from_yaml(RULES).unwrap().rules;
    let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        rules,
        orch,
        metrics.clone(),
        opts,
        shutdown.clone(),
    ));
    Server {
        addr,
        audit,
        metrics,
        shutdown,
        task,
    }
}

impl Server {
    async fn audit_lines(&self) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let t = std::fs::read_to_string(&self.audit).unwrap_or_default();
            if t.ends_with('\n') {
                return t
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Vec::new()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_is_required_when_configured() {
    let s = start(
        "token",
        ServeOptions {
            token: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .await;
    let mut c = TraceServiceClient::connect(format!("http://{}", s.addr))
        .await
        .unwrap();
    let err = c.export(decision_request()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut wrong = tonic::Request::new(decision_request());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer s3cre".parse().unwrap());
    assert_eq!(
        c.export(wrong).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(s.metrics.decisions_refused_count("unauthenticated"), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::fs::read_to_string(&s.audit)
            .unwrap_or_default()
            .is_empty(),
        "refused requests do not act"
    );
    let mut ok = tonic::Request::new(decision_request());
    ok.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    c.export(ok).await.unwrap();
    let lines = s.audit_lines().await;
    assert_eq!(lines.len(), 1, "only the authenticated decision acts");
    assert_eq!(lines[0]["to"], 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate_from_the_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A CA, the server's certificate for 127.0.0.1, a client certificate from the CA, and one
    // from another CA.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, issuer: &rcgen::Issuer<'_, rcgen::KeyPair>| {
        let k = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&k, issuer)
            .unwrap();
        (c.pem(), k.serialize_pem())
    };
    let (srv_cert, srv_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], &issuer);
    let (cli_cert, cli_key) = leaf(vec!["collector".into()], &issuer);
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_issuer = rcgen::Issuer::new(other_params, other_key);
    let (rogue_cert, rogue_key) = leaf(vec!["rogue".into()], &other_issuer);

    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&srv_cert, &srv_key))
        .client_ca_root(Certificate::from_pem(ca.pem()));
    let s = start(
        "mtls",
        ServeOptions {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await;
    let client = |identity: Option<Identity>| {
        let mut t = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.pem()))
            .domain_name("localhost");
        if let Some(i) = identity {
            t = t.identity(i);
        }
        let addr = s.addr;
        async move {
            let ch = Channel::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(t)
                .unwrap()
                .connect()
                .await?;
            TraceServiceClient::new(ch)
                .export(decision_request())
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            anyhow::Ok(())
        }
    };
    assert!(client(None).await.is_err(), "no client certificate");
    assert!(
        client(Some(Identity::from_pem(&rogue_cert, &rogue_key)))
            .await
            .is_err(),
        "certificate from another CA"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::fs::read_to_string(&s.audit)
            .unwrap_or_default()
            .is_empty(),
        "refused requests do not act"
    );
    client(Some(Identity::from_pem(&cli_cert, &cli_key)))
        .await
        .expect("client certificate from the CA");
    assert_eq!(s.audit_lines().await.len(), 1);
    s.stop().await;
}

fn span(service_op: (&str, &str), start_ns: u64, ms: f64, i: u64) -> (String, Span) {
    (
        service_op.0.to_string(),
        Span {
            trace_id: i.to_be_bytes().repeat(2),
            span_id: i.to_be_bytes().to_vec(),
            name: service_op.1.into(),
            start_time_unix_nano: start_ns,
            end_time_unix_nano: start_ns + (ms * 1e6) as u64,
            ..Default::default()
        },
    )
}

fn request(spans: Vec<(String, Span)>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: spans
            .into_iter()
            .map(|(svc, s)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", any_value::Value::StringValue(svc))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![s],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Local-engine mode: raw spans in, the daemon's own engine counts the rule's window, and the
/// action happens after N slow spans — with no collector involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_engine_mode_scores_raw_spans_and_scales() {
    let cfg = scale_core::EngineConfig::from_parts("", Some(RULES)).unwrap();
    let s = start(
        "local",
        ServeOptions {
            engine: Some(cfg),
            ..Default::default()
        },
    )
    .await;
    let mut c = TraceServiceClient::connect(format!("http://{}", s.addr))
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // Normal traffic: 2,000 fast spans over three operations.
    let ops = [
        ("checkout", "PlaceOrder"),
        ("cart", "GetCart"),
        ("frontend", "GET /"),
    ];
    for chunk in 0..20u64 {
        let spans = (0..100u64).map(|j| {
            let i = chunk * 100 + j;
            span(
                ops[(i % 3) as usize],
                now - 60_000_000_000 + i * 1_000_000,
                20.0 + (i % 7) as f64,
                i,
            )
        });
        c.export(request(spans.collect())).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::fs::read_to_string(&s.audit)
            .unwrap_or_default()
            .is_empty(),
        "no action on normal traffic"
    );
    // Four slow PlaceOrder spans: one short of the rule's count.
    let slow = |k: u64| span(ops[0], now + k * 1_000_000, 900.0, 10_000 + k);
    c.export(request((0..4).map(slow).collect())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::fs::read_to_string(&s.audit)
            .unwrap_or_default()
            .is_empty(),
        "four breaches are not five"
    );
    c.export(request(vec![slow(4)])).await.unwrap();
    let lines = s.audit_lines().await;
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0]["from"].as_u64(), lines[0]["to"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(lines[0]["why"]["rules"][0], "checkout-latency");
    assert_eq!(s.metrics.spans.get(), 2_005);
    s.stop().await;
}
