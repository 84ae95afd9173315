//! The reader: a bundle round-trips, and every damaged header is refused before a part
//! byte is read, without a panic.

use std::io::Read as _;

use ed25519_dalek::SigningKey;
use pk_update::bundle::{BundleError, BundleReader, PartName, read_manifest_unverified};

use crate::common::{Parts, header_len, signed};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[3u8; 32])
}

fn made() -> (Parts, Vec<u8>) {
    let dir = tempfile::tempdir().expect("a directory");
    let parts = Parts::random(5, "2.0.1", 8);
    let bytes = parts.bundle(&key(), dir.path());
    (parts, bytes)
}

#[test]
fn a_bundle_round_trips_part_by_part() {
    let (parts, bytes) = made();
    let mut reader =
        BundleReader::open(bytes.as_slice(), &key().verifying_key(), None).expect("opens");
    assert_eq!(reader.header_len(), header_len(&bytes) as u64);
    assert_eq!(reader.manifest().version.to_string(), "2.0.1");
    let mut got = Vec::new();
    while let Some(mut part) = reader.next_part().expect("a part") {
        let mut data = Vec::new();
        part.read_to_end(&mut data).expect("the part reads");
        got.push((part.name(), data));
    }
    assert_eq!(
        got,
        [
            (PartName::Root, parts.root.clone()),
            (PartName::Verity, parts.verity.clone()),
            (PartName::Uki, parts.uki.clone()),
        ]
    );
    let manifest = reader.finish().expect("nothing follows");
    assert_eq!(manifest.roothash, parts.spec.roothash);
    assert_eq!(
        read_manifest_unverified(&mut bytes.as_slice()).expect("the manifest"),
        manifest
    );
}

#[test]
fn parts_must_be_read_in_order_and_to_their_end() {
    let (_, bytes) = made();
    let mut reader =
        BundleReader::open(bytes.as_slice(), &key().verifying_key(), None).expect("opens");
    let mut root = reader.next_part().expect("root").expect("a part");
    let mut buf = [0u8; 10];
    assert_eq!(root.read_chunk(&mut buf).expect("reads"), 10);
    assert!(matches!(
        reader.next_part(),
        Err(BundleError::NotRead(PartName::Root))
    ));
    assert!(matches!(
        reader.finish(),
        Err(BundleError::NotRead(PartName::Root))
    ));
}

#[test]
fn every_flipped_header_byte_is_refused_before_any_part_byte() {
    let (_, bytes) = made();
    let end = header_len(&bytes);
    for i in 0..end {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0x20;
        let mut input = damaged.as_slice();
        let refused = BundleReader::open(&mut input, &key().verifying_key(), None);
        assert!(refused.is_err(), "byte {i} flipped was accepted");
        // The reader stopped at or before the end of the header (unless the flipped byte
        // is the manifest's length, which then says where the header ends).
        if !(12..16).contains(&i) {
            assert!(
                input.len() >= damaged.len() - end,
                "byte {i}: read past the header"
            );
        }
    }
}

#[test]
fn every_truncated_header_is_refused_as_truncated() {
    let (_, bytes) = made();
    for cut in 0..header_len(&bytes) {
        let refused = BundleReader::open(&bytes[..cut], &key().verifying_key(), None);
        assert!(
            matches!(refused, Err(BundleError::Truncated(_))),
            "cut at {cut}: {:?}",
            refused.err()
        );
    }
}

#[test]
fn manifests_the_format_forbids_are_refused_even_when_signed() {
    let (parts, bytes) = made();
    let good: serde_json::Value =
        serde_json::from_slice(&bytes[16..header_len(&bytes) - 64]).expect("the manifest");
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "unknown field",
            Box::new(|m| m["install_hook"] = "rm -rf /".into()),
        ),
        (
            "unknown field `offset`",
            Box::new(|m| m["parts"][0]["offset"] = 0.into()),
        ),
        (
            "`other`, not pk-appliance",
            Box::new(|m| m["product"] = "other".into()),
        ),
        (
            "format 2 in the manifest",
            Box::new(|m| m["format"] = 2.into()),
        ),
        (
            "exactly root, verity, uki",
            Box::new(|m| m["parts"].as_array_mut().expect("parts").swap(0, 1)),
        ),
        (
            "exactly root, verity, uki",
            Box::new(|m| {
                m["parts"].as_array_mut().expect("parts").pop();
            }),
        ),
        ("not data_blocks", Box::new(|m| m["data_blocks"] = 9.into())),
        (
            "not a multiple of 4096",
            Box::new(|m| m["hash_offset"] = (8 * 4096 + 1).into()),
        ),
        (
            "at or after the root's end",
            Box::new(|m| m["hash_offset"] = 4096.into()),
        ),
        (
            "impossible size",
            Box::new(|m| m["hash_offset"] = (u64::MAX - 4095).into()),
        ),
        (
            "uki is 0 bytes",
            Box::new(|m| m["parts"][2]["size"] = 0.into()),
        ),
        ("not a version", Box::new(|m| m["version"] = "1.x".into())),
        (
            "unknown variant",
            Box::new(|m| m["arch"] = "riscv64".into()),
        ),
        ("64 hex digits", Box::new(|m| m["roothash"] = "abcd".into())),
    ];
    for (expected, change) in cases {
        let mut m = good.clone();
        change(&mut m);
        let json = serde_json::to_vec(&m).expect("JSON");
        let tail = [&parts.root[..], &parts.verity, &parts.uki].concat();
        let bundle = signed(&json, &key(), &tail);
        let err = BundleReader::open(bundle.as_slice(), &key().verifying_key(), None)
            .err()
            .expect("refused");
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
}

#[test]
fn header_fields_are_checked_in_order_and_bounded() {
    let (_, bytes) = made();
    let k = key().verifying_key();
    let open = |b: &[u8]| BundleReader::open(b, &k, None).err().expect("refused");
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(open(&b), BundleError::NotABundle));
    let mut b = bytes.clone();
    b[8] = 2;
    assert!(matches!(open(&b), BundleError::UnsupportedFormat(2)));
    let mut b = bytes.clone();
    b[12..16].copy_from_slice(&65_537u32.to_le_bytes());
    assert!(matches!(open(&b), BundleError::ManifestLength(65_537)));
    b[12..16].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(open(&b), BundleError::ManifestLength(0)));
    // A length at the bound with too few bytes behind it is truncated, not allocated
    // beyond the bound.
    let mut b = bytes[..16].to_vec();
    b[12..16].copy_from_slice(&65_536u32.to_le_bytes());
    assert!(matches!(open(&b), BundleError::Truncated(_)));
    let other = SigningKey::from_bytes(&[4u8; 32]);
    let header = header_len(&bytes);
    let resigned = signed(&bytes[16..header - 64], &other, &bytes[header..]);
    assert!(matches!(open(&resigned), BundleError::BadSignature));
}
