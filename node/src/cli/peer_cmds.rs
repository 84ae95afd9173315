//! Commands about other nodes: `nodes`, `notifications`, and the sharing half of `vaults`
//! (share, unshare, permissions, scan, clone, pull, backup).

use serde_json::json;

use crate::NodePath;
use crate::api::backups::{self as backups_api, Backup};
use crate::api::{nodes as nodes_api, notifications as notifications_api, vaults as vaults_api};
use crate::client::Client;
use crate::nodes::{NodePermission, VaultPermission};
use crate::notifications::{Body, Delivery, Mailbox, Notification};

use super::args::{
    BackupCommand, InboxCommand, NodePermissionArg, NodesCommand, NotificationsCommand,
    OutboxCommand, VaultPermissionArg, VaultsCommand,
};
use super::call::call;
use super::error::CliError;
use super::output::{Output, time};

fn node_permission(p: NodePermissionArg) -> NodePermission {
    match p {
        NodePermissionArg::Notify => NodePermission::Notify,
        NodePermissionArg::Scan => NodePermission::Scan,
    }
}

fn vault_permissions(
    list: &[VaultPermissionArg],
    default: &[VaultPermission],
) -> Vec<VaultPermission> {
    if list.is_empty() {
        return default.to_vec();
    }
    list.iter()
        .map(|p| match p {
            VaultPermissionArg::Clone => VaultPermission::Clone,
            VaultPermissionArg::Pull => VaultPermission::Pull,
            VaultPermissionArg::Push => VaultPermission::Push,
        })
        .collect()
}

fn names<T: serde::Serialize>(list: impl IntoIterator<Item = T>) -> String {
    let names: Vec<String> = list
        .into_iter()
        .filter_map(|p| serde_json::to_value(p).ok())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

pub(crate) fn nodes(node: &NodePath, command: &NodesCommand, out: &Output) -> Result<(), CliError> {
    let client = Client::new(node);
    match command {
        NodesCommand::Add {
            node_id,
            host,
            port,
            no_ping,
            no_notify,
        } => {
            let (node_id, addr) = node_address(node_id, host.as_deref(), *port)?;
            add(&client, node_id, addr, *no_ping, *no_notify, out)?;
        }
        NodesCommand::Remove { node_id } => {
            call(
                &client,
                nodes_api::Remove {
                    node: node_id.clone(),
                },
            )?;
            let _ = out.emit(json!({ "removed": node_id }), || {
                format!("Removed {node_id} and its vault permissions\n")
            });
        }
        NodesCommand::Ping { node_id } => {
            let nodes_api::Pong { node, addr, rtt_ms } = call(
                &client,
                nodes_api::Ping {
                    node: node_id.clone(),
                },
            )?;
            let _ = out.emit(
                json!({ "node": node, "addr": addr, "rtt_ms": rtt_ms, "success": true }),
                || format!("{node} answered from {addr} in {rtt_ms} ms\n"),
            );
        }
        NodesCommand::Find { node_id } => {
            let addrs = call(
                &client,
                nodes_api::Find {
                    node: node_id.clone(),
                },
            )?;
            let _ = out.emit(json!({ "node": node_id, "addrs": addrs }), || {
                addrs.iter().map(|a| format!("{a}\n")).collect()
            });
        }
        NodesCommand::Getall => get_all(&client, out)?,
        NodesCommand::Connections => connections(&client, out)?,
        NodesCommand::Allow {
            node_id,
            permissions,
        }
        | NodesCommand::Disallow {
            node_id,
            permissions,
        } => {
            let allow = matches!(command, NodesCommand::Allow { .. });
            permit(&client, node_id, permissions, allow, out)?;
        }
        NodesCommand::Claim { node_id } => return super::trust_cmds::claim(node, node_id, out),
        NodesCommand::Discover { lan: _, wait } => discover(&client, *wait, out)?,
    }
    Ok(())
}

/// `pk nodes add`: a node in the graph, pinged and told unless asked not to.
fn add(
    client: &Client,
    node_id: String,
    addr: String,
    no_ping: bool,
    no_notify: bool,
    out: &Output,
) -> Result<(), CliError> {
    let record = call(
        client,
        nodes_api::Add {
            node: node_id,
            addr,
            no_notify,
            no_ping,
        },
    )?;
    let _ = out.emit(json!(record), || {
        format!(
            "Added {} at {} (may: {})\n",
            record.node_id,
            record.addrs.join(", "),
            names(&record.permissions)
        )
    });
    Ok(())
}

/// The NodeId and `host:port` of `pk nodes add`: from a pairing address
/// (`pk://NODEID@HOST:PORT`), or from a NodeId, a host and a port.
fn node_address(
    node_id: &str,
    host: Option<&str>,
    port: Option<u16>,
) -> Result<(String, String), CliError> {
    Ok(match (node_id.strip_prefix("pk://"), host, port) {
        (Some(pairing), None, None) => {
            let (id, addr) = pairing
                .split_once('@')
                .ok_or_else(|| CliError::usage("a pairing address is pk://NODEID@HOST:PORT"))?;
            (id.to_owned(), addr.to_owned())
        }
        (Some(_), _, _) => {
            return Err(CliError::usage(
                "a pairing address already holds the host and port",
            ));
        }
        // An IPv6 literal needs brackets in host:port.
        (None, Some(host), Some(port)) if host.contains(':') && !host.starts_with('[') => {
            (node_id.to_owned(), format!("[{host}]:{port}"))
        }
        (None, Some(host), Some(port)) => (node_id.to_owned(), format!("{host}:{port}")),
        (None, _, _) => {
            return Err(CliError::usage(
                "give the node's HOST and PORT, or a pairing address pk://NODEID@HOST:PORT",
            ));
        }
    })
}

/// `pk nodes getall`: the node graph.
fn get_all(client: &Client, out: &Output) -> Result<(), CliError> {
    let list = call(client, nodes_api::GetAll)?;
    let _ = out.emit(json!(list), || {
        list.iter()
            .map(|r| {
                format!(
                    "{}\t{}\tmay: {}\tlast seen: {}\n",
                    r.node_id,
                    r.addrs.join(","),
                    names(&r.permissions),
                    r.last_seen
                        .map(|t| time(t as i64))
                        .unwrap_or_else(|| "never".into())
                )
            })
            .collect()
    });
    Ok(())
}

/// `pk nodes connections`: the agent's open peer connections.
fn connections(client: &Client, out: &Output) -> Result<(), CliError> {
    let list = call(client, nodes_api::Connections)?;
    let _ = out.emit(json!(list), || {
        list.iter()
            .map(|c| {
                format!(
                    "{}\t{}\t{}\t{} s\trtt {} ms\n",
                    c.node,
                    c.addr,
                    c.direction.name(),
                    c.age_s,
                    c.rtt_ms
                )
            })
            .collect()
    });
    Ok(())
}

/// `pk nodes allow` and `pk nodes disallow`.
fn permit(
    client: &Client,
    node_id: &str,
    permissions: &[NodePermissionArg],
    allow: bool,
    out: &Output,
) -> Result<(), CliError> {
    let record = call(
        client,
        nodes_api::Permit {
            node: node_id.to_owned(),
            permissions: permissions.iter().map(|p| node_permission(*p)).collect(),
            allow,
        },
    )?;
    let _ = out.emit(json!(record), || {
        format!("{} may: {}\n", record.node_id, names(&record.permissions))
    });
    Ok(())
}

/// `pk nodes discover`: nodes found on the LAN within `wait`.
fn discover(client: &Client, wait: std::time::Duration, out: &Output) -> Result<(), CliError> {
    let found = call(
        client,
        nodes_api::Discover {
            wait_ms: wait.as_millis().min(u128::from(u32::MAX)) as u32,
        },
    )?;
    let _ = out.emit(json!(found), || {
        if found.is_empty() {
            return "No nodes found on the LAN\n".into();
        }
        found
            .iter()
            .map(|f| {
                let addrs: Vec<String> = f.addrs.iter().map(ToString::to_string).collect();
                format!("{}\t{}\n", f.node_id, addrs.join(","))
            })
            .collect()
    });
    Ok(())
}

/// The sharing commands of `pk vaults`; `None` for the others.
pub(crate) fn vaults(
    node: &NodePath,
    command: &VaultsCommand,
    out: &Output,
) -> Option<Result<(), CliError>> {
    let client = Client::new(node);
    let run = || -> Result<(), CliError> {
        match command {
            VaultsCommand::Share {
                name,
                node_id,
                permissions,
            }
            | VaultsCommand::Unshare {
                name,
                node_id,
                permissions,
            } => {
                let grant = matches!(command, VaultsCommand::Share { .. });
                share(&client, name, node_id, permissions, grant, out)?;
            }
            VaultsCommand::Permissions { name } => {
                let shares = call(
                    &client,
                    vaults_api::Permissions {
                        vault: name.clone(),
                    },
                )?;
                let _ = out.emit(json!(shares), || {
                    if shares.is_empty() {
                        return format!("Vault {name} is not shared\n");
                    }
                    shares
                        .iter()
                        .map(|s| format!("{}\t{}\n", s.node, names(&s.permissions)))
                        .collect()
                });
            }
            VaultsCommand::Scan { node_id } => {
                let list = call(
                    &client,
                    vaults_api::Scan {
                        node: node_id.clone(),
                    },
                )?;
                let _ = out.emit(json!(list), || {
                    list.iter()
                        .map(|v| format!("{}\t{}\t{}\n", v.name, v.id, names(&v.permissions)))
                        .collect()
                });
            }
            VaultsCommand::Clone {
                vault,
                node_id,
                name,
            } => clone(&client, vault, node_id, name.clone(), out)?,
            VaultsCommand::Pull { name, node_id } => pull(&client, name, node_id.clone(), out)?,
            VaultsCommand::Backup(command) => return backup(&client, command, out),
            _ => return Err(CliError::internal("not a sharing command")),
        }
        Ok(())
    };
    match command {
        VaultsCommand::Share { .. }
        | VaultsCommand::Unshare { .. }
        | VaultsCommand::Permissions { .. }
        | VaultsCommand::Scan { .. }
        | VaultsCommand::Clone { .. }
        | VaultsCommand::Pull { .. }
        | VaultsCommand::Backup(_) => Some(run()),
        _ => None,
    }
}

/// `pk vaults share` (`grant`) and `pk vaults unshare`, with their default permissions.
fn share(
    client: &Client,
    name: &str,
    node_id: &str,
    permissions: &[VaultPermissionArg],
    grant: bool,
    out: &Output,
) -> Result<(), CliError> {
    let default: &[VaultPermission] = if grant {
        &[VaultPermission::Clone, VaultPermission::Pull]
    } else {
        &[
            VaultPermission::Clone,
            VaultPermission::Pull,
            VaultPermission::Push,
        ]
    };
    let permissions = vault_permissions(permissions, default);
    let shares = call(
        client,
        vaults_api::Share {
            vault: name.to_owned(),
            node: node_id.to_owned(),
            permissions: permissions.clone(),
            grant,
        },
    )?;
    let now = shares.first().map(|s| names(&s.permissions));
    let _ = out.emit(
        json!({ "vault": name, "node": node_id, "permissions": shares.first().map(|s| &s.permissions) }),
        || match now {
            Some(now) => format!("{node_id} may now {now} vault {name}\n"),
            None => format!("Vault {name} is no longer shared with {node_id}\n"),
        },
    );
    Ok(())
}

/// `pk vaults clone`.
fn clone(
    client: &Client,
    vault: &str,
    node_id: &str,
    name: Option<String>,
    out: &Output,
) -> Result<(), CliError> {
    let outcome = call(
        client,
        vaults_api::Clone {
            vault: vault.to_owned(),
            node: node_id.to_owned(),
            name,
        },
    )?;
    let _ = out.emit(json!(outcome), || {
        let mut text = format!(
            "Cloned {vault} from {node_id} as {} ({} objects, {} bytes",
            outcome.vault, outcome.objects, outcome.bytes
        );
        if outcome.resumed > 0 {
            text += &format!("; resumed: {} objects were here already", outcome.resumed);
        }
        text + ")\n"
    });
    Ok(())
}

/// `pk vaults pull`, with the conflicts the merge kept.
fn pull(
    client: &Client,
    name: &str,
    node_id: Option<String>,
    out: &Output,
) -> Result<(), CliError> {
    let outcome = call(
        client,
        vaults_api::Pull {
            vault: name.to_owned(),
            node: node_id,
        },
    )?;
    let mut shown = json!(outcome);
    // Scripts have read the conflicts' count in `result` since it first appeared.
    shown["result"] = json!(outcome.summary());
    let _ = out.emit(shown, || {
        let mut text = format!(
            "Pulled {name}: {} ({} objects, {} bytes on the wire)\n",
            outcome.summary(),
            outcome.objects,
            outcome.wire_bytes
        );
        for (path, kept) in &outcome.conflicts {
            text += &format!(
                "Conflict: {path} changed on both sides; ours stays at {path}, theirs is kept as {kept}\n"
            );
        }
        text
    });
    Ok(())
}

fn backup(client: &Client, command: &BackupCommand, out: &Output) -> Result<(), CliError> {
    match command {
        BackupCommand::Add {
            vault,
            node_id,
            every,
            name,
        } => {
            let added = call(
                client,
                backups_api::Add {
                    vault: vault.clone(),
                    node: node_id.clone(),
                    every_s: every.as_secs(),
                    name: name.clone(),
                },
            )?;
            // Printed as a list of one, as `backup list` prints them.
            print_backups(&[added], out);
        }
        BackupCommand::List => print_backups(&call(client, backups_api::List)?, out),
        BackupCommand::Remove { name } => {
            call(client, backups_api::Remove { name: name.clone() })?;
            let _ = out.emit(json!({ "removed": name }), || {
                format!("Scheduled pulls into {name} stopped\n")
            });
        }
    }
    Ok(())
}

/// Prints scheduled pulls, one a line.
fn print_backups(list: &[Backup], out: &Output) {
    let _ = out.emit(json!(list), || {
        list.iter()
            .map(|b| {
                let last = match &b.last {
                    Some(last) => format!(
                        "{} at {}: {}",
                        if last.ok { "ok" } else { "FAILED" },
                        time(last.time as i64),
                        last.message
                    ),
                    None => "not run yet".into(),
                };
                format!(
                    "{}\tfrom {} ({})\tevery {}\t{last}\n",
                    b.name,
                    b.node,
                    b.vault,
                    humantime::format_duration(std::time::Duration::from_secs(b.every_s))
                )
            })
            .collect()
    });
}

fn show(n: &Notification, mailbox: Mailbox) -> String {
    let what = match (&n.body, mailbox) {
        (Body::Message { text }, _) => format!("message: {text}"),
        (
            Body::VaultShare {
                vault,
                name,
                permissions,
            },
            Mailbox::Inbox,
        ) => {
            let hint = if permissions.contains(&VaultPermission::Clone) {
                format!("; clone it with `pk vaults clone {name} {}`", n.peer)
            } else if permissions.contains(&VaultPermission::Pull) {
                format!(
                    "; pull it into your copy with `pk vaults pull <your name for it> {}`",
                    n.peer
                )
            } else {
                String::new()
            };
            format!(
                "vault {name} ({vault}) shared with you: {}{hint}",
                names(permissions)
            )
        }
        (
            Body::VaultShare {
                name, permissions, ..
            },
            Mailbox::Outbox,
        ) => format!("shared vault {name}: {}", names(permissions)),
        (Body::GestaltInvite, Mailbox::Inbox) => format!(
            "invites you to its gestalt; accept with `pk nodes claim {}`",
            n.peer
        ),
        (Body::GestaltInvite, Mailbox::Outbox) => "gestalt invitation".into(),
    };
    let state = match &n.delivery {
        None if n.read => String::new(),
        None => " [new]".into(),
        Some(Delivery::Delivered { .. }) => " [delivered]".into(),
        Some(Delivery::Refused { reason }) => format!(" [refused: {reason}]"),
        Some(Delivery::Pending {
            attempts,
            last_error,
            ..
        }) => format!(
            " [pending after {attempts} attempt(s){}]",
            last_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    };
    format!(
        "{}\t{}\t{}\t{what}{state}\n",
        n.id,
        time((n.time_ms / 1000) as i64),
        n.peer
    )
}

pub(crate) fn notifications(
    node: &NodePath,
    command: &NotificationsCommand,
    out: &Output,
) -> Result<(), CliError> {
    let client = Client::new(node);
    let list = |mailbox: Mailbox, unread: bool| -> Result<(), CliError> {
        let list = call(&client, notifications_api::List { mailbox, unread })?;
        let _ = out.emit(json!(list), || {
            list.iter().map(|n| show(n, mailbox)).collect()
        });
        Ok(())
    };
    let remove = |mailbox: Mailbox, id: Option<u64>| -> Result<(), CliError> {
        let n = call(&client, notifications_api::Remove { mailbox, id })?;
        let _ = out.emit(json!({ "removed": n }), || format!("Removed {n}\n"));
        Ok(())
    };
    match command {
        NotificationsCommand::Send { node_id, message } => {
            let notifications_api::Queued {
                notification,
                delivered,
            } = call(
                &client,
                notifications_api::Send {
                    node: node_id.clone(),
                    text: message.clone(),
                },
            )?;
            let _ = out.emit(json!({ "notification": notification, "delivered": delivered }), || {
                if delivered {
                    format!("Delivered to {node_id}\n")
                } else {
                    format!(
                        "{node_id} did not answer; the notification is queued and will be retried (pk notifications outbox read)\n"
                    )
                }
            });
            Ok(())
        }
        NotificationsCommand::Inbox(InboxCommand::Read { unread }) => {
            list(Mailbox::Inbox, *unread)?;
            call(&client, notifications_api::Read { id: None })?;
            Ok(())
        }
        NotificationsCommand::Inbox(InboxCommand::Remove { id }) => {
            remove(Mailbox::Inbox, Some(*id))
        }
        NotificationsCommand::Inbox(InboxCommand::Clear) => remove(Mailbox::Inbox, None),
        NotificationsCommand::Outbox(OutboxCommand::Read) => list(Mailbox::Outbox, false),
        NotificationsCommand::Outbox(OutboxCommand::Remove { id }) => {
            remove(Mailbox::Outbox, Some(*id))
        }
        NotificationsCommand::Outbox(OutboxCommand::Clear) => remove(Mailbox::Outbox, None),
    }
}
