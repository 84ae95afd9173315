//! The console's routes, driven in process (`oneshot`): setup with the setup code, login
//! with throttling, sessions, CSRF, and what every page does without a session.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use appliance::console::{self, ClientAddr, Console, ConsoleConfig, FirstToken};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const CODE: &str = "ABCD-EFGH-JKLM";
const PASSWORD: &str = "a long admin password";

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

fn console(dir: &std::path::Path) -> Arc<Console> {
    Console::new(ConsoleConfig {
        node: node::NodePath::new(dir.join("node")),
        dir: dir.join("console"),
        first_token: FirstToken::Passphrase,
        session_idle: Duration::from_secs(600),
        fingerprint: "AA:BB".into(),
        setup_code: Some(zeroize::Zeroizing::new(CODE.into())),
    })
}

async fn send(
    console: &Arc<Console>,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    from: [u8; 4],
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    if form.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let mut request = request
        .body(Body::from(form.unwrap_or("").to_owned()))
        .unwrap();
    request
        .extensions_mut()
        .insert(ClientAddr(SocketAddr::from((from, 50000))));
    let response = console::router(console.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes())
        .into_owned();
    Answer {
        status,
        headers,
        body,
    }
}

fn session_cookie(answer: &Answer) -> String {
    let set = answer
        .headers
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    set.split(';').next().unwrap().to_owned()
}

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
    let here = [127, 0, 0, 1];

    // Before setup everything leads to setup, and nothing works without a session.
    let home = send(&c, "GET", "/", None, None, here).await;
    assert_eq!(home.headers[header::LOCATION], "/setup");
    for (method, path) in [
        ("GET", "/status"),
        ("POST", "/lock"),
        ("POST", "/unlock"),
        ("POST", "/logout"),
    ] {
        let answer = send(
            &c,
            method,
            path,
            None,
            Some("csrf=x&method=tpm&who=x&action=grant&name=x&path=x&value=x&node_id=x&addr=x"),
            here,
        )
        .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{method} {path}");
        assert_eq!(
            answer.headers[header::LOCATION],
            "/login",
            "{method} {path}"
        );
    }
    let api = send(&c, "GET", "/api/status", None, None, here).await;
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
    let wrong = send(
        &c,
        "POST",
        "/setup",
        None,
        Some(&form("WXYZ-WXYZ-WXYZ", PASSWORD)),
        here,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(wrong.body.contains("not the setup code"));
    let weak = send(&c, "POST", "/setup", None, Some(&form(CODE, "short")), here).await;
    assert_eq!(weak.status, StatusCode::BAD_REQUEST);
    assert!(!dir.path().join("node").exists(), "nothing was made");

    let done = send(
        &c,
        "POST",
        "/setup",
        None,
        Some(&form(CODE, PASSWORD)),
        here,
    )
    .await;
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
    let again = send(
        &c,
        "POST",
        "/setup",
        None,
        Some(&form(CODE, PASSWORD)),
        here,
    )
    .await;
    assert_eq!(
        again.status,
        StatusCode::FORBIDDEN,
        "the box is claimed once"
    );
    let page = send(&c, "GET", "/setup", None, None, here).await;
    assert_eq!(page.headers[header::LOCATION], "/login");
    let mode = std::fs::metadata(dir.path().join("console/admin.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077,
        0
    );

    // A session works; a state-changing POST without its CSRF token does not.
    let cookie = session_cookie(&done);
    let status = send(&c, "GET", "/status", Some(&cookie), None, here).await;
    assert_eq!(status.status, StatusCode::OK);
    let token = csrf(&status.body);
    let forged = send(&c, "POST", "/lock", Some(&cookie), Some("csrf=wrong"), here).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let missing = send(&c, "POST", "/lock", Some(&cookie), Some(""), here).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    let api = send(&c, "GET", "/api/status", Some(&cookie), None, here).await;
    assert_eq!(api.status, StatusCode::OK);
    assert!(
        api.body.contains("\"fingerprint\":\"AA:BB\""),
        "{}",
        api.body
    );
    let out = send(
        &c,
        "POST",
        "/logout",
        Some(&cookie),
        Some(&format!("csrf={token}")),
        here,
    )
    .await;
    assert_eq!(out.headers[header::LOCATION], "/login");
    let after = send(&c, "GET", "/status", Some(&cookie), None, here).await;
    assert_eq!(
        after.headers[header::LOCATION],
        "/login",
        "the session ended"
    );

    // Login: five wrong passwords are refused; the sixth in a minute is throttled, and
    // so is the right one from that address; another address still logs in.
    let attacker = [192, 0, 2, 7];
    for _ in 0..5 {
        let r = send(
            &c,
            "POST",
            "/login",
            None,
            Some("password=guess+one"),
            attacker,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let sixth = send(
        &c,
        "POST",
        "/login",
        None,
        Some("password=guess+six"),
        attacker,
    )
    .await;
    assert_eq!(sixth.status, StatusCode::TOO_MANY_REQUESTS);
    let right = format!("password={}", enc(PASSWORD));
    let blocked = send(&c, "POST", "/login", None, Some(&right), attacker).await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    let admin = send(&c, "POST", "/login", None, Some(&right), here).await;
    assert_eq!(admin.status, StatusCode::SEE_OTHER);
    assert_eq!(admin.headers[header::LOCATION], "/status");
    let cookie = session_cookie(&admin);
    assert_eq!(
        send(&c, "GET", "/status", Some(&cookie), None, here)
            .await
            .status,
        StatusCode::OK
    );
}
