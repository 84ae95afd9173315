//! The pk node library: a Polykey-style secrets node whose keys live behind a hardware
//! token. Everything a node does is here; the binaries (`pk` in this crate, `pk-node` and
//! `pk-dev` in `node/pk-node`, and the appliance in its own crate) are front ends over it.
//!
//! # What holds, always
//!
//! - **Keys behind a token.** The data key (DEK) exists only unwrapped from a keyslot
//!   ([`keyslots`], [`tokens`]: TPM, PKCS#11, YubiKey, passphrase or recovery code); the
//!   store's keys derive from it, and locking the agent zeroizes them all.
//! - **Nothing in the clear at rest.** Every value in the store ([`store`]) is sealed
//!   under its table's key, bound to its place; row keys are random ids or keyed hashes.
//! - **One mutation, one transaction.** A change, its objects and its audit event
//!   ([`audit`]) commit together with immediate durability: what `pk` reports done
//!   survives `kill -9`.
//! - **Peers are checked, bounded and counted.** Every call from another node is checked
//!   against the NodeId its TLS handshake proved; what a peer can make the node hold has a
//!   stated bound ([`net`], [`vault::TransferLimits`]); refusals are audited in
//!   aggregate.
//! - **No token library.** This crate depends on `hsm-core` (the records, the trait, the
//!   software protectors), not on `hsm`: the hardware drivers reach it as a
//!   `hsm_core::Drivers` in [`tokens::TokenConfig`], from the program that links them.
//!   So `pk`, built here, cannot link libtss2 or libpcsclite.
//! - **No secret in a message.** No PIN, passphrase, key, recovery word or secret value
//!   reaches an error, a log line ([`logging`]) or a `Debug` form.
//!
//! # Map, bottom up
//!
//! - Leaves: [`NodePath`] (the data directory), [`clock`], `error` ([`api::ApiError`]),
//!   `ids` ([`vault::VaultId`]), `permissions` ([`nodes::NodePermission`],
//!   [`nodes::VaultPermission`]), `secret_bytes` ([`api::SecretBytes`]), [`logging`].
//! - Keys and storage: [`keyslots`], [`tokens`], `crypto` (per-purpose keys from the
//!   DEK), [`store`], [`identity`] (the node key and [`identity::NodeId`]), [`audit`].
//! - Data: [`vault`] (vaults as git object graphs; `vault::sync` sends and receives
//!   them, `vault::merge` merges), [`nodes`] (the node graph and shares),
//!   [`notifications`], [`sigchain`], [`gestalt`], [`provider`] (GitHub).
//! - Wire: [`rpc`] (frames), [`api`] (the agent's calls, by domain, with typed replies),
//!   [`peer`] (calls between nodes), [`net`] (QUIC with mutual TLS), [`lan`] (mDNS).
//! - Processes: [`agent`] (the long-running holder of the unlocked keys: the socket
//!   `pk` talks to, the peer endpoint, the background work) and [`client`] (the other end
//!   of the socket).
//! - Front end: [`cli`], the `pk` command line, which the `pk` and `pk-node` binaries
//!   run (their `main`s are one line each; `pk-node`'s hands in `hsm::Hardware`).
//!
//! A module names only modules at or below its own level, and no two modules name each
//! other (the workspace's tidy test checks it). `ARCHITECTURE.md` at the root says where
//! each request is handled.

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod audit;
pub mod cli;
pub mod client;
pub mod clock;
mod crypto;
pub mod dev;
mod error;
pub mod gestalt;
pub mod identity;
mod ids;
pub mod keyslots;
pub mod lan;
pub mod logging;
pub mod net;
mod node_path;
pub mod nodes;
pub mod notifications;
pub mod peer;
mod permissions;
pub mod provider;
pub mod rpc;
mod secret_bytes;
pub mod sigchain;
pub mod store;
pub mod tokens;
pub mod vault;

pub use node_path::NodePath;
