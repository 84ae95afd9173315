//! The keyslot file (`node::keyslots`): magic, version, length, JSON body, checksum, as
//! `Keyslots::open` reads it from `<node-path>/keyslots`; then unlocking through what
//! the file holds, with the software protectors (a recovery code, a passphrase), so the
//! stored parameters (salts, nonces, Argon2id costs) are parsed and used too.
//!
//! Input: `[mode, file...]`. With `mode` even, the file's bytes as they are. With `mode`
//! odd, the harness first writes the body's length and the checksum that fit the bytes it
//! was given, as a tool that edits the file would: the checksum only catches accidents,
//! and without this almost no mutation of the body would get past it.
//!
//! Checks: no panic. A passphrase slot is only tried when its stored Argon2id cost is
//! small (the file may legitimately ask for gigabytes: that is bounded in `hsm`, and not
//! what this target is about).

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use hsm::recovery::{RecoveryCode, RecoveryProtector};
use hsm::soft::{Argon2Params, SoftProtector};
use hsm::{Pin, Sealed};
use libfuzzer_sys::fuzz_target;
use node::keyslots::Keyslots;
use sha2::{Digest, Sha256};

/// Argon2id work (KiB times passes, summed over the slots) worth spending on one input.
const MAX_WORK: u64 = 4096;

fn recovery() -> &'static RecoveryProtector {
    static RECOVERY: OnceLock<RecoveryProtector> = OnceLock::new();
    RECOVERY.get_or_init(|| {
        let words = ["abandon"; 23].join(" ") + " art";
        RecoveryProtector::new(RecoveryCode::parse(&words).expect("a valid BIP39 phrase"))
    })
}

/// Magic, version and length; SHA-256 at the end.
const PREFIX: usize = 8 + 2 + 4;
const CHECKSUM: usize = 32;

/// Writes the length and checksum that fit `file`'s body.
fn fix_up(file: &mut [u8]) {
    let Some(body) = file.len().checked_sub(PREFIX + CHECKSUM) else {
        return;
    };
    file[10..14].copy_from_slice(&u32::try_from(body).unwrap_or(u32::MAX).to_be_bytes());
    let end = PREFIX + body;
    let digest = Sha256::digest(&file[..end]);
    file[end..].copy_from_slice(&digest);
}

fuzz_target!(|data: &[u8]| {
    let [mode, file @ ..] = data else {
        return;
    };
    let mut file = file.to_vec();
    if mode % 2 == 1 {
        fix_up(&mut file);
    }
    let Ok(keyslots) = Keyslots::from_bytes(Path::new("keyslots"), &file) else {
        return;
    };
    let mut work = 0u64;
    for slot in keyslots.slots() {
        let _ = keyslots.slot(slot.header.id);
        let _ = slot.is_hardware();
        let _ = slot.sealed.needs_secret();
        if let Sealed::Soft(soft) = &slot.sealed {
            let p = soft.argon2;
            work = work.saturating_add(u64::from(p.m_kib).saturating_mul(u64::from(p.t)));
        }
    }
    let _ = keyslots.unlock(recovery(), None);
    if work <= MAX_WORK {
        let soft = SoftProtector::new(
            Pin::new(pk_fuzz::PASSPHRASE.to_vec()),
            Argon2Params::INSECURE_FOR_TESTS,
        );
        let _ = keyslots.unlock(&soft, None);
    }
});
