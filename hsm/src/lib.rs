//! The token layer: every way a node's data key can be kept, behind one trait.
//!
//! A node's data key (the DEK, a [`DataKey`]) is never stored in the clear. It is
//! *wrapped* once per enrolled unlock method (a keyslot, as in LUKS2), and each unlock
//! method is a [`Protector`]: [`Protector::wrap`] turns the key into a [`Sealed`] record,
//! [`Protector::unwrap`] turns the record back into the key. The protectors:
//!
//! - [`tpm::TpmProtector`]: a TPM 2.0 sealed object holding a per-slot key-encryption
//!   key, optionally bound to PCR values and/or a PIN (tss-esapi 7.x);
//! - [`pkcs11::Pkcs11Protector`]: a non-extractable AES-256 key generated inside a PKCS#11
//!   token, used with AES-GCM (cryptoki);
//! - [`yubikey::YubiKeyProtector`]: a P-256 key generated on a YubiKey's PIV application,
//!   ECDH against an ephemeral key, touch prompts as [`yubikey::YubiKeyEvent`]s;
//! - [`soft::SoftProtector`]: a passphrase stretched with Argon2id (not hardware);
//! - [`recovery::RecoveryProtector`]: a 24-word BIP39 recovery code (not hardware).
//!
//! # What holds, always
//!
//! - **The only crate with C libraries.** libtss2 and (through the `yubikey` crate)
//!   libpcsclite are linked here, and PKCS#11 modules are loaded here at run time: from
//!   the configuration, or from the system library directories when only a stored record
//!   names one. No `unsafe` all the same (`#![forbid(unsafe_code)]`); should it ever need
//!   some, this is the one crate allowed it, with a `// SAFETY:` line on each block.
//! - **Sealed records are safe on disk.** A [`Sealed`] record holds public parameters and
//!   ciphertext, nothing secret. Only the same protector (the same TPM, token, card,
//!   passphrase or code) unwraps it, and only with the same `aad`: callers bind the
//!   header of the record they store it in, so a tampered header fails.
//! - **Secrets zeroize and redact.** [`DataKey`], [`Pin`] and [`recovery::RecoveryCode`]
//!   are zeroized on drop and print as `DataKey(..)`, `Pin(..)`, `RecoveryCode(..)` in
//!   `Debug`. A `DataKey` has no `Clone`, `Display` or `Serialize`: it leaves memory only
//!   wrapped.
//! - **Errors a user can act on, and no secret in them.** [`WrapError`] and
//!   [`UnwrapError`] name what happened (`WrongPin { retries_left }`, `PinBlocked`,
//!   `PolicyMismatch`, `KeyNotOnToken`, `TokenAbsent`, `KeyWouldBeExtractable`, ...); no
//!   variant carries a PIN, passphrase, recovery word or key.
//! - **Software is never taken for hardware.** [`Kind::is_hardware`] is false for `soft`
//!   and `recovery`.
//! - **A token is opened per operation.** A protector holds its configuration and
//!   credentials only, so it is cheap to keep and can be shared between threads; the TPM
//!   backend flushes every transient object and session before it returns.
//!
//! # Map, bottom up
//!
//! - Leaves: `secret` ([`DataKey`], [`Pin`]), `error` ([`WrapError`], [`UnwrapError`]),
//!   `b64` (how stored records write bytes), `aead` ([`Wrapped`]: XChaCha20-Poly1305
//!   under a key-encryption key, shared by every backend but PKCS#11).
//! - Backends, each a protector and its stored record: [`soft`], [`recovery`], [`tpm`],
//!   [`pkcs11`], [`yubikey`]. The root ties them together: [`Kind`], [`Sealed`] (one
//!   variant per backend's record) and [`Protector`].
//! - [`sim`]: the software stand-ins that tests and the local development command start
//!   (swtpm, SoftHSM2 token directories) and, behind the `testing` feature, `sim::pcsc`
//!   (a private pcscd with one vpcd reader) and `sim::piv` (an emulated YubiKey 5 PIV
//!   card).
//!
//! `ARCHITECTURE.md` at the workspace root places this crate among the others;
//! `docs/theory/keys-and-keyslots.md` explains the keys and keyslots built on it.

#![forbid(unsafe_code)]

mod aead;
mod b64;
mod error;
pub mod pkcs11;
pub mod recovery;
mod secret;
pub mod sim;
pub mod soft;
pub mod tpm;
pub mod yubikey;

pub use aead::Wrapped;
pub use error::{UnwrapError, WrapError};
pub use secret::{DataKey, Pin};

use serde::{Deserialize, Serialize};

/// The kind of unlock method a [`Protector`] implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Kind {
    /// TPM 2.0 sealed object.
    Tpm,
    /// Key inside a PKCS#11 token.
    Pkcs11,
    /// Passphrase with Argon2id; software only.
    Soft,
    /// 24-word recovery code; software only.
    Recovery,
    /// YubiKey PIV (P-256 ECDH on the card).
    #[serde(rename = "yubikey")]
    YubiKey,
}

impl Kind {
    /// Whether the key material behind this kind lives in a hardware token.
    ///
    /// The `soft` and `recovery` kinds are always reported as not hardware, so that a user
    /// never mistakes a passphrase for a token.
    pub fn is_hardware(self) -> bool {
        matches!(self, Kind::Tpm | Kind::Pkcs11 | Kind::YubiKey)
    }

    /// The lowercase name used on the command line and in stored records.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Tpm => "tpm",
            Kind::Pkcs11 => "pkcs11",
            Kind::Soft => "soft",
            Kind::Recovery => "recovery",
            Kind::YubiKey => "yubikey",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a protector stores after wrapping a key: public parameters and ciphertext.
///
/// Nothing in a `Sealed` record is secret; it may be written to disk and copied freely.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Sealed {
    /// Sealed by a TPM.
    Tpm(tpm::TpmSealed),
    /// Wrapped by a PKCS#11 token.
    Pkcs11(pkcs11::Pkcs11Sealed),
    /// Wrapped under a passphrase.
    Soft(soft::SoftSealed),
    /// Wrapped under a recovery code.
    Recovery(recovery::RecoverySealed),
    /// Wrapped to a YubiKey's PIV key.
    #[serde(rename = "yubikey")]
    YubiKey(yubikey::YubiKeySealed),
}

impl Sealed {
    /// The kind of protector that can unwrap this record.
    pub fn kind(&self) -> Kind {
        match self {
            Sealed::Tpm(_) => Kind::Tpm,
            Sealed::Pkcs11(_) => Kind::Pkcs11,
            Sealed::Soft(_) => Kind::Soft,
            Sealed::Recovery(_) => Kind::Recovery,
            Sealed::YubiKey(_) => Kind::YubiKey,
        }
    }

    /// Whether unwrapping needs a secret from the user (PIN, passphrase, recovery code).
    pub fn needs_secret(&self) -> bool {
        match self {
            Sealed::Tpm(t) => t.pin,
            Sealed::YubiKey(y) => y.pin_policy != yubikey::PinRule::Never,
            Sealed::Pkcs11(_) | Sealed::Soft(_) | Sealed::Recovery(_) => true,
        }
    }
}

/// An unlock method: something that wraps a 32-byte key and unwraps it again.
///
/// Implementations hold their configuration and credentials (TCTI, module path, PIN,
/// passphrase) and open the token per operation, so a protector is cheap to keep and can
/// be shared between threads as `Arc<dyn Protector>`.
///
/// `aad` is bound to the ciphertext: unwrapping with different `aad` fails. Callers pass
/// the header of the record the key is stored in, so a tampered header is detected.
pub trait Protector: Send + Sync {
    /// The kind of unlock method.
    fn kind(&self) -> Kind;

    /// Wraps `key`, returning a record that only this protector can unwrap.
    fn wrap(&self, key: &DataKey, aad: &[u8]) -> Result<Sealed, WrapError>;

    /// Unwraps a record made by [`Protector::wrap`] with the same `aad`.
    fn unwrap(&self, sealed: &Sealed, aad: &[u8]) -> Result<DataKey, UnwrapError>;
}
