//! The gestalt graph: the nodes and identities that stand for one person or team.
//!
//! Vertices are nodes (NodeIds) and identities on a provider (`github.com:alice`). Links
//! are verified claims: a node link signed by both nodes, or an identity link signed by
//! the node and published by the identity on its provider. A gestalt is a connected
//! component. What one vertex of a gestalt may do (`notify`, `scan`, vault shares), every
//! vertex of it may do; see [`crate::nodes::Nodes`], which asks [`Gestalts::component`].
//!
//! Rows of the `gestalts` table, keyed by a kind byte and a keyed hash:
//! `i` identities the user added or trusted, with their permissions; `l` links, with the
//! claim that proves each; `q` the discovery queue; `t` provider access tokens (sealed
//! like every value).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::clock::unix_s;
use crate::identity::NodeId;
use crate::permissions::NodePermission;
use crate::sigchain::ClaimToken;
use crate::store::{Read, Store, StoreError, Table, WriteTx};

/// A node or an identity.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vertex {
    /// A node.
    Node(NodeId),
    /// An identity on a provider.
    Identity {
        /// The provider, e.g. `github.com`.
        provider: String,
        /// The identity there, e.g. a GitHub login.
        id: String,
    },
}

/// Why a gestalt id was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a gestalt id: give a NodeId, or provider:identity such as github.com:alice")]
pub struct BadVertex(pub String);

impl fmt::Display for Vertex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Vertex::Node(node) => write!(f, "{node}"),
            Vertex::Identity { provider, id } => write!(f, "{provider}:{id}"),
        }
    }
}

impl fmt::Debug for Vertex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vertex({self})")
    }
}

impl FromStr for Vertex {
    type Err = BadVertex;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(node) = s.parse::<NodeId>() {
            return Ok(Vertex::Node(node));
        }
        let bad = || BadVertex(s.chars().take(80).collect());
        let (provider, id) = s.split_once(':').ok_or_else(bad)?;
        let provider_ok = !provider.is_empty()
            && provider.len() <= 64
            && provider
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
        let id_ok = !id.is_empty()
            && id.len() <= 100
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !(provider_ok && id_ok) {
            return Err(bad());
        }
        Ok(Vertex::Identity {
            provider: provider.to_owned(),
            id: id.to_owned(),
        })
    }
}

impl Serialize for Vertex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Vertex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An identity the user added (trusted, or granted permissions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// `provider:identity`.
    pub identity: Vertex,
    /// What it (and its gestalt) may do here.
    pub permissions: BTreeSet<NodePermission>,
    /// Unix seconds.
    pub added: u64,
}

/// A verified link between two vertices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// One end (the claim's issuer node).
    pub a: Vertex,
    /// The other end.
    pub b: Vertex,
    /// The claim that proves it.
    pub claim: ClaimToken,
    /// Where the identity published it, for identity links.
    #[serde(default)]
    pub url: Option<String>,
}

/// A vertex waiting to be discovered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The vertex.
    pub vertex: Vertex,
    /// Unix seconds when it was queued.
    pub queued: u64,
    /// Attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

fn corrupt() -> StoreError {
    StoreError::Corrupt {
        table: "gestalts",
        reason: "unreadable record",
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| corrupt())
}

/// The gestalt graph on one store.
pub struct Gestalts<'s> {
    store: &'s Store,
}

impl<'s> Gestalts<'s> {
    /// The graph on `store`.
    pub fn new(store: &'s Store) -> Self {
        Gestalts { store }
    }

    fn key(&self, kind: u8, parts: &[&[u8]]) -> Vec<u8> {
        let mut key = vec![kind];
        key.extend_from_slice(
            &self
                .store
                .name_hash(&format!("gestalt-{}", kind as char), parts),
        );
        key
    }

    fn link_key(&self, a: &Vertex, b: &Vertex) -> Vec<u8> {
        let (x, y) = if a.to_string() <= b.to_string() {
            (a, b)
        } else {
            (b, a)
        };
        self.key(b'l', &[x.to_string().as_bytes(), y.to_string().as_bytes()])
    }

    fn rows<T: serde::de::DeserializeOwned>(
        &self,
        tx: &impl Read,
        kind: u8,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for (key, value) in tx.range(Table::Gestalts, &[kind], usize::MAX, false)? {
            if key.first() != Some(&kind) {
                break;
            }
            out.push(decode(&value)?);
        }
        Ok(out)
    }

    /// An identity's record.
    pub fn identity(
        &self,
        tx: &impl Read,
        identity: &Vertex,
    ) -> Result<Option<IdentityRecord>, StoreError> {
        tx.get(
            Table::Gestalts,
            &self.key(b'i', &[identity.to_string().as_bytes()]),
        )?
        .map(|v| decode(&v))
        .transpose()
    }

    /// Every identity record.
    pub fn identities(&self, tx: &impl Read) -> Result<Vec<IdentityRecord>, StoreError> {
        self.rows(tx, b'i')
    }

    /// Writes an identity record.
    pub fn put_identity(
        &self,
        tx: &mut WriteTx<'_>,
        record: &IdentityRecord,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("a record always serialises");
        tx.put(
            Table::Gestalts,
            &self.key(b'i', &[record.identity.to_string().as_bytes()]),
            &bytes,
        )
    }

    /// The identity's record, or a new one without permissions.
    pub fn identity_or_new(
        &self,
        tx: &impl Read,
        identity: &Vertex,
    ) -> Result<IdentityRecord, StoreError> {
        Ok(self.identity(tx, identity)?.unwrap_or(IdentityRecord {
            identity: identity.clone(),
            permissions: BTreeSet::new(),
            added: unix_s(),
        }))
    }

    /// Every link.
    pub fn links(&self, tx: &impl Read) -> Result<Vec<Link>, StoreError> {
        self.rows(tx, b'l')
    }

    /// Records a verified link (replacing an older proof of the same link).
    pub fn add_link(&self, tx: &mut WriteTx<'_>, link: &Link) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(link).expect("a link always serialises");
        tx.put(Table::Gestalts, &self.link_key(&link.a, &link.b), &bytes)
    }

    /// Whether a link between `a` and `b` is recorded.
    pub fn has_link(&self, tx: &impl Read, a: &Vertex, b: &Vertex) -> Result<bool, StoreError> {
        tx.contains(Table::Gestalts, &self.link_key(a, b))
    }

    /// Removes every link touching `vertex`.
    pub fn unlink(&self, tx: &mut WriteTx<'_>, vertex: &Vertex) -> Result<usize, StoreError> {
        let mut removed = 0;
        for link in self.links(tx)? {
            if link.a == *vertex || link.b == *vertex {
                tx.delete(Table::Gestalts, &self.link_key(&link.a, &link.b))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Moves every link of `from` to `to` (a node that renewed its key).
    pub fn rename_vertex(
        &self,
        tx: &mut WriteTx<'_>,
        from: &Vertex,
        to: &Vertex,
    ) -> Result<(), StoreError> {
        let moved: Vec<Link> = self
            .links(tx)?
            .into_iter()
            .filter(|l| l.a == *from || l.b == *from)
            .collect();
        self.unlink(tx, from)?;
        for mut link in moved {
            if link.a == *from {
                link.a = to.clone();
            }
            if link.b == *from {
                link.b = to.clone();
            }
            self.add_link(tx, &link)?;
        }
        Ok(())
    }

    /// The gestalt of `vertex`: every vertex linked to it, directly or not (itself
    /// included), sorted.
    pub fn component(&self, tx: &impl Read, vertex: &Vertex) -> Result<Vec<Vertex>, StoreError> {
        let mut adjacent: HashMap<Vertex, Vec<Vertex>> = HashMap::new();
        for link in self.links(tx)? {
            adjacent
                .entry(link.a.clone())
                .or_default()
                .push(link.b.clone());
            adjacent.entry(link.b).or_default().push(link.a);
        }
        let mut seen: BTreeSet<Vertex> = BTreeSet::from([vertex.clone()]);
        let mut queue = VecDeque::from([vertex.clone()]);
        while let Some(v) = queue.pop_front() {
            for next in adjacent.get(&v).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    queue.push_back(next.clone());
                }
            }
        }
        Ok(seen.into_iter().collect())
    }

    /// Puts `vertex` on the discovery queue (once).
    pub fn enqueue(&self, tx: &mut WriteTx<'_>, vertex: &Vertex) -> Result<(), StoreError> {
        let key = self.key(b'q', &[vertex.to_string().as_bytes()]);
        if tx.contains(Table::Gestalts, &key)? {
            return Ok(());
        }
        let queued = Queued {
            vertex: vertex.clone(),
            queued: unix_s(),
            attempts: 0,
            last_error: None,
        };
        tx.put(
            Table::Gestalts,
            &key,
            &serde_json::to_vec(&queued).expect("serialises"),
        )
    }

    /// The discovery queue.
    pub fn queue(&self, tx: &impl Read) -> Result<Vec<Queued>, StoreError> {
        let mut out: Vec<Queued> = self.rows(tx, b'q')?;
        out.sort_by_key(|q| q.queued);
        Ok(out)
    }

    /// Takes `vertex` off the queue, or (with an error) records the failed attempt.
    pub fn dequeue(
        &self,
        tx: &mut WriteTx<'_>,
        vertex: &Vertex,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let key = self.key(b'q', &[vertex.to_string().as_bytes()]);
        match error {
            None => {
                tx.delete(Table::Gestalts, &key)?;
            }
            Some(error) => {
                if let Some(value) = tx.get(Table::Gestalts, &key)? {
                    let mut queued: Queued = decode(&value)?;
                    queued.attempts += 1;
                    queued.last_error = Some(error);
                    tx.put(
                        Table::Gestalts,
                        &key,
                        &serde_json::to_vec(&queued).expect("serialises"),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The stored access token for `provider`, if authenticated.
    pub fn provider_token(
        &self,
        tx: &impl Read,
        provider: &str,
    ) -> Result<Option<ProviderToken>, StoreError> {
        tx.get(Table::Gestalts, &self.key(b't', &[provider.as_bytes()]))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Stores an access token for `provider`.
    pub fn put_provider_token(
        &self,
        tx: &mut WriteTx<'_>,
        token: &ProviderToken,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(token).expect("serialises");
        tx.put(
            Table::Gestalts,
            &self.key(b't', &[token.provider.as_bytes()]),
            &bytes,
        )
    }

    /// Every provider this node is authenticated with.
    pub fn provider_tokens(&self, tx: &impl Read) -> Result<Vec<ProviderToken>, StoreError> {
        self.rows(tx, b't')
    }
}

/// An access token for an identity provider (a secret: zeroized, redacted in `Debug`).
#[derive(Clone, Serialize, Deserialize, zeroize::ZeroizeOnDrop)]
pub struct ProviderToken {
    /// The provider.
    #[zeroize(skip)]
    pub provider: String,
    /// The identity it belongs to.
    #[zeroize(skip)]
    pub identity: String,
    /// The bearer token.
    pub access_token: String,
}

impl fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderToken")
            .field("provider", &self.provider)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}
