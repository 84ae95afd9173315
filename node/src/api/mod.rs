//! The agent's API: the calls `pk` (and the appliance's console) send over the local
//! socket, and their answers.
//!
//! A call is a plain struct in the module of its domain ([`agent`], [`keyslots`],
//! [`console`], [`keys`], [`vaults`], [`backups`], [`secrets`], [`nodes`],
//! [`notifications`], [`identities`]) that implements [`Call`]: its `Reply` is the one
//! type the agent answers it with, so a client gets that type back from
//! `Client::call` and never decodes an answer it did not ask for. On the wire a call is
//! a [`Request`]: the domain, then the call within it.
//!
//! One connection carries one call: a [`Hello`] frame (the protocol version and the
//! request), then for uploads a stream of [`Upload`] frames; the agent answers with
//! [`Response`] frames: data chunks for downloads, then exactly one `Ok` (the reply,
//! postcard-encoded) or `Err`.
//!
//! Messages are postcard-encoded, so enum variants go by position. The test
//! `api::tests::wire_encoding_is_pinned` holds a snapshot of every call's encoding: a
//! change to any of them fails it until [`PROTOCOL`] moves and the snapshot is made anew.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod agent;
pub mod backups;
pub mod console;
pub mod identities;
pub mod keys;
pub mod keyslots;
pub mod nodes;
pub mod notifications;
pub mod secrets;
pub mod vaults;

#[cfg(test)]
mod tests;

pub use crate::error::{ApiError, ErrorCode};
pub use crate::secret_bytes::SecretBytes;

/// The protocol version: the first field of every call. `pk` and an agent of another
/// version refuse each other with a clear error instead of misreading messages (3: calls
/// grouped by domain, typed replies; 4: a clone's or pull's result as a typed value).
pub const PROTOCOL: u32 = 4;

/// What a client sends first on a connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL`] of the sender.
    pub protocol: u32,
    /// The request.
    pub request: Request,
}

/// A call to the agent whose answer has one type.
pub trait Call: Into<Request> + Clone + std::fmt::Debug {
    /// What the agent answers.
    type Reply: Serialize + DeserializeOwned;
}

/// A call to the agent, by domain. Each domain's calls are matched in exactly one module
/// of the agent (`agent::calls::<domain>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// The agent itself: status, unlock, lock, stop, the audit log.
    Agent(agent::AgentRequest),
    /// Keyslot changes made by `pk keyslots`, for the audit log.
    Keyslots(keyslots::KeyslotsRequest),
    /// The appliance's admin console.
    Console(console::ConsoleRequest),
    /// The node key.
    Keys(keys::KeysRequest),
    /// Vaults, their shares, clones and pulls.
    Vaults(vaults::VaultsRequest),
    /// Scheduled pulls.
    Backups(backups::BackupsRequest),
    /// Secrets inside a vault.
    Secrets(secrets::SecretsRequest),
    /// The node graph.
    Nodes(nodes::NodesRequest),
    /// Notifications between nodes.
    Notifications(notifications::NotificationsRequest),
    /// Gestalts and identities.
    Identities(identities::IdentitiesRequest),
}

/// Declares a domain's request enum from its calls and their replies, with the
/// conversions into [`Request`] and the [`Call`] impls.
macro_rules! domain {
    (
        $(#[$doc:meta])*
        $domain:ident in $variant:ident {
            $( $call:ident -> $reply:ty, )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
        pub enum $domain {
            $(
                #[doc = concat!("[`", stringify!($call), "`](struct@", stringify!($call), ")")]
                $call($call),
            )*
        }

        impl $domain {
            /// The calls of this domain, in wire order.
            pub const CALLS: &[&str] = &[$(stringify!($call)),*];
        }

        impl From<$domain> for $crate::api::Request {
            fn from(r: $domain) -> Self {
                $crate::api::Request::$variant(r)
            }
        }

        $(
            impl $crate::api::Call for $call {
                type Reply = $reply;
            }

            impl From<$call> for $crate::api::Request {
                fn from(c: $call) -> Self {
                    $crate::api::Request::$variant($domain::$call(c))
                }
            }
        )*
    };
}
pub(crate) use domain;

/// Secret content sent to the agent after a [`secrets::Write`].
#[derive(Clone, Serialize, Deserialize)]
pub enum Upload {
    /// A piece of the content.
    Chunk(SecretBytes),
    /// The end: commit what was sent.
    End,
}

/// What the agent sends back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// A piece of a secret's content.
    Chunk(SecretBytes),
    /// The call succeeded: its [`Call::Reply`], postcard-encoded (kept in zeroizing
    /// bytes, as a reply may be a plaintext).
    Ok(SecretBytes),
    /// The call failed.
    Err(ApiError),
}

/// Encodes the reply to a call of type `C`, for [`Response::Ok`].
pub fn encode_reply<C: Call>(reply: &C::Reply) -> Result<SecretBytes, ApiError> {
    postcard::to_allocvec(reply)
        .map(SecretBytes)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the reply could not be encoded"))
}

/// Decodes the reply to a call of type `C` from [`Response::Ok`]: all of it, or an
/// error.
pub fn decode_reply<C: Call>(bytes: &SecretBytes) -> Result<C::Reply, ApiError> {
    match postcard::take_from_bytes(&bytes.0) {
        Ok((reply, [])) => Ok(reply),
        _ => Err(ApiError::new(
            ErrorCode::Internal,
            "the agent's reply does not match the call",
        )),
    }
}
