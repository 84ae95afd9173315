//! The agent: the long-running process that holds the unlocked keys and serves `pk` over
//! a Unix socket in the node directory.
//!
//! - The socket (`agent.sock`) is mode 0600 inside the 0700 node directory, and every
//!   connection's peer uid is checked against the agent's own.
//! - `agent.json` (pid, socket, start time) tells `pk` an agent is live; it is removed on
//!   a clean stop, and a stale one is recognised because nothing answers on the socket.
//! - Locked, the agent answers only status, unlock and stop. Unlocking goes through the
//!   keyslots; the DEK is used to derive the store's keys and is then dropped (zeroized).
//!   Locking drops the store and the identity, zeroizing every key.
//! - Failed unlock attempts cannot be written to the encrypted audit log while locked;
//!   they are kept in memory and in `agent-pending.jsonl`, and written at the next
//!   successful unlock.
//! - Every call starts with the protocol version; a `pk` of another version is told to
//!   restart the agent instead of being misunderstood.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::NodePath;
use crate::api::agent::Unlock;
use crate::api::{ApiError, ErrorCode, Hello, PROTOCOL, Request, Response, SecretBytes, Upload};
use crate::audit;
use crate::identity::Identity;
use crate::keyslots::{KeyslotError, Keyslots};
use crate::logging::AGENT;
use crate::rpc::{CHUNK, FrameError, MAX_FRAME, read_frame, write_frame};
use crate::store::{Store, StoreError, WriteTx};
use crate::tokens::{TokenConfig, UnlockChoice, UnlockError};
use crate::vault::{VaultError, Vaults};

mod background;
mod budget;
mod calls;
mod peers;
mod refusals;
mod schedule;
mod trust;

/// How long an upload may stall between chunks before it is abandoned (it holds the
/// store's single write transaction meanwhile).
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// What the status file says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusFile {
    /// Agent process id.
    pub pid: u32,
    /// Its socket.
    pub socket: std::path::PathBuf,
    /// Unix milliseconds at start.
    pub started_ms: u64,
    /// pk version.
    pub version: String,
    /// The peer endpoint's UDP address, if it listens.
    #[serde(default)]
    pub peer_addr: Option<String>,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Another agent serves this node.
    #[error("an agent is already running for {0}")]
    AlreadyRunning(std::path::PathBuf),
    /// No node here.
    #[error(transparent)]
    Keyslots(#[from] KeyslotError),
    /// A setting from the environment that cannot be used.
    #[error("{0}")]
    Setting(String),
    /// Socket or file trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The environment variable that sets the per-transfer quota of a clone or pull, in bytes
/// (a number, optionally followed by `K`, `M`, `G` or `T`, powers of 1024); default
/// [`crate::vault::DEFAULT_TRANSFER_BYTES`].
pub const TRANSFER_QUOTA_ENV: &str = "PK_MAX_TRANSFER";

/// The limits of one clone or pull: [`TRANSFER_QUOTA_ENV`] or the defaults.
pub fn transfer_limits() -> Result<crate::vault::TransferLimits, AgentError> {
    let mut limits = crate::vault::TransferLimits::default();
    let Ok(text) = std::env::var(TRANSFER_QUOTA_ENV) else {
        return Ok(limits);
    };
    let bad = || {
        AgentError::Setting(format!(
            "{TRANSFER_QUOTA_ENV}={:?} is not a size: give bytes, e.g. 8G or 500M",
            text.chars().take(32).collect::<String>()
        ))
    };
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((at, 'K' | 'k')) => (&text[..at], 10),
        Some((at, 'M' | 'm')) => (&text[..at], 20),
        Some((at, 'G' | 'g')) => (&text[..at], 30),
        Some((at, 'T' | 't')) => (&text[..at], 40),
        _ => (text, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    limits.max_bytes = n
        .checked_shl(shift)
        .filter(|v| v >> shift == n && *v > 0)
        .ok_or_else(bad)?;
    Ok(limits)
}

/// Configuration of an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The node directory.
    pub node: NodePath,
    /// Where this machine's tokens are.
    pub tokens: TokenConfig,
    /// The UDP address of the peer endpoint (`None`: no peer endpoint).
    pub peer_listen: Option<std::net::SocketAddr>,
    /// Advertise the node over mDNS on these interfaces (off by default).
    pub lan: Option<crate::lan::Interfaces>,
    /// Where GitHub is (configurable so that tests can run a local stand-in).
    pub github: crate::provider::GitHubConfig,
}

/// The unlocked state.
struct Open {
    store: Store,
    /// The node key; replaced by `pk keys renew` and `pk keys reset`.
    identity: Mutex<Arc<Identity>>,
    slot: u32,
    /// The peer endpoint, made after the unlock.
    net: std::sync::OnceLock<Arc<peers::pool::PeerNet>>,
    /// The GitHub identity provider.
    github: crate::provider::GitHub,
    /// Device authorisations in progress, by the handle given to `pk`.
    device_auths: Mutex<std::collections::HashMap<u64, trust::provider::DeviceFlow>>,
    /// Refused peer calls not yet in the audit log (written in aggregate).
    refusals: Mutex<refusals::Refusals>,
    /// What one clone or pull may bring.
    transfer_limits: crate::vault::TransferLimits,
    /// The time that scheduled pulls, delivery retries and refusal intervals are decided
    /// by: the system clock.
    clock: crate::clock::Clock,
}

struct Shared {
    config: AgentConfig,
    started: Instant,
    state: Mutex<Option<Arc<Open>>>,
    /// Events that happened while locked: written to the audit log at the next unlock.
    pending: Mutex<Vec<(String, serde_json::Value)>>,
    shutdown: Notify,
    /// The peer endpoint's UDP socket, bound once at start.
    udp: Option<std::net::UdpSocket>,
}

impl Open {
    /// The current node key.
    fn identity(&self) -> Arc<Identity> {
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Shared {
    /// Keeps an event that cannot be written while locked: in memory and in
    /// `agent-pending.jsonl`, so that a stop before the next unlock does not lose it.
    fn remember(&self, event: &str, fields: serde_json::Value) {
        use std::io::Write as _;
        let line = json!({ "event": event, "fields": fields });
        let path = self.config.node.agent_pending();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| {
                writeln!(file, "{line}")?;
                file.sync_all()
            });
        if let Err(e) = written {
            // Still kept in memory: lost only if the agent stops before the next unlock.
            tracing::warn!(
                target: AGENT,
                event,
                error = %e,
                "cannot keep an event for the audit log in {}; \
                 it is lost if the agent stops while locked",
                path.display()
            );
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((event.to_owned(), fields));
    }

    fn open(&self) -> Result<Arc<Open>, ApiError> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Locked,
                    "the agent is locked: unlock it with `pk agent unlock`",
                )
            })
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let context = context.into();
    move |source| AgentError::Io { context, source }
}

/// Binds the socket, writes the status file, tries the keyslots that need no secret, and
/// serves until stopped (a `Stop` call, SIGTERM or SIGINT). `ready` is called once the
/// socket accepts connections.
pub async fn run(config: AgentConfig, ready: impl FnOnce()) -> Result<(), AgentError> {
    // Settings from the environment are checked before anything starts.
    transfer_limits()?;
    let node = config.node.clone();
    Keyslots::open(&node)?;
    let (listener, socket) = bind_socket(&node).await?;
    let udp = match config.peer_listen {
        Some(addr) => Some(
            std::net::UdpSocket::bind(addr)
                .map_err(io(format!("binding the peer endpoint to UDP {addr}")))?,
        ),
        None => None,
    };
    let peer_addr = udp
        .as_ref()
        .and_then(|u| u.local_addr().ok())
        .map(|a| a.to_string());
    let status = StatusFile {
        peer_addr: peer_addr.clone(),
        pid: std::process::id(),
        socket: socket.clone(),
        started_ms: crate::clock::unix_ms(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let status_path = node.agent_status();
    std::fs::write(
        &status_path,
        serde_json::to_vec(&status).expect("serialises"),
    )
    .map_err(io("writing the status file"))?;

    let shared = Arc::new(Shared {
        config,
        started: Instant::now(),
        state: Mutex::new(None),
        pending: Mutex::new(load_pending(&node)),
        shutdown: Notify::new(),
        udp,
    });
    tracing::info!(
        target: AGENT,
        event = "agent.started",
        pid = status.pid,
        socket = %socket.display(),
        peer_addr = peer_addr.as_deref().unwrap_or("off"),
        version = status.version,
        "agent started"
    );
    // Unattended unlock: slots that need no secret (a TPM slot whose policy holds). Its
    // outcome is logged by `unlock`.
    let _ = unlock(&shared, Unlock::default()).await;
    ready();

    // An agent whose socket was removed (its node directory deleted or replaced) can no
    // longer be reached: it stops instead of lingering.
    let socket_inode = inode(&socket);
    let why = serve_until_stopped(&shared, &listener, &socket, socket_inode).await?;
    lock(&shared);
    // Remove the socket and status file only if they are still ours.
    let ours = inode(&socket);
    if ours.is_some() && ours == socket_inode {
        for path in [&socket, &status_path] {
            if let Err(e) = std::fs::remove_file(path) {
                // A later `pk` sees a stale file and recognises it; worth a line all the same.
                tracing::warn!(target: AGENT, error = %e, "cannot remove {}", path.display());
            }
        }
    }
    tracing::info!(target: AGENT, event = "agent.stopped", reason = why, "agent stopped ({why})");
    Ok(())
}

/// The inode of `path`, to tell our socket from one that replaced it.
fn inode(path: &std::path::Path) -> Option<u64> {
    std::fs::metadata(path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok()
}

/// Binds the agent socket (mode 0600), unless another agent answers on it.
async fn bind_socket(node: &NodePath) -> Result<(UnixListener, std::path::PathBuf), AgentError> {
    let socket = node.agent_socket();
    if UnixStream::connect(&socket).await.is_ok() {
        return Err(AgentError::AlreadyRunning(node.dir().to_owned()));
    }
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(io(format!("binding {}", socket.display())))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io("restricting the socket"))?;
    }
    Ok((listener, socket))
}

/// Serves connections from this user (refusing others) until a stop request, a signal,
/// or the socket's removal; why it stopped.
async fn serve_until_stopped(
    shared: &Arc<Shared>,
    listener: &UnixListener,
    socket: &std::path::Path,
    socket_inode: Option<u64>,
) -> Result<&'static str, AgentError> {
    let own_uid = rustix::process::getuid().as_raw();
    let mut watch = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("installing the SIGTERM handler"))?;
    Ok(loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let peer_ok = stream.peer_cred().map(|c| c.uid() == own_uid).unwrap_or(false);
                if !peer_ok {
                    tokio::spawn(refuse(stream));
                    continue;
                }
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve(shared, stream).await;
                });
            }
            _ = shared.shutdown.notified() => break "stop requested",
            _ = watch.tick() => {
                let now = inode(socket);
                if now.is_none() || now != socket_inode {
                    break "its socket was removed or replaced";
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = tokio::signal::ctrl_c() => break "SIGINT",
        }
    })
}

/// Answers a connection from another user with a refusal, and nothing else.
async fn refuse(mut stream: UnixStream) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = read_frame::<_, Hello>(&mut stream, MAX_FRAME).await;
        let _ = write_frame(
            &mut stream,
            &Response::Err(ApiError::new(
                ErrorCode::Denied,
                "this agent belongs to another user",
            )),
        )
        .await;
    })
    .await;
}

async fn serve(shared: Arc<Shared>, mut stream: UnixStream) {
    let request: Request = match read_frame::<_, Hello>(&mut stream, MAX_FRAME).await {
        Ok(Some(call)) if call.protocol == PROTOCOL => call.request,
        Ok(Some(call)) => {
            let _ = write_frame(
                &mut stream,
                &Response::Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "this agent speaks protocol {PROTOCOL}, pk speaks {}: restart the agent with this pk (pk agent stop; pk agent start)",
                        call.protocol
                    ),
                )),
            )
            .await;
            return;
        }
        Ok(None) => return,
        Err(e) => {
            let _ = write_frame(
                &mut stream,
                &Response::Err(ApiError::new(ErrorCode::BadInput, e.to_string())),
            )
            .await;
            return;
        }
    };
    let response = match calls::handle(&shared, request, &mut stream).await {
        Ok(reply) => Response::Ok(reply),
        Err(e) => Response::Err(e),
    };
    let _ = write_frame(&mut stream, &response).await;
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    // What the job logs belongs to the span it was started in (a peer call, a pull).
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the request failed inside the agent"))?
}

/// Runs `job` on a blocking thread with the unlocked state (store calls block).
async fn on_store<T: Send + 'static>(
    open: &Arc<Open>,
    job: impl FnOnce(&Open) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let open = open.clone();
    blocking(move || job(&open)).await
}

impl Open {
    /// Appends one audit event in its own transaction.
    fn record(&self, event: &str, fields: serde_json::Value) -> Result<(), ApiError> {
        self.audited(event, fields, |_| Ok(()))
    }

    /// Makes `change` and appends the audit event `event` in one write transaction:
    /// both are written, or (when `change` fails) neither.
    fn audited<T>(
        &self,
        event: &str,
        fields: serde_json::Value,
        change: impl FnOnce(&mut WriteTx<'_>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut tx = self.store.write()?;
        let out = change(&mut tx)?;
        audit::append(&mut tx, event, fields)?;
        tx.commit()?;
        Ok(out)
    }
}

fn vaults(open: &Open) -> Vaults<'_> {
    Vaults::new(&open.store, open.identity().node_id())
}

/// Bytes written by a blocking job, sent on as bounded, zeroized chunks.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Zeroizing<Vec<u8>>>,
    buf: Zeroizing<Vec<u8>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let take = (CHUNK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Zeroizing::new(Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(full)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

/// Runs `job` on a blocking thread and streams what it writes to the client as
/// [`Response::Chunk`] frames; at most a few chunks are in memory at once.
async fn stream_out(
    stream: &mut UnixStream,
    job: impl FnOnce(&mut ChannelWriter) -> Result<(), ApiError> + Send + 'static,
) -> Result<(), ApiError> {
    use std::io::Write as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Zeroizing<Vec<u8>>>(4);
    let worker = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: Zeroizing::new(Vec::with_capacity(CHUNK)),
        };
        job(&mut out)?;
        out.flush()
            .map_err(|_| ApiError::new(ErrorCode::Internal, "the client went away"))
    });
    while let Some(piece) = rx.recv().await {
        write_frame(stream, &Response::Chunk(SecretBytes(piece.to_vec())))
            .await
            .map_err(frame_error)?;
    }
    worker
        .await
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the request failed inside the agent"))?
}

/// Reads and discards an upload.
async fn drain(stream: &mut UnixStream) -> Result<(), ApiError> {
    loop {
        match read_frame::<_, Upload>(stream, MAX_FRAME + CHUNK)
            .await
            .map_err(frame_error)?
        {
            Some(Upload::Chunk(bytes)) => drop(bytes),
            Some(Upload::End) | None => return Ok(()),
        }
    }
}

/// Passes an upload's chunks to the writer, until `End`; an error if the client stops
/// early or the upload is too large.
async fn forward_upload(
    stream: &mut UnixStream,
    tx: &tokio::sync::mpsc::Sender<Result<Zeroizing<Vec<u8>>, VaultError>>,
) -> Result<(), ApiError> {
    loop {
        let frame: Option<Upload> =
            tokio::time::timeout(UPLOAD_IDLE, read_frame(stream, MAX_FRAME + CHUNK))
                .await
                .map_err(|_| {
                    ApiError::new(
                        ErrorCode::BadInput,
                        "the upload stalled; nothing was written",
                    )
                })?
                .map_err(frame_error)?;
        match frame {
            Some(Upload::Chunk(bytes)) => {
                if tx.send(Ok(bytes.take())).await.is_err() {
                    // The writer stopped (too large, or another error): it will say why.
                    drain(stream).await?;
                    return Ok(());
                }
            }
            Some(Upload::End) => return Ok(()),
            None => {
                return Err(ApiError::new(
                    ErrorCode::BadInput,
                    "the upload ended early; nothing was written",
                ));
            }
        }
    }
}

/// Appends an audit event now, or keeps it for the next unlock while locked.
async fn record_or_remember(
    shared: &Shared,
    event: &'static str,
    fields: serde_json::Value,
) -> Result<(), ApiError> {
    match shared.open() {
        Ok(open) => {
            blocking(move || {
                let mut tx = open.store.write().map_err(store_error)?;
                audit::append(&mut tx, event, fields).map_err(store_error)?;
                tx.commit().map_err(store_error)
            })
            .await
        }
        Err(_) => {
            shared.remember(event, fields);
            Ok(())
        }
    }
}

async fn unlock(shared: &Arc<Shared>, params: Unlock) -> Result<(), ApiError> {
    if shared.open().is_ok() {
        return Ok(());
    }
    let config = shared.config.clone();
    let failed = shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let auto = params.is_unattended();
    let requested_slot = params.slot;
    match blocking(move || open_store(&config, &params, &failed)).await {
        Ok(open) => unlocked(shared, open, auto),
        Err(e) if auto => {
            // Expected when every keyslot needs a secret; worth knowing when a TPM slot
            // that used to open by itself no longer does (its PCR policy changed).
            tracing::info!(
                target: AGENT,
                outcome = "locked",
                error = e.message.as_str(),
                "no keyslot opens without a secret; the agent waits, locked, for an unlock"
            );
            Err(e)
        }
        Err(e) => {
            // The slot asked for and the error `pk` shows: never the secret, which no
            // error carries.
            tracing::warn!(
                target: AGENT,
                event = "agent.unlock_failed",
                outcome = "failed",
                slot = requested_slot,
                code = ?e.code,
                error = e.message.as_str(),
                "unlock failed"
            );
            let time_ms = crate::clock::unix_ms();
            shared.remember(
                "agent.unlock_failed",
                json!({ "slot": requested_slot, "reason": e.message, "at_ms": time_ms }),
            );
            Err(e)
        }
    }
}

/// Unwraps the DEK through the keyslots as `params` asks, opens the store with it, and
/// writes the events kept while locked (`failed`) and the unlock in one transaction.
fn open_store(
    config: &AgentConfig,
    params: &Unlock,
    failed: &[(String, serde_json::Value)],
) -> Result<Open, ApiError> {
    let keyslots = Keyslots::open(&config.node).map_err(keyslot_error)?;
    let choice = UnlockChoice {
        slot: params.slot,
        kind: params.kind,
        secret: params
            .secret
            .as_ref()
            .map(|s| hsm_core::Pin::new(s.0.clone())),
    };
    let unlocked =
        crate::tokens::unlock(&keyslots, choice, &config.tokens).map_err(unlock_error)?;
    let store = open_when_released(&config.node, &unlocked.key)?;
    let mut tx = store.write()?;
    let identity = Identity::load_or_create(&mut tx)?;
    for (event, fields) in failed {
        audit::append(&mut tx, event, fields.clone())?;
    }
    audit::append(&mut tx, "agent.unlocked", json!({ "slot": unlocked.slot }))?;
    tx.commit()?;
    Ok(Open {
        store,
        identity: Mutex::new(Arc::new(identity)),
        slot: unlocked.slot,
        net: std::sync::OnceLock::new(),
        github: crate::provider::GitHub::new(config.github.clone()),
        device_auths: Mutex::new(std::collections::HashMap::new()),
        refusals: Mutex::new(refusals::Refusals::default()),
        transfer_limits: transfer_limits().unwrap_or_default(),
        clock: crate::clock::Clock::system(),
    })
}

/// Opens the store; right after a lock, the work the lock stopped (aborted background
/// tasks, requests finishing) may still hold the previous handle for a moment, so a
/// store "in use" by this process is tried again for a few seconds before it is an
/// error (another process holding it stays an error, after the same wait).
fn open_when_released(node: &NodePath, key: &hsm_core::DataKey) -> Result<Store, ApiError> {
    let mut tries = 0;
    loop {
        match Store::open(node, key) {
            Err(StoreError::InUse(_)) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return Ok(other?),
        }
    }
}

/// The store is open: forgets the events kept while locked (now in the audit log),
/// starts the peer side, and makes the unlocked state the agent's.
fn unlocked(shared: &Arc<Shared>, open: Open, auto: bool) -> Result<(), ApiError> {
    shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    let pending = shared.config.node.agent_pending();
    match std::fs::remove_file(&pending) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            // Its events are in the audit log now; left behind, they would be written a
            // second time at the next unlock after a restart.
            tracing::warn!(
                target: AGENT,
                error = %e,
                "cannot remove {}",
                pending.display()
            );
        }
        _ => {}
    }
    let open = Arc::new(open);
    tracing::info!(
        target: AGENT,
        event = "agent.unlocked",
        outcome = "ok",
        slot = open.slot,
        node = %open.identity().node_id(),
        unattended = auto,
        "agent unlocked with keyslot {}",
        open.slot
    );
    if let Some(udp) = &shared.udp {
        let net = background::start(&open, udp, shared.config.lan).inspect_err(|e| {
            tracing::error!(
                target: AGENT,
                error = e.message.as_str(),
                "the peer endpoint could not start; the agent stays locked"
            );
        })?;
        let _ = open.net.set(net);
    }
    *shared.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(open);
    Ok(())
}

/// Events a previous run kept while locked (see [`Shared::remember`]).
fn load_pending(node: &NodePath) -> Vec<(String, serde_json::Value)> {
    std::fs::read_to_string(node.agent_pending())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| Some((v["event"].as_str()?.to_owned(), v["fields"].clone())))
        .collect()
}

fn lock(shared: &Shared) {
    let open = shared
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(open) = open {
        if let Some(net) = open.net.get() {
            net.shutdown();
        }
        peers::serve::flush_refusals(&open, true);
        let recorded = open.store.write().and_then(|mut tx| {
            audit::append(&mut tx, "agent.locked", json!({}))?;
            tx.commit()
        });
        if let Err(e) = recorded {
            tracing::warn!(
                target: AGENT,
                error = %e,
                "the lock could not be written to the audit log"
            );
        }
        tracing::info!(target: AGENT, event = "agent.locked", "agent locked; keys dropped");
        // Dropping the last reference closes the store and zeroizes its keys and the
        // identity; requests still in flight finish first.
        drop(open);
    }
}

/// An error inside the agent that `pk` can do nothing about.
fn lost(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// A NodeId given by `pk`, checked.
fn node_id(s: &str) -> Result<crate::identity::NodeId, ApiError> {
    s.parse().map_err(|e: crate::identity::IdentityError| {
        ApiError::new(ErrorCode::BadInput, e.to_string())
    })
}

fn frame_error(e: FrameError) -> ApiError {
    ApiError::new(ErrorCode::BadInput, e.to_string())
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        store_error(e)
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        vault_error(e)
    }
}

fn store_error(e: StoreError) -> ApiError {
    let code = match e {
        StoreError::Corrupt { .. } | StoreError::WrongKey(_) => ErrorCode::Corrupt,
        StoreError::InUse(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

/// Maps vault errors to API codes.
pub fn vault_error(e: VaultError) -> ApiError {
    let code = match &e {
        VaultError::NoVault(_) | VaultError::NotFound(_) | VaultError::NoCommit(_) => {
            ErrorCode::NotFound
        }
        VaultError::VaultExists(_) | VaultError::Exists(_) | VaultError::AlreadyCloned(_) => {
            ErrorCode::Exists
        }
        VaultError::Corrupt(_) | VaultError::Refused(_) => ErrorCode::Corrupt,
        VaultError::Store(_) => {
            if let VaultError::Store(inner) = e {
                return store_error(inner);
            }
            ErrorCode::Internal
        }
        _ => ErrorCode::BadInput,
    };
    ApiError::new(code, e.to_string())
}

fn keyslot_error(e: KeyslotError) -> ApiError {
    ApiError::new(e.code().unwrap_or(ErrorCode::Internal), e.to_string())
}

fn unlock_error(e: UnlockError) -> ApiError {
    match e {
        UnlockError::Keyslot(e) => keyslot_error(e),
        other => ApiError::new(ErrorCode::BadInput, other.to_string()),
    }
}
