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
use crate::api::{
    AccountBinding, AccountCheck, AgentStatus, ApiError, Call, ErrorCode, KeyslotEvent, PROTOCOL,
    Reply, Request, Response, SecretBytes, UnlockParams, Upload, WriteKind,
};
use crate::audit;
use crate::identity::{self, Identity, NodeId};
use crate::keyslots::{KeyslotError, Keyslots};
use crate::logging::AGENT;
use crate::rpc::{CHUNK, FrameError, MAX_FRAME, read_frame, write_frame};
use crate::store::{Read as _, Store, StoreError, Table};
use crate::tokens::{TokenConfig, UnlockChoice, UnlockError};
use crate::vault::{SecretPath, VaultError, Vaults};

mod budget;
mod peers;
mod refusals;
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
    net: std::sync::OnceLock<Arc<peers::PeerNet>>,
    /// The GitHub identity provider.
    github: crate::provider::GitHub,
    /// Device authorisations in progress, by the handle given to `pk`.
    device_auths: Mutex<std::collections::HashMap<u64, zeroize::Zeroizing<String>>>,
    /// Refused peer calls not yet in the audit log (written in aggregate).
    refusals: Mutex<refusals::Refusals>,
    /// What one clone or pull may bring.
    transfer_limits: crate::vault::TransferLimits,
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
        started_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
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
    let _ = unlock(&shared, UnlockParams::default()).await;
    ready();

    let own_uid = rustix::process::getuid().as_raw();
    // An agent whose socket was removed (its node directory deleted or replaced) can no
    // longer be reached: it stops instead of lingering.
    let socket_inode = std::fs::metadata(&socket)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    let mut watch = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("installing the SIGTERM handler"))?;
    let why = loop {
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
                let now = std::fs::metadata(&socket).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
                if now.is_none() || now != socket_inode {
                    break "its socket was removed or replaced";
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = tokio::signal::ctrl_c() => break "SIGINT",
        }
    };
    lock(&shared);
    // Remove the socket and status file only if they are still ours.
    let ours = std::fs::metadata(&socket)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
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

/// Answers a connection from another user with a refusal, and nothing else.
async fn refuse(mut stream: UnixStream) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = read_frame::<_, Call>(&mut stream, MAX_FRAME).await;
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
    let request: Request = match read_frame::<_, Call>(&mut stream, MAX_FRAME).await {
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
    let response = match handle(&shared, request, &mut stream).await {
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

fn parse_path(path: &str, allow_root: bool) -> Result<SecretPath, ApiError> {
    SecretPath::parse(path, allow_root).map_err(vault_error)
}

async fn handle(
    shared: &Arc<Shared>,
    request: Request,
    stream: &mut UnixStream,
) -> Result<Reply, ApiError> {
    match request {
        Request::Status => {
            let open = shared.open().ok();
            Ok(Reply::Status(AgentStatus {
                state: if open.is_some() { "unlocked" } else { "locked" }.into(),
                pid: std::process::id(),
                node_id: open.as_ref().map(|o| o.identity().node_id().to_string()),
                unlocked_with: open.as_ref().map(|o| o.slot),
                uptime_s: shared.started.elapsed().as_secs(),
                version: env!("CARGO_PKG_VERSION").into(),
                peer_addr: shared
                    .udp
                    .as_ref()
                    .and_then(|u| u.local_addr().ok())
                    .map(|a| a.to_string()),
            }))
        }
        Request::Unlock(params) => {
            unlock(shared, params).await?;
            Ok(Reply::Done)
        }
        Request::Lock => {
            lock(shared);
            Ok(Reply::Done)
        }
        Request::Stop => {
            shared.shutdown.notify_one();
            Ok(Reply::Done)
        }
        Request::ConsoleEvent { event, client } => {
            record_or_remember(shared, event.name(), json!({ "client": client })).await?;
            Ok(Reply::Done)
        }
        Request::KeyslotChanged { event, slot, kind } => {
            let fields = json!({ "slot": slot, "kind": kind });
            let event = match event {
                KeyslotEvent::Enrolled => "keyslot.enrolled",
                KeyslotEvent::Removed => "keyslot.removed",
            };
            record_or_remember(shared, event, fields).await?;
            Ok(Reply::Done)
        }
        Request::SecretsWrite {
            vault,
            path,
            kind,
            size,
        } => {
            let checked = shared
                .open()
                .and_then(|open| Ok((open, SecretPath::parse_file(&path).map_err(vault_error)?)));
            let (open, path) = match checked {
                Ok(ok) => ok,
                Err(e) => {
                    // Read the whole upload even when refusing it: closing a Unix socket
                    // with unread data resets the connection, and the client would lose
                    // our answer.
                    drain(stream).await?;
                    return Err(e);
                }
            };
            let event = match kind {
                WriteKind::Create => "secret.created",
                WriteKind::Write => "secret.written",
                WriteKind::Edit => "secret.edited",
                WriteKind::Import => "secret.imported",
            };
            // The content flows through a small channel into the blocking writer, which
            // stores it chunk by chunk inside one transaction.
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<Result<Zeroizing<Vec<u8>>, VaultError>>(4);
            let writer = tokio::task::spawn_blocking(move || {
                let mut pieces = std::iter::from_fn(|| rx.blocking_recv());
                vaults(&open).write_stream(&vault, &path, &mut pieces, size, event)
            });
            let received = forward_upload(stream, &tx).await;
            if received.is_err() {
                // Tell the writer to abandon its transaction.
                let _ = tx.send(Err(VaultError::Interrupted)).await;
            }
            drop(tx);
            let written = writer.await.map_err(|_| {
                ApiError::new(ErrorCode::Internal, "the write failed inside the agent")
            })?;
            received?;
            written.map(Reply::Commit).map_err(vault_error)
        }
        Request::SecretsCat { vault, path, via } => {
            let open = shared.open()?;
            let path = SecretPath::parse_file(&path).map_err(vault_error)?;
            stream_out(stream, move |out| {
                let v = vaults(&open);
                // Record the reveal before the first byte leaves, so a reader that stops
                // midway is on record too; a path that does not exist reveals nothing.
                v.stat(&vault, &path).map_err(vault_error)?;
                let mut wtx = open.store.write().map_err(store_error)?;
                audit::append(
                    &mut wtx,
                    "secret.revealed",
                    json!({ "vault": vault, "path": path.to_string(), "via": via.name() }),
                )
                .map_err(store_error)?;
                wtx.commit().map_err(store_error)?;
                v.read_stream(&vault, &path, &mut |piece| {
                    std::io::Write::write_all(out, piece).map_err(|_| VaultError::Interrupted)
                })
                .map_err(vault_error)
            })
            .await?;
            Ok(Reply::Done)
        }
        Request::VaultsExportBundle(vault) => {
            let open = shared.open()?;
            stream_out(stream, move |out| {
                vaults(&open)
                    .export_bundle(&vault, out)
                    .map_err(vault_error)?;
                let mut wtx = open.store.write().map_err(store_error)?;
                audit::append(&mut wtx, "vault.exported", json!({ "vault": vault }))
                    .map_err(store_error)?;
                wtx.commit().map_err(store_error)
            })
            .await?;
            Ok(Reply::Done)
        }
        other => {
            let open = shared.open()?;
            match peers::handle(&open, other).await {
                Ok(answer) => answer,
                Err(other) => match trust::handle(&open, other).await {
                    Ok(answer) => answer,
                    Err(other) => blocking(move || call(&open, other)).await,
                },
            }
        }
    }
}

/// Appends one audit event in its own transaction.
fn record(open: &Open, event: &str, fields: serde_json::Value) -> Result<(), ApiError> {
    let mut tx = open.store.write().map_err(store_error)?;
    audit::append(&mut tx, event, fields).map_err(store_error)?;
    tx.commit().map_err(store_error)
}

fn vaults(open: &Open) -> Vaults<'_> {
    Vaults::new(&open.store, open.identity().node_id())
}

/// The calls that need only the unlocked state and no streaming.
fn call(open: &Open, request: Request) -> Result<Reply, ApiError> {
    let v = vaults(open);
    let ve = vault_error;
    Ok(match request {
        Request::KeysPublic => Reply::NodeId(open.identity().node_id().to_string()),
        Request::KeysSign(data) => {
            record(open, "keys.signed", json!({ "bytes": data.0.len() }))?;
            Reply::Bytes(SecretBytes(open.identity().sign_user(&data.0).to_vec()))
        }
        Request::KeysEncrypt { to, data } => {
            let to: NodeId = to.parse().map_err(|e: identity::IdentityError| {
                ApiError::new(ErrorCode::BadInput, e.to_string())
            })?;
            Reply::Bytes(SecretBytes(
                identity::encrypt_to(&to, &data.0)
                    .map_err(|e| ApiError::new(ErrorCode::BadInput, e.to_string()))?,
            ))
        }
        Request::KeysDecrypt(data) => Reply::Bytes({
            record(open, "keys.decrypted", json!({ "bytes": data.0.len() }))?;
            SecretBytes(
                open.identity()
                    .decrypt(&data.0)
                    .map_err(|e| ApiError::new(ErrorCode::BadInput, e.to_string()))?
                    .to_vec(),
            )
        }),
        Request::VaultsCreate(name) => Reply::Vault(Box::new(v.create(&name).map_err(ve)?)),
        Request::VaultsList => Reply::Vaults(v.list().map_err(ve)?),
        Request::VaultsRename { from, to } => {
            v.rename(&from, &to).map_err(ve)?;
            Reply::Done
        }
        Request::VaultsDelete(name) => {
            v.delete(&name).map_err(ve)?;
            Reply::Done
        }
        Request::VaultsLog { vault, depth, from } => Reply::Commits(
            v.log(&vault, depth.map(|d| d as usize), from.as_deref())
                .map_err(ve)?,
        ),
        Request::VaultsVersion { vault, target } => {
            Reply::Commit(v.version(&vault, &target).map_err(ve)?)
        }
        Request::SecretsLs { vault, path } => {
            Reply::Entries(v.list_dir(&vault, &parse_path(&path, true)?).map_err(ve)?)
        }
        Request::SecretsMkdir {
            vault,
            path,
            parents,
        } => Reply::Commit(
            v.mkdir(&vault, &parse_path(&path, false)?, parents)
                .map_err(ve)?,
        ),
        Request::SecretsRm {
            vault,
            paths,
            recursive,
        } => {
            let paths = paths
                .iter()
                .map(|p| parse_path(p, false))
                .collect::<Result<Vec<_>, _>>()?;
            Reply::Commit(v.remove(&vault, &paths, recursive).map_err(ve)?)
        }
        Request::SecretsRename { vault, from, to } => Reply::Commit(
            v.rename_path(&vault, &parse_path(&from, false)?, &parse_path(&to, false)?)
                .map_err(ve)?,
        ),
        Request::SecretsStat { vault, path } => {
            Reply::Stat(v.stat(&vault, &parse_path(&path, true)?).map_err(ve)?)
        }
        Request::SecretsTouch { vault, path } => {
            let path = SecretPath::parse_file(&path).map_err(ve)?;
            Reply::MaybeCommit(v.touch(&vault, &path).map_err(ve)?)
        }
        Request::Audit(query) => {
            // Refusals counted so far belong in what the reader sees.
            peers::flush_refusals(open, true);
            let tx = open.store.read().map_err(store_error)?;
            Reply::Events(audit::query(&tx, &query).map_err(store_error)?)
        }
        Request::ConsoleAccount { account, binding } => {
            Reply::Account(console_account(open, &account, binding)?)
        }
        _ => return Err(ApiError::new(ErrorCode::BadInput, "unexpected request")),
    })
}

/// Where the console's bound admin account is kept (sealed like every value).
const ACCOUNT_KEY: &[u8] = b"console-account";

/// The console's admin account as the node holds it.
#[derive(Serialize, Deserialize)]
struct BoundAccount {
    current: String,
    /// The account before a password change, until the console shows the new one is on
    /// disk: a crash between binding the new account and writing its file leaves the old
    /// one working. Never set by a reset, which must not bring back what it replaced.
    previous: Option<String>,
}

/// Checks the console's account against the bound one, or binds a new one.
fn console_account(
    open: &Open,
    account: &str,
    binding: AccountBinding,
) -> Result<AccountCheck, ApiError> {
    let mut tx = open.store.write().map_err(store_error)?;
    let bound: Option<BoundAccount> = match tx.get(Table::Meta, ACCOUNT_KEY).map_err(store_error)? {
        Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|_| {
            ApiError::new(ErrorCode::Internal, "the bound console account is damaged")
        })?),
        None => None,
    };
    let bind = |previous: Option<String>| BoundAccount {
        current: account.to_owned(),
        previous,
    };
    let (check, store) = match (binding, bound) {
        (AccountBinding::Check, None) => {
            audit::append(&mut tx, "console.account_bound", json!({})).map_err(store_error)?;
            (AccountCheck::Bound, Some(bind(None)))
        }
        (AccountBinding::Check, Some(b)) if b.current == account => (
            AccountCheck::Matches,
            b.previous.is_some().then(|| bind(None)),
        ),
        (AccountBinding::Check, Some(b)) if b.previous.as_deref() == Some(account) => {
            (AccountCheck::Matches, Some(bind(None)))
        }
        (AccountBinding::Check, Some(_)) => (AccountCheck::Mismatch, None),
        (AccountBinding::Change { from }, None) => (AccountCheck::Bound, Some(bind(Some(from)))),
        (AccountBinding::Change { from }, Some(b)) if b.current == from => {
            (AccountCheck::Bound, Some(bind(Some(from))))
        }
        (AccountBinding::Change { .. }, Some(_)) => (AccountCheck::Mismatch, None),
        (AccountBinding::Reset, _) => (AccountCheck::Bound, Some(bind(None))),
    };
    if let Some(store) = store {
        let bytes = serde_json::to_vec(&store)
            .map_err(|_| ApiError::new(ErrorCode::Internal, "the console account"))?;
        tx.put(Table::Meta, ACCOUNT_KEY, &bytes)
            .map_err(store_error)?;
    }
    tx.commit().map_err(store_error)?;
    Ok(check)
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

async fn unlock(shared: &Arc<Shared>, params: UnlockParams) -> Result<(), ApiError> {
    if shared.open().is_ok() {
        return Ok(());
    }
    let config = shared.config.clone();
    let failed = shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let auto = params.slot.is_none() && params.kind.is_none() && params.secret.is_none();
    let requested_slot = params.slot;
    let result = blocking(move || {
        let keyslots = Keyslots::open(&config.node).map_err(keyslot_error)?;
        let choice = UnlockChoice {
            slot: params.slot,
            kind: params.kind,
            secret: params.secret.as_ref().map(|s| hsm::Pin::new(s.0.clone())),
        };
        let unlocked =
            crate::tokens::unlock(&keyslots, choice, &config.tokens).map_err(unlock_error)?;
        let store = Store::open(&config.node, &unlocked.key).map_err(store_error)?;
        let mut tx = store.write().map_err(store_error)?;
        let identity = Identity::load_or_create(&mut tx).map_err(store_error)?;
        for (event, fields) in &failed {
            audit::append(&mut tx, event, fields.clone()).map_err(store_error)?;
        }
        audit::append(&mut tx, "agent.unlocked", json!({ "slot": unlocked.slot }))
            .map_err(store_error)?;
        tx.commit().map_err(store_error)?;
        Ok(Open {
            store,
            identity: Mutex::new(Arc::new(identity)),
            slot: unlocked.slot,
            net: std::sync::OnceLock::new(),
            github: crate::provider::GitHub::new(config.github.clone()),
            device_auths: Mutex::new(std::collections::HashMap::new()),
            refusals: Mutex::new(refusals::Refusals::default()),
            transfer_limits: transfer_limits().unwrap_or_default(),
        })
    })
    .await;
    match result {
        Ok(open) => {
            shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            let pending = shared.config.node.agent_pending();
            match std::fs::remove_file(&pending) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    // Its events are in the audit log now; left behind, they would be
                    // written a second time at the next unlock after a restart.
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
                let net = peers::start(&open, udp, shared.config.lan).inspect_err(|e| {
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
            let time_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            shared.remember(
                "agent.unlock_failed",
                json!({ "slot": requested_slot, "reason": e.message, "at_ms": time_ms }),
            );
            Err(e)
        }
    }
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
        peers::flush_refusals(&open, true);
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

fn frame_error(e: FrameError) -> ApiError {
    ApiError::new(ErrorCode::BadInput, e.to_string())
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
    use hsm::UnwrapError as U;
    let code = match &e {
        KeyslotError::NotInitialised(_) => ErrorCode::NotFound,
        KeyslotError::Truncated(_)
        | KeyslotError::Corrupt { .. }
        | KeyslotError::UnsupportedVersion { .. }
        | KeyslotError::ForeignKey(_) => ErrorCode::Corrupt,
        KeyslotError::NoSuchSlot(_) | KeyslotError::NoSlotOfKind(_) => ErrorCode::BadInput,
        KeyslotError::Unwrap { source, .. } => match source {
            U::TokenAbsent { .. } | U::NoReader => ErrorCode::Unavailable,
            U::PinRequired => ErrorCode::BadInput,
            U::Corrupt(_) => ErrorCode::Corrupt,
            _ => ErrorCode::Denied,
        },
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

fn unlock_error(e: UnlockError) -> ApiError {
    match e {
        UnlockError::Keyslot(e) => keyslot_error(e),
        other => ApiError::new(ErrorCode::BadInput, other.to_string()),
    }
}
