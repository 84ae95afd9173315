//! [`SecretBytes`]: bytes that may be secret in transit.

use serde::{Deserialize, Serialize};

/// Bytes that may be secret in transit (PINs, passphrases, secret contents, plaintexts):
/// zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct SecretBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl SecretBytes {
    /// Moves the bytes out into a zeroizing buffer.
    pub fn take(mut self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(std::mem::take(&mut self.0))
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}
