//! The token layer without the tokens: the key-wrapping trait, every keyslot's stored
//! record, and the protectors that need no hardware.
//!
//! A node's data key (the DEK, a [`DataKey`]) is never stored in the clear. It is
//! *wrapped* once per enrolled unlock method (a keyslot, as in LUKS2), and each unlock
//! method is a [`Protector`]: [`Protector::wrap`] turns the key into a [`Sealed`] record,
//! [`Protector::unwrap`] turns the record back into the key. This crate holds everything
//! about that which needs no C library:
//!
//! - the trait, [`Protector`], and what it speaks: [`Kind`], [`Sealed`], [`DataKey`],
//!   [`Pin`], [`WrapError`], [`UnwrapError`];
//! - every backend's stored record, so that keyslots can be read, listed and checked
//!   without a token driver: [`tpm::TpmSealed`], [`pkcs11::Pkcs11Sealed`],
//!   [`yubikey::YubiKeySealed`], [`soft::SoftSealed`], [`recovery::RecoverySealed`], and
//!   the options they keep ([`tpm::PcrPolicy`], [`yubikey::PinRule`], ...);
//! - the two software protectors: [`soft::SoftProtector`] (a passphrase stretched with
//!   Argon2id) and [`recovery::RecoveryProtector`] (a 24-word BIP39 recovery code).
//!
//! The hardware protectors (TPM 2.0 through libtss2, PKCS#11 modules, YubiKeys through
//! libpcsclite) are in the `hsm` crate, which re-exports this one whole: every path here is
//! also a path there (`hsm_core::tpm::PcrPolicy` is `hsm::tpm::PcrPolicy`). A program that
//! depends on this crate alone cannot link a token library.
//!
//! # What holds, always
//!
//! - **No C library, no `unsafe`.** Nothing in this crate's dependency tree links a C
//!   library (check with `cargo tree -p hsm-core -e normal`: no tss-esapi, yubikey, pcsc or
//!   cryptoki), and the crate is `#![forbid(unsafe_code)]`. A driver that needs either
//!   belongs in `hsm`.
//! - **Sealed records are safe on disk.** A [`Sealed`] record holds public parameters and
//!   ciphertext, nothing secret. Only the same protector (the same TPM, token, card,
//!   passphrase or code) unwraps it, and only with the same `aad`: callers bind the
//!   header of the record they store it in, so a tampered header fails. The records'
//!   stored form (field names, unpadded base64 for bytes) is the keyslot file format and
//!   does not change when code moves.
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
//!
//! A few items are public only so that the token backends in `hsm` can build and open
//! records ([`Wrapped::seal`], [`Wrapped::open`], [`DataKey::try_from_slice`],
//! [`Pin::expose_str`], [`WrapError::token`], [`UnwrapError::token`],
//! [`UnwrapError::wrong_kind`]); each says so.
//!
//! # Map, bottom up
//!
//! - Leaves: `secret` ([`DataKey`], [`Pin`]), `error` ([`WrapError`], [`UnwrapError`]),
//!   `b64` (how stored records write bytes), `aead` ([`Wrapped`]: XChaCha20-Poly1305
//!   under a key-encryption key, shared by every backend but PKCS#11).
//! - The software backends, each a protector and its stored record: [`soft`],
//!   [`recovery`].
//! - The hardware backends' records and options only: [`tpm`], [`pkcs11`], [`yubikey`];
//!   and [`drivers`], the trait ([`Drivers`]) through which a program that links them
//!   (`hsm::Hardware`) hands them to one that does not.
//! - [`sim`]: the software stand-ins that tests and the local development command start
//!   (swtpm, SoftHSM2 token directories; pure Rust, they spawn the programs) and, behind
//!   the `testing` feature, `sim::pcsc` (a private pcscd with one vpcd reader) and
//!   `sim::piv` (an emulated YubiKey 5 PIV card).
//! - The root ties them together: [`Kind`], [`Sealed`] (one variant per backend's record)
//!   and [`Protector`].
//!
//! `ARCHITECTURE.md` at the workspace root places this crate among the others;
//! `docs/reference/keyslot-format.md` describes the records as stored.

#![forbid(unsafe_code)]

mod aead;
mod b64;
pub mod drivers;
mod error;
pub mod pkcs11;
pub mod recovery;
mod secret;
pub mod sim;
pub mod soft;
pub mod tpm;
pub mod yubikey;

pub use aead::Wrapped;
pub use drivers::Drivers;
pub use error::{PolicyFailure, UnwrapError, WrapError};
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
