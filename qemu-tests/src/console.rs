//! The appliance's console seen from outside the VM: its JSON admin API through `curl`
//! (HTTPS to the forwarded port; the certificate is self-signed, so the suite compares
//! its fingerprint with the one on the serial console instead), and the certificate's
//! SHA-256 fingerprint through `openssl s_client`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Failure;
use crate::vm::{CONSOLE_PORT, run};

/// An admin session with the console.
pub(crate) struct Console {
    base: String,
    jar: PathBuf,
    csrf: Option<String>,
}

impl Console {
    pub(crate) fn new(jar: PathBuf) -> Console {
        let _ = std::fs::remove_file(&jar);
        Console {
            base: format!("https://127.0.0.1:{CONSOLE_PORT}"),
            jar,
            csrf: None,
        }
    }

    /// A call; the JSON answer (an `{"error"}` object on refusal).
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sSk", "--max-time", "60", "-X", method, "-b"])
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar);
        if let Some(csrf) = &self.csrf {
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
        let text = run(cmd.arg(format!("{}{path}", self.base)))?;
        serde_json::from_str(&text).map_err(|_| {
            format!(
                "{method} {path}: not JSON: {}",
                text.chars().take(300).collect::<String>()
            )
            .into()
        })
    }

    /// Uploads `file` as the raw body of a POST (an update bundle); the HTTP status and
    /// the JSON answer.
    pub(crate) fn upload(&self, path: &str, file: &Path) -> Result<(u16, Value), Failure> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sSk", "--max-time", "1200", "-X", "POST", "-b"])
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .args(["-H", "Content-Type: application/octet-stream"])
            .args(["-w", "\n%{http_code}"])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()));
        if let Some(csrf) = &self.csrf {
            cmd.args(["-H", &format!("X-CSRF-Token: {csrf}")]);
        }
        let text = run(cmd.arg(format!("{}{path}", self.base)))?;
        let (body, code) = text.rsplit_once('\n').ok_or("no status from curl")?;
        let code: u16 = code.trim().parse()?;
        let answer = serde_json::from_str(body).map_err(|_| {
            format!(
                "POST {path} ({code}): not JSON: {}",
                body.chars().take(300).collect::<String>()
            )
        })?;
        Ok((code, answer))
    }

    /// A call that must succeed (no `error` in the answer).
    pub(crate) fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let answer = self.call(method, path, body)?;
        match answer.get("error") {
            Some(error) => Err(format!("{method} {path}: {error}").into()),
            None => Ok(answer),
        }
    }

    /// A page's HTML.
    pub(crate) fn page(&self, path: &str) -> Result<String, Failure> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sSk", "--max-time", "60", "-b"]).arg(&self.jar);
        run(cmd.arg(format!("{}{path}", self.base)))
    }

    /// Waits until the console answers at all (the guest's network can lag its start).
    pub(crate) fn reachable(&self, timeout: Duration) -> Result<(), Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = Command::new("curl")
                .args(["-sk", "-o", "/dev/null", "--max-time", "10"])
                .arg(format!("{}/login", self.base))
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the console at {} never answered", self.base).into());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Claims the box with the setup code; the recovery code.
    pub(crate) fn setup(&mut self, code: &str, password: &str) -> Result<String, Failure> {
        let answer = self.ok(
            "POST",
            "/api/setup",
            Some(json!({ "setup_code": code, "password": password, "confirm": password })),
        )?;
        self.csrf = answer["csrf"].as_str().map(str::to_owned);
        Ok(answer["recovery_code"]
            .as_str()
            .ok_or("no recovery code in the setup answer")?
            .to_owned())
    }

    pub(crate) fn login(&mut self, password: &str) -> Result<(), Failure> {
        let answer = self.ok("POST", "/api/login", Some(json!({ "password": password })))?;
        self.csrf = answer["csrf"].as_str().map(str::to_owned);
        Ok(())
    }

    /// The node's state once the agent has settled (not `starting`).
    pub(crate) fn settled_state(&self, timeout: Duration) -> Result<Value, Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.ok("GET", "/api/status", None)?;
            if status["state"] != "starting" {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("the agent never started: {status}").into());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Waits for the node to be unlocked.
    pub(crate) fn unlocked(&self, timeout: Duration) -> Result<Value, Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.ok("GET", "/api/status", None)?;
            if status["state"] == "unlocked" {
                return Ok(status);
            }
            if Instant::now() > deadline {
                // Why: what the TPM says when asked once more.
                let tpm = self
                    .call(
                        "POST",
                        "/api/unlock",
                        Some(serde_json::json!({ "method": "tpm" })),
                    )
                    .map_or_else(|e| e.to_string(), |v| v.to_string());
                return Err(format!(
                    "not unlocked after {} s: {status}; a TPM unlock now answers {tpm}",
                    timeout.as_secs()
                )
                .into());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// A secret's value (an audited reveal).
    pub(crate) fn reveal(&self, vault: &str, path: &str) -> Result<String, Failure> {
        let answer = self.ok(
            "POST",
            &format!("/api/vaults/{vault}/reveal"),
            Some(json!({ "path": path })),
        )?;
        Ok(answer["value"].as_str().unwrap_or_default().to_owned())
    }
}

/// The SHA-256 fingerprint of the certificate the console presents, as `AA:BB:...`.
pub(crate) fn presented_fingerprint() -> Result<String, Failure> {
    let pem = run(Command::new("sh").arg("-c").arg(format!(
        "openssl s_client -connect 127.0.0.1:{CONSOLE_PORT} -servername pk-appliance </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    )))?;
    // "sha256 Fingerprint=AA:BB:..." (the prefix's case differs between versions).
    let fingerprint = pem
        .trim()
        .rsplit('=')
        .next()
        .ok_or("no fingerprint from openssl")?
        .to_uppercase();
    if fingerprint.len() != 95 {
        return Err(format!("openssl printed no SHA-256 fingerprint: {pem:?}").into());
    }
    Ok(fingerprint)
}
