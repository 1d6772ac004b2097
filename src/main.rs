//! The `respite` binary: `respite --config FILE` runs the proxy, `respite check-config FILE`
//! validates a config, `respite healthcheck` asks a running one's admin listener.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use respite::config::Config;

#[derive(Parser)]
#[command(
    version,
    about = "A multi-tenant caching proxy that speaks the Redis protocol"
)]
struct Cli {
    /// The TOML config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address, overriding server.listen.
    #[arg(long)]
    listen: Option<String>,
    /// Upstream Redis URL, overriding upstream.url.
    #[arg(long)]
    upstream: Option<String>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file, printing every error with its line and column.
    CheckConfig { file: PathBuf },
    /// GET /healthz (or /readyz) of a running respite's admin listener: exit 0 on 200, 1
    /// otherwise (for a container's HEALTHCHECK, where no curl is installed).
    Healthcheck {
        /// The config file whose [admin] listen to ask (on loopback if it listens on all
        /// addresses).
        #[arg(long, short, required_unless_present = "address")]
        config: Option<PathBuf>,
        /// The admin listener's address, instead of the config's.
        #[arg(long, conflicts_with = "config")]
        address: Option<std::net::SocketAddr>,
        /// Ask /readyz (Redis answers) instead of /healthz (the process runs).
        #[arg(long)]
        ready: bool,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

/// What `RUST_LOG` (default `info`) lets through. A plain list of `target=level` (the
/// usual kind, and the default) filters without state per span. `EnvFilter`, needed only
/// for directives on spans and their fields (`[conn{tenant=acme}]=debug`), takes a read
/// lock on every enter and exit of a span, and each session's span is entered on every
/// poll of its task: with `threads = N`, every worker's every poll would write to that one
/// lock's cache line.
fn log_filter() -> Box<dyn Layer<Registry> + Send + Sync> {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    match spec.parse::<Targets>() {
        // `Targets` would take `[conn]` for a target's name.
        Ok(targets) if !spec.trim().is_empty() && !spec.contains('[') => Box::new(targets),
        _ => Box::new(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))),
    }
}

/// Exit code for a config that does not validate.
const BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The log on standard error: standard output may carry the audit trail (`[audit] path
    // = "-"`), which is never mixed with it.
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match cli.log_json {
        true => logs.json().boxed(),
        false => logs.boxed(),
    };
    tracing_subscriber::registry()
        .with(log_filter())
        .with(logs)
        .init();

    if let Some(Command::Healthcheck {
        config,
        address,
        ready,
        timeout_ms,
    }) = &cli.command
    {
        return healthcheck(config.as_deref(), *address, *ready, *timeout_ms);
    }
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return match Config::load(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{}: {e}", file.display());
                }
                ExitCode::from(BAD_CONFIG)
            }
        };
    }

    let Some(path) = &cli.config else {
        eprintln!("respite: --config FILE is required (see --help)");
        return ExitCode::from(BAD_CONFIG);
    };
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            return ExitCode::from(BAD_CONFIG);
        }
    };
    if let Err(errors) = config.override_with(cli.listen.clone(), cli.upstream.clone()) {
        for e in &errors.0 {
            eprintln!("respite: {e}");
        }
        return ExitCode::from(BAD_CONFIG);
    }

    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("respite: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = respite::config::Source {
        path: path.clone(),
        listen: cli.listen.clone(),
        upstream: cli.upstream.clone(),
    };
    match runtime.block_on(serve(config, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("respite: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `respite healthcheck`: one GET, its outcome in the exit code.
fn healthcheck(
    config: Option<&std::path::Path>,
    address: Option<std::net::SocketAddr>,
    ready: bool,
    timeout_ms: u64,
) -> ExitCode {
    use respite::admin::probe;
    let addr = match (address, config) {
        (Some(a), _) => Ok(a),
        (None, Some(path)) => probe::admin_listen(path),
        (None, None) => Err("give --config FILE or --address HOST:PORT".into()),
    };
    let path = if ready { "/readyz" } else { "/healthz" };
    let outcome =
        addr.and_then(|a| probe::probe(probe::local(a), path, Duration::from_millis(timeout_ms)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("respite healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

/// tokio's current-thread scheduler, so that a session, the shared upstream connection it
/// hands requests to and the reply's way back all run on one thread, with no cross-thread
/// wakeups (on 2 cores this cut CPU per request at pipeline 1 by about 40%, BENCHMARKS.md).
/// With `server.threads = N` the sessions run on N worker threads of the same kind
/// (`server::Workers`); this one keeps the accept loop and the background work.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

async fn serve(config: Config, source: respite::config::Source) -> anyhow::Result<()> {
    let listener = match config.listen_addr() {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            tracing::info!(
                %addr,
                upstream = %respite::config::mask_url_password(config.upstream.url.get_ref()),
                tenants = config.tenants.len(),
                "respite listening"
            );
            Some(listener)
        }
        None => None,
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: stopping");
        signal.cancel();
    });
    respite::run(config, Some(source), listener, shutdown).await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
