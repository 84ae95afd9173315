//! The receiving side of a clone or pull (`node::vault::Receiver`): what a serving node
//! sends, decoded and checked as the agent's fetch does it (`agent/peers.rs`, `fetch`),
//! into a real store.
//!
//! Input: one or more transfers, each `[flags, len: u32 LE, stream...]` (the last may be
//! cut short). `stream` is what the serving node wrote on the QUIC stream: `PeerResponse`
//! frames, `Begin` first. Bit 0 of `flags` makes the transfer a clone (into the local
//! name `fuzz<i>`) rather than a pull; bit 1 has the harness fix the objects' ids first
//! (below); bit 2 makes a local change to the vault the last transfer brought, before
//! this one (so a pull merges); bits 3-7 say how the stream is cut into reads
//! (`pk_fuzz::pieces`). Transfers run in order on the same store, so a pull can
//! follow a clone and a transfer can resume an interrupted one.
//!
//! Object ids are SHA-1 hashes of the content, which the receiver checks first: a mutated
//! object almost never gets past that. With bit 1 set, the harness decodes the frames and
//! gives every whole object the id of its (mutated) content, rewrites the references to
//! it in the objects after it (raw ids in trees and deltas, hex ids in commits) and the
//! tip in `Begin`, and encodes the frames again, so mutations reach the tree and commit
//! parsers, the link checks and the merge. (A tree sent as a delta keeps its id.)
//!
//! The store (redb, sealed rows) is made once per process in a temporary directory (on
//! tmpfs when there is one: commits are durable, and fsync there costs nothing), and
//! emptied before each input, so an input always runs against an empty node.
//!
//! Checks: no panic; after a transfer that succeeded, the vault it made or moved reads
//! back (its log, and every entry of its root).

#![no_main]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use node::NodePath;
use node::peer::PeerResponse;
use node::rpc::encode_frame;
use node::store::{Read as _, Store, Table};
use node::vault::{EntryType, SecretPath, Vaults, WireObject};

/// The tables a transfer writes.
const TOUCHED: [Table; 5] = [
    Table::Vaults,
    Table::VaultNames,
    Table::Objects,
    Table::Audit,
    Table::Sync,
];

fn store() -> &'static Mutex<Store> {
    static STORE: OnceLock<Mutex<Store>> = OnceLock::new();
    STORE.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("a temporary directory");
        let store = Store::open(&NodePath::new(dir.path()), &hsm::DataKey::generate())
            .expect("a new store opens");
        // The store keeps its file open; the directory goes now, since statics are never
        // dropped and libFuzzer ends the process with `exit`.
        let _ = dir.close();
        Mutex::new(store)
    })
}

/// Deletes every row a transfer may have written.
fn empty(store: &Store) {
    let mut tx = store.write().expect("a write transaction");
    for table in TOUCHED {
        let keys: Vec<Vec<u8>> = tx
            .range(table, &[], usize::MAX, false)
            .expect("rows we wrote read back")
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            tx.delete(table, &key).expect("a row deletes");
        }
    }
    tx.commit().expect("the emptying commits");
}

/// Gives each whole object in `stream` the id of its content; see the module docs.
fn fix_ids(stream: &[u8]) -> Vec<u8> {
    let mut frames = Vec::new();
    let mut rest = stream;
    while let Some((len, tail)) = rest.split_at_checked(4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some((body, tail)) = tail.split_at_checked(len) else {
            break;
        };
        let Ok(frame) = postcard::from_bytes::<PeerResponse>(body) else {
            break;
        };
        frames.push(frame);
        rest = tail;
    }
    let mut ids: HashMap<[u8; 20], [u8; 20]> = HashMap::new();
    let map = |ids: &HashMap<[u8; 20], [u8; 20]>, oid: &mut [u8; 20]| {
        if let Some(new) = ids.get(oid) {
            *oid = *new;
        }
    };
    for frame in &mut frames {
        let PeerResponse::Object(object) = frame else {
            continue;
        };
        match object {
            WireObject::Full { oid, kind, data } => {
                let kind = match kind {
                    1 => gix_object::Kind::Blob,
                    2 => gix_object::Kind::Tree,
                    3 => gix_object::Kind::Commit,
                    4 => gix_object::Kind::Tag,
                    _ => continue,
                };
                for (old, new) in &ids {
                    replace(&mut data.0, old, new);
                    replace(&mut data.0, hex(old).as_bytes(), hex(new).as_bytes());
                }
                let Ok(actual) = gix_object::compute_hash(gix_hash::Kind::Sha1, kind, &data.0)
                else {
                    continue;
                };
                let mut new = [0u8; 20];
                new.copy_from_slice(actual.as_bytes());
                if new != *oid {
                    ids.insert(*oid, new);
                    *oid = new;
                }
            }
            WireObject::TreeDelta {
                base,
                removed,
                changed,
                ..
            } => {
                map(&ids, base);
                for entry in removed.iter_mut().chain(changed.iter_mut()) {
                    map(&ids, &mut entry.oid);
                }
            }
            WireObject::Large { .. } => {}
        }
    }
    let mut out = Vec::with_capacity(stream.len());
    for frame in &mut frames {
        if let PeerResponse::Begin(begin) = frame {
            for (old, new) in &ids {
                if begin.tip == hex(old) {
                    begin.tip = hex(new);
                }
            }
        }
        encode_frame(frame, &mut out).expect("a decoded frame encodes");
    }
    out.extend_from_slice(rest);
    out
}

/// Replaces every occurrence of `from` in `data` with `to` (of the same length).
fn replace(data: &mut [u8], from: &[u8], to: &[u8]) {
    let mut at = 0;
    while let Some(found) = data[at..].windows(from.len()).position(|w| w == from) {
        data[at + found..at + found + to.len()].copy_from_slice(to);
        at += found + to.len();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A change made on this node since the last transfer, so that a pull has to merge:
/// one of the seed vault's secrets rewritten, and a new one.
fn local_change(vaults: &Vaults<'_>, vault: &str) {
    for (path, value) in [
        ("db/password", &b"changed here"[..]),
        ("local", b"only here"),
    ] {
        let path = SecretPath::parse(path, false).expect("a valid path");
        let _ = vaults.write(vault, &path, value, "secret.written");
    }
}

/// Reads back a vault a transfer made or moved: everything reachable must be there.
fn read_back(vaults: &Vaults<'_>, name: &str) {
    let log = vaults.log(name, Some(50), None);
    assert!(log.is_ok(), "the log of a received vault fails: {log:?}");
    let root = SecretPath::parse("", true).expect("the root");
    let entries = vaults.list_dir(name, &root);
    let Ok(entries) = entries else {
        panic!("the root of a received vault does not list: {entries:?}");
    };
    for entry in entries {
        let Ok(path) = SecretPath::parse(&entry.name, false) else {
            continue;
        };
        let stat = vaults.stat(name, &path);
        assert!(stat.is_ok(), "an entry of a received vault: {stat:?}");
        if entry.kind == EntryType::File {
            let read = vaults.read(name, &path).map(|_| ());
            assert!(read.is_ok(), "a secret of a received vault: {read:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let store = store().lock().unwrap_or_else(|p| p.into_inner());
    empty(&store);
    let vaults = Vaults::new(&store, pk_fuzz::fixed_node(0));
    let mut last: Option<String> = None;
    let mut rest = data;
    let mut i = 0;
    while let [flags, tail @ ..] = rest {
        let (stream, tail) = pk_fuzz::take_part(tail);
        rest = tail;
        if flags & 4 == 4
            && let Some(vault) = &last
        {
            local_change(&vaults, vault);
        }
        let name = format!("fuzz{i}");
        let clone = (flags & 1 == 1).then_some(name.as_str());
        let fixed;
        let stream = if flags & 2 == 2 {
            fixed = fix_ids(stream);
            &fixed[..]
        } else {
            stream
        };
        let reads = pk_fuzz::pieces(flags >> 3, stream);
        if let Ok(outcome) = pk_fuzz::fetch(&vaults, pk_fuzz::fixed_node(1), &reads, clone) {
            read_back(&vaults, &outcome.vault);
            last = Some(outcome.vault);
        }
        i += 1;
    }
});
