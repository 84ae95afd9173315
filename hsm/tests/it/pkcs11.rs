//! Tests only a PKCS#11 token can have: the key stays inside, as the token itself
//! reports, and the token is found by label.

use std::process::Command;

use hsm::pkcs11::Pkcs11Protector;
use hsm::{DataKey, Pin, Protector, Sealed, UnwrapError};
use libtest_mimic::Trial;

use crate::fixtures::TestToken;
use crate::suite::hex;
use crate::{TestResult, trial};

const AAD: &[u8] = b"slot header v1";

pub(crate) fn trials(trials: &mut Vec<Trial>) {
    trials.extend([
        trial("pkcs11::key_is_not_extractable", key_is_not_extractable),
        trial(
            "pkcs11::pkcs11_tool_cannot_read_key",
            pkcs11_tool_cannot_read_key,
        ),
        trial(
            "pkcs11::unknown_label_is_token_absent",
            unknown_label_is_token_absent,
        ),
        trial(
            "pkcs11::missing_module_is_token_absent",
            missing_module_is_token_absent,
        ),
        trial(
            "pkcs11::deleted_key_is_key_not_on_token",
            deleted_key_is_key_not_on_token,
        ),
        trial(
            "pkcs11::found_by_label_among_tokens",
            found_by_label_among_tokens,
        ),
    ]);
}

fn enrolled() -> Result<(TestToken, Pkcs11Protector, DataKey, Sealed), libtest_mimic::Failed> {
    let token = TestToken::create()?;
    let protector = Pkcs11Protector::new(TestToken::module(), &token.label, Pin::from(token.pin));
    let key = DataKey::generate();
    let sealed = protector.wrap(&key, AAD)?;
    Ok((token, protector, key, sealed))
}

fn key_is_not_extractable() -> TestResult {
    let (_token, protector, _, sealed) = enrolled()?;
    let report = protector.key_report(&sealed)?;
    assert!(report.sensitive, "{report:?}");
    assert!(!report.extractable, "{report:?}");
    assert!(report.never_extractable, "{report:?}");
    assert!(!report.value_readable, "{report:?}");
    Ok(())
}

fn pkcs11_tool(
    token: &TestToken,
    args: &[&str],
) -> Result<std::process::Output, libtest_mimic::Failed> {
    hsm::sim::require_program("pkcs11-tool", "opensc")?;
    Ok(Command::new("pkcs11-tool")
        .arg("--module")
        .arg(TestToken::module())
        .args(["--token-label", &token.label, "--login", "--pin", token.pin])
        .args(args)
        .output()?)
}

fn pkcs11_tool_cannot_read_key() -> TestResult {
    let (token, _, _, sealed) = enrolled()?;
    let Sealed::Pkcs11(record) = &sealed else {
        return Err("not a pkcs11 record".into());
    };
    let id = hex(&record.key_id);
    let listed = pkcs11_tool(&token, &["--list-objects", "--type", "secrkey"])?;
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "pkcs11-tool --list-objects failed");
    assert!(text.contains(&id), "our key is not listed: {text}");
    assert!(text.contains("never extractable"), "{text}");
    assert!(text.contains("sensitive"), "{text}");
    let read = pkcs11_tool(&token, &["--read-object", "--type", "secrkey", "--id", &id])?;
    assert!(
        !read.status.success() && read.stdout.is_empty(),
        "pkcs11-tool read the key's value: {} bytes",
        read.stdout.len()
    );
    Ok(())
}

fn unknown_label_is_token_absent() -> TestResult {
    let _token = TestToken::create()?;
    let protector = Pkcs11Protector::new(TestToken::module(), "no-such-token", Pin::from("1234"));
    match protector.wrap(&DataKey::generate(), AAD) {
        Err(hsm::WrapError::TokenAbsent { what }) => {
            assert!(what.contains("no-such-token"), "{what}");
            Ok(())
        }
        other => Err(format!("expected TokenAbsent, got {:?}", other.map(|_| ())).into()),
    }
}

fn missing_module_is_token_absent() -> TestResult {
    let (token, _, _, sealed) = enrolled()?;
    let protector =
        Pkcs11Protector::for_unlock(Pin::from(token.pin)).with_module("/nonexistent/libpkcs11.so");
    match protector.unwrap(&sealed, AAD) {
        Err(UnwrapError::TokenAbsent { what }) => {
            assert!(what.contains("/nonexistent/libpkcs11.so"), "{what}");
            Ok(())
        }
        other => Err(format!("expected TokenAbsent, got {:?}", other.map(|_| ())).into()),
    }
}

fn deleted_key_is_key_not_on_token() -> TestResult {
    let (token, protector, _, sealed) = enrolled()?;
    let Sealed::Pkcs11(record) = &sealed else {
        return Err("not a pkcs11 record".into());
    };
    let deleted = pkcs11_tool(
        &token,
        &[
            "--delete-object",
            "--type",
            "secrkey",
            "--id",
            &hex(&record.key_id),
        ],
    )?;
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    match protector.unwrap(&sealed, AAD) {
        Err(UnwrapError::KeyNotOnToken(_)) => Ok(()),
        other => Err(format!("expected KeyNotOnToken, got {:?}", other.map(|_| ())).into()),
    }
}

fn found_by_label_among_tokens() -> TestResult {
    // Tokens created before and after ours shift slot numbers; the label still finds it.
    let _before = TestToken::create()?;
    let (token, _, key, sealed) = enrolled()?;
    let _after = TestToken::create()?;
    let back = Pkcs11Protector::for_unlock(Pin::from(token.pin)).unwrap(&sealed, AAD)?;
    assert_eq!(back.expose(), key.expose());
    Ok(())
}
