//! Commands about gestalts: `identities` and `nodes claim`.

use node::NodePath;
use node::api::{GestaltInfo, Reply, Request};
use node::client::Client;
use node::nodes::NodePermission;
use serde_json::json;

use crate::agent_cmds::{call, unexpected};
use crate::cli::{IdentitiesCommand, NodePermissionArg};
use crate::commands::Output;
use crate::error::CliError;

fn permission(p: NodePermissionArg) -> NodePermission {
    match p {
        NodePermissionArg::Notify => NodePermission::Notify,
        NodePermissionArg::Scan => NodePermission::Scan,
    }
}

fn names(list: &[NodePermission]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|p| match p {
            NodePermission::Notify => "notify",
            NodePermission::Scan => "scan",
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn show(gestalt: &GestaltInfo) -> String {
    let mut text = format!("gestalt (may: {})\n", names(&gestalt.permissions));
    for m in &gestalt.members {
        let own = match &m.permissions {
            Some(p) => format!("may: {}", names(p)),
            None => "linked".into(),
        };
        text += &format!("  {}\t{own}\n", m.vertex);
    }
    for (a, b) in &gestalt.links {
        text += &format!("  link {a} -- {b}\n");
    }
    text
}

/// `pk nodes claim`.
pub(crate) fn claim(node: &NodePath, node_id: &str, out: &Output) -> Result<(), CliError> {
    let client = Client::new(node);
    let Reply::Claimed { node, invited, seq } =
        call(&client, Request::NodesClaim(node_id.to_owned()))?
    else {
        return Err(unexpected());
    };
    let _ = out.emit(
        json!({ "node": node, "invited": invited, "seq": seq }),
        || {
            if invited {
                format!(
                    "Invited {node} to this node's gestalt; the nodes are linked once it runs `pk nodes claim` for this node\n"
                )
            } else {
                format!(
                    "Linked with {node}: claim {} in this node's sigchain, signed by both nodes\n",
                    seq.unwrap_or(0)
                )
            }
        },
    );
    Ok(())
}

pub(crate) fn identities(
    node: &NodePath,
    command: &IdentitiesCommand,
    out: &Output,
) -> Result<(), CliError> {
    let client = Client::new(node);
    let request = match command {
        IdentitiesCommand::List => Request::IdentitiesList,
        IdentitiesCommand::Get { gestalt_id } => Request::IdentitiesGet(gestalt_id.clone()),
        IdentitiesCommand::Trust { gestalt_id } => Request::IdentitiesTrust {
            gestalt: gestalt_id.clone(),
            trust: true,
        },
        IdentitiesCommand::Untrust { gestalt_id } => Request::IdentitiesTrust {
            gestalt: gestalt_id.clone(),
            trust: false,
        },
        IdentitiesCommand::Allow {
            gestalt_id,
            permission: p,
        }
        | IdentitiesCommand::Disallow {
            gestalt_id,
            permission: p,
        } => Request::IdentitiesPermit {
            gestalt: gestalt_id.clone(),
            permissions: vec![permission(*p)],
            allow: matches!(command, IdentitiesCommand::Allow { .. }),
        },
        IdentitiesCommand::Permissions { gestalt_id } => {
            Request::IdentitiesPermissions(gestalt_id.clone())
        }
        IdentitiesCommand::Invite { node_id } => {
            call(&client, Request::IdentitiesInvite(node_id.clone()))?;
            let _ = out.emit(json!({ "invited": node_id }), || {
                format!("Invited {node_id} to this node's gestalt\n")
            });
            return Ok(());
        }
        IdentitiesCommand::Authenticate { provider_id } => {
            let Reply::DeviceAuth { handle, auth } =
                call(&client, Request::IdentitiesAuthStart(provider_id.clone()))?
            else {
                return Err(unexpected());
            };
            // The instructions go to stderr, so that --format json keeps stdout to the result.
            eprintln!(
                "Open {} and enter the code {} (it expires in {} minutes); waiting for your approval...",
                auth.verification_uri,
                auth.user_code,
                auth.expires_in / 60
            );
            let Reply::Identities(ids) = call(
                &client,
                Request::IdentitiesAuthFinish {
                    provider: provider_id.clone(),
                    handle,
                },
            )?
            else {
                return Err(unexpected());
            };
            let _ = out.emit(json!({ "authenticated": ids }), || {
                format!("Authenticated as {}\n", ids.join(", "))
            });
            return Ok(());
        }
        IdentitiesCommand::Authenticated => Request::IdentitiesAuthenticated,
        IdentitiesCommand::Search { provider_id, term } => Request::IdentitiesSearch {
            provider: provider_id.clone(),
            term: term.clone(),
        },
        IdentitiesCommand::Claim { identity } => {
            let Reply::IdentityClaimed { identity, url, seq } =
                call(&client, Request::IdentitiesClaim(identity.clone()))?
            else {
                return Err(unexpected());
            };
            let _ = out.emit(json!({ "identity": identity, "url": url, "seq": seq }), || {
                format!("Claimed {identity}: claim {seq} of this node's sigchain, published at {url}\n")
            });
            return Ok(());
        }
        IdentitiesCommand::Discover { gestalt_id } => {
            Request::IdentitiesDiscover(gestalt_id.clone())
        }
        IdentitiesCommand::Queue => {
            let Reply::Queue(queue) = call(&client, Request::IdentitiesQueue)? else {
                return Err(unexpected());
            };
            let _ = out.emit(json!(queue), || {
                if queue.is_empty() {
                    return "The discovery queue is empty\n".into();
                }
                queue
                    .iter()
                    .map(|q| {
                        format!(
                            "{}\tattempts: {}{}\n",
                            q.vertex,
                            q.attempts,
                            q.last_error
                                .as_ref()
                                .map(|e| format!("\tlast error: {e}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect()
            });
            return Ok(());
        }
    };
    let list = match call(&client, request)? {
        Reply::Gestalts(list) => list,
        Reply::Identities(ids) => {
            let _ = out.emit(json!(ids), || {
                ids.iter().map(|i| format!("{i}\n")).collect()
            });
            return Ok(());
        }
        _ => return Err(unexpected()),
    };
    let _ = out.emit(json!(list), || {
        if list.is_empty() {
            return "No gestalts yet\n".into();
        }
        list.iter().map(show).collect()
    });
    Ok(())
}
