//! The image-signing key and its public half, as PEM files OpenSSL writes and reads.
//!
//! The private key is PKCS#8 (`openssl genpkey -algorithm ed25519 -out update-key.pem`),
//! the public key SPKI (`openssl pkey -in update-key.pem -pubout -out update-key.pub`).

use std::io::Read;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// The largest key file read: a PEM Ed25519 key is about 120 bytes.
const MAX_KEY_FILE: u64 = 16 * 1024;

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a PEM Ed25519 key of the expected kind.
    #[error("{path}: not {expected}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What the file should hold.
        expected: &'static str,
    },
}

/// Reads the image-signing key: a PKCS#8 PEM Ed25519 private key.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = read_pem(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
        expected: "a PKCS#8 PEM Ed25519 private key (openssl genpkey -algorithm ed25519)",
    })
}

/// Reads the update key: a PEM SPKI Ed25519 public key.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = read_pem(path)?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
        expected: "a PEM Ed25519 public key (openssl pkey -pubout)",
    })
}

/// The file's text, at most [`MAX_KEY_FILE`] bytes, wiped when dropped.
fn read_pem(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    Ok(text)
}
