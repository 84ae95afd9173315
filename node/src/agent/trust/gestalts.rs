//! Gestalts as `pk identities` shows and changes them: one gestalt ([`gestalt`]) or all
//! ([`list`]), `trust`/`untrust` and `permit`/`disallow` on a vertex.
//!
//! Depends on the agent's root only.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;

use crate::agent::{Open, on_store};
use crate::api::identities::{GestaltInfo, GestaltMember};
use crate::api::{ApiError, ErrorCode};
use crate::gestalt::{BadVertex, Gestalts, Vertex};
use crate::nodes::{NodePermission, Nodes};

/// A vertex (a NodeId, or `provider:identity`) given by `pk`, checked.
pub(in crate::agent) fn vertex(s: &str) -> Result<Vertex, ApiError> {
    s.parse()
        .map_err(|e: BadVertex| ApiError::new(ErrorCode::BadInput, e.to_string()))
}

/// `v`, with a NodeId that renewed its key replaced by its current one.
pub(in crate::agent) fn current(open: &Open, v: Vertex) -> Result<Vertex, ApiError> {
    if let Vertex::Node(node) = &v {
        let tx = open.store.read()?;
        if let Some(record) = Nodes::new(&open.store).get(&tx, node)? {
            return Ok(Vertex::Node(record.node_id));
        }
    }
    Ok(v)
}

/// One gestalt, by any of its vertices (`pk identities get` and `permissions`).
pub(in crate::agent) async fn gestalt(
    open: &Arc<Open>,
    gestalt: &str,
) -> Result<GestaltInfo, ApiError> {
    let v = vertex(gestalt)?;
    on_store(open, move |open| info(open, &current(open, v)?)).await
}

/// The gestalt of `v`, as `pk identities get` shows it.
pub(super) fn info(open: &Open, v: &Vertex) -> Result<GestaltInfo, ApiError> {
    let tx = open.store.read()?;
    let nodes = Nodes::new(&open.store);
    let gestalts = Gestalts::new(&open.store);
    let component = gestalts.component(&tx, v)?;
    let mut members = Vec::new();
    for member in &component {
        let own = match member {
            Vertex::Node(node) => nodes
                .get(&tx, node)?
                .map(|r| r.permissions.into_iter().collect()),
            identity => gestalts
                .identity(&tx, identity)?
                .map(|r| r.permissions.into_iter().collect()),
        };
        members.push(GestaltMember {
            vertex: member.to_string(),
            permissions: own,
        });
    }
    let links = gestalts
        .links(&tx)?
        .into_iter()
        .filter(|l| component.contains(&l.a))
        .map(|l| (l.a.to_string(), l.b.to_string()))
        .collect();
    Ok(GestaltInfo {
        members,
        links,
        permissions: nodes.permissions_of(&tx, v)?.into_iter().collect(),
    })
}

/// Every gestalt: one per connected group of the known vertices.
pub(in crate::agent) fn list(open: &Open) -> Result<Vec<GestaltInfo>, ApiError> {
    let mut vertices: BTreeSet<Vertex> = BTreeSet::new();
    {
        let tx = open.store.read()?;
        let gestalts = Gestalts::new(&open.store);
        for record in Nodes::new(&open.store).all(&tx)? {
            vertices.insert(Vertex::Node(record.node_id));
        }
        for record in gestalts.identities(&tx)? {
            vertices.insert(record.identity);
        }
        for link in gestalts.links(&tx)? {
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
pub(in crate::agent) fn set_trust(
    open: &Open,
    v: &Vertex,
    trust: bool,
) -> Result<GestaltInfo, ApiError> {
    let gestalts = Gestalts::new(&open.store);
    let targets = if trust {
        vec![v.clone()]
    } else {
        let tx = open.store.read()?;
        gestalts.component(&tx, v)?
    };
    for target in &targets {
        grant(open, target, &[NodePermission::Notify], trust, !trust)?;
    }
    if trust {
        let mut tx = open.store.write()?;
        gestalts.enqueue(&mut tx, v)?;
        tx.commit()?;
    }
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
            let changed = Nodes::new(&open.store).set_permissions(node, permissions, allow)?;
            if changed.is_none() && !quiet_if_unknown {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("{node} is not in the node graph: add it with `pk nodes add` first"),
                ));
            }
        }
        identity => {
            let event = if allow {
                "identity.allowed"
            } else {
                "identity.disallowed"
            };
            let fields = json!({ "identity": identity, "permissions": permissions });
            open.audited(event, fields, |tx| {
                let gestalts = Gestalts::new(&open.store);
                let mut record = gestalts.identity_or_new(tx, identity)?;
                for p in permissions {
                    if allow {
                        record.permissions.insert(*p);
                    } else {
                        record.permissions.remove(p);
                    }
                }
                Ok(gestalts.put_identity(tx, &record)?)
            })?;
        }
    }
    Ok(())
}

/// `permit` (or disallow, `allow` false) `permissions` on one vertex's own record.
pub(in crate::agent) fn permit(
    open: &Open,
    v: &Vertex,
    permissions: &[NodePermission],
    allow: bool,
) -> Result<GestaltInfo, ApiError> {
    grant(open, v, permissions, allow, false)?;
    info(open, v)
}
