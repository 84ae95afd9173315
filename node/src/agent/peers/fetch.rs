//! The receiving side of a clone or pull ([`fetch`]): the call opened on a pooled
//! connection (once more, afresh, when the peer restarted), the vault the peer answers
//! with checked against the one asked for, and the stream's bytes passed, in large
//! reads, to a blocking thread that decodes the frames and hands the objects to a
//! [`crate::vault::Receiver`]. What arrived before an interruption is kept for a resume.
//!
//! May depend on the pool (`super::pool`) and the agent's root; used by `super::commands`.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::pool::{dial, failed};
use crate::agent::{Open, lost, vaults};
use crate::api::{ApiError, ErrorCode};
use crate::identity::NodeId;
use crate::net::Connection;
use crate::peer::{
    CallStream, FetchFailed, FetchRequest, FetchStream, IDLE_DEADLINE, PeerError, PeerRequest,
    PeerResponse,
};
use crate::vault::{FetchOutcome, Fetched};

/// An open fetch: the connection, its byte counts before, the call, and `Begin`.
type OpenFetch = (Connection, (u64, u64), CallStream, Fetched);

/// Fetches a vault from `node`, stored as a new vault (`clone_as`: under the name given,
/// or the peer's) or into the one `request` names.
pub(in crate::agent) async fn fetch(
    open: &Arc<Open>,
    node: NodeId,
    request: FetchRequest,
    clone_as: Option<Option<String>>,
) -> Result<FetchOutcome, ApiError> {
    let (conn, wire_before, call, begin) = match open_fetch(open, node, &request).await {
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
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>(64);
    let worker = {
        let open = open.clone();
        tokio::task::spawn_blocking(move || receive(&open, node, &begin, clone_name, rx))
    };
    // The call (unless cancelled) stays open until the receiving thread is done.
    let (_call, broken) = forward(open, call, &tx).await;
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
        Err(FetchFailed::Vault(e)) => Err(e.into()),
    }
}

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

/// Passes the stream's bytes on to the receiving thread until the stream ends (then
/// `None`) or the receiver stops taking them (then the call is cancelled, which stops the
/// sender too). The call unless cancelled, and the error if the stream broke.
async fn forward(
    open: &Open,
    mut call: CallStream,
    tx: &mpsc::Sender<Option<Vec<u8>>>,
) -> (Option<CallStream>, Option<ApiError>) {
    loop {
        match call.read_raw(IDLE_DEADLINE).await {
            Ok(Some(bytes)) => {
                if tx.send(Some(bytes)).await.is_err() {
                    // The receiver refused something: stop the sender too.
                    call.cancel();
                    return (None, None);
                }
            }
            Ok(None) => {
                let _ = tx.send(None).await;
                return (Some(call), None);
            }
            Err(e) => return (Some(call), Some(failed(open, e))),
        }
    }
}

/// The receiving thread: decodes the frames from `rx` and stores the objects; saves what
/// arrived when the stream ends early, and keeps nothing of a refused transfer.
fn receive(
    open: &Open,
    node: NodeId,
    begin: &Fetched,
    clone_name: Option<String>,
    mut rx: mpsc::Receiver<Option<Vec<u8>>>,
) -> Result<FetchOutcome, FetchFailed> {
    let v = vaults(open);
    let receiver = v.receiver_with(node, begin, clone_name.as_deref(), open.transfer_limits)?;
    FetchStream::new(|| rx.blocking_recv().flatten()).receive(receiver, &begin.tip)
}
