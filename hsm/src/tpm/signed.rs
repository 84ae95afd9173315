//! Signed PCR policies: TPM2_PolicyAuthorize by a key whose owner signs PCR values, as
//! `systemd-cryptenroll --tpm2-public-key` and `systemd-measure sign` do it.
//!
//! At enrolment the sealed object's policy is computed in a trial session:
//! `PolicyAuthorize(keyName, policyRef = empty)`, then the static PCRs, then the PIN. At
//! unlock, a policy session runs `PolicyPCR` over the signed PCRs with their current
//! values; the signature file's entry for that session's digest (the `pol` that
//! `systemd-measure sign` signed) is checked by the TPM (`VerifySignature` with the key
//! loaded by `LoadExternal`, giving a ticket), and `PolicyAuthorize` with that ticket
//! replaces the session's digest by the one the object was sealed to. A new kernel with a
//! new signature unseals the same object; an unsigned one has no entry, and a forged
//! entry does not verify.
//!
//! The key is loaded in the owner hierarchy, as systemd does: `VerifySignature` by a key
//! in the null hierarchy gives a null ticket, which `PolicyAuthorize` refuses.

use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_VERIFIED};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::PolicySession;
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, EccScheme, EccSignature, HashScheme,
    KeyDerivationFunctionScheme, Name, Nonce, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent, RsaScheme, RsaSignature, Signature,
    SymmetricDefinitionObject, VerifiedTicket,
};
use tss_esapi::tss2_esys::{TPM2B_DIGEST, TPMT_TK_VERIFIED};
use tss_esapi::{Error as TssError, WrapperErrorKind};

use super::{PcrSigningKey, SignedPcrPolicy, Transients, selection, tss_kind};
use crate::{Kind, PolicyFailure, UnwrapError, WrapError};

/// The most a signature file may hold: systemd's hold a few entries of a few hundred bytes.
const MAX_SIGNATURE_FILE: u64 = 64 * 1024;

/// One entry of a signature file that is for our key and PCRs: the policy digest its
/// owner signed, and the signature.
pub(super) struct Candidate {
    pol: Vec<u8>,
    sig: Vec<u8>,
}

/// An entry of systemd's `tpm2-pcr-signature.json`; entries lacking a field are skipped,
/// as systemd skips them.
#[derive(Deserialize)]
struct Entry {
    pcrs: Option<Vec<u32>>,
    pkfp: Option<String>,
    pol: Option<String>,
    sig: Option<String>,
}

/// Reads the signature file at `path` and keeps the entries for `policy`'s bank, PCRs and
/// key. Missing, unreadable, oversized or malformed files are errors; a file without an
/// entry for us is not (the unlock then fails as unsigned).
pub(super) fn read_signatures(
    path: &Path,
    policy: &SignedPcrPolicy,
) -> Result<Vec<Candidate>, UnwrapError> {
    let bad = |problem: String| UnwrapError::PcrSignatureFile {
        path: path.display().to_string(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            bad("missing: this boot provided no PCR signatures (is this a signed UKI?)".into())
        }
        _ => bad(format!("cannot be read: {e}")),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_SIGNATURE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > MAX_SIGNATURE_FILE {
        return Err(bad(format!(
            "larger than {} KiB; not a PCR signature file",
            MAX_SIGNATURE_FILE / 1024
        )));
    }
    let banks: std::collections::HashMap<String, Vec<Entry>> = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not systemd's tpm2-pcr-signature.json format: {e}")))?;
    let bank = serde_json::to_value(policy.bank)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut candidates = Vec::new();
    for entry in banks.get(&bank).into_iter().flatten() {
        let (Some(pcrs), Some(pkfp), Some(pol), Some(sig)) =
            (&entry.pcrs, &entry.pkfp, &entry.pol, &entry.sig)
        else {
            continue;
        };
        let mut pcrs = pcrs.clone();
        pcrs.sort_unstable();
        pcrs.dedup();
        let ours = pcrs
            .iter()
            .copied()
            .eq(policy.pcrs.iter().map(|&p| u32::from(p)));
        if !ours || !pkfp.eq_ignore_ascii_case(&policy.fingerprint) {
            continue;
        }
        let pol = hex(pol).ok_or_else(|| bad("an entry's \"pol\" is not hex".into()))?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .map_err(|_| bad("an entry's \"sig\" is not base64".into()))?;
        candidates.push(Candidate { pol, sig });
    }
    Ok(candidates)
}

fn hex(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// The signing key as a TPM public area: an unrestricted key, SHA-256 name, null scheme,
/// `userWithAuth`; for RSA, `decrypt` and `sign` as systemd's (so the key's name, and the
/// sealed object's policy, are the ones `systemd-cryptenroll` computes).
fn public_area(key: PcrSigningKey<'_>) -> Result<Public, TssError> {
    let invalid = || TssError::WrapperError(WrapperErrorKind::InvalidParam);
    let builder = PublicBuilder::new().with_name_hashing_algorithm(HashingAlgorithm::Sha256);
    match key {
        PcrSigningKey::Rsa { modulus, exponent } => {
            let bits = match modulus.len() * 8 {
                1024 => RsaKeyBits::Rsa1024,
                2048 => RsaKeyBits::Rsa2048,
                3072 => RsaKeyBits::Rsa3072,
                4096 => RsaKeyBits::Rsa4096,
                _ => return Err(invalid()),
            };
            let parameters = PublicRsaParametersBuilder::new()
                .with_scheme(RsaScheme::Null)
                .with_key_bits(bits)
                .with_exponent(RsaExponent::create(exponent)?)
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_is_signing_key(true)
                .with_is_decryption_key(true)
                .build()?;
            let attributes = ObjectAttributesBuilder::new()
                .with_decrypt(true)
                .with_sign_encrypt(true)
                .with_user_with_auth(true)
                .build()?;
            builder
                .with_public_algorithm(PublicAlgorithm::Rsa)
                .with_object_attributes(attributes)
                .with_rsa_parameters(parameters)
                .with_rsa_unique_identifier(PublicKeyRsa::try_from(modulus.to_vec())?)
                .build()
        }
        PcrSigningKey::EcP256 { x, y } => {
            let parameters = PublicEccParametersBuilder::new()
                .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_is_signing_key(true)
                .build()?;
            let attributes = ObjectAttributesBuilder::new()
                .with_sign_encrypt(true)
                .with_user_with_auth(true)
                .build()?;
            let point = EccPoint::new(
                EccParameter::try_from(x.to_vec())?,
                EccParameter::try_from(y.to_vec())?,
            );
            builder
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_object_attributes(attributes)
                .with_ecc_parameters(parameters)
                .with_ecc_unique_identifier(point)
                .build()
        }
        _ => Err(invalid()),
    }
}

/// `sig` as the TPM takes it: RSASSA-PKCS1-v1_5 bytes as they are, an ECDSA signature
/// from its DER encoding (what OpenSSL, and so `systemd-measure sign`, write).
fn signature(key: PcrSigningKey<'_>, sig: &[u8]) -> Option<Signature> {
    match key {
        PcrSigningKey::Rsa { .. } => {
            let sig = PublicKeyRsa::try_from(sig.to_vec()).ok()?;
            Some(Signature::RsaSsa(
                RsaSignature::create(HashingAlgorithm::Sha256, sig).ok()?,
            ))
        }
        PcrSigningKey::EcP256 { .. } => {
            let sig = p256::ecdsa::Signature::from_der(sig).ok()?;
            let (r, s) = sig.split_bytes();
            Some(Signature::EcDsa(
                EccSignature::create(
                    HashingAlgorithm::Sha256,
                    EccParameter::try_from(r.to_vec()).ok()?,
                    EccParameter::try_from(s.to_vec()).ok()?,
                )
                .ok()?,
            ))
        }
        _ => None,
    }
}

/// The ticket a trial session's PolicyAuthorize takes: the TPM checks none there.
fn null_ticket() -> Result<VerifiedTicket, TssError> {
    VerifiedTicket::try_from(TPMT_TK_VERIFIED {
        tag: TPM2_ST_VERIFIED,
        hierarchy: TPM2_RH_NULL,
        digest: TPM2B_DIGEST {
            size: 0,
            buffer: [0; 64],
        },
    })
}

impl Transients<'_> {
    /// Loads the public key of `key` (owner hierarchy, public part only) and returns its
    /// handle, kept for flushing, and its name.
    fn load_signing_key(&mut self, key: PcrSigningKey<'_>) -> Result<(KeyHandle, Name), TssError> {
        let public = public_area(key)?;
        let handle = self
            .ctx
            .execute_without_session(|ctx| ctx.load_external_public(public, Hierarchy::Owner))?;
        self.keep(handle);
        let name = self.ctx.tr_get_name(handle.into())?;
        Ok((handle, name))
    }

    /// Enrolment: PolicyAuthorize by `policy`'s key in the trial session `session`.
    pub(super) fn trial_authorize(
        &mut self,
        session: PolicySession,
        policy: &SignedPcrPolicy,
    ) -> Result<(), WrapError> {
        let invalid = |e: String| WrapError::Invalid(format!("the PCR signing key: {e}"));
        let key = policy.key().map_err(invalid)?;
        selection(&policy.pcr_policy())
            .map_err(|e| invalid(format!("signed PCR selection not supported: {e}")))?;
        let (handle, name) = self
            .load_signing_key(key)
            .map_err(|e| invalid(format!("the TPM refuses it: {e}")))?;
        self.release(handle);
        let ticket = null_ticket().map_err(|e| WrapError::token(Kind::Tpm, e))?;
        self.ctx
            .execute_without_session(|ctx| {
                ctx.policy_authorize(session, Digest::default(), Nonce::default(), &name, ticket)
            })
            .map_err(|e| WrapError::token(Kind::Tpm, e))
    }

    /// Unlock: PolicyPCR over the signed PCRs in `session`, then PolicyAuthorize with the
    /// TPM's ticket for the candidate signed for that session's digest.
    pub(super) fn authorize(
        &mut self,
        session: PolicySession,
        policy: &SignedPcrPolicy,
        candidates: &[Candidate],
    ) -> Result<(), UnwrapError> {
        let token = |e: TssError| UnwrapError::token(Kind::Tpm, e);
        let key = policy
            .key()
            .map_err(|_| UnwrapError::Corrupt("the signed PCR policy's public key"))?;
        let pcrs = policy.pcr_policy();
        let selection =
            selection(&pcrs).map_err(|_| UnwrapError::Corrupt("the signed PCR selection"))?;
        let approved = self
            .ctx
            .execute_without_session(|ctx| {
                ctx.policy_pcr(session, Digest::default(), selection)?;
                ctx.policy_get_digest(session)
            })
            .map_err(token)?;
        let candidate = candidates
            .iter()
            .find(|c| c.pol.as_slice() == approved.value())
            .ok_or_else(|| UnwrapError::PolicyMismatch {
                reason: PolicyFailure::Unsigned {
                    pcrs: pcrs.to_string(),
                },
            })?;
        let bad_signature = || UnwrapError::PolicyMismatch {
            reason: PolicyFailure::BadSignature {
                pcrs: pcrs.to_string(),
            },
        };
        let signature = signature(key, &candidate.sig).ok_or_else(bad_signature)?;
        // aHash = H(approvedPolicy || policyRef), with an empty policyRef.
        let a_hash = Digest::try_from(Sha256::digest(&candidate.pol).to_vec()).map_err(token)?;
        let (handle, name) = self.load_signing_key(key).map_err(token)?;
        let ticket = self
            .ctx
            .execute_without_session(|ctx| ctx.verify_signature(handle, a_hash, signature));
        self.release(handle);
        let ticket = ticket.map_err(|e| match tss_kind(&e) {
            Some(Tss2ResponseCodeKind::Signature) => bad_signature(),
            _ => token(e),
        })?;
        self.ctx
            .execute_without_session(|ctx| {
                ctx.policy_authorize(session, approved, Nonce::default(), &name, ticket)
            })
            .map_err(token)
    }
}
