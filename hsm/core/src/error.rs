//! Errors of the two protector operations, with variants a user can act on.
//!
//! No variant ever carries a PIN, passphrase, recovery word or key. Messages from token
//! libraries are kept only where they describe the token, never the input.

use crate::{Kind, Sealed};

/// Why a key could not be wrapped (enrolling a new unlock method).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WrapError {
    /// The token is not there: no TPM at the TCTI, no such PKCS#11 module or token label.
    #[error("token not available: {what}")]
    TokenAbsent {
        /// Which token was looked for, and where.
        what: String,
    },
    /// The PIN was refused by the token.
    #[error("wrong PIN{}", retries_suffix(*.retries_left))]
    WrongPin {
        /// Attempts left before the token blocks the PIN, when the token says.
        retries_left: Option<u32>,
    },
    /// The token has blocked the PIN after too many wrong attempts.
    #[error("PIN blocked: too many wrong attempts; unblock it with the token's own tools")]
    PinBlocked,
    /// The token would not keep the key non-extractable and sensitive, so it is refused.
    #[error(
        "the token did not keep the generated key sensitive and non-extractable; refusing to use it"
    )]
    KeyWouldBeExtractable,
    /// The request itself is invalid (for example a PCR index out of range).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Any other token failure, described without secrets.
    #[error("{kind} token error: {message}")]
    Token {
        /// Which backend failed.
        kind: Kind,
        /// What the token reported.
        message: String,
    },
}

/// Why a key could not be unwrapped (unlocking).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnwrapError {
    /// The token is not there: no TPM at the TCTI, no such PKCS#11 module or token label.
    #[error("token not available: {what}")]
    TokenAbsent {
        /// Which token was looked for, and where.
        what: String,
    },
    /// The slot needs a PIN and none was given.
    #[error("this keyslot needs a PIN")]
    PinRequired,
    /// The PIN was refused by the token.
    #[error("wrong PIN{}", retries_suffix(*.retries_left))]
    WrongPin {
        /// Attempts left before the token blocks the PIN, when the token says.
        retries_left: Option<u32>,
    },
    /// The token has blocked the PIN (TPM dictionary-attack lockout, PKCS#11 PIN locked).
    #[error(
        "PIN blocked: too many wrong attempts; wait for the lockout to expire or unblock the token"
    )]
    PinBlocked,
    /// The TPM's policy does not hold: the bound PCR values have changed since enrolment,
    /// or no valid signature covers the current values of the signed PCRs.
    #[error("the TPM policy does not hold: {reason}")]
    PolicyMismatch {
        /// Which part of the policy failed.
        reason: PolicyFailure,
    },
    /// A keyslot bound to signed PCR values cannot read the signatures it needs: the
    /// signature file is missing, unreadable, too large, or not in systemd's
    /// `tpm2-pcr-signature.json` format.
    #[error("the PCR signature file {path}: {problem}")]
    PcrSignatureFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The key this slot was wrapped with is not on this token (another TPM, a reset TPM,
    /// another PKCS#11 token, or the key was deleted).
    #[error("the key of this slot is not on this token ({0})")]
    KeyNotOnToken(String),
    /// The passphrase is wrong (or the slot was tampered with).
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The recovery code is well formed but does not open this slot.
    #[error("the recovery code does not match")]
    WrongRecoveryCode,
    /// The stored record is damaged or was altered; nothing was unwrapped.
    #[error("keyslot record is corrupt: {0}")]
    Corrupt(&'static str),
    /// The keyslot names a PKCS#11 module outside the system library directories, and
    /// this machine's configuration does not name one. A module is code run with the PIN:
    /// it is loaded only from the configuration or from the system library directories
    /// (`/usr/lib`, `/usr/lib64`, `/usr/local/lib`, after resolving links), never from a
    /// path that whoever can write the data directory chose.
    #[error(
        "the keyslot names the PKCS#11 module {module}, outside the system library directories; \
         name the module in this machine's configuration (--pkcs11-module, pkcs11_module) to use it"
    )]
    UntrustedModule {
        /// The path the keyslot named.
        module: String,
    },
    /// No smart-card reader at all (pcscd not running, no reader plugged in).
    #[error("no smart-card reader found: plug in the YubiKey (and check that pcscd runs)")]
    NoReader,
    /// A YubiKey is there, but not the one this slot was enrolled with.
    #[error("this keyslot belongs to the YubiKey with serial {expected_serial}; insert that one")]
    WrongCard {
        /// The serial of the enrolled card.
        expected_serial: u32,
    },
    /// The card waited for a touch that did not come.
    #[error("no touch: the YubiKey timed out waiting for it")]
    TouchTimeout,
    /// The card refused the operation when a touch was asked for.
    #[error("the YubiKey refused the operation (touch not confirmed)")]
    TouchDenied,
    /// The record belongs to another kind of protector.
    #[error("keyslot is of kind {found}, not {expected}")]
    WrongKind {
        /// The protector that was asked.
        expected: Kind,
        /// The kind of the record.
        found: Kind,
    },
    /// Any other token failure, described without secrets.
    #[error("{kind} token error: {message}")]
    Token {
        /// Which backend failed.
        kind: Kind,
        /// What the token reported.
        message: String,
    },
}

/// Which part of a TPM policy failed, in [`UnwrapError::PolicyMismatch`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyFailure {
    /// PCRs bound at their enrolment values hold other values now.
    #[error("PCR values differ from those at enrolment")]
    PcrsChanged,
    /// The signature file has no entry, by the enrolled key, for the current values of the
    /// signed PCRs: the booted kernel (unified kernel image) is not one that key signed.
    #[error(
        "no signature by the enrolled key matches the current value of PCR {pcrs}: this \
         kernel (UKI) is not one that key signed"
    )]
    Unsigned {
        /// The signed PCRs, as `sha256:11`.
        pcrs: String,
    },
    /// The entry for the current PCR values is there, but its signature is not the
    /// enrolled key's.
    #[error(
        "the signature for the current value of PCR {pcrs} does not verify with the enrolled key"
    )]
    BadSignature {
        /// The signed PCRs, as `sha256:11`.
        pcrs: String,
    },
}

impl WrapError {
    /// A failure of the `kind` token, as its library describes it.
    ///
    /// Public for the token backends in `hsm`, which report their library's errors so.
    pub fn token(kind: Kind, message: impl std::fmt::Display) -> Self {
        WrapError::Token {
            kind,
            message: message.to_string(),
        }
    }
}

impl UnwrapError {
    /// A failure of the `kind` token, as its library describes it.
    ///
    /// Public for the token backends in `hsm`, which report their library's errors so.
    pub fn token(kind: Kind, message: impl std::fmt::Display) -> Self {
        UnwrapError::Token {
            kind,
            message: message.to_string(),
        }
    }

    /// `sealed` was handed to a protector of the `expected` kind.
    ///
    /// Public for the token backends in `hsm`, whose `unwrap` is handed any record.
    pub fn wrong_kind(expected: Kind, sealed: &Sealed) -> Self {
        UnwrapError::WrongKind {
            expected,
            found: sealed.kind(),
        }
    }
}

fn retries_suffix(retries_left: Option<u32>) -> String {
    match retries_left {
        Some(1) => " (1 attempt left)".to_owned(),
        Some(n) => format!(" ({n} attempts left)"),
        None => String::new(),
    }
}
