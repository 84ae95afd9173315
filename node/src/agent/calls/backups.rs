//! [`BackupsRequest`]: scheduled pulls (kept by `peers::commands`, run by `peers::background`).

use std::sync::Arc;

use serde_json::json;

use super::done;
use crate::agent::peers::commands;
use crate::agent::{Open, node_id, on_store};
use crate::api::backups::{Add, Backup, BackupsRequest, List, Remove};
use crate::api::{ApiError, ErrorCode, SecretBytes};
use crate::store::Table;

pub(super) async fn handle(
    open: &Arc<Open>,
    request: BackupsRequest,
) -> Result<SecretBytes, ApiError> {
    match request {
        BackupsRequest::Add(add) => done::<Add>(self::add(open, add).await),
        BackupsRequest::List(_) => done::<List>(on_store(open, commands::backups).await),
        BackupsRequest::Remove(Remove { name }) => done::<Remove>(
            on_store(open, move |open| {
                open.audited("backup.removed", json!({ "vault": name }), |tx| {
                    if tx.delete(Table::Sync, &commands::backup_key(open, &name))? {
                        Ok(())
                    } else {
                        Err(ApiError::new(
                            ErrorCode::NotFound,
                            format!("no scheduled pull into {name:?}"),
                        ))
                    }
                })
            })
            .await,
        ),
    }
}

async fn add(
    open: &Arc<Open>,
    Add {
        vault,
        node,
        every_s,
        name,
    }: Add,
) -> Result<Backup, ApiError> {
    let node = node_id(&node)?;
    if !(commands::MIN_BACKUP_INTERVAL_S..=commands::MAX_BACKUP_INTERVAL_S).contains(&every_s) {
        return Err(ApiError::new(
            ErrorCode::BadInput,
            "the time between scheduled pulls must be at least 10 seconds and at most 366 days",
        ));
    }
    let backup = Backup {
        name: name.unwrap_or_else(|| vault.clone()),
        vault,
        node: node.to_string(),
        every_s,
        next_ms: 0,
        last: None,
    };
    on_store(open, move |open| {
        let fields =
            json!({ "vault": backup.name, "node": backup.node, "every_s": backup.every_s });
        open.audited("backup.added", fields, |tx| {
            commands::put_backup(open, tx, &backup)
        })?;
        Ok(backup)
    })
    .await
}
