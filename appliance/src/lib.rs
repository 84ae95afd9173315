//! `pk-appliance`: a pk node run as a headless daemon, with its admin web console.
//!
//! The daemon reads its [`config`], embeds the node's agent (vaults, the peer endpoint,
//! scheduled pulls), and serves the [`console`] over HTTPS. Under systemd it logs to the
//! journal with structured fields and reports readiness with `sd_notify`.

#![forbid(unsafe_code)]

pub mod config;
pub mod console;
pub mod daemon;
