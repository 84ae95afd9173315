//! [`ConsoleRequest`]: the appliance console's audit events and its admin account.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::done;
use crate::agent::{Open, Shared, on_store, record_or_remember};
use crate::api::console::{Account, AccountBinding, AccountCheck, ConsoleRequest, Event};
use crate::api::{ApiError, ErrorCode, SecretBytes};
use crate::audit;
use crate::store::{Read as _, Table};

pub(super) async fn handle(
    shared: &Arc<Shared>,
    request: ConsoleRequest,
) -> Result<SecretBytes, ApiError> {
    match request {
        ConsoleRequest::Event(Event { event, client }) => done::<Event>(
            record_or_remember(shared, event.name(), json!({ "client": client })).await,
        ),
        ConsoleRequest::Account(Account { account, binding }) => {
            let open = shared.open()?;
            done::<Account>(
                on_store(&open, move |open| console_account(open, &account, binding)).await,
            )
        }
    }
}

/// Where the console's bound admin account is kept (sealed like every value).
const ACCOUNT_KEY: &[u8] = b"console-account";

/// The console's admin account as the node holds it.
#[derive(Serialize, Deserialize)]
struct BoundAccount {
    current: String,
    /// The account before a password change, until the console shows the new one is on
    /// disk: a crash between binding the new account and writing its file leaves the old
    /// one working. Never set by a reset, which must not bring back what it replaced.
    previous: Option<String>,
}

/// Checks the console's account against the bound one, or binds a new one.
fn console_account(
    open: &Open,
    account: &str,
    binding: AccountBinding,
) -> Result<AccountCheck, ApiError> {
    let mut tx = open.store.write()?;
    let bound: Option<BoundAccount> = match tx.get(Table::Meta, ACCOUNT_KEY)? {
        Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|_| {
            ApiError::new(ErrorCode::Internal, "the bound console account is damaged")
        })?),
        None => None,
    };
    let bind = |previous: Option<String>| BoundAccount {
        current: account.to_owned(),
        previous,
    };
    let (check, store) = match (binding, bound) {
        (AccountBinding::Check, None) => {
            audit::append(&mut tx, "console.account_bound", json!({}))?;
            (AccountCheck::Bound, Some(bind(None)))
        }
        (AccountBinding::Check, Some(b)) if b.current == account => (
            AccountCheck::Matches,
            b.previous.is_some().then(|| bind(None)),
        ),
        (AccountBinding::Check, Some(b)) if b.previous.as_deref() == Some(account) => {
            (AccountCheck::Matches, Some(bind(None)))
        }
        (AccountBinding::Check, Some(_)) => (AccountCheck::Mismatch, None),
        (AccountBinding::Change { from }, None) => (AccountCheck::Bound, Some(bind(Some(from)))),
        (AccountBinding::Change { from }, Some(b)) if b.current == from => {
            (AccountCheck::Bound, Some(bind(Some(from))))
        }
        (AccountBinding::Change { .. }, Some(_)) => (AccountCheck::Mismatch, None),
        (AccountBinding::Reset, _) => (AccountCheck::Bound, Some(bind(None))),
    };
    if let Some(store) = store {
        let bytes = serde_json::to_vec(&store)
            .map_err(|_| ApiError::new(ErrorCode::Internal, "the console account"))?;
        tx.put(Table::Meta, ACCOUNT_KEY, &bytes)?;
    }
    tx.commit()?;
    Ok(check)
}
