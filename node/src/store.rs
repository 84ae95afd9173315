//! Encrypted storage on redb.
//!
//! One redb file, `<node-path>/db.redb`, with byte-keyed tables. Every value is sealed
//! (`crypto::SealKey`) under a key derived from the DEK for its table, with the
//! table name and the row key as associated data. Row keys that would carry names (vault
//! names, object ids) are keyed hashes made by the caller with [`Store::name_hash`]; the
//! file holds no plaintext name, path or value.
//!
//! One user-visible mutation is one [`WriteTx`], committed with redb's immediate
//! durability: when `commit` returns, the change is on disk.

use std::path::PathBuf;

use hsm_core::DataKey;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use zeroize::Zeroizing;

use crate::NodePath;
use crate::crypto::{NameKey, SealKey, derive};

/// The database file in a node directory.
pub const DB_FILE: &str = "db.redb";

/// The tables of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// Store-wide facts (format version, key check).
    Meta,
    /// The node's identity key.
    Identity,
    /// Vault records by vault id.
    Vaults,
    /// Vault ids by keyed hash of the vault name.
    VaultNames,
    /// Git objects by keyed hash of (vault id, object id).
    Objects,
    /// The audit log by sequence number.
    Audit,
    /// The node graph: other nodes by keyed hash of their NodeId.
    Nodes,
    /// Vault permissions granted to other nodes, by vault id and keyed hash of the NodeId.
    Shares,
    /// Notifications: the inbox and the outbox, by direction and sequence number.
    Notifications,
    /// Transfers in progress and scheduled pulls, by kind and vault id.
    Sync,
    /// This node's sigchain: signed claims by sequence number.
    Sigchain,
    /// The gestalt graph: identities, verified links, the discovery queue, provider tokens.
    Gestalts,
}

impl Table {
    const ALL: [Table; 12] = [
        Table::Meta,
        Table::Identity,
        Table::Vaults,
        Table::VaultNames,
        Table::Objects,
        Table::Audit,
        Table::Nodes,
        Table::Shares,
        Table::Notifications,
        Table::Sync,
        Table::Sigchain,
        Table::Gestalts,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Identity => "identity",
            Table::Vaults => "vaults",
            Table::VaultNames => "vault_names",
            Table::Objects => "objects",
            Table::Audit => "audit",
            Table::Nodes => "nodes",
            Table::Shares => "shares",
            Table::Notifications => "notifications",
            Table::Sync => "sync",
            Table::Sigchain => "sigchain",
            Table::Gestalts => "gestalts",
        }
    }

    fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }

    fn aad(self, key: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.name().len() + 1 + key.len());
        aad.extend_from_slice(self.name().as_bytes());
        aad.push(0);
        aad.extend_from_slice(key);
        aad
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (an agent) has the database open.
    #[error("the node's database {0} is in use by another process (is an agent running?)")]
    InUse(PathBuf),
    /// The DEK does not open this database.
    #[error("the data key does not open the database {0}")]
    WrongKey(PathBuf),
    /// A stored value failed to authenticate or decode.
    #[error("damaged value in table {table}: {reason}")]
    Corrupt {
        /// Which table.
        table: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// redb failed.
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

const CHECK_KEY: &[u8] = b"key-check";
/// redb's page cache for the node's database.
const CACHE_BYTES: usize = 16 << 20;
const CHECK_VALUE: &[u8] = b"pk store v1";

/// The node's encrypted database.
pub struct Store {
    db: Database,
    keys: Vec<SealKey>,
    names: NameKey,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the node's database with the DEK.
    pub fn open(node: &NodePath, dek: &DataKey) -> Result<Store, StoreError> {
        let path = node.dir().join(DB_FILE);
        // redb caches up to 1 GiB by default; the agent is meant to idle in a few MiB, and
        // its pages are ciphertext that the OS page cache keeps anyway.
        let database = match Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse(path)),
            Err(e) => return Err(db(e)),
        };
        let store = Store {
            db: database,
            keys: Table::ALL
                .iter()
                .map(|t| SealKey::new(&derive(dek, &format!("table:{}", t.name()))))
                .collect(),
            names: NameKey::new(&derive(dek, "names")),
        };
        let mut tx = store.write()?;
        for table in Table::ALL {
            tx.tx.open_table(table.definition()).map_err(db)?;
        }
        match tx.get(Table::Meta, CHECK_KEY) {
            Ok(Some(v)) if v.as_slice() == CHECK_VALUE => {}
            Ok(None) => tx.put(Table::Meta, CHECK_KEY, CHECK_VALUE)?,
            _ => return Err(StoreError::WrongKey(path)),
        }
        tx.commit()?;
        Ok(store)
    }

    /// A keyed hash of `parts` in `domain` (vault names, object ids), for use as a row key.
    pub fn name_hash(&self, domain: &str, parts: &[&[u8]]) -> [u8; 32] {
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(domain.as_bytes());
        all.extend_from_slice(parts);
        self.names.hash(&all)
    }

    /// Begins a read transaction: a consistent snapshot.
    pub fn read(&self) -> Result<ReadTx<'_>, StoreError> {
        Ok(ReadTx {
            tx: self.db.begin_read().map_err(db)?,
            store: self,
        })
    }

    /// Begins the (single) write transaction.
    pub fn write(&self) -> Result<WriteTx<'_>, StoreError> {
        Ok(WriteTx {
            tx: self.db.begin_write().map_err(db)?,
            store: self,
        })
    }

    fn key(&self, table: Table) -> &SealKey {
        &self.keys[table as usize]
    }

    fn open_value(
        &self,
        table: Table,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.key(table)
            .open(&table.aad(key), sealed)
            .ok_or(StoreError::Corrupt {
                table: table.name(),
                reason: "value does not authenticate",
            })
    }
}

fn get_from(
    store: &Store,
    table: Table,
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
    match t.get(key).map_err(db)? {
        Some(v) => Ok(Some(store.open_value(table, key, v.value())?)),
        None => Ok(None),
    }
}

/// Decrypted rows: key and value.
pub type Rows = Vec<(Vec<u8>, Zeroizing<Vec<u8>>)>;
type Row<'a> = (
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

fn range_from(
    store: &Store,
    table: Table,
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    from: &[u8],
    limit: usize,
    reverse: bool,
) -> Result<Rows, StoreError> {
    let range = if reverse {
        t.range::<&[u8]>(..=from).map_err(db)?
    } else {
        t.range::<&[u8]>(from..).map_err(db)?
    };
    let open = |entry: Result<Row<'_>, redb::StorageError>| {
        let (k, v) = entry.map_err(db)?;
        let key = k.value().to_vec();
        let value = store.open_value(table, &key, v.value())?;
        Ok((key, value))
    };
    if reverse {
        range.rev().take(limit).map(open).collect()
    } else {
        range.take(limit).map(open).collect()
    }
}

/// Reading, whether in a read or a write transaction.
pub trait Read {
    /// The value at `key`, decrypted.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;

    /// Whether a row exists at `key` (without decrypting it).
    fn contains(&self, table: Table, key: &[u8]) -> Result<bool, StoreError>;

    /// Up to `limit` rows from `from` onwards (or backwards from `from` when `reverse`).
    fn range(
        &self,
        table: Table,
        from: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Rows, StoreError>;
}

/// Both transaction kinds read the same way; only the table type differs.
macro_rules! impl_read {
    ($tx:ident) => {
        impl Read for $tx<'_> {
            fn get(
                &self,
                table: Table,
                key: &[u8],
            ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
                let t = self.tx.open_table(table.definition()).map_err(db)?;
                get_from(self.store, table, &t, key)
            }

            fn contains(&self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
                let t = self.tx.open_table(table.definition()).map_err(db)?;
                Ok(t.get(key).map_err(db)?.is_some())
            }

            fn range(
                &self,
                table: Table,
                from: &[u8],
                limit: usize,
                reverse: bool,
            ) -> Result<Rows, StoreError> {
                let t = self.tx.open_table(table.definition()).map_err(db)?;
                range_from(self.store, table, &t, from, limit, reverse)
            }
        }
    };
}

impl_read!(ReadTx);
impl_read!(WriteTx);

/// A read-only snapshot.
pub struct ReadTx<'s> {
    tx: redb::ReadTransaction,
    store: &'s Store,
}

/// The write transaction: all of one mutation, or none of it.
pub struct WriteTx<'s> {
    tx: redb::WriteTransaction,
    store: &'s Store,
}

impl WriteTx<'_> {
    /// Seals and stores `value` at `key`.
    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let sealed = self.store.key(table).seal(&table.aad(key), value);
        let mut t = self.tx.open_table(table.definition()).map_err(db)?;
        t.insert(key, sealed.as_slice()).map_err(db)?;
        Ok(())
    }

    /// Removes the row at `key`; whether it existed.
    pub fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let mut t = self.tx.open_table(table.definition()).map_err(db)?;
        Ok(t.remove(key).map_err(db)?.is_some())
    }

    /// Commits durably: when this returns `Ok`, the change survives a crash.
    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_nothing_is_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodePath::new(dir.path());
        let dek = DataKey::generate();
        {
            let store = Store::open(&node, &dek).unwrap();
            let key = store.name_hash("vault-name", &[b"my-vault-name"]);
            let mut tx = store.write().unwrap();
            tx.put(Table::VaultNames, &key, b"planted-secret-value")
                .unwrap();
            tx.commit().unwrap();
            let tx = store.read().unwrap();
            assert_eq!(
                tx.get(Table::VaultNames, &key).unwrap().unwrap().as_slice(),
                b"planted-secret-value"
            );
        }
        let raw = std::fs::read(dir.path().join(DB_FILE)).unwrap();
        for needle in [&b"planted-secret-value"[..], b"my-vault-name"] {
            assert!(!raw.windows(needle.len()).any(|w| w == needle));
        }
        // Another key does not open it.
        assert!(matches!(
            Store::open(&node, &DataKey::generate()),
            Err(StoreError::WrongKey(_))
        ));
        assert!(Store::open(&node, &dek).is_ok());
    }
}
