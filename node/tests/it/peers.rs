//! The peer network end to end: nodes as separate agent processes with their own data
//! directories, talking QUIC over loopback (through a lossy relay where a test says so).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{AgentGuard, Run, World, agent_pid, kill9};
use crate::relay::Relay;

pub(crate) const PASS: &str = "peer-test-passphrase";

/// One node: its directory, agent, NodeId and peer address.
pub(crate) struct Peer<'w> {
    pub(crate) w: &'w World,
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) pass: PathBuf,
    pub(crate) id: String,
    pub(crate) addr: String,
    pub(crate) agent: Option<AgentGuard>,
    /// Extra `agent start` arguments.
    pub(crate) agent_args: Vec<String>,
}

impl<'w> Peer<'w> {
    pub(crate) fn new(w: &'w World, name: &str) -> Peer<'w> {
        Peer::with_agent_args(w, name, &[])
    }

    pub(crate) fn with_agent_args(w: &'w World, name: &str, agent_args: &[&str]) -> Peer<'w> {
        let (path, pass, _) = w.soft_node_named(name, PASS);
        let mut peer = Peer {
            w,
            name: name.to_owned(),
            path,
            pass,
            id: String::new(),
            addr: String::new(),
            agent: None,
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
        };
        peer.start(None);
        peer
    }

    /// Starts the agent (on `port`, else one the kernel picks) and reads who and where it is.
    pub(crate) fn start(&mut self, port: Option<u16>) {
        let listen = format!("127.0.0.1:{}", port.unwrap_or(0));
        let pass = self.pass.to_str().unwrap().to_owned();
        let mut args = vec!["agent", "start", "--password-file", &pass];
        args.extend(self.agent_args.iter().map(String::as_str));
        // A restart asks for the port the agent had: it can be briefly taken (the killed
        // agent's socket not yet released, or another test's agent given it by the
        // kernel meanwhile), which is the machine's doing, not the node's: try again.
        let mut tries = 0;
        loop {
            let run = self
                .w
                .pk_env(&self.path, &args, &[("PK_PEER_LISTEN", &listen)]);
            tries += 1;
            if port.is_some() && tries < 40 && run.stderr.contains("Address already in use") {
                std::thread::sleep(std::time::Duration::from_millis(250));
                continue;
            }
            run.ok();
            break;
        }
        self.agent = Some(AgentGuard::new(&self.path));
        let status = self.json(&["agent", "status"]);
        self.id = status["node_id"].as_str().unwrap().to_owned();
        self.addr = status["peer_addr"].as_str().unwrap().to_owned();
    }

    /// kill -9 of the agent.
    pub(crate) fn crash(&mut self) {
        if let Some(pid) = agent_pid(&self.path) {
            kill9(pid);
        }
        self.agent = None;
        let _ = std::fs::remove_file(self.path.join("agent.sock"));
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    pub(crate) fn pk(&self, args: &[&str]) -> Run {
        self.w.pk(&self.path, args)
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let out = self.pk(&all).ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Adds `other` to this node's graph at its own address.
    pub(crate) fn add(&self, other: &Peer<'_>) {
        self.add_at(other, &other.addr);
    }

    pub(crate) fn add_at(&self, other: &Peer<'_>, addr: &str) {
        let (host, port) = addr.rsplit_once(':').unwrap();
        self.pk(&["nodes", "add", &other.id, host, port]).ok();
    }

    /// Adds a node known only by its key to this node's graph, at an address where
    /// nothing listens, without pinging it; its NodeId.
    pub(crate) fn add_key(&self, key: &node::identity::Identity) -> String {
        let id = key.node_id().to_string();
        self.pk(&["nodes", "add", "--no-ping", &id, "127.0.0.1", "9"])
            .ok();
        id
    }

    /// Shares `vault` with `backup`, which then pulls it every 10 s; waits (up to
    /// `first_within`) until the first pull has brought `secret` (`vault:path`).
    pub(crate) fn back_up_to(
        &self,
        backup: &Peer<'_>,
        vault: &str,
        secret: &str,
        first_within: Duration,
    ) {
        self.pk(&["vaults", "share", vault, &backup.id]).ok();
        let schedule = ["vaults", "backup", "add", vault, &self.id, "--every", "10s"];
        backup.pk(&schedule).ok();
        wait_for("the first scheduled pull", first_within, || {
            backup.pk(&["secrets", "cat", secret]).code == 0
        });
    }

    /// Creates `vault` with `secrets` (`(path, value)`) in it.
    pub(crate) fn vault_with(&self, vault: &str, secrets: &[(&str, &str)]) {
        self.pk(&["vaults", "create", vault]).ok();
        for (path, value) in secrets {
            self.write(&format!("{vault}:{path}"), value);
        }
    }

    pub(crate) fn write(&self, secret: &str, value: &str) {
        let file = self.w.path(&format!("{}-input", self.name));
        std::fs::write(&file, value).unwrap();
        self.pk(&["secrets", "create", file.to_str().unwrap(), secret])
            .ok();
    }

    pub(crate) fn cat(&self, secret: &str) -> String {
        self.pk(&["secrets", "cat", secret]).ok()
    }
}

/// Nodes named `names` in `w`, each with its agent started, one after the other.
pub(crate) fn peers<'w, const N: usize>(w: &'w World, names: [&str; N]) -> [Peer<'w>; N] {
    names.map(|name| Peer::new(w, name))
}

/// How many calls `peer` refused, by the counts of its aggregated `peer.denied` rows
/// (only calls named `call`, when given).
pub(crate) fn denied_count(peer: &Peer<'_>, call: Option<&str>) -> u64 {
    let audit = peer
        .pk(&["--format", "json", "audit", "--event", "peer.denied"])
        .ok();
    audit
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|row| call.is_none_or(|c| row["fields"]["call"] == c))
        .map(|row| row["fields"]["count"].as_u64().unwrap())
        .sum()
}

pub(crate) fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn share_clone_edit_both_sides_pull_both_ways_and_keep_conflicts() {
    let w = World::new();
    let [office, laptop, other] = peers(&w, ["office", "laptop", "other"]);
    for (a, b) in [(&office, &laptop), (&laptop, &office), (&office, &other)] {
        a.add(b);
    }
    other.add(&office);
    other.add(&laptop);
    laptop.add(&other);

    office.vault_with(
        "team",
        &[
            ("db/password", "hunter2"),
            ("api-token", "tok-1"),
            ("shared", "base"),
        ],
    );

    // Sharing notifies the laptop, which can then clone.
    let shared = office.pk(&["vaults", "share", "team", &laptop.id]).ok();
    assert!(shared.contains("clone,pull"), "{shared}");
    let inbox = laptop.pk(&["notifications", "inbox", "read"]).ok();
    assert!(
        inbox.contains("vault team") && inbox.contains("shared with you"),
        "{inbox}"
    );
    let permissions = office.pk(&["vaults", "permissions", "team"]).ok();
    assert!(permissions.contains(&laptop.id), "{permissions}");
    let scan = laptop.pk(&["vaults", "scan", &office.id]).ok();
    assert!(scan.starts_with("team\t"), "{scan}");

    let cloned = laptop.json(&["vaults", "clone", "team", &office.id]);
    assert_eq!(cloned["result"], "cloned");
    assert_eq!(laptop.cat("team:db/password"), "hunter2");
    assert_eq!(laptop.cat("team:api-token"), "tok-1");
    let log = laptop.pk(&["vaults", "log", "team"]).ok();
    assert!(
        log.contains("create db/password"),
        "history came along: {log}"
    );

    // A clone is a full vault: the laptop edits it.
    office.write("team:api-token", "tok-2");
    laptop.write("team:db/password", "correct horse");
    laptop.write("team:laptop-only", "l");
    let pulled = laptop.json(&["vaults", "pull", "team"]);
    assert_eq!(pulled["result"], "merged", "{pulled}");
    assert_eq!(laptop.cat("team:api-token"), "tok-2");
    assert_eq!(laptop.cat("team:db/password"), "correct horse");
    assert_eq!(laptop.cat("team:laptop-only"), "l");

    // The other way: the office pulls the laptop's edits from the laptop.
    laptop.pk(&["vaults", "share", "team", &office.id]).ok();
    let back = office.json(&["vaults", "pull", "team", &laptop.id]);
    assert_eq!(back["result"], "fast-forward", "{back}");
    assert_eq!(office.cat("team:db/password"), "correct horse");
    assert_eq!(office.cat("team:laptop-only"), "l");
    let nothing = office.json(&["vaults", "pull", "team", &laptop.id]);
    assert_eq!(nothing["result"], "up to date");

    // The same secret changed on both sides: both versions kept, and said so.
    office.write("team:shared", "office version");
    laptop.write("team:shared", "laptop version");
    let conflict = laptop.pk(&["vaults", "pull", "team"]).ok();
    assert!(
        conflict.contains("Conflict: shared changed on both sides"),
        "{conflict}"
    );
    let short: String = office.id.chars().skip(1).take(8).collect();
    let kept = format!("team:shared.conflict-{short}");
    assert_eq!(laptop.cat("team:shared"), "laptop version");
    assert_eq!(laptop.cat(&kept), "office version");

    // A third node clones from the office and pulls from the laptop.
    office.pk(&["vaults", "share", "team", &other.id]).ok();
    other.json(&["vaults", "clone", "team", &office.id]);
    laptop.pk(&["vaults", "share", "team", &other.id]).ok();
    let from_laptop = other.json(&["vaults", "pull", "team", &laptop.id]);
    assert_eq!(from_laptop["result"], "fast-forward", "{from_laptop}");
    assert_eq!(other.cat(&kept), "office version");
    let listed = other.pk(&["vaults", "list"]).ok();
    assert!(listed.contains("last pull ok"), "{listed}");

    // Connections were reused and are listed.
    let connections = other.pk(&["nodes", "connections"]).ok();
    assert!(
        connections.contains(&office.id) && connections.contains("outgoing"),
        "{connections}"
    );
    let ping = laptop.pk(&["nodes", "ping", &office.id]).ok();
    assert!(ping.contains("answered"), "{ping}");
    let all = laptop.json(&["nodes", "getall"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
    // `find` asks the nodes this one knows: the laptop does not know... itself; other does.
    let found = other.pk(&["nodes", "find", &laptop.id]).ok();
    assert!(found.contains(&laptop.addr), "{found}");
}

#[test]
fn permission_matrix_refuses_with_clear_errors() {
    let w = World::new();
    let [owner, friend, stranger] = peers(&w, ["owner", "friend", "stranger"]);
    owner.vault_with("private", &[("key", "v")]);
    friend.add(&owner);
    stranger.add(&owner);

    // Unknown node: the owner never added the stranger.
    stranger
        .pk(&["vaults", "clone", "private", &owner.id])
        .fails(77, "does not know you");
    stranger
        .pk(&["vaults", "scan", &owner.id])
        .fails(77, "no scan permission");
    stranger
        .pk(&["notifications", "send", &owner.id, "hello"])
        .fails(77, "no notify permission");

    // ... and learns nothing, not even whether a vault exists.
    stranger
        .pk(&["vaults", "clone", "no-such-vault", &owner.id])
        .fails(77, "does not know you");

    // Known, but the vault is not shared.
    owner.add(&friend);
    friend
        .pk(&["vaults", "clone", "private", &owner.id])
        .fails(77, "not shared with you");

    // Shared for clone only: a later pull is refused.
    let share_for = |permission| {
        let share = [
            "vaults",
            "share",
            "private",
            &friend.id,
            "--permission",
            permission,
        ];
        owner.pk(&share).ok();
    };
    share_for("clone");
    friend.pk(&["vaults", "clone", "private", &owner.id]).ok();
    friend
        .pk(&["vaults", "pull", "private"])
        .fails(77, "not shared with you for pull");

    // Permission revoked.
    share_for("pull");
    friend.pk(&["vaults", "pull", "private"]).ok();
    owner.pk(&["vaults", "unshare", "private", &friend.id]).ok();
    friend
        .pk(&["vaults", "pull", "private"])
        .fails(77, "not shared with you for pull");
    let listed = friend.pk(&["vaults", "list"]).ok();
    assert!(listed.contains("last pull FAILED"), "{listed}");

    // Wrong pinned NodeId: the friend's id at the stranger's address.
    let (host, port) = stranger.addr.rsplit_once(':').unwrap();
    owner
        .pk(&["nodes", "add", &friend.id, host, port])
        .fails(77, "another node");
    let graph = owner.json(&["nodes", "getall"]);
    let friend_addrs = graph
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == friend.id.as_str())
        .unwrap()["addrs"]
        .clone();
    assert_eq!(
        friend_addrs,
        serde_json::json!([friend.addr]),
        "nothing was saved"
    );

    // A notification to a node not in the graph is refused at once, not queued.
    owner
        .pk(&["notifications", "send", &stranger.id, "hi"])
        .fails(66, "not in the node graph");

    // Every refusal is on the owner's record, counted (a row per caller and call per
    // minute).
    assert!(denied_count(&owner, None) >= 4);
    // Bad input from the command line changes nothing.
    owner
        .pk(&["nodes", "add", "not-a-node-id", "127.0.0.1", "1"])
        .fails(64, "not a NodeId");
}

/// Fills `vault` on `peer` with `count` secrets of `size` bytes.
fn fill(peer: &Peer<'_>, vault: &str, count: usize, size: usize) {
    let dir = peer.w.path(&format!("{}-fill", peer.name));
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..count {
        let content: Vec<u8> = (0..size).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
        std::fs::write(dir.join(format!("s{i:04}")), content).unwrap();
    }
    peer.pk(&["vaults", "create", vault]).ok();
    peer.pk(&["secrets", "dir", dir.to_str().unwrap(), vault])
        .ok();
}

#[test]
fn a_clone_interrupted_by_killing_the_server_resumes() {
    let w = World::new();
    let [mut server, client] = peers(&w, ["server", "client"]);
    fill(&server, "big", 32, 1 << 20);
    let relay = Relay::start(server.addr.parse().unwrap());
    client.add_at(&server, &relay.addr().to_string());
    server.add(&client);
    server.pk(&["vaults", "share", "big", &client.id]).ok();

    let clone = w_command(&w, &client, &["vaults", "clone", "big", &server.id]);
    wait_for("part of the transfer", Duration::from_secs(60), || {
        relay.stats().to_client_bytes > 8 << 20
    });
    server.crash();
    let port = server.port();
    server.start(Some(port));
    relay.retarget(server.addr.parse().unwrap());
    let first = clone.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    assert_eq!(client.json(&["vaults", "list"]), serde_json::json!([]));

    let before = relay.stats().to_client_bytes;
    let resumed = client.json(&["vaults", "clone", "big", &server.id]);
    let sent_again = relay.stats().to_client_bytes - before;
    assert_eq!(resumed["result"], "cloned");
    assert!(resumed["resumed"].as_u64().unwrap() > 0, "{resumed}");
    assert!(
        sent_again < 28 << 20,
        "the resumed clone re-sent what had arrived: {sent_again} bytes"
    );
    for i in [0usize, 15, 31] {
        let name = format!("big:s{i:04}");
        let got = client.pk(&["secrets", "stat", &name]).ok();
        assert!(got.contains("1048576"), "{name}: {got}");
    }
    let a = server.pk(&["secrets", "cat", "big:s0031"]).ok();
    assert_eq!(client.pk(&["secrets", "cat", "big:s0031"]).ok(), a);
}

fn w_command(w: &World, peer: &Peer<'_>, args: &[&str]) -> std::process::Child {
    let _ = w;
    std::process::Command::new(crate::harness::pk())
        .arg("--node-path")
        .arg(&peer.path)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_clone_completes_under_30_percent_loss_and_200_ms_rtt() {
    let w = World::new();
    let [server, client] = peers(&w, ["server", "client"]);
    fill(&server, "lossy", 20, 2048);
    let relay = Relay::start(server.addr.parse().unwrap());
    relay.set_loss(0.3);
    relay.set_delay(Duration::from_millis(100));
    client.add_at(&server, &relay.addr().to_string());
    server.add(&client);
    server.pk(&["vaults", "share", "lossy", &client.id]).ok();
    let cloned = client.json(&["vaults", "clone", "lossy", &server.id]);
    assert_eq!(cloned["result"], "cloned");
    assert!(relay.stats().dropped > 0, "the relay dropped nothing");
    assert_eq!(
        client.pk(&["secrets", "cat", "lossy:s0019"]).ok(),
        server.pk(&["secrets", "cat", "lossy:s0019"]).ok()
    );
}

#[test]
fn undelivered_notifications_are_retried_until_the_peer_is_back() {
    let w = World::new();
    let [sender, mut receiver] = peers(&w, ["sender", "receiver"]);
    sender.add(&receiver);
    receiver.add(&sender);
    let port = receiver.port();
    receiver.pk(&["agent", "stop"]).ok();
    receiver.agent = None;

    let queued = sender
        .pk(&[
            "notifications",
            "send",
            &receiver.id,
            "the backup disk is full",
        ])
        .ok();
    assert!(queued.contains("will be retried"), "{queued}");
    let outbox = sender.pk(&["notifications", "outbox", "read"]).ok();
    assert!(outbox.contains("pending after 1 attempt"), "{outbox}");

    receiver.start(Some(port));
    wait_for("the retry", Duration::from_secs(40), || {
        sender
            .pk(&["notifications", "outbox", "read"])
            .ok()
            .contains("[delivered]")
    });
    let inbox = receiver
        .pk(&["notifications", "inbox", "read", "--unread"])
        .ok();
    assert!(inbox.contains("the backup disk is full"), "{inbox}");
    let again = receiver
        .pk(&["notifications", "inbox", "read", "--unread"])
        .ok();
    assert_eq!(again, "", "read marks them read");
    receiver.pk(&["notifications", "inbox", "clear"]).ok();
    assert_eq!(receiver.pk(&["notifications", "inbox", "read"]).ok(), "");
}

#[test]
fn a_backup_node_pulls_on_schedule() {
    let w = World::new();
    let [laptop, backup] = peers(&w, ["laptop", "backup"]);
    laptop.add(&backup);
    // The backup node pairs with the pairing address the appliance's console shows.
    backup
        .pk(&["nodes", "add", &laptop.id])
        .fails(64, "pk://NODEID@HOST:PORT");
    backup
        .pk(&[
            "nodes",
            "add",
            &format!("pk://{}@{}", laptop.id, laptop.addr),
        ])
        .ok();
    laptop.vault_with("home", &[("wifi", "pa55")]);
    laptop.back_up_to(&backup, "home", "home:wifi", Duration::from_secs(20));
    laptop.write("home:alarm", "1234");
    wait_for("the next scheduled pull", Duration::from_secs(30), || {
        backup.pk(&["secrets", "cat", "home:alarm"]).code == 0
    });
    let list = backup.pk(&["vaults", "backup", "list"]).ok();
    assert!(list.contains("ok at"), "{list}");
    let vaults = backup.pk(&["vaults", "list"]).ok();
    assert!(vaults.contains("last pull ok"), "{vaults}");
}

/// Whether this process runs in a network namespace that holds only loopback.
fn in_loopback_namespace() -> bool {
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    interfaces == ["lo"]
}

/// mDNS runs only inside a network namespace of our own that holds just loopback: this
/// test re-executes itself there (`unshare -n`), so nothing is multicast on a real
/// interface.
#[test]
fn nodes_advertised_on_the_lan_are_discovered() {
    const NAME: &str = "peers::nodes_advertised_on_the_lan_are_discovered";
    if std::env::var_os("PK_LAN_NETNS").is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("unshare")
            .args([
                "-n",
                "sh",
                "-c",
                "ip link set lo up && ip link set lo multicast on && exec \"$0\" \"$@\"",
            ])
            .arg(&exe)
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env("PK_LAN_NETNS", "1")
            .output()
            .expect("run unshare (util-linux)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the test inside `unshare -n` failed (it needs root for a network namespace):\n{stdout}\n{stderr}"
        );
        return;
    }
    assert!(
        in_loopback_namespace(),
        "PK_LAN_NETNS is set but this is not a loopback-only network namespace"
    );
    let w = World::new();
    let seen = Peer::with_agent_args(&w, "seen", &["--lan=loopback"]);
    let looking = Peer::with_agent_args(&w, "looking", &["--lan=loopback"]);
    let hidden = Peer::new(&w, "hidden");
    let found = looking.json(&["nodes", "discover", "--lan", "--wait", "3s"]);
    let list = found.as_array().unwrap();
    let entry = list
        .iter()
        .find(|f| f["node_id"] == seen.id.as_str())
        .unwrap_or_else(|| panic!("{} not found: {found}", seen.id));
    let port = seen.port().to_string();
    assert!(
        entry["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().ends_with(&format!(":{port}"))),
        "{entry}"
    );
    assert!(
        list.iter().all(|f| f["node_id"] != hidden.id.as_str()),
        "a node without --lan is not advertised: {found}"
    );
    assert!(
        list.iter().all(|f| f["node_id"] != looking.id.as_str()),
        "a node does not list itself: {found}"
    );
    // Discovery is a hint: adding the node still proves its NodeId.
    let addr = entry["addrs"][0].as_str().unwrap();
    let (host, port) = addr.rsplit_once(':').unwrap();
    looking.pk(&["nodes", "add", &seen.id, host, port]).ok();
}

#[test]
fn a_peer_restarted_after_a_crash_is_reached_on_the_first_try() {
    let w = World::new();
    let [caller, mut callee] = peers(&w, ["caller", "callee"]);
    caller.add(&callee);
    caller.pk(&["nodes", "ping", &callee.id]).ok();
    let port = callee.port();
    callee.crash();
    callee.start(Some(port));
    // The pooled connection is dead; the call dials afresh instead of failing.
    caller.pk(&["nodes", "ping", &callee.id]).ok();
    let seen = caller.json(&["nodes", "getall"]);
    assert!(seen[0]["last_seen"].is_u64(), "{seen}");
}
