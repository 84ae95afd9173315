//! The node's identity: an Ed25519 key pair, and the NodeId that names it.
//!
//! A [`NodeId`] is the 32-byte Ed25519 public key written as Polykey writes it: multibase
//! base32hex (lowercase, unpadded) with the leading `v`, 53 characters in all.
//!
//! Encryption to a NodeId ([`encrypt_to`]) is an ECIES over X25519 derived from the
//! Ed25519 keys (the birational map used by libsodium's `crypto_sign_ed25519_pk_to_curve25519`):
//!
//! 1. the recipient's Ed25519 public key is mapped to its X25519 (Montgomery) form;
//! 2. a fresh ephemeral X25519 key `e` is drawn; `E = e·G`;
//! 3. `shared = X25519(e, recipient)`; an all-zero result is refused;
//! 4. `key = HKDF-SHA256(ikm = shared, salt = E || recipient Ed25519 key,
//!    info = "pk keys encrypt v1")`;
//! 5. the message is sealed with ChaCha20-Poly1305 under `key`, nonce zero (the key is
//!    unique to this message), associated data `"pk keys encrypt v1"`.
//!
//! The output is `0x01 || E (32 bytes) || ciphertext || tag (16 bytes)`. Decryption maps
//! the node's Ed25519 secret scalar to X25519 and reverses the steps.
//!
//! **Every use of the node key is domain-separated**, so that no signature made for one
//! use can pass as another: TLS handshake signatures carry TLS 1.3's own context string;
//! certificates (the self-signed one, renewals) sign a DER `TBSCertificate`, which starts
//! with a SEQUENCE tag (0x30); sigchain claims sign a JWS signing input, which starts with
//! the base64url of a JSON object (`ey`); a user's signature through `pk keys sign`
//! ([`Identity::sign_user`]) signs [`USER_SIGNATURE_CONTEXT`] followed by the data, and that
//! context starts with a zero byte, which neither of the others can. There is no public
//! way to sign raw bytes with the node key.
//!
//! **Weak keys are refused.** A NodeId must be a canonical Ed25519 point that is not of
//! small order (those make a signature that verifies for many messages), and signatures
//! are checked strictly (`verify_strict`: no small-order components, canonical `R`).

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use data_encoding::{Encoding, Specification};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::store::{Read as _, StoreError, Table, WriteTx};

const ENCRYPT_INFO: &[u8] = b"pk keys encrypt v1";
const ENCRYPT_VERSION: u8 = 1;
/// What a user's signature through `pk keys sign` covers before the data: a zero byte
/// (no certificate body or JWS signing input starts with one), a name and a version.
pub const USER_SIGNATURE_CONTEXT: &[u8] = b"\0pk user signature v1\0";
const NODE_KEY: &[u8] = b"node-key";
/// The certificates of earlier renewals, newest first (DER, base64 in a JSON list).
const RENEWALS: &[u8] = b"renewals";

/// Multibase base32hex, lowercase and unpadded (the `v` alphabet), as Polykey writes ids.
pub(crate) fn base32hex() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("0123456789abcdefghijklmnopqrstuv");
    spec.encoding().expect("a valid base32hex specification")
}

/// The text form the `v`-ids share (a `v`, then Multibase base32hex of the id's bytes):
/// `Display`, a `Debug` that names the type, and serde through that text. Each id type
/// parses it (`FromStr`) with its own checks.
macro_rules! v_id_text {
    ($id:ident) => {
        impl std::fmt::Display for $id {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "v{}", $crate::identity::base32hex().encode(&self.0))
            }
        }

        impl std::fmt::Debug for $id {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($id), "({})"), self)
            }
        }

        impl serde::Serialize for $id {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $id {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A node's identifier: its Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

/// Why a NodeId, signature or ciphertext was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Not a NodeId.
    #[error("not a NodeId: {0}")]
    BadNodeId(&'static str),
    /// A signature of the wrong length.
    #[error("a signature is 64 bytes")]
    BadSignature,
    /// The ciphertext is damaged, truncated, or not for this node.
    #[error("cannot decrypt: the message is damaged or was not encrypted to this node")]
    Decrypt,
}

impl NodeId {
    /// The NodeId for raw public key bytes, if they are a valid Ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdentityError> {
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| IdentityError::BadNodeId("not an Ed25519 public key"))?;
        if key.is_weak() {
            return Err(IdentityError::BadNodeId(
                "a weak Ed25519 key (a point of small order)",
            ));
        }
        // The point must also be written canonically: one key, one NodeId.
        if key.to_bytes() != bytes {
            return Err(IdentityError::BadNodeId("a non-canonical Ed25519 key"));
        }
        Ok(NodeId(bytes))
    }

    /// The public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.0).expect("checked when the NodeId was made")
    }
}

v_id_text!(NodeId);

impl FromStr for NodeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix('v')
            .ok_or(IdentityError::BadNodeId("a NodeId starts with 'v'"))?;
        if rest.len() != 52 {
            return Err(IdentityError::BadNodeId("a NodeId has 53 characters"));
        }
        let bytes = base32hex()
            .decode(rest.to_ascii_lowercase().as_bytes())
            .map_err(|_| IdentityError::BadNodeId("not base32hex"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdentityError::BadNodeId("wrong length"))?;
        NodeId::from_bytes(bytes)
    }
}

/// The node's key pair. The secret half zeroizes on drop.
pub struct Identity {
    signing: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh key pair.
    pub fn generate() -> Self {
        Identity {
            signing: SigningKey::generate(&mut OsRng),
        }
    }

    /// Loads the node's key pair from the store, creating and storing one the first time.
    pub fn load_or_create(tx: &mut WriteTx<'_>) -> Result<Identity, StoreError> {
        if let Some(bytes) = tx.get(Table::Identity, NODE_KEY)? {
            let secret: [u8; 32] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt {
                        table: "identity",
                        reason: "node key has the wrong length",
                    })?;
            let mut secret = Zeroizing::new(secret);
            let signing = SigningKey::from_bytes(&secret);
            secret.zeroize();
            return Ok(Identity { signing });
        }
        let identity = Identity::generate();
        tx.put(Table::Identity, NODE_KEY, identity.signing.as_bytes())?;
        Ok(identity)
    }

    /// Makes this key the node's key, in `tx` (after `pk keys renew` or `reset`).
    pub fn store_as_node_key(&self, tx: &mut WriteTx<'_>) -> Result<(), StoreError> {
        tx.put(Table::Identity, NODE_KEY, self.signing.as_bytes())
    }

    /// The key in PKCS#8 (wiped when dropped).
    fn pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, rcgen::Error> {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        Ok(Zeroizing::new(
            self.signing
                .to_pkcs8_der()
                .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?
                .as_bytes()
                .to_vec(),
        ))
    }

    fn rcgen_key_pair(&self) -> Result<rcgen::KeyPair, rcgen::Error> {
        let pkcs8 = self.pkcs8()?;
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice());
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
    }

    fn cert_params(node: &NodeId) -> Result<rcgen::CertificateParams, rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(vec![node.to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node.to_string());
        Ok(params)
    }

    /// A certificate for `new`'s key signed by this key (issuer CN: this NodeId): the
    /// link by which peers that knew this node follow it to its new key.
    pub fn certify(
        &self,
        new: &Identity,
    ) -> Result<rustls::pki_types::CertificateDer<'static>, rcgen::Error> {
        let issuer_key = self.rcgen_key_pair()?;
        let issuer = rcgen::Issuer::new(Self::cert_params(&self.node_id())?, &issuer_key);
        let subject_key = new.rcgen_key_pair()?;
        let cert = Self::cert_params(&new.node_id())?.signed_by(&subject_key, &issuer)?;
        Ok(cert.der().clone())
    }

    /// This node's NodeId.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    /// A key for `purpose` derived from the node key (HKDF-SHA256): stable across restarts,
    /// secret, and useless for anything but that purpose.
    pub fn derive_key(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(
            Some(b"pk node key derivation"),
            self.signing.as_bytes(),
        );
        let mut out = Zeroizing::new([0u8; 32]);
        hk.expand(purpose.as_bytes(), out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 length");
        out
    }

    /// A self-signed X.509 certificate for this key (for QUIC's TLS), and the key in
    /// PKCS#8. Made on demand, never stored.
    pub fn tls_certificate(
        &self,
    ) -> Result<
        (
            rustls::pki_types::CertificateDer<'static>,
            Zeroizing<Vec<u8>>,
        ),
        rcgen::Error,
    > {
        let pkcs8 = self.pkcs8()?;
        let key_pair = self.rcgen_key_pair()?;
        let cert = Self::cert_params(&self.node_id())?.self_signed(&key_pair)?;
        Ok((cert.der().clone(), pkcs8))
    }

    /// Signs a JWS signing input (`base64url(header).base64url(payload)`) for a sigchain
    /// claim. Anything else is refused: the node key signs only what the module docs list.
    pub(crate) fn sign_jws(&self, signing_input: &str) -> Option<[u8; 64]> {
        // A protected header is a JSON object, whose base64url always starts with "ey".
        if !signing_input.starts_with("ey") || signing_input.matches('.').count() != 1 {
            return None;
        }
        Some(self.signing.sign(signing_input.as_bytes()).to_bytes())
    }

    /// A user's signature of `data` (`pk keys sign`): Ed25519 over
    /// [`USER_SIGNATURE_CONTEXT`] then `data`, so that it can never serve as a certificate,
    /// a claim or a handshake signature. [`verify_user`] checks it.
    pub fn sign_user(&self, data: &[u8]) -> [u8; 64] {
        let mut message = Zeroizing::new(Vec::with_capacity(
            USER_SIGNATURE_CONTEXT.len() + data.len(),
        ));
        message.extend_from_slice(USER_SIGNATURE_CONTEXT);
        message.extend_from_slice(data);
        self.signing.sign(&message).to_bytes()
    }

    /// Decrypts a message made by [`encrypt_to`] for this node.
    pub fn decrypt(&self, message: &[u8]) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
        if message.len() < 1 + 32 + 16 || message[0] != ENCRYPT_VERSION {
            return Err(IdentityError::Decrypt);
        }
        let ephemeral: [u8; 32] = message[1..33]
            .try_into()
            .map_err(|_| IdentityError::Decrypt)?;
        let scalar = Zeroizing::new(self.signing.to_scalar_bytes());
        let shared = Zeroizing::new(MontgomeryPoint(ephemeral).mul_clamped(*scalar).to_bytes());
        let key = message_key(&shared, &ephemeral, &self.node_id())?;
        ChaCha20Poly1305::new(key.as_ref().into())
            .decrypt(
                &Nonce::default(),
                Payload {
                    msg: &message[33..],
                    aad: ENCRYPT_INFO,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| IdentityError::Decrypt)
    }
}

/// Checks an Ed25519 signature by `signer` over `data` as it is (a certificate body, a JWS
/// signing input), strictly: `verify_strict` refuses small-order components and a
/// non-canonical `R`.
pub fn verify(signer: &NodeId, data: &[u8], signature: &[u8]) -> Result<bool, IdentityError> {
    let signature: [u8; 64] = signature
        .try_into()
        .map_err(|_| IdentityError::BadSignature)?;
    Ok(signer
        .verifying_key()
        .verify_strict(data, &Signature::from_bytes(&signature))
        .is_ok())
}

/// Checks a user's signature made by [`Identity::sign_user`] (`pk keys verify`).
pub fn verify_user(signer: &NodeId, data: &[u8], signature: &[u8]) -> Result<bool, IdentityError> {
    let mut message = Vec::with_capacity(USER_SIGNATURE_CONTEXT.len() + data.len());
    message.extend_from_slice(USER_SIGNATURE_CONTEXT);
    message.extend_from_slice(data);
    verify(signer, &message, signature)
}

/// Encrypts `data` so that only the holder of `recipient`'s key can read it.
pub fn encrypt_to(recipient: &NodeId, data: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let mut ephemeral_secret = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(ephemeral_secret.as_mut());
    let ephemeral = MontgomeryPoint::mul_base_clamped(*ephemeral_secret).to_bytes();
    let their = recipient.verifying_key().to_montgomery();
    let shared = Zeroizing::new(their.mul_clamped(*ephemeral_secret).to_bytes());
    let key = message_key(&shared, &ephemeral, recipient)?;
    let ciphertext = ChaCha20Poly1305::new(key.as_ref().into())
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: data,
                aad: ENCRYPT_INFO,
            },
        )
        .map_err(|_| IdentityError::Decrypt)?;
    let mut out = Vec::with_capacity(1 + 32 + ciphertext.len());
    out.push(ENCRYPT_VERSION);
    out.extend_from_slice(&ephemeral);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn message_key(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &NodeId,
) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    if shared.iter().all(|&b| b == 0) {
        return Err(IdentityError::Decrypt);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient.as_bytes());
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(ENCRYPT_INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Ok(key)
}

/// The certificates linking this node's current key back to its earlier keys, newest
/// first (each signed by the key before it).
pub fn renewals(
    tx: &impl crate::store::Read,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, StoreError> {
    use base64::Engine as _;
    let Some(bytes) = tx.get(Table::Identity, RENEWALS)? else {
        return Ok(Vec::new());
    };
    let corrupt = || StoreError::Corrupt {
        table: "identity",
        reason: "unreadable renewal certificates",
    };
    let list: Vec<String> = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
    list.iter()
        .map(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(rustls::pki_types::CertificateDer::from)
                .map_err(|_| corrupt())
        })
        .collect()
}

/// Records a renewal certificate (newest first), in `tx`; `None` clears the list (a reset).
pub fn record_renewal(
    tx: &mut WriteTx<'_>,
    cert: Option<&rustls::pki_types::CertificateDer<'_>>,
) -> Result<(), StoreError> {
    use base64::Engine as _;
    let mut list: Vec<String> = match cert {
        Some(_) => renewals(tx)?
            .iter()
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_ref()))
            .collect(),
        None => Vec::new(),
    };
    if let Some(cert) = cert {
        list.insert(
            0,
            base64::engine::general_purpose::STANDARD.encode(cert.as_ref()),
        );
    }
    tx.put(
        Table::Identity,
        RENEWALS,
        &serde_json::to_vec(&list).expect("a list always serialises"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_text_form_is_polykeys() {
        let id = Identity::generate().node_id();
        let text = id.to_string();
        assert_eq!(text.len(), 53);
        assert!(text.starts_with('v'));
        assert!(
            text[1..]
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='v').contains(&c))
        );
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        assert_eq!(
            text.to_uppercase()
                .replacen('V', "v", 1)
                .parse::<NodeId>()
                .unwrap(),
            id
        );
        assert!("vabc".parse::<NodeId>().is_err());
        assert!(text.replacen('v', "z", 1).parse::<NodeId>().is_err());
    }

    #[test]
    fn weak_keys_are_not_node_ids() {
        use ed25519_dalek::Verifier as _;
        // The identity point and a point of order 8: each verifies forged signatures.
        let identity = {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        };
        assert!(NodeId::from_bytes(identity).is_err());
        assert!(NodeId::from_bytes([0u8; 32]).is_err());
        let order8: [u8; 32] = [
            0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10,
            0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77,
            0x92, 0xac, 0x03, 0x7a,
        ];
        let err = NodeId::from_bytes(order8).unwrap_err();
        assert!(err.to_string().contains("weak"), "{err}");
        let text = format!("v{}", base32hex().encode(&identity));
        assert!(text.parse::<NodeId>().is_err());
        // With the identity as the key, R = identity and s = 0 "signs" every message
        // under plain verification; strict verification refuses it.
        let key = VerifyingKey::from_bytes(&identity).unwrap();
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let forged = Signature::from_bytes(&forged);
        assert!(
            key.verify(b"anything", &forged).is_ok(),
            "the weakness exists"
        );
        assert!(key.verify_strict(b"anything", &forged).is_err());
        assert!(!verify(&NodeId(identity), b"anything", &forged.to_bytes()).unwrap());
    }

    #[test]
    fn sign_verify_encrypt_decrypt() {
        let alice = Identity::generate();
        let bob = Identity::generate();
        let sig = alice.sign_user(b"hello");
        assert!(verify_user(&alice.node_id(), b"hello", &sig).unwrap());
        assert!(!verify_user(&alice.node_id(), b"hellO", &sig).unwrap());
        assert!(!verify_user(&bob.node_id(), b"hello", &sig).unwrap());
        assert!(verify_user(&alice.node_id(), b"hello", &sig[..10]).is_err());
        // Not a signature of the bare bytes: it cannot stand in for a certificate's.
        assert!(!verify(&alice.node_id(), b"hello", &sig).unwrap());
        // The node key signs claims' JWS inputs only.
        assert!(alice.sign_jws("eyJhIjoxfQ.eyJiIjoyfQ").is_some());
        assert!(alice.sign_jws("0\u{82}\u{1}tbs").is_none());

        let sealed = encrypt_to(&bob.node_id(), b"for bob").unwrap();
        assert_eq!(bob.decrypt(&sealed).unwrap().as_slice(), b"for bob");
        assert_eq!(alice.decrypt(&sealed), Err(IdentityError::Decrypt));
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(bob.decrypt(&bad), Err(IdentityError::Decrypt));
        assert_eq!(bob.decrypt(&sealed[..20]), Err(IdentityError::Decrypt));
    }
}
