//! What the installer reads of the running machine, and writes nothing to: the slots in
//! the partition table, the root hash on the kernel command line, the running version in
//! os-release.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::disk::{self, PartUuid, Partition};
use super::osrel;
use super::{Layout, Slot, SystemError};
use crate::bundle::{Arch, Digest, Version};

/// The longest command line or os-release file read.
const MAX_TEXT_FILE: u64 = 64 * 1024;

/// The machine as the installer found it, before it writes anything.
#[derive(Debug)]
pub(crate) struct Machine {
    /// Slot A's and slot B's partitions.
    pub(crate) slots: [Partition; 2],
    /// The slot the running root was booted from.
    pub(crate) running: Slot,
    /// The running image's `IMAGE_VERSION`.
    pub(crate) version: Version,
    /// The machine's architecture.
    pub(crate) arch: Arch,
}

impl Machine {
    /// Reads the partition table, the command line and os-release.
    pub(crate) fn read(layout: &Layout) -> Result<Machine, SystemError> {
        let slots = disk::read_slots(&layout.sfdisk, &layout.disk)?;
        let roothash = running_roothash(&read_text(&layout.cmdline)?)?;
        let running = running_slot(&slots, &roothash)?;
        let version = osrel::image_version(&read_text(&layout.os_release)?)
            .ok_or_else(|| SystemError::NoVersion(layout.os_release.display().to_string()))?;
        let arch = layout
            .arch
            .or_else(Arch::current)
            .ok_or(SystemError::UnknownArch(std::env::consts::ARCH))?;
        Ok(Machine {
            slots,
            running,
            version,
            arch,
        })
    }

    /// The partition of `slot`.
    pub(crate) fn slot(&self, slot: Slot) -> &Partition {
        &self.slots[slot.index()]
    }
}

/// The root hash the running system was booted with: the `roothash=` of the command line.
pub(crate) fn running_roothash(cmdline: &str) -> Result<Digest, SystemError> {
    let value = cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("roothash="))
        .ok_or(SystemError::NoRootHash)?;
    value.parse().map_err(|_| SystemError::NoRootHash)
}

/// The whole disk the running root was booted from, found through udev's
/// `/dev/disk/by-partuuid` link for the running root hash and the partition's parent in
/// `/sys/class/block`: `/dev/vda` when the root is `/dev/vda2`.
pub fn find_disk(cmdline: &Path) -> Result<PathBuf, SystemError> {
    let uuid = PartUuid::of_roothash(&running_roothash(&read_text(cmdline)?)?);
    let io = |what: String| move |source| SystemError::Io { what, source };
    let link = PathBuf::from(format!("/dev/disk/by-partuuid/{uuid}"));
    let partition =
        std::fs::canonicalize(&link).map_err(io(format!("resolving {}", link.display())))?;
    let name = partition
        .file_name()
        .ok_or_else(|| SystemError::RunningSlotUnknown(uuid.to_string()))?;
    let sys = Path::new("/sys/class/block").join(name);
    let sys = std::fs::canonicalize(&sys).map_err(io(format!("resolving {}", sys.display())))?;
    let disk = sys
        .parent()
        .and_then(Path::file_name)
        .ok_or_else(|| SystemError::RunningSlotUnknown(uuid.to_string()))?;
    Ok(Path::new("/dev").join(disk))
}

/// The slot whose PARTUUID is the first half of the running root hash.
fn running_slot(slots: &[Partition; 2], roothash: &Digest) -> Result<Slot, SystemError> {
    let uuid = PartUuid::of_roothash(roothash);
    let matching: Vec<Slot> = Slot::BOTH
        .into_iter()
        .filter(|s| slots[s.index()].partuuid == uuid)
        .collect();
    match matching[..] {
        [slot] => Ok(slot),
        [] => Err(SystemError::RunningSlotUnknown(uuid.to_string())),
        _ => Err(SystemError::BothSlotsRunning(uuid.to_string())),
    }
}

/// A small text file (the command line, os-release), at most [`MAX_TEXT_FILE`] bytes.
pub(crate) fn read_text(path: &Path) -> Result<String, SystemError> {
    let io = |source| SystemError::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_TEXT_FILE)
        .read_to_string(&mut text)
        .map_err(io)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_root_hash_is_read_from_the_command_line() {
        let h = "ab".repeat(32);
        let line = format!("console=ttyS0 roothash={h} systemd.verity_root_options=x ro\n");
        assert_eq!(running_roothash(&line).expect("found").to_string(), h);
        assert!(running_roothash("ro quiet").is_err());
        assert!(running_roothash("roothash=abc").is_err());
    }
}
