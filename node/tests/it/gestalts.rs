//! Gestalts end to end: nodes cross-claim, a serving node discovers the gestalt and
//! shares with all of it; forged, replayed and tampered claims are refused.

use crate::github::FakeGitHub;
use crate::harness::World;
use crate::peers::{Peer, peers};

/// Links two nodes into one gestalt: `a` invites, `b` claims.
fn cross_claim(a: &Peer<'_>, b: &Peer<'_>) {
    let first = a.pk(&["nodes", "claim", &b.id]).ok();
    assert!(first.contains("Invited"), "{first}");
    let linked = b.pk(&["nodes", "claim", &a.id]).ok();
    assert!(linked.contains("signed by both nodes"), "{linked}");
}

/// Laptop `a`, a new laptop `b` and a stranger around `server`: the laptops know each
/// other, and all three know the server.
fn around<'w>(w: &'w World, server: &Peer<'_>, a: Peer<'w>) -> [Peer<'w>; 3] {
    let b = Peer::new(w, "laptop-b");
    let stranger = Peer::new(w, "stranger");
    a.add(&b);
    b.add(&a);
    for p in [&a, &b, &stranger] {
        p.add(server);
    }
    [a, b, stranger]
}

#[test]
fn a_gestalt_of_two_nodes_and_a_github_identity() {
    let w = World::new();
    let github = FakeGitHub::start();
    let urls = [
        format!("--github-url={}", github.url()),
        format!("--github-api-url={}", github.url()),
    ];
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    let server = Peer::with_agent_args(&w, "server", &args);
    let [a, b, stranger] = around(&w, &server, Peer::with_agent_args(&w, "laptop-a", &args));
    cross_claim(&a, &b);

    // A authenticates as alice through the device flow and claims the identity.
    github.approve_as("alice");
    let run = a.pk(&["identities", "authenticate", "github.com"]);
    assert!(
        run.stderr.contains("WDJB-MJHT"),
        "the code to enter: {}",
        run.stderr
    );
    assert!(run.ok().contains("Authenticated as github.com:alice"));
    assert_eq!(
        a.pk(&["identities", "authenticated"]).ok(),
        "github.com:alice\n"
    );
    a.pk(&["identities", "claim", "github.com:bob"])
        .fails(77, "not authenticated as github.com:bob");
    let claimed = a.pk(&["identities", "claim", "github.com:alice"]).ok();
    assert!(claimed.contains("published at"), "{claimed}");
    assert_eq!(github.gists_of("alice").len(), 1);
    // A claim in alice's gists that a node did not sign is ignored by discovery.
    let mut forged: serde_json::Value = serde_json::from_str(&github.gists_of("alice")[0]).unwrap();
    let mut claim: serde_json::Value = {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(forged["payload"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    claim["iss"] = serde_json::json!(stranger.id);
    let payload = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claim.to_string())
    };
    forged["payload"] = serde_json::json!(payload);
    github.publish_as("alice", &forged.to_string());

    // The server knows the identity; it finds the nodes through the provider and the
    // sigchains. It can dial A (added without notify), not B: B comes through A's chain.
    let (host, port) = a.addr.rsplit_once(':').unwrap();
    server
        .pk(&["nodes", "add", &a.id, host, port, "--no-notify"])
        .ok();
    let found = server
        .pk(&["identities", "search", "github.com", "ali"])
        .ok();
    assert_eq!(found, "github.com:alice\n");
    server.pk(&["identities", "trust", "github.com:alice"]).ok();
    server.vault_with("family", &[("wifi", "pa55")]);
    server
        .pk(&["vaults", "share", "family", "github.com:alice"])
        .ok();
    let gestalt = server.json(&["identities", "discover", "github.com:alice"]);
    let members: Vec<String> = gestalt[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["vertex"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        members.contains(&a.id) && members.contains(&b.id),
        "{gestalt}"
    );
    assert!(
        !members.contains(&stranger.id),
        "a forged claim was believed: {gestalt}"
    );
    assert_eq!(members.len(), 3, "{gestalt}");

    for p in [&a, &b] {
        p.json(&["vaults", "clone", "family", &server.id]);
        assert_eq!(p.cat("family:wifi"), "pa55");
    }
    stranger
        .pk(&["vaults", "clone", "family", &server.id])
        .fails(77, "does not know you");
    // Trusting the identity lets every node of its gestalt notify.
    b.pk(&["notifications", "send", &server.id, "hello from b"])
        .ok();
}

#[test]
fn claimed_nodes_form_a_gestalt_that_shares_trust_and_vaults() {
    let w = World::new();
    let server = Peer::new(&w, "server");
    let [a, b, stranger] = around(&w, &server, Peer::new(&w, "laptop-a"));
    server.add(&a);

    // A claim without an invitation sends one; the invited node's claim links them.
    let first = a.pk(&["nodes", "claim", &b.id]).ok();
    assert!(first.contains("Invited"), "{first}");
    let inbox = b.pk(&["notifications", "inbox", "read"]).ok();
    assert!(inbox.contains("invites you to its gestalt"), "{inbox}");
    let linked = b.pk(&["nodes", "claim", &a.id]).ok();
    assert!(linked.contains("signed by both nodes"), "{linked}");
    for p in [&a, &b] {
        let gestalt = p.pk(&["identities", "get", &p.id]).ok();
        assert!(
            gestalt.contains(&a.id) && gestalt.contains(&b.id) && gestalt.contains("link"),
            "{gestalt}"
        );
    }

    server.vault_with("team", &[("db", "hunter2")]);
    server.pk(&["vaults", "share", "team", &a.id]).ok();
    // The server knows A only; until it discovers A's gestalt, B is a stranger to it.
    b.pk(&["vaults", "clone", "team", &server.id])
        .fails(77, "does not know you");
    let discovered = server.pk(&["identities", "discover", &a.id]).ok();
    assert!(discovered.contains(&b.id), "{discovered}");

    // Shared with the gestalt: clonable by each of its nodes, by nobody else.
    for p in [&a, &b] {
        let cloned = p.json(&["vaults", "clone", "team", &server.id]);
        assert_eq!(cloned["result"], "cloned");
        assert_eq!(p.cat("team:db"), "hunter2");
    }
    stranger
        .pk(&["vaults", "clone", "team", &server.id])
        .fails(77, "does not know you");

    // `nodes add` let A notify; through the gestalt, B may too. Untrust removes notify
    // from the whole gestalt; trust gives it back.
    b.pk(&["notifications", "send", &server.id, "from b"]).ok();
    server.pk(&["identities", "untrust", &b.id]).ok();
    for p in [&a, &b] {
        p.pk(&["notifications", "send", &server.id, "refused"])
            .fails(77, "no notify permission");
    }
    let permissions = server.json(&["identities", "permissions", &a.id]);
    assert_eq!(permissions[0]["permissions"], serde_json::json!(["scan"]));
    server.pk(&["identities", "trust", &a.id]).ok();
    b.pk(&["notifications", "send", &server.id, "trusted again"])
        .ok();

    let list = server.json(&["identities", "list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|g| g["members"].as_array().unwrap().len() == 2),
        "{list}"
    );
    let audit = server.pk(&["audit", "--event", "gestalt"]).ok();
    assert!(audit.contains("gestalt.discovered"), "{audit}");
}

/// A node of our own making, built from the library, that misbehaves on purpose.
mod rogue {
    use node::api::ErrorCode;
    use node::identity::Identity;
    use node::net::{Connection, Endpoint};
    use node::peer::{PeerReply, PeerRequest, PeerResponse, read_call, respond, unary};
    use node::sigchain::{self, ClaimToken};

    pub(super) struct Rogue {
        pub(super) rt: tokio::runtime::Runtime,
        pub(super) identity: std::sync::Arc<Identity>,
        pub(super) endpoint: std::sync::Arc<Endpoint>,
        /// The sigchain it serves (tampered with at will).
        pub(super) chain: std::sync::Arc<std::sync::Mutex<Vec<ClaimToken>>>,
    }

    impl Rogue {
        pub(super) fn start() -> Rogue {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let identity = std::sync::Arc::new(Identity::generate());
            let endpoint = std::sync::Arc::new(
                rt.block_on(async { Endpoint::bind("127.0.0.1:0".parse().unwrap(), &identity) })
                    .unwrap(),
            );
            let chain = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let (ep, served) = (endpoint.clone(), chain.clone());
            rt.spawn(async move {
                while let Some(Ok(conn)) = ep.accept().await {
                    let served = served.clone();
                    tokio::spawn(async move {
                        while let Ok((mut send, mut recv)) = conn.accept().await {
                            let answer = match read_call(&mut recv).await {
                                Ok(PeerRequest::Sigchain) => PeerResponse::Ok(PeerReply::Claims(
                                    served.lock().unwrap().clone(),
                                )),
                                Ok(PeerRequest::Ping) => PeerResponse::Ok(PeerReply::Pong),
                                _ => PeerResponse::Ok(PeerReply::Done),
                            };
                            let _ = respond(&mut send, &answer).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
            Rogue {
                rt,
                identity,
                endpoint,
                chain,
            }
        }

        pub(super) fn id(&self) -> String {
            self.identity.node_id().to_string()
        }

        pub(super) fn addr(&self) -> std::net::SocketAddr {
            self.endpoint.local_addr().unwrap()
        }

        pub(super) fn connect(&self, addr: &str, node: &str) -> Connection {
            let (addr, node) = (addr.parse().unwrap(), node.parse().unwrap());
            self.rt.block_on(self.endpoint.connect(addr, node)).unwrap()
        }

        /// Calls the node at `conn`; the refusal message, or the answer.
        pub(super) fn call(
            &self,
            conn: &Connection,
            request: PeerRequest,
        ) -> Result<PeerReply, String> {
            match self.rt.block_on(unary(conn, request)) {
                Ok(reply) => Ok(reply),
                Err(node::peer::PeerError::Refused { error, .. }) => {
                    assert_eq!(error.code, ErrorCode::Denied, "{error}");
                    Err(error.message)
                }
                Err(e) => panic!("{e}"),
            }
        }

        pub(super) fn verify(&self, owner: &str, chain: &[ClaimToken]) -> bool {
            sigchain::verify_chain(&owner.parse().unwrap(), chain).is_ok()
        }
    }
}

#[test]
fn forged_replayed_and_tampered_claims_are_refused() {
    use node::identity::Identity;
    use node::peer::{PeerReply, PeerRequest};
    use node::sigchain::ClaimToken;

    use crate::auth_matrix::link_claim;

    let w = World::new();
    let [target, other] = peers(&w, ["target", "other"]);
    let rogue = rogue::Rogue::start();
    let (host, port) = (
        rogue.addr().ip().to_string(),
        rogue.addr().port().to_string(),
    );
    target.pk(&["nodes", "add", &rogue.id(), &host, &port]).ok();
    let conn = rogue.connect(&target.addr, &target.id);

    // Not invited yet: no countersignature.
    let honest = ClaimToken::sign(&link_claim(&rogue.id(), &target.id, "n1"), &rogue.identity);
    let refused = rogue
        .call(&conn, PeerRequest::ClaimNode(honest.clone()))
        .unwrap_err();
    assert!(refused.contains("has not invited you"), "{refused}");
    target.pk(&["identities", "invite", &rogue.id()]).ok();

    // Forged: a claim in another node's name, signed with the rogue's key.
    let forged = ClaimToken::sign(&link_claim(&other.id, &target.id, "n2"), &rogue.identity);
    let refused = rogue
        .call(&conn, PeerRequest::ClaimNode(forged))
        .unwrap_err();
    assert!(refused.contains("issued by the caller"), "{refused}");
    // Forged: the rogue's own claim with a signature by a key that is not the rogue's.
    let mallory = Identity::generate();
    let mut bad_signature = ClaimToken::sign(&link_claim(&rogue.id(), &target.id, "n3"), &mallory);
    bad_signature.signatures[0].protected = honest.signatures[0].protected.clone();
    let refused = rogue
        .call(&conn, PeerRequest::ClaimNode(bad_signature))
        .unwrap_err();
    assert!(refused.contains("not signed by the caller"), "{refused}");

    // The honest claim is countersigned once; the same claim again is a replay.
    let PeerReply::ClaimPair {
        countersigned,
        mut theirs,
    } = rogue
        .call(&conn, PeerRequest::ClaimNode(honest.clone()))
        .unwrap()
    else {
        panic!("expected a claim pair");
    };
    assert!(rogue.verify(&rogue.id(), std::slice::from_ref(&countersigned)));
    let refused = rogue
        .call(&conn, PeerRequest::ClaimNode(honest))
        .unwrap_err();
    assert!(refused.contains("replay"), "{refused}");
    theirs.add_signature(&rogue.identity);
    rogue
        .call(&conn, PeerRequest::ClaimNodeFinish(theirs.clone()))
        .unwrap();
    let refused = rogue
        .call(&conn, PeerRequest::ClaimNodeFinish(theirs))
        .unwrap_err();
    assert!(refused.contains("does not fit"), "{refused}");

    // A tampered sigchain: the rogue serves its link claim with the subject changed.
    let mut tampered = countersigned.clone();
    let mut claim = tampered.claim().unwrap();
    claim.sub = other.id.clone();
    tampered.payload = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claim).unwrap())
    };
    *rogue.chain.lock().unwrap() = vec![tampered];
    target
        .pk(&["identities", "discover", &rogue.id()])
        .fails(65, "does not verify");
    let gestalt = target.pk(&["identities", "get", &rogue.id()]).ok();
    assert!(
        !gestalt.contains(&other.id),
        "nothing forged was added: {gestalt}"
    );
    // The honest chain verifies and changes nothing new.
    *rogue.chain.lock().unwrap() = vec![countersigned];
    target.pk(&["identities", "discover", &rogue.id()]).ok();
    // Refusals are recorded in aggregate: a row per caller and call per minute, counted.
    assert!(crate::peers::denied_count(&target, Some("claim")) >= 5);
}

#[test]
fn after_a_key_renewal_peers_still_reach_the_node_and_its_shares_work() {
    let w = World::new();
    let [server, mut laptop, friend] = peers(&w, ["server", "laptop", "friend"]);
    for (a, b) in [
        (&laptop, &server),
        (&server, &laptop),
        (&friend, &laptop),
        (&laptop, &friend),
    ] {
        a.add(b);
    }
    server.vault_with("team", &[("k1", "v1")]);
    server.pk(&["vaults", "share", "team", &laptop.id]).ok();
    laptop.json(&["vaults", "clone", "team", &server.id]);
    friend.vault_with("notes", &[("n", "from friend")]);
    friend.pk(&["vaults", "share", "notes", &laptop.id]).ok();

    let old = laptop.id.clone();
    let renewed = laptop.json(&["keys", "renew"]);
    assert_eq!(renewed["was"], old.as_str());
    assert_eq!(renewed["certified"], true);
    laptop.id = renewed["node_id"].as_str().unwrap().to_owned();
    assert_ne!(laptop.id, old);
    let status = laptop.json(&["agent", "status"]);
    assert_eq!(status["node_id"], laptop.id.as_str());
    let chain = laptop.pk(&["keys", "certchain"]).ok();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");

    // The laptop calls the server with its new key and the certificate from the old one:
    // the server's share, made to the old NodeId, still holds.
    server.write("team:k2", "v2");
    let pulled = laptop.json(&["vaults", "pull", "team"]);
    assert_eq!(pulled["result"], "fast-forward", "{pulled}");
    assert_eq!(laptop.cat("team:k2"), "v2");
    // The friend still dials the old NodeId and follows the chain.
    friend.pk(&["nodes", "ping", &old]).ok();
    let graph = friend.json(&["nodes", "getall"]);
    let record = &graph.as_array().unwrap()[0];
    assert_eq!(record["node_id"], laptop.id.as_str(), "{graph}");
    assert_eq!(record["earlier"], serde_json::json!([old]), "{graph}");
    laptop.json(&["vaults", "clone", "notes", &friend.id]);
    assert_eq!(laptop.cat("notes:n"), "from friend");
    // Its sigchain, with the renewal signed by both keys, verifies.
    server.pk(&["identities", "discover", &laptop.id]).ok();

    // A reset is a fresh identity: nobody follows it.
    let reset = laptop.json(&["keys", "reset"]);
    assert_eq!(reset["certified"], false);
    friend
        .pk(&["nodes", "ping", &laptop.id])
        .fails(77, "another node");
    assert_eq!(
        laptop
            .pk(&["keys", "certchain"])
            .ok()
            .matches("BEGIN CERTIFICATE")
            .count(),
        1
    );
}
