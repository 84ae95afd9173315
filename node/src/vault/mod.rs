//! Vaults: named, versioned trees of secrets, stored as a real git object graph.
//!
//! Every vault is a git history: blobs (secret contents), trees (directories) and commits
//! built with gitoxide's object crate, SHA-1 object ids as git computes them. Each object
//! is one sealed row of the `objects` table under `vault id || keyed hash(vault id, oid)`,
//! so neither names nor content hashes appear in the file. The vault record holds the
//! name and three pointers:
//!
//! - `head`: the commit reads and writes start from (what `vaults version` moves);
//! - `latest`: the newest commit made;
//! - `kept`: older tips that a write made at an earlier version would otherwise orphan.
//!   Polykey discards that newer history; we keep it reachable, so nothing is lost.
//!
//! Each mutation (objects, commit, record, audit event) is one write transaction.
//! Directories may be empty (a tree entry pointing at the empty tree), so `mkdir` is
//! visible in history. Paths are checked ([`SecretPath`]) before anything is touched.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;

use gix_hash::ObjectId;
use gix_object::bstr::{BString, ByteSlice};
use gix_object::tree::{EntryKind, EntryMode};
use gix_object::{CommitRef, Kind as ObjectKind, TreeRef, WriteTo as _};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use crate::audit;
use crate::clock::unix_s;
use crate::identity::NodeId;
use crate::store::{Read, ReadTx, Store, StoreError, Table, WriteTx};

mod merge;
mod sync;
pub use merge::merge_conflict_name;
pub use sync::{
    DEFAULT_MAX_DEPTH, DEFAULT_TRANSFER_BYTES, FetchOutcome, FetchResult, Fetched, MAX_HAVES,
    MAX_RECEIVED, MAX_TRANSFER_OBJECTS, ObjectIds, Outgoing, PullOutcome, PullPlan, Receiver,
    SyncState, TransferLimits, WireEntry, WireObject,
};

pub use crate::ids::{BadVaultId, VaultId};

const HASH: gix_hash::Kind = gix_hash::Kind::Sha1;
const MAX_NAME: usize = 255;
const MAX_PATH: usize = 4096;
/// The most commits `vaults log` returns without a depth.
pub const DEFAULT_LOG_DEPTH: usize = 1000;

/// What the store keeps about a vault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRecord {
    /// Permanent id.
    pub id: VaultId,
    /// Current name.
    pub name: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// The commit reads and writes start from.
    pub head: String,
    /// The newest commit.
    pub latest: String,
    /// Older tips kept reachable after writes at an earlier version.
    pub kept: Vec<String>,
    /// Where the vault came from and how its pulls went.
    #[serde(default)]
    pub sync: SyncState,
}

/// One commit, as `vaults log` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// Object id (hex).
    pub oid: String,
    /// Author: the NodeId that made the change.
    pub author: String,
    /// Unix seconds.
    pub time: i64,
    /// What changed.
    pub message: String,
    /// Parent commits (hex).
    pub parents: Vec<String>,
}

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Name within its directory.
    pub name: String,
    /// `file` or `dir`.
    pub kind: EntryType,
}

/// File or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    /// A secret.
    File,
    /// A directory.
    Dir,
}

/// `secrets stat`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// File or directory.
    pub kind: EntryType,
    /// Bytes for a file, entries for a directory.
    pub size: u64,
    /// The object id (hex).
    pub oid: String,
    /// The vault commit this was read at.
    pub commit: String,
}

/// Errors of vault operations. Messages name vaults and paths, never contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// No vault by that name.
    #[error("no vault named {0:?}")]
    NoVault(String),
    /// The name is taken.
    #[error("a vault named {0:?} already exists")]
    VaultExists(String),
    /// A vault name that cannot be used.
    #[error("invalid vault name \"{name}\": {reason}")]
    BadVaultName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A secret path that cannot be used.
    #[error("invalid secret path \"{path}\": {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// Nothing at that path.
    #[error("no such secret or directory: {0}")]
    NotFound(String),
    /// Something already there.
    #[error("already exists: {0}")]
    Exists(String),
    /// A directory where a secret was expected.
    #[error("is a directory: {0}")]
    IsDir(String),
    /// A secret where a directory was expected.
    #[error("not a directory: {0}")]
    NotDir(String),
    /// A non-empty directory removed without `-r`.
    #[error("directory not empty: {0} (use -r)")]
    NotEmpty(String),
    /// No commit matches.
    #[error("no commit {0:?} in this vault's history")]
    NoCommit(String),
    /// Not a commit id: 4 to 40 hex digits.
    #[error("{0:?} is not a commit id: give 4 to 40 hex digits, or `last`")]
    BadCommitId(String),
    /// Several commits match a short id.
    #[error("commit id {0:?} is ambiguous; give more characters")]
    AmbiguousCommit(String),
    /// A malformed vault id.
    #[error("not a vault id")]
    BadVaultId,
    /// A secret over the size limit.
    #[error("a secret may be at most {0} bytes")]
    TooLarge(u64),
    /// The writer gave up midway; nothing was written.
    #[error("the upload was interrupted; nothing was written")]
    Interrupted,
    /// The upload's length differs from the size announced.
    #[error("the secret's size changed while it was being read; nothing was written")]
    SizeMismatch,
    /// A stored object is damaged.
    #[error("damaged object {0} in the vault")]
    Corrupt(String),
    /// A clone of a vault this node has already.
    #[error("this node has that vault already, as {0:?}: pull it instead")]
    AlreadyCloned(String),
    /// Objects from a peer failed verification; nothing became visible.
    #[error("refused what the peer sent: {0}; nothing was changed")]
    Refused(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<BadVaultId> for VaultError {
    fn from(_: BadVaultId) -> Self {
        VaultError::BadVaultId
    }
}

/// Why `name` cannot be one component of a secret path (a file or directory name in a
/// vault), or `None` when it can: UTF-8, 1 to 255 bytes, not `.` or `..`, no `/`, no NUL or
/// other control character. Checked on every path a user gives, on every tree entry a
/// peer sends, and again on every name `pk vaults export` writes to disk.
pub fn bad_name(name: &[u8]) -> Option<&'static str> {
    let Ok(name) = std::str::from_utf8(name) else {
        return Some("not UTF-8");
    };
    match name {
        "" => Some("empty path component"),
        "." | ".." => Some("'.' and '..' are not allowed"),
        n if n.len() > MAX_NAME => Some("a component is longer than 255 bytes"),
        n if n.contains('/') => Some("a name cannot contain '/'"),
        n if n.chars().any(char::is_control) => Some("control characters are not allowed"),
        _ => None,
    }
}

/// A checked secret path: components without `.`/`..`, empty parts or NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretPath(Vec<String>);

impl SecretPath {
    /// Parses a path inside a vault. One trailing `/` is allowed (it names a directory;
    /// see [`SecretPath::parse_file`]); the empty path is the vault root when `allow_root`.
    pub fn parse(path: &str, allow_root: bool) -> Result<SecretPath, VaultError> {
        let bad = |reason| VaultError::BadPath {
            path: path.escape_debug().to_string(),
            reason,
        };
        if path.len() > MAX_PATH {
            return Err(bad("longer than 4096 bytes"));
        }
        if path.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        let trimmed = path.strip_suffix('/').unwrap_or(path);
        if trimmed.is_empty() || trimmed == "." {
            return if allow_root {
                Ok(SecretPath(Vec::new()))
            } else {
                Err(bad("empty path"))
            };
        }
        if trimmed.starts_with('/') {
            return Err(bad(
                "absolute paths are not allowed; paths are relative to the vault",
            ));
        }
        let mut parts = Vec::new();
        for part in trimmed.split('/') {
            if let Some(reason) = bad_name(part.as_bytes()) {
                return Err(bad(reason));
            }
            parts.push(part.to_owned());
        }
        // The same bound as for trees received from peers, so that no vault is deeper than
        // what a peer would accept from it.
        if parts.len() > sync::DEFAULT_MAX_DEPTH {
            return Err(bad("nested more than 128 levels deep"));
        }
        Ok(SecretPath(parts))
    }

    /// Parses the path of a secret (a file): no trailing `/`, not the root.
    pub fn parse_file(path: &str) -> Result<SecretPath, VaultError> {
        if path.ends_with('/') {
            return Err(VaultError::BadPath {
                path: path.escape_debug().to_string(),
                reason: "a secret's path cannot end in '/'",
            });
        }
        Self::parse(path, false)
    }

    /// The components.
    pub fn parts(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

fn check_vault_name(name: &str) -> Result<(), VaultError> {
    let bad = |reason| VaultError::BadVaultName {
        name: name.escape_debug().to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > 128 {
        return Err(bad("longer than 128 bytes"));
    }
    if name == "." || name == ".." {
        return Err(bad("'.' and '..' are not names"));
    }
    if name.contains(['/', ':', '\\']) {
        return Err(bad("'/', ':' and '\\' are not allowed"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("control characters are not allowed"));
    }
    Ok(())
}

/// A tree, decoded: name -> (mode, oid).
type TreeMap = BTreeMap<BString, (EntryMode, ObjectId)>;

/// Object row formats: the object's bytes inline, or a header for a chunked blob.
const FORMAT_INLINE: u8 = 0;
const FORMAT_CHUNKED: u8 = 1;
/// Blobs larger than this are stored as chunks of this size, each its own sealed row, so
/// that large secrets are written and read in bounded memory.
pub const CHUNK_SIZE: usize = 1 << 20;
/// The largest secret accepted.
pub const MAX_SECRET: u64 = 4 << 30;

/// Vault operations on the node's store, authored by one node.
pub struct Vaults<'s> {
    store: &'s Store,
    author: NodeId,
}

/// Object access inside one transaction (`R` is a read or a write transaction).
struct Tx<'a, 's, R> {
    store: &'s Store,
    tx: &'a mut R,
    vault: VaultId,
}

impl<'s> Tx<'_, 's, WriteTx<'s>> {
    /// Stores a blob arriving in pieces; small blobs stay inline, large ones are chunked.
    /// The git object id needs the size first, so chunks are hashed in a second pass.
    fn put_blob_stream(
        &mut self,
        pieces: &mut dyn Iterator<Item = Result<Zeroizing<Vec<u8>>, VaultError>>,
        size: Option<u64>,
    ) -> Result<ObjectId, VaultError> {
        // With the size announced, the object id is hashed as the bytes arrive; without
        // it, in a second pass over the stored chunks.
        let mut early = size.map(|size| {
            let mut hasher = gix_hash::hasher(HASH);
            hasher.update(&gix_object::encode::loose_header(ObjectKind::Blob, size));
            hasher
        });
        let mut blob_id = [0u8; 16];
        OsRng.fill_bytes(&mut blob_id);
        let mut buffer = Zeroizing::new(Vec::with_capacity(CHUNK_SIZE));
        let mut chunks = 0u32;
        let mut total = 0u64;
        for piece in pieces {
            let piece = piece?;
            if let Some(hasher) = early.as_mut() {
                hasher.update(&piece);
            }
            total += piece.len() as u64;
            if total > MAX_SECRET {
                return Err(VaultError::TooLarge(MAX_SECRET));
            }
            let mut rest: &[u8] = &piece;
            while !rest.is_empty() {
                if buffer.len() == CHUNK_SIZE {
                    // More is coming: this one goes out as a chunk.
                    self.tx
                        .put(Table::Objects, &self.chunk_key(&blob_id, chunks), &buffer)?;
                    chunks += 1;
                    buffer.clear();
                }
                let take = (CHUNK_SIZE - buffer.len()).min(rest.len());
                buffer.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
        }
        if size.is_some_and(|size| size != total) {
            return Err(VaultError::SizeMismatch);
        }
        if chunks == 0 {
            // Small enough to keep inline (at most one chunk's worth).
            return self.put(ObjectKind::Blob, &buffer);
        }
        if !buffer.is_empty() {
            self.tx
                .put(Table::Objects, &self.chunk_key(&blob_id, chunks), &buffer)?;
            chunks += 1;
        }
        drop(buffer);
        let hasher = match early {
            Some(hasher) => hasher,
            None => self.hash_chunks(&blob_id, chunks, total)?,
        };
        let oid = hasher
            .try_finalize()
            .map_err(|_| VaultError::Corrupt("hash".into()))?;
        self.keep_chunked(&oid, &blob_id, chunks, total)?;
        Ok(oid)
    }

    /// The second pass of [`Self::put_blob_stream`] when the size was not announced: the
    /// git hash of a blob of `total` bytes over its stored chunks.
    fn hash_chunks(
        &self,
        blob_id: &[u8; 16],
        chunks: u32,
        total: u64,
    ) -> Result<gix_hash::Hasher, VaultError> {
        let mut hasher = gix_hash::hasher(HASH);
        hasher.update(&gix_object::encode::loose_header(ObjectKind::Blob, total));
        for index in 0..chunks {
            let chunk = self
                .tx
                .get(Table::Objects, &self.chunk_key(blob_id, index))?
                .ok_or_else(|| VaultError::Corrupt("chunk".into()))?;
            hasher.update(&chunk);
        }
        Ok(hasher)
    }

    /// Stores the record of a chunked blob `oid` whose chunks are stored under `blob_id`,
    /// or deletes those chunks if the same content is stored already.
    fn keep_chunked(
        &mut self,
        oid: &ObjectId,
        blob_id: &[u8; 16],
        chunks: u32,
        total: u64,
    ) -> Result<(), VaultError> {
        let key = self.key(oid);
        if self.tx.contains(Table::Objects, &key)? {
            // The same content is stored already: drop this copy.
            for index in 0..chunks {
                self.tx
                    .delete(Table::Objects, &self.chunk_key(blob_id, index))?;
            }
        } else {
            let mut header = vec![FORMAT_CHUNKED, kind_byte(ObjectKind::Blob)];
            header.extend_from_slice(&total.to_be_bytes());
            header.extend_from_slice(blob_id);
            header.extend_from_slice(&chunks.to_be_bytes());
            self.tx.put(Table::Objects, &key, &header)?;
        }
        Ok(())
    }

    fn put(&mut self, kind: ObjectKind, data: &[u8]) -> Result<ObjectId, VaultError> {
        let oid = gix_object::compute_hash(HASH, kind, data)
            .map_err(|_| VaultError::Corrupt("hash".into()))?;
        let key = self.key(&oid);
        if !self.tx.contains(Table::Objects, &key)? {
            let mut value = Vec::with_capacity(data.len() + 2);
            value.push(FORMAT_INLINE);
            value.push(kind_byte(kind));
            value.extend_from_slice(data);
            self.tx.put(Table::Objects, &key, &value)?;
        }
        Ok(oid)
    }

    fn put_tree(&mut self, map: &TreeMap) -> Result<ObjectId, VaultError> {
        let data = encode_tree(map)?;
        self.put(ObjectKind::Tree, &data)
    }
}

impl<R: Read> Tx<'_, '_, R> {
    fn key(&self, oid: &ObjectId) -> Vec<u8> {
        let mut key = self.vault.0.to_vec();
        key.extend_from_slice(
            &self
                .store
                .name_hash("object", &[&self.vault.0, oid.as_bytes()]),
        );
        key
    }

    fn chunk_key(&self, blob_id: &[u8; 16], index: u32) -> Vec<u8> {
        let mut key = self.vault.0.to_vec();
        key.extend_from_slice(
            &self
                .store
                .name_hash("chunk", &[&self.vault.0, blob_id, &index.to_be_bytes()]),
        );
        key
    }

    /// An object's row, decoded: kind, size, and where its bytes are.
    fn object(&self, oid: &ObjectId) -> Result<Object, VaultError> {
        let corrupt = || VaultError::Corrupt(oid.to_string());
        let value = self
            .tx
            .get(Table::Objects, &self.key(oid))?
            .ok_or_else(corrupt)?;
        match value.as_slice() {
            [FORMAT_INLINE, kind, data @ ..] => Ok(Object {
                kind: byte_kind(*kind).ok_or_else(corrupt)?,
                size: data.len() as u64,
                body: Body::Inline(Zeroizing::new(data.to_vec())),
            }),
            [FORMAT_CHUNKED, kind, rest @ ..] if rest.len() == 8 + 16 + 4 => Ok(Object {
                kind: byte_kind(*kind).ok_or_else(corrupt)?,
                size: u64::from_be_bytes(rest[..8].try_into().map_err(|_| corrupt())?),
                body: Body::Chunked {
                    blob_id: rest[8..24].try_into().map_err(|_| corrupt())?,
                    chunks: u32::from_be_bytes(rest[24..28].try_into().map_err(|_| corrupt())?),
                },
            }),
            _ => Err(corrupt()),
        }
    }

    /// Hands an object's bytes to `sink` piece by piece (at most one chunk in memory).
    fn stream(
        &self,
        oid: &ObjectId,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), VaultError>,
    ) -> Result<ObjectKind, VaultError> {
        let object = self.object(oid)?;
        match &object.body {
            Body::Inline(data) => sink(data)?,
            Body::Chunked { blob_id, chunks } => {
                let mut seen = 0u64;
                for index in 0..*chunks {
                    let chunk = self
                        .tx
                        .get(Table::Objects, &self.chunk_key(blob_id, index))?
                        .ok_or_else(|| VaultError::Corrupt(oid.to_string()))?;
                    seen += chunk.len() as u64;
                    sink(&chunk)?;
                }
                if seen != object.size {
                    return Err(VaultError::Corrupt(oid.to_string()));
                }
            }
        }
        Ok(object.kind)
    }

    fn get(&self, oid: &ObjectId) -> Result<(ObjectKind, Zeroizing<Vec<u8>>), VaultError> {
        let mut data = Zeroizing::new(Vec::new());
        let kind = self.stream(oid, &mut |piece| {
            data.extend_from_slice(piece);
            Ok(())
        })?;
        Ok((kind, data))
    }

    /// An object's bytes, which must be of `kind`.
    fn get_as(&self, oid: &ObjectId, kind: ObjectKind) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        match self.get(oid)? {
            (found, data) if found == kind => Ok(data),
            _ => Err(VaultError::Corrupt(oid.to_string())),
        }
    }

    fn tree(&self, oid: &ObjectId) -> Result<TreeMap, VaultError> {
        let data = self.get_as(oid, ObjectKind::Tree)?;
        let tree =
            TreeRef::from_bytes(&data, HASH).map_err(|_| VaultError::Corrupt(oid.to_string()))?;
        Ok(tree
            .entries
            .iter()
            .map(|e| (e.filename.to_owned(), (e.mode, e.oid.to_owned())))
            .collect())
    }

    fn commit_tree(&self, commit: &ObjectId) -> Result<ObjectId, VaultError> {
        let data = self.get_as(commit, ObjectKind::Commit)?;
        let c = CommitRef::from_bytes(&data, HASH)
            .map_err(|_| VaultError::Corrupt(commit.to_string()))?;
        Ok(c.tree())
    }

    fn commit_info(&self, oid: &ObjectId) -> Result<CommitInfo, VaultError> {
        let data = self.get_as(oid, ObjectKind::Commit)?;
        let c =
            CommitRef::from_bytes(&data, HASH).map_err(|_| VaultError::Corrupt(oid.to_string()))?;
        let author = c
            .author()
            .map_err(|_| VaultError::Corrupt(oid.to_string()))?;
        Ok(CommitInfo {
            oid: oid.to_string(),
            author: author.name.to_str_lossy().into_owned(),
            time: author.time().map(|t| t.seconds).unwrap_or(0),
            message: c.message.to_str_lossy().trim_end().to_owned(),
            parents: c.parents().map(|p| p.to_string()).collect(),
        })
    }

    /// Resolves `path` from the root tree: `None` if absent.
    fn lookup(
        &self,
        root: &ObjectId,
        path: &SecretPath,
    ) -> Result<Option<(EntryMode, ObjectId)>, VaultError> {
        let mut current = (EntryMode::from(EntryKind::Tree), *root);
        for part in path.parts() {
            if !current.0.is_tree() {
                return Ok(None);
            }
            let tree = self.tree(&current.1)?;
            match tree.get(part.as_bytes().as_bstr()) {
                Some(entry) => current = *entry,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }
}

/// A decoded object row.
struct Object {
    kind: ObjectKind,
    size: u64,
    body: Body,
}

enum Body {
    Inline(Zeroizing<Vec<u8>>),
    Chunked { blob_id: [u8; 16], chunks: u32 },
}

/// A tree's git encoding (entries in git's order).
fn encode_tree(map: &TreeMap) -> Result<Vec<u8>, VaultError> {
    let mut entries: Vec<gix_object::tree::Entry> = map
        .iter()
        .map(|(name, (mode, oid))| gix_object::tree::Entry {
            mode: *mode,
            filename: name.clone(),
            oid: *oid,
        })
        .collect();
    entries.sort();
    let mut data = Vec::new();
    gix_object::Tree { entries }
        .write_to(&mut data)
        .map_err(|_| VaultError::Corrupt("tree".into()))?;
    Ok(data)
}

fn kind_byte(kind: ObjectKind) -> u8 {
    match kind {
        ObjectKind::Blob => 1,
        ObjectKind::Tree => 2,
        ObjectKind::Commit => 3,
        ObjectKind::Tag => 4,
    }
}

fn byte_kind(byte: u8) -> Option<ObjectKind> {
    Some(match byte {
        1 => ObjectKind::Blob,
        2 => ObjectKind::Tree,
        3 => ObjectKind::Commit,
        4 => ObjectKind::Tag,
        _ => return None,
    })
}

fn parse_oid(hex: &str) -> Result<ObjectId, VaultError> {
    ObjectId::from_hex(hex.as_bytes()).map_err(|_| VaultError::Corrupt(hex.to_owned()))
}

fn file_mode() -> EntryMode {
    EntryMode::from(EntryKind::Blob)
}

fn dir_mode() -> EntryMode {
    EntryMode::from(EntryKind::Tree)
}

/// A change to the tree at one path.
enum Change<'a> {
    /// Write a blob (creating parents).
    Write(ObjectId),
    /// Create an empty directory (with parents when `parents`).
    Mkdir { parents: bool },
    /// Remove (recursively when `recursive`).
    Remove { recursive: bool },
    /// Insert an existing entry (rename target).
    Insert((EntryMode, ObjectId)),
    /// Only create an empty file if absent.
    Touch(&'a ObjectId),
}

impl<'s> Vaults<'s> {
    /// Vault operations on `store`, with commits authored by `author`.
    pub fn new(store: &'s Store, author: NodeId) -> Self {
        Vaults { store, author }
    }

    fn name_key(&self, name: &str) -> [u8; 32] {
        self.store.name_hash("vault-name", &[name.as_bytes()])
    }

    fn record(&self, tx: &impl Read, name: &str) -> Result<VaultRecord, VaultError> {
        let id = tx
            .get(Table::VaultNames, &self.name_key(name))?
            .ok_or_else(|| VaultError::NoVault(name.to_owned()))?;
        let value = tx
            .get(Table::Vaults, &id)?
            .ok_or_else(|| VaultError::NoVault(name.to_owned()))?;
        serde_json::from_slice(&value).map_err(|_| VaultError::Corrupt("vault record".into()))
    }

    fn save_record(tx: &mut WriteTx<'_>, record: &VaultRecord) -> Result<(), VaultError> {
        let bytes = serde_json::to_vec(record).expect("a record always serialises");
        tx.put(Table::Vaults, &record.id.0, &bytes)?;
        Ok(())
    }

    fn signature(&self) -> gix_actor::Signature {
        gix_actor::Signature {
            name: self.author.to_string().into(),
            email: format!("{}@pk", self.author).into(),
            time: gix_actor::date::Time {
                seconds: unix_s() as i64,
                offset: 0,
            },
        }
    }

    fn make_commit(
        &self,
        t: &mut Tx<'_, 's, WriteTx<'s>>,
        tree: ObjectId,
        parent: Option<ObjectId>,
        message: &str,
    ) -> Result<ObjectId, VaultError> {
        let parents: Vec<ObjectId> = parent.into_iter().collect();
        self.make_merge_commit(t, tree, &parents, message)
    }

    fn make_merge_commit(
        &self,
        t: &mut Tx<'_, 's, WriteTx<'s>>,
        tree: ObjectId,
        parents: &[ObjectId],
        message: &str,
    ) -> Result<ObjectId, VaultError> {
        let commit = gix_object::Commit {
            tree,
            parents: parents.iter().copied().collect(),
            author: self.signature(),
            committer: self.signature(),
            encoding: None,
            message: format!("{message}\n").into(),
            extra_headers: Vec::new(),
        };
        let mut data = Vec::new();
        commit
            .write_to(&mut data)
            .map_err(|_| VaultError::Corrupt("commit".into()))?;
        t.put(ObjectKind::Commit, &data)
    }

    /// Creates a vault with an empty first commit.
    pub fn create(&self, name: &str) -> Result<VaultRecord, VaultError> {
        check_vault_name(name)?;
        let mut tx = self.store.write()?;
        let name_key = self.name_key(name);
        if tx.contains(Table::VaultNames, &name_key)? {
            return Err(VaultError::VaultExists(name.to_owned()));
        }
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let id = VaultId(id);
        let mut t = Tx {
            store: self.store,
            tx: &mut tx,
            vault: id,
        };
        let tree = t.put_tree(&TreeMap::new())?;
        let commit = self.make_commit(&mut t, tree, None, "vault created")?;
        let record = VaultRecord {
            id,
            name: name.to_owned(),
            created: unix_s(),
            head: commit.to_string(),
            latest: commit.to_string(),
            kept: Vec::new(),
            sync: SyncState::default(),
        };
        tx.put(Table::VaultNames, &name_key, &id.0)?;
        Self::save_record(&mut tx, &record)?;
        audit::append(&mut tx, "vault.created", json!({ "vault": name, "id": id }))?;
        tx.commit()?;
        Ok(record)
    }

    /// All vaults, by name.
    pub fn list(&self) -> Result<Vec<VaultRecord>, VaultError> {
        let tx = self.store.read()?;
        let mut out = Vec::new();
        for (_, value) in tx.range(Table::Vaults, &[], usize::MAX, false)? {
            out.push(
                serde_json::from_slice::<VaultRecord>(&value)
                    .map_err(|_| VaultError::Corrupt("vault record".into()))?,
            );
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Renames a vault; its id and history stay.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), VaultError> {
        check_vault_name(to)?;
        let mut tx = self.store.write()?;
        let mut record = self.record(&tx, from)?;
        if from == to {
            return Ok(());
        }
        let to_key = self.name_key(to);
        if tx.contains(Table::VaultNames, &to_key)? {
            return Err(VaultError::VaultExists(to.to_owned()));
        }
        tx.delete(Table::VaultNames, &self.name_key(from))?;
        tx.put(Table::VaultNames, &to_key, &record.id.0)?;
        record.name = to.to_owned();
        Self::save_record(&mut tx, &record)?;
        audit::append(
            &mut tx,
            "vault.renamed",
            json!({ "vault": to, "from": from, "id": record.id }),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a vault and all its objects.
    pub fn delete(&self, name: &str) -> Result<(), VaultError> {
        let mut tx = self.store.write()?;
        let record = self.record(&tx, name)?;
        tx.delete(Table::VaultNames, &self.name_key(name))?;
        tx.delete(Table::Vaults, &record.id.0)?;
        crate::nodes::Nodes::new(self.store).forget_vault(&mut tx, &record.id)?;
        loop {
            let rows = tx.range(Table::Objects, &record.id.0, 512, false)?;
            let ours: Vec<Vec<u8>> = rows
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with(&record.id.0))
                .collect();
            if ours.is_empty() {
                break;
            }
            for key in ours {
                tx.delete(Table::Objects, &key)?;
            }
        }
        audit::append(
            &mut tx,
            "vault.deleted",
            json!({ "vault": name, "id": record.id }),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// History from `from` (a commit id or prefix; default: the current head), newest
    /// first, following first parents, at most `depth` commits.
    pub fn log(
        &self,
        name: &str,
        depth: Option<usize>,
        from: Option<&str>,
    ) -> Result<Vec<CommitInfo>, VaultError> {
        self.reading(name, |t, record| {
            let start = match from {
                Some("last" | "latest") => parse_oid(&record.latest)?,
                Some(prefix) => resolve(t, record, prefix)?,
                None => parse_oid(&record.head)?,
            };
            let mut out = Vec::new();
            let mut next = Some(start);
            while let Some(oid) = next {
                if out.len() >= depth.unwrap_or(DEFAULT_LOG_DEPTH) {
                    break;
                }
                let info = t.commit_info(&oid)?;
                next = info.parents.first().map(|p| parse_oid(p)).transpose()?;
                out.push(info);
            }
            Ok(out)
        })
    }

    /// Moves the vault's head to `target` (a commit id or prefix, or `last` for the newest
    /// commit). Newer history stays reachable.
    pub fn version(&self, name: &str, target: &str) -> Result<CommitInfo, VaultError> {
        let mut tx = self.store.write()?;
        let mut record = self.record(&tx, name)?;
        let t = Tx {
            store: self.store,
            tx: &mut tx,
            vault: record.id,
        };
        let oid = if target == "last" || target == "latest" {
            parse_oid(&record.latest)?
        } else {
            resolve(&t, &record, target)?
        };
        let info = t.commit_info(&oid)?;
        record.head = oid.to_string();
        Self::save_record(&mut tx, &record)?;
        audit::append(
            &mut tx,
            "vault.version",
            json!({ "vault": name, "commit": info.oid }),
        )?;
        tx.commit()?;
        Ok(info)
    }

    /// Reads a secret at the head into memory.
    pub fn read(&self, name: &str, path: &SecretPath) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let mut data = Zeroizing::new(Vec::new());
        self.read_stream(name, path, &mut |piece| {
            data.extend_from_slice(piece);
            Ok(())
        })?;
        Ok(data)
    }

    /// Reads a secret at the head, handing it to `sink` piece by piece.
    pub fn read_stream(
        &self,
        name: &str,
        path: &SecretPath,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        self.at_head(name, path, |t, _, found| match found {
            (mode, _) if mode.is_tree() => Err(VaultError::IsDir(format!("{name}:{path}"))),
            (_, oid) => t.stream(&oid, sink).map(|_| ()),
        })
    }

    /// Lists a directory at the head (the root when `path` is empty).
    pub fn list_dir(&self, name: &str, path: &SecretPath) -> Result<Vec<Entry>, VaultError> {
        self.at_head(name, path, |t, _, found| match found {
            (mode, _) if !mode.is_tree() => Err(VaultError::NotDir(format!("{name}:{path}"))),
            (_, oid) => Ok(t
                .tree(&oid)?
                .into_iter()
                .map(|(n, (mode, _))| Entry {
                    name: n.to_str_lossy().into_owned(),
                    kind: if mode.is_tree() {
                        EntryType::Dir
                    } else {
                        EntryType::File
                    },
                })
                .collect()),
        })
    }

    /// Looks `path` up at the vault's head in one snapshot and hands what is there to
    /// `f`; a missing path is `NotFound`.
    fn at_head<T>(
        &self,
        name: &str,
        path: &SecretPath,
        f: impl FnOnce(
            &Tx<'_, '_, ReadTx<'_>>,
            &VaultRecord,
            (EntryMode, ObjectId),
        ) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        self.reading(name, |t, record| {
            let root = t.commit_tree(&parse_oid(&record.head)?)?;
            let found = t
                .lookup(&root, path)?
                .ok_or_else(|| VaultError::NotFound(format!("{name}:{path}")))?;
            f(t, record, found)
        })
    }

    /// The vault's record and its objects, in one read snapshot, handed to `f`.
    fn reading<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Tx<'_, '_, ReadTx<'_>>, &VaultRecord) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let mut tx = self.store.read()?;
        let record = self.record(&tx, name)?;
        let t = Tx {
            store: self.store,
            tx: &mut tx,
            vault: record.id,
        };
        f(&t, &record)
    }

    /// Describes a secret or directory at the head.
    pub fn stat(&self, name: &str, path: &SecretPath) -> Result<Stat, VaultError> {
        self.at_head(name, path, |t, record, (mode, oid)| {
            let (kind, size) = if mode.is_tree() {
                (EntryType::Dir, t.tree(&oid)?.len() as u64)
            } else {
                (EntryType::File, t.object(&oid)?.size)
            };
            Ok(Stat {
                kind,
                size,
                oid: oid.to_string(),
                commit: record.head.clone(),
            })
        })
    }

    /// Writes a secret (creating parent directories), one commit.
    pub fn write(
        &self,
        name: &str,
        path: &SecretPath,
        content: &[u8],
        event: &str,
    ) -> Result<CommitInfo, VaultError> {
        let piece = Zeroizing::new(content.to_vec());
        let size = Some(content.len() as u64);
        self.write_stream(name, path, &mut std::iter::once(Ok(piece)), size, event)
    }

    /// Writes a secret arriving in pieces, in bounded memory; one commit. An `Err` piece
    /// aborts the write and nothing is stored.
    pub fn write_stream(
        &self,
        name: &str,
        path: &SecretPath,
        pieces: &mut dyn Iterator<Item = Result<Zeroizing<Vec<u8>>, VaultError>>,
        size: Option<u64>,
        event: &str,
    ) -> Result<CommitInfo, VaultError> {
        let verb = match event {
            "secret.created" => "create",
            "secret.edited" => "edit",
            "secret.imported" => "import",
            _ => "write",
        };
        self.mutate(
            name,
            event,
            &format!("{verb} {path}"),
            |t, root| {
                if t.lookup(&root, path)?.is_some_and(|(m, _)| m.is_tree()) {
                    return Err(VaultError::IsDir(format!("{name}:{path}")));
                }
                let blob = t.put_blob_stream(pieces, size)?;
                apply(t, root, path.parts(), Change::Write(blob), name, path)
            },
            json!({ "path": path.to_string() }),
        )
    }

    /// Creates an empty secret if nothing is there; otherwise changes nothing.
    pub fn touch(&self, name: &str, path: &SecretPath) -> Result<Option<CommitInfo>, VaultError> {
        let result = self.mutate(
            name,
            "secret.touched",
            &format!("touch {path}"),
            |t, root| {
                let empty = t.put(ObjectKind::Blob, b"")?;
                apply(t, root, path.parts(), Change::Touch(&empty), name, path)
            },
            json!({ "path": path.to_string() }),
        );
        match result {
            Err(VaultError::Exists(_)) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Creates a directory.
    pub fn mkdir(
        &self,
        name: &str,
        path: &SecretPath,
        parents: bool,
    ) -> Result<CommitInfo, VaultError> {
        if path.parts().is_empty() {
            return Err(VaultError::Exists(format!("{name}:")));
        }
        self.mutate(
            name,
            "secret.mkdir",
            &format!("mkdir {path}"),
            |t, root| apply(t, root, path.parts(), Change::Mkdir { parents }, name, path),
            json!({ "path": path.to_string() }),
        )
    }

    /// Removes secrets or directories (all in one commit).
    pub fn remove(
        &self,
        name: &str,
        paths: &[SecretPath],
        recursive: bool,
    ) -> Result<CommitInfo, VaultError> {
        let list: Vec<String> = paths.iter().map(ToString::to_string).collect();
        self.mutate(
            name,
            "secret.removed",
            &format!("rm {}", list.join(" ")),
            |t, root| {
                let mut root = root;
                for path in paths {
                    if path.parts().is_empty() {
                        return Err(VaultError::BadPath {
                            path: String::new(),
                            reason: "cannot remove the vault root",
                        });
                    }
                    root = apply(
                        t,
                        root,
                        path.parts(),
                        Change::Remove { recursive },
                        name,
                        path,
                    )?;
                }
                Ok(root)
            },
            json!({ "paths": list }),
        )
    }

    /// Renames a secret or directory within the vault.
    pub fn rename_path(
        &self,
        name: &str,
        from: &SecretPath,
        to: &SecretPath,
    ) -> Result<CommitInfo, VaultError> {
        if from.parts().is_empty() || to.parts().is_empty() {
            return Err(VaultError::BadPath {
                path: String::new(),
                reason: "cannot rename the vault root",
            });
        }
        if to == from {
            return Err(VaultError::BadPath {
                path: to.to_string(),
                reason: "it is already called that",
            });
        }
        if to.parts().starts_with(from.parts()) {
            return Err(VaultError::BadPath {
                path: to.to_string(),
                reason: "cannot move a directory into itself",
            });
        }
        self.mutate(
            name,
            "secret.renamed",
            &format!("rename {from} {to}"),
            |t, root| {
                let entry = t
                    .lookup(&root, from)?
                    .ok_or_else(|| VaultError::NotFound(format!("{name}:{from}")))?;
                if t.lookup(&root, to)?.is_some() {
                    return Err(VaultError::Exists(format!("{name}:{to}")));
                }
                let root = apply(
                    t,
                    root,
                    from.parts(),
                    Change::Remove { recursive: true },
                    name,
                    from,
                )?;
                apply(t, root, to.parts(), Change::Insert(entry), name, to)
            },
            json!({ "from": from.to_string(), "to": to.to_string() }),
        )
    }

    /// Writes the vault's whole history as a git bundle (v2): `git clone` and
    /// `git bundle verify` read it. Refs: `main` (newest commit), `HEAD` (the checked-out
    /// version) and `kept/N` for older tips kept reachable. Returns the object count.
    pub fn export_bundle(
        &self,
        name: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, VaultError> {
        use std::io::Write as _;
        self.reading(name, |t, record| {
            // Everything reachable from the tips: commits, their trees, and what those hold.
            let mut objects: Vec<ObjectId> = Vec::new();
            let mut seen = HashSet::new();
            let tips: Vec<ObjectId> = std::iter::once(&record.latest)
                .chain(&record.kept)
                .chain(std::iter::once(&record.head))
                .map(|h| parse_oid(h))
                .collect::<Result<_, _>>()?;
            let mut queue: VecDeque<ObjectId> = tips.iter().copied().collect();
            while let Some(oid) = queue.pop_front() {
                if !seen.insert(oid) {
                    continue;
                }
                objects.push(oid);
                let object = t.object(&oid)?;
                match object.kind {
                    ObjectKind::Commit => {
                        queue.push_back(t.commit_tree(&oid)?);
                        for parent in t.commit_info(&oid)?.parents {
                            queue.push_back(parse_oid(&parent)?);
                        }
                    }
                    ObjectKind::Tree => {
                        for (_, (_, child)) in t.tree(&oid)? {
                            queue.push_back(child);
                        }
                    }
                    _ => {}
                }
            }
            let io = |_: std::io::Error| VaultError::Interrupted;
            let mut header = String::from("# v2 git bundle\n");
            header += &format!("{} HEAD\n", record.head);
            header += &format!("{} refs/heads/main\n", record.latest);
            for (i, kept) in record.kept.iter().enumerate() {
                header += &format!("{kept} refs/heads/kept/{}\n", i + 1);
            }
            header += "\n";
            out.write_all(header.as_bytes()).map_err(io)?;

            let mut pack = HashingWriter {
                out,
                hasher: gix_hash::hasher(HASH),
                written: 0,
            };
            pack.write_all(b"PACK").map_err(io)?;
            pack.write_all(&2u32.to_be_bytes()).map_err(io)?;
            pack.write_all(&(objects.len() as u32).to_be_bytes())
                .map_err(io)?;
            for oid in &objects {
                let object = t.object(oid)?;
                pack.write_all(&pack_entry_header(object.kind, object.size))
                    .map_err(io)?;
                let mut z = flate2::write::ZlibEncoder::new(&mut pack, flate2::Compression::fast());
                t.stream(oid, &mut |piece| z.write_all(piece).map_err(io))?;
                z.finish().map_err(io)?;
            }
            let HashingWriter { out, hasher, .. } = pack;
            let digest = hasher
                .try_finalize()
                .map_err(|_| VaultError::Corrupt("pack checksum".into()))?;
            out.write_all(digest.as_bytes()).map_err(io)?;
            out.flush().map_err(io)?;
            Ok(objects.len() as u64)
        })
    }

    /// Runs `change` on the head's tree and commits the result, all in one transaction.
    fn mutate(
        &self,
        name: &str,
        event: &str,
        message: &str,
        change: impl FnOnce(&mut Tx<'_, 's, WriteTx<'s>>, ObjectId) -> Result<ObjectId, VaultError>,
        mut fields: serde_json::Value,
    ) -> Result<CommitInfo, VaultError> {
        let mut tx = self.store.write()?;
        let mut record = self.record(&tx, name)?;
        let mut t = Tx {
            store: self.store,
            tx: &mut tx,
            vault: record.id,
        };
        let head = parse_oid(&record.head)?;
        let root = t.commit_tree(&head)?;
        let new_root = change(&mut t, root)?;
        if new_root == root {
            // Nothing changed (mkdir -p of an existing directory): no commit, no event.
            return t.commit_info(&head);
        }
        let commit = self.make_commit(&mut t, new_root, Some(head), message)?;
        let info = t.commit_info(&commit)?;
        if record.head != record.latest && !record.kept.contains(&record.latest) {
            // A write at an older version: keep the newer history reachable.
            record.kept.push(record.latest.clone());
        }
        record.head = commit.to_string();
        record.latest = commit.to_string();
        Self::save_record(&mut tx, &record)?;
        if let serde_json::Value::Object(map) = &mut fields {
            map.insert("vault".into(), json!(name));
            map.insert("commit".into(), json!(info.oid));
        }
        audit::append(&mut tx, event, fields)?;
        tx.commit()?;
        Ok(info)
    }
}

/// Applies `change` at `parts` below the tree `root`; returns the new tree's id.
fn apply<'s>(
    t: &mut Tx<'_, 's, WriteTx<'s>>,
    root: ObjectId,
    parts: &[String],
    change: Change<'_>,
    vault: &str,
    full: &SecretPath,
) -> Result<ObjectId, VaultError> {
    let shown = || format!("{vault}:{full}");
    let mut tree = t.tree(&root)?;
    let (first, rest) = parts.split_first().ok_or(VaultError::BadPath {
        path: String::new(),
        reason: "empty path",
    })?;
    let key: BString = first.as_str().into();
    if rest.is_empty() {
        let existing = tree.get(&key).copied();
        match change {
            Change::Write(blob) => {
                if existing.is_some_and(|(m, _)| m.is_tree()) {
                    return Err(VaultError::IsDir(shown()));
                }
                tree.insert(key, (file_mode(), blob));
            }
            Change::Touch(empty) => {
                if existing.is_some() {
                    return Err(VaultError::Exists(shown()));
                }
                tree.insert(key, (file_mode(), *empty));
            }
            Change::Mkdir { parents } => match existing {
                Some((m, _)) if m.is_tree() && parents => return Ok(root),
                Some(_) => return Err(VaultError::Exists(shown())),
                None => {
                    let empty = t.put_tree(&TreeMap::new())?;
                    tree.insert(key, (dir_mode(), empty));
                }
            },
            Change::Remove { recursive } => match existing {
                None => return Err(VaultError::NotFound(shown())),
                Some((m, oid)) if m.is_tree() && !recursive && !t.tree(&oid)?.is_empty() => {
                    return Err(VaultError::NotEmpty(shown()));
                }
                Some(_) => {
                    tree.remove(&key);
                }
            },
            Change::Insert(entry) => {
                tree.insert(key, entry);
            }
        }
    } else {
        let child = match tree.get(&key).copied() {
            Some((m, oid)) if m.is_tree() => oid,
            Some(_) => return Err(VaultError::NotDir(format!("{vault}:{first}"))),
            None => match change {
                Change::Write(_) | Change::Insert(_) | Change::Touch(_) => {
                    t.put_tree(&TreeMap::new())?
                }
                Change::Mkdir { parents: true } => t.put_tree(&TreeMap::new())?,
                _ => return Err(VaultError::NotFound(shown())),
            },
        };
        let new_child = apply(t, child, rest, change, vault, full)?;
        tree.insert(key, (dir_mode(), new_child));
    }
    t.put_tree(&tree)
}

/// A writer that hashes what passes through it (the pack's trailing checksum).
struct HashingWriter<'w> {
    out: &'w mut dyn std::io::Write,
    hasher: gix_hash::Hasher,
    written: u64,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The pack entry header: type and size, little-endian base-128 after the first nibble.
fn pack_entry_header(kind: ObjectKind, size: u64) -> Vec<u8> {
    let type_bits: u8 = match kind {
        ObjectKind::Commit => 1,
        ObjectKind::Tree => 2,
        ObjectKind::Blob => 3,
        ObjectKind::Tag => 4,
    };
    let mut out = Vec::with_capacity(10);
    let mut byte = (type_bits << 4) | (size & 0x0f) as u8;
    let mut rest = size >> 4;
    while rest > 0 {
        out.push(byte | 0x80);
        byte = (rest & 0x7f) as u8;
        rest >>= 7;
    }
    out.push(byte);
    out
}

/// Finds the commit `prefix` names among everything reachable from the vault's tips.
fn resolve<R: Read>(
    t: &Tx<'_, '_, R>,
    record: &VaultRecord,
    prefix: &str,
) -> Result<ObjectId, VaultError> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.len() < 4 || prefix.len() > 40 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(VaultError::BadCommitId(prefix));
    }
    if prefix.len() == 40 {
        // A full id needs no search: the vault's objects are its own, so a commit object
        // stored under this vault is one of its versions. Constant time at any history
        // length; a prefix below walks the history.
        let oid = parse_oid(&prefix)?;
        return match t.object(&oid) {
            Ok(object) if object.kind == ObjectKind::Commit => Ok(oid),
            _ => Err(VaultError::NoCommit(prefix)),
        };
    }
    let mut seen = HashSet::new();
    let mut queue: VecDeque<ObjectId> = std::iter::once(&record.latest)
        .chain(&record.kept)
        .chain(std::iter::once(&record.head))
        .map(|h| parse_oid(h))
        .collect::<Result<_, _>>()?;
    let mut found = None;
    while let Some(oid) = queue.pop_front() {
        if !seen.insert(oid) {
            continue;
        }
        let hex = oid.to_string();
        if hex.starts_with(&prefix) {
            if found.is_some_and(|f| f != oid) {
                return Err(VaultError::AmbiguousCommit(prefix));
            }
            found = Some(oid);
        }
        for parent in t.commit_info(&oid)?.parents {
            queue.push_back(parse_oid(&parent)?);
        }
    }
    found.ok_or(VaultError::NoCommit(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodePath;
    use crate::identity::Identity;
    use hsm_core::DataKey;

    fn path(p: &str) -> SecretPath {
        SecretPath::parse(p, true).unwrap()
    }

    #[test]
    fn large_secrets_are_chunked_and_hash_like_git() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&NodePath::new(dir.path()), &DataKey::generate()).unwrap();
        let v = Vaults::new(&store, Identity::generate().node_id());
        v.create("big").unwrap();
        for size in [
            0,
            10,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            3 * CHUNK_SIZE + 12345,
        ] {
            let content: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            // Pieces of an awkward size, as a socket delivers them.
            let mut pieces = content
                .chunks(300_001)
                .map(|c| Ok(Zeroizing::new(c.to_vec())))
                .collect::<Vec<_>>()
                .into_iter();
            let p = path(&format!("s{size}"));
            // Half the sizes announced up front (hashed in one pass), half not (two passes).
            let announced = (size % 2 == 0).then_some(size as u64);
            v.write_stream("big", &p, &mut pieces, announced, "secret.written")
                .unwrap();
            assert_eq!(
                v.read("big", &p).unwrap().as_slice(),
                content.as_slice(),
                "size {size}"
            );
            let stat = v.stat("big", &p).unwrap();
            assert_eq!(stat.size, size as u64);
            let git = gix_object::compute_hash(HASH, ObjectKind::Blob, &content).unwrap();
            assert_eq!(stat.oid, git.to_string(), "object id as git computes it");
        }
        // An interrupted upload stores nothing.
        let before = v.log("big", None, None).unwrap().len();
        let mut broken = vec![
            Ok(Zeroizing::new(vec![1u8; 2 * CHUNK_SIZE])),
            Err(VaultError::Interrupted),
        ]
        .into_iter();
        assert!(
            v.write_stream("big", &path("broken"), &mut broken, None, "secret.written")
                .is_err()
        );
        // So does one whose length differs from the size it announced.
        let mut short = vec![Ok(Zeroizing::new(vec![1u8; 10]))].into_iter();
        assert!(matches!(
            v.write_stream(
                "big",
                &path("short"),
                &mut short,
                Some(11),
                "secret.written"
            ),
            Err(VaultError::SizeMismatch)
        ));
        assert_eq!(v.log("big", None, None).unwrap().len(), before);
        assert!(matches!(
            v.read("big", &path("broken")),
            Err(VaultError::NotFound(_))
        ));
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in ["", "/abs", "a/../b", "a//b", "./a", "a/\0", "..", "a/./b"] {
            assert!(SecretPath::parse(p, false).is_err(), "{p:?}");
        }
        assert_eq!(path("a/b/").parts(), ["a", "b"]);
        assert!(SecretPath::parse("", true).unwrap().parts().is_empty());
    }

    #[test]
    fn write_read_history_version_keep() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&NodePath::new(dir.path()), &DataKey::generate()).unwrap();
        let id = Identity::generate();
        let v = Vaults::new(&store, id.node_id());
        v.create("work").unwrap();
        assert!(matches!(v.create("work"), Err(VaultError::VaultExists(_))));
        let c1 = v
            .write("work", &path("db/password"), b"one", "secret.written")
            .unwrap();
        let c2 = v
            .write("work", &path("db/password"), b"two", "secret.written")
            .unwrap();
        assert_eq!(
            v.read("work", &path("db/password")).unwrap().as_slice(),
            b"two"
        );
        assert_eq!(c2.parents, std::slice::from_ref(&c1.oid));
        assert_eq!(c2.author, id.node_id().to_string());

        let log = v.log("work", None, None).unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(log[0].oid, c2.oid);

        // Back to c1, write there: c2 stays reachable and can be checked out again.
        v.version("work", &c1.oid[..8]).unwrap();
        assert_eq!(
            v.read("work", &path("db/password")).unwrap().as_slice(),
            b"one"
        );
        let c3 = v
            .write("work", &path("other"), b"three", "secret.written")
            .unwrap();
        assert_eq!(c3.parents, std::slice::from_ref(&c1.oid));
        v.version("work", &c2.oid).unwrap();
        assert_eq!(
            v.read("work", &path("db/password")).unwrap().as_slice(),
            b"two"
        );
        assert!(matches!(
            v.read("work", &path("other")),
            Err(VaultError::NotFound(_))
        ));
        v.version("work", "last").unwrap();
        assert_eq!(v.read("work", &path("other")).unwrap().as_slice(), b"three");

        v.mkdir("work", &path("empty/dir"), true).unwrap();
        assert!(v.list_dir("work", &path("empty/dir")).unwrap().is_empty());
        assert!(matches!(
            v.remove("work", &[path("empty")], false),
            Err(VaultError::NotEmpty(_))
        ));
        v.rename_path("work", &path("db"), &path("database"))
            .unwrap();
        assert_eq!(
            v.read("work", &path("database/password"))
                .unwrap()
                .as_slice(),
            b"one"
        );
        v.remove("work", &[path("empty"), path("other")], true)
            .unwrap();
        let names: Vec<String> = v
            .list_dir("work", &path(""))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["database"]);
        v.rename("work", "job").unwrap();
        assert!(v.read("work", &path("database/password")).is_err());
        v.delete("job").unwrap();
        assert!(v.list().unwrap().is_empty());
    }
}
