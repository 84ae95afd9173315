//! [`AgentRequest`]: the agent's state, unlocking, locking, stopping, the audit log.

use std::sync::Arc;

use super::done;
use crate::agent::{Shared, lock, on_store, peers, unlock};
use crate::api::agent::{AgentRequest, AgentState, AgentStatus, Audit, Lock, Status, Stop, Unlock};
use crate::api::{ApiError, SecretBytes};
use crate::audit;

pub(super) async fn handle(
    shared: &Arc<Shared>,
    request: AgentRequest,
) -> Result<SecretBytes, ApiError> {
    match request {
        AgentRequest::Status(_) => done::<Status>(Ok(status(shared))),
        AgentRequest::Unlock(params) => done::<Unlock>(unlock(shared, params).await),
        AgentRequest::Lock(_) => {
            lock(shared);
            done::<Lock>(Ok(()))
        }
        AgentRequest::Stop(_) => {
            shared.shutdown.notify_one();
            done::<Stop>(Ok(()))
        }
        AgentRequest::Audit(Audit(query)) => {
            let open = shared.open()?;
            done::<Audit>(
                on_store(&open, move |open| {
                    // Refusals counted so far belong in what the reader sees.
                    peers::serve::flush_refusals(open, true);
                    let tx = open.store.read()?;
                    Ok(audit::query(&tx, &query)?)
                })
                .await,
            )
        }
    }
}

fn status(shared: &Shared) -> AgentStatus {
    let open = shared.open().ok();
    AgentStatus {
        state: if open.is_some() {
            AgentState::Unlocked
        } else {
            AgentState::Locked
        },
        pid: std::process::id(),
        node_id: open.as_ref().map(|o| o.identity().node_id().to_string()),
        unlocked_with: open.as_ref().map(|o| o.slot),
        uptime_s: shared.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
        peer_addr: shared
            .udp
            .as_ref()
            .and_then(|u| u.local_addr().ok())
            .map(|a| a.to_string()),
    }
}
