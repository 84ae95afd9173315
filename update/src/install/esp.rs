//! The UKIs on the ESP: `EFI/Linux/pk-appliance-<id>[+N[-M]].efi`, where `<id>` is the
//! first 16 hex digits of the PARTUUID (and so of the root hash) of the slot the UKI
//! boots, and `+N-M` systemd-boot's boot counter (N tries left, M done).
//!
//! A new UKI is written under [`TEMP_NAME`] (not a `.efi` name, so systemd-boot never
//! offers it), checked, then renamed; every change ends with the directory synced.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::Tries;

/// The UKIs' directory, relative to the ESP.
pub(crate) const UKI_DIR: &str = "EFI/Linux";
/// What every UKI of this product's name starts with.
const PREFIX: &str = "pk-appliance-";
/// The name a UKI is written under before it is checked.
pub(crate) const TEMP_NAME: &str = "pk-update.tmp";

/// What a UKI's file name says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UkiName {
    /// 16 lower-case hex digits: the start of the PARTUUID of the slot it boots.
    pub(crate) id: String,
    /// The boot counter; `None` for an entry that booted well (or never had one).
    pub(crate) tries: Option<Tries>,
}

impl UkiName {
    /// Reads a file name; `None` for anything but `pk-appliance-<16 hex>[+N[-M]].efi`.
    pub(crate) fn parse(file_name: &str) -> Option<UkiName> {
        let rest = file_name.strip_prefix(PREFIX)?.strip_suffix(".efi")?;
        let id = rest.get(..16)?.to_ascii_lowercase();
        if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let counter = &rest[16..];
        let tries = if counter.is_empty() {
            None
        } else {
            let counter = counter.strip_prefix('+')?;
            let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
            let number = |s: &str| {
                (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse::<u32>().ok())
                    .flatten()
            };
            Some(Tries {
                left: number(left)?,
                done: number(done)?,
            })
        };
        Some(UkiName { id, tries })
    }

    /// The file name: `pk-appliance-<id>+<left>.efi` for a new entry.
    pub(crate) fn file_name(&self) -> String {
        match self.tries {
            None => format!("{PREFIX}{}.efi", self.id),
            Some(Tries { left, done: 0 }) => format!("{PREFIX}{}+{left}.efi", self.id),
            Some(Tries { left, done }) => format!("{PREFIX}{}+{left}-{done}.efi", self.id),
        }
    }
}

/// The UKI directory of the ESP mounted at `esp`.
pub(crate) fn dir(esp: &Path) -> PathBuf {
    esp.join(UKI_DIR)
}

/// Every UKI of this product on the ESP, by file name, sorted.
pub(crate) fn list(esp: &Path) -> io::Result<Vec<(String, UkiName)>> {
    let entries = match fs::read_dir(dir(esp)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(name) = name.to_str()
            && let Some(uki) = UkiName::parse(name)
        {
            found.push((name.to_string(), uki));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Deletes every UKI whose id is in `ids`, and a temporary file an interrupted install
/// left; syncs the directory. Returns the names deleted.
pub(crate) fn remove(esp: &Path, ids: &[String]) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for (name, uki) in list(esp)? {
        if ids.contains(&uki.id) {
            fs::remove_file(dir(esp).join(&name))?;
            removed.push(name);
        }
    }
    remove_temp(esp)?;
    sync_dir(esp)?;
    Ok(removed)
}

/// The bytes the UKIs with an id in `ids` take (freed when they are deleted).
pub(crate) fn size_of(esp: &Path, ids: &[String]) -> io::Result<u64> {
    let mut total = 0;
    for (name, uki) in list(esp)? {
        if ids.contains(&uki.id) {
            total += fs::metadata(dir(esp).join(name))?.len();
        }
    }
    Ok(total)
}

/// The bytes free on the ESP's file system, for an unprivileged writer as for root.
pub(crate) fn free_bytes(esp: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(esp)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Creates the temporary file a new UKI is written to (replacing one left behind).
pub(crate) fn create_temp(esp: &Path) -> io::Result<File> {
    fs::create_dir_all(dir(esp))?;
    File::create(dir(esp).join(TEMP_NAME))
}

/// Deletes the temporary file, if there is one.
pub(crate) fn remove_temp(esp: &Path) -> io::Result<()> {
    match fs::remove_file(dir(esp).join(TEMP_NAME)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The temporary file's length and SHA-256, read back from the ESP.
pub(crate) fn hash_temp(esp: &Path) -> io::Result<(u64, [u8; 32])> {
    let mut file = File::open(dir(esp).join(TEMP_NAME))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok((len, hasher.finalize().into())),
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Renames the temporary file to `name` and syncs the directory: from here systemd-boot
/// offers the entry.
pub(crate) fn commit_temp(esp: &Path, name: &str) -> io::Result<()> {
    fs::rename(dir(esp).join(TEMP_NAME), dir(esp).join(name))?;
    sync_dir(esp)
}

/// Deletes the UKI called `name`, if it exists, and syncs the directory.
pub(crate) fn remove_named(esp: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(dir(esp).join(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    sync_dir(esp)
}

fn sync_dir(esp: &Path) -> io::Result<()> {
    match File::open(dir(esp)) {
        Ok(d) => d.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uki_names_round_trip_with_their_boot_counter() {
        let id = "0123456789abcdef";
        for (name, tries) in [
            (format!("pk-appliance-{id}.efi"), None),
            (format!("pk-appliance-{id}+3.efi"), Some((3, 0))),
            (format!("pk-appliance-{id}+0-3.efi"), Some((0, 3))),
            (format!("pk-appliance-{id}+1-2.efi"), Some((1, 2))),
        ] {
            let uki = UkiName::parse(&name).expect("a UKI name");
            assert_eq!(uki.id, id);
            assert_eq!(uki.tries.map(|t| (t.left, t.done)), tries);
            assert_eq!(uki.file_name(), name);
        }
        for bad in [
            "pk-appliance-0123456789abcde.efi",
            "pk-appliance-0123456789abcdeg.efi",
            "pk-appliance-0123456789abcdef+.efi",
            "pk-appliance-0123456789abcdef+1-.efi",
            "pk-appliance-0123456789abcdef-1.efi",
            "pk-appliance-0123456789abcdef+1-2-3.efi",
            "pk-appliance-0123456789abcdef.efi.tmp",
            "other-0123456789abcdef.efi",
            "pk-appliance-é123456789abcdef.efi",
            "pk-update.tmp",
        ] {
            assert_eq!(UkiName::parse(bad), None, "{bad}");
        }
    }
}
