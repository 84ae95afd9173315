//! The wire encoding of every call, pinned by a snapshot (`wire.snapshot` beside this
//! file). postcard numbers enum variants by position: a call inserted, removed or moved
//! anywhere, or a field changed, changes the bytes of others, and an agent and a `pk` of
//! different builds would misread each other. This test fails on any such change until
//! [`PROTOCOL`] moves; then `PK_BLESS_WIRE=1 cargo test -p node --lib wire` writes the
//! snapshot anew (it refuses to while the protocol number is the snapshot's).

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::audit::AuditQuery;
use crate::nodes::{NodePermission, VaultPermission};
use crate::notifications::Mailbox;

const SNAPSHOT: &str = include_str!("wire.snapshot");
const SNAPSHOT_PATH: &str = "src/api/wire.snapshot";
const NODE: &str = "v0000000000000000000000000000000000000000000000000000";

fn s(text: &str) -> String {
    text.to_owned()
}

fn bytes(text: &str) -> SecretBytes {
    SecretBytes(text.as_bytes().to_vec())
}

/// A sample status reply.
fn status() -> agent::AgentStatus {
    agent::AgentStatus {
        state: agent::AgentState::Unlocked,
        pid: 1,
        node_id: Some(s(NODE)),
        unlocked_with: Some(0),
        uptime_s: 3,
        version: s("0.1.0"),
        peer_addr: None,
    }
}

/// One sample of every call.
fn samples() -> Vec<Request> {
    vec![
        agent::Status.into(),
        agent::Unlock {
            slot: Some(1),
            kind: Some(hsm_core::Kind::Soft),
            secret: Some(bytes("pin")),
        }
        .into(),
        agent::Lock.into(),
        agent::Stop.into(),
        agent::Audit(AuditQuery {
            events: vec![s("vault")],
            limit: Some(3),
            newest_first: true,
            after: Some(7),
        })
        .into(),
        keyslots::Changed {
            event: keyslots::KeyslotEvent::Removed,
            slot: 2,
            kind: hsm_core::Kind::Tpm,
        }
        .into(),
        console::Event {
            event: console::ConsoleEvent::AccountReplaced,
            client: s("::1"),
        }
        .into(),
        console::Account {
            account: s("digest"),
            binding: console::AccountBinding::Change { from: s("old") },
        }
        .into(),
        keys::Public.into(),
        keys::Sign(bytes("data")).into(),
        keys::Encrypt {
            to: s(NODE),
            data: bytes("plain"),
        }
        .into(),
        keys::Decrypt(bytes("cipher")).into(),
        keys::Renew.into(),
        keys::Reset.into(),
        keys::Cert { chain: true }.into(),
        vaults::Create { name: s("team") }.into(),
        vaults::List.into(),
        vaults::Rename {
            from: s("a"),
            to: s("b"),
        }
        .into(),
        vaults::Delete { name: s("team") }.into(),
        vaults::ExportBundle { vault: s("team") }.into(),
        vaults::Log {
            vault: s("team"),
            depth: Some(5),
            from: Some(s("abc")),
        }
        .into(),
        vaults::Version {
            vault: s("team"),
            target: s("last"),
        }
        .into(),
        vaults::Share {
            vault: s("team"),
            node: s(NODE),
            permissions: vec![VaultPermission::Clone, VaultPermission::Push],
            grant: false,
        }
        .into(),
        vaults::Permissions { vault: s("team") }.into(),
        vaults::Scan { node: s(NODE) }.into(),
        vaults::Clone {
            vault: s("team"),
            node: s(NODE),
            name: Some(s("copy")),
        }
        .into(),
        vaults::Pull {
            vault: s("team"),
            node: None,
        }
        .into(),
        backups::Add {
            vault: s("team"),
            node: s(NODE),
            every_s: 3600,
            name: None,
        }
        .into(),
        backups::List.into(),
        backups::Remove { name: s("team") }.into(),
        secrets::Write {
            vault: s("team"),
            path: s("db/pw"),
            kind: secrets::WriteKind::Edit,
            size: Some(9),
        }
        .into(),
        secrets::Cat {
            vault: s("team"),
            path: s("db/pw"),
            via: secrets::Via::Console,
        }
        .into(),
        secrets::Ls {
            vault: s("team"),
            path: s(""),
        }
        .into(),
        secrets::Mkdir {
            vault: s("team"),
            path: s("db"),
            parents: true,
        }
        .into(),
        secrets::Rm {
            vault: s("team"),
            paths: vec![s("a"), s("b")],
            recursive: true,
        }
        .into(),
        secrets::Rename {
            vault: s("team"),
            from: s("a"),
            to: s("b"),
        }
        .into(),
        secrets::Stat {
            vault: s("team"),
            path: s("a"),
        }
        .into(),
        secrets::Touch {
            vault: s("team"),
            path: s("a"),
        }
        .into(),
        nodes::Add {
            node: s(NODE),
            addr: s("127.0.0.1:1314"),
            no_notify: true,
            no_ping: false,
        }
        .into(),
        nodes::Remove { node: s(NODE) }.into(),
        nodes::Ping { node: s(NODE) }.into(),
        nodes::Find { node: s(NODE) }.into(),
        nodes::GetAll.into(),
        nodes::Connections.into(),
        nodes::Permit {
            node: s(NODE),
            permissions: vec![NodePermission::Notify, NodePermission::Scan],
            allow: true,
        }
        .into(),
        nodes::Discover { wait_ms: 1500 }.into(),
        nodes::Claim { node: s(NODE) }.into(),
        notifications::Send {
            node: s(NODE),
            text: s("hello"),
        }
        .into(),
        notifications::List {
            mailbox: Mailbox::Outbox,
            unread: false,
        }
        .into(),
        notifications::Read { id: Some(4) }.into(),
        notifications::Remove {
            mailbox: Mailbox::Inbox,
            id: None,
        }
        .into(),
        identities::List.into(),
        identities::Get { gestalt: s(NODE) }.into(),
        identities::Trust {
            gestalt: s("github.com:alice"),
            trust: true,
        }
        .into(),
        identities::Permit {
            gestalt: s(NODE),
            permissions: vec![NodePermission::Scan],
            allow: false,
        }
        .into(),
        identities::Permissions { gestalt: s(NODE) }.into(),
        identities::Invite { node: s(NODE) }.into(),
        identities::Discover {
            gestalt: s("github.com:alice"),
        }
        .into(),
        identities::Queue.into(),
        identities::AuthStart {
            provider: s("github.com"),
        }
        .into(),
        identities::AuthFinish {
            provider: s("github.com"),
            handle: 99,
        }
        .into(),
        identities::Authenticated.into(),
        identities::Claim {
            identity: s("github.com:alice"),
        }
        .into(),
        identities::Search {
            provider: s("github.com"),
            term: s("ali"),
        }
        .into(),
    ]
}

/// The domain and call of a request, as named in its `Debug` form.
fn names(request: &Request) -> (String, String) {
    let debug = format!("{request:?}");
    let mut parts = debug
        .split(|c: char| !c.is_alphanumeric())
        .filter(|p| !p.is_empty());
    let domain = parts.next().unwrap_or_default().to_owned();
    let call = parts.next().unwrap_or_default().to_owned();
    (domain, call)
}

/// Every domain's calls, by the name of its `Request` variant.
fn declared() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("Agent", agent::AgentRequest::CALLS),
        ("Keyslots", keyslots::KeyslotsRequest::CALLS),
        ("Console", console::ConsoleRequest::CALLS),
        ("Keys", keys::KeysRequest::CALLS),
        ("Vaults", vaults::VaultsRequest::CALLS),
        ("Backups", backups::BackupsRequest::CALLS),
        ("Secrets", secrets::SecretsRequest::CALLS),
        ("Nodes", nodes::NodesRequest::CALLS),
        ("Notifications", notifications::NotificationsRequest::CALLS),
        ("Identities", identities::IdentitiesRequest::CALLS),
    ])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The snapshot as this build encodes it.
fn encoded() -> String {
    let mut out = format!("protocol {PROTOCOL}\n");
    for request in samples() {
        let (domain, call) = names(&request);
        let hello = Hello {
            protocol: PROTOCOL,
            request,
        };
        let bytes = postcard::to_allocvec(&hello).expect("encodes");
        out.push_str(&format!("{domain}.{call} {}\n", hex(&bytes)));
    }
    let frames = [
        (
            "Upload.Chunk",
            postcard::to_allocvec(&Upload::Chunk(bytes("c"))),
        ),
        ("Upload.End", postcard::to_allocvec(&Upload::End)),
        (
            "Response.Chunk",
            postcard::to_allocvec(&Response::Chunk(bytes("c"))),
        ),
        (
            "Response.Ok",
            postcard::to_allocvec(&Response::Ok(bytes("r"))),
        ),
        (
            "Response.Err",
            postcard::to_allocvec(&Response::Err(ApiError::new(ErrorCode::Corrupt, "m"))),
        ),
    ];
    for (name, bytes) in frames {
        out.push_str(&format!("{name} {}\n", hex(&bytes.expect("encodes"))));
    }
    // Replies with enums or many fields, whose order decides their bytes too.
    let replies = [
        (
            "Reply.Agent.Status",
            encode_reply::<agent::Status>(&status()),
        ),
        (
            "Reply.Vaults.Pull",
            encode_reply::<vaults::Pull>(&crate::vault::FetchOutcome {
                vault: s("team"),
                id: crate::vault::VaultId([7; 16]),
                result: crate::vault::FetchResult::Merged,
                objects: 3,
                bytes: 1058,
                resumed: 0,
                conflicts: vec![(s("a"), s("a.conflict"))],
                commit: s("c0ffee"),
                wire_bytes: 2048,
            }),
        ),
    ];
    for (name, bytes) in replies {
        let bytes = bytes.expect("encodes");
        out.push_str(&format!("{name} {}\n", hex(&bytes.0)));
    }
    out
}

#[test]
fn every_call_has_a_sample() {
    let sampled: BTreeSet<(String, String)> = samples().iter().map(names).collect();
    let declared: BTreeSet<(String, String)> = declared()
        .into_iter()
        .flat_map(|(domain, calls)| {
            calls
                .iter()
                .map(move |c| (domain.to_owned(), c.to_string()))
        })
        .collect();
    assert_eq!(
        sampled, declared,
        "every call needs a sample in samples() (and only declared calls have one)"
    );
    assert_eq!(samples().len(), declared.len(), "one sample per call");
}

#[test]
fn wire_encoding_is_pinned() {
    let now = encoded();
    if now == SNAPSHOT {
        return;
    }
    let pinned = SNAPSHOT.lines().next().unwrap_or_default();
    let moved = pinned != format!("protocol {PROTOCOL}");
    if std::env::var_os("PK_BLESS_WIRE").is_some() && moved {
        std::fs::write(SNAPSHOT_PATH, &now).expect("writes the snapshot");
        return;
    }
    let changed: Vec<&str> = now
        .lines()
        .filter(|line| !SNAPSHOT.lines().any(|l| l == *line))
        .collect();
    panic!(
        "the agent protocol's wire encoding changed ({} lines differ, e.g. {:?}): \
         raise api::PROTOCOL (now {PROTOCOL}), then run with PK_BLESS_WIRE=1 to pin the new \
         encoding",
        changed.len(),
        changed.first()
    );
}

#[test]
fn a_reply_decodes_only_as_its_own_type() {
    let status = status();
    let encoded = encode_reply::<agent::Status>(&status).expect("encodes");
    assert_eq!(decode_reply::<agent::Status>(&encoded), Ok(status));
    let wrong = decode_reply::<vaults::Log>(&encoded).expect_err("not a log");
    assert_eq!(wrong.code, ErrorCode::Internal);
    assert_eq!(wrong.message, "the agent's reply does not match the call");
}
