//! `spinforge`: one binary that wires the crates together — `up` (edge and supervisor in one
//! process), `edge` and `supervisor` apart over Redis, and `check` for configs.

// The CLI's own output (`check`) goes to stdout on purpose; everything else goes through tracing.
#![allow(clippy::print_stdout)]

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use spinforge_edge::Edge;
use spinforge_state::Store;
use spinforge_state::config::Config;
use spinforge_supervisor::Supervisor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long `edge` and `supervisor` wait for Redis at start.
const REDIS_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "spinforge",
    version,
    about = "Self-hosted platform-as-a-service for Node.js apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the edge and the supervisor in one process (embedded state unless `state.redis` is set).
    Up(ConfigArg),
    /// Run only the edge (needs `state.redis`).
    Edge(ConfigArg),
    /// Run only the supervisor (needs `state.redis`).
    Supervisor(ConfigArg),
    /// Validate a config: print every error and exit 1, or exit 0.
    Check(ConfigArg),
    /// Serve a static site (what static-site spinlets run; not for direct use).
    #[command(hide = true)]
    StaticServe(StaticArgs),
}

#[derive(Debug, clap::Args)]
struct StaticArgs {
    /// The folder to serve.
    #[arg(long)]
    root: PathBuf,
    /// The port; defaults to $PORT.
    #[arg(long, env = "PORT")]
    port: u16,
    /// The address; defaults to $HOST, else 127.0.0.1.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Answer unknown page paths with /index.html (single-page apps).
    #[arg(long)]
    spa: bool,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The config file.
    #[arg(long, short, default_value = "/etc/spinforge/spinforge.yaml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Check(arg) = &cli.command {
        return check(&arg.config);
    }
    init_tracing();
    let result = (|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("spinforge")
            .build()
            .context("cannot start the async runtime")?;
        let result = runtime.block_on(async {
            match cli.command {
                Cmd::Up(arg) => up(load(&arg.config)?).await,
                Cmd::Edge(arg) => edge(load(&arg.config)?).await,
                Cmd::Supervisor(arg) => supervisor(load(&arg.config)?).await,
                Cmd::StaticServe(arg) => static_serve(arg).await,
                Cmd::Check(_) => unreachable!("handled above"),
            }
        });
        // Everything that matters has stopped by now; don't wait on idle blocking threads.
        runtime.shutdown_timeout(Duration::from_millis(200));
        result
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours for a terminal only: log files and journald get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            let domains: usize = config.apps.values().map(|a| a.domains.len()).sum();
            println!(
                "{}: ok ({} app(s), {} domain(s), {} state)",
                path.display(),
                config.apps.len(),
                domains,
                if config.state.redis.is_some() {
                    "redis"
                } else {
                    "embedded"
                }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))
}

async fn store_for(config: &Config, role: &str) -> Result<Store> {
    match &config.state.redis {
        Some(url) => Store::connect_redis(url, REDIS_WAIT)
            .await
            .context("cannot connect to the state store"),
        None if role == "up" => Ok(Store::embedded()),
        None => bail!(
            "`spinforge {role}` shares state with the other parts through Redis: set `state.redis` in {}",
            config.file.display()
        ),
    }
}

async fn up(config: Config) -> Result<()> {
    let store = store_for(&config, "up").await?;
    // Bind first: a taken port should fail before any build starts.
    let edge = Edge::bind(&config.edge, store.clone())?;
    let supervisor = Supervisor::start(&config, store).await?;
    let (edge_stop, edge_rx) = watch::channel(None);
    let (supervisor_stop, supervisor_rx) = watch::channel(None);
    let edge_task = tokio::spawn(edge.serve(edge_rx));
    let supervisor_task = tokio::spawn(supervisor.run(supervisor_rx));
    shutdown_signal().await?;
    // Half the grace for requests to drain, the rest for spinlets to stop.
    let started = Instant::now();
    let grace = config.edge.grace;
    tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");
    let _ = edge_stop.send(Some(started + grace / 2));
    let _ = edge_task.await;
    let _ = supervisor_stop.send(Some(
        started + grace.saturating_sub(Duration::from_millis(250)),
    ));
    let _ = supervisor_task.await;
    Ok(())
}

async fn edge(config: Config) -> Result<()> {
    let store = store_for(&config, "edge").await?;
    let edge = Edge::bind(&config.edge, store)?;
    let (stop, rx) = watch::channel(None);
    let task = tokio::spawn(edge.serve(rx));
    shutdown_signal().await?;
    let _ = stop.send(Some(Instant::now() + config.edge.grace));
    let _ = task.await;
    Ok(())
}

async fn supervisor(config: Config) -> Result<()> {
    let store = store_for(&config, "supervisor").await?;
    let supervisor = Supervisor::start(&config, store).await?;
    let (stop, rx) = watch::channel(None);
    let task = tokio::spawn(supervisor.run(rx));
    shutdown_signal().await?;
    let _ = stop.send(Some(Instant::now() + config.edge.grace));
    let _ = task.await;
    Ok(())
}

async fn static_serve(arg: StaticArgs) -> Result<()> {
    let addr = std::net::SocketAddr::new(arg.host, arg.port);
    tokio::select! {
        result = spinforge_supervisor::static_site::serve(&arg.root, addr, arg.spa) => result?,
        result = shutdown_signal() => result?,
    }
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
