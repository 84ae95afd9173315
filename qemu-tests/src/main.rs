//! The appliance image's end-to-end suite: the real disk images, booted in QEMU (TCG;
//! KVM only where it really works) with UEFI firmware and, on amd64, a fresh software TPM
//! (swtpm), driven from outside through the forwarded console and peer ports.
//!
//! ```text
//! pk-qemu-tests --amd64 target/image/amd64 [--arm64 target/image/arm64] [--pk PATH]
//! ```
//!
//! Each machine, with the process that drives it, runs in a network namespace of its own
//! (`unshare --net`, loopback only): neither the guest nor the test can reach any other
//! network. One VM runs at a time. Scenarios (issue 8):
//!
//! - a. boot: the service reports READY (systemd prints "Started pk-appliance.service"
//!   only after READY=1 for a Type=notify unit), and the console answers over HTTPS with
//!   the certificate whose fingerprint the appliance printed;
//! - b. first-boot setup through the API with the setup code read from the serial
//!   console; the first TPM keyslot is bound to boot-chain PCRs; a vault with secrets;
//! - c. reboot: the data partition opens through its TPM slot and the appliance unlocks
//!   by itself through the TPM;
//! - l. with the box off, the data partition of the raw disk holds none of the admin
//!   password, an Argon2id hash, a PKCS#8 private key, planted vault names, secret paths
//!   and values (issue 16);
//! - m. the data partition as b left it, written back after c: refused by itself (the
//!   TPM's counter is past its generation), accepted with the recovery code, and b's
//!   state is what runs;
//! - d. tamper: the unified kernel image is replaced by one with another kernel command
//!   line; the measured PCRs change, so the data partition stays locked and the locked
//!   data console takes the recovery code (a wrong one refused); then the appliance stays
//!   locked, the console offers recovery, and the recovery code unlocks;
//! - e. a "laptop" node on the host is shared a vault by the appliance and clones it over
//!   the forwarded QUIC port; an edit made on the laptop comes back by the appliance's
//!   scheduled pull;
//! - g to k: updates (`updates.rs`);
//! - f. the arm64 image boots under `qemu-system-aarch64 -M virt -cpu cortex-a72` and the
//!   service reports READY.
//!
//! The last line is `N passed, N failed`; the exit status is 1 if any failed.

#![forbid(unsafe_code)]

mod clock;
mod console;
mod esp;
mod updates;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use console::Console;
use vm::{Arch, Machine, PEER_PORT, run, tail, wait_until};

/// A scenario's failure, in words.
pub(crate) type Failure = Box<dyn std::error::Error + Send + Sync>;

/// How long one boot may take until the appliance is up, under TCG (amd64 takes about a
/// minute here; arm64 several).
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const ARM64_BOOT_TIMEOUT: Duration = Duration::from_secs(900);
pub(crate) const ADMIN_PASSWORD: &str = "qemu suite admin password";
const LAPTOP_PASSPHRASE: &str = "laptop node passphrase";
/// The appliance's address of the host's loopback, through QEMU's user-mode network.
const HOST_FROM_GUEST: &str = "10.0.2.2";

struct Args {
    amd64: Option<PathBuf>,
    arm64: Option<PathBuf>,
    pk: PathBuf,
    work: PathBuf,
    /// The keys the images were signed with (image/make-keys.sh): the suite signs the
    /// UKIs it makes with them.
    keys: PathBuf,
    group: Option<String>,
    /// Development: keep the amd64 machine of the last run and start at scenario d.
    resume: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: pk-qemu-tests [--amd64 BUILD_DIR] [--arm64 BUILD_DIR] [--pk PATH] [--work DIR] [--keys DIR]\n\
         BUILD_DIR is image/build.sh's output (the disk image, uki.efi, vmlinuz, initrd.img, rootfs/)."
    );
    std::process::exit(64)
}

fn args() -> Args {
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_default();
    let mut args = Args {
        amd64: None,
        arm64: None,
        pk: here.join("pk"),
        work: PathBuf::from("target/qemu-tests"),
        keys: PathBuf::from("target/image/keys"),
        group: None,
        resume: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().map(PathBuf::from).unwrap_or_else(|| usage());
        match arg.as_str() {
            "--amd64" => args.amd64 = Some(value()),
            "--arm64" => args.arm64 = Some(value()),
            "--pk" => args.pk = value(),
            "--work" => args.work = value(),
            "--keys" => args.keys = value(),
            "--group" => args.group = Some(value().display().to_string()),
            "--resume-at-d" => args.resume = true,
            _ => usage(),
        }
    }
    if args.amd64.is_none() && args.arm64.is_none() {
        usage();
    }
    args
}

/// Every host program the suite runs, with the Debian package that has it, checked before
/// the first boot so that a missing one fails in a second, naming its package.
fn check_tools(args: &Args) -> Result<(), String> {
    let mut tools = vec![
        ("curl", "curl"),
        ("openssl", "openssl"),
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
        ("cp", "coreutils"),
        ("objcopy", "binutils"),
        ("sfdisk", "fdisk"),
        ("mcopy", "mtools"),
        ("mdir", "mtools"),
        ("mdel", "mtools"),
        ("sbsign", "sbsigntool"),
        ("veritysetup", "cryptsetup-bin"),
        ("mkfs.erofs", "erofs-utils"),
    ];
    if args.amd64.is_some() {
        tools.extend([
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("swtpm", "swtpm"),
            ("chronyd", "chrony"),
        ]);
    }
    if args.arm64.is_some() {
        tools.push(("qemu-system-aarch64", "qemu-system-arm"));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .map(|(tool, package)| format!("  {tool} (Debian package {package})"))
        .collect();
    if !args.pk.is_file() {
        missing.push(format!(
            "  {} (cargo build -p node -p pk-node --bin pk --bin pk-node)",
            args.pk.display()
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("\n"))
    }
}

/// The scenarios of each group, in the order they run. A group that reports a scenario not
/// listed here fails the run: a new scenario cannot pass unseen.
const AMD64: &[&str] = &[
    "a", "b", "c", "n", "l", "m", "d", "e", "g", "h", "i", "j", "k",
];
const ARM64: &[&str] = &["f"];

fn main() {
    let args = args();
    if let Some(group) = &args.group {
        // Inside the group's network namespace.
        let code = match group_main(&args, group) {
            Ok(()) => 0,
            Err(e) => {
                println!("ABORT {}", e.to_string().replace('\n', "\\n"));
                1
            }
        };
        std::process::exit(code);
    }
    if let Err(missing) = check_tools(&args) {
        eprintln!("pk-qemu-tests: missing what the suite needs:\n{missing}");
        std::process::exit(69);
    }
    let mut passed = 0;
    let mut failed = 0;
    let groups = [
        ("amd64", args.amd64.is_some(), AMD64),
        ("arm64", args.arm64.is_some(), ARM64),
    ];
    for (group, wanted, scenarios) in groups {
        if !wanted {
            continue;
        }
        let results = run_group(&args, group);
        for (name, _) in results
            .iter()
            .filter(|(n, _)| !scenarios.contains(&n.as_str()))
        {
            failed += 1;
            println!(
                "scenario {name}: FAILED: reported by the {group} machine but not in the suite's list"
            );
        }
        for name in scenarios.iter() {
            match results.iter().find(|(n, _)| n == name) {
                Some((_, Ok(()))) => {
                    passed += 1;
                    println!("scenario {name}: passed");
                }
                Some((_, Err(why))) => {
                    failed += 1;
                    println!("scenario {name}: FAILED: {why}");
                }
                None => {
                    failed += 1;
                    println!(
                        "scenario {name}: FAILED: not run (an earlier step of the {group} machine failed)"
                    );
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Runs one machine's scenarios in a new network namespace; what each scenario reported.
fn run_group(args: &Args, group: &str) -> Vec<(String, Result<(), String>)> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pk-qemu-tests"));
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--"]).arg(exe).arg("--group").arg(group);
    for (flag, value) in [("--amd64", &args.amd64), ("--arm64", &args.arm64)] {
        if let Some(v) = value {
            cmd.arg(flag).arg(v);
        }
    }
    cmd.arg("--pk")
        .arg(&args.pk)
        .arg("--work")
        .arg(&args.work)
        .arg("--keys")
        .arg(&args.keys);
    if args.resume {
        cmd.arg("--resume-at-d");
    }
    eprintln!("== {group}: booting in a network namespace of its own");
    let out = match cmd.stderr(Stdio::inherit()).output() {
        Ok(out) => out,
        Err(e) => return vec![("?".into(), Err(format!("cannot run unshare: {e}")))],
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut results = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("PASS ") {
            results.push((rest.trim().to_owned(), Ok(())));
        } else if let Some(rest) = line.strip_prefix("FAIL ") {
            let (name, why) = rest.split_once(' ').unwrap_or((rest, ""));
            results.push((name.to_owned(), Err(why.replace("\\n", "\n"))));
        } else if let Some(why) = line.strip_prefix("ABORT ") {
            eprintln!("{group}: {}", why.replace("\\n", "\n"));
        }
    }
    results
}

/// Reports a scenario's outcome to the parent (one line each).
pub(crate) fn report(name: &str, result: &Result<(), Failure>) {
    match result {
        Ok(()) => println!("PASS {name}"),
        Err(e) => println!("FAIL {name} {}", e.to_string().replace('\n', "\\n")),
    }
    eprintln!(
        "   scenario {name}: {}",
        if result.is_ok() { "passed" } else { "FAILED" }
    );
}

fn group_main(args: &Args, group: &str) -> Result<(), Failure> {
    run(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    let work = args.work.join(group);
    if !args.resume {
        let _ = std::fs::remove_dir_all(&work);
    }
    std::fs::create_dir_all(&work)?;
    let work = work.canonicalize()?;
    match group {
        "amd64" => amd64(args, &work),
        "arm64" => arm64(args, &work),
        other => Err(format!("no group {other}").into()),
    }
}

/// The disk image in an image/build.sh output directory.
fn image_in(dir: &Path, arch: &str) -> PathBuf {
    dir.join(format!("pk-appliance-{arch}.img"))
}

/// What the first boot showed: the setup code and the certificate's fingerprint.
struct FirstBoot {
    code: String,
    fingerprint: String,
}

/// Waits for the appliance on the serial console; the service is READY once systemd
/// says it started (Type=notify).
fn appliance_up(vm: &mut vm::Vm) -> Result<String, Failure> {
    let timeout = match vm.arch {
        Arch::Amd64 => BOOT_TIMEOUT,
        Arch::Arm64 => ARM64_BOOT_TIMEOUT,
    };
    vm.wait_serial("console at https://", timeout)?;
    let text = vm.wait_serial("Started pk-appliance.serv", timeout)?;
    eprintln!("   the appliance is up {} s after power-on", vm.uptime());
    Ok(text)
}

fn scenario_a(vm: &mut vm::Vm, console: &Console) -> Result<FirstBoot, Failure> {
    let serial = appliance_up(vm)?;
    let line = serial
        .lines()
        .find(|l| l.contains("console at https://"))
        .ok_or("no console line")?;
    let fingerprint = line
        .split("certificate SHA-256 ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| format!("no fingerprint in {line:?}"))?
        .to_owned();
    // The console listens on every address; the line names the one the box got by DHCP
    // (QEMU's user network hands out 10.0.2.15), not 0.0.0.0.
    if vm.arch == Arch::Amd64 && !line.contains("console at https://10.0.2.15:8443/") {
        return Err(format!("the console line does not name the box's address: {line:?}").into());
    }
    let code = serial
        .lines()
        .find_map(|l| l.split("setup code ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .ok_or("no setup code on the serial console")?
        .to_owned();
    console.reachable(Duration::from_secs(120))?;
    let presented = console::presented_fingerprint()?;
    if presented != fingerprint {
        return Err(format!(
            "the console presents {presented}, the appliance printed {fingerprint}"
        )
        .into());
    }
    // systemd shortens the unit's name to fit the line: "pk-appliance-scree…".
    if vm.arch == Arch::Amd64 && !vm.serial_text().contains("Started pk-appliance-scree") {
        return Err(
            "systemd did not start pk-appliance-screen.service (the status on tty1)".into(),
        );
    }
    if serial.contains("login:") {
        return Err("the serial console offers a login prompt".into());
    }
    Ok(FirstBoot { code, fingerprint })
}

fn scenario_b(vm: &vm::Vm, console: &mut Console, first: &FirstBoot) -> Result<String, Failure> {
    let recovery = console.setup(&first.code, ADMIN_PASSWORD)?;
    // Setup hands the recovery code to the data partition too (pk-data-enrol.socket); a
    // failure is on the serial console.
    if vm
        .serial_text()
        .contains("could not be added to the data volume")
    {
        return Err(format!(
            "setup could not add the recovery code to the data partition:\n{}",
            tail(&vm.serial_text(), 5)
        )
        .into());
    }
    let status = console.unlocked(Duration::from_secs(120))?;
    if status["fingerprint"] != first.fingerprint.as_str() {
        return Err(format!("/api/status shows another fingerprint: {status}").into());
    }
    let slots = console.ok("GET", "/api/keyslots", None)?;
    let tpm = slots
        .as_array()
        .and_then(|s| s.iter().find(|s| s["kind"] == "tpm"))
        .ok_or_else(|| format!("no TPM keyslot: {slots}"))?;
    // Bound to PCR 11 values the project signed (so an update keeps unlocking it) and to
    // the firmware, the Secure Boot state and what came from outside the UKI (nothing) at
    // enrolment.
    if tpm["pcrs"] != "sha256:0,7,12" || tpm["signed_pcrs"] != "sha256:11" {
        return Err(format!(
            "the TPM keyslot is not bound to PCRs 0,7,12 and signed PCR 11 values: {tpm}"
        )
        .into());
    }
    console.ok("POST", "/api/vaults", Some(json!({ "name": "office" })))?;
    for (path, value) in [("wifi", "office-wifi-key"), ("alarm", "2468")] {
        console.ok(
            "POST",
            "/api/vaults/office/secrets",
            Some(json!({ "path": path, "value": value })),
        )?;
    }
    let wifi = console.reveal("office", "wifi")?;
    if wifi != "office-wifi-key" {
        return Err(format!("the secret reads back as {wifi:?}").into());
    }
    Ok(recovery)
}

fn scenario_c(vm: &mut vm::Vm, console: &mut Console) -> Result<(), Failure> {
    appliance_up(vm)?;
    // At once: not through the locked data console after a failed first try.
    let serial = vm.serial_text();
    if !serial.contains("opened pk-data through its TPM slot")
        || serial.contains("the data volume is locked")
    {
        return Err("the data partition did not open through its TPM slot at once".into());
    }
    console.reachable(Duration::from_secs(120))?;
    console.login(ADMIN_PASSWORD)?;
    // Nobody unlocks: the TPM does, because the boot chain is what it was.
    console.unlocked(Duration::from_secs(120))?;
    let wifi = console.reveal("office", "wifi")?;
    if wifi != "office-wifi-key" {
        return Err(format!("after the reboot the secret reads {wifi:?}").into());
    }
    // For l: names and a value that nothing else on the disk could hold by chance.
    console.ok("POST", "/api/vaults", Some(json!({ "name": PLANTED[0] })))?;
    console.ok(
        "POST",
        &format!("/api/vaults/{}/secrets", PLANTED[0]),
        Some(json!({ "path": PLANTED[1], "value": PLANTED[2] })),
    )?;
    Ok(())
}

/// `size` bytes of `file` from `start`.
fn read_range(file: &Path, start: u64, size: u64) -> Result<Vec<u8>, Failure> {
    use std::io::{Read as _, Seek as _};
    let mut file = std::fs::File::open(file)?;
    file.seek(std::io::SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity(usize::try_from(size)?);
    file.take(size).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes `bytes` over `file` at `start`.
fn write_range(file: &Path, start: u64, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::{Seek as _, Write as _};
    let mut file = std::fs::OpenOptions::new().write(true).open(file)?;
    file.seek(std::io::SeekFrom::Start(start))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// m: the data partition as it was after b, written back after c changed it: the box
/// refuses to open it by itself and says why, the recovery code accepts it, and the
/// appliance then runs on that older state (c's vault is not there, b's is).
fn scenario_m(vm: &mut vm::Vm, console: &mut Console, recovery: &str) -> Result<(), Failure> {
    vm.wait_serial("the data volume is locked", BOOT_TIMEOUT)?;
    console.reachable(Duration::from_secs(120))?;
    let state = console.call("GET", "/api/data", None)?;
    let reason = state["reason"].as_str().unwrap_or_default().to_owned();
    if state["state"] != "data_locked" || !reason.contains("older copy") {
        return Err(format!("the rolled-back partition is not refused as one: {state}").into());
    }
    open_data(console, recovery)?;
    appliance_up(vm)?;
    console.reachable(Duration::from_secs(120))?;
    console.login(ADMIN_PASSWORD)?;
    console.unlocked(Duration::from_secs(120))?;
    let vaults = console.ok("GET", "/api/vaults", None)?.to_string();
    if !vaults.contains("\"office\"") || vaults.contains(PLANTED[0]) {
        return Err(format!("the accepted older state is not b's: vaults {vaults}").into());
    }
    eprintln!("   refused ({reason}); accepted with the recovery code, b's state is back");
    Ok(())
}

/// l's planted vault name, secret path and value (created in c).
const PLANTED: [&str; 3] = [
    "qemu-planted-vault-name",
    "qemu/planted/secret-path",
    "qemu-planted-secret-value-7d1f0c",
];

/// l: with the box off, the data partition of the raw disk holds none of what the box
/// keeps: the admin password or any Argon2id hash, a PKCS#8 P-256 private key (the
/// console's TLS key is one), the vault names, the secret paths and values, which the
/// journal and the files on it would otherwise show.
fn scenario_l(machine: &Machine) -> Result<(), Failure> {
    let (start, size) = esp::partition(&machine.disk, "pk-data")?;
    // A PKCS#8 ECDSA P-256 private key's first 36 bytes: whatever the key, they are these.
    const PKCS8_P256: [u8; 36] = [
        0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d,
        0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30,
        0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
    ];
    let probes: Vec<(&str, &[u8])> = vec![
        ("the admin password", ADMIN_PASSWORD.as_bytes()),
        ("an Argon2id hash", b"$argon2id$"),
        ("a PKCS#8 P-256 private key", &PKCS8_P256),
        ("the vault name", PLANTED[0].as_bytes()),
        ("the secret path", PLANTED[1].as_bytes()),
        ("the secret value", PLANTED[2].as_bytes()),
        ("the first vault's secret value", b"office-wifi-key"),
    ];
    let partition = read_range(&machine.disk, start, size)?;
    let found: Vec<String> = probes
        .iter()
        .filter_map(|(what, probe)| {
            let hits = partition
                .windows(probe.len())
                .filter(|w| w == probe)
                .count();
            (hits > 0).then(|| format!("{what} ({hits} times)"))
        })
        .collect();
    if !found.is_empty() {
        return Err(format!("the data partition shows {}", found.join(", ")).into());
    }
    eprintln!(
        "   the data partition ({} MiB) holds none of the {} probes",
        size >> 20,
        probes.len()
    );
    Ok(())
}

/// Replaces the disk's unified kernel image by one with another kernel command line (or
/// puts the original back). The tampered one is signed for Secure Boot with the project's
/// key and carries the original's PCR 11 signature, which no longer matches what the stub
/// measures: it boots, and the TPM refuses it.
fn swap_uki(machine: &Machine, build: &Path, keys: &Path, tampered: bool) -> Result<(), Failure> {
    let original = build.join("uki.efi");
    let uki = if tampered {
        let cmdline = std::fs::read_to_string(build.join("cmdline.txt"))?;
        let out = machine.dir.join("tampered.efi");
        let unsigned = machine.dir.join("tampered.unsigned.efi");
        esp::make_uki(
            build,
            keys,
            &format!("{} pk.tampered=1", cmdline.trim()),
            &build.join("rootfs/usr/lib/os-release"),
            &unsigned,
        )?;
        esp::sign(keys, &unsigned, &out)?;
        out
    } else {
        original
    };
    let name = format!("pk-appliance-{}.efi", &esp::roothash(build)?[..16]);
    esp::put(&machine.disk, &uki, &format!("EFI/Linux/{name}"))
}

fn scenario_d(vm: &mut vm::Vm, console: &mut Console, recovery: &str) -> Result<(), Failure> {
    data_gate(vm, console, recovery)?;
    let serial = appliance_up(vm)?;
    if !serial.contains("pk.tampered=1") {
        return Err("the tampered command line did not reach the kernel".into());
    }
    console.reachable(Duration::from_secs(120))?;
    console.login(ADMIN_PASSWORD)?;
    let status = console.settled_state(Duration::from_secs(120))?;
    // The agent tries the TPM at start; give it time to have tried.
    std::thread::sleep(Duration::from_secs(10));
    let status = match console.ok("GET", "/api/status", None)? {
        s if s["state"] == "locked" => s,
        other => {
            return Err(format!(
                "with a changed boot chain the node is not locked: {other} (first {status})"
            )
            .into());
        }
    };
    let vaults = console.call("GET", "/api/vaults", None)?;
    if vaults["error"] != "the node is locked" {
        return Err(format!("a locked node answers vaults: {vaults}").into());
    }
    let page = console.page("/status")?;
    if !page.contains("value=\"recovery\"") {
        return Err("the status page offers no recovery-code unlock".into());
    }
    let tpm = console.call("POST", "/api/unlock", Some(json!({ "method": "tpm" })))?;
    if tpm.get("error").is_none() {
        return Err(format!("the TPM unlocked a tampered boot: {tpm}").into());
    }
    unlock_with_recovery(console, recovery, "after recovery")?;
    eprintln!(
        "   locked with the tampered kernel command line ({}), opened with the recovery code",
        status["state"]
    );
    Ok(())
}

/// Unlocks the node with the recovery code; b's secret must read back (`when` says when,
/// in the failure).
fn unlock_with_recovery(console: &Console, recovery: &str, when: &str) -> Result<(), Failure> {
    console.ok(
        "POST",
        "/api/unlock",
        Some(json!({ "method": "recovery", "secret": recovery })),
    )?;
    console.unlocked(Duration::from_secs(30))?;
    let wifi = console.reveal("office", "wifi")?;
    if wifi != "office-wifi-key" {
        return Err(format!("{when} the secret reads {wifi:?}").into());
    }
    Ok(())
}

/// d's first part: the TPM refuses the data partition too, so the box serves the locked
/// data console instead of the appliance; a wrong recovery code is refused there, the
/// right one opens the partition (without sealing the TPM slot again: this boot chain is
/// not the owner's), and the appliance starts.
fn data_gate(vm: &mut vm::Vm, console: &Console, recovery: &str) -> Result<(), Failure> {
    vm.wait_serial("the data volume is locked", BOOT_TIMEOUT)?;
    console.reachable(Duration::from_secs(120))?;
    let state = console.call("GET", "/api/data", None)?;
    if state["state"] != "data_locked" {
        return Err(format!("the locked data console says {state}").into());
    }
    let reason = state["reason"].as_str().unwrap_or_default();
    if !reason.contains("tpm") && !reason.contains("TPM") {
        return Err(format!("the reason does not name the TPM: {state}").into());
    }
    let wrong = console.call(
        "POST",
        "/api/data/unlock",
        Some(json!({ "recovery_code": "abandon ".repeat(23) + "art", "reseal": false })),
    )?;
    if wrong.get("error").is_none() {
        return Err(format!("a wrong recovery code opened the data partition: {wrong}").into());
    }
    open_data(console, recovery)?;
    eprintln!("   the data partition was locked ({reason}); the recovery code opened it");
    Ok(())
}

/// Opens the locked data partition with the recovery code, leaving the TPM slot as it is.
fn open_data(console: &Console, recovery: &str) -> Result<(), Failure> {
    let opened = console.call(
        "POST",
        "/api/data/unlock",
        Some(json!({ "recovery_code": recovery, "reseal": false })),
    )?;
    if opened.get("ok").is_none() {
        return Err(format!("the recovery code did not open the data partition: {opened}").into());
    }
    Ok(())
}

/// A laptop: a `pk` node on the host with its agent on 127.0.0.1.
struct Laptop {
    pk: PathBuf,
    dir: PathBuf,
    pass: PathBuf,
}

impl Laptop {
    fn pk(&self, args: &[&str]) -> Result<String, Failure> {
        run(Command::new(&self.pk)
            .arg("--node-path")
            .arg(self.dir.join("node"))
            .args(args)
            .env("PK_PEER_LISTEN", "127.0.0.1:0")
            .env_remove("PK_NODE_PATH")
            .env_remove("PK_PASSWORD"))
    }

    fn start(pk: &Path, dir: &Path) -> Result<(Laptop, String, String), Failure> {
        std::fs::create_dir_all(dir)?;
        let pass = dir.join("pass");
        std::fs::write(&pass, LAPTOP_PASSPHRASE)?;
        let laptop = Laptop {
            pk: pk.to_owned(),
            dir: dir.to_owned(),
            pass,
        };
        let pass = laptop.pass.display().to_string();
        laptop.pk(&[
            "init",
            "--token",
            "soft",
            "--argon2-memory-mib",
            "8",
            "--argon2-passes",
            "1",
            "--password-file",
            &pass,
        ])?;
        laptop.pk(&["agent", "start", "--password-file", &pass])?;
        let status: serde_json::Value =
            serde_json::from_str(&laptop.pk(&["--format", "json", "agent", "status"])?)?;
        let id = status["node_id"]
            .as_str()
            .ok_or("no laptop NodeId")?
            .to_owned();
        let port = status["peer_addr"]
            .as_str()
            .and_then(|a| a.rsplit(':').next())
            .ok_or("no laptop peer address")?
            .to_owned();
        Ok((laptop, id, port))
    }
}

impl Drop for Laptop {
    fn drop(&mut self) {
        let _ = self.pk(&["agent", "stop"]);
    }
}

fn scenario_e(console: &Console, pk: &Path, dir: &Path) -> Result<(), Failure> {
    let (laptop, laptop_id, laptop_port) = Laptop::start(pk, dir)?;
    let status = console.ok("GET", "/api/status", None)?;
    let appliance_id = status["node_id"]
        .as_str()
        .ok_or("no appliance NodeId")?
        .to_owned();
    // The appliance reaches the laptop through QEMU's user network; the laptop reaches
    // the appliance through the forwarded UDP port, with the console's pairing address.
    console.ok(
        "POST",
        "/api/peers",
        Some(json!({ "node_id": laptop_id, "addr": format!("{HOST_FROM_GUEST}:{laptop_port}") })),
    )?;
    laptop.pk(&[
        "nodes",
        "add",
        &format!("pk://{appliance_id}@127.0.0.1:{PEER_PORT}"),
    ])?;
    console.ok(
        "POST",
        "/api/vaults/office/share",
        Some(json!({ "who": laptop_id, "grant": true })),
    )?;
    laptop.pk(&["vaults", "clone", "office", &appliance_id])?;
    let wifi = laptop.pk(&["secrets", "cat", "office:wifi"])?;
    if wifi != "office-wifi-key" {
        return Err(format!("the laptop's clone reads {wifi:?}").into());
    }
    // An edit on the laptop, shared back, comes home by the appliance's scheduled pull.
    let note = dir.join("note");
    std::fs::write(&note, "edited on the laptop")?;
    laptop.pk(&[
        "secrets",
        "create",
        &note.display().to_string(),
        "office:laptop-note",
    ])?;
    laptop.pk(&["vaults", "share", "office", &appliance_id])?;
    console.ok(
        "POST",
        "/api/backups",
        Some(json!({ "vault": "office", "node_id": laptop_id, "every_s": 10, "name": "office" })),
    )?;
    let mut last = String::new();
    wait_until(
        "the scheduled pull of the laptop's edit",
        Duration::from_secs(120),
        || {
            last = console
                .reveal("office", "laptop-note")
                .unwrap_or_else(|e| e.to_string());
            last == "edited on the laptop"
        },
    )
    .map_err(|e| format!("{e}; last read: {last}"))?;
    let backups = console.ok("GET", "/api/backups", None)?;
    if backups[0]["last"]["ok"] != true {
        return Err(format!("the backups page shows no successful pull: {backups}").into());
    }
    Ok(())
}

fn amd64(args: &Args, work: &Path) -> Result<(), Failure> {
    let build = args.amd64.clone().ok_or("no --amd64")?;
    // The update bundles of g to k, made while the first boots run.
    let bundles = {
        let (build, keys, dir) = (build.clone(), args.keys.clone(), work.join("bundles"));
        std::thread::spawn(move || updates::make(&build, &keys, &dir))
    };
    if args.resume {
        let mut machine = Machine::resume(Arch::Amd64, work)?;
        let mut console = Console::new(work.join("cookies.txt"));
        let recovery = std::fs::read_to_string(work.join("recovery.txt"))?;
        return tampered(args, &build, &mut machine, &mut console, &recovery, bundles);
    }
    let mut machine = Machine::new(Arch::Amd64, &image_in(&build, "amd64"), work)?;
    let mut console = Console::new(work.join("cookies.txt"));

    // a, b: the first boot.
    let mut vm = machine.boot()?;
    let first = scenario_a(&mut vm, &console);
    // For review: a PC's screen shows the setup code and the address too
    // (pk-appliance screen on tty1, with a QR code), for boxes without a serial port.
    let screen = work.join("screen-first-boot.png");
    // The screen redraws every 3 s from the daemon's status, written every 3 s.
    std::thread::sleep(Duration::from_secs(6));
    match vm.screenshot(&screen) {
        Ok(()) => eprintln!("   the screen at first boot: {}", screen.display()),
        Err(e) => eprintln!("   no screenshot of the first boot: {e}"),
    }
    report(
        "a",
        &first.as_ref().map(|_| ()).map_err(|e| e.to_string().into()),
    );
    let first = first?;
    let recovery = scenario_b(&vm, &mut console, &first);
    report(
        "b",
        &recovery
            .as_ref()
            .map(|_| ())
            .map_err(|e| e.to_string().into()),
    );
    let recovery = recovery?;
    // Kept for --resume-at-d only (a throwaway machine's recovery code).
    std::fs::write(work.join("recovery.txt"), &recovery)?;
    // n, first part: the time server set in the settings and applied.
    let time_server = clock::TimeServer::start(&work.join("time-server"))?;
    let n = clock::set_time_server(&mut vm, &mut console);
    vm.shutdown(Duration::from_secs(120))?;
    drop(time_server);
    // For m: the data partition as b left it.
    let (data_start, data_size) = esp::partition(&machine.disk, "pk-data")?;
    let after_b = read_range(&machine.disk, data_start, data_size)?;

    // c: a reboot, with n's second part (the setting is still there); l: the disk with
    // the box off.
    let mut vm = machine.boot()?;
    let c = scenario_c(&mut vm, &mut console);
    report("c", &c);
    c?;
    let n = n.and_then(|()| clock::server_setting_kept(&console, "after the reboot"));
    report("n", &n);
    vm.shutdown(Duration::from_secs(120))?;
    report("l", &scenario_l(&machine));

    // m: b's copy of the data partition written back.
    write_range(&machine.disk, data_start, &after_b)?;
    drop(after_b);
    let mut vm = machine.boot()?;
    let m = scenario_m(&mut vm, &mut console, &recovery);
    report("m", &m);
    if m.is_err() {
        eprintln!("{}", tail(&vm.serial_text(), 30));
    }
    m?;
    vm.shutdown(Duration::from_secs(120))?;

    tampered(args, &build, &mut machine, &mut console, &recovery, bundles)
}

/// d: a tampered boot chain; e in the same boot, once the recovery code has opened it;
/// then the updates, g to k, from there.
fn tampered(
    args: &Args,
    build: &Path,
    machine: &mut Machine,
    console: &mut Console,
    recovery: &str,
    bundles: std::thread::JoinHandle<Result<updates::Bundles, Failure>>,
) -> Result<(), Failure> {
    let work = machine.dir.clone();
    swap_uki(machine, build, &args.keys, true)?;
    let mut vm = machine.boot()?;
    let d = scenario_d(&mut vm, console, recovery);
    report("d", &d);
    if d.is_err() {
        eprintln!("{}", tail(&vm.serial_text(), 30));
    }
    d?;
    let e = scenario_e(console, &args.pk, &work.join("laptop"));
    report("e", &e);
    e?;
    let bundles = bundles
        .join()
        .unwrap_or_else(|_| Err("making the bundles panicked".into()));
    updates::run_all(machine, vm, console, build, &args.keys, bundles)
}

fn arm64(args: &Args, work: &Path) -> Result<(), Failure> {
    let build = args.arm64.clone().ok_or("no --arm64")?;
    let mut machine = Machine::new(Arch::Arm64, &image_in(&build, "arm64"), work)?;
    let console = Console::new(work.join("cookies.txt"));
    let mut vm = machine.boot()?;
    let f = (|| -> Result<(), Failure> {
        appliance_up(&mut vm)?;
        console.reachable(Duration::from_secs(120))?;
        let page = console.page("/setup")?;
        if !page.contains("Set up this appliance") {
            return Err(format!("the arm64 console's setup page: {}", tail(&page, 5)).into());
        }
        // systemd-boot enrolled the image's keys at the first start (AAVMF starts in
        // setup mode), so the kernel ran with Secure Boot on.
        if !vm.serial_text().contains("secureboot: Secure boot enabled") {
            return Err("the arm64 image did not boot with Secure Boot on".into());
        }
        Ok(())
    })();
    report("f", &f);
    let _ = vm.shutdown(Duration::from_secs(120));
    Ok(())
}
