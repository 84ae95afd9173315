//! Keyslots through the CLI: every backend, the invariants, and damaged files.

use std::path::{Path, PathBuf};

use crate::harness::{CHEAP_ARGON2 as CHEAP, World, args, copy_dir};

const PASS: &str = "correct horse battery staple";

/// A node in directory `node` whose first keyslot is a key on the SoftHSM2 token
/// `pk-node` (PIN 123456); the node's path, the module, the PIN file and what `init`
/// printed.
fn pkcs11_node(w: &mut World) -> (PathBuf, PathBuf, String, String) {
    w.softhsm_token("pk-node", "123456");
    let node = w.path("node");
    let module = w.softhsm_module();
    let pin = w.secret_arg("pin", "123456");
    let init = [
        "--pkcs11-module",
        module.to_str().unwrap(),
        "init",
        "--token",
        "pkcs11",
        "--pkcs11-token-label",
        "pk-node",
        "--password-file",
        &pin,
    ];
    let out = w.pk(&node, &init).ok();
    (node, module, pin, out)
}

/// `pk` on `node` with `--tcti tcti` before `extra`.
fn with_tpm<'a>(w: &World, node: &Path, tcti: &'a str, extra: &[&'a str]) -> crate::harness::Run {
    w.pk(node, &args(&["--tcti", tcti], extra))
}

#[test]
fn tpm_slot_unlocks_and_copy_next_to_fresh_tpm_does_not() {
    let w = World::new();
    let (tpm, node, tcti, code) = w.tpm_node("tpm-a");
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
    let pin = w.secret_arg("pin", "2468");
    let init = ["init", "--token", "tpm", "--tpm-pcrs", "16", "--tpm-pin"];
    with_tpm(&w, &node, &tcti, &args(&init, &["--password-file", &pin])).ok();
    let test = ["keyslots", "test", "--password-file", &pin];
    with_tpm(&w, &node, &tcti, &test).ok();
    let wrong = w.secret_arg("wrong", "1111");
    with_tpm(
        &w,
        &node,
        &tcti,
        &["keyslots", "test", "--password-file", &wrong],
    )
    .fails(77, "attempts left");

    w.tpm_tool(
        &tpm,
        "tpm2_pcrextend",
        &["16:sha256=00000000000000000000000000000000000000000000000000000000000000ff"],
    );
    with_tpm(&w, &node, &tcti, &test).fails(77, "PCR values differ");
    w.tpm_tool(&tpm, "tpm2_pcrreset", &["16"]);
    with_tpm(&w, &node, &tcti, &test).ok();
}

#[test]
fn pkcs11_slot_with_tpm_slot_enrolled_then_pkcs11_removed() {
    let mut w = World::new();
    let (node, _, pin, out) = pkcs11_node(&mut w);
    let tpm = w.swtpm("tpm");
    let tcti = tpm.tcti();
    assert!(out.contains("0: pkcs11 (hardware)"), "{out}");
    w.pk(&node, &["keyslots", "test", "--password-file", &pin])
        .ok();
    w.pk_env(&node, &["keyslots", "test"], &[("PK_PASSWORD", "654321")])
        .fails(77, "wrong PIN");

    // Enrol the TPM, unlocking through the token.
    let enroll = [
        "keyslots",
        "enroll",
        "--token",
        "tpm",
        "--password-file",
        &pin,
    ];
    with_tpm(&w, &node, &tcti, &enroll).ok();
    // Removing the PKCS#11 slot with itself is refused; through the TPM slot it works.
    let remove = ["keyslots", "remove", "0", "--unlock-slot"];
    with_tpm(
        &w,
        &node,
        &tcti,
        &args(&remove, &["0", "--password-file", &pin]),
    )
    .fails(1, "unlock with another keyslot");
    with_tpm(&w, &node, &tcti, &args(&remove, &["2"])).ok();
    let listed = w.pk(&node, &["--format", "json", "keyslots", "list"]).ok();
    let slots: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let kinds: Vec<&str> = slots
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["recovery", "tpm"]);
    with_tpm(&w, &node, &tcti, &["keyslots", "test"]).ok();
}

#[test]
fn last_slot_cannot_be_removed() {
    let w = World::new();
    let (node, pass, code) = w.soft_node_with_code(PASS);
    let pass = pass.to_str().unwrap();
    let code = w.secret_arg("code", &code);
    // Remove the recovery slot through the passphrase: allowed, one working slot remains.
    w.pk(&node, &["keyslots", "remove", "1", "--password-file", pass])
        .ok();
    // Now the passphrase slot is the last: refused, whatever unlocked it.
    w.pk(&node, &["keyslots", "remove", "0", "--password-file", pass])
        .fails(1, "it is the last one");
    // The recovery slot is gone, so the recovery code opens nothing any more.
    w.pk(&node, &["keyslots", "test", "--recovery-code-file", &code])
        .fails(64, "no recovery keyslot");
    w.pk(&node, &["keyslots", "test", "--password-file", pass])
        .ok();
}

#[test]
fn damaged_keyslot_file_is_a_clear_error_and_changes_nothing() {
    let w = World::new();
    let (node, pass) = w.soft_node(PASS);
    let pass = pass.to_str().unwrap();
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
        let enroll = [
            "keyslots",
            "enroll",
            "--token",
            "soft",
            "--password-file",
            pass,
        ];
        let new = [("PK_PASSWORD_NEW", "another long passphrase")];
        w.pk_env(&node, &args(&enroll, CHEAP), &new)
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
    let pass = w.secret_arg("pass", secret);
    let init = args(
        &["init", "--token", "soft", "--password-file", &pass],
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
    let (node, module, pin, _) = pkcs11_node(&mut w);
    // The system module, named by the slot alone, is fine.
    let test = ["keyslots", "test", "--slot", "0", "--password-file", &pin];
    w.pk(&node, &test).ok();

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
        .pk(&node, &test)
        .fails(77, "outside the system library directories");
    assert!(err.contains(fake), "the error names the module: {err}");
    assert!(!err.contains("123456"), "{err}");
    // A path that climbs out of a system directory is no better.
    let climbing = format!("/usr/lib/../..{fake}");
    rewrite_keyslot_body(&file, |body| body.replace(fake, &climbing));
    w.pk(&node, &test)
        .fails(77, "outside the system library directories");
    // Named by the configuration, the same module is the machine owner's choice.
    w.pk(&node, &args(&["--pkcs11-module", fake], &test)).ok();
}

/// Runs `openssl` with `args`, which must succeed.
fn openssl(args: &[&str]) {
    hsm_core::sim::require_program("openssl", "openssl").unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Signs the current value of PCR 11 of `tpm` with `key` into `file`, in systemd's
/// tpm2-pcr-signature.json format (what `systemd-measure sign` writes).
fn sign_pcr11(w: &World, tpm: &hsm_core::sim::Swtpm, key: &Path, pkfp: &str, file: &Path) {
    use base64::Engine as _;
    use sha2::{Digest as _, Sha256};
    let value = w.path("pcr11.bin");
    w.tpm_tool(
        tpm,
        "tpm2_pcrread",
        &["sha256:11", "-o", value.to_str().unwrap()],
    );
    // TPM2_PolicyPCR's digest from a fresh session: zeros, TPM_CC_PolicyPCR, the
    // selection (one, SHA-256, three bytes, PCR 11), SHA-256 of the value.
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update([0, 0, 1, 0x7f, 0, 0, 0, 1, 0, 0x0b, 3, 0, 0x08, 0]);
    h.update(Sha256::digest(std::fs::read(&value).unwrap()));
    let pol = h.finalize();
    let message = w.path("pol.bin");
    std::fs::write(&message, pol).unwrap();
    let sig = w.path("sig.bin");
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
        message.to_str().unwrap(),
    ]);
    let sig = base64::engine::general_purpose::STANDARD.encode(std::fs::read(sig).unwrap());
    let pol: String = pol.iter().map(|b| format!("{b:02x}")).collect();
    let json =
        format!(r#"{{"sha256":[{{"pcrs":[11],"pkfp":"{pkfp}","pol":"{pol}","sig":"{sig}"}}]}}"#);
    std::fs::write(file, json).unwrap();
}

#[test]
fn signed_pcr_slot_opens_while_the_booted_kernel_is_signed() {
    let w = World::new();
    let tpm = w.swtpm("tpm");
    let node = w.path("node");
    let tcti = tpm.tcti();
    let key = w.path("pcr-key.pem");
    let public = w.path("pcr-public.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    let (key_arg, public_arg) = (key.to_str().unwrap(), public.to_str().unwrap());
    openssl(&["pkey", "-in", key_arg, "-pubout", "-out", public_arg]);
    let signatures = w.path("tpm2-pcr-signature.json");
    let sig_arg = signatures.to_str().unwrap();
    let init = ["init", "--token", "tpm", "--tpm-pcrs", "7"];
    let init = args(
        &init,
        &["--tpm-pcr-public-key", public_arg, "--format", "json"],
    );
    with_tpm(&w, &node, &tcti, &init).ok();
    let listed = w.pk(&node, &["keyslots", "list", "--format", "json"]).ok();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let signed = &listed[0]["details"]["signed_pcr_policy"];
    assert_eq!(signed["pcrs"], serde_json::json!([11]), "{listed}");
    let pkfp = signed["public_key_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let human = w.pk(&node, &["keyslots", "list"]).ok();
    assert!(
        human.contains("PCRs sha256:7, signed PCRs sha256:11 (key "),
        "{human}"
    );

    let test = ["--tpm-pcr-signature", sig_arg, "keyslots", "test"];
    with_tpm(&w, &node, &tcti, &test).fails(69, "PCR signature file");
    w.tpm_tool(
        &tpm,
        "tpm2_pcrextend",
        &["11:sha256=0000000000000000000000000000000000000000000000000000000000000011"],
    );
    sign_pcr11(&w, &tpm, &key, &pkfp, &signatures);
    with_tpm(&w, &node, &tcti, &test).ok();
    // Another kernel, unsigned: refused; its signature arrives: the same slot opens.
    w.tpm_tool(
        &tpm,
        "tpm2_pcrextend",
        &["11:sha256=0000000000000000000000000000000000000000000000000000000000000022"],
    );
    with_tpm(&w, &node, &tcti, &test).fails(77, "not one that key signed");
    sign_pcr11(&w, &tpm, &key, &pkfp, &signatures);
    w.pk_env(
        &node,
        &["--tcti", &tcti, "keyslots", "test"],
        &[("PK_TPM_PCR_SIGNATURE", sig_arg)],
    )
    .ok();
}
