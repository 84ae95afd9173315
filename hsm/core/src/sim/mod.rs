//! Software stand-ins for hardware tokens: swtpm, SoftHSM2 and (with the `testing`
//! feature) an emulated PIV card behind a private pcscd.
//!
//! Tests start one of each per test, in a temporary directory, and the local development
//! command starts a swtpm for its node. Processes are killed when their handle drops. A
//! missing tool is an error that names the Debian package to install, never a skip.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the PKCS#11 module usually is on Debian for SoftHSM2.
const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[cfg(feature = "testing")]
pub mod pcsc;
#[cfg(feature = "testing")]
pub mod piv;

/// Why a simulator could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A program or library is not installed.
    #[error("{what} not found; install the Debian package `{package}` (apt-get install {package})")]
    Missing {
        /// What was looked for.
        what: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// The simulator did not come up.
    #[error("{0}")]
    Start(String),
    /// File or process I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SimError {
    let context = context.into();
    move |source| SimError::Io { context, source }
}

/// Finds `program` on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Fails with the Debian package name when `program` is not on `PATH`.
pub fn require_program(program: &str, package: &'static str) -> Result<PathBuf, SimError> {
    which(program).ok_or_else(|| SimError::Missing {
        what: format!("program `{program}`"),
        package,
    })
}

/// A running swtpm (TPM 2.0 simulator) on loopback, killed on drop.
pub struct Swtpm {
    child: Child,
    port: u16,
}

impl Swtpm {
    /// Starts swtpm keeping its state in `state_dir` (created if needed). The same state
    /// directory gives the same TPM (same seeds, same sealed objects) across restarts.
    pub fn start(state_dir: &Path) -> Result<Swtpm, SimError> {
        let program = require_program("swtpm", "swtpm")?;
        std::fs::create_dir_all(state_dir)
            .map_err(io_err(format!("creating {}", state_dir.display())))?;
        let mut last = String::new();
        for _ in 0..20 {
            let Some(port) = free_port_pair() else {
                continue;
            };
            let mut child = Command::new(&program)
                .args(["socket", "--tpm2"])
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state_dir.display()))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(io_err("starting swtpm"))?;
            match wait_listening(&mut child, port) {
                Ok(()) => return Ok(Swtpm { child, port }),
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = why;
                }
            }
        }
        Err(SimError::Start(format!("swtpm did not start: {last}")))
    }

    /// The TCTI string for tss-esapi and tpm2-tools.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The process id, for callers that record it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback TCP port `p` such that `p + 1` is free as well (swtpm's TCTI expects
/// the control port right after the command port).
fn free_port_pair() -> Option<u16> {
    let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    let port = first.local_addr().ok()?.port();
    let next = port.checked_add(1)?;
    let second = TcpListener::bind((Ipv4Addr::LOCALHOST, next)).ok()?;
    drop((first, second));
    Some(port)
}

fn wait_listening(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = io::Read::read_to_string(&mut err, &mut stderr);
            }
            return Err(format!("exited with {status}: {}", stderr.trim()));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not listening on port {port} after 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A SoftHSM2 token directory with its own configuration file.
///
/// SoftHSM2 reads its configuration from the `SOFTHSM2_CONF` environment variable when
/// the module is initialised, once per process; point it at [`SoftHsm::conf`] before the
/// first PKCS#11 call of the process (or in the environment of a child process).
pub struct SoftHsm {
    conf: PathBuf,
}

impl SoftHsm {
    /// Creates `dir/tokens` and `dir/softhsm2.conf` pointing at it.
    pub fn create(dir: &Path) -> Result<SoftHsm, SimError> {
        Self::module()?;
        require_program("softhsm2-util", "softhsm2")?;
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens)
            .map_err(io_err(format!("creating {}", tokens.display())))?;
        let conf = dir.join("softhsm2.conf");
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        );
        std::fs::write(&conf, text).map_err(io_err(format!("writing {}", conf.display())))?;
        Ok(SoftHsm { conf })
    }

    /// The PKCS#11 module path, if SoftHSM2 is installed.
    pub fn module() -> Result<PathBuf, SimError> {
        let module = PathBuf::from(SOFTHSM2_MODULE);
        if module.is_file() {
            Ok(module)
        } else {
            Err(SimError::Missing {
                what: format!("SoftHSM2 PKCS#11 module {SOFTHSM2_MODULE}"),
                package: "softhsm2",
            })
        }
    }

    /// The configuration file to put in `SOFTHSM2_CONF`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// Initialises a new token labelled `label` in the first free slot. The PINs are
    /// passed on softhsm2-util's command line, so use this for test tokens only.
    pub fn init_token(&self, label: &str, so_pin: &str, user_pin: &str) -> Result<(), SimError> {
        let output = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", so_pin, "--pin", user_pin])
            .output()
            .map_err(io_err("running softhsm2-util"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(SimError::Start(format!(
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_debian_package() {
        let err = require_program("pk-no-such-program", "pk-some-package").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("pk-no-such-program"), "{text}");
        assert!(text.contains("apt-get install pk-some-package"), "{text}");
    }
}
