//! The agent, keys, vaults, secrets and audit through the real `pk` binary.

use std::path::{Path, PathBuf};

use crate::harness::{CHEAP_ARGON2, World};

const PASS: &str = "correct horse battery staple";

/// A node with a running, unlocked agent: a soft keyslot (cheap Argon2id), or a PIN-less
/// TPM keyslot on its own swtpm.
struct Node {
    // Fields drop in order: the agent must go before its directory and its TPM.
    _agent: crate::harness::AgentGuard,
    _tpm: Option<hsm_core::sim::Swtpm>,
    w: World,
    node: PathBuf,
    pass: PathBuf,
}

/// Runs a test body once with each kind of node.
macro_rules! with_soft_and_tpm {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn soft() {
                super::$name(super::Node::soft());
            }

            #[test]
            fn tpm() {
                super::$name(super::Node::tpm());
            }
        }
    )*};
}

with_soft_and_tpm!(
    keys_and_audit,
    vaults_history_and_versions,
    secrets_commands,
    secrets_env,
    raw_database_holds_no_plaintext
);

impl Node {
    fn tpm() -> Node {
        let w = World::new();
        let tpm = w.swtpm("tpm");
        let node = w.path("node");
        let pass = w.secret_file("pass", PASS);
        let tcti = tpm.tcti();
        w.pk(&node, &["--tcti", &tcti, "init", "--token", "tpm"])
            .ok();
        let agent = w.agent(&node, &["--tcti", &tcti]);
        Node {
            w,
            node,
            pass,
            _agent: agent,
            _tpm: Some(tpm),
        }
    }

    fn soft() -> Node {
        let w = World::new();
        let (node, pass) = w.soft_node(PASS);
        let agent = w.agent(&node, &["--password-file", pass.to_str().unwrap()]);
        Node {
            w,
            node,
            pass,
            _agent: agent,
            _tpm: None,
        }
    }

    fn pk(&self, args: &[&str]) -> crate::harness::Run {
        self.w.pk(&self.node, args)
    }

    fn pk_env(&self, args: &[&str], env: &[(&str, &str)]) -> crate::harness::Run {
        self.w.pk_env(&self.node, args, env)
    }

    fn stdin(&self, args: &[&str], input: &[u8]) -> crate::harness::Run {
        self.w.pk_stdin(&self.node, args, input)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.pk(&all).ok()).expect("JSON output")
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.w.path(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The identity and the audit log behave the same whatever token unlocked the node.
fn keys_and_audit(n: Node) {
    let id = n.pk(&["keys", "public"]).ok().trim().to_owned();
    let doc = n.file("doc", b"signed text");
    let sig = n.pk(&["keys", "sign", s(&doc)]).ok().trim().to_owned();
    n.pk(&["keys", "verify", s(&doc), &sig, "--node-id", &id])
        .ok();
    let enc = n.pk(&["keys", "encrypt", s(&doc), &id]).ok();
    let enc = n.file("enc", enc.as_bytes());
    assert_eq!(n.pk(&["keys", "decrypt", s(&enc)]).ok(), "signed text");
    let events = n.pk(&["audit", "--event", "keys"]).ok();
    assert!(
        events.contains("keys.signed") && events.contains("keys.decrypted"),
        "{events}"
    );
    assert!(
        n.pk(&["audit", "--event", "agent.unlocked"])
            .ok()
            .contains("slot=0")
    );
}

#[test]
fn agent_lifecycle_and_keys() {
    let n = Node::soft();
    let status = n.json(&["agent", "status"]);
    assert_eq!(status["state"], "unlocked");
    let id = n.pk(&["keys", "public"]).ok().trim().to_owned();
    assert_eq!(id.len(), 53);
    assert!(id.starts_with('v'));
    assert_eq!(status["node_id"], id.as_str());

    // Sign and verify; a changed file does not verify.
    let doc = n.file("doc", b"the contract");
    let sig = n.pk(&["keys", "sign", s(&doc)]).ok().trim().to_owned();
    n.pk(&["keys", "verify", s(&doc), &sig]).ok();
    n.pk(&["keys", "verify", s(&doc), &sig, "--node-id", &id])
        .ok();
    let changed = n.file("changed", b"the contract!");
    n.pk(&["keys", "verify", s(&changed), &sig])
        .fails(77, "does not verify");
    n.pk(&["keys", "verify", s(&doc), "not-base64!"])
        .fails(64, "not base64");

    // Encrypt to ourselves and back; garbage does not decrypt.
    let enc = n.pk(&["keys", "encrypt", s(&doc), &id]).ok();
    let enc_file = n.file("enc", enc.as_bytes());
    assert_eq!(
        n.pk(&["keys", "decrypt", s(&enc_file)]).ok(),
        "the contract"
    );
    let bad = n.file("bad", b"AAAA");
    n.pk(&["keys", "decrypt", s(&bad)])
        .fails(64, "cannot decrypt");
    n.pk(&["keys", "encrypt", s(&doc), "vnotanodeid"])
        .fails(64, "not a NodeId");

    // Files over what one message carries are refused up front, clearly.
    let big = n.file("big", &vec![7u8; 2 << 20]);
    n.pk(&["keys", "sign", s(&big)])
        .fails(64, "keys commands take files up to");

    // The node's files are this user's alone.
    for file in [
        "db.redb",
        "agent.json",
        "agent.log",
        "agent.sock",
        "keyslots",
    ] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(n.node.join(file)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{file} is mode {mode:o}");
    }

    // Unlocking an unlocked agent says so and checks nothing.
    let r = n.pk_env(&["agent", "unlock"], &[("PK_PASSWORD", "anything at all")]);
    assert!(r.stderr.contains("already unlocked"), "{}", r.stderr);

    // Lock: keys gone, commands refused with the locked exit code; unlock restores.
    n.pk(&["agent", "lock"]).ok();
    assert_eq!(n.json(&["agent", "status"])["state"], "locked");
    n.pk(&["keys", "public"]).fails(75, "locked");
    n.pk(&["agent", "unlock"]).fails(64, "passphrase");
    n.pk_env(
        &["agent", "unlock"],
        &[("PK_PASSWORD", "wrong passphrase!")],
    )
    .fails(77, "wrong passphrase");
    n.pk(&["agent", "unlock", "--password-file", s(&n.pass)])
        .ok();
    assert_eq!(n.pk(&["keys", "public"]).ok().trim(), id);

    // Stop: status says so with the unavailable code; commands say no agent runs.
    n.pk(&["agent", "stop"]).ok();
    n.pk(&["agent", "status"]).fails(69, "no agent is running");
    n.pk(&["vaults", "list"]).fails(69, "pk agent start");
    assert!(!n.node.join("agent.sock").exists());
    assert!(!n.node.join("agent.json").exists());

    // Start in the foreground too: it serves until stopped.
    let mut fg = std::process::Command::new(crate::harness::pk())
        .args(["--node-path", s(&n.node), "agent", "start", "--foreground"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if n.pk(&["agent", "status"]).code == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(n.json(&["agent", "status"])["state"], "locked");
    n.pk(&["agent", "stop"]).ok();
    assert!(fg.wait().unwrap().success());

    // The audit log recorded unlocks, the lock and the failed attempt. Started with the
    // passphrase in the environment, the agent does not keep it in its own.
    n.pk_env(&["agent", "start"], &[("PK_PASSWORD", PASS)]).ok();
    let pid = crate::harness::agent_pid(&n.node).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !environ.windows(PASS.len()).any(|w| w == PASS.as_bytes()),
        "the agent's environment holds the passphrase"
    );
    let audit = n.pk(&["audit", "--event", "agent"]).ok();
    for event in ["agent.unlocked", "agent.locked", "agent.unlock_failed"] {
        assert!(audit.contains(event), "{event} missing from:\n{audit}");
    }
    assert!(!audit.contains("wrong passphrase!"));
}

fn vaults_history_and_versions(n: Node) {
    n.pk(&["vaults", "create", "work"]).ok();
    n.pk(&["vaults", "create", "work"])
        .fails(73, "already exists");
    n.pk(&["vaults", "create", "bad/name"])
        .fails(64, "invalid vault name");
    n.pk(&["vaults", "create", ""])
        .fails(64, "invalid vault name");

    n.stdin(&["secrets", "write", "work:db/password"], b"one")
        .ok();
    n.stdin(&["secrets", "write", "work:db/password"], b"two")
        .ok();
    let log = n.json(&["vaults", "log", "work"]);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 3, "create + two writes");
    let first_write = log[1]["oid"].as_str().unwrap().to_owned();
    let newest = log[0]["oid"].as_str().unwrap().to_owned();
    assert_eq!(
        n.json(&["vaults", "log", "work", "--depth", "1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let from = n.json(&["vaults", "log", "work", "--commit-id", &first_write]);
    assert_eq!(from[0]["oid"], first_write.as_str());

    // Check out the first write; read the old value; write there.
    n.pk(&["vaults", "version", "work", &first_write[..10]])
        .ok();
    assert_eq!(n.pk(&["secrets", "cat", "work:db/password"]).ok(), "one");
    n.stdin(&["secrets", "write", "work:other"], b"three").ok();
    let log = n.json(&["vaults", "log", "work"]);
    assert_eq!(log[0]["parents"][0], first_write.as_str());
    // The newer history was not discarded: it can be checked out again.
    n.pk(&["vaults", "version", "work", &newest]).ok();
    assert_eq!(n.pk(&["secrets", "cat", "work:db/password"]).ok(), "two");
    n.pk(&["vaults", "version", "work", "last"]).ok();
    assert_eq!(n.pk(&["secrets", "cat", "work:other"]).ok(), "three");
    n.pk(&["vaults", "version", "work", "deadbeef"])
        .fails(66, "no commit");
    n.pk(&["vaults", "version", "work", "zz"])
        .fails(64, "not a commit id");

    n.pk(&["vaults", "rename", "work", "job"]).ok();
    n.pk(&["secrets", "cat", "work:other"])
        .fails(66, "no vault named");
    let list = n.json(&["vaults", "list"]);
    assert_eq!(list[0]["name"], "job");

    // Export as a plain directory.
    let out = n.w.path("export");
    n.pk(&["vaults", "export", "job", s(&out)]).ok();
    assert_eq!(std::fs::read(out.join("db/password")).unwrap(), b"one");
    assert_eq!(std::fs::read(out.join("other")).unwrap(), b"three");
    n.pk(&["vaults", "export", "job", s(&out)])
        .fails(73, "already exists");
    n.pk(&["vaults", "export", "job", s(&out.join("other")), "--bundle"])
        .fails(73, "already exists");

    n.pk(&["vaults", "delete", "job"]).ok();
    n.pk(&["vaults", "delete", "job"])
        .fails(66, "no vault named");
    assert_eq!(n.json(&["vaults", "list"]), serde_json::json!([]));
}

fn secrets_commands(n: Node) {
    n.pk(&["vaults", "create", "v"]).ok();
    let file = n.file("in", b"from a file");
    n.pk(&["secrets", "create", s(&file), "v:a/b/c"]).ok();
    n.stdin(&["secrets", "write", "v:top"], b"from stdin").ok();
    assert_eq!(
        n.pk(&["secrets", "cat", "v:a/b/c", "v:top"]).ok(),
        "from a filefrom stdin"
    );
    // A pipe has no size until it ends: created from one, the secret is whole.
    let piped = n.stdin(
        &["secrets", "create", "/dev/stdin", "v:piped"],
        b"through a pipe",
    );
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert_eq!(n.pk(&["secrets", "cat", "v:piped"]).ok(), "through a pipe");
    n.pk(&["secrets", "rm", "v:piped"]).ok();
    n.pk(&["secrets", "touch", "v:t/"])
        .fails(64, "cannot end in '/'");

    // Binary content survives byte for byte.
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    n.stdin(&["secrets", "write", "v:bin"], &binary).ok();
    let out = std::process::Command::new(crate::harness::pk())
        .args(["--node-path", s(&n.node), "secrets", "cat", "v:bin"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, binary);
    // In JSON, text stays text and binary becomes base64.
    let lines = n
        .pk(&["--format", "json", "secrets", "cat", "v:top", "v:bin"])
        .ok();
    let lines: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["content"], "from stdin");
    assert_eq!(lines[0]["secret_path"], "v:top");
    assert!(lines[1]["content_base64"].is_string());

    assert_eq!(n.pk(&["secrets", "ls", "v"]).ok(), "a/\nbin\ntop\n");
    assert_eq!(n.pk(&["secrets", "ls", "v:a/b"]).ok(), "c\n");
    n.pk(&["secrets", "ls", "v:top"])
        .fails(64, "not a directory");
    n.pk(&["secrets", "ls", "v:nope"]).fails(66, "no such");

    n.pk(&["secrets", "mkdir", "v:x/y"]).fails(66, "no such");
    n.pk(&["secrets", "mkdir", "-p", "v:x/y", "v:z"]).ok();
    n.pk(&["secrets", "mkdir", "v:z"])
        .fails(73, "already exists");
    let commits = n.json(&["vaults", "log", "v"]).as_array().unwrap().len();
    n.pk(&["secrets", "mkdir", "-p", "v:z"]).ok();
    assert_eq!(
        n.json(&["vaults", "log", "v"]).as_array().unwrap().len(),
        commits,
        "mkdir -p of an existing directory changes nothing"
    );
    assert_eq!(n.pk(&["secrets", "ls", "v:x"]).ok(), "y/\n");

    let stat = n.json(&["secrets", "stat", "v:a/b/c"]);
    assert_eq!(stat["kind"], "file");
    assert_eq!(stat["size"], 11);
    assert_eq!(n.json(&["secrets", "stat", "v:a"])["kind"], "dir");

    n.pk(&["secrets", "touch", "v:empty"]).ok();
    assert_eq!(n.pk(&["secrets", "cat", "v:empty"]).ok(), "");
    let before = n.json(&["vaults", "log", "v"]).as_array().unwrap().len();
    n.pk(&["secrets", "touch", "v:top"]).ok();
    assert_eq!(n.pk(&["secrets", "cat", "v:top"]).ok(), "from stdin");
    assert_eq!(
        n.json(&["vaults", "log", "v"]).as_array().unwrap().len(),
        before
    );

    n.pk(&["secrets", "rename", "v:a/b/c", "d"]).ok();
    assert_eq!(n.pk(&["secrets", "cat", "v:a/b/d"]).ok(), "from a file");
    n.pk(&["secrets", "rename", "v:a/b/d", "v:moved/here"]).ok();
    assert_eq!(
        n.pk(&["secrets", "cat", "v:moved/here"]).ok(),
        "from a file"
    );
    n.pk(&["secrets", "rename", "v:moved", "v:moved/inside"])
        .fails(64, "into itself");
    n.pk(&["secrets", "rename", "v:top", "v:bin"])
        .fails(73, "already exists");

    n.pk(&["secrets", "rm", "v:x"]).fails(64, "not empty");
    n.pk(&["secrets", "rm", "-r", "v:x", "v:empty"]).ok();
    n.pk(&["secrets", "cat", "v:empty"]).fails(66, "no such");
    n.pk(&["secrets", "rm", "v:x"]).fails(66, "no such");

    // Edit through $EDITOR: the change is saved; the temporary copy is gone.
    let editor = n.file(
        "editor.sh",
        b"#!/bin/sh\necho \"$1\" > \"$1.where\"; printf 'edited' > \"$1\"\n",
    );
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&editor).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let runtime = n.w.path("runtime");
    std::fs::create_dir(&runtime).unwrap();
    n.pk_env(
        &["secrets", "edit", "v:top"],
        &[("EDITOR", s(&editor)), ("XDG_RUNTIME_DIR", s(&runtime))],
    )
    .ok();
    assert_eq!(n.pk(&["secrets", "cat", "v:top"]).ok(), "edited");
    let leftovers: Vec<_> = std::fs::read_dir(&runtime).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "edit left files behind: {leftovers:?}"
    );

    // Import a local directory.
    let dir = n.w.path("import");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("one"), "1").unwrap();
    std::fs::write(dir.join("sub/two"), "2").unwrap();
    n.pk(&["secrets", "dir", s(&dir), "v:imported"]).ok();
    assert_eq!(n.pk(&["secrets", "cat", "v:imported/sub/two"]).ok(), "2");

    // Bad paths: refused with a clear message, nothing changes.
    let log_before = n.json(&["vaults", "log", "v"]);
    for bad in ["v:../x", "v:/abs", "v:a//b", "v:", "v:a/./b", "nocolon"] {
        let r = n.stdin(&["secrets", "write", bad], b"x");
        assert!(r.code == 64, "{bad}: exit {} {}", r.code, r.stderr);
    }
    assert_eq!(n.json(&["vaults", "log", "v"]), log_before);
    n.pk(&["secrets", "cat", "nosuchvault:x"])
        .fails(66, "no vault named");
}

fn secrets_env(n: Node) {
    n.pk(&["vaults", "create", "v"]).ok();
    n.stdin(&["secrets", "write", "v:env/DB_PASSWORD"], b"it's secret")
        .ok();
    n.stdin(&["secrets", "write", "v:env/API_KEY"], b"k1").ok();
    n.stdin(&["secrets", "write", "v:other/API_KEY"], b"k2")
        .ok();
    n.stdin(&["secrets", "write", "v:bad-name"], b"x").ok();

    let unix = n.pk(&["secrets", "env", "v:env"]).ok();
    assert_eq!(
        unix,
        "export API_KEY='k1'\nexport DB_PASSWORD='it'\\''s secret'\n"
    );
    let json = n
        .pk(&["secrets", "env", "v:env", "--env-format", "json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["DB_PASSWORD"], "it's secret");
    assert_eq!(
        n.pk(&["secrets", "env", "--env-format", "cmd", "v:env/API_KEY"])
            .ok(),
        "set \"API_KEY=k1\"\n"
    );
    assert_eq!(
        n.pk(&[
            "secrets",
            "env",
            "--env-format",
            "powershell",
            "v:env/DB_PASSWORD"
        ])
        .ok(),
        "$env:DB_PASSWORD = 'it''s secret'\n"
    );
    assert_eq!(
        n.pk(&["secrets", "env", "v:env/API_KEY=TOKEN"]).ok(),
        "export TOKEN='k1'\n"
    );

    // A bare vault name means the whole vault.
    n.pk(&["secrets", "env", "--env-invalid", "ignore", "v"])
        .ok();
    // cmd cannot carry quotes; % is doubled.
    n.stdin(&["secrets", "write", "v:q/QUOTED"], b"a\"b").ok();
    n.pk(&["secrets", "env", "--env-format", "cmd", "v:q"])
        .fails(64, "cmd cannot take");

    // Invalid names: error by default, warn or ignore on request.
    n.pk(&["secrets", "env", "v:bad-name"])
        .fails(64, "not a valid environment variable name");
    let r = n.pk(&[
        "secrets",
        "env",
        "--env-invalid",
        "warn",
        "v:bad-name",
        "v:env/API_KEY",
    ]);
    assert!(r.stderr.contains("skipping"), "{}", r.stderr);
    assert_eq!(r.ok(), "export API_KEY='k1'\n");
    // Duplicates: overwrite by default, keep, warn or error on request.
    assert_eq!(
        n.pk(&["secrets", "env", "v:env/API_KEY", "v:other/API_KEY"])
            .ok(),
        "export API_KEY='k2'\n"
    );
    assert_eq!(
        n.pk(&[
            "secrets",
            "env",
            "--env-duplicate",
            "keep",
            "v:env/API_KEY",
            "v:other/API_KEY"
        ])
        .ok(),
        "export API_KEY='k1'\n"
    );
    n.pk(&[
        "secrets",
        "env",
        "--env-duplicate",
        "error",
        "v:env/API_KEY",
        "v:other/API_KEY",
    ])
    .fails(64, "more than one secret");

    // Run a command with the secrets in its environment.
    let out = n
        .pk(&[
            "secrets",
            "env",
            "v:env",
            "--",
            "sh",
            "-c",
            "printf '%s|%s' \"$API_KEY\" \"$DB_PASSWORD\"",
        ])
        .ok();
    assert_eq!(out, "k1|it's secret");
}

#[test]
fn audit_log_records_and_filters() {
    let n = Node::soft();
    n.pk(&["vaults", "create", "v"]).ok();
    n.stdin(&["secrets", "write", "v:s"], b"value-never-logged")
        .ok();
    n.pk(&["secrets", "cat", "v:s"]).ok();
    n.pk(&["vaults", "rename", "v", "w"]).ok();
    let all = n.pk(&["--format", "json", "audit"]).ok();
    let events: Vec<serde_json::Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for k in [
        "agent.unlocked",
        "vault.created",
        "secret.written",
        "secret.revealed",
        "vault.renamed",
    ] {
        assert!(kinds.contains(&k), "{k} not in {kinds:?}");
    }
    assert!(!all.contains("value-never-logged"));
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ascending by default");

    let newest = n
        .pk(&[
            "--format", "json", "audit", "--order", "desc", "--limit", "1",
        ])
        .ok();
    let newest: serde_json::Value = serde_json::from_str(newest.trim()).unwrap();
    assert_eq!(newest["event"], "vault.renamed");
    assert_eq!(n.pk(&["audit", "--limit", "0"]).ok(), "");
    let only = n
        .pk(&["--format", "json", "audit", "-e", "secret.revealed"])
        .ok();
    assert_eq!(only.lines().count(), 1);
    assert!(only.contains("\"path\":\"s\""));

    // Keyslot changes made by `pk keyslots` (without the agent's help) are recorded too:
    // through the running agent, or directly when none runs.
    let second = n.file("second", b"a second passphrase");
    let mut enroll = vec![
        "keyslots",
        "enroll",
        "--token",
        "soft",
        "--password-file",
        s(&n.pass),
        "--password-new-file",
        s(&second),
    ];
    enroll.extend(CHEAP_ARGON2);
    n.pk(&enroll).ok();
    n.pk(&[
        "keyslots",
        "remove",
        "2",
        "--unlock-slot",
        "0",
        "--password-file",
        s(&n.pass),
    ])
    .ok();
    n.pk(&["agent", "stop"]).ok();
    n.pk(&enroll).ok();
    n.pk(&["agent", "start", "--password-file", s(&n.pass)])
        .ok();
    let keyslot_events = n.pk(&["audit", "-e", "keyslot"]).ok();
    let lines: Vec<&str> = keyslot_events.lines().collect();
    assert_eq!(
        lines.len(),
        5,
        "2 at init, enrolled, removed, enrolled:\n{keyslot_events}"
    );
    assert!(lines[2].contains("keyslot.enrolled") && lines[2].contains("slot=2"));
    assert!(lines[3].contains("keyslot.removed") && lines[3].contains("slot=2"));
    assert!(lines[4].contains("keyslot.enrolled") && lines[4].contains("slot=3"));

    // --follow prints new events as they happen.
    let follow = std::process::Command::new(crate::harness::pk())
        .args([
            "--node-path",
            s(&n.node),
            "--format",
            "json",
            "audit",
            "--follow",
            "-e",
            "vault.deleted",
            "--limit",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    n.pk(&["vaults", "delete", "w"]).ok();
    let out = follow.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("vault.deleted"));
}

fn raw_database_holds_no_plaintext(n: Node) {
    n.pk(&["vaults", "create", "planted-vault-name"]).ok();
    n.stdin(
        &[
            "secrets",
            "write",
            "planted-vault-name:planted-dir/planted-secret-path",
        ],
        b"planted-secret-value",
    )
    .ok();
    n.pk(&[
        "secrets",
        "cat",
        "planted-vault-name:planted-dir/planted-secret-path",
    ])
    .ok();
    n.pk(&["agent", "stop"]).ok();
    let mut raw = std::fs::read(n.node.join("db.redb")).unwrap();
    raw.extend(std::fs::read(n.node.join("keyslots")).unwrap());
    for needle in [
        "planted-secret-value",
        "planted-vault-name",
        "planted-secret-path",
        "planted-dir",
    ] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} found in the node's files"
        );
    }
    // Nothing else in the node directory holds it either (the log, the status file).
    for entry in std::fs::read_dir(&n.node).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        assert!(!bytes.windows(20).any(|w| w == b"planted-secret-value"));
    }
}

#[test]
fn tpm_agent_unlocks_unattended() {
    let w = World::new();
    let (_tpm, node, tcti, code) = w.tpm_node("tpm");
    let code = w.secret_file("code", &code);
    let _agent = w.agent(&node, &["--tcti", &tcti]);
    let status: serde_json::Value =
        serde_json::from_str(&w.pk(&node, &["--format", "json", "agent", "status"]).ok()).unwrap();
    assert_eq!(
        status["state"], "unlocked",
        "a PIN-less TPM slot unlocks at start"
    );
    w.pk(&node, &["vaults", "create", "v"]).ok();
    w.pk_stdin(&node, &["secrets", "write", "v:s"], b"sealed by the TPM")
        .ok();
    assert_eq!(
        w.pk(&node, &["secrets", "cat", "v:s"]).ok(),
        "sealed by the TPM"
    );

    // Lock, then unlock with the recovery code instead of the TPM.
    w.pk(&node, &["agent", "lock"]).ok();
    w.pk(
        &node,
        &["agent", "unlock", "--recovery-code-file", s(&code)],
    )
    .ok();
    assert_eq!(
        w.pk(&node, &["secrets", "cat", "v:s"]).ok(),
        "sealed by the TPM"
    );
    w.pk(&node, &["agent", "stop"]).ok();
}

#[test]
fn failed_unlock_is_audited_even_across_a_stop() {
    let n = Node::soft();
    n.pk(&["agent", "lock"]).ok();
    n.pk_env(
        &["agent", "unlock"],
        &[("PK_PASSWORD", "not the passphrase")],
    )
    .fails(77, "wrong passphrase");
    // Stopped while still locked: the event cannot be in the encrypted log yet...
    n.pk(&["agent", "stop"]).ok();
    n.pk(&["agent", "start", "--password-file", s(&n.pass)])
        .ok();
    // ...and is written at the next unlock, once.
    let failed = n.pk(&["audit", "-e", "agent.unlock_failed"]).ok();
    assert_eq!(failed.lines().count(), 1, "{failed}");
    assert!(!failed.contains("not the passphrase"));
    n.pk(&["agent", "lock"]).ok();
    n.pk(&["agent", "unlock", "--password-file", s(&n.pass)])
        .ok();
    assert_eq!(
        n.pk(&["audit", "-e", "agent.unlock_failed"])
            .ok()
            .lines()
            .count(),
        1
    );
}
