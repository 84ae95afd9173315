//! `pk-node`: the half of `pk` that uses tokens: `pk init`, `pk keyslots ...`, and the
//! agent itself (`pk agent start --foreground`, also how a background agent runs).
//!
//! Users run `pk`, which executes this binary for those commands; it takes the same
//! arguments and shares pk's source (the modules below are pk's). Keeping the TPM and
//! PKCS#11 libraries out of `pk` saves every other call their loading time.

#![forbid(unsafe_code)]

#[path = "../pk/agent_cmds.rs"]
mod agent_cmds;
#[path = "../pk/call.rs"]
mod call;
#[path = "../pk/cli.rs"]
mod cli;
#[path = "../pk/commands.rs"]
mod commands;
#[path = "../pk/entry.rs"]
mod entry;
#[path = "../pk/error.rs"]
mod error;
#[path = "../pk/output.rs"]
mod output;
#[path = "../pk/peer_cmds.rs"]
mod peer_cmds;
#[path = "../pk/secrets.rs"]
mod secrets;
#[path = "../pk/trust_cmds.rs"]
mod trust_cmds;
#[path = "../pk/unlock.rs"]
mod unlock;

fn main() -> std::process::ExitCode {
    entry::main_with(commands::run)
}
