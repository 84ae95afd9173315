//! The agent's peer side, in four layers:
//!
//! - [`pool`]: the QUIC endpoint while unlocked, its connections both ways, dialing and
//!   [`pool::call_peer`]; its accept loop hands each call to the serving layer.
//! - [`serve`]: the calls other nodes make on this one (ping, find, scan, notify,
//!   sigchain, claims, clone and pull), their permission checks, and refusals.
//! - [`commands`]: what `pk` asks the agent to do with other nodes (add, ping, find,
//!   scan, share, notify, clone, pull) and where scheduled pulls are kept; [`fetch`] is
//!   the receiving side of a clone or pull.
//! - [`background`]: the loop that delivers notifications, runs scheduled pulls and
//!   discovery, writes refusals and closes idle connections.
//!
//! Dependencies go one way: `background` -> `commands` -> `fetch` -> `pool`, `serve` -> `pool`
//! (and `background` -> `serve` for refusals). `trust` builds on `pool` and `commands`;
//! `serve` calls `trust` for the claim calls; `pool` uses neither. Only [`start`], here,
//! wires the layers together.

use std::sync::Arc;

use super::Open;
use crate::api::ApiError;
use crate::lan::Interfaces;

pub(super) mod background;
pub(super) mod commands;
pub(super) mod fetch;
pub(super) mod pool;
pub(super) mod serve;

/// Makes the endpoint on the agent's UDP socket and starts serving calls and the
/// background work.
pub(super) fn start(
    open: &Arc<Open>,
    socket: &std::net::UdpSocket,
    lan: Option<Interfaces>,
) -> Result<Arc<pool::PeerNet>, ApiError> {
    let net = pool::PeerNet::open(open, socket, lan)?;
    net.hold_tasks(vec![
        tokio::spawn(pool::accept_loop(
            open.clone(),
            net.clone(),
            serve::serve_call,
        ))
        .abort_handle(),
        tokio::spawn(background::run(open.clone(), net.clone())).abort_handle(),
    ]);
    Ok(net)
}
