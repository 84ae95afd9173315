//! A YubiKey keyslot through `pk`, against the emulated PIV card behind a real pcscd.

use std::time::{Duration, Instant};

use hsm_core::sim::pcsc::Pcscd;
use hsm_core::sim::piv::{PivCard, TouchMode};

use crate::harness::World;

const SERIAL: u32 = 27_182_818;
const PIN: &str = "123456";

#[test]
fn yubikey_slot_unlocks_with_pin_and_touch_only() {
    let w = World::new();
    let pcscd = Pcscd::start(&w.path("pcscd")).unwrap_or_else(|e| panic!("{e}"));
    let card = PivCard::create(&w.path("card.json"), SERIAL)
        .and_then(|card| card.connect(pcscd.card_addr()))
        .unwrap_or_else(|e| panic!("{e}"));
    let touch = card.touch();

    let (node, pass, code) = w.soft_node_with_code("correct horse battery staple");
    let pass = pass.to_str().unwrap();
    let pin = &w.secret_arg("pin", PIN);
    let code = w.secret_arg("code", &code);

    // Enrol: the card generates the key. Right after pcscd starts the reader may not show
    // the card yet; give it a moment.
    let enroll = [
        "keyslots",
        "enroll",
        "--token",
        "yubikey",
        "--password-file",
        pass,
        "--password-new-file",
        pin,
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let run = w.pk(&node, &enroll);
        if run.code != 69 || Instant::now() > deadline {
            break run.ok();
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(out.contains("2: yubikey (hardware)"), "{out}");
    assert!(
        out.contains(&format!("serial {SERIAL}, slot 9d, PIN once, touch always")),
        "{out}"
    );

    // PIN and touch: unlocks, and the user was told to touch.
    let test_pin = ["keyslots", "test", "--slot", "2", "--password-file", pin];
    let run = w.pk(&node, &test_pin);
    assert!(run.stderr.contains("Touch your YubiKey"), "{}", run.stderr);
    assert!(run.ok().contains("keyslot 2: yubikey"));

    // No touch: refused, clearly.
    touch.set_mode(TouchMode::Deny);
    w.pk(&node, &test_pin).fails(77, "touch");
    touch.set_mode(TouchMode::Approve);

    // Through the agent: lock, then unlock with the YubiKey slot.
    let _agent = w.agent(&node, &["--password-file", pass]);
    w.pk(&node, &["agent", "lock"]).ok();
    let run = w.pk(
        &node,
        &[
            "agent",
            "unlock",
            "--unlock-slot",
            "2",
            "--password-file",
            pin,
        ],
    );
    assert!(run.stderr.contains("Touch your YubiKey"), "{}", run.stderr);
    assert!(run.ok().contains("Unlocked with keyslot 2"));

    // Wrong PINs count down and block the card; the recovery code still opens the node.
    let wrong = &w.secret_arg("wrong", "000000");
    let test_wrong = ["keyslots", "test", "--slot", "2", "--password-file", wrong];
    w.pk(&node, &test_wrong).fails(77, "2 attempts left");
    w.pk(&node, &test_wrong).fails(77, "1 attempt left");
    w.pk(&node, &test_wrong).fails(77, "PIN blocked");
    w.pk(&node, &test_pin).fails(77, "PIN blocked");
    w.pk(&node, &["keyslots", "test", "--recovery-code-file", &code])
        .ok();

    // Another card in the reader: the slot names the one it needs.
    drop(card);
    std::thread::sleep(Duration::from_millis(500));
    let _other = PivCard::create(&w.path("other.json"), SERIAL + 1)
        .and_then(|card| card.connect(pcscd.card_addr()))
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(1500));
    w.pk(&node, &test_pin)
        .fails(77, &format!("serial {SERIAL}"));
    drop(pcscd);
}
