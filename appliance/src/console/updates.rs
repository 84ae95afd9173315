//! The updates page, `/updates`: both root slots, the notice of an update that did not
//! come up healthy, the upload of a bundle, the install's progress and outcome, and the
//! reboot. Without JavaScript, like every page: the upload is a `multipart/form-data`
//! form whose file is handed to the installer as it arrives (never held whole), and the
//! page refreshes itself while an install runs.
//!
//! The form sends its fields in page order, and they are read in that order: the CSRF
//! token first (checked before anything else is read), then the recovery code of a
//! downgrade (checked before the bundle is), then the bundle.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use pk_update::install::{OtherState, Stage, Status};
use zeroize::Zeroizing;

use super::actions::Outcome;
use super::installer::{self, Failure, JobView, UpdateView};
use super::{Console, CsrfForm, Peer, Posted, SignedIn, authorised, pages, signed_in};

/// The longest CSRF token or recovery code read from the form.
const MAX_TEXT_FIELD: u64 = 1024;
/// How long the rest of a refused upload may stall while it is read and dropped.
const DRAIN_STALL: Duration = Duration::from_secs(30);
/// How often the page reloads itself while an install runs.
const REFRESH_S: u32 = 2;

pub(super) async fn page(State(c): State<Arc<Console>>, SignedIn(csrf): SignedIn) -> Response {
    view(&c, &csrf, None).await
}

/// The page with `note`, as the installer and the install are now.
async fn view(c: &Console, csrf: &str, note: Option<&Outcome>) -> Response {
    let view = installer::view(c).await;
    Html(render(&view, csrf, note)).into_response()
}

/// Why an upload was not taken.
enum Refused {
    /// No session or no CSRF token: the answer [`authorised`] gives.
    Unauthorised(Box<Response>),
    /// Anything else, shown on the page.
    Failed(Failure),
}

impl From<Failure> for Refused {
    fn from(f: Failure) -> Refused {
        Refused::Failed(f)
    }
}

fn bad(message: impl Into<String>) -> Refused {
    Refused::Failed(Failure {
        status: StatusCode::BAD_REQUEST,
        kind: "upload".into(),
        message: message.into(),
    })
}

/// The upload form: the bundle goes to the installer as it arrives; once it has all
/// arrived, the page (which follows the install) is where the browser goes.
pub(super) async fn upload(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    request: axum::extract::Request,
) -> Response {
    let headers = request.headers().clone();
    // Without a session, the way to the login page before a byte of the body is read.
    let csrf = match signed_in(&c, &headers) {
        Ok(csrf) => csrf,
        Err(response) => return *response,
    };
    match receive(&c, ip, &headers, request.into_body()).await {
        Ok(()) => Redirect::to("/updates").into_response(),
        Err(Refused::Unauthorised(response)) => *response,
        Err(Refused::Failed(f)) => {
            let mut response = view(&c, &csrf, Some(&Err(f.message))).await;
            *response.status_mut() = f.status;
            response
        }
    }
}

/// Reads the form and hands its bundle to the installer.
async fn receive(
    c: &Arc<Console>,
    ip: IpAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), Refused> {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok());
    let Some(boundary) = boundary else {
        // Not the page's form: it carries no token either.
        authorised(c, headers, "").map_err(Refused::Unauthorised)?;
        return Err(bad("The upload is not a multipart/form-data form."));
    };
    let limits = multer::Constraints::new()
        .allowed_fields(vec!["csrf", "recovery", "bundle"])
        .size_limit(
            multer::SizeLimit::new()
                .whole_stream(installer::MAX_BUNDLE + 64 * 1024)
                .for_field("csrf", MAX_TEXT_FIELD)
                .for_field("recovery", MAX_TEXT_FIELD),
        );
    let mut form = multer::Multipart::with_constraints(body.into_data_stream(), boundary, limits);
    // A form whose first field is not the token has no token.
    let token = match form.next_field().await {
        Ok(Some(field)) if field.name() == Some("csrf") => field.text().await.unwrap_or_default(),
        _ => String::new(),
    };
    authorised(c, headers, &token).map_err(Refused::Unauthorised)?;
    let mut field = next_field(&mut form).await?;
    let mut recovery = Zeroizing::new(String::new());
    if field.name() == Some("recovery") {
        recovery = Zeroizing::new(field.text().await.map_err(|e| bad(e.to_string()))?);
        field = next_field(&mut form).await?;
    }
    if field.name() != Some("bundle") {
        return Err(bad("The form has no bundle file."));
    }
    let allow_downgrade = !recovery.trim().is_empty();
    let started = async {
        if allow_downgrade {
            installer::approve_downgrade(c, ip, &recovery).await?;
        }
        installer::start(c, ip, allow_downgrade)
    }
    .await;
    let install = match started {
        Ok(install) => install,
        Err(f) => {
            drop(field);
            drain(&mut form).await;
            return Err(f.into());
        }
    };
    // The install goes on without this request; the page follows it.
    let _installing = install.feed(field).await;
    drain(&mut form).await;
    Ok(())
}

async fn next_field(
    form: &mut multer::Multipart<'static>,
) -> Result<multer::Field<'static>, Refused> {
    match form.next_field().await {
        Ok(Some(field)) => Ok(field),
        Ok(None) => Err(bad("The form has no bundle file.")),
        Err(e) => Err(bad(format!("The form could not be read: {e}"))),
    }
}

/// Reads what is left of the form and drops it, so that the browser, still sending,
/// gets the answer (bounded by the form's size limit and [`DRAIN_STALL`]).
async fn drain(form: &mut multer::Multipart<'static>) {
    loop {
        let Ok(Ok(Some(mut field))) = tokio::time::timeout(DRAIN_STALL, form.next_field()).await
        else {
            return;
        };
        loop {
            match tokio::time::timeout(DRAIN_STALL, field.chunk()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => break,
                _ => return,
            }
        }
    }
}

/// The reboot button.
pub(super) async fn reboot(
    State(c): State<Arc<Console>>,
    Peer(ip): Peer,
    Posted { csrf, .. }: Posted<CsrfForm>,
) -> Response {
    let note = match installer::reboot(&c, ip).await {
        Ok(()) => Ok("Rebooting. The console is back in a minute or two.".to_owned()),
        Err(f) => Err(f.message),
    };
    view(&c, &csrf, Some(&note)).await
}

fn render(view: &Result<UpdateView, Failure>, csrf: &str, note: Option<&Outcome>) -> String {
    let running = matches!(
        view,
        Ok(UpdateView {
            job: Some(JobView::Running { .. }),
            ..
        })
    );
    pages::page(
        "Updates",
        running.then_some(REFRESH_S),
        html! {
            (pages::nav())
            (pages::outcome(note))
            @match view {
                Err(f) => p class="error" id="unavailable" { (f.message) },
                Ok(view) => {
                    (slots(view))
                    @if let Some(job) = &view.job { (job_view(job)) }
                    @if !running {
                        (reboot_form(&view.status, csrf))
                        (upload_form(view, csrf))
                    }
                }
            }
        },
    )
}

/// The running slot, the other one, and the notice of an update that failed.
fn slots(view: &UpdateView) -> Markup {
    let status = &view.status;
    html! {
        @if let Some(failed) = &view.failed_update {
            p class="error" id="failed-update" {
                "The update failed and the box fell back: " (failed.message) ". "
                "Its slot is overwritten by the next update."
            }
        }
        table {
            tr {
                th { "Running" }
                td id="running" { "version " (status.running_version) ", slot " (status.running) }
            }
            tr {
                th { "Other slot (" (status.other) ")" }
                td id="other" { (other_state(&status.other_state)) }
            }
        }
    }
}

fn other_state(state: &OtherState) -> String {
    let version = |v: &Option<pk_update::bundle::Version>| {
        v.as_ref()
            .map_or("an unknown version".to_owned(), |v| format!("version {v}"))
    };
    match state {
        OtherState::Empty => "empty".to_owned(),
        OtherState::Installed {
            version: v,
            tries: Some(tries),
        } => format!(
            "{}, installed: it starts at the next reboot ({} tries left to come up healthy)",
            version(v),
            tries.left
        ),
        OtherState::Installed { version: v, .. } => {
            format!("{}, the version to fall back to", version(v))
        }
        OtherState::Failed { version: v } => {
            format!("{}, failed: it did not come up healthy", version(v))
        }
        OtherState::Incomplete => "incomplete: an install was cut off; it does not boot".to_owned(),
    }
}

fn stage_words(stage: Option<Stage>) -> &'static str {
    match stage {
        None => "receiving the bundle",
        Some(Stage::Verify) => "checking the signature",
        Some(Stage::Write) => "writing the new slot",
        Some(Stage::Readback) => "reading it back",
        Some(Stage::Uki) => "writing its boot entry",
    }
}

/// The install running, or how the last one ended.
fn job_view(job: &JobView) -> Markup {
    html! {
        @match job {
            JobView::Running { received, stage, done, total } => {
                p class="note" id="progress" {
                    "Installing: " (stage_words(*stage))
                    @if stage.is_some() {
                        ", " (done.saturating_mul(100) / (*total).max(1)) " % ("
                        (pages::size(*done)) " of " (pages::size(*total)) ")"
                    }
                    "; " (pages::size(*received)) " of the bundle received."
                }
                p { "This page reloads itself every " (REFRESH_S) " seconds until the install ends." }
            }
            JobView::Installed { version, slot, .. } => {
                p class="note" id="installed" {
                    "Installed " (version) " in slot " (slot.to_string()) ". It starts at the next reboot."
                }
            }
            JobView::Error { kind, error } => {
                p class="error" id="update-error" { "Not installed: " (error) }
                @if kind == "downgrade" {
                    p id="downgrade" {
                        "To install this older version anyway, give the recovery code "
                        "below and upload the bundle again."
                    }
                }
            }
        }
    }
}

/// The reboot button, once the other slot holds an install that has not booted yet.
fn reboot_form(status: &Status, csrf: &str) -> Markup {
    let ready = matches!(
        status.other_state,
        OtherState::Installed { tries: Some(_), .. }
    );
    html! {
        @if ready {
            h2 { "Start the new version" }
            p {
                "The box reboots into slot " (status.other) ". If the new version does not come up "
                "healthy, the box falls back to version " (status.running_version) " by itself."
            }
            form method="post" action="/updates/reboot" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" id="reboot" { "Reboot now" }
            }
        }
    }
}

fn upload_form(view: &UpdateView, csrf: &str) -> Markup {
    let downgrade = matches!(&view.job, Some(JobView::Error { kind, .. }) if kind == "downgrade");
    html! {
        h2 { "Install an update" }
        p {
            "Choose a signed update bundle (" code { "pk-appliance-<arch>-<version>.pkupdate" } "). "
            "It is checked and written into slot " (view.status.other) " while it uploads; "
            "the running version is not touched."
        }
        form method="post" action="/updates" enctype="multipart/form-data" {
            input type="hidden" name="csrf" value=(csrf);
            details open[downgrade] {
                summary { "Install an older version" }
                label for="recovery" { "Recovery code (a downgrade needs it)" }
                input id="recovery" name="recovery" type="password" autocomplete="off";
            }
            label for="bundle" { "Update bundle" }
            input id="bundle" name="bundle" type="file" accept=".pkupdate" required;
            button type="submit" id="upload" { "Upload and install" }
        }
    }
}
