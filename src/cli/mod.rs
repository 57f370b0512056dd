//! The client commands: `deploy`, `apps`, `status`, `logs`, `releases`, `rollback`, `start`,
//! `stop`, `restart`, `reload`, talking to a running SpinForge's admin API (`SPINFORGE_ADMIN_URL`,
//! `SPINFORGE_TOKEN`).
//!
//! Exit codes: 0 done; 1 the operation failed (refused, build failed, not found); 2 usage (bad
//! arguments, no such folder); 3 cannot reach the admin API, or it refused the token.

mod client;
mod deploy;
mod pack;
mod show;
mod terminal;

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum ClientCmd {
    /// Deploy a folder (packed, honouring .gitignore) or a git URL to an app, creating the app
    /// if needed; streams the build log and prints the app's URL.
    Deploy(deploy::DeployArgs),
    /// List the apps.
    Apps(JsonArg),
    /// Apps, spinlets and certificates (with expiry).
    Status(JsonArg),
    /// Print an app's log; `-f` follows it.
    Logs(LogsArgs),
    /// List an app's kept releases, newest first: which one serves, which a rollback pinned,
    /// when and from what each was built.
    Releases(ReleasesArgs),
    /// Serve an earlier release again (default: the one before the current).
    Rollback(RollbackArgs),
    /// Start an app's spinlets now.
    Start(AppArg),
    /// Stop an app's spinlets (the next request wakes it).
    Stop(AppArg),
    /// Replace an app's spinlets with fresh ones, without downtime.
    Restart(AppArg),
    /// Make the running SpinForge reload its config file (as SIGHUP does): every section is
    /// applied, or the file is refused whole with its errors and nothing changes. Prints what
    /// was applied and which keys need a restart.
    Reload(JsonArg),
}

#[derive(Debug, clap::Args)]
pub struct JsonArg {
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct AppArg {
    app: String,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    app: String,
    /// Keep printing new lines as they come.
    #[arg(short, long)]
    follow: bool,
    /// How many of the last lines to print first.
    #[arg(short = 'n', long, default_value_t = 100)]
    lines: usize,
    /// Print lines as the app wrote them, control characters included (colours; only for apps
    /// you trust: escape sequences act on your terminal). By default they are shown as `\x1b`.
    #[arg(long)]
    raw: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReleasesArgs {
    app: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    app: String,
    /// The release number (see `spinforge releases APP`); default: the one before the current.
    release: Option<u64>,
}

/// Why a command failed, and so how the process exits.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub fn failed(m: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: m.into(),
        }
    }
    pub fn usage(m: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: m.into(),
        }
    }
    pub fn unreachable(m: impl Into<String>) -> Failure {
        Failure {
            code: 3,
            message: m.into(),
        }
    }
}

pub fn run(cmd: ClientCmd) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let client = client::Client::from_env()?;
        match cmd {
            ClientCmd::Deploy(a) => deploy::run(&client, a).await,
            ClientCmd::Apps(a) => show::apps(&client, a.json).await,
            ClientCmd::Status(a) => show::status(&client, a.json).await,
            ClientCmd::Logs(a) => show::logs(&client, &a.app, a.follow, a.lines, a.raw).await,
            ClientCmd::Releases(a) => show::releases(&client, &a.app, a.json).await,
            ClientCmd::Rollback(a) => show::rollback(&client, &a.app, a.release).await,
            ClientCmd::Start(a) => show::lifecycle(&client, &a.app, "start").await,
            ClientCmd::Stop(a) => show::lifecycle(&client, &a.app, "stop").await,
            ClientCmd::Restart(a) => show::lifecycle(&client, &a.app, "restart").await,
            ClientCmd::Reload(a) => show::reload(&client, a.json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", terminal::visible(&f.message));
            ExitCode::from(f.code)
        }
    }
}

/// Checks an app name before it goes into a URL.
fn app_name(name: &str) -> Result<(), Failure> {
    spinforge_state::config::check_app_name(name).map_err(Failure::usage)
}
