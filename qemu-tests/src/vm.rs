//! One virtual machine: a fresh swtpm (its own state directory, kept across the boots of
//! one machine), QEMU under TCG with UEFI firmware, the serial console in a file, and the
//! console's TCP port and the peer endpoint's UDP port forwarded to 127.0.0.1. Everything
//! is killed by PID when the [`Vm`] is dropped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Failure;

/// The console port on 127.0.0.1 (forwarded to the guest's 8443).
pub(crate) const CONSOLE_PORT: u16 = 18443;
/// The peer endpoint's UDP port on 127.0.0.1 (forwarded to the guest's 1314).
pub(crate) const PEER_PORT: u16 = 11314;

/// Which machine to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arch {
    /// q35 with OVMF's Secure Boot build (SMM) and a TPM (tpm-tis backed by swtpm).
    Amd64,
    /// `virt` with a Cortex-A72 and AAVMF; no TPM (Debian's arm64 kernel has no TIS
    /// driver for `virt`).
    Arm64,
}

/// A machine's disk, firmware variables and TPM state: what persists across its boots.
pub(crate) struct Machine {
    pub(crate) arch: Arch,
    pub(crate) dir: PathBuf,
    pub(crate) disk: PathBuf,
    vars: PathBuf,
    tpm_state: PathBuf,
    boots: u32,
    /// The time the machine's hardware clock starts at on the next boots (QEMU's
    /// `-rtc base=`), as a box without a battery clock would; none: the host's time.
    pub(crate) rtc_base: Option<String>,
}

/// OVMF's Secure Boot build (SMM) with a 4 MiB flash, and its variable store: the
/// machine's firmware.
const OVMF_4M: (&str, &str) = (
    "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
    "/usr/share/OVMF/OVMF_VARS_4M.fd",
);

impl Machine {
    /// A new machine in `dir` with a copy of `image` as its disk.
    pub(crate) fn new(arch: Arch, image: &Path, dir: &Path) -> Result<Machine, Failure> {
        std::fs::create_dir_all(dir.join("tpm"))?;
        let disk = dir.join("disk.img");
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&disk))?;
        let vars_template = match arch {
            Arch::Amd64 => OVMF_4M.1,
            Arch::Arm64 => "/usr/share/AAVMF/AAVMF_VARS.fd",
        };
        let vars = dir.join("vars.fd");
        std::fs::copy(vars_template, &vars)
            .map_err(|e| format!("{vars_template}: {e} (packages ovmf, qemu-efi-aarch64)"))?;
        Ok(Machine {
            arch,
            dir: dir.to_owned(),
            disk,
            vars,
            tpm_state: dir.join("tpm"),
            boots: 0,
            rtc_base: None,
        })
    }

    /// The machine a previous run left in `dir` (development: `--resume-at-d`).
    pub(crate) fn resume(arch: Arch, dir: &Path) -> Result<Machine, Failure> {
        let boots = std::fs::read_dir(dir)?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("serial-"))
            })
            .count() as u32;
        Ok(Machine {
            arch,
            dir: dir.to_owned(),
            disk: dir.join("disk.img"),
            vars: dir.join("vars.fd"),
            tpm_state: dir.join("tpm"),
            boots,
            rtc_base: None,
        })
    }

    /// The amd64 machine's QEMU command and its TPM: swtpm started on the machine's state.
    fn amd64(&self) -> Result<(Command, Child), Failure> {
        let socket = self.dir.join("swtpm.sock");
        let _ = std::fs::remove_file(&socket);
        let swtpm = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", self.tpm_state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--log")
            .arg(format!("file={}", self.dir.join("swtpm.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("swtpm: {e} (package swtpm)"))?;
        wait_until("swtpm's socket", Duration::from_secs(10), || {
            socket.exists()
        })?;
        let mut cmd = Command::new("qemu-system-x86_64");
        // OVMF's Secure Boot build: only SMM code writes its variable store. The store
        // starts empty (setup mode): systemd-boot enrols the image's keys on the first
        // start, and from then on only UKIs signed with them boot.
        cmd.args(["-machine", "q35,smm=on", "-cpu", "max"])
            .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                OVMF_4M.0
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                self.vars.display()
            ))
            .arg("-chardev")
            .arg(format!("socket,id=chrtpm,path={}", socket.display()))
            .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
            .args(["-device", "tpm-tis,tpmdev=tpm0"]);
        Ok((cmd, swtpm))
    }

    /// Powers the machine on; returns once QEMU runs (not once the guest is up).
    pub(crate) fn boot(&mut self) -> Result<Vm, Failure> {
        self.boots += 1;
        let serial = self.dir.join(format!("serial-{}.log", self.boots));
        let monitor = self.dir.join("monitor.sock");
        let _ = std::fs::remove_file(&monitor);
        let (mut cmd, swtpm) = match self.arch {
            Arch::Amd64 => {
                let (cmd, swtpm) = self.amd64()?;
                (cmd, Some(swtpm))
            }
            Arch::Arm64 => {
                let mut cmd = Command::new("qemu-system-aarch64");
                cmd.args(["-M", "virt", "-cpu", "cortex-a72"])
                    .arg("-drive")
                    .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd")
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=1,file={}", self.vars.display()));
                (cmd, None)
            }
        };
        if let Some(base) = &self.rtc_base {
            cmd.arg("-rtc").arg(format!("base={base}"));
        }
        cmd.args(["-accel", accelerator(self.arch)])
            .args(["-smp", "2", "-m", "2048"])
            // Entropy for the guest's early getrandom() calls.
            .args(["-device", "virtio-rng-pci"])
            .arg("-drive")
            .arg(format!("if=virtio,format=raw,file={}", self.disk.display()))
            // Not restrict=on: it breaks the UDP replies of the forwarded peer port.
            .arg("-nic")
            .arg(format!(
                "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{CONSOLE_PORT}-:8443,hostfwd=udp:127.0.0.1:{PEER_PORT}-:1314"
            ))
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", monitor.display()))
            // A reboot stays inside QEMU (systemd-boot's key enrolment, boot counting's
            // tries): the serial log goes on in the same file (see `Vm::mark`).
            .args(["-display", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("qemu-{}.log", self.boots)))?);
        let qemu = cmd.spawn().map_err(|e| format!("QEMU: {e}"))?;
        Ok(Vm {
            arch: self.arch,
            qemu: Some(qemu),
            swtpm,
            serial,
            monitor,
            started: Instant::now(),
        })
    }
}

/// TCG, unless KVM really works here: `/dev/kvm` writable, hardware virtualisation in
/// the CPU flags, and not the nested paravirtual KVM (`kvm_pvm`) that hangs Debian
/// kernels. Never KVM for a foreign architecture.
fn accelerator(arch: Arch) -> &'static str {
    if arch != Arch::Amd64 || !cfg!(target_arch = "x86_64") {
        return "tcg";
    }
    let writable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpu
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if writable && flags && !pvm {
        "kvm"
    } else {
        "tcg"
    }
}

/// A running machine.
pub(crate) struct Vm {
    pub(crate) arch: Arch,
    qemu: Option<Child>,
    swtpm: Option<Child>,
    pub(crate) serial: PathBuf,
    monitor: PathBuf,
    started: Instant,
}

impl Vm {
    /// The serial console so far, without colour codes and carriage returns.
    pub(crate) fn serial_text(&self) -> String {
        let raw = std::fs::read(&self.serial).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&raw))
    }

    /// Where the serial console is now: [`Vm::wait_serial_since`] looks only after it
    /// (the lines of a boot after a reboot inside the same QEMU).
    pub(crate) fn mark(&self) -> usize {
        self.serial_text().len()
    }

    /// Waits (up to `timeout` since power-on) until the serial console shows `needle`.
    pub(crate) fn wait_serial(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, Failure> {
        self.wait_serial_since(0, needle, timeout)
    }

    /// [`Vm::wait_serial`] for what the console shows after `mark`; the text after it.
    pub(crate) fn wait_serial_since(
        &mut self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, Failure> {
        let waiting = Instant::now();
        loop {
            let all = self.serial_text();
            let text = all.get(mark..).unwrap_or_default().to_owned();
            if text.contains(needle) {
                return Ok(text);
            }
            if let Some(qemu) = &mut self.qemu
                && let Ok(Some(status)) = qemu.try_wait()
            {
                return Err(format!(
                    "QEMU exited ({status}) before the serial console showed {needle:?}; last lines:\n{}",
                    tail(&text, 25)
                )
                .into());
            }
            // From power-on for the whole log; from the call for a later boot's lines.
            let elapsed = if mark == 0 {
                self.started.elapsed()
            } else {
                waiting.elapsed()
            };
            if elapsed > timeout {
                return Err(format!(
                    "no {needle:?} on the serial console within {} s; last lines:\n{}",
                    timeout.as_secs(),
                    tail(&text, 25)
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Sends a command to QEMU's monitor and waits (3 s at most) for its echo: QEMU drops
    /// a command whose connection closes before it is read.
    fn monitor(&self, command: &str) {
        let Ok(mut monitor) = std::os::unix::net::UnixStream::connect(&self.monitor) else {
            return;
        };
        let _ = monitor.write_all(format!("{command}\n").as_bytes());
        let _ = monitor.set_read_timeout(Some(Duration::from_millis(200)));
        let echo = format!("{command}\u{1b}[K");
        let mut echoed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline && !String::from_utf8_lossy(&echoed).contains(&echo) {
            if let Ok(n) = std::io::Read::read(&mut monitor, &mut buf) {
                echoed.extend_from_slice(&buf[..n]);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    /// What the machine's screen shows, as a PNG file at `path` (QEMU's `screendump`).
    pub(crate) fn screenshot(&self, path: &Path) -> Result<(), Failure> {
        let _ = std::fs::remove_file(path);
        self.monitor(&format!("screendump {} -f png", path.display()));
        wait_until("the screenshot", Duration::from_secs(10), || {
            // Whole once the PNG's closing chunk is there.
            std::fs::read(path).is_ok_and(|png| png.ends_with(b"IEND\xAE\x42\x60\x82"))
        })
    }

    /// Seconds since power-on.
    pub(crate) fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// ACPI power button, as a user shutting the box down; waits for the guest to power
    /// off (then kills QEMU if it has not within `timeout`).
    pub(crate) fn shutdown(mut self, timeout: Duration) -> Result<(), Failure> {
        self.monitor("system_powerdown");
        let deadline = Instant::now() + timeout;
        let Some(mut qemu) = self.qemu.take() else {
            return Ok(());
        };
        while Instant::now() < deadline {
            if qemu.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = qemu.kill();
        let _ = qemu.wait();
        Err(format!(
            "the guest did not power off within {} s; last lines:\n{}",
            timeout.as_secs(),
            tail(&self.serial_text(), 15)
        )
        .into())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for child in [self.qemu.as_mut(), self.swtpm.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("timed out after {} s waiting for {what}", timeout.as_secs()).into())
}

/// Runs a command; its stderr in the error when it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<String, Failure> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} {:?} failed: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
