//! The emulated PIV card (`hsm::sim::piv`, behind hsm's `testing` feature): what a PC/SC
//! client sends it through vpcd, parsed and answered: command APDUs (short and extended,
//! chained), their BER-TLV data, PINs, the management key, keys and data objects.
//!
//! Input: vpcd messages as on the wire: a big-endian u16 length, then the message (one
//! byte: a control code; more: a command APDU), for one fresh card.
//!
//! The management key's challenge is random, so the input cannot answer it by itself:
//! in an APDU, the eight bytes `WITNESS!` are replaced by the witness the card last sent,
//! decrypted with the default management key, as a client that knows the key would do.
//!
//! Checks: no panic; every answer fits a short response (at most 256 bytes of data and the
//! status word), as vpcd's framing and the PC/SC clients expect.

#![no_main]

use std::sync::atomic::AtomicBool;

use des::TdesEde3;
use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockDecrypt, KeyInit};
use hsm::sim::piv::{DEFAULT_MGM_KEY, PivCard};
use libfuzzer_sys::fuzz_target;

/// Where an input puts the decrypted witness.
const PLACEHOLDER: &[u8; 8] = b"WITNESS!";

/// The witness in a reply to "give me a witness" (`7C 0A 80 08 <8 bytes>`), decrypted.
fn witness(reply: &[u8]) -> Option<[u8; 8]> {
    let Some([0x7C, 0x0A, 0x80, 0x08, rest @ ..]) = reply.get(..) else {
        return None;
    };
    let mut block: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    let cipher = TdesEde3::new(GenericArray::from_slice(&DEFAULT_MGM_KEY));
    cipher.decrypt_block(GenericArray::from_mut_slice(&mut block));
    Some(block)
}

fuzz_target!(|data: &[u8]| {
    let mut card = PivCard::new(0x1234_5678);
    let stop = AtomicBool::new(false);
    let mut last_witness: Option<[u8; 8]> = None;
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let (message, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        let mut message = message.to_vec();
        if let Some(w) = last_witness {
            if let Some(at) = message.windows(8).position(|x| x == PLACEHOLDER) {
                message[at..at + 8].copy_from_slice(&w);
            }
        }
        let Some(reply) = card.handle_message(&message, &stop) else {
            continue;
        };
        assert!(reply.len() <= 258, "an answer of {} bytes", reply.len());
        if message.len() > 1 {
            assert!(reply.len() >= 2, "an answer without a status word");
        }
        if let Some(w) = witness(&reply) {
            last_witness = Some(w);
        }
    }
});
