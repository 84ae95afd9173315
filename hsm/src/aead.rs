//! XChaCha20-Poly1305 under a 256-bit key-encryption key, shared by the software
//! protectors and by the TPM protector (which seals a per-slot key-encryption key).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};

use crate::DataKey;

/// Nonce length of XChaCha20-Poly1305.
pub(crate) const NONCE_LEN: usize = 24;

/// Encrypts `key` under `kek` with `aad`; returns `(nonce, ciphertext)`.
pub(crate) fn seal(kek: &DataKey, key: &DataKey, aad: &[u8]) -> (Vec<u8>, Vec<u8>) {
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
    (nonce.to_vec(), ciphertext)
}

/// Decrypts what [`seal`] produced; `None` when the key, nonce, ciphertext or aad differ.
pub(crate) fn open(kek: &DataKey, nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Option<DataKey> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(kek.expose().into());
    let plain = zeroize::Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()?,
    );
    DataKey::try_from_slice(&plain)
}
