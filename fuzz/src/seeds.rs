//! The seed corpora: real messages and files, made by the real code (a store with vaults
//! and a real sender for the sync streams, `Keyslots::init` for keyslot files, signed
//! claims for sigchains), written in each target's input layout. Random keys and times
//! make every run's bytes differ; any run's seeds are as good as another's.

use std::io;
use std::path::Path;

use hsm::pkcs11::Pkcs11Sealed;
use hsm::soft::{Argon2Params, SoftProtector};
use hsm::tpm::{PcrBank, PcrPolicy, SignedPcrPolicy, TpmSealed};
use hsm::yubikey::{PinRule, TouchRule, YubiKeySealed};
use hsm::{DataKey, Kind, Pin, Sealed, Wrapped};
use node::NodePath;
use node::api::agent::{AgentState, AgentStatus};
use node::api::console::{AccountBinding, ConsoleEvent};
use node::api::keyslots::KeyslotEvent;
use node::api::secrets::{Via, WriteKind};
use node::api::{
    ApiError, Call, ErrorCode, Hello, PROTOCOL, Request, Response, SecretBytes, Upload, agent,
    console, encode_reply, keys, keyslots, nodes, notifications, secrets, vaults,
};
use node::audit::AuditQuery;
use node::identity::{Identity, encrypt_to};
use node::keyslots::Keyslots;
use node::nodes::{NodePermission, VaultPermission};
use node::notifications::{Body, Mailbox};
use node::peer::{
    FetchRequest, PEER_PROTOCOL, PeerCall, PeerReply, PeerRequest, PeerResponse, SharedVault,
};
use node::rpc::encode_frame;
use node::sigchain::{Claim, ClaimToken, ClaimType};
use node::store::Store;
use node::vault::{Outgoing, SecretPath, VaultError, Vaults, WireObject};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A node in a temporary directory: its store and its NodeId.
struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    id: node::identity::NodeId,
}

impl Node {
    fn new(n: u8) -> Node {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(&NodePath::new(dir.path()), &DataKey::generate())
            .expect("a new store opens");
        Node {
            _dir: dir,
            store,
            id: crate::fixed_node(n),
        }
    }

    fn vaults(&self) -> Vaults<'_> {
        Vaults::new(&self.store, self.id)
    }

    fn write(&self, vault: &str, path: &str, value: &[u8]) {
        let path = SecretPath::parse(path, false).expect("a valid path");
        self.vaults()
            .write(vault, &path, value, "secret.written")
            .expect("a write");
    }
}

/// Writes each seed as `<dir>/<target>/<name>`.
struct Out<'a> {
    dir: &'a Path,
    count: usize,
    bytes: usize,
}

impl Out<'_> {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        self.count += 1;
        self.bytes += bytes.len();
        Ok(())
    }
}

fn frames<T: Serialize>(messages: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        encode_frame(m, &mut out).expect("a message frames");
    }
    out
}

fn postcard<T: Serialize>(which: u8, message: &T) -> Vec<u8> {
    let mut out = vec![which];
    out.extend(postcard::to_stdvec(message).expect("a message encodes"));
    out
}

/// What a serving node writes on the stream for a fetch of `vault` from `from`.
fn served(
    from: &Node,
    vault: &node::vault::VaultId,
    haves: &[[u8; 20]],
    received: &[[u8; 20]],
) -> Vec<u8> {
    let mut out = Vec::new();
    from.vaults()
        .send(vault, haves, received, &mut |o| {
            let response = match o {
                Outgoing::Begin(b) => PeerResponse::Begin(b),
                Outgoing::Object(o) => PeerResponse::Object(o),
                Outgoing::Chunk(c) => PeerResponse::Chunk(SecretBytes(c.to_vec())),
            };
            encode_frame(&response, &mut out).map_err(|e| VaultError::Refused(e.to_string()))
        })
        .expect("the sender serves its own vault");
    encode_frame(&PeerResponse::Ok(PeerReply::Done), &mut out).expect("frames");
    out
}

/// One transfer in the `sync_receiver` layout.
fn transfer(out: &mut Vec<u8>, flags: u8, stream: &[u8]) {
    out.push(flags);
    crate::put_part(out, stream);
}

fn oid(kind: gix_object::Kind, data: &[u8]) -> [u8; 20] {
    let id = gix_object::compute_hash(gix_hash::Kind::Sha1, kind, data).expect("hashes");
    let mut out = [0u8; 20];
    out.copy_from_slice(id.as_bytes());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes every target's seeds under `dir`; returns how many and their total size.
pub fn write_all(dir: &Path) -> io::Result<(usize, usize)> {
    let mut out = Out {
        dir,
        count: 0,
        bytes: 0,
    };
    let sync = sync(&mut out)?;
    rpc_and_api(&mut out, &sync)?;
    peer(&mut out, &sync)?;
    keyslots(&mut out)?;
    sigchain(&mut out)?;
    config(&mut out)?;
    console(&mut out)?;
    piv(&mut out)?;
    Ok((out.count, out.bytes))
}

/// What the other seeds reuse from the sync seeds.
struct Sync {
    /// A clone's stream, as served.
    clone_stream: Vec<u8>,
    /// A pull's request, as the receiver made it.
    pull_request: FetchRequest,
    /// Replies a real store gives: `(kind, encoded)`, `kind` as `decode_reply` reads it.
    replies: Vec<(u8, SecretBytes)>,
    /// The vault the streams carry.
    vault: node::vault::VaultId,
}

fn sync(out: &mut Out<'_>) -> io::Result<Sync> {
    let target = "sync_receiver";
    let a = Node::new(1);
    a.vaults().create("team").expect("a vault");
    a.write("team", "db/password", b"hunter2");
    a.write("team", "db/user", b"admin");
    a.write("team", "api/key", b"0123456789abcdef");
    a.write("team", "readme", b"what is where\n");
    let id = a.vaults().find(None, "team").expect("the vault").id;

    // A clone, whole and cut into small reads.
    let clone_stream = served(&a, &id, &[], &[]);
    let mut one = Vec::new();
    transfer(&mut one, 1, &clone_stream);
    out.put(target, "clone", &one)?;
    let mut cut = Vec::new();
    transfer(&mut cut, 1 | (5 << 3), &clone_stream);
    out.put(target, "clone-cut", &cut)?;

    // The receiving node, kept in step with what the fuzz target does with the input.
    let b = Node::new(0);
    let reads = [&clone_stream[..]];
    let cloned = crate::fetch(&b.vaults(), a.id, &reads, Some("fuzz0")).expect("a clone");

    // More history on the sender: a change, a removal, a new directory.
    a.write("team", "db/password", b"correct horse battery staple");
    let path = SecretPath::parse("readme", false).expect("path");
    a.vaults()
        .remove("team", &[path], false)
        .expect("a removal");
    a.write("team", "ci/token", b"ghp_0000");
    let plan = b
        .vaults()
        .pull_request(&cloned.vault, &a.id)
        .expect("a plan");
    let pull_stream = served(&a, &id, &plan.haves, &plan.received);
    let mut clone_then_pull = one.clone();
    transfer(&mut clone_then_pull, 0, &pull_stream);
    out.put(target, "clone-then-pull", &clone_then_pull)?;
    // The same, with a change on the receiving side first: a merge with a conflict.
    let mut merge = one.clone();
    transfer(&mut merge, 4, &pull_stream);
    out.put(target, "clone-then-merge", &merge)?;
    // The same again with the harness fixing ids (none change on an unmutated stream).
    let mut fixed = one.clone();
    transfer(&mut fixed, 2 | 4, &pull_stream);
    out.put(target, "clone-then-merge-fixed", &fixed)?;

    // The pull seeds do what they are for: replayed on a fresh node, a fast-forward, and
    // after a local change (what the target does for flag 4), a merge with a conflict.
    for local in [false, true] {
        let d = Node::new(0);
        let clone = crate::fetch(&d.vaults(), a.id, &[&clone_stream[..]], Some("fuzz0"));
        assert_eq!(clone.map(|o| o.summary()).ok().as_deref(), Some("cloned"));
        if local {
            d.write("fuzz0", "db/password", b"changed here");
            d.write("fuzz0", "local", b"only here");
        }
        let pull = crate::fetch(&d.vaults(), a.id, &[&pull_stream[..]], None).map(|o| o.summary());
        let expected = if local {
            "merged, 1 conflict kept"
        } else {
            "fast-forward"
        };
        assert_eq!(pull.ok().as_deref(), Some(expected));
    }

    // An interrupted clone (the stream stops after a few objects), then its resumption.
    let c = Node::new(0);
    let short = &clone_stream[..clone_stream.len() / 2];
    let _ = crate::fetch(&c.vaults(), a.id, &[short], Some("fuzz0"));
    let (_, received) = c
        .vaults()
        .clone_resume(&a.id, "team")
        .expect("reads")
        .expect("an interrupted clone is remembered");
    let resumed = served(&a, &id, &[], &received);
    let resumed_outcome = crate::fetch(&c.vaults(), a.id, &[&resumed[..]], Some("fuzz1"))
        .expect("the resumed clone finishes");
    assert!(resumed_outcome.resumed > 0, "the clone resumed");
    let mut resume = Vec::new();
    transfer(&mut resume, 1, short);
    transfer(&mut resume, 1, &resumed);
    out.put(target, "interrupted-then-resumed", &resume)?;

    // A blob and a tree sent as large objects, in chunks.
    let blob = b"a secret long enough to travel in three chunks".to_vec();
    let blob_id = oid(gix_object::Kind::Blob, &blob);
    let mut tree = b"100644 big\0".to_vec();
    tree.extend_from_slice(&blob_id);
    let tree_id = oid(gix_object::Kind::Tree, &tree);
    let commit = format!(
        "tree {}\nauthor r <r> 1700000000 +0000\ncommitter r <r> 1700000000 +0000\n\nlarge\n",
        hex(&tree_id)
    )
    .into_bytes();
    let commit_id = oid(gix_object::Kind::Commit, &commit);
    a.vaults().create("large").expect("a vault");
    let large_id = a.vaults().find(None, "large").expect("the vault").id;
    let mut messages = vec![
        PeerResponse::Begin(node::vault::Fetched {
            vault: large_id,
            name: "large".into(),
            tip: hex(&commit_id),
        }),
        PeerResponse::Object(WireObject::Large {
            oid: blob_id,
            kind: 1,
            size: blob.len() as u64,
        }),
    ];
    for piece in blob.chunks(16) {
        messages.push(PeerResponse::Chunk(SecretBytes(piece.to_vec())));
    }
    messages.push(PeerResponse::Object(WireObject::Large {
        oid: tree_id,
        kind: 2,
        size: tree.len() as u64,
    }));
    messages.push(PeerResponse::Chunk(SecretBytes(tree)));
    messages.push(PeerResponse::Object(WireObject::Full {
        oid: commit_id,
        kind: 3,
        data: SecretBytes(commit),
    }));
    messages.push(PeerResponse::Ok(PeerReply::Done));
    let large_stream = frames(&messages);
    let e = Node::new(0);
    let outcome = crate::fetch(&e.vaults(), a.id, &[&large_stream[..]], Some("fuzz0"));
    assert!(outcome.is_ok(), "the large objects arrive: {outcome:?}");
    let mut large = Vec::new();
    transfer(&mut large, 1, &large_stream);
    out.put(target, "large-objects", &large)?;

    // Replies a real store gives, for the API seeds.
    let vaults = b.vaults();
    let root = SecretPath::parse("", true).expect("root");
    let db = SecretPath::parse("db", false).expect("path");
    let replies = vec![
        reply::<vaults::List>(1, &vaults.list().expect("list")),
        reply::<vaults::Log>(2, &vaults.log("fuzz0", None, None).expect("log")),
        reply::<secrets::Ls>(3, &vaults.list_dir("fuzz0", &root).expect("ls")),
        reply::<secrets::Stat>(4, &vaults.stat("fuzz0", &db).expect("stat")),
        reply::<vaults::Clone>(5, &cloned),
        reply::<agent::Audit>(
            6,
            &node::audit::query(
                &b.store.read().expect("a read"),
                &AuditQuery {
                    events: Vec::new(),
                    limit: Some(5),
                    newest_first: true,
                    after: None,
                },
            )
            .expect("the audit log"),
        ),
    ];
    Ok(Sync {
        clone_stream,
        pull_request: FetchRequest {
            vault: Some(id),
            name: "team".into(),
            clone: false,
            haves: plan.haves,
            received: received.clone(),
        },
        replies,
        vault: id,
    })
}

/// The reply to a call of type `C`, encoded as the agent sends it, with its `kind`.
fn reply<C: Call>(kind: u8, value: &C::Reply) -> (u8, SecretBytes) {
    (kind, encode_reply::<C>(value).expect("a reply encodes"))
}

fn requests(sync: &Sync) -> Vec<Request> {
    let me = Identity::generate();
    vec![
        agent::Status.into(),
        agent::Unlock {
            slot: Some(0),
            kind: Some(Kind::Soft),
            secret: Some(SecretBytes(b"passphrase".to_vec())),
        }
        .into(),
        keyslots::Changed {
            event: KeyslotEvent::Enrolled,
            slot: 2,
            kind: Kind::Tpm,
        }
        .into(),
        console::Event {
            event: ConsoleEvent::Login,
            client: "192.0.2.1".into(),
        }
        .into(),
        console::Account {
            account: "digest".into(),
            binding: AccountBinding::Change {
                from: "old digest".into(),
            },
        }
        .into(),
        keys::Decrypt(SecretBytes(
            encrypt_to(&me.node_id(), b"to this node").expect("encrypts"),
        ))
        .into(),
        keys::Encrypt {
            to: me.node_id().to_string(),
            data: SecretBytes(b"plain".to_vec()),
        }
        .into(),
        vaults::Log {
            vault: "team".into(),
            depth: Some(10),
            from: None,
        }
        .into(),
        secrets::Write {
            vault: "team".into(),
            path: "db/password".into(),
            kind: WriteKind::Create,
            size: Some(7),
        }
        .into(),
        secrets::Cat {
            vault: "team".into(),
            path: "db/password".into(),
            via: Via::Console,
        }
        .into(),
        secrets::Rm {
            vault: "team".into(),
            paths: vec!["a".into(), "b/c".into()],
            recursive: true,
        }
        .into(),
        agent::Audit(AuditQuery {
            events: vec!["vault".into()],
            limit: Some(3),
            newest_first: false,
            after: Some(1),
        })
        .into(),
        nodes::Add {
            node: me.node_id().to_string(),
            addr: "192.0.2.2:1314".into(),
            no_notify: false,
            no_ping: true,
        }
        .into(),
        nodes::Permit {
            node: me.node_id().to_string(),
            permissions: vec![NodePermission::Notify, NodePermission::Scan],
            allow: true,
        }
        .into(),
        vaults::Share {
            vault: "team".into(),
            node: me.node_id().to_string(),
            permissions: vec![VaultPermission::Clone, VaultPermission::Pull],
            grant: true,
        }
        .into(),
        vaults::Clone {
            vault: sync.vault.to_string(),
            node: me.node_id().to_string(),
            name: None,
        }
        .into(),
        notifications::List {
            mailbox: Mailbox::Inbox,
            unread: true,
        }
        .into(),
        node::api::identities::Search {
            provider: "github.com".into(),
            term: "alice".into(),
        }
        .into(),
    ]
}

fn rpc_and_api(out: &mut Out<'_>, sync: &Sync) -> io::Result<()> {
    let requests = requests(sync);
    let mut replies = sync.replies.clone();
    replies.push(reply::<agent::Status>(
        0,
        &AgentStatus {
            state: AgentState::Unlocked,
            pid: 4242,
            node_id: Some(crate::fixed_node(0).to_string()),
            unlocked_with: Some(0),
            uptime_s: 60,
            version: "0.1.0".into(),
            peer_addr: Some("0.0.0.0:1314".into()),
        },
    ));
    let done = encode_reply::<agent::Lock>(&()).expect("a reply encodes");
    let error = ApiError::new(ErrorCode::NotFound, "no vault named team");

    // api_messages: one message per seed, `[which, postcard]`.
    let api = "api_messages";
    for (i, request) in requests.iter().enumerate() {
        let call = Hello {
            protocol: PROTOCOL,
            request: request.clone(),
        };
        out.put(api, &format!("call-{i}"), &postcard(0, &call))?;
        out.put(api, &format!("request-{i}"), &postcard(1, request))?;
    }
    out.put(
        api,
        "upload-chunk",
        &postcard(2, &Upload::Chunk(SecretBytes(b"content".to_vec()))),
    )?;
    out.put(api, "upload-end", &postcard(2, &Upload::End))?;
    out.put(
        api,
        "response-chunk",
        &postcard(3, &Response::Chunk(SecretBytes(b"content".to_vec()))),
    )?;
    out.put(
        api,
        "response-err",
        &postcard(3, &Response::Err(error.clone())),
    )?;
    for (i, (kind, reply)) in replies.iter().enumerate() {
        out.put(
            api,
            &format!("response-ok-{i}"),
            &postcard(3, &Response::Ok(reply.clone())),
        )?;
        let mut bytes = vec![4, *kind];
        bytes.extend_from_slice(&reply.0);
        out.put(api, &format!("reply-{i}"), &bytes)?;
    }

    // rpc_frames: whole conversations, `[which, cut, frames]`.
    let rpc = "rpc_frames";
    let put = |out: &mut Out<'_>, name: &str, which: u8, cut: u8, stream: &[u8]| {
        let mut bytes = vec![which, cut];
        bytes.extend_from_slice(stream);
        out.put(rpc, name, &bytes)
    };
    let write = frames(&[Hello {
        protocol: PROTOCOL,
        request: requests[8].clone(),
    }]);
    let uploads = frames(&[
        Upload::Chunk(SecretBytes(b"hunt".to_vec())),
        Upload::Chunk(SecretBytes(b"er2".to_vec())),
        Upload::End,
    ]);
    let upload = [write, uploads].concat();
    put(out, "call-upload", 0, 0, &upload)?;
    put(out, "call-upload-bytewise", 0, 1, &upload)?;
    put(out, "call-upload-small-limit", 4, 9, &upload)?;
    let mut answer: Vec<Response> = vec![
        Response::Chunk(SecretBytes(b"hunter2".to_vec())),
        Response::Ok(done),
    ];
    put(out, "download", 1, 3, &frames(&answer))?;
    answer = replies
        .iter()
        .map(|(_, r)| Response::Ok(r.clone()))
        .collect();
    answer.push(Response::Err(error));
    put(out, "replies", 1, 0, &frames(&answer))?;
    let fetch = frames(&[PeerCall {
        protocol: PEER_PROTOCOL,
        request: PeerRequest::Fetch(sync.pull_request.clone()),
    }]);
    put(out, "peer-call", 2, 0, &fetch)?;
    put(out, "peer-fetch-answer", 3, 0, &sync.clone_stream)?;
    put(out, "peer-fetch-answer-cut", 3, 77, &sync.clone_stream)?;
    Ok(())
}

/// A chain: an identity claim, a node link signed by both nodes, a key renewal signed by
/// the old and the new key, and a claim by the new key. Returns the chain and the claim
/// pair a node link exchanges.
fn chain() -> (Vec<ClaimToken>, ClaimToken, ClaimToken) {
    let a = Identity::generate();
    let b = Identity::generate();
    let renewed = Identity::generate();
    let claim = |iss: &Identity, typ, sub: String, seq: u64, prev: Option<&ClaimToken>| Claim {
        typ,
        iss: iss.node_id().to_string(),
        sub,
        seq,
        prev_digest: prev.map(ClaimToken::digest),
        iat: 1_700_000_000 + seq,
        nonce: format!("nonce{seq}"),
    };
    let first = ClaimToken::sign(
        &claim(
            &a,
            ClaimType::ClaimLinkIdentity,
            "github.com:alice".into(),
            1,
            None,
        ),
        &a,
    );
    let mut link = ClaimToken::sign(
        &claim(
            &a,
            ClaimType::ClaimLinkNode,
            b.node_id().to_string(),
            2,
            Some(&first),
        ),
        &a,
    );
    let theirs = ClaimToken::sign(
        &claim(
            &b,
            ClaimType::ClaimLinkNode,
            a.node_id().to_string(),
            1,
            None,
        ),
        &b,
    );
    link.add_signature(&b);
    let mut renewal = ClaimToken::sign(
        &claim(
            &a,
            ClaimType::ClaimKeyRenew,
            renewed.node_id().to_string(),
            3,
            Some(&link),
        ),
        &a,
    );
    renewal.add_signature(&renewed);
    let after = ClaimToken::sign(
        &claim(
            &renewed,
            ClaimType::ClaimLinkIdentity,
            "github.com:alice".into(),
            4,
            Some(&renewal),
        ),
        &renewed,
    );
    (vec![first, link.clone(), renewal, after], link, theirs)
}

fn peer(out: &mut Out<'_>, sync: &Sync) -> io::Result<()> {
    let target = "peer_messages";
    let (chain, countersigned, theirs) = chain();
    let requests = vec![
        PeerRequest::Ping,
        PeerRequest::FindNode(crate::fixed_node(1)),
        PeerRequest::Scan,
        PeerRequest::Notify(Body::Message {
            text: "hello".into(),
        }),
        PeerRequest::Notify(Body::VaultShare {
            vault: sync.vault,
            name: "team".into(),
            permissions: vec![VaultPermission::Clone, VaultPermission::Pull],
        }),
        PeerRequest::Notify(Body::GestaltInvite),
        PeerRequest::Fetch(sync.pull_request.clone()),
        PeerRequest::Sigchain,
        PeerRequest::ClaimNode(theirs.clone()),
        PeerRequest::ClaimNodeFinish(countersigned.clone()),
    ];
    for (i, request) in requests.iter().enumerate() {
        let call = PeerCall {
            protocol: PEER_PROTOCOL,
            request: request.clone(),
        };
        out.put(target, &format!("call-{i}"), &postcard(0, &call))?;
        out.put(target, &format!("request-{i}"), &postcard(1, request))?;
    }
    let replies = vec![
        PeerReply::Pong,
        PeerReply::Addresses(vec!["192.0.2.1:1314".into(), "[2001:db8::1]:1314".into()]),
        PeerReply::Vaults(vec![SharedVault {
            id: sync.vault,
            name: "team".into(),
            permissions: vec![VaultPermission::Clone],
        }]),
        PeerReply::Done,
        PeerReply::Claims(chain),
        PeerReply::ClaimPair {
            countersigned,
            theirs,
        },
    ];
    for (i, reply) in replies.iter().enumerate() {
        out.put(
            target,
            &format!("response-ok-{i}"),
            &postcard(2, &PeerResponse::Ok(reply.clone())),
        )?;
        out.put(target, &format!("reply-{i}"), &postcard(3, reply))?;
    }
    // The first frames of a real fetch: Begin and an object.
    let mut stream = &sync.clone_stream[..];
    for i in 0..2 {
        let len = u32::from_be_bytes([stream[0], stream[1], stream[2], stream[3]]) as usize;
        let mut bytes = vec![2];
        bytes.extend_from_slice(&stream[4..4 + len]);
        out.put(target, &format!("response-fetch-{i}"), &bytes)?;
        stream = &stream[4 + len..];
    }
    out.put(
        target,
        "response-err",
        &postcard(
            2,
            &PeerResponse::Err(ApiError::new(ErrorCode::Denied, "no")),
        ),
    )?;
    Ok(())
}

/// A keyslot file with `body` (JSON), its length and its checksum.
fn keyslot_file(body: &[u8]) -> Vec<u8> {
    let mut out = b"PKSLOTS\n".to_vec();
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    out.extend_from_slice(body);
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    out
}

fn keyslots(out: &mut Out<'_>) -> io::Result<()> {
    let target = "keyslots";
    let dir = tempfile::tempdir()?;
    let node = NodePath::new(dir.path());
    let soft = SoftProtector::new(
        Pin::new(crate::PASSPHRASE.to_vec()),
        Argon2Params::INSECURE_FOR_TESTS,
    );
    let init = Keyslots::init(&node, &soft, "laptop").expect("a node");
    let first = std::fs::read(node.keyslots())?;
    out.put(
        target,
        "soft-and-recovery",
        &[[0].as_slice(), &first].concat(),
    )?;
    let mut keyslots = init.keyslots;
    keyslots
        .enroll(&init.unlocked, &soft, "second passphrase")
        .expect("enrols");
    let second = std::fs::read(node.keyslots())?;
    out.put(
        target,
        "two-soft-and-recovery",
        &[[1].as_slice(), &second].concat(),
    )?;

    // Every other backend's record, added to the real file's body.
    let mut body: serde_json::Value =
        serde_json::from_slice(&second[14..second.len() - 32]).expect("the body is JSON");
    let others = [
        Sealed::Tpm(TpmSealed {
            public: vec![0, 8, 0, 11, 0, 0, 0, 18],
            private: vec![0, 32, 1, 2, 3],
            pcr_policy: Some(PcrPolicy {
                bank: PcrBank::Sha256,
                pcrs: vec![0, 4, 7, 11],
            }),
            signed_pcr_policy: None,
            pin: true,
            wrapped: Wrapped {
                nonce: vec![7; 24],
                ciphertext: vec![9; 48],
            },
        }),
        Sealed::Tpm(TpmSealed {
            public: vec![0, 8, 0, 11, 0, 0, 0, 18],
            private: vec![0, 32, 1, 2, 3],
            pcr_policy: Some(PcrPolicy {
                bank: PcrBank::Sha256,
                pcrs: vec![0, 7],
            }),
            signed_pcr_policy: Some(SignedPcrPolicy {
                bank: PcrBank::Sha256,
                pcrs: vec![11],
                public_key: vec![0x30, 0x03, 0x02, 0x01, 0x00],
                fingerprint: "d44bedc1f45b4b5e1ad0a7b4bbb6d4fae759b3b7d267d53a3384f48c9c86afcc".into(),
            }),
            pin: false,
            wrapped: Wrapped {
                nonce: vec![7; 24],
                ciphertext: vec![9; 48],
            },
        }),
        Sealed::Pkcs11(Pkcs11Sealed {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "pk-node".into(),
            key_id: vec![1; 16],
            iv: vec![2; 12],
            ciphertext: vec![3; 48],
        }),
        Sealed::YubiKey(YubiKeySealed {
            serial: 12345678,
            slot: 0x9d,
            pin_policy: PinRule::Once,
            touch_policy: TouchRule::Cached,
            public_key: vec![4; 65],
            ephemeral: vec![4; 65],
            wrapped: Wrapped {
                nonce: vec![5; 24],
                ciphertext: vec![6; 48],
            },
        }),
    ];
    let next = body["next_id"].as_u64().expect("next_id");
    for (i, sealed) in others.iter().enumerate() {
        let id = next + i as u64;
        let slot = serde_json::json!({
            "header": { "id": id, "kind": sealed.kind(), "label": format!("token {i}"), "created": 1_700_000_000 },
            "sealed": sealed,
        });
        body["slots"].as_array_mut().expect("slots").push(slot);
    }
    body["next_id"] = (next + others.len() as u64).into();
    let body = serde_json::to_vec_pretty(&body).expect("JSON");
    out.put(
        target,
        "every-backend",
        &[[1].as_slice(), &keyslot_file(&body)].concat(),
    )?;
    Ok(())
}

fn sigchain(out: &mut Out<'_>) -> io::Result<()> {
    let target = "sigchain";
    let (chain, countersigned, _) = chain();
    out.put(target, "chain", &[[0].as_slice(), &json(&chain)].concat())?;
    out.put(
        target,
        "chain-first-two",
        &[[0].as_slice(), &json(&chain[..2].to_vec())].concat(),
    )?;
    out.put(
        target,
        "node-link",
        &[[1].as_slice(), &json(&countersigned)].concat(),
    )?;
    out.put(
        target,
        "identity-claim",
        &[[1].as_slice(), &json(&chain[0])].concat(),
    )?;
    Ok(())
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON")
}

fn config(out: &mut Out<'_>) -> io::Result<()> {
    let target = "appliance_config";
    let seeds: [(&str, &str); 4] = [
        ("empty", ""),
        (
            "documented",
            "# /etc/pk-appliance/config.toml\n\
             tpm_tcti = \"device:/dev/tpmrm0\"   # seal the node's data key in this machine's TPM\n\
             console_listen = \"0.0.0.0:8443\"\n\
             peer_listen = \"0.0.0.0:1314\"\n\
             lan = true\n\
             pkcs11_module = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
             session_idle_s = 600\n",
        ),
        (
            "every-key",
            "state_dir = \"/var/lib/pk-appliance\"\n\
             console_listen = \"[::]:8443\"\n\
             peer_listen = \"off\"\n\
             lan = false\n\
             tpm_tcti = \"swtpm:port=2321\"\n\
             tpm_pcrs = \"0,4,7,11\"\n\
             pkcs11_module = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
             session_idle_s = 900\n",
        ),
        (
            "mistakes",
            "lan = \"yes\"\nconsole_port = 1\ntpm_pcrs = \"0,99\"\nsession_idle_s = 5\n",
        ),
    ];
    for (name, text) in seeds {
        out.put(target, name, text.as_bytes())?;
    }
    Ok(())
}

fn console(out: &mut Out<'_>) -> io::Result<()> {
    let target = "console_bodies";
    // `[which, body]`: `which` as the target reads it (form types 0-13, JSON 14-17).
    let seeds: [(&str, u8, &str); 20] = [
        (
            "setup-form",
            0,
            "setup_code=ABCD-EFGH-IJKL&password=ci-admin-password-1&confirm=ci-admin-password-1",
        ),
        ("login-form", 1, "password=ci-admin-password-1"),
        ("csrf-form", 2, "csrf=0123456789abcdef0123456789abcdef"),
        (
            "unlock-form",
            3,
            "csrf=0123&method=passphrase&secret=pass+word%21",
        ),
        ("name-form", 4, "csrf=0123&name=team"),
        (
            "secret-form",
            5,
            "csrf=0123&path=db%2Fpassword&value=hunter2%0A%E2%9C%93",
        ),
        ("reveal-form", 6, "csrf=0123&path=db/password"),
        ("share-form", 7, "csrf=0123&who=vABCDEF&action=grant"),
        (
            "peer-form",
            8,
            "csrf=0123&node_id=vABCDEF&addr=192.0.2.1%3A1314",
        ),
        (
            "backup-form",
            9,
            "csrf=0123&vault=team&node_id=vABCDEF&every_min=60&name=team-backup",
        ),
        (
            "enrol-form",
            10,
            "csrf=0123&kind=tpm&secret=&pcrs=0%2C4%2C7%2C11&token_label=&label=tpm&auth_method=passphrase&auth_secret=pw",
        ),
        (
            "slot-form",
            11,
            "csrf=0123&slot=2&method=passphrase&secret=pw",
        ),
        ("pairs", 12, "a=1&b=%FF&&=&c"),
        ("peers-query", 13, "discover=1"),
        (
            "setup-json",
            14,
            r#"{"setup_code":"ABCD-EFGH-IJKL","password":"ci-admin-password-1","confirm":"ci-admin-password-1","passphrase":""}"#,
        ),
        ("login-json", 15, r#"{"password":"ci-admin-password-1"}"#),
        (
            "enrolment-json",
            16,
            r#"{"kind":"tpm","secret":"","label":"boot","pcrs":"0,4,7","token_label":"","auth_method":"recovery","auth_secret":"abandon art"}"#,
        ),
        (
            "secret-json",
            17,
            r#"{"path":"db/password","value":"hunter2"}"#,
        ),
        (
            "backup-json",
            17,
            r#"{"vault":"team","node":"vABC","every_s":3600,"name":null}"#,
        ),
        (
            "nested-json",
            17 | (1 << 5),
            r#"{"a":[1,2.5e10,{"b":null,"c":"\u00e9\ud83d\ude00"}],"d":true}"#,
        ),
    ];
    for (name, which, body) in seeds {
        out.put(
            target,
            name,
            &[[which].as_slice(), body.as_bytes()].concat(),
        )?;
    }
    Ok(())
}

fn piv(out: &mut Out<'_>) -> io::Result<()> {
    let target = "piv_apdu";
    let vpcd = |messages: &[Vec<u8>]| {
        let mut bytes = Vec::new();
        for m in messages {
            bytes.extend_from_slice(&u16::try_from(m.len()).expect("short").to_be_bytes());
            bytes.extend_from_slice(m);
        }
        bytes
    };
    let apdu = |header: [u8; 4], data: &[u8]| {
        let mut a = header.to_vec();
        if !data.is_empty() {
            a.push(u8::try_from(data.len()).expect("short APDU"));
            a.extend_from_slice(data);
        }
        a
    };
    let select = apdu([0x00, 0xA4, 0x04, 0x00], &[0xA0, 0x00, 0x00, 0x03, 0x08]);
    let pin = apdu([0x00, 0x20, 0x00, 0x80], b"123456\xff\xff");
    let witness = apdu([0x00, 0x87, 0x03, 0x9B], &[0x7C, 0x02, 0x80, 0x00]);
    let mut answer = vec![0x7C, 0x14, 0x80, 0x08];
    answer.extend_from_slice(b"WITNESS!"); // The target puts the witness here.
    answer.extend_from_slice(&[0x81, 0x08, 9, 9, 9, 9, 9, 9, 9, 9]);
    let answer = apdu([0x00, 0x87, 0x03, 0x9B], &answer);
    // A P-256 point for ECDH: the curve's generator.
    let generator: [u8; 65] = [
        0x04, 0x6B, 0x17, 0xD1, 0xF2, 0xE1, 0x2C, 0x42, 0x47, 0xF8, 0xBC, 0xE6, 0xE5, 0x63, 0xA4,
        0x40, 0xF2, 0x77, 0x03, 0x7D, 0x81, 0x2D, 0xEB, 0x33, 0xA0, 0xF4, 0xA1, 0x39, 0x45, 0xD8,
        0x98, 0xC2, 0x96, 0x4F, 0xE3, 0x42, 0xE2, 0xFE, 0x1A, 0x7F, 0x9B, 0x8E, 0xE7, 0xEB, 0x4A,
        0x7C, 0x0F, 0x9E, 0x16, 0x2B, 0xCE, 0x33, 0x57, 0x6B, 0x31, 0x5E, 0xCE, 0xCB, 0xB6, 0x40,
        0x68, 0x37, 0xBF, 0x51, 0xF5,
    ];
    let mut ecdh = vec![0x7C, 0x45, 0x82, 0x00, 0x85, 0x41];
    ecdh.extend_from_slice(&generator);
    let mut sign = vec![0x7C, 0x24, 0x82, 0x00, 0x81, 0x20];
    sign.extend_from_slice(&[0x5A; 32]);
    let mut put = vec![0x5C, 0x03, 0x5F, 0xC1, 0x05, 0x53, 0x82, 0x01, 0x90];
    put.extend_from_slice(&[0xA5; 400]);
    let (head, tail) = put.split_at(255);
    let mut chained_first = apdu([0x10, 0xDB, 0x3F, 0xFF], head);
    chained_first[0] = 0x10;
    let chained_last = apdu([0x00, 0xDB, 0x3F, 0xFF], tail);
    let get = apdu([0x00, 0xCB, 0x3F, 0xFF], &[0x5C, 0x03, 0x5F, 0xC1, 0x05]);
    // Extended length: 00, Lc in two bytes, data, Le in two bytes (GET DATA, discovery).
    let extended = vec![
        0x00, 0xCB, 0x3F, 0xFF, 0x00, 0x00, 0x03, 0x5C, 0x01, 0x7E, 0x00, 0x00,
    ];

    let session = vpcd(&[
        vec![1],
        vec![4],
        select.clone(),
        vec![0x00, 0xFD, 0x00, 0x00],
        vec![0x00, 0xF8, 0x00, 0x00],
        vec![0x00, 0x20, 0x00, 0x80],
        pin.clone(),
        witness.clone(),
        answer.clone(),
        apdu(
            [0x00, 0x47, 0x00, 0x9A],
            &[
                0xAC, 0x09, 0x80, 0x01, 0x11, 0xAA, 0x01, 0x02, 0xAB, 0x01, 0x03,
            ],
        ),
        apdu([0x00, 0x47, 0x00, 0x9D], &[0xAC, 0x03, 0x80, 0x01, 0x11]),
        vec![0x00, 0xF7, 0x00, 0x9A],
        vec![0x00, 0xF7, 0x00, 0x80],
        vec![0x00, 0xF7, 0x00, 0x9B],
        vec![0x00, 0xF9, 0x9A, 0x00],
        vec![0x00, 0xC0, 0x00, 0x00],
        apdu([0x00, 0x87, 0x11, 0x9A], &sign),
        apdu([0x00, 0x87, 0x11, 0x9D], &ecdh),
        chained_first,
        chained_last,
        get,
        vec![0x00, 0xC0, 0x00, 0x00, 0x00],
        extended,
        vec![2],
    ]);
    out.put(target, "session", &session)?;
    let pins = vpcd(&[
        select,
        apdu([0x00, 0x20, 0x00, 0x80], b"000000\xff\xff"),
        apdu([0x00, 0x24, 0x00, 0x80], b"123456\xff\xff654321\xff\xff"),
        apdu([0x00, 0x2C, 0x00, 0x80], b"12345678123456\xff\xff"),
        apdu(
            [0x00, 0x24, 0x00, 0x81],
            b"12345678\x87\x65\x43\x21\xff\xff\xff\xff",
        ),
        vec![0x00, 0x20, 0xFF, 0x80],
        pin,
        vec![0],
    ]);
    out.put(target, "pins", &pins)?;
    Ok(())
}
