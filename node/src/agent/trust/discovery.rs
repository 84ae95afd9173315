//! Discovery: walking a gestalt, fetching and verifying its nodes' sigchains and the
//! claims its identities published, and adding every link that verifies to the graph.
//! On demand (`pk identities discover`) or one queued vertex at a time from
//! `peers::background`.
//!
//! May depend on the peer pool, [`super::gestalts`], [`super::provider`] and the
//! agent's root.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use serde_json::json;

use super::gestalts::{current, info, vertex};
use super::provider::{github_only, provider_error};
use crate::agent::peers::pool::call_peer;
use crate::agent::{Open, lost, on_store};
use crate::api::identities::GestaltInfo;
use crate::api::{ApiError, ErrorCode};
use crate::audit;
use crate::gestalt::{Gestalts, Link, Vertex};
use crate::identity::NodeId;
use crate::peer::{PeerReply, PeerRequest};
use crate::sigchain::{self, Claim, ClaimToken, ClaimType};

/// The most vertices one discovery walks.
const DISCOVERY_LIMIT: usize = 64;

/// Discovers the gestalt of `gestalt` now, and answers it.
pub(in crate::agent) async fn discover_now(
    open: &Arc<Open>,
    gestalt: &str,
) -> Result<GestaltInfo, ApiError> {
    let v = vertex(gestalt)?;
    let v = on_store(open, move |open| current(open, v)).await?;
    discover(open, v.clone()).await?;
    on_store(open, move |open| info(open, &v)).await
}

/// Walks the gestalt of `start`: fetches and verifies the sigchains of its nodes, and
/// adds every link that verifies. A vertex that cannot be reached stays queued.
pub(in crate::agent) async fn discover(open: &Arc<Open>, start: Vertex) -> Result<(), ApiError> {
    let mut queue = VecDeque::from([start]);
    let mut visited: BTreeSet<Vertex> = BTreeSet::new();
    let me = Vertex::Node(open.identity().node_id());
    let mut first_error = None;
    while let Some(v) = queue.pop_front() {
        if visited.len() >= DISCOVERY_LIMIT || !visited.insert(v.clone()) || v == me {
            continue;
        }
        let result = match &v {
            Vertex::Node(node) => discover_node(open, *node).await,
            Vertex::Identity { provider, id } => discover_identity(open, provider, id).await,
        };
        let error = match result {
            Ok(found) => {
                queue.extend(found);
                None
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.clone());
                Some(e.message)
            }
        };
        let v = v.clone();
        on_store(open, move |open| {
            let mut tx = open.store.write()?;
            Gestalts::new(&open.store).dequeue(&mut tx, &v, error)?;
            Ok(tx.commit()?)
        })
        .await?;
    }
    match first_error {
        // The start itself could not be walked: say why.
        Some(e) if visited.len() <= 1 => Err(e),
        _ => Ok(()),
    }
}

/// Fetches and verifies `node`'s sigchain; records its node links; returns the vertices
/// they lead to.
async fn discover_node(open: &Arc<Open>, node: NodeId) -> Result<Vec<Vertex>, ApiError> {
    let tokens = match call_peer(open, node, PeerRequest::Sigchain).await?.1 {
        PeerReply::Claims(tokens) => tokens,
        _ => return Err(lost("an unexpected answer to a sigchain request")),
    };
    let claims = sigchain::verify_chain(&node, &tokens).map_err(|e| {
        ApiError::new(
            ErrorCode::Corrupt,
            format!("the sigchain of {node} does not verify: {e}"),
        )
    })?;
    on_store(open, move |open| node_links(open, node, &claims, tokens)).await
}

/// Records the node links of `node`'s verified chain (`claims`, from `tokens`) that are
/// new here, each with its `gestalt.discovered` event, in one transaction; the vertices
/// they lead to.
fn node_links(
    open: &Open,
    node: NodeId,
    claims: &[Claim],
    tokens: Vec<ClaimToken>,
) -> Result<Vec<Vertex>, ApiError> {
    let gestalts = Gestalts::new(&open.store);
    let mut tx = open.store.write()?;
    let mut found = Vec::new();
    for (claim, token) in claims.iter().zip(tokens) {
        // Identity claims are checked on the provider only when the user asks for that
        // identity (discover or trust it): walking a chain never contacts a provider
        // unasked. Key renewals are the node's own history, not links.
        if claim.typ != ClaimType::ClaimLinkNode {
            continue;
        }
        let Ok(other) = claim.sub.parse::<NodeId>() else {
            continue;
        };
        if other == node {
            continue;
        }
        let (a, b) = (Vertex::Node(node), Vertex::Node(other));
        if !gestalts.has_link(&tx, &a, &b)? {
            let link = Link {
                a,
                b: b.clone(),
                claim: token,
                url: None,
            };
            gestalts.add_link(&mut tx, &link)?;
            audit::append(
                &mut tx,
                "gestalt.discovered",
                json!({ "node": node, "linked": other }),
            )?;
        }
        found.push(b);
    }
    tx.commit()?;
    Ok(found)
}

/// Finds the claims `provider:id` published, keeps those a node signed for this identity,
/// and returns those nodes.
async fn discover_identity(
    open: &Arc<Open>,
    provider: &str,
    id: &str,
) -> Result<Vec<Vertex>, ApiError> {
    github_only(provider)?;
    let identity = Vertex::Identity {
        provider: provider.to_owned(),
        id: id.to_owned(),
    };
    let id = id.to_owned();
    on_store(open, move |open| identity_links(open, &identity, &id)).await
}

/// Records the links in the claims `identity` published (on the provider, as `id`) that
/// a node signed for it and that are new here, each with its `gestalt.discovered` event,
/// in one transaction; those nodes.
fn identity_links(open: &Open, identity: &Vertex, id: &str) -> Result<Vec<Vertex>, ApiError> {
    let published = open.github.claims(id).map_err(provider_error)?;
    let gestalts = Gestalts::new(&open.store);
    let mut tx = open.store.write()?;
    let mut found = Vec::new();
    for (token, url) in published {
        // Only a claim this identity published, signed by the node it names.
        let Ok(claim) = token.verify_signatures() else {
            continue;
        };
        if claim.typ != ClaimType::ClaimLinkIdentity || claim.sub != identity.to_string() {
            continue;
        }
        let Ok(node) = claim.iss.parse::<NodeId>() else {
            continue;
        };
        let a = Vertex::Node(node);
        if !gestalts.has_link(&tx, &a, identity)? {
            let link = Link {
                a: a.clone(),
                b: identity.clone(),
                claim: token,
                url: Some(url),
            };
            gestalts.add_link(&mut tx, &link)?;
            audit::append(
                &mut tx,
                "gestalt.discovered",
                json!({ "identity": identity, "linked": node }),
            )?;
        }
        found.push(a);
    }
    tx.commit()?;
    Ok(found)
}
