//! The calls other nodes make on this one, one accepted call at a time
//! ([`serve_call`], handed each call by the pool's accept loop): who may make which call,
//! the unary calls (ping, find, scan, notify, sigchain, the two claim calls) and the
//! sending side of a clone or pull (a fetch). A refused call is counted by [`denied`]
//! and written to the audit log and the log in aggregate.
//!
//! May depend on the pool (`super::pool`), the agent's root and its no-I/O `refusals`,
//! and `trust` for the claim calls; nothing here is used by the pool.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use zeroize::Zeroizing;

use super::pool::{IncomingCall, PeerNet};
use crate::agent::trust::countersign;
use crate::agent::{Open, blocking, lost, refusals, store_error, vault_error, vaults};
use crate::api::{ApiError, ErrorCode, SecretBytes};
use crate::identity::NodeId;
use crate::logging::{PEER, printable};
use crate::nodes::{NodePermission, Nodes, VaultPermission};
use crate::notifications::Notifications;
use crate::peer::{
    FetchRequest, MAX_HAVES, MAX_RECEIVED, PeerReply, PeerRequest, PeerResponse, SharedVault,
    read_call_within, respond,
};
use crate::rpc::encode_frame;
use crate::vault::{Outgoing, VaultError, VaultId};

/// A fetch's frames go out in writes of about this many bytes.
const SEND_BATCH: usize = 64 * 1024;

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

/// Serves one call from another node: reads it, answers it, and logs how a known node's
/// call ended.
pub(super) async fn serve_call(open: Arc<Open>, net: Arc<PeerNet>, call: IncomingCall) {
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
            let Some(_permit) = net.blocking_permit().await else {
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
            let refuse = |why: &str| denied(open, &peer, "claim", None, why);
            countersign::countersign(open, peer, token, refuse).map(|(countersigned, theirs)| {
                PeerReply::ClaimPair {
                    countersigned,
                    theirs,
                }
            })
        }
        PeerRequest::ClaimNodeFinish(token) => {
            drop(tx);
            let refuse = |why: &str| denied(open, &peer, "claim", None, why);
            countersign::finish(open, peer, token, refuse).map(|()| PeerReply::Done)
        }
        PeerRequest::Fetch(_) => Err(ApiError::new(ErrorCode::BadInput, "unexpected call")),
    }
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
