//! The admin account: its binding to the node, a password change, and a reset with the
//! recovery code.
//!
//! The account is an Argon2id hash in a plain file beside the node. The node's agent
//! keeps a digest of it in the node's store, which is sealed under the data key, and the
//! console checks the file against it whenever it can (the node unlocked): a file written
//! behind the console's back (the disk taken out, another hash put in) is refused, every
//! session ends, and only the recovery code makes a new password.
//!
//! A change needs the current password, checked like a login (a wrong one counts
//! towards the same per-address throttle), and the node unlocked, so that the new account
//! is bound before its file is written. Every other session then ends.
//!
//! Login, change and reset check a secret through one path, [`Attempt`]: counted in the
//! throttle before the check runs, and run only with one of the console's few permits.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use node::api::console::{Account as BindAccount, AccountBinding, AccountCheck, ConsoleEvent};
use serde::Deserialize;
use sha2::Digest as _;
use tokio::sync::OwnedSemaphorePermit;
use zeroize::Zeroizing;

use super::actions::{self, ViewError};
use super::throttle::{Refused, Ticket};
use super::{
    Account, Console, MIN_PASSWORD, Peer, Posted, REPLACED, SESSION_COOKIE, SignedIn, cookie,
    hash_password, pages, verify_password, write_private,
};

/// The password change form (the API sends the same fields but `csrf` and `confirm`).
#[derive(Deserialize, zeroize::Zeroize)]
pub(super) struct PasswordForm {
    #[serde(default)]
    pub(super) csrf: String,
    pub(super) current: String,
    pub(super) new: String,
    #[serde(default)]
    pub(super) confirm: Option<String>,
}

/// The reset form: the recovery code and the new password.
#[derive(Deserialize, zeroize::Zeroize)]
pub(super) struct ResetForm {
    pub(super) recovery: String,
    pub(super) new: String,
    #[serde(default)]
    pub(super) confirm: Option<String>,
}

/// The account on disk is not the one bound to the node.
#[derive(Clone, Copy, Debug)]
pub(super) struct Replaced {
    /// Found now, rather than known from an earlier request.
    first: bool,
}

/// Why a change could not be made: the status and words for the admin.
type Refusal = (StatusCode, String);

/// Checks a new admin password against the policy (at setup, on a change and a reset).
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

/// What the node binds: a digest of the stored password hash.
fn digest(account: &Account) -> String {
    sha2::Sha256::digest(account.password_hash.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Console {
    /// Whether the account on disk is the one bound to the node; binds it when the node
    /// holds none yet. `Ok` as well when this cannot be told (the node locked, the agent
    /// not running): the check runs again at the next request, and a locked node shows
    /// nothing but its status and unlock.
    ///
    /// The answer is remembered until the console writes the file again: while the
    /// daemon runs, only the console changes it (a file replaced offline is read at the
    /// first check after a start), so a request does not read the file once it is known.
    pub(super) async fn account_bound(&self) -> Result<(), Replaced> {
        let known = *self
            .account_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match known {
            Some(true) => return Ok(()),
            Some(false) => return Err(Replaced { first: false }),
            None => {}
        }
        let Some(account) = self.account() else {
            return Ok(());
        };
        let request = BindAccount {
            account: digest(&account),
            binding: AccountBinding::Check,
        };
        let bound = match self.client.call(request).await {
            Ok(AccountCheck::Mismatch) => false,
            Ok(check) => {
                if check == AccountCheck::Bound {
                    tracing::info!(
                        event = "console.account_bound",
                        "the admin account is bound to the node"
                    );
                }
                true
            }
            _ => return Ok(()),
        };
        *self
            .account_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(bound);
        if bound {
            Ok(())
        } else {
            Err(Replaced { first: true })
        }
    }

    /// Whether the account on disk was found to be the one bound to the node.
    pub(super) fn account_verified(&self) -> bool {
        *self
            .account_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            == Some(true)
    }

    /// Refuses the account: every session ends; the first refusal of an account is
    /// logged and audited.
    pub(super) async fn account_replaced(&self, ip: IpAddr, replaced: Replaced) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if !replaced.first {
            return;
        }
        tracing::error!(
            event = "console.account_replaced",
            client = %ip,
            "the admin account on disk is not the one bound to the node; refused"
        );
        self.record(ConsoleEvent::AccountReplaced, ip).await;
    }

    /// Binds `account` in the node (unlocked only), in the way `binding` says.
    async fn bind(&self, account: &Account, binding: AccountBinding) -> Result<(), Refusal> {
        let request = BindAccount {
            account: digest(account),
            binding,
        };
        match actions::agent(self, request).await {
            Ok(AccountCheck::Bound | AccountCheck::Matches) => Ok(()),
            Ok(AccountCheck::Mismatch) => Err((StatusCode::CONFLICT, REPLACED.to_owned())),
            Err(ViewError::Locked) => Err((
                StatusCode::CONFLICT,
                "Unlock the node first: the admin account is bound to it.".into(),
            )),
            Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        }
    }

    /// Hashes `password` and stores it as the account: bound in the node first (`binding`
    /// says how), then written, then checked, so that a crash in between leaves one
    /// account that works.
    async fn store_account(&self, password: &str, binding: AccountBinding) -> Result<(), Refusal> {
        let password = Zeroizing::new(password.to_owned());
        let password_hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|_| "the password could not be hashed".to_owned())
            .and_then(|r| r)
            .map_err(|m| (StatusCode::INTERNAL_SERVER_ERROR, m))?;
        let account = Account { password_hash };
        self.bind(&account, binding).await?;
        let bytes = serde_json::to_vec(&account).map_err(|_| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The admin account could not be written.".to_owned(),
            )
        })?;
        if let Err(e) = write_private(&self.account_path(), &bytes) {
            tracing::error!(event = "console.account_write_failed", error = %e, "the admin account could not be written");
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The admin account could not be written ({e}); nothing changed."),
            ));
        }
        // The new file is in place: check it afresh, which also makes the node forget the
        // account it replaced.
        *self
            .account_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        let _ = self.account_bound().await;
        Ok(())
    }
}

/// A password or recovery-code check allowed to run: counted in the throttle already
/// (a wrong guess unless its ticket is refunded), and holding one of the console's
/// permits for checks, which the check keeps until it ends.
struct Attempt {
    ticket: Ticket,
    permit: OwnedSemaphorePermit,
}

impl Attempt {
    /// Reserves a check from `ip` before any hashing: refused with `429` while the
    /// address (or everyone) has had its checks for the minute (logged and audited), or
    /// while the console already runs as many checks as it may.
    async fn begin(c: &Console, ip: IpAddr) -> Result<Attempt, Refusal> {
        let ticket = match c.reserve_check(ip) {
            Ok(ticket) => ticket,
            Err(refused) => {
                tracing::warn!(event = "console.login_throttled", client = %ip, everyone = refused == Refused::Everyone, "throttled: too many wrong passwords");
                c.record(ConsoleEvent::LoginThrottled, ip).await;
                let message = match refused {
                    Refused::Client => "Too many wrong passwords: wait a minute.",
                    Refused::Everyone => {
                        "Too many wrong passwords on this console from everywhere: wait a minute."
                    }
                };
                return Err((StatusCode::TOO_MANY_REQUESTS, message.into()));
            }
        };
        let Ok(permit) = c.checks.clone().try_acquire_owned() else {
            c.refund_check(ticket);
            tracing::warn!(event = "console.login_busy", client = %ip, "refused: too many password checks at once");
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                "The console is busy checking other passwords: try again in a moment.".into(),
            ));
        };
        Ok(Attempt { ticket, permit })
    }

    /// Runs `check` on a blocking thread, which keeps the permit until it is done, even
    /// if the request is dropped meanwhile; its result (none if it panicked), and the
    /// ticket to refund if it found the right password or code.
    async fn run<T: Send + 'static>(
        self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> (Option<T>, Ticket) {
        let Attempt { ticket, permit } = self;
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            check()
        })
        .await
        .ok();
        (result, ticket)
    }
}

/// A wrong password or recovery code from `ip` (its check already counted in the
/// throttle): logged and audited as `event`, answered with `wrong`.
async fn failed(
    c: &Console,
    ip: IpAddr,
    event: ConsoleEvent,
    wrong: (StatusCode, &str),
) -> Refusal {
    tracing::warn!(event = event.name(), client = %ip, "a wrong admin password or recovery code");
    c.record(event, ip).await;
    (wrong.0, wrong.1.to_owned())
}

/// Checks `password` against the stored account like a login (see [`failed`] for a
/// wrong one); the account when it is right.
pub(super) async fn check_password(
    c: &Console,
    ip: IpAddr,
    password: &str,
    event: ConsoleEvent,
    wrong: (StatusCode, &str),
) -> Result<Account, Refusal> {
    let Some(account) = c.account() else {
        return Err((StatusCode::CONFLICT, "This box is not set up yet.".into()));
    };
    let attempt = Attempt::begin(c, ip).await?;
    let password = Zeroizing::new(password.to_owned());
    let hash = account.password_hash.clone();
    let (ok, ticket) = attempt.run(move || verify_password(&hash, &password)).await;
    if ok != Some(true) {
        return Err(failed(c, ip, event, wrong).await);
    }
    c.refund_check(ticket);
    Ok(account)
}

/// Checks that `code` (the 24 words) opens the node's recovery keyslot, counted and run
/// like a password check; a wrong one is logged and audited as `event` (the code never
/// is) and answered `403`.
pub(super) async fn check_recovery(
    c: &Arc<Console>,
    ip: IpAddr,
    code: &str,
    event: ConsoleEvent,
) -> Result<(), Refusal> {
    let attempt = Attempt::begin(c, ip).await?;
    let (opened, ticket) = {
        let c = c.clone();
        let code = Zeroizing::new(code.trim().to_owned());
        attempt
            .run(move || {
                let keyslots =
                    node::keyslots::Keyslots::open(&c.config.node).map_err(|e| e.to_string())?;
                actions::authorise(&c, &keyslots, "recovery", &code).map(drop)
            })
            .await
    };
    if !matches!(opened, Some(Ok(()))) {
        let wrong = (
            StatusCode::FORBIDDEN,
            "That recovery code does not open this node.",
        );
        return Err(failed(c, ip, event, wrong).await);
    }
    c.refund_check(ticket);
    Ok(())
}

/// Changes the admin password for the session whose cookie `headers` carry; every other
/// session ends. Nothing changes when any check fails.
pub(super) async fn change_password(
    c: &Console,
    ip: IpAddr,
    headers: &HeaderMap,
    form: &PasswordForm,
) -> Result<String, Refusal> {
    let account = check_password(
        c,
        ip,
        &form.current,
        ConsoleEvent::PasswordChangeFailed,
        (StatusCode::FORBIDDEN, "The current password is wrong."),
    )
    .await?;
    check_new(&form.new, form.confirm.as_deref()).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    if form.new == form.current {
        return Err((
            StatusCode::BAD_REQUEST,
            "The new password is the current one.".into(),
        ));
    }
    let from = digest(&account);
    c.store_account(&form.new, AccountBinding::Change { from })
        .await?;
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

/// Makes a new admin password with the recovery code (a forgotten password, or an account
/// replaced behind the console's back). The node is unlocked with the code if it is
/// locked; every session ends. Wrong codes count towards the login throttle.
pub(super) async fn reset_password(
    c: &Arc<Console>,
    ip: IpAddr,
    form: &ResetForm,
) -> Result<String, Refusal> {
    if !c.is_set_up() {
        return Err((StatusCode::CONFLICT, "This box is not set up yet.".into()));
    }
    check_new(&form.new, form.confirm.as_deref()).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    let code = Zeroizing::new(form.recovery.trim().to_owned());
    check_recovery(c, ip, &code, ConsoleEvent::PasswordResetFailed).await?;
    // Binding needs the node open: the code just proved it opens it.
    if let Err(ViewError::Locked) = actions::agent(c, node::api::keys::Public).await {
        actions::unlock(c, "recovery", &code)
            .await
            .map_err(|m| (StatusCode::SERVICE_UNAVAILABLE, m))?;
    }
    c.store_account(&form.new, AccountBinding::Reset).await?;
    c.sessions.lock().unwrap_or_else(|p| p.into_inner()).clear();
    tracing::info!(event = "console.password_reset", client = %ip, "admin password reset with the recovery code");
    c.record(ConsoleEvent::PasswordReset, ip).await;
    Ok("The admin password was reset. Log in with the new one.".into())
}

pub(super) async fn account_page(SignedIn(csrf): SignedIn) -> Response {
    Html(pages::account(&csrf, None)).into_response()
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

pub(super) async fn reset_page(State(c): State<Arc<Console>>) -> Response {
    if !c.is_set_up() {
        return Redirect::to("/setup").into_response();
    }
    Html(pages::reset(None)).into_response()
}

pub(super) async fn reset(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    Form(form): Form<ResetForm>,
) -> Response {
    let mut form = Zeroizing::new(form);
    form.confirm.get_or_insert_with(String::new);
    match reset_password(&c, ip, &form).await {
        Ok(message) => {
            Html(pages::login(&c.config.fingerprint, Some(&Ok(message)))).into_response()
        }
        Err((status, message)) => (status, Html(pages::reset(Some(&Err(message))))).into_response(),
    }
}
