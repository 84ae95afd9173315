//! Per-test simulators: a swtpm per test, a SoftHSM2 token per test.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use hsm::sim::{SoftHsm, Swtpm};
use libtest_mimic::Failed;
use tempfile::TempDir;

/// The process-wide SoftHSM2 configuration (token directory) all PKCS#11 tests share.
static SOFTHSM: OnceLock<(TempDir, SoftHsm)> = OnceLock::new();

/// Tokens made before the first `C_Initialize`: SoftHSM2 scans its token directory only
/// then, so a token created later by another process is invisible to this one. Each test
/// takes its own token from this pool.
static TOKENS: Mutex<Vec<String>> = Mutex::new(Vec::new());
const POOL: usize = 24;
const USER_PIN: &str = "user-pin-1234";

/// Runs before the test threads start.
pub(crate) fn init_process() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let softhsm = match SoftHsm::create(dir.path()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot set up SoftHSM2: {e}");
            std::process::exit(1);
        }
    };
    // SAFETY: called from `main` before any other thread of this process exists, so no
    // concurrent `getenv` can observe the environment being modified.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", softhsm.conf());
        // Expected failures (wrong PIN, policy mismatch) are tested on purpose; keep
        // libtss2's own error log quiet about them.
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    let mut labels = Vec::new();
    for n in 0..POOL {
        let label = format!("pk-test-{}-{n}", std::process::id());
        if let Err(e) = softhsm.init_token(&label, TestToken::SO_PIN, USER_PIN) {
            eprintln!("cannot create SoftHSM2 token: {e}");
            std::process::exit(1);
        }
        labels.push(label);
    }
    *TOKENS.lock().expect("not poisoned") = labels;
    let _ = SOFTHSM.set((dir, softhsm));
}

/// A running swtpm with its state in a temporary directory; both go away on drop.
pub(crate) struct TestTpm {
    pub(crate) tpm: Swtpm,
    dir: TempDir,
}

impl TestTpm {
    pub(crate) fn start() -> Result<TestTpm, Failed> {
        let dir = tempfile::tempdir()?;
        let tpm = Swtpm::start(&dir.path().join("state")).map_err(|e| e.to_string())?;
        Ok(TestTpm { tpm, dir })
    }

    pub(crate) fn tcti(&self) -> String {
        self.tpm.tcti()
    }

    /// The temporary directory the simulator's state is in, for a test's own files.
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Runs a tpm2-tools command against this TPM.
    pub(crate) fn tool(&self, program: &str, args: &[&str]) -> Result<String, Failed> {
        hsm::sim::require_program(program, "tpm2-tools").map_err(|e| e.to_string())?;
        let out = Command::new(program)
            .args(args)
            .env("TPM2TOOLS_TCTI", self.tcti())
            .env("TSS2_LOG", "all+NONE")
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "{program} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A fresh SoftHSM2 token with a unique label.
pub(crate) struct TestToken {
    pub(crate) label: String,
    pub(crate) pin: &'static str,
}

impl TestToken {
    pub(crate) const SO_PIN: &'static str = "so-pin-4711";

    pub(crate) fn create() -> Result<TestToken, Failed> {
        let label = TOKENS
            .lock()
            .map_err(|_| "token pool poisoned")?
            .pop()
            .ok_or("SoftHSM2 token pool exhausted: raise POOL in fixtures.rs")?;
        Ok(TestToken {
            label,
            pin: USER_PIN,
        })
    }

    pub(crate) fn module() -> PathBuf {
        SoftHsm::module().expect("checked in init_process")
    }
}
