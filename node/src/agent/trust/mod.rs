//! The agent's trust side: gestalts and the permissions they carry, node claims (both
//! nodes sign the link), identities claimed and found on a provider, discovery (walking
//! sigchains and adding what verifies to the graph), and key renewal.
//!
//! - [`gestalts`]: a gestalt as `pk identities get` shows it, the list, trust and permit.
//! - [`provider`]: the identity provider: device-flow authentication, search, and
//!   `pk identities claim`.
//! - [`claims`]: `pk nodes claim`, the asking side of a node claim (invite, or sign and
//!   have the other node countersign).
//! - [`discovery`]: walking a gestalt on demand and, one queued vertex at a time, from
//!   `agent::background`.
//! - [`renewal`]: `pk keys renew` and `pk keys reset`.
//!
//! Trust builds on the peer pool (`peers::pool`: calls to other nodes, the endpoint's
//! key) and the commands (`peers::commands`: notifications); the peer side does not use
//! trust (the answering side of a node claim is `peers::countersign`, a served call).
//! The background loop (`agent::background`) runs queued discoveries.

pub(super) mod claims;
pub(super) mod discovery;
pub(super) mod gestalts;
pub(super) mod provider;
pub(super) mod renewal;
