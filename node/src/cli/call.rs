//! Talking to the agent: one call per connection, on a one-thread runtime started per
//! command, and the agent's errors as `pk`'s.

use crate::api::Call;
use crate::client::{Client, ClientError};

use super::error::CliError;

/// A tokio runtime for talking to the agent: one thread, started per command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::io("cannot start the I/O runtime", e))
}

/// Runs one call and returns its reply.
pub(crate) fn call<C: Call>(client: &Client, c: C) -> Result<C::Reply, CliError> {
    runtime()?.block_on(client.call(c)).map_err(CliError::from)
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::NotRunning(_) => CliError::unavailable(e.to_string()),
            ClientError::Connect { ref source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                CliError::denied(e.to_string())
            }
            ClientError::Connect { .. } => CliError::unavailable(e.to_string()),
            ClientError::Api(api) => CliError::api(api),
            ClientError::Io(io) => CliError::io("output", io),
            other => CliError::internal(other.to_string()),
        }
    }
}
