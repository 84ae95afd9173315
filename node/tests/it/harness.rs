//! Running `pk` against per-test simulators.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hsm_core::sim::{SoftHsm, Swtpm};
use tempfile::TempDir;

/// Cheap Argon2id parameters for `soft` keyslots (8 MiB, one pass): tests of everything
/// but Argon2 itself.
pub(crate) const CHEAP_ARGON2: &[&str] = &["--argon2-memory-mib", "8", "--argon2-passes", "1"];

/// `base` followed by `extra`, as one argument list.
pub(crate) fn args<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
}

/// A temporary home for one test: node directories, simulator state, secret files.
pub(crate) struct World {
    pub(crate) dir: TempDir,
    softhsm: Option<SoftHsm>,
}

/// What one `pk` run did.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub(crate) fn ok(self) -> String {
        assert_eq!(self.code, 0, "pk failed: {}", self.stderr);
        self.stdout
    }

    /// Asserts the exit code and that stderr mentions `needle`; returns stderr.
    #[track_caller]
    pub(crate) fn fails(self, code: i32, needle: &str) -> String {
        assert_eq!(
            self.code, code,
            "expected exit {code}; stdout: {} stderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr should mention {needle:?}: {}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "pk panicked: {}",
            self.stderr
        );
        self.stderr
    }
}

impl World {
    pub(crate) fn new() -> World {
        World {
            dir: tempfile::tempdir().expect("temporary directory"),
            softhsm: None,
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a secret to a file (as a user would with `--password-file`).
    pub(crate) fn secret_file(&self, name: &str, value: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, format!("{value}\n")).expect("write secret file");
        path
    }

    /// [`World::secret_file`], as the command-line argument that names it.
    pub(crate) fn secret_arg(&self, name: &str, value: &str) -> String {
        let path = self.secret_file(name, value);
        path.to_str().expect("UTF-8 temporary path").to_owned()
    }

    /// Starts a swtpm with state under this world; killed when dropped.
    pub(crate) fn swtpm(&self, name: &str) -> Swtpm {
        Swtpm::start(&self.path(name)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates a SoftHSM2 token labelled `label` with user PIN `pin` in this world.
    pub(crate) fn softhsm_token(&mut self, label: &str, pin: &str) {
        if self.softhsm.is_none() {
            let softhsm = SoftHsm::create(&self.path("softhsm")).unwrap_or_else(|e| panic!("{e}"));
            self.softhsm = Some(softhsm);
        }
        self.softhsm
            .as_ref()
            .expect("just set")
            .init_token(label, "so-pin-4711", pin)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub(crate) fn softhsm_module(&self) -> PathBuf {
        SoftHsm::module().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `pk --node-path <node> args...` with a clean environment.
    pub(crate) fn pk(&self, node: &Path, args: &[&str]) -> Run {
        self.pk_env(node, args, &[])
    }

    pub(crate) fn pk_env(&self, node: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(node, args, env);
        Run::from(cmd.output().expect("run pk"))
    }

    /// Runs `pk` with `input` on its standard input.
    pub(crate) fn pk_stdin(&self, node: &Path, args: &[&str], input: &[u8]) -> Run {
        use std::io::Write as _;
        let mut child = self
            .command(node, args, &[])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run pk");
        let mut stdin = child.stdin.take().expect("piped");
        // pk may refuse before reading its input (a bad path): that is not our failure.
        if let Err(e) = stdin.write_all(input) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
        drop(stdin);
        Run::from(child.wait_with_output().expect("wait pk"))
    }

    fn command(&self, node: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(pk());
        cmd.arg("--node-path").arg(node).args(args);
        for var in [
            "PK_PASSWORD",
            "PK_PASSWORD_NEW",
            "PK_RECOVERY_CODE",
            "PK_TPM_TCTI",
            "PK_PKCS11_MODULE",
            "PK_NODE_PATH",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("TSS2_LOG", "all+NONE");
        // Agents listen for peers on loopback only, on a port of the kernel's choosing.
        cmd.env("PK_PEER_LISTEN", "127.0.0.1:0");
        if let Some(softhsm) = &self.softhsm {
            cmd.env("SOFTHSM2_CONF", softhsm.conf());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a tpm2-tools command against `tpm`.
    pub(crate) fn tpm_tool(&self, tpm: &Swtpm, program: &str, args: &[&str]) {
        hsm_core::sim::require_program(program, "tpm2-tools").unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new(program)
            .args(args)
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .env("TSS2_LOG", "all+NONE")
            .output()
            .expect("run tpm2-tools");
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The recovery code printed by `pk init --format json`.
pub(crate) fn recovery_code(init_json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(init_json).expect("init prints JSON");
    v["recovery_code"]
        .as_str()
        .expect("recovery_code field")
        .to_owned()
}

/// Copies a directory tree (a node's data directory) as a user would with `cp -a`.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// An agent started for a test; stopped (or killed) when dropped.
pub(crate) struct AgentGuard {
    node: PathBuf,
}

impl AgentGuard {
    /// Guards the agent of `node` (started by the caller).
    pub(crate) fn new(node: &Path) -> AgentGuard {
        AgentGuard {
            node: node.to_owned(),
        }
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(pid) = agent_pid(&self.node) {
            kill9(pid);
        }
    }
}

/// The pid in a node's agent status file.
pub(crate) fn agent_pid(node: &Path) -> Option<i32> {
    let bytes = std::fs::read(node.join("agent.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["pid"].as_i64().map(|p| p as i32)
}

/// SIGKILL, as a crash or the OOM killer would; returns once the process is gone.
pub(crate) fn kill9(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    for _ in 0..1000 {
        // Gone, or a zombie waiting for its reaper: either way it holds nothing any more.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return;
            }
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
}

impl World {
    /// Initialises a node with a `soft` keyslot at cheap Argon2id cost (8 MiB, one pass);
    /// returns the node's path and its passphrase file.
    pub(crate) fn soft_node(&self, passphrase: &str) -> (PathBuf, PathBuf) {
        let (node, pass, _) = self.soft_node_with_code(passphrase);
        (node, pass)
    }

    /// [`World::soft_node`], also returning the recovery code `init` printed.
    pub(crate) fn soft_node_with_code(&self, passphrase: &str) -> (PathBuf, PathBuf, String) {
        self.soft_node_named("node", passphrase)
    }

    /// [`World::soft_node_with_code`] with the node in directory `name` of this world.
    pub(crate) fn soft_node_named(
        &self,
        name: &str,
        passphrase: &str,
    ) -> (PathBuf, PathBuf, String) {
        let node = self.path(name);
        let pass = self.secret_file(&format!("{name}-pass"), passphrase);
        let pass_arg = pass.to_str().expect("UTF-8 temporary path");
        let init = ["--format", "json", "init", "--token", "soft"];
        let init = args(&args(&init, CHEAP_ARGON2), &["--password-file", pass_arg]);
        let init = self.pk(&node, &init).ok();
        (node, pass, recovery_code(&init))
    }

    /// A node in directory `node` with a PIN-less TPM keyslot on a new swtpm with state
    /// in `tpm`; the swtpm, the node's path, the TCTI and the recovery code `init` printed.
    pub(crate) fn tpm_node(&self, tpm: &str) -> (Swtpm, PathBuf, String, String) {
        let tpm = self.swtpm(tpm);
        let node = self.path("node");
        let tcti = tpm.tcti();
        let init = [
            "--format", "json", "--tcti", &tcti, "init", "--token", "tpm",
        ];
        let code = recovery_code(&self.pk(&node, &init).ok());
        (tpm, node, tcti, code)
    }

    /// Starts the node's agent in the background with `args` (unlock options).
    pub(crate) fn agent(&self, node: &Path, args: &[&str]) -> AgentGuard {
        let mut all = vec!["agent", "start"];
        all.extend_from_slice(args);
        self.pk(node, &all).ok();
        AgentGuard {
            node: node.to_owned(),
        }
    }
}

/// The `pk` binary, after checking that the `pk-node` it executes for token commands is
/// built beside it: it is another crate's binary (`node/pk-node`), which `cargo test
/// --workspace` builds; `cargo test -p node` alone does not.
pub(crate) fn pk() -> &'static str {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    let pk = env!("CARGO_BIN_EXE_pk");
    CHECKED.call_once(|| {
        let pk_node = Path::new(pk).with_file_name("pk-node");
        assert!(
            pk_node.is_file(),
            "{pk_node:?} is not built: run cargo test --workspace, or cargo build -p pk-node first"
        );
    });
    pk
}
