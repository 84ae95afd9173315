//! The tests every protector must pass, run once per backend.

use std::any::Any;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;

use hsm::pkcs11::Pkcs11Protector;
use hsm::recovery::{RecoveryCode, RecoveryProtector};
use hsm::soft::{Argon2Params, SoftProtector};
use hsm::tpm::{PcrBank, PcrPolicy, TpmProtector};
use hsm::{DataKey, Kind, Pin, Protector, Sealed, UnwrapError};
use libtest_mimic::{Failed, Trial};

use crate::TestResult;
use crate::fixtures::{TestToken, TestTpm};

/// A protector, one of the same kind with a wrong credential, and the simulators they use.
pub(crate) struct Setup {
    good: Box<dyn Protector>,
    wrong: Box<dyn Protector>,
    is_wrong_credential: fn(&UnwrapError) -> bool,
    _keep: Box<dyn Any + Send>,
}

type SetupFn = fn() -> Result<Setup, Failed>;

const BACKENDS: &[(&str, SetupFn)] = &[
    ("soft", soft),
    ("recovery", recovery),
    ("tpm", tpm_plain),
    ("tpm_pin", tpm_pin),
    ("tpm_pcr_pin", tpm_pcr_pin),
    ("pkcs11", pkcs11),
];

type TestFn = fn(Setup) -> TestResult;

const TESTS: &[(&str, TestFn)] = &[
    ("round_trip", round_trip),
    ("wrong_credential_refused", wrong_credential_refused),
    ("other_aad_refused", other_aad_refused),
    ("tampered_record_refused", tampered_record_refused),
    ("other_kind_refused", other_kind_refused),
];

pub(crate) fn trials(trials: &mut Vec<Trial>) {
    for &(backend, setup) in BACKENDS {
        for &(name, test) in TESTS {
            trials.push(Trial::test(format!("{backend}::{name}"), move || {
                test(setup()?)
            }));
        }
    }
}

fn soft() -> Result<Setup, Failed> {
    let params = Argon2Params::INSECURE_FOR_TESTS;
    Ok(Setup {
        good: Box::new(SoftProtector::new(Pin::from("correct horse"), params)),
        wrong: Box::new(SoftProtector::new(Pin::from("battery staple"), params)),
        is_wrong_credential: |e| matches!(e, UnwrapError::WrongPassphrase),
        _keep: Box::new(()),
    })
}

fn recovery() -> Result<Setup, Failed> {
    Ok(Setup {
        good: Box::new(RecoveryProtector::new(RecoveryCode::generate())),
        wrong: Box::new(RecoveryProtector::new(RecoveryCode::generate())),
        is_wrong_credential: |e| matches!(e, UnwrapError::WrongRecoveryCode),
        _keep: Box::new(()),
    })
}

fn tpm_plain() -> Result<Setup, Failed> {
    let tpm = TestTpm::start()?;
    // Without a PIN there is no wrong credential; a PIN given to a PIN-less slot is
    // ignored, so "wrong" here is a different TPM: the sealed object is not on it.
    let other = TestTpm::start()?;
    Ok(Setup {
        good: Box::new(TpmProtector::new(tpm.tcti(), None)),
        wrong: Box::new(TpmProtector::new(other.tcti(), None)),
        is_wrong_credential: |e| matches!(e, UnwrapError::KeyNotOnToken(_)),
        _keep: Box::new((tpm, other)),
    })
}

fn tpm_pin() -> Result<Setup, Failed> {
    let tpm = TestTpm::start()?;
    Ok(Setup {
        good: Box::new(TpmProtector::new(tpm.tcti(), Some(Pin::from("2468")))),
        wrong: Box::new(TpmProtector::new(tpm.tcti(), Some(Pin::from("1357")))),
        is_wrong_credential: |e| matches!(e, UnwrapError::WrongPin { .. }),
        _keep: Box::new(tpm),
    })
}

fn tpm_pcr_pin() -> Result<Setup, Failed> {
    let tpm = TestTpm::start()?;
    let policy = PcrPolicy::parse_list(PcrBank::Sha256, "0,7,16")?;
    Ok(Setup {
        good: Box::new(
            TpmProtector::new(tpm.tcti(), Some(Pin::from("2468"))).with_pcr_policy(policy),
        ),
        wrong: Box::new(TpmProtector::new(tpm.tcti(), Some(Pin::from("1357")))),
        is_wrong_credential: |e| matches!(e, UnwrapError::WrongPin { .. }),
        _keep: Box::new(tpm),
    })
}

fn pkcs11() -> Result<Setup, Failed> {
    let token = TestToken::create()?;
    let module = TestToken::module();
    Ok(Setup {
        good: Box::new(Pkcs11Protector::new(
            &module,
            &token.label,
            Pin::from(token.pin),
        )),
        wrong: Box::new(Pkcs11Protector::new(
            &module,
            &token.label,
            Pin::from("not-the-pin"),
        )),
        is_wrong_credential: |e| matches!(e, UnwrapError::WrongPin { .. }),
        _keep: Box::new(token),
    })
}

const AAD: &[u8] = b"slot header v1";

fn round_trip(s: Setup) -> TestResult {
    let key = DataKey::generate();
    let sealed = s.good.wrap(&key, AAD)?;
    assert_eq!(sealed.kind(), s.good.kind());
    // The record is what goes to disk: it must survive serialisation and hold no key.
    let json = serde_json::to_string(&sealed)?;
    assert!(!json.contains(&STANDARD_NO_PAD.encode(key.expose())));
    let stored: Sealed = serde_json::from_str(&json)?;
    let back = s.good.unwrap(&stored, AAD)?;
    assert_eq!(back.expose(), key.expose(), "unwrapped key differs");
    // And it unwraps again: nothing was consumed.
    assert_eq!(s.good.unwrap(&stored, AAD)?.expose(), key.expose());
    Ok(())
}

fn wrong_credential_refused(s: Setup) -> TestResult {
    let key = DataKey::generate();
    let sealed = s.good.wrap(&key, AAD)?;
    match s.wrong.unwrap(&sealed, AAD) {
        Ok(_) => Err("unwrapped with the wrong credential".into()),
        Err(e) if (s.is_wrong_credential)(&e) => {
            // And the right one still works afterwards.
            assert_eq!(s.good.unwrap(&sealed, AAD)?.expose(), key.expose());
            Ok(())
        }
        Err(e) => Err(format!("unexpected error for a wrong credential: {e:?}").into()),
    }
}

fn other_aad_refused(s: Setup) -> TestResult {
    let sealed = s.good.wrap(&DataKey::generate(), AAD)?;
    match s.good.unwrap(&sealed, b"another header") {
        Ok(_) => Err("unwrapped with a different header".into()),
        Err(
            UnwrapError::Corrupt(_) | UnwrapError::WrongPassphrase | UnwrapError::WrongRecoveryCode,
        ) => Ok(()),
        Err(e) => Err(format!("unexpected error: {e:?}").into()),
    }
}

fn tampered_record_refused(s: Setup) -> TestResult {
    let sealed = s.good.wrap(&DataKey::generate(), AAD)?;
    for damage in [flip_last_bit as fn(&mut Vec<u8>), truncate_half, clear] {
        let mut bad = sealed.clone();
        damage(nonce_and_ciphertext(&mut bad).1);
        if s.good.unwrap(&bad, AAD).is_ok() {
            return Err("a damaged ciphertext unwrapped".into());
        }
        let mut bad = sealed.clone();
        damage(nonce_and_ciphertext(&mut bad).0);
        if s.good.unwrap(&bad, AAD).is_ok() {
            return Err("a damaged nonce/IV unwrapped".into());
        }
    }
    Ok(())
}

fn other_kind_refused(s: Setup) -> TestResult {
    let other: Box<dyn Protector> = if s.good.kind() == Kind::Soft {
        Box::new(RecoveryProtector::new(RecoveryCode::generate()))
    } else {
        Box::new(SoftProtector::new(
            Pin::from("x"),
            Argon2Params::INSECURE_FOR_TESTS,
        ))
    };
    let sealed = other.wrap(&DataKey::generate(), AAD)?;
    match s.good.unwrap(&sealed, AAD) {
        Err(UnwrapError::WrongKind { expected, found }) => {
            assert_eq!(expected, s.good.kind());
            assert_eq!(found, other.kind());
            Ok(())
        }
        other => Err(format!("expected WrongKind, got {:?}", other.map(|_| ())).into()),
    }
}

fn flip_last_bit(bytes: &mut Vec<u8>) {
    // Same signature as the other damages, which change the length.
    #![allow(clippy::ptr_arg)]
    if let Some(b) = bytes.last_mut() {
        *b ^= 1;
    }
}

fn truncate_half(bytes: &mut Vec<u8>) {
    bytes.truncate(bytes.len() / 2);
}

fn clear(bytes: &mut Vec<u8>) {
    bytes.clear();
}

/// The record's nonce (the IV for PKCS#11) and ciphertext, to damage.
fn nonce_and_ciphertext(sealed: &mut Sealed) -> (&mut Vec<u8>, &mut Vec<u8>) {
    let wrapped = match sealed {
        Sealed::Pkcs11(s) => return (&mut s.iv, &mut s.ciphertext),
        Sealed::Tpm(s) => &mut s.wrapped,
        Sealed::Soft(s) => &mut s.wrapped,
        Sealed::Recovery(s) => &mut s.wrapped,
        _ => unreachable!("new backend: add it here"),
    };
    (&mut wrapped.nonce, &mut wrapped.ciphertext)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
