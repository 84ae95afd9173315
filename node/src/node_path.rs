//! The node's data directory.

use std::io;
use std::path::{Path, PathBuf};

/// The directory that holds one node's state (`--node-path`).
///
/// Created with mode 0700; files in it are written 0600.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePath(PathBuf);

impl NodePath {
    /// A node path at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NodePath(dir.into())
    }

    /// The default: `$XDG_DATA_HOME/pk`, else `$HOME/.local/share/pk`.
    pub fn default_location() -> Option<Self> {
        if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Some(NodePath(PathBuf::from(data).join("pk")));
        }
        let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
        Some(NodePath(PathBuf::from(home).join(".local/share/pk")))
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// The keyslot file.
    pub fn keyslots(&self) -> PathBuf {
        self.0.join("keyslots")
    }

    /// The lock file held while the keyslot file is being changed.
    pub fn keyslots_lock(&self) -> PathBuf {
        self.0.join("keyslots.lock")
    }

    /// The agent's Unix socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.0.join("agent.sock")
    }

    /// The agent's status file (pid, socket, start time) while it runs.
    pub fn agent_status(&self) -> PathBuf {
        self.0.join("agent.json")
    }

    /// Audit events kept while the agent was locked, written at the next unlock.
    pub fn agent_pending(&self) -> PathBuf {
        self.0.join("agent-pending.jsonl")
    }

    /// The log of an agent started in the background.
    pub fn agent_log(&self) -> PathBuf {
        self.0.join("agent.log")
    }

    /// Creates the directory (and parents) with mode 0700 if it does not exist.
    pub fn create(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.0)
    }
}

impl std::fmt::Display for NodePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}
