//! The console's routes, driven in process (`oneshot`): setup with the setup code, login
//! with throttling, sessions, CSRF, and what every page does without a session.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use appliance::console::{self, Console};
use axum::http::{StatusCode, header};
use common::{
    Answer, CODE, HERE, Session, api, api_get, console, get_page, log_in, post_form,
    session_cookie, start_agent,
};
use serde_json::json;

/// Every page and form but setup, login and the stylesheet.
const PAGES: &[(&str, &str)] = &[
    ("GET", "/status"),
    ("POST", "/lock"),
    ("POST", "/unlock"),
    ("GET", "/unlock/wait"),
    ("POST", "/logout"),
    ("GET", "/vaults"),
    ("POST", "/vaults"),
    ("GET", "/vaults/x"),
    ("POST", "/vaults/x/secrets"),
    ("POST", "/vaults/x/reveal"),
    ("POST", "/vaults/x/share"),
    ("GET", "/peers"),
    ("POST", "/peers"),
    ("POST", "/peers/ping"),
    ("GET", "/peers/pair.svg"),
    ("GET", "/backups"),
    ("POST", "/backups"),
    ("POST", "/backups/remove"),
    ("GET", "/keyslots"),
    ("POST", "/keyslots"),
    ("POST", "/keyslots/test"),
    ("POST", "/keyslots/remove"),
    ("GET", "/audit"),
    ("GET", "/account"),
    ("POST", "/account/password"),
    ("GET", "/updates"),
    ("POST", "/updates"),
    ("POST", "/updates/reboot"),
];
/// The fields of every form in [`PAGES`] (the CSRF token left out).
const FORM: &str = "method=tpm&who=x&action=grant&name=x&path=x&value=x&node_id=x&addr=x\
                    &kind=tpm&auth_method=tpm&slot=0&current=x&new=x";
const PASSWORD: &str = "a long admin password";
/// The API routes that need no session: they are how one starts.
const PUBLIC_API: &[&str] = &["/api/setup", "/api/login", "/api/reset"];

fn csrf(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    body[at..].split('"').next().unwrap().to_owned()
}

fn enc(s: &str) -> String {
    s.replace(' ', "+")
}

#[tokio::test]
async fn setup_login_sessions_and_csrf() {
    let dir = tempfile::tempdir().unwrap();
    let c = console(dir.path());

    // Before setup everything leads to setup, and nothing works without a session.
    let home = get_page(&c, "/", None, HERE).await;
    assert_eq!(home.headers[header::LOCATION], "/setup");
    for (method, path) in PAGES {
        let answer = match *method {
            "GET" => get_page(&c, path, None, HERE).await,
            _ => post_form(&c, path, None, &format!("csrf=x&{FORM}"), HERE).await,
        };
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{method} {path}");
        assert_eq!(
            answer.headers[header::LOCATION],
            "/login",
            "{method} {path}"
        );
    }
    let api = get_page(&c, "/api/status", None, HERE).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    assert!(
        api.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );

    // The setup code is required; weak passwords are refused; nothing is made meanwhile.
    let form = |code: &str, password: &str| {
        format!(
            "setup_code={code}&password={p}&confirm={p}&passphrase={p}",
            p = enc(password)
        )
    };
    let wrong = post_form(&c, "/setup", None, &form("WXYZ-WXYZ-WXYZ", PASSWORD), HERE).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(wrong.body.contains("not the setup code"));
    let weak = post_form(&c, "/setup", None, &form(CODE, "short"), HERE).await;
    assert_eq!(weak.status, StatusCode::BAD_REQUEST);
    assert!(!dir.path().join("node").exists(), "nothing was made");

    let done = post_form(&c, "/setup", None, &form(CODE, PASSWORD), HERE).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let words_at = done.body.find("id=\"recovery-code\">").unwrap();
    let words = done.body[words_at..]
        .split('>')
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap();
    assert_eq!(
        words.split_whitespace().count(),
        24,
        "the recovery code is shown once"
    );
    let set_cookie = done.headers[header::SET_COOKIE].to_str().unwrap();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(flag), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains("Max-Age"),
        "the cookie lives as long as the browser; the server ends idle sessions"
    );
    assert!(dir.path().join("node/keyslots").exists());
    let again = post_form(&c, "/setup", None, &form(CODE, PASSWORD), HERE).await;
    assert_eq!(
        again.status,
        StatusCode::FORBIDDEN,
        "the box is claimed once"
    );
    let page = get_page(&c, "/setup", None, HERE).await;
    assert_eq!(page.headers[header::LOCATION], "/login");
    let mode = std::fs::metadata(dir.path().join("console/admin.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077,
        0
    );

    // A session works; a state-changing POST without its CSRF token does not.
    let cookie = session_cookie(&done.headers);
    let status = get_page(&c, "/status", Some(&cookie), HERE).await;
    assert_eq!(status.status, StatusCode::OK);
    let token = csrf(&status.body);
    let forged = post_form(&c, "/lock", Some(&cookie), "csrf=wrong", HERE).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let missing = post_form(&c, "/lock", Some(&cookie), "", HERE).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    for (method, path) in PAGES.iter().filter(|(m, _)| *m == "POST") {
        let forged = format!("csrf=wrong&{FORM}");
        let forged = post_form(&c, path, Some(&cookie), &forged, HERE).await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    let api = get_page(&c, "/api/status", Some(&cookie), HERE).await;
    assert_eq!(api.status, StatusCode::OK);
    assert!(
        api.body.contains("\"fingerprint\":\"AA:BB\""),
        "{}",
        api.body
    );
    let out = post_form(&c, "/logout", Some(&cookie), &format!("csrf={token}"), HERE).await;
    assert_eq!(out.headers[header::LOCATION], "/login");
    let after = get_page(&c, "/status", Some(&cookie), HERE).await;
    assert_eq!(
        after.headers[header::LOCATION],
        "/login",
        "the session ended"
    );

    // Login: five wrong passwords are refused; the sixth in a minute is throttled, and
    // so is the right one from that address; another address still logs in.
    let attacker = [192, 0, 2, 7];
    for _ in 0..5 {
        let r = post_form(&c, "/login", None, "password=guess+one", attacker).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let sixth = post_form(&c, "/login", None, "password=guess+six", attacker).await;
    assert_eq!(sixth.status, StatusCode::TOO_MANY_REQUESTS);
    let right = format!("password={}", enc(PASSWORD));
    let blocked = post_form(&c, "/login", None, &right, attacker).await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    let admin = post_form(&c, "/login", None, &right, HERE).await;
    assert_eq!(admin.status, StatusCode::SEE_OTHER);
    assert_eq!(admin.headers[header::LOCATION], "/status");
    let cookie = session_cookie(&admin.headers);
    assert_eq!(
        get_page(&c, "/status", Some(&cookie), HERE).await.status,
        StatusCode::OK
    );
}

/// Every route the OpenAPI document lists, with its method, `{...}` filled in.
fn documented_routes() -> Vec<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(console::api::OPENAPI).unwrap();
    assert_eq!(
        doc["openapi"].as_str().unwrap().split('.').next(),
        Some("3")
    );
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post"].contains(&method.as_str()) {
                let path = path.replace("{name}", "x").replace("{id}", "0");
                routes.push((method.to_uppercase(), path));
            }
        }
    }
    routes
}

#[tokio::test]
async fn the_json_api_needs_a_session_and_its_csrf_header() {
    let dir = tempfile::tempdir().unwrap();
    let c = console(dir.path());
    let routes = documented_routes();
    assert!(routes.len() >= 20, "the document lists the API: {routes:?}");

    // Without a session, every route but setup, login and reset refuses.
    for (method, path) in &routes {
        if PUBLIC_API.contains(&path.as_str()) {
            continue;
        }
        let (status, headers, body) = api(&c, method, path, None, None, json!({})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
    }
    let login = json!({ "password": PASSWORD });
    let (status, _, body) = api(&c, "POST", "/api/login", None, None, login).await;
    assert_eq!(status, StatusCode::CONFLICT, "not set up yet: {body}");

    // Setup through the API (as the QEMU suite does): the recovery code, a cookie, a token.
    let setup = |code: &str| json!({ "setup_code": code, "password": PASSWORD, "confirm": PASSWORD, "passphrase": PASSWORD });
    let (status, _, body) = api(&c, "POST", "/api/setup", None, None, setup("WRONG-CODE")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let lowercase = setup(&CODE.to_lowercase());
    let (status, headers, body) = api(&c, "POST", "/api/setup", None, None, lowercase).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["recovery_code"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        24
    );
    let admin = Session::from_answer(&c, &headers, &body);

    // With the session, a POST without the header (or with a wrong one) is refused.
    for (method, path) in routes
        .iter()
        .filter(|(m, p)| m == "POST" && !PUBLIC_API.contains(&p.as_str()))
    {
        let cookie = Some(admin.cookie.as_str());
        let (status, _, body) = api(&c, method, path, cookie, None, json!({})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        let (status, _, _) = api(&c, method, path, cookie, Some("wrong"), json!({})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    let (status, _, doc) = admin.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/keyslots"].is_object());

    // Views need the agent, which is not running yet: a clear error, no panic.
    let (status, _, body) = admin.get("/api/vaults").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // Keyslots change only once the admin account has been checked against the unlocked
    // node: refused while it is locked.
    let _agent = start_agent(dir.path()).await;
    let locked_enrol = json!({ "kind": "passphrase", "secret": "a passphrase while locked", "auth_method": "passphrase", "auth_secret": PASSWORD });
    let (status, _, body) = admin.post("/api/keyslots", locked_enrol).await;
    refused_while_locked(status, StatusCode::BAD_REQUEST, &body);
    unlock(&admin).await;

    // Keyslots through the API: a second passphrase slot, authorised by the first;
    // tested with the right and a wrong passphrase; removed; the last words are kept.
    let (status, _, slots) = admin.get("/api/keyslots").await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = slots
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["soft", "recovery"]);
    let second = "the second unlock passphrase";
    let enrol = |auth: &str| json!({ "kind": "passphrase", "secret": second, "label": "spare", "auth_method": "passphrase", "auth_secret": auth });
    let (status, _, body) = admin
        .post("/api/keyslots", enrol("not the passphrase"))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a wrong authorisation enrols nothing: {body}"
    );
    assert!(
        !body.to_string().contains("not the passphrase"),
        "no secret in an error: {body}"
    );
    let (status, _, body) = admin.post("/api/keyslots", enrol(PASSWORD)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, slots) = admin.get("/api/keyslots").await;
    let spare = slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == "spare")
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let test = format!("/api/keyslots/{spare}/test");
    let (status, _, body) = admin.post(&test, json!({ "secret": second })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let wrong = json!({ "secret": "a wrong passphrase here" });
    let (status, _, body) = admin.post(&test, wrong).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let remove = format!("/api/keyslots/{spare}/remove");
    let authorised_by =
        |secret: &str| json!({ "auth_method": "passphrase", "auth_secret": secret });
    let (status, _, body) = admin.post(&remove, authorised_by(second)).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the slot that authorises cannot be removed: {body}"
    );
    let (status, _, body) = admin.post(&remove, authorised_by(PASSWORD)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, slots) = admin.get("/api/keyslots").await;
    assert_eq!(slots.as_array().unwrap().len(), 2);

    // Logging in through the API, and out.
    let again = log_in(&c, PASSWORD).await;
    let (status, _, _) = again.post("/api/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = again.get("/api/status").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Unlocks the node through the API with the setup passphrase.
async fn unlock(admin: &Session) {
    let unlock = json!({ "method": "passphrase", "secret": PASSWORD });
    let (status, _, body) = admin.post("/api/unlock", unlock).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Checks that a change was refused with `expected` because the node is locked.
fn refused_while_locked(status: StatusCode, expected: StatusCode, body: &serde_json::Value) {
    assert_eq!(status, expected, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("Unlock the node first"), "{body}");
}

/// A box claimed through the API (its passphrase keyslot opened by the admin password),
/// its agent running, the node unlocked; the admin's session, the recovery code and the
/// agent.
async fn claimed_and_unlocked(
    c: &Arc<Console>,
    dir: &std::path::Path,
) -> (Session, String, node::client::Client) {
    let (admin, recovery) = common::set_up(c, PASSWORD, PASSWORD).await;
    let agent = start_agent(dir).await;
    unlock(&admin).await;
    (admin, recovery, agent)
}

/// Logs in through the login page from `from`.
async fn login_status(c: &Arc<Console>, password: &str, from: impl Into<IpAddr>) -> Answer {
    let form = format!("password={}", enc(password));
    post_form(c, "/login", None, &form, from).await
}

#[tokio::test]
async fn the_admin_changes_the_password_and_other_sessions_end() {
    let dir = tempfile::tempdir().unwrap();
    let c = console(dir.path());
    let (admin, _) = common::set_up(&c, PASSWORD, PASSWORD).await;
    let cookie = admin.cookie.clone();
    let _agent = start_agent(dir.path()).await;
    // A second session (another browser) that must end with the change.
    let other = login_status(&c, PASSWORD, HERE).await;
    assert_eq!(other.status, StatusCode::SEE_OTHER);
    let other = session_cookie(&other.headers);
    let stored = || std::fs::read(dir.path().join("console/admin.json")).unwrap();
    let before = stored();

    let new = "another admin password";
    let change = |current: &str, new: &str| json!({ "current": current, "new": new });
    let post = |body: serde_json::Value| admin.post("/api/account/password", body);
    // The account is bound to the node, so a change needs it unlocked.
    let (status, _, body) = post(change(PASSWORD, new)).await;
    refused_while_locked(status, StatusCode::CONFLICT, &body);
    assert_eq!(stored(), before, "nothing changed while locked");
    unlock(&admin).await;

    let refusals = [
        (
            change("not the password", new),
            StatusCode::FORBIDDEN,
            "current password is wrong",
        ),
        (
            change(PASSWORD, "short one"),
            StatusCode::BAD_REQUEST,
            "at least 12",
        ),
        (
            change(PASSWORD, PASSWORD),
            StatusCode::BAD_REQUEST,
            "is the current one",
        ),
        (
            json!({ "current": PASSWORD, "new": new, "confirm": "something else" }),
            StatusCode::BAD_REQUEST,
            "differ",
        ),
    ];
    for (request, expected, says) in refusals {
        let (status, _, body) = post(request).await;
        assert_eq!(status, expected, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(says), "{error}");
        assert!(
            !error.contains("not the password") && !error.contains(PASSWORD),
            "no password in an error: {error}"
        );
        assert_eq!(stored(), before, "a refused change changes nothing");
    }
    let status = get_page(&c, "/status", Some(&other), HERE).await;
    assert_eq!(status.status, StatusCode::OK, "refusals end no session");

    // The change: the old password stops working, the new one works, the other session
    // is over and this one goes on.
    let (status, _, body) = post(change(PASSWORD, new)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("1 other session"),
        "{body}"
    );
    let ended = get_page(&c, "/status", Some(&other), HERE).await;
    assert_eq!(ended.headers[header::LOCATION], "/login");
    let still = get_page(&c, "/account", Some(&cookie), HERE).await;
    assert_eq!(still.status, StatusCode::OK);
    assert!(still.body.contains("Change the admin password"));
    assert_eq!(
        login_status(&c, PASSWORD, HERE).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_status(&c, new, HERE).await.status,
        StatusCode::SEE_OTHER
    );
    let stored_text = String::from_utf8(stored()).unwrap();
    assert!(
        stored_text.contains("$argon2id$"),
        "Argon2id: {stored_text}"
    );
    assert!(!stored_text.contains(new));
    let mode = std::fs::metadata(dir.path().join("console/admin.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077,
        0
    );

    // The page's form: the confirmation must match; wrong current passwords count
    // towards the login throttle of that address (the sixth in a minute is throttled,
    // and so is a login with the right password from there).
    let page = get_page(&c, "/account", Some(&cookie), HERE).await;
    let csrf_token = csrf(&page.body);
    let form = |current: &str, confirm: &str| {
        format!(
            "csrf={csrf_token}&current={}&new={}&confirm={}",
            enc(current),
            enc("a third admin password"),
            enc(confirm)
        )
    };
    let change_on_page = |current: &str, confirm: &str, from: [u8; 4]| {
        let (c, cookie, form) = (&c, &cookie, form(current, confirm));
        async move { post_form(c, "/account/password", Some(cookie), &form, from).await }
    };
    let mismatch = change_on_page(new, "a third admin passwort", HERE).await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST);
    assert!(mismatch.body.contains("The two passwords differ."));
    let attacker = [192, 0, 2, 9];
    for _ in 0..5 {
        let r = change_on_page("a guessed password", "a third admin password", attacker).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.body.contains("The current password is wrong."));
    }
    for guess in ["a sixth guess", new] {
        let r = change_on_page(guess, "a third admin password", attacker).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(
        login_status(&c, new, attacker).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_status(&c, new, HERE).await.status,
        StatusCode::SEE_OTHER,
        "the password is still the second one"
    );
}

/// An Argon2id hash of `password`, as someone with the disk would write it.
fn forged_account(password: &str) -> String {
    use argon2::PasswordHasher as _;
    let salt = argon2::password_hash::SaltString::encode_b64(b"sixteen byte slt").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap();
    json!({ "password_hash": hash.to_string() }).to_string()
}

#[tokio::test]
async fn a_replaced_account_file_is_refused_until_the_recovery_code_resets_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = console(dir.path());
    let (admin, recovery, agent) = claimed_and_unlocked(&c, dir.path()).await;
    // The first page seen while unlocked binds the account to the node.
    let status = get_page(&c, "/status", Some(&admin.cookie), HERE).await;
    assert_eq!(status.status, StatusCode::OK);

    // Someone takes the disk out while the box is off, writes a hash of their own
    // password into the account file, and starts the box again (a new console; the
    // node starts locked, as if its TPM slot had not opened yet).
    let intruder = "the intruder's password";
    std::fs::write(
        dir.path().join("console/admin.json"),
        forged_account(intruder),
    )
    .unwrap();
    agent.call(node::api::agent::Lock).await.unwrap();
    let c = console(dir.path());
    let from = [192, 0, 2, 50];
    // While the node is locked the account cannot be checked: a login works, but
    // keyslots stay out of reach.
    let intruding = log_in(&c, intruder).await;
    let (status, _, body) = intruding
        .post(
            "/api/keyslots",
            json!({ "kind": "passphrase", "secret": "the intruder's own slot", "auth_method": "passphrase", "auth_secret": PASSWORD }),
        )
        .await;
    refused_while_locked(status, StatusCode::BAD_REQUEST, &body);
    let page_session = login_status(&c, intruder, from).await;
    assert_eq!(page_session.status, StatusCode::SEE_OTHER);
    let page_session = session_cookie(&page_session.headers);

    // Once the node is unlocked (the TPM, or here the passphrase), the next request
    // finds the account replaced: refused, and every session ends.
    unlock(&intruding).await;
    let page = get_page(&c, "/status", Some(&page_session), from).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(
        page.body
            .contains("Reset the admin password with the recovery code")
    );
    assert!(
        page.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"),
        "the cookie is cleared"
    );
    let (status, _, body) = intruding.get("/api/vaults").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the other session ended: {body}"
    );
    let refused = login_status(&c, intruder, from).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(
        refused.body.contains("changed outside the"),
        "{}",
        refused.body
    );
    assert!(
        refused.headers.get(header::SET_COOKIE).is_none(),
        "no session"
    );
    // The reset page stays reachable from a browser that still sends its old cookie.
    let reset_page = get_page(&c, "/reset", Some(&page_session), HERE).await;
    assert_eq!(reset_page.status, StatusCode::OK, "{}", reset_page.body);
    // Locking the node does not let the replaced account in.
    agent.call(node::api::agent::Lock).await.unwrap();
    assert_eq!(
        login_status(&c, intruder, HERE).await.status,
        StatusCode::FORBIDDEN
    );

    // A wrong recovery code resets nothing; the right one makes a new password (and
    // unlocks the node it opens).
    let reset = |code: &str, new: &str| {
        format!(
            "recovery={}&new={}&confirm={}",
            enc(code),
            enc(new),
            enc(new)
        )
    };
    let words: Vec<&str> = recovery.split_whitespace().collect();
    let mut wrong_words = words.clone();
    wrong_words[0] = if words[0] == "abandon" {
        "ability"
    } else {
        "abandon"
    };
    let wrong = post_form(
        &c,
        "/reset",
        None,
        &reset(&wrong_words.join(" "), "the reset admin password"),
        HERE,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{}", wrong.body);
    assert!(wrong.body.contains("does not open this node"));
    // Three words in a row: one word alone can be part of the page's own text ("open").
    let phrase = wrong_words[1..4].join(" ");
    assert!(
        !wrong.body.contains(&phrase),
        "the typed recovery code is not echoed in the answer"
    );
    let done = post_form(
        &c,
        "/reset",
        Some(&page_session),
        &reset(&recovery, "the reset admin password"),
        HERE,
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("The admin password was reset."));
    assert_eq!(
        login_status(&c, intruder, HERE).await.status,
        StatusCode::UNAUTHORIZED
    );
    let admin = login_status(&c, "the reset admin password", HERE).await;
    assert_eq!(admin.status, StatusCode::SEE_OTHER);
    let admin = Some(session_cookie(&admin.headers));
    let (status, _, body) = api_get(&c, "/api/status", admin.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "unlocked", "{body}");

    // The audit log has the story.
    let (status, _, events) = api_get(&c, "/api/audit", admin.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let names: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    for event in [
        "console.account_bound",
        "console.account_replaced",
        "console.password_reset_failed",
        "console.password_reset",
    ] {
        assert!(names.contains(&event), "{event} missing: {names:?}");
    }
}

/// Forty wrong passwords sent at once from one address. Each check is a 19 MiB Argon2
/// on a blocking thread, so the throttle must hold before the hashing starts: no more
/// than the throttle's five guesses are checked (answered "Wrong password." and audited
/// as failed logins); the others are refused at once with `429`. The admin, from another
/// address, still logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_from_one_address_are_not_all_checked() {
    let dir = tempfile::tempdir().unwrap();
    let c = console(dir.path());
    let (admin, _, _agent) = claimed_and_unlocked(&c, dir.path()).await;

    let attacker = [192, 0, 2, 66];
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..40 {
        let c = c.clone();
        guesses
            .spawn(async move { login_status(&c, &format!("guess number {i}"), attacker).await });
    }
    let (mut checked, mut refused) = (0, 0);
    while let Some(answer) = guesses.join_next().await {
        let answer = answer.unwrap();
        if answer.body.contains("Wrong password.") {
            checked += 1;
        } else {
            assert_eq!(
                answer.status,
                StatusCode::TOO_MANY_REQUESTS,
                "{}",
                answer.body
            );
            refused += 1;
        }
        assert!(
            !answer.body.contains("guess number"),
            "no password in an answer"
        );
    }
    assert!(
        (1..=console::LOGIN_ATTEMPTS_PER_MINUTE).contains(&checked),
        "{checked} of 40 concurrent guesses were checked ({refused} refused at once)"
    );

    let (status, _, events) = admin.get("/api/audit").await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let failed = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "console.login_failed")
        .count();
    assert_eq!(failed, checked, "each checked guess is audited: {events}");

    let admin = login_status(&c, PASSWORD, HERE).await;
    assert_eq!(admin.status, StatusCode::SEE_OTHER, "{}", admin.body);
    assert_eq!(admin.headers[header::LOCATION], "/status");
}

/// An IPv6 client usually holds a whole /64: wrong passwords count per /64, so a sixth
/// address of the same /64 is throttled, while another /64, and IPv4 clients seen through
/// a dual-stack socket (`::ffff:a.b.c.d`), each keep their own count.
#[tokio::test]
async fn wrong_passwords_count_per_ipv6_64() {
    let dir = tempfile::tempdir().unwrap();
    let c = console(dir.path());
    common::set_up(&c, PASSWORD, PASSWORD).await;
    let in_64 = |host: u16| IpAddr::from([0x2001, 0xdb8, 0, 7, 0, 0, 0, host]);
    for host in 1..=5 {
        let r = login_status(&c, "a wrong guess", in_64(host)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    let r = login_status(&c, PASSWORD, in_64(0xbeef)).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the same /64: {}",
        r.body
    );
    let r = login_status(
        &c,
        PASSWORD,
        IpAddr::from([0x2001, 0xdb8, 0, 8, 0, 0, 0, 1]),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "another /64: {}", r.body);

    let mapped = |last: u8| IpAddr::from(std::net::Ipv4Addr::new(192, 0, 2, last).to_ipv6_mapped());
    for _ in 0..5 {
        let r = login_status(&c, "a wrong guess", mapped(20)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    assert_eq!(
        login_status(&c, PASSWORD, [192, 0, 2, 20]).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "::ffff:192.0.2.20 is 192.0.2.20"
    );
    assert_eq!(
        login_status(&c, PASSWORD, mapped(21)).await.status,
        StatusCode::SEE_OTHER,
        "IPv4 clients on a dual-stack socket are not one /64"
    );
}

/// Every answer tells the browser to use HTTPS only (HSTS), and the session cookie has the
/// `__Host-` prefix: a browser then accepts it only `Secure`, for `Path=/` and without a
/// `Domain`, so no other host (or plain-HTTP page) of the same site can set or shadow it.
#[tokio::test]
async fn answers_carry_hsts_and_the_session_cookie_is_host_only() {
    let dir = tempfile::tempdir().unwrap();
    let c = console(dir.path());
    let hsts = |headers: &axum::http::HeaderMap| {
        headers
            .get(header::STRICT_TRANSPORT_SECURITY)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let redirect = get_page(&c, "/", None, HERE).await;
    assert_eq!(redirect.status, StatusCode::SEE_OTHER);
    let refused = get_page(&c, "/api/status", None, HERE).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    for answer in [&redirect, &refused] {
        let value = hsts(&answer.headers).expect("a Strict-Transport-Security header");
        let max_age: u64 = value
            .strip_prefix("max-age=")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(max_age >= 365 * 24 * 3600, "{value}");
    }

    let (admin, _) = common::set_up(&c, PASSWORD, PASSWORD).await;
    let cookie = &admin.cookie;
    assert!(cookie.starts_with("__Host-pk_session="), "{cookie}");
    let login = login_status(&c, PASSWORD, HERE).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
    assert!(hsts(&login.headers).is_some());
    let set_cookie = login.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.starts_with("__Host-pk_session="), "{set_cookie}");
    for flag in ["Secure", "Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(
            set_cookie.split("; ").any(|part| part == flag),
            "{flag}: {set_cookie}"
        );
    }
    assert!(!set_cookie.contains("Domain"), "{set_cookie}");

    // The pages and the API read the new cookie; the old name opens nothing.
    let session = session_cookie(&login.headers);
    let page = get_page(&c, "/status", Some(&session), HERE).await;
    assert_eq!(page.status, StatusCode::OK);
    let value = session.split_once('=').unwrap().1;
    let old = get_page(&c, "/status", Some(&format!("pk_session={value}")), HERE).await;
    assert_eq!(old.headers[header::LOCATION], "/login");
    let (status, _, _) = admin.get("/api/status").await;
    assert_eq!(status, StatusCode::OK);
    // Logging out clears the cookie (a browser takes a `__Host-` cookie, even an empty
    // one, only with `Secure` and `Path=/`).
    let out = post_form(
        &c,
        "/logout",
        Some(&session),
        &format!("csrf={}", csrf(&page.body)),
        HERE,
    )
    .await;
    let cleared = out.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("__Host-pk_session=;")
            && ["Secure", "Path=/", "Max-Age=0"]
                .iter()
                .all(|flag| cleared.split("; ").any(|part| part == *flag)),
        "{cleared}"
    );
}

/// The open-file limit systemd gives a service unless its unit says otherwise.
const SERVICE_NOFILE: u64 = 1024;

/// The real `pk-appliance` binary on a loopback port, with a service's open-file limit;
/// killed when dropped. Its standard error (its log) is kept.
struct Daemon {
    child: std::process::Child,
    addr: SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
    log: Arc<std::sync::Mutex<String>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the daemon on a claimed box (an admin account as setup writes it; logging in
/// needs no node) and waits until its console listens. Raises this process's own
/// open-file limit to `nofile` afterwards, for the test's side of the sockets.
fn start_daemon(dir: &std::path::Path, nofile: u64) -> Daemon {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    use std::io::BufRead as _;
    let state = dir.join("state");
    std::fs::create_dir_all(state.join("console")).unwrap();
    std::fs::write(state.join("console/admin.json"), forged_account(PASSWORD)).unwrap();
    let port = common::free_port();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nconsole_listen = \"127.0.0.1:{port}\"\npeer_listen = \"off\"\n",
            state.to_str().unwrap()
        ),
    )
    .unwrap();

    // The child inherits the limit in force when it starts.
    let own = getrlimit(Resource::Nofile);
    let hard = own.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= nofile,
        "this test needs an open-file hard limit of {nofile} or more, not {hard}"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(SERVICE_NOFILE),
            maximum: own.maximum,
        },
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pk-appliance"))
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(own.current.unwrap_or(nofile).max(nofile)),
            maximum: own.maximum,
        },
    )
    .unwrap();
    let mut child = child.unwrap();

    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("pk-appliance: console at") {
                let _ = ready_tx.send(());
            }
            let mut log = kept.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let mut daemon = Daemon {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        cert: rustls::pki_types::CertificateDer::from(Vec::new()),
        log,
    };
    if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        panic!(
            "the daemon did not start: {}",
            daemon.log.lock().unwrap().as_str()
        );
    }
    daemon.cert = std::fs::read(state.join("console/console-cert.der"))
        .unwrap()
        .into();
    daemon
}

/// `POST /api/login` over its own connection; the whole HTTP answer.
async fn https_login(
    addr: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    password: &str,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tls.connect(name, tcp).await?;
    let body = json!({ "password": password }).to_string();
    let request = format!(
        "POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer).await {
        Ok(_) => {}
        // Closed without TLS close_notify: the answer is what arrived.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Someone opens 1,100 TLS connections to the console and sends nothing on them, more than
/// a service's 1,024 open files. The daemon must neither run out of sockets for good nor
/// spin on a failing `accept`: the admin's login goes through within half a minute,
/// over HTTPS with HSTS and the `__Host-` cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_lock_the_admin_out() {
    const ATTACKERS: usize = 1100;
    const LOGIN_WITHIN: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), 4096);
    let tls = common::https::connector(&daemon.cert);

    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..ATTACKERS {
        let (tls, addr) = (tls.clone(), daemon.addr);
        opening.spawn(async move {
            let tcp = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .ok()?
            .ok()?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp))
                .await
                .ok()?
                .ok()
        });
    }
    let mut idle = Vec::new();
    while let Some(opened) = opening.join_next().await {
        idle.extend(opened.unwrap());
    }
    let held = idle.len();
    eprintln!("{held} of {ATTACKERS} idle connections completed their TLS handshake");

    let started = std::time::Instant::now();
    let answer = loop {
        let last = match tokio::time::timeout(
            Duration::from_secs(5),
            https_login(daemon.addr, &tls, PASSWORD),
        )
        .await
        {
            Ok(Ok(answer)) if answer.starts_with("HTTP/1.1 200") => break answer,
            Ok(Ok(answer)) => answer
                .lines()
                .next()
                .unwrap_or("an empty answer")
                .to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5 s".to_owned(),
        };
        assert!(
            started.elapsed() < LOGIN_WITHIN,
            "no login within {LOGIN_WITHIN:?} while {held} idle connections were open \
             (last attempt: {last})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("logged in after {:?}", started.elapsed());
    let headers = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        headers.contains("\r\nstrict-transport-security: max-age="),
        "{headers}"
    );
    assert!(
        headers.contains("\r\nset-cookie: __host-pk_session="),
        "{headers}"
    );
    drop(idle);
    let log = daemon.log.lock().unwrap().clone();
    assert!(!log.contains(PASSWORD), "no password in the log: {log}");
}

/// Issue 13, 1.14: a schedule's number is checked before any arithmetic: a huge number of
/// minutes (which overflowed `minutes * 60` and killed the request) gets an answer in words.
#[tokio::test]
async fn a_schedule_out_of_range_is_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let c = console(dir.path());
    let (admin, _, _agent) = claimed_and_unlocked(&c, dir.path()).await;
    let cookie = &admin.cookie;
    let page = get_page(&c, "/backups", Some(cookie), HERE).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let token = csrf(&page.body);
    let node = node::identity::Identity::generate().node_id().to_string();
    for every in ["18446744073709551615", "527041", "0"] {
        let form = format!("csrf={token}&vault=v&node_id={node}&every_min={every}&name=");
        let answer = post_form(&c, "/backups", Some(cookie), &form, HERE).await;
        assert_eq!(answer.status, StatusCode::OK, "{every}: {}", answer.body);
        assert!(answer.body.contains("366 days"), "{every}: {}", answer.body);
    }
    // Through the API, the agent's own bound answers.
    let pull = json!({ "vault": "v", "node_id": node, "every_s": u64::MAX, "name": "" });
    let (status, _, body) = admin.post("/api/backups", pull).await;
    assert_ne!(status, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("366 days"), "{body}");
}
