//! [`VaultPermission`] and [`NodePermission`]: what another node may do here.
//!
//! A leaf module: the node graph ([`crate::nodes`], which re-exports both), the gestalt
//! graph, notifications and the peer protocol all name permissions, and none of them
//! needs the others for it.

use serde::{Deserialize, Serialize};

/// What a node may do with one vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultPermission {
    /// Make a first copy of the vault.
    Clone,
    /// Fetch new versions of a copy it has.
    Pull,
    /// Send its changes to this node (reserved: no command uses it yet).
    Push,
}

impl VaultPermission {
    /// The permission's name, as the CLI writes it.
    pub fn name(self) -> &'static str {
        match self {
            VaultPermission::Clone => "clone",
            VaultPermission::Pull => "pull",
            VaultPermission::Push => "push",
        }
    }
}

/// What a node may do with this node as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodePermission {
    /// Send notifications (vault shares, messages).
    Notify,
    /// List the vaults shared with it.
    Scan,
}
