//! Tests only a TPM can have: PIN retries and lockout, PCR policy, another TPM, restarts,
//! and nothing left loaded.

use hsm::sim::Swtpm;
use hsm::tpm::{PcrBank, PcrPolicy, TpmProtector};
use hsm::{DataKey, Pin, Protector, UnwrapError};
use libtest_mimic::Trial;

use crate::fixtures::TestTpm;
use crate::{TestResult, trial};

const AAD: &[u8] = b"slot header v1";

pub(crate) fn trials(trials: &mut Vec<Trial>) {
    trials.extend([
        trial(
            "tpm::wrong_pin_counts_down_then_blocks",
            wrong_pin_counts_down_then_blocks,
        ),
        trial("tpm::pin_required", pin_required),
        trial(
            "tpm::pcr_change_refused_until_reset",
            pcr_change_refused_until_reset,
        ),
        trial("tpm::fresh_tpm_cannot_unwrap", fresh_tpm_cannot_unwrap),
        trial(
            "tpm::survives_restart_with_same_state",
            survives_restart_with_same_state,
        ),
        trial(
            "tpm::absent_tpm_is_token_absent",
            absent_tpm_is_token_absent,
        ),
        trial("tpm::no_transient_objects_left", no_transient_objects_left),
    ]);
}

fn wrong_pin_counts_down_then_blocks() -> TestResult {
    let tpm = TestTpm::start()?;
    let good = TpmProtector::new(tpm.tcti(), Some(Pin::from("2468")));
    let wrong = TpmProtector::new(tpm.tcti(), Some(Pin::from("0000")));
    let key = DataKey::generate();
    let sealed = good.wrap(&key, AAD)?;
    let unattended = TpmProtector::new(tpm.tcti(), None);
    let unattended_sealed = unattended.wrap(&key, AAD)?;

    let mut previous = None;
    let mut blocked = false;
    for _ in 0..64 {
        match wrong.unwrap(&sealed, AAD) {
            Err(UnwrapError::WrongPin {
                retries_left: Some(n),
            }) => {
                if let Some(p) = previous {
                    assert!(n < p, "retries left did not go down: {p} then {n}");
                }
                previous = Some(n);
            }
            Err(UnwrapError::PinBlocked) => {
                blocked = true;
                break;
            }
            other => return Err(format!("unexpected: {:?}", other.map(|_| ())).into()),
        }
    }
    assert!(previous.is_some(), "never reported retries left");
    assert!(blocked, "the TPM never locked out");
    // Locked out: even the right PIN is refused, with the same clear error...
    assert!(matches!(
        good.unwrap(&sealed, AAD),
        Err(UnwrapError::PinBlocked)
    ));
    // ...but a slot without a PIN has nothing to guess and still unlocks unattended.
    assert_eq!(
        unattended.unwrap(&unattended_sealed, AAD)?.expose(),
        key.expose()
    );
    // The owner clears the lockout (lockout hierarchy, empty auth on a fresh swtpm).
    tpm.tool("tpm2_dictionarylockout", &["--clear-lockout"])?;
    assert_eq!(good.unwrap(&sealed, AAD)?.expose(), key.expose());
    Ok(())
}

fn pin_required() -> TestResult {
    let tpm = TestTpm::start()?;
    let sealed =
        TpmProtector::new(tpm.tcti(), Some(Pin::from("2468"))).wrap(&DataKey::generate(), AAD)?;
    match TpmProtector::new(tpm.tcti(), None).unwrap(&sealed, AAD) {
        Err(UnwrapError::PinRequired) => Ok(()),
        other => Err(format!("expected PinRequired, got {:?}", other.map(|_| ())).into()),
    }
}

fn pcr_change_refused_until_reset() -> TestResult {
    let tpm = TestTpm::start()?;
    let policy = PcrPolicy::parse_list(PcrBank::Sha256, "16")?;
    let protector = TpmProtector::new(tpm.tcti(), None).with_pcr_policy(policy);
    let key = DataKey::generate();
    let sealed = protector.wrap(&key, AAD)?;
    assert_eq!(protector.unwrap(&sealed, AAD)?.expose(), key.expose());

    tpm.tool(
        "tpm2_pcrextend",
        &["16:sha256=0000000000000000000000000000000000000000000000000000000000000001"],
    )?;
    match protector.unwrap(&sealed, AAD) {
        Err(UnwrapError::PolicyMismatch { .. }) => {}
        other => {
            return Err(format!("expected PolicyMismatch, got {:?}", other.map(|_| ())).into());
        }
    }
    tpm.tool("tpm2_pcrreset", &["16"])?;
    assert_eq!(protector.unwrap(&sealed, AAD)?.expose(), key.expose());
    Ok(())
}

fn fresh_tpm_cannot_unwrap() -> TestResult {
    let tpm = TestTpm::start()?;
    let policy = PcrPolicy::parse_list(PcrBank::Sha256, "7")?;
    let sealed = TpmProtector::new(tpm.tcti(), Some(Pin::from("2468")))
        .with_pcr_policy(policy)
        .wrap(&DataKey::generate(), AAD)?;
    let fresh = TestTpm::start()?;
    match TpmProtector::new(fresh.tcti(), Some(Pin::from("2468"))).unwrap(&sealed, AAD) {
        Err(UnwrapError::KeyNotOnToken(_)) => Ok(()),
        other => Err(format!("expected KeyNotOnToken, got {:?}", other.map(|_| ())).into()),
    }
}

fn survives_restart_with_same_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let key = DataKey::generate();
    let sealed = {
        let tpm = Swtpm::start(&state)?;
        TpmProtector::new(tpm.tcti(), Some(Pin::from("2468"))).wrap(&key, AAD)?
    };
    let tpm = Swtpm::start(&state)?;
    let back = TpmProtector::new(tpm.tcti(), Some(Pin::from("2468"))).unwrap(&sealed, AAD)?;
    assert_eq!(back.expose(), key.expose());
    Ok(())
}

fn absent_tpm_is_token_absent() -> TestResult {
    let sealed = {
        let tpm = TestTpm::start()?;
        TpmProtector::new(tpm.tcti(), None).wrap(&DataKey::generate(), AAD)?
    };
    // Nothing listens there any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let gone = TpmProtector::new(format!("swtpm:host=127.0.0.1,port={port}"), None);
    match gone.unwrap(&sealed, AAD) {
        Err(UnwrapError::TokenAbsent { what }) => {
            assert!(
                what.contains("no TPM"),
                "message should say what is missing: {what}"
            );
            Ok(())
        }
        other => Err(format!("expected TokenAbsent, got {:?}", other.map(|_| ())).into()),
    }
}

fn no_transient_objects_left() -> TestResult {
    let tpm = TestTpm::start()?;
    let policy = PcrPolicy::parse_list(PcrBank::Sha256, "16")?;
    let good = TpmProtector::new(tpm.tcti(), Some(Pin::from("2468"))).with_pcr_policy(policy);
    let wrong = TpmProtector::new(tpm.tcti(), Some(Pin::from("1111")));
    // More operations than swtpm has object slots: a leak would fail with OBJECT_MEMORY.
    for round in 0..6 {
        let sealed = good.wrap(&DataKey::generate(), AAD)?;
        good.unwrap(&sealed, AAD)?;
        // Failed unseals must clean up too; two stay below the lockout threshold.
        if round < 2 {
            assert!(wrong.unwrap(&sealed, AAD).is_err());
        }
    }
    for (what, cap) in [
        ("objects", "handles-transient"),
        ("sessions", "handles-loaded-session"),
    ] {
        let listed = tpm.tool("tpm2_getcap", &[cap])?;
        assert!(
            listed.trim().is_empty(),
            "transient {what} left in the TPM: {listed}"
        );
    }
    Ok(())
}
