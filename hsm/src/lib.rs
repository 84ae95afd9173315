//! The token layer: every way a node's data key can be kept, behind one trait.
//!
//! A node's data key (the DEK, a [`DataKey`]) is never stored in the clear. It is
//! *wrapped* once per enrolled unlock method (a keyslot, as in LUKS2), and each unlock
//! method is a [`Protector`]: [`Protector::wrap`] turns the key into a [`Sealed`] record,
//! [`Protector::unwrap`] turns the record back into the key. The protectors:
//!
//! - [`tpm::TpmProtector`]: a TPM 2.0 sealed object holding a per-slot key-encryption
//!   key, optionally bound to PCR values and/or a PIN (tss-esapi 7.x);
//! - [`pkcs11::Pkcs11Protector`]: a non-extractable AES-256 key generated inside a PKCS#11
//!   token, used with AES-GCM (cryptoki);
//! - [`yubikey::YubiKeyProtector`]: a P-256 key generated on a YubiKey's PIV application,
//!   ECDH against an ephemeral key, touch prompts as [`yubikey::YubiKeyEvent`]s;
//! - [`soft::SoftProtector`]: a passphrase stretched with Argon2id (not hardware);
//! - [`recovery::RecoveryProtector`]: a 24-word BIP39 recovery code (not hardware).
//!
//! # Two crates
//!
//! This crate is the token drivers on top of `hsm-core`, which it re-exports whole. The
//! trait, [`Kind`], [`Sealed`], the secrets and errors, every backend's stored record and
//! the two software protectors, the [`Drivers`] trait and the simulators ([`sim`]) are
//! `hsm-core`'s, with no C library beneath them; this crate adds the three hardware
//! protectors and [`Hardware`], which hands them out behind [`Drivers`]: a program that
//! uses tokens (`pk-node`, the appliance) gives `Hardware` to the node library, which
//! depends on `hsm-core` alone. Every path stays as it was: the root re-exports
//! `hsm-core`'s root, [`soft`], [`recovery`], [`drivers`] and [`sim`] are `hsm-core`'s
//! modules, and
//! [`tpm`], [`pkcs11`] and [`yubikey`] each re-export `hsm-core`'s module of the same name
//! (the records, such as [`tpm::PcrPolicy`] and [`yubikey::PinRule`]) beside their driver.
//! A crate that needs only the records, the trait or the software protectors can depend
//! on `hsm-core` and link no token library.
//!
//! # What holds, always
//!
//! - **The only crate with C libraries.** libtss2 and (through the `yubikey` crate)
//!   libpcsclite are linked here, and PKCS#11 modules are loaded here at run time: from
//!   the configuration, or from the system library directories when only a stored record
//!   names one. No `unsafe` all the same (`#![forbid(unsafe_code)]`); should it ever need
//!   some, this is the one crate allowed it, with a `// SAFETY:` line on each block.
//! - **What `hsm-core` promises holds here too**: sealed records are safe on disk, secrets
//!   zeroize and redact, errors name what a user can act on and carry no secret, and
//!   software is never taken for hardware ([`Kind::is_hardware`]).
//! - **A token is opened per operation.** A protector holds its configuration and
//!   credentials only, so it is cheap to keep and can be shared between threads; the TPM
//!   backend flushes every transient object and session before it returns.
//!
//! # Map, bottom up
//!
//! - From `hsm-core`, re-exported: [`DataKey`], [`Pin`], [`WrapError`], [`UnwrapError`],
//!   [`Wrapped`], [`Kind`], [`Sealed`], [`Protector`], and the modules [`soft`] and
//!   [`recovery`].
//! - The drivers, each beside its records re-exported from `hsm-core`: [`tpm`] (libtss2;
//!   with [`tpm::NvCounter`], the NV counter that detects a rolled-back data partition),
//!   [`pkcs11`] (PKCS#11 modules), [`yubikey`] (PC/SC).
//! - [`Hardware`]: the three drivers behind `hsm-core`'s [`Drivers`] trait.
//! - [`sim`] (`hsm-core`'s, re-exported): the software stand-ins that tests and the local
//!   development command start (swtpm, SoftHSM2 token directories) and, behind the
//!   `testing` feature, `sim::pcsc` (a private pcscd with one vpcd reader) and `sim::piv`
//!   (an emulated YubiKey 5 PIV card).
//!
//! `ARCHITECTURE.md` at the workspace root places this crate among the others;
//! `docs/theory/keys-and-keyslots.md` explains the keys and keyslots built on it.

#![forbid(unsafe_code)]

mod hardware;
pub mod pkcs11;
pub mod tpm;
pub mod yubikey;

pub use hardware::Hardware;
pub use hsm_core::{
    DataKey, Drivers, Kind, Pin, PolicyFailure, Protector, Sealed, UnwrapError, WrapError, Wrapped,
    drivers,
};
pub use hsm_core::{recovery, sim, soft};
