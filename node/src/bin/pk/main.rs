//! `pk`: the command-line front end of a pk node.
//!
//! Conventions follow the Polykey CLI: `--node-path`, `--format human|json`, secrets from
//! a file (`--password-file`) or the environment (`PK_PASSWORD`) for scripts, a prompt on
//! a terminal otherwise. Exit codes follow sysexits: 64 usage, 65 damaged data, 66 no
//! node, 69 token unavailable, 73 node already exists, 77 refused credential or policy,
//! 1 anything else.

#![forbid(unsafe_code)]

mod agent_cmds;
mod cli;
mod commands;
mod error;
mod secrets;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;

fn main() -> ExitCode {
    // Everything pk and its agent create (database, status file, log, exports) is for
    // this user only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage { error::USAGE } else { 0 });
        }
    };
    match commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pk: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
