//! Vaults: making, naming and reading their history here; sharing them with other
//! nodes, and cloning and pulling theirs.

use serde::{Deserialize, Serialize};

use super::domain;
use crate::nodes::{Share as ShareRecord, VaultPermission};
use crate::peer::SharedVault;
use crate::vault::{CommitInfo, FetchOutcome, VaultRecord};

domain! {
    /// Calls about vaults.
    VaultsRequest in Vaults {
        Create -> VaultRecord,
        List -> Vec<VaultRecord>,
        Rename -> (),
        Delete -> (),
        ExportBundle -> (),
        Log -> Vec<CommitInfo>,
        Version -> CommitInfo,
        Share -> Vec<ShareRecord>,
        Permissions -> Vec<ShareRecord>,
        Scan -> Vec<SharedVault>,
        Clone -> FetchOutcome,
        Pull -> FetchOutcome,
    }
}

/// Create a vault.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Create {
    /// Its name.
    pub name: String,
}

/// List vaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct List;

/// Rename a vault.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rename {
    /// Current name.
    pub from: String,
    /// New name.
    pub to: String,
}

/// Delete a vault.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delete {
    /// Its name.
    pub name: String,
}

/// The vault's whole history as a git bundle; the bytes come back as
/// [`Response::Chunk`](super::Response::Chunk) frames.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportBundle {
    /// Vault name.
    pub vault: String,
}

/// A vault's history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Log {
    /// Vault name.
    pub vault: String,
    /// At most this many commits.
    pub depth: Option<u32>,
    /// Start from this commit.
    pub from: Option<String>,
}

/// Check out a version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Version {
    /// Vault name.
    pub vault: String,
    /// Commit id, prefix, or `last`.
    pub target: String,
}

/// Grant or revoke vault permissions of a node (or of every node of a gestalt); answers
/// the shares that changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Share {
    /// Vault name.
    pub vault: String,
    /// The node, or `provider:identity`.
    pub node: String,
    /// Which.
    pub permissions: Vec<VaultPermission>,
    /// Grant (else revoke).
    pub grant: bool,
}

/// Who may do what with a vault.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Permissions {
    /// Vault name.
    pub vault: String,
}

/// The vaults a node shares with this one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scan {
    /// The node.
    pub node: String,
}

/// Clone a vault from a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Clone {
    /// Its name (or id) on that node.
    pub vault: String,
    /// The node.
    pub node: String,
    /// The local name [default: its name there].
    pub name: Option<String>,
}

/// Pull a vault's changes from its origin or a named node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pull {
    /// The local vault.
    pub vault: String,
    /// The node [default: the vault's origin].
    pub node: Option<String>,
}
