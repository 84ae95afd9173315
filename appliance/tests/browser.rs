//! The console in a real browser: headless Chromium driven through chromedriver
//! (WebDriver, with thirtyfour). The appliance runs in this process with a software TPM;
//! a second node runs beside it. A user claims the box with the setup code, sees the
//! recovery code, watches the node unlock through the TPM, locks and unlocks it, creates a
//! vault and a secret, adds the second node and shares the vault with it, and finds all
//! of it in the audit log. Screenshots of each page go to
//! `target/console-screenshots/`. Afterwards the daemon's log must hold none of the
//! passwords, recovery words or secret values typed in.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appliance::config::Config;
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        tokens: node::tokens::TokenConfig::default(),
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
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(appliance::daemon::run_until(
        config,
        move |started| {
            let _ = ready_tx.send(started.clone());
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let started = ready_rx.await.unwrap();
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
    let console = started.console_urls[0].trim_end_matches('/').to_owned();

    // Setup: the fingerprint shown is the one logged; the setup code claims the box.
    driver.goto(&console).await.unwrap();
    page_with(&driver, &started.fingerprint).await;
    assert!(
        driver
            .current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/setup")
    );
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
    let words = el(&driver, By::Id("recovery-code"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(words.split_whitespace().count(), 24);
    shot(&driver, "recovery-code").await;

    // The node was sealed by the TPM: it unlocks by itself.
    driver.goto(format!("{console}/status")).await.unwrap();
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
    el(&driver, By::Css("select#method option[value='tpm']"))
        .await
        .click()
        .await
        .unwrap();
    submit(&driver, "/unlock").await;
    page_with(&driver, "Unlocked.").await;
    state_is(&driver, "unlocked", false).await;

    // A vault and a secret.
    driver.goto(format!("{console}/vaults")).await.unwrap();
    fill(&driver, "name", "family").await;
    submit(&driver, "/vaults").await;
    page_with(&driver, "Vault family created.").await;
    shot(&driver, "vaults").await;
    driver
        .goto(format!("{console}/vaults/family"))
        .await
        .unwrap();
    fill(&driver, "path", "wifi").await;
    fill(&driver, "value", SECRET_VALUE).await;
    submit(&driver, "/vaults/family/secrets").await;
    let page = page_with(&driver, "Saved family:wifi.").await;
    assert!(!page.contains(SECRET_VALUE), "values are never shown");
    // ...until the admin reveals one, which the audit log records.
    el(&driver, By::Id("reveal-wifi"))
        .await
        .click()
        .await
        .unwrap();
    page_with(&driver, "the reveal is in the audit log").await;
    let revealed = el(&driver, By::Id("revealed")).await.text().await.unwrap();
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
    driver.goto(format!("{console}/peers")).await.unwrap();
    fill(&driver, "node_id", &node2).await;
    fill(&driver, "addr", &node2_addr).await;
    submit(&driver, "/peers").await;
    page_with(&driver, &format!("Added {node2}.")).await;
    // The pairing code carries this node's NodeId and the address the browser used.
    let pairing = el(&driver, By::Id("pairing")).await.text().await.unwrap();
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
    el(
        &driver,
        By::Css(format!(
            "form[action='/peers/ping'] input[value='{node2}'] ~ button"
        )),
    )
    .await
    .click()
    .await
    .unwrap();
    page_with(&driver, &format!("{node2} answered from")).await;
    shot(&driver, "peers").await;
    driver
        .goto(format!("{console}/peers/pair.svg"))
        .await
        .unwrap();
    let svg = driver.source().await.unwrap();
    assert!(svg.contains("<svg"), "the QR code is an SVG image: {svg}");
    driver
        .goto(format!("{console}/vaults/family"))
        .await
        .unwrap();
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
    driver.goto(format!("{console}/backups")).await.unwrap();
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
        driver.goto(format!("{console}/backups")).await.unwrap();
        result = el(&driver, By::Css("td.result"))
            .await
            .text()
            .await
            .unwrap();
        if result.starts_with("ok") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(result.starts_with("ok"), "the scheduled pull ran: {result}");
    shot(&driver, "backups").await;
    driver.goto(format!("{console}/status")).await.unwrap();
    page_with(&driver, "laptop from").await;

    // Keyslots: a spare passphrase, enrolled with the TPM's say-so, tested, removed.
    driver.goto(format!("{console}/keyslots")).await.unwrap();
    el(&driver, By::Css("select#kind option[value='passphrase']"))
        .await
        .click()
        .await
        .unwrap();
    fill(&driver, "secret", SPARE_PASSPHRASE).await;
    fill(&driver, "label", "spare").await;
    el(
        &driver,
        By::Css("select#enrol-auth_method option[value='tpm']"),
    )
    .await
    .click()
    .await
    .unwrap();
    submit(&driver, "/keyslots").await;
    page_with(&driver, "Enrolled keyslot 2 (soft).").await;
    fill_css(
        &driver,
        "input[placeholder='passphrase']",
        "not the spare passphrase",
    )
    .await;
    el(&driver, By::Id("test-2")).await.click().await.unwrap();
    page_with(&driver, "Keyslot 2 did not open").await;
    fill_css(&driver, "input[placeholder='passphrase']", SPARE_PASSPHRASE).await;
    el(&driver, By::Id("test-2")).await.click().await.unwrap();
    page_with(&driver, "Keyslot 2 opens this node's data key.").await;
    el(&driver, By::Css("select#slot option[value='2']"))
        .await
        .click()
        .await
        .unwrap();
    el(
        &driver,
        By::Css("select#remove-auth_method option[value='tpm']"),
    )
    .await
    .click()
    .await
    .unwrap();
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
    el(&driver, By::Css("select#kind option[value='yubikey']"))
        .await
        .click()
        .await
        .unwrap();
    fill(&driver, "secret", YUBIKEY_PIN).await;
    el(
        &driver,
        By::Css("select#enrol-auth_method option[value='tpm']"),
    )
    .await
    .click()
    .await
    .unwrap();
    submit(&driver, "/keyslots").await;
    page_with(&driver, "Enrolled keyslot 3 (yubikey).").await;
    shot(&driver, "keyslots").await;
    driver.goto(format!("{console}/status")).await.unwrap();
    submit(&driver, "/lock").await;
    state_is(&driver, "locked", false).await;
    // Nobody touches the key: the prompt shows, then the unlock fails.
    touch.set_mode(hsm::sim::piv::TouchMode::Never);
    touch.set_timeout(Duration::from_secs(4));
    el(&driver, By::Css("select#method option[value='yubikey']"))
        .await
        .click()
        .await
        .unwrap();
    fill(&driver, "secret", YUBIKEY_PIN).await;
    submit(&driver, "/unlock").await;
    let prompt = el(&driver, By::Id("touch")).await.text().await.unwrap();
    assert!(prompt.contains("Touch your key now."), "{prompt}");
    shot(&driver, "touch-your-key").await;
    page_with(&driver, "Not unlocked").await;
    state_is(&driver, "locked", false).await;
    // Now the key is touched.
    touch.set_mode(hsm::sim::piv::TouchMode::Approve);
    el(&driver, By::Css("select#method option[value='yubikey']"))
        .await
        .click()
        .await
        .unwrap();
    fill(&driver, "secret", YUBIKEY_PIN).await;
    submit(&driver, "/unlock").await;
    page_with(&driver, "Unlocked.").await;
    state_is(&driver, "unlocked", false).await;
    let _ = card.stop();
    drop(pcscd);

    // All of it is in the audit log.
    driver.goto(format!("{console}/audit")).await.unwrap();
    let audit = page_with(&driver, "vault.shared").await;
    for event in [
        "agent.locked",
        "agent.unlocked",
        "vault.created",
        "secret.written",
        "node.added",
        "vault.shared",
        "secret.revealed",
        "backup.added",
        "keyslot.enrolled",
        "keyslot.removed",
    ] {
        assert!(
            audit.contains(event),
            "{event} missing from the audit page: {audit}"
        );
    }
    shot(&driver, "audit").await;

    // Log out; a wrong password is refused; the right one logs in.
    driver.goto(format!("{console}/status")).await.unwrap();
    submit(&driver, "/logout").await;
    fill(&driver, "password", "not the password").await;
    submit(&driver, "/login").await;
    page_with(&driver, "Wrong password.").await;
    shot(&driver, "login").await;
    fill(&driver, "password", ADMIN_PASSWORD).await;
    submit(&driver, "/login").await;
    page_with(&driver, "Last backups").await;
    assert!(
        driver
            .current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/status")
    );

    // The admin changes the password: the old one stops working, the new one works.
    el(&driver, By::LinkText("Account"))
        .await
        .click()
        .await
        .unwrap();
    fill(&driver, "current", ADMIN_PASSWORD).await;
    fill(&driver, "new", NEW_ADMIN_PASSWORD).await;
    fill(&driver, "confirm", NEW_ADMIN_PASSWORD).await;
    submit(&driver, "/account/password").await;
    page_with(&driver, "Password changed.").await;
    shot(&driver, "account").await;
    submit(&driver, "/logout").await;
    fill(&driver, "password", ADMIN_PASSWORD).await;
    submit(&driver, "/login").await;
    page_with(&driver, "Wrong password.").await;
    fill(&driver, "password", NEW_ADMIN_PASSWORD).await;
    submit(&driver, "/login").await;
    page_with(&driver, "Last backups").await;

    driver.goto(format!("{console}/audit")).await.unwrap();
    let audit = page_with(&driver, "console.login").await;
    for event in [
        "console.login_failed",
        "console.logout",
        "console.password_changed",
        "\"via\":\"console\"",
    ] {
        assert!(
            audit.contains(event),
            "{event} missing from the audit page: {audit}"
        );
    }

    // The way back from a forgotten password, for the screenshots (the reset itself is
    // in tests/console.rs).
    driver.goto(format!("{console}/reset")).await.unwrap();
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
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), daemon).await;
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
