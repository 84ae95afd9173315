//! The pk node library.
//!
//! Today it holds what everything else stands on: the node's data directory
//! ([`NodePath`]), its data key (DEK) and the keyslots that wrap it ([`keyslots`]), and
//! the choice of token for each keyslot ([`tokens`]). Identity, encrypted storage, vaults
//! and the peer network build on the unlocked [`hsm::DataKey`].
//!
//! The `pk` binary (`src/bin/pk`) is the command-line front end; `pk-dev` brings up a
//! local development node (with [`dev`], which `pk-appliance-dev` shares).

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod audit;
pub mod client;
pub mod clock;
pub mod crypto;
pub mod dev;
pub mod gestalt;
pub mod identity;
pub mod keyslots;
pub mod lan;
pub mod logging;
pub mod net;
mod node_path;
pub mod nodes;
pub mod notifications;
pub mod peer;
pub mod provider;
pub mod rpc;
mod secret_bytes;
pub mod sigchain;
pub mod store;
pub mod tokens;
pub mod vault;

pub use node_path::NodePath;
