//! The disk from outside a powered-off machine: its ESP (mtools at the partition's byte
//! offset, no loop device), its root slots, and the UKIs the suite makes and signs with
//! the image's keys (the same tools image/build.sh uses: mkuki.sh, sbsign).

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::Failure;
use crate::vm::run;

/// A partition of `disk` by its GPT name: (first byte, length in bytes).
pub(crate) fn partition(disk: &Path, name: &str) -> Result<(u64, u64), Failure> {
    let table: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(disk))?)?;
    let parts = table["partitiontable"]["partitions"]
        .as_array()
        .ok_or("no partitions in the disk's table")?;
    let part = parts
        .iter()
        .find(|p| p["name"] == name)
        .ok_or_else(|| format!("no partition named {name} on {}", disk.display()))?;
    let start = part["start"]
        .as_u64()
        .ok_or("a partition without a start")?;
    let size = part["size"].as_u64().ok_or("a partition without a size")?;
    Ok((start * 512, size * 512))
}

/// mtools' name for the ESP of `disk`.
fn image(disk: &Path) -> Result<String, Failure> {
    let (start, _) = partition(disk, "esp")?;
    Ok(format!("{}@@{start}", disk.display()))
}

/// Copies `file` onto the ESP as `dest` (e.g. `EFI/Linux/x.efi`), replacing what is there.
pub(crate) fn put(disk: &Path, file: &Path, dest: &str) -> Result<(), Failure> {
    run(Command::new("mcopy")
        .args(["-o", "-i"])
        .arg(image(disk)?)
        .arg(file)
        .arg(format!("::/{dest}")))?;
    Ok(())
}

/// Deletes `path` from the ESP.
pub(crate) fn remove(disk: &Path, path: &str) -> Result<(), Failure> {
    run(Command::new("mdel")
        .arg("-i")
        .arg(image(disk)?)
        .arg(format!("::/{path}")))?;
    Ok(())
}

/// The file names in `EFI/Linux` on the ESP: the boot entries, with their tries counters.
pub(crate) fn entries(disk: &Path) -> Result<Vec<String>, Failure> {
    let listing = run(Command::new("mdir")
        .args(["-b", "-i"])
        .arg(image(disk)?)
        .arg("::/EFI/Linux"))?;
    Ok(listing
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter(|n| n.ends_with(".efi"))
        .map(str::to_owned)
        .collect())
}

/// The SHA-256 of a partition's bytes.
pub(crate) fn partition_sha256(disk: &Path, name: &str) -> Result<String, Failure> {
    let (start, len) = partition(disk, name)?;
    let mut file = std::fs::File::open(disk)?;
    file.seek(SeekFrom::Start(start))?;
    let mut hasher = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = file.read(&mut buf[..left.min(1 << 20) as usize])?;
        if n == 0 {
            return Err(format!("{name} ends early").into());
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Flips one byte of a partition, `offset` bytes into it.
pub(crate) fn flip_byte(disk: &Path, name: &str, offset: u64) -> Result<(), Failure> {
    let (start, len) = partition(disk, name)?;
    if offset >= len {
        return Err(format!("offset {offset} is past {name}").into());
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)?;
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(start + offset))?;
    file.read_exact(&mut byte)?;
    byte[0] ^= 0x01;
    file.seek(SeekFrom::Start(start + offset))?;
    file.write_all(&byte)?;
    file.sync_all()?;
    Ok(())
}

/// The root hash of an image build's first slot (its verity.txt).
pub(crate) fn roothash(build: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(build.join("verity.txt"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_owned())
        .ok_or_else(|| format!("no root hash in {}/verity.txt", build.display()).into())
}

/// A UKI from the build's kernel, initrd and stub with `cmdline` and `osrel`, carrying
/// the build's PCR 11 signature (valid for the build's own UKI only), unsigned.
pub(crate) fn make_uki(
    build: &Path,
    keys: &Path,
    cmdline: &str,
    osrel: &Path,
    out: &Path,
) -> Result<(), Failure> {
    let conf = std::fs::read_to_string("image/image.conf")?;
    let epoch = conf
        .lines()
        .find_map(|l| l.strip_prefix("PK_IMAGE_EPOCH="))
        .ok_or("no PK_IMAGE_EPOCH in image/image.conf")?;
    run(Command::new("image/mkuki.sh")
        .env("SOURCE_DATE_EPOCH", epoch.trim())
        .env("PCRPKEY", keys.join("tpm2-pcr-public-key.pem"))
        .env("PCRSIG", build.join("pcrsig.json"))
        .arg(build.join("rootfs/usr/lib/systemd/boot/efi/linuxx64.efi.stub"))
        .arg(build.join("vmlinuz"))
        .arg(build.join("initrd.img"))
        .arg(osrel)
        .arg(cmdline)
        .arg(out))?;
    Ok(())
}

/// Signs a UKI for Secure Boot with the db key in `keys`.
pub(crate) fn sign(keys: &Path, unsigned: &Path, out: &Path) -> Result<(), Failure> {
    run(Command::new("sbsign")
        .arg("--key")
        .arg(keys.join("db.key"))
        .arg("--cert")
        .arg(keys.join("db.crt"))
        .arg("--output")
        .arg(out)
        .arg(unsigned))?;
    Ok(())
}
