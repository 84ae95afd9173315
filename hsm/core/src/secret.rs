//! Secret value types: zeroized on drop, redacted in `Debug`.

use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A 256-bit symmetric key: the node's data key or a key derived from it.
///
/// Zeroized on drop; `Debug` prints `DataKey(..)`. There is deliberately no `Display`,
/// `Serialize` or `Clone`: a key leaves memory only wrapped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut key = DataKey([0; 32]);
        OsRng.fill_bytes(&mut key.0);
        key
    }

    /// Takes ownership of key bytes; the caller's copy should be zeroized.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }

    /// Copies a key out of a slice, failing unless it is exactly 32 bytes long.
    ///
    /// Public for the token backends in `hsm`, which get key bytes back from a token;
    /// the caller's copy should be zeroized.
    pub fn try_from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(DataKey(array))
    }

    /// The key bytes, for use by a cipher.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A PIN or passphrase as the user typed it.
///
/// Held as bytes, never as `String`; zeroized on drop; `Debug` prints `Pin(..)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Pin(Vec<u8>);

impl Pin {
    /// Wraps bytes read from a prompt, a file or the environment. One trailing newline
    /// (`\n` or `\r\n`), as left by `echo` or an editor, is removed.
    pub fn new(mut bytes: Vec<u8>) -> Self {
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Pin(bytes)
    }

    /// The PIN bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The PIN as UTF-8, for APIs that insist on text; `None` if it is not UTF-8.
    ///
    /// Public for the token backends in `hsm` (a PKCS#11 login takes text).
    pub fn expose_str(&self) -> Option<Zeroizing<String>> {
        std::str::from_utf8(&self.0)
            .ok()
            .map(|s| Zeroizing::new(s.to_owned()))
    }

    /// Whether the PIN is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Pin {
    fn from(value: &str) -> Self {
        Pin(value.as_bytes().to_vec())
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secret_bytes() {
        let key = DataKey::from_bytes([0x41; 32]);
        let pin = Pin::from("123456");
        assert_eq!(format!("{key:?}"), "DataKey(..)");
        assert_eq!(format!("{pin:?}"), "Pin(..)");
    }

    #[test]
    fn pin_drops_one_trailing_newline_only() {
        assert_eq!(Pin::new(b"abc\r\n".to_vec()).expose(), b"abc");
        assert_eq!(Pin::new(b"abc\n\n".to_vec()).expose(), b"abc\n");
        assert_eq!(Pin::new(b" abc ".to_vec()).expose(), b" abc ");
    }
}
