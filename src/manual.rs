//! `spinforge completions SHELL` and `spinforge man DIR`: shell completions and man pages made
//! from the CLI's own clap definitions, so they always match the binary (the Debian package
//! ships both; see scripts/package).

use clap::CommandFactory;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum ManualCmd {
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell).
    ///
    /// For example: `spinforge completions bash >
    /// ~/.local/share/bash-completion/completions/spinforge`. The Debian package installs them.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages into DIR: spinforge.1 and spinforge-COMMAND.1 for each command.
    Man {
        /// The folder to write them into (made if missing).
        dir: PathBuf,
    },
}

pub fn run(cmd: ManualCmd) -> ExitCode {
    let mut command = crate::Cli::command();
    match cmd {
        ManualCmd::Completions { shell } => {
            clap_complete::generate(shell, &mut command, "spinforge", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        ManualCmd::Man { dir } => {
            let written = std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(command, &dir));
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot write the man pages into {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
