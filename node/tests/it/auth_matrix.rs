//! The node's auth matrix (issue 13, section 2): every way in that must be refused, tried
//! against one real agent, as one table. Each row is a caller and a call; each must be
//! refused, and nothing refused may change what the node holds (its vaults and their
//! newest commits, its secrets, and every audit event but the refusals themselves). The
//! console's own rows (pages and API routes without a session, POSTs without a CSRF token,
//! a stale session, the login brute force) are in the appliance's tests.

use std::time::Duration;

use node::api::ErrorCode;
use node::identity::Identity;
use node::net::Endpoint;
use node::peer::{CallStream, FetchRequest, PeerError, PeerRequest, PeerResponse, unary};
use node::sigchain::{Claim, ClaimToken, ClaimType};

use crate::harness::World;
use crate::peers::Peer;

/// A caller of our own making (any key, with renewal certificates if it likes),
/// connected to the node under test.
pub(crate) struct Caller {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) conn: node::net::Connection,
    _endpoint: Endpoint,
}

impl Caller {
    pub(crate) fn connect(target: &Peer<'_>, identity: &Identity) -> Caller {
        Caller::connect_with(target, identity, Vec::new())
    }

    pub(crate) fn connect_with(
        target: &Peer<'_>,
        identity: &Identity,
        renewals: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Caller {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let endpoint = {
            let _guard = rt.enter();
            Endpoint::from_socket(socket, identity, renewals).unwrap()
        };
        let conn = rt
            .block_on(endpoint.connect(target.addr.parse().unwrap(), target.id.parse().unwrap()))
            .unwrap();
        Caller {
            rt,
            conn,
            _endpoint: endpoint,
        }
    }

    /// Makes the call; `Ok(why)` if it was refused, `Err(what)` if it was answered.
    fn refused(&self, request: PeerRequest) -> Result<String, String> {
        let fetch = matches!(request, PeerRequest::Fetch(_));
        self.rt.block_on(async {
            if fetch {
                let mut call = CallStream::open(&self.conn, request)
                    .await
                    .map_err(|e| e.to_string())?;
                return match call.next(Duration::from_secs(30)).await {
                    Ok(PeerResponse::Err(e)) if refusal(e.code) => Ok(e.message),
                    other => Err(format!("{other:?}")),
                };
            }
            match unary(&self.conn, request).await {
                Err(PeerError::Refused { error, .. }) if refusal(error.code) => Ok(error.message),
                other => Err(format!("{other:?}")),
            }
        })
    }
}

fn refusal(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Denied | ErrorCode::BadInput)
}

fn fetch(name: &str, clone: bool, haves: Vec<[u8; 20]>) -> PeerRequest {
    PeerRequest::Fetch(FetchRequest {
        vault: None,
        name: name.into(),
        clone,
        haves,
        received: Vec::new(),
    })
}

fn message(text: &str) -> node::notifications::Body {
    node::notifications::Body::Message { text: text.into() }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A node-link claim by `iss` about `sub`, first in `iss`'s chain, made now.
pub(crate) fn link_claim(iss: &str, sub: &str, nonce: &str) -> Claim {
    Claim {
        typ: ClaimType::ClaimLinkNode,
        iss: iss.into(),
        sub: sub.into(),
        seq: 1,
        prev_digest: None,
        iat: now_s(),
        nonce: nonce.into(),
    }
}

/// What refusals must not change: the audit log without its refusal rows, and the vaults
/// (names, ids, newest commits). Reading them records nothing.
fn state(owner: &Peer<'_>) -> (String, Vec<String>) {
    let audit = owner.pk(&["--format", "json", "audit"]).ok();
    let events: Vec<String> = audit
        .lines()
        .filter(|line| !line.contains("\"peer.denied\""))
        .map(str::to_owned)
        .collect();
    let vaults = owner.json(&["vaults", "list"]);
    let mut heads = Vec::new();
    for v in vaults.as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let log = owner.json(&["vaults", "log", name]);
        heads.push(format!("{} {} {}", name, v["id"], log[0]["oid"]));
    }
    (heads.join("\n"), events)
}

#[test]
fn every_way_in_that_must_be_refused_is_refused_and_changes_nothing() {
    let w = World::new();
    let owner = Peer::new(&w, "owner");
    owner.vault_with("shared", &[("s", "the shared secret")]);
    owner.vault_with("private", &[("p", "the private secret")]);
    let id = |i: &Identity| i.node_id().to_string();

    // The cast: a stranger, a removed node, a node with nothing, a puller, a cloner, a
    // node that renewed its key away, and a node that may not notify.
    let stranger = Identity::generate();
    let removed = Identity::generate();
    owner.add_key(&removed);
    owner.pk(&["nodes", "allow", &id(&removed), "scan"]).ok();
    owner.pk(&["vaults", "share", "shared", &id(&removed)]).ok();
    owner.pk(&["nodes", "remove", &id(&removed)]).ok();
    let bare = Identity::generate();
    owner.add_key(&bare);
    owner.pk(&["nodes", "disallow", &id(&bare), "notify"]).ok();
    let puller = Identity::generate();
    owner.add_key(&puller);
    owner
        .pk(&["vaults", "share", "shared", &id(&puller), "-p", "pull"])
        .ok();
    let cloner = Identity::generate();
    owner.add_key(&cloner);
    owner
        .pk(&["vaults", "share", "shared", &id(&cloner), "-p", "clone"])
        .ok();
    let renewed = Identity::generate();
    owner.add_key(&renewed);
    owner.pk(&["nodes", "allow", &id(&renewed), "scan"]).ok();
    let successor = Identity::generate();
    let renewal = renewed.certify(&successor).unwrap();
    // The successor shows up with its renewal certificate: the old key is now nobody.
    let new_key = Caller::connect_with(&owner, &successor, vec![renewal]);
    new_key
        .rt
        .block_on(unary(&new_key.conn, PeerRequest::Ping))
        .unwrap();

    let before = state(&owner);
    let shared_tip: [u8; 20] = {
        let log = owner.json(&["vaults", "log", "shared"]);
        let hex = log[0]["oid"].as_str().unwrap();
        let mut out = [0u8; 20];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    };

    let callers = [
        ("a stranger", Caller::connect(&owner, &stranger)),
        ("a removed node", Caller::connect(&owner, &removed)),
        ("a node with no permission", Caller::connect(&owner, &bare)),
        ("a node with pull only", Caller::connect(&owner, &puller)),
        ("a node with clone only", Caller::connect(&owner, &cloner)),
        ("a renewed-away key", Caller::connect(&owner, &renewed)),
    ];
    let caller = |who: &str| &callers.iter().find(|(name, _)| *name == who).unwrap().1;
    let nonce = format!("n{}", now_s());
    let forged = ClaimToken::sign(&link_claim(&id(&bare), &owner.id, &nonce), &stranger);
    let uninvited = ClaimToken::sign(&link_claim(&id(&stranger), &owner.id, &nonce), &stranger);

    let mut rows: Vec<(String, PeerRequest)> = Vec::new();
    for who in ["a stranger", "a removed node", "a renewed-away key"] {
        rows.push((format!("{who}: scan"), PeerRequest::Scan));
        rows.push((format!("{who}: notify"), PeerRequest::Notify(message("hi"))));
        rows.push((
            format!("{who}: find"),
            PeerRequest::FindNode(successor.node_id()),
        ));
        rows.push((format!("{who}: sigchain"), PeerRequest::Sigchain));
        rows.push((format!("{who}: clone"), fetch("shared", true, Vec::new())));
        rows.push((
            format!("{who}: pull"),
            fetch("shared", false, vec![shared_tip]),
        ));
    }
    let more = [
        ("a node with no permission: scan", PeerRequest::Scan),
        (
            "a node with no permission: notify",
            PeerRequest::Notify(message("hi")),
        ),
        (
            "a node with no permission: clone of an unshared vault",
            fetch("private", true, Vec::new()),
        ),
        (
            "a node with no permission: pull of an unshared vault",
            fetch("private", false, vec![shared_tip]),
        ),
        (
            "a node with pull only: clone",
            fetch("shared", true, Vec::new()),
        ),
        (
            "a node with pull only: a pull naming nothing it has",
            fetch("shared", false, Vec::new()),
        ),
        (
            "a node with pull only: clone of an unshared vault",
            fetch("private", true, Vec::new()),
        ),
        (
            "a node with clone only: pull",
            fetch("shared", false, vec![shared_tip]),
        ),
        (
            "a stranger: a claim forged in another node's name",
            PeerRequest::ClaimNode(forged),
        ),
        (
            "a stranger: a claim it was not invited to make",
            PeerRequest::ClaimNode(uninvited.clone()),
        ),
        (
            "a stranger: the same claim sent again",
            PeerRequest::ClaimNode(uninvited),
        ),
    ];
    for (what, request) in more {
        rows.push((what.to_owned(), request));
    }

    let mut tried = 0;
    let mut refused = 0;
    let mut answered = Vec::new();
    for (what, request) in rows {
        let who = what.split(':').next().unwrap();
        tried += 1;
        match caller(who).refused(request) {
            Ok(_) => refused += 1,
            Err(answer) => answered.push(format!("{what}: {answer}")),
        }
    }

    // The agent socket, from another user: the socket is 0600, and the agent also checks
    // the caller's uid, so both are tried (the second with the socket opened up).
    let is_root = rustix_uid() == 0;
    if is_root {
        for open_up in [false, true] {
            tried += 1;
            let socket = owner.path.join("agent.sock");
            use std::os::unix::fs::PermissionsExt as _;
            if open_up {
                std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
            }
            for dir in [w.dir.path(), owner.path.as_path()] {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let out = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(crate::harness::pk())
                .arg("--node-path")
                .arg(&owner.path)
                .args(["secrets", "cat", "shared:s"])
                .output()
                .expect("setpriv (util-linux)");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !stderr.contains("setpriv:"),
                "pk did not run as nobody: {stderr}"
            );
            if !out.status.success() && !stdout.contains("the shared secret") {
                refused += 1;
            } else {
                answered.push(format!(
                    "another uid (socket opened up: {open_up}): {stdout}"
                ));
            }
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    } else {
        eprintln!("the agent socket from another uid needs root (setpriv): not tried");
    }

    println!("{tried} tried, {refused} refused");
    assert!(answered.is_empty(), "answered:\n{}", answered.join("\n"));
    assert_eq!(tried, refused);
    let after = state(&owner);
    assert_eq!(before.0, after.0, "vault records changed");
    assert_eq!(before.1, after.1, "the audit log changed beyond refusals");
    assert_eq!(owner.cat("shared:s"), "the shared secret");
    assert_eq!(owner.cat("private:p"), "the private secret");
    // ... and the refusals themselves are on record, counted.
    assert!(crate::peers::denied_count(&owner, None) >= 20);
}

fn rustix_uid() -> u32 {
    // The test's own uid, from /proc (no unsafe, no extra crate).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap()
}
