//! Updates through the console and `pk-appliance update`, against a real installer
//! (`pk_update::serve::serve` over a GPT disk image, `common::installer`): the daemon
//! runs in this process and is spoken to over HTTPS, the bundle streamed as the request
//! body (the API) or a multipart form (the page); and the real `pk-appliance` binary.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::https::{Answer, Https, claimed, parse};
use common::installer::TestBox;
use common::{HERE, api_get, console, get_page};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PASSWORD: &str = common::ADMIN_PASSWORD;

/// What the daemon logs, for the tests to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The log of this test binary (one subscriber for the process).
fn captured_log() -> Captured {
    static LOG: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let writer = log.clone();
        let _ = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .try_init();
        log
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_installs_a_bundle_refuses_what_it_must_and_reboots() {
    let log = captured_log();
    let machine = TestBox::start("1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let (daemon, admin, recovery) = claimed(dir.path(), &machine.socket).await;

    let answer = admin.send("GET", "/api/update", &[], b"").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let view = answer.json();
    assert_eq!(view["status"]["running"], "a", "{view}");
    assert_eq!(view["status"]["running_version"], "1.0.0", "{view}");
    assert_eq!(view["status"]["other_state"], json!({ "state": "empty" }));
    assert_eq!(view["failed_update"], Value::Null);
    assert_eq!(view["job"], Value::Null);

    // A bundle not signed with the update key: refused, nothing written.
    let before = machine.disk();
    let foreign = admin
        .upload("", &machine.foreign_bundle(2, "1.1.0"), &[])
        .await;
    assert_eq!(foreign.status, 422, "{}", foreign.body);
    assert_eq!(foreign.json()["kind"], "signature", "{}", foreign.body);
    assert!(
        foreign.json()["error"]
            .as_str()
            .unwrap()
            .contains("nothing was written")
    );
    assert_eq!(machine.disk(), before, "a refused bundle writes nothing");

    // Without its CSRF header, or its session, nothing is read.
    let bundle = machine.bundle(2, "1.1.0");
    let octets = [("Content-Type", "application/octet-stream")];
    let forged = admin.send("POST", "/api/update", &octets, b"x").await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let stranger = Https {
        cookie: String::new(),
        ..Https::new(&daemon, &dir.path().join("state"))
    };
    assert_eq!(stranger.upload("", b"x", &[]).await.status, 401);
    assert_eq!(machine.disk(), before);

    // A good bundle: installed in slot B, which the status then shows.
    let good = admin.upload("", &bundle, &[]).await;
    assert_eq!(good.status, 200, "{}", good.body);
    assert_eq!(good.json()["version"], "1.1.0");
    assert_eq!(good.json()["slot"], "b");
    let view = admin.send("GET", "/api/update", &[], b"").await.json();
    assert_eq!(
        view["status"]["other_state"]["state"], "installed",
        "{view}"
    );
    assert_eq!(view["status"]["other_state"]["version"], "1.1.0", "{view}");
    assert_eq!(view["status"]["other_state"]["tries"]["left"], 3, "{view}");
    assert_eq!(view["job"]["state"], "installed", "{view}");

    // An older version: refused until the recovery code approves it.
    let installed = machine.disk();
    let older = machine.bundle(3, "0.9.0");
    let refused = admin.upload("", &older, &[]).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.json()["kind"], "downgrade");
    assert_eq!(
        machine.disk(),
        installed,
        "a refused downgrade writes nothing"
    );
    let no_code = admin.upload("?allow_downgrade=1", &older, &[]).await;
    assert_eq!(no_code.status, 403, "{}", no_code.body);
    let mut wrong: Vec<&str> = recovery.split_whitespace().collect();
    wrong.swap(0, 1);
    let wrong = wrong.join(" ");
    let wrong_code = admin
        .upload("?allow_downgrade=1", &older, &[("X-Recovery-Code", &wrong)])
        .await;
    assert_eq!(wrong_code.status, 403, "{}", wrong_code.body);
    assert_eq!(wrong_code.json()["kind"], "approval");
    assert_eq!(machine.disk(), installed);
    let approved = admin
        .upload(
            "?allow_downgrade=1",
            &older,
            &[("X-Recovery-Code", &recovery)],
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.json()["version"], "0.9.0");

    // The admin reboots; the installer's hook is asked once.
    let reboot = admin.api("POST", "/api/update/reboot", json!({})).await;
    assert_eq!(reboot.status, 200, "{}", reboot.body);
    assert_eq!(machine.reboots.load(Ordering::SeqCst), 1);

    // The update did not come up healthy: the box runs 1.0.0 again, and says so, once in
    // the log.
    machine.fail_the_update();
    for _ in 0..2 {
        let view = admin.send("GET", "/api/update", &[], b"").await.json();
        assert_eq!(view["failed_update"]["version"], "0.9.0", "{view}");
        assert_eq!(
            view["failed_update"]["message"],
            "version 0.9.0 did not come up healthy; the box is running 1.0.0 again"
        );
    }

    // Audited: the events recorded while the node was locked are written at the unlock.
    let unlock = json!({ "method": "passphrase", "secret": PASSWORD });
    let unlocked = admin.api("POST", "/api/unlock", unlock).await;
    assert_eq!(unlocked.status, 200, "{}", unlocked.body);
    let audit = admin.send("GET", "/api/audit", &[], b"").await.json();
    let events: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for event in [
        "console.update_installed",
        "console.update_refused",
        "console.update_approval_failed",
        "console.reboot",
    ] {
        assert!(events.contains(&event), "{event} in {events:?}");
    }
    daemon.stop().await.unwrap().unwrap().unwrap();
    let log = log.text();
    for event in [
        "update.started",
        "update.installed",
        "update.refused",
        "update.reboot",
    ] {
        assert!(log.contains(event), "{event} in the log:\n{log}");
    }
    let failed_boot = log
        .lines()
        .filter(|l| l.contains("update.failed_boot") && l.contains("0.9.0"))
        .count();
    assert_eq!(failed_boot, 1, "logged once:\n{log}");
    assert!(!log.contains(&recovery), "no recovery code in the log");
    assert!(!log.contains(&wrong), "no wrong recovery code in the log");
    assert!(!log.contains(PASSWORD), "no password in the log");
}

/// `multipart/form-data` with `fields` in order: (name, file name, bytes).
fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    const BOUNDARY: &str = "----pk-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, file, bytes) in fields {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let disposition = match file {
            Some(file) => format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            ),
            None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

impl Https {
    /// Posts the updates page's form; the page the browser is sent to once the install
    /// has ended (it reloads itself until then).
    async fn post_form(&self, fields: &[(&str, Option<&str>, &[u8])]) -> (Answer, Answer) {
        let (content_type, body) = multipart(fields);
        let posted = self
            .send(
                "POST",
                "/updates",
                &[("Content-Type", &content_type)],
                &body,
            )
            .await;
        let started = Instant::now();
        loop {
            let page = self.send("GET", "/updates", &[], b"").await;
            if !page.body.contains("http-equiv=\"refresh\"") {
                return (posted, page);
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{}", page.body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_uploads_a_bundle_shows_the_outcome_and_reboots() {
    let machine = TestBox::start("1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let (daemon, admin, recovery) = claimed(dir.path(), &machine.socket).await;

    let page = admin.send("GET", "/updates", &[], b"").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("version 1.0.0, slot A"), "{}", page.body);
    assert!(
        page.body.contains("enctype=\"multipart/form-data\""),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("id=\"reboot\""),
        "nothing to reboot into yet"
    );
    let csrf = csrf_of(&page.body);
    let status = admin.send("GET", "/status", &[], b"").await;
    assert!(
        status.body.contains("href=\"/updates\""),
        "the navigation links the page"
    );

    // A form without its token is refused before the bundle is read.
    let bundle = machine.bundle(2, "1.1.0");
    let before = machine.disk();
    let (content_type, body) = multipart(&[("bundle", Some("b.pkupdate"), b"x")]);
    let forged = admin
        .send(
            "POST",
            "/updates",
            &[("Content-Type", &content_type)],
            &body,
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert_eq!(machine.disk(), before);

    // The upload: the browser is sent to the page, which shows the outcome and the
    // reboot button.
    let fields = [
        ("csrf", None, csrf.as_bytes()),
        ("recovery", None, &b""[..]),
        ("bundle", Some("pk-appliance-amd64-1.1.0.pkupdate"), &bundle),
    ];
    let (posted, page) = admin.post_form(&fields).await;
    assert_eq!(posted.status, 303, "{}", posted.body);
    assert_eq!(posted.header("location").as_deref(), Some("/updates"));
    assert!(
        page.body.contains("Installed 1.1.0 in slot B"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("version 1.1.0, installed"),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"reboot\""), "{}", page.body);

    // An older version asks for the recovery code, then installs with it.
    let older = machine.bundle(3, "0.8.0");
    let without = [
        ("csrf", None, csrf.as_bytes()),
        ("bundle", Some("old.pkupdate"), &older[..]),
    ];
    let (_, page) = admin.post_form(&without).await;
    assert!(page.body.contains("id=\"downgrade\""), "{}", page.body);
    assert!(page.body.contains("<details open"), "{}", page.body);
    let with = [
        ("csrf", None, csrf.as_bytes()),
        ("recovery", None, recovery.as_bytes()),
        ("bundle", Some("old.pkupdate"), &older[..]),
    ];
    let (posted, page) = admin.post_form(&with).await;
    assert_eq!(posted.status, 303, "{}", posted.body);
    assert!(
        page.body.contains("Installed 0.8.0 in slot B"),
        "{}",
        page.body
    );

    // The reboot button.
    let (content_type, body) = ("application/x-www-form-urlencoded", format!("csrf={csrf}"));
    let rebooted = admin
        .send(
            "POST",
            "/updates/reboot",
            &[("Content-Type", content_type)],
            body.as_bytes(),
        )
        .await;
    assert_eq!(rebooted.status, 200, "{}", rebooted.body);
    assert!(rebooted.body.contains("Rebooting."), "{}", rebooted.body);
    assert_eq!(machine.reboots.load(Ordering::SeqCst), 1);

    // The update did not come up healthy: the page says so in red.
    machine.fail_the_update();
    let page = admin.send("GET", "/updates", &[], b"").await;
    assert!(
        page.body
            .contains("version 0.8.0 did not come up healthy; the box is running 1.0.0 again"),
        "{}",
        page.body
    );
    assert!(page.body.contains("class=\"error\" id=\"failed-update\""));
    daemon.stop().await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn without_an_installer_the_console_says_updates_are_not_available_here() {
    let dir = tempfile::tempdir().unwrap();
    let c = console(dir.path());
    let (admin, _) = common::set_up(&c, PASSWORD, PASSWORD).await;
    let expected = format!(
        "updates are not available here: no installer at {}",
        dir.path().join("no-pk-update.sock").display()
    );
    let (status, _, body) = api_get(&c, "/api/update", Some(&admin.cookie)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], expected.as_str());
    assert_eq!(body["kind"], "unavailable");
    let (status, _, body) = admin.post("/api/update/reboot", json!({})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let page = get_page(&c, "/updates", Some(&admin.cookie), HERE).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&expected), "{}", page.body);
    assert!(
        !page.body.contains("type=\"file\""),
        "no upload form: {}",
        page.body
    );
}

/// `pk-appliance update` with `args`: its exit code, standard output and error.
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pk-appliance"))
        .arg("update")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_installs_reports_and_refuses() {
    let machine = TestBox::start("1.0.0");
    let socket = machine.socket.to_str().unwrap();

    let (code, out, err) = cli(&["--status", "--socket", socket]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "running: version 1.0.0 in slot A\nslot B: empty\n");

    let foreign = machine.bundle_file("foreign.pkupdate", &machine.foreign_bundle(2, "1.1.0"));
    let before = machine.disk();
    let (code, _, err) = cli(&[foreign.to_str().unwrap(), "--socket", socket]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused (signature)"), "{err}");
    assert_eq!(machine.disk(), before);

    let good = machine.bundle_file("good.pkupdate", &machine.bundle(2, "1.1.0"));
    let (code, out, err) = cli(&[good.to_str().unwrap(), "--socket", socket]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("installed 1.1.0 in slot B (pk-appliance-"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("reboot to start it"), "{out}");
    let stages: Vec<&str> = err.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(stages, ["verify", "write", "readback", "uki"], "{err}");
    assert!(err.lines().all(|l| l.contains(": 100 %")), "{err}");
    assert!(
        !err.contains('\x1b') && !err.contains('\r'),
        "plain text: {err:?}"
    );
    let (_, out, _) = cli(&["--status", "--socket", socket]);
    assert!(out.contains("slot B: version 1.1.0, installed"), "{out}");

    let older = machine.bundle_file("older.pkupdate", &machine.bundle(3, "0.9.0"));
    let (code, _, err) = cli(&[older.to_str().unwrap(), "--socket", socket]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--allow-downgrade installs it anyway"),
        "{err}"
    );
    let (code, out, err) = cli(&[
        older.to_str().unwrap(),
        "--allow-downgrade",
        "--socket",
        socket,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("installed 0.9.0 in slot B"), "{out}");

    machine.fail_the_update();
    let (_, out, _) = cli(&["--status", "--socket", socket]);
    assert!(
        out.contains("did not come up healthy; the box is running 1.0.0 again"),
        "{out}"
    );
    let (code, out, _) = cli(&["--status", "--json", "--socket", socket]);
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["other_state"]["state"], "failed");

    let missing = machine.dir.path().join("nothing-here.sock");
    let (code, _, err) = cli(&["--status", "--socket", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("updates are not available here: no installer at"),
        "{err}"
    );
    for usage in [
        &[][..],
        &["--bogus"],
        &["a", "b"],
        &["--status", "a"],
        &["--socket"],
    ] {
        let (code, _, err) = cli(usage);
        assert_eq!(code, 64, "{usage:?}: {err}");
    }
    let (code, out, _) = cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--allow-downgrade"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_install_runs_at_a_time_and_the_page_follows_it() {
    let machine = TestBox::start("1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let (daemon, admin, _) = claimed(dir.path(), &machine.socket).await;
    let bundle = machine.bundle(2, "1.1.0");
    let half = bundle.len() / 2;

    // The first upload sends half the bundle, then waits.
    let tcp = tokio::net::TcpStream::connect(admin.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut first = admin.tls.connect(name, tcp).await.unwrap();
    let head = format!(
        "POST /api/update HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
         Content-Type: application/octet-stream\r\nCookie: {}\r\nX-CSRF-Token: {}\r\n\
         Connection: close\r\n\r\n",
        bundle.len(),
        admin.cookie,
        admin.csrf
    );
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&bundle[..half]).await.unwrap();
    first.flush().await.unwrap();
    let started = Instant::now();
    let job = loop {
        let view = admin.send("GET", "/api/update", &[], b"").await.json();
        let job = view["job"].clone();
        // The installer reports its first stage once it has checked the header (it
        // writes in larger blocks than half this bundle).
        if job["state"] == "running" && job["stage"] == "verify" {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(job["received"].as_u64().unwrap() <= half as u64, "{job}");

    // Meanwhile a second install and a reboot are refused; the page shows the progress
    // and reloads itself.
    let second = admin.upload("", b"x", &[]).await;
    assert_eq!(second.status, 409, "{}", second.body);
    assert_eq!(second.json()["kind"], "busy");
    let reboot = admin.api("POST", "/api/update/reboot", json!({})).await;
    assert_eq!(reboot.status, 409, "{}", reboot.body);
    let page = admin.send("GET", "/updates", &[], b"").await;
    assert!(
        page.body.contains("http-equiv=\"refresh\""),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("Installing: checking the signature, 100 %"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("type=\"file\""),
        "no second upload: {}",
        page.body
    );

    // The rest of the bundle: the first install ends well.
    first.write_all(&bundle[half..]).await.unwrap();
    first.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = first.read_to_end(&mut answer).await;
    let answer = parse(&answer);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["version"], "1.1.0");
    assert_eq!(machine.reboots.load(Ordering::SeqCst), 0);
    daemon.stop().await.unwrap().unwrap().unwrap();
}
