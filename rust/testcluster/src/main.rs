//! `scale-testcluster`: start etcd + kube-apiserver on loopback for the demo (or by hand), print
//! where their kubeconfigs are, and stop everything on SIGTERM / SIGINT / end of stdin.
//!
//! ```text
//! scale-testcluster --dir /tmp/k8s     # prints one JSON line when ready, then waits
//! ```
//!
//! The JSON line: `{"server": ..., "admin_kubeconfig": ..., "daemon_kubeconfig": ..., "dir": ...}`.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let mut opts = scale_testcluster::Options { keep_dir: true, ..Default::default() };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => opts.dir = args.next().map(Into::into),
            "-h" | "--help" => {
                println!("usage: scale-testcluster [--dir DIR]\nStarts etcd + kube-apiserver on 127.0.0.1 and runs until stdin closes or a signal arrives.");
                return std::process::ExitCode::SUCCESS;
            }
            other => {
                eprintln!("error: unknown argument {other:?} (usage: scale-testcluster [--dir DIR])");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let cluster = match scale_testcluster::Cluster::start(opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "server": cluster.server,
            "admin_kubeconfig": cluster.admin_kubeconfig(),
            "daemon_kubeconfig": cluster.daemon_kubeconfig(),
            "dir": cluster.dir(),
        })
    );
    // Run until SIGTERM, SIGINT or end of stdin, then stop both processes (Drop).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        let eof = async move { while let Ok(n) = stdin.read(&mut buf).await { if n == 0 { break; } } };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = eof => {}
        }
    });
    drop(cluster);
    std::process::ExitCode::SUCCESS
}
