//! The node key: its public half, signing, encryption, renewal and certificates.

use serde::{Deserialize, Serialize};

use super::{SecretBytes, domain};

domain! {
    /// Calls about the node key.
    KeysRequest in Keys {
        Public -> String,
        Sign -> SecretBytes,
        Encrypt -> SecretBytes,
        Decrypt -> SecretBytes,
        Renew -> KeyChanged,
        Reset -> KeyChanged,
        Cert -> Vec<String>,
    }
}

/// This node's NodeId.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Public;

/// Sign bytes with the node key (as a user signature: a context no certificate or claim
/// starts with is signed with them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sign(pub SecretBytes);

/// Encrypt bytes to a NodeId.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Encrypt {
    /// Recipient NodeId.
    pub to: String,
    /// Plaintext.
    pub data: SecretBytes,
}

/// Decrypt bytes encrypted to this node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decrypt(pub SecretBytes);

/// A new node key certified by the current one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Renew;

/// A new node key with no link to the current one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reset;

/// The node's certificate (PEM), and with `chain` its renewal certificates: PEM
/// certificates, the node's own first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cert {
    /// Include the renewal certificates.
    pub chain: bool,
}

/// A key renewed or reset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChanged {
    /// The NodeId before.
    pub was: String,
    /// The NodeId now.
    pub now: String,
    /// Whether peers can follow the change (a renewal) or not (a reset).
    pub certified: bool,
}
