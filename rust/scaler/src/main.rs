//! `scale`: the SCALE command line.
//!
//! * `scale eval FILE...` runs the engine over recorded spans and reports detection metrics,
//!   engine cost and, optionally, plots ([`mod@eval`]);
//! * `scale check CONFIG...` validates engine or rules configurations ([`check`]);
//! * `scale train` learns spans from Jaeger or files into an engine snapshot ([`train`]);
//! * `scale serve` runs the daemon ([`serve`]): decisions (or raw spans) in over OTLP/gRPC,
//!   scaling out through Kubernetes or the dry run;
//! * `scale version` (or `--version`) prints the version.
//!
//! Logs go to stderr, filtered by the `SCALE_LOG` environment variable (tracing-subscriber
//! `EnvFilter` syntax, default `info`), as text or JSON (`--log-format`). Results go to stdout.
//! Errors are typed inside the modules; `anyhow` is only used here, at the edge.

use scale_scaler::{check, eval, serve, train};

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// SCALE: trace-driven autoscaling.
#[derive(Debug, Parser)]
#[command(name = "scale", version, about, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine over span files (CSV or OTLP JSON lines) and report detection metrics.
    Eval(eval::EvalArgs),
    /// Validate engine configurations (or rules files with --rules).
    Check(check::CheckArgs),
    /// Learn spans from Jaeger or span files into an engine snapshot (for warm collectors).
    Train(train::TrainArgs),
    /// Run the daemon: receive decisions (or spans) over OTLP/gRPC and scale workloads.
    Serve(ServeArgs),
    /// Print the version.
    Version,
}

/// Which orchestrator `scale serve` acts through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OrchestratorKind {
    /// Log and audit every action; change nothing.
    DryRun,
    /// Scale workloads through the Kubernetes API.
    Kubernetes,
}

/// `scale serve` options (runtime knobs; targets, bounds and cooldowns live in the rules file).
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address of the OTLP/gRPC TraceService that receives decisions (or spans, with --engine).
    #[arg(long, env = "SCALE_LISTEN", default_value = "127.0.0.1:4327")]
    listen: std::net::SocketAddr,
    /// The rules file shared with the collector; targets and limits come from here.
    #[arg(long, env = "SCALE_RULES")]
    rules: std::path::PathBuf,
    /// Where actions go.
    #[arg(long, value_enum, env = "SCALE_ORCHESTRATOR", default_value_t = OrchestratorKind::DryRun)]
    orchestrator: OrchestratorKind,
    /// Kubernetes: kubeconfig file (default: in-cluster service account, then $KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long, env = "SCALE_KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Dry run: append every action to this JSON-lines audit file.
    #[arg(long, env = "SCALE_AUDIT")]
    audit: Option<std::path::PathBuf>,
    /// Dry run: replica count workloads are assumed to start at.
    #[arg(long, default_value_t = 1)]
    initial_replicas: u32,
    /// Also serve KEDA's external scaler (gRPC) here, for ScaledObjects whose trigger is a
    /// rule's evidence (off by default; TLS as the OTLP endpoint's).
    #[arg(long, env = "SCALE_KEDA_LISTEN")]
    keda_listen: Option<std::net::SocketAddr>,
    /// Address of the HTTP server for /metrics, /healthz, /readyz and /evidence ("off" to disable).
    #[arg(long, env = "SCALE_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: String,
    /// How often targets are reconsidered without news (scale-down after quiet, retries).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    tick: std::time::Duration,
    /// Scale-downs need the collectors' evidence reports (`scale.report` spans, sent every
    /// `report_interval` by the `scale` processor): a target with none for this long holds its
    /// scale. Must exceed the collectors' report_interval (the default is three of its default).
    #[arg(long, default_value_t = FlagDuration(serve::evidence::DEFAULT_EVIDENCE_TIMEOUT), value_parser = parse_flag_duration)]
    evidence_timeout: FlagDuration,
    /// Kubernetes: compete for this Lease (namespace/name) and act only while holding it.
    #[arg(long, env = "SCALE_LEASE")]
    lease: Option<String>,
    /// Identity in the Lease (default: $POD_NAME, else the host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Lease duration.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: std::time::Duration,
    /// Kubernetes: this replica's pod (downward API); while this replica acts its pod carries
    /// the leader label that the OTLP Service selects on. No label unless both pod flags are set.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Kubernetes: namespace of this replica's pod (downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Require `authorization: Bearer <token>` on OTLP requests; the token is read from this
    /// file (or the SCALE_TOKEN environment variable).
    #[arg(long, env = "SCALE_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// TLS certificate (PEM) of the OTLP endpoint.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM) of the OTLP endpoint.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// mTLS: only accept clients with a certificate signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Local-engine mode: receive raw spans and score them in the daemon with this engine
    /// configuration (the rules come from --rules).
    #[arg(long, env = "SCALE_ENGINE")]
    engine: Option<std::path::PathBuf>,
    /// Local-engine mode: start the engine from this snapshot (`scale train`) instead of cold.
    #[arg(long, env = "SCALE_ENGINE_SNAPSHOT", requires = "engine")]
    engine_snapshot: Option<std::path::PathBuf>,
}

/// A positive duration in the one grammar of SCALE ([`scale_core::config::parse_duration_ms`]).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match scale_core::config::parse_duration_ms(s)? {
        ms if ms > 0.0 && ms.is_finite() => Ok(std::time::Duration::from_secs_f64(ms / 1e3)),
        _ => Err(format!("{s:?} must be a positive duration")),
    }
}

/// A flag's duration whose default is a constant defined elsewhere: shown in `-h` in the
/// grammar it is read in.
#[derive(Debug, Clone, Copy)]
struct FlagDuration(std::time::Duration);

impl std::fmt::Display for FlagDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&scale_core::config::format_duration(self.0))
    }
}

fn parse_flag_duration(s: &str) -> Result<FlagDuration, String> {
    parse_duration(s).map(FlagDuration)
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn serve_cmd(args: &ServeArgs) -> anyhow::Result<()> {
    let rules_text = read(&args.rules)?;
    let rules = scale_core::RulesFile::from_yaml(&rules_text)
        .with_context(|| format!("{}", args.rules.display()))?
        .rules;
    let mut opts = serve::ServeOptions {
        tick: args.tick,
        evidence_timeout: args.evidence_timeout.0,
        ..Default::default()
    };
    if let Some(engine) = &args.engine {
        let cfg = scale_core::EngineConfig::from_parts(&read(engine)?, Some(&rules_text))
            .with_context(|| format!("{}", engine.display()))?;
        opts.engine = Some(cfg);
    }
    if let Some(p) = &args.engine_snapshot {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        opts.engine_snapshot = Some(bytes.into());
    }
    let token = match (&args.token_file, std::env::var("SCALE_TOKEN").ok()) {
        (Some(f), _) => Some(read(f)?.trim().to_string()),
        (None, Some(t)) => Some(t.trim().to_string()),
        (None, None) => None,
    };
    if let Some(t) = &token {
        anyhow::ensure!(!t.is_empty(), "the bearer token is empty");
        opts.token = Some(t.as_str().into());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &args.tls_client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        opts.tls = Some(tls);
    }
    let metrics_addr: Option<std::net::SocketAddr> = match args.metrics_listen.as_str() {
        "off" | "" => None,
        a => Some(
            a.parse()
                .with_context(|| format!("--metrics-listen {a:?} is not an address"))?,
        ),
    };
    if let Some(a) = args.keda_listen {
        let l = std::net::TcpListener::bind(a)
            .with_context(|| format!("binding {a} (--keda-listen)"))?;
        tracing::info!(listen = %l.local_addr()?, "Serving the KEDA external scaler.");
        opts.keda = Some(std::sync::Arc::new(l));
    }
    // One TLS provider for kube and tonic (ring); a second install attempt is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        spawn_signal_handlers(&shutdown);
        let metrics = std::sync::Arc::new(serve::metrics::Metrics::new());
        if let Some(addr) = metrics_addr {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr} (--metrics-listen)"))?;
            tracing::info!(listen = %l.local_addr()?, "Serving /metrics, /healthz, /readyz and /evidence.");
            tokio::spawn(serve::metrics::serve_http(l, metrics.clone(), shutdown.clone()));
        }
        let (listener, addr) = serve::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        match args.orchestrator {
            OrchestratorKind::DryRun => {
                anyhow::ensure!(args.lease.is_none(), "--lease needs --orchestrator kubernetes");
                let orch = serve::orchestrator::DryRun::new(
                    args.audit.as_deref(),
                    serve::planner::Scale { replicas: args.initial_replicas, cpu_millis: 100, memory_mib: 128 },
                )?;
                tracing::info!(listen = %addr, rules = rules.len(), dry_run = true, local_engine = opts.engine.is_some(), "Serving.");
                serve::serve(listener, rules, orch, metrics, opts, shutdown).await
            }
            OrchestratorKind::Kubernetes => {
                let client = serve::kube::client(args.kubeconfig.as_deref()).await?;
                let identity = args.identity.clone().unwrap_or_else(|| {
                    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "scale".into());
                    format!("{host}-{}", std::process::id())
                });
                let pod = match (&args.pod_name, &args.pod_namespace) {
                    (Some(name), Some(namespace)) => Some(serve::leader::PodRef { name: name.clone(), namespace: namespace.clone() }),
                    _ => None,
                };
                // Ends after shutdown, once the leader label is removed and the Lease released.
                let lease_task;
                let leader = match &args.lease {
                    Some(l) => {
                        let (ns, name) = l.split_once('/').with_context(|| format!("--lease {l:?}: give namespace/name"))?;
                        let secs = args.lease_duration.as_secs().max(2);
                        let cfg = serve::leader::LeaseConfig {
                            namespace: ns.into(),
                            name: name.into(),
                            identity: identity.clone(),
                            duration_s: secs,
                            grace_s: (secs / 3).max(1),
                        };
                        // A standby until the Lease says otherwise.
                        let leadership = serve::leader::Leadership::new(false);
                        leadership.mirror(metrics.leader.clone());
                        opts.leadership = leadership.clone();
                        let (leader, task) = serve::leader::Leader::start(client.clone(), cfg, pod, leadership, shutdown.clone()).await.context("starting leader election")?;
                        lease_task = task;
                        Some(leader)
                    }
                    None => {
                        lease_task = serve::leader::label_without_election(client.clone(), pod, shutdown.clone());
                        None
                    }
                };
                let reporter = serve::kube::Reporter { controller: "scale-autoscaler".into(), instance: identity.clone() };
                let orch = serve::kube::Kube::new(client, reporter, leader, metrics.clone());
                tracing::info!(listen = %addr, rules = rules.len(), identity = %identity, lease = ?args.lease, local_engine = opts.engine.is_some(), "Serving.");
                let served = serve::serve(listener, rules, orch, metrics, opts, shutdown.clone()).await;
                // Let the leader label go and the Lease be released before the process exits.
                shutdown.cancel();
                if tokio::time::timeout(std::time::Duration::from_secs(10), lease_task).await.is_err() {
                    tracing::warn!("Leader label and Lease not released within 10 s; exiting anyway.");
                }
                served
            }
        }
    })
}

fn spawn_signal_handlers(shutdown: &tokio_util::sync::CancellationToken) {
    let s = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    #[cfg(unix)]
    {
        let s = shutdown.clone();
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::spawn(async move {
                term.recv().await;
                s.cancel();
            });
        }
    }
}

/// kube_client's HTTP layer logs an ERROR for every failed request, without context: with the
/// API server down that is several lines a second. The daemon classifies, counts and logs API
/// failures itself, at a limited rate (`serve::throttle`), so this target is off unless
/// `SCALE_LOG` names `kube_client` (e.g. `info,kube_client=debug` shows every request).
const KUBE_CLIENT_HTTP_TARGET: &str = "kube_client::client::builder";

fn init_logging(format: LogFormat) {
    let spec = std::env::var("SCALE_LOG").unwrap_or_default();
    // Unset, empty or invalid: `info`.
    let mut filter = Some(spec.as_str())
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if !spec.contains("kube_client") {
        filter = filter.add_directive(
            format!("{KUBE_CLIENT_HTTP_TARGET}=off")
                .parse()
                .expect("a valid directive"),
        );
    }
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (impossible here) would only be refused; ignore it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Print `value` as pretty JSON (`json`) or as `text`.
fn print_result<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let text = if json {
        let mut s = serde_json::to_string_pretty(value).context("serializing the result")?;
        s.push('\n');
        s
    } else {
        text(value)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .context("writing the result")
}

fn eval(args: &eval::EvalArgs) -> anyhow::Result<()> {
    let report = eval::run(args).context("scale eval")?;
    print_result(args.json, &report, eval::render_text)
}

fn train_cmd(args: &train::TrainArgs) -> anyhow::Result<()> {
    let summary = train::run(args).context("scale train")?;
    print_result(args.json, &summary, train::render_text)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Version => {
            println!("scale {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check(args) => ExitCode::from(check::run(
            &args,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        Command::Serve(args) => match serve_cmd(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Train(args) => match train_cmd(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Eval(args) => match eval(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
