//! The admin web console: server-rendered pages over HTTPS, usable without JavaScript.
//!
//! - **Setup** (first boot): a one-time setup code, printed to the journal and the serial
//!   console, is required to claim the box; the admin sets a password (Argon2id) and the
//!   first keyslot (TPM, or a passphrase where there is no TPM); the recovery code is
//!   shown once.
//! - **Login**: the admin password. Checks are counted before they run: five a minute
//!   per address (per /64 for IPv6), sixty a minute in all, four at once (see
//!   `throttle.rs` and `docs/theory/console-security.md`, "Budgets"). Sessions are random
//!   tokens in a `__Host-` cookie (`HttpOnly; Secure; SameSite=Strict; Path=/`) that
//!   expire after a configurable idle time.
//! - **CSRF**: every state-changing form carries the session's token, checked on POST.
//! - Every response carries a strict Content-Security-Policy (no scripts, no third-party
//!   assets), `Strict-Transport-Security`, `X-Content-Type-Options`, `Referrer-Policy`
//!   and `Cache-Control: no-store`.
//! - The server (`tls.rs`) caps its connections and closes idle ones.
//!
//! Nothing secret (passwords, PINs, recovery words, the setup code once used, session
//! tokens) reaches a log line.

mod account;
mod actions;
pub mod api;
pub mod gate;
pub(crate) mod installer;
mod pages;
mod settings;
/// A byte count for people (`1.5 MiB`), for the console's pages and `pk-appliance update`.
pub(crate) use pages::size;
mod throttle;
pub(crate) mod tls;
mod updates;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::files::write_private;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use node::NodePath;
use node::api::console::{ConsoleEvent, Event};
use node::client::Client;
use serde::Deserialize;
use zeroize::Zeroizing;

pub use actions::Enrolment;
use actions::{Outcome, ViewError};

/// Password (or recovery-code) checks one address, or one IPv6 /64, may have per minute;
/// a right password does not count.
pub const LOGIN_ATTEMPTS_PER_MINUTE: usize = 5;
/// Password checks all clients together may have per minute.
const GLOBAL_ATTEMPTS_PER_MINUTE: usize = 60;
/// Password checks (each an Argon2id of 19 MiB, or a recovery code's) running at once;
/// a request beyond them is refused at once.
const CONCURRENT_PASSWORD_CHECKS: usize = 4;
/// The session cookie. The `__Host-` prefix makes the browser take it only with `Secure`,
/// `Path=/` and no `Domain`.
pub const SESSION_COOKIE: &str = "__Host-pk_session";
/// What ends the session cookie in the browser.
const CLEAR_COOKIE: &str =
    "__Host-pk_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0";
/// How long browsers keep to HTTPS for the console once told (two years).
const HSTS: &str = "max-age=63072000";
/// The shortest admin password accepted.
const MIN_PASSWORD: usize = 12;
/// What the console answers when the account on disk is not the one bound to the node.
const REPLACED: &str = "The admin account on this box was changed outside the \
    console: it is not the one bound to this node. Every session has ended. Reset the admin \
    password with the recovery code.";

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The address a request came from (set per connection by the server).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// How the first keyslot is made at setup.
#[derive(Clone, Debug)]
pub enum FirstToken {
    /// A TPM.
    Tpm {
        /// Its TCTI.
        tcti: String,
        /// With PCRs (`0,4,7,11`), the slot opens only while they hold the values they
        /// had at setup (an unchanged boot chain).
        pcrs: Option<String>,
        /// With a signed policy, only while its PCRs (11) hold values its key signed.
        signed_pcrs: Option<hsm::tpm::SignedPcrPolicy>,
    },
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
    /// Where this machine's tokens are (TPM TCTI, PKCS#11 module).
    pub tokens: node::tokens::TokenConfig,
    /// Whether the peers page may listen for nodes on the LAN (mDNS).
    pub lan: bool,
    /// The update installer's socket (`update_socket`).
    pub update_socket: PathBuf,
    /// Where setup hands the new recovery code to be added to the encrypted data volume
    /// (`data_enrol_socket`); none: no encrypted data volume here.
    pub data_enrol_socket: Option<PathBuf>,
    /// The file whose presence says the clock is synchronised (`time_sync_flag`); none:
    /// the console does not say.
    pub time_sync_flag: Option<PathBuf>,
    /// Where the settings are stored (the state directory), and those the daemon started
    /// with.
    pub settings: SettingsPlace,
}

/// Where the console reads and stores the owner's settings.
#[derive(Clone, Debug)]
pub struct SettingsPlace {
    /// The state directory that holds `settings.toml`.
    pub state_dir: PathBuf,
    /// The configuration the daemon runs with (settings included), shown as the values
    /// in effect.
    pub running: crate::config::Config,
    /// The stored settings the daemon started with: a difference from the stored ones
    /// means a restart is pending.
    pub started_with: crate::settings::Settings,
}

struct Session {
    csrf: String,
    last_used: Instant,
    /// A YubiKey unlock this session started and follows.
    job: Option<Arc<Job>>,
}

/// An operation running in the background while its page refreshes itself.
#[derive(Default)]
struct Job {
    outcome: Mutex<Option<Outcome>>,
}

/// The console's state.
pub struct Console {
    config: ConsoleConfig,
    client: Client,
    setup_code: Mutex<Option<Zeroizing<String>>>,
    sessions: Mutex<HashMap<String, Session>>,
    throttle: Mutex<throttle::Throttle>,
    /// One permit per password check that may run at once.
    checks: Arc<tokio::sync::Semaphore>,
    started: Instant,
    /// A YubiKey waits for a touch.
    touch: Arc<AtomicBool>,
    /// Told once setup has made the node (the daemon then starts its agent).
    pub(crate) node_created: tokio::sync::Notify,
    /// Whether the admin account file, since the console last wrote it (or started), was
    /// found to be the one bound to the node; `None` until the node could tell.
    account_checked: Mutex<Option<bool>>,
    /// The update installer, and the install it runs.
    updates: installer::Updates,
    /// Set when the admin asks for a restart (to apply changed settings): the daemon
    /// then stops, and its service manager starts it again.
    pub(crate) restart: tokio::sync::watch::Sender<bool>,
    /// One settings change at a time (each reads, changes and replaces the file).
    settings_lock: Mutex<()>,
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
pub(crate) fn new_setup_code() -> Zeroizing<String> {
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
    /// The setup code while the box is unclaimed (for the box's own screen).
    pub(crate) fn setup_code_now(&self) -> Option<String> {
        self.setup_code
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|code| code.as_str().to_owned())
    }

    /// Whether the admin has asked this console's daemon to restart.
    pub fn restart_requested(&self) -> bool {
        *self.restart.borrow()
    }

    /// The console for `config`.
    pub fn new(config: ConsoleConfig) -> Arc<Console> {
        let client = Client::new(&config.node);
        let setup_code = Mutex::new(config.setup_code.clone());
        let updates = installer::Updates::new(config.update_socket.clone());
        Arc::new(Console {
            config,
            client,
            setup_code,
            sessions: Mutex::new(HashMap::new()),
            throttle: Mutex::new(throttle::Throttle::new(
                LOGIN_ATTEMPTS_PER_MINUTE,
                GLOBAL_ATTEMPTS_PER_MINUTE,
            )),
            checks: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_PASSWORD_CHECKS)),
            started: Instant::now(),
            touch: Arc::new(AtomicBool::new(false)),
            node_created: tokio::sync::Notify::new(),
            account_checked: Mutex::new(None),
            updates,
            restart: tokio::sync::watch::Sender::new(false),
            settings_lock: Mutex::new(()),
        })
    }

    fn account_path(&self) -> PathBuf {
        self.config.dir.join("admin.json")
    }

    /// Whether the box has been claimed (an admin exists).
    pub(crate) fn is_set_up(&self) -> bool {
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
                    job: None,
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

    fn job(&self, headers: &HeaderMap) -> Option<Arc<Job>> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(&token)?.job.clone()
    }

    fn set_job(&self, headers: &HeaderMap, job: Option<Arc<Job>>) {
        if let Some(token) = cookie(headers, SESSION_COOKIE) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(session) = sessions.get_mut(&token) {
                session.job = job;
            }
        }
    }

    /// Where YubiKey touch prompts go: the agent's and the console's own token
    /// operations report them here, and the unlock page shows "touch your key now".
    pub(crate) fn yubikey_events(&self) -> hsm::yubikey::EventSink {
        let touch = self.touch.clone();
        Arc::new(move |event| {
            let waiting = matches!(event, hsm::yubikey::YubiKeyEvent::TouchNeeded { .. });
            touch.store(waiting, Ordering::SeqCst);
        })
    }

    fn touch_needed(&self) -> bool {
        self.touch.load(Ordering::SeqCst)
    }

    /// This machine's tokens, with touch prompts going to the console.
    fn tokens(&self) -> node::tokens::TokenConfig {
        let mut tokens = self.config.tokens.clone();
        tokens.yubikey_events = Some(self.yubikey_events());
        tokens
    }

    /// Records a console event in the node's audit log (kept for the next unlock while
    /// locked; lost only if the agent is not running at all, as before setup).
    async fn record(&self, event: ConsoleEvent, client: IpAddr) {
        let request = Event {
            event,
            client: client.to_string(),
        };
        if let Err(e) = self.client.call(request).await {
            tracing::warn!(event = "console.audit_failed", error = %e, "a console event could not reach the audit log");
        }
    }

    fn end_session(&self, headers: &HeaderMap) {
        if let Some(token) = cookie(headers, SESSION_COOKIE) {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&token);
        }
    }

    /// Ends every session but the one with token `keep`; how many ended.
    fn end_other_sessions(&self, keep: &str) -> usize {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let before = sessions.len();
        sessions.retain(|token, _| constant_time_eq(token.as_bytes(), keep.as_bytes()));
        before - sessions.len()
    }

    /// Counts a password check from `ip` before it runs, if the throttle allows it.
    fn reserve_check(&self, ip: IpAddr) -> Result<throttle::Ticket, throttle::Refused> {
        self.throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(ip, Instant::now())
    }

    /// Takes back a check that found the right password, or never ran.
    fn refund_check(&self, ticket: throttle::Ticket) {
        self.throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refund(ticket);
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

fn session_cookie(token: &str) -> HeaderValue {
    // No Max-Age: the cookie lasts as long as the browser; the session itself ends on the
    // server after the idle time without use (every page view renews it).
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(CLEAR_COOKIE))
}

/// The address of the request's client.
struct Peer(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(client_ip(&parts.extensions)))
    }
}

/// The client's address the server put in the request (0.0.0.0 if none did).
fn client_ip(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ClientAddr>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

/// The console's routes: the pages, and the JSON admin API under `/api/`.
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
        .route("/unlock/wait", get(unlock_wait))
        .route("/vaults", get(vaults_page).post(vault_create))
        .route("/vaults/{name}", get(vault_page))
        .route("/vaults/{name}/share", post(vault_share))
        .route("/vaults/{name}/secrets", post(secret_write))
        .route("/vaults/{name}/reveal", post(secret_reveal))
        .route("/peers", get(peers_page).post(peer_add))
        .route("/peers/ping", post(peer_ping))
        .route("/peers/pair.svg", get(pairing_qr))
        .route("/backups", get(backups_page).post(backup_add))
        .route("/backups/remove", post(backup_remove))
        .route("/keyslots", get(keyslots_page).post(keyslot_enroll))
        .route("/keyslots/test", post(keyslot_test))
        .route("/keyslots/remove", post(keyslot_remove))
        .route("/audit", get(audit_page))
        .route("/account", get(account::account_page))
        .route("/account/password", post(account::password_change))
        .route("/reset", get(account::reset_page).post(account::reset))
        .route("/updates", get(updates::page).post(updates::upload))
        .route("/updates/reboot", post(updates::reboot))
        .route("/settings", get(settings::page).post(settings::save))
        .route("/settings/restart", post(settings::restart_form))
        .merge(api::routes(console.clone()))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            account_guard,
        ))
        .with_state(console)
        .layer(middleware::from_fn(security_headers))
}

/// Before any request from a live session: the admin account on disk must be the one
/// bound to the node; if it is not, every session ends and the request is refused (with
/// the cookie cleared). A request without a live session goes on as usual: the pages
/// lead it to the login, which refuses the account, and the reset stays reachable.
async fn account_guard(
    State(c): State<Arc<Console>>,
    request: Request<axum::body::Body>,
    next: Next,
) -> Response {
    if c.session(request.headers()).is_none() {
        return next.run(request).await;
    }
    let Err(replaced) = c.account_bound().await else {
        return next.run(request).await;
    };
    c.account_replaced(client_ip(request.extensions()), replaced)
        .await;
    let mut response = if request.uri().path().starts_with("/api/") {
        (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({ "error": REPLACED })),
        )
            .into_response()
    } else {
        (StatusCode::FORBIDDEN, Html(pages::replaced())).into_response()
    };
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_static(CLEAR_COOKIE));
    response
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
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static(HSTS),
    );
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
#[derive(Deserialize, zeroize::Zeroize)]
pub struct SetupForm {
    setup_code: String,
    password: String,
    confirm: String,
    #[serde(default)]
    passphrase: String,
}

async fn setup(State(c): State<Arc<Console>>, Form(form): Form<SetupForm>) -> Response {
    let form = Zeroizing::new(form);
    match claim(&c, &form).await {
        Ok(claimed) => {
            let mut response =
                Html(pages::recovery(&claimed.recovery, &claimed.csrf)).into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session_cookie(&claimed.token));
            response
        }
        Err((status, message)) => (
            status,
            Html(pages::setup(
                &c.config.fingerprint,
                &c.config.first_token,
                Some(&message),
            )),
        )
            .into_response(),
    }
}

/// A claimed box: the recovery code to show once, and the admin's first session.
struct Claimed {
    recovery: Zeroizing<String>,
    token: String,
    csrf: String,
}

/// Claims the box: checks the setup code, makes the node with its first keyslot and the
/// recovery code, and stores the admin password.
async fn claim(c: &Console, form: &SetupForm) -> Result<Claimed, (StatusCode, String)> {
    if c.is_set_up() {
        return Err((StatusCode::FORBIDDEN, "This box is set up already.".into()));
    }
    let refuse = |status: StatusCode, message: &str| Err((status, message.to_owned()));
    check_setup_code(c, &form.setup_code)?;
    if let Err(message) = account::check_new(&form.password, Some(&form.confirm)) {
        return refuse(StatusCode::BAD_REQUEST, &message);
    }
    let protector = first_protector(&c.config.first_token, &form.passphrase)?;
    let recovery = create_node(c, protector).await?;
    let account = Account {
        password_hash: hash_password(&form.password)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?,
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
    Ok(Claimed {
        recovery,
        token,
        csrf,
    })
}

/// Checks the one-time setup code (compared in constant time, case and spaces around it
/// ignored); a wrong one is logged.
fn check_setup_code(c: &Console, given: &str) -> Result<(), (StatusCode, String)> {
    let expected = c
        .setup_code
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let code_ok = expected.as_ref().is_some_and(|code| {
        constant_time_eq(
            code.as_bytes(),
            given.trim().to_ascii_uppercase().as_bytes(),
        )
    });
    if !code_ok {
        tracing::warn!(
            event = "console.setup_refused",
            "setup refused: wrong setup code"
        );
        return Err((
            StatusCode::FORBIDDEN,
            "That is not the setup code.".to_owned(),
        ));
    }
    Ok(())
}

/// The protector of the node's first keyslot, as config.toml chooses: the TPM (bound to
/// the PCRs it names, and to PCR 11 values its signing key signed) or the passphrase given
/// at setup.
fn first_protector(
    first_token: &FirstToken,
    passphrase: &str,
) -> Result<Box<dyn hsm::Protector>, (StatusCode, String)> {
    Ok(match first_token {
        FirstToken::Tpm {
            tcti,
            pcrs,
            signed_pcrs,
        } => {
            let mut tpm = hsm::tpm::TpmProtector::new(tcti.clone(), None);
            if let Some(pcrs) = pcrs {
                match hsm::tpm::PcrPolicy::parse_list(hsm::tpm::PcrBank::Sha256, pcrs) {
                    Ok(policy) => tpm = tpm.with_pcr_policy(policy),
                    Err(e) => {
                        return Err((
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("tpm_pcrs in config.toml: {e}"),
                        ));
                    }
                }
            }
            if let Some(signed) = signed_pcrs {
                tpm = tpm.with_signed_pcr_policy(signed.clone());
            }
            Box::new(tpm)
        }
        FirstToken::Passphrase => {
            if passphrase.chars().count() < MIN_PASSWORD {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("The unlock passphrase needs at least {MIN_PASSWORD} characters."),
                ));
            }
            Box::new(hsm::soft::SoftProtector::new(
                hsm::Pin::from(passphrase),
                hsm::soft::Argon2Params::DEFAULT,
            ))
        }
    })
}

/// Makes the node (its data key, the first keyslot under `protector`, the recovery
/// slot) on a blocking thread; returns the recovery code's words.
async fn create_node(
    c: &Console,
    protector: Box<dyn hsm::Protector>,
) -> Result<Zeroizing<String>, (StatusCode, String)> {
    let node = c.config.node.clone();
    let made = tokio::task::spawn_blocking(move || {
        node::keyslots::Keyslots::init(&node, protector.as_ref(), "appliance")
    })
    .await;
    match made {
        Ok(Ok(init)) => {
            let words = Zeroizing::new(init.recovery_code.to_words().as_str().to_owned());
            if let Some(socket) = &c.config.data_enrol_socket {
                enrol_data_recovery(socket.clone(), words.clone()).await;
            }
            Ok(words)
        }
        Ok(Err(e)) => {
            tracing::error!(event = "console.setup_failed", error = %e, "setup failed");
            Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The node could not be created: {e}"),
            ))
        }
        Err(_) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "The node could not be created.".to_owned(),
        )),
    }
}

/// Hands the new recovery code to the data volume's enrolment service, so the code opens
/// the volume too when its TPM slot does not. A failure is logged, not fatal: the node is
/// made and its code must still be shown once.
async fn enrol_data_recovery(socket: PathBuf, words: Zeroizing<String>) {
    let outcome =
        tokio::task::spawn_blocking(move || crate::data::enrol_over(&socket, &words)).await;
    match outcome {
        Ok(Ok(())) => tracing::info!(
            event = "data.recovery_enrolled",
            "the recovery code also opens the data volume"
        ),
        Ok(Err(e)) => {
            tracing::error!(
                event = "data.enrol_failed",
                "the recovery code could not be added to the data volume: {e}"
            );
            // The serial console too: without it the box needs its TPM to open its data.
            eprintln!("pk-appliance: the recovery code could not be added to the data volume: {e}");
        }
        Err(_) => tracing::error!(
            event = "data.enrol_failed",
            "the recovery code could not be added to the data volume"
        ),
    }
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

async fn login_page(State(c): State<Arc<Console>>) -> Response {
    if !c.is_set_up() {
        return Redirect::to("/setup").into_response();
    }
    Html(pages::login(&c.config.fingerprint, None)).into_response()
}

/// The login form.
#[derive(Deserialize, zeroize::Zeroize)]
pub struct LoginForm {
    password: String,
}

async fn login(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    Form(form): Form<LoginForm>,
) -> Response {
    let form = Zeroizing::new(form);
    match sign_in(&c, ip, &form.password).await {
        Ok((token, _)) => {
            let mut response = Redirect::to("/status").into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session_cookie(&token));
            response
        }
        Err((status, message)) if status == StatusCode::CONFLICT => {
            let _ = message;
            Redirect::to("/setup").into_response()
        }
        Err((status, message)) => (
            status,
            Html(pages::login(&c.config.fingerprint, Some(&Err(message)))),
        )
            .into_response(),
    }
}

/// Checks the admin password (throttled per address); a new session's token and CSRF
/// token. `CONFLICT` means the box is not set up yet.
async fn sign_in(
    c: &Console,
    ip: IpAddr,
    password: &str,
) -> Result<(String, String), (StatusCode, String)> {
    account::check_password(
        c,
        ip,
        password,
        ConsoleEvent::LoginFailed,
        (StatusCode::UNAUTHORIZED, "Wrong password."),
    )
    .await?;
    if let Err(replaced) = c.account_bound().await {
        c.account_replaced(ip, replaced).await;
        return Err((StatusCode::FORBIDDEN, REPLACED.into()));
    }
    tracing::info!(event = "console.login", client = %ip, "admin logged in");
    c.record(ConsoleEvent::Login, ip).await;
    Ok(c.new_session())
}

/// A form that only carries the CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The session's CSRF token for a signed-in page, or the way to the login page.
fn signed_in(c: &Console, headers: &HeaderMap) -> Result<String, Box<Response>> {
    c.session(headers)
        .ok_or_else(|| Box::new(Redirect::to("/login").into_response()))
}

/// A page request from a live session: the session's CSRF token, for the forms the page
/// shows. Without a session, the way to the login page.
struct SignedIn(String);

impl FromRequestParts<Arc<Console>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        signed_in(c, &parts.headers).map(SignedIn).map_err(|r| *r)
    }
}

/// Checks the session and the CSRF token of a state-changing request; hands back the
/// token for the page that answers.
fn authorised(c: &Console, headers: &HeaderMap, csrf: &str) -> Result<String, Box<Response>> {
    let expected = signed_in(c, headers)?;
    if constant_time_eq(expected.as_bytes(), csrf.as_bytes()) {
        return Ok(expected);
    }
    tracing::warn!(
        event = "console.csrf_refused",
        "a form without its CSRF token"
    );
    Err(Box::new(
        (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response(),
    ))
}

/// A form that carries the session's CSRF token.
trait CarriesCsrf {
    fn csrf(&self) -> &str;
}

macro_rules! carries_csrf {
    ($($form:ty),* $(,)?) => {
        $(impl CarriesCsrf for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        })*
    };
}

carries_csrf!(
    CsrfForm,
    UnlockForm,
    NameForm,
    SecretForm,
    RevealForm,
    ShareForm,
    PeerForm,
    BackupForm,
    EnrolForm,
    SlotForm,
    account::PasswordForm,
);

/// A state-changing form from a live session whose CSRF token matches; `csrf` is the
/// token for the page that answers. Refused otherwise (login redirect, or 403).
struct Posted<T> {
    csrf: String,
    form: T,
}

impl<T> axum::extract::FromRequest<Arc<Console>> for Posted<T>
where
    T: serde::de::DeserializeOwned + CarriesCsrf + Send,
{
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        c: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let headers = request.headers().clone();
        // Without a session, the way to the login page, whatever the body holds.
        signed_in(c, &headers).map_err(|r| *r)?;
        let Form(form) = Form::<T>::from_request(request, c)
            .await
            .map_err(IntoResponse::into_response)?;
        let csrf = authorised(c, &headers, form.csrf()).map_err(|r| *r)?;
        Ok(Posted { csrf, form })
    }
}

/// The page `render` makes of a view, or the page saying why the view could not be read.
fn page<T>(view: Result<T, ViewError>, render: impl FnOnce(&T) -> String) -> Response {
    match view {
        Ok(view) => Html(render(&view)).into_response(),
        Err(e) => view_failed(e),
    }
}

/// A view that could not be read, as a page.
fn view_failed(e: ViewError) -> Response {
    match e {
        ViewError::Locked => Html(pages::locked()).into_response(),
        ViewError::NotFound(m) => (StatusCode::NOT_FOUND, m).into_response(),
        ViewError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m).into_response(),
    }
}

async fn logout(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    headers: HeaderMap,
    Posted { .. }: Posted<CsrfForm>,
) -> Response {
    c.end_session(&headers);
    c.record(ConsoleEvent::Logout, ip).await;
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_static(CLEAR_COOKIE));
    response
}

async fn status_page(State(c): State<Arc<Console>>, SignedIn(csrf): SignedIn) -> Response {
    status_view(&c, &csrf, None).await
}

async fn status_view(c: &Console, csrf: &str, note: Option<&Outcome>) -> Response {
    Html(pages::status(&actions::status(c).await, csrf, note)).into_response()
}

async fn lock(State(c): State<Arc<Console>>, Posted { csrf, .. }: Posted<CsrfForm>) -> Response {
    let outcome = actions::lock(&c).await;
    status_view(&c, &csrf, Some(&outcome)).await
}

/// The unlock form.
#[derive(Deserialize, zeroize::Zeroize)]
pub struct UnlockForm {
    #[serde(default)]
    csrf: String,
    method: String,
    #[serde(default)]
    secret: String,
}

async fn unlock(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Posted { csrf, form }: Posted<UnlockForm>,
) -> Response {
    let form = Zeroizing::new(form);
    if form.method == "yubikey" {
        // The card waits for a touch: unlock in the background and show a page that
        // follows it ("touch your key now", then the outcome), refreshing itself.
        let job = Arc::new(Job::default());
        c.set_job(&headers, Some(job.clone()));
        let secret = Zeroizing::new(form.secret.clone());
        let console = c.clone();
        tokio::spawn(async move {
            let outcome = actions::unlock(&console, "yubikey", &secret).await;
            *job.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        });
        return Redirect::to("/unlock/wait").into_response();
    }
    let outcome = actions::unlock(&c, &form.method, &form.secret).await;
    status_view(&c, &csrf, Some(&outcome)).await
}

async fn unlock_wait(
    State(c): State<Arc<Console>>,
    SignedIn(csrf): SignedIn,
    headers: HeaderMap,
) -> Response {
    let Some(job) = c.job(&headers) else {
        return Redirect::to("/status").into_response();
    };
    let outcome = job
        .outcome
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match outcome {
        None => Html(pages::unlock_wait(c.touch_needed())).into_response(),
        Some(outcome) => {
            c.set_job(&headers, None);
            status_view(&c, &csrf, Some(&outcome)).await
        }
    }
}

async fn vaults_page(State(c): State<Arc<Console>>, SignedIn(csrf): SignedIn) -> Response {
    vaults_view(&c, &csrf, None).await
}

async fn vaults_view(c: &Console, csrf: &str, note: Option<&Outcome>) -> Response {
    page(actions::vaults(c).await, |list| {
        pages::vaults(list, csrf, note)
    })
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
    Posted { csrf, form }: Posted<NameForm>,
) -> Response {
    let outcome = actions::vault_create(&c, &form.name).await;
    vaults_view(&c, &csrf, Some(&outcome)).await
}

async fn vault_page(
    State(c): State<Arc<Console>>,
    SignedIn(csrf): SignedIn,
    Path(name): Path<String>,
) -> Response {
    vault_view(&c, &name, &csrf, None, None).await
}

async fn vault_view(
    c: &Console,
    name: &str,
    csrf: &str,
    note: Option<&Outcome>,
    revealed: Option<(&str, &[u8])>,
) -> Response {
    page(actions::vault(c, name).await, |detail| {
        pages::vault(detail, csrf, note, revealed)
    })
}

/// The new-secret form.
#[derive(Deserialize, zeroize::Zeroize)]
pub struct SecretForm {
    #[serde(default)]
    csrf: String,
    path: String,
    value: String,
}

async fn secret_write(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    Posted { csrf, form }: Posted<SecretForm>,
) -> Response {
    let form = Zeroizing::new(form);
    let outcome = actions::secret_write(&c, &name, &form.path, form.value.as_bytes()).await;
    vault_view(&c, &name, &csrf, Some(&outcome), None).await
}

/// The reveal button of a secret.
#[derive(Deserialize)]
pub struct RevealForm {
    #[serde(default)]
    csrf: String,
    path: String,
}

async fn secret_reveal(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    Posted { csrf, form }: Posted<RevealForm>,
) -> Response {
    match actions::reveal(&c, &name, &form.path).await {
        Ok(value) => {
            let note = Ok(format!(
                "Revealed {name}:{}; the reveal is in the audit log.",
                form.path.trim()
            ));
            vault_view(
                &c,
                &name,
                &csrf,
                Some(&note),
                Some((form.path.trim(), &value)),
            )
            .await
        }
        Err(e) => vault_view(&c, &name, &csrf, Some(&Err(e)), None).await,
    }
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
    Path(name): Path<String>,
    Posted { csrf, form }: Posted<ShareForm>,
) -> Response {
    let outcome = actions::share(&c, &name, &form.who, form.action == "grant").await;
    vault_view(&c, &name, &csrf, Some(&outcome), None).await
}

/// The add-node form.
#[derive(Deserialize)]
pub struct PeerForm {
    #[serde(default)]
    csrf: String,
    node_id: String,
    #[serde(default)]
    addr: String,
}

async fn peer_add(
    State(c): State<Arc<Console>>,
    ConsoleHost(host): ConsoleHost,
    Posted { csrf, form }: Posted<PeerForm>,
) -> Response {
    let outcome = actions::peer_add(&c, &form.node_id, &form.addr).await;
    peers_view(&c, host.as_deref(), &csrf, Some(&outcome), None).await
}

async fn peer_ping(
    State(c): State<Arc<Console>>,
    ConsoleHost(host): ConsoleHost,
    Posted { csrf, form }: Posted<PeerForm>,
) -> Response {
    let outcome = actions::peer_ping(&c, &form.node_id).await;
    peers_view(&c, host.as_deref(), &csrf, Some(&outcome), None).await
}

/// `?discover=1` on the peers page listens for nodes on the LAN.
#[derive(Deserialize)]
pub struct PeersQuery {
    #[serde(default)]
    discover: Option<String>,
}

async fn peers_page(
    State(c): State<Arc<Console>>,
    SignedIn(csrf): SignedIn,
    ConsoleHost(host): ConsoleHost,
    Query(query): Query<PeersQuery>,
) -> Response {
    let lan = match query.discover {
        Some(_) if !c.config.lan => Some(Err(
            "LAN discovery is off: set lan = true in config.toml.".to_owned(),
        )),
        Some(_) => Some(actions::lan_nodes(&c).await.map_err(|e| e.to_string())),
        None => None,
    };
    peers_view(&c, host.as_deref(), &csrf, None, lan.as_ref()).await
}

/// How a laptop reaches this node: the console's host name as the browser typed it,
/// with the peer endpoint's port.
fn pairing(host: Option<&str>, status: &actions::StatusView) -> Option<String> {
    let node_id = status.node_id.as_deref()?;
    let port = status
        .peer_addr
        .as_deref()?
        .parse::<SocketAddr>()
        .ok()?
        .port();
    Some(format!("pk://{node_id}@{}:{port}", host?))
}

/// The console's host as the browser addressed it: the request's authority (HTTP/2) or
/// its `Host` header (HTTP/1.1), without the port.
struct ConsoleHost(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ConsoleHost {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let authority = parts.uri.authority().cloned().or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        });
        Ok(ConsoleHost(authority.map(|a| a.host().to_owned())))
    }
}

async fn peers_view(
    c: &Console,
    host: Option<&str>,
    csrf: &str,
    note: Option<&Outcome>,
    lan: Option<&Result<Vec<node::lan::Found>, String>>,
) -> Response {
    let view = match actions::peers(c).await {
        Ok(view) => view,
        Err(e) => return view_failed(e),
    };
    let status = actions::status(c).await;
    let pair = pairing(host, &status);
    Html(pages::peers(
        &view,
        &pages::PeersExtra {
            pairing: pair.as_deref(),
            lan,
            lan_enabled: c.config.lan,
        },
        csrf,
        note,
    ))
    .into_response()
}

/// The pairing QR code (NodeId and address) as SVG.
async fn pairing_qr(
    State(c): State<Arc<Console>>,
    SignedIn(_): SignedIn,
    ConsoleHost(host): ConsoleHost,
) -> Response {
    let status = actions::status(&c).await;
    let Some(text) = pairing(host.as_deref(), &status) else {
        return (StatusCode::NOT_FOUND, "unlock the node first").into_response();
    };
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => (
            [(header::CONTENT_TYPE, "image/svg+xml")],
            code.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(240, 240)
                .build(),
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "no QR code").into_response(),
    }
}

async fn backups_page(State(c): State<Arc<Console>>, SignedIn(csrf): SignedIn) -> Response {
    backups_view(&c, &csrf, None).await
}

async fn backups_view(c: &Console, csrf: &str, note: Option<&Outcome>) -> Response {
    page(actions::backups(c).await, |list| {
        pages::backups(list, csrf, note)
    })
}

/// The new scheduled pull form.
#[derive(Deserialize)]
pub struct BackupForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    vault: String,
    #[serde(default)]
    node_id: String,
    #[serde(default)]
    every_min: String,
    #[serde(default)]
    name: String,
}

/// The longest time between scheduled pulls the form takes: 366 days (the agent's bound).
const MAX_BACKUP_MINUTES: u64 = 366 * 24 * 60;

async fn backup_add(
    State(c): State<Arc<Console>>,
    Posted { csrf, form }: Posted<BackupForm>,
) -> Response {
    // Checked before any arithmetic: `minutes * 60` overflowed for a large number.
    let outcome = match form.every_min.trim().parse::<u64>() {
        Ok(minutes) if (1..=MAX_BACKUP_MINUTES).contains(&minutes) => {
            actions::backup_add(&c, &form.vault, &form.node_id, minutes * 60, &form.name).await
        }
        _ => Err(format!(
            "The interval is a whole number of minutes, from 1 to {MAX_BACKUP_MINUTES} (366 days)."
        )),
    };
    backups_view(&c, &csrf, Some(&outcome)).await
}

async fn backup_remove(
    State(c): State<Arc<Console>>,
    Posted { csrf, form }: Posted<BackupForm>,
) -> Response {
    let outcome = actions::backup_remove(&c, &form.name).await;
    backups_view(&c, &csrf, Some(&outcome)).await
}

async fn keyslots_page(State(c): State<Arc<Console>>, SignedIn(csrf): SignedIn) -> Response {
    keyslots_view(&c, &csrf, None)
}

fn keyslots_view(c: &Console, csrf: &str, note: Option<&Outcome>) -> Response {
    Html(pages::keyslots(
        &actions::keyslots(c),
        c.config.tokens.pkcs11_module.is_some(),
        csrf,
        note,
    ))
    .into_response()
}

/// The enrol form: [`actions::Enrolment`] and the CSRF token.
#[derive(Deserialize)]
pub struct EnrolForm {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    enrolment: actions::Enrolment,
}

async fn keyslot_enroll(
    State(c): State<Arc<Console>>,
    Posted { csrf, form }: Posted<EnrolForm>,
) -> Response {
    let outcome = actions::keyslot_enroll(&c, form.enrolment).await;
    keyslots_view(&c, &csrf, Some(&outcome))
}

/// The test and remove forms of a keyslot.
#[derive(Deserialize, zeroize::Zeroize)]
pub struct SlotForm {
    #[serde(default)]
    csrf: String,
    slot: u32,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    auth_method: String,
    #[serde(default)]
    auth_secret: String,
}

async fn keyslot_test(
    State(c): State<Arc<Console>>,
    Posted { csrf, form }: Posted<SlotForm>,
) -> Response {
    let form = Zeroizing::new(form);
    let outcome = actions::keyslot_test(&c, form.slot, form.secret.clone()).await;
    keyslots_view(&c, &csrf, Some(&outcome))
}

async fn keyslot_remove(
    State(c): State<Arc<Console>>,
    Posted { csrf, form }: Posted<SlotForm>,
) -> Response {
    let form = Zeroizing::new(form);
    let outcome = actions::keyslot_remove(
        &c,
        form.slot,
        form.auth_method.clone(),
        form.auth_secret.clone(),
    )
    .await;
    keyslots_view(&c, &csrf, Some(&outcome))
}

async fn audit_page(State(c): State<Arc<Console>>, SignedIn(_): SignedIn) -> Response {
    page(actions::audit(&c).await, |events| pages::audit(events))
}
