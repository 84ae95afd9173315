//! The locked data console: what the box serves on the console's port when its data
//! volume did not open by itself (the TPM refused, or later an older copy of the volume
//! was found). The console's own certificate, the admin account and the node are inside
//! the volume, so this console has none of them: a certificate made for this start (its
//! fingerprint on the screen, the serial console and the journal), one page that says
//! why the volume is locked, and one form that takes the recovery code, throttled like the
//! console's password checks. No session: the recovery code is the whole credential, and
//! nothing else can be done here.
//!
//! Once the code opens the volume, the gate says so and returns; the image's unit then
//! starts the appliance, which serves the real console.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router, middleware};
use maud::html;
use serde::Deserialize;
use tokio::sync::Notify;
use zeroize::Zeroizing;

use super::throttle::{Refused, Throttle};
use super::{ClientAddr, pages, tls};
use crate::data::{DataError, Volume};
use hsm::recovery::{RecoveryCode, RecoveryProtector};

/// Recovery-code checks per client per minute, and for everyone.
const PER_CLIENT: usize = 5;
const GLOBAL: usize = 30;
/// The largest form or JSON body.
const MAX_BODY: usize = 4096;

/// What the gate opens, and how.
pub struct Gate {
    volume: Volume,
    name: String,
    /// Why the volume is locked, as the admin reads it.
    reason: String,
    /// Seals the TPM slot again (the TPM protector with the node's options), if there is
    /// a TPM.
    reseal: Option<Box<dyn hsm::Protector>>,
    /// The TPM's rollback counter: the recovery code accepts the volume as it is.
    counter: Option<hsm::tpm::NvCounter>,
    throttle: Mutex<Throttle>,
    opened: Notify,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("volume", &self.volume)
            .field("name", &self.name)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate for `volume`, to be opened as `/dev/mapper/<name>`, locked because of
    /// `reason`; `reseal` seals the TPM slot again when the admin asks, and the recovery
    /// code moves `counter` and the volume's generation on (accepting an older copy).
    pub fn new(
        volume: Volume,
        name: &str,
        reason: String,
        reseal: Option<Box<dyn hsm::Protector>>,
        counter: Option<hsm::tpm::NvCounter>,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            volume,
            name: name.to_owned(),
            reason,
            reseal,
            counter,
            throttle: Mutex::new(Throttle::new(PER_CLIENT, GLOBAL)),
            opened: Notify::new(),
        })
    }
}

/// The form, and the JSON body of `POST /api/data/unlock`.
#[derive(Deserialize, zeroize::Zeroize)]
struct UnlockForm {
    recovery_code: String,
    /// "on" (a checkbox) or `true` (JSON): seal the TPM slot again.
    #[serde(default, deserialize_with = "checkbox")]
    reseal: bool,
}

fn checkbox<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Bool(bool),
        Text(String),
    }
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::Text(t) => matches!(t.as_str(), "on" | "true" | "1"),
    })
}

/// The gate's routes: the page, the form, and their JSON twins.
pub fn router(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/style.css", get(super::style))
        .route("/data/unlock", post(unlock_form))
        .route("/api/data", get(state))
        .route("/api/data/unlock", post(unlock_json))
        .fallback(get(page))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(gate)
        .layer(middleware::from_fn(super::security_headers))
}

/// Serves the gate on `listen` until the recovery code has opened the volume.
pub async fn serve(gate: Arc<Gate>, listen: SocketAddr) -> Result<(), String> {
    let identity = tls::generate(vec!["pk-appliance".into(), "localhost".into()])
        .map_err(|e| format!("a certificate for the locked data console: {e}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let fingerprint = identity.fingerprint();
    tracing::warn!(
        event = "data.locked",
        reason = %gate.reason,
        fingerprint = %fingerprint,
        "the data volume is locked ({}); the locked data console on port {} takes the recovery code (certificate SHA-256 {fingerprint}, made for this start)",
        gate.reason,
        listen.port()
    );
    eprintln!(
        "pk-appliance: the data volume is locked: {}\npk-appliance: enter the recovery code at https://<this box>:{}/ (certificate SHA-256 {fingerprint}, made for this start)",
        gate.reason,
        listen.port()
    );
    // The box's own screen says so too (under systemd: the gate's runtime directory).
    if let Some(dir) = crate::screen::runtime_dir() {
        let status = crate::screen::Status {
            state: "data_locked".into(),
            console_urls: crate::screen::console_urls(listen),
            fingerprint: fingerprint.clone(),
            setup_code: None,
            clock_synchronized: None,
            reason: Some(gate.reason.clone()),
        };
        if let Err(e) = crate::screen::write(&dir, &status) {
            tracing::warn!(event = "screen.unwritten", error = %e, "cannot write the screen's status");
        }
    }
    let app = router(gate.clone());
    let server = tokio::spawn(async move { tls::serve(listener, &identity, app).await });
    gate.opened.notified().await;
    // The answer that says so has been written; let it reach the browser.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    server.abort();
    Ok(())
}

async fn page(State(gate): State<Arc<Gate>>) -> Html<String> {
    Html(locked_page(&gate.reason, None))
}

async fn state(State(gate): State<Arc<Gate>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "state": "data_locked", "reason": gate.reason }))
}

fn locked_page(reason: &str, error: Option<&str>) -> String {
    pages::page(
        "The data partition is locked",
        None,
        html! {
            p.error { "The box did not open its data partition by itself: " (reason) }
            p { "Everything the appliance keeps (its console certificate, the admin account, the node) is inside it. This page has a certificate made for this start, so your browser warns about it: check its SHA-256 fingerprint against the box's screen or serial console." }
            @if let Some(error) = error { p.error { (error) } }
            form method="post" action="/data/unlock" {
                label for="recovery_code" { "Recovery code (24 words)" }
                input id="recovery_code" name="recovery_code" type="password" autocomplete="off" required;
                label {
                    input name="reseal" type="checkbox" checked;
                    " Seal the TPM slot again to this machine as it is now. Choose this after a firmware update or a change you made yourself; leave it off if you do not know why the box is locked."
                }
                button type="submit" { "Open the data partition" }
            }
        },
    )
}

async fn unlock_form(
    State(gate): State<Arc<Gate>>,
    Extension(client): Extension<ClientAddr>,
    Form(form): Form<UnlockForm>,
) -> Response {
    let form = Zeroizing::new(form);
    match unlock(&gate, client.0, &form).await {
        Ok(words) => Html(pages::page(
            "The data partition is open",
            Some(15),
            html! {
                p.note { (words) }
                p { "The appliance is starting. In a few seconds this address serves its own console, with its own certificate (the one you checked before)." }
            },
        ))
        .into_response(),
        Err((status, message)) => (status, Html(locked_page(&gate.reason, Some(&message)))).into_response(),
    }
}

async fn unlock_json(
    State(gate): State<Arc<Gate>>,
    Extension(client): Extension<ClientAddr>,
    Json(form): Json<UnlockForm>,
) -> Response {
    let form = Zeroizing::new(form);
    match unlock(&gate, client.0, &form).await {
        Ok(words) => Json(serde_json::json!({ "ok": words })).into_response(),
        Err((status, message)) => {
            (status, Json(serde_json::json!({ "error": message }))).into_response()
        }
    }
}

/// Checks the code against the throttle, opens the volume, seals the TPM slot again if
/// asked; the words to show, or the status and message of a refusal.
async fn unlock(
    gate: &Arc<Gate>,
    client: SocketAddr,
    form: &UnlockForm,
) -> Result<String, (StatusCode, String)> {
    let ticket = gate
        .throttle
        .lock()
        .map_err(|_| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the throttle failed".to_owned(),
            )
        })?
        .reserve(client.ip(), Instant::now())
        .map_err(|refused| {
            let who = match refused {
                Refused::Client => "from this address",
                Refused::Everyone => "in all",
            };
            (
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many recovery codes tried {who} in the last minute: wait a minute."),
            )
        })?;
    let code = RecoveryCode::parse(form.recovery_code.trim()).map_err(|e| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("That is not a recovery code: {e}"),
        )
    })?;
    let (worker, reseal) = (gate.clone(), form.reseal);
    let outcome = tokio::task::spawn_blocking(move || open_with(&worker, code, reseal))
        .await
        .map_err(|_| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the unlock failed".to_owned(),
            )
        })?;
    match outcome {
        Ok(words) => {
            if let Ok(mut throttle) = gate.throttle.lock() {
                throttle.refund(ticket);
            }
            tracing::info!(event = "data.opened", how = "recovery code", "{words}");
            gate.opened.notify_one();
            Ok(words)
        }
        Err(DataError::Unwrap {
            source: hsm::UnwrapError::WrongRecoveryCode,
            ..
        }) => {
            tracing::warn!(event = "data.recovery_refused", client = %client.ip(), "a wrong recovery code for the data volume");
            Err((
                StatusCode::UNAUTHORIZED,
                "That recovery code does not open this data partition.".to_owned(),
            ))
        }
        Err(e) => {
            tracing::error!(event = "data.open_failed", "{e}");
            Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The data partition did not open: {e}"),
            ))
        }
    }
}

/// Opens the volume with `code`; with `reseal`, seals its TPM slot again.
fn open_with(gate: &Gate, code: RecoveryCode, reseal: bool) -> Result<String, DataError> {
    let passphrase = gate.volume.unlock(&RecoveryProtector::new(code))?;
    if let Some(counter) = &gate.counter {
        gate.volume.accept_generation(&passphrase, counter)?;
    }
    gate.volume.open(&gate.name, &passphrase)?;
    let Some(tpm) = gate.reseal.as_deref().filter(|_| reseal) else {
        return Ok("Opened with the recovery code.".to_owned());
    };
    Ok(
        match gate
            .volume
            .seal_again(&passphrase, tpm, "TPM (sealed again after recovery)")
        {
            Ok(()) => {
                "Opened with the recovery code; the TPM slot is sealed to this machine again."
                    .to_owned()
            }
            Err(e) => {
                tracing::warn!(event = "data.reseal_failed", "{e}");
                format!(
                    "Opened with the recovery code, but the TPM slot could not be sealed again ({e}): the next start needs the code again."
                )
            }
        },
    )
}
