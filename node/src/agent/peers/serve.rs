//! The calls other nodes make on this one, one accepted call at a time: [`serve_call`]
//! (handed each call by the pool's accept loop) reads it and matches it, one call, one
//! function: [`find`], [`scan`], [`notify`], [`sigchain`], the claim calls ([`claim`],
//! [`claim_finish`], answered by `countersign`) and the sending side of a clone or
//! pull ([`fetch`]). Each checks who may make it first; a refused call is counted by
//! [`denied`] and written to the audit log and the log in aggregate.
//!
//! May depend on the pool (`super::pool`), the agent's root and its no-I/O `refusals`,
//! and `countersign`; the pool does not know this module (it is handed
//! [`serve_call`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use zeroize::Zeroizing;

use super::countersign;
use super::pool::{IncomingCall, PeerNet};
use crate::agent::{Open, lost, on_store, refusals, vaults};
use crate::api::{ApiError, ErrorCode, SecretBytes};
use crate::identity::NodeId;
use crate::logging::{PEER, printable};
use crate::nodes::{NodePermission, Nodes, VaultPermission};
use crate::notifications::{Body, Notifications};
use crate::peer::{
    FetchRequest, MAX_HAVES, MAX_RECEIVED, PeerReply, PeerRequest, PeerResponse, SharedVault,
    read_call_within, respond,
};
use crate::rpc::encode_frame;
use crate::sigchain::ClaimToken;
use crate::store::ReadTx;
use crate::vault::{Outgoing, VaultError, VaultId};

/// A fetch's frames go out in writes of about this many bytes.
const SEND_BATCH: usize = 64 * 1024;
/// How long an answered call waits for the caller to take the last bytes.
const LINGER: Duration = Duration::from_secs(5);

/// Serves one call from another node: reads it, answers it, and logs how a known node's
/// call ended.
pub(in crate::agent) async fn serve_call(open: Arc<Open>, net: Arc<PeerNet>, call: IncomingCall) {
    let IncomingCall {
        peer,
        known,
        max_call,
        mut send,
        mut recv,
    } = call;
    let request = match read_call_within(&mut recv, max_call).await {
        Ok(request) => request,
        Err(e) => {
            let e = unreadable(&open, peer, known, e).await;
            let _ = recv.stop(0u32.into());
            let _ = respond(&mut send, &PeerResponse::Err(e)).await;
            let _ = send.finish();
            return;
        }
    };
    tracing::Span::current().record("call", call_name(&request));
    let answer = match request {
        PeerRequest::Fetch(request) => fetch(open, &net, peer, request, &mut send).await,
        other => {
            // Blocking threads are shared by every caller: a bounded number of calls use
            // them at once, the others wait here without holding one.
            let Some(_permit) = net.blocking_permit().await else {
                return;
            };
            on_store(&open, move |open| unary(open, peer, other)).await
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
    let _ = tokio::time::timeout(LINGER, send.stopped()).await;
}

/// The answer to a call that could not be read: a known node's is logged; a stranger's
/// (that does not even parse, or is over its size limit) is a refusal like the others:
/// counted, not recorded one by one.
async fn unreadable(open: &Arc<Open>, peer: NodeId, known: bool, e: ApiError) -> ApiError {
    if known {
        tracing::debug!(
            target: PEER,
            outcome = "bad call",
            error = e.message.as_str(),
            "a call that could not be read"
        );
        return e;
    }
    on_store(open, move |open| {
        Ok(denied(
            open,
            &peer,
            "call",
            None,
            "this node does not know you: its owner must add your NodeId first",
        ))
    })
    .await
    .unwrap_or_else(|e| e)
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

/// Serves a call with a single answer, on a blocking thread: one call, one function.
fn unary(open: &Open, peer: NodeId, request: PeerRequest) -> Result<PeerReply, ApiError> {
    let tx = open.store.read()?;
    match request {
        PeerRequest::Ping => Ok(PeerReply::Pong),
        PeerRequest::FindNode(target) => find(open, &tx, peer, &target),
        PeerRequest::Scan => scan(open, &tx, peer),
        PeerRequest::Notify(body) => notify(open, tx, peer, body),
        PeerRequest::Sigchain => sigchain(open, &tx, peer),
        PeerRequest::ClaimNode(token) => {
            drop(tx);
            claim(open, peer, token)
        }
        PeerRequest::ClaimNodeFinish(token) => {
            drop(tx);
            claim_finish(open, peer, token)
        }
        PeerRequest::Fetch(_) => Err(ApiError::new(ErrorCode::BadInput, "unexpected call")),
    }
}

/// `FindNode`: the addresses this node has for `target`, for nodes it knows.
fn find(
    open: &Open,
    tx: &ReadTx<'_>,
    peer: NodeId,
    target: &NodeId,
) -> Result<PeerReply, ApiError> {
    let nodes = Nodes::new(&open.store);
    if !nodes.known(tx, &peer)? {
        return Err(denied(
            open,
            &peer,
            "find",
            None,
            "this node does not know you",
        ));
    }
    Ok(PeerReply::Addresses(
        nodes.get(tx, target)?.map(|r| r.addrs).unwrap_or_default(),
    ))
}

/// `Scan`: the vaults shared with the caller, for a caller with the scan permission.
fn scan(open: &Open, tx: &ReadTx<'_>, peer: NodeId) -> Result<PeerReply, ApiError> {
    let nodes = Nodes::new(&open.store);
    if !nodes.node_may(tx, &peer, NodePermission::Scan)? {
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
    for share in nodes.shares_reaching(tx, &peer)? {
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

/// `Notify`: a notification into the inbox, from a caller with the notify permission.
fn notify(open: &Open, tx: ReadTx<'_>, peer: NodeId, body: Body) -> Result<PeerReply, ApiError> {
    if !Nodes::new(&open.store).node_may(&tx, &peer, NodePermission::Notify)? {
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
    Notifications::new(&open.store).receive(peer, body)?;
    Ok(PeerReply::Done)
}

/// `Sigchain`: this node's claims. A sigchain names linked nodes and claimed identities:
/// only for nodes this one knows (directly or through their gestalt).
fn sigchain(open: &Open, tx: &ReadTx<'_>, peer: NodeId) -> Result<PeerReply, ApiError> {
    if !Nodes::new(&open.store).known(tx, &peer)? {
        return Err(denied(
            open,
            &peer,
            "sigchain",
            None,
            "this node does not know you",
        ));
    }
    Ok(PeerReply::Claims(crate::sigchain::all(tx)?))
}

/// `ClaimNode`: countersigns the caller's claim of a link ([`countersign::countersign`]).
fn claim(open: &Open, peer: NodeId, token: ClaimToken) -> Result<PeerReply, ApiError> {
    let refuse = |why: &str| denied(open, &peer, "claim", None, why);
    let (countersigned, theirs) = countersign::countersign(open, peer, token, refuse)?;
    Ok(PeerReply::ClaimPair {
        countersigned,
        theirs,
    })
}

/// `ClaimNodeFinish`: this node's claim of the link, signed by both, joins its sigchain
/// ([`countersign::finish`]).
fn claim_finish(open: &Open, peer: NodeId, token: ClaimToken) -> Result<PeerReply, ApiError> {
    let refuse = |why: &str| denied(open, &peer, "claim", None, why);
    countersign::finish(open, peer, token, refuse)?;
    Ok(PeerReply::Done)
}

/// `Fetch`: the sending side of a clone or pull. The objects are encoded into frames on a
/// blocking thread, in batches of about [`SEND_BATCH`] bytes; this task only writes bytes.
async fn fetch(
    open: Arc<Open>,
    net: &PeerNet,
    peer: NodeId,
    fetch: FetchRequest,
    send: &mut quinn::SendStream,
) -> Result<PeerReply, ApiError> {
    // The fetch holds a blocking thread while it runs: one of the bounded few.
    let Some(_permit) = net.blocking_permit().await else {
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
        let fetch = fetch.clone();
        on_store(&open, move |open| fetch_vault(open, &peer, &fetch)).await?
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Zeroizing<Vec<u8>>>(8);
    let worker = tokio::task::spawn_blocking(move || send_vault(&open, peer, &vault, &fetch, &tx));
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
    result?;
    Ok(PeerReply::Done)
}

/// The vault a fetch may have, checked ([`fetch_allowed`]); a pull starts from a commit
/// the caller has: with none, it would be a clone, which `pull` alone does not allow.
fn fetch_vault(open: &Open, peer: &NodeId, fetch: &FetchRequest) -> Result<VaultId, ApiError> {
    let vault = fetch_allowed(open, peer, fetch)?;
    if !fetch.clone && !vaults(open).knows_any(&vault, &fetch.haves)? {
        return Err(denied(
            open,
            peer,
            "pull",
            None,
            "a pull must name a commit of the vault you have (a first copy is a clone)",
        ));
    }
    Ok(vault)
}

/// Checks a fetch's permission; the vault's id and name.
fn fetch_allowed(open: &Open, peer: &NodeId, fetch: &FetchRequest) -> Result<VaultId, ApiError> {
    // As the caller names it: the name it knows, and the id when it has one.
    // Cut short: the name is the caller's, and neither the record nor the answer may be
    // as large as what it sent.
    let name = refusals::truncate(&fetch.name);
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
    let tx = open.store.read()?;
    let nodes = Nodes::new(&open.store);
    if !nodes.known(&tx, peer)? {
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
    if !nodes.vault_may(&tx, &record.id, peer, permission)? {
        return Err(refuse());
    }
    Ok(record.id)
}

/// Encodes what `fetch` lacks of `vault` into frames and hands them to `tx` in batches;
/// a transfer that went out whole is logged and audited as `vault.served`.
fn send_vault(
    open: &Open,
    peer: NodeId,
    vault: &VaultId,
    fetch: &FetchRequest,
    tx: &tokio::sync::mpsc::Sender<Zeroizing<Vec<u8>>>,
) -> Result<(), VaultError> {
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
    let sent = vaults(open).send(vault, &fetch.haves, &fetch.received, &mut out);
    if !batch.is_empty() && tx.blocking_send(batch).is_err() {
        return Err(VaultError::Interrupted);
    }
    if sent.is_ok() {
        served(open, peer, vault, fetch);
    }
    sent
}

/// Logs and audits a transfer that went out whole.
fn served(open: &Open, peer: NodeId, vault: &VaultId, fetch: &FetchRequest) {
    tracing::info!(
        target: PEER,
        event = "vault.served",
        outcome = "ok",
        %peer,
        vault = refusals::truncate(&fetch.name),
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

/// Refusal for a call the caller may not make; counted, and recorded in the audit log in
/// aggregate ([`crate::agent::refusals`]): a refusal costs its caller no row of its own.
pub(in crate::agent) fn denied(
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
pub(in crate::agent) fn flush_refusals(open: &Open, now: bool) {
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
fn write_refusals(open: &Open, rows: Vec<refusals::Row>) {
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
