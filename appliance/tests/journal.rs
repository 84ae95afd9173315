//! The appliance's log as an operator reads it: the real `pk-appliance` with its own
//! logging, which writes to the journal under systemd and to standard error elsewhere
//! (here, read by the test). An unlock, a refused peer call and a failed scheduled pull
//! must each reach it as one line with its fields, and no secret may.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::io::BufRead as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use node::api::{agent, backups, nodes};
use node::identity::Identity;
use node::peer::{PeerRequest, unary};

mod common;

const PASSPHRASE: &str = "an appliance passphrase 7731";

/// The daemon, killed and reaped on drop; `log` is its standard error so far.
struct Appliance {
    child: std::process::Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Appliance {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a line has every needle (the log is written as things happen); the
    /// line, or a failure naming the needles and showing the log.
    async fn line_with(&self, needles: &[&str]) -> String {
        for _ in 0..300 {
            if let Some(line) = self
                .log()
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
            {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no log line has all of {needles:?}:\n{}", self.log());
    }
}

/// A node as `pk init --token soft` leaves one, then the appliance on it with a peer
/// endpoint on loopback.
fn start(dir: &std::path::Path) -> Appliance {
    let state = dir.join("state");
    let node = node::NodePath::new(state.join("node"));
    let soft =
        hsm::soft::SoftProtector::new(hsm::Pin::from(PASSPHRASE), hsm::soft::Argon2Params::DEFAULT);
    node::keyslots::Keyslots::init(&node, &soft, "passphrase").unwrap();
    let port = common::free_port();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nconsole_listen = \"127.0.0.1:{port}\"\n\
             peer_listen = \"127.0.0.1:0\"\nlog = \"info\"\n",
            state.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pk-appliance"))
        .arg("--config")
        .arg(&config)
        .env_remove("JOURNAL_STREAM")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut log = kept.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    Appliance { child, log }
}

async fn agent_of(dir: &std::path::Path) -> node::client::Client {
    let client = node::client::Client::new(&node::NodePath::new(dir.join("state/node")));
    for _ in 0..200 {
        if client.call(agent::Status).await.is_ok() {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the appliance's agent did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_a_refused_call_and_a_failed_scheduled_pull_reach_the_appliances_log() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path());
    let agent = agent_of(dir.path()).await;

    // An unlock, as the console's unlock page makes one.
    agent
        .call(agent::Unlock {
            slot: None,
            kind: Some(hsm::Kind::Soft),
            secret: Some(node::api::SecretBytes(PASSPHRASE.as_bytes().to_vec())),
        })
        .await
        .unwrap();
    let status = agent.call(agent::Status).await.unwrap();
    let me = status.node_id.clone().unwrap();
    appliance
        .line_with(&[
            "INFO",
            "event=\"agent.unlocked\"",
            "outcome=\"ok\"",
            "slot=0",
            &me,
        ])
        .await;

    // A node nobody added asks for the vaults shared with it: refused, and the refusal
    // reaches the log with the caller and the call (once the counted refusals are
    // written, which reading the audit log does at once).
    let stranger = Identity::generate();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoint = node::net::Endpoint::from_socket(socket, &stranger, Vec::new()).unwrap();
    let conn = endpoint
        .connect(
            status.peer_addr.clone().unwrap().parse().unwrap(),
            me.parse().unwrap(),
        )
        .await
        .unwrap();
    let answer = unary(&conn, PeerRequest::Scan).await;
    assert!(
        answer.is_err(),
        "a stranger's scan was answered: {answer:?}"
    );
    agent
        .call(agent::Audit(node::audit::AuditQuery::default()))
        .await
        .unwrap();
    appliance
        .line_with(&[
            "event=\"peer.denied\"",
            &format!("peer={}", stranger.node_id()),
            "call=\"scan\"",
            "count=1",
        ])
        .await;

    // A scheduled pull from a node that does not answer fails, and says so.
    let gone = Identity::generate().node_id().to_string();
    agent
        .call(nodes::Add {
            node: gone.clone(),
            addr: "127.0.0.1:9".into(),
            no_notify: true,
            no_ping: true,
        })
        .await
        .unwrap();
    agent
        .call(backups::Add {
            vault: "office".into(),
            node: gone.clone(),
            every_s: 3600,
            name: None,
        })
        .await
        .unwrap();
    let failed = appliance
        .line_with(&["WARN", "scheduled pull failed", "outcome=\"failed\""])
        .await;
    for field in [
        "vault=",
        &format!("peer={gone}"),
        "error=",
        "next_in_s=3600",
    ] {
        assert!(failed.contains(field), "{field} missing from {failed:?}");
    }

    let log = appliance.log();
    assert!(
        !log.contains(PASSPHRASE),
        "the passphrase reached the log:\n{log}"
    );
}
