//! Hostile peers: a serving node of our own making (built from the library) that answers a
//! fetch with whatever a test scripts, against a real agent. Each test here shows one
//! weakness a review found (issue 13), and that it is closed.

use std::sync::Arc;

use node::api::SecretBytes;
use node::identity::Identity;
use node::net::Endpoint;
use node::peer::{PeerReply, PeerRequest, PeerResponse, read_call, respond};
use node::vault::{Fetched, WireObject};

use crate::harness::World;
use crate::peers::Peer;

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
    let victim = Peer::new(&w, "victim");
    let friend = Peer::new(&w, "friend");
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
