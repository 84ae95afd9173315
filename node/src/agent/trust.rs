//! The agent's trust side: node claims (cross-signed, after an invitation), the gestalt
//! commands, and discovery (walking sigchains and adding what verifies to the graph).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::peers::commands::send_notification;
use super::peers::pool::call_peer;
use super::peers::serve::denied;
use super::{Open, blocking, lost, node_id, on_store, store_error};
use crate::api::identities::{DeviceAuthStarted, GestaltInfo, GestaltMember, IdentityClaimed};
use crate::api::keys::KeyChanged;
use crate::api::nodes::Claimed;
use crate::api::{ApiError, ErrorCode};
use crate::audit;
use crate::clock::unix_s;
use crate::gestalt::{BadVertex, Gestalts, Link, Vertex};
use crate::identity::NodeId;
use crate::nodes::{NodePermission, Nodes};
use crate::notifications::{Body, Mailbox, Notifications};
use crate::peer::{PeerReply, PeerRequest};
use crate::provider::{GitHub, Poll, ProviderError};
use crate::sigchain::{self, ClaimToken, ClaimType};

/// A device authorisation in progress: the provider's polling interval is respected,
/// and each `slow_down` adds 5 seconds to it, as the device flow asks.
pub(super) struct DeviceFlow {
    /// Seconds between polls, as the provider asked.
    interval: u64,
    /// The code the agent polls with (a credential until it expires).
    device_code: zeroize::Zeroizing<String>,
}

/// How old (or how far in the future) a claim presented for countersigning may be.
const CLAIM_FRESHNESS: Duration = Duration::from_secs(600);
/// The most vertices one discovery walks.
const DISCOVERY_LIMIT: usize = 64;

pub(super) fn vertex(s: &str) -> Result<Vertex, ApiError> {
    s.parse()
        .map_err(|e: BadVertex| ApiError::new(ErrorCode::BadInput, e.to_string()))
}

/// `v`, with a NodeId that renewed its key replaced by its current one.
pub(super) fn current(open: &Open, v: Vertex) -> Result<Vertex, ApiError> {
    if let Vertex::Node(node) = &v {
        let tx = open.store.read().map_err(store_error)?;
        if let Some(record) = Nodes::new(&open.store)
            .get(&tx, node)
            .map_err(store_error)?
        {
            return Ok(Vertex::Node(record.node_id));
        }
    }
    Ok(v)
}

/// Serves `ClaimNode`: countersigns `token` from `peer` if this node invited it, records
/// the link, and returns this node's own claim of the link for `peer` to sign. Refuses
/// forged, replayed and stale claims.
pub(super) fn countersign(
    open: &Open,
    peer: NodeId,
    token: ClaimToken,
) -> Result<(ClaimToken, ClaimToken), ApiError> {
    let me = open.identity().node_id();
    let refuse = |why: &str| denied(open, &peer, "claim", None, why);
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
        .list(Mailbox::Outbox)
        .map_err(store_error)?
        .iter()
        .any(|n| n.peer == peer && n.body == Body::GestaltInvite);
    if !invited {
        return Err(refuse(
            "this node has not invited you to its gestalt (it must run `pk identities invite <you>` first)",
        ));
    }
    let gestalts = Gestalts::new(&open.store);
    let mut tx = open.store.write().map_err(store_error)?;
    if gestalts
        .links(&tx)
        .map_err(store_error)?
        .iter()
        .any(|l| l.claim.claim().is_ok_and(|c| c.nonce == claim.nonce))
    {
        // The refusal is audited in a transaction of its own.
        drop(tx);
        return Err(refuse("this claim was countersigned before (a replay)"));
    }
    let mut signed = token;
    signed.add_signature(&open.identity());
    gestalts
        .add_link(
            &mut tx,
            &Link {
                a: Vertex::Node(peer),
                b: Vertex::Node(me),
                claim: signed.clone(),
                url: None,
            },
        )
        .map_err(store_error)?;
    audit::append(
        &mut tx,
        "gestalt.linked",
        json!({ "node": peer, "by": "countersign" }),
    )
    .map_err(store_error)?;
    let ours = sigchain::next_claim(&tx, &me, ClaimType::ClaimLinkNode, &peer.to_string())
        .map_err(store_error)?;
    tx.commit().map_err(store_error)?;
    Ok((signed, ClaimToken::sign(&ours, &open.identity())))
}

/// Serves `ClaimNodeFinish`: appends this node's own link claim, now signed by `peer`
/// too, to this node's sigchain.
pub(super) fn finish_claim(open: &Open, peer: NodeId, token: ClaimToken) -> Result<(), ApiError> {
    let me = open.identity().node_id();
    let refuse = |why: &str| denied(open, &peer, "claim", None, why);
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
    let mut tx = open.store.write().map_err(store_error)?;
    let linked = gestalts
        .has_link(&tx, &Vertex::Node(me), &Vertex::Node(peer))
        .map_err(store_error)?;
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
    )
    .map_err(store_error)?;
    tx.commit().map_err(store_error)
}

/// One gestalt, by any of its vertices (`pk identities get` and `permissions`).
pub(super) async fn gestalt(open: &Arc<Open>, gestalt: &str) -> Result<GestaltInfo, ApiError> {
    let v = vertex(gestalt)?;
    on_store(open, move |open| info(open, &current(open, v)?)).await
}

/// Discovers the gestalt of `gestalt` now, and answers it.
pub(super) async fn discover_now(open: &Arc<Open>, gestalt: &str) -> Result<GestaltInfo, ApiError> {
    let v = vertex(gestalt)?;
    let v = on_store(open, move |open| current(open, v)).await?;
    discover(open, v.clone()).await?;
    on_store(open, move |open| info(open, &v)).await
}

/// Starts a device authorisation with `provider`: what the user must do, and the handle
/// that [`auth_finish`] waits on.
pub(super) async fn auth_start(
    open: &Arc<Open>,
    provider: &str,
) -> Result<DeviceAuthStarted, ApiError> {
    github_only(provider)?;
    on_store(open, |open| {
        let (auth, device_code) = open.github.start_auth().map_err(provider_error)?;
        let handle = {
            use rand_core::RngCore as _;
            rand_core::OsRng.next_u64()
        };
        open.device_auths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                handle,
                DeviceFlow {
                    interval: auth.interval,
                    device_code: zeroize::Zeroizing::new(device_code),
                },
            );
        Ok(DeviceAuthStarted { handle, auth })
    })
    .await
}

/// Searches `provider` for identities matching `term`.
pub(super) async fn search(
    open: &Arc<Open>,
    provider: &str,
    term: String,
) -> Result<Vec<String>, ApiError> {
    github_only(provider)?;
    on_store(open, move |open| {
        Ok(open
            .github
            .search(&term)
            .map_err(provider_error)?
            .into_iter()
            .map(|login| format!("{}:{login}", GitHub::ID))
            .collect())
    })
    .await
}

pub(super) fn pem(cert: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(cert);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// `pk keys renew` (`reset` false) and `pk keys reset`: a new node key. A renewal is
/// certified by the old key (a certificate peers follow, and a claim signed by both keys
/// in the sigchain), so the node's links and everything shared with it carry over. A
/// reset starts a fresh identity: a new, empty sigchain and no links.
pub(super) async fn rotate(open: &Arc<Open>, reset: bool) -> Result<KeyChanged, ApiError> {
    let old = open.identity();
    let new = Arc::new(crate::identity::Identity::generate());
    let renewals = {
        let (open, old, new) = (open.clone(), old.clone(), new.clone());
        blocking(move || {
            let internal = |e: rcgen::Error| ApiError::new(ErrorCode::Internal, e.to_string());
            let mut tx = open.store.write().map_err(store_error)?;
            new.store_as_node_key(&mut tx).map_err(store_error)?;
            let (from, to) = (Vertex::Node(old.node_id()), Vertex::Node(new.node_id()));
            let gestalts = Gestalts::new(&open.store);
            if reset {
                crate::identity::record_renewal(&mut tx, None).map_err(store_error)?;
                sigchain::clear(&mut tx).map_err(store_error)?;
                gestalts.unlink(&mut tx, &from).map_err(store_error)?;
            } else {
                let cert = old.certify(&new).map_err(internal)?;
                crate::identity::record_renewal(&mut tx, Some(&cert)).map_err(store_error)?;
                let claim = sigchain::next_claim(
                    &tx,
                    &old.node_id(),
                    ClaimType::ClaimKeyRenew,
                    &new.node_id().to_string(),
                )
                .map_err(store_error)?;
                let mut token = ClaimToken::sign(&claim, &old);
                token.add_signature(&new);
                sigchain::append(&mut tx, &token).map_err(store_error)?;
                gestalts
                    .rename_vertex(&mut tx, &from, &to)
                    .map_err(store_error)?;
            }
            audit::append(
                &mut tx,
                if reset { "keys.reset" } else { "keys.renewed" },
                json!({ "was": old.node_id(), "now": new.node_id() }),
            )
            .map_err(store_error)?;
            tx.commit().map_err(store_error)?;
            let tx = open.store.read().map_err(store_error)?;
            crate::identity::renewals(&tx).map_err(store_error)
        })
        .await?
    };
    *open.identity.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
    if let Some(net) = open.net.get() {
        net.set_identity(&new, renewals)?;
    }
    Ok(KeyChanged {
        was: old.node_id().to_string(),
        now: new.node_id().to_string(),
        certified: !reset,
    })
}

pub(super) fn github_only(provider: &str) -> Result<(), ApiError> {
    if provider == GitHub::ID || provider == "github" {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::BadInput,
            format!("unknown identity provider {provider:?}: the providers are: github.com"),
        ))
    }
}

fn provider_error(e: ProviderError) -> ApiError {
    let code = match e {
        ProviderError::Refused { .. } => ErrorCode::Denied,
        ProviderError::Expired(_) => ErrorCode::BadInput,
        _ => ErrorCode::Unavailable,
    };
    ApiError::new(code, e.to_string())
}

/// Polls the device flow under `handle` until the user approves, refuses or the code
/// expires; stores the token.
pub(super) async fn auth_finish(open: &Arc<Open>, handle: u64) -> Result<String, ApiError> {
    let DeviceFlow {
        interval,
        device_code,
    } = open
        .device_auths
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&handle)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such authorisation in progress"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15 * 60);
    let mut interval = Duration::from_secs(interval);
    loop {
        tokio::time::sleep(interval).await;
        let polled = {
            let open = open.clone();
            let code = device_code.clone();
            blocking(move || open.github.poll_auth(&code).map_err(provider_error)).await?
        };
        if let Poll::SlowDown = polled {
            interval += Duration::from_secs(5);
        }
        if let Poll::Approved(token) = polled {
            let identity = format!("{}:{}", token.provider, token.identity);
            let open = open.clone();
            return blocking(move || {
                let mut tx = open.store.write().map_err(store_error)?;
                Gestalts::new(&open.store)
                    .put_provider_token(&mut tx, &token)
                    .map_err(store_error)?;
                audit::append(
                    &mut tx,
                    "identity.authenticated",
                    json!({ "identity": identity }),
                )
                .map_err(store_error)?;
                tx.commit().map_err(store_error)?;
                Ok(identity)
            })
            .await;
        }
        if std::time::Instant::now() > deadline {
            return Err(ApiError::new(
                ErrorCode::BadInput,
                "the authorisation was not approved in time; start again",
            ));
        }
    }
}

/// `pk identities claim`: a claim in this node's sigchain, published on the provider.
pub(super) fn claim_identity(open: &Open, identity: &Vertex) -> Result<IdentityClaimed, ApiError> {
    let Vertex::Identity { provider, id } = identity else {
        return Err(ApiError::new(
            ErrorCode::BadInput,
            "claim an identity (provider:identity); nodes are linked with `pk nodes claim`",
        ));
    };
    github_only(provider)?;
    let gestalts = Gestalts::new(&open.store);
    let token = {
        let tx = open.store.read().map_err(store_error)?;
        gestalts
            .provider_token(&tx, GitHub::ID)
            .map_err(store_error)?
            .filter(|t| t.identity == *id)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Denied,
                    format!(
                        "this node is not authenticated as {identity}: run `pk identities authenticate github.com` first"
                    ),
                )
            })?
    };
    let me = open.identity().node_id();
    let mut tx = open.store.write().map_err(store_error)?;
    let claim = sigchain::next_claim(
        &tx,
        &me,
        ClaimType::ClaimLinkIdentity,
        &identity.to_string(),
    )
    .map_err(store_error)?;
    let signed = ClaimToken::sign(&claim, &open.identity());
    // Published first: a claim in the chain that the provider never got would prove
    // nothing; a published claim whose append failed is only an orphan gist.
    let url = open
        .github
        .publish(&token, &signed)
        .map_err(provider_error)?;
    let seq = sigchain::append(&mut tx, &signed).map_err(store_error)?;
    gestalts
        .add_link(
            &mut tx,
            &Link {
                a: Vertex::Node(me),
                b: identity.clone(),
                claim: signed,
                url: Some(url.clone()),
            },
        )
        .map_err(store_error)?;
    audit::append(
        &mut tx,
        "identity.claimed",
        json!({ "identity": identity, "url": url, "seq": seq }),
    )
    .map_err(store_error)?;
    tx.commit().map_err(store_error)?;
    Ok(IdentityClaimed {
        identity: identity.to_string(),
        url,
        seq,
    })
}

/// `pk nodes claim`: links with `node` if it invited this node, else invites it.
pub(super) async fn claim_node(open: &Arc<Open>, node: &str) -> Result<Claimed, ApiError> {
    let node = node_id(node)?;
    let me = open.identity().node_id();
    if node == me {
        return Err(ApiError::new(
            ErrorCode::BadInput,
            "that is this node's own NodeId",
        ));
    }
    let invited_by = {
        let open = open.clone();
        blocking(move || {
            Ok(Notifications::new(&open.store)
                .list(Mailbox::Inbox)
                .map_err(store_error)?
                .iter()
                .any(|n| n.peer == node && n.body == Body::GestaltInvite))
        })
        .await?
    };
    if !invited_by {
        send_notification(open, node, Body::GestaltInvite).await?;
        return Ok(Claimed {
            node: node.to_string(),
            invited: true,
            seq: None,
        });
    }
    let token = {
        let open = open.clone();
        blocking(move || {
            let tx = open.store.read().map_err(store_error)?;
            let claim = sigchain::next_claim(&tx, &me, ClaimType::ClaimLinkNode, &node.to_string())
                .map_err(store_error)?;
            Ok(ClaimToken::sign(&claim, &open.identity()))
        })
        .await?
    };
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
    let open2 = open.clone();
    let open = open.clone();
    let seq = blocking(move || {
        let mut tx = open.store.write().map_err(store_error)?;
        let seq = sigchain::append(&mut tx, &signed).map_err(|_| {
            ApiError::new(
                ErrorCode::Unavailable,
                "this node's sigchain moved on while the claim was signed: claim again",
            )
        })?;
        Gestalts::new(&open.store)
            .add_link(
                &mut tx,
                &Link {
                    a: Vertex::Node(me),
                    b: Vertex::Node(node),
                    claim: signed,
                    url: None,
                },
            )
            .map_err(store_error)?;
        audit::append(
            &mut tx,
            "gestalt.linked",
            json!({ "node": node, "by": "claim", "seq": seq }),
        )
        .map_err(store_error)?;
        tx.commit().map_err(store_error)?;
        Ok(seq)
    })
    .await?;
    // Their chain records the link too, with both signatures.
    call_peer(&open2, node, PeerRequest::ClaimNodeFinish(theirs)).await?;
    Ok(Claimed {
        node: node.to_string(),
        invited: false,
        seq: Some(seq),
    })
}

/// The gestalt of `v`, as `pk identities get` shows it.
fn info(open: &Open, v: &Vertex) -> Result<GestaltInfo, ApiError> {
    let tx = open.store.read().map_err(store_error)?;
    let nodes = Nodes::new(&open.store);
    let gestalts = Gestalts::new(&open.store);
    let component = gestalts.component(&tx, v).map_err(store_error)?;
    let mut members = Vec::new();
    for member in &component {
        let own = match member {
            Vertex::Node(node) => nodes
                .get(&tx, node)
                .map_err(store_error)?
                .map(|r| r.permissions.into_iter().collect()),
            identity => gestalts
                .identity(&tx, identity)
                .map_err(store_error)?
                .map(|r| r.permissions.into_iter().collect()),
        };
        members.push(GestaltMember {
            vertex: member.to_string(),
            permissions: own,
        });
    }
    let links = gestalts
        .links(&tx)
        .map_err(store_error)?
        .into_iter()
        .filter(|l| component.contains(&l.a))
        .map(|l| (l.a.to_string(), l.b.to_string()))
        .collect();
    Ok(GestaltInfo {
        members,
        links,
        permissions: nodes
            .permissions_of(&tx, v)
            .map_err(store_error)?
            .into_iter()
            .collect(),
    })
}

/// Every gestalt: one per connected group of the known vertices.
pub(super) fn list(open: &Open) -> Result<Vec<GestaltInfo>, ApiError> {
    let mut vertices: BTreeSet<Vertex> = BTreeSet::new();
    {
        let tx = open.store.read().map_err(store_error)?;
        let gestalts = Gestalts::new(&open.store);
        for record in Nodes::new(&open.store).all(&tx).map_err(store_error)? {
            vertices.insert(Vertex::Node(record.node_id));
        }
        for record in gestalts.identities(&tx).map_err(store_error)? {
            vertices.insert(record.identity);
        }
        for link in gestalts.links(&tx).map_err(store_error)? {
            vertices.insert(link.a);
            vertices.insert(link.b);
        }
    }
    let mut seen: BTreeSet<Vertex> = BTreeSet::new();
    let mut out = Vec::new();
    for v in vertices {
        if seen.contains(&v) {
            continue;
        }
        let gestalt = info(open, &v)?;
        for m in &gestalt.members {
            if let Ok(member) = m.vertex.parse() {
                seen.insert(member);
            }
        }
        out.push(gestalt);
    }
    Ok(out)
}

/// `trust` grants `notify` to the vertex (and queues its discovery); `untrust` removes
/// `notify` from every vertex of its gestalt.
pub(super) fn set_trust(open: &Open, v: &Vertex, trust: bool) -> Result<GestaltInfo, ApiError> {
    let nodes = Nodes::new(&open.store);
    let gestalts = Gestalts::new(&open.store);
    let targets = if trust {
        vec![v.clone()]
    } else {
        let tx = open.store.read().map_err(store_error)?;
        gestalts.component(&tx, v).map_err(store_error)?
    };
    for target in &targets {
        grant(open, target, &[NodePermission::Notify], trust, !trust)?;
    }
    if trust {
        let mut tx = open.store.write().map_err(store_error)?;
        gestalts.enqueue(&mut tx, v).map_err(store_error)?;
        tx.commit().map_err(store_error)?;
    }
    let _ = nodes;
    info(open, v)
}

/// Sets permissions on one vertex's own record (a node in the graph, or an identity).
fn grant(
    open: &Open,
    v: &Vertex,
    permissions: &[NodePermission],
    allow: bool,
    quiet_if_unknown: bool,
) -> Result<(), ApiError> {
    match v {
        Vertex::Node(node) => {
            let changed = Nodes::new(&open.store)
                .set_permissions(node, permissions, allow)
                .map_err(store_error)?;
            if changed.is_none() && !quiet_if_unknown {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("{node} is not in the node graph: add it with `pk nodes add` first"),
                ));
            }
        }
        identity => {
            let gestalts = Gestalts::new(&open.store);
            let mut tx = open.store.write().map_err(store_error)?;
            let mut record = gestalts
                .identity_or_new(&tx, identity)
                .map_err(store_error)?;
            for p in permissions {
                if allow {
                    record.permissions.insert(*p);
                } else {
                    record.permissions.remove(p);
                }
            }
            gestalts
                .put_identity(&mut tx, &record)
                .map_err(store_error)?;
            audit::append(
                &mut tx,
                if allow {
                    "identity.allowed"
                } else {
                    "identity.disallowed"
                },
                json!({ "identity": identity, "permissions": permissions }),
            )
            .map_err(store_error)?;
            tx.commit().map_err(store_error)?;
        }
    }
    Ok(())
}

pub(super) fn permit(
    open: &Open,
    v: &Vertex,
    permissions: &[NodePermission],
    allow: bool,
) -> Result<GestaltInfo, ApiError> {
    grant(open, v, permissions, allow, false)?;
    info(open, v)
}

/// Walks the gestalt of `start`: fetches and verifies the sigchains of its nodes, and
/// adds every link that verifies. A vertex that cannot be reached stays queued.
pub(super) async fn discover(open: &Arc<Open>, start: Vertex) -> Result<(), ApiError> {
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
        let open = open.clone();
        let v = v.clone();
        blocking(move || {
            let mut tx = open.store.write().map_err(store_error)?;
            Gestalts::new(&open.store)
                .dequeue(&mut tx, &v, error)
                .map_err(store_error)?;
            tx.commit().map_err(store_error)
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
    let open = open.clone();
    blocking(move || {
        let gestalts = Gestalts::new(&open.store);
        let mut tx = open.store.write().map_err(store_error)?;
        let mut found = Vec::new();
        for (claim, token) in claims.iter().zip(tokens) {
            // Identity claims are checked on the provider only when the user asks for
            // that identity (discover or trust it): walking a chain never contacts a
            // provider unasked. Key renewals are the node's own history, not links.
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
            if !gestalts.has_link(&tx, &a, &b).map_err(store_error)? {
                gestalts
                    .add_link(
                        &mut tx,
                        &Link {
                            a,
                            b: b.clone(),
                            claim: token,
                            url: None,
                        },
                    )
                    .map_err(store_error)?;
                audit::append(
                    &mut tx,
                    "gestalt.discovered",
                    json!({ "node": node, "linked": other }),
                )
                .map_err(store_error)?;
            }
            found.push(b);
        }
        tx.commit().map_err(store_error)?;
        Ok(found)
    })
    .await
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
    let open = open.clone();
    let id = id.to_owned();
    blocking(move || {
        let published = open.github.claims(&id).map_err(provider_error)?;
        let gestalts = Gestalts::new(&open.store);
        let mut tx = open.store.write().map_err(store_error)?;
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
            if !gestalts.has_link(&tx, &a, &identity).map_err(store_error)? {
                gestalts
                    .add_link(
                        &mut tx,
                        &Link {
                            a: a.clone(),
                            b: identity.clone(),
                            claim: token,
                            url: Some(url),
                        },
                    )
                    .map_err(store_error)?;
                audit::append(
                    &mut tx,
                    "gestalt.discovered",
                    json!({ "identity": identity, "linked": node }),
                )
                .map_err(store_error)?;
            }
            found.push(a);
        }
        tx.commit().map_err(store_error)?;
        Ok(found)
    })
    .await
}
