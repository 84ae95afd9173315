//! The admin web console: server-rendered pages over HTTPS, usable without JavaScript.
//!
//! - **Setup** (first boot): a one-time setup code, printed to the journal and the serial
//!   console, is required to claim the box; the admin sets a password (Argon2id) and the
//!   first keyslot (TPM, or a passphrase where there is no TPM); the recovery code is
//!   shown once.
//! - **Login**: the admin password; the sixth wrong password within a minute from one
//!   address is throttled. Sessions are random tokens in an `HttpOnly; Secure;
//!   SameSite=Strict` cookie that expire after a configurable idle time.
//! - **CSRF**: every state-changing form carries the session's token, checked on POST.
//! - Every response carries a strict Content-Security-Policy (no scripts, no third-party
//!   assets), `X-Content-Type-Options`, `Referrer-Policy` and `Cache-Control: no-store`.
//!
//! Nothing secret (passwords, PINs, recovery words, the setup code once used, session
//! tokens) reaches a log line.

mod pages;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use node::NodePath;
use node::api::{Reply, Request as AgentRequest, SecretBytes, UnlockParams};
use node::client::Client;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Wrong passwords from one address allowed per minute before it is throttled.
pub const LOGIN_ATTEMPTS_PER_MINUTE: usize = 5;
/// The session cookie.
pub const SESSION_COOKIE: &str = "pk_session";
/// The shortest admin password accepted.
pub const MIN_PASSWORD: usize = 12;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The address a request came from (set per connection by the server).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// How the first keyslot is made at setup.
#[derive(Clone, Debug)]
pub enum FirstToken {
    /// A TPM at this TCTI.
    Tpm(String),
    /// No TPM: a passphrase (`soft`, clearly not hardware).
    Passphrase,
}

/// What the console needs to know and reach.
pub struct ConsoleConfig {
    /// The node's data directory.
    pub node: NodePath,
    /// The console's own state (the admin account).
    pub dir: PathBuf,
    /// The first keyslot's token.
    pub first_token: FirstToken,
    /// Idle time after which a session ends.
    pub session_idle: Duration,
    /// The SHA-256 fingerprint of the console's certificate.
    pub fingerprint: String,
    /// The setup code (only before setup).
    pub setup_code: Option<Zeroizing<String>>,
}

struct Session {
    csrf: String,
    last_used: Instant,
}

/// The console's state.
pub struct Console {
    config: ConsoleConfig,
    client: Client,
    setup_code: Mutex<Option<Zeroizing<String>>>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
    started: Instant,
    /// Told once setup has made the node (the daemon then starts its agent).
    pub node_created: tokio::sync::Notify,
}

/// The stored admin account.
#[derive(serde::Serialize, Deserialize)]
struct Account {
    password_hash: String,
}

fn random_token(bytes: usize) -> String {
    use base64::Engine as _;
    use rand_core::RngCore as _;
    let mut raw = vec![0u8; bytes];
    rand_core::OsRng.fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// A fresh one-time setup code (easy to type from a serial console: groups of letters).
pub fn new_setup_code() -> Zeroizing<String> {
    use rand_core::RngCore as _;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut raw = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut raw);
    let chars: Vec<char> = raw
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect();
    Zeroizing::new(
        chars
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("-"),
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Console {
    /// The console for `config`.
    pub fn new(config: ConsoleConfig) -> Arc<Console> {
        let client = Client::new(&config.node);
        let setup_code = Mutex::new(config.setup_code.clone());
        Arc::new(Console {
            config,
            client,
            setup_code,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            started: Instant::now(),
            node_created: tokio::sync::Notify::new(),
        })
    }

    fn account_path(&self) -> PathBuf {
        self.config.dir.join("admin.json")
    }

    /// Whether the box has been claimed (an admin exists).
    pub fn is_set_up(&self) -> bool {
        self.account_path().exists()
    }

    fn account(&self) -> Option<Account> {
        serde_json::from_slice(&std::fs::read(self.account_path()).ok()?).ok()
    }

    fn new_session(&self) -> (String, String) {
        let token = random_token(32);
        let csrf = random_token(32);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                token.clone(),
                Session {
                    csrf: csrf.clone(),
                    last_used: Instant::now(),
                },
            );
        (token, csrf)
    }

    /// The session's CSRF token, if `headers` carry a live session (which it refreshes).
    fn session(&self, headers: &HeaderMap) -> Option<String> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let idle = self.config.session_idle;
        sessions.retain(|_, s| s.last_used.elapsed() < idle);
        let session = sessions.get_mut(&token)?;
        session.last_used = Instant::now();
        Some(session.csrf.clone())
    }

    fn end_session(&self, headers: &HeaderMap) {
        if let Some(token) = cookie(headers, SESSION_COOKIE) {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&token);
        }
    }

    /// Records a failed login; whether the address is now throttled.
    fn throttled(&self, ip: IpAddr, failed: bool) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let list = failures.entry(ip).or_default();
        list.retain(|t| t.elapsed() < Duration::from_secs(60));
        if failed {
            list.push(Instant::now());
        }
        list.len() > LOGIN_ATTEMPTS_PER_MINUTE
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn session_cookie(token: &str, max_age: Duration) -> HeaderValue {
    // No Max-Age: the cookie lasts as long as the browser; the session itself ends on the
    // server after `max_age` without use (every page view renews it).
    let _ = max_age;
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("pk_session=; Max-Age=0"))
}

/// The address of the request's client.
struct Peer(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ClientAddr>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
        ))
    }
}

/// The console's routes.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/style.css", get(style))
        .route("/setup", get(setup_page).post(setup))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/status", get(status_page))
        .route("/lock", post(lock))
        .route("/unlock", post(unlock))
        .route("/api/status", get(api_status))
        .route("/vaults", get(vaults_page).post(vault_create))
        .route("/vaults/{name}", get(vault_page))
        .route("/vaults/{name}/share", post(vault_share))
        .route("/vaults/{name}/secrets", post(secret_write))
        .route("/peers", get(peers_page).post(peer_add))
        .route("/audit", get(audit_page))
        .with_state(console)
        .layer(middleware::from_fn(security_headers))
}

async fn security_headers(request: Request<axum::body::Body>, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::STYLE,
    )
}

async fn home(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if !c.is_set_up() {
        return Redirect::to("/setup").into_response();
    }
    match c.session(&headers) {
        Some(_) => Redirect::to("/status").into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

async fn setup_page(State(c): State<Arc<Console>>) -> Response {
    if c.is_set_up() {
        return Redirect::to("/login").into_response();
    }
    Html(pages::setup(
        &c.config.fingerprint,
        &c.config.first_token,
        None,
    ))
    .into_response()
}

/// The setup form.
#[derive(Deserialize)]
pub struct SetupForm {
    setup_code: String,
    password: String,
    confirm: String,
    #[serde(default)]
    passphrase: String,
}

async fn setup(State(c): State<Arc<Console>>, Form(form): Form<SetupForm>) -> Response {
    let form = Zeroizing::new(form);
    if c.is_set_up() {
        return (StatusCode::FORBIDDEN, "this box is set up already").into_response();
    }
    let refuse = |status: StatusCode, message: &str| {
        (
            status,
            Html(pages::setup(
                &c.config.fingerprint,
                &c.config.first_token,
                Some(message),
            )),
        )
            .into_response()
    };
    let expected = c
        .setup_code
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let code_ok = expected.as_ref().is_some_and(|code| {
        constant_time_eq(
            code.as_bytes(),
            form.setup_code.trim().to_ascii_uppercase().as_bytes(),
        )
    });
    if !code_ok {
        tracing::warn!(
            event = "console.setup_refused",
            "setup refused: wrong setup code"
        );
        return refuse(StatusCode::FORBIDDEN, "That is not the setup code.");
    }
    if form.password.chars().count() < MIN_PASSWORD {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("The admin password needs at least {MIN_PASSWORD} characters."),
        );
    }
    if form.password != form.confirm {
        return refuse(StatusCode::BAD_REQUEST, "The two passwords differ.");
    }
    let protector: Box<dyn hsm::Protector> = match &c.config.first_token {
        FirstToken::Tpm(tcti) => Box::new(hsm::tpm::TpmProtector::new(tcti.clone(), None)),
        FirstToken::Passphrase => {
            if form.passphrase.chars().count() < MIN_PASSWORD {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &format!("The unlock passphrase needs at least {MIN_PASSWORD} characters."),
                );
            }
            Box::new(hsm::soft::SoftProtector::new(
                hsm::Pin::from(form.passphrase.as_str()),
                hsm::soft::Argon2Params::DEFAULT,
            ))
        }
    };
    let node = c.config.node.clone();
    let made = tokio::task::spawn_blocking(move || {
        node::keyslots::Keyslots::init(&node, protector.as_ref(), "appliance")
    })
    .await;
    let recovery = match made {
        Ok(Ok(init)) => init.recovery_code.to_words(),
        Ok(Err(e)) => {
            tracing::error!(event = "console.setup_failed", error = %e, "setup failed");
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("The node could not be created: {e}"),
            );
        }
        Err(_) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The node could not be created.",
            );
        }
    };
    let hash = match hash_password(&form.password) {
        Ok(hash) => hash,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let account = Account {
        password_hash: hash,
    };
    if let Err(e) = write_private(
        &c.account_path(),
        &serde_json::to_vec(&account).unwrap_or_default(),
    ) {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("The admin account could not be saved: {e}"),
        );
    }
    c.setup_code
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    c.node_created.notify_one();
    tracing::info!(
        event = "console.setup_done",
        "the box was claimed; node created"
    );
    let (token, csrf) = c.new_session();
    let mut response = Html(pages::recovery(&recovery, &csrf)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&token, c.config.session_idle),
    );
    response
}

fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher as _;
    let salt = argon2::password_hash::SaltString::generate(&mut rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| "the password could not be hashed".to_owned())
}

fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::PasswordVerifier as _;
    argon2::password_hash::PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Writes `bytes` to `path` readable by the owner only, atomically.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

async fn login_page(State(c): State<Arc<Console>>) -> Response {
    if !c.is_set_up() {
        return Redirect::to("/setup").into_response();
    }
    Html(pages::login(&c.config.fingerprint, None)).into_response()
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    password: String,
}

impl zeroize::Zeroize for LoginForm {
    fn zeroize(&mut self) {
        self.password.zeroize();
    }
}

impl zeroize::Zeroize for SetupForm {
    fn zeroize(&mut self) {
        self.setup_code.zeroize();
        self.password.zeroize();
        self.confirm.zeroize();
        self.passphrase.zeroize();
    }
}

async fn login(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    Form(form): Form<LoginForm>,
) -> Response {
    let form = Zeroizing::new(form);
    if c.throttled(ip, false) {
        tracing::warn!(event = "console.login_throttled", client = %ip, "login throttled");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Html(pages::login(
                &c.config.fingerprint,
                Some("Too many wrong passwords: wait a minute."),
            )),
        )
            .into_response();
    }
    let Some(account) = c.account() else {
        return Redirect::to("/setup").into_response();
    };
    let password = form.password.clone();
    let hash = account.password_hash.clone();
    let ok = tokio::task::spawn_blocking(move || {
        let password = Zeroizing::new(password);
        verify_password(&hash, &password)
    })
    .await
    .unwrap_or(false);
    if !ok {
        let throttled = c.throttled(ip, true);
        tracing::warn!(event = "console.login_failed", client = %ip, "failed login");
        return (
            if throttled {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::UNAUTHORIZED
            },
            Html(pages::login(&c.config.fingerprint, Some("Wrong password."))),
        )
            .into_response();
    }
    tracing::info!(event = "console.login", client = %ip, "admin logged in");
    let (token, _) = c.new_session();
    let mut response = Redirect::to("/status").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&token, c.config.session_idle),
    );
    response
}

/// A form that only carries the CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Checks the session and the CSRF token of a state-changing request.
fn authorised(c: &Console, headers: &HeaderMap, csrf: &str) -> Result<(), Box<Response>> {
    match c.session(headers) {
        None => Err(Box::new(Redirect::to("/login").into_response())),
        Some(expected) if constant_time_eq(expected.as_bytes(), csrf.as_bytes()) => Ok(()),
        Some(_) => {
            tracing::warn!(
                event = "console.csrf_refused",
                "a form without its CSRF token"
            );
            Err(Box::new(
                (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response(),
            ))
        }
    }
}

async fn logout(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = authorised(&c, &headers, &form.csrf) {
        return *r;
    }
    c.end_session(&headers);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "pk_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    response
}

/// What the status page and `/api/status` show.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusView {
    /// `locked`, `unlocked`, or `starting`.
    pub state: String,
    /// The NodeId when unlocked.
    pub node_id: Option<String>,
    /// The peer endpoint.
    pub peer_addr: Option<String>,
    /// Seconds since the console started.
    pub uptime_s: u64,
    /// pk version.
    pub version: String,
    /// The console certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// The keyslots: id, kind, label.
    pub keyslots: Vec<(u32, String, String)>,
}

async fn status_view(c: &Console) -> StatusView {
    let agent = c.client.call(&AgentRequest::Status).await;
    let (state, node_id, peer_addr) = match agent {
        Ok(Reply::Status(s)) => (s.state, s.node_id, s.peer_addr),
        _ => ("starting".to_owned(), None, None),
    };
    let keyslots = node::keyslots::Keyslots::open(&c.config.node)
        .map(|k| {
            k.slots()
                .iter()
                .map(|s| {
                    (
                        s.header.id,
                        s.header.kind.to_string(),
                        s.header.label.clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    StatusView {
        state,
        node_id,
        peer_addr,
        uptime_s: c.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
        fingerprint: c.config.fingerprint.clone(),
        keyslots,
    }
}

async fn status_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(csrf) = c.session(&headers) else {
        return Redirect::to("/login").into_response();
    };
    Html(pages::status(&status_view(&c).await, &csrf, None)).into_response()
}

async fn api_status(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.session(&headers).is_none() {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    }
    axum::Json(status_view(&c).await).into_response()
}

async fn lock(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = authorised(&c, &headers, &form.csrf) {
        return *r;
    }
    let message = match c.client.call(&AgentRequest::Lock).await {
        Ok(_) => {
            tracing::info!(event = "console.lock", "locked from the console");
            "Locked: the keys are gone from memory.".to_owned()
        }
        Err(e) => format!("Could not lock: {e}"),
    };
    let csrf = c.session(&headers).unwrap_or_default();
    Html(pages::status(&status_view(&c).await, &csrf, Some(&message))).into_response()
}

/// The unlock form.
#[derive(Deserialize)]
pub struct UnlockForm {
    #[serde(default)]
    csrf: String,
    method: String,
    #[serde(default)]
    secret: String,
}

impl zeroize::Zeroize for UnlockForm {
    fn zeroize(&mut self) {
        self.secret.zeroize();
    }
}

async fn unlock(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<UnlockForm>,
) -> Response {
    let form = Zeroizing::new(form);
    if let Err(r) = authorised(&c, &headers, &form.csrf) {
        return *r;
    }
    let kind = match form.method.as_str() {
        "tpm" => Some(hsm::Kind::Tpm),
        "passphrase" => Some(hsm::Kind::Soft),
        "recovery" => Some(hsm::Kind::Recovery),
        "pkcs11" => Some(hsm::Kind::Pkcs11),
        "yubikey" => Some(hsm::Kind::YubiKey),
        _ => None,
    };
    let params = UnlockParams {
        slot: None,
        kind,
        secret: (!form.secret.is_empty()).then(|| SecretBytes(form.secret.as_bytes().to_vec())),
    };
    let message = match c.client.call(&AgentRequest::Unlock(params)).await {
        Ok(_) => {
            tracing::info!(event = "console.unlock", method = %form.method, "unlocked from the console");
            "Unlocked.".to_owned()
        }
        Err(e) => {
            tracing::warn!(event = "console.unlock_failed", method = %form.method, "unlock failed");
            format!("Not unlocked: {e}")
        }
    };
    let csrf = c.session(&headers).unwrap_or_default();
    Html(pages::status(&status_view(&c).await, &csrf, Some(&message))).into_response()
}

/// Runs `request` against the agent; a locked agent shows the "unlock first" page.
async fn agent(c: &Console, request: AgentRequest) -> Result<Reply, Box<Response>> {
    c.client.call(&request).await.map_err(|e| {
        Box::new(match e {
            node::client::ClientError::Api(api) if api.code == node::api::ErrorCode::Locked => {
                Html(pages::locked()).into_response()
            }
            node::client::ClientError::Api(api) if api.code == node::api::ErrorCode::NotFound => {
                (StatusCode::NOT_FOUND, api.message).into_response()
            }
            other => (StatusCode::SERVICE_UNAVAILABLE, other.to_string()).into_response(),
        })
    })
}

async fn vaults_view(c: &Console, csrf: &str, note: Option<&str>) -> Response {
    match agent(c, AgentRequest::VaultsList).await {
        Ok(Reply::Vaults(list)) => Html(pages::vaults(&list, csrf, note)).into_response(),
        Ok(_) => (StatusCode::INTERNAL_SERVER_ERROR, "unexpected reply").into_response(),
        Err(r) => *r,
    }
}

async fn vaults_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(csrf) = c.session(&headers) else {
        return Redirect::to("/login").into_response();
    };
    vaults_view(&c, &csrf, None).await
}

/// The new-vault form.
#[derive(Deserialize)]
pub struct NameForm {
    #[serde(default)]
    csrf: String,
    name: String,
}

async fn vault_create(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<NameForm>,
) -> Response {
    if let Err(r) = authorised(&c, &headers, &form.csrf) {
        return *r;
    }
    let note = match c
        .client
        .call(&AgentRequest::VaultsCreate(form.name.trim().to_owned()))
        .await
    {
        Ok(_) => {
            tracing::info!(event = "console.vault_created", vault = %form.name.trim(), "vault created from the console");
            format!("Vault {} created.", form.name.trim())
        }
        Err(e) => format!("Not created: {e}"),
    };
    let csrf = c.session(&headers).unwrap_or_default();
    vaults_view(&c, &csrf, Some(&note)).await
}

/// The new-secret form.
#[derive(Deserialize)]
pub struct SecretForm {
    #[serde(default)]
    csrf: String,
    path: String,
    value: String,
}

impl zeroize::Zeroize for SecretForm {
    fn zeroize(&mut self) {
        self.value.zeroize();
    }
}

async fn secret_write(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
    Form(form): Form<SecretForm>,
) -> Response {
    let form = Zeroizing::new(form);
    if let Err(r) = authorised(&c, &headers, &form.csrf) {
        return *r;
    }
    let value = Zeroizing::new(form.value.as_bytes().to_vec());
    let request = AgentRequest::SecretsWrite {
        vault: name.clone(),
        path: form.path.trim().to_owned(),
        kind: node::api::WriteKind::Write,
        size: Some(value.len() as u64),
    };
    let note = match c.client.upload(&request, &value[..]).await {
        Ok(_) => {
            tracing::info!(event = "console.secret_written", vault = %name, path = %form.path.trim(), "secret written from the console");
            format!("Saved {}:{}.", name, form.path.trim())
        }
        Err(e) => format!("Not saved: {e}"),
    };
    let csrf = c.session(&headers).unwrap_or_default();
    vault_view(&c, &name, &csrf, Some(&note)).await
}

async fn vault_view(c: &Console, name: &str, csrf: &str, note: Option<&str>) -> Response {
    let entries = match agent(
        c,
        AgentRequest::SecretsLs {
            vault: name.to_owned(),
            path: String::new(),
        },
    )
    .await
    {
        Ok(Reply::Entries(e)) => e,
        Ok(_) => Vec::new(),
        Err(r) => return *r,
    };
    let commits = match agent(
        c,
        AgentRequest::VaultsLog {
            vault: name.to_owned(),
            depth: Some(20),
            from: None,
        },
    )
    .await
    {
        Ok(Reply::Commits(list)) => list,
        _ => Vec::new(),
    };
    let shares = match agent(c, AgentRequest::VaultsPermissions(name.to_owned())).await {
        Ok(Reply::Shares(list)) => list,
        _ => Vec::new(),
    };
    Html(pages::vault(
        &pages::VaultView {
            name,
            entries: &entries,
            commits: &commits,
            shares: &shares,
        },
        csrf,
        note,
    ))
    .into_response()
}

async fn vault_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let Some(csrf) = c.session(&headers) else {
        return Redirect::to("/login").into_response();
    };
    vault_view(&c, &name, &csrf, None).await
}

/// The share form of a vault page.
#[derive(Deserialize)]
pub struct ShareForm {
    #[serde(default)]
    csrf: String,
    who: String,
    action: String,
}

async fn vault_share(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
    Form(form): Form<ShareForm>,
) -> Response {
    if let Err(r) = authorised(&c, &headers, &form.csrf) {
        return *r;
    }
    let grant = form.action == "grant";
    let request = AgentRequest::VaultsShare {
        vault: name.clone(),
        node: form.who.trim().to_owned(),
        permissions: if grant {
            vec![
                node::nodes::VaultPermission::Clone,
                node::nodes::VaultPermission::Pull,
            ]
        } else {
            vec![
                node::nodes::VaultPermission::Clone,
                node::nodes::VaultPermission::Pull,
                node::nodes::VaultPermission::Push,
            ]
        },
        grant,
    };
    let note = match c.client.call(&request).await {
        Ok(_) => {
            tracing::info!(event = "console.share", vault = %name, peer = %form.who.trim(), grant, "sharing changed from the console");
            if grant {
                format!("Shared {name} with {}.", form.who.trim())
            } else {
                format!("{name} is no longer shared with {}.", form.who.trim())
            }
        }
        Err(e) => format!("Not changed: {e}"),
    };
    let csrf = c.session(&headers).unwrap_or_default();
    vault_view(&c, &name, &csrf, Some(&note)).await
}

/// The add-node form.
#[derive(Deserialize)]
pub struct PeerForm {
    #[serde(default)]
    csrf: String,
    node_id: String,
    addr: String,
}

async fn peer_add(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<PeerForm>,
) -> Response {
    if let Err(r) = authorised(&c, &headers, &form.csrf) {
        return *r;
    }
    let request = AgentRequest::NodesAdd {
        node: form.node_id.trim().to_owned(),
        addr: form.addr.trim().to_owned(),
        no_notify: false,
        no_ping: false,
    };
    let note = match c.client.call(&request).await {
        Ok(_) => {
            tracing::info!(event = "console.node_added", peer = %form.node_id.trim(), "node added from the console");
            format!("Added {}.", form.node_id.trim())
        }
        Err(e) => format!("Not added: {e}"),
    };
    let csrf = c.session(&headers).unwrap_or_default();
    peers_view(&c, &csrf, Some(&note)).await
}

async fn peers_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(csrf) = c.session(&headers) else {
        return Redirect::to("/login").into_response();
    };
    peers_view(&c, &csrf, None).await
}

async fn peers_view(c: &Console, csrf: &str, note: Option<&str>) -> Response {
    let nodes = match agent(c, AgentRequest::NodesGetAll).await {
        Ok(Reply::Nodes(list)) => list,
        Ok(_) => Vec::new(),
        Err(r) => return *r,
    };
    let connections = match agent(c, AgentRequest::NodesConnections).await {
        Ok(Reply::Connections(list)) => list,
        _ => Vec::new(),
    };
    Html(pages::peers(&nodes, &connections, csrf, note)).into_response()
}

async fn audit_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.session(&headers).is_none() {
        return Redirect::to("/login").into_response();
    }
    let query = node::audit::AuditQuery {
        limit: Some(200),
        newest_first: true,
        ..Default::default()
    };
    match agent(&c, AgentRequest::Audit(query)).await {
        Ok(Reply::Events(events)) => Html(pages::audit(&events)).into_response(),
        Ok(_) => (StatusCode::INTERNAL_SERVER_ERROR, "unexpected reply").into_response(),
        Err(r) => *r,
    }
}
