//! The agent's peer side, in layers:
//!
//! - [`pool`]: the QUIC endpoint while unlocked, its connections both ways, dialing and
//!   [`pool::call_peer`]; its accept loop hands each call to the serving layer.
//! - [`serve`]: the calls other nodes make on this one (ping, find, scan, notify,
//!   sigchain, claims, clone and pull), their permission checks, and refusals;
//!   [`countersign`] is the answering side of a node claim.
//! - [`commands`]: what `pk` asks the agent to do with other nodes (add, ping, find,
//!   scan, share, notify, clone, pull) and where scheduled pulls are kept; [`fetch`] is
//!   the receiving side of a clone or pull.
//!
//! Dependencies go one way: `commands` -> `fetch` -> `pool`, `serve` -> `countersign`,
//! `serve` -> `pool`; `pool` uses none of them (the accept loop is handed the serving
//! function). Above this module, `trust` builds on `pool` and `commands`, and
//! `agent::background` wires the layers together at each unlock and runs the loop that
//! uses them; nothing here uses either.

pub(super) mod commands;
pub(super) mod countersign;
pub(super) mod fetch;
pub(super) mod pool;
pub(super) mod serve;
