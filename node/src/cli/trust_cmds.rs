//! Commands about gestalts: `identities` and `nodes claim`.

use serde_json::json;

use crate::NodePath;
use crate::api::identities::{self as api, DeviceAuthStarted, GestaltInfo, IdentityClaimed};
use crate::api::nodes::{self as nodes_api, Claimed};
use crate::client::Client;
use crate::nodes::NodePermission;

use super::args::{IdentitiesCommand, NodePermissionArg};
use super::call::call;
use super::error::CliError;
use super::output::Output;

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
    let Claimed { node, invited, seq } = call(
        &client,
        nodes_api::Claim {
            node: node_id.to_owned(),
        },
    )?;
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
    // The calls about one gestalt print it as a list of one, as `identities list` does.
    let gestalt = match command {
        IdentitiesCommand::List => {
            print_gestalts(&call(&client, api::List)?, out);
            return Ok(());
        }
        IdentitiesCommand::Get { gestalt_id } => call(
            &client,
            api::Get {
                gestalt: gestalt_id.clone(),
            },
        )?,
        IdentitiesCommand::Trust { gestalt_id } | IdentitiesCommand::Untrust { gestalt_id } => {
            call(
                &client,
                api::Trust {
                    gestalt: gestalt_id.clone(),
                    trust: matches!(command, IdentitiesCommand::Trust { .. }),
                },
            )?
        }
        IdentitiesCommand::Allow {
            gestalt_id,
            permission: p,
        }
        | IdentitiesCommand::Disallow {
            gestalt_id,
            permission: p,
        } => call(
            &client,
            api::Permit {
                gestalt: gestalt_id.clone(),
                permissions: vec![permission(*p)],
                allow: matches!(command, IdentitiesCommand::Allow { .. }),
            },
        )?,
        IdentitiesCommand::Permissions { gestalt_id } => call(
            &client,
            api::Permissions {
                gestalt: gestalt_id.clone(),
            },
        )?,
        IdentitiesCommand::Discover { gestalt_id } => call(
            &client,
            api::Discover {
                gestalt: gestalt_id.clone(),
            },
        )?,
        IdentitiesCommand::Invite { node_id } => return invite(&client, node_id, out),
        IdentitiesCommand::Authenticate { provider_id } => {
            return authenticate(&client, provider_id, out);
        }
        IdentitiesCommand::Authenticated => {
            print_identities(&call(&client, api::Authenticated)?, out);
            return Ok(());
        }
        IdentitiesCommand::Search { provider_id, term } => {
            let found = call(
                &client,
                api::Search {
                    provider: provider_id.clone(),
                    term: term.clone(),
                },
            )?;
            print_identities(&found, out);
            return Ok(());
        }
        IdentitiesCommand::Claim { identity } => return claim_identity(&client, identity, out),
        IdentitiesCommand::Queue => return queue(&client, out),
    };
    print_gestalts(&[gestalt], out);
    Ok(())
}

/// `pk identities invite`: a node invited into this node's gestalt.
fn invite(client: &Client, node_id: &str, out: &Output) -> Result<(), CliError> {
    call(
        client,
        api::Invite {
            node: node_id.to_owned(),
        },
    )?;
    let _ = out.emit(json!({ "invited": node_id }), || {
        format!("Invited {node_id} to this node's gestalt\n")
    });
    Ok(())
}

/// `pk identities claim`: an identity claimed in the sigchain and published.
fn claim_identity(client: &Client, identity: &str, out: &Output) -> Result<(), CliError> {
    let IdentityClaimed { identity, url, seq } = call(
        client,
        api::Claim {
            identity: identity.to_owned(),
        },
    )?;
    let _ = out.emit(
        json!({ "identity": identity, "url": url, "seq": seq }),
        || format!("Claimed {identity}: claim {seq} of this node's sigchain, published at {url}\n"),
    );
    Ok(())
}

/// `pk identities queue`: the discovery queue.
fn queue(client: &Client, out: &Output) -> Result<(), CliError> {
    let queue = call(client, api::Queue)?;
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
    Ok(())
}

/// `pk identities authenticate`: the device flow, the user's part on stderr.
fn authenticate(client: &Client, provider_id: &str, out: &Output) -> Result<(), CliError> {
    let DeviceAuthStarted { handle, auth } = call(
        client,
        api::AuthStart {
            provider: provider_id.to_owned(),
        },
    )?;
    // The instructions go to stderr, so that --format json keeps stdout to the result.
    eprintln!(
        "Open {} and enter the code {} (it expires in {} minutes); waiting for your approval...",
        auth.verification_uri,
        auth.user_code,
        auth.expires_in / 60
    );
    let id = call(
        client,
        api::AuthFinish {
            provider: provider_id.to_owned(),
            handle,
        },
    )?;
    // A list of one, as before the reply was a single identity.
    let ids = [id];
    let _ = out.emit(json!({ "authenticated": ids }), || {
        format!("Authenticated as {}\n", ids.join(", "))
    });
    Ok(())
}

/// Prints gestalts, or says there are none.
fn print_gestalts(list: &[GestaltInfo], out: &Output) {
    let _ = out.emit(json!(list), || {
        if list.is_empty() {
            return "No gestalts yet\n".into();
        }
        list.iter().map(show).collect()
    });
}

/// Prints identities (`provider:identity`), one a line.
fn print_identities(ids: &[String], out: &Output) {
    let _ = out.emit(json!(ids), || {
        ids.iter().map(|i| format!("{i}\n")).collect()
    });
}
