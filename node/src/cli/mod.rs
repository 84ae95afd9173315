//! The `pk` command line, shared by the two binaries that run it.
//!
//! Conventions follow the Polykey CLI: `--node-path`, `--format human|json`, secrets from
//! a file (`--password-file`) or the environment (`PK_PASSWORD`) for scripts, a prompt on
//! a terminal otherwise. Exit codes follow sysexits: 64 usage, 65 damaged data, 66 no
//! node or not found, 69 token or agent unavailable, 70 internal, 73 already exists,
//! 75 agent locked, 77 refused credential or policy, 1 anything else.
//!
//! `pk` ([`pk_main`]) is a thin client of the agent, so that an everyday call
//! (`secrets cat`) does not load the TPM and PKCS#11 libraries. The commands that use
//! tokens (`init`, `keyslots`, and the agent itself) run in `pk-node` ([`pk_node_main`]),
//! the binary installed next to it, which `pk` executes in its place with the same
//! arguments, and which hands in the drivers. This crate depends on `hsm-core` alone, so
//! `pk` cannot link libtss2 or libpcsclite; `node/pk-node/tests/linkage.rs` checks it.
//!
//! Map: `args` (the clap definitions), `entry` (umask, parsing, exit codes), `error`
//! (the error and its exit code), `output` (human or JSON), `secrets` (PINs and
//! passphrases from a file, the environment or a prompt), `call` (one agent call),
//! `unlock` (choosing a keyslot), then the commands: `commands` (the dispatch, `init`,
//! `keyslots`, the agent process), `agent_cmds` (agent, keys, vaults, secrets, audit),
//! `peer_cmds` (nodes, shares, pulls, notifications), `trust_cmds` (identities,
//! gestalts).

mod agent_cmds;
mod args;
mod call;
mod commands;
mod entry;
mod error;
mod output;
mod peer_cmds;
mod secrets;
mod trust_cmds;
mod unlock;

use std::process::ExitCode;
use std::sync::Arc;

use hsm_core::Drivers;

use args::{AgentCommand, Cli, Command};
use error::CliError;

/// `pk`: runs the command, or executes `pk-node` in its place for the commands that use
/// tokens.
pub fn pk_main() -> ExitCode {
    entry::main_with(dispatch)
}

/// `pk-node`: runs every command, the token-side ones included, through `drivers`
/// (`hsm::Hardware`, which this crate does not depend on).
pub fn pk_node_main(drivers: Arc<dyn Drivers>) -> ExitCode {
    entry::main_with(|cli| commands::run(cli, drivers))
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
