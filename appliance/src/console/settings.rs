//! The settings page, `/settings`, and its API: the owner's settings
//! ([`crate::settings`]) with the values in effect, a form per key, and the restart that
//! applies them. A value is checked before it is stored; a refused one changes nothing
//! and its message names the key.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::html;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::actions::Outcome;
use super::{CarriesCsrf, Console, CsrfForm, Posted, SignedIn, pages};
use crate::settings::{self, Entry, Settings};

/// The settings as the page and `GET /api/settings` show them.
#[derive(Serialize)]
pub(super) struct SettingsView {
    /// Every key, its value in effect and whether the settings file sets it.
    settings: Vec<Entry>,
    /// The stored settings differ from those the appliance started with: a restart
    /// applies them.
    restart_pending: bool,
    /// Why the stored settings cannot be read, if they cannot (the appliance then runs
    /// with the configuration file's values).
    problem: Option<String>,
}

fn view(c: &Console) -> SettingsView {
    let place = &c.config.settings;
    let stored = Settings::load(&place.state_dir);
    SettingsView {
        settings: settings::entries(&place.running, &place.started_with),
        restart_pending: stored.as_ref().is_ok_and(|s| *s != place.started_with),
        problem: stored.err().map(|e| e.to_string()),
    }
}

/// Stores `value` for `key` (empty: back to the default).
fn change(c: &Console, key: &str, value: &str) -> Outcome {
    let place = &c.config.settings;
    let _one_at_a_time = c.settings_lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut stored = Settings::load(&place.state_dir).map_err(|e| e.to_string())?;
    stored.set(key, value).map_err(|e| e.to_string())?;
    stored
        .save(&place.state_dir)
        .map_err(|e| format!("the setting was not stored: {e}"))?;
    let shown = stored.get(key);
    tracing::info!(
        event = "settings.changed",
        key,
        value = shown.as_deref().unwrap_or("(default)"),
        "setting {key} changed"
    );
    Ok(format!(
        "{key} is stored; it takes effect when the appliance restarts."
    ))
}

/// Asks the daemon to stop so that its service manager starts it again.
fn restart(c: &Console) -> Outcome {
    tracing::info!(
        event = "appliance.restart_requested",
        "the admin asked for a restart"
    );
    c.restart.send_replace(true);
    Ok("The appliance restarts now; this page is back in a few seconds.".into())
}

pub(super) async fn page(State(c): State<Arc<Console>>, SignedIn(csrf): SignedIn) -> Response {
    Html(render(&view(&c), &csrf, None)).into_response()
}

/// The form of one key.
#[derive(Deserialize)]
pub(super) struct SettingForm {
    #[serde(default)]
    csrf: String,
    key: String,
    #[serde(default)]
    value: String,
}

impl CarriesCsrf for SettingForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn save(
    State(c): State<Arc<Console>>,
    Posted { csrf, form }: Posted<SettingForm>,
) -> Response {
    let outcome = change(&c, &form.key, &form.value);
    let status = if outcome.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, Html(render(&view(&c), &csrf, Some(&outcome)))).into_response()
}

pub(super) async fn restart_form(
    State(c): State<Arc<Console>>,
    Posted { csrf, .. }: Posted<CsrfForm>,
) -> Response {
    let outcome = restart(&c);
    Html(render(&view(&c), &csrf, Some(&outcome))).into_response()
}

fn render(view: &SettingsView, csrf: &str, note: Option<&Outcome>) -> String {
    pages::page(
        "Settings",
        None,
        html! {
            (pages::nav())
            (pages::outcome(note))
            @if let Some(problem) = &view.problem {
                p class="error" id="settings-problem" {
                    "The stored settings cannot be read, so the appliance runs with its defaults: "
                    (problem) ". Saving a setting here writes a new file."
                }
            }
            p { "Stored on the data partition: they stay through reboots and updates. "
                "An empty value returns a setting to the image's default." }
            @for entry in &view.settings {
                form method="post" action="/settings" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="key" value=(entry.key);
                    label for=(entry.key) {
                        code { (entry.key) } ": " (entry.help)
                        @if !entry.set { " (default)" }
                    }
                    input id=(entry.key) name="value" value=(entry.value);
                    button type="submit" { "Save" }
                }
            }
            @if view.restart_pending {
                p class="note" id="restart-pending" {
                    "Changed settings take effect when the appliance restarts. A node that "
                    "unlocks with a passphrase or a YubiKey is locked after the restart."
                }
            }
            form method="post" action="/settings/restart" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Restart the appliance" }
            }
        },
    )
}

/// `GET /api/settings`.
pub(super) async fn api_view(State(c): State<Arc<Console>>) -> Response {
    Json(view(&c)).into_response()
}

/// The body of `POST /api/settings`.
#[derive(Deserialize)]
pub(super) struct SettingRequest {
    key: String,
    #[serde(default)]
    value: String,
}

/// `POST /api/settings`: `{"key": ..., "value": ...}`.
pub(super) async fn api_change(
    State(c): State<Arc<Console>>,
    Json(request): Json<SettingRequest>,
) -> Response {
    match change(&c, &request.key, &request.value) {
        Ok(message) => Json(json!({ "message": message, "restart_pending": true })).into_response(),
        Err(message) => {
            (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
        }
    }
}

/// `POST /api/settings/restart`.
pub(super) async fn api_restart(State(c): State<Arc<Console>>) -> Response {
    match restart(&c) {
        Ok(message) => Json(json!({ "message": message })).into_response(),
        Err(message) => {
            (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
        }
    }
}
