//! The console's auth matrix (issue 13, section 2; the node's half is
//! `node/tests/it/auth_matrix.rs`): every way into the admin console that must be refused,
//! tried as one table against a claimed, unlocked console with its real agent, in process
//! (`oneshot`). The rows:
//!
//! 1. every route the router serves (read from `console/mod.rs` and `console/api.rs`, so a
//!    new route cannot be left out), without a session;
//! 2. every POST with the admin's session but without its CSRF token, with an empty one, a
//!    wrong one, and another live session's;
//! 3. every route with a session that a password change in another session ended, and the
//!    old password itself;
//! 4. forty wrong passwords at once from one address: at most the throttle's five are
//!    checked, the rest refused with `429`;
//! 5. the session token under another cookie name or as a bearer token, and forged session
//!    values;
//!
//! and, on the routes anyone may reach, a second setup and resets with a wrong recovery
//! code. A refusal is a redirect to the login page, `401`, `403` or `429`, with no new
//! session and no secret or page content in the body. Each request is one the route would
//! act on if it let it through (the real vault, slot and node; the right passphrase and
//! recovery code), so a route that forgot its check fails here. Nothing refused may change
//! what the agent holds: vaults and newest commits, shares, nodes, scheduled pulls,
//! keyslots, the lock state, the audit log but its refusal records, the admin account file,
//! the sessions that were live, and the disk and ESP behind the console's update installer
//! (a real one, `common::installer`, given a good bundle by every update row) and its
//! reboots.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::collections::BTreeSet;

use appliance::console;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::installer::TestBox;
use common::{
    Answer, CODE, HERE, api, console_with_installer, log_in, send_request, set_up, start_agent,
};
use node::api::{agent as calls, nodes, secrets, vaults};
use node::client::Client;
use serde_json::{Value, json};

const PASSWORD: &str = "the first admin password";
const NEW_PASSWORD: &str = "the second admin password";
const INTRUDER_PASSWORD: &str = "an intruder's own password";
const PASSPHRASE: &str = "the unlock passphrase of this box";
const SECRET: &str = "the database password 7Hq2xV";
const VAULT: &str = "team-vault";
/// Where the forty guesses come from.
const ATTACKER: [u8; 4] = [192, 0, 2, 66];
/// Where the old password is tried after the change.
const OLD_PASSWORD_FROM: [u8; 4] = [192, 0, 2, 81];
/// Where wrong recovery codes come from.
const RESET_FROM: [u8; 4] = [192, 0, 2, 80];

/// The routes anyone may reach: how one starts (setup, login, reset), the way to them,
/// and the stylesheet. What must be refused on them is tried separately.
const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/style.css"),
    ("GET", "/setup"),
    ("POST", "/setup"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("GET", "/reset"),
    ("POST", "/reset"),
    ("POST", "/api/setup"),
    ("POST", "/api/login"),
    ("POST", "/api/reset"),
];

/// The audit events a refusal itself writes; everything else must stay as it was.
const REFUSAL_EVENTS: &[&str] = &[
    "console.login_failed",
    "console.login_throttled",
    "console.password_reset_failed",
];

/// Every `(method, path)` the console's router serves, read from its source.
fn router_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for source in [
        include_str!("../src/console/mod.rs"),
        include_str!("../src/console/api.rs"),
    ] {
        // Each `.route(...)` call whole, however rustfmt split it over lines.
        for (at, _) in source.match_indices(".route(") {
            let call = &source[at + ".route(".len()..];
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, ch)| {
                    depth += match ch {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(call.len(), |(i, _)| i);
            let line: String = call[..end].split_whitespace().collect::<Vec<_>>().join(" ");
            let Some(rest) = line.strip_prefix('"') else {
                continue;
            };
            let (path, handlers) = rest.split_once('"').unwrap();
            for other in ["put(", "delete(", "patch(", "any("] {
                assert!(
                    !handlers.contains(other),
                    "{path} takes a method the matrix does not try: {line}"
                );
            }
            for (method, call) in [("GET", "get("), ("POST", "post(")] {
                if handlers.contains(&format!(" {call}")) || handlers.contains(&format!(".{call}"))
                {
                    routes.insert((method.to_owned(), path.to_owned()));
                }
            }
        }
    }
    assert!(
        routes.contains(&("GET".into(), "/status".into()))
            && routes.contains(&("POST".into(), "/api/lock".into()))
            && routes.len() >= 50,
        "the router's routes were not read: {routes:?}"
    );
    routes
}

/// What the rows refer to: the real vault, node and slot, the admin's secrets.
struct Fixture {
    peer: String,
    stranger: String,
    soft_slot: u32,
    recovery: String,
    /// A bundle the box's installer would install.
    bundle: Vec<u8>,
}

/// One route of the router with a concrete path.
struct Route {
    method: String,
    template: String,
    path: String,
    api: bool,
}

impl Route {
    fn new(method: &str, template: &str, f: &Fixture) -> Route {
        Route {
            method: method.to_owned(),
            template: template.to_owned(),
            path: template
                .replace("{name}", VAULT)
                .replace("{id}", &f.soft_slot.to_string()),
            api: template.starts_with("/api/"),
        }
    }

    fn post(&self) -> bool {
        self.method == "POST"
    }

    /// The request the route would act on, with `csrf` in the form or the header.
    fn request(&self, f: &Fixture, csrf: Option<&str>) -> Request<Body> {
        let mut request = Request::builder()
            .method(self.method.as_str())
            .uri(&self.path);
        let body = if !self.post() {
            String::new()
        } else if let Some((content_type, body)) = upload(&self.template, f, csrf) {
            // An update: the bundle itself, as the page's form or the API's body.
            request = request.header(header::CONTENT_TYPE, content_type);
            if let (true, Some(csrf)) = (self.api, csrf) {
                request = request.header(console::api::CSRF_HEADER, csrf);
            }
            return request.body(Body::from(body)).unwrap();
        } else if self.api {
            request = request.header(header::CONTENT_TYPE, "application/json");
            if let Some(csrf) = csrf {
                request = request.header(console::api::CSRF_HEADER, csrf);
            }
            api_body(&self.template, f).to_string()
        } else {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            let mut fields = Vec::new();
            if let Some(csrf) = csrf {
                fields.push(("csrf", csrf.to_owned()));
            }
            fields.extend(form_body(&self.template, f));
            form(&fields)
        };
        request.body(Body::from(body)).unwrap()
    }
}

/// The upload an update route would act on: the content type and the body (the page's
/// form carries `csrf` as its first field, as the page sends it).
fn upload(template: &str, f: &Fixture, csrf: Option<&str>) -> Option<(String, Vec<u8>)> {
    const BOUNDARY: &str = "----pk-matrix-boundary";
    match template {
        "/api/update" => Some(("application/octet-stream".into(), f.bundle.clone())),
        "/updates" => {
            let mut body = Vec::new();
            if let Some(csrf) = csrf {
                body.extend_from_slice(
                    format!(
                        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n"
                    )
                    .as_bytes(),
                );
            }
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"bundle\"; \
                     filename=\"b.pkupdate\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(&f.bundle);
            body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
            Some((format!("multipart/form-data; boundary={BOUNDARY}"), body))
        }
        _ => None,
    }
}

/// A page form the route would act on (without its CSRF token).
fn form_body(template: &str, f: &Fixture) -> Vec<(&'static str, String)> {
    let s = |v: &str| v.to_owned();
    match template {
        "/logout" | "/lock" | "/updates/reboot" => vec![],
        "/unlock" => vec![("method", s("passphrase")), ("secret", s(PASSPHRASE))],
        "/vaults" => vec![("name", s("intruder-vault"))],
        "/vaults/{name}/secrets" => vec![("path", s("db")), ("value", s("overwritten"))],
        "/vaults/{name}/reveal" => vec![("path", s("db"))],
        "/vaults/{name}/share" => vec![("who", f.peer.clone()), ("action", s("grant"))],
        "/peers" => vec![("node_id", f.stranger.clone()), ("addr", s("127.0.0.1:9"))],
        "/peers/ping" => vec![("node_id", f.peer.clone())],
        "/backups" => vec![
            ("vault", s(VAULT)),
            ("node_id", f.peer.clone()),
            ("every_min", s("60")),
            ("name", s("intruder-backup")),
        ],
        "/backups/remove" => vec![("name", s(VAULT))],
        "/keyslots" => vec![
            ("kind", s("passphrase")),
            ("secret", s(INTRUDER_PASSWORD)),
            ("label", s("intruder")),
            ("auth_method", s("passphrase")),
            ("auth_secret", s(PASSPHRASE)),
        ],
        "/keyslots/test" => vec![("slot", f.soft_slot.to_string()), ("secret", s(PASSPHRASE))],
        "/keyslots/remove" => vec![
            ("slot", f.soft_slot.to_string()),
            ("auth_method", s("recovery")),
            ("auth_secret", f.recovery.clone()),
        ],
        "/settings" => vec![("key", s("console_port")), ("value", s("9999"))],
        "/settings/restart" => vec![],
        "/account/password" => vec![
            ("current", s(NEW_PASSWORD)),
            ("new", s(INTRUDER_PASSWORD)),
            ("confirm", s(INTRUDER_PASSWORD)),
        ],
        other => panic!("no form for POST {other}: add one the route would act on"),
    }
}

/// An API body the route would act on.
fn api_body(template: &str, f: &Fixture) -> Value {
    match template {
        "/api/logout" | "/api/lock" | "/api/update/reboot" | "/api/settings/restart" => {
            json!({})
        }
        "/api/settings" => json!({ "key": "console_port", "value": "9999" }),
        "/api/unlock" => json!({ "method": "passphrase", "secret": PASSPHRASE }),
        "/api/vaults" => json!({ "name": "intruder-vault" }),
        "/api/vaults/{name}/secrets" => json!({ "path": "db", "value": "overwritten" }),
        "/api/vaults/{name}/reveal" => json!({ "path": "db" }),
        "/api/vaults/{name}/share" => json!({ "who": f.peer, "grant": true }),
        "/api/peers" => json!({ "node_id": f.stranger, "addr": "127.0.0.1:9" }),
        "/api/peers/ping" => json!({ "node_id": f.peer }),
        "/api/backups" => {
            json!({ "vault": VAULT, "node_id": f.peer, "every_s": 3600, "name": "intruder-backup" })
        }
        "/api/backups/remove" => json!({ "name": VAULT }),
        "/api/keyslots" => json!({
            "kind": "passphrase",
            "secret": INTRUDER_PASSWORD,
            "label": "intruder",
            "auth_method": "passphrase",
            "auth_secret": PASSPHRASE,
        }),
        "/api/keyslots/{id}/test" => json!({ "secret": PASSPHRASE }),
        "/api/keyslots/{id}/remove" => {
            json!({ "auth_method": "recovery", "auth_secret": f.recovery })
        }
        "/api/account/password" => json!({ "current": NEW_PASSWORD, "new": INTRUDER_PASSWORD }),
        other => panic!("no body for POST {other}: add one the route would act on"),
    }
}

/// A POST of the form `fields` to `path`.
fn form_post(path: &str, fields: &[(&str, String)]) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form(fields)))
        .unwrap()
}

/// A POST of the JSON `body` to `path`.
fn json_post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// `application/x-www-form-urlencoded`.
fn form(fields: &[(&str, String)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the refusals must leave as it was, read from the agent and the files (reading
/// records nothing).
#[derive(Debug, PartialEq)]
struct Held {
    lock: String,
    vaults: Vec<String>,
    shares: String,
    nodes: String,
    backups: String,
    keyslots: Vec<String>,
    keyslot_file: String,
    account_file: String,
    audit: Vec<String>,
    /// The stored settings, and whether a restart was asked for.
    settings: (Option<String>, bool),
    /// The update installer's disk image and ESP, and the reboots it was asked for.
    update: ((String, std::collections::BTreeMap<String, String>), usize),
}

async fn held(
    agent: &Client,
    console: &console::Console,
    dir: &std::path::Path,
    machine: &TestBox,
) -> Held {
    // A view the agent will not give (a node locked by a refused request) is held as its
    // error, so that the comparison names what changed instead of failing here.
    let lock = match agent.call(calls::Status).await {
        Ok(status) => {
            format!("{} with slot {:?}", status.state, status.unlocked_with)
        }
        other => format!("{other:?}"),
    };
    let vaults = match agent.call(vaults::List).await {
        Ok(vaults) => vaults
            .iter()
            .map(|v| {
                format!(
                    "{} {} head {} latest {} kept {:?}",
                    v.name, v.id, v.head, v.latest, v.kept
                )
            })
            .collect(),
        other => vec![format!("{other:?}")],
    };
    let audit = match agent.call(calls::Audit(Default::default())).await {
        Ok(events) => events
            .iter()
            .filter(|e| !REFUSAL_EVENTS.contains(&e.event.as_str()))
            .map(|e| format!("{} {} {}", e.seq, e.event, Value::Object(e.fields.clone())))
            .collect(),
        other => vec![format!("{other:?}")],
    };
    let node = node::NodePath::new(dir.join("node"));
    let keyslots = node::keyslots::Keyslots::open(&node).unwrap();
    Held {
        lock,
        vaults,
        shares: format!(
            "{:?}",
            agent
                .call(vaults::Permissions {
                    vault: VAULT.into()
                })
                .await
        ),
        nodes: format!("{:?}", agent.call(nodes::GetAll).await),
        backups: format!("{:?}", agent.call(node::api::backups::List).await),
        keyslots: keyslots
            .slots()
            .iter()
            .map(|s| format!("{} {:?} {}", s.header.id, s.header.kind, s.header.label))
            .collect(),
        keyslot_file: sha256(&std::fs::read(node.keyslots()).unwrap()),
        account_file: sha256(&std::fs::read(dir.join("console/admin.json")).unwrap()),
        settings: (
            std::fs::read_to_string(dir.join("state/settings.toml")).ok(),
            console.restart_requested(),
        ),
        audit,
        update: (
            machine.disk(),
            machine.reboots.load(std::sync::atomic::Ordering::SeqCst),
        ),
    }
}

/// How many audit events of each refusal kind there are.
async fn refusal_records(agent: &Client) -> Vec<usize> {
    let events = agent.call(calls::Audit(Default::default())).await.unwrap();
    REFUSAL_EVENTS
        .iter()
        .map(|kind| events.iter().filter(|e| e.event == *kind).count())
        .collect()
}

/// Why `answer` is not a refusal, if it is not one: a redirect to the login page, `401`,
/// `403` or `429`, that sets no session and shows none of `secrets` (named, never quoted).
fn not_refused(answer: &Answer, secrets: &[(&str, String)]) -> Option<String> {
    let to_login = answer.status.is_redirection()
        && answer
            .headers
            .get(header::LOCATION)
            .is_some_and(|l| l == "/login");
    let refusing = matches!(
        answer.status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    );
    if !to_login && !refusing {
        let location = answer
            .headers
            .get(header::LOCATION)
            .map(|l| format!(" to {l:?}"))
            .unwrap_or_default();
        let start: String = answer.body.chars().take(160).collect();
        return Some(format!("answered {}{location}: {start}", answer.status));
    }
    for set in answer.headers.get_all(header::SET_COOKIE) {
        let set = set.to_str().unwrap_or_default();
        if set.contains("pk_session=") && !set.contains("pk_session=;") {
            return Some(format!("{} and a new session cookie", answer.status));
        }
    }
    let leaked: Vec<&str> = secrets
        .iter()
        .filter(|(_, value)| !value.is_empty() && answer.body.contains(value.as_str()))
        .map(|(name, _)| *name)
        .collect();
    if !leaked.is_empty() {
        return Some(format!(
            "{}, but the body holds {}",
            answer.status,
            leaked.join(", ")
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_into_the_console_that_must_be_refused_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let machine = TestBox::start("1.0.0");
    let c = console_with_installer(dir.path(), &machine.socket);

    // A claimed box (passphrase keyslot), its agent, unlocked; the admin's session.
    let (session, recovery) = set_up(&c, PASSWORD, PASSPHRASE).await;
    let (admin, admin_csrf) = (session.cookie, session.csrf);
    let agent = start_agent(dir.path()).await;
    let admin_api = |method: &'static str, path: String, body: Value| {
        let (c, admin, admin_csrf) = (c.clone(), admin.clone(), admin_csrf.clone());
        async move {
            let (status, _, value) =
                api(&c, method, &path, Some(&admin), Some(&admin_csrf), body).await;
            assert_eq!(status, StatusCode::OK, "{method} {path}: {value}");
            value
        }
    };
    admin_api(
        "POST",
        "/api/unlock".into(),
        json!({ "method": "passphrase", "secret": PASSPHRASE }),
    )
    .await;
    // The first request while unlocked binds the admin account to the node.
    let status = admin_api("GET", "/api/status".into(), json!({})).await;
    let node_id = status["node_id"].as_str().unwrap().to_owned();

    // What the rows would act on: a vault with a secret, a node in the graph (not sharing
    // the vault yet), a node not in it, the passphrase slot.
    admin_api("POST", "/api/vaults".into(), json!({ "name": VAULT })).await;
    admin_api(
        "POST",
        format!("/api/vaults/{VAULT}/secrets"),
        json!({ "path": "db", "value": SECRET }),
    )
    .await;
    let peer = node::identity::Identity::generate().node_id().to_string();
    let stranger = node::identity::Identity::generate().node_id().to_string();
    agent
        .call(nodes::Add {
            node: peer.clone(),
            addr: "127.0.0.1:9".into(),
            no_notify: false,
            no_ping: true,
        })
        .await
        .unwrap();
    let slots =
        node::keyslots::Keyslots::open(&node::NodePath::new(dir.path().join("node"))).unwrap();
    let soft_slot = slots
        .slots()
        .iter()
        .find(|s| s.header.kind == hsm::Kind::Soft)
        .unwrap()
        .header
        .id;
    let f = Fixture {
        peer,
        stranger,
        soft_slot,
        recovery: recovery.clone(),
        bundle: machine.bundle(2, "1.1.0"),
    };

    // A second browser logs in; the admin changes the password in the first, which ends
    // the second; a third logs in with the new password.
    let stale_session = log_in(&c, PASSWORD).await;
    let (stale, stale_csrf) = (stale_session.cookie, stale_session.csrf);
    let changed = admin_api(
        "POST",
        "/api/account/password".into(),
        json!({ "current": PASSWORD, "new": NEW_PASSWORD }),
    )
    .await;
    assert!(
        changed["message"]
            .as_str()
            .unwrap()
            .contains("1 other session"),
        "{changed}"
    );
    let other_session = log_in(&c, NEW_PASSWORD).await;
    let (other, other_csrf) = (other_session.cookie, other_session.csrf);

    let words: Vec<&str> = recovery.split_whitespace().collect();
    let mut wrong_words = words.clone();
    wrong_words.swap(0, 1);
    if wrong_words == words {
        wrong_words[0] = if words[0] == "abandon" {
            "ability"
        } else {
            "abandon"
        };
    }
    let wrong_recovery = wrong_words.join(" ");
    let value = |pair: &str| pair.split_once('=').unwrap().1.to_owned();
    let secrets: Vec<(&str, String)> = vec![
        ("the first admin password", PASSWORD.into()),
        ("the admin password", NEW_PASSWORD.into()),
        ("the intruder's password", INTRUDER_PASSWORD.into()),
        ("the unlock passphrase", PASSPHRASE.into()),
        ("the secret's value", SECRET.into()),
        ("the recovery code", recovery.clone()),
        ("recovery words", words[..4].join(" ")),
        ("a wrong recovery code", wrong_recovery.clone()),
        ("the setup code", CODE.into()),
        ("the admin's session token", value(&admin)),
        ("the admin's CSRF token", admin_csrf.clone()),
        ("another session's token", value(&other)),
        ("another session's CSRF token", other_csrf.clone()),
        ("the ended session's token", value(&stale)),
        ("the ended session's CSRF token", stale_csrf.clone()),
        ("the vault's name (page content)", VAULT.into()),
        ("the node's id (page content)", node_id.clone()),
        ("a known node's id (page content)", f.peer.clone()),
    ];

    let before = held(&agent, &c, dir.path(), &machine).await;
    let records_before = refusal_records(&agent).await;

    // The table: what is tried, the request, where it comes from.
    let routes = router_routes();
    for (method, path) in PUBLIC {
        assert!(
            routes.contains(&((*method).into(), (*path).into())),
            "{method} {path} is no longer a route: update PUBLIC"
        );
    }
    let guarded: Vec<Route> = routes
        .iter()
        .filter(|(m, p)| !PUBLIC.contains(&(m.as_str(), p.as_str())))
        .map(|(m, p)| Route::new(m, p, &f))
        .collect();
    let with_cookie = |mut request: Request<Body>, cookie: &str| {
        request
            .headers_mut()
            .insert(header::COOKIE, cookie.parse().unwrap());
        request
    };
    let mut rows: Vec<(String, Request<Body>, [u8; 4])> = Vec::new();

    // 1. No session (the admin's CSRF token given all the same).
    for r in &guarded {
        rows.push((
            format!("1. no session: {} {}", r.method, r.path),
            r.request(&f, Some(&admin_csrf)),
            HERE,
        ));
    }
    for path in ["/", "/setup"] {
        rows.push((
            format!("1. no session: GET {path} of a claimed box"),
            Request::get(path).body(Body::empty()).unwrap(),
            HERE,
        ));
    }

    // 2. The admin's session, without its CSRF token.
    let tokens = [
        ("no CSRF token", None),
        ("an empty CSRF token", Some("")),
        ("a wrong CSRF token", Some("wrong")),
        ("another session's CSRF token", Some(other_csrf.as_str())),
    ];
    for r in guarded.iter().filter(|r| r.post()) {
        for (what, token) in tokens {
            rows.push((
                format!("2. session, {what}: {} {}", r.method, r.path),
                with_cookie(r.request(&f, token), &admin),
                HERE,
            ));
        }
    }

    // 3. The session the password change ended, with its own CSRF token; the old
    // password.
    for r in &guarded {
        rows.push((
            format!("3. ended session: {} {}", r.method, r.path),
            with_cookie(r.request(&f, Some(&stale_csrf)), &stale),
            HERE,
        ));
    }
    rows.push((
        "3. the old password: POST /login".into(),
        form_post("/login", &[("password", PASSWORD.into())]),
        OLD_PASSWORD_FROM,
    ));
    rows.push((
        "3. the old password: POST /api/login".into(),
        json_post("/api/login", json!({ "password": PASSWORD })),
        OLD_PASSWORD_FROM,
    ));

    // 5. The session token where the console must not take it, and forged values (with
    // the admin's CSRF token).
    let token = value(&admin);
    let mut changed_last = token.clone();
    let last = changed_last.pop().unwrap();
    changed_last.push(if last == 'A' { 'B' } else { 'A' });
    let session = console::SESSION_COOKIE;
    let cookies = [
        ("the token without __Host-", format!("pk_session={token}")),
        (
            "the token as __Secure-",
            format!("__Secure-pk_session={token}"),
        ),
        (
            "the token as __host- (case)",
            format!("__host-pk_session={token}"),
        ),
        (
            "a forged value",
            format!("{session}=Zm9yZ2VkIHNlc3Npb24gdmFsdWUgb2YgNDMgY2hhcnM"),
        ),
        (
            "the CSRF token as the value",
            format!("{session}={admin_csrf}"),
        ),
        (
            "the token, last character changed",
            format!("{session}={changed_last}"),
        ),
        (
            "the token cut short",
            format!("{session}={}", &token[..token.len() - 1]),
        ),
        ("the token and more", format!("{session}={token}A")),
        ("an empty value", format!("{session}=")),
    ];
    for r in &guarded {
        for (what, cookie) in &cookies {
            rows.push((
                format!("5. {what}: {} {}", r.method, r.path),
                with_cookie(r.request(&f, Some(&admin_csrf)), cookie),
                HERE,
            ));
        }
        let mut bearer = r.request(&f, Some(&admin_csrf));
        bearer.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        rows.push((
            format!("5. the token as a bearer token: {} {}", r.method, r.path),
            bearer,
            HERE,
        ));
    }

    // The routes anyone may reach: a second setup, resets with a wrong recovery code;
    // each as a page form and as an API call.
    let setup = [
        ("setup_code", CODE.to_owned()),
        ("password", INTRUDER_PASSWORD.to_owned()),
        ("confirm", INTRUDER_PASSWORD.to_owned()),
        ("passphrase", INTRUDER_PASSWORD.to_owned()),
    ];
    let reset = [
        ("recovery", wrong_recovery.clone()),
        ("new", INTRUDER_PASSWORD.to_owned()),
        ("confirm", INTRUDER_PASSWORD.to_owned()),
    ];
    for (path, what, fields, from) in [
        ("setup", "of a claimed box", &setup[..], HERE),
        (
            "reset",
            "with a wrong recovery code",
            &reset[..],
            RESET_FROM,
        ),
    ] {
        let json = fields.iter().map(|(k, v)| ((*k).to_owned(), json!(v)));
        rows.push((
            format!("public: POST /{path} {what}"),
            form_post(&format!("/{path}"), fields),
            from,
        ));
        rows.push((
            format!("public: POST /api/{path} {what}"),
            json_post(&format!("/api/{path}"), Value::Object(json.collect())),
            from,
        ));
    }

    let mut tried = 0;
    let mut refused = 0;
    let mut answered = Vec::new();
    // Password and recovery-code checks that ran (and must each be on record).
    let (mut logins_checked, mut resets_checked) = (0, 0);
    for (what, request, from) in rows {
        let path = request.uri().path().to_owned();
        tried += 1;
        let answer = send_request(&c, request, from).await;
        match not_refused(&answer, &secrets) {
            None => refused += 1,
            Some(why) => answered.push(format!("{what}: {why}")),
        }
        if path.ends_with("/login") && answer.status == StatusCode::UNAUTHORIZED {
            logins_checked += 1;
        }
        if path.ends_with("/reset") && answer.body.contains("does not open this node") {
            resets_checked += 1;
        }
    }

    // 4. Forty wrong passwords at once from one address: at most the throttle's five are
    // checked ("Wrong password."), the others refused at once with 429.
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..40 {
        let c = c.clone();
        guesses.spawn(async move {
            let guess = format!("guess number {i} for the admin");
            let request = form_post("/login", &[("password", guess.clone())]);
            (guess, send_request(&c, request, ATTACKER).await)
        });
    }
    let mut checked = 0;
    while let Some(guess) = guesses.join_next().await {
        let (guess, answer) = guess.unwrap();
        tried += 1;
        let mut own = secrets.clone();
        own.push(("the guess itself", guess));
        let why = match not_refused(&answer, &own) {
            Some(why) => Some(why),
            None if answer.status == StatusCode::TOO_MANY_REQUESTS => None,
            None if answer.status == StatusCode::UNAUTHORIZED
                && answer.body.contains("Wrong password.") =>
            {
                checked += 1;
                (checked > console::LOGIN_ATTEMPTS_PER_MINUTE)
                    .then(|| format!("checked, the {checked}th check from one address"))
            }
            None => Some(format!("{}: {}", answer.status, answer.body)),
        };
        match why {
            None => refused += 1,
            Some(why) => answered.push(format!("4. forty wrong passwords at once: {why}")),
        }
    }
    logins_checked += checked;

    println!("{tried} tried, {refused} refused");
    eprintln!("of the forty guesses, {checked} were checked and the rest refused at once");
    assert!(answered.is_empty(), "answered:\n{}", answered.join("\n"));
    assert_eq!(tried, refused);

    // Nothing refused changed what the agent holds ...
    let after = held(&agent, &c, dir.path(), &machine).await;
    assert_eq!(before.lock, after.lock, "the lock state changed");
    assert_eq!(before.vaults, after.vaults, "the vaults changed");
    assert_eq!(before.shares, after.shares, "the vault's shares changed");
    assert_eq!(before.nodes, after.nodes, "the node graph changed");
    assert_eq!(before.backups, after.backups, "the scheduled pulls changed");
    assert_eq!(before.keyslots, after.keyslots, "the keyslots changed");
    assert_eq!(
        before.keyslot_file, after.keyslot_file,
        "the keyslot file changed"
    );
    assert_eq!(
        before.account_file, after.account_file,
        "the admin account changed"
    );
    assert_eq!(
        before.audit, after.audit,
        "the audit log changed beyond refusal records"
    );
    assert_eq!(
        before.update, after.update,
        "the update installer wrote or rebooted"
    );
    assert_eq!(
        before.settings, after.settings,
        "the settings changed or a restart was asked for"
    );
    assert_eq!(before, after);
    // ... nor the secret itself (read after the comparison: a read is audited) ...
    let mut stored = Vec::new();
    agent
        .download(
            secrets::Cat {
                vault: VAULT.into(),
                path: "db".into(),
                via: secrets::Via::Cli,
            },
            &mut stored,
        )
        .await
        .unwrap();
    assert_eq!(stored, SECRET.as_bytes(), "the secret changed");

    // ... nor ended a session that was live: the admin's and the other browser's go on.
    let (status, _, body) = api(&c, "GET", "/api/status", Some(&admin), None, json!({})).await;
    assert_eq!(status, StatusCode::OK, "the admin's session ended");
    assert_eq!(body["state"], "unlocked", "{body}");
    let page = send_request(
        &c,
        with_cookie(Request::get("/status").body(Body::empty()).unwrap(), &other),
        HERE,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "the other session ended");

    // The refusals that checked a password or a recovery code are on record, one each.
    let records_after = refusal_records(&agent).await;
    let failed_logins = REFUSAL_EVENTS
        .iter()
        .position(|e| *e == "console.login_failed")
        .unwrap();
    let failed_resets = REFUSAL_EVENTS
        .iter()
        .position(|e| *e == "console.password_reset_failed")
        .unwrap();
    assert_eq!(
        records_after[failed_logins] - records_before[failed_logins],
        logins_checked,
        "each checked password is audited"
    );
    assert_eq!(
        records_after[failed_resets] - records_before[failed_resets],
        resets_checked,
        "each checked recovery code is audited"
    );
    assert_eq!(resets_checked, 2, "both wrong recovery codes were checked");

    // And the admin, from their own address, still logs in.
    let login = form_post("/login", &[("password", NEW_PASSWORD.into())]);
    let login = send_request(&c, login, HERE).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
    assert_eq!(login.headers[header::LOCATION], "/status");
}
