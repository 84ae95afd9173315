//! [`Drivers`]: the hardware protectors, for a program that has them.
//!
//! The TPM, PKCS#11 and YubiKey protectors link C libraries, so they live in the `hsm`
//! crate (`hsm::Hardware` implements this trait). A program that should not link those
//! libraries depends on this crate alone and is handed no drivers: it can still read every
//! keyslot, and open the software ones, but a hardware keyslot is refused. The `pk` client
//! is such a program; `pk-node` and the appliance hand `hsm::Hardware` to the node library.

use std::path::Path;

use zeroize::Zeroizing;

use crate::tpm::TpmOptions;
use crate::yubikey::{EventSink, PinRule, TouchRule};
use crate::{Pin, Protector};

/// The protectors of the hardware tokens, each ready to wrap (enrol) or unwrap (open).
pub trait Drivers: Send + Sync {
    /// A TPM 2.0 protector through `tcti`; `pin` authorises the sealed object, a new one is
    /// bound as `options` says, and a signed one finds its PCR signatures where they say.
    fn tpm(&self, tcti: &str, pin: Option<Pin>, options: TpmOptions) -> Box<dyn Protector>;

    /// A PKCS#11 protector with the token's `pin`.
    fn pkcs11(&self, key: Pkcs11Key<'_>, pin: Pin) -> Box<dyn Protector>;

    /// A YubiKey PIV protector on the card `serial` (any card when `None`); `new_key` says
    /// how to generate the key of a new keyslot; touch prompts go to `events`.
    fn yubikey(
        &self,
        serial: Option<u32>,
        pin: Option<Pin>,
        new_key: Option<PivKey>,
        events: Option<EventSink>,
    ) -> Box<dyn Protector>;
}

/// Which PKCS#11 key a protector uses.
#[derive(Clone, Copy, Debug)]
pub enum Pkcs11Key<'a> {
    /// A new key, generated in the token labelled `label` of `module`.
    New {
        /// The module.
        module: &'a Path,
        /// The token's label.
        label: &'a str,
    },
    /// The key a stored record names, through `module` when given (else the record's).
    Stored {
        /// The module that overrides the record's.
        module: Option<&'a Path>,
    },
}

/// How to generate a new keyslot's key on a YubiKey.
pub struct PivKey {
    /// The PIV slot.
    pub slot: u8,
    /// When the card asks for its PIN.
    pub pin_rule: PinRule,
    /// When it asks for a touch.
    pub touch_rule: TouchRule,
    /// The card's management key, when it is not the factory default.
    pub management_key: Option<Zeroizing<[u8; 24]>>,
}

impl std::fmt::Debug for PivKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PivKey")
            .field("slot", &self.slot)
            .field("pin_rule", &self.pin_rule)
            .field("touch_rule", &self.touch_rule)
            .field(
                "management_key",
                &self.management_key.as_ref().map(|_| ".."),
            )
            .finish()
    }
}
