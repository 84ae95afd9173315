//! The two binaries: `pk-bundle make`/`inspect` round trips with keys OpenSSL made, and
//! `pk-update install`/`status` with their exit codes.

use std::process::{Command, Output};

use crate::common::{Machine, Parts};

fn pk_bundle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pk-bundle"))
}

fn run(c: &mut Command) -> Output {
    c.output().expect("the program runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An Ed25519 key pair made by OpenSSL, as the project's key is: (private, public).
fn openssl_keys(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let private = dir.join("update-key.pem");
    let public = dir.join("update-key.pub");
    let ok = |c: &mut Command| {
        let out = c.output().expect("openssl runs (package openssl)");
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    ok(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private));
    ok(Command::new("openssl")
        .arg("pkey")
        .arg("-in")
        .arg(&private)
        .arg("-pubout")
        .arg("-out")
        .arg(&public));
    (private, public)
}

/// `pk-bundle make` of `parts`, its files written to `dir`, with `data_blocks` blocks and
/// the hash tree right after them.
fn make(
    private: &std::path::Path,
    parts: &Parts,
    dir: &std::path::Path,
    data_blocks: u64,
    out: &std::path::Path,
) -> Command {
    let [root, verity, uki] = parts.write_files(dir);
    let mut c = pk_bundle();
    c.arg("make")
        .arg("--key")
        .arg(private)
        .args([
            "--version",
            &parts.spec.version.to_string(),
            "--arch",
            "amd64",
        ])
        .arg("--roothash")
        .arg(parts.spec.roothash.to_string())
        .args(["--data-blocks", &data_blocks.to_string()])
        .args(["--hash-offset", &(data_blocks * 4096).to_string()])
        .arg("--root")
        .arg(root)
        .arg("--verity")
        .arg(verity)
        .arg("--uki")
        .arg(uki)
        .arg("--out")
        .arg(out);
    c
}

#[test]
fn pk_bundle_make_and_inspect_round_trip_with_openssl_keys() {
    let dir = tempfile::tempdir().expect("a directory");
    let (private, public) = openssl_keys(dir.path());
    let parts = Parts::random(8, "3.1.4", 16);
    let out = dir.path().join("pk-appliance-amd64-3.1.4.pkupdate");
    let made = run(&mut make(&private, &parts, dir.path(), 16, &out));
    assert!(made.status.success(), "{}", text(&made.stderr));
    assert!(
        !dir.path()
            .join("pk-appliance-amd64-3.1.4.pkupdate.partial")
            .exists()
    );

    let checked = run(pk_bundle()
        .arg("inspect")
        .arg("--key")
        .arg(&public)
        .arg(&out));
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert!(text(&checked.stderr).contains("signature and parts: good"));
    let manifest: serde_json::Value = serde_json::from_slice(&checked.stdout).expect("JSON");
    assert_eq!(manifest["version"], "3.1.4");
    assert_eq!(manifest["arch"], "amd64");
    assert_eq!(manifest["roothash"], parts.spec.roothash.to_string());
    assert_eq!(manifest["parts"][2]["size"], parts.uki.len());

    let unchecked = run(pk_bundle().arg("inspect").arg(&out));
    assert!(unchecked.status.success());
    assert!(text(&unchecked.stderr).contains("not checked"));

    // Another key, a flipped byte in the UKI: refused, exit 1.
    let (_, other) = openssl_keys(&tempfile::tempdir().expect("a directory").keep());
    let wrong = run(pk_bundle()
        .arg("inspect")
        .arg("--key")
        .arg(&other)
        .arg(&out));
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong.stderr).contains("signature does not verify"));
    let mut bytes = std::fs::read(&out).expect("the bundle");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&out, bytes).expect("written");
    let altered = run(pk_bundle()
        .arg("inspect")
        .arg("--key")
        .arg(&public)
        .arg(&out));
    assert_eq!(altered.status.code(), Some(1));
    assert!(
        text(&altered.stderr).contains("uki part does not match"),
        "{}",
        text(&altered.stderr)
    );

    // A root that is not data-blocks long: refused before a bundle is written.
    let bad = run(&mut make(
        &private,
        &parts,
        dir.path(),
        17,
        &dir.path().join("bad.pkupdate"),
    ));
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("not data_blocks"),
        "{}",
        text(&bad.stderr)
    );
    assert!(!dir.path().join("bad.pkupdate").exists());
    assert!(!dir.path().join("bad.pkupdate.partial").exists());
}

#[test]
fn usage_errors_exit_64() {
    for args in [
        &["make"][..],
        &["inspect"],
        &["frobnicate"],
        &["make", "--version", "x.y"],
    ] {
        let out = run(pk_bundle().args(args));
        assert_eq!(out.status.code(), Some(64), "{args:?}");
    }
    assert_eq!(run(pk_bundle().arg("--help")).status.code(), Some(0));
    let out = run(Command::new(env!("CARGO_BIN_EXE_pk-update")).args(["install"]));
    assert_eq!(out.status.code(), Some(64));
    let out = run(Command::new(env!("CARGO_BIN_EXE_pk-update")).args(["--arch", "mips", "status"]));
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn pk_update_install_and_status_from_the_command_line() {
    let m = Machine::new("1.0.0");
    let parts = Parts::random(2, "1.1.0", 300);
    let file = m.dir.path().join("b.pkupdate");
    std::fs::write(&file, m.bundle(&parts)).expect("the bundle");

    let status = run(m.pk_update().arg("status"));
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains("running: slot A, version 1.0.0"));
    assert!(text(&status.stdout).contains("slot B: empty"));

    let older = m.dir.path().join("older.pkupdate");
    std::fs::write(&older, m.bundle(&Parts::random(3, "0.1", 300))).expect("the bundle");
    let refused = run(m.pk_update().arg("install").arg(&older));
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("lower than the running version"));

    // From standard input.
    let installed = run(m
        .pk_update()
        .args(["install", "-"])
        .stdin(std::fs::File::open(&file).expect("the bundle")));
    assert!(installed.status.success(), "{}", text(&installed.stderr));
    assert!(text(&installed.stdout).contains("installed 1.1.0 in slot B"));
    assert!(text(&installed.stderr).contains("readback: 100 %"));

    let json = run(m.pk_update().args(["status", "--json"]));
    let status: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(status["other"], "b");
    assert_eq!(status["other_state"]["state"], "installed");
    assert_eq!(status["other_state"]["version"], "1.1.0");
    assert_eq!(status["other_state"]["tries"]["left"], 3);
}
