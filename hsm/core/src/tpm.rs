//! The `tpm` keyslot's stored record and its options, without the TPM driver.
//!
//! The protector that makes and opens these records, `TpmProtector`, talks to the TPM
//! through libtss2 and lives in the `hsm` crate (`hsm::tpm`, which re-exports this module).
//! In short: a sealed data object under the owner hierarchy's storage primary key holds a
//! per-slot key-encryption key, optionally bound to PCR values ([`PcrPolicy`]), to PCR
//! values a key has signed ([`SignedPcrPolicy`]) and/or a PIN, and the node's key is
//! wrapped under that key ([`TpmSealed::wrapped`]).

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use spki::der::Decode as _;

use crate::Wrapped;

/// The TCTI used when none is configured: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// Where the PCR signatures (systemd's `tpm2-pcr-signature.json`) are read from when none
/// is configured: where the appliance's initrd leaves the booted UKI's `.pcrsig`.
pub const DEFAULT_PCR_SIGNATURE: &str = "/run/pk-boot/tpm2-pcr-signature.json";

/// The PCRs a signed policy covers unless told otherwise: PCR 11, where systemd-stub
/// measures the unified kernel image.
pub const DEFAULT_SIGNED_PCRS: &[u8] = &[11];

/// The PCR bank a policy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcrBank {
    /// SHA-1 bank (legacy firmware).
    Sha1,
    /// SHA-256 bank (the default).
    Sha256,
    /// SHA-384 bank.
    Sha384,
}

impl FromStr for PcrBank {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Ok(PcrBank::Sha1),
            "sha256" => Ok(PcrBank::Sha256),
            "sha384" => Ok(PcrBank::Sha384),
            other => Err(format!(
                "unknown PCR bank {other:?}; use sha1, sha256 or sha384"
            )),
        }
    }
}

/// PCRs a sealed object is bound to: it unseals only while they hold their enrolment values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrPolicy {
    /// The bank to read.
    pub bank: PcrBank,
    /// PCR indices, 0 to 23.
    pub pcrs: Vec<u8>,
}

impl PcrPolicy {
    /// Parses a comma-separated list of PCR indices, such as `0,7,16`.
    pub fn parse_list(bank: PcrBank, list: &str) -> Result<Self, String> {
        let mut pcrs = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let n: u8 = part
                .parse()
                .map_err(|_| format!("{part:?} is not a PCR index"))?;
            if n > 23 {
                return Err(format!("PCR index {n} is out of range 0-23"));
            }
            if !pcrs.contains(&n) {
                pcrs.push(n);
            }
        }
        if pcrs.is_empty() {
            return Err("the PCR list is empty".into());
        }
        pcrs.sort_unstable();
        Ok(PcrPolicy { bank, pcrs })
    }
}

/// PCRs whose values are accepted when a key has signed them (TPM2_PolicyAuthorize), the
/// way `systemd-cryptenroll --tpm2-public-key` binds a LUKS2 token: any value the key's
/// owner signs with `systemd-measure sign` unseals, so a signed kernel update keeps the
/// keyslot working without enrolling it again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPcrPolicy {
    /// The bank the signed values are read from.
    pub bank: PcrBank,
    /// The signed PCR indices (sorted, distinct), usually `[11]`.
    pub pcrs: Vec<u8>,
    /// The signing key's public half, a DER SubjectPublicKeyInfo (RSA, or ECC P-256).
    #[serde(with = "crate::b64")]
    pub public_key: Vec<u8>,
    /// The key's fingerprint as systemd computes it ([`fingerprint`]): its `pkfp`, which
    /// picks this key's entries in a signature file.
    pub fingerprint: String,
}

impl std::fmt::Debug for SignedPcrPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedPcrPolicy")
            .field("bank", &self.bank)
            .field("pcrs", &self.pcrs)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The public key of a [`SignedPcrPolicy`], as the TPM needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PcrSigningKey<'a> {
    /// An RSA key (RSASSA-PKCS1-v1_5 signatures).
    Rsa {
        /// The modulus, big-endian, without leading zeros.
        modulus: &'a [u8],
        /// The public exponent.
        exponent: u32,
    },
    /// An ECC P-256 key (ECDSA signatures).
    EcP256 {
        /// The point's x coordinate, 32 bytes big-endian.
        x: &'a [u8],
        /// The point's y coordinate, 32 bytes big-endian.
        y: &'a [u8],
    },
}

const RSA_ENCRYPTION: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const PRIME256V1: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

impl SignedPcrPolicy {
    /// A policy over `pcrs` signed by the key in `pem`, a PEM `PUBLIC KEY`
    /// (SubjectPublicKeyInfo) as `systemd-measure sign` and `openssl pkey -pubout` write it.
    pub fn from_pem(pem: &str, pcrs: PcrPolicy) -> Result<Self, String> {
        let (label, der) = spki::der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|e| format!("not a PEM public key: {e}"))?;
        if label != "PUBLIC KEY" {
            return Err(format!("a PEM {label:?}, not a \"PUBLIC KEY\""));
        }
        Self::from_der(der, pcrs)
    }

    /// A policy over `pcrs` signed by the key `der`, a DER SubjectPublicKeyInfo.
    pub fn from_der(der: Vec<u8>, pcrs: PcrPolicy) -> Result<Self, String> {
        let policy = SignedPcrPolicy {
            bank: pcrs.bank,
            pcrs: pcrs.pcrs,
            fingerprint: fingerprint(&der)?,
            public_key: der,
        };
        policy.key()?;
        Ok(policy)
    }

    /// The key, checked: RSA of 1024 to 4096 bits, or ECC P-256; and the stored
    /// fingerprint matches it.
    pub fn key(&self) -> Result<PcrSigningKey<'_>, String> {
        if !self
            .fingerprint
            .eq_ignore_ascii_case(&fingerprint(&self.public_key)?)
        {
            return Err("the fingerprint does not match the public key".into());
        }
        let (info, bits) = subject_public_key(&self.public_key)?;
        let oid = info.algorithm.oid;
        if oid == RSA_ENCRYPTION {
            return rsa_key(bits);
        }
        if oid != EC_PUBLIC_KEY {
            return Err(format!("the key's algorithm {oid} is neither RSA nor EC"));
        }
        let curve = info
            .algorithm
            .parameters_oid()
            .map_err(|_| "the EC key names no curve")?;
        if curve != PRIME256V1 {
            return Err(format!("the EC key is on curve {curve}, not P-256"));
        }
        match bits {
            [4, point @ ..] if point.len() == 64 => Ok(PcrSigningKey::EcP256 {
                x: &point[..32],
                y: &point[32..],
            }),
            _ => Err("the EC key is not an uncompressed P-256 point".into()),
        }
    }

    /// The signed PCRs as a [`PcrPolicy`].
    pub fn pcr_policy(&self) -> PcrPolicy {
        PcrPolicy {
            bank: self.bank,
            pcrs: self.pcrs.clone(),
        }
    }
}

fn rsa_key(bits: &[u8]) -> Result<PcrSigningKey<'_>, String> {
    let key = pkcs1::RsaPublicKey::from_der(bits).map_err(|e| format!("not an RSA key: {e}"))?;
    let modulus = key.modulus.as_bytes();
    if !matches!(modulus.len() * 8, 1024 | 2048 | 3072 | 4096) {
        return Err(format!(
            "an RSA key of {} bits; use 2048 (or 1024, 3072, 4096)",
            modulus.len() * 8
        ));
    }
    let exponent = key.public_exponent.as_bytes();
    if exponent.len() > 4 {
        return Err("the RSA exponent is too large for a TPM".into());
    }
    let exponent = exponent.iter().fold(0u32, |e, &b| (e << 8) | u32::from(b));
    Ok(PcrSigningKey::Rsa { modulus, exponent })
}

/// The SubjectPublicKeyInfo in `der`, and its public key's own encoding.
fn subject_public_key(der: &[u8]) -> Result<(spki::SubjectPublicKeyInfoRef<'_>, &[u8]), String> {
    let info = spki::SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
    let bits = info
        .subject_public_key
        .as_bytes()
        .ok_or("the public key is not a whole number of bytes")?;
    Ok((info, bits))
}

/// systemd's fingerprint (`pkfp`) of the key in `spki_der`, a DER SubjectPublicKeyInfo:
/// lowercase hex SHA-256 of the key's own encoding inside it, which is what OpenSSL's
/// `i2d_PublicKey` gives (for RSA the PKCS#1 RSAPublicKey, for EC the uncompressed point),
/// not of the SubjectPublicKeyInfo as a whole.
pub fn fingerprint(spki_der: &[u8]) -> Result<String, String> {
    let (_, key) = subject_public_key(spki_der)?;
    Ok(Sha256::digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// What a TPM protector binds a new keyslot to, and where it finds the PCR signatures a
/// signed keyslot needs to unlock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TpmOptions {
    /// Enrolment: PCRs bound at their current values (TPM2_PolicyPCR).
    pub pcrs: Option<PcrPolicy>,
    /// Enrolment: PCRs bound to any values this key signs (TPM2_PolicyAuthorize).
    pub signed_pcrs: Option<SignedPcrPolicy>,
    /// Unlocking a keyslot with a signed policy: the signature file, in systemd's
    /// `tpm2-pcr-signature.json` format; [`DEFAULT_PCR_SIGNATURE`] when `None`.
    pub pcr_signature: Option<PathBuf>,
}

impl std::fmt::Display for PcrPolicy {
    /// The bank and the indices, as `sha256:0,7`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bank = match self.bank {
            PcrBank::Sha1 => "sha1",
            PcrBank::Sha256 => "sha256",
            PcrBank::Sha384 => "sha384",
        };
        let list: Vec<String> = self.pcrs.iter().map(u8::to_string).collect();
        write!(f, "{bank}:{}", list.join(","))
    }
}

/// A `tpm` keyslot's stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmSealed {
    /// The sealed object's public area (TPMT_PUBLIC), marshalled.
    #[serde(with = "crate::b64")]
    pub public: Vec<u8>,
    /// The sealed object's TPM2B_PRIVATE, encrypted by the TPM under its primary key.
    #[serde(with = "crate::b64")]
    pub private: Vec<u8>,
    /// The PCR policy the object is bound to, if any.
    pub pcr_policy: Option<PcrPolicy>,
    /// The signed PCR policy the object is bound to, if any. Records made before signed
    /// policies existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_pcr_policy: Option<SignedPcrPolicy>,
    /// Whether the object has a PIN (authValue).
    pub pin: bool,
    /// The node key wrapped under the sealed KEK.
    #[serde(flatten)]
    pub wrapped: Wrapped,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ECC P-256 public key, as `openssl pkey -pubout` writes it; SHA-256 of its point
    /// from `openssl pkey -pubout -outform DER | tail -c 65 | sha256sum`.
    const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEiLUKlrCqjMFgWfw16hukpXT28K1p
9pSVkN0SxW7yVJXPw/mlPjBxnPXpzqy0p1Drcy58saZ2+r0RnqAmT+VFwQ==
-----END PUBLIC KEY-----
";
    const P256_FINGERPRINT: &str =
        "51aeb7822b91330f52f417f59067f2b515eb07a423510e71db0daabced5570e9";
    const P384_PEM: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE3TU1VwsM5fjZ49c3STZ7oTEb1hmyPsQw
SFmII7F3KBcsvqDkfG3SH4gHOmFZ5DwmCwQxS0LUPoLTIptC0ExtwZW2IHHUjqV5
EOKkbONkE4hgaSCJmig/zxiPlIkougCX
-----END PUBLIC KEY-----
";

    fn pcr11() -> PcrPolicy {
        PcrPolicy {
            bank: PcrBank::Sha256,
            pcrs: DEFAULT_SIGNED_PCRS.to_vec(),
        }
    }

    #[test]
    fn signed_policy_keeps_the_key_and_systemds_fingerprint() {
        let policy = SignedPcrPolicy::from_pem(P256_PEM, pcr11()).unwrap();
        assert_eq!(policy.fingerprint, P256_FINGERPRINT);
        assert!(
            matches!(policy.key(), Ok(PcrSigningKey::EcP256 { x, y }) if x.len() == 32 && y.len() == 32)
        );
        assert_eq!(policy.pcr_policy().to_string(), "sha256:11");
        // The key itself never reaches Debug output, only what identifies it.
        let debug = format!("{policy:?}");
        assert!(debug.contains(P256_FINGERPRINT) && !debug.contains("public_key"));

        let mut tampered = policy.clone();
        tampered.fingerprint = "00".repeat(32);
        assert!(tampered.key().unwrap_err().contains("fingerprint"));
        let err = SignedPcrPolicy::from_pem(P384_PEM, pcr11()).unwrap_err();
        assert!(err.contains("not P-256"), "{err}");
        let private = "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";
        assert!(SignedPcrPolicy::from_pem(private, pcr11()).is_err());
        assert!(SignedPcrPolicy::from_pem("not PEM", pcr11()).is_err());
    }

    #[test]
    fn records_without_a_signed_policy_read_and_write_as_before() {
        let old = r#"{"public":"AAgACw","private":"ACA","pcr_policy":{"bank":"sha256","pcrs":[7]},"pin":false,"nonce":"AAAA","ciphertext":"AAAA"}"#;
        let record: TpmSealed = serde_json::from_str(old).unwrap();
        assert_eq!(record.signed_pcr_policy, None);
        let written = serde_json::to_string(&record).unwrap();
        assert!(!written.contains("signed_pcr_policy"), "{written}");

        let mut signed = record.clone();
        signed.signed_pcr_policy = Some(SignedPcrPolicy::from_pem(P256_PEM, pcr11()).unwrap());
        let written = serde_json::to_value(&signed).unwrap();
        assert_eq!(
            written["signed_pcr_policy"]["pcrs"],
            serde_json::json!([11])
        );
        assert_eq!(
            written["signed_pcr_policy"]["fingerprint"],
            P256_FINGERPRINT
        );
        let back: TpmSealed = serde_json::from_str(&written.to_string()).unwrap();
        assert_eq!(back, signed);
    }
}
