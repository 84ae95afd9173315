//! What the benchmarks share: running `pk` processes against nodes in temporary
//! directories, timing them, and printing a table.

// Each benchmark uses part of this.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hsm_core::soft::{Argon2Params, SoftProtector};
use hsm_core::{DataKey, Pin};
use node::NodePath;
use node::identity::Identity;
use node::keyslots::Keyslots;
use node::store::Store;
use node::vault::{SecretPath, Vaults};

pub(crate) type Error = Box<dyn std::error::Error>;
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// The `pk` binary Cargo built for this bench (an optimised build).
pub(crate) const PK: &str = env!("CARGO_BIN_EXE_pk");
/// The benchmark nodes' passphrase. Not a secret: the nodes are thrown away.
pub(crate) const PASSPHRASE: &str = "correct horse battery staple, bench only";
/// Cheap Argon2id parameters, the same as `--argon2-memory-mib 8 --argon2-passes 1`.
pub(crate) const ARGON2: Argon2Params = Argon2Params {
    m_kib: 8 * 1024,
    t: 1,
    p: 1,
};
pub(crate) const MIB: usize = 1024 * 1024;

/// One line of the table.
pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) runs: String,
    pub(crate) median: String,
    pub(crate) min: String,
    pub(crate) max: String,
    pub(crate) target: String,
    pub(crate) met: &'static str,
    pub(crate) polykey: &'static str,
}

impl Row {
    pub(crate) fn timed(
        what: impl Into<String>,
        s: &Stats,
        target_ms: Option<f64>,
        pk: &'static str,
    ) -> Row {
        Row {
            what: what.into(),
            runs: s.runs.to_string(),
            median: ms(s.median),
            min: ms(s.min),
            max: ms(s.max),
            target: target_ms.map_or(String::new(), |t| format!("< {t} ms")),
            met: match target_ms {
                Some(t) if s.median.as_secs_f64() * 1000.0 < t => "yes",
                Some(_) => "no",
                None => "",
            },
            polykey: pk,
        }
    }

    pub(crate) fn single(what: impl Into<String>, value: String) -> Row {
        Row {
            what: what.into(),
            runs: "1".into(),
            median: value,
            min: String::new(),
            max: String::new(),
            target: String::new(),
            met: "",
            polykey: "",
        }
    }
}

pub(crate) struct Stats {
    pub(crate) runs: usize,
    pub(crate) median: Duration,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

pub(crate) fn stats(mut times: Vec<Duration>) -> Stats {
    times.sort();
    Stats {
        runs: times.len(),
        median: times[times.len() / 2],
        min: times[0],
        max: times[times.len() - 1],
    }
}

pub(crate) fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

pub(crate) fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

/// Runs `f` `n` times and collects the durations it reports.
pub(crate) fn measure(n: usize, mut f: impl FnMut(usize) -> Result<Duration>) -> Result<Stats> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        times.push(f(i)?);
    }
    Ok(stats(times))
}

/// A node directory in a temporary directory, with its passphrase file. Stops its agent
/// (if any) when dropped, before the directory is removed.
pub(crate) struct Node {
    pub(crate) path: NodePath,
    pub(crate) password_file: PathBuf,
    pub(crate) _dir: tempfile::TempDir,
}

impl Node {
    pub(crate) fn new() -> Result<Node> {
        let dir = tempfile::Builder::new().prefix("pk-bench-").tempdir()?;
        let password_file = dir.path().join("passphrase");
        std::fs::write(&password_file, PASSPHRASE)?;
        Ok(Node {
            path: NodePath::new(dir.path().join("node")),
            password_file,
            _dir: dir,
        })
    }

    /// A node made through the library, with a `soft` keyslot (so vaults can be filled
    /// before its agent starts); the node and its data key.
    pub(crate) fn through_library() -> Result<(Node, DataKey)> {
        let node = Node::new()?;
        let protector = SoftProtector::new(Pin::from(PASSPHRASE), ARGON2);
        let init = Keyslots::init(&node.path, &protector, "bench")?;
        Ok((node, init.unlocked.key))
    }

    pub(crate) fn scratch(&self) -> &Path {
        self._dir.path()
    }

    /// A `pk` command for this node, with no `PK_*` variables from the caller.
    pub(crate) fn pk<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        static CHECKED: std::sync::Once = std::sync::Once::new();
        CHECKED.call_once(|| {
            // pk executes the pk-node beside it, another crate's binary.
            let pk_node = Path::new(PK).with_file_name("pk-node");
            assert!(
                pk_node.is_file(),
                "{pk_node:?} is not built: cargo build --release -p pk-node first"
            );
        });
        let mut cmd = Command::new(PK);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PK_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--node-path").arg(self.path.dir()).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `pk init` through the CLI; the recovery code it prints is discarded unread.
    pub(crate) fn init_cli(&self) -> Result<()> {
        let mut cmd = self.pk(["init", "--token", "soft", "--password-file"]);
        cmd.arg(&self.password_file)
            .args(["--argon2-memory-mib", "8", "--argon2-passes", "1"]);
        quiet(&mut cmd)?;
        Ok(())
    }

    /// Times `runs` runs of `pk args`.
    pub(crate) fn time(&self, runs: usize, args: &[&str]) -> Result<Stats> {
        measure(runs, |_| timed(&mut self.pk(args)))
    }

    pub(crate) fn start_agent(&self) -> Result<Duration> {
        let mut cmd = self.pk(["agent", "start", "--password-file"]);
        cmd.arg(&self.password_file);
        timed(&mut cmd)
    }

    /// `pk agent stop`, then waits until the agent process has exited (and so has let go
    /// of the database).
    pub(crate) fn stop_agent(&self) -> Result<()> {
        let out = quiet(&mut self.pk(["--format", "json", "agent", "stop"]))?;
        let value: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if let Some(pid) = value["pid"].as_u64() {
            wait_exited(pid as u32)?;
        }
        Ok(())
    }

    pub(crate) fn agent_pid(&self) -> Result<u32> {
        let out = quiet(&mut self.pk(["--format", "json", "agent", "status"]))?;
        let value: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let pid = value["pid"].as_u64().ok_or("agent status has no pid")?;
        Ok(pid as u32)
    }

    /// Commit ids of `vault`, newest first.
    pub(crate) fn log(&self, vault: &str) -> Result<Vec<String>> {
        let out = quiet(&mut self.pk(["--format", "json", "vaults", "log", vault]))?;
        let value: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(value
            .as_array()
            .ok_or("vaults log did not print a list")?
            .iter()
            .filter_map(|c| c["oid"].as_str().map(str::to_owned))
            .collect())
    }

    /// Times `pk secrets write vault:path` with `content` on standard input.
    pub(crate) fn write_stdin(&self, secret_path: &str, content: &[u8]) -> Result<Duration> {
        let start = Instant::now();
        let mut child = self
            .pk(["secrets", "write", secret_path])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().ok_or("no stdin")?.write_all(content)?;
        let out = child.wait_with_output()?;
        let elapsed = start.elapsed();
        check(&out, "secrets write")?;
        Ok(elapsed)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.path.agent_socket().exists() {
            let _ = self.stop_agent();
        }
    }
}

pub(crate) fn check(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    // pk never puts secrets in its error messages, so its stderr may be shown.
    Err(format!(
        "pk {what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
    .into())
}

pub(crate) fn describe(cmd: &Command) -> String {
    cmd.get_args()
        .skip(2) // --node-path <dir>
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs an untimed command, capturing its output (never shown unless it fails, and then
/// only stderr).
pub(crate) fn quiet(cmd: &mut Command) -> Result<Output> {
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output()?;
    check(&out, &describe(cmd))?;
    Ok(out)
}

/// Runs a command as a whole process, stdout to /dev/null, and times spawn to exit.
pub(crate) fn timed(cmd: &mut Command) -> Result<Duration> {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd.output()?;
    let elapsed = start.elapsed();
    check(&out, &describe(cmd))?;
    Ok(elapsed)
}

/// Waits until `pid` has exited (gone, or a zombie nobody reaped yet).
pub(crate) fn wait_exited(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/status")) {
            Err(_) => return Ok(()),
            Ok(s)
                if s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z')) =>
            {
                return Ok(());
            }
            Ok(_) if Instant::now() > deadline => {
                return Err(format!("agent {pid} did not exit").into());
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// A `VmRSS`-style line of /proc/<pid>/status, in MiB.
pub(crate) fn proc_mib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed status line")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// Deterministic filler for the large secret (xorshift64*), different per `seed`.
pub(crate) fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The same fan-out as the populated secrets: no directory gets more than 100 entries.
pub(crate) fn fanout(prefix: &str, i: usize) -> String {
    format!("d{}/e{}/{prefix}{i}", i % 100, (i / 100) % 100)
}

/// Fills `vault` (created when `from` is 0) through the library with secrets of
/// `value_len` bytes at [`fanout`] paths, one commit per secret, the way the agent
/// writes: `Vaults::write` is one write transaction with immediate durability.
pub(crate) fn populate(
    node: &NodePath,
    key: &DataKey,
    vault: &str,
    from: usize,
    to: usize,
    value_len: usize,
) -> Result<Duration> {
    let start = Instant::now();
    let store = Store::open(node, key)?;
    let mut tx = store.write()?;
    let identity = Identity::load_or_create(&mut tx)?;
    tx.commit()?;
    let vaults = Vaults::new(&store, identity.node_id());
    if from == 0 {
        vaults.create(vault)?;
    }
    let mut value = vec![0u8; value_len.max(8)];
    for i in from..to {
        value[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let path = SecretPath::parse(&fanout("s", i), false)?;
        vaults.write(vault, &path, &value[..value_len.max(8)], "secret.written")?;
        if (i + 1) % 10_000 == 0 {
            eprintln!(
                "bench:   {} secrets ({:.0} s)",
                i + 1,
                start.elapsed().as_secs_f64()
            );
        }
    }
    drop(store);
    Ok(start.elapsed())
}

/// Prints the Markdown table of `rows` (after the caller's title line) and the notes.
pub(crate) fn print_table(rows: &[Row], notes: &[String]) {
    println!();
    println!("| Measurement | Runs | Median | Min | Max | Target | Met | Polykey |");
    println!("|---|---:|---:|---:|---:|---:|:---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.what, r.runs, r.median, r.min, r.max, r.target, r.met, r.polykey
        );
    }
    println!();
    for n in notes {
        println!("- {n}");
    }
}
