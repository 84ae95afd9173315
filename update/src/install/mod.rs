//! Installing a verified bundle into the root slot that is not running, and the state of
//! both slots.
//!
//! [`install`] follows the order of `docs/theory/boot-chain-and-updates.md` ("Updates"):
//!
//! 1. read the machine (the partition table, the running root hash, the running version)
//!    and the bundle's header, and check it all: signature, manifest, architecture,
//!    version, that the root is not the running one, that it fits the slot and the UKI
//!    the ESP. Nothing has been written when any of these refuses.
//! 2. delete the other slot's UKI (from here that slot does not boot) and set its
//!    PARTUUID to the empty value;
//! 3. stream `root` to offset 0 of the slot and `verity` to `hash_offset`, hashing as they
//!    pass; sync; read both back from the disk and hash them again;
//! 4. set the slot's PARTUUID from the root hash; write the UKI to the ESP under a
//!    temporary name, sync it, hash it again, check nothing follows the last part, and
//!    rename it to `pk-appliance-<id>+<tries>.efi`.
//!
//! A failure in steps 2 to 4 empties the slot again (no UKI, the empty PARTUUID) and says
//! so in [`InstallError::Failed`]. The running slot, its UKI and the other partitions are
//! never written: the slot is written through `disk::SlotIo`, which refuses any access
//! outside the slot it was opened for, and only UKIs with the other slot's ids are
//! deleted.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::bundle::{Arch, BundleError, BundleReader, PartName, Version};

mod disk;
mod esp;
mod osrel;
mod status;
mod system;
mod write;

pub use disk::PartUuid;
pub use status::{OtherState, Status, UkiEntry, status};
pub use system::find_disk;

/// The PARTUUID of slot A when it is empty (`PK_EMPTY_SLOT_PARTUUID_A` in `image.conf`).
pub const EMPTY_SLOT_PARTUUID_A: PartUuid = PartUuid([
    0x5c, 0x0a, 0x9c, 0x1e, 0x7b, 0x1f, 0x4d, 0x6a, 0x9e, 0x3b, 0x70, 0xb1, 0xd2, 0xa3, 0xe4, 0x0a,
]);
/// The PARTUUID of slot B when it is empty (`PK_EMPTY_SLOT_PARTUUID_B` in `image.conf`).
pub const EMPTY_SLOT_PARTUUID_B: PartUuid = PartUuid([
    0x5c, 0x0a, 0x9c, 0x1e, 0x7b, 0x1f, 0x4d, 0x6a, 0x9e, 0x3b, 0x70, 0xb1, 0xd2, 0xa3, 0xe4, 0x0b,
]);

/// Where things are on the machine. [`Layout::appliance`] is the box; tests point every
/// path at files of their own.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The whole disk: a block device (`/dev/vda`) or a disk image file.
    pub disk: PathBuf,
    /// The directory the ESP is mounted at.
    pub esp: PathBuf,
    /// The kernel command line (`/proc/cmdline`), for the running `roothash=`.
    pub cmdline: PathBuf,
    /// The running system's os-release, for `IMAGE_VERSION`.
    pub os_release: PathBuf,
    /// The boot tries a new UKI gets (`+N` in its name); 0 counts as 1.
    pub tries: u32,
    /// The machine's architecture; `None` for the one this program was built for.
    pub arch: Option<Arch>,
    /// The empty PARTUUIDs of slot A and slot B.
    pub empty_partuuids: [PartUuid; 2],
    /// The `sfdisk` to run.
    pub sfdisk: PathBuf,
    /// The lock file that keeps two installs from running at once.
    pub lock: PathBuf,
}

impl Layout {
    /// The appliance's layout, with `disk` the whole disk the root slots are on.
    pub fn appliance(disk: PathBuf) -> Layout {
        Layout {
            disk,
            esp: PathBuf::from("/efi"),
            cmdline: PathBuf::from("/proc/cmdline"),
            os_release: PathBuf::from("/usr/lib/os-release"),
            tries: 3,
            arch: None,
            empty_partuuids: [EMPTY_SLOT_PARTUUID_A, EMPTY_SLOT_PARTUUID_B],
            sfdisk: PathBuf::from("sfdisk"),
            lock: PathBuf::from("/run/pk-update/lock"),
        }
    }
}

/// A root slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// `root-a`, partition 2.
    A,
    /// `root-b`, partition 3.
    B,
}

impl Slot {
    /// Both slots.
    pub const BOTH: [Slot; 2] = [Slot::A, Slot::B];

    /// The other one.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Its GPT partition name.
    pub fn partition_name(self) -> &'static str {
        match self {
            Slot::A => "root-a",
            Slot::B => "root-b",
        }
    }

    fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// systemd-boot's boot counter, from a UKI's file name (`+left-done`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tries {
    /// Boots left before the entry counts as bad.
    pub left: u32,
    /// Boots tried that did not reach `boot-complete.target`.
    pub done: u32,
}

/// What an install is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Reading and checking the header.
    Verify,
    /// Writing the root and its hash tree to the slot.
    Write,
    /// Reading them back from the disk.
    Readback,
    /// Writing the UKI to the ESP.
    Uki,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Verify => "verify",
            Stage::Write => "write",
            Stage::Readback => "readback",
            Stage::Uki => "uki",
        })
    }
}

/// How far an install is: `done` of `total` bytes of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// The stage.
    pub stage: Stage,
    /// Bytes done.
    pub done: u64,
    /// Bytes the stage has in all.
    pub total: u64,
}

/// What the caller allows beyond the defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct InstallOptions {
    /// Install a lower version than the running one. The console's daemon sets this only
    /// after checking the admin's recovery code.
    pub allow_downgrade: bool,
}

/// A finished install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The slot written.
    pub slot: Slot,
    /// The version it now holds.
    pub version: Version,
    /// The UKI's file name in `EFI/Linux`.
    pub uki: String,
}

/// Why the machine's state could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SystemError {
    /// A file or a program failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What failed.
        source: std::io::Error,
    },
    /// `sfdisk` failed.
    #[error("{command} failed: {stderr}")]
    Sfdisk {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// The partition table is not the appliance's.
    #[error("the partition table is not the appliance's: {0}")]
    PartitionTable(String),
    /// The command line has no `roothash=`.
    #[error(
        "the kernel command line has no roothash=: this system was not booted from a verity \
         root slot"
    )]
    NoRootHash,
    /// No slot has the running root's PARTUUID.
    #[error("neither root-a nor root-b has the running root's PARTUUID {0}")]
    RunningSlotUnknown(String),
    /// Both slots have it.
    #[error("both root-a and root-b have the running root's PARTUUID {0}")]
    BothSlotsRunning(String),
    /// os-release names no version.
    #[error("{0} has no IMAGE_VERSION: the running version is unknown")]
    NoVersion(String),
    /// No bundles are made for this machine's architecture.
    #[error("no update bundles are made for this machine's architecture ({0})")]
    UnknownArch(&'static str),
}

/// Why an install was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The machine's state could not be read (nothing was written).
    #[error(transparent)]
    System(#[from] SystemError),
    /// The bundle was refused: its header before anything was written, a part's bytes
    /// while it was being written.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Another install holds the lock.
    #[error("another install is running")]
    Busy,
    /// The bundle's version is lower than the running one.
    #[error(
        "the bundle's version {bundle} is lower than the running version {running}: a \
         downgrade needs a bundle signed to allow it, or the admin's approval"
    )]
    Downgrade {
        /// The bundle's version.
        bundle: Version,
        /// The running one.
        running: Version,
    },
    /// The bundle holds the root that is running.
    #[error("the bundle holds the running root ({0}): it is installed already")]
    SameRoot(Version),
    /// The root and its hash tree do not fit the slot.
    #[error("the bundle needs {need} bytes of the slot, which has {slot}")]
    TooBig {
        /// `hash_offset` plus the verity size.
        need: u64,
        /// The slot's size.
        slot: u64,
    },
    /// The UKI does not fit the ESP.
    #[error("the UKI needs {need} bytes on the ESP, which has {free} free")]
    EspFull {
        /// The UKI's size.
        need: u64,
        /// Free bytes, counting those the slot's old UKI takes.
        free: u64,
    },
    /// Writing, syncing or reading back failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What failed.
        source: std::io::Error,
    },
    /// What was read back differs from what was written.
    #[error("the {0} part read back from the disk differs from what was written")]
    ReadBack(PartName),
    /// A failure after writing started: the other slot was emptied again.
    #[error("{source}; slot {slot} {}", cleanup_outcome(.cleanup))]
    Failed {
        /// The slot that was being written.
        slot: Slot,
        /// What went wrong.
        source: Box<InstallError>,
        /// `None` when the slot was emptied again; what failed while emptying it otherwise.
        cleanup: Option<String>,
    },
}

impl InstallError {
    /// The message with what the install left: "nothing was written" for a refusal
    /// before writing; a [`Failed`](InstallError::Failed) install says it itself.
    pub fn describe(&self) -> String {
        match self {
            InstallError::Failed { .. } => self.to_string(),
            _ => format!("{self} (nothing was written)"),
        }
    }
}

fn cleanup_outcome(cleanup: &Option<String>) -> String {
    match cleanup {
        None => "is left empty and will not boot".to_string(),
        Some(e) => {
            format!("could not be emptied again ({e}): install a bundle again before rebooting")
        }
    }
}

/// Installs the bundle read from `bundle`, signed with `key`, into the slot that is not
/// running. `progress` hears of each stage as it goes. See the module's documentation for
/// the order of the steps and what a failure leaves.
pub fn install(
    layout: &Layout,
    key: &VerifyingKey,
    bundle: impl Read,
    options: InstallOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Installed, InstallError> {
    let _lock = lock(layout)?;
    let machine = system::Machine::read(layout)?;
    let bundle = BundleReader::open(bundle, key, Some(machine.arch))?;
    let header = bundle.header_len();
    progress(Progress {
        stage: Stage::Verify,
        done: header,
        total: header,
    });
    let plan = write::Plan::check(layout, &machine, bundle.manifest(), options)?;
    plan.run(bundle, progress)
}

/// Holds the install lock until dropped.
fn lock(layout: &Layout) -> Result<File, InstallError> {
    let io = |source| SystemError::Io {
        what: format!("opening the lock {}", layout.lock.display()),
        source,
    };
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&layout.lock)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(InstallError::Busy),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_partuuids_are_image_conf_s() {
        assert_eq!(
            EMPTY_SLOT_PARTUUID_A.to_string(),
            "5c0a9c1e-7b1f-4d6a-9e3b-70b1d2a3e40a"
        );
        assert_eq!(
            EMPTY_SLOT_PARTUUID_B.to_string(),
            "5c0a9c1e-7b1f-4d6a-9e3b-70b1d2a3e40b"
        );
    }
}
