//! The console's side of the update installer: `pk-update`, the privileged program behind
//! `update_socket` (`/run/pk-update.sock`), which writes a signed bundle into the root
//! slot that is not running. The console asks it for both slots' state, sends it an
//! uploaded bundle, and asks it to reboot; what the installer checks is its own business
//! (`docs/reference/pk-update.md`).
//!
//! An upload is never held in memory: its body is handed on chunk by chunk through a
//! bounded channel ([`CHUNKS_IN_FLIGHT`]) to a blocking thread that runs the installer's
//! client ([`BodyReader`]), so the console holds a few chunks of a 300 MB bundle at a
//! time. A body over [`MAX_BUNDLE`] bytes, or one that stalls for [`UPLOAD_STALL`], ends
//! the install (the installer then empties the slot it was writing). When the installer
//! refuses a bundle it stops reading; the rest of the body is still read and dropped, so
//! that the browser gets the answer rather than a reset connection.
//!
//! One install runs at a time ([`Updates::start`] refuses a second with `409`); its
//! progress and its outcome stay in [`Job`] for the page and `GET /api/update` to show,
//! whatever became of the request that started it. A downgrade needs the recovery code,
//! checked like the password reset's ([`approve_downgrade`]).
//!
//! Logged with `event = "update.*"` (and audited as `console.update_*`): an install
//! started, installed, refused or failed, a reboot asked for; and once per process, an
//! other slot whose update never came up healthy (`update.failed_boot`).

use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures_util::{Stream, StreamExt as _};
use node::api::console::ConsoleEvent;
use pk_update::client::{Client, ClientError};
use pk_update::install::{Installed, OtherState, Progress, Slot, Stage, Status};
use pk_update::protocol::ErrorKind;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Console, account};

/// The largest bundle the console takes (a bundle is 200-300 MB).
pub(crate) const MAX_BUNDLE: u64 = 2 << 30;
/// How long an upload may send nothing before the install is given up.
const UPLOAD_STALL: Duration = Duration::from_secs(60);
/// How long the installer has to answer a status or a reboot.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// Chunks of an upload on their way to the installer at once: what bounds the memory an
/// install takes.
const CHUNKS_IN_FLIGHT: usize = 8;

/// The installer as the console reaches it, and the install it runs or last ran.
pub(super) struct Updates {
    client: Client,
    socket: PathBuf,
    job: Mutex<Option<Arc<Job>>>,
    /// Whether this process has logged the other slot's failed update.
    failed_boot_noted: AtomicBool,
}

/// Why an update request was not done: the HTTP status, a kind a program can act on (the
/// installer's own kinds, `signature`, `downgrade`..., or the console's: `unavailable`,
/// `busy`, `approval`, `upload`, `too-large`, `connection`) and the message for the admin.
#[derive(Clone, Debug)]
pub(super) struct Failure {
    pub(super) status: StatusCode,
    pub(super) kind: String,
    pub(super) message: String,
}

impl Failure {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            kind: kind.to_owned(),
            message: message.into(),
        }
    }

    /// A client call's failure, its status chosen by what the admin can do about it.
    fn of(error: ClientError, socket: &Path) -> Failure {
        match error {
            ClientError::Connect { source, .. } => unavailable(&source, socket),
            ClientError::ReadBundle(e) => match e.kind() {
                io::ErrorKind::FileTooLarge => Failure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    format!("{e}; the other slot was left empty"),
                ),
                _ => Failure::new(
                    StatusCode::BAD_REQUEST,
                    "upload",
                    format!("{e}; the other slot was left empty"),
                ),
            },
            ClientError::Refused { kind, message } => {
                let status = match kind {
                    ErrorKind::Signature
                    | ErrorKind::Bundle
                    | ErrorKind::Arch
                    | ErrorKind::TooBig
                    | ErrorKind::SameRoot => StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorKind::Downgrade | ErrorKind::Busy => StatusCode::CONFLICT,
                    ErrorKind::Failed | ErrorKind::System => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::BAD_GATEWAY,
                };
                Failure {
                    status,
                    kind: kind_name(kind),
                    message,
                }
            }
            other => Failure::new(StatusCode::BAD_GATEWAY, "connection", other.to_string()),
        }
    }

    /// Whether the install may have written: the other slot is then empty (or in an
    /// unknown state), a failure rather than a refusal.
    fn wrote(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "failed" | "system" | "connection" | "upload" | "too-large" | "other" | "protocol"
        )
    }
}

/// The installer's name for an error kind (`same-root`).
fn kind_name(kind: ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".to_owned())
}

/// The installer's socket cannot be reached.
fn unavailable(e: &io::Error, socket: &Path) -> Failure {
    let message = match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => format!(
            "updates are not available here: no installer at {}",
            socket.display()
        ),
        io::ErrorKind::PermissionDenied => format!(
            "updates are not available here: the daemon may not use the installer at {} \
             (its user needs the group pk-update)",
            socket.display()
        ),
        _ => format!("cannot reach the installer at {}: {e}", socket.display()),
    };
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
}

/// An install, running or ended, as the page and `GET /api/update` show it.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub(super) enum JobView {
    /// The bundle is arriving and being written.
    Running {
        /// Bytes of the upload received so far.
        received: u64,
        /// The installer's stage, once it said one.
        stage: Option<Stage>,
        /// Bytes of that stage done.
        done: u64,
        /// Bytes the stage has in all.
        total: u64,
    },
    /// The bundle is in the other slot; it boots at the next reboot.
    Installed {
        /// Its version.
        version: String,
        /// The slot written.
        slot: Slot,
        /// Its UKI on the ESP.
        uki: String,
    },
    /// Refused or failed.
    Error {
        /// What kind of failure ([`Failure::kind`]).
        kind: String,
        /// The message.
        error: String,
    },
}

/// One install: what it is doing, or how it ended.
pub(super) struct Job {
    view: Mutex<JobView>,
}

impl Job {
    fn new() -> Job {
        Job {
            view: Mutex::new(JobView::Running {
                received: 0,
                stage: None,
                done: 0,
                total: 0,
            }),
        }
    }

    fn with(&self, change: impl FnOnce(&mut JobView)) {
        change(&mut self.view.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn received(&self, bytes: u64) {
        self.with(|view| {
            if let JobView::Running { received, .. } = view {
                *received = bytes;
            }
        });
    }

    fn progress(&self, p: Progress) {
        self.with(|view| {
            if let JobView::Running {
                stage, done, total, ..
            } = view
            {
                (*stage, *done, *total) = (Some(p.stage), p.done, p.total);
            }
        });
    }

    fn finish(&self, result: &Result<Installed, Failure>) {
        self.with(|view| {
            *view = match result {
                Ok(installed) => JobView::Installed {
                    version: installed.version.to_string(),
                    slot: installed.slot,
                    uki: installed.uki.clone(),
                },
                Err(f) => JobView::Error {
                    kind: f.kind.clone(),
                    error: f.message.clone(),
                },
            }
        });
    }

    /// What it is doing, or how it ended.
    pub(super) fn view(&self) -> JobView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn running(&self) -> bool {
        matches!(self.view(), JobView::Running { .. })
    }
}

/// Both slots, the notice of a failed update, and the install, for the page and the API.
#[derive(Clone, Debug, Serialize)]
pub(super) struct UpdateView {
    /// The installer's `status`.
    pub(super) status: Status,
    /// The other slot holds an update that never came up healthy.
    pub(super) failed_update: Option<FailedUpdate>,
    /// The install running, or the last one since the daemon started.
    pub(super) job: Option<JobView>,
}

/// An update that did not come up healthy: its tries were used up and the box fell back.
#[derive(Clone, Debug, Serialize)]
pub(super) struct FailedUpdate {
    /// Its version, if its UKI says.
    pub(super) version: Option<String>,
    /// The version running again.
    pub(super) running_version: String,
    /// In words.
    pub(super) message: String,
}

impl FailedUpdate {
    fn of(status: &Status) -> Option<FailedUpdate> {
        let OtherState::Failed { version } = &status.other_state else {
            return None;
        };
        let version = version.as_ref().map(ToString::to_string);
        let running_version = status.running_version.to_string();
        let message = format!(
            "{} did not come up healthy; the box is running {running_version} again",
            version
                .as_deref()
                .map_or("the update".to_owned(), |v| format!("version {v}")),
        );
        Some(FailedUpdate {
            version,
            running_version,
            message,
        })
    }
}

/// An install started by [`Updates::start`]: the body goes in with [`Install::feed`].
pub(super) struct Install {
    job: Arc<Job>,
    chunks: mpsc::Sender<io::Result<Bytes>>,
    task: tokio::task::JoinHandle<Result<Installed, Failure>>,
}

impl Updates {
    /// The installer at `socket`; nothing is connected until asked.
    pub(super) fn new(socket: PathBuf) -> Updates {
        Updates {
            client: Client::new(&socket),
            socket,
            job: Mutex::new(None),
            failed_boot_noted: AtomicBool::new(false),
        }
    }

    /// The install running, or the last one.
    pub(super) fn job(&self) -> Option<JobView> {
        let job = self.job.lock().unwrap_or_else(|p| p.into_inner()).clone();
        job.map(|j| j.view())
    }

    /// Whether an install is running.
    pub(super) fn running(&self) -> bool {
        let job = self.job.lock().unwrap_or_else(|p| p.into_inner()).clone();
        job.is_some_and(|j| j.running())
    }

    /// The installer's status of both slots (noting a failed update, see
    /// [`Updates::note_failed_boot`]).
    pub(super) async fn status(&self) -> Result<Status, Failure> {
        let client = self.client.clone();
        let status = self.call(move || client.status()).await?;
        self.note_failed_boot(&status);
        Ok(status)
    }

    /// Runs one blocking call of the client, within [`ANSWER_WITHIN`].
    async fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T, Failure> {
        let answer = tokio::time::timeout(ANSWER_WITHIN, tokio::task::spawn_blocking(call)).await;
        match answer {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(Failure::of(e, &self.socket)),
            Ok(Err(_)) => Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "connection",
                "the call to the installer failed",
            )),
            Err(_) => Err(Failure::new(
                StatusCode::GATEWAY_TIMEOUT,
                "connection",
                format!(
                    "the installer at {} did not answer within {} s",
                    self.socket.display(),
                    ANSWER_WITHIN.as_secs()
                ),
            )),
        }
    }

    /// Logs, once per process, an other slot whose update used up its boot tries: the box
    /// fell back to the running version.
    pub(super) fn note_failed_boot(&self, status: &Status) {
        let Some(failed) = FailedUpdate::of(status) else {
            return;
        };
        if self.failed_boot_noted.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            event = "update.failed_boot",
            version = failed.version.as_deref().unwrap_or("unknown"),
            running_version = %failed.running_version,
            slot = %status.other,
            "an update did not come up healthy: {}",
            failed.message
        );
        // Also on the unit's stderr: the journal and the serial console (and the screen,
        // pk-appliance-screen.service) show it like the console's address.
        eprintln!(
            "pk-appliance: an update did not come up healthy: {}",
            failed.message
        );
    }
}

/// Starts an install (one at a time: `409` while one runs), which reads the bundle from
/// what [`Install::feed`] hands it.
pub(super) fn start(
    c: &Arc<Console>,
    ip: IpAddr,
    allow_downgrade: bool,
) -> Result<Install, Failure> {
    let job = {
        let mut current = c.updates.job.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|j| j.running()) {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "busy",
                "an install is running: wait until it has ended",
            ));
        }
        let job = Arc::new(Job::new());
        *current = Some(job.clone());
        job
    };
    tracing::info!(
        event = "update.started",
        client = %ip,
        allow_downgrade,
        "an update bundle is being installed from the console"
    );
    let (chunks, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let task = tokio::spawn(run(c.clone(), ip, job.clone(), rx, allow_downgrade));
    Ok(Install { job, chunks, task })
}

/// Runs the install on a blocking thread, reading the bundle from `chunks`; records,
/// logs and audits how it ended.
async fn run(
    c: Arc<Console>,
    ip: IpAddr,
    job: Arc<Job>,
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    allow_downgrade: bool,
) -> Result<Installed, Failure> {
    let client = c.updates.client.clone();
    let follows = job.clone();
    let installed = tokio::task::spawn_blocking(move || {
        let bundle = BodyReader {
            chunks,
            chunk: Bytes::new(),
        };
        client.install(bundle, allow_downgrade, &mut |p| follows.progress(p))
    })
    .await;
    let result = match installed {
        Ok(result) => result.map_err(|e| Failure::of(e, &c.updates.socket)),
        Err(_) => Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "connection",
            "the install's thread failed",
        )),
    };
    job.finish(&result);
    let event = match &result {
        Ok(installed) => {
            tracing::info!(
                event = "update.installed",
                client = %ip,
                version = %installed.version,
                slot = %installed.slot,
                "installed {} in slot {}; it boots at the next reboot",
                installed.version,
                installed.slot
            );
            ConsoleEvent::UpdateInstalled
        }
        Err(f) if f.wrote() => {
            tracing::error!(event = "update.failed", client = %ip, kind = %f.kind, "update failed: {}", f.message);
            ConsoleEvent::UpdateFailed
        }
        Err(f) => {
            tracing::warn!(event = "update.refused", client = %ip, kind = %f.kind, "update refused: {}", f.message);
            ConsoleEvent::UpdateRefused
        }
    };
    c.record(event, ip).await;
    result
}

impl Install {
    /// Hands the installer the bundle `body` streams, then reads what is left of it once
    /// the installer stopped reading (it refused the bundle). Returns when the body has
    /// ended; the install may still be checking what it wrote ([`Installing::outcome`]).
    pub(super) async fn feed<S, E>(self, body: S) -> Installing
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let Install { job, chunks, task } = self;
        // The installer sees the end of the bundle once this sender is dropped.
        let mut chunks = Some(chunks);
        let mut body = std::pin::pin!(body);
        let mut received: u64 = 0;
        loop {
            let chunk = match tokio::time::timeout(UPLOAD_STALL, body.next()).await {
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => {
                    let error = io::Error::other(format!("the upload broke off: {e}"));
                    fail(chunks, error).await;
                    break;
                }
                Err(_) => {
                    let stalled = format!("the upload stalled for {} s", UPLOAD_STALL.as_secs());
                    fail(chunks, io::Error::new(io::ErrorKind::TimedOut, stalled)).await;
                    break;
                }
            };
            received = received.saturating_add(chunk.len() as u64);
            if received > MAX_BUNDLE {
                let too_big = format!("the upload is larger than {} GiB", MAX_BUNDLE >> 30);
                fail(chunks, io::Error::new(io::ErrorKind::FileTooLarge, too_big)).await;
                break;
            }
            job.received(received);
            if let Some(sender) = &chunks
                && sender.send(Ok(chunk)).await.is_err()
            {
                // The installer stopped reading: the rest is read and dropped.
                chunks = None;
            }
        }
        Installing { task }
    }
}

/// An install whose bundle has been read: it may still be checking what it wrote.
pub(super) struct Installing {
    task: tokio::task::JoinHandle<Result<Installed, Failure>>,
}

impl Installing {
    /// How the install ended (once it has).
    pub(super) async fn outcome(self) -> Result<Installed, Failure> {
        self.task.await.unwrap_or_else(|_| {
            Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "connection",
                "the install's task failed",
            ))
        })
    }
}

/// Ends the bundle with `error`, for the installer's client to stop on.
async fn fail(chunks: Option<mpsc::Sender<io::Result<Bytes>>>, error: io::Error) {
    if let Some(chunks) = chunks {
        let _ = chunks.send(Err(error)).await;
    }
}

/// The bundle as the installer's client reads it: the upload's chunks from the channel,
/// on a blocking thread. The end of the channel is the end of the bundle.
struct BodyReader {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Both slots, a failed update and the install, for the page and `GET /api/update`.
pub(super) async fn view(c: &Console) -> Result<UpdateView, Failure> {
    let status = c.updates.status().await?;
    Ok(UpdateView {
        failed_update: FailedUpdate::of(&status),
        status,
        job: c.updates.job(),
    })
}

/// Checks a downgrade's recovery code against the node's recovery keyslot (throttled
/// and audited like the password reset's; the code is never logged).
pub(super) async fn approve_downgrade(
    c: &Arc<Console>,
    ip: IpAddr,
    code: &str,
) -> Result<(), Failure> {
    if code.trim().is_empty() {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "approval",
            "installing an older version needs the recovery code",
        ));
    }
    account::check_recovery(c, ip, code, ConsoleEvent::UpdateApprovalFailed)
        .await
        .map_err(|(status, message)| Failure::new(status, "approval", message))?;
    tracing::info!(event = "update.downgrade_approved", client = %ip, "a downgrade was approved with the recovery code");
    Ok(())
}

/// Asks the installer to reboot the box (not while an install runs).
pub(super) async fn reboot(c: &Console, ip: IpAddr) -> Result<(), Failure> {
    if c.updates.running() {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "busy",
            "an install is running: reboot once it has ended",
        ));
    }
    let client = c.updates.client.clone();
    c.updates.call(move || client.reboot()).await?;
    tracing::info!(event = "update.reboot", client = %ip, "reboot requested from the console");
    c.record(ConsoleEvent::RebootRequested, ip).await;
    Ok(())
}

/// Logs a failed update the installer reports at the daemon's start (nothing when there
/// is no installer).
pub(crate) async fn check_at_start(c: &Console) {
    if let Err(f) = c.updates.status().await {
        tracing::debug!(
            event = "update.status_unavailable",
            "no update status at start: {}",
            f.message
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a panic is a test failure
mod tests {
    use super::*;

    fn reader(chunks: Vec<io::Result<Bytes>>) -> BodyReader {
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(c).unwrap();
        }
        BodyReader {
            chunks: rx,
            chunk: Bytes::new(),
        }
    }

    #[test]
    fn the_reader_hands_on_chunks_a_byte_at_a_time_and_ends_with_the_channel() {
        let mut r = reader(vec![
            Ok(Bytes::from_static(b"ab")),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b"c")),
        ]);
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while r.read(&mut byte).unwrap() == 1 {
            out.push(byte[0]);
        }
        assert_eq!(out, b"abc");
        assert_eq!(r.read(&mut []).unwrap(), 0);
    }

    #[test]
    fn the_reader_passes_on_an_upload_error() {
        let too_big = io::Error::new(io::ErrorKind::FileTooLarge, "too big");
        let mut r = reader(vec![Ok(Bytes::from_static(b"x")), Err(too_big)]);
        let mut all = Vec::new();
        let e = r.read_to_end(&mut all).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(all, b"x");
    }

    #[test]
    fn refusals_and_failures_have_their_statuses() {
        let socket = Path::new("/run/pk-update.sock");
        let refused = |kind| {
            Failure::of(
                ClientError::Refused {
                    kind,
                    message: "m".into(),
                },
                socket,
            )
        };
        for (kind, status, name) in [
            (ErrorKind::Signature, 422, "signature"),
            (ErrorKind::Bundle, 422, "bundle"),
            (ErrorKind::Arch, 422, "arch"),
            (ErrorKind::TooBig, 422, "too-big"),
            (ErrorKind::SameRoot, 422, "same-root"),
            (ErrorKind::Downgrade, 409, "downgrade"),
            (ErrorKind::Busy, 409, "busy"),
            (ErrorKind::Failed, 500, "failed"),
            (ErrorKind::System, 500, "system"),
            (ErrorKind::Protocol, 502, "protocol"),
        ] {
            let f = refused(kind);
            assert_eq!((f.status.as_u16(), f.kind.as_str()), (status, name));
        }
        assert!(refused(ErrorKind::Failed).wrote() && !refused(ErrorKind::Signature).wrote());
        let missing = Failure::of(
            ClientError::Connect {
                path: socket.into(),
                source: io::ErrorKind::NotFound.into(),
            },
            socket,
        );
        assert_eq!(missing.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            missing.message,
            "updates are not available here: no installer at /run/pk-update.sock"
        );
    }
}
