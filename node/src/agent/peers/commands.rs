//! The calls `pk` asks the agent to make on other nodes, and what they store here: add a
//! node (after a ping), ping, find, the open connections, scan, share (and tell the
//! gestalt), send a notification (queued, then one delivery attempt: [`deliver`]), clone
//! and pull (the receiving side of a fetch), and where scheduled pulls are kept.
//!
//! May depend on the pool (`super::pool`) and the agent's root; not on the serving layer,
//! the background loop or `trust`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tracing::Instrument as _;

use super::pool::{call_peer, dial, failed, net_of};
use crate::agent::{Open, blocking, lost, node_id, refusals, store_error, vault_error, vaults};
use crate::api::backups::Backup;
use crate::api::nodes::{Add, ConnectionInfo, Pong};
use crate::api::notifications::Queued;
use crate::api::{ApiError, ErrorCode};
use crate::gestalt::{Gestalts, Vertex};
use crate::identity::NodeId;
use crate::logging::{NOTIFY, SYNC, printable};
use crate::net::Connection;
use crate::nodes::{NodePermission, NodeRecord, Nodes, Share, VaultPermission};
use crate::notifications::{Body, Delivery, Mailbox, Notifications};
use crate::peer::{
    CallStream, FetchRequest, IDLE_DEADLINE, MAX_RECEIVED, MAX_RESPONSE, PeerError, PeerReply,
    PeerRequest, PeerResponse, SharedVault, unary,
};
use crate::rpc::FrameBuffer;
use crate::store::{Read as _, Table};
use crate::vault::{FetchOutcome, PullOutcome, VaultError, VaultId};

/// Key prefix of scheduled pulls in the `sync` table.
const BACKUP: &[u8] = b"bk:";

/// The shortest time between scheduled pulls.
pub(in crate::agent) const MIN_BACKUP_INTERVAL_S: u64 = 10;
/// The longest time between scheduled pulls.
pub(in crate::agent) const MAX_BACKUP_INTERVAL_S: u64 = 366 * 24 * 3600;

/// The vaults `node` shares with this one.
pub(in crate::agent) async fn scan(
    open: &Arc<Open>,
    node: &str,
) -> Result<Vec<SharedVault>, ApiError> {
    let node = node_id(node)?;
    match call_peer(open, node, PeerRequest::Scan).await?.1 {
        PeerReply::Vaults(list) => Ok(list),
        _ => Err(lost("an unexpected answer")),
    }
}

/// The open connections, both ways.
pub(in crate::agent) fn connections(open: &Arc<Open>) -> Result<Vec<ConnectionInfo>, ApiError> {
    Ok(net_of(open)?.connections())
}

/// Adds a node to the graph (after a ping, unless asked not to).
pub(in crate::agent) async fn nodes_add(
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

pub(in crate::agent) async fn ping(open: &Arc<Open>, node: &str) -> Result<Pong, ApiError> {
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

pub(in crate::agent) async fn find(open: &Arc<Open>, node: &str) -> Result<Vec<String>, ApiError> {
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

pub(in crate::agent) async fn share(
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
pub(in crate::agent) async fn send_notification(
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
pub(super) async fn deliver(open: &Arc<Open>, id: u64, node: NodeId, body: Body) -> bool {
    if let Some(net) = open.net.get()
        && !net.begin_delivery(id)
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
        net.end_delivery(id);
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

pub(in crate::agent) async fn clone(
    open: &Arc<Open>,
    node: NodeId,
    vault: &str,
    name: Option<String>,
) -> Result<FetchOutcome, ApiError> {
    let span = tracing::info_span!(
        target: SYNC,
        "clone",
        peer = %node,
        vault = refusals::truncate(vault)
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

pub(in crate::agent) async fn pull(
    open: &Arc<Open>,
    vault: &str,
    node: Option<NodeId>,
) -> Result<FetchOutcome, ApiError> {
    // The peer is recorded once known (the vault's origin when none is named).
    let span = tracing::info_span!(
        target: SYNC,
        "pull",
        peer = node.map(tracing::field::display),
        vault = refusals::truncate(vault)
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

pub(in crate::agent) fn backup_key(open: &Open, name: &str) -> Vec<u8> {
    let mut key = BACKUP.to_vec();
    key.extend_from_slice(&open.store.name_hash("backup", &[name.as_bytes()]));
    key
}

pub(in crate::agent) fn save_backup(
    open: &Open,
    backup: &Backup,
    event: &str,
) -> Result<(), ApiError> {
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

pub(in crate::agent) fn backups(open: &Open) -> Result<Vec<Backup>, ApiError> {
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
