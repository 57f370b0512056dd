//! `spinforge`: one binary that wires the crates together — `up` (edge and supervisor in one
//! process), `edge` and `supervisor` apart over Redis, `check` and `schema` for configs, and
//! `init` for a new app's first one.

// The CLI's own output (`check`) goes to stdout on purpose; everything else goes through tracing.
#![allow(clippy::print_stdout)]

mod cli;
mod hints;
mod init;
mod manual;
mod preflight;
mod reload;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use spinforge_acme::AcmeService;
use spinforge_edge::Edge;
use spinforge_edge::tls::TlsPolicy;
use spinforge_state::Store;
use spinforge_state::config::Config;
use spinforge_state::stop::{CancellationToken, DropGuard, Stop, StopSignal};
use spinforge_supervisor::Supervisor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

/// After handing its sockets to a new edge, how long the old one keeps idle keep-alive
/// connections open (within `edge.grace`) so that their clients move over without an error.
const HANDOVER_LINGER: Duration = Duration::from_secs(2);
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run only the edge (needs `state.redis`). SIGQUIT hands its sockets to a new edge started
    /// with `--upgrade`, then drains and exits.
    Edge(EdgeArgs),
    /// Run only the supervisor (needs `state.redis`).
    Supervisor(ConfigArg),
    /// Validate a config: print every error and exit 1, or exit 0.
    Check(ConfigArg),
    /// Write a starter spinforge.yaml for the app in DIR (default: here) and print the command
    /// that serves it. Never overwrites.
    Init(init::InitArgs),
    /// Print the config's JSON Schema (what conf/spinforge.schema.json holds), for editors.
    Schema,
    /// List the certificates of the config's HTTPS domains and when they expire (from Redis
    /// when `state.redis` is set, else from the copies in `data_dir/certs/`).
    Certs(ConfigArg),
    /// Admin API clients: deploy, apps, status, logs, rollback, start, stop, restart.
    #[command(flatten)]
    Client(cli::ClientCmd),
    /// Shell completions and man pages.
    #[command(flatten)]
    Manual(manual::ManualCmd),
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
struct EdgeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Take the listening sockets over from the running edge (zero-downtime upgrade): start
    /// this, then send SIGQUIT to the old edge.
    #[arg(long, short)]
    upgrade: bool,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The config file.
    #[arg(long, short, default_value = "/etc/spinforge/spinforge.yaml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Cmd::Check(arg) => return check(&arg.config),
        Cmd::Init(args) => return init::run(args),
        Cmd::Schema => {
            let schema = spinforge_state::config::schema::json_schema();
            println!("{schema:#}");
            return ExitCode::SUCCESS;
        }
        Cmd::Client(c) => return cli::run(c),
        Cmd::Manual(c) => return manual::run(c),
        other => other,
    };
    init_tracing();
    let result = (|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("spinforge")
            .build()
            .context("cannot start the async runtime")?;
        let result = runtime.block_on(async {
            match command {
                Cmd::Up(arg) => up(load(&arg.config)?).await,
                Cmd::Edge(args) => edge(load(&args.config.config)?, args.upgrade).await,
                Cmd::Supervisor(arg) => supervisor(load(&arg.config)?).await,
                Cmd::Certs(arg) => certs(load(&arg.config)?).await,
                Cmd::StaticServe(arg) => static_serve(arg).await,
                Cmd::Check(_) | Cmd::Init(_) | Cmd::Schema | Cmd::Client(_) | Cmd::Manual(_) => {
                    unreachable!("handled above")
                }
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
    use std::io::IsTerminal;
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
    });
    const ACCESS: &str = "spinforge::access";
    // Per-layer filters hint no level of their own, which would lift the overall hint (and the
    // `log` crate's max level, which Pingora's debug! calls check per request) to TRACE: give
    // them the env filter's.
    let max = filter
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    // Diagnostics to stderr, as text; colours for a terminal only (log files and journald get
    // plain text).
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter_fn(|m| m.target() != ACCESS).with_max_level_hint(max));
    // The access log (`edge.access_log: json`, or RUST_LOG=spinforge::access=debug): one JSON
    // object per request on stdout.
    let access = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stdout)
        .with_filter(filter_fn(|m| m.target() == ACCESS).with_max_level_hint(max));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(access)
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
        Some(url) => {
            // Redis not there at all: say so now, not after the whole wait.
            if hints::redis_refuses(url).await {
                tracing::warn!(
                    "{}; waiting up to {} s for it",
                    hints::redis(url, config, role),
                    REDIS_WAIT.as_secs()
                );
            }
            Store::connect_redis(url, REDIS_WAIT)
                .await
                .map_err(|e| anyhow!("{} ({e})", hints::redis(url, config, role)))
        }
        None if role == "up" => Ok(Store::embedded()),
        None => bail!(
            "`spinforge {role}` shares state with the other parts through Redis: set `state.redis` in {}",
            config.file.display()
        ),
    }
}

async fn up(config: Config) -> Result<()> {
    // Before anything else: SIGHUP's default action would end the process.
    let hangup = reload::hangup()?;
    preflight::check(&config)?;
    let store = store_for(&config, "up").await?;
    // Bind first: a taken port should fail before any build starts.
    let edge = bind_edge(&config, store.clone(), None)?;
    let admin = bind_admin(&config, store.clone()).await?;
    preflight::spawn_registry_probe(&config);
    let acme = AcmeService::start(&config, store.clone());
    let mut supervisor = Supervisor::start(&config, store).await?;
    let reloads = reload::start(
        &config,
        reload::Parts {
            edge: Some(edge.control()),
            supervisor: Some(supervisor.config_updates()),
            acme: Some(acme),
            admin: Some(admin.control()),
        },
        hangup,
    );
    let admin = AdminHandle::start(
        admin.with_reloader(reloads.reloader.clone()),
        supervisor.handle(),
    );
    let (edge_stop, supervisor_stop) = (StopSignal::new(), StopSignal::new());
    let mut edge_task = tokio::spawn(edge.serve(edge_stop.clone()));
    let supervisor_task = tokio::spawn(supervisor.run(supervisor_stop.clone()));
    tokio::select! {
        r = shutdown_signal() => r?,
        r = &mut edge_task => return edge_failed(r),
    }
    // The config as last reloaded (its `edge.grace`); the certificate job stops with it.
    let config = reloads.current();
    reloads.stop().await;
    admin.stop().await;
    // Half the grace for requests to drain, the rest for spinlets to stop.
    let started = Instant::now();
    let grace = config.edge.grace;
    tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");
    edge_stop.send(Stop::at(started + grace / 2));
    let _ = edge_task.await;
    supervisor_stop.send(Stop::at(
        started + grace.saturating_sub(Duration::from_millis(250)),
    ));
    let _ = supervisor_task.await;
    Ok(())
}

async fn edge(config: Config, upgrade: bool) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Listen for SIGQUIT and SIGHUP before anything else: their default actions would kill us.
    let mut quit = signal(SignalKind::quit()).context("cannot listen for SIGQUIT")?;
    let hangup = reload::hangup()?;
    let sock = config.edge.upgrade_sock.clone();
    let mut inherited = if upgrade {
        tracing::info!(socket = %sock.display(), "waiting for the running edge's sockets (send it SIGQUIT)");
        let path = sock.clone();
        Some(tokio::task::spawn_blocking(move || spinforge_edge::upgrade::receive(&path)).await??)
    } else {
        None
    };
    let store = store_for(&config, "edge").await?;
    let edge = bind_edge(&config, store, inherited.as_mut())?;
    // Handed-over sockets the config no longer has close now, not when this edge exits.
    drop(inherited);
    if upgrade {
        tracing::info!(http = %edge.http_addr(), "took the listening sockets over");
    }
    let reloads = reload::start(
        &config,
        reload::Parts {
            edge: Some(edge.control()),
            ..reload::Parts::default()
        },
        hangup,
    );
    let handoff = std::sync::Arc::new(
        edge.handoff()
            .context("cannot keep a copy of the listening socket")?,
    );
    let stop = StopSignal::new();
    let mut task = tokio::spawn(edge.serve(stop.clone()));
    let mut linger = Duration::ZERO;
    loop {
        tokio::select! {
            r = shutdown_signal() => { r?; break; }
            r = &mut task => return edge_failed(r),
            _ = quit.recv() => {
                // `edge.upgrade_sock` as last reloaded.
                let sock = reloads.current().edge.upgrade_sock.clone();
                tracing::info!(socket = %sock.display(), "SIGQUIT: handing the listening sockets to the new edge");
                let path = sock.clone();
                let handoff = handoff.clone();
                match tokio::task::spawn_blocking(move || handoff.send(&path)).await? {
                    Ok(()) => {
                        tracing::info!("sockets handed over; draining and exiting");
                        // Clients on keep-alive connections get their next answer from us with
                        // `Connection: close`, then reconnect to the new edge.
                        linger = HANDOVER_LINGER;
                        break;
                    }
                    // Nobody took them: keep serving rather than leave the port dark.
                    Err(e) => tracing::error!("{e}; still serving"),
                }
            }
        }
    }
    let grace = reloads.current().edge.grace;
    reloads.stop().await;
    stop.send(Stop {
        deadline: Instant::now() + grace,
        linger,
    });
    let _ = task.await;
    Ok(())
}

async fn supervisor(config: Config) -> Result<()> {
    // Before anything else: SIGHUP's default action would end the process.
    let hangup = reload::hangup()?;
    preflight::check(&config)?;
    let store = store_for(&config, "supervisor").await?;
    let admin = bind_admin(&config, store.clone()).await?;
    preflight::spawn_registry_probe(&config);
    let acme = AcmeService::start(&config, store.clone());
    let mut supervisor = Supervisor::start(&config, store).await?;
    let handle = supervisor.handle();
    let reloads = reload::start(
        &config,
        reload::Parts {
            supervisor: Some(supervisor.config_updates()),
            acme: Some(acme),
            admin: Some(admin.control()),
            ..reload::Parts::default()
        },
        hangup,
    );
    let admin = AdminHandle::start(
        admin.with_reloader(reloads.reloader.clone()),
        supervisor.handle(),
    );
    let stop = StopSignal::new();
    let task = tokio::spawn(supervisor.run(stop.clone()));
    let mut quit = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit())
        .context("cannot listen for SIGQUIT")?;
    tokio::select! {
        r = shutdown_signal() => {
            r?;
            let grace = reloads.current().edge.grace;
            reloads.stop().await;
            admin.stop().await;
            stop.send(Stop::at(Instant::now() + grace));
        }
        _ = quit.recv() => {
            // A replacement supervisor adopts the spinlets: leave them running.
            tracing::info!("SIGQUIT received: exiting and leaving spinlets running");
            reloads.stop().await;
            admin.stop().await;
            if let Err(e) = handle.detach().await {
                tracing::warn!(error = %e, "could not detach cleanly");
            }
        }
    }
    let _ = task.await;
    Ok(())
}

async fn certs(config: Config) -> Result<()> {
    use spinforge_state::config::{AppTls, acme_eligible};
    let stored: std::collections::BTreeMap<String, i64> = match &config.state.redis {
        Some(url) => Store::connect_redis(url, Duration::from_secs(5))
            .await
            .context("cannot connect to the state store")?
            .certs()
            .await?
            .into_iter()
            .map(|c| (c.domain, c.not_after))
            .collect(),
        None => config
            .apps
            .values()
            .flat_map(|a| a.domains.iter())
            .filter_map(|d| {
                let pem = std::fs::read_to_string(
                    config
                        .supervisor
                        .data_dir
                        .join("certs")
                        .join(d)
                        .join("fullchain.pem"),
                )
                .ok()?;
                let info = spinforge_acme::cert_info(&pem, d).ok()?;
                Some((d.clone(), info.not_after))
            })
            .collect(),
    };
    let now = spinforge_state::now_ms() as i64 / 1000;
    println!("{:<40} {:<12} EXPIRES", "DOMAIN", "SOURCE");
    for app in config.apps.values() {
        for d in &app.domains {
            let (source, expires) = match &app.tls {
                AppTls::Off => ("off", String::new()),
                AppTls::Files { cert, .. } => ("files", cert.display().to_string()),
                AppTls::Auto if !acme_eligible(d) => {
                    ("self-signed", "no ACME for this name".into())
                }
                AppTls::Auto => match stored.get(d) {
                    Some(t) if *t > now => (
                        "acme",
                        format!("in {} days (notAfter {t})", (t - now) / 86400),
                    ),
                    Some(t) => ("acme", format!("EXPIRED (notAfter {t})")),
                    None => ("self-signed", "no certificate issued yet".into()),
                },
            };
            println!("{d:<40} {source:<12} {expires}");
        }
    }
    Ok(())
}

/// The edge, bound, serving the config's apps over HTTPS too when `edge.listen_https` is set.
fn bind_edge(
    config: &Config,
    store: Store,
    inherited: Option<&mut spinforge_edge::upgrade::InheritedListeners>,
) -> Result<Edge> {
    let edge = Edge::bind_or_inherit(&config.edge, store, inherited).map_err(|e| {
        let hint = match &e {
            spinforge_edge::EdgeError::Bind { addr, .. } => {
                let key = if config.edge.listen_https == Some(*addr) {
                    "edge.listen_https"
                } else {
                    "edge.listen_http"
                };
                hints::listen(&e, *addr, key, config)
            }
            _ => None,
        };
        hint.map_or_else(|| anyhow::Error::from(e), |h| anyhow!(h))
    })?;
    Ok(edge.with_tls_policy(TlsPolicy::from_apps(config.apps.values())))
}

/// The edge stopped on its own: only a setup failure does that.
fn edge_failed(
    r: std::result::Result<Result<(), spinforge_edge::EdgeError>, tokio::task::JoinError>,
) -> Result<()> {
    match r {
        Ok(Ok(())) => bail!("the edge stopped unexpectedly"),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => bail!("the edge failed: {e}"),
    }
}

async fn bind_admin(config: &Config, store: Store) -> Result<spinforge_admin::AdminApi> {
    spinforge_admin::AdminApi::bind(config, store)
        .await
        .map_err(|e| {
            let hint = match &e {
                spinforge_admin::AdminError::Bind { addr, .. } => {
                    hints::listen(&e, *addr, "supervisor.admin_listen", config)
                }
                _ => None,
            };
            hint.map_or_else(|| anyhow::Error::from(e), |h| anyhow!(h))
        })
}

/// The admin API, serving beside the supervisor; it stops when this is dropped.
struct AdminHandle(DropGuard, tokio::task::JoinHandle<()>);

impl AdminHandle {
    fn start(
        api: spinforge_admin::AdminApi,
        handle: spinforge_supervisor::control::SupervisorHandle,
    ) -> AdminHandle {
        let stop = CancellationToken::new();
        AdminHandle(
            stop.clone().drop_guard(),
            tokio::spawn(api.serve(handle, stop)),
        )
    }

    async fn stop(self) {
        drop(self.0);
        let _ = self.1.await;
    }
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
