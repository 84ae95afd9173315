//! The NV monotonic counter against swtpm: its first value and steps, restarts, opening
//! an existing counter, indexes it must refuse, and what undefining it or clearing the
//! TPM does to its value. tpm2-tools play the other parties (an ordinary index, an owner
//! who undefines, clears or sets a password).

use hsm::sim::Swtpm;
use hsm::tpm::{CounterError, NvCounter, PK_ROLLBACK_COUNTER_INDEX, TpmProtector};
use hsm::{DataKey, Pin, Protector, UnwrapError};
use libtest_mimic::{Failed, Trial};

use crate::fixtures::TestTpm;
use crate::{TestResult, trial};

const INDEX: &str = "0x0180504b";
const OTHER: u32 = 0x0180_0001;

pub(crate) fn trials(trials: &mut Vec<Trial>) {
    trials.extend([
        trial(
            "tpm::counter::starts_at_one_and_counts_up_by_one",
            starts_at_one_and_counts_up_by_one,
        ),
        trial(
            "tpm::counter::value_survives_a_restart",
            value_survives_a_restart,
        ),
        trial(
            "tpm::counter::opening_again_keeps_the_value",
            opening_again_keeps_the_value,
        ),
        trial(
            "tpm::counter::other_indexes_at_its_place_are_refused",
            other_indexes_at_its_place_are_refused,
        ),
        trial(
            "tpm::counter::index_outside_owner_range_is_refused",
            index_outside_owner_range_is_refused,
        ),
        trial(
            "tpm::counter::undefine_or_clear_then_define_continues_above",
            undefine_or_clear_then_define_continues_above,
        ),
        trial(
            "tpm::counter::works_during_dictionary_attack_lockout",
            works_during_dictionary_attack_lockout,
        ),
        trial(
            "tpm::counter::owner_password_is_a_clear_error",
            owner_password_is_a_clear_error,
        ),
        trial(
            "tpm::counter::absent_tpm_is_tpm_absent",
            absent_tpm_is_tpm_absent,
        ),
    ]);
}

/// The error of `result`, or a failure naming what was expected.
fn error<T: std::fmt::Debug>(
    result: Result<T, CounterError>,
    expected: &str,
) -> Result<CounterError, Failed> {
    match result {
        Err(e) => Ok(e),
        Ok(v) => Err(format!("expected {expected}, got Ok({v:?})").into()),
    }
}

/// Increments `counter` until it reads `value`.
fn increment_to(counter: &NvCounter, value: u64) -> TestResult {
    while counter.read()? < value {
        counter.increment()?;
    }
    assert_eq!(counter.read()?, value);
    Ok(())
}

fn starts_at_one_and_counts_up_by_one() -> TestResult {
    let tpm = TestTpm::start()?;
    let counter = NvCounter::open_or_define(&tpm.tcti(), PK_ROLLBACK_COUNTER_INDEX)?;
    assert_eq!(counter.index(), PK_ROLLBACK_COUNTER_INDEX);
    assert_eq!(
        counter.read()?,
        1,
        "the first increment of a fresh TPM's counter"
    );
    for expected in 2..=6 {
        assert_eq!(counter.increment()?, expected);
        assert_eq!(counter.read()?, expected);
    }
    // As tpm2-tools see it: a counter, written, with the attributes the module documents.
    let public = tpm.tool("tpm2_nvreadpublic", &[INDEX])?;
    assert!(
        public.contains("value: 0x22040014"),
        "expected counter|authread|authwrite|no_da|written: {public}"
    );
    let read = tpm.tool("tpm2_nvread", &[INDEX, "-C", INDEX, "-s", "8"])?;
    assert_eq!(read.as_bytes(), [0, 0, 0, 0, 0, 0, 0, 6], "big-endian 6");
    // Password sessions only: nothing is left loaded in a TPM without a resource manager.
    for cap in ["handles-transient", "handles-loaded-session"] {
        let listed = tpm.tool("tpm2_getcap", &[cap])?;
        assert!(listed.trim().is_empty(), "{cap} left in the TPM: {listed}");
    }
    Ok(())
}

fn value_survives_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    {
        let tpm = Swtpm::start(&state)?;
        let counter = NvCounter::open_or_define(&tpm.tcti(), PK_ROLLBACK_COUNTER_INDEX)?;
        increment_to(&counter, 7)?;
        // Dropping the handle kills swtpm (SIGKILL): no orderly shutdown.
    }
    let tpm = Swtpm::start(&state)?;
    let counter = NvCounter::open_or_define(&tpm.tcti(), PK_ROLLBACK_COUNTER_INDEX)?;
    assert_eq!(counter.read()?, 7);
    assert_eq!(counter.increment()?, 8);
    Ok(())
}

fn opening_again_keeps_the_value() -> TestResult {
    let tpm = TestTpm::start()?;
    let first = NvCounter::open_or_define(&tpm.tcti(), PK_ROLLBACK_COUNTER_INDEX)?;
    increment_to(&first, 5)?;
    // A redefinition would read 6 (one above the deleted counter's 5), an extra
    // increment 6 as well: exactly 5 means neither happened.
    let again = NvCounter::open_or_define(&tpm.tcti(), PK_ROLLBACK_COUNTER_INDEX)?;
    assert_eq!(again.read()?, 5);
    assert_eq!(first.read()?, 5);
    Ok(())
}

fn other_indexes_at_its_place_are_refused() -> TestResult {
    let tpm = TestTpm::start()?;
    // (index, tpm2_nvdefine's arguments, what the error should name)
    let cases: [(&str, &[&str], &str); 3] = [
        (
            "0x01800001",
            &["-s", "8", "-a", "authread|authwrite"],
            "type is Ordinary",
        ),
        (
            "0x01800002",
            &["-a", "authread|authwrite|nt=counter"],
            "attributes",
        ),
        (
            "0x01800003",
            &["-a", "authread|authwrite|no_da|nt=counter", "-p", "secret"],
            "authValue",
        ),
    ];
    for (index, args, names) in cases {
        tpm.tool("tpm2_nvdefine", &[&["-C", "o"], args, &[index]].concat())?;
        let number = u32::from_str_radix(index.trim_start_matches("0x"), 16)?;
        let e = error(
            NvCounter::open_or_define(&tpm.tcti(), number),
            "NotPkCounter",
        )?;
        let message = e.to_string();
        assert!(
            matches!(e, CounterError::NotPkCounter { index: i, .. } if i == number),
            "{index}: {e:?}"
        );
        assert!(
            message.contains(&format!("NV index {index} exists and is not a pk counter")),
            "{message}"
        );
        assert!(
            message.contains(names),
            "{index}: should say why: {message}"
        );
        // Left as it was.
        let public = tpm.tool("tpm2_nvreadpublic", &[index])?;
        assert!(!public.contains("written"), "{index} was written: {public}");
    }
    Ok(())
}

fn index_outside_owner_range_is_refused() -> TestResult {
    let tpm = TestTpm::start()?;
    // TPM manufacturer's, platform manufacturer's, an EK certificate's, a persistent
    // object's handle, and the handles just outside the owner's range.
    for index in [
        0x0100_0000,
        0x0150_4B00,
        0x01C0_0002,
        0x8100_0001,
        0x017F_FFFF,
        0x01C0_0000,
    ] {
        let e = error(
            NvCounter::open_or_define(&tpm.tcti(), index),
            "IndexOutOfRange",
        )?;
        assert!(
            matches!(e, CounterError::IndexOutOfRange { index: i } if i == index),
            "{index:#x}: {e:?}"
        );
        assert!(e.to_string().contains("outside the owner range"), "{e}");
    }
    let defined = tpm.tool("tpm2_getcap", &["handles-nv-index"])?;
    assert!(defined.trim().is_empty(), "NV indexes defined: {defined}");
    // Both ends of the range are taken.
    for index in [0x0180_0000, 0x01BF_FFFF] {
        assert_eq!(NvCounter::open_or_define(&tpm.tcti(), index)?.read()?, 1);
    }
    Ok(())
}

fn undefine_or_clear_then_define_continues_above() -> TestResult {
    let tpm = TestTpm::start()?;
    let counter = NvCounter::open_or_define(&tpm.tcti(), PK_ROLLBACK_COUNTER_INDEX)?;
    increment_to(&counter, 5)?;
    // A counter that is still defined does not raise a new one's start.
    let other = NvCounter::open_or_define(&tpm.tcti(), OTHER)?;
    assert_eq!(other.read()?, 1);

    // The owner (empty authorisation) undefines it: gone, then back one above.
    tpm.tool("tpm2_nvundefine", &["-C", "o", INDEX])?;
    let e = error(counter.read(), "Undefined")?;
    assert!(matches!(e, CounterError::Undefined { .. }), "{e:?}");
    assert!(e.to_string().contains("is not defined"), "{e}");
    let counter = NvCounter::open_or_define(&tpm.tcti(), PK_ROLLBACK_COUNTER_INDEX)?;
    assert_eq!(counter.read()?, 6, "redefined after undefining at 5");

    // TPM2_Clear with the lockout authorisation (empty on a fresh TPM) deletes every
    // owner index; each deleted counter's value still counts.
    increment_to(&counter, 8)?;
    tpm.tool("tpm2_clear", &["-c", "l"])?;
    let defined = tpm.tool("tpm2_getcap", &["handles-nv-index"])?;
    assert!(
        defined.trim().is_empty(),
        "left after TPM2_Clear: {defined}"
    );
    assert!(matches!(
        counter.read(),
        Err(CounterError::Undefined { .. })
    ));
    let counter = NvCounter::open_or_define(&tpm.tcti(), PK_ROLLBACK_COUNTER_INDEX)?;
    assert_eq!(counter.read()?, 9, "redefined after TPM2_Clear at 8");
    let other = NvCounter::open_or_define(&tpm.tcti(), OTHER)?;
    assert_eq!(
        other.read()?,
        9,
        "the largest deleted value, whichever index had it"
    );
    Ok(())
}

fn works_during_dictionary_attack_lockout() -> TestResult {
    let tpm = TestTpm::start()?;
    let counter = NvCounter::open_or_define(&tpm.tcti(), PK_ROLLBACK_COUNTER_INDEX)?;
    // The same counter without NO_DA, for contrast.
    tpm.tool(
        "tpm2_nvdefine",
        &[
            "-C",
            "o",
            "-a",
            "authread|authwrite|nt=counter",
            "0x01800001",
        ],
    )?;
    tpm.tool("tpm2_nvincrement", &["-C", "0x01800001", "0x01800001"])?;

    // One wrong PIN locks the TPM out.
    tpm.tool(
        "tpm2_dictionarylockout",
        &[
            "--setup-parameters",
            "--max-tries=1",
            "--recovery-time=3600",
        ],
    )?;
    let sealed = TpmProtector::new(tpm.tcti(), Some(Pin::from("2468")))
        .wrap(&DataKey::generate(), b"aad")?;
    let wrong = TpmProtector::new(tpm.tcti(), Some(Pin::from("0000")));
    assert!(wrong.unwrap(&sealed, b"aad").is_err());
    assert!(
        matches!(wrong.unwrap(&sealed, b"aad"), Err(UnwrapError::PinBlocked)),
        "the TPM should be locked out"
    );

    assert_eq!(counter.read()?, 1);
    assert_eq!(counter.increment()?, 2);
    let refused = tpm.tool(
        "tpm2_nvread",
        &["0x01800001", "-C", "0x01800001", "-s", "8"],
    );
    assert!(
        refused.is_err(),
        "a counter without NO_DA should be refused during lockout"
    );
    Ok(())
}

fn owner_password_is_a_clear_error() -> TestResult {
    let tpm = TestTpm::start()?;
    tpm.tool("tpm2_changeauth", &["-c", "owner", "owner-secret"])?;
    let e = error(
        NvCounter::open_or_define(&tpm.tcti(), PK_ROLLBACK_COUNTER_INDEX),
        "OwnerAuthRequired",
    )?;
    assert!(matches!(e, CounterError::OwnerAuthRequired { .. }), "{e:?}");
    assert!(
        e.to_string().contains("owner hierarchy has a password"),
        "{e}"
    );
    Ok(())
}

fn absent_tpm_is_tpm_absent() -> TestResult {
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let e = error(
        NvCounter::open_or_define(&tcti, PK_ROLLBACK_COUNTER_INDEX),
        "TpmAbsent",
    )?;
    match e {
        CounterError::TpmAbsent { what } => {
            assert!(
                what.contains("no TPM"),
                "should say what is missing: {what}"
            );
            Ok(())
        }
        other => Err(format!("expected TpmAbsent, got {other:?}").into()),
    }
}
