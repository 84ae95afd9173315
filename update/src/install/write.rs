//! The writing half of an install: the checks that need the machine and the manifest
//! together ([`Plan::check`]), then the steps that write ([`Plan::run`]), and the undoing
//! of them when one fails.

use std::io::{Read, Write as _};

use sha2::{Digest as _, Sha256};

use super::disk::{self, PartUuid, Partition, SlotIo};
use super::esp::{self, UkiName};
use super::system::Machine;
use super::{
    InstallError, InstallOptions, Installed, Layout, Progress, Slot, Stage, SystemError, Tries,
};
use crate::bundle::{BundleError, BundleReader, Manifest, PartName, PartReader, Version};

/// Bytes moved per read and write.
const CHUNK: usize = 1 << 20;

/// An install that passed every check, ready to write the other slot.
pub(crate) struct Plan<'a> {
    layout: &'a Layout,
    slot: Slot,
    partition: Partition,
    empty: PartUuid,
    new_uuid: PartUuid,
    /// The UKI ids to delete: the slot's present one and the new one (never the running
    /// slot's).
    ids: Vec<String>,
    uki_name: String,
    manifest: Manifest,
    /// The UKI has been given its final name.
    committed: bool,
}

impl<'a> Plan<'a> {
    /// Checks the verified `manifest` against the machine: the version, that the root is
    /// not the running one, that it fits the slot and the UKI the ESP. Writes nothing.
    pub(crate) fn check(
        layout: &'a Layout,
        machine: &Machine,
        manifest: &Manifest,
        options: InstallOptions,
    ) -> Result<Plan<'a>, InstallError> {
        check_version(manifest, &machine.version, options)?;
        let slot = machine.running.other();
        let running = machine.slot(machine.running);
        let partition = machine.slot(slot).clone();
        let new_uuid = PartUuid::of_roothash(&manifest.roothash);
        let running_id = running.partuuid.uki_id();
        if new_uuid == running.partuuid || new_uuid.uki_id() == running_id {
            return Err(InstallError::SameRoot(manifest.version.clone()));
        }
        let mut ids = vec![partition.partuuid.uki_id(), new_uuid.uki_id()];
        ids.dedup();
        if ids.contains(&running_id) {
            return Err(SystemError::PartitionTable(format!(
                "{} and {} share the UKI id {running_id}",
                slot.partition_name(),
                machine.running.partition_name()
            ))
            .into());
        }
        let need = manifest.slot_bytes();
        if need > partition.size {
            return Err(InstallError::TooBig {
                need,
                slot: partition.size,
            });
        }
        check_esp_space(layout, &ids, manifest)?;
        let tries = Tries {
            left: layout.tries.max(1),
            done: 0,
        };
        let uki_name = UkiName {
            id: new_uuid.uki_id(),
            tries: Some(tries),
        }
        .file_name();
        Ok(Plan {
            layout,
            slot,
            partition,
            empty: layout.empty_partuuids[slot.index()],
            new_uuid,
            ids,
            uki_name,
            manifest: manifest.clone(),
            committed: false,
        })
    }

    /// Writes the slot and the UKI from `bundle`, whose header was checked; on failure,
    /// empties the slot again.
    pub(crate) fn run<R: Read>(
        mut self,
        bundle: BundleReader<R>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Installed, InstallError> {
        match self.write(bundle, progress) {
            Ok(()) => Ok(Installed {
                slot: self.slot,
                version: self.manifest.version.clone(),
                uki: self.uki_name.clone(),
            }),
            Err(e) => Err(self.undo(e)),
        }
    }

    fn write<R: Read>(
        &mut self,
        mut bundle: BundleReader<R>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), InstallError> {
        let layout = self.layout;
        esp::remove(&layout.esp, &self.ids).map_err(io(format!(
            "deleting slot {}'s UKI from the ESP",
            self.slot
        )))?;
        self.set_partuuid(self.empty)?;
        let slot = SlotIo::open(&layout.disk, &self.partition)
            .map_err(io(format!("opening {}", layout.disk.display())))?;
        let mut buf = vec![0u8; CHUNK];
        self.write_slot(&slot, &mut bundle, &mut buf, progress)?;
        self.read_back(&slot, &mut buf, progress)?;
        self.set_partuuid(self.new_uuid)?;
        self.write_uki(&mut bundle, &mut buf, progress)?;
        bundle.finish()?;
        self.committed = true;
        esp::commit_temp(&layout.esp, &self.uki_name)
            .map_err(io(format!("renaming the UKI to {}", self.uki_name)))
    }

    fn set_partuuid(&self, uuid: PartUuid) -> Result<(), SystemError> {
        disk::set_partuuid(
            &self.layout.sfdisk,
            &self.layout.disk,
            self.partition.number,
            uuid,
        )
    }

    /// Streams `root` to offset 0 of the slot and `verity` to `hash_offset`, then syncs.
    fn write_slot<R: Read>(
        &self,
        slot: &SlotIo,
        bundle: &mut BundleReader<R>,
        buf: &mut [u8],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), InstallError> {
        let mut meter = Meter::new(Stage::Write, slot_data(&self.manifest));
        for offset in [0, self.manifest.hash_offset] {
            let mut part = next_part(bundle)?;
            stream(&mut part, buf, &mut meter, progress, |at, data| {
                slot.write_at(offset + at, data)
                    .map_err(io(format!("writing slot {}", self.slot)))
            })?;
        }
        slot.sync()
            .map_err(io(format!("syncing slot {} to the disk", self.slot)))
    }

    /// Reads `root` and `verity` back from the disk and checks their hashes again.
    fn read_back(
        &self,
        slot: &SlotIo,
        buf: &mut [u8],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), InstallError> {
        let mut meter = Meter::new(Stage::Readback, slot_data(&self.manifest));
        for (name, offset) in [
            (PartName::Root, 0),
            (PartName::Verity, self.manifest.hash_offset),
        ] {
            let Some(part) = self.manifest.part(name) else {
                return Err(BundleError::NotRead(name).into());
            };
            let mut hasher = Sha256::new();
            let mut at = 0;
            while at < part.size {
                let n = usize::try_from(part.size - at).map_or(buf.len(), |r| r.min(buf.len()));
                slot.read_at(offset + at, &mut buf[..n])
                    .map_err(io(format!("reading slot {} back", self.slot)))?;
                hasher.update(&buf[..n]);
                at += n as u64;
                meter.advance(n, progress);
            }
            if <[u8; 32]>::from(hasher.finalize()) != part.sha256.0 {
                return Err(InstallError::ReadBack(name));
            }
        }
        Ok(())
    }

    /// Writes the UKI to the temporary file on the ESP, syncs it, and hashes it again.
    fn write_uki<R: Read>(
        &self,
        bundle: &mut BundleReader<R>,
        buf: &mut [u8],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), InstallError> {
        let esp = &self.layout.esp;
        let what = || format!("writing the UKI to {}", esp.display());
        let mut file = esp::create_temp(esp).map_err(io(what()))?;
        let mut part = next_part(bundle)?;
        let mut meter = Meter::new(Stage::Uki, part.size());
        stream(&mut part, buf, &mut meter, progress, |_, data| {
            file.write_all(data).map_err(io(what()))
        })?;
        file.sync_all().map_err(io(what()))?;
        drop(file);
        let read = esp::hash_temp(esp).map_err(io(what()))?;
        match self.manifest.part(PartName::Uki) {
            Some(uki) if read == (uki.size, uki.sha256.0) => Ok(()),
            _ => Err(InstallError::ReadBack(PartName::Uki)),
        }
    }

    /// Empties the slot again after `error`: no UKI for it, the temporary file gone, the
    /// empty PARTUUID.
    fn undo(&self, error: InstallError) -> InstallError {
        let esp = &self.layout.esp;
        let mut problems = Vec::new();
        if self.committed
            && let Err(e) = esp::remove_named(esp, &self.uki_name)
        {
            problems.push(format!("deleting {}: {e}", self.uki_name));
        }
        if let Err(e) = esp::remove(esp, &self.ids) {
            problems.push(format!("deleting the slot's UKIs: {e}"));
        }
        if let Err(e) = self.set_partuuid(self.empty) {
            problems.push(e.to_string());
        }
        InstallError::Failed {
            slot: self.slot,
            source: Box::new(error),
            cleanup: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }
}

/// The version check: lower than the running one only when the bundle or the caller
/// allows it.
fn check_version(
    manifest: &Manifest,
    running: &Version,
    options: InstallOptions,
) -> Result<(), InstallError> {
    if manifest.version < *running && !manifest.allow_downgrade && !options.allow_downgrade {
        return Err(InstallError::Downgrade {
            bundle: manifest.version.clone(),
            running: running.clone(),
        });
    }
    Ok(())
}

/// Refuses a UKI the ESP has no room for, counting the room the UKIs to be deleted free.
fn check_esp_space(
    layout: &Layout,
    ids: &[String],
    manifest: &Manifest,
) -> Result<(), InstallError> {
    let what = || format!("reading the ESP at {}", layout.esp.display());
    let need = manifest.part(PartName::Uki).map_or(0, |p| p.size);
    let free = esp::free_bytes(&layout.esp).map_err(io(what()))?;
    let freed = esp::size_of(&layout.esp, ids).map_err(io(what()))?;
    let free = free.saturating_add(freed);
    if need > free {
        return Err(InstallError::EspFull { need, free });
    }
    Ok(())
}

/// The bytes of the slot an install writes: the root and its hash tree.
fn slot_data(manifest: &Manifest) -> u64 {
    [PartName::Root, PartName::Verity]
        .into_iter()
        .filter_map(|name| manifest.part(name))
        .map(|p| p.size)
        .sum()
}

/// The bundle's next part; the manifest was checked to have all three.
fn next_part<R: Read>(bundle: &mut BundleReader<R>) -> Result<PartReader<'_, R>, BundleError> {
    bundle
        .next_part()?
        .ok_or_else(|| BundleError::BadManifest("a part is missing".into()))
}

/// Bytes done of a stage, told to the progress callback as they grow.
struct Meter {
    stage: Stage,
    done: u64,
    total: u64,
}

impl Meter {
    fn new(stage: Stage, total: u64) -> Meter {
        Meter {
            stage,
            done: 0,
            total,
        }
    }

    fn advance(&mut self, n: usize, progress: &mut dyn FnMut(Progress)) {
        self.done += n as u64;
        progress(Progress {
            stage: self.stage,
            done: self.done,
            total: self.total,
        });
    }
}

/// Streams `part` to `write` (given each chunk's offset in the part) a buffer at a time.
fn stream<R: Read>(
    part: &mut PartReader<'_, R>,
    buf: &mut [u8],
    meter: &mut Meter,
    progress: &mut dyn FnMut(Progress),
    mut write: impl FnMut(u64, &[u8]) -> Result<(), InstallError>,
) -> Result<(), InstallError> {
    let mut at = 0;
    loop {
        let n = fill(part, buf)?;
        if n == 0 {
            return Ok(());
        }
        write(at, &buf[..n])?;
        at += n as u64;
        meter.advance(n, progress);
    }
}

/// Reads from `part` until `buf` is full or the part ends; the number of bytes read.
fn fill<R: Read>(part: &mut PartReader<'_, R>, buf: &mut [u8]) -> Result<usize, BundleError> {
    let mut n = 0;
    while n < buf.len() {
        match part.read_chunk(&mut buf[n..])? {
            0 => break,
            m => n += m,
        }
    }
    Ok(n)
}

/// Maps an I/O error to [`InstallError::Io`] saying what was being done.
fn io(what: String) -> impl FnOnce(std::io::Error) -> InstallError {
    move |source| InstallError::Io { what, source }
}
