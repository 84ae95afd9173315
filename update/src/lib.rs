//! Signed update bundles for the pk appliance, and the installer that writes one into the
//! root slot that is not running.
//!
//! The contract is written in `docs/theory/boot-chain-and-updates.md` ("The disk",
//! "Updates"); the byte format in `docs/reference/update-bundle.md`; the two tools and
//! the socket protocol in `docs/reference/pk-update.md`.
//!
//! # Map, bottom up
//!
//! - [`bundle`]: the format. [`bundle::Manifest`] and [`bundle::Version`];
//!   [`bundle::BundleReader`] checks a bundle's header (signature first) before any part
//!   byte is read, then hands out each part as a reader that hashes as it goes;
//!   [`bundle::make`] writes one on the build host.
//! - [`keys`]: the image-signing key (PKCS#8 PEM) and its public key (SPKI PEM).
//! - [`install`]: the machine: [`install::Layout`] (the disk, the ESP, the command line),
//!   [`install::install`] (one bundle into the other slot, in the order the theory page
//!   gives) and [`install::status`].
//! - [`protocol`]: the lines spoken over `/run/pk-update.sock`.
//! - [`serve`]: one connection's worth of `pk-update serve`.
//! - [`client`]: the other end, for the console's daemon and `pk-appliance update`.
//!
//! **Invariant:** the installer writes only the root slot that is not running and the
//! UKIs of that slot on the ESP; the running slot, its UKI and every other partition are
//! never opened for writing at their offsets (the tests hash them before and after).
//!
//! **Invariant:** nothing is written before the whole header checks: magic, format,
//! signature, manifest, architecture, version and size.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod client;
pub mod install;
pub mod keys;
pub mod protocol;
pub mod serve;
#[cfg(feature = "testing")]
pub mod testing;

/// Where the image keeps the public half of the image-signing key.
pub const UPDATE_KEY_PATH: &str = "/usr/share/pk-appliance/update-key.pub";

/// The installer's socket (`pk-update.socket`).
pub const SOCKET_PATH: &str = "/run/pk-update.sock";

/// The exit code of a usage error (sysexits' `EX_USAGE`), for both binaries.
pub const EXIT_USAGE: u8 = 64;

/// Parses a binary's command line: the arguments, or the code to exit with once clap has
/// printed the help or version (0) or a usage error ([`EXIT_USAGE`]).
pub fn parse_args<C: clap::Parser>() -> Result<C, std::process::ExitCode> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            std::process::ExitCode::from(EXIT_USAGE)
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}
