//! `pk`: the command-line front end of a pk node.
//!
//! Conventions follow the Polykey CLI: `--node-path`, `--format human|json`, secrets from
//! a file (`--password-file`) or the environment (`PK_PASSWORD`) for scripts, a prompt on
//! a terminal otherwise. Exit codes follow sysexits: 64 usage, 65 damaged data, 66 no
//! node or not found, 69 token or agent unavailable, 70 internal, 73 already exists,
//! 75 agent locked, 77 refused credential or policy, 1 anything else.
//!
//! `pk` itself is a thin client of the agent, so that an everyday call (`secrets cat`)
//! does not load the TPM and PKCS#11 libraries. The commands that use tokens (`init`,
//! `keyslots`, and the agent itself) run in `pk-node`, the binary installed next to it,
//! which `pk` executes in its place with the same arguments.

#![forbid(unsafe_code)]

mod agent_cmds;
mod call;
mod cli;
// The token-side commands in here are compiled into pk-node; pk uses the dispatch to the
// agent's commands (`run_client`) only.
#[allow(dead_code)]
mod commands;
mod entry;
mod error;
mod output;
mod peer_cmds;
mod secrets;
mod trust_cmds;
mod unlock;

use std::process::ExitCode;

use crate::cli::{AgentCommand, Cli, Command};
use crate::error::CliError;

fn main() -> ExitCode {
    entry::main_with(dispatch)
}

fn dispatch(cli: &Cli) -> Result<(), CliError> {
    let needs_tokens = match &cli.command {
        Command::Init(_) | Command::Keyslots(_) => true,
        Command::Agent(AgentCommand::Start(args)) => args.foreground,
        _ => false,
    };
    if needs_tokens {
        use std::os::unix::process::CommandExt as _;
        let node = agent_cmds::pk_node()?;
        let err = std::process::Command::new(&node)
            .args(std::env::args_os().skip(1))
            .exec();
        return Err(CliError::io(format!("cannot run {}", node.display()), err));
    }
    commands::run_client(cli)
}
