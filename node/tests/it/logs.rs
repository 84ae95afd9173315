//! The agent's log as an operator reads it (issue 14): a background agent started with
//! `pk agent start --log info` writes its log to `agent.log` in the node directory (its
//! standard error, the journal's input on the appliance). The test provokes what an
//! operator must see there and reads it back, fields included.

use std::time::Duration;

use node::identity::Identity;
use node::peer::{CallStream, FetchRequest, PeerError, PeerRequest, PeerResponse, unary};

use crate::auth_matrix::Caller;
use crate::harness::World;
use crate::peers::{PASS, Peer, denied_count, wait_for};

/// What the laptop's vault holds: must never reach a log.
const SECRET: &str = "wifi-secret-value-8841";
/// A wrong passphrase tried on the backup node: must never reach a log either.
const WRONG: &str = "wrong-passphrase-5573";

fn log_of(peer: &Peer<'_>) -> String {
    std::fs::read_to_string(peer.path.join("agent.log")).unwrap_or_default()
}

/// The one line of `log` that contains every needle; fails naming them otherwise.
#[track_caller]
fn line_with<'l>(log: &'l str, needles: &[&str]) -> &'l str {
    let found: Vec<&str> = log
        .lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .collect();
    assert!(
        !found.is_empty(),
        "no log line has all of {needles:?}:\n{log}"
    );
    found[0]
}

#[test]
fn a_failed_scheduled_pull_a_refused_call_and_an_unlock_are_logged_with_fields() {
    let w = World::new();
    let laptop = Peer::new(&w, "laptop");
    let backup = Peer::with_agent_args(&w, "backup", &["--log", "info"]);

    // The unlock at start, with its slot.
    let log = log_of(&backup);
    line_with(
        &log,
        &[
            "INFO",
            "pk::agent",
            "event=\"agent.started\"",
            &format!("peer_addr=\"{}\"", backup.addr),
        ],
    );
    line_with(
        &log,
        &[
            "INFO",
            "event=\"agent.unlocked\"",
            "outcome=\"ok\"",
            "slot=0",
            &format!("node={}", backup.id),
        ],
    );

    // A failed unlock: the slot and the error, not what was typed.
    backup.pk(&["agent", "lock"]).ok();
    let wrong = w.secret_file("wrong-pass", WRONG);
    backup
        .pk(&[
            "agent",
            "unlock",
            "--password-file",
            wrong.to_str().unwrap(),
        ])
        .fails(77, "wrong passphrase");
    let right = backup.pass.to_str().unwrap().to_owned();
    backup
        .pk(&["agent", "unlock", "--password-file", &right])
        .ok();
    let log = log_of(&backup);
    line_with(&log, &["INFO", "event=\"agent.locked\""]);
    line_with(
        &log,
        &[
            "WARN",
            "event=\"agent.unlock_failed\"",
            "outcome=\"failed\"",
            "slot=0",
            "error=\"keyslot 0: wrong passphrase\"",
        ],
    );
    assert!(
        log.matches("event=\"agent.unlocked\"").count() >= 2,
        "the unlock after the failed one: {log}"
    );

    // A stranger's refused calls: one line for them all, when the aggregated row is
    // written (here: when the audit log is read), with the caller, the call and the count.
    let stranger_key = Identity::generate();
    let stranger_id = stranger_key.node_id().to_string();
    let stranger = Caller::connect(&backup, &stranger_key);
    const CALLS: u64 = 20;
    for _ in 0..CALLS {
        match stranger
            .rt
            .block_on(unary(&stranger.conn, PeerRequest::Scan))
        {
            Err(PeerError::Refused { error, .. }) => {
                assert!(error.message.contains("no scan permission"), "{error:?}")
            }
            other => panic!("a stranger's scan was answered: {other:?}"),
        }
    }
    // A clone of a vault whose name would start a line of the stranger's making.
    let forged = "x\nFORGED INFO pk::agent: agent unlocked event=\"agent.unlocked\"";
    let answer = stranger.rt.block_on(async {
        let mut call = CallStream::open(
            &stranger.conn,
            PeerRequest::Fetch(FetchRequest {
                vault: None,
                name: forged.into(),
                clone: true,
                haves: Vec::new(),
                received: Vec::new(),
            }),
        )
        .await
        .unwrap();
        call.next(Duration::from_secs(30)).await.unwrap()
    });
    assert!(
        matches!(&answer, PeerResponse::Err(e) if e.message.contains("does not know you")),
        "{answer:?}"
    );
    assert_eq!(denied_count(&backup, Some("scan")), CALLS);
    let log = log_of(&backup);
    let refused = line_with(
        &log,
        &[
            "INFO",
            "pk::peer",
            "event=\"peer.denied\"",
            &format!("peer={stranger_id}"),
            "call=\"scan\"",
        ],
    );
    for field in [
        "outcome=\"refused\"",
        &format!("count={CALLS}"),
        "reason=\"you may not list this node's vaults (no scan permission)\"",
    ] {
        assert!(refused.contains(field), "{field} missing: {refused}");
    }
    line_with(
        &log,
        &[
            "event=\"peer.denied\"",
            &format!("peer={stranger_id}"),
            "call=\"clone\"",
            "count=1",
        ],
    );
    assert_eq!(
        log.lines().filter(|l| l.contains(&stranger_id)).count(),
        2,
        "a stranger's calls are logged in aggregate, a line per call name:\n{log}"
    );
    assert!(
        log.lines().all(|l| !l.starts_with("FORGED")),
        "a caller's text started a log line:\n{log}"
    );

    // A scheduled pull that works, then fails once the laptop stops sharing the vault.
    laptop.add(&backup);
    backup.add(&laptop);
    laptop.vault_with("home", &[("wifi", SECRET)]);
    laptop.back_up_to(&backup, "home", "home:wifi", Duration::from_secs(30));
    laptop.pk(&["vaults", "unshare", "home", &backup.id]).ok();
    wait_for(
        "the failed scheduled pull in the log",
        Duration::from_secs(60),
        || {
            log_of(&backup)
                .lines()
                .any(|l| l.contains("WARN") && l.contains("scheduled_pull{"))
        },
    );
    let log = log_of(&backup);
    line_with(
        &log,
        &[
            "INFO",
            "pk::sync",
            "event=\"vault.cloned\"",
            "vault=\"home\"",
            &format!("peer={}", laptop.id),
        ],
    );
    let failed = line_with(&log, &["WARN", "scheduled_pull{"]);
    for field in [
        "pk::sync",
        "vault=\"home\"",
        &format!("peer={}", laptop.id),
        "every_s=10",
        "outcome=\"failed\"",
        "code=Denied",
        "error=",
        "not shared with you for pull",
        "next_in_s=10",
    ] {
        assert!(failed.contains(field), "{field} missing: {failed}");
    }
    // The pull itself, as the audit log names it.
    line_with(
        &log,
        &[
            "event=\"vault.pull_failed\"",
            "outcome=\"failed\"",
            "vault=\"home\"",
            &format!("peer={}", laptop.id),
        ],
    );

    // Nothing secret anywhere in the log: the passphrases (the right one and the wrong
    // one) and the secret's value.
    for secret in [PASS, WRONG, SECRET] {
        assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
    }
}

#[test]
fn a_bad_log_filter_is_a_usage_error_at_start() {
    let w = World::new();
    let (node, pass) = w.soft_node("log-filter-passphrase");
    let pass = pass.to_str().unwrap();
    for args in [
        vec![
            "agent",
            "start",
            "--password-file",
            pass,
            "--log",
            "pk=loud",
        ],
        vec!["agent", "start", "--foreground", "--log", "info,,=x"],
    ] {
        w.pk(&node, &args).fails(64, "is not a log filter");
    }
    w.pk_env(
        &node,
        &["agent", "start", "--foreground"],
        &[("PK_LOG", "")],
    )
    .fails(64, "is not a log filter: it is empty");
    assert!(
        !node.join("agent.sock").exists(),
        "no agent started with a bad filter"
    );
}
