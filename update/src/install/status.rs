//! The state of both slots, for `pk-update status` and the console.

use serde::{Deserialize, Serialize};

use super::esp::{self, UkiName};
use super::system::Machine;
use super::{Layout, Slot, SystemError, Tries, osrel};
use crate::bundle::Version;

/// Both slots and the UKIs on the ESP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The slot the running system booted from.
    pub running: Slot,
    /// Its `IMAGE_VERSION`.
    pub running_version: Version,
    /// The other slot.
    pub other: Slot,
    /// What the other slot holds.
    pub other_state: OtherState,
    /// Every UKI of this product on the ESP, by file name.
    pub ukis: Vec<UkiEntry>,
}

/// What the slot that is not running holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum OtherState {
    /// Nothing: the empty PARTUUID.
    Empty,
    /// A root and the UKI that boots it.
    Installed {
        /// The UKI's `IMAGE_VERSION`, if it could be read.
        version: Option<Version>,
        /// Its boot counter; `None` once it booted well.
        tries: Option<Tries>,
    },
    /// A root whose UKI used up its tries without completing a boot (`+0-N`):
    /// systemd-boot starts it only when nothing else is left.
    Failed {
        /// The UKI's `IMAGE_VERSION`, if it could be read.
        version: Option<Version>,
    },
    /// A root's PARTUUID but no UKI: an install that was cut off. It does not boot.
    Incomplete,
}

/// A UKI on the ESP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UkiEntry {
    /// Its file name in `EFI/Linux`.
    pub file: String,
    /// The slot it boots, if either slot has its id.
    pub slot: Option<Slot>,
    /// Its boot counter; `None` once it booted well.
    pub tries: Option<Tries>,
    /// Its `.osrel` `IMAGE_VERSION`, if it could be read.
    pub version: Option<Version>,
}

/// Reads the state of both slots. Writes nothing.
pub fn status(layout: &Layout) -> Result<Status, SystemError> {
    let machine = Machine::read(layout)?;
    let slot_of = |id: &str| {
        Slot::BOTH
            .into_iter()
            .find(|&s| machine.slot(s).partuuid.uki_id() == id)
    };
    let listed = esp::list(&layout.esp).map_err(|source| SystemError::Io {
        what: format!("listing the UKIs on {}", layout.esp.display()),
        source,
    })?;
    let ukis: Vec<UkiEntry> = listed
        .into_iter()
        .map(|(file, UkiName { id, tries })| UkiEntry {
            version: osrel::uki_version(&esp::dir(&layout.esp).join(&file)),
            slot: slot_of(&id),
            file,
            tries,
        })
        .collect();
    let other = machine.running.other();
    let other_state = if machine.slot(other).partuuid == layout.empty_partuuids[other.index()] {
        OtherState::Empty
    } else {
        match ukis.iter().find(|u| u.slot == Some(other)) {
            None => OtherState::Incomplete,
            Some(UkiEntry {
                tries: Some(Tries { left: 0, .. }),
                version,
                ..
            }) => OtherState::Failed {
                version: version.clone(),
            },
            Some(u) => OtherState::Installed {
                version: u.version.clone(),
                tries: u.tries,
            },
        }
    };
    Ok(Status {
        running: machine.running,
        running_version: machine.version,
        other,
        other_state,
        ukis,
    })
}
