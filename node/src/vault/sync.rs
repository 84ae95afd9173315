//! Moving a vault between nodes: what the serving node sends, how the receiving node
//! checks and stores it, and how a pull merges edits made on both sides.
//!
//! **Negotiation.** The receiver names commits it has (its tips, the tip it last fetched
//! from that node, and a sample of older first-parent ancestors at distances 1, 2, 4, 8
//! ...). The sender keeps those it knows: everything reachable from them is on the
//! receiver. It sends the commits reachable from its newest commit and not from those,
//! parents first, each preceded by the trees and blobs that changed since its first
//! parent. A tree whose base (the same directory in the parent commit) the receiver has
//! travels as a delta: the entries that changed.
//!
//! **Verification.** Every object is hashed on arrival and refused unless it matches its
//! id; a delta tree is rebuilt from its base and hashed. Objects arrive children first,
//! and each is refused unless everything it names is already here, so a stored object
//! always has its whole closure: nothing a transfer brings is half there. Objects stay
//! invisible (no vault record points at them) until the last one is in and the vault's
//! record moves, in one transaction.
//!
//! **Resume.** Objects are written in batches; each batch commits with the list of ids
//! received so far (the `sync` table). A transfer that breaks off keeps what arrived; the
//! next clone or pull of the same vault from the same node names those ids and the
//! sender skips them.
//!
//! **Merge.** A pull fast-forwards when only one side changed. Otherwise the three trees
//! (common ancestor, ours, theirs) are merged by path: a secret changed on one side takes
//! that side's version; a secret changed on both sides keeps ours at its path and theirs
//! next to it under a conflict name (`name.conflict-<node>`), and the pull says so.
//! A secret deleted on one side and changed on the other is kept. Nothing is lost. The
//! decisions are [`super::merge`]'s, a pure function of the three flattened trees; this
//! module reads the trees and writes the result.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::merge::{self, Flat, merge_conflict_name};
use super::{
    HASH, TreeMap, Tx, VaultError, VaultId, VaultRecord, Vaults, bad_name, byte_kind,
    check_vault_name, dir_mode, encode_tree, kind_byte, parse_oid,
};
use crate::audit;
use crate::clock::unix_s;
use crate::identity::NodeId;
use crate::secret_bytes::SecretBytes;
use crate::store::{Read, ReadTx, Store, Table, WriteTx};
use gix_hash::ObjectId;
use gix_object::bstr::BString;
use gix_object::tree::EntryMode;
use gix_object::{CommitRef, Kind as ObjectKind};
use serde_json::json;
use zeroize::Zeroizing;

/// Objects up to this size travel in one frame; larger ones as a header and chunks.
const INLINE_MAX: u64 = 192 * 1024;
/// Bytes per chunk of a large object on the wire.
const WIRE_CHUNK: usize = 256 * 1024;
/// Small objects are buffered and written in batches of about this many bytes.
const BATCH_BYTES: usize = 4 << 20;
/// ... or this many objects.
const BATCH_OBJECTS: usize = 2000;
/// The largest tree or commit accepted (a blob may be up to the secret limit).
const MAX_METADATA_OBJECT: u64 = 64 << 20;
/// The default of [`TransferLimits::max_bytes`].
pub const DEFAULT_TRANSFER_BYTES: u64 = 8 << 30;
/// The default of [`TransferLimits::max_depth`].
pub const DEFAULT_MAX_DEPTH: usize = 128;
/// The most objects one transfer may bring (their ids are kept in memory while it runs).
pub const MAX_TRANSFER_OBJECTS: u64 = 1_000_000;
/// The most commits a fetch request may name as had (the receiver samples its history
/// down to this many).
pub const MAX_HAVES: usize = 64;
/// The most object ids a fetch request may name as already received.
pub const MAX_RECEIVED: usize = 40_000;

/// What one clone or pull may bring: a serving node that sends more is refused, and what
/// it sent is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferLimits {
    /// Bytes of objects one transfer may store (trees rebuilt from deltas count whole).
    pub max_bytes: u64,
    /// The deepest nesting of directories a received tree may have.
    pub max_depth: usize,
}

impl Default for TransferLimits {
    fn default() -> Self {
        TransferLimits {
            max_bytes: DEFAULT_TRANSFER_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// How many generations below the receiver's haves the sender treats as shared.
const COMMON_WINDOW: usize = 64;
/// Key prefix of transfers in progress in the `sync` table.
const INCOMING: &[u8] = b"in:";

/// Where a vault came from and how its pulls went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The node it was cloned from.
    pub origin: Option<NodeId>,
    /// The newest commit fetched from each node (NodeId → commit id): where the next
    /// pull's negotiation starts.
    pub remotes: BTreeMap<String, String>,
    /// The last pull, manual or scheduled.
    pub last_pull: Option<PullOutcome>,
}

/// The result of one pull, kept for `vaults list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullOutcome {
    /// The node pulled from.
    pub node: String,
    /// Unix seconds.
    pub time: u64,
    /// Whether it worked.
    pub ok: bool,
    /// What happened (`up to date`, `fast-forward`, `merged, 1 conflict`, or the error).
    pub message: String,
}

/// A tree entry on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireEntry {
    /// The name.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// The git mode.
    pub mode: u16,
    /// The object id.
    pub oid: [u8; 20],
}

/// One object on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireObject {
    /// A whole object.
    Full {
        /// Its id.
        oid: [u8; 20],
        /// Its kind (1 blob, 2 tree, 3 commit).
        kind: u8,
        /// Its bytes.
        data: SecretBytes,
    },
    /// A large object; `size` bytes follow as chunks.
    Large {
        /// Its id.
        oid: [u8; 20],
        /// Its kind.
        kind: u8,
        /// Its length.
        size: u64,
    },
    /// A tree, as changes to a tree the receiver has.
    TreeDelta {
        /// Its id.
        oid: [u8; 20],
        /// The tree it changes.
        base: [u8; 20],
        /// Names gone.
        removed: Vec<WireEntry>,
        /// Entries new or changed.
        changed: Vec<WireEntry>,
    },
}

/// Object ids as they travel.
pub type ObjectIds = Vec<[u8; 20]>;

/// What a pull asks for.
#[derive(Clone, Debug)]
pub struct PullPlan {
    /// The local vault.
    pub record: VaultRecord,
    /// Commits this node has.
    pub haves: ObjectIds,
    /// Objects an interrupted transfer brought.
    pub received: ObjectIds,
}

/// What the serving node says before the objects: which vault, and its newest commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// The vault's id (the same on every node).
    pub vault: VaultId,
    /// Its name on the serving node.
    pub name: String,
    /// Its newest commit there.
    pub tip: String,
}

/// What the sender hands its transport.
pub enum Outgoing<'a> {
    /// The vault and tip (first).
    Begin(Fetched),
    /// An object (a `Large` one is followed by its chunks).
    Object(WireObject),
    /// A piece of a large object.
    Chunk(&'a [u8]),
}

/// The result of a clone or pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchOutcome {
    /// The local vault name.
    pub vault: String,
    /// Its id.
    pub id: VaultId,
    /// What the transfer did to the vault.
    pub result: FetchResult,
    /// Objects received in this transfer.
    pub objects: u64,
    /// Bytes of object data received in this transfer.
    pub bytes: u64,
    /// Objects that an earlier, interrupted transfer had brought already.
    pub resumed: u64,
    /// Paths whose incoming version was kept under a conflict name (`path -> new path`).
    pub conflicts: Vec<(String, String)>,
    /// The vault's newest commit after the transfer.
    pub commit: String,
    /// Bytes on the wire (UDP payloads both ways) while the transfer ran; set by the
    /// transport.
    pub wire_bytes: u64,
}

/// What a clone or pull did to the vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchResult {
    /// A new vault, the other node's copy.
    #[serde(rename = "cloned")]
    Cloned,
    /// Nothing new: the other node had nothing this one lacks.
    #[serde(rename = "up to date")]
    UpToDate,
    /// Only the other node had changed: this one now has its commit.
    #[serde(rename = "fast-forward")]
    FastForward,
    /// Both had changed: a merge commit joins the two (see `conflicts`).
    #[serde(rename = "merged")]
    Merged,
}

impl FetchResult {
    /// The result in a word or two, as logs and JSON show it.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchResult::Cloned => "cloned",
            FetchResult::UpToDate => "up to date",
            FetchResult::FastForward => "fast-forward",
            FetchResult::Merged => "merged",
        }
    }
}

impl std::fmt::Display for FetchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FetchOutcome {
    /// The result for a person: the word, and how many conflicts a merge kept.
    pub fn summary(&self) -> String {
        match (self.result, self.conflicts.len()) {
            (FetchResult::Merged, 0) => "merged".into(),
            (FetchResult::Merged, 1) => "merged, 1 conflict kept".into(),
            (FetchResult::Merged, n) => format!("merged, {n} conflicts kept"),
            (result, _) => result.to_string(),
        }
    }
}

/// A transfer in progress, in the `sync` table: this header, then one row per batch of
/// ids that arrived (`incoming_key || batch number`), so that recording a batch costs the
/// batch, not everything so far.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Incoming {
    node: String,
    remote_name: String,
    /// Ids as the first version of this record kept them (one list, rewritten at every
    /// batch); read, no longer written.
    #[serde(default)]
    received: Vec<String>,
    /// How many batch rows follow.
    #[serde(default)]
    batches: u32,
}

fn batch_key(vault: &VaultId, batch: u32) -> Vec<u8> {
    let mut key = incoming_key(vault);
    key.extend_from_slice(&batch.to_be_bytes());
    key
}

/// The transfer into `vault` in progress, with every id it brought so far.
fn read_incoming(
    tx: &impl Read,
    vault: &VaultId,
) -> Result<Option<(Incoming, Vec<ObjectId>)>, VaultError> {
    let Some(value) = tx.get(Table::Sync, &incoming_key(vault))? else {
        return Ok(None);
    };
    let incoming: Incoming =
        serde_json::from_slice(&value).map_err(|_| corrupt("transfer record"))?;
    let mut ids = incoming
        .received
        .iter()
        .map(|h| parse_oid(h))
        .collect::<Result<Vec<_>, _>>()?;
    for batch in 0..incoming.batches {
        let row = tx
            .get(Table::Sync, &batch_key(vault, batch))?
            .ok_or_else(|| corrupt("transfer record"))?;
        if row.len() % 20 != 0 {
            return Err(corrupt("transfer record"));
        }
        ids.extend(row.chunks_exact(20).map(ObjectId::from_bytes_or_panic));
    }
    Ok(Some((incoming, ids)))
}

/// Forgets the transfer into `vault`: its header and batch rows.
fn delete_incoming(tx: &mut WriteTx<'_>, vault: &VaultId, batches: u32) -> Result<(), VaultError> {
    for batch in 0..batches {
        tx.delete(Table::Sync, &batch_key(vault, batch))?;
    }
    tx.delete(Table::Sync, &incoming_key(vault))?;
    Ok(())
}

impl<'s> Tx<'_, 's, WriteTx<'s>> {
    /// Deletes an object of this vault (and its chunks); nothing if it is not there.
    fn delete_object(&mut self, oid: &ObjectId) -> Result<(), VaultError> {
        if !self.has(oid)? {
            return Ok(());
        }
        if let super::Body::Chunked { blob_id, chunks } = self.object(oid)?.body {
            for index in 0..chunks {
                let key = self.chunk_key(&blob_id, index);
                self.tx.delete(Table::Objects, &key)?;
            }
        }
        let key = self.key(oid);
        self.tx.delete(Table::Objects, &key)?;
        Ok(())
    }
}

fn oid_bytes(oid: &ObjectId) -> [u8; 20] {
    let mut out = [0u8; 20];
    out.copy_from_slice(oid.as_bytes());
    out
}

fn wire_oid(bytes: &[u8; 20]) -> ObjectId {
    ObjectId::from_bytes_or_panic(bytes)
}

fn incoming_key(vault: &VaultId) -> Vec<u8> {
    let mut key = INCOMING.to_vec();
    key.extend_from_slice(vault.as_bytes());
    key
}

/// A peer-supplied name, cut short for an error message (a refusal must not be as large
/// as what was refused).
fn truncated(name: &[u8]) -> String {
    let text = String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned();
    if name.len() > 64 {
        format!("{text}...")
    } else {
        text
    }
}

fn corrupt(what: impl std::fmt::Display) -> VaultError {
    VaultError::Corrupt(what.to_string())
}

/// Recently parsed trees: a history's consecutive trees are each other's bases, and a
/// directory's previous version was usually seen a few hundred commits ago at most.
#[derive(Default)]
struct TreeCache {
    trees: HashMap<ObjectId, (Arc<TreeMap>, usize)>,
    order: std::collections::VecDeque<ObjectId>,
    bytes: usize,
}

impl TreeCache {
    /// The most trees kept ...
    const SIZE: usize = 1024;
    /// ... and the most bytes they may take (a tree can be large: 64 MiB).
    const BYTES: usize = 64 << 20;

    fn get(&self, oid: &ObjectId) -> Option<Arc<TreeMap>> {
        self.trees.get(oid).map(|(tree, _)| tree.clone())
    }

    fn put(&mut self, oid: ObjectId, tree: Arc<TreeMap>) {
        // About what a tree takes in memory: its names, ids and map nodes.
        let size = tree.keys().map(|name| name.len() + 64).sum::<usize>() + 64;
        if size > Self::BYTES || self.trees.contains_key(&oid) {
            return;
        }
        self.trees.insert(oid, (tree, size));
        self.bytes += size;
        self.order.push_back(oid);
        while self.order.len() > Self::SIZE || self.bytes > Self::BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, size)) = self.trees.remove(&old) {
                self.bytes -= size;
            }
        }
    }
}

impl<R: Read> Tx<'_, '_, R> {
    fn has(&self, oid: &ObjectId) -> Result<bool, VaultError> {
        Ok(self.tx.contains(Table::Objects, &self.key(oid))?)
    }

    fn cached_tree(
        &self,
        cache: &mut TreeCache,
        oid: &ObjectId,
    ) -> Result<Arc<TreeMap>, VaultError> {
        if let Some(tree) = cache.get(oid) {
            return Ok(tree);
        }
        let tree = Arc::new(self.tree(oid)?);
        cache.put(*oid, tree.clone());
        Ok(tree)
    }

    fn parents(&self, commit: &ObjectId) -> Result<Vec<ObjectId>, VaultError> {
        let data = self.get_as(commit, ObjectKind::Commit)?;
        let c = CommitRef::from_bytes(&data, HASH).map_err(|_| corrupt(commit))?;
        Ok(c.parents().collect())
    }

    /// Every commit reachable from `starts` (inclusive).
    fn ancestors(&self, starts: &[ObjectId]) -> Result<HashSet<ObjectId>, VaultError> {
        let mut seen = HashSet::new();
        let mut stack: Vec<ObjectId> = starts.to_vec();
        while let Some(oid) = stack.pop() {
            if seen.insert(oid) {
                stack.extend(self.parents(&oid)?);
            }
        }
        Ok(seen)
    }

    /// Commits reachable from `starts` in at most `depth` steps (inclusive).
    fn ancestors_within(
        &self,
        starts: &[ObjectId],
        depth: usize,
    ) -> Result<HashSet<ObjectId>, VaultError> {
        let mut seen: HashSet<ObjectId> = starts.iter().copied().collect();
        let mut level: Vec<ObjectId> = starts.to_vec();
        for _ in 0..depth {
            let mut next = Vec::new();
            for oid in &level {
                for parent in self.parents(oid)? {
                    if seen.insert(parent) {
                        next.push(parent);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        Ok(seen)
    }

    /// Whether `ancestor` is reachable from `from`.
    fn reaches(&self, from: &ObjectId, ancestor: &ObjectId) -> Result<bool, VaultError> {
        let mut seen = HashSet::new();
        let mut stack = vec![*from];
        while let Some(oid) = stack.pop() {
            if oid == *ancestor {
                return Ok(true);
            }
            if seen.insert(oid) {
                stack.extend(self.parents(&oid)?);
            }
        }
        Ok(false)
    }

    /// Commits reachable from `tip` and not in `known`, parents before children.
    fn new_commits(
        &self,
        tip: &ObjectId,
        known: &HashSet<ObjectId>,
    ) -> Result<Vec<ObjectId>, VaultError> {
        let mut order = Vec::new();
        let mut visited = HashSet::new();
        // Iterative post-order: (commit, parents pushed yet?).
        let mut stack = vec![(*tip, false)];
        while let Some((oid, expanded)) = stack.pop() {
            if expanded {
                order.push(oid);
                continue;
            }
            if known.contains(&oid) || !visited.insert(oid) {
                continue;
            }
            stack.push((oid, true));
            for parent in self.parents(&oid)? {
                stack.push((parent, false));
            }
        }
        Ok(order)
    }
}

/// The sender's side of one transfer.
struct Sender<'a, 'o, R: Read> {
    t: &'a Tx<'a, 'a, R>,
    sent: HashSet<ObjectId>,
    cache: TreeCache,
    out: &'a mut dyn FnMut(Outgoing<'_>) -> Result<(), VaultError>,
    _o: std::marker::PhantomData<&'o ()>,
}

impl<R: Read> Sender<'_, '_, R> {
    fn object(&mut self, oid: &ObjectId) -> Result<(), VaultError> {
        let object = self.t.object(oid)?;
        let kind = kind_byte(object.kind);
        if let (true, super::Body::Inline(data)) = (object.size <= INLINE_MAX, &object.body) {
            (self.out)(Outgoing::Object(WireObject::Full {
                oid: oid_bytes(oid),
                kind,
                data: SecretBytes(data.to_vec()),
            }))?;
        } else {
            (self.out)(Outgoing::Object(WireObject::Large {
                oid: oid_bytes(oid),
                kind,
                size: object.size,
            }))?;
            let out = &mut *self.out;
            self.t.stream(oid, &mut |piece| {
                for part in piece.chunks(WIRE_CHUNK) {
                    out(Outgoing::Chunk(part))?;
                }
                Ok(())
            })?;
        }
        self.sent.insert(*oid);
        Ok(())
    }

    /// Sends the tree `oid` and what it holds that `base` (a tree the receiver has) does
    /// not.
    fn tree(&mut self, oid: &ObjectId, base: Option<&ObjectId>) -> Result<(), VaultError> {
        if self.sent.contains(oid) || base == Some(oid) {
            return Ok(());
        }
        let tree = self.t.cached_tree(&mut self.cache, oid)?;
        let base_tree = match base {
            Some(b) => Some(self.t.cached_tree(&mut self.cache, b)?),
            None => None,
        };
        for (name, (mode, child)) in tree.iter() {
            let in_base = base_tree.as_ref().and_then(|b| b.get(name));
            if in_base == Some(&(*mode, *child)) {
                continue;
            }
            if mode.is_tree() {
                let child_base = in_base.filter(|(m, _)| m.is_tree()).map(|(_, o)| *o);
                self.tree(child, child_base.as_ref())?;
            } else if !self.sent.contains(child) {
                self.object(child)?;
            }
        }
        match (base, base_tree) {
            (Some(base), Some(base_tree)) => {
                let entry = |name: &BString, (mode, oid): &(EntryMode, ObjectId)| WireEntry {
                    name: name.to_vec(),
                    mode: mode.value(),
                    oid: oid_bytes(oid),
                };
                let removed = base_tree
                    .iter()
                    .filter(|(name, _)| !tree.contains_key(*name))
                    .map(|(n, e)| entry(n, e))
                    .collect();
                let changed = tree
                    .iter()
                    .filter(|(name, e)| base_tree.get(*name) != Some(e))
                    .map(|(n, e)| entry(n, e))
                    .collect();
                (self.out)(Outgoing::Object(WireObject::TreeDelta {
                    oid: oid_bytes(oid),
                    base: oid_bytes(base),
                    removed,
                    changed,
                }))?;
                self.sent.insert(*oid);
            }
            _ => self.object(oid)?,
        }
        Ok(())
    }
}

impl<'s> Vaults<'s> {
    /// The record of the vault with `id`.
    pub(super) fn record_by_id(
        &self,
        tx: &impl Read,
        id: &VaultId,
    ) -> Result<Option<VaultRecord>, VaultError> {
        match tx.get(Table::Vaults, id.as_bytes())? {
            Some(value) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|_| corrupt("vault record")),
            None => Ok(None),
        }
    }

    /// Records a pull's outcome (a failed one; a good one is recorded with its merge).
    pub fn note_pull(&self, name: &str, outcome: PullOutcome) -> Result<(), VaultError> {
        let mut tx = self.store.write()?;
        let mut record = self.record(&tx, name)?;
        if !outcome.ok {
            audit::append(
                &mut tx,
                "vault.pull_failed",
                json!({ "vault": name, "id": record.id, "node": outcome.node, "reason": outcome.message }),
            )?;
        }
        record.sync.last_pull = Some(outcome);
        Vaults::save_record(&mut tx, &record)?;
        tx.commit()?;
        Ok(())
    }

    /// The vault a peer names: by id, or by name.
    pub fn find(&self, id: Option<&VaultId>, name: &str) -> Result<VaultRecord, VaultError> {
        let tx = self.store.read()?;
        match id {
            Some(id) => self
                .record_by_id(&tx, id)?
                .ok_or_else(|| VaultError::NoVault(id.to_string())),
            None => self.record(&tx, name),
        }
    }

    /// Serves a clone or pull of `vault`: hands `out` the vault's tip, then every object
    /// reachable from it that the receiver lacks: neither reachable from a commit in
    /// `haves` that this node knows, nor in `received` (from an interrupted transfer).
    pub fn send(
        &self,
        vault: &VaultId,
        haves: &[[u8; 20]],
        received: &[[u8; 20]],
        out: &mut dyn FnMut(Outgoing<'_>) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let mut tx = self.store.read()?;
        let record = self
            .record_by_id(&tx, vault)?
            .ok_or_else(|| VaultError::NoVault(vault.to_string()))?;
        let t = Tx {
            store: self.store,
            tx: &mut tx,
            vault: record.id,
        };
        let tip = parse_oid(&record.latest)?;
        out(Outgoing::Begin(Fetched {
            vault: record.id,
            name: record.name.clone(),
            tip: record.latest.clone(),
        }))?;
        let mut known = Vec::new();
        for have in haves {
            let oid = wire_oid(have);
            if t.has(&oid)? && t.object(&oid)?.kind == ObjectKind::Commit {
                known.push(oid);
            }
        }
        // Everything below a have is on the receiver. The walk from our tip stops at the
        // haves and a window of their ancestors; a side branch that joins below that
        // window only costs commits the receiver skips as already present.
        let common = t.ancestors_within(&known, COMMON_WINDOW)?;
        let commits = t.new_commits(&tip, &common)?;
        let mut sender = Sender {
            t: &t,
            sent: received.iter().map(wire_oid).collect(),
            cache: TreeCache::default(),
            out,
            _o: std::marker::PhantomData,
        };
        for commit in commits {
            if sender.sent.contains(&commit) {
                continue;
            }
            let tree = t.commit_tree(&commit)?;
            let base = match t.parents(&commit)?.first() {
                Some(parent) => Some(t.commit_tree(parent)?),
                None => None,
            };
            sender.tree(&tree, base.as_ref())?;
            sender.object(&commit)?;
        }
        Ok(())
    }

    /// Whether any of `haves` is a commit of `vault` here. A pull (which needs only `pull`)
    /// must start from something the caller has: without one, it would be a clone.
    pub fn knows_any(&self, vault: &VaultId, haves: &[[u8; 20]]) -> Result<bool, VaultError> {
        let mut tx = self.store.read()?;
        let t = Tx {
            store: self.store,
            tx: &mut tx,
            vault: *vault,
        };
        for have in haves {
            let oid = wire_oid(have);
            if t.has(&oid)? && t.object(&oid)?.kind == ObjectKind::Commit {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What to tell a node serving a pull of `name`: its id, the commits this node has
    /// (see the module docs), and what an interrupted transfer already brought.
    pub fn pull_request(&self, name: &str, node: &NodeId) -> Result<PullPlan, VaultError> {
        let mut tx = self.store.read()?;
        let record = self.record(&tx, name)?;
        let received = self.incoming(&tx, &record.id, node)?;
        let t = Tx {
            store: self.store,
            tx: &mut tx,
            vault: record.id,
        };
        let mut haves: Vec<ObjectId> = Vec::new();
        let push = |haves: &mut Vec<ObjectId>, oid: ObjectId| {
            if !haves.contains(&oid) {
                haves.push(oid);
            }
        };
        if let Some(remote) = record.sync.remotes.get(&node.to_string()) {
            push(&mut haves, parse_oid(remote)?);
        }
        for tip in std::iter::once(&record.latest)
            .chain(&record.kept)
            .chain(std::iter::once(&record.head))
        {
            push(&mut haves, parse_oid(tip)?);
        }
        // First-parent ancestors of the newest commit at distances 1, 2, 4, 8, ...
        let mut current = parse_oid(&record.latest)?;
        let mut distance = 0u64;
        let mut next_sample = 1u64;
        while haves.len() < 64 {
            let Some(parent) = t.parents(&current)?.first().copied() else {
                break;
            };
            current = parent;
            distance += 1;
            if distance == next_sample {
                push(&mut haves, current);
                next_sample *= 2;
            }
        }
        // The serving node takes no more (the newest, and the nearest ancestors, first).
        haves.truncate(MAX_HAVES);
        Ok(PullPlan {
            record,
            haves: haves.iter().map(oid_bytes).collect(),
            received: received.iter().map(oid_bytes).collect(),
        })
    }

    /// What an interrupted clone of `remote_name` (a name or id) from `node` already
    /// brought, if there was one.
    pub fn clone_resume(
        &self,
        node: &NodeId,
        remote: &str,
    ) -> Result<Option<(VaultId, ObjectIds)>, VaultError> {
        let tx = self.store.read()?;
        for (key, value) in tx.range(Table::Sync, INCOMING, usize::MAX, false)? {
            if !key.starts_with(INCOMING) {
                break;
            }
            let Ok(id) = <[u8; 16]>::try_from(&key[INCOMING.len()..]) else {
                continue;
            };
            let id = VaultId(id);
            let incoming: Incoming =
                serde_json::from_slice(&value).map_err(|_| corrupt("transfer record"))?;
            if incoming.node == node.to_string()
                && (incoming.remote_name == remote || id.to_string() == remote)
                && self.record_by_id(&tx, &id)?.is_none()
            {
                let received = read_incoming(&tx, &id)?
                    .map(|(_, ids)| ids.iter().map(oid_bytes).collect())
                    .unwrap_or_default();
                return Ok(Some((id, received)));
            }
        }
        Ok(None)
    }

    fn incoming(
        &self,
        tx: &impl Read,
        vault: &VaultId,
        node: &NodeId,
    ) -> Result<Vec<ObjectId>, VaultError> {
        match read_incoming(tx, vault)? {
            Some((incoming, ids)) if incoming.node == node.to_string() => Ok(ids),
            _ => Ok(Vec::new()),
        }
    }

    /// Starts receiving the vault `begin` names from `node`: a clone (into `local_name`)
    /// when `clone`, else a pull into the local vault with the same id; with the default
    /// [`TransferLimits`].
    pub fn receiver(
        &self,
        node: NodeId,
        begin: &Fetched,
        clone: Option<&str>,
    ) -> Result<Receiver<'_, 's>, VaultError> {
        self.receiver_with(node, begin, clone, TransferLimits::default())
    }

    /// [`Vaults::receiver`] with the limits a user chose.
    pub fn receiver_with(
        &self,
        node: NodeId,
        begin: &Fetched,
        clone: Option<&str>,
        limits: TransferLimits,
    ) -> Result<Receiver<'_, 's>, VaultError> {
        let tx = self.store.read()?;
        let existing = self.record_by_id(&tx, &begin.vault)?;
        parse_oid(&begin.tip)?;
        match (clone, &existing) {
            (Some(_), Some(record)) => {
                return Err(VaultError::AlreadyCloned(record.name.clone()));
            }
            (Some(name), None) => {
                check_vault_name(name)?;
                if tx.contains(Table::VaultNames, &self.name_key(name))? {
                    return Err(VaultError::VaultExists(name.to_owned()));
                }
            }
            (None, None) => return Err(VaultError::NoVault(begin.vault.to_string())),
            (None, Some(_)) => {}
        }
        let unfinished = read_incoming(&tx, &begin.vault)?;
        drop(tx);
        let (previous, batches) = match unfinished {
            Some((incoming, ids)) if incoming.node == node.to_string() => (ids, incoming.batches),
            Some((incoming, ids)) => {
                // An unfinished transfer from another node: what it brought is of no use to
                // this one (it resumes only from its own node), and it would stay forever.
                let mut w = self.store.write()?;
                let mut t = Tx {
                    store: self.store,
                    tx: &mut w,
                    vault: begin.vault,
                };
                for oid in &ids {
                    t.delete_object(oid)?;
                }
                delete_incoming(&mut w, &begin.vault, incoming.batches)?;
                w.commit()?;
                (Vec::new(), 0)
            }
            None => (Vec::new(), 0),
        };
        let resumed = previous.len() as u64;
        Ok(Receiver {
            vaults: self,
            node,
            vault: begin.vault,
            remote_name: begin.name.clone(),
            clone: clone.map(str::to_owned),
            received: previous,
            batches,
            limits,
            batch_bytes: BATCH_BYTES,
            batch_objects: BATCH_OBJECTS,
            depths: HashMap::new(),
            pending: Vec::new(),
            pending_index: HashMap::new(),
            pending_bytes: 0,
            kinds: HashMap::new(),
            snapshot: std::cell::RefCell::new(None),
            cache: TreeCache::default(),
            objects: 0,
            bytes: 0,
            resumed,
        })
    }
}

/// The receiving side of one clone or pull; see the module docs.
pub struct Receiver<'v, 's> {
    vaults: &'v Vaults<'s>,
    node: NodeId,
    vault: VaultId,
    remote_name: String,
    clone: Option<String>,
    /// Every object this transfer (and the interrupted ones it resumes) stored.
    received: Vec<ObjectId>,
    /// Batch rows of the transfer record written so far.
    batches: u32,
    limits: TransferLimits,
    /// A batch is written once it holds this many bytes ([`BATCH_BYTES`]) ...
    batch_bytes: usize,
    /// ... or this many objects ([`BATCH_OBJECTS`]); tests make batches small, to cut a
    /// transfer between them.
    batch_objects: usize,
    /// The nesting depth of trees met in this transfer.
    depths: HashMap<ObjectId, usize>,
    pending: Vec<(ObjectId, ObjectKind, Zeroizing<Vec<u8>>)>,
    pending_index: HashMap<ObjectId, usize>,
    pending_bytes: usize,
    /// The kind of every object that arrived in this transfer (links are checked against
    /// it without reading the store back).
    kinds: HashMap<ObjectId, ObjectKind>,
    /// A read snapshot for existence checks, renewed after each batch is written.
    snapshot: std::cell::RefCell<Option<ReadTx<'s>>>,
    cache: TreeCache,
    objects: u64,
    bytes: u64,
    resumed: u64,
}

impl<'s> Receiver<'_, 's> {
    fn store(&self) -> &'s Store {
        self.vaults.store
    }

    /// Whether the object is here (stored, or waiting in this batch).
    fn present(&self, oid: &ObjectId) -> Result<bool, VaultError> {
        Ok(self.kind_of(oid)?.is_some())
    }

    /// The kind of an object that is here (arrived in this transfer, or stored before it).
    fn kind_of(&self, oid: &ObjectId) -> Result<Option<ObjectKind>, VaultError> {
        if let Some(kind) = self.kinds.get(oid) {
            return Ok(Some(*kind));
        }
        let mut snapshot = self.snapshot.borrow_mut();
        if snapshot.is_none() {
            *snapshot = Some(self.store().read()?);
        }
        let Some(tx) = snapshot.as_mut() else {
            return Err(corrupt("snapshot"));
        };
        let t = Tx {
            store: self.store(),
            tx,
            vault: self.vault,
        };
        if !t.has(oid)? {
            return Ok(None);
        }
        Ok(Some(t.object(oid)?.kind))
    }

    fn tree_at(&mut self, oid: &ObjectId) -> Result<Arc<TreeMap>, VaultError> {
        if let Some(tree) = self.cache.get(oid) {
            return Ok(tree);
        }
        let tree = match self.pending_index.get(oid) {
            Some(&i) => parse_tree(oid, &self.pending[i].2)?,
            None => {
                let mut tx = self.store().read()?;
                let t = Tx {
                    store: self.store(),
                    tx: &mut tx,
                    vault: self.vault,
                };
                if !t.has(oid)? {
                    return Err(VaultError::Refused(format!(
                        "a tree delta names a base tree {oid} that is not here"
                    )));
                }
                t.tree(oid)?
            }
        };
        let tree = Arc::new(tree);
        self.cache.put(*oid, tree.clone());
        Ok(tree)
    }

    /// Checks that everything `data` (of `kind`; `tree` when it is a tree) names is here
    /// and of the kind the link says (a commit's tree is a tree, its parents commits, a
    /// tree entry's mode matches its object), except entries carried over unchanged from
    /// `base`, which were checked when it arrived.
    fn check_links(
        &self,
        oid: &ObjectId,
        kind: ObjectKind,
        data: &[u8],
        tree: Option<&TreeMap>,
        base: Option<&TreeMap>,
    ) -> Result<(), VaultError> {
        let link = |what: &ObjectId, expected: ObjectKind, role: &str| -> Result<(), VaultError> {
            match self.kind_of(what)? {
                None => Err(VaultError::Refused(format!(
                    "object {oid} names {what}, which was not sent"
                ))),
                Some(found) if found != expected => Err(VaultError::Refused(format!(
                    "object {oid} names {what} as its {role}, but that is a {found}, not a {expected}"
                ))),
                Some(_) => Ok(()),
            }
        };
        match kind {
            ObjectKind::Blob => {}
            ObjectKind::Tree => {
                for (name, (mode, child)) in tree.ok_or_else(|| corrupt(oid))? {
                    if let Some(reason) = bad_name(name) {
                        return Err(VaultError::Refused(format!(
                            "tree {oid} holds an entry named {:?}: {reason}",
                            truncated(name)
                        )));
                    }
                    let expected = if mode.is_tree() {
                        ObjectKind::Tree
                    } else if mode.is_blob() {
                        ObjectKind::Blob
                    } else {
                        return Err(VaultError::Refused(format!(
                            "tree {oid} holds an entry of a kind a vault never has"
                        )));
                    };
                    if base.and_then(|b| b.get(name)) == Some(&(*mode, *child)) {
                        continue;
                    }
                    link(child, expected, "entry")?;
                }
            }
            ObjectKind::Commit => {
                let c = CommitRef::from_bytes(data, HASH)
                    .map_err(|_| VaultError::Refused(format!("commit {oid} does not parse")))?;
                link(&c.tree(), ObjectKind::Tree, "tree")?;
                for parent in c.parents() {
                    link(&parent, ObjectKind::Commit, "parent")?;
                }
            }
            ObjectKind::Tag => {
                return Err(VaultError::Refused(format!(
                    "object {oid} is a tag; vaults hold none"
                )));
            }
        }
        Ok(())
    }

    /// Counts `bytes` more against the transfer's quota; refused past it.
    fn charge(&mut self, bytes: u64) -> Result<(), VaultError> {
        self.objects += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limits.max_bytes {
            return Err(VaultError::Refused(format!(
                "the transfer is over its quota of {} bytes (set a larger one if this vault really is that large)",
                self.limits.max_bytes
            )));
        }
        if self.objects > MAX_TRANSFER_OBJECTS {
            return Err(VaultError::Refused(format!(
                "the transfer is over {MAX_TRANSFER_OBJECTS} objects"
            )));
        }
        Ok(())
    }

    /// The nesting depth of a tree that is here (1: it holds no directories), up to just
    /// over the limit: trees of this transfer were measured on arrival, others are walked.
    fn depth_of(&mut self, oid: &ObjectId) -> Result<usize, VaultError> {
        if let Some(depth) = self.depths.get(oid) {
            return Ok(*depth);
        }
        let cap = self.limits.max_depth + 1;
        let mut tx = self.store().read()?;
        let t = Tx {
            store: self.store(),
            tx: &mut tx,
            vault: self.vault,
        };
        let mut deepest = 0;
        let mut stack = vec![(*oid, 1usize)];
        while let Some((tree, depth)) = stack.pop() {
            deepest = deepest.max(depth);
            if deepest >= cap {
                break;
            }
            for (mode, child) in t.tree(&tree)?.values() {
                if mode.is_tree() {
                    stack.push((*child, depth + 1));
                }
            }
        }
        self.depths.insert(*oid, deepest);
        Ok(deepest)
    }

    /// The depth of a tree about to be accepted: one more than its deepest directory
    /// (entries carried over from `base` are no deeper than `base` itself).
    fn tree_depth(
        &mut self,
        tree: &TreeMap,
        base: Option<(&ObjectId, &TreeMap)>,
    ) -> Result<usize, VaultError> {
        let mut depth = match base {
            Some((base, _)) => self.depth_of(base)?,
            None => 1,
        };
        for (name, (mode, child)) in tree {
            if !mode.is_tree() || base.and_then(|(_, b)| b.get(name)) == Some(&(*mode, *child)) {
                continue;
            }
            depth = depth.max(1 + self.depth_of(child)?);
        }
        Ok(depth)
    }

    fn accept(
        &mut self,
        oid: ObjectId,
        kind: ObjectKind,
        data: Zeroizing<Vec<u8>>,
        tree: Option<TreeMap>,
        base: Option<(&ObjectId, &TreeMap)>,
    ) -> Result<(), VaultError> {
        self.charge(data.len() as u64)?;
        let actual = gix_object::compute_hash(HASH, kind, &data).map_err(|_| corrupt("hash"))?;
        if actual != oid {
            return Err(VaultError::Refused(format!(
                "object {oid} does not match its id (its content hashes to {actual})"
            )));
        }
        let tree = match (kind, tree) {
            (ObjectKind::Tree, None) => Some(parse_tree(&oid, &data)?),
            (_, tree) => tree,
        };
        self.check_links(&oid, kind, &data, tree.as_ref(), base.map(|(_, b)| b))?;
        if let Some(tree) = &tree {
            let depth = self.tree_depth(tree, base)?;
            if depth > self.limits.max_depth {
                return Err(VaultError::Refused(format!(
                    "tree {oid} nests directories {depth} deep, over the limit of {}",
                    self.limits.max_depth
                )));
            }
            self.depths.insert(oid, depth);
        }
        if self.pending_index.contains_key(&oid) || self.present(&oid)? {
            return Ok(());
        }
        if let Some(tree) = tree {
            self.cache.put(oid, Arc::new(tree));
        }
        self.pending_bytes += data.len();
        self.kinds.insert(oid, kind);
        self.pending_index.insert(oid, self.pending.len());
        self.pending.push((oid, kind, data));
        if self.pending_bytes >= self.batch_bytes || self.pending.len() >= self.batch_objects {
            self.flush()?;
        }
        Ok(())
    }

    /// Keeps what arrived so far (a transfer broke off): a later transfer resumes there.
    pub fn save(&mut self) -> Result<(), VaultError> {
        self.flush()
    }

    /// Writes the buffered objects, with the list of what arrived, in one transaction.
    fn flush(&mut self) -> Result<(), VaultError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut tx = self.store().write()?;
        let mut t = Tx {
            store: self.store(),
            tx: &mut tx,
            vault: self.vault,
        };
        let mut ids = Vec::with_capacity(self.pending.len());
        for (oid, kind, data) in &self.pending {
            let stored = t.put(*kind, data)?;
            debug_assert_eq!(stored, *oid);
            ids.push(*oid);
        }
        self.save_progress(&mut tx, &ids)?;
        tx.commit()?;
        self.received.extend(ids);
        self.snapshot.replace(None);
        self.pending.clear();
        self.pending_index.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    /// Records the ids of one batch: the header, and one row for the batch.
    fn save_progress(&mut self, tx: &mut WriteTx<'_>, ids: &[ObjectId]) -> Result<(), VaultError> {
        let row: Vec<u8> = ids.iter().flat_map(oid_bytes).collect();
        tx.put(Table::Sync, &batch_key(&self.vault, self.batches), &row)?;
        self.batches += 1;
        let incoming = Incoming {
            node: self.node.to_string(),
            remote_name: self.remote_name.clone(),
            received: Vec::new(),
            batches: self.batches,
        };
        let bytes = serde_json::to_vec(&incoming).expect("a record always serialises");
        tx.put(Table::Sync, &incoming_key(&self.vault), &bytes)?;
        Ok(())
    }

    /// Drops everything this transfer stored, and its record: what a refused transfer
    /// brought is not kept (it may be anything, and a resume would only bring it back).
    pub fn abandon(mut self) -> Result<(), VaultError> {
        self.pending.clear();
        self.pending_index.clear();
        let mut tx = self.store().write()?;
        let mut t = Tx {
            store: self.store(),
            tx: &mut tx,
            vault: self.vault,
        };
        for oid in &self.received {
            t.delete_object(oid)?;
        }
        let legacy = read_incoming(t.tx, &self.vault)?.map_or(0, |(i, _)| i.batches);
        delete_incoming(&mut tx, &self.vault, self.batches.max(legacy))?;
        tx.commit()?;
        Ok(())
    }

    /// Takes one object; a `Large` one reads its content from `chunks`.
    pub fn object(
        &mut self,
        object: WireObject,
        chunks: &mut dyn Iterator<Item = Result<Zeroizing<Vec<u8>>, VaultError>>,
    ) -> Result<(), VaultError> {
        let kind_of = |k: u8| {
            byte_kind(k).ok_or_else(|| VaultError::Refused("an object of unknown kind".into()))
        };
        match object {
            WireObject::Full { oid, kind, data } => {
                self.accept(wire_oid(&oid), kind_of(kind)?, data.take(), None, None)
            }
            WireObject::TreeDelta {
                oid,
                base,
                removed,
                changed,
            } => self.tree_delta(wire_oid(&oid), wire_oid(&base), removed, changed),
            WireObject::Large { oid, kind, size } => {
                let oid = wire_oid(&oid);
                match kind_of(kind)? {
                    ObjectKind::Blob => self.large_blob(oid, size, chunks),
                    kind => self.large_metadata(oid, kind, size, chunks),
                }
            }
        }
    }

    /// A tree sent as its changes against `base`, a tree received or stored before.
    fn tree_delta(
        &mut self,
        oid: ObjectId,
        base: ObjectId,
        removed: Vec<WireEntry>,
        changed: Vec<WireEntry>,
    ) -> Result<(), VaultError> {
        let base_tree = self.tree_at(&base)?;
        let mut tree = TreeMap::clone(&base_tree);
        for entry in removed {
            tree.remove(&BString::from(entry.name));
        }
        for entry in changed {
            let mode = EntryMode::try_from(u32::from(entry.mode)).map_err(|_| {
                VaultError::Refused(format!("tree {oid} has an invalid entry mode"))
            })?;
            tree.insert(BString::from(entry.name), (mode, wire_oid(&entry.oid)));
        }
        let data = Zeroizing::new(encode_tree(&tree)?);
        if data.len() as u64 > MAX_METADATA_OBJECT {
            return Err(VaultError::Refused(format!(
                "tree {oid} is {} bytes, over the limit for its kind",
                data.len()
            )));
        }
        self.accept(
            oid,
            ObjectKind::Tree,
            data,
            Some(tree),
            Some((&base, &base_tree)),
        )
    }

    /// A large tree or commit, sent in chunks: gathered in memory (it is bounded), then
    /// taken like any other.
    fn large_metadata(
        &mut self,
        oid: ObjectId,
        kind: ObjectKind,
        size: u64,
        chunks: &mut dyn Iterator<Item = Result<Zeroizing<Vec<u8>>, VaultError>>,
    ) -> Result<(), VaultError> {
        if size > MAX_METADATA_OBJECT {
            return Err(VaultError::Refused(format!(
                "object {oid} is {size} bytes, over the limit for its kind"
            )));
        }
        let mut data = Zeroizing::new(Vec::new());
        while (data.len() as u64) < size {
            let piece = chunks.next().ok_or(VaultError::Interrupted)??;
            data.extend_from_slice(&piece);
        }
        if data.len() as u64 != size {
            return Err(VaultError::SizeMismatch);
        }
        self.accept(oid, kind, data, None, None)
    }

    /// A large blob: streamed into its own transaction (after the batch so far), within
    /// the quota, checked before a byte of it is stored.
    fn large_blob(
        &mut self,
        oid: ObjectId,
        size: u64,
        chunks: &mut dyn Iterator<Item = Result<Zeroizing<Vec<u8>>, VaultError>>,
    ) -> Result<(), VaultError> {
        self.charge(size)?;
        self.flush()?;
        let mut tx = self.store().write()?;
        let mut t = Tx {
            store: self.store(),
            tx: &mut tx,
            vault: self.vault,
        };
        let mut remaining = size;
        let mut pieces = std::iter::from_fn(|| {
            if remaining == 0 {
                return None;
            }
            let piece = chunks.next().unwrap_or(Err(VaultError::Interrupted));
            if let Ok(p) = &piece {
                remaining = remaining.saturating_sub(p.len() as u64);
            }
            Some(piece)
        });
        let stored = t.put_blob_stream(&mut pieces, Some(size))?;
        if stored != oid {
            return Err(VaultError::Refused(format!(
                "object {oid} does not match its id (its content hashes to {stored})"
            )));
        }
        self.save_progress(&mut tx, &[oid])?;
        tx.commit()?;
        self.received.push(oid);
        self.snapshot.replace(None);
        self.kinds.insert(oid, ObjectKind::Blob);
        Ok(())
    }

    /// Ends the transfer: checks the tip arrived, then (one transaction) creates the
    /// cloned vault or merges the pull, and forgets the transfer record.
    /// A refused transfer is abandoned: nothing it brought is kept.
    pub fn finish(mut self, tip: &str) -> Result<FetchOutcome, VaultError> {
        match self.complete(tip) {
            Err(VaultError::Refused(why)) => {
                let _ = self.abandon();
                Err(VaultError::Refused(why))
            }
            other => other,
        }
    }

    /// The objects of this transfer that `tip` reaches (objects stored before it are not
    /// walked: they are reachable from what holds them already).
    fn reached(
        &self,
        t: &Tx<'_, 's, WriteTx<'s>>,
        tip: ObjectId,
    ) -> Result<HashSet<ObjectId>, VaultError> {
        let received: HashSet<ObjectId> = self.received.iter().copied().collect();
        let mut reached = HashSet::new();
        let mut stack = vec![tip];
        while let Some(oid) = stack.pop() {
            if !received.contains(&oid) || !reached.insert(oid) {
                continue;
            }
            if self.kinds.get(&oid) == Some(&ObjectKind::Blob) {
                continue;
            }
            let (kind, data) = t.get(&oid)?;
            match kind {
                ObjectKind::Commit => {
                    let c = CommitRef::from_bytes(&data, HASH).map_err(|_| corrupt(oid))?;
                    stack.push(c.tree());
                    stack.extend(c.parents());
                }
                ObjectKind::Tree => {
                    stack.extend(parse_tree(&oid, &data)?.values().map(|(_, child)| *child));
                }
                _ => {}
            }
        }
        Ok(reached)
    }

    fn complete(&mut self, tip: &str) -> Result<FetchOutcome, VaultError> {
        self.flush()?;
        let tip = parse_oid(tip)?;
        let store = self.store();
        let mut tx = store.write()?;
        let mut t = Tx {
            store,
            tx: &mut tx,
            vault: self.vault,
        };
        if !t.has(&tip)? || t.object(&tip)?.kind != ObjectKind::Commit {
            return Err(VaultError::Refused(format!(
                "the newest commit {tip} did not arrive"
            )));
        }
        // What the tip does not reach was sent for nothing (or to fill the disk): dropped.
        let reached = self.reached(&t, tip)?;
        for oid in &self.received {
            if !reached.contains(oid) {
                t.delete_object(oid)?;
            }
        }
        let node = self.node.to_string();
        let mut outcome = FetchOutcome {
            vault: String::new(),
            id: self.vault,
            // A pull's record says what it did (below).
            result: FetchResult::Cloned,
            objects: self.objects,
            bytes: self.bytes,
            resumed: self.resumed,
            conflicts: Vec::new(),
            commit: tip.to_string(),
            wire_bytes: 0,
        };
        let record = match &self.clone {
            Some(name) => self.cloned_record(&mut tx, name, tip)?,
            None => self.pulled_record(&mut t, tip, &mut outcome)?,
        };
        outcome.vault = record.name.clone();
        outcome.commit = record.latest.clone();
        Vaults::save_record(&mut tx, &record)?;
        let batches = read_incoming(&tx, &self.vault)?.map_or(0, |(i, _)| i.batches);
        delete_incoming(&mut tx, &self.vault, batches)?;
        audit::append(
            &mut tx,
            if self.clone.is_some() {
                "vault.cloned"
            } else {
                "vault.pulled"
            },
            json!({
                "vault": record.name,
                "id": record.id,
                "node": node,
                "result": outcome.summary(),
                "conflicts": outcome.conflicts.len(),
                "objects": outcome.objects,
            }),
        )?;
        tx.commit()?;
        Ok(outcome)
    }

    /// The record of a vault cloned at `tip` as `name`, its name taken.
    fn cloned_record(
        &self,
        tx: &mut WriteTx<'s>,
        name: &str,
        tip: ObjectId,
    ) -> Result<VaultRecord, VaultError> {
        let record = VaultRecord {
            id: self.vault,
            name: name.to_owned(),
            created: unix_s(),
            head: tip.to_string(),
            latest: tip.to_string(),
            kept: Vec::new(),
            sync: SyncState {
                origin: Some(self.node),
                remotes: BTreeMap::from([(self.node.to_string(), tip.to_string())]),
                last_pull: None,
            },
        };
        tx.put(
            Table::VaultNames,
            &self.vaults.name_key(name),
            self.vault.as_bytes(),
        )?;
        Ok(record)
    }

    /// The vault's record after a pull of `tip`: fast-forwarded, merged or unchanged (the
    /// head follows when it was at the newest commit), and the pull noted in it and in
    /// `outcome`.
    fn pulled_record<'t>(
        &self,
        t: &mut Tx<'t, 's, WriteTx<'s>>,
        tip: ObjectId,
        outcome: &mut FetchOutcome,
    ) -> Result<VaultRecord, VaultError> {
        let node = self.node.to_string();
        let mut record = self
            .vaults
            .record_by_id(t.tx, &self.vault)?
            .ok_or_else(|| VaultError::NoVault(self.vault.to_string()))?;
        let ours = parse_oid(&record.latest)?;
        let follow_head = record.head == record.latest;
        // The usual cases first: nothing new, then only their side changed.
        let new_latest = if ours == tip {
            outcome.result = FetchResult::UpToDate;
            ours
        } else if t.reaches(&tip, &ours)? {
            outcome.result = FetchResult::FastForward;
            tip
        } else if t.reaches(&ours, &tip)? {
            outcome.result = FetchResult::UpToDate;
            ours
        } else {
            let (commit, conflicts) = self.merge(t, ours, tip)?;
            outcome.result = FetchResult::Merged;
            outcome.conflicts = conflicts;
            commit
        };
        record.latest = new_latest.to_string();
        if follow_head {
            record.head = new_latest.to_string();
        }
        record.sync.remotes.insert(node.clone(), tip.to_string());
        record.sync.last_pull = Some(PullOutcome {
            node,
            time: unix_s(),
            ok: true,
            message: outcome.summary(),
        });
        Ok(record)
    }

    /// Merges `theirs` into `ours` by path ([`merge::merge`]); returns the merge commit
    /// and the conflicts (`path -> copy`).
    fn merge<'t>(
        &self,
        t: &mut Tx<'t, 's, WriteTx<'s>>,
        ours: ObjectId,
        theirs: ObjectId,
    ) -> Result<(ObjectId, Vec<(String, String)>), VaultError> {
        let base = merge_base(t, ours, theirs)?;
        let flat = |t: &Tx<'_, '_, WriteTx<'s>>, commit: Option<ObjectId>| match commit {
            Some(c) => flatten(t, &t.commit_tree(&c)?),
            None => Ok(Flat::new()),
        };
        let b = flat(t, base)?;
        let l = flat(t, Some(ours))?;
        let r = flat(t, Some(theirs))?;
        let merged = merge::merge(&b, &l, &r, &|name, n| {
            merge_conflict_name(name, &self.node, n)
        })?;
        let conflicts: Vec<(String, String)> = merged
            .conflicts
            .iter()
            .map(|c| (merge::show(&c.path), merge::show(&c.copy)))
            .collect();
        let entries: Vec<(Vec<BString>, (EntryMode, ObjectId))> = merged.tree.into_iter().collect();
        let tree = build(t, &entries, 0)?;
        let message = if conflicts.is_empty() {
            format!("merge from {}", self.node)
        } else {
            format!(
                "merge from {}: {} conflict(s) kept under .conflict names",
                self.node,
                conflicts.len()
            )
        };
        let commit = self
            .vaults
            .make_merge_commit(t, tree, &[ours, theirs], &message)?;
        Ok((commit, conflicts))
    }
}

/// The newest commit `theirs` reaches (breadth first) that `ours` reaches too, if any.
fn merge_base<R: Read>(
    t: &Tx<'_, '_, R>,
    ours: ObjectId,
    theirs: ObjectId,
) -> Result<Option<ObjectId>, VaultError> {
    let mine = t.ancestors(&[ours])?;
    let mut queue = std::collections::VecDeque::from([theirs]);
    let mut seen = HashSet::new();
    while let Some(oid) = queue.pop_front() {
        if mine.contains(&oid) {
            return Ok(Some(oid));
        }
        if seen.insert(oid) {
            queue.extend(t.parents(&oid)?);
        }
    }
    Ok(None)
}

fn flatten<R: Read>(t: &Tx<'_, '_, R>, root: &ObjectId) -> Result<Flat, VaultError> {
    let mut out = Flat::new();
    let mut stack = vec![(Vec::new(), *root)];
    while let Some((prefix, oid)) = stack.pop() {
        let tree = t.tree(&oid)?;
        for (name, (mode, child)) in tree {
            let mut path: Vec<BString> = prefix.clone();
            path.push(name);
            if mode.is_tree() && !t.tree(&child)?.is_empty() {
                stack.push((path, child));
            } else {
                out.insert(path, (mode, child));
            }
        }
    }
    Ok(out)
}

/// Builds the trees for sorted leaf entries, from `depth` down; returns the root's id.
fn build<'s>(
    t: &mut Tx<'_, 's, WriteTx<'s>>,
    entries: &[(Vec<BString>, (EntryMode, ObjectId))],
    depth: usize,
) -> Result<ObjectId, VaultError> {
    let mut map = TreeMap::new();
    let mut i = 0;
    while i < entries.len() {
        let name = &entries[i].0[depth];
        let mut j = i + 1;
        while j < entries.len() && entries[j].0[depth] == *name {
            j += 1;
        }
        if j == i + 1 && entries[i].0.len() == depth + 1 {
            map.insert(name.clone(), entries[i].1);
        } else if entries[i].0.len() == depth + 1 {
            // A leaf and a directory under one name: building would drop the leaf.
            return Err(corrupt(format!("{name} is both a secret and a directory")));
        } else {
            let group: Vec<_> = entries[i..j]
                .iter()
                .filter(|(p, _)| p.len() > depth + 1)
                .cloned()
                .collect();
            let child = build(t, &group, depth + 1)?;
            map.insert(name.clone(), (dir_mode(), child));
        }
        i = j;
    }
    t.put_tree(&map)
}

fn parse_tree(oid: &ObjectId, data: &[u8]) -> Result<TreeMap, VaultError> {
    let tree = gix_object::TreeRef::from_bytes(data, HASH)
        .map_err(|_| VaultError::Refused(format!("tree {oid} does not parse")))?;
    Ok(tree
        .entries
        .iter()
        .map(|e| (e.filename.to_owned(), (e.mode, e.oid.to_owned())))
        .collect())
}

#[cfg(test)]
mod tests {
    //! Sender and receiver against each other in memory: two stores, no sockets.
    use super::*;
    use std::collections::BTreeSet;

    use crate::NodePath;
    use crate::identity::Identity;
    use crate::vault::SecretPath;
    use hsm_core::DataKey;

    /// A node's store and its identity, in a temporary directory.
    struct Node {
        _dir: tempfile::TempDir,
        store: Store,
        id: NodeId,
    }

    impl Node {
        fn new() -> Node {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&NodePath::new(dir.path()), &DataKey::generate()).unwrap();
            Node {
                _dir: dir,
                store,
                id: Identity::generate().node_id(),
            }
        }

        fn vaults(&self) -> Vaults<'_> {
            Vaults::new(&self.store, self.id)
        }

        fn write(&self, vault: &str, path: &str, value: &[u8]) {
            self.vaults()
                .write(
                    vault,
                    &SecretPath::parse(path, false).unwrap(),
                    value,
                    "secret.written",
                )
                .unwrap();
        }

        fn read(&self, vault: &str, path: &str) -> Result<Vec<u8>, VaultError> {
            self.vaults()
                .read(vault, &SecretPath::parse(path, false).unwrap())
                .map(|v| v.to_vec())
        }
    }

    /// What the sender hands its transport, owned.
    enum Message {
        Begin(Fetched),
        Object(WireObject),
        Chunk(Vec<u8>),
    }

    /// Feeds `messages` (a sender's output, or a rogue's) to a receiver on `to`.
    fn receive(
        to: &Node,
        from: NodeId,
        messages: Vec<Message>,
        clone: Option<&str>,
    ) -> Result<FetchOutcome, VaultError> {
        receive_with(to, from, messages, clone, TransferLimits::default())
    }

    /// [`receive`] within `limits`; a refused transfer is abandoned, as the agent does.
    fn receive_with(
        to: &Node,
        from: NodeId,
        messages: Vec<Message>,
        clone: Option<&str>,
        limits: TransferLimits,
    ) -> Result<FetchOutcome, VaultError> {
        let mut messages = messages.into_iter().peekable();
        let Some(Message::Begin(begin)) = messages.next() else {
            panic!("a transfer starts with Begin");
        };
        let vaults = to.vaults();
        let mut receiver = vaults.receiver_with(from, &begin, clone, limits)?;
        while let Some(message) = messages.next() {
            let Message::Object(object) = message else {
                panic!("a chunk without its object");
            };
            let mut chunks = std::iter::from_fn(|| match messages.peek() {
                Some(Message::Chunk(_)) => match messages.next() {
                    Some(Message::Chunk(bytes)) => Some(Ok(Zeroizing::new(bytes))),
                    _ => None,
                },
                _ => None,
            });
            if let Err(e) = receiver.object(object, &mut chunks) {
                if matches!(e, VaultError::Refused(_)) {
                    receiver.abandon().unwrap();
                }
                return Err(e);
            }
        }
        receiver.finish(&begin.tip)
    }

    /// What `from` sends for a clone (`clone: Some(name)`) or pull of `name` into `to`,
    /// asked as the agent asks (`agent/peers.rs`, `clone` and `pull`): resuming what an
    /// interrupted transfer brought, if one did.
    fn serve(
        from: &Node,
        to: &Node,
        name: &str,
        clone: Option<&str>,
    ) -> Result<Vec<Message>, VaultError> {
        let (id, haves, received) = match clone {
            Some(_) => {
                let resume = to.vaults().clone_resume(&from.id, name)?;
                let asked = resume.as_ref().map(|(id, _)| *id);
                let id = from.vaults().find(asked.as_ref(), name)?.id;
                (id, Vec::new(), resume.map(|(_, r)| r).unwrap_or_default())
            }
            None => {
                let plan = to.vaults().pull_request(name, &from.id)?;
                (plan.record.id, plan.haves, plan.received)
            }
        };
        let received: Vec<_> = received.into_iter().take(MAX_RECEIVED).collect();
        let mut messages = Vec::new();
        from.vaults().send(&id, &haves, &received, &mut |out| {
            messages.push(match out {
                Outgoing::Begin(b) => Message::Begin(b),
                Outgoing::Object(o) => Message::Object(o),
                Outgoing::Chunk(c) => Message::Chunk(c.to_vec()),
            });
            Ok(())
        })?;
        Ok(messages)
    }

    /// A clone (`clone: Some(name)`) or pull of `name` from `from` to `to`.
    fn transfer(
        from: &Node,
        to: &Node,
        name: &str,
        clone: Option<&str>,
    ) -> Result<FetchOutcome, VaultError> {
        let messages = serve(from, to, name, clone)?;
        receive(to, from.id, messages, clone)
    }

    /// Objects per batch in the cut tests: small, so that a small vault has many batches.
    const SMALL_BATCH: usize = 4;

    /// Feeds `messages` to a receiver on `to` that writes a batch every [`SMALL_BATCH`]
    /// objects, and drops it once `cut` batches are written, as a crash would (nothing it
    /// held in memory is kept). A transfer with fewer batches finishes. Returns the outcome
    /// (`None` when cut) and the batches written.
    fn receive_cut(
        to: &Node,
        from: NodeId,
        messages: Vec<Message>,
        clone: Option<&str>,
        cut: u32,
    ) -> (Option<FetchOutcome>, u32) {
        let mut messages = messages.into_iter().peekable();
        let Some(Message::Begin(begin)) = messages.next() else {
            panic!("a transfer starts with Begin");
        };
        let vaults = to.vaults();
        let mut receiver = vaults.receiver(from, &begin, clone).unwrap();
        receiver.batch_objects = SMALL_BATCH;
        let start = receiver.batches;
        let written = |r: &Receiver<'_, '_>| r.batches - start;
        while let Some(message) = messages.next() {
            if written(&receiver) >= cut {
                assert_eq!(written(&receiver), cut, "no cut falls inside one object");
                return (None, cut);
            }
            let Message::Object(object) = message else {
                panic!("a chunk without its object");
            };
            // A large blob writes the batch before it, then itself as a batch of its own:
            // the cut between the two is the stream breaking before the blob's first chunk.
            let large_blob = matches!(&object, WireObject::Large { kind, .. }
                if byte_kind(*kind) == Some(ObjectKind::Blob));
            if large_blob && !receiver.pending.is_empty() && written(&receiver) + 1 == cut {
                let mut broken = std::iter::once(Err(VaultError::Interrupted));
                let err = receiver.object(object, &mut broken).unwrap_err();
                assert!(matches!(err, VaultError::Interrupted), "{err:?}");
                receiver.save().unwrap();
                assert_eq!(written(&receiver), cut);
                return (None, cut);
            }
            let mut chunks = std::iter::from_fn(|| match messages.peek() {
                Some(Message::Chunk(_)) => match messages.next() {
                    Some(Message::Chunk(bytes)) => Some(Ok(Zeroizing::new(bytes))),
                    _ => None,
                },
                _ => None,
            });
            receiver.object(object, &mut chunks).unwrap();
        }
        // What `finish` writes first, as a batch of its own: the last boundary.
        receiver.save().unwrap();
        if written(&receiver) >= cut {
            assert_eq!(written(&receiver), cut, "no cut falls inside one object");
            return (None, cut);
        }
        let batches = written(&receiver);
        (Some(receiver.finish(&begin.tip).unwrap()), batches)
    }

    /// What a transfer left on the receiving node, for comparing two transfers.
    #[derive(Debug, PartialEq, Eq)]
    struct Landed {
        record: (String, String, Vec<String>),
        origin: Option<NodeId>,
        remotes: BTreeMap<String, String>,
        last_pull: Option<(String, bool, String)>,
        /// Every object the vault's tips reach, each read back whole.
        reachable: BTreeSet<ObjectId>,
        /// The vault's rows in the objects table (objects and chunks).
        rows: usize,
        /// Whether a transfer into the vault is still on record.
        unfinished: bool,
    }

    fn landed(node: &Node, name: &str) -> Landed {
        let record = node.vaults().find(None, name).unwrap();
        let mut tx = node.store.read().unwrap();
        let unfinished = read_incoming(&tx, &record.id).unwrap().is_some();
        let rows = tx
            .range(Table::Objects, record.id.as_bytes(), usize::MAX, false)
            .unwrap()
            .iter()
            .filter(|(key, _)| key.starts_with(record.id.as_bytes()))
            .count();
        let t = Tx {
            store: &node.store,
            tx: &mut tx,
            vault: record.id,
        };
        let mut reachable = BTreeSet::new();
        let mut stack: Vec<ObjectId> = std::iter::once(&record.latest)
            .chain(&record.kept)
            .chain(std::iter::once(&record.head))
            .map(|tip| parse_oid(tip).unwrap())
            .collect();
        while let Some(oid) = stack.pop() {
            if !reachable.insert(oid) {
                continue;
            }
            let (kind, data) = t.get(&oid).unwrap();
            match kind {
                ObjectKind::Commit => {
                    let c = CommitRef::from_bytes(&data, HASH).unwrap();
                    stack.push(c.tree());
                    stack.extend(c.parents());
                }
                ObjectKind::Tree => {
                    stack.extend(parse_tree(&oid, &data).unwrap().values().map(|(_, o)| *o));
                }
                _ => {}
            }
        }
        Landed {
            record: (record.head, record.latest, record.kept),
            origin: record.sync.origin,
            remotes: record.sync.remotes,
            last_pull: record.sync.last_pull.map(|p| (p.node, p.ok, p.message)),
            reachable,
            rows,
            unfinished,
        }
    }

    /// Commits `commits` on `node`'s vault `v`: secrets in nested directories, one
    /// rewritten, one deleted, and a large one (sent in pieces, written in a batch of its
    /// own). Chunked storage is left out: unoptimised AEAD makes a megabyte slow here.
    fn history(node: &Node, commits: std::ops::Range<usize>) {
        for i in commits {
            let value = format!("value {i}");
            node.write(
                "v",
                &format!("d{}/e{}/s{i}", i % 3, i % 2),
                value.as_bytes(),
            );
            match i {
                4 => node.write("v", "d0/e0/s0", b"rewritten"),
                5 => {
                    let gone = SecretPath::parse("d1/e1/s1", false).unwrap();
                    node.vaults().remove("v", &[gone], false).unwrap();
                }
                6 => node.write("v", "large", &vec![7u8; INLINE_MAX as usize + 1000]),
                _ => {}
            }
        }
    }

    /// What a cut transfer into `vault` stored, by its record in the `sync` table.
    fn stored_before(node: &Node, vault: &VaultId) -> HashSet<ObjectId> {
        let tx = node.store.read().unwrap();
        read_incoming(&tx, vault)
            .unwrap()
            .map(|(_, ids)| ids.into_iter().collect())
            .unwrap_or_default()
    }

    /// A resumed transfer sends nothing the cut one stored; after a cut past the first
    /// batch, something was stored.
    fn assert_resends_nothing(messages: &[Message], stored: &HashSet<ObjectId>, cut: u32) {
        assert_eq!(stored.is_empty(), cut == 0, "cut after batch {cut}");
        for message in messages {
            let oid = match message {
                Message::Object(
                    WireObject::Full { oid, .. }
                    | WireObject::Large { oid, .. }
                    | WireObject::TreeDelta { oid, .. },
                ) => wire_oid(oid),
                _ => continue,
            };
            assert!(!stored.contains(&oid), "cut after batch {cut}: {oid} again");
        }
    }

    /// The outcome's fields that do not depend on where the transfer was cut.
    fn settled(
        outcome: &FetchOutcome,
    ) -> (String, VaultId, FetchResult, Vec<(String, String)>, String) {
        (
            outcome.vault.clone(),
            outcome.id,
            outcome.result,
            outcome.conflicts.clone(),
            outcome.commit.clone(),
        )
    }

    /// Issue 14: a clone cut after any of its batches (the receiver dropped there, as a
    /// crash drops it) and resumed as the agent resumes one ends with the vault an uncut
    /// clone makes, and the resumed transfer brings only what the cut one had not.
    #[test]
    fn a_clone_cut_at_every_batch_boundary_resumes_to_the_same_vault() {
        let from = Node::new();
        from.vaults().create("v").unwrap();
        history(&from, 0..8);
        let whole_node = Node::new();
        let messages = serve(&from, &whole_node, "v", Some("copy")).unwrap();
        let (whole, batches) = receive_cut(&whole_node, from.id, messages, Some("copy"), u32::MAX);
        let whole = whole.unwrap();
        assert!(batches >= 10, "{batches} batches");
        let expected = landed(&whole_node, "copy");
        assert!(!expected.unfinished);
        for cut in 0..=batches {
            let to = Node::new();
            let messages = serve(&from, &to, "v", Some("copy")).unwrap();
            let (ended, _) = receive_cut(&to, from.id, messages, Some("copy"), cut);
            assert!(ended.is_none(), "cut after batch {cut}");
            assert!(
                to.vaults().list().unwrap().is_empty(),
                "cut after batch {cut}"
            );
            let stored = stored_before(&to, &whole.id);
            let messages = serve(&from, &to, "v", Some("copy")).unwrap();
            assert_resends_nothing(&messages, &stored, cut);
            let (resumed, _) = receive_cut(&to, from.id, messages, Some("copy"), u32::MAX);
            let resumed = resumed.unwrap();
            assert_eq!(settled(&resumed), settled(&whole), "cut after batch {cut}");
            assert_eq!(
                resumed.resumed,
                stored.len() as u64,
                "cut after batch {cut}"
            );
            assert_eq!(resumed.objects + resumed.resumed, whole.objects);
            assert_eq!(landed(&to, "copy"), expected, "cut after batch {cut}");
        }
    }

    /// Issue 14: the same for a pull, which sends deltas against trees the receiver has
    /// and is resumed from the list `pull_request` names.
    #[test]
    fn a_pull_cut_at_every_batch_boundary_resumes_to_the_same_vault() {
        let from = Node::new();
        from.vaults().create("v").unwrap();
        history(&from, 0..3);
        // What every run pulls into: a copy of a clone made while `from` was at commit 3.
        let first = Node::new();
        transfer(&from, &first, "v", Some("v")).unwrap();
        history(&from, 3..8);
        let copy = || {
            let node = Node::new();
            transfer(&first, &node, "v", Some("v")).unwrap();
            node
        };
        let whole_node = copy();
        let messages = serve(&from, &whole_node, "v", None).unwrap();
        let (whole, batches) = receive_cut(&whole_node, from.id, messages, None, u32::MAX);
        let whole = whole.unwrap();
        assert_eq!(whole.result, FetchResult::FastForward);
        assert!(batches >= 8, "{batches} batches");
        let expected = landed(&whole_node, "v");
        assert!(!expected.unfinished);
        for cut in 0..=batches {
            let to = copy();
            let before = landed(&to, "v");
            let messages = serve(&from, &to, "v", None).unwrap();
            let (ended, _) = receive_cut(&to, from.id, messages, None, cut);
            assert!(ended.is_none(), "cut after batch {cut}");
            let cut_off = landed(&to, "v");
            assert_eq!(
                cut_off.record, before.record,
                "cut after batch {cut}: no move"
            );
            assert_eq!(cut_off.reachable, before.reachable, "cut after batch {cut}");
            let stored = stored_before(&to, &whole.id);
            let messages = serve(&from, &to, "v", None).unwrap();
            assert_resends_nothing(&messages, &stored, cut);
            let (resumed, _) = receive_cut(&to, from.id, messages, None, u32::MAX);
            let resumed = resumed.unwrap();
            assert_eq!(settled(&resumed), settled(&whole), "cut after batch {cut}");
            assert_eq!(
                resumed.resumed,
                stored.len() as u64,
                "cut after batch {cut}"
            );
            assert_eq!(landed(&to, "v"), expected, "cut after batch {cut}");
        }
    }

    fn wire(kind: ObjectKind, data: &[u8]) -> ([u8; 20], Message) {
        let oid = oid_bytes(&gix_object::compute_hash(HASH, kind, data).unwrap());
        let object = WireObject::Full {
            oid,
            kind: kind_byte(kind),
            data: SecretBytes(data.to_vec()),
        };
        (oid, Message::Object(object))
    }

    fn tree_bytes(entries: &[(&str, &str, [u8; 20])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (mode, name, oid) in entries {
            out.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            out.extend_from_slice(oid);
        }
        out
    }

    fn commit_bytes(tree: &[u8; 20], parents: &[[u8; 20]]) -> Vec<u8> {
        let mut text = format!("tree {}\n", wire_oid(tree));
        for p in parents {
            text.push_str(&format!("parent {}\n", wire_oid(p)));
        }
        text.push_str("author r <r> 1700000000 +0000\ncommitter r <r> 1700000000 +0000\n\nm\n");
        text.into_bytes()
    }

    fn begin(tip: &[u8; 20]) -> Message {
        Message::Begin(Fetched {
            vault: VaultId([7; 16]),
            name: "rogue".into(),
            tip: wire_oid(tip).to_string(),
        })
    }

    #[test]
    fn clone_edit_both_sides_and_pull_merges() {
        let (a, b) = (Node::new(), Node::new());
        a.vaults().create("v").unwrap();
        a.write("v", "x", b"base");
        let cloned = transfer(&a, &b, "v", Some("v")).unwrap();
        assert_eq!(cloned.result, FetchResult::Cloned);
        a.write("v", "x", b"theirs");
        b.write("v", "y", b"ours");
        let pulled = transfer(&a, &b, "v", None).unwrap();
        assert_eq!(pulled.result, FetchResult::Merged);
        assert_eq!(b.read("v", "x").unwrap(), b"theirs");
        assert_eq!(b.read("v", "y").unwrap(), b"ours");
    }

    /// Issue 13, 1.10: the conflict copy's name may already be a directory on our side; the
    /// incoming version must still be kept, under a name that is free, and be readable
    /// where the pull says it is.
    #[test]
    fn a_conflict_name_taken_by_a_directory_keeps_the_version() {
        let (a, b) = (Node::new(), Node::new());
        a.vaults().create("v").unwrap();
        a.write("v", "x", b"base");
        transfer(&a, &b, "v", Some("v")).unwrap();
        a.write("v", "x", b"theirs");
        b.write("v", "x", b"ours");
        let taken = merge_conflict_name("x", &a.id, 1);
        b.write("v", &format!("{taken}/y"), b"in the directory");
        let pulled = transfer(&a, &b, "v", None).unwrap();
        assert_eq!(pulled.conflicts.len(), 1, "{pulled:?}");
        let (path, copy) = &pulled.conflicts[0];
        assert_eq!(path, "x");
        assert_ne!(copy, &taken, "the taken name is not reused");
        assert_eq!(
            b.read("v", copy).unwrap(),
            b"theirs",
            "the copy is where it says"
        );
        assert_eq!(b.read("v", "x").unwrap(), b"ours");
        assert_eq!(
            b.read("v", &format!("{taken}/y")).unwrap(),
            b"in the directory"
        );
    }

    /// Issue 13, 1.5: links must name objects of the right kind, or the vault becomes
    /// unreadable. Each shape is refused and no vault appears.
    #[test]
    fn links_to_objects_of_the_wrong_kind_are_refused() {
        let to = Node::new();
        let rogue = Identity::generate().node_id();
        let (blob, _) = wire(ObjectKind::Blob, b"value");
        let blob_msg = || wire(ObjectKind::Blob, b"value").1;
        let (tree, _) = wire(ObjectKind::Tree, &tree_bytes(&[("100644", "s", blob)]));
        let tree_msg = || wire(ObjectKind::Tree, &tree_bytes(&[("100644", "s", blob)])).1;
        let (good, _) = wire(ObjectKind::Commit, &commit_bytes(&tree, &[]));
        let good_msg = || wire(ObjectKind::Commit, &commit_bytes(&tree, &[])).1;

        let mut cases: Vec<(&str, Vec<Message>)> = Vec::new();
        // A commit whose tree is a blob.
        let (c, m) = wire(ObjectKind::Commit, &commit_bytes(&blob, &[]));
        cases.push(("commit's tree is a blob", vec![begin(&c), blob_msg(), m]));
        // A commit whose parent is a tree.
        let (c, m) = wire(ObjectKind::Commit, &commit_bytes(&tree, &[tree]));
        cases.push((
            "parent is a tree",
            vec![begin(&c), blob_msg(), tree_msg(), m],
        ));
        // A tree entry with a file's mode that names a tree.
        let (t2, t2m) = wire(ObjectKind::Tree, &tree_bytes(&[("100644", "s", tree)]));
        let (c, m) = wire(ObjectKind::Commit, &commit_bytes(&t2, &[]));
        cases.push((
            "file entry names a tree",
            vec![begin(&c), blob_msg(), tree_msg(), t2m, m],
        ));
        // A tree entry with a directory's mode that names a blob.
        let (t3, t3m) = wire(ObjectKind::Tree, &tree_bytes(&[("40000", "d", blob)]));
        let (c, m) = wire(ObjectKind::Commit, &commit_bytes(&t3, &[]));
        cases.push((
            "directory entry names a blob",
            vec![begin(&c), blob_msg(), t3m, m],
        ));
        // A commit whose parent is a commit is fine: the control case.
        let (c, m) = wire(ObjectKind::Commit, &commit_bytes(&tree, &[good]));
        let control = vec![begin(&c), blob_msg(), tree_msg(), good_msg(), m];

        for (what, messages) in cases {
            let err = receive(&to, rogue, messages, Some("cloned")).unwrap_err();
            assert!(
                matches!(err, VaultError::Refused(_)),
                "{what}: refused, not {err:?}"
            );
            assert!(to.vaults().list().unwrap().is_empty(), "{what}: no vault");
        }
        receive(&to, rogue, control, Some("cloned")).unwrap();
        assert_eq!(to.read("cloned", "s").unwrap(), b"value");
    }

    /// Issue 13, 1.4: trees rebuilt from deltas count against the transfer's quota: 2,000
    /// deltas of one large tree (none of them reachable from the tip) are refused once the
    /// quota is spent, and nothing they brought is kept.
    #[test]
    fn two_thousand_deltas_on_one_tree_are_refused_past_the_quota() {
        let to = Node::new();
        let rogue = Identity::generate().node_id();
        let (blob, _) = wire(ObjectKind::Blob, b"one");
        let (other, _) = wire(ObjectKind::Blob, b"two");
        let names: Vec<String> = (0..2000).map(|i| format!("secret-{i:05}")).collect();
        let entries: Vec<(&str, &str, [u8; 20])> =
            names.iter().map(|n| ("100644", n.as_str(), blob)).collect();
        let base_bytes = tree_bytes(&entries);
        let (base, base_msg) = wire(ObjectKind::Tree, &base_bytes);
        let (tip, tip_msg) = wire(ObjectKind::Commit, &commit_bytes(&base, &[]));
        let mut messages = vec![
            begin(&tip),
            wire(ObjectKind::Blob, b"one").1,
            wire(ObjectKind::Blob, b"two").1,
            base_msg,
        ];
        let mut first_delta = None;
        for name in &names {
            let mut map = parse_tree(&wire_oid(&base), &base_bytes).unwrap();
            map.insert(
                BString::from(name.as_str()),
                (
                    EntryMode::from(gix_object::tree::EntryKind::Blob),
                    wire_oid(&other),
                ),
            );
            let oid = oid_bytes(
                &gix_object::compute_hash(HASH, ObjectKind::Tree, &encode_tree(&map).unwrap())
                    .unwrap(),
            );
            first_delta.get_or_insert(oid);
            messages.push(Message::Object(WireObject::TreeDelta {
                oid,
                base,
                removed: Vec::new(),
                changed: vec![WireEntry {
                    name: name.as_bytes().to_vec(),
                    mode: 0o100644,
                    oid: other,
                }],
            }));
        }
        messages.push(tip_msg);
        let limits = TransferLimits {
            max_bytes: 16 << 20,
            ..TransferLimits::default()
        };
        let err = receive_with(&to, rogue, messages, Some("v"), limits).unwrap_err();
        let VaultError::Refused(why) = err else {
            panic!("refused, not {err:?}");
        };
        assert!(why.contains("quota"), "{why}");
        assert!(to.vaults().list().unwrap().is_empty());
        // Nothing of the refused transfer stayed: not the trees, not its record.
        let mut tx = to.store.read().unwrap();
        let t = Tx {
            store: &to.store,
            tx: &mut tx,
            vault: VaultId([7; 16]),
        };
        assert!(!t.has(&wire_oid(&base)).unwrap());
        assert!(!t.has(&wire_oid(&first_delta.unwrap())).unwrap());
        assert!(read_incoming(&tx, &VaultId([7; 16])).unwrap().is_none());
    }

    /// Issue 13, 1.4: objects a transfer brought that its tip does not reach are dropped.
    #[test]
    fn objects_the_tip_does_not_reach_are_dropped() {
        let to = Node::new();
        let rogue = Identity::generate().node_id();
        let (blob, _) = wire(ObjectKind::Blob, b"kept");
        let (stray, stray_msg) = wire(ObjectKind::Blob, &vec![7u8; 100_000]);
        let (tree, tree_msg) = wire(ObjectKind::Tree, &tree_bytes(&[("100644", "s", blob)]));
        let (tip, tip_msg) = wire(ObjectKind::Commit, &commit_bytes(&tree, &[]));
        let messages = vec![
            begin(&tip),
            wire(ObjectKind::Blob, b"kept").1,
            stray_msg,
            tree_msg,
            tip_msg,
        ];
        receive(&to, rogue, messages, Some("v")).unwrap();
        assert_eq!(to.read("v", "s").unwrap(), b"kept");
        let mut tx = to.store.read().unwrap();
        let t = Tx {
            store: &to.store,
            tx: &mut tx,
            vault: VaultId([7; 16]),
        };
        assert!(t.has(&wire_oid(&blob)).unwrap());
        assert!(!t.has(&wire_oid(&stray)).unwrap(), "the stray blob is gone");
    }

    /// Issue 13, 1.9: names in received trees are checked as user paths are: `..`, a `/`,
    /// an empty name or a control character is refused, and no vault appears.
    #[test]
    fn bad_names_in_received_trees_are_refused() {
        let to = Node::new();
        let rogue = Identity::generate().node_id();
        let (blob, _) = wire(ObjectKind::Blob, b"value");
        for name in ["..", ".", "a/b", "esc\u{1b}]0;title\u{7}", "new\nline"] {
            let (tree, tree_msg) = wire(ObjectKind::Tree, &tree_bytes(&[("100644", name, blob)]));
            let (tip, tip_msg) = wire(ObjectKind::Commit, &commit_bytes(&tree, &[]));
            let messages = vec![
                begin(&tip),
                wire(ObjectKind::Blob, b"value").1,
                tree_msg,
                tip_msg,
            ];
            let err = receive(&to, rogue, messages, Some("v")).unwrap_err();
            assert!(matches!(err, VaultError::Refused(_)), "{name:?}: {err:?}");
            assert!(to.vaults().list().unwrap().is_empty(), "{name:?}");
        }
    }
}
