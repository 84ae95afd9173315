//! The `recovery` protector: a 24-word BIP39 recovery code.
//!
//! The code carries 256 bits of entropy, so no password stretching is needed: the
//! key-encryption key is HKDF-SHA256 of the entropy with a per-slot salt, and the key is
//! wrapped with XChaCha20-Poly1305. The code is generated at `init`, shown once, and opens
//! the node when every token is gone.

use bip39::{Language, Mnemonic};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{DataKey, Kind, Protector, Sealed, UnwrapError, WrapError, Wrapped};

/// Number of words in a recovery code.
pub(crate) const WORDS: usize = 24;

const HKDF_INFO: &[u8] = b"pk recovery keyslot v1";

/// A recovery code: 256 bits of entropy, written as 24 BIP39 English words.
///
/// Zeroized on drop; `Debug` prints `RecoveryCode(..)`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RecoveryCode {
    entropy: [u8; 32],
}

/// Why a typed recovery code was not accepted. Never contains the words themselves.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryCodeError {
    /// Not 24 words.
    #[error("a recovery code has {WORDS} words, this one has {0}")]
    WordCount(usize),
    /// A word is not in the BIP39 English list (1-based position).
    #[error("word {0} is not a recovery-code word; check its spelling")]
    UnknownWord(usize),
    /// All words are valid but the checksum does not match: a word is wrong or misplaced.
    #[error("the recovery code's checksum does not match; a word is wrong or out of order")]
    Checksum,
}

impl RecoveryCode {
    /// A fresh random recovery code.
    pub fn generate() -> Self {
        let mut code = RecoveryCode { entropy: [0; 32] };
        OsRng.fill_bytes(&mut code.entropy);
        code
    }

    /// Parses a typed code: words separated by any whitespace, case-insensitive.
    pub fn parse(text: &str) -> Result<Self, RecoveryCodeError> {
        let normalized = Zeroizing::new(
            text.split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join(" "),
        );
        let count = normalized.split(' ').filter(|w| !w.is_empty()).count();
        if count != WORDS {
            return Err(RecoveryCodeError::WordCount(count));
        }
        let mnemonic =
            Mnemonic::parse_in_normalized(Language::English, &normalized).map_err(|e| match e {
                bip39::Error::UnknownWord(i) => RecoveryCodeError::UnknownWord(i + 1),
                bip39::Error::BadWordCount(n) => RecoveryCodeError::WordCount(n),
                _ => RecoveryCodeError::Checksum,
            })?;
        let (mut bytes, len) = mnemonic.to_entropy_array();
        let mut code = RecoveryCode { entropy: [0; 32] };
        code.entropy.copy_from_slice(&bytes[..len.min(32)]);
        bytes.zeroize();
        Ok(code)
    }

    /// The 24 words, space-separated, for showing to the user once.
    pub fn to_words(&self) -> Zeroizing<String> {
        let mnemonic = Mnemonic::from_entropy_in(Language::English, &self.entropy)
            .expect("32 bytes is a valid BIP39 entropy length");
        Zeroizing::new(mnemonic.words().collect::<Vec<_>>().join(" "))
    }

    fn kek(&self, salt: &[u8]) -> DataKey {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.entropy);
        let mut okm = Zeroizing::new([0u8; 32]);
        hk.expand(HKDF_INFO, okm.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        DataKey::from_bytes(*okm)
    }
}

impl std::fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCode(..)")
    }
}

/// A `recovery` keyslot's stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverySealed {
    /// HKDF salt.
    #[serde(with = "crate::b64")]
    pub(crate) salt: Vec<u8>,
    /// The key wrapped under the key derived from the recovery code.
    #[serde(flatten)]
    pub wrapped: Wrapped,
}

/// Unlock by recovery code. Not hardware.
pub struct RecoveryProtector {
    code: RecoveryCode,
}

impl RecoveryProtector {
    /// A protector for `code`.
    pub fn new(code: RecoveryCode) -> Self {
        RecoveryProtector { code }
    }
}

impl Protector for RecoveryProtector {
    fn kind(&self) -> Kind {
        Kind::Recovery
    }

    fn wrap(&self, key: &DataKey, aad: &[u8]) -> Result<Sealed, WrapError> {
        let mut salt = vec![0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let wrapped = Wrapped::seal(&self.code.kek(&salt), key, aad);
        Ok(Sealed::Recovery(RecoverySealed { salt, wrapped }))
    }

    fn unwrap(&self, sealed: &Sealed, aad: &[u8]) -> Result<DataKey, UnwrapError> {
        let Sealed::Recovery(s) = sealed else {
            return Err(UnwrapError::wrong_kind(Kind::Recovery, sealed));
        };
        s.wrapped
            .open(&self.code.kek(&s.salt), aad)
            .ok_or(UnwrapError::WrongRecoveryCode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_parse() {
        let code = RecoveryCode::generate();
        let words = code.to_words();
        assert_eq!(words.split(' ').count(), WORDS);
        let shouty = words.to_uppercase().replace(' ', "\n  ");
        let back = RecoveryCode::parse(&shouty).expect("parse");
        assert_eq!(back.entropy, code.entropy);
    }

    #[test]
    fn parse_errors_name_positions_not_words() {
        let code = RecoveryCode::generate();
        let words = code.to_words();
        let mut list: Vec<&str> = words.split(' ').collect();
        assert_eq!(
            RecoveryCode::parse(&list[..23].join(" ")).unwrap_err(),
            RecoveryCodeError::WordCount(23)
        );
        list[4] = "notaword";
        let err = RecoveryCode::parse(&list.join(" ")).unwrap_err();
        assert_eq!(err, RecoveryCodeError::UnknownWord(5));
        assert!(!err.to_string().contains("notaword"));
        // The all-zero entropy vector ends in "art"; any other last word breaks the checksum.
        let zero = ["abandon"; 23].join(" ");
        assert!(RecoveryCode::parse(&format!("{zero} art")).is_ok());
        assert_eq!(
            RecoveryCode::parse(&format!("{zero} zoo")).unwrap_err(),
            RecoveryCodeError::Checksum
        );
    }
}
