//! The agent's trust side: gestalts and the permissions they carry, node claims (both
//! nodes sign the link), identities claimed and found on a provider, discovery (walking
//! sigchains and adding what verifies to the graph), and key renewal.
//!
//! - [`gestalts`]: a gestalt as `pk identities get` shows it, the list, trust and permit.
//! - [`provider`]: the identity provider: device-flow authentication, search, and
//!   `pk identities claim`.
//! - [`claims`]: `pk nodes claim`, the asking side of a node claim (invite, or sign and
//!   have the other node countersign).
//! - [`countersign`]: the answering side, the `ClaimNode` and `ClaimNodeFinish` calls,
//!   served through `peers::serve`.
//! - [`discovery`]: walking a gestalt on demand and, one queued vertex at a time, from
//!   `peers::background`.
//! - [`renewal`]: `pk keys renew` and `pk keys reset`.
//!
//! Trust builds on the peer pool (`peers::pool`: calls to other nodes, the endpoint's
//! key) and the commands (`peers::commands`: notifications); the peer side uses trust
//! only from the serving layer (the claim calls) and the background loop (discovery).

pub(super) mod claims;
pub(super) mod countersign;
pub(super) mod discovery;
pub(super) mod gestalts;
pub(super) mod provider;
pub(super) mod renewal;
