//! The answering side of a node claim, the calls another node makes on this one:
//! `ClaimNode` ([`countersign`]: this node countersigns the caller's claim of the link,
//! if it invited the caller, and hands back its own claim for the caller to sign) and
//! `ClaimNodeFinish` ([`finish`]: this node's claim, now signed by both, joins its
//! sigchain). Forged, replayed and stale claims are refused.
//!
//! Served by `peers::serve`, which hands in `refuse` (how a refusal is counted); depends
//! on the agent's root only.

use std::time::Duration;

use serde_json::json;

use crate::agent::Open;
use crate::api::{ApiError, ErrorCode};
use crate::audit;
use crate::clock::unix_s;
use crate::gestalt::{Gestalts, Link, Vertex};
use crate::identity::NodeId;
use crate::notifications::{Body, Mailbox, Notifications};
use crate::sigchain::{self, ClaimToken, ClaimType};

/// How old (or how far in the future) a claim presented for countersigning may be.
const CLAIM_FRESHNESS: Duration = Duration::from_secs(600);

/// Serves `ClaimNode`: countersigns `token` from `peer` if this node invited it, records
/// the link, and returns this node's own claim of the link for `peer` to sign. Refuses
/// forged, replayed and stale claims, through `refuse` (called with no transaction open).
pub(in crate::agent) fn countersign(
    open: &Open,
    peer: NodeId,
    token: ClaimToken,
    refuse: impl Fn(&str) -> ApiError,
) -> Result<(ClaimToken, ClaimToken), ApiError> {
    let me = open.identity().node_id();
    let claim = token
        .claim()
        .map_err(|e| ApiError::new(ErrorCode::BadInput, e.to_string()))?;
    if claim.typ != ClaimType::ClaimLinkNode
        || claim.iss != peer.to_string()
        || claim.sub != me.to_string()
    {
        return Err(refuse(
            "the claim must be a node link issued by the caller for this node",
        ));
    }
    if !token.valid_signers().contains(&peer) {
        return Err(refuse("the claim is not signed by the caller"));
    }
    if claim.iat.abs_diff(unix_s()) > CLAIM_FRESHNESS.as_secs() {
        return Err(refuse("the claim is stale or from the future"));
    }
    let invited = Notifications::new(&open.store)
        .list(Mailbox::Outbox)?
        .iter()
        .any(|n| n.peer == peer && n.body == Body::GestaltInvite);
    if !invited {
        return Err(refuse(
            "this node has not invited you to its gestalt (it must run `pk identities invite <you>` first)",
        ));
    }
    let gestalts = Gestalts::new(&open.store);
    let mut tx = open.store.write()?;
    if gestalts
        .links(&tx)?
        .iter()
        .any(|l| l.claim.claim().is_ok_and(|c| c.nonce == claim.nonce))
    {
        // The refusal is audited in a transaction of its own.
        drop(tx);
        return Err(refuse("this claim was countersigned before (a replay)"));
    }
    let mut signed = token;
    signed.add_signature(&open.identity());
    gestalts.add_link(
        &mut tx,
        &Link {
            a: Vertex::Node(peer),
            b: Vertex::Node(me),
            claim: signed.clone(),
            url: None,
        },
    )?;
    audit::append(
        &mut tx,
        "gestalt.linked",
        json!({ "node": peer, "by": "countersign" }),
    )?;
    let ours = sigchain::next_claim(&tx, &me, ClaimType::ClaimLinkNode, &peer.to_string())?;
    tx.commit()?;
    Ok((signed, ClaimToken::sign(&ours, &open.identity())))
}

/// Serves `ClaimNodeFinish`: appends this node's own link claim, now signed by `peer`
/// too, to this node's sigchain. Refuses through `refuse`, as [`countersign`] does.
pub(in crate::agent) fn finish(
    open: &Open,
    peer: NodeId,
    token: ClaimToken,
    refuse: impl Fn(&str) -> ApiError,
) -> Result<(), ApiError> {
    let me = open.identity().node_id();
    let claim = token
        .verify_signatures()
        .map_err(|e| refuse(&e.to_string()))?;
    if claim.typ != ClaimType::ClaimLinkNode
        || claim.iss != me.to_string()
        || claim.sub != peer.to_string()
    {
        return Err(refuse("not this node's claim of a link with the caller"));
    }
    let gestalts = Gestalts::new(&open.store);
    let mut tx = open.store.write()?;
    let linked = gestalts.has_link(&tx, &Vertex::Node(me), &Vertex::Node(peer))?;
    let appended = if linked {
        sigchain::append(&mut tx, &token).ok()
    } else {
        None
    };
    let Some(seq) = appended else {
        // The refusal is audited in a transaction of its own.
        drop(tx);
        return Err(refuse(if linked {
            "the claim does not fit this node's sigchain (stale or replayed)"
        } else {
            "no link with the caller was countersigned here"
        }));
    };
    audit::append(
        &mut tx,
        "sigchain.appended",
        json!({ "seq": seq, "type": "ClaimLinkNode", "node": peer }),
    )?;
    Ok(tx.commit()?)
}
