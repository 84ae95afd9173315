//! Choosing and configuring the protector for a keyslot.
//!
//! A stored slot says which kind of token it needs; the machine says where that token is
//! (TPM TCTI, PKCS#11 module) and the user supplies the secret (PIN, passphrase, recovery
//! code). This module puts the three together.

use std::path::PathBuf;
use std::sync::Arc;

use hsm_core::drivers::{PivKey, Pkcs11Key};
use hsm_core::recovery::{RecoveryCode, RecoveryCodeError, RecoveryProtector};
use hsm_core::soft::{Argon2Params, SoftProtector};
use hsm_core::tpm::{DEFAULT_TCTI, PcrPolicy, SignedPcrPolicy, TpmOptions};
use hsm_core::yubikey::{EventSink, PinRule, TouchRule};
use hsm_core::{Drivers, Kind, Pin, Protector, Sealed};

use crate::keyslots::{KeyslotError, Keyslots, Unlocked};
use zeroize::Zeroizing;

/// Where this machine's tokens are, and the drivers to reach them with. Overrides what
/// slots recorded at enrolment.
#[derive(Clone, Default)]
pub struct TokenConfig {
    /// The hardware drivers (`hsm_core::Hardware`), from the program that links them; without
    /// them only the software keyslots (passphrase, recovery code) open.
    pub drivers: Option<Arc<dyn Drivers>>,
    /// TPM TCTI; [`DEFAULT_TCTI`] when `None`.
    pub tcti: Option<String>,
    /// The PCR signature file (systemd's `tpm2-pcr-signature.json`) that TPM keyslots
    /// with a signed PCR policy unlock with; `hsm_core::tpm::DEFAULT_PCR_SIGNATURE` when
    /// `None`.
    pub tpm_pcr_signature: Option<PathBuf>,
    /// PKCS#11 module to use instead of the one recorded in the slot.
    pub pkcs11_module: Option<PathBuf>,
    /// Where YubiKey touch prompts go (a CLI prints them; the agent records them).
    pub yubikey_events: Option<EventSink>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("tcti", &self.tcti)
            .field("tpm_pcr_signature", &self.tpm_pcr_signature)
            .field("pkcs11_module", &self.pkcs11_module)
            .field("drivers", &self.drivers.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenConfig {
    /// The TCTI to use.
    pub fn tcti(&self) -> &str {
        self.tcti.as_deref().unwrap_or(DEFAULT_TCTI)
    }

    /// The TPM protector's options: a new keyslot's PCR bindings, and where this
    /// machine's PCR signatures are.
    fn tpm_options(
        &self,
        pcrs: Option<PcrPolicy>,
        signed_pcrs: Option<SignedPcrPolicy>,
    ) -> TpmOptions {
        TpmOptions {
            pcrs,
            signed_pcrs,
            pcr_signature: self.tpm_pcr_signature.clone(),
        }
    }

    /// The hardware drivers, or why a slot of `kind` cannot be used without them.
    fn drivers(&self, kind: Kind) -> Result<&dyn Drivers, ProtectorError> {
        self.drivers
            .as_deref()
            .ok_or(ProtectorError::Unsupported(kind))
    }
}

/// Why a protector for a slot could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtectorError {
    /// The slot needs a secret and none was supplied.
    #[error("this keyslot needs a {0}")]
    SecretNeeded(&'static str),
    /// This program has no driver for this kind of slot (`pk` hands token work to
    /// `pk-node`).
    #[error("this program cannot use {0} keyslots: run it through pk-node")]
    Unsupported(Kind),
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
        Sealed::YubiKey(y) if y.pin_policy == PinRule::Never => None,
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
        Sealed::Tpm(_) => {
            config
                .drivers(Kind::Tpm)?
                .tpm(config.tcti(), secret, config.tpm_options(None, None))
        }
        Sealed::Pkcs11(_) => {
            let pin = secret.ok_or(ProtectorError::SecretNeeded("PKCS#11 token PIN"))?;
            let module = config.pkcs11_module.as_deref();
            config
                .drivers(Kind::Pkcs11)?
                .pkcs11(Pkcs11Key::Stored { module }, pin)
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
        Sealed::YubiKey(y) => config.drivers(Kind::YubiKey)?.yubikey(
            Some(y.serial),
            secret,
            None,
            config.yubikey_events.clone(),
        ),
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
        /// The PCRs whose values it opens with while this key has signed them.
        signed_pcrs: Option<SignedPcrPolicy>,
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
pub fn new_protector(
    slot: NewSlot,
    config: &TokenConfig,
) -> Result<Box<dyn Protector>, ProtectorError> {
    Ok(match slot {
        NewSlot::Tpm {
            pin,
            pcrs,
            signed_pcrs,
        } => config.drivers(Kind::Tpm)?.tpm(
            config.tcti(),
            pin,
            config.tpm_options(pcrs, signed_pcrs),
        ),
        NewSlot::Pkcs11 { module, label, pin } => config.drivers(Kind::Pkcs11)?.pkcs11(
            Pkcs11Key::New {
                module: &module,
                label: &label,
            },
            pin,
        ),
        NewSlot::YubiKey {
            serial,
            slot,
            pin_rule,
            touch_rule,
            pin,
            management_key,
        } => config.drivers(Kind::YubiKey)?.yubikey(
            serial,
            Some(pin),
            Some(PivKey {
                slot,
                pin_rule,
                touch_rule,
                management_key,
            }),
            config.yubikey_events.clone(),
        ),
        NewSlot::Soft { passphrase, params } => Box::new(SoftProtector::new(passphrase, params)),
    })
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
