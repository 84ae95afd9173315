//! Keyslots: the node's data key (DEK), wrapped once per enrolled unlock method.
//!
//! The model is LUKS2 / systemd-cryptenroll. `init` makes a random DEK, wraps it for the
//! first token and for a fresh recovery code, and writes the keyslot file. The DEK itself
//! is never written anywhere. Enrolling another method needs the unlocked DEK; removing a
//! slot needs the DEK unlocked through a *different* slot, which proves that slot works,
//! so the last working slot can never be removed.
//!
//! # File format
//!
//! `<node-path>/keyslots`, written atomically (temporary file, fsync, rename, fsync of the
//! directory) under an exclusive lock on `keyslots.lock`:
//!
//! ```text
//! magic    8 bytes  "PKSLOTS\n"
//! version  u16 BE   1
//! length   u32 BE   length of body
//! body     JSON     { store_id, dek_check, next_id, slots: [ { header, sealed } ] }
//! checksum 32 bytes SHA-256 of everything before it
//! ```
//!
//! The checksum catches accidental damage with a clear error. Tampering is caught by
//! cryptography: each slot's wrapped key is bound (AEAD associated data) to the store id
//! and the slot's header, and `dek_check` (HKDF of the DEK) confirms that what a slot
//! unwrapped is this node's DEK.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hkdf::Hkdf;
use hsm_core::recovery::{RecoveryCode, RecoveryProtector};
use hsm_core::{DataKey, Kind, Protector, Sealed, UnwrapError, WrapError};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::NodePath;
use crate::error::ErrorCode;

const MAGIC: &[u8; 8] = b"PKSLOTS\n";
const VERSION: u16 = 1;
const PREFIX_LEN: usize = 8 + 2 + 4;
const CHECKSUM_LEN: usize = 32;
/// Keyslot files are small; anything larger is not one of ours.
const MAX_BODY: usize = 1 << 20;

/// Public description of one keyslot, bound to its wrapped key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotHeader {
    /// Slot number, unique within the node, never reused.
    pub id: u32,
    /// The unlock method.
    pub kind: Kind,
    /// A name the user gave the slot.
    pub label: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
}

/// One keyslot: its header and what its protector stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyslot {
    /// The slot's public description.
    pub header: SlotHeader,
    /// The wrapped DEK and the protector's public parameters.
    pub sealed: Sealed,
}

impl Keyslot {
    /// Whether the slot's key material lives in a hardware token.
    pub fn is_hardware(&self) -> bool {
        self.header.kind.is_hardware()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotFile {
    store_id: String,
    dek_check: String,
    next_id: u32,
    slots: Vec<Keyslot>,
}

/// Errors of keyslot operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyslotError {
    /// No keyslot file: the node was never initialised.
    #[error("no node at {0}: run `pk init` first")]
    NotInitialised(PathBuf),
    /// `init` on a node that already has keyslots.
    #[error("a node already exists at {0}; refusing to overwrite its keyslots")]
    AlreadyInitialised(PathBuf),
    /// The keyslot file ends early.
    #[error("keyslot file {0} is truncated")]
    Truncated(PathBuf),
    /// The keyslot file is damaged or not a keyslot file.
    #[error("keyslot file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file was written by a newer version of pk.
    #[error("keyslot file {path} has format version {found}; this pk reads version {VERSION}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u16,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No slot with this number.
    #[error("there is no keyslot {0}")]
    NoSuchSlot(u32),
    /// No slot can be opened by this kind of unlock method.
    #[error("no {0} keyslot is enrolled")]
    NoSlotOfKind(Kind),
    /// The slot is the only one.
    #[error(
        "refusing to remove keyslot {0}: it is the last one, and without it nothing can be decrypted"
    )]
    LastSlot(u32),
    /// The slot to remove is the one the DEK was unlocked with.
    #[error(
        "refusing to remove keyslot {0} with itself: unlock with another keyslot, which proves that one works"
    )]
    RemovingUnlockingSlot(u32),
    /// Unwrapping through a slot failed.
    #[error("keyslot {slot}: {source}")]
    Unwrap {
        /// The slot tried.
        slot: u32,
        /// Why it failed.
        #[source]
        source: UnwrapError,
    },
    /// A slot unwrapped a key that is not this node's DEK.
    #[error("keyslot {0} holds a key that is not this node's data key")]
    ForeignKey(u32),
    /// Wrapping for a new slot failed.
    #[error(transparent)]
    Wrap(#[from] WrapError),
    /// The recovery kind is created by `init` only.
    #[error("a recovery-code slot is created by `init`; enrol a token or passphrase instead")]
    RecoveryEnrol,
}

impl KeyslotError {
    /// The kind of failure, for the agent's callers and `pk`'s exit code alike; `None`
    /// for one of no particular kind (a refused removal, an I/O error), which `pk` exits
    /// 1 for and the agent reports as internal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            KeyslotError::NotInitialised(_) => Some(ErrorCode::NotFound),
            KeyslotError::AlreadyInitialised(_) => Some(ErrorCode::Exists),
            KeyslotError::Truncated(_)
            | KeyslotError::Corrupt { .. }
            | KeyslotError::UnsupportedVersion { .. }
            | KeyslotError::ForeignKey(_) => Some(ErrorCode::Corrupt),
            KeyslotError::NoSuchSlot(_)
            | KeyslotError::NoSlotOfKind(_)
            | KeyslotError::RecoveryEnrol => Some(ErrorCode::BadInput),
            KeyslotError::Unwrap { source, .. } => unwrap_code(source),
            KeyslotError::Wrap(WrapError::TokenAbsent { .. }) => Some(ErrorCode::Unavailable),
            KeyslotError::Wrap(WrapError::WrongPin { .. } | WrapError::PinBlocked) => {
                Some(ErrorCode::Denied)
            }
            KeyslotError::Wrap(WrapError::Invalid(_)) => Some(ErrorCode::BadInput),
            _ => None,
        }
    }
}

/// The kind of a token's refusal to unwrap.
fn unwrap_code(e: &UnwrapError) -> Option<ErrorCode> {
    match e {
        UnwrapError::TokenAbsent { .. }
        | UnwrapError::NoReader
        | UnwrapError::PcrSignatureFile { .. } => Some(ErrorCode::Unavailable),
        UnwrapError::PinRequired => Some(ErrorCode::BadInput),
        UnwrapError::Corrupt(_) => Some(ErrorCode::Corrupt),
        UnwrapError::WrongPin { .. }
        | UnwrapError::PinBlocked
        | UnwrapError::PolicyMismatch { .. }
        | UnwrapError::KeyNotOnToken(_)
        | UnwrapError::WrongPassphrase
        | UnwrapError::WrongRecoveryCode
        | UnwrapError::WrongCard { .. }
        | UnwrapError::TouchDenied
        | UnwrapError::TouchTimeout
        | UnwrapError::UntrustedModule { .. } => Some(ErrorCode::Denied),
        _ => None,
    }
}

/// The DEK, unlocked, and the slot that unlocked it.
#[derive(Debug)]
pub struct Unlocked {
    /// The node's data key.
    pub key: DataKey,
    /// The slot it came from.
    pub slot: u32,
}

/// What `init` hands back: the keyslots, the unlocked DEK and the recovery code, which
/// must be shown to the user once and then dropped.
#[derive(Debug)]
pub struct Initialised {
    /// The new keyslots.
    pub keyslots: Keyslots,
    /// The new DEK, unlocked through the first slot.
    pub unlocked: Unlocked,
    /// The recovery code.
    pub recovery_code: RecoveryCode,
    /// The recovery slot's number.
    pub recovery_slot: u32,
}

/// A node's keyslots, as last read from or written to disk.
#[derive(Debug)]
pub struct Keyslots {
    path: PathBuf,
    lock: PathBuf,
    file: SlotFile,
}

impl Keyslots {
    /// Creates the node's DEK and keyslot file: slot 0 for `first`, slot 1 for a new
    /// recovery code. Refuses if the node already has keyslots.
    pub fn init(
        node: &NodePath,
        first: &dyn Protector,
        label: &str,
    ) -> Result<Initialised, KeyslotError> {
        if first.kind() == Kind::Recovery {
            return Err(KeyslotError::RecoveryEnrol);
        }
        node.create().map_err(|source| KeyslotError::Io {
            path: node.dir().to_owned(),
            source,
        })?;
        let path = node.keyslots();
        let lock_path = node.keyslots_lock();
        let _lock = lock(&lock_path)?;
        if path.exists() {
            return Err(KeyslotError::AlreadyInitialised(node.dir().to_owned()));
        }
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let store_id = hex(&id);
        let key = DataKey::generate();
        let recovery_code = RecoveryCode::generate();
        let mut file = SlotFile {
            dek_check: dek_check(&key, &store_id),
            store_id,
            next_id: 0,
            slots: Vec::new(),
        };
        let first_id = add_slot(&mut file, &key, first, label)?;
        let recovery_slot = add_slot(
            &mut file,
            &key,
            &RecoveryProtector::new(RecoveryCode::parse(&recovery_code.to_words()).map_err(
                |_| KeyslotError::Corrupt {
                    path: path.clone(),
                    reason: "recovery code did not round-trip".into(),
                },
            )?),
            "recovery code",
        )?;
        write_atomic(&path, &encode(&file))?;
        Ok(Initialised {
            keyslots: Keyslots {
                path,
                lock: lock_path,
                file,
            },
            unlocked: Unlocked {
                key,
                slot: first_id,
            },
            recovery_code,
            recovery_slot,
        })
    }

    /// Reads the node's keyslot file.
    pub fn open(node: &NodePath) -> Result<Keyslots, KeyslotError> {
        let path = node.keyslots();
        let file = read(&path, node)?;
        Ok(Keyslots {
            path,
            lock: node.keyslots_lock(),
            file,
        })
    }

    /// Reads keyslots from the bytes of a keyslot file, with the checks [`Keyslots::open`]
    /// makes once it has read them; `path` only names the file in errors (nothing is read
    /// or written here). Public for the fuzz target `keyslots` in `fuzz/`, which feeds it
    /// arbitrary bytes: the result is for looking at and unlocking, not for changes.
    #[doc(hidden)]
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Keyslots, KeyslotError> {
        Ok(Keyslots {
            path: path.to_owned(),
            lock: path.with_extension("lock"),
            file: decode(path, bytes)?,
        })
    }

    /// The enrolled slots, in order of creation.
    pub fn slots(&self) -> &[Keyslot] {
        &self.file.slots
    }

    /// The slot numbered `id`.
    pub fn slot(&self, id: u32) -> Option<&Keyslot> {
        self.file.slots.iter().find(|s| s.header.id == id)
    }

    /// Unlocks the DEK with `protector`, through slot `only` or else through each slot of
    /// the protector's kind in turn.
    ///
    /// A refused PIN stops the search at once, so one wrong PIN costs one token retry.
    pub fn unlock(
        &self,
        protector: &dyn Protector,
        only: Option<u32>,
    ) -> Result<Unlocked, KeyslotError> {
        let candidates: Vec<&Keyslot> = match only {
            Some(id) => vec![self.slot(id).ok_or(KeyslotError::NoSuchSlot(id))?],
            None => self
                .file
                .slots
                .iter()
                .filter(|s| s.header.kind == protector.kind())
                .collect(),
        };
        let mut first_error = None;
        for slot in candidates {
            let id = slot.header.id;
            match protector.unwrap(&slot.sealed, &aad(&self.file.store_id, &slot.header)) {
                Ok(key) => {
                    if dek_check(&key, &self.file.store_id) != self.file.dek_check {
                        return Err(KeyslotError::ForeignKey(id));
                    }
                    return Ok(Unlocked { key, slot: id });
                }
                Err(source) => {
                    let stop = matches!(
                        source,
                        UnwrapError::WrongPin { .. }
                            | UnwrapError::PinBlocked
                            | UnwrapError::PinRequired
                    );
                    let error = KeyslotError::Unwrap { slot: id, source };
                    if stop {
                        return Err(error);
                    }
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or(KeyslotError::NoSlotOfKind(protector.kind())))
    }

    /// Enrols `protector` as a new slot for the unlocked DEK; returns the slot number.
    pub fn enroll(
        &mut self,
        unlocked: &Unlocked,
        protector: &dyn Protector,
        label: &str,
    ) -> Result<u32, KeyslotError> {
        if protector.kind() == Kind::Recovery {
            return Err(KeyslotError::RecoveryEnrol);
        }
        self.modify(|file| {
            if dek_check(&unlocked.key, &file.store_id) != file.dek_check {
                return Err(KeyslotError::ForeignKey(unlocked.slot));
            }
            add_slot(file, &unlocked.key, protector, label)
        })
    }

    /// Removes slot `id`. The DEK must have been unlocked through another slot.
    pub fn remove(&mut self, unlocked: &Unlocked, id: u32) -> Result<(), KeyslotError> {
        self.modify(|file| {
            if dek_check(&unlocked.key, &file.store_id) != file.dek_check {
                return Err(KeyslotError::ForeignKey(unlocked.slot));
            }
            let index = file
                .slots
                .iter()
                .position(|s| s.header.id == id)
                .ok_or(KeyslotError::NoSuchSlot(id))?;
            if file.slots.len() == 1 {
                return Err(KeyslotError::LastSlot(id));
            }
            if unlocked.slot == id {
                return Err(KeyslotError::RemovingUnlockingSlot(id));
            }
            file.slots.remove(index);
            Ok(())
        })
    }

    /// Re-reads the file under the lock, applies `change`, and writes it back atomically,
    /// so concurrent `pk` processes cannot lose each other's slots.
    fn modify<T>(
        &mut self,
        change: impl FnOnce(&mut SlotFile) -> Result<T, KeyslotError>,
    ) -> Result<T, KeyslotError> {
        let _lock = lock(&self.lock)?;
        let mut file = read_file(&self.path)?;
        let out = change(&mut file)?;
        write_atomic(&self.path, &encode(&file))?;
        self.file = file;
        Ok(out)
    }
}

fn add_slot(
    file: &mut SlotFile,
    key: &DataKey,
    protector: &dyn Protector,
    label: &str,
) -> Result<u32, KeyslotError> {
    let header = SlotHeader {
        id: file.next_id,
        kind: protector.kind(),
        label: label.to_owned(),
        created: crate::clock::unix_s(),
    };
    let sealed = protector.wrap(key, &aad(&file.store_id, &header))?;
    let id = header.id;
    file.next_id += 1;
    file.slots.push(Keyslot { header, sealed });
    Ok(id)
}

/// The associated data a slot's wrapped key is bound to: the store and the slot header.
fn aad(store_id: &str, header: &SlotHeader) -> Vec<u8> {
    let mut aad = b"pk keyslot v1\0".to_vec();
    aad.extend_from_slice(store_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&serde_json::to_vec(header).expect("a header always serialises"));
    aad
}

/// A public value that identifies the DEK without revealing it.
fn dek_check(key: &DataKey, store_id: &str) -> String {
    let hk = Hkdf::<Sha256>::new(Some(store_id.as_bytes()), key.expose());
    let mut out = [0u8; 32];
    hk.expand(b"pk dek check v1", &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    STANDARD_NO_PAD.encode(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn encode(file: &SlotFile) -> Vec<u8> {
    let body = serde_json::to_vec_pretty(file).expect("a keyslot file always serialises");
    let mut out = Vec::with_capacity(PREFIX_LEN + body.len() + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    out
}

fn decode(path: &Path, bytes: &[u8]) -> Result<SlotFile, KeyslotError> {
    let corrupt = |reason: &str| KeyslotError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) {
            KeyslotError::Truncated(path.to_owned())
        } else {
            corrupt("not a keyslot file (bad magic)")
        });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a keyslot file (bad magic)"));
    }
    if bytes.len() < PREFIX_LEN {
        return Err(KeyslotError::Truncated(path.to_owned()));
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(KeyslotError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    let len = u32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
    if len > MAX_BODY {
        return Err(corrupt("implausible body length"));
    }
    let end = PREFIX_LEN + len;
    if bytes.len() < end + CHECKSUM_LEN {
        return Err(KeyslotError::Truncated(path.to_owned()));
    }
    if bytes.len() > end + CHECKSUM_LEN {
        return Err(corrupt("trailing bytes after the checksum"));
    }
    if Sha256::digest(&bytes[..end]).as_slice() != &bytes[end..] {
        return Err(corrupt(
            "checksum mismatch (the file was damaged or edited)",
        ));
    }
    let file: SlotFile = serde_json::from_slice(&bytes[PREFIX_LEN..end])
        .map_err(|e| corrupt(&format!("unreadable body: {e}")))?;
    let mut ids: Vec<u32> = file.slots.iter().map(|s| s.header.id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != file.slots.len() {
        return Err(corrupt("two slots share a number"));
    }
    if file
        .slots
        .iter()
        .any(|s| s.header.kind != s.sealed.kind() || s.header.id >= file.next_id)
    {
        return Err(corrupt("a slot header does not match its record"));
    }
    Ok(file)
}

fn read(path: &Path, node: &NodePath) -> Result<SlotFile, KeyslotError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(KeyslotError::NotInitialised(node.dir().to_owned()));
        }
        _ => {}
    }
    read_file(path)
}

fn read_file(path: &Path) -> Result<SlotFile, KeyslotError> {
    let bytes = std::fs::read(path).map_err(|source| KeyslotError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode(path, &bytes)
}

/// An exclusive lock on `path`, released when the returned file closes.
fn lock(path: &Path) -> Result<File, KeyslotError> {
    let io = |source| KeyslotError::Io {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode_0600()
        .open(path)
        .map_err(io)?;
    file.lock().map_err(io)?;
    Ok(file)
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeyslotError> {
    let tmp = path.with_extension("tmp");
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| KeyslotError::Io { path: p, source }
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode_0600()
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsm_core::Pin;
    use hsm_core::soft::{Argon2Params, SoftProtector};

    fn soft(pass: &str) -> SoftProtector {
        SoftProtector::new(Pin::from(pass), Argon2Params::INSECURE_FOR_TESTS)
    }

    #[test]
    fn init_unlock_enroll_remove() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodePath::new(dir.path().join("node"));
        let init = Keyslots::init(&node, &soft("one"), "laptop").unwrap();
        assert_eq!(init.keyslots.slots().len(), 2);
        assert!(matches!(
            Keyslots::init(&node, &soft("one"), "again"),
            Err(KeyslotError::AlreadyInitialised(_))
        ));

        let mut slots = Keyslots::open(&node).unwrap();
        let unlocked = slots.unlock(&soft("one"), None).unwrap();
        assert_eq!(unlocked.key.expose(), init.unlocked.key.expose());
        let second = slots.enroll(&unlocked, &soft("two"), "backup").unwrap();
        assert_eq!(second, 2);

        // Removing the slot we unlocked with is refused; through another slot it works.
        assert!(matches!(
            slots.remove(&unlocked, 0),
            Err(KeyslotError::RemovingUnlockingSlot(0))
        ));
        let via_two = slots.unlock(&soft("two"), None).unwrap();
        slots.remove(&via_two, 0).unwrap();
        assert!(Keyslots::open(&node).unwrap().slot(0).is_none());
        assert!(matches!(
            slots.unlock(&soft("one"), None),
            Err(KeyslotError::Unwrap { .. })
        ));

        // The recovery code opens it too.
        let recovery =
            RecoveryProtector::new(RecoveryCode::parse(&init.recovery_code.to_words()).unwrap());
        let via_recovery = slots.unlock(&recovery, None).unwrap();
        assert_eq!(via_recovery.slot, init.recovery_slot);
        slots.remove(&via_recovery, 2).unwrap();
        // Only the recovery slot is left; it cannot be removed.
        assert!(matches!(
            slots.remove(&via_recovery, init.recovery_slot),
            Err(KeyslotError::LastSlot(_))
        ));
    }

    #[test]
    fn tampered_header_does_not_unlock() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodePath::new(dir.path());
        Keyslots::init(&node, &soft("one"), "laptop").unwrap();
        // Rewrite the file with a valid checksum but a changed label: the AEAD binding
        // must still refuse the slot.
        let mut file = read_file(&node.keyslots()).unwrap();
        file.slots[0].header.label = "evil".into();
        std::fs::write(node.keyslots(), encode(&file)).unwrap();
        let slots = Keyslots::open(&node).unwrap();
        assert!(matches!(
            slots.unlock(&soft("one"), None),
            Err(KeyslotError::Unwrap {
                source: UnwrapError::WrongPassphrase,
                ..
            })
        ));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodePath::new(dir.path());
        Keyslots::init(&node, &soft("one"), "laptop").unwrap();
        let good = std::fs::read(node.keyslots()).unwrap();
        for len in 0..good.len() {
            assert!(
                decode(Path::new("k"), &good[..len]).is_err(),
                "length {len}"
            );
        }
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(decode(Path::new("k"), &bad).is_err(), "flip at {i}");
        }
        assert!(decode(Path::new("k"), &good).is_ok());
    }
}
