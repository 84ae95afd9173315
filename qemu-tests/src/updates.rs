//! Updates, on the amd64 machine after scenario e (issue 15). The suite makes its bundles
//! with image/make-bundle.sh from the build's root tree, signed with the run's keys:
//! 0.2.0 (good), 0.3.0 (its configuration is broken, so pk-appliance cannot start) and
//! 0.4.0 (good, then a byte of it is flipped on the disk).
//!
//! - g. refusals: a bad signature, the other architecture, a truncated bundle; each
//!   refused with its reason, and the running slot's bytes are unchanged;
//! - h. 0.2.0 through the console's API into slot B, a reboot when the admin asks: the box
//!   runs B, the TPM unlocks it unattended, every secret is there; a downgrade to 0.1.0 is
//!   then refused;
//! - i. 0.3.0 into slot A: it boots, fails its health check on every try, and the box falls
//!   back to B by itself, says so in the console, and unlocks unattended;
//! - j. 0.4.0 into slot A with one byte of its erofs flipped: dm-verity refuses the root on
//!   every try and the box falls back to B;
//! - k. Secure Boot: a UKI that is not signed, and one signed with another key, do not
//!   boot; with them gone, the signed one does (the boot that checks j's fallback).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::console::Console;
use crate::vm::{Machine, Vm, run, tail, wait_until};
use crate::{ADMIN_PASSWORD, BOOT_TIMEOUT, Failure, esp, report};

/// How long a fallback may take: every try of the new slot, then the old one's boot.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(1200);

/// A bundle the suite made, and its root hash.
pub(crate) struct Bundle {
    path: PathBuf,
    roothash: String,
}

pub(crate) struct Bundles {
    good: Bundle,
    unhealthy: Bundle,
    later: Bundle,
}

/// Makes the suite's bundles from the build's root tree, signed with `keys`.
pub(crate) fn make(build: &Path, keys: &Path, dir: &Path) -> Result<Bundles, Failure> {
    std::fs::create_dir_all(dir)?;
    let broken = dir.join("broken-config.toml");
    std::fs::write(&broken, "console_listen = \"not an address\"\n")?;
    let one = |version: &str, extra: &[String]| -> Result<Bundle, Failure> {
        let path = dir.join(format!("pk-appliance-amd64-{version}.pkupdate"));
        let out = Command::new("image/make-bundle.sh")
            .arg("--from")
            .arg(build)
            .arg("--keys")
            .arg(keys)
            .args(["--version", version, "--out"])
            .arg(&path)
            .args(extra)
            .output()?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("make-bundle.sh {version}: {}", tail(&log, 10)).into());
        }
        let roothash = log
            .lines()
            .find_map(|l| l.split("root hash ").nth(1))
            .ok_or("make-bundle.sh printed no root hash")?
            .trim()
            .to_owned();
        Ok(Bundle { path, roothash })
    };
    Ok(Bundles {
        good: one("0.2.0", &[])?,
        unhealthy: one(
            "0.3.0",
            &[
                "--replace".into(),
                format!("{}:/etc/pk-appliance/config.toml", broken.display()),
            ],
        )?,
        later: one("0.4.0", &[])?,
    })
}

/// The first `len` bytes of `file` in `out`: enough for the refusals the installer makes
/// from the header alone.
fn prefix(file: &Path, len: u64, out: &Path) -> Result<PathBuf, Failure> {
    let bytes = std::fs::read(file)?;
    let len = (len as usize).min(bytes.len());
    std::fs::write(out, &bytes[..len])?;
    Ok(out.to_owned())
}

/// Uploads a bundle that must be refused with HTTP `status`; the refusal's message.
fn refused(console: &Console, file: &Path, status: u16, what: &str) -> Result<String, Failure> {
    let (code, answer) = console.upload("/api/update", file)?;
    let message = answer["error"].as_str().unwrap_or_default().to_owned();
    if code != status || message.is_empty() {
        return Err(
            format!("{what}: expected a refusal with HTTP {status}, got {code} {answer}").into(),
        );
    }
    eprintln!("   {what}: refused ({code}): {message}");
    Ok(message)
}

/// Uploads a bundle that must install; the installer's answer.
fn installed(console: &Console, bundle: &Bundle, version: &str) -> Result<Value, Failure> {
    let started = std::time::Instant::now();
    let (code, answer) = console.upload("/api/update", &bundle.path)?;
    if code != 200 || answer["version"] != version {
        return Err(format!("installing {version}: HTTP {code} {answer}").into());
    }
    eprintln!(
        "   {version} installed into slot {} in {} s",
        answer["slot"],
        started.elapsed().as_secs()
    );
    Ok(answer)
}

/// The installer's view, through the console (`status` of `GET /api/update`).
fn status(console: &Console) -> Result<Value, Failure> {
    Ok(console.ok("GET", "/api/update", None)?["status"].clone())
}

/// The running version and slot, as the console reports them.
fn running(console: &Console) -> Result<(String, String), Failure> {
    let s = status(console)?;
    let version = s["running_version"].as_str().unwrap_or_default().to_owned();
    let slot = s["running"].as_str().unwrap_or_default().to_owned();
    Ok((version, slot))
}

/// After a boot: the console answers, the admin logs in, the TPM has unlocked the node by
/// itself, and the secrets of scenarios b and e read back.
fn unlocked_with_secrets(vm: &mut Vm, console: &mut Console, mark: usize) -> Result<(), Failure> {
    vm.wait_serial_since(mark, "console at https://", FALLBACK_TIMEOUT)?;
    vm.wait_serial_since(mark, "Started pk-appliance.serv", BOOT_TIMEOUT)?;
    console.reachable(Duration::from_secs(120))?;
    console.login(ADMIN_PASSWORD)?;
    console.unlocked(Duration::from_secs(120))?;
    for (path, value) in [
        ("wifi", "office-wifi-key"),
        ("laptop-note", "edited on the laptop"),
    ] {
        let read = console.reveal("office", path)?;
        if read != value {
            return Err(format!("office:{path} reads {read:?}").into());
        }
    }
    Ok(())
}

/// The kernel command lines the serial console showed after `mark`, one per boot.
fn boots_since(vm: &Vm, mark: usize) -> Vec<String> {
    vm.serial_text()
        .get(mark..)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("Command line: ").nth(1).map(str::to_owned))
        .collect()
}

pub(crate) fn scenario_g(
    machine: &Machine,
    console: &Console,
    build: &Path,
    keys: &Path,
    bundles: &Bundles,
) -> Result<(), Failure> {
    let dir = machine.dir.join("refused");
    std::fs::create_dir_all(&dir)?;
    let before = esp::partition_sha256(&machine.disk, "root-a")?;
    // A bad signature: one bit of the signature flipped (header: magic, format, length,
    // manifest, then the 64-byte signature).
    let bad = prefix(
        &bundles.good.path,
        4 << 20,
        &dir.join("bad-signature.pkupdate"),
    )?;
    let mut bytes = std::fs::read(&bad)?;
    let manifest_len = u32::from_le_bytes(bytes[12..16].try_into()?) as usize;
    bytes[16 + manifest_len + 10] ^= 0x01;
    std::fs::write(&bad, &bytes)?;
    let m = refused(console, &bad, 422, "a bad signature")?;
    if !m.contains("signature") {
        return Err(format!("the bad signature's refusal does not say so: {m}").into());
    }
    // The other architecture: a properly signed bundle that says arm64.
    let arm = dir.join("arm64.pkupdate");
    let verity = std::fs::read_to_string(build.join("verity.txt"))?;
    let field = |name: &str| {
        verity
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let blocks = std::fs::metadata(build.join("root.erofs"))?.len() / 4096;
    run(Command::new("target/release/pk-bundle")
        .arg("make")
        .arg("--key")
        .arg(keys.join("update-key.pem"))
        .args(["--version", "0.5.0", "--arch", "arm64", "--roothash"])
        .arg(field("Root hash:").ok_or("no root hash in verity.txt")?)
        .args(["--data-blocks", &blocks.to_string()])
        .args(["--hash-offset", &(blocks * 4096).to_string()])
        .arg("--root")
        .arg(build.join("root.erofs"))
        .arg("--verity")
        .arg(build.join("root.verity"))
        .arg("--uki")
        .arg(build.join("uki.efi"))
        .arg("--out")
        .arg(&arm))?;
    let arm = prefix(&arm, 4 << 20, &dir.join("arm64-head.pkupdate"))?;
    let m = refused(console, &arm, 422, "a bundle for arm64")?;
    if !m.contains("arm64") {
        return Err(format!("the other architecture's refusal does not name it: {m}").into());
    }
    // Truncated: most of a good bundle, cut inside its root image.
    let size = std::fs::metadata(&bundles.good.path)?.len();
    let cut = prefix(
        &bundles.good.path,
        size * 6 / 10,
        &dir.join("truncated.pkupdate"),
    )?;
    let m = refused(console, &cut, 422, "a truncated bundle")?;
    if !m.contains("truncated") || !m.contains("left empty") {
        return Err(format!("the truncated bundle's refusal does not say so: {m}").into());
    }
    let after = esp::partition_sha256(&machine.disk, "root-a")?;
    if after != before {
        return Err("the running slot's bytes changed during the refused installs".into());
    }
    let other = &status(console)?["other_state"];
    if other["state"] != "empty" {
        return Err(format!("after the refusals the other slot is not empty: {other}").into());
    }
    Ok(())
}

pub(crate) fn scenario_h(
    vm: &mut Vm,
    console: &mut Console,
    build: &Path,
    bundles: &Bundles,
) -> Result<(), Failure> {
    installed(console, &bundles.good, "0.2.0")?;
    let other = &status(console)?["other_state"];
    if other["state"] != "installed" || other["version"] != "0.2.0" {
        return Err(format!("the console does not show 0.2.0 installed: {other}").into());
    }
    let mark = vm.mark();
    console.ok("POST", "/api/update/reboot", None)?;
    unlocked_with_secrets(vm, console, mark)?;
    let (version, slot) = running(console)?;
    if version != "0.2.0" || slot != "b" {
        return Err(format!("after the update the box runs {version} from slot {slot}").into());
    }
    // The status page shows the image's version too.
    let shown = console.ok("GET", "/api/status", None)?["image_version"].clone();
    if shown != "0.2.0" {
        return Err(format!("after the update /api/status shows image version {shown}").into());
    }
    // The settings live on the data partition: the update left them (n set this one).
    crate::clock::server_setting_kept(console, "after the update")?;
    if !boots_since(vm, mark)
        .iter()
        .all(|c| c.contains(&bundles.good.roothash))
    {
        return Err("a boot after the update did not start the new root".into());
    }
    // Back to 0.1.0: refused without the admin's recovery code.
    let old = std::fs::read_dir(build)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "pkupdate"))
        .ok_or("the build has no bundle")?;
    let head = prefix(
        &old,
        4 << 20,
        &vm.serial.with_file_name("downgrade.pkupdate"),
    )?;
    let m = refused(console, &head, 409, "a downgrade to 0.1.0")?;
    if !m.contains("0.1.0") {
        return Err(format!("the downgrade's refusal does not name the version: {m}").into());
    }
    Ok(())
}

pub(crate) fn scenario_i(
    vm: &mut Vm,
    console: &mut Console,
    bundles: &Bundles,
) -> Result<(), Failure> {
    installed(console, &bundles.unhealthy, "0.3.0")?;
    let mark = vm.mark();
    console.ok("POST", "/api/update/reboot", None)?;
    unlocked_with_secrets(vm, console, mark)?;
    let boots = boots_since(vm, mark);
    let tries = boots
        .iter()
        .filter(|c| c.contains(&bundles.unhealthy.roothash))
        .count();
    eprintln!(
        "   0.3.0 was tried {tries} times, then {} boots of B",
        boots.len() - tries
    );
    if tries < 2 {
        return Err(format!("the unhealthy slot was tried {tries} times: {boots:?}").into());
    }
    let update = console.ok("GET", "/api/update", None)?;
    let s = &update["status"];
    if s["running_version"] != "0.2.0" || s["other_state"]["state"] != "failed" {
        return Err(format!("after the fallback the console shows {update}").into());
    }
    if update["failed_update"]["version"] != "0.3.0" {
        return Err(format!("the console reports no failed update: {update}").into());
    }
    let page = console.page("/updates")?;
    if !page.contains("0.3.0") {
        return Err("the Updates page does not name the update that failed".into());
    }
    // The unit's stderr goes to the journal and the serial console alike.
    if !vm
        .serial_text()
        .get(mark..)
        .unwrap_or_default()
        .contains("an update did not come up healthy")
    {
        return Err("the failed update is not in the appliance's log".into());
    }
    Ok(())
}

/// j, before the boot: 0.4.0 into slot A, the machine off, one byte of A's erofs flipped.
fn modify_slot(
    machine: &Machine,
    vm: Vm,
    console: &Console,
    bundles: &Bundles,
) -> Result<(), Failure> {
    installed(console, &bundles.later, "0.4.0")?;
    vm.shutdown(Duration::from_secs(120))?;
    // The boot entries: B's was marked good by its health check (no tries counter left),
    // the new A's counts its tries.
    let entries = esp::entries(&machine.disk)?;
    let good = format!("pk-appliance-{}.efi", &bundles.good.roothash[..16]);
    let new = format!("pk-appliance-{}+", &bundles.later.roothash[..16]);
    if !entries.contains(&good) || !entries.iter().any(|e| e.starts_with(&new)) {
        return Err(format!("the ESP's entries are not {good} and {new}N.efi: {entries:?}").into());
    }
    // One byte of the erofs superblock (1 KiB in): every mount reads it.
    esp::flip_byte(&machine.disk, "root-a", 1024 + 8)
}

/// j, after the boot: the box fell back to B, refused by dm-verity on every try of A.
fn fell_back(vm: &mut Vm, console: &mut Console, bundles: &Bundles) -> Result<(), Failure> {
    unlocked_with_secrets(vm, console, 0)?;
    let (version, slot) = running(console)?;
    if version != "0.2.0" || slot != "b" {
        return Err(format!("with slot A modified the box runs {version} from {slot}").into());
    }
    let tries = boots_since(vm, 0)
        .iter()
        .filter(|c| c.contains(&bundles.later.roothash))
        .count();
    let serial = vm.serial_text();
    if tries == 0 || !serial.contains("verity") {
        return Err(format!(
            "the modified slot was tried {tries} times and dm-verity said nothing; last lines:\n{}",
            tail(&serial, 20)
        )
        .into());
    }
    eprintln!("   the modified 0.4.0 was tried {tries} times, refused by dm-verity");
    Ok(())
}

/// Boots with `file` on the ESP as the newest entry; it must not start.
fn refused_boot(machine: &mut Machine, file: &Path, what: &str) -> Result<(), Failure> {
    esp::put(&machine.disk, file, "EFI/Linux/pk-appliance-refused.efi")?;
    let vm = machine.boot()?;
    // OVMF says "Security Violation" or "Access Denied", systemd-boot "Access denied": any
    // of them ends the wait (waiting for one alone cost two minutes per refused UKI).
    let refusal = wait_until("the firmware's refusal", Duration::from_secs(120), || {
        let text = vm.serial_text().to_ascii_lowercase();
        text.contains("security violation") || text.contains("access denied")
    });
    // Time for a kernel to start, had the firmware let it.
    std::thread::sleep(Duration::from_secs(8));
    let started = vm
        .serial_text()
        .lines()
        .any(|l| l.contains("Command line:") && l.contains("pk.refused=1"));
    drop(vm);
    esp::remove(&machine.disk, "EFI/Linux/pk-appliance-refused.efi")?;
    if started {
        return Err(format!("{what} booted with Secure Boot on").into());
    }
    refusal.map_err(|e| format!("{what}: no refusal from the firmware: {e}"))?;
    eprintln!("   {what}: the firmware refused it");
    Ok(())
}

/// k, with the machine off: an unsigned UKI and one signed with another set of keys, each
/// the newest entry on the ESP, are refused by the firmware.
fn refused_ukis(machine: &mut Machine, build: &Path, keys: &Path) -> Result<(), Failure> {
    let dir = machine.dir.join("secure-boot");
    std::fs::create_dir_all(&dir)?;
    // The newest version on the ESP, so systemd-boot picks it first.
    let osrel = dir.join("os-release");
    let text = std::fs::read_to_string(build.join("rootfs/usr/lib/os-release"))?;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("IMAGE_VERSION=") {
                "IMAGE_VERSION=9.0"
            } else {
                l
            }
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&osrel, text)?;
    let cmdline = std::fs::read_to_string(build.join("cmdline.txt"))?;
    let unsigned = dir.join("unsigned.efi");
    esp::make_uki(
        build,
        keys,
        &format!("{} pk.refused=1", cmdline.trim()),
        &osrel,
        &unsigned,
    )?;
    refused_boot(machine, &unsigned, "an unsigned UKI")?;
    let other_keys = dir.join("other-keys");
    let _ = std::fs::remove_dir_all(&other_keys);
    run(Command::new("image/make-keys.sh").arg(&other_keys))?;
    let other = dir.join("other-key.efi");
    esp::sign(&other_keys, &unsigned, &other)?;
    refused_boot(machine, &other, "a UKI signed with another key")
}

/// j and k: A modified, the refused UKIs tried, then one boot that must fall back to B,
/// signed, with Secure Boot on.
fn scenarios_j_k(
    machine: &mut Machine,
    vm: Vm,
    console: &mut Console,
    build: &Path,
    keys: &Path,
    bundles: &Bundles,
) -> Result<(), Failure> {
    let prepared = modify_slot(machine, vm, console, bundles);
    let k = prepared
        .as_ref()
        .map_err(|e| e.to_string().into())
        .and_then(|()| refused_ukis(machine, build, keys));
    let mut vm = machine.boot()?;
    let j = prepared.and_then(|()| fell_back(&mut vm, console, bundles));
    report("j", &j);
    let k = k.and_then(|()| {
        j.as_ref().map_err(|e| format!("the signed UKI: {e}"))?;
        if !vm.serial_text().contains("secureboot: Secure boot enabled") {
            return Err("the signed UKI booted without Secure Boot".into());
        }
        Ok(())
    });
    report("k", &k);
    vm.shutdown(Duration::from_secs(120))?;
    j.and(k)
}

/// g to k, in order, on the machine `vm` runs (scenario e's boot).
pub(crate) fn run_all(
    machine: &mut Machine,
    vm: Vm,
    console: &mut Console,
    build: &Path,
    keys: &Path,
    bundles: Result<Bundles, Failure>,
) -> Result<(), Failure> {
    let mut vm = vm;
    let bundles = bundles?;
    let g = scenario_g(machine, console, build, keys, &bundles);
    report("g", &g);
    g?;
    let h = scenario_h(&mut vm, console, build, &bundles);
    report("h", &h);
    h?;
    let i = scenario_i(&mut vm, console, &bundles);
    report("i", &i);
    i?;
    scenarios_j_k(machine, vm, console, build, keys, &bundles)
}
