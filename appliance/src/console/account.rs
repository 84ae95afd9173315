//! The admin account: changing the admin password.
//!
//! The current password is checked like a login (a wrong one counts towards the same
//! per-address throttle, so this form is no way around it), the new one like at setup.
//! The new Argon2id hash replaces the old one atomically, and every other session ends:
//! whoever knew the old password and had a session open is signed out.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use node::api::ConsoleEvent;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    Account, Console, MIN_PASSWORD, Peer, Posted, SESSION_COOKIE, cookie, hash_password, pages,
    signed_in, verify_password, write_private,
};

/// The password change form (the API sends the same fields but `csrf` and `confirm`).
#[derive(Deserialize)]
pub(super) struct PasswordForm {
    #[serde(default)]
    pub(super) csrf: String,
    pub(super) current: String,
    pub(super) new: String,
    #[serde(default)]
    pub(super) confirm: Option<String>,
}

impl zeroize::Zeroize for PasswordForm {
    fn zeroize(&mut self) {
        self.current.zeroize();
        self.new.zeroize();
        self.confirm.zeroize();
    }
}

/// Checks a new admin password against the policy (at setup and on a change).
pub(super) fn check_new(password: &str, confirm: Option<&str>) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(format!(
            "The admin password needs at least {MIN_PASSWORD} characters."
        ));
    }
    if confirm.is_some_and(|confirm| confirm != password) {
        return Err("The two passwords differ.".into());
    }
    Ok(())
}

/// Changes the admin password for the session whose cookie `headers` carry; every other
/// session ends. Nothing changes when any check fails.
pub(super) async fn change_password(
    c: &Console,
    ip: IpAddr,
    headers: &HeaderMap,
    form: &PasswordForm,
) -> Result<String, (StatusCode, String)> {
    if c.throttled(ip, false) {
        tracing::warn!(event = "console.login_throttled", client = %ip, "password change throttled");
        c.record(ConsoleEvent::LoginThrottled, ip).await;
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong passwords: wait a minute.".into(),
        ));
    }
    let Some(account) = c.account() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "The admin account cannot be read.".into(),
        ));
    };
    let current = Zeroizing::new(form.current.clone());
    let hash = account.password_hash;
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &current))
        .await
        .unwrap_or(false);
    if !ok {
        let throttled = c.throttled(ip, true);
        tracing::warn!(event = "console.password_change_failed", client = %ip, "password change with a wrong current password");
        c.record(ConsoleEvent::PasswordChangeFailed, ip).await;
        let status = if throttled {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::FORBIDDEN
        };
        return Err((status, "The current password is wrong.".into()));
    }
    check_new(&form.new, form.confirm.as_deref()).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    if form.new == form.current {
        return Err((
            StatusCode::BAD_REQUEST,
            "The new password is the current one.".into(),
        ));
    }
    let new = Zeroizing::new(form.new.clone());
    let password_hash = tokio::task::spawn_blocking(move || hash_password(&new))
        .await
        .map_err(|_| "the password could not be hashed".to_owned())
        .and_then(|r| r)
        .map_err(|m| (StatusCode::INTERNAL_SERVER_ERROR, m))?;
    let bytes = serde_json::to_vec(&Account { password_hash }).map_err(|_| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "The admin account could not be written.".to_owned(),
        )
    })?;
    if let Err(e) = write_private(&c.account_path(), &bytes) {
        tracing::error!(event = "console.password_change_failed", error = %e, "the admin account could not be written");
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("The admin account could not be written ({e}); the old password still holds."),
        ));
    }
    let keep = cookie(headers, SESSION_COOKIE).unwrap_or_default();
    let ended = c.end_other_sessions(&keep);
    tracing::info!(event = "console.password_changed", client = %ip, sessions_ended = ended, "admin password changed");
    c.record(ConsoleEvent::PasswordChanged, ip).await;
    Ok(match ended {
        0 => "Password changed.".to_owned(),
        1 => "Password changed; 1 other session was signed out.".to_owned(),
        n => format!("Password changed; {n} other sessions were signed out."),
    })
}

pub(super) async fn account_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match signed_in(&c, &headers) {
        Ok(csrf) => Html(pages::account(&csrf, None)).into_response(),
        Err(r) => *r,
    }
}

pub(super) async fn password_change(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    headers: HeaderMap,
    Posted { csrf, form }: Posted<PasswordForm>,
) -> Response {
    let mut form = Zeroizing::new(form);
    // The page always sends the confirmation; a missing one is a mismatch.
    form.confirm.get_or_insert_with(String::new);
    match change_password(&c, ip, &headers, &form).await {
        Ok(message) => Html(pages::account(&csrf, Some(&Ok(message)))).into_response(),
        Err((status, message)) => {
            (status, Html(pages::account(&csrf, Some(&Err(message))))).into_response()
        }
    }
}
