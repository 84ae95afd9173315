//! The disk: its two root slots as `sfdisk --json` shows them, their PARTUUIDs set
//! through `sfdisk --part-uuid`, and positional I/O bounded to one slot.
//!
//! The disk is a whole-disk device on the appliance (`/dev/vda`) or a disk image file in
//! the tests: a slot is written at its byte offset in it, never through a partition
//! device, so both behave the same.

use std::fmt;
use std::fs::File;
use std::io;
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use serde::Deserialize;

use super::{Slot, SystemError};
use crate::bundle::Digest;

/// A GPT partition's unique GUID as Linux writes it (`PARTUUID=`): 16 bytes, shown as
/// lower-case `8-4-4-4-12` hex, the bytes in the order they are written.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartUuid(pub [u8; 16]);

impl PartUuid {
    /// The PARTUUID of the slot that holds the root with this dm-verity root hash: its
    /// first 128 bits.
    pub fn of_roothash(roothash: &Digest) -> PartUuid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&roothash.0[..16]);
        PartUuid(b)
    }

    /// The id a UKI's file name carries for the slot with this PARTUUID: its first 16 hex
    /// digits.
    pub fn uki_id(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0[..8])
    }
}

impl fmt::Display for PartUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = data_encoding::HEXLOWER.encode(&self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

impl fmt::Debug for PartUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartUuid({self})")
    }
}

impl FromStr for PartUuid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let groups: Vec<&str> = s.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        let bytes = (lengths == [8, 4, 4, 4, 12])
            .then(|| data_encoding::HEXLOWER_PERMISSIVE.decode(groups.concat().as_bytes()))
            .and_then(Result::ok)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .ok_or_else(|| format!("`{}` is not a UUID", s.chars().take(40).collect::<String>()))?;
        Ok(PartUuid(bytes))
    }
}

/// One root slot's partition.
#[derive(Clone, Debug)]
pub(crate) struct Partition {
    /// Its number in the partition table (`sfdisk --part-uuid DISK N`).
    pub(crate) number: u32,
    /// Its first byte on the disk.
    pub(crate) start: u64,
    /// Its length in bytes.
    pub(crate) size: u64,
    /// Its PARTUUID.
    pub(crate) partuuid: PartUuid,
}

/// `sfdisk --json`'s output, the parts of it read here.
#[derive(Deserialize)]
struct Dump {
    partitiontable: Table,
}

#[derive(Deserialize)]
struct Table {
    label: String,
    sectorsize: Option<u64>,
    #[serde(default)]
    partitions: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    node: String,
    start: u64,
    size: u64,
    uuid: Option<String>,
    name: Option<String>,
}

/// Slot A's and slot B's partitions (GPT names `root-a`, `root-b`) on `disk`.
pub(crate) fn read_slots(sfdisk: &Path, disk: &Path) -> Result<[Partition; 2], SystemError> {
    let out = run_sfdisk(sfdisk, &["--json".as_ref(), disk.as_os_str()])?;
    let dump: Dump = serde_json::from_slice(&out)
        .map_err(|e| SystemError::PartitionTable(format!("sfdisk --json: {e}")))?;
    let table = dump.partitiontable;
    if table.label != "gpt" {
        return Err(SystemError::PartitionTable(format!(
            "{} has a {} partition table, not GPT",
            disk.display(),
            table.label
        )));
    }
    let sector = table.sectorsize.unwrap_or(512);
    let find = |slot: Slot| -> Result<Partition, SystemError> {
        let mut named = table
            .partitions
            .iter()
            .filter(|e| e.name.as_deref() == Some(slot.partition_name()));
        match (named.next(), named.next()) {
            (Some(entry), None) => partition(entry, sector),
            (None, _) => Err(SystemError::PartitionTable(format!(
                "{} has no partition named {}",
                disk.display(),
                slot.partition_name()
            ))),
            (Some(_), Some(_)) => Err(SystemError::PartitionTable(format!(
                "{} has more than one partition named {}",
                disk.display(),
                slot.partition_name()
            ))),
        }
    };
    Ok([find(Slot::A)?, find(Slot::B)?])
}

fn partition(entry: &Entry, sector: u64) -> Result<Partition, SystemError> {
    let bad = |why: &str| SystemError::PartitionTable(format!("{}: {why}", entry.node));
    let digits = entry.node.len()
        - entry
            .node
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .len();
    let number = entry.node[entry.node.len() - digits..]
        .parse()
        .map_err(|_| bad("no partition number"))?;
    let partuuid = entry
        .uuid
        .as_deref()
        .ok_or_else(|| bad("no PARTUUID"))?
        .parse()
        .map_err(|e: String| bad(&e))?;
    let bytes = |sectors: u64| sectors.checked_mul(sector).ok_or_else(|| bad("too large"));
    Ok(Partition {
        number,
        start: bytes(entry.start)?,
        size: bytes(entry.size)?,
        partuuid,
    })
}

/// Sets the PARTUUID of partition `number` of `disk`. Writes the GPT's two copies of the
/// partition entries and headers, nothing else; the kernel is not asked to re-read a
/// table whose other partitions are in use (the next boot reads it).
pub(crate) fn set_partuuid(
    sfdisk: &Path,
    disk: &Path,
    number: u32,
    uuid: PartUuid,
) -> Result<(), SystemError> {
    let number = number.to_string();
    let uuid = uuid.to_string();
    run_sfdisk(
        sfdisk,
        &[
            "--no-reread".as_ref(),
            "--no-tell-kernel".as_ref(),
            "--part-uuid".as_ref(),
            disk.as_os_str(),
            number.as_ref(),
            uuid.as_ref(),
        ],
    )?;
    Ok(())
}

/// Runs sfdisk; its standard output, or its error.
fn run_sfdisk(sfdisk: &Path, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, SystemError> {
    let shown = || {
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        format!("{} {}", sfdisk.display(), args.join(" "))
    };
    let out = Command::new(sfdisk)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| SystemError::Io {
            what: format!("running {}", shown()),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(SystemError::Sfdisk {
            command: shown(),
            stderr: stderr.trim().chars().take(500).collect(),
        });
    }
    Ok(out.stdout)
}

/// A slot opened for positional I/O on the disk: every offset is relative to the slot's
/// start and checked against its end, so nothing outside the slot can be touched.
pub(crate) struct SlotIo {
    file: File,
    slot: Partition,
}

impl SlotIo {
    /// Opens the disk to write `slot`. Never creates or truncates.
    pub(crate) fn open(disk: &Path, slot: &Partition) -> io::Result<SlotIo> {
        let file = File::options().read(true).write(true).open(disk)?;
        Ok(SlotIo {
            file,
            slot: slot.clone(),
        })
    }

    /// The byte offset on the disk of `len` bytes at `offset` in the slot, if they lie in it.
    fn place(&self, offset: u64, len: usize) -> io::Result<u64> {
        offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.slot.size)
            .and_then(|_| self.slot.start.checked_add(offset))
            .ok_or_else(|| io::Error::other("an access past the slot's end was stopped"))
    }

    /// Writes `data` at `offset` in the slot.
    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file
            .write_all_at(data, self.place(offset, data.len())?)
    }

    /// Fills `buf` from `offset` in the slot.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, self.place(offset, buf.len())?)
    }

    /// Flushes what was written to the disk, then drops the slot's pages from the cache,
    /// so a read-back reads the disk rather than what was just written to memory.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_all()?;
        // Advice only: a disk that keeps its pages is still correct, merely read from memory.
        let _ = rustix::fs::fadvise(
            &self.file,
            self.slot.start,
            NonZeroU64::new(self.slot.size),
            rustix::fs::Advice::DontNeed,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partuuids_print_and_parse_as_linux_shows_them() {
        let d: Digest = "0123456789ABCDEF0123456789abcdef00112233445566778899aabbccddeeff"
            .parse()
            .expect("a digest");
        let u = PartUuid::of_roothash(&d);
        assert_eq!(u.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(u.uki_id(), "0123456789abcdef");
        assert_eq!(
            "01234567-89AB-CDEF-0123-456789ABCDEF".parse::<PartUuid>(),
            Ok(u)
        );
        for bad in [
            "",
            "0123456789abcdef0123456789abcdef",
            "01234567-89ab-cdef-0123-456789abcdeg",
        ] {
            assert!(bad.parse::<PartUuid>().is_err(), "{bad}");
        }
    }
}
