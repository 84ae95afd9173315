//! Symmetric cryptography for everything the node stores: per-purpose keys derived from
//! the DEK, authenticated encryption of values, and keyed hashes for names.
//!
//! - Key derivation: HKDF-SHA256 with the DEK as input key material, salt
//!   `pk store v1`, and the purpose (`table:<name>`, `names`, ...) as info.
//! - Values: XChaCha20-Poly1305 with a random 192-bit nonce; the stored form is
//!   `nonce || ciphertext || tag`. Associated data binds a value to where it is stored
//!   (table and key), so a value copied under another key fails to open.
//! - Names (vault names, object ids used as table keys): HMAC-SHA256 under a derived key,
//!   so the database file shows no name and no content hash.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use hsm_core::DataKey;
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Bytes added to every sealed value.
pub(crate) const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Derives the key for `purpose` from the DEK.
pub(crate) fn derive(dek: &DataKey, purpose: &str) -> DataKey {
    let hk = Hkdf::<Sha256>::new(Some(b"pk store v1"), dek.expose());
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand(purpose.as_bytes(), out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    DataKey::from_bytes(*out)
}

/// An AEAD key for one purpose, with its cipher ready.
pub(crate) struct SealKey {
    cipher: XChaCha20Poly1305,
}

impl SealKey {
    /// The cipher for `key`.
    pub(crate) fn new(key: &DataKey) -> Self {
        SealKey {
            cipher: XChaCha20Poly1305::new(key.expose().into()),
        }
    }

    /// Encrypts `plain`, bound to `aad`.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory sizes");
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts what [`SealKey::seal`] made with the same `aad`; `None` if anything differs.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < OVERHEAD {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// A keyed hash (HMAC-SHA256) for turning names into opaque table keys.
pub(crate) struct NameKey(Zeroizing<[u8; 32]>);

impl NameKey {
    /// The hash key for `key`.
    pub(crate) fn new(key: &DataKey) -> Self {
        NameKey(Zeroizing::new(*key.expose()))
    }

    /// HMAC-SHA256 over the parts, each prefixed by its length so that no two different
    /// lists of parts hash alike.
    pub(crate) fn hash(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .expect("HMAC accepts any key length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_aad_and_key() {
        let dek = DataKey::generate();
        let a = SealKey::new(&derive(&dek, "table:a"));
        let b = SealKey::new(&derive(&dek, "table:b"));
        let sealed = a.seal(b"key1", b"value");
        assert_eq!(a.open(b"key1", &sealed).unwrap().as_slice(), b"value");
        assert!(a.open(b"key2", &sealed).is_none());
        assert!(b.open(b"key1", &sealed).is_none());
        assert!(a.open(b"key1", &sealed[..10]).is_none());
        assert_ne!(a.seal(b"key1", b"value"), sealed, "nonces must differ");
    }

    #[test]
    fn name_hash_separates_parts() {
        let k = NameKey::new(&DataKey::generate());
        assert_ne!(k.hash(&[b"ab", b"c"]), k.hash(&[b"a", b"bc"]));
        assert_eq!(k.hash(&[b"x"]), k.hash(&[b"x"]));
    }
}
