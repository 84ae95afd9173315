//! Hostile peers: a serving node of our own making (built from the library) that answers a
//! fetch with whatever a test scripts, against a real agent. Each test here shows one
//! weakness a review found (issue 13), and that it is closed.

use std::sync::Arc;

use node::api::SecretBytes;
use node::identity::Identity;
use node::net::Endpoint;
use node::peer::{PeerReply, PeerRequest, PeerResponse, read_call, respond};
use node::vault::{Fetched, WireObject};

use crate::auth_matrix::Caller;
use crate::harness::World;
use crate::peers::{Peer, denied_count, peers};

/// What the rogue answers a fetch with, given the request.
type Script = dyn Fn(&node::peer::FetchRequest) -> Vec<PeerResponse> + Send + Sync;

/// A node that serves fetches from a script.
struct RogueServer {
    _rt: tokio::runtime::Runtime,
    id: String,
    addr: std::net::SocketAddr,
}

impl RogueServer {
    fn start(script: Arc<Script>) -> RogueServer {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let identity = Identity::generate();
        let id = identity.node_id().to_string();
        let endpoint = rt
            .block_on(async { Endpoint::bind("127.0.0.1:0".parse().unwrap(), &identity) })
            .unwrap();
        let addr = endpoint.local_addr().unwrap();
        rt.spawn(async move {
            while let Some(Ok(conn)) = endpoint.accept().await {
                let script = script.clone();
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = conn.accept().await {
                        match read_call(&mut recv).await {
                            Ok(PeerRequest::Fetch(request)) => {
                                for message in script(&request) {
                                    if respond(&mut send, &message).await.is_err() {
                                        break;
                                    }
                                }
                            }
                            _ => {
                                let _ =
                                    respond(&mut send, &PeerResponse::Ok(PeerReply::Pong)).await;
                            }
                        }
                        let _ = send.finish();
                    }
                });
            }
        });
        RogueServer { _rt: rt, id, addr }
    }

    /// Adds the rogue to `peer`'s node graph.
    fn add_to(&self, peer: &Peer<'_>) {
        let (host, port) = (self.addr.ip().to_string(), self.addr.port().to_string());
        peer.pk(&["nodes", "add", &self.id, &host, &port]).ok();
    }
}

/// Git objects made by hand, as a rogue would.
fn object(kind: gix_object::Kind, data: &[u8]) -> ([u8; 20], WireObject) {
    let id = gix_object::compute_hash(gix_hash::Kind::Sha1, kind, data).unwrap();
    let mut oid = [0u8; 20];
    oid.copy_from_slice(id.as_bytes());
    let kind = match kind {
        gix_object::Kind::Blob => 1,
        gix_object::Kind::Tree => 2,
        gix_object::Kind::Commit => 3,
        gix_object::Kind::Tag => 4,
    };
    let wire = WireObject::Full {
        oid,
        kind,
        data: SecretBytes(data.to_vec()),
    };
    (oid, wire)
}

fn hex(oid: &[u8; 20]) -> String {
    oid.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tree of `(mode, name, oid)` entries in git's encoding (sorted by the caller).
fn tree(entries: &[(&str, &[u8], [u8; 20])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (mode, name, oid) in entries {
        out.extend_from_slice(mode.as_bytes());
        out.push(b' ');
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(oid);
    }
    out
}

fn commit(tree: &[u8; 20], parents: &[String], message: &str) -> Vec<u8> {
    let mut text = format!("tree {}\n", hex(tree));
    for parent in parents {
        text.push_str(&format!("parent {parent}\n"));
    }
    text.push_str("author rogue <rogue> 1700000000 +0000\n");
    text.push_str("committer rogue <rogue> 1700000000 +0000\n\n");
    text.push_str(message);
    text.push('\n');
    text.into_bytes()
}

fn begin(vault: &str, name: &str, tip: &[u8; 20]) -> PeerResponse {
    PeerResponse::Begin(Fetched {
        vault: vault.parse().unwrap(),
        name: name.into(),
        tip: hex(tip),
    })
}

/// The id and newest commit of a local vault.
fn vault_state(peer: &Peer<'_>, name: &str) -> (String, String) {
    let list = peer.json(&["vaults", "list"]);
    let record = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no vault {name}: {list}"));
    let log = peer.json(&["vaults", "log", name]);
    (
        record["id"].as_str().unwrap().to_owned(),
        log[0]["oid"].as_str().unwrap().to_owned(),
    )
}

/// A node that answers with a tampered object: the clone is refused, nothing appears.
#[test]
fn a_tampered_object_is_refused() {
    let w = World::new();
    let victim = Peer::new(&w, "victim");
    // A blob whose bytes do not hash to the id it is sent under.
    let (oid, _) = object(gix_object::Kind::Blob, b"real");
    let forged = WireObject::Full {
        oid,
        kind: 1,
        data: SecretBytes(b"forged".to_vec()),
    };
    let rogue = RogueServer::start(Arc::new(move |_request: &node::peer::FetchRequest| {
        vec![
            begin(&format!("v{}", "0".repeat(26)), "evil", &[0x11; 20]),
            PeerResponse::Object(forged.clone()),
            PeerResponse::Ok(PeerReply::Done),
        ]
    }));
    rogue.add_to(&victim);
    victim
        .pk(&["vaults", "clone", "evil", &rogue.id])
        .fails(65, "does not match its id");
    let listed = victim.json(&["vaults", "list"]);
    assert_eq!(listed, serde_json::json!([]), "nothing became visible");
}

/// Issue 13, 1.1: a pull of vault A answered with vault B's id must not touch B.
#[test]
fn a_pull_answered_with_another_vaults_id_changes_nothing() {
    let w = World::new();
    let victim = Peer::new(&w, "victim");
    victim.pk(&["vaults", "create", "a"]).ok();
    victim.pk(&["vaults", "create", "b"]).ok();
    victim.write("a:one", "in a");
    victim.write("b:kept", "in b");
    let (b_id, b_tip) = vault_state(&victim, "b");

    // The rogue's answer: vault B, moved on by a commit of its own making on top of B's
    // newest one (a fast-forward, had it been accepted).
    let (blob, blob_wire) = object(gix_object::Kind::Blob, b"rogue's value");
    let tree_bytes = tree(&[("100644", b"planted", blob)]);
    let (tree_id, tree_wire) = object(gix_object::Kind::Tree, &tree_bytes);
    let (commit_id, commit_wire) = object(
        gix_object::Kind::Commit,
        &commit(&tree_id, std::slice::from_ref(&b_tip), "rogue"),
    );
    let answer = Arc::new((b_id.clone(), blob_wire, tree_wire, commit_wire, commit_id));
    let rogue = RogueServer::start(Arc::new(move |_request: &node::peer::FetchRequest| {
        let (b_id, blob, tree, commit, tip) = &*answer;
        vec![
            begin(b_id, "a", tip),
            PeerResponse::Object(blob.clone()),
            PeerResponse::Object(tree.clone()),
            PeerResponse::Object(commit.clone()),
            PeerResponse::Ok(PeerReply::Done),
        ]
    }));
    rogue.add_to(&victim);

    let err = victim
        .pk(&["vaults", "pull", "a", &rogue.id])
        .fails(65, &rogue.id);
    assert!(
        err.contains("vault"),
        "the error says what was wrong: {err}"
    );
    assert_eq!(
        vault_state(&victim, "b"),
        (b_id, b_tip),
        "vault b did not move"
    );
    assert_eq!(victim.cat("b:kept"), "in b");
    victim
        .pk(&["secrets", "cat", "b:planted"])
        .fails(66, "planted");
}

/// An Ed25519 public key, as a certificate's subject.
struct Public(Vec<u8>);

impl rcgen::PublicKeyData for Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// Signs with a node's key through `pk keys sign`, as whoever reaches its agent socket can.
struct AgentSigner<'a> {
    peer: &'a Peer<'a>,
    public: Public,
}

impl rcgen::PublicKeyData for AgentSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.public.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for AgentSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        use base64::Engine as _;
        let file = self.peer.w.path("to-sign");
        std::fs::write(&file, msg).unwrap();
        let out = self.peer.json(&["keys", "sign", file.to_str().unwrap()]);
        Ok(base64::engine::general_purpose::STANDARD
            .decode(out["signature"].as_str().unwrap())
            .unwrap())
    }
}

fn node_params(id: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(vec![id.to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id);
    params
}

/// Issue 13, 1.7: `pk keys sign` must not be an oracle for the node key. A renewal
/// certificate "this node is now the attacker's key", signed through it, is no renewal to
/// a peer: the peer keeps the node's records under the node's own id.
#[test]
fn a_certificate_signed_through_keys_sign_is_no_renewal() {
    let w = World::new();
    let [victim, friend] = peers(&w, ["victim", "friend"]);
    friend.add(&victim);
    friend.pk(&["nodes", "allow", &victim.id, "notify"]).ok();

    let attacker = Identity::generate();
    let attacker_id = attacker.node_id().to_string();
    let victim_key: node::identity::NodeId = victim.id.parse().unwrap();
    let signer = AgentSigner {
        peer: &victim,
        public: Public(victim_key.as_bytes().to_vec()),
    };
    let issuer = rcgen::Issuer::new(node_params(&victim.id), &signer);
    let cert = node_params(&attacker_id)
        .signed_by(&Public(attacker.node_id().as_bytes().to_vec()), &issuer)
        .unwrap()
        .der()
        .clone();
    assert!(
        node::net::earlier_ids(attacker.node_id(), std::slice::from_ref(&cert)).is_empty(),
        "the certificate proves no renewal"
    );

    // The attacker presents it to the friend anyway, as a renewed node would.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let _guard = rt.enter();
    let endpoint = Endpoint::from_socket(socket, &attacker, vec![cert]).unwrap();
    let friend_addr = friend.addr.parse().unwrap();
    let conn = rt
        .block_on(endpoint.connect(friend_addr, friend.id.parse().unwrap()))
        .unwrap();
    assert!(conn.earlier_ids().is_empty());
    let _ = rt.block_on(node::peer::unary(&conn, PeerRequest::Ping));
    let nodes = friend.json(&["nodes", "getall"]).to_string();
    assert!(
        nodes.contains(&victim.id),
        "the victim keeps its place: {nodes}"
    );
    assert!(
        !nodes.contains(&attacker_id),
        "the attacker took nothing: {nodes}"
    );
}

/// Fetches of a vault named `name` that must all be refused; the lengths of the answers.
fn refused_fetches(caller: &Caller, name: &str, calls: usize) -> Vec<usize> {
    let conn = &caller.conn;
    caller.rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let (conn, name) = (conn.clone(), name.to_owned());
            set.spawn(async move {
                let mut sizes = Vec::new();
                for _ in 0..calls / 2 {
                    let request = PeerRequest::Fetch(node::peer::FetchRequest {
                        vault: None,
                        name: name.clone(),
                        clone: true,
                        haves: Vec::new(),
                        received: Vec::new(),
                    });
                    let mut call = node::peer::CallStream::open(&conn, request).await.unwrap();
                    match call.next(std::time::Duration::from_secs(30)).await {
                        Ok(PeerResponse::Err(e)) => {
                            assert_eq!(e.code, node::api::ErrorCode::Denied, "{e}");
                            sizes.push(e.message.len());
                        }
                        other => panic!("a fetch was not refused: {other:?}"),
                    }
                }
                sizes
            });
        }
        let mut all = Vec::new();
        while let Some(sizes) = set.join_next().await {
            all.extend(sizes.unwrap());
        }
        all
    })
}

/// Issue 13, 1.2: refusals cost the caller nothing durable beyond a bounded, aggregated
/// record. 1,000 refused fetches naming 1 MiB vault names (half from a stranger, half from
/// a node in the graph with nothing shared) grow the database by less than 1 MiB, the
/// answers stay short, and the audit log counts them in a row per node per minute.
#[test]
fn a_thousand_refused_calls_with_huge_names_cost_almost_nothing() {
    let w = World::new();
    let target = Peer::new(&w, "target");
    let db = target.path.join("db.redb");
    target.pk(&["audit"]).ok();
    let before = std::fs::metadata(&db).unwrap().len();

    let name = "n".repeat((1 << 20) - 1024);
    let calls = 1000;
    let started = std::time::Instant::now();
    let stranger = Caller::connect(&target, &Identity::generate());
    let mut answers = refused_fetches(&stranger, &name, calls / 2);
    let acquaintance = Identity::generate();
    target.add_key(&acquaintance);
    let acquaintance = Caller::connect(&target, &acquaintance);
    answers.extend(refused_fetches(&acquaintance, &name, calls / 2));
    assert_eq!(answers.len(), calls);
    assert!(answers.iter().all(|&n| n < 1024), "short answers");

    // One row per node and call per minute, each with its count.
    let audit = target
        .pk(&["--format", "json", "audit", "--event", "peer.denied"])
        .ok();
    let rows: Vec<serde_json::Value> = audit
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let minutes = started.elapsed().as_secs() / 60;
    assert!(
        rows.len() >= 2 && rows.len() as u64 <= 2 * (minutes + 2),
        "{} rows in {minutes} min: {audit}",
        rows.len()
    );
    assert_eq!(denied_count(&target, None), calls as u64, "{audit}");
    for row in &rows {
        let vault = row["fields"]["vault"].as_str().map_or(0, str::len);
        assert!(vault < 100, "{row}");
    }
    let after = std::fs::metadata(&db).unwrap().len();
    assert!(
        after < before + (1 << 20),
        "db.redb grew from {before} to {after} bytes"
    );
    // The agent still answers.
    target.pk(&["vaults", "list"]).ok();
}

/// The agent's peak resident memory, in MiB.
fn peak_rss_mib(peer: &Peer<'_>) -> u64 {
    let pid = crate::harness::agent_pid(&peer.path).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

/// Issue 13, 1.3: the peer endpoint has a budget. 20 strangers with 100 streams each, every
/// stream announcing a 1 MiB call and sending it, leave the agent's peak memory under
/// 256 MiB, and `pk` still gets its answers.
#[test]
fn a_flood_of_streams_from_strangers_stays_within_budget() {
    let w = World::new();
    let target = Peer::new(&w, "target");
    target.pk(&["vaults", "create", "kept"]).ok();
    let baseline = peak_rss_mib(&target);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr: std::net::SocketAddr = target.addr.parse().unwrap();
    let id: node::identity::NodeId = target.id.parse().unwrap();
    let (connected, refused) = rt.block_on(async {
        let mut endpoints = Vec::new();
        let mut conns = Vec::new();
        let mut refused = 0;
        for _ in 0..20 {
            let identity = Identity::generate();
            let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &identity).unwrap();
            match endpoint.connect(addr, id).await {
                Ok(conn) => conns.push(conn),
                Err(_) => refused += 1,
            }
            endpoints.push(endpoint);
        }
        let mut streams = tokio::task::JoinSet::new();
        for conn in &conns {
            for _ in 0..100 {
                let conn = conn.clone();
                streams.spawn(async move {
                    let Ok((mut send, _recv)) = conn.open().await else {
                        return;
                    };
                    let len: u32 = (1 << 20) - 16;
                    if send.write_all(&len.to_be_bytes()).await.is_err() {
                        return;
                    }
                    // 960 KiB of the 1 MiB announced: the frame never completes, so
                    // whatever the agent buffered for it stays until the call's deadline.
                    let piece = vec![0x5a_u8; 64 * 1024];
                    for _ in 0..15 {
                        if send.write_all(&piece).await.is_err() {
                            return;
                        }
                    }
                    // Keep the stream open, the frame never finished.
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                });
            }
        }
        // Let the flood run, then look at the agent while the streams are still open (and
        // within the 15 s an unfinished call may take).
        tokio::time::sleep(std::time::Duration::from_secs(12)).await;
        let connected = conns.len();
        std::mem::forget(streams);
        (connected, refused)
    });
    let peak = peak_rss_mib(&target);
    eprintln!(
        "{connected} connected, {refused} refused; agent peak RSS {peak} MiB (before: {baseline} MiB)"
    );
    assert!(peak < 256, "the agent's peak RSS was {peak} MiB");
    // The stated budget, not just the line: at most 16 connections from one
    // address, each with at most 4 MiB in flight, and some room for the rest.
    let budget = 16 * (node::net::CONNECTION_WINDOW as u64 >> 20) + 32;
    assert!(
        peak - baseline < budget,
        "the flood cost {} MiB, over the budget of {budget} MiB",
        peak - baseline
    );
    let listed = target.json(&["vaults", "list"]);
    assert_eq!(listed[0]["name"], "kept", "{listed}");
    drop(rt);
}

/// Issue 13, 1.4: a tree nested 10,000 directories deep (which overflowed the stack of
/// whatever walked it recursively, killing the agent) is refused, and the agent lives.
#[test]
fn a_ten_thousand_level_tree_is_refused_and_the_agent_lives() {
    let w = World::new();
    let victim = Peer::new(&w, "victim");
    let (blob, blob_wire) = object(gix_object::Kind::Blob, b"deep");
    let mut objects = vec![blob_wire];
    let (mut tree_id, wire) = object(gix_object::Kind::Tree, &tree(&[("100644", b"f", blob)]));
    objects.push(wire);
    for _ in 0..10_000 {
        let (id, wire) = object(gix_object::Kind::Tree, &tree(&[("40000", b"d", tree_id)]));
        tree_id = id;
        objects.push(wire);
    }
    let (tip, commit_wire) = object(gix_object::Kind::Commit, &commit(&tree_id, &[], "deep"));
    objects.push(commit_wire);
    let vault = format!("v{}", "0".repeat(26));
    let rogue = RogueServer::start(Arc::new(move |_request: &node::peer::FetchRequest| {
        let mut out = vec![begin(&vault, "deep", &tip)];
        out.extend(objects.iter().cloned().map(PeerResponse::Object));
        out.push(PeerResponse::Ok(PeerReply::Done));
        out
    }));
    rogue.add_to(&victim);
    let err = victim
        .pk(&["vaults", "clone", "deep", &rogue.id])
        .fails(65, "deep");
    assert!(err.contains("over the limit"), "{err}");
    assert_eq!(victim.json(&["vaults", "list"]), serde_json::json!([]));
    victim.pk(&["vaults", "create", "alive"]).ok();
}

/// Issue 13, 1.11: once a node's renewal is seen, its old key gets what a stranger gets,
/// even though a sigchain may still show links to it.
#[test]
fn a_renewed_away_key_keeps_no_rights() {
    let w = World::new();
    let target = Peer::new(&w, "target");
    let old = Identity::generate();
    let old_id = target.add_key(&old);
    target
        .pk(&["nodes", "allow", &old_id, "notify", "scan"])
        .ok();
    // The old key has its rights...
    let before = Caller::connect(&target, &old);
    let scan = before
        .rt
        .block_on(node::peer::unary(&before.conn, PeerRequest::Scan));
    assert!(scan.is_ok(), "{scan:?}");
    // ... until the node shows up under its new key, with the renewal certificate.
    let new = Identity::generate();
    let cert = old.certify(&new).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoint = Endpoint::from_socket(socket, &new, vec![cert]).unwrap();
    let conn = rt
        .block_on(endpoint.connect(target.addr.parse().unwrap(), target.id.parse().unwrap()))
        .unwrap();
    rt.block_on(node::peer::unary(&conn, PeerRequest::Scan))
        .unwrap();
    let nodes = target.json(&["nodes", "getall"]).to_string();
    assert!(nodes.contains(&new.node_id().to_string()), "{nodes}");

    let after = Caller::connect(&target, &old);
    for request in [
        PeerRequest::Scan,
        PeerRequest::Sigchain,
        PeerRequest::FindNode(new.node_id()),
    ] {
        match after.rt.block_on(node::peer::unary(&after.conn, request)) {
            Err(node::peer::PeerError::Refused { error, .. }) => {
                assert_eq!(error.code, node::api::ErrorCode::Denied, "{error}");
            }
            other => panic!("the old key was answered: {other:?}"),
        }
    }
}

/// Issue 13, 1.14: numbers from the command line are checked for range before any
/// arithmetic: a schedule of 400 days is refused with a clear error (a larger one used
/// to overflow `every_s * 1000`).
#[test]
fn out_of_range_schedules_are_refused() {
    let w = World::new();
    let peer = Peer::new(&w, "peer");
    peer.pk(&["vaults", "create", "v"]).ok();
    let other = peer.add_key(&Identity::generate());
    for every in ["400d", "5s", "18446744073709551615s"] {
        let err = peer
            .pk(&["vaults", "backup", "add", "v", &other, "--every", every])
            .fails(64, "");
        assert!(
            err.contains("366 days") || err.contains("invalid value"),
            "{every}: {err}"
        );
    }
    assert_eq!(
        peer.json(&["vaults", "backup", "list"]),
        serde_json::json!([])
    );
}

/// Issue 13, 1.15: a node allowed only to pull cannot get a first copy by asking for a
/// "pull" that names nothing it has; and a fetch naming more than 64 commits is refused.
#[test]
fn pull_without_a_commit_you_have_is_no_clone() {
    let w = World::new();
    let owner = Peer::new(&w, "owner");
    owner.vault_with("v", &[("s", "secret value")]);
    let puller = Identity::generate();
    let puller_id = owner.add_key(&puller);
    owner
        .pk(&["vaults", "share", "v", &puller_id, "-p", "pull"])
        .ok();
    let caller = Caller::connect(&owner, &puller);
    let fetch = |haves: Vec<[u8; 20]>| {
        let request = PeerRequest::Fetch(node::peer::FetchRequest {
            vault: None,
            name: "v".into(),
            clone: false,
            haves,
            received: Vec::new(),
        });
        caller.rt.block_on(async {
            let mut call = node::peer::CallStream::open(&caller.conn, request)
                .await
                .unwrap();
            call.next(std::time::Duration::from_secs(30)).await.unwrap()
        })
    };
    for haves in [Vec::new(), vec![[7u8; 20]], vec![[7u8; 20]; 65]] {
        match fetch(haves.clone()) {
            PeerResponse::Err(e) => assert!(
                matches!(
                    e.code,
                    node::api::ErrorCode::Denied | node::api::ErrorCode::BadInput
                ),
                "{e}"
            ),
            other => panic!("{} haves: answered {other:?}", haves.len()),
        }
    }
}

/// Issue 13, 1.9: what a peer wrote reaches the terminal escaped: a commit message with
/// an escape sequence (which a terminal would obey: retitle the window, move the cursor)
/// is shown as text by `pk vaults log`.
#[test]
fn a_peers_commit_message_reaches_the_terminal_escaped() {
    let w = World::new();
    let victim = Peer::new(&w, "victim");
    let (blob, blob_wire) = object(gix_object::Kind::Blob, b"value");
    let (tree_id, tree_wire) = object(gix_object::Kind::Tree, &tree(&[("100644", b"s", blob)]));
    let message = "innocent\u{1b}]0;owned\u{7}\u{1b}[2J";
    let (tip, commit_wire) = object(gix_object::Kind::Commit, &commit(&tree_id, &[], message));
    let vault = format!("v{}", "0".repeat(26));
    let rogue = RogueServer::start(Arc::new(move |_request: &node::peer::FetchRequest| {
        vec![
            begin(&vault, "v", &tip),
            PeerResponse::Object(blob_wire.clone()),
            PeerResponse::Object(tree_wire.clone()),
            PeerResponse::Object(commit_wire.clone()),
            PeerResponse::Ok(PeerReply::Done),
        ]
    }));
    rogue.add_to(&victim);
    victim.pk(&["vaults", "clone", "v", &rogue.id]).ok();
    let log = victim.pk(&["vaults", "log", "v"]).ok();
    assert!(
        !log.contains('\u{1b}'),
        "an escape reached the terminal: {log:?}"
    );
    assert!(log.contains("\\u{1b}]0;owned"), "{log}");
}
