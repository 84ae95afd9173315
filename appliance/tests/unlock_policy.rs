//! The unlock policy at start, with the real daemon and a software TPM: a box whose first
//! keyslot is bound to a PCR (`tpm_pcrs`) unlocks by itself after a restart while the PCR
//! holds, stays locked once it has changed (as after a tampered boot chain), and then
//! opens with the recovery code through the console's API. The console is driven with
//! `curl` over HTTPS on 127.0.0.1.

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
