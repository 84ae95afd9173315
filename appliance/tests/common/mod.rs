//! What the appliance's integration tests share: a console in a temporary directory
//! driven in process through its router (`oneshot`), the node's agent beside it, and the
//! whole daemon run in this process.
//!
//! Each test file includes it with `mod common;`; none uses all of it.

#![allow(dead_code)] // each test binary uses its own part

pub(crate) mod https;
pub(crate) mod installer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use appliance::config::Config;
use appliance::console::{self, ClientAddr, Console, ConsoleConfig, FirstToken};
use appliance::daemon::Started;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// The setup code every test console is made with.
pub(crate) const CODE: &str = "ABCD-EFGH-JKLM";

/// The admin password of the daemons claimed through [`https::claimed`].
pub(crate) const ADMIN_PASSWORD: &str = "the admin password of this box";

/// The admin's own address.
pub(crate) const HERE: [u8; 4] = [127, 0, 0, 1];

/// A console answer, its body as text.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

/// A console for a box whose state lives in `dir`: passphrase first token, setup code
/// [`CODE`], ten-minute idle sessions, no LAN discovery.
pub(crate) fn console(dir: &std::path::Path) -> Arc<Console> {
    // No installer here unless a test makes one (`installer::TestBox`).
    console_with_installer(dir, &dir.join("no-pk-update.sock"))
}

/// [`console`], with the update installer at `update_socket`.
pub(crate) fn console_with_installer(
    dir: &std::path::Path,
    update_socket: &std::path::Path,
) -> Arc<Console> {
    Console::new(console_config(dir, update_socket))
}

/// The configuration of [`console_with_installer`]'s console.
pub(crate) fn console_config(
    dir: &std::path::Path,
    update_socket: &std::path::Path,
) -> ConsoleConfig {
    ConsoleConfig {
        node: node::NodePath::new(dir.join("node")),
        dir: dir.join("console"),
        first_token: FirstToken::Passphrase,
        session_idle: Duration::from_secs(600),
        fingerprint: "AA:BB".into(),
        setup_code: Some(zeroize::Zeroizing::new(CODE.into())),
        tokens: hardware(),
        lan: false,
        update_socket: update_socket.to_owned(),
        data_enrol_socket: None,
        time_sync_flag: None,
        settings: settings_place(dir),
    }
}

/// Settings stored in `dir/state`, none at the start.
pub(crate) fn settings_place(dir: &std::path::Path) -> appliance::console::SettingsPlace {
    let running = appliance::config::Config {
        state_dir: dir.join("state"),
        ..Default::default()
    };
    appliance::console::SettingsPlace {
        state_dir: running.state_dir.clone(),
        running,
        started_with: Default::default(),
    }
}

/// The token configuration a box has: the real drivers, no overrides.
pub(crate) fn hardware() -> node::tokens::TokenConfig {
    node::tokens::TokenConfig {
        drivers: Some(Arc::new(hsm::Hardware)),
        ..Default::default()
    }
}

/// A request with the session `cookie` when given.
fn request(method: &str, path: &str, cookie: Option<&str>) -> axum::http::request::Builder {
    let request = Request::builder().method(method).uri(path);
    match cookie {
        Some(cookie) => request.header(header::COOKIE, cookie),
        None => request,
    }
}

/// Sends `request` from `from` through the console's router.
pub(crate) async fn send_request(
    c: &Arc<Console>,
    mut request: Request<Body>,
    from: impl Into<IpAddr>,
) -> Answer {
    request
        .extensions_mut()
        .insert(ClientAddr(SocketAddr::from((from.into(), 50000))));
    let response = console::router(c.clone()).oneshot(request).await.unwrap();
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

/// A page from `from`, with the session `cookie` when given.
pub(crate) async fn get_page(
    c: &Arc<Console>,
    path: &str,
    cookie: Option<&str>,
    from: impl Into<IpAddr>,
) -> Answer {
    let request = request("GET", path, cookie).body(Body::empty()).unwrap();
    send_request(c, request, from).await
}

/// A page form posted from `from`, with the session `cookie` when given.
pub(crate) async fn post_form(
    c: &Arc<Console>,
    path: &str,
    cookie: Option<&str>,
    form: &str,
    from: impl Into<IpAddr>,
) -> Answer {
    let request = request("POST", path, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap();
    send_request(c, request, from).await
}

/// A JSON API call from [`HERE`]; `csrf` goes in the `X-CSRF-Token` header. The body of
/// the answer as JSON (a JSON string of its text if it is not JSON).
pub(crate) async fn api(
    c: &Arc<Console>,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: Value,
) -> (StatusCode, HeaderMap, Value) {
    let mut request =
        request(method, path, cookie).header(header::CONTENT_TYPE, "application/json");
    if let Some(csrf) = csrf {
        request = request.header(console::api::CSRF_HEADER, csrf);
    }
    let request = request.body(Body::from(body.to_string())).unwrap();
    let answer = send_request(c, request, HERE).await;
    let value = serde_json::from_str(&answer.body).unwrap_or(Value::String(answer.body));
    (answer.status, answer.headers, value)
}

/// A GET of the JSON API, with the session `cookie` when given.
pub(crate) async fn api_get(
    c: &Arc<Console>,
    path: &str,
    cookie: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    api(c, "GET", path, cookie, None, json!({})).await
}

/// The `__Host-pk_session=...` pair an answer's `Set-Cookie` sets.
pub(crate) fn session_cookie(headers: &HeaderMap) -> String {
    headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// A live session of the JSON API: its cookie and its CSRF token.
pub(crate) struct Session {
    pub(crate) console: Arc<Console>,
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

impl Session {
    /// The session of an answer that started one (setup or login).
    pub(crate) fn from_answer(c: &Arc<Console>, headers: &HeaderMap, body: &Value) -> Session {
        Session {
            console: c.clone(),
            cookie: session_cookie(headers),
            csrf: body["csrf"].as_str().unwrap().to_owned(),
        }
    }

    /// A GET with the session's cookie.
    pub(crate) async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
        api_get(&self.console, path, Some(&self.cookie)).await
    }

    /// A POST of `body` with the session's cookie and CSRF token.
    pub(crate) async fn post(&self, path: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
        let (cookie, csrf) = (Some(self.cookie.as_str()), Some(self.csrf.as_str()));
        api(&self.console, "POST", path, cookie, csrf, body).await
    }
}

/// Claims the box through the API with the admin `password` and a passphrase keyslot
/// opened by `passphrase`; the admin's session and the recovery code.
pub(crate) async fn set_up(
    c: &Arc<Console>,
    password: &str,
    passphrase: &str,
) -> (Session, String) {
    let (status, headers, body) = api(
        c,
        "POST",
        "/api/setup",
        None,
        None,
        json!({ "setup_code": CODE, "password": password, "confirm": password, "passphrase": passphrase }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let recovery = body["recovery_code"].as_str().unwrap().to_owned();
    (Session::from_answer(c, &headers, &body), recovery)
}

/// Logs in through the API, which must let the admin in.
pub(crate) async fn log_in(c: &Arc<Console>, password: &str) -> Session {
    let (status, headers, body) = api(
        c,
        "POST",
        "/api/login",
        None,
        None,
        json!({ "password": password }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Session::from_answer(c, &headers, &body)
}

/// Starts the node's agent for a console set up in `dir` (as the daemon does after
/// setup), and waits until it answers.
pub(crate) async fn start_agent(dir: &std::path::Path) -> node::client::Client {
    let node = node::NodePath::new(dir.join("node"));
    let config = node::agent::AgentConfig {
        node: node.clone(),
        tokens: hardware(),
        peer_listen: None,
        lan: None,
        github: node::provider::GitHubConfig::default(),
    };
    tokio::spawn(async move { node::agent::run(config, || {}).await });
    let client = node::client::Client::new(&node);
    for _ in 0..100 {
        if client.call(node::api::agent::Status).await.is_ok() {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent did not start");
}

/// A loopback TCP port nobody listens on (as of now).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How an [`InProcess`] daemon ended: in time, without panicking, and its outcome.
pub(crate) type Ended = Result<
    Result<Result<appliance::daemon::Exit, String>, tokio::task::JoinError>,
    tokio::time::error::Elapsed,
>;

/// The daemon ([`appliance::daemon::run_until`]) running in this process.
pub(crate) struct InProcess {
    /// What the daemon said once its console accepted connections.
    pub(crate) started: Started,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<appliance::daemon::Exit, String>>,
}

impl InProcess {
    /// Starts the daemon with `config` (and the settings stored in its state directory
    /// over it, as `pk-appliance` does) and waits until its console listens.
    pub(crate) async fn start(config: Config) -> InProcess {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (config, settings) = appliance::settings::effective(config);
        let task = tokio::spawn(appliance::daemon::run_until(
            config,
            settings.unwrap(),
            move |started| {
                let _ = ready_tx.send(started.clone());
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        InProcess {
            started: ready_rx.await.unwrap(),
            stop,
            task,
        }
    }

    /// The console's URL, without a trailing `/`.
    pub(crate) fn console_url(&self) -> String {
        self.started.console_urls[0]
            .trim_end_matches('/')
            .to_owned()
    }

    /// Asks the daemon to stop and gives it 20 s to end; how it ended.
    pub(crate) async fn stop(self) -> Ended {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task).await
    }

    /// Gives the daemon 20 s to end by itself (a restart the console asked for); how it
    /// ended.
    pub(crate) async fn ended(self) -> Ended {
        tokio::time::timeout(Duration::from_secs(20), self.task).await
    }
}
