//! Secrets inside a vault.

use serde::{Deserialize, Serialize};

use super::domain;
use crate::vault::{CommitInfo, Entry};

domain! {
    /// Calls about secrets.
    SecretsRequest in Secrets {
        Write -> CommitInfo,
        Cat -> (),
        Ls -> Vec<Entry>,
        Mkdir -> CommitInfo,
        Rm -> CommitInfo,
        Rename -> CommitInfo,
        Stat -> crate::vault::Stat,
        Touch -> Option<CommitInfo>,
    }
}

/// Write a secret; the content follows as [`Upload`](super::Upload) frames.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Write {
    /// Vault name.
    pub vault: String,
    /// Path in the vault.
    pub path: String,
    /// How it is recorded.
    pub kind: WriteKind,
    /// The content's length, when known in advance (a file): lets the agent hash it in
    /// one pass.
    pub size: Option<u64>,
}

/// Read a secret; the content comes back as [`Response::Chunk`](super::Response::Chunk)
/// frames.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cat {
    /// Vault name.
    pub vault: String,
    /// Path in the vault.
    pub path: String,
    /// Who asked, for the audit log.
    pub via: Via,
}

/// List a directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ls {
    /// Vault name.
    pub vault: String,
    /// Path (empty for the root).
    pub path: String,
}

/// Make a directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mkdir {
    /// Vault name.
    pub vault: String,
    /// Path.
    pub path: String,
    /// Create parents, and succeed if it exists.
    pub parents: bool,
}

/// Remove secrets or directories.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rm {
    /// Vault name.
    pub vault: String,
    /// Paths.
    pub paths: Vec<String>,
    /// Remove directories with their contents.
    pub recursive: bool,
}

/// Rename within a vault.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rename {
    /// Vault name.
    pub vault: String,
    /// Current path.
    pub from: String,
    /// New path.
    pub to: String,
}

/// Describe a path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stat {
    /// Vault name.
    pub vault: String,
    /// Path.
    pub path: String,
}

/// Create an empty secret if absent (no commit when it exists).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Touch {
    /// Vault name.
    pub vault: String,
    /// Path.
    pub path: String,
}

/// How a secret write is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteKind {
    /// `secrets create` (from a file).
    Create,
    /// `secrets write` (from stdin).
    Write,
    /// `secrets edit`.
    Edit,
    /// `secrets dir` (imported from a directory).
    Import,
}

/// Where a reveal came from, for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    /// The `pk` CLI (or another client of the agent socket).
    Cli,
    /// The appliance's admin console.
    Console,
}

impl Via {
    /// The name in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Via::Cli => "cli",
            Via::Console => "console",
        }
    }
}
