//! The unlock policy at start, with the real daemon and a software TPM: a box whose first
//! keyslot is bound to a PCR (`tpm_pcrs`) unlocks by itself after a restart while the PCR
//! holds, stays locked once it has changed (as after a tampered boot chain), and then
//! opens with the recovery code through the console's API; and a box whose first keyslot
//! is also bound to PCR 11 values a key signs (`tpm_pcr_public_key`) unlocks by itself
//! after a signed "kernel update" and stays locked on an unsigned one. The console is
//! driven with `curl` over HTTPS on 127.0.0.1.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use appliance::config::Config;
use common::{InProcess, free_port};

const PASSWORD: &str = "policy admin password";

/// A JSON call to the console with `curl` (self-signed certificate: `-k`), a cookie jar,
/// and the CSRF header when given.
fn call(
    jar: &Path,
    url: &str,
    csrf: Option<&str>,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut cmd = Command::new("curl");
    cmd.args(["-sSk", "-b"]).arg(jar).arg("-c").arg(jar);
    if let Some(csrf) = csrf {
        cmd.args(["-H", &format!("X-CSRF-Token: {csrf}")]);
    }
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data",
            &body.to_string(),
        ]);
    }
    let out = cmd.arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON from {url}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs the daemon until `check` is done with its console URL and setup code.
async fn with_daemon<F, Fut>(config: &Config, check: F)
where
    F: FnOnce(String, Option<String>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let daemon = InProcess::start(config.clone()).await;
    check(daemon.console_url(), daemon.started.setup_code.clone()).await;
    daemon.stop().await.unwrap().unwrap().unwrap();
}

/// Waits for the node's state to settle at `want` (the agent unlocks in the background).
async fn state_becomes(jar: &Path, console: &str, want: &str) -> serde_json::Value {
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = call(jar, &format!("{console}/api/status"), None, None);
        if status["state"] == want {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the state never became {want}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcr_bound_box_unlocks_itself_until_the_pcr_changes() {
    hsm::sim::require_program("curl", "curl").unwrap();
    let tool = hsm::sim::require_program("tpm2_pcrextend", "tpm2-tools").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tpm = hsm::sim::Swtpm::start(&dir.path().join("swtpm")).unwrap();
    let port = free_port();
    let config = Config {
        state_dir: dir.path().join("state"),
        console_listen: format!("127.0.0.1:{port}").parse().unwrap(),
        peer_listen: Some("127.0.0.1:0".parse().unwrap()),
        tpm_tcti: Some(tpm.tcti()),
        // PCR 16 is the debug PCR: the test can extend it, as a changed boot chain would
        // change PCRs 4, 7, 9 or 11 on a real box.
        tpm_pcrs: Some("16".into()),
        ..Config::default()
    };
    let jar = dir.path().join("cookies.txt");
    let recovery = std::sync::Arc::new(std::sync::Mutex::new(String::new()));

    // First start: claimed through the API; the first keyslot is sealed to PCR 16.
    let kept = recovery.clone();
    let jar_path = jar.clone();
    with_daemon(&config, |console, code| async move {
        let claimed = call(
            &jar_path,
            &format!("{console}/api/setup"),
            None,
            Some(serde_json::json!({ "setup_code": code.unwrap(), "password": PASSWORD, "confirm": PASSWORD })),
        );
        *kept.lock().unwrap() = claimed["recovery_code"].as_str().unwrap().to_owned();
        let status = state_becomes(&jar_path, &console, "unlocked").await;
        assert_eq!(status["keyslots"][0]["kind"], "tpm", "{status}");
        assert_eq!(status["keyslots"][0]["pcrs"], "sha256:16", "{status}");
    })
    .await;

    // A restart with the boot chain unchanged: unlocked with nobody there.
    let jar_path = jar.clone();
    with_daemon(&config, |console, code| async move {
        assert!(code.is_none(), "no setup code once claimed");
        let login = call(
            &jar_path,
            &format!("{console}/api/login"),
            None,
            Some(serde_json::json!({ "password": PASSWORD })),
        );
        assert!(login["csrf"].is_string(), "{login}");
        state_becomes(&jar_path, &console, "unlocked").await;
    })
    .await;

    // The PCR changes: the box stays locked; the recovery code opens it.
    let out = Command::new(tool)
        .args([
            "-T",
            &tpm.tcti(),
            "16:sha256=00000000000000000000000000000000000000000000000000000000000000ff",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jar_path = jar.clone();
    let words = recovery.lock().unwrap().clone();
    with_daemon(&config, |console, _| async move {
        let login = call(
            &jar_path,
            &format!("{console}/api/login"),
            None,
            Some(serde_json::json!({ "password": PASSWORD })),
        );
        let csrf = login["csrf"].as_str().unwrap().to_owned();
        // The agent has tried the TPM at start and stayed locked.
        tokio::time::sleep(Duration::from_secs(2)).await;
        state_becomes(&jar_path, &console, "locked").await;
        let vaults = call(&jar_path, &format!("{console}/api/vaults"), None, None);
        assert_eq!(vaults["error"], "the node is locked", "{vaults}");
        let refused = call(
            &jar_path,
            &format!("{console}/api/unlock"),
            Some(&csrf),
            Some(serde_json::json!({ "method": "tpm" })),
        );
        assert!(refused["error"].is_string(), "the TPM refuses: {refused}");
        let opened = call(
            &jar_path,
            &format!("{console}/api/unlock"),
            Some(&csrf),
            Some(serde_json::json!({ "method": "recovery", "secret": words })),
        );
        assert_eq!(opened["message"], "Unlocked.", "{opened}");
        state_becomes(&jar_path, &console, "unlocked").await;
    })
    .await;
}

/// Runs a program that must succeed; returns its standard output.
fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Signs the current value of `tpm`'s PCR 11 with the key `dir/key.pem` into `file`, in
/// systemd's `tpm2-pcr-signature.json` format, as `systemd-measure sign` does for a UKI.
fn sign_pcr11(tpm: &hsm::sim::Swtpm, dir: &Path, public: &Path, file: &Path) {
    use base64::Engine as _;
    use sha2::{Digest as _, Sha256};
    let value = dir.join("pcr11.bin");
    run(
        "tpm2_pcrread",
        &[
            "-T",
            &tpm.tcti(),
            "sha256:11",
            "-o",
            value.to_str().unwrap(),
        ],
    );
    // TPM2_PolicyPCR's digest from a fresh session: zeros, TPM_CC_PolicyPCR, the selection
    // (one, SHA-256, three bytes, PCR 11), SHA-256 of the value.
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update([0, 0, 1, 0x7f, 0, 0, 0, 1, 0, 0x0b, 3, 0, 0x08, 0]);
    h.update(Sha256::digest(std::fs::read(&value).unwrap()));
    let pol = h.finalize();
    std::fs::write(dir.join("pol.bin"), pol).unwrap();
    let key = dir.join("key.pem");
    let sig = run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-sign",
            key.to_str().unwrap(),
            dir.join("pol.bin").to_str().unwrap(),
        ],
    );
    // systemd's pkfp: SHA-256 of the key's own PKCS#1 encoding.
    let pkcs1 = run(
        "openssl",
        &[
            "rsa",
            "-pubin",
            "-in",
            public.to_str().unwrap(),
            "-RSAPublicKey_out",
            "-outform",
            "DER",
        ],
    );
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let entry = serde_json::json!({
        "pcrs": [11],
        "pkfp": hex(&Sha256::digest(&pkcs1)),
        "pol": hex(&pol),
        "sig": base64::engine::general_purpose::STANDARD.encode(sig),
    });
    std::fs::write(file, serde_json::json!({ "sha256": [entry] }).to_string()).unwrap();
}

/// Extends `tpm`'s PCR `pcr` (SHA-256 bank) with `digest`, as a boot measures a kernel.
fn extend(tpm: &hsm::sim::Swtpm, pcr: u8, digest: &str) {
    run(
        "tpm2_pcrextend",
        &["-T", &tpm.tcti(), &format!("{pcr}:sha256={digest}")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_box_unlocks_itself_after_a_signed_update_only() {
    hsm::sim::require_program("curl", "curl").unwrap();
    hsm::sim::require_program("openssl", "openssl").unwrap();
    hsm::sim::require_program("tpm2_pcrextend", "tpm2-tools").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tpm = hsm::sim::Swtpm::start(&dir.path().join("swtpm")).unwrap();
    let key = dir.path().join("key.pem");
    let public = dir.path().join("tpm2-pcr-public-key.pem");
    let rsa = [
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
    ];
    run(
        "openssl",
        &[&rsa[..], &["-out", key.to_str().unwrap()]].concat(),
    );
    run(
        "openssl",
        &[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    );
    let signature = dir.path().join("tpm2-pcr-signature.json");
    let port = free_port();
    let config = Config {
        state_dir: dir.path().join("state"),
        console_listen: format!("127.0.0.1:{port}").parse().unwrap(),
        peer_listen: Some("127.0.0.1:0".parse().unwrap()),
        tpm_tcti: Some(tpm.tcti()),
        tpm_pcrs: Some("0,7".into()),
        tpm_pcr_public_key: Some(public.clone()),
        tpm_pcr_signature: signature.clone(),
        ..Config::default()
    };
    let jar = dir.path().join("cookies.txt");
    // The first boot: a signed kernel in PCR 11, its signature in /run/pk-boot.
    extend(&tpm, 11, &"11".repeat(32));
    sign_pcr11(&tpm, dir.path(), &public, &signature);
    let jar_path = jar.clone();
    with_daemon(&config, |console, code| async move {
        let setup = serde_json::json!({ "setup_code": code.unwrap(), "password": PASSWORD, "confirm": PASSWORD });
        call(&jar_path, &format!("{console}/api/setup"), None, Some(setup));
        let status = state_becomes(&jar_path, &console, "unlocked").await;
        assert_eq!(status["keyslots"][0]["pcrs"], "sha256:0,7", "{status}");
        assert_eq!(status["keyslots"][0]["signed_pcrs"], "sha256:11", "{status}");
    })
    .await;

    // An update to another signed kernel: the same keyslot opens by itself.
    extend(&tpm, 11, &"22".repeat(32));
    sign_pcr11(&tpm, dir.path(), &public, &signature);
    let login = serde_json::json!({ "password": PASSWORD });
    let (jar_path, body) = (jar.clone(), login.clone());
    with_daemon(&config, |console, _| async move {
        call(&jar_path, &format!("{console}/api/login"), None, Some(body));
        state_becomes(&jar_path, &console, "unlocked").await;
    })
    .await;

    // A kernel nobody signed (the file still holds the last one's signature): locked.
    extend(&tpm, 11, &"33".repeat(32));
    let jar_path = jar.clone();
    with_daemon(&config, |console, _| async move {
        call(
            &jar_path,
            &format!("{console}/api/login"),
            None,
            Some(login),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        state_becomes(&jar_path, &console, "locked").await;
    })
    .await;
}
