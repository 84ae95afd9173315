//! [`VaultsRequest`]: vaults here, their shares, and clones and pulls from other nodes.

use std::sync::Arc;

use serde_json::json;
use tokio::net::UnixStream;

use super::done;
use crate::agent::peers::commands;
use crate::agent::{Shared, node_id, on_store, stream_out, vaults};
use crate::api::vaults::{
    Clone, Create, Delete, ExportBundle, List, Log, Permissions, Pull, Rename, Scan, Share,
    VaultsRequest, Version,
};
use crate::api::{ApiError, SecretBytes};
use crate::nodes::Nodes;

pub(super) async fn handle(
    shared: &Arc<Shared>,
    request: VaultsRequest,
    stream: &mut UnixStream,
) -> Result<SecretBytes, ApiError> {
    let open = shared.open()?;
    match request {
        VaultsRequest::Create(Create { name }) => {
            done::<Create>(on_store(&open, move |open| Ok(vaults(open).create(&name)?)).await)
        }
        VaultsRequest::List(_) => {
            done::<List>(on_store(&open, |open| Ok(vaults(open).list()?)).await)
        }
        VaultsRequest::Rename(Rename { from, to }) => {
            done::<Rename>(on_store(&open, move |open| Ok(vaults(open).rename(&from, &to)?)).await)
        }
        VaultsRequest::Delete(Delete { name }) => {
            done::<Delete>(on_store(&open, move |open| Ok(vaults(open).delete(&name)?)).await)
        }
        VaultsRequest::ExportBundle(ExportBundle { vault }) => {
            let exported = stream_out(stream, move |out| {
                vaults(&open).export_bundle(&vault, out)?;
                open.record("vault.exported", json!({ "vault": vault }))
            })
            .await;
            done::<ExportBundle>(exported)
        }
        VaultsRequest::Log(Log { vault, depth, from }) => done::<Log>(
            on_store(&open, move |open| {
                let depth = depth.map(|d| d as usize);
                Ok(vaults(open).log(&vault, depth, from.as_deref())?)
            })
            .await,
        ),
        VaultsRequest::Version(Version { vault, target }) => done::<Version>(
            on_store(
                &open,
                move |open| Ok(vaults(open).version(&vault, &target)?),
            )
            .await,
        ),
        VaultsRequest::Share(Share {
            vault,
            node,
            permissions,
            grant,
        }) => done::<Share>(commands::share(&open, vault, &node, permissions, grant).await),
        VaultsRequest::Permissions(Permissions { vault }) => done::<Permissions>(
            on_store(&open, move |open| {
                let record = vaults(open).find(None, &vault)?;
                let tx = open.store.read()?;
                Ok(Nodes::new(&open.store).shares_of(&tx, &record.id)?)
            })
            .await,
        ),
        VaultsRequest::Scan(Scan { node }) => done::<Scan>(commands::scan(&open, &node).await),
        VaultsRequest::Clone(Clone { vault, node, name }) => {
            let node = node_id(&node)?;
            done::<Clone>(commands::clone(&open, node, &vault, name).await)
        }
        VaultsRequest::Pull(Pull { vault, node }) => {
            let node = node.as_deref().map(node_id).transpose()?;
            done::<Pull>(commands::pull(&open, &vault, node).await)
        }
    }
}
