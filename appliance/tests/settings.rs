//! The owner's settings: changed in the console (page and API), checked before they are
//! stored (a refusal names the key and changes nothing), kept in the state directory, and
//! applied by the restart the console offers; the clock warning on the status page.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::time::Duration;

use appliance::config::Config;
use appliance::console::Console;
use appliance::daemon::Exit;
use appliance::settings::Settings;
use axum::http::StatusCode;
use common::https::{Https, claimed};
use common::{HERE, InProcess, console_config, get_page, post_form, set_up};
use serde_json::{Value, json};

fn value_of<'a>(view: &'a Value, key: &str) -> &'a Value {
    view["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {view}"))
}

#[tokio::test]
async fn the_console_stores_checked_settings_and_refuses_bad_ones_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let c = common::console(dir.path());
    let (admin, _) = set_up(&c, "an admin password", "a node passphrase").await;
    let state = dir.path().join("state");

    let (status, _, view) = admin.get("/api/settings").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["restart_pending"], false);
    assert_eq!(value_of(&view, "console_port")["value"], "8443");
    assert_eq!(value_of(&view, "console_port")["set"], false);
    assert_eq!(value_of(&view, "lan")["value"], "false");

    for (key, value) in [
        ("console_port", "22"),
        ("ntp_servers", "not a host!"),
        ("session_idle_s", "1"),
        ("state_dir", "/tmp"),
    ] {
        let (status, _, answer) = admin
            .post("/api/settings", json!({ "key": key, "value": value }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with(&format!("{key}:")), "{error}");
        assert!(
            !state.join("settings.toml").exists(),
            "a refused {key} stored something"
        );
    }

    let (status, _, answer) = admin
        .post(
            "/api/settings",
            json!({ "key": "ntp_servers", "value": "10.0.2.2 time.example.org" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let stored = Settings::load(&state).unwrap();
    assert_eq!(
        stored.ntp_servers,
        Some(vec!["10.0.2.2".to_owned(), "time.example.org".to_owned()])
    );
    let (_, _, view) = admin.get("/api/settings").await;
    assert_eq!(view["restart_pending"], true, "{view}");

    // The page: its forms, and the same refusal in words.
    let page = get_page(&c, "/settings", Some(&admin.cookie), HERE).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("id=\"restart-pending\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("name=\"key\" value=\"ntp_servers\""));
    let form = |key: &str, value: &str, csrf: &str| format!("csrf={csrf}&key={key}&value={value}");
    let forged = post_form(
        &c,
        "/settings",
        Some(&admin.cookie),
        &form("lan", "true", "wrong"),
        HERE,
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let refused = post_form(
        &c,
        "/settings",
        Some(&admin.cookie),
        &form("lan", "maybe", &admin.csrf),
        HERE,
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused
            .body
            .contains("lan: &quot;maybe&quot; is not true or false"),
        "{}",
        refused.body
    );
    let saved = post_form(
        &c,
        "/settings",
        Some(&admin.cookie),
        &form("lan", "true", &admin.csrf),
        HERE,
    )
    .await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.body);
    assert_eq!(Settings::load(&state).unwrap().lan, Some(true));

    // Without a session: nothing read, nothing stored.
    let (status, _, _) = common::api_get(&c, "/api/settings", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_status_page_warns_while_the_clock_is_unsynchronised() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("synchronized");
    let mut config = console_config(dir.path(), &dir.path().join("no-installer.sock"));
    config.time_sync_flag = Some(flag.clone());
    let c = Console::new(config);
    let (admin, _) = set_up(&c, "an admin password", "a node passphrase").await;
    let (_, _, status) = admin.get("/api/status").await;
    assert_eq!(status["clock"]["synchronized"], false, "{status}");
    assert!(status["clock"]["now_unix"].as_u64().unwrap() > 1_700_000_000);
    let page = get_page(&c, "/status", Some(&admin.cookie), HERE).await;
    assert!(
        page.body.contains("id=\"clock-unsynchronised\""),
        "{}",
        page.body
    );

    std::fs::write(&flag, b"").unwrap();
    let (_, _, status) = admin.get("/api/status").await;
    assert_eq!(status["clock"]["synchronized"], true, "{status}");
    let page = get_page(&c, "/status", Some(&admin.cookie), HERE).await;
    assert!(!page.body.contains("clock-unsynchronised"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_the_console_applies_the_settings_and_they_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, admin, _) = claimed(dir.path(), &dir.path().join("no-installer.sock")).await;
    let port = common::free_port();
    let answer = admin
        .api(
            "POST",
            "/api/settings",
            json!({ "key": "console_port", "value": port.to_string() }),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = admin.api("POST", "/api/settings/restart", json!({})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let ended = daemon
        .ended()
        .await
        .expect("the daemon ends after a restart request");
    assert_eq!(ended.unwrap().unwrap(), Exit::Restart);

    // Started again as systemd does, from the same configuration file's values: the
    // stored port holds, the setup does not come back, and the node is still there.
    let config = Config {
        state_dir: dir.path().join("state"),
        console_listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: None,
        ..Config::default()
    };
    let again = InProcess::start(config).await;
    assert!(
        again.console_url().ends_with(&format!(":{port}")),
        "{}",
        again.console_url()
    );
    assert_eq!(again.started.setup_code, None, "the box stays claimed");
    let https = Https::new(&again, &dir.path().join("state"));
    let login = https
        .api(
            "POST",
            "/api/login",
            json!({ "password": common::ADMIN_PASSWORD }),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.body);
    tokio::time::timeout(Duration::from_secs(30), again.stop())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
}
