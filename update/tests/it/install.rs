//! The installer on a real GPT disk image: installs A -> B and B -> A, and every refusal,
//! each checked against the bytes it must never write.

use pk_update::bundle::{Arch, PartName};
use pk_update::install::{self, InstallError, OtherState, PartUuid, Slot, Stage, Status, Tries};

use crate::common::{EMPTY_B, Machine, Parts, header_len, sha, signed, v};

/// The id in a UKI's name for `parts`.
fn id(parts: &Parts) -> String {
    parts.spec.roothash.hex_prefix(8)
}

fn status(m: &Machine) -> Status {
    install::status(&m.layout).expect("the status")
}

/// Checks slot B holds `parts` and boots it with a fresh counter.
fn assert_installed_in_b(m: &Machine, parts: &Parts) {
    assert_eq!(
        m.partuuid("root-b"),
        PartUuid::of_roothash(&parts.spec.roothash)
    );
    let slot = m.partition("root-b");
    let off = parts.spec.hash_offset as usize;
    assert_eq!(&slot[..parts.root.len()], &parts.root[..]);
    assert_eq!(&slot[off..off + parts.verity.len()], &parts.verity[..]);
    let uki = m
        .layout
        .esp
        .join(format!("EFI/Linux/pk-appliance-{}+3.efi", id(parts)));
    assert_eq!(std::fs::read(uki).expect("the new UKI"), parts.uki);
    assert!(!m.layout.esp.join("EFI/Linux/pk-update.tmp").exists());
}

/// Checks slot B is empty: the empty PARTUUID, no UKI with its ids, no temporary file.
fn assert_b_empty(m: &Machine, parts: &Parts) {
    assert_eq!(m.partuuid("root-b"), EMPTY_B.parse().expect("a UUID"));
    let files = m.esp_files();
    assert!(
        !files
            .keys()
            .any(|f| f.contains(&id(parts)) || f.ends_with(".tmp")),
        "{files:?}"
    );
    assert_eq!(status(m).other_state, OtherState::Empty);
}

#[test]
fn a_bundle_installs_into_slot_b_and_touches_nothing_else() {
    let m = Machine::new("1.0.0");
    let before = status(&m);
    assert_eq!(before.running, Slot::A);
    assert_eq!(before.running_version, v("1.0.0"));
    assert_eq!(before.other_state, OtherState::Empty);
    assert_eq!(before.ukis.len(), 1);
    assert_eq!(before.ukis[0].slot, Some(Slot::A));
    assert_eq!(before.ukis[0].version, Some(v("1.0.0")));
    let untouchable = m.untouchable();

    let parts = Parts::random(2, "1.1.0", 300);
    let (result, progress) = m.install(&m.bundle(&parts), false);
    let installed = result.expect("installed");
    assert_eq!(installed.slot, Slot::B);
    assert_eq!(installed.version, v("1.1.0"));
    assert_eq!(installed.uki, format!("pk-appliance-{}+3.efi", id(&parts)));
    assert_installed_in_b(&m, &parts);
    assert_eq!(m.untouchable(), untouchable);

    // Each stage in order, each ending complete.
    let stages: Vec<Stage> = progress.iter().map(|p| p.stage).collect();
    let mut order = stages.clone();
    order.dedup();
    assert_eq!(
        order,
        [Stage::Verify, Stage::Write, Stage::Readback, Stage::Uki]
    );
    for stage in order {
        let last = progress.iter().rfind(|p| p.stage == stage).expect("a line");
        assert_eq!(last.done, last.total, "{stage}");
    }
    let written = (parts.root.len() + parts.verity.len()) as u64;
    assert!(
        progress
            .iter()
            .any(|p| p.stage == Stage::Write && p.total == written)
    );

    let after = status(&m);
    assert_eq!(
        after.other_state,
        OtherState::Installed {
            version: Some(v("1.1.0")),
            tries: Some(Tries { left: 3, done: 0 }),
        }
    );
    assert_eq!(after.ukis.len(), 2);
}

#[test]
fn the_next_install_goes_from_b_into_a_and_replaces_a_s_uki() {
    let m = Machine::new("1.0.0");
    let first = Parts::random(2, "1.1.0", 300);
    m.install(&m.bundle(&first), false)
        .0
        .expect("installed in B");
    // Boot into B, blessed: systemd-bless-boot drops the counter.
    let esp = m.layout.esp.join("EFI/Linux");
    std::fs::rename(
        esp.join(format!("pk-appliance-{}+3.efi", id(&first))),
        esp.join(format!("pk-appliance-{}.efi", id(&first))),
    )
    .expect("blessed");
    m.boot(Slot::B, &first.spec.roothash, "1.1.0");
    let running = status(&m);
    assert_eq!(running.running, Slot::B);
    assert_eq!(
        running.other_state,
        OtherState::Installed {
            version: Some(v("1.0.0")),
            tries: None
        }
    );
    let slot_b = sha(&m.partition("root-b"));
    let data = sha(&m.partition("pk-data"));
    let b_uki = m.esp_files()[&format!("EFI/Linux/pk-appliance-{}.efi", id(&first))].clone();

    let second = Parts::random(3, "1.2.0", 200);
    let installed = m
        .install(&m.bundle(&second), false)
        .0
        .expect("installed in A");
    assert_eq!(installed.slot, Slot::A);
    assert_eq!(
        m.partuuid("root-a"),
        PartUuid::of_roothash(&second.spec.roothash)
    );
    let slot_a = m.partition("root-a");
    assert_eq!(&slot_a[..second.root.len()], &second.root[..]);
    let off = second.spec.hash_offset as usize;
    assert_eq!(&slot_a[off..off + second.verity.len()], &second.verity[..]);
    // B, the data and B's UKI untouched; A's old UKI gone, its new one there.
    assert_eq!(sha(&m.partition("root-b")), slot_b);
    assert_eq!(sha(&m.partition("pk-data")), data);
    let files = m.esp_files();
    assert_eq!(
        files[&format!("EFI/Linux/pk-appliance-{}.efi", id(&first))],
        b_uki
    );
    assert!(!files.keys().any(|f| f.contains(&id(&m.running))));
    assert_eq!(
        files[&format!("EFI/Linux/pk-appliance-{}+3.efi", id(&second))],
        sha(&second.uki)
    );
}

/// Installs `bundle`, expects a refusal before anything was written, and checks nothing
/// on the disk or the ESP changed. Returns the error.
fn refused_before_writing(m: &Machine, bundle: &[u8], allow_downgrade: bool) -> InstallError {
    let before = m.everything();
    let err = m.install(bundle, allow_downgrade).0.expect_err("refused");
    assert!(!matches!(err, InstallError::Failed { .. }), "{err}");
    assert!(err.describe().ends_with("(nothing was written)"));
    assert_eq!(m.everything(), before, "{err}: something was written");
    err
}

#[test]
fn header_refusals_write_nothing() {
    let m = Machine::new("1.0.0");
    let parts = Parts::random(2, "1.1.0", 300);
    let good = m.bundle(&parts);
    let header = header_len(&good);

    let other_key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let foreign = parts.bundle(&other_key, &m.scratch("foreign"));
    let err = refused_before_writing(&m, &foreign, false);
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );

    let mut unsigned = good.clone();
    unsigned[header - 64..header].fill(0);
    let err = refused_before_writing(&m, &unsigned, false);
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );

    let mut altered = good.clone();
    altered[40] ^= 1;
    let err = refused_before_writing(&m, &altered, false);
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );

    for cut in [0, 7, 16, 100, header - 64, header - 1] {
        let err = refused_before_writing(&m, &good[..cut], false);
        assert!(err.to_string().contains("truncated"), "{cut}: {err}");
    }

    let err = refused_before_writing(&m, b"#!/bin/sh\nrm -rf /\n", false);
    assert!(err.to_string().contains("not an update bundle"), "{err}");

    let mut arm = parts.clone();
    arm.spec.arch = Arch::Arm64;
    let err = refused_before_writing(&m, &m.bundle(&arm), false);
    assert_eq!(
        err.to_string(),
        "the bundle is for arm64, this machine is amd64"
    );

    let mut json: serde_json::Value =
        serde_json::from_slice(&good[16..header - 64]).expect("the manifest");
    json["surprise"] = true.into();
    let extra = signed(
        &serde_json::to_vec(&json).expect("JSON"),
        &m.key,
        &good[header..],
    );
    let err = refused_before_writing(&m, &extra, false);
    assert!(
        err.to_string().contains("unknown field `surprise`"),
        "{err}"
    );
}

#[test]
fn a_lower_version_needs_the_bundle_s_or_the_caller_s_permission() {
    let m = Machine::new("1.0.0");
    let older = Parts::random(2, "0.9.9", 300);
    let err = refused_before_writing(&m, &m.bundle(&older), false);
    assert!(
        err.to_string()
            .starts_with("the bundle's version 0.9.9 is lower than the running version 1.0.0"),
        "{err}"
    );
    // The caller's approval (the admin's recovery code, checked by the daemon).
    let installed = m.install(&m.bundle(&older), true).0.expect("installed");
    assert_eq!(installed.version, v("0.9.9"));

    // A bundle signed to allow it.
    let m = Machine::new("1.0.0");
    let mut allowed = Parts::random(3, "0.5", 300);
    allowed.spec.allow_downgrade = true;
    m.install(&m.bundle(&allowed), false).0.expect("installed");
    assert_installed_in_b(&m, &allowed);

    // The same version again is no downgrade.
    let m = Machine::new("1.0.0");
    let same = Parts::random(4, "1.0", 300);
    m.install(&m.bundle(&same), false).0.expect("installed");
}

#[test]
fn the_running_root_a_bundle_too_big_and_a_second_install_at_once_are_refused() {
    let m = Machine::new("1.0.0");
    let err = refused_before_writing(&m, &m.bundle(&m.running), false);
    assert!(matches!(err, InstallError::SameRoot(_)), "{err}");
    assert!(err.to_string().contains("installed already"), "{err}");

    // 4 MiB of root leaves no room for the hash tree in a 4 MiB slot.
    let big = Parts::random(5, "2.0", 1024);
    let err = refused_before_writing(&m, &m.bundle(&big), false);
    assert_eq!(
        err.to_string(),
        format!(
            "the bundle needs {} bytes of the slot, which has {}",
            1024 * 4096 + big.verity.len(),
            crate::common::SLOT_BYTES
        )
    );

    let lock = std::fs::File::create(&m.layout.lock).expect("the lock file");
    lock.lock().expect("locked");
    let parts = Parts::random(6, "2.0", 100);
    let err = refused_before_writing(&m, &m.bundle(&parts), false);
    assert_eq!(err.to_string(), "another install is running");
}

/// Where the header, the root and the verity part end in `bundle`.
fn ends(bundle: &[u8], parts: &Parts) -> (usize, usize, usize) {
    let header = header_len(bundle);
    let root_end = header + parts.root.len();
    (header, root_end, root_end + parts.verity.len())
}

/// Installs `bundle`, expects a failure after writing started, and checks slot B was
/// left empty and nothing else touched.
fn failed_after_writing(m: &Machine, parts: &Parts, bundle: &[u8], expected: &str) {
    let untouchable = m.untouchable();
    let err = m.install(bundle, false).0.expect_err("refused");
    let InstallError::Failed {
        slot,
        source,
        cleanup,
    } = &err
    else {
        panic!("not a failure after writing: {err}");
    };
    assert_eq!(*slot, Slot::B);
    assert!(cleanup.is_none(), "{err}");
    assert!(source.to_string().contains(expected), "{expected}: {err}");
    assert!(
        err.to_string()
            .ends_with("slot B is left empty and will not boot"),
        "{err}"
    );
    assert_eq!(m.untouchable(), untouchable);
    assert_b_empty(m, parts);
}

#[test]
fn a_truncated_bundle_leaves_the_slot_empty() {
    let m = Machine::new("1.0.0");
    let parts = Parts::random(2, "1.1.0", 300);
    let good = m.bundle(&parts);
    let (header, root_end, verity_end) = ends(&good, &parts);
    for cut in [
        header,
        header + 10,
        root_end - 1,
        root_end,
        verity_end + 5,
        good.len() - 1,
    ] {
        failed_after_writing(&m, &parts, &good[..cut], "truncated");
    }
}

#[test]
fn a_flipped_byte_in_any_part_leaves_the_slot_empty() {
    let m = Machine::new("1.0.0");
    let parts = Parts::random(2, "1.1.0", 300);
    let good = m.bundle(&parts);
    let (header, root_end, verity_end) = ends(&good, &parts);
    for (at, part) in [
        (header, PartName::Root),
        (root_end - 1, PartName::Root),
        (root_end + 100, PartName::Verity),
        (verity_end, PartName::Uki),
        (good.len() - 1, PartName::Uki),
    ] {
        let mut bad = good.clone();
        bad[at] ^= 0x80;
        let expected = format!("the bundle's {part} part does not match its SHA-256");
        failed_after_writing(&m, &parts, &bad, &expected);
    }
}

#[test]
fn trailing_bytes_leave_the_slot_empty_even_after_an_earlier_install() {
    let m = Machine::new("1.0.0");
    let first = Parts::random(2, "1.1.0", 300);
    m.install(&m.bundle(&first), false).0.expect("installed");
    let parts = Parts::random(3, "1.2.0", 300);
    let mut long = m.bundle(&parts);
    long.push(0);
    failed_after_writing(&m, &parts, &long, "bytes after its last part");
    // The earlier install's UKI went too: the slot is empty, not half of either.
    assert_b_empty(&m, &first);
}

#[test]
fn a_machine_that_is_not_the_appliance_is_refused_before_writing() {
    let m = Machine::new("1.0.0");
    let parts = Parts::random(2, "1.1.0", 300);
    let bundle = m.bundle(&parts);

    std::fs::write(&m.layout.cmdline, "ro quiet\n").expect("cmdline");
    let err = refused_before_writing(&m, &bundle, false);
    assert!(err.to_string().contains("no roothash="), "{err}");

    m.boot(Slot::A, &parts.spec.roothash, "1.0.0");
    let err = refused_before_writing(&m, &bundle, false);
    assert!(
        err.to_string().contains("neither root-a nor root-b"),
        "{err}"
    );

    m.boot(Slot::A, &m.running.spec.roothash, "1.0.0");
    std::fs::write(&m.layout.os_release, "ID=debian\n").expect("os-release");
    let err = refused_before_writing(&m, &bundle, false);
    assert!(err.to_string().contains("has no IMAGE_VERSION"), "{err}");
}

#[test]
fn a_failed_boot_shows_in_the_status() {
    let m = Machine::new("1.0.0");
    let parts = Parts::random(2, "1.1.0", 300);
    m.install(&m.bundle(&parts), false).0.expect("installed");
    let esp = m.layout.esp.join("EFI/Linux");
    std::fs::rename(
        esp.join(format!("pk-appliance-{}+3.efi", id(&parts))),
        esp.join(format!("pk-appliance-{}+0-3.efi", id(&parts))),
    )
    .expect("tries used up");
    assert_eq!(
        status(&m).other_state,
        OtherState::Failed {
            version: Some(v("1.1.0"))
        }
    );
    // A root without a UKI is an install that was cut off.
    std::fs::remove_file(esp.join(format!("pk-appliance-{}+0-3.efi", id(&parts))))
        .expect("removed");
    assert_eq!(status(&m).other_state, OtherState::Incomplete);
}
