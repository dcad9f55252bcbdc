//! `scale-testcluster`: start etcd + kube-apiserver on loopback for the demo (or by hand), set up
//! objects, print where their kubeconfigs are, and stop everything on SIGTERM / SIGINT / end of
//! stdin.
//!
//! ```text
//! scale-testcluster --dir /tmp/k8s \
//!     --namespace otel-demo \
//!     --apply configs/k8s/scale-daemon.yaml --apply configs/k8s/rbac-otel-demo.yaml \
//!     --deployment otel-demo/checkout=1      # prints one JSON line when ready, then waits
//! ```
//!
//! Set-up runs in this order, as the admin: every `--namespace` (with its `default`
//! ServiceAccount), every `--apply` file (server-side apply, in the order given), every
//! `--deployment`. Any failure stops the cluster and exits 1.
//!
//! The JSON line: `{"server": ..., "admin_kubeconfig": ..., "daemon_kubeconfig": ..., "ca_file": ...,
//! "dir": ...}`. The kubeconfigs are JSON (valid YAML) with a bearer token.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: scale-testcluster [--dir DIR] [--namespace NS]... [--apply FILE]... [--deployment NS/NAME=REPLICAS]...
Starts etcd + kube-apiserver on 127.0.0.1, creates the namespaces, applies the files (server-side
apply), creates the Deployments, prints one JSON line, and runs until stdin closes or a signal arrives.";

#[derive(Default)]
struct Setup {
    namespaces: Vec<String>,
    files: Vec<PathBuf>,
    deployments: Vec<(String, String, u32)>,
}

fn parse_deployment(s: &str) -> Option<(String, String, u32)> {
    let (path, n) = s.split_once('=')?;
    let (ns, name) = path.split_once('/')?;
    let replicas = n.parse().ok()?;
    (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_string(), name.to_string(), replicas))
}

fn set_up(cluster: &scale_testcluster::Cluster, setup: &Setup) -> anyhow::Result<()> {
    use anyhow::Context;
    for ns in &setup.namespaces {
        cluster
            .create_namespace(ns)
            .with_context(|| format!("--namespace {ns}"))?;
        eprintln!("created Namespace {ns}");
    }
    for f in &setup.files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for what in cluster
            .apply_yaml(&text)
            .with_context(|| format!("--apply {}", f.display()))?
        {
            eprintln!("applied {what}");
        }
    }
    for (ns, name, replicas) in &setup.deployments {
        cluster
            .create_deployment(ns, name, *replicas)
            .with_context(|| format!("--deployment {ns}/{name}={replicas}"))?;
        eprintln!("created Deployment {ns}/{name} with {replicas} replicas");
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut opts = scale_testcluster::Options {
        keep_dir: true,
        ..Default::default()
    };
    let mut setup = Setup::default();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        let r: Result<(), String> = match a.as_str() {
            "--dir" => value("--dir").map(|v| opts.dir = Some(v.into())),
            "--namespace" => value("--namespace").map(|v| setup.namespaces.push(v)),
            "--apply" => value("--apply").map(|v| setup.files.push(v.into())),
            "--deployment" => value("--deployment").and_then(|v| {
                parse_deployment(&v)
                    .map(|d| setup.deployments.push(d))
                    .ok_or_else(|| format!("--deployment {v:?}: give NS/NAME=REPLICAS"))
            }),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(e) = r {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    }
    // Signals are caught from here on, so a SIGTERM during start-up still stops etcd and the API
    // server (through Drop) instead of leaving them behind.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _enter = rt.enter();
        (
            signal(SignalKind::terminate()).expect("SIGTERM handler"),
            signal(SignalKind::interrupt()).expect("SIGINT handler"),
        )
    };
    let cluster = match scale_testcluster::Cluster::start(opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = set_up(&cluster, &setup) {
        eprintln!("error: {e:#}");
        drop(cluster);
        return ExitCode::FAILURE;
    }
    println!(
        "{}",
        serde_json::json!({
            "server": cluster.server,
            "admin_kubeconfig": cluster.admin_kubeconfig(),
            "daemon_kubeconfig": cluster.daemon_kubeconfig(),
            "ca_file": cluster.dir().join("ca.crt"),
            "dir": cluster.dir(),
        })
    );
    // Run until SIGTERM, SIGINT or end of stdin, then stop both processes (Drop).
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        let eof = async move {
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = eof => {}
        }
    });
    // The stdin reader is a blocking thread that may never return: do not wait for it.
    rt.shutdown_background();
    drop(cluster);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::parse_deployment;

    #[test]
    fn deployment_flag() {
        assert_eq!(
            parse_deployment("otel-demo/checkout=1"),
            Some(("otel-demo".into(), "checkout".into(), 1))
        );
        assert_eq!(parse_deployment("checkout=1"), None);
        assert_eq!(parse_deployment("a/b=x"), None);
        assert_eq!(parse_deployment("/b=1"), None);
    }
}
