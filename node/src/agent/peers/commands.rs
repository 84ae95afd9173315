//! The calls `pk` asks the agent to make on other nodes, and what they store here: add a
//! node (after a ping), ping, find, the open connections, scan, share (and tell the
//! gestalt), send a notification (queued, then one delivery attempt: [`deliver`]), clone
//! and pull (their receiving side is `super::fetch`), and where scheduled pulls are kept.
//!
//! May depend on the pool (`super::pool`), `super::fetch` and the agent's root; not on
//! the serving layer, the background loop or `trust`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument as _;

use super::fetch::fetch;
use super::pool::{call_peer, dial, failed, net_of};
use crate::agent::{Open, lost, node_id, on_store, refusals, vaults};
use crate::api::backups::Backup;
use crate::api::nodes::{Add, ConnectionInfo, Pong};
use crate::api::notifications::Queued;
use crate::api::{ApiError, ErrorCode};
use crate::gestalt::{Gestalts, Vertex};
use crate::identity::NodeId;
use crate::logging::{NOTIFY, SYNC, printable};
use crate::nodes::{NodePermission, NodeRecord, Nodes, Share, VaultPermission};
use crate::notifications::{Body, Delivery, Mailbox, Notifications};
use crate::peer::{FetchRequest, MAX_RECEIVED, PeerReply, PeerRequest, SharedVault, unary};
use crate::store::{Read as _, ReadTx, Table, WriteTx};
use crate::vault::{FetchOutcome, FetchResult, PullOutcome, VaultId, VaultRecord};

/// Key prefix of scheduled pulls in the `sync` table.
const BACKUP: &[u8] = b"bk:";

/// The shortest time between scheduled pulls.
pub(in crate::agent) const MIN_BACKUP_INTERVAL_S: u64 = 10;
/// The longest time between scheduled pulls.
pub(in crate::agent) const MAX_BACKUP_INTERVAL_S: u64 = 366 * 24 * 3600;

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
    on_store(open, move |open| {
        let nodes = Nodes::new(&open.store);
        nodes.add(node, &addr, permissions)?;
        if !no_ping {
            nodes.seen(&node, Some(&addr))?;
        }
        let tx = open.store.read()?;
        nodes
            .get(&tx, &node)?
            .ok_or_else(|| lost("the node vanished from the graph"))
    })
    .await
}

/// Pings `node`: the address that answered and the round trip.
pub(in crate::agent) async fn ping(open: &Arc<Open>, node: &str) -> Result<Pong, ApiError> {
    let node = node_id(node)?;
    let started = Instant::now();
    let (conn, _) = call_peer(open, node, PeerRequest::Ping).await?;
    let rtt = started.elapsed();
    let _ = on_store(open, move |open| {
        Ok(Nodes::new(&open.store).seen(&node, None)?)
    })
    .await;
    Ok(Pong {
        node: node.to_string(),
        addr: conn.remote_address().to_string(),
        rtt_ms: rtt.as_millis() as u64,
    })
}

/// The addresses of `node`: from the graph, or else from the nodes this one knows.
pub(in crate::agent) async fn find(open: &Arc<Open>, node: &str) -> Result<Vec<String>, ApiError> {
    let target = node_id(node)?;
    let known = on_store(open, |open| {
        let tx = open.store.read()?;
        Ok(Nodes::new(&open.store).all(&tx)?)
    })
    .await?;
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

/// The open connections, both ways.
pub(in crate::agent) fn connections(open: &Arc<Open>) -> Result<Vec<ConnectionInfo>, ApiError> {
    Ok(net_of(open)?.connections())
}

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

/// Grants (or revokes) `permissions` on `vault` to `who`, a node or a gestalt; every
/// node of the gestalt this node can reach hears of a grant.
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
    let (record, share, notify) = on_store(open, move |open| {
        set_share(open, &vault, &vertex, &permissions, grant)
    })
    .await?;
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

/// What [`share`] changes here: the vault, the share as it now is, and the nodes to tell.
type Shared = (VaultRecord, Option<Share>, Vec<NodeId>);

/// Records the share, for a vertex this node knows; the vault shared, the share as it
/// now is, and the nodes of the vertex's gestalt in the graph, but this one.
fn set_share(
    open: &Open,
    vault: &str,
    vertex: &Vertex,
    permissions: &[VaultPermission],
    grant: bool,
) -> Result<Shared, ApiError> {
    let record = vaults(open).find(None, vault)?;
    let nodes = Nodes::new(&open.store);
    let gestalts = Gestalts::new(&open.store);
    let tx = open.store.read()?;
    if !known(&nodes, &gestalts, &tx, vertex)? {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            match vertex {
                Vertex::Node(node) => {
                    format!("{node} is not in the node graph: add it with `pk nodes add` first")
                }
                identity => format!(
                    "{identity} is not known here: trust or discover it first (pk identities trust {identity})"
                ),
            },
        ));
    }
    // Every node of the gestalt this node can reach hears of the share.
    let mut notify = Vec::new();
    for v in gestalts.component(&tx, vertex)? {
        if let Vertex::Node(node) = v
            && nodes.get(&tx, &node)?.is_some()
            && node != open.identity().node_id()
        {
            notify.push(node);
        }
    }
    drop(tx);
    let share = nodes.set_share(&record.id, &record.name, vertex, permissions, grant)?;
    Ok((record, share, notify))
}

/// Whether a share can name `vertex`: a node in the graph, or an identity known here
/// (with a record of its own or linked to something).
fn known(
    nodes: &Nodes<'_>,
    gestalts: &Gestalts<'_>,
    tx: &ReadTx<'_>,
    vertex: &Vertex,
) -> Result<bool, ApiError> {
    Ok(match vertex {
        Vertex::Node(node) => nodes.get(tx, node)?.is_some(),
        identity => {
            gestalts.identity(tx, identity)?.is_some()
                || gestalts.component(tx, identity)?.len() > 1
        }
    })
}

/// Queues a notification and tries to deliver it at once.
pub(in crate::agent) async fn send_notification(
    open: &Arc<Open>,
    node: NodeId,
    body: Body,
) -> Result<Queued, ApiError> {
    let queued = on_store(open, move |open| {
        let tx = open.store.read()?;
        if Nodes::new(&open.store).get(&tx, &node)?.is_none() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("{node} is not in the node graph: add it with `pk nodes add` first"),
            ));
        }
        drop(tx);
        Ok(Notifications::new(&open.store).queue(node, body)?)
    })
    .await?;
    let delivered = deliver(open, queued.id, node, queued.body.clone()).await;
    let id = queued.id;
    let notification = on_store(open, move |open| {
        Ok(Notifications::new(&open.store)
            .list(Mailbox::Outbox)?
            .into_iter()
            .find(|n| n.id == id))
    })
    .await?
    .unwrap_or(queued);
    if let Some(Delivery::Refused { reason }) = &notification.delivery {
        return Err(ApiError::new(ErrorCode::Denied, reason.clone()));
    }
    Ok(Queued {
        notification,
        delivered,
    })
}

/// One delivery attempt of outbox entry `id`; records the outcome. False when it was not
/// delivered, or was being delivered already.
pub(in crate::agent) async fn deliver(open: &Arc<Open>, id: u64, node: NodeId, body: Body) -> bool {
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
    log_delivery(node, id, &outcome);
    let ok = outcome.is_ok();
    let recorded = on_store(open, move |open| {
        Ok(Notifications::new(&open.store)
            .with_clock(open.clock.clone())
            .delivered(id, outcome)?)
    })
    .await;
    if let Err(e) = recorded {
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

/// Logs a delivery attempt's outcome: delivered, refused for good (`true`), or to retry.
fn log_delivery(node: NodeId, id: u64, outcome: &Result<(), (bool, String)>) {
    match outcome {
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
}

/// Clones `vault` (a name or an id) from `node`, as `name` or under the peer's name;
/// resumes an interrupted clone.
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
    span.in_scope(|| log_fetched(Fetch::Clone, &result));
    result
}

/// An outgoing transfer: a new vault, or new commits for one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetch {
    Clone,
    Pull,
}

impl std::fmt::Display for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fetch::Clone => "clone",
            Fetch::Pull => "pull",
        })
    }
}

/// How an outgoing clone or pull ended, inside its span (`peer`, `vault`). Failures are
/// at INFO: `pk` reports them to whoever asked; the scheduler adds its own warning.
fn log_fetched(kind: Fetch, result: &Result<FetchOutcome, ApiError>) {
    match result {
        Ok(o) if o.result == FetchResult::UpToDate => {
            tracing::debug!(target: SYNC, outcome = o.result.as_str(), "{kind}: up to date")
        }
        Ok(o) => tracing::info!(
            target: SYNC,
            event = match kind {
                Fetch::Clone => "vault.cloned",
                Fetch::Pull => "vault.pulled",
            },
            outcome = o.result.as_str(),
            local = o.vault,
            objects = o.objects,
            bytes = o.bytes,
            resumed = o.resumed,
            conflicts = o.conflicts.len(),
            wire_bytes = o.wire_bytes,
            "{kind}: {}",
            o.summary()
        ),
        // A failed pull is on the vault's record as `vault.pull_failed`; a failed clone
        // leaves no vault to hold it.
        Err(e) if kind == Fetch::Pull => tracing::info!(
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

/// The clone's request, resuming an interrupted one.
async fn clone_from(
    open: &Arc<Open>,
    node: NodeId,
    vault: &str,
    name: Option<String>,
) -> Result<FetchOutcome, ApiError> {
    let resume = {
        let vault = vault.to_owned();
        on_store(open, move |open| {
            Ok(vaults(open).clone_resume(&node, &vault)?)
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

/// Pulls `vault` from `node`, or from the node it was cloned from, and merges.
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
    span.in_scope(|| log_fetched(Fetch::Pull, &result));
    result
}

/// The pull's request, from the commits this node has; a failed pull is noted on the
/// vault's record.
async fn pull_from(
    open: &Arc<Open>,
    vault: &str,
    node: Option<NodeId>,
) -> Result<FetchOutcome, ApiError> {
    let named = node.is_some();
    let name = vault.to_owned();
    let (record, node, haves, received) = on_store(open, move |open| {
        let record = vaults(open).find(None, &name)?;
        let node = match node.or(record.sync.origin) {
            Some(node) => node,
            None => {
                return Err(ApiError::new(
                    ErrorCode::BadInput,
                    format!("vault {name:?} was not cloned from a node: name one to pull from"),
                ));
            }
        };
        let plan = vaults(open).pull_request(&name, &node)?;
        Ok((plan.record, node, plan.haves, plan.received))
    })
    .await?;
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
        note_failed_pull(open, record.name, node, e.message.clone()).await;
    }
    result
}

/// Notes a failed pull on the vault's record (`vault.pull_failed`).
async fn note_failed_pull(open: &Arc<Open>, name: String, node: NodeId, message: String) {
    let noted = on_store(open, move |open| {
        let outcome = PullOutcome {
            node: node.to_string(),
            time: open.clock.now_s(),
            ok: false,
            message,
        };
        Ok(vaults(open).note_pull(&name, outcome)?)
    })
    .await;
    if let Err(e) = noted {
        tracing::warn!(
            target: SYNC,
            error = e.message.as_str(),
            "the failed pull could not be recorded with the vault"
        );
    }
}

/// A scheduled pull's key in the `sync` table.
pub(in crate::agent) fn backup_key(open: &Open, name: &str) -> Vec<u8> {
    let mut key = BACKUP.to_vec();
    key.extend_from_slice(&open.store.name_hash("backup", &[name.as_bytes()]));
    key
}

/// Writes a scheduled pull in `tx` (a new one, or one whose run changed it).
pub(in crate::agent) fn put_backup(
    open: &Open,
    tx: &mut WriteTx<'_>,
    backup: &Backup,
) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(backup).expect("a backup always serialises");
    Ok(tx.put(Table::Sync, &backup_key(open, &backup.name), &bytes)?)
}

/// Saves a scheduled pull after a run, in a transaction of its own (no audit event).
pub(in crate::agent) fn save_backup(open: &Open, backup: &Backup) -> Result<(), ApiError> {
    let mut tx = open.store.write()?;
    put_backup(open, &mut tx, backup)?;
    Ok(tx.commit()?)
}

/// The scheduled pulls, by name.
pub(in crate::agent) fn backups(open: &Open) -> Result<Vec<Backup>, ApiError> {
    let tx = open.store.read()?;
    let mut out = Vec::new();
    for (key, value) in tx.range(Table::Sync, BACKUP, usize::MAX, false)? {
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
