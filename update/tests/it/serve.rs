//! The socket protocol: the real `pk-update serve` on a socketpair and behind a listening
//! socket (as systemd's `Accept=yes` runs it), and `serve::serve` in process for what the
//! binary cannot do in a test (reboot).

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use pk_update::client::{self, Client, ClientError};
use pk_update::install::{OtherState, Slot, Stage};
use pk_update::protocol::{Command, ErrorKind};
use pk_update::serve::{Outcome, Server, serve};

use crate::common::{Machine, Parts, v};

/// `pk-update serve` with `conn` as its standard input and output.
fn spawn_serve(m: &Machine, conn: UnixStream) -> Child {
    let out = conn.try_clone().expect("a second handle");
    m.pk_update()
        .arg("serve")
        .stdin(Stdio::from(OwnedFd::from(conn)))
        .stdout(Stdio::from(OwnedFd::from(out)))
        .stderr(Stdio::piped())
        .spawn()
        .expect("pk-update serve starts")
}

/// The child's exit code and what it logged.
fn finish(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().expect("pk-update serve ends");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_install_over_a_socketpair_streams_progress_and_installs() {
    let m = Machine::new("1.0.0");
    let parts = Parts::random(2, "1.1.0", 300);
    let bundle = m.bundle(&parts);
    let (ours, theirs) = UnixStream::pair().expect("a socketpair");
    let child = spawn_serve(&m, theirs);
    let mut stages = Vec::new();
    let installed = client::install_on(ours, bundle.as_slice(), false, &mut |p| stages.push(p))
        .expect("installed");
    assert_eq!(installed.slot, Slot::B);
    assert_eq!(installed.version, v("1.1.0"));
    stages.dedup_by_key(|p| p.stage);
    let order: Vec<Stage> = stages.iter().map(|p| p.stage).collect();
    assert_eq!(
        order,
        [Stage::Verify, Stage::Write, Stage::Readback, Stage::Uki]
    );
    let (code, log) = finish(child);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("installed 1.1.0 in slot B"), "{log}");
}

#[test]
fn refusals_reach_the_client_with_a_kind_to_act_on() {
    let m = Machine::new("1.0.0");
    let call = |bundle: &[u8], allow_downgrade: bool| {
        let (ours, theirs) = UnixStream::pair().expect("a socketpair");
        let child = spawn_serve(&m, theirs);
        let result = client::install_on(ours, bundle, allow_downgrade, &mut |_| {});
        let (code, log) = finish(child);
        (result, code, log)
    };
    let parts = Parts::random(2, "1.1.0", 300);
    let foreign = parts.bundle(
        &ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]),
        &m.scratch("foreign"),
    );
    let (result, code, log) = call(&foreign, false);
    let Err(ClientError::Refused { kind, message }) = result else {
        panic!("not refused: {result:?}");
    };
    assert_eq!(kind, ErrorKind::Signature);
    assert!(message.ends_with("(nothing was written)"), "{message}");
    assert_eq!(code, Some(1));
    assert!(log.contains("refused: the bundle's signature"), "{log}");

    let older = m.bundle(&Parts::random(3, "0.9", 300));
    let (result, ..) = call(&older, false);
    assert!(
        matches!(
            result,
            Err(ClientError::Refused {
                kind: ErrorKind::Downgrade,
                ..
            })
        ),
        "{result:?}"
    );
    let (result, code, _) = call(&older, true);
    assert_eq!(result.expect("installed with approval").version, v("0.9"));
    assert_eq!(code, Some(0));

    let good = m.bundle(&parts);
    let (result, ..) = call(&good[..good.len() - 10], false);
    let Err(ClientError::Refused { kind, message }) = result else {
        panic!("not refused: {result:?}");
    };
    // A bad bundle found while writing is the bundle's fault (kind bundle), and the
    // message says what was left.
    assert_eq!(kind, ErrorKind::Bundle);
    assert!(
        message.contains("truncated") && message.contains("left empty"),
        "{message}"
    );
}

#[test]
fn a_listening_socket_serves_status_and_install_one_connection_each() {
    let m = Machine::new("1.0.0");
    let path = m.dir.path().join("pk-update.sock");
    let listener = UnixListener::bind(&path).expect("the socket");
    let parts = Parts::random(2, "1.1.0", 300);
    let bundle = m.bundle(&parts);
    std::thread::scope(|s| {
        // systemd's Accept=yes: one pk-update serve per connection.
        let server = s.spawn(|| {
            let mut logs = Vec::new();
            for _ in 0..3 {
                let (conn, _) = listener.accept().expect("a connection");
                logs.push(finish(spawn_serve(&m, conn)));
            }
            logs
        });
        let client = Client::new(&path);
        let before = client.status().expect("the status");
        assert_eq!(before.running, Slot::A);
        assert_eq!(before.other_state, OtherState::Empty);
        client
            .install(bundle.as_slice(), false, &mut |_| {})
            .expect("installed");
        let after = client.status().expect("the status");
        assert!(
            matches!(after.other_state, OtherState::Installed { ref version, .. } if *version == Some(v("1.1.0"))),
            "{after:?}"
        );
        let logs = server.join().expect("the server");
        assert!(logs.iter().all(|(code, _)| *code == Some(0)), "{logs:?}");
    });
}

#[test]
fn reboot_and_bad_commands_in_process() {
    let m = Machine::new("1.0.0");
    let rebooted = AtomicUsize::new(0);
    let reboot = || {
        rebooted.fetch_add(1, Ordering::SeqCst);
        Ok(())
    };
    let server = Server {
        layout: m.layout.clone(),
        key: m.public,
        reboot: &reboot,
    };
    let run = |input: &[u8]| {
        let mut out = Vec::new();
        let outcome = serve(&server, input, &mut out).expect("answered");
        (outcome, String::from_utf8(out).expect("UTF-8"))
    };
    let (outcome, out) = run(Command::Reboot.line().as_bytes());
    assert!(matches!(outcome, Outcome::Done(_)));
    assert_eq!(out, "{\"ok\":null}\n");
    assert_eq!(rebooted.load(Ordering::SeqCst), 1);

    for bad in [&b"shutdown\n"[..], b"", b"status", &[b'x'; 100], b"\xff\n"] {
        let (outcome, out) = run(bad);
        assert!(matches!(outcome, Outcome::Refused(_)), "{out}");
        let reply: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(reply["error"]["kind"], "protocol", "{out}");
    }
    assert_eq!(rebooted.load(Ordering::SeqCst), 1);

    // The client's reboot, against the in-process server.
    let (ours, theirs) = UnixStream::pair().expect("a socketpair");
    std::thread::scope(|s| {
        s.spawn(|| {
            let input = theirs.try_clone().expect("a handle");
            serve(&server, input, &theirs).expect("answered");
        });
        client::call_on::<()>(ours, Command::Reboot).expect("rebooted");
    });
    assert_eq!(rebooted.load(Ordering::SeqCst), 2);
}
