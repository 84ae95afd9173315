//! XChaCha20-Poly1305 under a 256-bit key-encryption key, shared by the software
//! protectors and by the TPM and YubiKey protectors (which hold a per-slot
//! key-encryption key on the token).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::DataKey;

/// Nonce length of XChaCha20-Poly1305.
pub(crate) const NONCE_LEN: usize = 24;

/// A key wrapped under a key-encryption key with XChaCha20-Poly1305: the part of a stored
/// record that the `soft`, `recovery`, `tpm` and `yubikey` records share. Its fields sit
/// beside the record's own (`#[serde(flatten)]`), as they always did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wrapped {
    /// XChaCha20-Poly1305 nonce.
    #[serde(with = "crate::b64")]
    pub nonce: Vec<u8>,
    /// The wrapped key and its tag.
    #[serde(with = "crate::b64")]
    pub ciphertext: Vec<u8>,
}

impl Wrapped {
    /// Encrypts `key` under `kek` with `aad`, under a fresh random nonce.
    ///
    /// Public for the token backends in `hsm`, which wrap under a key-encryption key
    /// their token keeps; callers outside the token layer have no key-encryption key.
    pub fn seal(kek: &DataKey, key: &DataKey, aad: &[u8]) -> Wrapped {
        let cipher = XChaCha20Poly1305::new(kek.expose().into());
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: key.expose(),
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption of 32 bytes cannot fail");
        Wrapped {
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Decrypts what [`Wrapped::seal`] produced; `None` when the key, nonce, ciphertext
    /// or aad differ.
    ///
    /// Public for the token backends in `hsm`, which open under a key-encryption key
    /// their token gives back; callers outside the token layer use [`crate::Protector`].
    pub fn open(&self, kek: &DataKey, aad: &[u8]) -> Option<DataKey> {
        if self.nonce.len() != NONCE_LEN {
            return None;
        }
        let cipher = XChaCha20Poly1305::new(kek.expose().into());
        let plain = zeroize::Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&self.nonce),
                    Payload {
                        msg: &self.ciphertext,
                        aad,
                    },
                )
                .ok()?,
        );
        DataKey::try_from_slice(&plain)
    }
}

#[cfg(test)]
mod tests {
    use crate::Sealed;
    use crate::recovery::RecoverySealed;

    /// The shared fields are stored flat, beside the record's own, as before they were
    /// shared: records written by earlier versions still read, and read back the same.
    #[test]
    fn a_record_keeps_its_stored_form() {
        let stored = r#"{"kind":"recovery","salt":"AQI","nonce":"AwQ","ciphertext":"BQY"}"#;
        let sealed: Sealed = serde_json::from_str(stored).unwrap();
        let Sealed::Recovery(RecoverySealed { salt, wrapped }) = &sealed else {
            panic!("{sealed:?}");
        };
        assert_eq!(
            (
                salt.as_slice(),
                wrapped.nonce.as_slice(),
                wrapped.ciphertext.as_slice()
            ),
            (&[1, 2][..], &[3, 4][..], &[5, 6][..])
        );
        assert_eq!(serde_json::to_string(&sealed).unwrap(), stored);
    }
}
