//! The Helm chart `deploy/helm/scale` against the real thing (issue 14, part 3): Helm v4.3.2
//! (`scripts/helm.sh`; `$SCALE_HELM`, which `make test-rust` sets) renders it with
//! `helm template`, every rendered manifest is applied server-side to a real kube-apiserver +
//! etcd (scale-testcluster), and `scale serve` runs as the chart's ServiceAccount
//! (`system:serviceaccount:scale-system:scale`, the cluster's daemon identity): the chart's RBAC
//! alone lets it take the Lease, label its pod and scale the workloads the values list, and it
//! is refused (403) for another. The chart's defaults are checked against `configs/k8s/` and
//! `configs/rules/otel-demo.yaml`, so the two ways to deploy do not drift apart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use scale_scaler::serve::leader::{LEADER_LABEL, LEADER_LABEL_VALUE};
use serde_json::Value;

/// Release name and namespace of the tests: `helm install scale deploy/helm/scale -n
/// scale-system`, as the README says; its ServiceAccount is the cluster's daemon identity.
const RELEASE: &str = "scale";
const RELEASE_NS: &str = "scale-system";

/// `$SCALE_HELM`, or `$SCALE_CACHE/helm/bin/helm` (default cache `~/.cache/scale`). A missing
/// Helm fails the test: it is never skipped.
fn helm() -> PathBuf {
    cached_binary("SCALE_HELM", "helm/bin/helm", "scripts/helm.sh")
}

fn chart() -> PathBuf {
    root().join("deploy/helm/scale")
}

/// `helm template RELEASE deploy/helm/scale -n RELEASE_NS ARGS` in the repository root: the
/// rendered manifests, or Helm's error output.
fn template(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm())
        .current_dir(root())
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", RELEASE_NS])
        .args(args)
        .output()
        .expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The documents of a multi-document YAML text (empty ones dropped).
fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn yaml_file(path: &Path) -> Vec<Value> {
    docs(&std::fs::read_to_string(path).unwrap())
}

/// The one object of `kind` named `name` (in namespace `ns`, if given).
fn find<'a>(objs: &'a [Value], kind: &str, ns: Option<&str>, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && ns.is_none_or(|ns| o["metadata"]["namespace"] == ns)
        })
        .unwrap_or_else(|| panic!("no {kind} {name} among the objects"))
}

/// The rules of a Role without `resourceNames` (the ones that cannot be limited by name).
fn unnamed_rules(role: &Value) -> Vec<Value> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("resourceNames").is_none())
        .cloned()
        .collect()
}

/// The chart's defaults are `configs/k8s/scale-daemon.yaml`, `configs/k8s/rbac-otel-demo.yaml`
/// and `configs/rules/otel-demo.yaml`: the same flags, environment, ports, probes and rollout
/// of the daemon, the same Lease Role, the same workload Role for the same workloads, the same
/// rules (for the daemon and, inline, for the collector).
#[test]
fn chart_defaults_mirror_configs_k8s() {
    let chart = docs(&template(&[]).expect("helm template with the default values"));
    let daemon = yaml_file(&root().join("configs/k8s/scale-daemon.yaml"));
    let rbac = yaml_file(&root().join("configs/k8s/rbac-otel-demo.yaml"));

    let ours = find(&chart, "Deployment", Some(RELEASE_NS), "scale");
    let theirs = find(&daemon, "Deployment", Some(RELEASE_NS), "scale");
    assert_eq!(ours["spec"]["replicas"], theirs["spec"]["replicas"]);
    assert_eq!(ours["spec"]["strategy"], theirs["spec"]["strategy"]);
    let (c, t) = (
        &ours["spec"]["template"]["spec"]["containers"][0],
        &theirs["spec"]["template"]["spec"]["containers"][0],
    );
    for key in [
        "args",
        "env",
        "ports",
        "readinessProbe",
        "livenessProbe",
        "resources",
        "securityContext",
    ] {
        assert_eq!(c[key], t[key], "container {key}");
    }
    assert_eq!(
        ours["spec"]["template"]["spec"]["serviceAccountName"],
        theirs["spec"]["template"]["spec"]["serviceAccountName"]
    );
    // The token Secret and the rules at the same paths.
    let volumes = |d: &Value| -> Vec<(String, String)> {
        let spec = &d["spec"]["template"]["spec"];
        let mounts = spec["containers"][0]["volumeMounts"].as_array().unwrap();
        let mut v: Vec<(String, String)> = mounts
            .iter()
            .map(|m| {
                let vol = spec["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == m["name"])
                    .unwrap();
                let source = vol["secret"]["secretName"]
                    .as_str()
                    .map(|s| format!("secret {s}"))
                    .unwrap_or_else(|| "configMap".into());
                (m["mountPath"].as_str().unwrap().to_string(), source)
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(volumes(ours), volumes(theirs));

    let svc = find(&chart, "Service", Some(RELEASE_NS), "scale");
    let their_svc = find(&daemon, "Service", Some(RELEASE_NS), "scale");
    assert_eq!(svc["spec"]["ports"], their_svc["spec"]["ports"]);
    assert_eq!(svc["spec"]["selector"][LEADER_LABEL], LEADER_LABEL_VALUE);

    assert_eq!(
        find(&chart, "Role", Some(RELEASE_NS), "scale-leader-election")["rules"],
        find(&daemon, "Role", Some(RELEASE_NS), "scale-leader-election")["rules"]
    );
    let role = find(&chart, "Role", Some(NS), "scale-workloads");
    let their_role = find(&rbac, "Role", Some(NS), "scale-workloads");
    assert_eq!(unnamed_rules(role), unnamed_rules(their_role));
    for r in role["rules"].as_array().unwrap() {
        if r.get("resourceNames").is_some() {
            assert_eq!(
                r["resourceNames"], their_role["rules"][0]["resourceNames"],
                "the same workloads, by name"
            );
        }
    }

    let demo_rules = yaml_file(&root().join("configs/rules/otel-demo.yaml"));
    let config = find(&chart, "ConfigMap", Some(RELEASE_NS), "scale-config");
    let rules = docs(config["data"]["rules.yaml"].as_str().unwrap());
    assert_eq!(
        rules, demo_rules,
        "values.yaml rules == configs/rules/otel-demo.yaml"
    );
    let sidecar = find(&chart, "ConfigMap", Some(NS), "scale-collector-sidecar");
    let collector = docs(sidecar["data"]["collector.yaml"].as_str().unwrap());
    assert_eq!(
        collector[0]["processors"]["scale"]["rules"], demo_rules[0]["rules"],
        "the collector carries the same rules inline"
    );
    assert_eq!(
        collector[0]["exporters"]["otlp_grpc/daemon"]["endpoint"],
        "scale.scale-system.svc:4327"
    );
}

/// The rendered rules and engine configuration pass `scale check`.
#[test]
fn chart_config_passes_scale_check() {
    for args in [&[][..], &["-f", "deploy/helm/scale/ci/all-values.yaml"][..]] {
        let objs = docs(&template(args).expect("helm template"));
        let config = objs
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["data"]["rules.yaml"].is_string())
            .expect("the chart's rules ConfigMap");
        let dir = tempdir();
        for (key, flag) in [("rules.yaml", Some("--rules")), ("engine.yaml", None)] {
            let file = dir.join(key);
            std::fs::write(&file, config["data"][key].as_str().unwrap()).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_scale"))
                .arg("check")
                .args(flag)
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "scale check {key} ({args:?}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Every collector configuration the chart renders (sidecar, front tier, scale tier; default
/// values and ci/all-values.yaml) passes the real collector's `otelcol-scale validate`, which
/// runs the scale processor's Validate with the engine built from the inline rules and settings.
#[test]
fn chart_collector_configs_pass_otelcol_validate() {
    let otelcol = crate::harness::collector::otelcol();
    let dir = tempdir();
    let mut checked = Vec::new();
    for args in [&[][..], &["-f", "deploy/helm/scale/ci/all-values.yaml"][..]] {
        for o in docs(&template(args).expect("helm template")) {
            let Some(config) = o["data"]["collector.yaml"].as_str() else {
                continue;
            };
            let what = format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            );
            let file = dir.join(what.replace('/', "_") + ".yaml");
            std::fs::write(&file, config).unwrap();
            let out = Command::new(&otelcol)
                .args(["validate", "--config"])
                .arg(&file)
                .env("POD_NAME", "otelcol-scale-0")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "otelcol-scale validate {what} ({args:?}): {}{}\n{config}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked.push(what);
        }
    }
    for want in [
        "otel-demo/scale-collector-sidecar",
        "frontend/scale-all-collector-sidecar",
        "scale-system/scale-all-collector-front",
        "scale-system/scale-all-collector-scale",
    ] {
        assert!(checked.iter().any(|c| c == want), "{want}: {checked:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A rule whose target the chart's RBAC would not cover fails the rendering, naming the rule
/// and the workload (rather than a 403 at the first incident).
#[test]
fn chart_refuses_a_rule_whose_workload_rbac_does_not_list() {
    let dir = tempdir();
    let values = dir.join("values.yaml");
    std::fs::write(
        &values,
        "rules:\n  - name: cart-latency\n    when: { duration_above: 500ms }\n    count: 5\n    window: 30s\n    action: { kind: horizontal, target: { kind: Deployment, namespace: otel-demo, name: cart }, max: 5 }\n",
    )
    .unwrap();
    let err = template(&["-f", values.to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("rule cart-latency targets Deployment otel-demo/cart")
            && err.contains("rbac.workloads"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "scale-helm-test-{}-{}",
        std::process::id(),
        now_ns()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A minimal ServiceMonitor CRD (any content kept), so that the chart's optional ServiceMonitor
/// can be applied too; the Prometheus Operator's own CRD validates more.
fn service_monitor_crd() -> Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"plural": "servicemonitors", "singular": "servicemonitor",
                "kind": "ServiceMonitor", "listKind": "ServiceMonitorList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    })
}

/// Apply every document of `yaml` server-side, retrying a kind whose CRD is not served yet.
fn apply_all(c: &Cluster, yaml: &str) -> Vec<String> {
    let mut applied = Vec::new();
    for doc in docs(yaml) {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            match c.apply(&doc) {
                Ok(what) => {
                    applied.push(what);
                    break;
                }
                Err(_)
                    if doc["kind"] == "ServiceMonitor" && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("applying the rendered chart: {e:#}"),
            }
        }
    }
    applied
}

/// Issue 14, part 3: `helm template` output, with the default values (plus the optional
/// ServiceMonitor and KEDA port) and with ci/all-values.yaml (every option), applies to a real
/// API server without an error. Then the daemon, authenticated as the chart's ServiceAccount and
/// with the chart's Lease, holds the Lease, labels its pod (made from the chart's pod template)
/// so that the chart's Service selects it, scales a workload the values list and is refused
/// (403, counted, logged) for one they do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_apply_server_side_and_the_rbac_scales_only_listed_workloads() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let defaults = template(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "keda.enabled=true",
    ])
    .expect("helm template");
    let all = template(&["-f", "deploy/helm/scale/ci/all-values.yaml"])
        .expect("helm template -f ci/all-values.yaml");
    let (c, applied) = tokio::task::spawn_blocking(move || {
        let c = Cluster::start(Default::default()).expect("start kube-apiserver + etcd");
        // `helm install --create-namespace` creates the release namespace; the workloads'
        // namespaces exist before.
        for ns in [RELEASE_NS, NS, "shop", "catalog", "frontend"] {
            c.create_namespace(ns).unwrap();
        }
        c.apply(&service_monitor_crd()).unwrap();
        let mut applied = apply_all(&c, &defaults);
        applied.extend(apply_all(&c, &all));
        (c, applied)
    })
    .await
    .unwrap();
    for want in [
        "ServiceAccount scale-system/scale",
        "ConfigMap scale-system/scale-config",
        "ConfigMap otel-demo/scale-collector-sidecar",
        "Role scale-system/scale-leader-election",
        "RoleBinding scale-system/scale-leader-election",
        "Role otel-demo/scale-workloads",
        "RoleBinding otel-demo/scale-workloads",
        "Service scale-system/scale",
        "Service scale-system/scale-metrics",
        "Deployment scale-system/scale",
        "ServiceMonitor scale-system/scale",
        "Deployment scale-system/scale-all",
        "Role shop/scale-all-workloads",
        "Role catalog/scale-all-workloads",
        "ConfigMap frontend/scale-all-collector-sidecar",
        "ConfigMap scale-system/scale-all-collector-front",
        "ConfigMap scale-system/scale-all-collector-scale",
        "ServiceMonitor scale-system/scale-all",
    ] {
        assert!(
            applied.iter().any(|a| a == want),
            "{want} not applied: {applied:#?}"
        );
    }
    let admin = client(&c.admin_kubeconfig()).await;

    // The chart's Deployment as the API server stored it: its Lease flag and pod template.
    let stored = Api::<Deployment>::namespaced(admin.clone(), RELEASE_NS)
        .get("scale")
        .await
        .unwrap();
    let spec = stored.spec.template;
    let args = spec.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let lease = args
        .iter()
        .find(|a| a.starts_with("--lease="))
        .expect("the chart passes --lease")
        .clone();
    assert_eq!(lease, "--lease=scale-system/scale");
    assert!(args.contains(&"--keda-listen=0.0.0.0:9465".to_string()));

    // A replica's pod, as the Deployment would make it (no kubelet: the object just exists).
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "scale-0", "namespace": RELEASE_NS},
    }))
    .unwrap();
    pod.metadata.labels = spec.metadata.as_ref().unwrap().labels.clone();
    pod.spec = spec.spec.clone();
    Api::<Pod>::namespaced(admin.clone(), RELEASE_NS)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    // The chart's RBAC itself: the ServiceAccount may read checkout's scale, not cart's.
    checkout_readable_cart_forbidden(&c, &admin).await;

    let d = Daemon::start_with_env(
        &c,
        &rules(", min: 1, max: 5, cooldown: 1s, scale_down_after: 10m"),
        &[lease.as_str()],
        &[("POD_NAME", "scale-0"), ("POD_NAMESPACE", RELEASE_NS)],
    );
    assert!(
        eventually(LONG, || async { d.metric("scale_leader ") == 1.0 }).await,
        "the chart's Lease Role lets the daemon lead:\n{}",
        d.logs()
    );
    // The leader label on its pod, and the chart's Service selects exactly that pod.
    assert!(
        eventually(LONG, || async {
            service_pods(&admin, RELEASE_NS).await == ["scale-0"]
        })
        .await,
        "the chart's Service selects the leader's pod:\n{}",
        d.logs()
    );

    checkout_scales_and_cart_is_forbidden(&d, &admin, "the chart's values").await;
}
