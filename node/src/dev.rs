//! What the local development commands share: `pk-dev` (a bare node) and
//! `pk-appliance-dev` (the appliance with its console). Each keeps its state in a
//! directory under `target/`, starts a software TPM when one is installed, and reports on
//! standard output. Not for production use: nothing here is needed by `pk` or
//! `pk-appliance`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hsm_core::sim::Swtpm;

/// `println!` that does not panic when standard output is closed (`pk-dev | head`).
#[macro_export]
macro_rules! dev_say {
    ($($arg:tt)*) => {
        $crate::dev::say(format_args!($($arg)*))
    };
}

/// Writes one line to standard output, and does not panic when it is closed; through
/// [`dev_say!`](crate::dev_say).
pub fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Runs a development command's `run` with a private umask (files it creates are the
/// user's alone); an error is printed after the command's `name`.
pub fn main(name: &str, run: impl FnOnce() -> Result<(), String>) -> ExitCode {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command's directory: `PK_DEV_DIR`, else `target/<default>` in the workspace.
pub fn base_dir(default: &str) -> PathBuf {
    std::env::var_os("PK_DEV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest
                .parent()
                .unwrap_or(manifest)
                .join("target")
                .join(default)
        })
}

/// Starts a software TPM with its state in `base/swtpm`, and says which token the command
/// uses: the TPM, or (when no simulator is installed) `fallback`.
pub fn start_swtpm(base: &Path, fallback: &str) -> Option<Swtpm> {
    match Swtpm::start(&base.join("swtpm")) {
        Ok(tpm) => {
            crate::dev_say!(
                "  token: software TPM (swtpm, pid {}) at {}",
                tpm.pid(),
                tpm.tcti()
            );
            Some(tpm)
        }
        Err(e) => {
            crate::dev_say!("  token: {fallback} (no TPM simulator: {e})");
            None
        }
    }
}
