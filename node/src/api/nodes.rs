//! The node graph: the nodes this one knows, their permissions, and the connections.

use serde::{Deserialize, Serialize};

use super::domain;
use crate::lan::Found;
use crate::nodes::{NodePermission, NodeRecord};

domain! {
    /// Calls about other nodes.
    NodesRequest in Nodes {
        Add -> NodeRecord,
        Remove -> (),
        Ping -> Pong,
        Find -> Vec<String>,
        GetAll -> Vec<NodeRecord>,
        Connections -> Vec<ConnectionInfo>,
        Permit -> NodeRecord,
        Discover -> Vec<Found>,
        Claim -> Claimed,
    }
}

/// Add a node to the graph, or give a known one a new address.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Add {
    /// Its NodeId.
    pub node: String,
    /// `host:port`.
    pub addr: String,
    /// Do not let it send notifications.
    pub no_notify: bool,
    /// Add it without checking that it answers.
    pub no_ping: bool,
}

/// Remove a node and its shares.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Remove {
    /// The node.
    pub node: String,
}

/// Check that a node answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ping {
    /// The node.
    pub node: String,
}

/// Find a node's addresses: the graph, then the nodes connected to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Find {
    /// The node.
    pub node: String,
}

/// The node graph.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GetAll;

/// Open connections.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Connections;

/// Grant or revoke node-wide permissions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Permit {
    /// The node.
    pub node: String,
    /// Which.
    pub permissions: Vec<NodePermission>,
    /// Grant (else revoke).
    pub allow: bool,
}

/// Browse the LAN for nodes (mDNS).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Discover {
    /// How long to listen, in milliseconds.
    pub wait_ms: u32,
}

/// Link this node with another into one gestalt (or invite it first).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claim {
    /// The other node.
    pub node: String,
}

/// A ping's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The node.
    pub node: String,
    /// Where it answered.
    pub addr: String,
    /// Round trip, milliseconds.
    pub rtt_ms: u64,
}

/// Which side opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This node dialled.
    Outgoing,
    /// The peer dialled.
    Incoming,
}

impl Direction {
    /// `outgoing` or `incoming`, as `pk` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outgoing => "outgoing",
            Direction::Incoming => "incoming",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An open connection to a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The peer.
    pub node: String,
    /// Its address.
    pub addr: String,
    /// Which side opened it.
    pub direction: Direction,
    /// Seconds since it opened.
    pub age_s: u64,
    /// Round-trip time, milliseconds.
    pub rtt_ms: u64,
}

/// A claim made, or an invitation sent instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimed {
    /// The other node.
    pub node: String,
    /// An invitation was sent (the nodes are not linked yet).
    pub invited: bool,
    /// The claim's place in this node's sigchain.
    pub seq: Option<u64>,
}
