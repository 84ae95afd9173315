//! The agent's peer side: the QUIC endpoint while unlocked, the calls it serves to other
//! nodes, the calls `pk` asks it to make, and the background work (notification
//! delivery, scheduled pulls, idle connections, LAN advertisement).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use super::{Open, blocking, budget, schedule, store_error, vault_error, vaults};
use crate::api::backups::Backup;
use crate::api::nodes::{Add, ConnectionInfo, Direction, Pong};
use crate::api::notifications::Queued;
use crate::api::{ApiError, ErrorCode, SecretBytes};
use crate::gestalt::{Gestalts, Vertex};
use crate::identity::NodeId;
use crate::lan::{self, Interfaces};
use crate::logging::{NOTIFY, PEER, SYNC, printable};
use crate::net::{Connection, Endpoint};
use crate::nodes::{NodePermission, NodeRecord, Nodes, Share, VaultPermission};
use crate::notifications::{Body, Delivery, Mailbox, Notifications};
use crate::peer::{
    CallStream, FetchRequest, IDLE_DEADLINE, MAX_HAVES, MAX_RECEIVED, MAX_RESPONSE, PeerError,
    PeerReply, PeerRequest, PeerResponse, SharedVault, read_call_within, respond, unary,
};
use crate::rpc::{FrameBuffer, encode_frame};
use crate::store::{Read as _, Table};
use crate::vault::{FetchOutcome, Outgoing, PullOutcome, VaultError, VaultId};

/// Outgoing connections unused this long are closed.
const IDLE_CLOSE: Duration = Duration::from_secs(120);
/// How long a dial may take.
const DIAL_DEADLINE: Duration = Duration::from_secs(15);
/// A fetch's frames go out in writes of about this many bytes.
const SEND_BATCH: usize = 64 * 1024;
/// Key prefix of scheduled pulls in the `sync` table.
const BACKUP: &[u8] = b"bk:";

/// The endpoint and its connections, while the agent is unlocked.
pub(super) struct PeerNet {
    endpoint: Endpoint,
    pool: Mutex<HashMap<NodeId, Pooled>>,
    incoming: Mutex<HashMap<usize, (NodeId, SocketAddr, Instant, Connection)>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    advertiser: Mutex<Option<lan::Advertiser>>,
    lan: Option<Interfaces>,
    /// One dial at a time per node (a second caller then reuses the first's connection);
    /// dials to different nodes do not wait for each other.
    dialing: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    /// Outbox entries being delivered now (the background loop skips them).
    delivering: Mutex<BTreeSet<u64>>,
    /// Connections taken, in all, per address and from strangers.
    budget: budget::Budget,
    /// Peer calls allowed on blocking threads at once.
    blocking_calls: tokio::sync::Semaphore,
    /// Connections turned away for the budget: logged at most once a minute.
    busy_log: Mutex<super::refusals::LogGate>,
}

struct Pooled {
    conn: Connection,
    since: Instant,
    last_used: Instant,
}

impl PeerNet {
    /// The interfaces the node is advertised on over mDNS, if it is.
    pub(super) fn lan(&self) -> Option<Interfaces> {
        self.lan
    }

    /// The local address peers dial.
    pub(super) fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Presents a new node key: new connections use it; the open ones are closed so that
    /// peers reconnect and see it.
    pub(super) fn set_identity(
        &self,
        identity: &crate::identity::Identity,
        renewals: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<(), ApiError> {
        self.endpoint
            .set_identity(identity, renewals)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        if let (Some(interfaces), Some(addr)) = (self.lan, self.local_addr()) {
            // Advertise the new NodeId (the old advertisement is withdrawn first).
            let mut advertiser = self.advertiser.lock().unwrap_or_else(|p| p.into_inner());
            advertiser.take();
            *advertiser = advertise(&identity.node_id(), addr, interfaces);
        }
        for (_, pooled) in self.pool.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            pooled.conn.close("key renewed");
        }
        for (_, (_, _, _, conn)) in self
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            conn.close("key renewed");
        }
        Ok(())
    }

    /// Stops the background work and closes every connection.
    pub(super) fn shutdown(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.advertiser
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.endpoint.close();
    }
}

pub(super) fn lost(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

pub(super) fn node_id(s: &str) -> Result<NodeId, ApiError> {
    s.parse().map_err(|e: crate::identity::IdentityError| {
        ApiError::new(ErrorCode::BadInput, e.to_string())
    })
}

/// Makes the endpoint on the agent's UDP socket and starts the background work.
pub(super) fn start(
    open: &Arc<Open>,
    socket: &std::net::UdpSocket,
    lan: Option<Interfaces>,
) -> Result<Arc<PeerNet>, ApiError> {
    let socket = socket
        .try_clone()
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("peer socket: {e}")))?;
    let renewals = {
        let tx = open.store.read().map_err(store_error)?;
        crate::identity::renewals(&tx).map_err(store_error)?
    };
    let endpoint = Endpoint::from_socket(socket, &open.identity(), renewals)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let net = Arc::new(PeerNet {
        endpoint,
        pool: Mutex::new(HashMap::new()),
        incoming: Mutex::new(HashMap::new()),
        tasks: Mutex::new(Vec::new()),
        advertiser: Mutex::new(None),
        lan,
        dialing: Mutex::new(HashMap::new()),
        delivering: Mutex::new(BTreeSet::new()),
        budget: budget::Budget::default(),
        blocking_calls: tokio::sync::Semaphore::new(budget::BLOCKING_CALLS),
        busy_log: Mutex::new(super::refusals::LogGate::default()),
    });
    tracing::info!(
        target: PEER,
        addr = net.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        node = %open.identity().node_id(),
        lan = lan.is_some(),
        "peer endpoint open"
    );
    if let (Some(interfaces), Some(addr)) = (lan, net.local_addr()) {
        *net.advertiser.lock().unwrap_or_else(|p| p.into_inner()) =
            advertise(&open.identity().node_id(), addr, interfaces);
    }
    let tasks = vec![
        tokio::spawn(accept_loop(open.clone(), net.clone())).abort_handle(),
        tokio::spawn(background(open.clone(), net.clone())).abort_handle(),
    ];
    *net.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
    Ok(net)
}

/// Starts advertising `node` over mDNS; a failure leaves the node unadvertised, and says so.
fn advertise(node: &NodeId, addr: SocketAddr, interfaces: Interfaces) -> Option<lan::Advertiser> {
    match lan::Advertiser::start(&node.to_string(), addr.port(), interfaces) {
        Ok(advertiser) => {
            tracing::info!(target: PEER, port = addr.port(), "advertised on the LAN (mDNS)");
            Some(advertiser)
        }
        Err(e) => {
            tracing::warn!(
                target: PEER,
                error = %e,
                "LAN advertisement is off: other nodes will not discover this one"
            );
            None
        }
    }
}

fn net_of(open: &Open) -> Result<Arc<PeerNet>, ApiError> {
    open.net.get().cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "this agent has no peer endpoint (it was started with --peer-listen off)",
        )
    })
}

// ---------------------------------------------------------------------------------------
// Serving other nodes

async fn accept_loop(open: Arc<Open>, net: Arc<PeerNet>) {
    while let Some(incoming) = net.endpoint.incoming().await {
        // Refused before the handshake when the budget is spent: in all, or per address.
        let Some(mut slot) = net.budget.admit(incoming.remote_address().ip()) else {
            busy(&net, incoming.remote_address());
            incoming.refuse();
            continue;
        };
        let open = open.clone();
        let net = net.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.accept().await else {
                return;
            };
            let peer = conn.peer();
            if !conn.earlier_ids().is_empty() {
                // A node that renewed its key: what it held under its old NodeId is its.
                let open = open.clone();
                let earlier = conn.earlier_ids().to_vec();
                if let Err(e) = blocking(move || {
                    Nodes::new(&open.store)
                        .renamed(peer, &earlier)
                        .map_err(store_error)
                })
                .await
                {
                    tracing::warn!(
                        target: PEER,
                        %peer,
                        error = e.message.as_str(),
                        "a node that renewed its key could not be moved to its new NodeId"
                    );
                }
            }
            let known = {
                let open = open.clone();
                blocking(move || {
                    let tx = open.store.read().map_err(store_error)?;
                    Nodes::new(&open.store)
                        .known(&tx, &peer)
                        .map_err(store_error)
                })
                .await
                .unwrap_or(false)
            };
            // A node outside the graph gets less: fewer connections, fewer and smaller calls.
            if !known && !slot.stranger() {
                busy(&net, conn.remote_address());
                conn.close("busy");
                return;
            }
            let calls = Arc::new(tokio::sync::Semaphore::new(if known {
                budget::CALLS_PER_CONNECTION
            } else {
                budget::STRANGER_CALLS_PER_CONNECTION
            }));
            let max_call = if known {
                crate::rpc::MAX_FRAME
            } else {
                budget::STRANGER_MAX_CALL
            };
            let addr = conn.remote_address();
            let id = rand_id();
            net.incoming
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, (peer, addr, Instant::now(), conn.clone()));
            if known {
                tracing::debug!(target: PEER, %peer, %addr, "connection from a known node");
                let open = open.clone();
                if let Err(e) = blocking(move || {
                    Nodes::new(&open.store)
                        .seen(&peer, None)
                        .map_err(store_error)
                })
                .await
                {
                    tracing::debug!(
                        target: PEER,
                        %peer,
                        error = e.message.as_str(),
                        "cannot note the node as seen"
                    );
                }
            }
            while let Ok((mut send, recv)) = conn.accept().await {
                // Over the calls allowed at once: this one is turned away at once.
                let Ok(permit) = calls.clone().try_acquire_owned() else {
                    let _ = send.reset(0u32.into());
                    drop(recv);
                    continue;
                };
                let open = open.clone();
                let net = net.clone();
                // A span per call: what is logged while serving it names the caller and
                // the call (a span alone writes nothing, so a stranger's calls cost no line).
                let span = tracing::info_span!(
                    target: PEER,
                    "peer_call",
                    %peer,
                    call = tracing::field::Empty
                );
                tokio::spawn(
                    async move {
                        serve_call(open, net, peer, known, max_call, send, recv).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            net.incoming
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            drop(slot);
        });
    }
}

/// Notes a connection turned away because the budget is spent: a line at most once per
/// minute, however many there are.
fn busy(net: &PeerNet, from: SocketAddr) {
    let pass = net
        .busy_log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pass(crate::clock::unix_ms());
    if let Some(held) = pass {
        tracing::warn!(
            target: PEER,
            %from,
            outcome = "refused",
            more = held,
            "connections turned away: the peer endpoint's budget is spent \
             (one such line a minute at most; `more` counts those since the last)"
        );
    }
}

fn rand_id() -> usize {
    use rand_core::RngCore as _;
    rand_core::OsRng.next_u64() as usize
}

/// Refusal for a call the caller may not make; counted, and recorded in the audit log in
/// aggregate ([`super::refusals`]): a refusal costs its caller no row of its own.
pub(super) fn denied(
    open: &Open,
    peer: &NodeId,
    call: &'static str,
    vault: Option<&str>,
    message: &str,
) -> ApiError {
    let rows = open
        .refusals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .note(*peer, call, vault, message, open.clock.now_ms());
    write_refusals(open, rows);
    ApiError::new(ErrorCode::Denied, message)
}

/// Writes the refusals counted so far when their interval has ended (or `now`).
pub(super) fn flush_refusals(open: &Open, now: bool) {
    let rows = {
        let mut refusals = open.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if now || refusals.due(open.clock.now_ms()) {
            refusals.take()
        } else {
            Vec::new()
        }
    };
    write_refusals(open, rows);
}

/// Writes aggregated refusals to the audit log, and the same rows to the log (so the log
/// is bounded as the audit log is: a row per node and call per minute).
fn write_refusals(open: &Open, rows: Vec<super::refusals::Row>) {
    if rows.is_empty() {
        return;
    }
    for row in &rows {
        let (first_ms, last_ms) = row.span_ms.unwrap_or_default();
        tracing::info!(
            target: PEER,
            event = "peer.denied",
            outcome = "refused",
            peer = row.node.map(tracing::field::display),
            call = row.call,
            vault = row.vault.as_deref(),
            count = row.count,
            first_ms,
            last_ms,
            reason = row.reason.as_str(),
            "refused {} {} call(s) from {}: {}",
            row.count,
            row.call,
            row.node.map(|n| n.to_string()).unwrap_or_else(|| "other nodes".into()),
            printable(&row.reason)
        );
    }
    let written = open.store.write().and_then(|mut tx| {
        for row in &rows {
            crate::audit::append(&mut tx, "peer.denied", row.audit_fields())?;
        }
        tx.commit()
    });
    if let Err(e) = written {
        tracing::warn!(
            target: PEER,
            error = %e,
            rows = rows.len(),
            "refused calls could not be written to the audit log"
        );
    }
}

async fn serve_call(
    open: Arc<Open>,
    net: Arc<PeerNet>,
    peer: NodeId,
    known: bool,
    max_call: usize,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let request = match read_call_within(&mut recv, max_call).await {
        Ok(request) => request,
        Err(e) => {
            let e = if known {
                tracing::debug!(
                    target: PEER,
                    outcome = "bad call",
                    error = e.message.as_str(),
                    "a call that could not be read"
                );
                e
            } else {
                // A stranger's call that does not even parse (or is over its size limit)
                // is a refusal like the others: counted, not recorded one by one.
                let open = open.clone();
                blocking(move || {
                    Ok(denied(
                        &open,
                        &peer,
                        "call",
                        None,
                        "this node does not know you: its owner must add your NodeId first",
                    ))
                })
                .await
                .unwrap_or_else(|e| e)
            };
            let _ = recv.stop(0u32.into());
            let _ = respond(&mut send, &PeerResponse::Err(e)).await;
            let _ = send.finish();
            return;
        }
    };
    let call = call_name(&request);
    tracing::Span::current().record("call", call);
    let answer = match request {
        PeerRequest::Fetch(fetch) => serve_fetch(open, &net, peer, fetch, &mut send).await,
        other => {
            // Blocking threads are shared by every caller: a bounded number of calls use
            // them at once, the others wait here without holding one.
            let Ok(_permit) = net.blocking_calls.acquire().await else {
                return;
            };
            let open = open.clone();
            blocking(move || serve_unary(&open, peer, other)).await
        }
    };
    if known {
        log_served(&answer);
    }
    let last = match answer {
        Ok(reply) => PeerResponse::Ok(reply),
        Err(e) => PeerResponse::Err(e),
    };
    let _ = respond(&mut send, &last).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
}

/// A served call's name, as logs and `peer.denied` rows give it.
fn call_name(request: &PeerRequest) -> &'static str {
    match request {
        PeerRequest::Ping => "ping",
        PeerRequest::FindNode(_) => "find",
        PeerRequest::Scan => "scan",
        PeerRequest::Notify(_) => "notify",
        PeerRequest::Fetch(f) if f.clone => "clone",
        PeerRequest::Fetch(_) => "pull",
        PeerRequest::Sigchain => "sigchain",
        PeerRequest::ClaimNode(_) | PeerRequest::ClaimNodeFinish(_) => "claim",
    }
}

/// Logs how a known node's call ended, inside its span (`peer`, `call`). A stranger's
/// calls are not logged one by one: they end in refusals, which reach the log aggregated
/// ([`write_refusals`]), or in a pong.
fn log_served(answer: &Result<PeerReply, ApiError>) {
    match answer {
        Ok(_) => tracing::debug!(target: PEER, outcome = "ok", "served"),
        Err(e) if e.code == ErrorCode::Denied => {
            tracing::debug!(target: PEER, outcome = "refused", reason = e.message.as_str(), "refused")
        }
        // Our own trouble (the store), not the caller's.
        Err(e) if matches!(e.code, ErrorCode::Internal | ErrorCode::Corrupt) => tracing::warn!(
            target: PEER,
            outcome = "failed",
            code = ?e.code,
            error = e.message.as_str(),
            "a peer call failed"
        ),
        Err(e) => tracing::debug!(
            target: PEER,
            outcome = "failed",
            code = ?e.code,
            error = e.message.as_str(),
            "a peer call failed"
        ),
    }
}

fn serve_unary(open: &Open, peer: NodeId, request: PeerRequest) -> Result<PeerReply, ApiError> {
    let nodes = Nodes::new(&open.store);
    let tx = open.store.read().map_err(store_error)?;
    match request {
        PeerRequest::Ping => Ok(PeerReply::Pong),
        PeerRequest::FindNode(target) => {
            if !nodes.known(&tx, &peer).map_err(store_error)? {
                return Err(denied(
                    open,
                    &peer,
                    "find",
                    None,
                    "this node does not know you",
                ));
            }
            Ok(PeerReply::Addresses(
                nodes
                    .get(&tx, &target)
                    .map_err(store_error)?
                    .map(|r| r.addrs)
                    .unwrap_or_default(),
            ))
        }
        PeerRequest::Scan => {
            if !nodes
                .node_may(&tx, &peer, NodePermission::Scan)
                .map_err(store_error)?
            {
                return Err(denied(
                    open,
                    &peer,
                    "scan",
                    None,
                    "you may not list this node's vaults (no scan permission)",
                ));
            }
            let v = vaults(open);
            let mut out = Vec::new();
            for share in nodes.shares_reaching(&tx, &peer).map_err(store_error)? {
                if let Ok(record) = v.find(Some(&share.vault), "") {
                    out.push(SharedVault {
                        id: share.vault,
                        name: record.name,
                        permissions: share.permissions.into_iter().collect(),
                    });
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(PeerReply::Vaults(out))
        }
        PeerRequest::Notify(body) => {
            if !nodes
                .node_may(&tx, &peer, NodePermission::Notify)
                .map_err(store_error)?
            {
                return Err(denied(
                    open,
                    &peer,
                    "notify",
                    None,
                    "this node does not take notifications from you (no notify permission)",
                ));
            }
            body.check()
                .map_err(|e| ApiError::new(ErrorCode::BadInput, e))?;
            drop(tx);
            Notifications::new(&open.store)
                .receive(peer, body)
                .map_err(store_error)?;
            Ok(PeerReply::Done)
        }
        PeerRequest::Sigchain => {
            // A sigchain names linked nodes and claimed identities: only for nodes this
            // one knows (directly or through their gestalt).
            if !nodes.known(&tx, &peer).map_err(store_error)? {
                return Err(denied(
                    open,
                    &peer,
                    "sigchain",
                    None,
                    "this node does not know you",
                ));
            }
            Ok(PeerReply::Claims(
                crate::sigchain::all(&tx).map_err(store_error)?,
            ))
        }
        PeerRequest::ClaimNode(token) => {
            drop(tx);
            super::trust::countersign(open, peer, token).map(|(countersigned, theirs)| {
                PeerReply::ClaimPair {
                    countersigned,
                    theirs,
                }
            })
        }
        PeerRequest::ClaimNodeFinish(token) => {
            drop(tx);
            super::trust::finish_claim(open, peer, token).map(|()| PeerReply::Done)
        }
        PeerRequest::Fetch(_) => Err(ApiError::new(ErrorCode::BadInput, "unexpected call")),
    }
}

/// Checks a fetch's permission; the vault's id and name.
fn fetch_allowed(open: &Open, peer: &NodeId, fetch: &FetchRequest) -> Result<VaultId, ApiError> {
    // As the caller names it: the name it knows, and the id when it has one.
    // Cut short: the name is the caller's, and neither the record nor the answer may be
    // as large as what it sent.
    let name = super::refusals::truncate(&fetch.name);
    let wanted = match fetch.vault {
        Some(id) if !fetch.name.is_empty() => format!("{name:?} ({id})"),
        Some(id) => id.to_string(),
        None => format!("{name:?}"),
    };
    let permission = if fetch.clone {
        VaultPermission::Clone
    } else {
        VaultPermission::Pull
    };
    // Who is asking comes first: a node this one does not know learns nothing, not even
    // whether a vault exists.
    let tx = open.store.read().map_err(store_error)?;
    let nodes = Nodes::new(&open.store);
    if !nodes.known(&tx, peer).map_err(store_error)? {
        return Err(denied(
            open,
            peer,
            permission.name(),
            Some(&wanted),
            "this node does not know you: its owner must add your NodeId first",
        ));
    }
    let refuse = || {
        denied(
            open,
            peer,
            permission.name(),
            Some(&wanted),
            &format!(
                "vault {wanted} is not shared with you for {} (or there is no such vault)",
                permission.name()
            ),
        )
    };
    let record = match vaults(open).find(fetch.vault.as_ref(), &fetch.name) {
        Ok(record) => record,
        Err(_) => return Err(refuse()),
    };
    if !nodes
        .vault_may(&tx, &record.id, peer, permission)
        .map_err(store_error)?
    {
        return Err(refuse());
    }
    Ok(record.id)
}

async fn serve_fetch(
    open: Arc<Open>,
    net: &PeerNet,
    peer: NodeId,
    fetch: FetchRequest,
    send: &mut quinn::SendStream,
) -> Result<PeerReply, ApiError> {
    // The fetch holds a blocking thread while it runs: one of the bounded few.
    let Ok(_permit) = net.blocking_calls.acquire().await else {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "this node is shutting down",
        ));
    };
    if fetch.received.len() > MAX_RECEIVED || fetch.haves.len() > MAX_HAVES {
        return Err(ApiError::new(
            ErrorCode::BadInput,
            format!(
                "a fetch names at most {MAX_HAVES} commits had and {MAX_RECEIVED} objects received"
            ),
        ));
    }
    let vault = {
        let open = open.clone();
        let fetch = fetch.clone();
        blocking(move || {
            let vault = fetch_allowed(&open, &peer, &fetch)?;
            // A pull starts from a commit the caller has; with none, it would be a clone,
            // which `pull` alone does not allow.
            if !fetch.clone
                && !vaults(&open)
                    .knows_any(&vault, &fetch.haves)
                    .map_err(vault_error)?
            {
                return Err(denied(
                    &open,
                    &peer,
                    "pull",
                    None,
                    "a pull must name a commit of the vault you have (a first copy is a clone)",
                ));
            }
            Ok(vault)
        })
        .await?
    };
    // Frames are encoded on the blocking thread in batches of about 64 KiB; this task
    // only writes bytes.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Zeroizing<Vec<u8>>>(8);
    let worker = {
        let open = open.clone();
        tokio::task::spawn_blocking(move || {
            let v = vaults(&open);
            let mut batch = Zeroizing::new(Vec::with_capacity(SEND_BATCH + 1024));
            let mut out = |item: Outgoing<'_>| {
                let frame = match item {
                    Outgoing::Begin(b) => PeerResponse::Begin(b),
                    Outgoing::Object(o) => PeerResponse::Object(o),
                    Outgoing::Chunk(c) => PeerResponse::Chunk(SecretBytes(c.to_vec())),
                };
                encode_frame(&frame, &mut batch).map_err(|_| VaultError::Interrupted)?;
                if batch.len() >= SEND_BATCH {
                    let full = std::mem::replace(
                        &mut batch,
                        Zeroizing::new(Vec::with_capacity(SEND_BATCH + 1024)),
                    );
                    tx.blocking_send(full)
                        .map_err(|_| VaultError::Interrupted)?;
                }
                Ok(())
            };
            let sent = v.send(&vault, &fetch.haves, &fetch.received, &mut out);
            if !batch.is_empty() && tx.blocking_send(batch).is_err() {
                return Err(VaultError::Interrupted);
            }
            if sent.is_ok() {
                tracing::info!(
                    target: PEER,
                    event = "vault.served",
                    outcome = "ok",
                    %peer,
                    vault = super::refusals::truncate(&fetch.name),
                    vault_id = %vault,
                    clone = fetch.clone,
                    "served a {} of vault {vault}",
                    if fetch.clone { "clone" } else { "pull" }
                );
                if let Err(e) = open.record(
                    "vault.served",
                    json!({ "id": vault, "node": peer, "clone": fetch.clone }),
                ) {
                    tracing::warn!(
                        target: PEER,
                        %peer,
                        vault_id = %vault,
                        error = e.message.as_str(),
                        "a served transfer could not be written to the audit log"
                    );
                }
            }
            sent
        })
    };
    let mut write_failed = None;
    while let Some(bytes) = rx.recv().await {
        if let Err(e) = send.write_all(&bytes).await {
            // The caller went away or cancelled: stop the worker.
            write_failed = Some(e);
            break;
        }
    }
    drop(rx);
    let result = worker.await.map_err(lost)?;
    if let Some(e) = write_failed {
        return Err(ApiError::new(ErrorCode::Unavailable, e.to_string()));
    }
    result.map_err(vault_error)?;
    Ok(PeerReply::Done)
}

// ---------------------------------------------------------------------------------------
// Calling other nodes

/// A connection to `node`: the pooled one, or a new one to an address from the graph (or
/// `addr`). Fails unless the peer proves it is `node`.
async fn dial(open: &Arc<Open>, node: NodeId, addr: Option<&str>) -> Result<Connection, ApiError> {
    let net = net_of(open)?;
    let gate = net
        .dialing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(node)
        .or_default()
        .clone();
    let _dialing = gate.lock().await;
    if addr.is_none()
        && let Some(pooled) = net
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&node)
        && !pooled.conn.is_closed()
    {
        pooled.last_used = Instant::now();
        return Ok(pooled.conn.clone());
    }
    let addrs: Vec<String> = match addr {
        Some(addr) => vec![addr.to_owned()],
        None => {
            let open = open.clone();
            let record = blocking(move || {
                let tx = open.store.read().map_err(store_error)?;
                Nodes::new(&open.store).get(&tx, &node).map_err(store_error)
            })
            .await?;
            match record {
                Some(r) if !r.addrs.is_empty() => r.addrs,
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::NotFound,
                        format!(
                            "no address known for {node}: add it with `pk nodes add {node} <host> <port>`"
                        ),
                    ));
                }
            }
        }
    };
    let mut errors = Vec::new();
    for text in &addrs {
        let resolved: Vec<SocketAddr> = match tokio::net::lookup_host(text.as_str()).await {
            Ok(found) => found.collect(),
            Err(e) => {
                errors.push(format!("{text}: {e}"));
                continue;
            }
        };
        for sock in resolved {
            match tokio::time::timeout(DIAL_DEADLINE, net.endpoint.connect(sock, node)).await {
                Ok(Ok(conn)) => {
                    if conn.peer() != node {
                        // It renewed its key; the handshake proved the chain to `node`.
                        let open = open.clone();
                        let (peer, earlier) = (conn.peer(), conn.earlier_ids().to_vec());
                        blocking(move || {
                            Nodes::new(&open.store)
                                .renamed(peer, &earlier)
                                .map_err(store_error)
                        })
                        .await?;
                    }
                    net.pool.lock().unwrap_or_else(|p| p.into_inner()).insert(
                        node,
                        Pooled {
                            conn: conn.clone(),
                            since: Instant::now(),
                            last_used: Instant::now(),
                        },
                    );
                    let open = open.clone();
                    let text = text.clone();
                    let _ = blocking(move || {
                        Nodes::new(&open.store)
                            .seen(&node, Some(&text))
                            .map_err(store_error)
                    })
                    .await;
                    return Ok(conn);
                }
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(_) => errors.push(format!(
                    "{node} at {sock}: no answer within {} s",
                    DIAL_DEADLINE.as_secs()
                )),
            }
        }
    }
    let denied = errors.iter().any(|e| e.contains("another node"));
    Err(ApiError::new(
        if denied {
            ErrorCode::Denied
        } else {
            ErrorCode::Unavailable
        },
        errors.join("; "),
    ))
}

/// The error for `pk`; a connection that broke or went silent leaves the pool, so the
/// next call dials afresh instead of waiting on a dead peer.
fn failed(open: &Open, e: PeerError) -> ApiError {
    if let PeerError::Connection { node, .. } | PeerError::Timeout { node, .. } = &e
        && let Some(net) = open.net.get()
        && let Some(pooled) = net
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node)
    {
        pooled.conn.close("broken");
    }
    e.to_api()
}

/// Closes the pooled connection to `node`, if any (the node is being removed).
pub(super) fn forget(open: &Open, node: &NodeId) {
    if let Some(net) = open.net.get()
        && let Some(p) = net
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node)
    {
        p.conn.close("removed");
    }
}

/// The vaults `node` shares with this one.
pub(super) async fn scan(open: &Arc<Open>, node: &str) -> Result<Vec<SharedVault>, ApiError> {
    let node = node_id(node)?;
    match call_peer(open, node, PeerRequest::Scan).await?.1 {
        PeerReply::Vaults(list) => Ok(list),
        _ => Err(lost("an unexpected answer")),
    }
}

/// Adds a node to the graph (after a ping, unless asked not to).
pub(super) async fn nodes_add(
    open: &Arc<Open>,
    Add {
        node,
        addr,
        no_notify,
        no_ping,
    }: Add,
) -> Result<NodeRecord, ApiError> {
    let node = node_id(&node)?;
    if node == open.identity().node_id() {
        return Err(ApiError::new(
            ErrorCode::BadInput,
            "that is this node's own NodeId",
        ));
    }
    if addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none_or(|p| p == 0)
    {
        return Err(ApiError::new(
            ErrorCode::BadInput,
            format!("{addr:?} is not host:port with a port from 1 to 65535"),
        ));
    }
    if !no_ping {
        // Proves the node is there and is the node named, before anything is saved.
        let conn = dial(open, node, Some(&addr)).await?;
        unary(&conn, PeerRequest::Ping)
            .await
            .map_err(|e| failed(open, e))?;
    }
    let permissions: BTreeSet<NodePermission> = if no_notify {
        BTreeSet::new()
    } else {
        BTreeSet::from([NodePermission::Notify])
    };
    let open = open.clone();
    blocking(move || {
        let nodes = Nodes::new(&open.store);
        nodes.add(node, &addr, permissions).map_err(store_error)?;
        if !no_ping {
            nodes.seen(&node, Some(&addr)).map_err(store_error)?;
        }
        let tx = open.store.read().map_err(store_error)?;
        let record = nodes
            .get(&tx, &node)
            .map_err(store_error)?
            .ok_or_else(|| lost("the node vanished from the graph"))?;
        Ok(record)
    })
    .await
}

/// One unary call to `node` over the pooled connection; when that connection turns out
/// to be dead (the peer restarted), a fresh one is dialled and the call made once more.
pub(super) async fn call_peer(
    open: &Arc<Open>,
    node: NodeId,
    request: PeerRequest,
) -> Result<(Connection, PeerReply), ApiError> {
    let conn = dial(open, node, None).await?;
    match unary(&conn, request.clone()).await {
        Ok(reply) => Ok((conn, reply)),
        Err(e @ PeerError::Connection { .. }) => {
            failed(open, e);
            let conn = dial(open, node, None).await?;
            let reply = unary(&conn, request).await.map_err(|e| failed(open, e))?;
            Ok((conn, reply))
        }
        Err(e) => Err(failed(open, e)),
    }
}

pub(super) async fn ping(open: &Arc<Open>, node: &str) -> Result<Pong, ApiError> {
    let node = node_id(node)?;
    let started = Instant::now();
    let (conn, _) = call_peer(open, node, PeerRequest::Ping).await?;
    let rtt = started.elapsed();
    {
        let open = open.clone();
        let _ = blocking(move || {
            Nodes::new(&open.store)
                .seen(&node, None)
                .map_err(store_error)
        })
        .await;
    }
    Ok(Pong {
        node: node.to_string(),
        addr: conn.remote_address().to_string(),
        rtt_ms: rtt.as_millis() as u64,
    })
}

pub(super) async fn find(open: &Arc<Open>, node: &str) -> Result<Vec<String>, ApiError> {
    let target = node_id(node)?;
    let known = {
        let open = open.clone();
        blocking(move || {
            let tx = open.store.read().map_err(store_error)?;
            Nodes::new(&open.store).all(&tx).map_err(store_error)
        })
        .await?
    };
    if let Some(record) = known.iter().find(|r| r.node_id == target)
        && !record.addrs.is_empty()
    {
        return Ok(record.addrs.clone());
    }
    // Ask the nodes this one knows.
    let mut found: Vec<String> = Vec::new();
    for record in known.iter().filter(|r| r.node_id != target) {
        if let Ok((_, PeerReply::Addresses(addrs))) =
            call_peer(open, record.node_id, PeerRequest::FindNode(target)).await
        {
            for a in addrs {
                if !found.contains(&a) {
                    found.push(a);
                }
            }
        }
    }
    if found.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no node this one knows has an address for {target}"),
        ));
    }
    Ok(found)
}

pub(super) fn connections(open: &Arc<Open>) -> Result<Vec<ConnectionInfo>, ApiError> {
    let net = net_of(open)?;
    let mut out = Vec::new();
    for (node, p) in net.pool.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        if p.conn.is_closed() {
            continue;
        }
        out.push(ConnectionInfo {
            node: node.to_string(),
            addr: p.conn.remote_address().to_string(),
            direction: Direction::Outgoing,
            age_s: p.since.elapsed().as_secs(),
            rtt_ms: p.conn.rtt().as_millis() as u64,
        });
    }
    for (node, addr, since, conn) in net
        .incoming
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
    {
        if conn.is_closed() {
            continue;
        }
        out.push(ConnectionInfo {
            node: node.to_string(),
            addr: addr.to_string(),
            direction: Direction::Incoming,
            age_s: since.elapsed().as_secs(),
            rtt_ms: conn.rtt().as_millis() as u64,
        });
    }
    out.sort_by(|a, b| (&a.node, &a.direction).cmp(&(&b.node, &b.direction)));
    Ok(out)
}

pub(super) async fn share(
    open: &Arc<Open>,
    vault: String,
    who: &str,
    permissions: Vec<VaultPermission>,
    grant: bool,
) -> Result<Vec<Share>, ApiError> {
    let vertex: Vertex = who.parse().map_err(|e: crate::gestalt::BadVertex| {
        ApiError::new(ErrorCode::BadInput, e.to_string())
    })?;
    let (record, share, notify) = {
        let open = open.clone();
        let permissions = permissions.clone();
        blocking(move || {
            let record = vaults(&open).find(None, &vault).map_err(vault_error)?;
            let nodes = Nodes::new(&open.store);
            let gestalts = Gestalts::new(&open.store);
            let tx = open.store.read().map_err(store_error)?;
            let known = match &vertex {
                Vertex::Node(node) => nodes.get(&tx, node).map_err(store_error)?.is_some(),
                identity => {
                    gestalts.identity(&tx, identity).map_err(store_error)?.is_some()
                        || gestalts.component(&tx, identity).map_err(store_error)?.len() > 1
                }
            };
            if !known {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    match &vertex {
                        Vertex::Node(node) => format!(
                            "{node} is not in the node graph: add it with `pk nodes add` first"
                        ),
                        identity => format!(
                            "{identity} is not known here: trust or discover it first (pk identities trust {identity})"
                        ),
                    },
                ));
            }
            // Every node of the gestalt this node can reach hears of the share.
            let mut notify = Vec::new();
            for v in gestalts.component(&tx, &vertex).map_err(store_error)? {
                if let Vertex::Node(node) = v
                    && nodes.get(&tx, &node).map_err(store_error)?.is_some()
                    && node != open.identity().node_id()
                {
                    notify.push(node);
                }
            }
            drop(tx);
            let share = nodes
                .set_share(&record.id, &record.name, &vertex, &permissions, grant)
                .map_err(store_error)?;
            Ok((record, share, notify))
        })
        .await?
    };
    if grant {
        let body = Body::VaultShare {
            vault: record.id,
            name: record.name.clone(),
            permissions: share
                .as_ref()
                .map(|s| s.permissions.iter().copied().collect())
                .unwrap_or_default(),
        };
        // The notifications go through the outbox: delivered now or retried later.
        for node in notify {
            if let Err(e) = send_notification(open, node, body.clone()).await {
                tracing::debug!(
                    target: NOTIFY,
                    peer = %node,
                    error = e.message.as_str(),
                    "share notification not sent"
                );
            }
        }
    }
    Ok(share.into_iter().collect())
}

/// Queues a notification and tries to deliver it at once.
pub(super) async fn send_notification(
    open: &Arc<Open>,
    node: NodeId,
    body: Body,
) -> Result<Queued, ApiError> {
    let queued = {
        let open = open.clone();
        blocking(move || {
            let tx = open.store.read().map_err(store_error)?;
            if Nodes::new(&open.store)
                .get(&tx, &node)
                .map_err(store_error)?
                .is_none()
            {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("{node} is not in the node graph: add it with `pk nodes add` first"),
                ));
            }
            drop(tx);
            Notifications::new(&open.store)
                .queue(node, body)
                .map_err(store_error)
        })
        .await?
    };
    let delivered = deliver(open, queued.id, node, queued.body.clone()).await;
    let notification = {
        let open = open.clone();
        let id = queued.id;
        blocking(move || {
            Ok(Notifications::new(&open.store)
                .list(Mailbox::Outbox)
                .map_err(store_error)?
                .into_iter()
                .find(|n| n.id == id))
        })
        .await?
        .unwrap_or(queued)
    };
    if let Some(Delivery::Refused { reason }) = &notification.delivery {
        return Err(ApiError::new(ErrorCode::Denied, reason.clone()));
    }
    Ok(Queued {
        notification,
        delivered,
    })
}

/// One delivery attempt of outbox entry `id`; records the outcome.
async fn deliver(open: &Arc<Open>, id: u64, node: NodeId, body: Body) -> bool {
    if let Some(net) = open.net.get()
        && !net
            .delivering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
    {
        return false;
    }
    let outcome = match call_peer(open, node, PeerRequest::Notify(body)).await {
        Ok(_) => Ok(()),
        // Refused by the peer, or a node no longer in the graph: retrying cannot help.
        Err(e) if e.code == ErrorCode::Denied || e.code == ErrorCode::NotFound => {
            Err((true, e.message))
        }
        Err(e) => Err((false, e.message)),
    };
    if let Some(net) = open.net.get() {
        net.delivering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
    match &outcome {
        Ok(()) => tracing::info!(
            target: NOTIFY,
            event = "notification.delivered",
            outcome = "ok",
            peer = %node,
            id,
            "notification {id} delivered"
        ),
        Err((true, reason)) => tracing::warn!(
            target: NOTIFY,
            outcome = "refused",
            peer = %node,
            id,
            reason = reason.as_str(),
            "notification {id} refused; it will not be retried"
        ),
        Err((false, error)) => tracing::info!(
            target: NOTIFY,
            outcome = "failed",
            peer = %node,
            id,
            error = error.as_str(),
            "notification {id} not delivered; it will be retried"
        ),
    }
    let ok = outcome.is_ok();
    let open = open.clone();
    if let Err(e) = blocking(move || {
        Notifications::new(&open.store)
            .with_clock(open.clock.clone())
            .delivered(id, outcome)
            .map_err(store_error)
    })
    .await
    {
        tracing::warn!(
            target: NOTIFY,
            peer = %node,
            id,
            error = e.message.as_str(),
            "a delivery attempt could not be recorded in the outbox"
        );
    }
    ok
}

/// How a fetch's receiving side ended, short of success.
enum FetchFailed {
    /// Our checks refused what arrived.
    Vault(VaultError),
    /// The peer answered with an error.
    Peer(ApiError),
    /// The stream ended early; what arrived was kept.
    Interrupted,
}

impl From<VaultError> for FetchFailed {
    fn from(e: VaultError) -> Self {
        FetchFailed::Vault(e)
    }
}

/// An open fetch: the connection, its byte counts before, the call, and `Begin`.
type OpenFetch = (Connection, (u64, u64), CallStream, crate::vault::Fetched);

/// Opens a fetch: dials (or reuses the connection), sends the request, reads `Begin`.
/// Errors are ours (`Ok`) or the peer's and the connection's (`Err`).
async fn open_fetch(
    open: &Arc<Open>,
    node: NodeId,
    request: &FetchRequest,
) -> Result<OpenFetch, Result<ApiError, PeerError>> {
    let conn = dial(open, node, None).await.map_err(Ok)?;
    let wire_before = conn.wire_bytes();
    let mut call = CallStream::open(&conn, PeerRequest::Fetch(request.clone()))
        .await
        .map_err(Err)?;
    match call.next(IDLE_DEADLINE).await.map_err(Err)? {
        PeerResponse::Begin(begin) => Ok((conn, wire_before, call, begin)),
        PeerResponse::Err(error) => Err(Err(PeerError::Refused { node, error })),
        _ => Err(Err(PeerError::Protocol {
            node,
            reason: "the peer answered a fetch with something else".into(),
        })),
    }
}

/// Fetches a vault from `node`: the QUIC stream's bytes go, in large reads, to a blocking
/// thread that decodes the frames and hands the objects to a [`crate::vault::Receiver`].
async fn fetch(
    open: &Arc<Open>,
    node: NodeId,
    request: FetchRequest,
    clone_as: Option<Option<String>>,
) -> Result<FetchOutcome, ApiError> {
    let (conn, wire_before, mut call, begin) = match open_fetch(open, node, &request).await {
        // A pooled connection the peer no longer knows (it restarted): once more, afresh.
        Err(Err(e @ PeerError::Connection { .. })) => {
            failed(open, e);
            open_fetch(open, node, &request).await
        }
        other => other,
    }
    .map_err(|e| match e {
        Ok(local) => local,
        Err(e) => failed(open, e),
    })?;
    // The serving node names the vault it sends; the objects are stored under that id. It
    // must be the vault that was asked for, or a node allowed to serve us vault A could
    // move (or merge its secrets into) our vault B.
    if let Some(asked) = request.vault
        && begin.vault != asked
    {
        call.cancel();
        return Err(failed(
            open,
            PeerError::Protocol {
                node,
                reason: format!(
                    "asked for vault {asked}, it answered with vault {}; nothing was stored",
                    begin.vault
                ),
            },
        ));
    }
    let clone_name = clone_as.map(|name| name.unwrap_or_else(|| begin.name.clone()));
    // `Some(bytes)` as read; `None` once the stream has ended cleanly.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(64);
    let worker = {
        let open = open.clone();
        let begin = begin.clone();
        tokio::task::spawn_blocking(move || -> Result<FetchOutcome, FetchFailed> {
            let v = vaults(&open);
            let mut receiver =
                v.receiver_with(node, &begin, clone_name.as_deref(), open.transfer_limits)?;
            let mut frames = FrameBuffer::default();
            let mut next = || -> Result<Option<PeerResponse>, VaultError> {
                loop {
                    if let Some(frame) = frames
                        .next(MAX_RESPONSE)
                        .map_err(|e| VaultError::Refused(e.to_string()))?
                    {
                        return Ok(Some(frame));
                    }
                    match rx.blocking_recv() {
                        Some(Some(bytes)) => frames.push(&bytes),
                        Some(None) | None => return Ok(None),
                    }
                }
            };
            loop {
                match next()? {
                    Some(PeerResponse::Object(object)) => {
                        let mut chunks = std::iter::from_fn(|| match next() {
                            Ok(Some(PeerResponse::Chunk(bytes))) => Some(Ok(bytes.take())),
                            Ok(_) => Some(Err(VaultError::Interrupted)),
                            Err(e) => Some(Err(e)),
                        });
                        match receiver.object(object, &mut chunks) {
                            Ok(()) => {}
                            Err(VaultError::Interrupted) => {
                                receiver.save()?;
                                return Err(FetchFailed::Interrupted);
                            }
                            Err(e @ VaultError::Refused(_)) => {
                                // What a refused transfer brought is not kept.
                                let _ = receiver.abandon();
                                return Err(e.into());
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Some(PeerResponse::Ok(_)) => return Ok(receiver.finish(&begin.tip)?),
                    Some(PeerResponse::Err(error)) => {
                        receiver.save()?;
                        return Err(FetchFailed::Peer(error));
                    }
                    Some(_) => {
                        let _ = receiver.abandon();
                        return Err(
                            VaultError::Refused("an unexpected message in a fetch".into()).into(),
                        );
                    }
                    None => {
                        receiver.save()?;
                        return Err(FetchFailed::Interrupted);
                    }
                }
            }
        })
    };
    let mut broken: Option<ApiError> = None;
    loop {
        match call.read_raw(IDLE_DEADLINE).await {
            Ok(Some(bytes)) => {
                if tx.send(Some(bytes)).await.is_err() {
                    // The receiver refused something: stop the sender too.
                    call.cancel();
                    break;
                }
            }
            Ok(None) => {
                let _ = tx.send(None).await;
                break;
            }
            Err(e) => {
                broken = Some(failed(open, e));
                break;
            }
        }
    }
    drop(tx);
    match worker.await.map_err(lost)? {
        Ok(mut outcome) => {
            let after = conn.wire_bytes();
            outcome.wire_bytes = (after.0 - wire_before.0) + (after.1 - wire_before.1);
            Ok(outcome)
        }
        Err(FetchFailed::Interrupted) => {
            let why = broken
                .map(|e| e.message)
                .unwrap_or_else(|| "the peer ended the transfer early".into());
            Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "the transfer from {node} did not finish ({why}); what arrived is kept: run the same command again to resume"
                ),
            ))
        }
        Err(FetchFailed::Peer(error)) => Err(PeerError::Refused { node, error }.to_api()),
        Err(FetchFailed::Vault(e)) => Err(vault_error(e)),
    }
}

pub(super) async fn clone(
    open: &Arc<Open>,
    node: NodeId,
    vault: &str,
    name: Option<String>,
) -> Result<FetchOutcome, ApiError> {
    let span = tracing::info_span!(
        target: SYNC,
        "clone",
        peer = %node,
        vault = super::refusals::truncate(vault)
    );
    let result = clone_from(open, node, vault, name)
        .instrument(span.clone())
        .await;
    span.in_scope(|| log_fetched("clone", &result));
    result
}

/// How an outgoing clone or pull ended, inside its span (`peer`, `vault`). Failures are
/// at INFO: `pk` reports them to whoever asked; the scheduler adds its own warning.
fn log_fetched(kind: &'static str, result: &Result<FetchOutcome, ApiError>) {
    match result {
        Ok(o) if o.result == "up to date" => {
            tracing::debug!(target: SYNC, outcome = o.result, "{kind}: up to date")
        }
        Ok(o) => tracing::info!(
            target: SYNC,
            event = if kind == "clone" { "vault.cloned" } else { "vault.pulled" },
            outcome = o.result,
            local = o.vault,
            objects = o.objects,
            bytes = o.bytes,
            resumed = o.resumed,
            conflicts = o.conflicts.len(),
            wire_bytes = o.wire_bytes,
            "{kind}: {}",
            o.result
        ),
        // A failed pull is on the vault's record as `vault.pull_failed`; a failed clone
        // leaves no vault to hold it.
        Err(e) if kind == "pull" => tracing::info!(
            target: SYNC,
            event = "vault.pull_failed",
            outcome = "failed",
            code = ?e.code,
            error = e.message.as_str(),
            "pull failed: {}",
            printable(&e.message)
        ),
        Err(e) => tracing::info!(
            target: SYNC,
            outcome = "failed",
            code = ?e.code,
            error = e.message.as_str(),
            "{kind} failed: {}",
            printable(&e.message)
        ),
    }
}

async fn clone_from(
    open: &Arc<Open>,
    node: NodeId,
    vault: &str,
    name: Option<String>,
) -> Result<FetchOutcome, ApiError> {
    let resume = {
        let open = open.clone();
        let vault = vault.to_owned();
        blocking(move || {
            vaults(&open)
                .clone_resume(&node, &vault)
                .map_err(vault_error)
        })
        .await?
    };
    let by_id: Option<VaultId> = vault.parse().ok();
    let request = FetchRequest {
        vault: resume.as_ref().map(|(id, _)| *id).or(by_id),
        name: vault.to_owned(),
        clone: true,
        haves: Vec::new(),
        received: resume
            .map(|(_, received)| received.into_iter().take(MAX_RECEIVED).collect())
            .unwrap_or_default(),
    };
    fetch(open, node, request, Some(name)).await
}

pub(super) async fn pull(
    open: &Arc<Open>,
    vault: &str,
    node: Option<NodeId>,
) -> Result<FetchOutcome, ApiError> {
    // The peer is recorded once known (the vault's origin when none is named).
    let span = tracing::info_span!(
        target: SYNC,
        "pull",
        peer = node.map(tracing::field::display),
        vault = super::refusals::truncate(vault)
    );
    let result = pull_from(open, vault, node).instrument(span.clone()).await;
    span.in_scope(|| log_fetched("pull", &result));
    result
}

async fn pull_from(
    open: &Arc<Open>,
    vault: &str,
    node: Option<NodeId>,
) -> Result<FetchOutcome, ApiError> {
    let named = node.is_some();
    let name = vault.to_owned();
    let plan = {
        let open = open.clone();
        blocking(move || {
            let record = vaults(&open).find(None, &name).map_err(vault_error)?;
            let node = match node.or(record.sync.origin) {
                Some(node) => node,
                None => {
                    return Err(ApiError::new(
                        ErrorCode::BadInput,
                        format!("vault {name:?} was not cloned from a node: name one to pull from"),
                    ));
                }
            };
            let plan = vaults(&open)
                .pull_request(&name, &node)
                .map_err(vault_error)?;
            Ok((plan.record, node, plan.haves, plan.received))
        })
        .await?
    };
    let (record, node, haves, received) = plan;
    if !named {
        tracing::Span::current().record("peer", tracing::field::display(node));
    }
    let request = FetchRequest {
        vault: Some(record.id),
        name: record.name.clone(),
        clone: false,
        haves,
        received: received.into_iter().take(MAX_RECEIVED).collect(),
    };
    let result = fetch(open, node, request, None).await;
    if let Err(e) = &result {
        let open = open.clone();
        let message = e.message.clone();
        let name = record.name.clone();
        if let Err(e) = blocking(move || {
            vaults(&open)
                .note_pull(
                    &name,
                    PullOutcome {
                        node: node.to_string(),
                        time: open.clock.now_s(),
                        ok: false,
                        message,
                    },
                )
                .map_err(vault_error)
        })
        .await
        {
            tracing::warn!(
                target: SYNC,
                error = e.message.as_str(),
                "the failed pull could not be recorded with the vault"
            );
        }
    }
    result
}

// ---------------------------------------------------------------------------------------
// Scheduled pulls

pub(super) fn backup_key(open: &Open, name: &str) -> Vec<u8> {
    let mut key = BACKUP.to_vec();
    key.extend_from_slice(&open.store.name_hash("backup", &[name.as_bytes()]));
    key
}

pub(super) fn save_backup(open: &Open, backup: &Backup, event: &str) -> Result<(), ApiError> {
    let mut tx = open.store.write().map_err(store_error)?;
    let bytes = serde_json::to_vec(backup).expect("a backup always serialises");
    tx.put(Table::Sync, &backup_key(open, &backup.name), &bytes)
        .map_err(store_error)?;
    if !event.is_empty() {
        crate::audit::append(
            &mut tx,
            event,
            json!({ "vault": backup.name, "node": backup.node, "every_s": backup.every_s }),
        )
        .map_err(store_error)?;
    }
    tx.commit().map_err(store_error)
}

pub(super) fn backups(open: &Open) -> Result<Vec<Backup>, ApiError> {
    let tx = open.store.read().map_err(store_error)?;
    let mut out = Vec::new();
    for (key, value) in tx
        .range(Table::Sync, BACKUP, usize::MAX, false)
        .map_err(store_error)?
    {
        if !key.starts_with(BACKUP) {
            break;
        }
        if let Ok(backup) = serde_json::from_slice::<Backup>(&value) {
            out.push(backup);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn run_backup(open: &Arc<Open>, backup: Backup) {
    let span = tracing::info_span!(
        target: SYNC,
        "scheduled_pull",
        vault = backup.name,
        peer = %backup.node,
        every_s = backup.every_s
    );
    run_backup_in(open, backup).instrument(span).await
}

async fn run_backup_in(open: &Arc<Open>, mut backup: Backup) {
    let result = async {
        let node = node_id(&backup.node)?;
        let exists = {
            let open = open.clone();
            let name = backup.name.clone();
            blocking(move || Ok(vaults(&open).find(None, &name).is_ok())).await?
        };
        if exists {
            pull(open, &backup.name, Some(node)).await
        } else {
            clone(open, node, &backup.vault, Some(backup.name.clone())).await
        }
    }
    .await;
    let summary = match &result {
        Ok(outcome) => Ok(outcome.result.as_str()),
        Err(e) => Err(e.message.as_str()),
    };
    schedule::ran(&mut backup, summary, open.clock.now_ms());
    if let Err(e) = &result {
        // Nobody is at a terminal to see it: this line is how the operator learns.
        tracing::warn!(
            target: SYNC,
            outcome = "failed",
            code = ?e.code,
            error = e.message.as_str(),
            next_in_s = backup.every_s,
            "scheduled pull failed: {}",
            printable(&e.message)
        );
    }
    let open = open.clone();
    if let Err(e) = blocking(move || save_backup(&open, &backup, "")).await {
        // The next run time is not saved either: the pull is tried again at the next tick.
        tracing::warn!(
            target: SYNC,
            error = e.message.as_str(),
            "the scheduled pull's outcome could not be saved"
        );
    }
}

/// The shortest and longest time between scheduled pulls.
pub(super) const MIN_BACKUP_INTERVAL_S: u64 = 10;
pub(super) const MAX_BACKUP_INTERVAL_S: u64 = 366 * 24 * 3600;

/// Delivers pending notifications, runs due pulls, and closes idle connections.
async fn background(open: Arc<Open>, net: Arc<PeerNet>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut deliveries = tokio::task::JoinSet::new();
    let mut ticks: u64 = 0;
    // The store failing to answer would fail every tick: one line a minute says so.
    let mut trouble = super::refusals::LogGate::default();
    let mut unread = |what: &str, e: &ApiError| {
        if let Some(held) = trouble.pass(open.clock.now_ms()) {
            tracing::warn!(
                target: SYNC,
                error = e.message.as_str(),
                more = held,
                "the background work cannot read {what}; it tries again every second"
            );
        }
    };
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(10) {
            // Discovery in the background: one queued vertex at a time, a few attempts.
            let queued = {
                let open = open.clone();
                blocking(move || {
                    let tx = open.store.read().map_err(store_error)?;
                    crate::gestalt::Gestalts::new(&open.store)
                        .queue(&tx)
                        .map_err(store_error)
                })
                .await
            };
            let queued = queued.unwrap_or_else(|e| {
                unread("the discovery queue", &e);
                Vec::new()
            });
            if let Some(q) = queued.into_iter().find(|q| q.attempts < 10) {
                // In its own task (stopped with the others by a lock): an unreachable
                // node does not hold up deliveries and scheduled pulls.
                let open = open.clone();
                deliveries.spawn(async move {
                    let vertex = q.vertex.to_string();
                    if let Err(e) = super::trust::discover(&open, q.vertex).await {
                        // Queued again with one more attempt; not worth more than DEBUG.
                        tracing::debug!(
                            target: SYNC,
                            vertex,
                            attempts = q.attempts + 1,
                            error = e.message.as_str(),
                            "background discovery failed"
                        );
                    }
                    false
                });
            }
        }
        let due = {
            let open = open.clone();
            blocking(move || {
                Notifications::new(&open.store)
                    .with_clock(open.clock.clone())
                    .due()
                    .map_err(store_error)
            })
            .await
        };
        let due = due.unwrap_or_else(|e| {
            unread("the notification outbox", &e);
            Vec::new()
        });
        for n in due {
            // Each in its own task: one unreachable node does not hold up the others.
            // They live in this task's set, so locking the agent stops them too.
            let open = open.clone();
            deliveries.spawn(async move { deliver(&open, n.id, n.peer, n.body).await });
        }
        while deliveries.try_join_next().is_some() {}
        {
            let open = open.clone();
            let _ = blocking(move || {
                flush_refusals(&open, false);
                Ok(())
            })
            .await;
        }
        let now = open.clock.now_ms();
        let list = {
            let open = open.clone();
            blocking(move || backups(&open)).await
        };
        let list = list.unwrap_or_else(|e| {
            unread("the scheduled pulls", &e);
            Vec::new()
        });
        for backup in list {
            if schedule::due(&backup, now) {
                run_backup(&open, backup).await;
            }
        }
        net.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, p| {
                let keep = !p.conn.is_closed() && p.last_used.elapsed() < IDLE_CLOSE;
                if !keep {
                    p.conn.close("idle");
                }
                keep
            });
    }
}
