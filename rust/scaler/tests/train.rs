//! `scale train` against the real thing: a Jaeger v2 (v1.75.0, memory storage, loopback) fed
//! the recorded demo traces over OTLP, and the real kube-apiserver of the k8s tests for the
//! ConfigMap path. The snapshot from Jaeger must be byte-identical to the one from the file.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::jaeger::{self, Jaeger};
use harness::root;

/// The recorded demo traces (24,023 spans of 2024-11-08, 02:09-02:24 UTC).
fn demo() -> PathBuf {
    root().join("data/otel-demo/traces.jsonl.gz")
}

const SINCE: &str = "2024-11-08T00:00:00Z";
const UNTIL: &str = "2024-11-09T00:00:00Z";

fn scale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scale"))
        .args(args)
        .env("SCALE_LOG", "warn")
        .output()
        .expect("run scale")
}

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
    let from_jaeger = dir.join("jaeger.snap");
    let text = ok(&scale(&[
        "train",
        "--jaeger",
        &url,
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "-o",
        path(&from_jaeger),
    ]));
    assert!(
        text.contains("learned   24023 spans"),
        "{text}\n{}",
        j.logs()
    );
    let (a, b) = (
        std::fs::read(&from_file).unwrap(),
        std::fs::read(&from_jaeger).unwrap(),
    );
    assert!(
        a == b,
        "the snapshots differ ({} vs {} bytes)",
        a.len(),
        b.len()
    );

    // Small pages: every page is full and split, traces across pages come back twice.
    let small = dir.join("small-pages.snap");
    let text = ok(&scale(&[
        "train",
        "--jaeger",
        &url,
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--page",
        "5m",
        "--page-traces",
        "40",
        "-o",
        path(&small),
    ]));
    assert!(text.contains("learned   24023 spans"), "{text}");
    assert!(
        std::fs::read(&small).unwrap() == a,
        "small pages gave another snapshot"
    );

    // A service filter learns that service's spans only (428 in the recording), though Jaeger
    // answers with whole traces.
    let text = ok(&scale(&[
        "train",
        "--jaeger",
        &url,
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--service",
        "checkoutservice",
        "-o",
        path(&dir.join("checkout.snap")),
    ]));
    assert!(text.contains("learned   428 spans of "), "{text}");

    // Jaeger unreachable.
    let closed = harness::free_addr();
    let err = failed(&scale(&[
        "train",
        "--jaeger",
        &format!("http://{closed}"),
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "-o",
        path(&dir.join("unreachable.snap")),
    ]));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_goes_into_a_configmap_byte_identical_and_an_oversized_one_is_refused() {
    let dir = tempdir("configmap");
    let (cluster, admin) = harness::cluster().await;
    let kubeconfig = cluster.admin_kubeconfig();
    let file = dir.join("file.snap");
    ok(&scale(&["train", path(&demo()), "-o", path(&file)]));

    let target = format!("{}/scale-snapshot", harness::NS);
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
        &format!("{}/too-big", harness::NS),
        "--kubeconfig",
        path(&kubeconfig),
    ]));
    assert!(err.contains("over the 1048576 a ConfigMap holds"), "{err}");
    assert!(err.contains("sampler.height"), "{err}");
    let t =
        scale_scaler::train::configmap::Target::parse(&format!("{}/too-big", harness::NS)).unwrap();
    assert!(
        scale_scaler::train::configmap::read(admin, &t)
            .await
            .is_err()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
