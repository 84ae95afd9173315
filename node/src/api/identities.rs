//! Gestalts (nodes and identities linked by claims), trust, discovery, and identity
//! providers.

use serde::{Deserialize, Serialize};

use super::domain;
use super::nodes::Claimed;
use crate::nodes::NodePermission;

domain! {
    /// Calls about gestalts and identities.
    IdentitiesRequest in Identities {
        List -> Vec<GestaltInfo>,
        Get -> GestaltInfo,
        Trust -> GestaltInfo,
        Permit -> GestaltInfo,
        Permissions -> GestaltInfo,
        Invite -> Claimed,
        Discover -> GestaltInfo,
        Queue -> Vec<crate::gestalt::Queued>,
        AuthStart -> DeviceAuthStarted,
        AuthFinish -> String,
        Authenticated -> Vec<String>,
        Claim -> IdentityClaimed,
        Search -> Vec<String>,
    }
}

/// Every gestalt this node knows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct List;

/// One gestalt, by any of its vertices.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Get {
    /// A NodeId or `provider:identity`.
    pub gestalt: String,
}

/// Trust (grant `notify`) or stop trusting a gestalt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trust {
    /// A NodeId or `provider:identity`.
    pub gestalt: String,
    /// Trust (else untrust).
    pub trust: bool,
}

/// Grant or revoke permissions of a gestalt vertex.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Permit {
    /// A NodeId or `provider:identity`.
    pub gestalt: String,
    /// Which.
    pub permissions: Vec<NodePermission>,
    /// Grant (else revoke).
    pub allow: bool,
}

/// What a gestalt may do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Permissions {
    /// A NodeId or `provider:identity`.
    pub gestalt: String,
}

/// Invite a node to this node's gestalt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invite {
    /// The node.
    pub node: String,
}

/// Discover a gestalt now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Discover {
    /// A NodeId or `provider:identity`.
    pub gestalt: String,
}

/// The discovery queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Queue;

/// Start authenticating with an identity provider (device flow).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthStart {
    /// The provider.
    pub provider: String,
}

/// Wait for the user to finish the device flow started under `handle`; answers the
/// identity (`provider:identity`) authenticated.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthFinish {
    /// The provider.
    pub provider: String,
    /// From [`AuthStart`].
    pub handle: u64,
}

/// The identities this node is authenticated as (`provider:identity`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Authenticated;

/// Claim an identity (`provider:identity`): publish a claim signed by this node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claim {
    /// `provider:identity`.
    pub identity: String,
}

/// Search a provider for identities (`provider:identity`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Search {
    /// The provider.
    pub provider: String,
    /// What to look for.
    pub term: String,
}

/// A device authorisation started: what the user must do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAuthStarted {
    /// Pass back to finish.
    pub handle: u64,
    /// The code and where to enter it.
    pub auth: crate::provider::DeviceAuth,
}

/// An identity claimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClaimed {
    /// `provider:identity`.
    pub identity: String,
    /// Where the claim was published.
    pub url: String,
    /// Its place in this node's sigchain.
    pub seq: u64,
}

/// One vertex of a gestalt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GestaltMember {
    /// A NodeId or `provider:identity`.
    pub vertex: String,
    /// Its own permissions here (`None`: no record of it, it is here through a link).
    pub permissions: Option<Vec<NodePermission>>,
}

/// A gestalt: its vertices, the links that join them, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GestaltInfo {
    /// The vertices.
    pub members: Vec<GestaltMember>,
    /// The verified links, as pairs of vertices.
    pub links: Vec<(String, String)>,
    /// What every vertex of it may do (the union).
    pub permissions: Vec<NodePermission>,
}
