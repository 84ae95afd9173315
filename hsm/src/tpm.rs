//! The `tpm` protector: a TPM 2.0 sealed data object (tss-esapi 7.x, libtss2 3.2).
//!
//! Enrolment recreates the owner hierarchy's ECC P-256 storage primary key from its
//! template (the same TPM always derives the same key), creates a sealed data object under
//! it holding a fresh random 32-byte key-encryption key (KEK), and wraps the node's key
//! under that KEK with XChaCha20-Poly1305 and the caller's `aad`. The object's public and
//! private blobs are stored; the private blob is encrypted by the TPM under the primary
//! key and is useless on any other TPM.
//!
//! Options chosen at enrolment:
//! - a PCR policy (a bank and a set of PCR indices): the object unseals only while those
//!   PCRs hold the values they had at enrolment (TPM2_PolicyPCR);
//! - a signed PCR policy (a public key and PCRs, usually 11): the object unseals while
//!   those PCRs hold any values the key's owner has signed, in systemd's
//!   `tpm2-pcr-signature.json` (TPM2_PolicyAuthorize, before the PCR policy; see
//!   `signed`), so that a signed kernel update keeps the keyslot;
//! - a PIN: the object's authValue. Dictionary-attack protection stays on, so wrong PINs
//!   count towards the TPM's lockout.
//!
//! Every command that carries the KEK or the PIN runs in a session salted with the
//! primary key, with parameter encryption both ways. Each operation opens its own
//! connection and flushes every transient object and session it made, because a TPM
//! without a resource manager (swtpm) holds only about three transient objects.
//!
//! Beside the protector, [`NvCounter`] is a TPM NV monotonic counter, with which the
//! appliance detects a rolled-back data partition; it is no keyslot and keeps no secret.
//!
//! The stored record ([`TpmSealed`]) and the options it keeps ([`PcrPolicy`],
//! [`SignedPcrPolicy`], [`PcrBank`], [`TpmOptions`], [`DEFAULT_TCTI`]) are `hsm-core`'s `tpm` module, re-exported here, so that keyslots can be
//! read without linking libtss2.

mod counter;
mod signed;

use std::path::Path;
use std::str::FromStr;

use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{PropertyTag, SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot,
    Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, Error as TssError};
use zeroize::Zeroizing;

use crate::{
    DataKey, Kind, Pin, PolicyFailure, Protector, Sealed, UnwrapError, WrapError, Wrapped,
};

pub use counter::{CounterError, NvCounter, OWNER_NV_INDEXES, PK_ROLLBACK_COUNTER_INDEX};
pub use hsm_core::tpm::*;

/// The TPM's name for the hash algorithm of `bank`.
fn algorithm(bank: PcrBank) -> HashingAlgorithm {
    match bank {
        PcrBank::Sha1 => HashingAlgorithm::Sha1,
        PcrBank::Sha256 => HashingAlgorithm::Sha256,
        PcrBank::Sha384 => HashingAlgorithm::Sha384,
    }
}

/// The PCRs of `policy`, as the TPM selects them.
fn selection(policy: &PcrPolicy) -> Result<PcrSelectionList, TssError> {
    let slots = policy
        .pcrs
        .iter()
        .map(|&n| PcrSlot::try_from(1u32 << n))
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(algorithm(policy.bank), &slots)
        .build()
}

/// Unlock by TPM 2.0.
pub struct TpmProtector {
    tcti: String,
    pin: Option<Pin>,
    options: TpmOptions,
}

impl TpmProtector {
    /// A protector talking to the TPM at `tcti` (for example [`DEFAULT_TCTI`] or
    /// `swtpm:host=127.0.0.1,port=2321`), with an optional PIN.
    pub fn new(tcti: impl Into<String>, pin: Option<Pin>) -> Self {
        TpmProtector {
            tcti: tcti.into(),
            pin,
            options: TpmOptions::default(),
        }
    }

    /// Binds objects sealed by this protector to `policy`. Unsealing reads the policy
    /// from the stored record, so this only matters for [`Protector::wrap`].
    pub fn with_pcr_policy(mut self, policy: PcrPolicy) -> Self {
        self.options.pcrs = Some(policy);
        self
    }

    /// Binds objects sealed by this protector to `policy` as well: any values of its PCRs
    /// that its key signs. Like [`TpmProtector::with_pcr_policy`], for wrapping only.
    pub fn with_signed_pcr_policy(mut self, policy: SignedPcrPolicy) -> Self {
        self.options.signed_pcrs = Some(policy);
        self
    }

    /// Reads the PCR signatures from `path` when unsealing an object with a signed
    /// policy, instead of [`DEFAULT_PCR_SIGNATURE`].
    pub fn with_pcr_signature(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.options.pcr_signature = Some(path.into());
        self
    }

    /// All the options at once, as [`crate::Drivers::tpm`] hands them over.
    pub fn with_options(mut self, options: TpmOptions) -> Self {
        self.options = options;
        self
    }

    fn pcr_signature(&self) -> &Path {
        self.options
            .pcr_signature
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_PCR_SIGNATURE))
    }

    fn connect(&self) -> Result<Context, String> {
        connect(&self.tcti)
    }

    fn auth(&self) -> Result<Option<Auth>, TssError> {
        match &self.pin {
            Some(pin) if !pin.is_empty() => Ok(Some(Auth::try_from(pin.expose().to_vec())?)),
            _ => Ok(None),
        }
    }
}

/// A connection to the TPM at `tcti`; the error says which TPM was not there, and why.
fn connect(tcti: &str) -> Result<Context, String> {
    let conf = TctiNameConf::from_str(tcti).map_err(|e| format!("invalid TCTI {tcti:?}: {e}"))?;
    Context::new(conf).map_err(|e| format!("no TPM at {tcti}: {e}"))
}

fn tss_kind(e: &TssError) -> Option<Tss2ResponseCodeKind> {
    match e {
        TssError::Tss2Error(rc) => rc.kind(),
        TssError::WrapperError(_) => None,
    }
}

/// The owner hierarchy's ECC P-256 storage primary key template (TCG "SRK" shape).
fn primary_template() -> Result<Public, TssError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    let ecc = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(ecc)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

fn sealed_template(policy: Option<Digest>, has_pin: bool) -> Result<Public, TssError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        // Dictionary-attack protection guards the PIN. An object without one has nothing
        // to guess; exempting it keeps a lockout caused by wrong PINs elsewhere from
        // blocking unattended unlock.
        .with_no_da(!has_pin)
        // Without a policy, the authValue (PIN or empty) authorises use; with one, only
        // the policy does, and the PIN enters it through PolicyAuthValue.
        .with_user_with_auth(policy.is_none())
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(policy.unwrap_or_default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// Objects and sessions made during one operation, flushed when it ends, success or not.
struct Transients<'a> {
    ctx: &'a mut Context,
    handles: Vec<ObjectHandle>,
}

impl<'a> Transients<'a> {
    fn new(ctx: &'a mut Context) -> Self {
        Transients {
            ctx,
            handles: Vec::new(),
        }
    }

    fn keep(&mut self, handle: impl Into<ObjectHandle>) {
        self.handles.push(handle.into());
    }

    fn primary(&mut self) -> Result<KeyHandle, TssError> {
        let template = primary_template()?;
        let primary = self.ctx.execute_with_nullauth_session(|ctx| {
            ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })?;
        self.keep(primary.key_handle);
        Ok(primary.key_handle)
    }

    /// A session salted with `primary`, encrypting command and response parameters.
    fn session(&mut self, primary: KeyHandle, kind: SessionType) -> Result<AuthSession, TssError> {
        let session = self
            .ctx
            .start_auth_session(
                Some(primary),
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )?
            .ok_or(TssError::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            ))?;
        self.keep(SessionHandle::from(session));
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        self.ctx.tr_sess_set_attributes(session, attributes, mask)?;
        Ok(session)
    }

    /// Runs the policy commands that follow any PolicyAuthorize in `policy`: PolicyPCR for
    /// `pcr_policy`, PolicyAuthValue for `pin`.
    fn policy(
        &mut self,
        policy: PolicySession,
        pcr_policy: Option<&PcrPolicy>,
        pin: bool,
    ) -> Result<(), TssError> {
        let selection = pcr_policy.map(selection).transpose()?;
        self.ctx.execute_without_session(|ctx| {
            if let Some(selection) = selection {
                // An empty digest makes the TPM use the PCRs' current values.
                ctx.policy_pcr(policy, Digest::default(), selection)?;
            }
            if pin {
                ctx.policy_auth_value(policy)?;
            }
            Ok::<_, TssError>(())
        })
    }

    /// Flushes `handle` now rather than when the operation ends, to make room: swtpm
    /// holds about three transient objects.
    fn release(&mut self, handle: impl Into<ObjectHandle>) {
        let handle = handle.into();
        self.handles.retain(|&h| h != handle);
        let _ = self.ctx.flush_context(handle);
    }

    /// What a failed unseal means to the user: a wrong PIN (with the attempts left), a
    /// lockout, PCRs that no longer match the policy, or another token error.
    fn unseal_error(&mut self, e: TssError) -> UnwrapError {
        match tss_kind(&e) {
            Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
                match self.retries_left() {
                    // That attempt used the last one: the TPM is now locked out.
                    Some(0) => UnwrapError::PinBlocked,
                    retries_left => UnwrapError::WrongPin { retries_left },
                }
            }
            Some(Tss2ResponseCodeKind::Lockout) => UnwrapError::PinBlocked,
            Some(Tss2ResponseCodeKind::PolicyFail | Tss2ResponseCodeKind::PcrChanged) => {
                UnwrapError::PolicyMismatch {
                    reason: PolicyFailure::PcrsChanged,
                }
            }
            _ => UnwrapError::token(Kind::Tpm, e),
        }
    }

    /// Attempts left before dictionary-attack lockout, as the TPM reports it.
    fn retries_left(&mut self) -> Option<u32> {
        let max = self.ctx.get_tpm_property(PropertyTag::MaxAuthFail).ok()??;
        let used = self
            .ctx
            .get_tpm_property(PropertyTag::LockoutCounter)
            .ok()??;
        Some(max.saturating_sub(used))
    }
}

impl Drop for Transients<'_> {
    fn drop(&mut self) {
        for handle in self.handles.drain(..).rev() {
            // A session the TPM already closed (continueSession clear) cannot be flushed
            // again; nothing else is left behind.
            let _ = self.ctx.flush_context(handle);
        }
    }
}

impl TpmProtector {
    /// The sealed object's policy digest, computed in a trial session: PolicyAuthorize for
    /// a signed policy, then PolicyPCR, then PolicyAuthValue with a PIN. `None` without
    /// PCRs of either kind: the object's authValue alone then authorises it.
    fn trial_policy(
        &self,
        t: &mut Transients<'_>,
        primary: KeyHandle,
        has_pin: bool,
    ) -> Result<Option<Digest>, WrapError> {
        let token = |e: TssError| WrapError::token(Kind::Tpm, e);
        if self.options.pcrs.is_none() && self.options.signed_pcrs.is_none() {
            return Ok(None);
        }
        if let Some(pcr_policy) = &self.options.pcrs {
            selection(pcr_policy)
                .map_err(|e| WrapError::Invalid(format!("PCR selection not supported: {e}")))?;
        }
        let trial = t.session(primary, SessionType::Trial).map_err(token)?;
        let trial = PolicySession::try_from(trial).map_err(token)?;
        if let Some(signed) = &self.options.signed_pcrs {
            t.trial_authorize(trial, signed)?;
        }
        t.policy(trial, self.options.pcrs.as_ref(), has_pin)
            .map_err(token)?;
        Ok(Some(t.ctx.policy_get_digest(trial).map_err(token)?))
    }
}

/// Loads the sealed object of `s` under `primary`, with the PIN as its authValue.
fn load_sealed(
    t: &mut Transients<'_>,
    primary: KeyHandle,
    s: &TpmSealed,
    auth: Option<Auth>,
) -> Result<KeyHandle, UnwrapError> {
    let token = |e: TssError| UnwrapError::token(Kind::Tpm, e);
    let public =
        Public::unmarshall(&s.public).map_err(|_| UnwrapError::Corrupt("TPM public blob"))?;
    let private = Private::try_from(s.private.clone())
        .map_err(|_| UnwrapError::Corrupt("TPM private blob"))?;
    let object = t
        .ctx
        .execute_with_nullauth_session(|ctx| ctx.load(primary, private, public))
        .map_err(|e| match tss_kind(&e) {
            Some(Tss2ResponseCodeKind::Integrity) => UnwrapError::KeyNotOnToken(
                "the object was sealed by another TPM, or this TPM was cleared".into(),
            ),
            _ => token(e),
        })?;
    t.keep(object);
    if let Some(auth) = auth {
        t.ctx.tr_set_auth(object.into(), auth).map_err(token)?;
    }
    Ok(object)
}

/// The session that authorises unsealing `s`: a policy session that has run the object's
/// policy, or without one an HMAC session (the authValue alone).
fn unseal_session(
    t: &mut Transients<'_>,
    primary: KeyHandle,
    s: &TpmSealed,
    signatures: &[signed::Candidate],
) -> Result<AuthSession, UnwrapError> {
    let token = |e: TssError| UnwrapError::token(Kind::Tpm, e);
    if s.pcr_policy.is_none() && s.signed_pcr_policy.is_none() {
        return t.session(primary, SessionType::Hmac).map_err(token);
    }
    let session = t.session(primary, SessionType::Policy).map_err(token)?;
    let policy = PolicySession::try_from(session).map_err(token)?;
    if let Some(signed) = &s.signed_pcr_policy {
        t.authorize(policy, signed, signatures)?;
    }
    t.policy(policy, s.pcr_policy.as_ref(), s.pin)
        .map_err(|e| match tss_kind(&e) {
            Some(Tss2ResponseCodeKind::PcrChanged) => UnwrapError::PolicyMismatch {
                reason: PolicyFailure::PcrsChanged,
            },
            _ => token(e),
        })?;
    Ok(session)
}

impl Protector for TpmProtector {
    fn kind(&self) -> Kind {
        Kind::Tpm
    }

    fn wrap(&self, key: &DataKey, aad: &[u8]) -> Result<Sealed, WrapError> {
        let token = |e: TssError| WrapError::token(Kind::Tpm, e);
        let mut ctx = self
            .connect()
            .map_err(|what| WrapError::TokenAbsent { what })?;
        let mut t = Transients::new(&mut ctx);
        let has_pin = self.pin.as_ref().is_some_and(|p| !p.is_empty());
        let primary = t.primary().map_err(token)?;
        let policy_digest = self.trial_policy(&mut t, primary, has_pin)?;

        let kek = DataKey::generate();
        let sensitive = SensitiveData::try_from(kek.expose().to_vec()).map_err(token)?;
        let template = sealed_template(policy_digest, has_pin).map_err(token)?;
        let auth = self
            .auth()
            .map_err(|_| WrapError::Invalid("the PIN is too long".into()))?;
        let session = t.session(primary, SessionType::Hmac).map_err(token)?;
        let created = t
            .ctx
            .execute_with_session(Some(session), |ctx| {
                ctx.create(primary, template, auth, Some(sensitive), None, None)
            })
            .map_err(token)?;
        let public = created.out_public.marshall().map_err(token)?;
        let private = created.out_private.value().to_vec();
        drop(t);

        let wrapped = Wrapped::seal(&kek, key, aad);
        Ok(Sealed::Tpm(TpmSealed {
            public,
            private,
            pcr_policy: self.options.pcrs.clone(),
            signed_pcr_policy: self.options.signed_pcrs.clone(),
            pin: has_pin,
            wrapped,
        }))
    }

    fn unwrap(&self, sealed: &Sealed, aad: &[u8]) -> Result<DataKey, UnwrapError> {
        let Sealed::Tpm(s) = sealed else {
            return Err(UnwrapError::wrong_kind(Kind::Tpm, sealed));
        };
        if s.pin && self.pin.as_ref().is_none_or(|p| p.is_empty()) {
            return Err(UnwrapError::PinRequired);
        }
        let auth = match s.pin {
            true => Some(
                self.auth()
                    .map_err(|_| UnwrapError::WrongPin { retries_left: None })?
                    .unwrap_or_default(),
            ),
            false => None,
        };
        // The signatures are read before the TPM is touched: a boot without them fails
        // plainly, whatever the TPM's state.
        let signatures = match &s.signed_pcr_policy {
            Some(policy) => signed::read_signatures(self.pcr_signature(), policy)?,
            None => Vec::new(),
        };
        // A PCR extended while the policy session runs (the boot measures things as it
        // goes: systemd extends PCR 15 at the same time as the data partition opens) fails
        // the session with TPM_RC_PCR_CHANGED, which says nothing about the values: try
        // again. PCRs that really differ fail the same way each time.
        let mut attempt = 1;
        loop {
            match self.unseal(s, auth.clone(), &signatures, aad) {
                Err(UnwrapError::PolicyMismatch {
                    reason: PolicyFailure::PcrsChanged,
                }) if attempt < PCR_CHANGED_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => return result,
            }
        }
    }
}

/// How many times an unseal is tried while PCRs change under it.
const PCR_CHANGED_ATTEMPTS: u32 = 10;

impl TpmProtector {
    /// One unseal attempt (see `unwrap`).
    fn unseal(
        &self,
        s: &TpmSealed,
        auth: Option<Auth>,
        signatures: &[signed::Candidate],
        aad: &[u8],
    ) -> Result<DataKey, UnwrapError> {
        let token = |e: TssError| UnwrapError::token(Kind::Tpm, e);
        let mut ctx = self
            .connect()
            .map_err(|what| UnwrapError::TokenAbsent { what })?;
        let mut t = Transients::new(&mut ctx);
        let primary = t.primary().map_err(token)?;
        let object = load_sealed(&mut t, primary, s, auth)?;
        let session = unseal_session(&mut t, primary, s, signatures)?;
        let unsealed = t
            .ctx
            .execute_with_session(Some(session), |ctx| ctx.unseal(object.into()));
        let unsealed = match unsealed {
            Ok(data) => Zeroizing::new(data.value().to_vec()),
            Err(e) => return Err(t.unseal_error(e)),
        };
        drop(t);
        let kek = DataKey::try_from_slice(&unsealed)
            .ok_or(UnwrapError::Corrupt("TPM sealed object has the wrong size"))?;
        s.wrapped
            .open(&kek, aad)
            .ok_or(UnwrapError::Corrupt("wrapped key does not authenticate"))
    }
}
