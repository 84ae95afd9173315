//! A private pcscd with one vsmartcard `vpcd` reader, for the emulated PIV card.
//!
//! pcscd's client socket is global (`/run/pcscd/pcscd.comm`), so only one pcscd can run
//! on the machine at a time: no system pcscd may be running (starting fails with a clear
//! error when one is), and [`Pcscd::start`] waits for a machine-wide lock file so that
//! test processes running at the same time take turns. Within one process, hold a mutex
//! around each test as well, so that a test never sees another test's card.

use std::fs::{File, TryLockError};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{SimError, io_err, require_program};

/// The vpcd reader driver as Debian's `vsmartcard-vpcd` installs it.
pub(crate) const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
/// How many ports [`Pcscd::start`] tries for vpcd before it gives up.
const PORT_ATTEMPTS: u32 = 5;
/// The reader's name as PC/SC clients see it (they match "Yubico" or "YubiKey").
pub(crate) const READER_NAME: &str = "Yubico YubiKey Virtual";
/// pcscd's client socket.
const PCSCD_SOCKET: &str = "/run/pcscd/pcscd.comm";
/// How long [`Pcscd::start`] waits for another process's pcscd to go away.
const LOCK_WAIT: Duration = Duration::from_secs(300);

/// A pcscd running in the foreground with only the vpcd reader, stopped on drop.
pub struct Pcscd {
    child: Child,
    log: PathBuf,
    /// The TCP port vpcd listens on for the card (its channel id).
    port: u16,
    /// The machine-wide lock, released (closed) after the child is gone.
    _lock: Option<File>,
}

impl Pcscd {
    /// Writes the reader configuration into `dir` and starts pcscd with it; returns once
    /// vpcd listens for the card on [`Pcscd::card_addr`].
    ///
    /// vpcd's port is chosen per start, below the kernel's ephemeral range: a fixed port
    /// collides with a connection still in TIME_WAIT from the previous pcscd, or with a
    /// source port the kernel handed to some other connection.
    pub fn start(dir: &Path) -> Result<Pcscd, SimError> {
        let program = require_program("pcscd", "pcscd")?;
        if !Path::new(VPCD_DRIVER).is_file() {
            return Err(SimError::Missing {
                what: format!("vpcd reader driver {VPCD_DRIVER}"),
                package: "vsmartcard-vpcd",
            });
        }
        let lock = machine_lock()?;
        kill_stale();
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut last = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            let Some(port) = free_vpcd_port(attempt) else {
                continue;
            };
            match Self::spawn(&program, dir, port) {
                Ok(mut pcscd) => {
                    pcscd._lock = Some(lock);
                    return Ok(pcscd);
                }
                Err(e) => last = e,
            }
        }
        Err(SimError::Start(format!(
            "pcscd did not bring up the vpcd reader in {PORT_ATTEMPTS} attempts: {last}"
        )))
    }

    /// One try at starting pcscd with vpcd on `port` (stopped again on failure).
    fn spawn(program: &Path, dir: &Path, port: u16) -> Result<Pcscd, String> {
        let conf = dir.join("reader.conf");
        let text = format!(
            "FRIENDLYNAME \"{READER_NAME}\"\nDEVICENAME /dev/null:0x{port:04X}\nLIBPATH {VPCD_DRIVER}\nCHANNELID 0x{port:04X}\n"
        );
        std::fs::write(&conf, text).map_err(|e| format!("writing {}: {e}", conf.display()))?;
        let log = dir.join("pcscd.log");
        let out =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let child = Command::new(program)
            .arg("--foreground")
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting pcscd: {e}"))?;
        let mut pcscd = Pcscd {
            child,
            log,
            port,
            _lock: None,
        };
        let _ = std::fs::write(pid_file(), pcscd.child.id().to_string());
        let addr = pcscd.card_addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = pcscd.child.try_wait() {
                return Err(format!(
                    "pcscd exited with {status} (is another pcscd running?): {}",
                    pcscd.log_text()
                ));
            }
            let listening = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok();
            if listening && Path::new(PCSCD_SOCKET).exists() {
                return Ok(pcscd);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no vpcd reader on port {port} after 10 s: {}",
                    pcscd.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where the card connects (vpcd on loopback).
    pub fn card_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// What pcscd logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

/// A port for vpcd that nothing holds now: below the kernel's ephemeral range (so no
/// outgoing connection takes it meanwhile), different on every try and in every process.
fn free_vpcd_port(attempt: u32) -> Option<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12000, 32768);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let spread = low - 10000;
    let seed = nanos ^ std::process::id().rotate_left(16) ^ attempt.wrapping_mul(7919);
    let port = u16::try_from(10000 + seed % spread).ok()?;
    // vpcd listens on every address, so the port must be free on all of them.
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).ok()?;
    Some(port)
}

/// Where the running test pcscd's process id is kept, next to the lock file.
fn pid_file() -> PathBuf {
    std::env::temp_dir().join("pk-sim-pcscd.pid")
}

/// Stops a pcscd that a test process started and left behind when it died (it holds no
/// lock any more, since we hold it). Checks the command line, so that a reused process
/// id never hits another program.
fn kill_stale() {
    let Ok(pid) = std::fs::read_to_string(pid_file()) else {
        return;
    };
    let _ = std::fs::remove_file(pid_file());
    let pid = pid.trim();
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !(cmdline.contains("pcscd")
        && cmdline.contains("--config")
        && cmdline.contains("reader.conf"))
    {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Takes the lock file that one process at a time holds while its pcscd runs.
fn machine_lock() -> Result<File, SimError> {
    let path = std::env::temp_dir().join("pk-sim-pcscd.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(SimError::Start(format!(
                    "another process held {} for {} s (a test pcscd is running)",
                    path.display(),
                    LOCK_WAIT.as_secs()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(io_err(format!("locking {}", path.display()))(e));
            }
        }
    }
}

impl Pcscd {
    /// SIGTERM first, so that pcscd removes its socket and pid file; SIGKILL after 3 s.
    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(pid_file());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(pid_file());
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        self.terminate();
    }
}
