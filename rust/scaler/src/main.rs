//! `scale`: the SCALE command line.
//!
//! * `scale eval FILE...` runs the engine over recorded spans and reports detection metrics,
//!   engine cost and, optionally, plots ([`eval`]);
//! * `scale check CONFIG...` validates engine or rules configurations ([`check`]);
//! * `scale version` (or `--version`) prints the version.
//!
//! Logs go to stderr, filtered by the `SCALE_LOG` environment variable (tracing-subscriber
//! `EnvFilter` syntax, default `info`), as text or JSON (`--log-format`). Results go to stdout.
//! Errors are typed inside the modules; `anyhow` is only used here, at the edge.

mod check;
mod eval;
mod serve;

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
    /// Run the daemon: receive decisions over OTLP/gRPC and scale (dry run for now).
    Serve(ServeArgs),
    /// Print the version.
    Version,
}

/// `scale serve` options (runtime knobs; pipeline settings live in the rules file).
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address of the OTLP/gRPC TraceService that receives decisions.
    #[arg(long, env = "SCALE_LISTEN", default_value = "127.0.0.1:4327")]
    listen: std::net::SocketAddr,
    /// The rules file shared with the collector; targets and limits come from here.
    #[arg(long, env = "SCALE_RULES")]
    rules: std::path::PathBuf,
    /// Dry run: append every action to this JSON-lines audit file.
    #[arg(long, env = "SCALE_AUDIT")]
    audit: Option<std::path::PathBuf>,
    /// Dry run: replica count workloads are assumed to start at.
    #[arg(long, default_value_t = 1)]
    initial_replicas: u32,
}

fn serve_cmd(args: &ServeArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.rules).with_context(|| format!("reading {}", args.rules.display()))?;
    let rules = scale_core::RulesFile::from_yaml(&text).with_context(|| format!("{}", args.rules.display()))?.rules;
    let orch = serve::orchestrator::DryRun::new(
        args.audit.as_deref(),
        serve::planner::Scale { replicas: args.initial_replicas, cpu_millis: 100, memory_mib: 128 },
    )?;
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async {
        let (listener, addr) = serve::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            s.cancel();
        });
        #[cfg(unix)]
        {
            let s = shutdown.clone();
            if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                tokio::spawn(async move {
                    term.recv().await;
                    s.cancel();
                });
            }
        }
        tracing::info!(listen = %addr, rules = rules.len(), dry_run = true, "Serving.");
        serve::serve(listener, rules, Box::new(orch), Default::default(), shutdown).await
    })
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SCALE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second initialisation (impossible here) would only be refused; ignore it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn eval(args: &eval::EvalArgs) -> anyhow::Result<()> {
    let report = eval::run(args).context("scale eval")?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report).context("serializing the report")?;
        s.push('\n');
        s
    } else {
        eval::render_text(&report)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|_| out.flush()).context("writing the report")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Version => {
            println!("scale {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check(args) => ExitCode::from(check::run(&args, &mut std::io::stdout(), &mut std::io::stderr())),
        Command::Serve(args) => match serve_cmd(&args) {
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
