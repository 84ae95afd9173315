//! [`NodesRequest`]: the node graph, pings and lookups, connections, LAN discovery, and
//! claims linking this node with another.

use std::sync::Arc;
use std::time::Duration;

use super::done;
use crate::agent::peers::{commands, pool};
use crate::agent::trust::claims;
use crate::agent::{Open, node_id, on_store};
use crate::api::nodes::{
    Add, Claim, Connections, Discover, Find, GetAll, NodesRequest, Permit, Ping, Remove,
};
use crate::api::{ApiError, ErrorCode, SecretBytes};
use crate::lan::{self, Interfaces};
use crate::nodes::Nodes;

pub(super) async fn handle(
    open: &Arc<Open>,
    request: NodesRequest,
) -> Result<SecretBytes, ApiError> {
    match request {
        NodesRequest::Add(add) => done::<Add>(commands::nodes_add(open, add).await),
        NodesRequest::Remove(Remove { node }) => {
            let node = node_id(&node)?;
            pool::forget(open, &node);
            done::<Remove>(
                on_store(open, move |open| {
                    if Nodes::new(&open.store).remove(&node)? {
                        Ok(())
                    } else {
                        Err(not_in_graph(&node))
                    }
                })
                .await,
            )
        }
        NodesRequest::Ping(Ping { node }) => done::<Ping>(commands::ping(open, &node).await),
        NodesRequest::Find(Find { node }) => done::<Find>(commands::find(open, &node).await),
        NodesRequest::GetAll(_) => done::<GetAll>(
            on_store(open, |open| {
                let tx = open.store.read()?;
                Ok(Nodes::new(&open.store).all(&tx)?)
            })
            .await,
        ),
        NodesRequest::Connections(_) => done::<Connections>(commands::connections(open)),
        NodesRequest::Permit(Permit {
            node,
            permissions,
            allow,
        }) => {
            let node = node_id(&node)?;
            done::<Permit>(
                on_store(open, move |open| {
                    Nodes::new(&open.store)
                        .set_permissions(&node, &permissions, allow)?
                        .ok_or_else(|| not_in_graph(&node))
                })
                .await,
            )
        }
        NodesRequest::Discover(Discover { wait_ms }) => {
            let interfaces = open
                .net
                .get()
                .and_then(|n| n.lan())
                .unwrap_or(Interfaces::Lan);
            let me = open.identity().node_id().to_string();
            done::<Discover>(
                on_store(open, move |_| {
                    let wait = Duration::from_millis(u64::from(wait_ms));
                    lan::browse(wait, interfaces, Some(&me))
                        .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))
                })
                .await,
            )
        }
        NodesRequest::Claim(Claim { node }) => done::<Claim>(claims::claim_node(open, &node).await),
    }
}

fn not_in_graph(node: &crate::identity::NodeId) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("{node} is not in the node graph"),
    )
}
