//! The `yubikey` keyslot's stored record, its options and the protector's events,
//! without the PC/SC driver.
//!
//! The protector that makes and opens these records, `YubiKeyProtector`, talks to the
//! card through libpcsclite and lives in the `hsm` crate (`hsm::yubikey`, which
//! re-exports this module). In short: a P-256 key generated on the card's PIV application
//! (in [`YubiKeySealed::slot`], with the [`PinRule`] and [`TouchRule`] chosen), ECDH
//! against an ephemeral key whose public point is stored, HKDF-SHA256, and the node's key
//! wrapped under the result ([`YubiKeySealed::wrapped`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Wrapped;

/// What the protector tells its user while it works, for a CLI to print or a console to
/// show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum YubiKeyEvent {
    /// The card waits for a touch now.
    TouchNeeded {
        /// The card's serial number.
        serial: u32,
    },
    /// The operation that needed a touch is over (touched or not).
    TouchDone,
}

/// Receives [`YubiKeyEvent`]s.
pub type EventSink = Arc<dyn Fn(YubiKeyEvent) + Send + Sync>;

/// A PIN policy as stored in a keyslot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinRule {
    /// No PIN for key operations.
    Never,
    /// The PIN once per session.
    Once,
    /// The PIN before every operation.
    Always,
}

/// A touch policy as stored in a keyslot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TouchRule {
    /// No touch.
    Never,
    /// A touch for every operation.
    Always,
    /// A touch, remembered for 15 seconds.
    Cached,
}

/// A `yubikey` keyslot's stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct YubiKeySealed {
    /// The card's serial number.
    pub serial: u32,
    /// The PIV slot (0x9d, or a retired slot 0x82-0x95).
    pub slot: u8,
    /// PIN policy of the key.
    pub pin_policy: PinRule,
    /// Touch policy of the key.
    pub touch_policy: TouchRule,
    /// The card key's public point, SEC1 uncompressed.
    #[serde(with = "crate::b64")]
    pub public_key: Vec<u8>,
    /// The ephemeral public point, SEC1 uncompressed.
    #[serde(with = "crate::b64")]
    pub ephemeral: Vec<u8>,
    /// The key wrapped under the key derived from the ECDH shared secret.
    #[serde(flatten)]
    pub wrapped: Wrapped,
}
