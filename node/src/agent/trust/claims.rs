//! `pk nodes claim`, the asking side of a node claim: invite the other node, or (once it
//! has invited this one) sign a claim of the link, have it countersigned
//! (`ClaimNode`, answered in `peers::countersign`), sign the other node's own claim,
//! and hand it back (`ClaimNodeFinish`).
//!
//! May depend on the peer pool and commands and the agent's root.

use std::sync::Arc;

use serde_json::json;

use crate::agent::peers::commands::send_notification;
use crate::agent::peers::pool::call_peer;
use crate::agent::{Open, lost, node_id, on_store};
use crate::api::nodes::Claimed;
use crate::api::{ApiError, ErrorCode};
use crate::audit;
use crate::gestalt::{Gestalts, Link, Vertex};
use crate::identity::NodeId;
use crate::notifications::{Body, Mailbox, Notifications};
use crate::peer::{PeerReply, PeerRequest};
use crate::sigchain::{self, ClaimToken, ClaimType};

/// `pk nodes claim`: links with `node` if it invited this node, else invites it.
pub(in crate::agent) async fn claim_node(
    open: &Arc<Open>,
    node: &str,
) -> Result<Claimed, ApiError> {
    let node = node_id(node)?;
    let me = open.identity().node_id();
    if node == me {
        return Err(ApiError::new(
            ErrorCode::BadInput,
            "that is this node's own NodeId",
        ));
    }
    let invited_by = on_store(open, move |open| {
        Ok(Notifications::new(&open.store)
            .list(Mailbox::Inbox)?
            .iter()
            .any(|n| n.peer == node && n.body == Body::GestaltInvite))
    })
    .await?;
    if !invited_by {
        send_notification(open, node, Body::GestaltInvite).await?;
        return Ok(Claimed {
            node: node.to_string(),
            invited: true,
            seq: None,
        });
    }
    let seq = link(open, me, node).await?;
    Ok(Claimed {
        node: node.to_string(),
        invited: false,
        seq: Some(seq),
    })
}

/// Links this node (`me`) with `node`, which invited it: this node's claim of the link,
/// countersigned by `node`, joins this node's sigchain; `node`'s own claim, signed here
/// too, joins its chain. The claim's sequence number in this node's chain.
async fn link(open: &Arc<Open>, me: NodeId, node: NodeId) -> Result<u64, ApiError> {
    let token = on_store(open, move |open| {
        let tx = open.store.read()?;
        let claim = sigchain::next_claim(&tx, &me, ClaimType::ClaimLinkNode, &node.to_string())?;
        Ok(ClaimToken::sign(&claim, &open.identity()))
    })
    .await?;
    let (signed, mut theirs) = match call_peer(open, node, PeerRequest::ClaimNode(token.clone()))
        .await?
        .1
    {
        PeerReply::ClaimPair {
            countersigned,
            theirs,
        } => (countersigned, theirs),
        _ => return Err(lost("an unexpected answer to a claim")),
    };
    check_answer(open, me, node, &token, &signed, &mut theirs)?;
    let seq = on_store(open, move |open| record_link(open, me, node, signed)).await?;
    // Their chain records the link too, with both signatures.
    call_peer(open, node, PeerRequest::ClaimNodeFinish(theirs)).await?;
    Ok(seq)
}

/// Checks `node`'s answer to a claim: `theirs`, its own claim of the link (signed here
/// too once checked), and `signed`, this node's `token` with its countersignature.
fn check_answer(
    open: &Open,
    me: NodeId,
    node: NodeId,
    token: &ClaimToken,
    signed: &ClaimToken,
    theirs: &mut ClaimToken,
) -> Result<(), ApiError> {
    // Their claim of the same link, for their chain: check it, then sign it too.
    let their_claim = theirs
        .claim()
        .map_err(|e| ApiError::new(ErrorCode::Corrupt, format!("{node} sent a bad claim: {e}")))?;
    if their_claim.typ != ClaimType::ClaimLinkNode
        || their_claim.iss != node.to_string()
        || their_claim.sub != me.to_string()
        || !theirs.valid_signers().contains(&node)
    {
        return Err(ApiError::new(
            ErrorCode::Corrupt,
            format!("{node} sent a claim that is not its own claim of this link"),
        ));
    }
    theirs.add_signature(&open.identity());
    if signed.payload != token.payload {
        return Err(ApiError::new(
            ErrorCode::Corrupt,
            format!("{node} changed the claim it was asked to sign"),
        ));
    }
    signed.verify_signatures().map_err(|e| {
        ApiError::new(
            ErrorCode::Corrupt,
            format!("{node} answered with a claim that does not verify: {e}"),
        )
    })?;
    Ok(())
}

/// Appends the countersigned claim to this node's sigchain and records the link, in one
/// audited transaction (`gestalt.linked`); its sequence number.
fn record_link(open: &Open, me: NodeId, node: NodeId, signed: ClaimToken) -> Result<u64, ApiError> {
    let mut tx = open.store.write()?;
    let seq = sigchain::append(&mut tx, &signed).map_err(|_| {
        ApiError::new(
            ErrorCode::Unavailable,
            "this node's sigchain moved on while the claim was signed: claim again",
        )
    })?;
    let link = Link {
        a: Vertex::Node(me),
        b: Vertex::Node(node),
        claim: signed,
        url: None,
    };
    Gestalts::new(&open.store).add_link(&mut tx, &link)?;
    audit::append(
        &mut tx,
        "gestalt.linked",
        json!({ "node": node, "by": "claim", "seq": seq }),
    )?;
    tx.commit()?;
    Ok(seq)
}
