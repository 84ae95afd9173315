//! The node graph and what other nodes may do here.
//!
//! A node this one knows is a row of the `nodes` table: its NodeId, the addresses to dial
//! it at, and the node-wide permissions it holds here (`notify`: may send notifications;
//! `scan`: may list the vaults shared with it). Vault permissions (`clone`, `pull`,
//! `push`) are rows of the `shares` table, one per vault and node. A node that is not in
//! the graph holds no permission at all: knowing a NodeId is the user's decision, taken
//! with `pk nodes add`, never by a peer. Every change is one transaction with its audit
//! event.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit;
use crate::clock::unix_s;
use crate::gestalt::{Gestalts, Vertex};
use crate::identity::NodeId;
use crate::ids::VaultId;
use crate::store::{Read, Store, StoreError, Table, WriteTx};

pub use crate::permissions::{NodePermission, VaultPermission};

/// A node in the graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its NodeId.
    pub node_id: NodeId,
    /// Where to dial it (`host:port`), most recently confirmed first.
    pub addrs: Vec<String>,
    /// When it was added, Unix seconds.
    pub added: u64,
    /// When it last answered or called, Unix seconds.
    pub last_seen: Option<u64>,
    /// Its node-wide permissions here.
    pub permissions: BTreeSet<NodePermission>,
    /// NodeIds it had before it renewed its key, newest first.
    #[serde(default)]
    pub earlier: Vec<NodeId>,
}

/// One vault shared with one node, or with an identity (and so its whole gestalt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The vault.
    pub vault: VaultId,
    /// The node or identity.
    pub node: Vertex,
    /// What it may do.
    pub permissions: BTreeSet<VaultPermission>,
}

fn corrupt(table: &'static str) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: "unreadable record",
    }
}

/// The node graph and the shares, on one store.
pub struct Nodes<'s> {
    store: &'s Store,
}

impl<'s> Nodes<'s> {
    /// The graph on `store`.
    pub fn new(store: &'s Store) -> Self {
        Nodes { store }
    }

    fn node_key(&self, node: &NodeId) -> [u8; 32] {
        self.store.name_hash("node", &[node.as_bytes()])
    }

    fn share_key(&self, vault: &VaultId, vertex: &Vertex) -> Vec<u8> {
        let mut key = vault.as_bytes().to_vec();
        let who = match vertex {
            Vertex::Node(node) => node.as_bytes().to_vec(),
            other => other.to_string().into_bytes(),
        };
        key.extend_from_slice(&self.store.name_hash("share", &[vault.as_bytes(), &who]));
        key
    }

    /// The node's record, if it is in the graph (also under a NodeId it had before it
    /// renewed its key).
    pub fn get(&self, tx: &impl Read, node: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        match tx.get(Table::Nodes, &self.node_key(node))? {
            Some(value) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|_| corrupt("nodes")),
            None => Ok(self.all(tx)?.into_iter().find(|r| r.earlier.contains(node))),
        }
    }

    /// `node` renewed its key from `earlier` (newest first, proven by its certificates):
    /// its record, its vault shares and its gestalt links move to the new NodeId. Nothing
    /// happens when no earlier NodeId is known here or the new one is known already.
    pub fn renamed(&self, node: NodeId, earlier: &[NodeId]) -> Result<(), StoreError> {
        let mut tx = self.store.write()?;
        if tx.contains(Table::Nodes, &self.node_key(&node))? {
            return Ok(());
        }
        let Some(old) = earlier
            .iter()
            .find(|e| {
                tx.contains(Table::Nodes, &self.node_key(e))
                    .unwrap_or(false)
            })
            .copied()
        else {
            return Ok(());
        };
        let Some(mut record) = self.get(&tx, &old)? else {
            return Ok(());
        };
        tx.delete(Table::Nodes, &self.node_key(&old))?;
        record.node_id = node;
        for e in earlier {
            if !record.earlier.contains(e) {
                record.earlier.push(*e);
            }
        }
        self.put(&mut tx, &record)?;
        let (from, to) = (Vertex::Node(old), Vertex::Node(node));
        for mut share in self.shares_for(&tx, &from)? {
            tx.delete(Table::Shares, &self.share_key(&share.vault, &from))?;
            share.node = to.clone();
            let bytes = serde_json::to_vec(&share).expect("a share always serialises");
            tx.put(Table::Shares, &self.share_key(&share.vault, &to), &bytes)?;
        }
        Gestalts::new(self.store).rename_vertex(&mut tx, &from, &to)?;
        audit::append(&mut tx, "node.renewed", json!({ "node": node, "was": old }))?;
        tx.commit()
    }

    /// Writes a node's record in `tx`.
    pub fn put(&self, tx: &mut WriteTx<'_>, record: &NodeRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("a record always serialises");
        tx.put(Table::Nodes, &self.node_key(&record.node_id), &bytes)
    }

    /// Every node in the graph, by NodeId.
    pub fn all(&self, tx: &impl Read) -> Result<Vec<NodeRecord>, StoreError> {
        let mut out: Vec<NodeRecord> = tx
            .range(Table::Nodes, &[], usize::MAX, false)?
            .iter()
            .map(|(_, v)| serde_json::from_slice(v).map_err(|_| corrupt("nodes")))
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|r| r.node_id);
        Ok(out)
    }

    /// Adds a node at `addr`, or puts `addr` first among a known node's addresses. A new
    /// node gets `permissions`; a known node keeps its own. Returns the record and whether
    /// it was new.
    pub fn add(
        &self,
        node: NodeId,
        addr: &str,
        permissions: BTreeSet<NodePermission>,
    ) -> Result<(NodeRecord, bool), StoreError> {
        let mut tx = self.store.write()?;
        let existing = self.get(&tx, &node)?;
        let new = existing.is_none();
        let mut record = existing.unwrap_or(NodeRecord {
            node_id: node,
            addrs: Vec::new(),
            added: unix_s(),
            last_seen: None,
            permissions,
            earlier: Vec::new(),
        });
        record.addrs.retain(|a| a != addr);
        record.addrs.insert(0, addr.to_owned());
        record.addrs.truncate(8);
        self.put(&mut tx, &record)?;
        audit::append(
            &mut tx,
            if new { "node.added" } else { "node.updated" },
            json!({ "node": node, "addr": addr }),
        )?;
        tx.commit()?;
        Ok((record, new))
    }

    /// Removes a node and every vault share it held. Returns whether it was known.
    pub fn remove(&self, node: &NodeId) -> Result<bool, StoreError> {
        let mut tx = self.store.write()?;
        let known = tx.delete(Table::Nodes, &self.node_key(node))?;
        let vertex = Vertex::Node(*node);
        for share in self.shares_for(&tx, &vertex)? {
            tx.delete(Table::Shares, &self.share_key(&share.vault, &vertex))?;
        }
        Gestalts::new(self.store).unlink(&mut tx, &vertex)?;
        if known {
            audit::append(&mut tx, "node.removed", json!({ "node": node }))?;
        }
        tx.commit()?;
        Ok(known)
    }

    /// Grants (`allow`) or revokes node-wide permissions of a known node.
    pub fn set_permissions(
        &self,
        node: &NodeId,
        permissions: &[NodePermission],
        allow: bool,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let mut tx = self.store.write()?;
        let Some(mut record) = self.get(&tx, node)? else {
            return Ok(None);
        };
        for p in permissions {
            if allow {
                record.permissions.insert(*p);
            } else {
                record.permissions.remove(p);
            }
        }
        self.put(&mut tx, &record)?;
        audit::append(
            &mut tx,
            if allow {
                "node.allowed"
            } else {
                "node.disallowed"
            },
            json!({ "node": node, "permissions": permissions }),
        )?;
        tx.commit()?;
        Ok(Some(record))
    }

    /// Notes that a node answered or called from `addr` (when given): a confirmed address
    /// moves first. Only for nodes already in the graph.
    pub fn seen(&self, node: &NodeId, addr: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.store.write()?;
        let Some(mut record) = self.get(&tx, node)? else {
            return Ok(());
        };
        record.last_seen = Some(unix_s());
        if let Some(addr) = addr
            && record.addrs.iter().any(|a| a == addr)
        {
            record.addrs.retain(|a| a != addr);
            record.addrs.insert(0, addr.to_owned());
        }
        self.put(&mut tx, &record)?;
        tx.commit()
    }

    /// The node-wide permissions of `vertex` itself (its node record, or its identity
    /// record); `None` when this node has no record of it.
    fn own_permissions(
        &self,
        tx: &impl Read,
        vertex: &Vertex,
    ) -> Result<Option<BTreeSet<NodePermission>>, StoreError> {
        Ok(match vertex {
            Vertex::Node(node) => self.get(tx, node)?.map(|r| r.permissions),
            identity => Gestalts::new(self.store)
                .identity(tx, identity)?
                .map(|r| r.permissions),
        })
    }

    /// Whether `node` is known here: in the graph, or in a gestalt with a vertex that is.
    pub fn known(&self, tx: &impl Read, node: &NodeId) -> Result<bool, StoreError> {
        if self.renewed_away(tx, node)? {
            return Ok(false);
        }
        for vertex in Gestalts::new(self.store).component(tx, &Vertex::Node(*node))? {
            if self.own_permissions(tx, &vertex)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `node` is a key some node renewed away from: it holds nothing here any
    /// more, whatever links to it a sigchain may still show (a stranger's lot).
    pub fn renewed_away(&self, tx: &impl Read, node: &NodeId) -> Result<bool, StoreError> {
        Ok(self.all(tx)?.iter().any(|r| r.earlier.contains(node)))
    }

    /// What `node` may do here: its own permissions and those of every vertex of its
    /// gestalt (nothing for a key renewed away from).
    pub fn permissions_of(
        &self,
        tx: &impl Read,
        vertex: &Vertex,
    ) -> Result<BTreeSet<NodePermission>, StoreError> {
        if let Vertex::Node(node) = vertex
            && self.renewed_away(tx, node)?
        {
            return Ok(BTreeSet::new());
        }
        let mut all = BTreeSet::new();
        for v in Gestalts::new(self.store).component(tx, vertex)? {
            all.extend(self.own_permissions(tx, &v)?.unwrap_or_default());
        }
        Ok(all)
    }

    /// Whether `node` holds `permission`, itself or through its gestalt.
    pub fn node_may(
        &self,
        tx: &impl Read,
        node: &NodeId,
        permission: NodePermission,
    ) -> Result<bool, StoreError> {
        Ok(self
            .permissions_of(tx, &Vertex::Node(*node))?
            .contains(&permission))
    }

    /// The share of `vault` with `vertex`, if any.
    pub fn share(
        &self,
        tx: &impl Read,
        vault: &VaultId,
        vertex: &Vertex,
    ) -> Result<Option<Share>, StoreError> {
        match tx.get(Table::Shares, &self.share_key(vault, vertex))? {
            Some(value) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|_| corrupt("shares")),
            None => Ok(None),
        }
    }

    /// Whether `node` may do `permission` with `vault`: shared with it, or with any
    /// vertex of its gestalt.
    pub fn vault_may(
        &self,
        tx: &impl Read,
        vault: &VaultId,
        node: &NodeId,
        permission: VaultPermission,
    ) -> Result<bool, StoreError> {
        if self.renewed_away(tx, node)? {
            return Ok(false);
        }
        for vertex in Gestalts::new(self.store).component(tx, &Vertex::Node(*node))? {
            if self
                .share(tx, vault, &vertex)?
                .is_some_and(|s| s.permissions.contains(&permission))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every share of `vault`.
    pub fn shares_of(&self, tx: &impl Read, vault: &VaultId) -> Result<Vec<Share>, StoreError> {
        let mut out = Vec::new();
        for (key, value) in tx.range(Table::Shares, vault.as_bytes(), usize::MAX, false)? {
            if !key.starts_with(vault.as_bytes()) {
                break;
            }
            out.push(serde_json::from_slice(&value).map_err(|_| corrupt("shares"))?);
        }
        Ok(out)
    }

    /// Every vault shared with `vertex` itself.
    pub fn shares_for(&self, tx: &impl Read, vertex: &Vertex) -> Result<Vec<Share>, StoreError> {
        let mut out = Vec::new();
        for (_, value) in tx.range(Table::Shares, &[], usize::MAX, false)? {
            let share: Share = serde_json::from_slice(&value).map_err(|_| corrupt("shares"))?;
            if share.node == *vertex {
                out.push(share);
            }
        }
        Ok(out)
    }

    /// Every vault shared with `node` or with its gestalt, permissions merged.
    pub fn shares_reaching(&self, tx: &impl Read, node: &NodeId) -> Result<Vec<Share>, StoreError> {
        if self.renewed_away(tx, node)? {
            return Ok(Vec::new());
        }
        let mut merged: std::collections::BTreeMap<VaultId, Share> = Default::default();
        for vertex in Gestalts::new(self.store).component(tx, &Vertex::Node(*node))? {
            for share in self.shares_for(tx, &vertex)? {
                merged
                    .entry(share.vault)
                    .and_modify(|s| s.permissions.extend(share.permissions.iter().copied()))
                    .or_insert(share);
            }
        }
        Ok(merged.into_values().collect())
    }

    /// Grants (`grant`) or revokes vault permissions of `node` on `vault` (named `name`
    /// in the audit log). Granting also lets the node scan. Returns the share as it is now
    /// (`None` once nothing is left).
    pub fn set_share(
        &self,
        vault: &VaultId,
        name: &str,
        node: &Vertex,
        permissions: &[VaultPermission],
        grant: bool,
    ) -> Result<Option<Share>, StoreError> {
        let mut tx = self.store.write()?;
        let mut share = self.share(&tx, vault, node)?.unwrap_or(Share {
            vault: *vault,
            node: node.clone(),
            permissions: BTreeSet::new(),
        });
        for p in permissions {
            if grant {
                share.permissions.insert(*p);
            } else {
                share.permissions.remove(p);
            }
        }
        let key = self.share_key(vault, node);
        let result = if share.permissions.is_empty() {
            tx.delete(Table::Shares, &key)?;
            None
        } else {
            let bytes = serde_json::to_vec(&share).expect("a share always serialises");
            tx.put(Table::Shares, &key, &bytes)?;
            Some(share)
        };
        if grant {
            match node {
                Vertex::Node(id) => {
                    if let Some(mut record) = self.get(&tx, id)? {
                        record.permissions.insert(NodePermission::Scan);
                        self.put(&mut tx, &record)?;
                    }
                }
                identity => {
                    let gestalts = Gestalts::new(self.store);
                    let mut record = gestalts.identity_or_new(&tx, identity)?;
                    record.permissions.insert(NodePermission::Scan);
                    gestalts.put_identity(&mut tx, &record)?;
                }
            }
        }
        audit::append(
            &mut tx,
            if grant {
                "vault.shared"
            } else {
                "vault.unshared"
            },
            json!({ "vault": name, "id": vault, "node": node, "permissions": permissions }),
        )?;
        tx.commit()?;
        Ok(result)
    }

    /// Drops every share of a vault (it was deleted), in `tx`.
    pub fn forget_vault(&self, tx: &mut WriteTx<'_>, vault: &VaultId) -> Result<(), StoreError> {
        for share in self.shares_of(tx, vault)? {
            tx.delete(Table::Shares, &self.share_key(vault, &share.node))?;
        }
        Ok(())
    }
}
