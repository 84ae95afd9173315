//! Scheduled pulls of a vault from another node (backups).

use serde::{Deserialize, Serialize};

use super::domain;

domain! {
    /// Calls about scheduled pulls.
    BackupsRequest in Backups {
        Add -> Backup,
        List -> Vec<Backup>,
        Remove -> (),
    }
}

/// Schedule pulls of a vault from a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Add {
    /// Its name (or id) on that node.
    pub vault: String,
    /// The node.
    pub node: String,
    /// Seconds between pulls.
    pub every_s: u64,
    /// The local name [default: its name there].
    pub name: Option<String>,
}

/// The scheduled pulls.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct List;

/// Stop scheduled pulls into a local vault.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Remove {
    /// The local vault.
    pub name: String,
}

/// A scheduled pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The vault's name (or id) on the node.
    pub vault: String,
    /// The node pulled from.
    pub node: String,
    /// The local name.
    pub name: String,
    /// Seconds between pulls.
    pub every_s: u64,
    /// Unix milliseconds of the next pull.
    pub next_ms: u64,
    /// The last result.
    pub last: Option<crate::vault::PullOutcome>,
}
