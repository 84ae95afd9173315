//! `pk-dev`: brings up a local development node in `target/pk-dev`.
//!
//! It starts a software TPM (swtpm) when one is installed and keeps the node's data key
//! in it; without swtpm it falls back to the `soft` passphrase token, with a generated
//! passphrase kept in a file next to the node (development only, and it says so). The
//! first run initialises the node and prints its recovery code once; later runs unlock
//! the same node. On a terminal it stays up, with the TPM running, until Ctrl-C, so `pk`
//! can be pointed at it; otherwise it exits after unlocking.
//!
//! The appliance's admin console does not exist yet; when it does, this command will
//! start it and print its address.

#![forbid(unsafe_code)]

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use hsm::sim::Swtpm;
use hsm::soft::{Argon2Params, SoftProtector};
use hsm::tpm::TpmProtector;
use hsm::{Pin, Protector};
use node::NodePath;
use node::keyslots::Keyslots;

/// `println!` that does not panic when stdout is closed (`pk-dev | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pk-dev: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let once = std::env::args().any(|a| a == "--once");
    let base = std::env::var_os("PK_DEV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("target/pk-dev")
        });
    let node = NodePath::new(base.join("node"));
    say!("pk-dev: development node at {node}");

    let swtpm = match Swtpm::start(&base.join("swtpm")) {
        Ok(tpm) => {
            say!(
                "  token: software TPM (swtpm, pid {}) at {}",
                tpm.pid(),
                tpm.tcti()
            );
            Some(tpm)
        }
        Err(e) => {
            say!("  token: soft passphrase (no TPM simulator: {e})");
            None
        }
    };
    let protector: Box<dyn Protector> = match &swtpm {
        Some(tpm) => Box::new(TpmProtector::new(tpm.tcti(), None)),
        None => Box::new(SoftProtector::new(
            dev_passphrase(&base)?,
            Argon2Params::DEFAULT,
        )),
    };

    let start = Instant::now();
    let (keyslots, slot) = if node.keyslots().exists() {
        let keyslots = Keyslots::open(&node).map_err(|e| e.to_string())?;
        let unlocked = keyslots.unlock(protector.as_ref(), None).map_err(|e| {
            format!(
                "{e}\n  This node was made with another token. Remove {} to start over.",
                base.display()
            )
        })?;
        say!(
            "  unlocked the data key through keyslot {} in {:.0?}",
            unlocked.slot,
            start.elapsed()
        );
        (keyslots, unlocked.slot)
    } else {
        let init =
            Keyslots::init(&node, protector.as_ref(), "pk-dev").map_err(|e| e.to_string())?;
        say!("  initialised a new node; recovery code (shown once, development only):");
        say!("    {}", init.recovery_code.to_words().as_str());
        let slot = init.unlocked.slot;
        (init.keyslots, slot)
    };
    for s in keyslots.slots() {
        let mark = if s.header.id == slot { "*" } else { " " };
        say!(
            "  {mark} keyslot {}: {} ({}) {:?}",
            s.header.id,
            s.header.kind,
            if s.is_hardware() {
                "hardware"
            } else {
                "not hardware"
            },
            s.header.label
        );
    }
    say!("  admin console: not available yet (the appliance daemon will serve it)");
    let tcti = swtpm.as_ref().map(|t| t.tcti()).unwrap_or_default();
    say!(
        "  try: PK_NODE_PATH={node} PK_TPM_TCTI={tcti} cargo run -q -p node --bin pk -- keyslots list"
    );

    if !once && std::io::stdin().is_terminal() {
        say!("pk-dev: running; press Ctrl-C (or Enter) to stop");
        let mut byte = [0u8; 1];
        let _ = std::io::stdin().read(&mut byte);
    }
    drop(swtpm);
    Ok(())
}

/// The development node's passphrase when no TPM simulator is available: generated once
/// and kept beside the node, which is exactly what a real node must never do.
fn dev_passphrase(base: &Path) -> Result<Pin, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = base.join("dev-passphrase");
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok(Pin::new(bytes));
    }
    std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let code = hsm::recovery::RecoveryCode::generate();
    let words = code.to_words();
    let pass: String = words.split(' ').take(6).collect::<Vec<_>>().join("-");
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, pass.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    say!(
        "  generated a development passphrase in {} (never do this outside development)",
        path.display()
    );
    Ok(Pin::from(pass.as_str()))
}
