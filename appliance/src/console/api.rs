//! The JSON admin API under `/api/`: what the pages do, for scripts and tests.
//!
//! Authentication is the console's: `POST /api/setup` (with the setup code) or `POST
//! /api/login` answer with the session cookie and the session's CSRF token; every other
//! route needs the cookie, and every POST also the token in an `X-CSRF-Token` header.
//! Failures are `{"error": "..."}` with a 4xx status. `GET /api/openapi.json` describes
//! every route (OpenAPI 3.0).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header::{self, HeaderMap};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::actions::{self, Enrolment, Outcome, ViewError};
use super::installer::{self, Failure};
use super::settings;
use super::{Console, LoginForm, Peer, SetupForm, constant_time_eq, session_cookie};

/// The header that carries the CSRF token on API calls.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The header that carries the recovery code of a downgrade (`POST
/// /api/update?allow_downgrade=1`).
pub const RECOVERY_HEADER: &str = "x-recovery-code";

/// The OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

pub(super) fn routes(console: Arc<Console>) -> Router<Arc<Console>> {
    let guarded = Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/logout", post(logout))
        .route("/api/status", get(status))
        .route("/api/lock", post(lock))
        .route("/api/unlock", post(unlock))
        .route("/api/vaults", get(vaults).post(vault_create))
        .route("/api/vaults/{name}", get(vault))
        .route("/api/vaults/{name}/secrets", post(secret_write))
        .route("/api/vaults/{name}/reveal", post(reveal))
        .route("/api/vaults/{name}/share", post(share))
        .route("/api/peers", get(peers).post(peer_add))
        .route("/api/peers/ping", post(peer_ping))
        .route("/api/backups", get(backups).post(backup_add))
        .route("/api/backups/remove", post(backup_remove))
        .route("/api/keyslots", get(keyslots).post(keyslot_enroll))
        .route("/api/keyslots/{id}/test", post(keyslot_test))
        .route("/api/keyslots/{id}/remove", post(keyslot_remove))
        .route("/api/audit", get(audit))
        .route("/api/account/password", post(password))
        .route("/api/update", get(update_status).post(update_install))
        .route("/api/update/reboot", post(update_reboot))
        .route(
            "/api/settings",
            get(settings::api_view).post(settings::api_change),
        )
        .route("/api/settings/restart", post(settings::api_restart))
        .route_layer(middleware::from_fn_with_state(console, guard));
    Router::new()
        .route("/api/setup", post(setup))
        .route("/api/login", post(login))
        .route("/api/reset", post(reset))
        .merge(guarded)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Every route but setup and login: a live session, and for anything but a GET its CSRF
/// token in the `X-CSRF-Token` header. Checked before the body is read.
async fn guard(
    State(c): State<Arc<Console>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let Some(expected) = c.session(request.headers()) else {
        return refuse(request, StatusCode::UNAUTHORIZED, "log in first").await;
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let given = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
            tracing::warn!(
                event = "console.csrf_refused",
                "an API call without its CSRF token"
            );
            return refuse(
                request,
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token header",
            )
            .await;
        }
    }
    next.run(request).await
}

/// Refuses a request after reading (and dropping) up to 64 KiB of its body: answering an
/// HTTP/2 request before its body has arrived resets the stream, and the client would see
/// a reset instead of the answer.
async fn refuse(request: axum::extract::Request, status: StatusCode, message: &str) -> Response {
    let _ = axum::body::to_bytes(request.into_body(), 64 * 1024).await;
    error(status, message)
}

fn outcome(outcome: Outcome) -> Response {
    match outcome {
        Ok(message) => Json(json!({ "message": message })).into_response(),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

fn view<T: serde::Serialize>(result: Result<T, ViewError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(ViewError::Locked) => error(StatusCode::CONFLICT, "the node is locked"),
        Err(ViewError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(ViewError::Unavailable(m)) => error(StatusCode::SERVICE_UNAVAILABLE, m),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn setup(State(c): State<Arc<Console>>, Json(form): Json<SetupForm>) -> Response {
    let form = Zeroizing::new(form);
    match super::claim(&c, &form).await {
        Ok(claimed) => {
            let mut response = Json(json!({
                "recovery_code": claimed.recovery.as_str(),
                "csrf": claimed.csrf,
            }))
            .into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session_cookie(&claimed.token));
            response
        }
        Err((status, message)) => error(status, message),
    }
}

async fn login(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    Json(form): Json<LoginForm>,
) -> Response {
    let form = Zeroizing::new(form);
    match super::sign_in(&c, ip, &form.password).await {
        Ok((token, csrf)) => {
            let mut response = Json(json!({ "csrf": csrf })).into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session_cookie(&token));
            response
        }
        Err((status, message)) => error(status, message),
    }
}

/// A new admin password with the recovery code (no session needed).
async fn reset(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    Json(form): Json<super::account::ResetForm>,
) -> Response {
    let form = Zeroizing::new(form);
    match super::account::reset_password(&c, ip, &form).await {
        Ok(message) => Json(json!({ "message": message })).into_response(),
        Err((status, message)) => error(status, message),
    }
}

async fn logout(State(c): State<Arc<Console>>, Peer(ip): Peer, headers: HeaderMap) -> Response {
    c.end_session(&headers);
    c.record(node::api::console::ConsoleEvent::Logout, ip).await;
    Json(json!({ "message": "Logged out." })).into_response()
}

/// A password change: `current` and `new` (no confirmation field needed).
async fn password(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    headers: HeaderMap,
    Json(form): Json<super::account::PasswordForm>,
) -> Response {
    let form = Zeroizing::new(form);
    match super::account::change_password(&c, ip, &headers, &form).await {
        Ok(message) => Json(json!({ "message": message })).into_response(),
        Err((status, message)) => error(status, message),
    }
}

async fn status(State(c): State<Arc<Console>>) -> Response {
    Json(actions::status(&c).await).into_response()
}

async fn lock(State(c): State<Arc<Console>>) -> Response {
    outcome(actions::lock(&c).await)
}

/// An unlock: the method and its secret.
#[derive(Deserialize, zeroize::Zeroize)]
struct UnlockBody {
    method: String,
    #[serde(default)]
    secret: String,
}

async fn unlock(State(c): State<Arc<Console>>, Json(body): Json<UnlockBody>) -> Response {
    let body = Zeroizing::new(body);
    outcome(actions::unlock(&c, &body.method, &body.secret).await)
}

async fn vaults(State(c): State<Arc<Console>>) -> Response {
    view(actions::vaults(&c).await)
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

async fn vault_create(State(c): State<Arc<Console>>, Json(body): Json<NameBody>) -> Response {
    outcome(actions::vault_create(&c, &body.name).await)
}

async fn vault(State(c): State<Arc<Console>>, Path(name): Path<String>) -> Response {
    view(actions::vault(&c, &name).await)
}

#[derive(Deserialize, zeroize::Zeroize)]
struct SecretBody {
    path: String,
    value: String,
}

async fn secret_write(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    Json(body): Json<SecretBody>,
) -> Response {
    let body = Zeroizing::new(body);
    outcome(actions::secret_write(&c, &name, &body.path, body.value.as_bytes()).await)
}

#[derive(Deserialize)]
struct PathBody {
    path: String,
}

async fn reveal(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    Json(body): Json<PathBody>,
) -> Response {
    match actions::reveal(&c, &name, &body.path).await {
        Ok(value) => {
            let text = Zeroizing::new(String::from_utf8_lossy(&value).into_owned());
            Json(json!({ "path": body.path.trim(), "value": text.as_str() })).into_response()
        }
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

#[derive(Deserialize)]
struct ShareBody {
    who: String,
    grant: bool,
}

async fn share(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    Json(body): Json<ShareBody>,
) -> Response {
    outcome(actions::share(&c, &name, &body.who, body.grant).await)
}

async fn peers(State(c): State<Arc<Console>>) -> Response {
    view(actions::peers(&c).await)
}

#[derive(Deserialize)]
struct PeerBody {
    node_id: String,
    #[serde(default)]
    addr: String,
}

async fn peer_add(State(c): State<Arc<Console>>, Json(body): Json<PeerBody>) -> Response {
    outcome(actions::peer_add(&c, &body.node_id, &body.addr).await)
}

async fn peer_ping(State(c): State<Arc<Console>>, Json(body): Json<PeerBody>) -> Response {
    outcome(actions::peer_ping(&c, &body.node_id).await)
}

async fn backups(State(c): State<Arc<Console>>) -> Response {
    view(actions::backups(&c).await)
}

#[derive(Deserialize)]
struct BackupBody {
    vault: String,
    node_id: String,
    every_s: u64,
    #[serde(default)]
    name: String,
}

async fn backup_add(State(c): State<Arc<Console>>, Json(body): Json<BackupBody>) -> Response {
    if body.every_s == 0 {
        return error(StatusCode::BAD_REQUEST, "every_s must be 1 or more");
    }
    outcome(actions::backup_add(&c, &body.vault, &body.node_id, body.every_s, &body.name).await)
}

async fn backup_remove(State(c): State<Arc<Console>>, Json(body): Json<NameBody>) -> Response {
    outcome(actions::backup_remove(&c, &body.name).await)
}

async fn keyslots(State(c): State<Arc<Console>>) -> Response {
    Json(actions::keyslots(&c)).into_response()
}

async fn keyslot_enroll(State(c): State<Arc<Console>>, Json(body): Json<Enrolment>) -> Response {
    let body = Zeroizing::new(body);
    let enrolment = Enrolment {
        kind: body.kind.clone(),
        secret: body.secret.clone(),
        pcrs: body.pcrs.clone(),
        token_label: body.token_label.clone(),
        label: body.label.clone(),
        auth_method: body.auth_method.clone(),
        auth_secret: body.auth_secret.clone(),
    };
    outcome(actions::keyslot_enroll(&c, enrolment).await)
}

/// A keyslot test (`secret`) or removal (`auth_method`, `auth_secret`).
#[derive(Default, Deserialize, zeroize::Zeroize)]
struct SlotBody {
    #[serde(default)]
    secret: String,
    #[serde(default)]
    auth_method: String,
    #[serde(default)]
    auth_secret: String,
}

async fn keyslot_test(
    State(c): State<Arc<Console>>,
    Path(id): Path<u32>,
    Json(body): Json<SlotBody>,
) -> Response {
    let body = Zeroizing::new(body);
    outcome(actions::keyslot_test(&c, id, body.secret.clone()).await)
}

async fn keyslot_remove(
    State(c): State<Arc<Console>>,
    Path(id): Path<u32>,
    Json(body): Json<SlotBody>,
) -> Response {
    let body = Zeroizing::new(body);
    outcome(
        actions::keyslot_remove(&c, id, body.auth_method.clone(), body.auth_secret.clone()).await,
    )
}

async fn audit(State(c): State<Arc<Console>>) -> Response {
    view(actions::audit(&c).await)
}

/// An update request that was not done: `{"error": ..., "kind": ...}`.
fn update_error(f: Failure) -> Response {
    (
        f.status,
        Json(json!({ "error": f.message, "kind": f.kind })),
    )
        .into_response()
}

async fn update_status(State(c): State<Arc<Console>>) -> Response {
    match installer::view(&c).await {
        Ok(view) => Json(view).into_response(),
        Err(f) => update_error(f),
    }
}

/// `?allow_downgrade=1` on an install.
#[derive(Deserialize)]
struct UpdateQuery {
    #[serde(default)]
    allow_downgrade: Option<String>,
}

/// An install: the bundle is the body, handed to the installer as it arrives; the
/// answer comes once the install has ended.
async fn update_install(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    Query(query): Query<UpdateQuery>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let install = match start_install(&c, ip, &parts.headers, query).await {
        Ok(install) => install,
        Err(f) => {
            // As `refuse`: an HTTP/2 client gets the answer, not a reset stream.
            let _ = axum::body::to_bytes(body, 64 * 1024).await;
            return update_error(f);
        }
    };
    let installing = install.feed(body.into_data_stream()).await;
    match installing.outcome().await {
        Ok(installed) => Json(json!({
            "version": installed.version.to_string(),
            "slot": installed.slot,
            "uki": installed.uki,
            "message": format!(
                "Installed {} in slot {}. It starts at the next reboot.",
                installed.version, installed.slot
            ),
        }))
        .into_response(),
        Err(f) => update_error(f),
    }
}

/// Checks an install request before its body is read: the content type, the size it
/// announces, a downgrade's recovery code; then starts the install.
async fn start_install(
    c: &Arc<Console>,
    ip: std::net::IpAddr,
    headers: &HeaderMap,
    query: UpdateQuery,
) -> Result<installer::Install, Failure> {
    let refused = |status, kind: &str, message: &str| Failure {
        status,
        kind: kind.to_owned(),
        message: message.to_owned(),
    };
    let octets = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/octet-stream"));
    if !octets {
        return Err(refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "upload",
            "send the bundle as the body with Content-Type: application/octet-stream",
        ));
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > installer::MAX_BUNDLE) {
        return Err(refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "the bundle is larger than 2 GiB",
        ));
    }
    let allow_downgrade = match query.allow_downgrade.as_deref() {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(_) => {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "upload",
                "allow_downgrade is 1 or 0",
            ));
        }
    };
    if allow_downgrade {
        let code = Zeroizing::new(
            headers
                .get(RECOVERY_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        );
        installer::approve_downgrade(c, ip, &code).await?;
    }
    installer::start(c, ip, allow_downgrade)
}

async fn update_reboot(State(c): State<Arc<Console>>, Peer(ip): Peer) -> Response {
    match installer::reboot(&c, ip).await {
        Ok(()) => Json(json!({ "message": "Rebooting." })).into_response(),
        Err(f) => update_error(f),
    }
}
