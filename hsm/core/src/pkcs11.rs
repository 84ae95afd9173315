//! The `pkcs11` keyslot's stored record and the key report, without the PKCS#11 driver.
//!
//! The protector that makes and opens these records, `Pkcs11Protector`, loads PKCS#11
//! modules (cryptoki) and lives in the `hsm` crate (`hsm::pkcs11`, which re-exports this
//! module). In short: a non-extractable AES-256 key generated inside the token, found
//! again by the token's label and the key's `CKA_ID`, encrypts the node's key with
//! AES-GCM; [`Pkcs11Sealed`] keeps the IV and the ciphertext.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A `pkcs11` keyslot's stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pkcs11Sealed {
    /// The module the token was reached through at enrolment (may be overridden).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// `CKA_ID` of the AES key on the token.
    #[serde(with = "crate::b64")]
    pub key_id: Vec<u8>,
    /// AES-GCM IV.
    #[serde(with = "crate::b64")]
    pub iv: Vec<u8>,
    /// The wrapped key followed by the GCM tag.
    #[serde(with = "crate::b64")]
    pub ciphertext: Vec<u8>,
}

/// What a token says about the key behind a `pkcs11` slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KeyReport {
    /// `CKA_SENSITIVE`: the value may not be revealed in plaintext.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the key may be wrapped out of the token.
    pub extractable: bool,
    /// `CKA_NEVER_EXTRACTABLE`: the key has never been extractable.
    pub never_extractable: bool,
    /// Whether asking the token for `CKA_VALUE` returned the key bytes (it must not).
    pub value_readable: bool,
}
