//! Keyslot changes `pk keyslots` makes (without the agent), for the audit log.

use serde::{Deserialize, Serialize};

use super::domain;

domain! {
    /// Calls about keyslots.
    KeyslotsRequest in Keyslots {
        Changed -> (),
    }
}

/// `pk keyslots` changed a slot; record it in the audit log now, or at the next unlock if
/// locked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Changed {
    /// What happened.
    pub event: KeyslotEvent,
    /// The slot.
    pub slot: u32,
    /// Its kind.
    pub kind: hsm_core::Kind,
}

/// A keyslot change for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyslotEvent {
    /// A slot was enrolled.
    Enrolled,
    /// A slot was removed.
    Removed,
}
