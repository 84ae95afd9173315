//! The calls `pk` and the console make on the agent socket, by domain: each domain's
//! requests are matched, exhaustively, in its module here and nowhere else. A module
//! answers a call with its typed reply ([`Call::Reply`]), which [`done`] encodes.
//!
//! The work behind a call lives with what it works on: vaults and secrets in
//! [`crate::vault`], the node graph in [`crate::nodes`], calls to other nodes in
//! `super::peers::commands` (the calls other nodes make on this one are served in
//! `super::peers::serve`), trust and discovery in `super::trust`.

use std::sync::Arc;

use tokio::net::UnixStream;

use super::Shared;
use crate::api::{ApiError, Call, Request, SecretBytes, encode_reply};

mod agent;
mod backups;
mod console;
mod identities;
mod keys;
mod keyslots;
mod nodes;
mod notifications;
mod secrets;
mod vaults;

/// Answers one request; `stream` is the caller's connection, for the calls that stream
/// content in or out.
pub(super) async fn handle(
    shared: &Arc<Shared>,
    request: Request,
    stream: &mut UnixStream,
) -> Result<SecretBytes, ApiError> {
    match request {
        Request::Agent(r) => agent::handle(shared, r).await,
        Request::Keyslots(r) => keyslots::handle(shared, r).await,
        Request::Console(r) => console::handle(shared, r).await,
        Request::Secrets(r) => secrets::handle(shared, r, stream).await,
        Request::Vaults(r) => vaults::handle(shared, r, stream).await,
        Request::Keys(r) => keys::handle(&shared.open()?, r).await,
        Request::Backups(r) => backups::handle(&shared.open()?, r).await,
        Request::Nodes(r) => nodes::handle(&shared.open()?, r).await,
        Request::Notifications(r) => notifications::handle(&shared.open()?, r).await,
        Request::Identities(r) => identities::handle(&shared.open()?, r).await,
    }
}

/// The answer to a call of type `C`: its reply, encoded, or the error.
fn done<C: Call>(reply: Result<C::Reply, ApiError>) -> Result<SecretBytes, ApiError> {
    encode_reply::<C>(&reply?)
}
