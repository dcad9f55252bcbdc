//! `scale train` against the real thing: a Jaeger v2 (v1.75.0, memory storage, loopback) fed
//! the recorded demo traces over OTLP, and the real kube-apiserver of the k8s tests for the
//! ConfigMap path. The snapshot from Jaeger must be byte-identical to the one from the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::collector::Collector;
use crate::harness::jaeger::{self, Jaeger};
use crate::harness::{free_addr, root, scale};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

/// The recorded demo traces (24,023 spans of 2024-11-08, 02:09-02:24 UTC).
fn demo() -> PathBuf {
    root().join("data/otel-demo/traces.jsonl.gz")
}

const SINCE: &str = "2024-11-08T00:00:00Z";
const UNTIL: &str = "2024-11-09T00:00:00Z";

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "scale failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "scale should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `scale train` from Jaeger at `url` over the demo's day, with `extra` arguments.
fn from_jaeger(url: &str, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--jaeger", url, "--since", SINCE, "--until", UNTIL];
    args.extend_from_slice(extra);
    scale(&args)
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scale-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_trained_from_jaeger_equals_the_one_from_the_file_and_bad_inputs_are_errors() {
    let dir = tempdir("jaeger");
    let j = Jaeger::start(&dir);
    let requests = jaeger::requests(&demo());
    jaeger::export(j.otlp, &requests).await;
    let url = j.url();

    let from_file = dir.join("file.snap");
    let text = ok(&scale(&["train", path(&demo()), "-o", path(&from_file)]));
    assert!(text.contains("learned   24023 spans"), "{text}");

    // One page per minute of the range, 1,000 traces per query (the defaults).
    let jaeger_snap = dir.join("jaeger.snap");
    let text = ok(&from_jaeger(&url, &["-o", path(&jaeger_snap)]));
    assert!(
        text.contains("learned   24023 spans"),
        "{text}\n{}",
        j.logs()
    );
    let (a, b) = (
        std::fs::read(&from_file).unwrap(),
        std::fs::read(&jaeger_snap).unwrap(),
    );
    assert!(
        a == b,
        "the snapshots differ ({} vs {} bytes)",
        a.len(),
        b.len()
    );

    // Small pages: every page is full and split, traces across pages come back twice.
    let small = dir.join("small-pages.snap");
    let text = ok(&from_jaeger(
        &url,
        &["--page", "5m", "--page-traces", "40", "-o", path(&small)],
    ));
    assert!(text.contains("learned   24023 spans"), "{text}");
    assert!(
        std::fs::read(&small).unwrap() == a,
        "small pages gave another snapshot"
    );

    // A service filter learns that service's spans only (428 in the recording), though Jaeger
    // answers with whole traces.
    let text = ok(&from_jaeger(
        &url,
        &[
            "--service",
            "checkoutservice",
            "-o",
            path(&dir.join("checkout.snap")),
        ],
    ));
    assert!(text.contains("learned   428 spans of "), "{text}");

    // Jaeger unreachable.
    let closed = free_addr();
    let err = failed(&from_jaeger(
        &format!("http://{closed}"),
        &["-o", path(&dir.join("unreachable.snap"))],
    ));
    assert!(err.contains("cannot reach"), "{err}");
    assert!(!dir.join("unreachable.snap").exists());

    // A time range with no spans: an error, and no (empty) snapshot written.
    let empty = dir.join("empty.snap");
    let err = failed(&scale(&[
        "train",
        "--jaeger",
        &url,
        "--since",
        "2020-01-01T00:00:00Z",
        "--until",
        "2020-01-02T00:00:00Z",
        "-o",
        path(&empty),
    ]));
    assert!(err.contains("no spans to learn from"), "{err}");
    assert!(!empty.exists());

    let _ = std::fs::remove_dir_all(&dir);
}

/// Snapshots that cannot be used are clear errors with a non-zero exit where they are loaded.
#[test]
fn a_damaged_snapshot_or_one_from_another_configuration_is_refused() {
    let dir = tempdir("bad-snapshot");
    let snap = dir.join("demo.snap");
    ok(&scale(&["train", path(&demo()), "-o", path(&snap)]));
    let garbage = dir.join("garbage.snap");
    std::fs::write(&garbage, b"SCALESNP but not really").unwrap();
    let err = failed(&scale(&[
        "eval",
        "--snapshot",
        path(&garbage),
        path(&demo()),
    ]));
    assert!(err.contains("invalid snapshot"), "{err}");
    let cut = dir.join("cut.snap");
    std::fs::write(&cut, &std::fs::read(&snap).unwrap()[..1000]).unwrap();
    let err = failed(&scale(&["eval", "--snapshot", path(&cut), path(&demo())]));
    assert!(err.contains("invalid snapshot"), "{err}");
    let err = failed(&scale(&[
        "eval",
        "--snapshot",
        path(&snap),
        "--height",
        "5",
        path(&demo()),
    ]));
    assert!(
        err.contains("sampler.height 8 (the configuration has 5)"),
        "{err}"
    );
    // The right configuration: every span judged at once.
    let text = ok(&scale(&["eval", "--snapshot", path(&snap), path(&demo())]));
    assert!(text.contains("24023"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_goes_into_a_configmap_byte_identical_and_an_oversized_one_is_refused() {
    let dir = tempdir("configmap");
    let (cluster, admin) = crate::harness::cluster().await;
    let kubeconfig = cluster.admin_kubeconfig();
    let file = dir.join("file.snap");
    ok(&scale(&["train", path(&demo()), "-o", path(&file)]));

    let target = format!("{}/scale-snapshot", crate::harness::NS);
    let text = ok(&scale(&[
        "train",
        path(&demo()),
        "--configmap",
        &target,
        "--kubeconfig",
        path(&kubeconfig),
    ]));
    assert!(
        text.contains("configmap otel-demo/scale-snapshot"),
        "{text}"
    );
    let t = scale_scaler::train::configmap::Target::parse(&target).unwrap();
    let back = scale_scaler::train::configmap::read(admin.clone(), &t)
        .await
        .unwrap();
    assert!(
        back == std::fs::read(&file).unwrap(),
        "read back another snapshot"
    );
    // Written again (a retrain): updated in place.
    ok(&scale(&[
        "train",
        path(&demo()),
        "--configmap",
        &target,
        "--kubeconfig",
        path(&kubeconfig),
    ]));

    // A forest too large for a ConfigMap: refused before any request, with one that fits.
    let big = dir.join("big.yaml");
    std::fs::write(&big, "sampler: { n_trees: 25, height: 14 }\n").unwrap();
    let err = failed(&scale(&[
        "train",
        path(&demo()),
        "--config",
        path(&big),
        "--configmap",
        &format!("{}/too-big", crate::harness::NS),
        "--kubeconfig",
        path(&kubeconfig),
    ]));
    assert!(err.contains("over the 1048576 a ConfigMap holds"), "{err}");
    assert!(err.contains("sampler.height"), "{err}");
    let t =
        scale_scaler::train::configmap::Target::parse(&format!("{}/too-big", crate::harness::NS))
            .unwrap();
    assert!(
        scale_scaler::train::configmap::read(admin, &t)
            .await
            .is_err()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The demo's spans one by one, in the order `scale train` learns them (by end, then start,
/// trace and span id), each as a resource span of its own.
fn spans_by_end() -> Vec<ResourceSpans> {
    let mut out = Vec::new();
    for req in jaeger::requests(&demo()) {
        for rs in req.resource_spans {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    out.push(ResourceSpans {
                        resource: rs.resource.clone(),
                        scope_spans: vec![ScopeSpans {
                            scope: ss.scope.clone(),
                            spans: vec![span.clone()],
                            schema_url: ss.schema_url.clone(),
                        }],
                        schema_url: rs.schema_url.clone(),
                    });
                }
            }
        }
    }
    let key = |r: &ResourceSpans| {
        let s = &r.scope_spans[0].spans[0];
        (
            s.end_time_unix_nano,
            s.start_time_unix_nano,
            s.trace_id.clone(),
            s.span_id.clone(),
        )
    };
    out.sort_by_key(key);
    out
}

/// Export requests of `per` spans each, in order.
fn batches(spans: &[ResourceSpans], per: usize) -> Vec<ExportTraceServiceRequest> {
    spans
        .chunks(per)
        .map(|c| ExportTraceServiceRequest {
            resource_spans: c.to_vec(),
        })
        .collect()
}

/// otelcol-scale with the defaults (and `extra` processor settings), exporting what it keeps to
/// a JSON file; its Prometheus metrics on `metrics`.
fn collector(dir: &Path, name: &str, extra: &str) -> (Collector, PathBuf, SocketAddr) {
    let (otlp, health, metrics) = (free_addr(), free_addr(), free_addr());
    let out = dir.join(format!("{name}.kept.json"));
    let cfg = format!(
        r#"
extensions:
  health_check: {{ endpoint: {health} }}
receivers:
  otlp: {{ protocols: {{ grpc: {{ endpoint: {otlp} }} }} }}
processors:
  scale: {{ {extra} }}
exporters:
  file: {{ path: {out} }}
service:
  extensions: [health_check]
  telemetry:
    metrics:
      readers:
        - pull: {{ exporter: {{ prometheus: {{ host: 127.0.0.1, port: {mport} }} }} }}
  pipelines:
    traces: {{ receivers: [otlp], processors: [scale], exporters: [file] }}
"#,
        out = out.display(),
        mport = metrics.port(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, cfg).unwrap();
    let c = Collector::spawn(dir, name, &[path.display().to_string()], &[], otlp, health);
    (c, out, metrics)
}

/// Stop a collector with SIGTERM (the file exporter flushes) and read the span ids it kept.
fn stop_and_read_kept(mut c: Collector, out: &Path) -> std::collections::BTreeSet<Vec<u8>> {
    Command::new("kill")
        .arg("-TERM")
        .arg(c.child.id().to_string())
        .status()
        .unwrap();
    let _ = c.child.wait();
    let mut kept = std::collections::BTreeSet::new();
    if out.exists() {
        for req in jaeger::requests(out) {
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    kept.extend(ss.spans.into_iter().map(|s| s.span_id));
                }
            }
        }
    }
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_started_from_a_trained_snapshot_judges_as_if_it_had_learned_the_spans_itself()
{
    let dir = tempdir("warm");
    let spans = spans_by_end();
    let (training, replay) = spans.split_at(spans.len() - 1_000);
    // `scale train` over the training spans, from a file.
    let training_file = dir.join("training.jsonl");
    let mut text = String::new();
    for r in batches(training, 200) {
        text.push_str(&serde_json::to_string(&r).unwrap());
        text.push('\n');
    }
    std::fs::write(&training_file, text).unwrap();
    let snapshot = dir.join("trained.snap");
    let summary = ok(&scale(&[
        "train",
        path(&training_file),
        "-o",
        path(&snapshot),
    ]));
    assert!(
        summary.contains(&format!("learned   {} spans", training.len())),
        "{summary}"
    );

    // A: warm from the snapshot, then the replay.
    let (a, a_out, a_metrics) = collector(
        &dir,
        "warm",
        &format!("initial_snapshot: {}", snapshot.display()),
    );
    jaeger::export(a.otlp, &batches(replay, 100)).await;
    let metrics = jaeger::http_get(a_metrics, "/metrics").unwrap().1;
    let warm = metrics
        .lines()
        .find(|l| {
            l.starts_with("otelcol_processor_scale_engine_starts")
                && l.contains(r#"source="initial_snapshot""#)
        })
        .unwrap_or_else(|| panic!("no warm start in the metrics:\n{metrics}"));
    assert!(warm.ends_with(" 1"), "{warm}");
    let a_kept = stop_and_read_kept(a, &a_out);

    // B: cold, learns the training spans itself (in the same order), then the replay.
    let (b, b_out, _) = collector(&dir, "learned", "");
    jaeger::export(b.otlp, &batches(training, 200)).await;
    jaeger::export(b.otlp, &batches(replay, 100)).await;
    let replay_ids: std::collections::BTreeSet<Vec<u8>> = replay
        .iter()
        .map(|r| r.scope_spans[0].spans[0].span_id.clone())
        .collect();
    let b_kept: std::collections::BTreeSet<Vec<u8>> = stop_and_read_kept(b, &b_out)
        .intersection(&replay_ids)
        .cloned()
        .collect();

    // C: cold, the replay only.
    let (c, c_out, _) = collector(&dir, "cold", "");
    jaeger::export(c.otlp, &batches(replay, 100)).await;
    let c_kept = stop_and_read_kept(c, &c_out);

    assert!(!a_kept.is_empty(), "the warm collector kept nothing");
    assert!(a_kept.is_subset(&replay_ids));
    assert_eq!(
        a_kept, b_kept,
        "warm start and learning the same spans keep different spans"
    );
    assert_ne!(a_kept, c_kept, "warm and cold start keep the same spans");
    eprintln!(
        "replay of {} spans: warm kept {}, learned-itself kept {}, cold kept {}",
        replay.len(),
        a_kept.len(),
        b_kept.len(),
        c_kept.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
