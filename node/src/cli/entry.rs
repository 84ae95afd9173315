//! What `pk` and `pk-node` share around their commands: umask, parsing, exit codes.

use std::process::ExitCode;

use clap::Parser as _;

use super::args::Cli;
use super::error::{CliError, USAGE};

/// Parses the command line and runs `dispatch`, turning its error into a message on
/// stderr and a sysexits code.
pub(crate) fn main_with(dispatch: impl FnOnce(&Cli) -> Result<(), CliError>) -> ExitCode {
    // Everything pk and its agent create (database, status file, log, exports) is for
    // this user only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage { USAGE } else { 0 });
        }
    };
    match dispatch(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pk: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
