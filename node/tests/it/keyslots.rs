//! Keyslots through the CLI: every backend, the invariants, and damaged files.

use crate::harness::{World, copy_dir, recovery_code};

const PASS: &str = "correct horse battery staple";
const CHEAP: &[&str] = &["--argon2-memory-mib", "8", "--argon2-passes", "1"];

fn args<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
}

#[test]
fn tpm_slot_unlocks_and_copy_next_to_fresh_tpm_does_not() {
    let w = World::new();
    let tpm = w.swtpm("tpm-a");
    let node = w.path("node");
    let tcti = tpm.tcti();
    let out = w
        .pk(
            &node,
            &[
                "--format", "json", "--tcti", &tcti, "init", "--token", "tpm",
            ],
        )
        .ok();
    let code = recovery_code(&out);
    // A PIN-less TPM slot unlocks without asking anything.
    let listed = w.pk(&node, &["keyslots", "list"]).ok();
    assert!(listed.contains("0: tpm (hardware)"), "{listed}");
    w.pk(&node, &["--tcti", &tcti, "keyslots", "test"]).ok();

    // The same data directory on another machine: a fresh TPM cannot open it...
    let copy = w.path("copy");
    copy_dir(&node, &copy);
    let fresh = w.swtpm("tpm-b");
    w.pk(&copy, &["--tcti", &fresh.tcti(), "keyslots", "test"])
        .fails(77, "not on this token");
    // ...and with every token gone, only the recovery code does.
    drop((tpm, fresh));
    let dead = format!("swtpm:host=127.0.0.1,port={}", free_port());
    w.pk(&copy, &["--tcti", &dead, "keyslots", "test"])
        .fails(69, "no TPM");
    let file = w.secret_file("recovery", &code);
    let out = w
        .pk(
            &copy,
            &[
                "--tcti",
                &dead,
                "keyslots",
                "test",
                "--recovery-code-file",
                file.to_str().unwrap(),
            ],
        )
        .ok();
    assert!(out.contains("keyslot 1: recovery"), "{out}");
    // A wrong recovery code is refused without echoing it.
    let other = "abandon ".repeat(23) + "art";
    let err = w
        .pk_env(
            &copy,
            &["keyslots", "test"],
            &[("PK_RECOVERY_CODE", &other)],
        )
        .fails(77, "recovery code does not match");
    assert!(!err.contains("abandon"));
}

#[test]
fn pcr_bound_slot_refused_after_pcr_change_until_reset() {
    let w = World::new();
    let tpm = w.swtpm("tpm");
    let node = w.path("node");
    let tcti = tpm.tcti();
    let pin = w.secret_file("pin", "2468");
    let pin = pin.to_str().unwrap();
    w.pk(
        &node,
        &[
            "--tcti",
            &tcti,
            "init",
            "--token",
            "tpm",
            "--tpm-pcrs",
            "16",
            "--tpm-pin",
            "--password-file",
            pin,
        ],
    )
    .ok();
    w.pk(
        &node,
        &["--tcti", &tcti, "keyslots", "test", "--password-file", pin],
    )
    .ok();
    let wrong = w.secret_file("wrong", "1111");
    w.pk(
        &node,
        &[
            "--tcti",
            &tcti,
            "keyslots",
            "test",
            "--password-file",
            wrong.to_str().unwrap(),
        ],
    )
    .fails(77, "attempts left");

    w.tpm_tool(
        &tpm,
        "tpm2_pcrextend",
        &["16:sha256=00000000000000000000000000000000000000000000000000000000000000ff"],
    );
    w.pk(
        &node,
        &["--tcti", &tcti, "keyslots", "test", "--password-file", pin],
    )
    .fails(77, "PCR values differ");
    w.tpm_tool(&tpm, "tpm2_pcrreset", &["16"]);
    w.pk(
        &node,
        &["--tcti", &tcti, "keyslots", "test", "--password-file", pin],
    )
    .ok();
}

#[test]
fn pkcs11_slot_with_tpm_slot_enrolled_then_pkcs11_removed() {
    let mut w = World::new();
    w.softhsm_token("pk-node", "123456");
    let tpm = w.swtpm("tpm");
    let node = w.path("node");
    let module = w.softhsm_module();
    let module = module.to_str().unwrap();
    let tcti = tpm.tcti();
    let pin = w.secret_file("pin", "123456");
    let pin = pin.to_str().unwrap();
    let out = w
        .pk(
            &node,
            &[
                "--pkcs11-module",
                module,
                "init",
                "--token",
                "pkcs11",
                "--pkcs11-token-label",
                "pk-node",
                "--password-file",
                pin,
            ],
        )
        .ok();
    assert!(out.contains("0: pkcs11 (hardware)"), "{out}");
    w.pk(&node, &["keyslots", "test", "--password-file", pin])
        .ok();
    w.pk_env(&node, &["keyslots", "test"], &[("PK_PASSWORD", "654321")])
        .fails(77, "wrong PIN");

    // Enrol the TPM, unlocking through the token.
    w.pk(
        &node,
        &[
            "--tcti",
            &tcti,
            "keyslots",
            "enroll",
            "--token",
            "tpm",
            "--password-file",
            pin,
        ],
    )
    .ok();
    // Removing the PKCS#11 slot with itself is refused; through the TPM slot it works.
    w.pk(
        &node,
        &[
            "--tcti",
            &tcti,
            "keyslots",
            "remove",
            "0",
            "--unlock-slot",
            "0",
            "--password-file",
            pin,
        ],
    )
    .fails(1, "unlock with another keyslot");
    w.pk(
        &node,
        &[
            "--tcti",
            &tcti,
            "keyslots",
            "remove",
            "0",
            "--unlock-slot",
            "2",
        ],
    )
    .ok();
    let listed = w.pk(&node, &["--format", "json", "keyslots", "list"]).ok();
    let slots: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let kinds: Vec<&str> = slots
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["recovery", "tpm"]);
    w.pk(&node, &["--tcti", &tcti, "keyslots", "test"]).ok();
}

#[test]
fn last_slot_cannot_be_removed() {
    let w = World::new();
    let node = w.path("node");
    let pass = w.secret_file("pass", PASS);
    let pass = pass.to_str().unwrap();
    let out = w
        .pk(
            &node,
            &args(
                &[
                    "--format",
                    "json",
                    "init",
                    "--token",
                    "soft",
                    "--password-file",
                    pass,
                ],
                CHEAP,
            ),
        )
        .ok();
    let code = w.secret_file("code", &recovery_code(&out));
    // Remove the recovery slot through the passphrase: allowed, one working slot remains.
    w.pk(&node, &["keyslots", "remove", "1", "--password-file", pass])
        .ok();
    // Now the passphrase slot is the last: refused, whatever unlocked it.
    w.pk(&node, &["keyslots", "remove", "0", "--password-file", pass])
        .fails(1, "it is the last one");
    // The recovery slot is gone, so the recovery code opens nothing any more.
    w.pk(
        &node,
        &[
            "keyslots",
            "test",
            "--recovery-code-file",
            code.to_str().unwrap(),
        ],
    )
    .fails(64, "no recovery keyslot");
    w.pk(&node, &["keyslots", "test", "--password-file", pass])
        .ok();
}

#[test]
fn damaged_keyslot_file_is_a_clear_error_and_changes_nothing() {
    let w = World::new();
    let node = w.path("node");
    let pass = w.secret_file("pass", PASS);
    let pass = pass.to_str().unwrap();
    w.pk(
        &node,
        &args(&["init", "--token", "soft", "--password-file", pass], CHEAP),
    )
    .ok();
    let file = node.join("keyslots");
    let good = std::fs::read(&file).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        ("header only", good[..5].to_vec(), "truncated"),
        ("empty", Vec::new(), "truncated"),
        (
            "flipped byte",
            {
                let mut b = good.clone();
                b[40] ^= 0x01;
                b
            },
            "checksum mismatch",
        ),
        (
            "garbage",
            b"not a keyslot file at all".to_vec(),
            "bad magic",
        ),
        (
            "trailing",
            [good.as_slice(), b"x"].concat(),
            "trailing bytes",
        ),
    ];
    for (name, bytes, needle) in cases {
        std::fs::write(&file, &bytes).unwrap();
        for command in [
            &["keyslots", "list"][..],
            &["keyslots", "test", "--password-file", pass],
        ] {
            let err = w.pk(&node, command).fails(65, needle);
            assert!(err.contains("keyslot file"), "{name}: {err}");
        }
        // Enrolling on a damaged file must not rewrite it.
        w.pk_env(
            &node,
            &args(
                &[
                    "keyslots",
                    "enroll",
                    "--token",
                    "soft",
                    "--password-file",
                    pass,
                ],
                CHEAP,
            ),
            &[("PK_PASSWORD_NEW", "another long passphrase")],
        )
        .fails(65, needle);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            bytes,
            "{name}: file was changed"
        );
    }
    std::fs::write(&file, &good).unwrap();
    w.pk(&node, &["keyslots", "test", "--password-file", pass])
        .ok();
}

#[test]
fn usage_errors_exit_64_and_secrets_never_echo() {
    let w = World::new();
    let node = w.path("node");
    w.pk(&node, &["keyslots", "frobnicate"])
        .fails(64, "unrecognized subcommand");
    w.pk(&node, &["init", "--token", "soft"])
        .fails(64, "--password-file");
    w.pk(&node, &["init", "--token", "soft", "--tpm-pin"])
        .fails(64, "--token tpm only");
    w.pk(&node, &["init", "--token", "tpm", "--tpm-pcrs", "99"])
        .fails(64, "out of range");
    w.pk(&node, &["keyslots", "list"]).fails(66, "pk init");
    w.pk_env(
        &node,
        &["init", "--token", "tpm", "--tpm-pin"],
        &[("PK_PASSWORD", "")],
    )
    .fails(64, "PIN is empty");
    w.pk(&node, &["init", "--token", "tpm", "--tpm-pcr-bank", "sha1"])
        .fails(64, "needs --tpm-pcrs");
    w.pk(
        &node,
        &["init", "--token", "soft", "--tpm-pcr-bank", "sha1"],
    )
    .fails(64, "--token tpm only");
    w.pk_env(
        &node,
        &["init", "--token", "soft"],
        &[("PK_PASSWORD", "short")],
    )
    .fails(64, "too short");

    let secret = "s3cret-passphrase-do-not-print";
    let pass = w.secret_file("pass", secret);
    let init = args(
        &[
            "init",
            "--token",
            "soft",
            "--password-file",
            pass.to_str().unwrap(),
        ],
        CHEAP,
    );
    let out = w.pk(&node, &init).ok();
    assert!(!out.contains(secret));
    let err = w
        .pk_env(
            &node,
            &["keyslots", "test"],
            &[("PK_PASSWORD", "s3cret-but-wrong")],
        )
        .fails(77, "wrong passphrase");
    assert!(!err.contains("s3cret"));
    w.pk(&node, &init).fails(73, "already exists");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Rewrites the keyslot file's JSON body with `edit`, with a valid length and checksum (as
/// whoever can write the data directory can).
fn rewrite_keyslot_body(file: &std::path::Path, edit: impl Fn(&str) -> String) {
    use sha2::Digest as _;
    let bytes = std::fs::read(file).unwrap();
    let len = u32::from_be_bytes(bytes[10..14].try_into().unwrap()) as usize;
    let body = std::str::from_utf8(&bytes[14..14 + len]).unwrap();
    let body = edit(body);
    let mut out = bytes[..10].to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body.as_bytes());
    let checksum = sha2::Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    std::fs::write(file, out).unwrap();
}

/// Issue 13, 1.8: a PKCS#11 module is code that runs with the PIN. One named only by the
/// keyslot file (which whoever can write the data partition can edit) is not loaded from
/// outside the system library directories; one named by the machine's configuration is.
#[test]
fn a_pkcs11_module_named_only_by_the_keyslot_file_is_not_loaded_from_elsewhere() {
    let mut w = World::new();
    w.softhsm_token("pk-node", "123456");
    let node = w.path("node");
    let module = w.softhsm_module();
    let pin = w.secret_file("pin", "123456");
    let pin = pin.to_str().unwrap();
    w.pk(
        &node,
        &[
            "--pkcs11-module",
            module.to_str().unwrap(),
            "init",
            "--token",
            "pkcs11",
            "--pkcs11-token-label",
            "pk-node",
            "--password-file",
            pin,
        ],
    )
    .ok();
    // The system module, named by the slot alone, is fine.
    w.pk(
        &node,
        &["keyslots", "test", "--slot", "0", "--password-file", pin],
    )
    .ok();

    // A "module" planted in a writable place (here a copy of the real one, so that loading
    // it would work) and named by the slot.
    let planted = w.path("planted-module.so");
    std::fs::copy(&module, &planted).unwrap();
    let (real, fake) = (module.to_str().unwrap(), planted.to_str().unwrap());
    let file = node.join("keyslots");
    rewrite_keyslot_body(&file, |body| {
        assert!(body.contains(real), "{body}");
        body.replace(real, fake)
    });
    let err = w
        .pk(
            &node,
            &["keyslots", "test", "--slot", "0", "--password-file", pin],
        )
        .fails(77, "outside the system library directories");
    assert!(err.contains(fake), "the error names the module: {err}");
    assert!(!err.contains("123456"), "{err}");
    // A path that climbs out of a system directory is no better.
    let climbing = format!("/usr/lib/../..{fake}");
    rewrite_keyslot_body(&file, |body| body.replace(fake, &climbing));
    w.pk(
        &node,
        &["keyslots", "test", "--slot", "0", "--password-file", pin],
    )
    .fails(77, "outside the system library directories");
    // Named by the configuration, the same module is the machine owner's choice.
    w.pk(
        &node,
        &[
            "--pkcs11-module",
            fake,
            "keyslots",
            "test",
            "--slot",
            "0",
            "--password-file",
            pin,
        ],
    )
    .ok();
}
