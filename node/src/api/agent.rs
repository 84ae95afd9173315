//! The agent itself: its state, unlocking and locking, stopping, and its audit log.

use serde::{Deserialize, Serialize};

use super::{SecretBytes, domain};
use crate::audit::{AuditEvent, AuditQuery};

domain! {
    /// Calls about the agent itself.
    AgentRequest in Agent {
        Status -> AgentStatus,
        Unlock -> (),
        Lock -> (),
        Stop -> (),
        Audit -> Vec<AuditEvent>,
    }
}

/// The agent's state (answered locked too).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status;

/// Unlock through the keyslots.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Unlock {
    /// This slot only.
    pub slot: Option<u32>,
    /// Every slot of this kind (when no slot is named).
    pub kind: Option<hsm_core::Kind>,
    /// The PIN, passphrase or recovery code.
    pub secret: Option<SecretBytes>,
}

impl Unlock {
    /// No slot, kind or secret named: the slots that need no secret (a TPM slot whose
    /// policy holds), as the agent tries at start.
    pub fn is_unattended(&self) -> bool {
        self.slot.is_none() && self.kind.is_none() && self.secret.is_none()
    }
}

/// Forget the keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lock;

/// Shut down.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stop;

/// Read the audit log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Audit(pub AuditQuery);

/// Locked or unlocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// No keys in memory: only status, unlock and stop are answered.
    Locked,
    /// The node's keys are in memory.
    Unlocked,
}

impl AgentState {
    /// `locked` or `unlocked`, as `pk` prints it.
    pub fn name(self) -> &'static str {
        match self {
            AgentState::Locked => "locked",
            AgentState::Unlocked => "unlocked",
        }
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The agent's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Locked or unlocked.
    pub state: AgentState,
    /// The process id.
    pub pid: u32,
    /// This node's NodeId, when unlocked.
    pub node_id: Option<String>,
    /// The keyslot that unlocked it.
    pub unlocked_with: Option<u32>,
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// pk version.
    pub version: String,
    /// Where other nodes reach this one (the QUIC endpoint's UDP address), if it listens.
    pub peer_addr: Option<String>,
}
