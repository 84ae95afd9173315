//! Choosing and configuring the protector for a keyslot.
//!
//! A stored slot says which kind of token it needs; the machine says where that token is
//! (TPM TCTI, PKCS#11 module) and the user supplies the secret (PIN, passphrase, recovery
//! code). This module puts the three together.

use std::path::PathBuf;

use hsm::pkcs11::Pkcs11Protector;
use hsm::recovery::{RecoveryCode, RecoveryCodeError, RecoveryProtector};
use hsm::soft::{Argon2Params, SoftProtector};
use hsm::tpm::{DEFAULT_TCTI, PcrPolicy, TpmProtector};
use hsm::yubikey::{EventSink, PinRule, TouchRule, YubiKeyProtector};
use hsm::{Kind, Pin, Protector, Sealed};

use crate::keyslots::{KeyslotError, Keyslots, Unlocked};
use zeroize::Zeroizing;

/// Where this machine's tokens are. Overrides what slots recorded at enrolment.
#[derive(Clone, Default)]
pub struct TokenConfig {
    /// TPM TCTI; [`DEFAULT_TCTI`] when `None`.
    pub tcti: Option<String>,
    /// PKCS#11 module to use instead of the one recorded in the slot.
    pub pkcs11_module: Option<PathBuf>,
    /// Where YubiKey touch prompts go (a CLI prints them; the agent records them).
    pub yubikey_events: Option<EventSink>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("tcti", &self.tcti)
            .field("pkcs11_module", &self.pkcs11_module)
            .finish_non_exhaustive()
    }
}

impl TokenConfig {
    /// The TCTI to use.
    pub fn tcti(&self) -> &str {
        self.tcti.as_deref().unwrap_or(DEFAULT_TCTI)
    }
}

/// Why a protector for a slot could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtectorError {
    /// The slot needs a secret and none was supplied.
    #[error("this keyslot needs a {0}")]
    SecretNeeded(&'static str),
    /// This build of pk cannot open this kind of slot.
    #[error("this pk cannot open {0} keyslots")]
    Unsupported(hsm::Kind),
    /// The recovery code is malformed.
    #[error(transparent)]
    RecoveryCode(#[from] RecoveryCodeError),
}

/// What the user must supply to open a slot, in words for a prompt.
pub fn secret_name(sealed: &Sealed) -> Option<&'static str> {
    match sealed {
        Sealed::Tpm(t) if t.pin => Some("TPM PIN"),
        Sealed::Tpm(_) => None,
        Sealed::Pkcs11(_) => Some("PKCS#11 token PIN"),
        Sealed::Soft(_) => Some("passphrase"),
        Sealed::Recovery(_) => Some("recovery code"),
        Sealed::YubiKey(y) if y.pin_policy == hsm::yubikey::PinRule::Never => None,
        Sealed::YubiKey(_) => Some("YubiKey PIN"),
        _ => Some("secret"),
    }
}

/// A protector able to open `sealed` on this machine with `secret`.
pub fn protector_for(
    sealed: &Sealed,
    config: &TokenConfig,
    secret: Option<Pin>,
) -> Result<Box<dyn Protector>, ProtectorError> {
    let needed = secret_name(sealed);
    let secret = match (needed, secret) {
        (Some(name), None) => return Err(ProtectorError::SecretNeeded(name)),
        (_, secret) => secret,
    };
    Ok(match sealed {
        Sealed::Tpm(_) => Box::new(TpmProtector::new(config.tcti(), secret)),
        Sealed::Pkcs11(_) => {
            let pin = secret.ok_or(ProtectorError::SecretNeeded("PKCS#11 token PIN"))?;
            let mut p = Pkcs11Protector::for_unlock(pin);
            if let Some(module) = &config.pkcs11_module {
                p = p.with_module(module);
            }
            Box::new(p)
        }
        Sealed::Soft(_) => Box::new(SoftProtector::new(
            secret.ok_or(ProtectorError::SecretNeeded("passphrase"))?,
            Argon2Params::DEFAULT,
        )),
        Sealed::Recovery(_) => {
            let secret = secret.ok_or(ProtectorError::SecretNeeded("recovery code"))?;
            let text = Zeroizing::new(String::from_utf8_lossy(secret.expose()).into_owned());
            Box::new(RecoveryProtector::new(RecoveryCode::parse(&text)?))
        }
        Sealed::YubiKey(y) => {
            let mut p = YubiKeyProtector::new(Some(y.serial), secret);
            if let Some(events) = &config.yubikey_events {
                p = p.with_events(events.clone());
            }
            Box::new(p)
        }
        other => return Err(ProtectorError::Unsupported(other.kind())),
    })
}

/// A new keyslot's token and its options, as `pk keyslots add` or the console's form
/// asked for them. Each front end checks its own input and words its own errors; the
/// protector is built in one place, [`new_protector`].
pub enum NewSlot {
    /// A sealed object in the TPM, optionally behind a PIN and bound to PCR values.
    Tpm {
        /// The PIN the object will need.
        pin: Option<Pin>,
        /// The PCR values it will be bound to.
        pcrs: Option<PcrPolicy>,
    },
    /// A key generated inside a PKCS#11 token.
    Pkcs11 {
        /// The module.
        module: PathBuf,
        /// The token's label.
        label: String,
        /// The token's PIN.
        pin: Pin,
    },
    /// A key generated in a YubiKey's PIV slot.
    YubiKey {
        /// The card's serial; any card when `None`.
        serial: Option<u32>,
        /// The PIV slot.
        slot: u8,
        /// When the card asks for its PIN.
        pin_rule: PinRule,
        /// When it asks for a touch.
        touch_rule: TouchRule,
        /// The PIN, which authorises the key's generation now.
        pin: Pin,
        /// The card's management key, when it is not the factory default.
        management_key: Option<Zeroizing<[u8; 24]>>,
    },
    /// A passphrase stretched with Argon2id.
    Soft {
        /// The passphrase.
        passphrase: Pin,
        /// The Argon2id cost.
        params: Argon2Params,
    },
}

/// The protector that enrols `slot` on this machine's tokens.
pub fn new_protector(slot: NewSlot, config: &TokenConfig) -> Box<dyn Protector> {
    match slot {
        NewSlot::Tpm { pin, pcrs } => {
            let mut tpm = TpmProtector::new(config.tcti(), pin);
            if let Some(pcrs) = pcrs {
                tpm = tpm.with_pcr_policy(pcrs);
            }
            Box::new(tpm)
        }
        NewSlot::Pkcs11 { module, label, pin } => {
            Box::new(Pkcs11Protector::new(module, label, pin))
        }
        NewSlot::YubiKey {
            serial,
            slot,
            pin_rule,
            touch_rule,
            pin,
            management_key,
        } => {
            let mut yk =
                YubiKeyProtector::new(serial, Some(pin)).with_key(slot, pin_rule, touch_rule);
            if let Some(key) = management_key {
                yk = yk.with_management_key(*key);
            }
            if let Some(events) = &config.yubikey_events {
                yk = yk.with_events(events.clone());
            }
            Box::new(yk)
        }
        NewSlot::Soft { passphrase, params } => Box::new(SoftProtector::new(passphrase, params)),
    }
}

/// Which keyslots to unlock through, and with what.
#[derive(Debug, Default)]
pub struct UnlockChoice {
    /// This slot only.
    pub slot: Option<u32>,
    /// Otherwise every slot of this kind; with neither, every slot that needs no secret.
    pub kind: Option<Kind>,
    /// The PIN, passphrase or recovery code.
    pub secret: Option<Pin>,
}

/// Why unlocking failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnlockError {
    /// The keyslots refused.
    #[error(transparent)]
    Keyslot(#[from] KeyslotError),
    /// No protector could be made for the slot.
    #[error(transparent)]
    Protector(#[from] ProtectorError),
}

/// Unlocks the DEK as `choice` says.
pub fn unlock(
    keyslots: &Keyslots,
    choice: UnlockChoice,
    config: &TokenConfig,
) -> Result<Unlocked, UnlockError> {
    if let Some(id) = choice.slot {
        let slot = keyslots.slot(id).ok_or(KeyslotError::NoSuchSlot(id))?;
        let protector = protector_for(&slot.sealed, config, choice.secret)?;
        return Ok(keyslots.unlock(protector.as_ref(), Some(id))?);
    }
    if let Some(kind) = choice.kind {
        let slot = keyslots
            .slots()
            .iter()
            .find(|s| s.header.kind == kind)
            .ok_or(KeyslotError::NoSlotOfKind(kind))?;
        let protector = protector_for(&slot.sealed, config, choice.secret)?;
        return Ok(keyslots.unlock(protector.as_ref(), None)?);
    }
    let mut first_error = None;
    for slot in keyslots.slots().iter().filter(|s| !s.sealed.needs_secret()) {
        let protector = protector_for(&slot.sealed, config, None)?;
        match keyslots.unlock(protector.as_ref(), Some(slot.header.id)) {
            Ok(unlocked) => return Ok(unlocked),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error
        .unwrap_or(KeyslotError::NoSlotOfKind(Kind::Tpm))
        .into())
}
