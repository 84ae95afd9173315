//! The console in a real browser: headless Chromium driven through chromedriver
//! (WebDriver, with thirtyfour). The appliance runs in this process with a software TPM;
//! a second node runs beside it. A user claims the box with the setup code, sees the
//! recovery code, watches the node unlock through the TPM, locks and unlocks it, creates a
//! vault and a secret, adds the second node and shares the vault with it, and finds all
//! of it in the audit log. Screenshots of each page go to
//! `target/console-screenshots/`. Afterwards the daemon's log must hold none of the
//! passwords, recovery words or secret values typed in.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appliance::config::Config;
use common::{InProcess, free_port};
use thirtyfour::prelude::*;

const ADMIN_PASSWORD: &str = "browser-admin-password-7";
const NEW_ADMIN_PASSWORD: &str = "changed-admin-password-8";
const SECRET_VALUE: &str = "planted-secret-value-42";
const NODE2_PASSPHRASE: &str = "second node passphrase";
const SPARE_PASSPHRASE: &str = "a spare unlock passphrase";
const YUBIKEY_PIN: &str = "73915846";
const LAPTOP_SECRET: &str = "laptop-secret-value-19";

/// Everything the daemon logs, kept for the check at the end.
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

/// chromedriver on a loopback port; killed when dropped.
struct Driver(std::process::Child, u16);

impl Driver {
    fn start() -> Driver {
        hsm::sim::require_program("chromedriver", "chromium-driver").unwrap();
        hsm::sim::require_program("chromium", "chromium").unwrap();
        let port = free_port();
        let child = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver(child, port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A second node beside the appliance (the library's agent, a passphrase keyslot).
async fn second_node(dir: &std::path::Path) -> (String, String, node::client::Client) {
    use hsm::soft::{Argon2Params, SoftProtector};
    let path = node::NodePath::new(dir.join("second"));
    let cheap = Argon2Params {
        m_kib: 8 * 1024,
        t: 1,
        p: 1,
    };
    node::keyslots::Keyslots::init(
        &path,
        &SoftProtector::new(hsm::Pin::from(NODE2_PASSPHRASE), cheap),
        "second",
    )
    .unwrap();
    let config = node::agent::AgentConfig {
        node: path.clone(),
        tokens: common::hardware(),
        peer_listen: Some("127.0.0.1:0".parse().unwrap()),
        lan: None,
        github: node::provider::GitHubConfig::default(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(node::agent::run(config, move || {
        let _ = tx.send(());
    }));
    rx.await.unwrap();
    let client = node::client::Client::new(&path);
    client
        .call(node::api::agent::Unlock {
            slot: None,
            kind: Some(hsm::Kind::Soft),
            secret: Some(node::api::SecretBytes(NODE2_PASSPHRASE.as_bytes().to_vec())),
        })
        .await
        .unwrap();
    let status = client.call(node::api::agent::Status).await.unwrap();
    (status.node_id.unwrap(), status.peer_addr.unwrap(), client)
}

async fn shot(driver: &WebDriver, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    driver
        .screenshot(&dir.join(format!("{name}.png")))
        .await
        .unwrap();
}

/// The element `by` finds, waiting (up to 10 s) while a page is still loading.
async fn el(driver: &WebDriver, by: By) -> WebElement {
    for _ in 0..100 {
        if let Ok(found) = driver.find(by.clone()).await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver.find(by).await.unwrap()
}

/// Clicks the element `by` finds.
async fn click(driver: &WebDriver, by: By) {
    el(driver, by).await.click().await.unwrap();
}

/// Chooses `value` in the `<select>` with the id `select`.
async fn choose(driver: &WebDriver, select: &str, value: &str) {
    let option = format!("select#{select} option[value='{value}']");
    click(driver, By::Css(option)).await;
}

/// The text of the element `by` finds.
async fn text(driver: &WebDriver, by: By) -> String {
    el(driver, by).await.text().await.unwrap()
}

/// Opens the console's page at `path`.
async fn go(driver: &WebDriver, console: &str, path: &str) {
    driver.goto(format!("{console}{path}")).await.unwrap();
}

/// Checks that the browser is at the console's page `path`.
async fn at(driver: &WebDriver, path: &str) {
    let url = driver.current_url().await.unwrap();
    assert!(url.as_str().ends_with(path), "at {url}, not {path}");
}

async fn fill(driver: &WebDriver, id: &str, text: &str) {
    el(driver, By::Id(id)).await.send_keys(text).await.unwrap();
}

async fn submit(driver: &WebDriver, form_action: &str) {
    el(
        driver,
        By::Css(format!(
            "form[action='{form_action}'] button[type='submit']"
        )),
    )
    .await
    .click()
    .await
    .unwrap();
}

/// Types into the first element the CSS selector finds, after clearing it.
async fn fill_css(driver: &WebDriver, css: &str, text: &str) {
    let found = el(driver, By::Css(css)).await;
    found.clear().await.unwrap();
    found.send_keys(text).await.unwrap();
}

/// Sets the emulated card's PIN, as its owner would before enrolling it.
async fn change_pin(old: &str, new: &str) {
    let (old, new) = (old.to_owned(), new.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut last = None;
        for _ in 0..150 {
            match yubikey::YubiKey::open() {
                Ok(mut key) => return key.change_pin(old.as_bytes(), new.as_bytes()).unwrap(),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the emulated YubiKey never showed up: {last:?}");
    })
    .await
    .unwrap();
}

async fn body(driver: &WebDriver) -> String {
    for _ in 0..50 {
        if let Ok(found) = driver.find(By::Tag("body")).await
            && let Ok(text) = found.text().await
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no page body");
}

/// The page's text once it contains `needle` (waiting up to 10 s for the page to load).
async fn page_with(driver: &WebDriver, needle: &str) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = body(driver).await;
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never showed {needle:?}: {text}");
}

/// Logs in on the login page with `password`; waits for the page that shows `then`.
async fn log_in(driver: &WebDriver, password: &str, then: &str) {
    fill(driver, "password", password).await;
    submit(driver, "/login").await;
    page_with(driver, then).await;
}

/// Opens the audit page, waits until it shows the first of `events`, and checks that it
/// shows every one.
async fn audit_shows(driver: &WebDriver, console: &str, events: &[&str]) {
    go(driver, console, "/audit").await;
    let audit = page_with(driver, events[0]).await;
    for event in events {
        assert!(
            audit.contains(event),
            "{event} missing from the audit page: {audit}"
        );
    }
}

/// Waits (reloading the page) until the status page's state is `want`.
async fn state_is(driver: &WebDriver, want: &str, reload: bool) {
    for _ in 0..60 {
        if let Ok(found) = driver.find(By::Id("state")).await
            && found.text().await.is_ok_and(|t| t == want)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if reload {
            let _ = driver.refresh().await;
        }
    }
    panic!("the state never became {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_claims_and_runs_the_appliance_in_a_browser() {
    let log = Captured::default();
    let writer = log.clone();
    let _ = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let tpm = hsm::sim::Swtpm::start(&dir.path().join("swtpm")).unwrap();
    let config = Config {
        state_dir: dir.path().join("state"),
        console_listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: Some("127.0.0.1:0".parse().unwrap()),
        lan: false,
        tpm_tcti: Some(tpm.tcti()),
        ..Config::default()
    };
    let daemon = InProcess::start(config).await;
    let started = &daemon.started;
    let code = started.setup_code.clone().unwrap();
    let (node2, node2_addr, node2_client) = second_node(dir.path()).await;

    let chromedriver = Driver::start();
    let mut caps = DesiredCapabilities::chrome();
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1000,900",
    ] {
        caps.add_arg(arg).unwrap();
    }
    let profile = dir.path().join("chromium-profile");
    caps.add_arg(&format!("--user-data-dir={}", profile.display()))
        .unwrap();
    // The console's certificate is self-signed; the test compares its fingerprint with
    // the one the daemon logged instead.
    caps.accept_insecure_certs(true).unwrap();
    let driver = WebDriver::new(format!("http://127.0.0.1:{}", chromedriver.1), caps)
        .await
        .unwrap();
    let console = daemon.console_url();

    // Setup: the fingerprint shown is the one logged; the setup code claims the box.
    driver.goto(&console).await.unwrap();
    page_with(&driver, &started.fingerprint).await;
    at(&driver, "/setup").await;
    shot(&driver, "setup").await;
    fill(&driver, "setup_code", "WRONG-CODE-0000").await;
    fill(&driver, "password", ADMIN_PASSWORD).await;
    fill(&driver, "confirm", ADMIN_PASSWORD).await;
    submit(&driver, "/setup").await;
    page_with(&driver, "That is not the setup code.").await;
    fill(&driver, "setup_code", &code).await;
    fill(&driver, "password", ADMIN_PASSWORD).await;
    fill(&driver, "confirm", ADMIN_PASSWORD).await;
    submit(&driver, "/setup").await;
    let words = text(&driver, By::Id("recovery-code")).await;
    assert_eq!(words.split_whitespace().count(), 24);
    shot(&driver, "recovery-code").await;

    // The node was sealed by the TPM: it unlocks by itself.
    go(&driver, &console, "/status").await;
    state_is(&driver, "unlocked", true).await;
    assert!(
        body(&driver).await.contains("tpm"),
        "the TPM keyslot is listed"
    );
    shot(&driver, "status").await;
    submit(&driver, "/lock").await;
    page_with(&driver, "Locked: the keys are gone from memory.").await;
    state_is(&driver, "locked", false).await;
    shot(&driver, "locked").await;
    choose(&driver, "method", "tpm").await;
    submit(&driver, "/unlock").await;
    page_with(&driver, "Unlocked.").await;
    state_is(&driver, "unlocked", false).await;

    // A vault and a secret.
    go(&driver, &console, "/vaults").await;
    fill(&driver, "name", "family").await;
    submit(&driver, "/vaults").await;
    page_with(&driver, "Vault family created.").await;
    shot(&driver, "vaults").await;
    go(&driver, &console, "/vaults/family").await;
    fill(&driver, "path", "wifi").await;
    fill(&driver, "value", SECRET_VALUE).await;
    submit(&driver, "/vaults/family/secrets").await;
    let page = page_with(&driver, "Saved family:wifi.").await;
    assert!(!page.contains(SECRET_VALUE), "values are never shown");
    // ...until the admin reveals one, which the audit log records.
    click(&driver, By::Id("reveal-wifi")).await;
    page_with(&driver, "the reveal is in the audit log").await;
    let revealed = text(&driver, By::Id("revealed")).await;
    assert_eq!(revealed, SECRET_VALUE);
    shot(&driver, "reveal").await;

    // The second node, and the vault shared with it. The second node knows the appliance
    // too (so it takes the share's notification).
    let appliance = node::client::Client::new(&node::NodePath::new(dir.path().join("state/node")));
    let me = appliance.call(node::api::agent::Status).await.unwrap();
    node2_client
        .call(node::api::nodes::Add {
            node: me.node_id.clone().unwrap(),
            addr: me.peer_addr.clone().unwrap(),
            no_notify: false,
            no_ping: false,
        })
        .await
        .unwrap();
    go(&driver, &console, "/peers").await;
    fill(&driver, "node_id", &node2).await;
    fill(&driver, "addr", &node2_addr).await;
    submit(&driver, "/peers").await;
    page_with(&driver, &format!("Added {node2}.")).await;
    // The pairing code carries this node's NodeId and the address the browser used.
    let pairing = text(&driver, By::Id("pairing")).await;
    let my_id = me.node_id.clone().unwrap();
    let my_port = me
        .peer_addr
        .clone()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(pairing, format!("pk://{my_id}@127.0.0.1:{my_port}"));
    click(
        &driver,
        By::Css(format!(
            "form[action='/peers/ping'] input[value='{node2}'] ~ button"
        )),
    )
    .await;
    page_with(&driver, &format!("{node2} answered from")).await;
    shot(&driver, "peers").await;
    go(&driver, &console, "/peers/pair.svg").await;
    let svg = driver.source().await.unwrap();
    assert!(svg.contains("<svg"), "the QR code is an SVG image: {svg}");
    go(&driver, &console, "/vaults/family").await;
    fill(&driver, "who", &node2).await;
    submit(&driver, "/vaults/family/share").await;
    page_with(&driver, &format!("Shared family with {node2}.")).await;
    shot(&driver, "vault").await;

    // A scheduled pull of the second node's vault: the backups page shows its result,
    // and so does the status page.
    node2_client
        .call(node::api::vaults::Create {
            name: "laptop".into(),
        })
        .await
        .unwrap();
    node2_client
        .upload(
            node::api::secrets::Write {
                vault: "laptop".into(),
                path: "ssh-key".into(),
                kind: node::api::secrets::WriteKind::Write,
                size: Some(LAPTOP_SECRET.len() as u64),
            },
            LAPTOP_SECRET.as_bytes(),
        )
        .await
        .unwrap();
    node2_client
        .call(node::api::vaults::Share {
            vault: "laptop".into(),
            node: my_id.clone(),
            permissions: vec![
                node::nodes::VaultPermission::Clone,
                node::nodes::VaultPermission::Pull,
            ],
            grant: true,
        })
        .await
        .unwrap();
    go(&driver, &console, "/backups").await;
    fill(&driver, "vault", "laptop").await;
    fill(&driver, "node_id", &node2).await;
    el(&driver, By::Id("every_min"))
        .await
        .clear()
        .await
        .unwrap();
    fill(&driver, "every_min", "1").await;
    submit(&driver, "/backups").await;
    page_with(&driver, "laptop from").await;
    let mut result = String::new();
    for _ in 0..100 {
        go(&driver, &console, "/backups").await;
        result = text(&driver, By::Css("td.result")).await;
        if result.starts_with("ok") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(result.starts_with("ok"), "the scheduled pull ran: {result}");
    shot(&driver, "backups").await;
    go(&driver, &console, "/status").await;
    page_with(&driver, "laptop from").await;

    // Keyslots: a spare passphrase, enrolled with the TPM's say-so, tested, removed.
    go(&driver, &console, "/keyslots").await;
    choose(&driver, "kind", "passphrase").await;
    fill(&driver, "secret", SPARE_PASSPHRASE).await;
    fill(&driver, "label", "spare").await;
    choose(&driver, "enrol-auth_method", "tpm").await;
    submit(&driver, "/keyslots").await;
    page_with(&driver, "Enrolled keyslot 2 (soft).").await;
    fill_css(
        &driver,
        "input[placeholder='passphrase']",
        "not the spare passphrase",
    )
    .await;
    click(&driver, By::Id("test-2")).await;
    page_with(&driver, "Keyslot 2 did not open").await;
    fill_css(&driver, "input[placeholder='passphrase']", SPARE_PASSPHRASE).await;
    click(&driver, By::Id("test-2")).await;
    page_with(&driver, "Keyslot 2 opens this node's data key.").await;
    choose(&driver, "slot", "2").await;
    choose(&driver, "remove-auth_method", "tpm").await;
    submit(&driver, "/keyslots/remove").await;
    page_with(&driver, "Removed keyslot 2 (soft).").await;

    // A YubiKey (the emulated PIV card behind pcscd): enrolled, then it unlocks the node
    // with its PIN and a touch; the console says "touch your key now", then the outcome.
    let pcsc_dir = dir.path().join("pcscd");
    let pcscd = hsm::sim::pcsc::Pcscd::start(&pcsc_dir).unwrap();
    let card = hsm::sim::piv::PivCard::create(&dir.path().join("card.json"), 4242)
        .unwrap()
        .connect(pcscd.card_addr())
        .unwrap();
    let touch = card.touch();
    change_pin(hsm::sim::piv::DEFAULT_PIN, YUBIKEY_PIN).await;
    choose(&driver, "kind", "yubikey").await;
    fill(&driver, "secret", YUBIKEY_PIN).await;
    choose(&driver, "enrol-auth_method", "tpm").await;
    submit(&driver, "/keyslots").await;
    page_with(&driver, "Enrolled keyslot 3 (yubikey).").await;
    shot(&driver, "keyslots").await;
    go(&driver, &console, "/status").await;
    submit(&driver, "/lock").await;
    state_is(&driver, "locked", false).await;
    // Nobody touches the key: the prompt shows, then the unlock fails.
    touch.set_mode(hsm::sim::piv::TouchMode::Never);
    touch.set_timeout(Duration::from_secs(4));
    choose(&driver, "method", "yubikey").await;
    fill(&driver, "secret", YUBIKEY_PIN).await;
    submit(&driver, "/unlock").await;
    let prompt = text(&driver, By::Id("touch")).await;
    assert!(prompt.contains("Touch your key now."), "{prompt}");
    shot(&driver, "touch-your-key").await;
    page_with(&driver, "Not unlocked").await;
    state_is(&driver, "locked", false).await;
    // Now the key is touched.
    touch.set_mode(hsm::sim::piv::TouchMode::Approve);
    choose(&driver, "method", "yubikey").await;
    fill(&driver, "secret", YUBIKEY_PIN).await;
    submit(&driver, "/unlock").await;
    page_with(&driver, "Unlocked.").await;
    state_is(&driver, "unlocked", false).await;
    let _ = card.stop();
    drop(pcscd);

    // All of it is in the audit log.
    audit_shows(
        &driver,
        &console,
        &[
            "vault.shared",
            "agent.locked",
            "agent.unlocked",
            "vault.created",
            "secret.written",
            "node.added",
            "secret.revealed",
            "backup.added",
            "keyslot.enrolled",
            "keyslot.removed",
        ],
    )
    .await;
    shot(&driver, "audit").await;

    // Log out; a wrong password is refused; the right one logs in.
    go(&driver, &console, "/status").await;
    submit(&driver, "/logout").await;
    log_in(&driver, "not the password", "Wrong password.").await;
    shot(&driver, "login").await;
    log_in(&driver, ADMIN_PASSWORD, "Last backups").await;
    at(&driver, "/status").await;

    // The admin changes the password: the old one stops working, the new one works.
    click(&driver, By::LinkText("Account")).await;
    fill(&driver, "current", ADMIN_PASSWORD).await;
    fill(&driver, "new", NEW_ADMIN_PASSWORD).await;
    fill(&driver, "confirm", NEW_ADMIN_PASSWORD).await;
    submit(&driver, "/account/password").await;
    page_with(&driver, "Password changed.").await;
    shot(&driver, "account").await;
    submit(&driver, "/logout").await;
    log_in(&driver, ADMIN_PASSWORD, "Wrong password.").await;
    log_in(&driver, NEW_ADMIN_PASSWORD, "Last backups").await;

    audit_shows(
        &driver,
        &console,
        &[
            "console.login_failed",
            "console.logout",
            "console.password_changed",
            "\"via\":\"console\"",
        ],
    )
    .await;

    // The way back from a forgotten password, for the screenshots (the reset itself is
    // in tests/console.rs).
    go(&driver, &console, "/reset").await;
    page_with(&driver, "Recovery code").await;
    shot(&driver, "reset").await;

    // The second node received the share's notification.
    let inbox = node2_client
        .call(node::api::notifications::List {
            mailbox: node::notifications::Mailbox::Inbox,
            unread: false,
        })
        .await
        .unwrap();
    assert!(
        inbox
            .iter()
            .any(|n| matches!(&n.body, node::notifications::Body::VaultShare { name, .. } if name == "family")),
        "{inbox:?}"
    );

    driver.quit().await.unwrap();
    let _ = daemon.stop().await;
    let _ = node2_client.call(node::api::agent::Stop).await;

    let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(
        logged.contains("console.login"),
        "the log was captured: {logged}"
    );
    for planted in [
        ADMIN_PASSWORD,
        NEW_ADMIN_PASSWORD,
        SECRET_VALUE,
        NODE2_PASSPHRASE,
        SPARE_PASSPHRASE,
        YUBIKEY_PIN,
        LAPTOP_SECRET,
        words.as_str(),
    ] {
        assert!(!logged.contains(planted), "the daemon logged a secret");
    }
    let first_words: Vec<&str> = words.split_whitespace().take(3).collect();
    assert!(
        !logged.contains(&first_words.join(" ")),
        "the daemon logged recovery words"
    );
    let _ = std::io::stderr().flush();
}
