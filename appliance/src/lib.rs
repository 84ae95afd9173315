//! `pk-appliance`: a pk node run as a headless daemon, administered through its own web
//! console. The node is the `node` library's, unchanged: this crate adds the daemon that
//! runs it unattended, the console over HTTPS (pages usable without JavaScript, and the
//! same operations as a JSON API under `/api/`) and the configuration file. The OS image
//! that ships it is built by `image/`.
//!
//! # What holds, always
//!
//! - **A box belongs to whoever claims it with its setup code.** Until setup, the daemon
//!   makes a one-time code at each start and prints it to the journal and the serial
//!   console only; setup needs it, and once an admin exists setup is refused.
//! - **Nothing without a session but claiming, logging in and the reset.** The setup and
//!   login pages and their `POST /api/` twins, the password reset (which needs the
//!   recovery code) and the stylesheet; every other route needs a session (a `__Host-`
//!   cookie, `HttpOnly; Secure; SameSite=Strict`), and every state-changing POST its CSRF
//!   token too, checked before any form handler runs.
//! - **Password checks are counted before they run**, per address (IPv6: per /64), in
//!   all, and at once: a request beyond the budget is refused before any Argon2id.
//! - **The admin account is bound to the node.** The agent keeps a digest of it in its
//!   sealed store; an account file that stops matching ends every session.
//! - **A session alone changes no keyslot.** Enrolling or removing one also needs an
//!   existing keyslot to open the data key (a TPM slot without PIN opens with none); a
//!   revealed secret is in the node's audit log before its value leaves the agent.
//! - **No secret in a log line**: no password, PIN, recovery word, session token or used
//!   setup code. Every answer carries a strict Content-Security-Policy (no scripts), HSTS
//!   and `Cache-Control: no-store`.
//! - **One process, one node.** The daemon embeds the node's agent (once setup has made
//!   the node), tells systemd READY, STATUS, WATCHDOG and STOPPING, and on SIGTERM stops
//!   the agent before it exits.
//! - **A configuration mistake stops the start.** Every key has a secure default; an
//!   unknown key or a bad value is an error naming its line, never ignored.
//! - **No `unsafe`, and no token library of its own**: tokens are reached through the
//!   node's keyslots and `hsm`.
//!
//! # Map, bottom up
//!
//! - [`config`]: the TOML file ([`config::Config`]), its defaults and its errors.
//! - [`screen`]: the box's own screen (tty1): the status file the daemon and the locked
//!   data console write, and `pk-appliance screen`, which draws it with a QR code.
//! - [`settings`]: what the owner changes after flashing, on the data partition over the
//!   file's defaults ([`settings::Settings`]); [`config_command`] is `pk-appliance config`.
//! - [`console`]: the admin console. Inside, bottom up: `throttle` (the password-check
//!   budget), `tls` (the self-signed certificate, its fingerprint, the HTTPS server with
//!   its connection cap and deadlines), `actions` (what the pages and the API both do:
//!   lock and unlock, vaults, secrets, sharing, peers, backups, keyslots, status), `pages`
//!   (the HTML, with maud), `account` (the account's binding to the node, the password
//!   change and reset), [`console::api`] (the JSON API, described by
//!   [`console::api::OPENAPI`]), and the module itself: [`console::router`], setup, login,
//!   sessions, CSRF and headers.
//! - [`update`]: `pk-appliance update`, the box's command line for the update installer
//!   (the console's updates page is `console`'s `installer` and `updates`).
//! - [`data`]: the encrypted data partition, a LUKS2 volume whose passphrase our own
//!   keyslots seal (`docs/theory/data-at-rest.md`); [`data_command`] is `pk-appliance
//!   data`, which also starts the locked data console (`console::gate`).
//! - [`daemon`]: the daemon's life ([`daemon::run`]), shared by both binaries:
//!   `pk-appliance` (`main.rs`: journald logging under systemd) and `pk-appliance-dev`
//!   (a local appliance with a swtpm, for development).
//!
//! `docs/theory/console-security.md` explains the console's security model in full,
//! `docs/reference/appliance-config.md` every configuration key.

#![forbid(unsafe_code)]

pub mod config;
pub mod config_command;
pub mod console;
pub mod daemon;
pub mod data;
pub mod data_command;
mod files;
pub mod health;
pub mod screen;
pub mod settings;
pub mod update;
