//! Whole-process timings of the `pk` command line against a running agent.
//!
//! Every figure is a real `pk` process, spawned and waited for, talking to a real agent
//! over its Unix socket in a temporary node directory: what a user or a script sees. The
//! nodes use the `soft` token with cheap Argon2id parameters (8 MiB, one pass), so key
//! derivation does not hide the rest; `cargo bench -p hsm --bench unlock` reports the
//! token and KDF costs on their own. Prints a Markdown table; the figures recorded in
//! `docs/reference/node-benchmarks.md` come from this program:
//!
//! ```text
//! cargo bench -p node --bench cli             # full run (a few minutes)
//! cargo bench -p node --bench cli -- --quick  # smoke run for CI (well under a minute)
//! ```
//!
//! Nothing leaves the machine: the agent listens on a Unix socket, the temporary
//! directories are removed at the end, and no secret value is ever printed.

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace as _, KeyInit as _};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hsm_core::soft::SoftProtector;
use hsm_core::{DataKey, Pin, Protector as _};
use node::api::agent::Status;
use node::client::Client;

use common::*;

/// The large secret: 100 MiB.
const BIG: usize = 100 * MIB;

/// How many runs of each kind.
struct Plan {
    quick: bool,
    /// Each small command (create, cat, ls, log, version) and `pk --version`.
    ops: usize,
    /// Each way of starting the agent.
    starts: usize,
    /// Write and read of the 100 MiB secret.
    big: usize,
    /// Vault sizes for the commit-latency rows.
    sizes: &'static [usize],
    /// `secrets write` and `secrets cat` at each size.
    scale_writes: usize,
    /// `vaults log` and `vaults version` at each size (they walk history).
    scale_history: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                ops: 5,
                starts: 3,
                big: 1,
                sizes: &[1_000, 10_000],
                scale_writes: 5,
                scale_history: 2,
            }
        } else {
            Plan {
                quick,
                ops: 50,
                starts: 20,
                big: 3,
                sizes: &[1_000, 10_000, 100_000],
                scale_writes: 30,
                scale_history: 5,
            }
        }
    }
}

/// `openssl speed` for ChaCha20-Poly1305 on 16 KiB blocks, one core: MiB/s, or why not.
fn openssl_speed() -> Result<f64, String> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "chacha20-poly1305",
            "-seconds",
            "1",
            "-bytes",
            "16384",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "openssl not installed".to_owned(),
            _ => format!("openssl failed to run: {e}"),
        })?;
    if !out.status.success() {
        return Err(format!("openssl speed failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // "ChaCha20-Poly1305  3374988.15k": thousands of bytes per second per block size.
    let k = text
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("chacha20-poly1305"))
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|v| v.strip_suffix('k'))
        .find_map(|v| v.parse::<f64>().ok())
        .ok_or("could not read the openssl speed output")?;
    Ok(k * 1000.0 / MIB as f64)
}

fn main() -> Result<()> {
    let plan = Plan::new(std::env::args().any(|a| a == "--quick"));
    let total = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let arch = Command::new("uname")
        .arg("-m")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // Reference throughput first, on a quiet machine.
    eprintln!("bench: AEAD and hash reference speeds");
    let openssl = openssl_speed();
    let (rust_aead, sha1) = in_process_speeds()?;
    let disk = disk_speed()?;

    eprintln!("bench: process start, agent start");
    let node = Node::new()?;
    node.init_cli()?;
    let spawn = measure(plan.ops, |_| timed(&mut Command::new("true")))?;
    rows.push(Row::timed(
        "`true` (this machine's process spawn floor)",
        &spawn,
        None,
        "",
    ));
    let floor = node.time(plan.ops, &["--version"])?;
    rows.push(Row::timed(
        "`pk --version` (process floor, no agent)",
        &floor,
        None,
        "",
    ));
    agent_start(&plan, &node, &mut rows)?;

    eprintln!("bench: commands against a running agent");
    node.start_agent()?;
    quiet(&mut node.pk(["vaults", "create", "v"]))?;
    commands(&plan, &node, &mut rows)?;

    std::thread::sleep(Duration::from_secs(1));
    let pid = node.agent_pid()?;
    let rss = proc_mib(pid, "VmRSS:")?;
    rows.push(Row {
        what: "idle agent RSS (after start, unlock and the commands above, 1 s idle)".into(),
        runs: "1".into(),
        median: format!("{rss:.1} MiB"),
        min: String::new(),
        max: String::new(),
        target: "< 20 MB".into(),
        met: if rss * 1.048_576 < 20.0 { "yes" } else { "no" },
        polykey: "250-390 MB",
    });

    eprintln!("bench: 100 MiB secret");
    big_secret(&plan, &node, openssl.as_ref().ok().copied(), &mut rows)?;
    std::thread::sleep(Duration::from_secs(1));
    rows.push(Row::single(
        "idle agent RSS after the 100 MiB secrets (1 s idle)",
        format!("{:.1} MiB", proc_mib(pid, "VmRSS:")?),
    ));
    rows.push(Row::single(
        "agent peak RSS (VmHWM) over the whole run so far",
        format!("{:.1} MiB", proc_mib(pid, "VmHWM:")?),
    ));
    quiet(&mut node.pk(["agent", "lock"]))?;
    std::thread::sleep(Duration::from_secs(1));
    rows.push(Row::single(
        "idle agent RSS after that and `pk agent lock` (store closed, 1 s idle)",
        format!("{:.1} MiB", proc_mib(pid, "VmRSS:")?),
    ));
    node.stop_agent()?;
    drop(node);

    rows.push(Row::single(
        "reference: `openssl speed -evp chacha20-poly1305`, 16 KiB blocks, 1 core",
        match &openssl {
            Ok(v) => format!("{v:.0} MiB/s"),
            Err(why) => why.clone(),
        },
    ));
    rows.push(Row::single(
        "reference: XChaCha20-Poly1305 in-process (the crate pk seals with), 100 MiB",
        format!("{rust_aead:.0} MiB/s"),
    ));
    rows.push(Row::single(
        "reference: write 100 MiB to a file and fsync it, same file system",
        format!("{disk:.0} MiB/s"),
    ));
    rows.push(Row::single(
        "reference: git object id (SHA-1, collision-detecting) in-process, 100 MiB",
        format!("{sha1:.0} MiB/s"),
    ));

    scale(&plan, &mut rows, &mut notes)?;

    println!(
        "pk CLI benchmark: {arch}, {cpus} CPUs (nproc), mode: {}, whole-process timings of an optimised build",
        if plan.quick { "quick" } else { "full" }
    );
    print_table(&rows, &notes);
    println!(
        "- Agent start \"to ready\" (foreground): the bench spawns `pk agent start --foreground` and polls the agent socket with a status request every 0.5 ms; the time is from spawn to the first answer. The agent is locked then (a passphrase slot needs the passphrase), so no key derivation is included."
    );
    println!(
        "- Agent start (background): `pk agent start --password-file` returns once the agent answers and is unlocked; it includes forking the agent and one Argon2id derivation at 8 MiB, t=1 (shown separately above)."
    );
    println!(
        "- Each command row is a whole process (spawn to exit) against a running, unlocked agent; stdout goes to /dev/null."
    );
    println!(
        "- Total bench time: {:.0} s.",
        total.elapsed().as_secs_f64()
    );
    Ok(())
}

/// In-process XChaCha20-Poly1305 and SHA-1 (git object id) speed over 100 MiB, MiB/s.
fn in_process_speeds() -> Result<(f64, f64)> {
    let mut data = filler(BIG, 1);
    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    let nonce = XNonce::from([9u8; 24]);
    let start = Instant::now();
    let tag = cipher
        .encrypt_in_place_detached(&nonce, b"bench", &mut data)
        .map_err(|_| "encryption failed")?;
    let aead = mib_s(BIG, start.elapsed());
    std::hint::black_box(tag);
    let start = Instant::now();
    let oid = gix_object::compute_hash(gix_hash::Kind::Sha1, gix_object::Kind::Blob, &data)
        .map_err(|_| "hashing failed")?;
    let sha1 = mib_s(BIG, start.elapsed());
    std::hint::black_box(oid);
    Ok((aead, sha1))
}

/// Writes 100 MiB to a new file in a temporary directory and fsyncs it: MiB/s.
fn disk_speed() -> Result<f64> {
    let dir = tempfile::Builder::new().prefix("pk-bench-").tempdir()?;
    let data = filler(BIG, 2);
    let start = Instant::now();
    let mut f = std::fs::File::create(dir.path().join("disk"))?;
    f.write_all(&data)?;
    f.sync_all()?;
    Ok(mib_s(BIG, start.elapsed()))
}

fn agent_start(plan: &Plan, node: &Node, rows: &mut Vec<Row>) -> Result<()> {
    let background = measure(plan.starts, |_| {
        let t = node.start_agent()?;
        node.stop_agent()?;
        Ok(t)
    })?;
    rows.push(Row::timed(
        "`pk agent start --password-file` (background; returns unlocked)",
        &background,
        Some(50.0),
        "2,543 ms",
    ));

    let client = Client::new(&node.path);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let foreground = measure(plan.starts, |_| {
        let start = Instant::now();
        let mut child = node
            .pk(["agent", "start", "--foreground"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let ready = loop {
            if rt.block_on(client.call(Status)).is_ok() {
                break Ok(start.elapsed());
            }
            if let Some(status) = child.try_wait()? {
                break Err(format!("the foreground agent exited early ({status})").into());
            }
            if start.elapsed() > Duration::from_secs(15) {
                break Err("the foreground agent did not answer within 15 s".into());
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        finish_foreground(node, &mut child, ready.is_ok())?;
        ready
    })?;
    rows.push(Row::timed(
        "`pk agent start --foreground` to first status answer (locked)",
        &foreground,
        Some(50.0),
        "",
    ));

    let protector = SoftProtector::new(Pin::from(PASSPHRASE), ARGON2);
    let key = DataKey::generate();
    let sealed = protector.wrap(&key, b"bench")?;
    let kdf = measure(plan.starts, |_| {
        let start = Instant::now();
        let back = protector.unwrap(&sealed, b"bench")?;
        let t = start.elapsed();
        assert_eq!(back.expose(), key.expose());
        Ok(t)
    })?;
    rows.push(Row::timed(
        "of which: Argon2id 8 MiB, t=1 unwrap (in-process)",
        &kdf,
        None,
        "",
    ));
    Ok(())
}

/// Stops a foreground agent (gracefully if it answered, else by killing it) and reaps it.
fn finish_foreground(node: &Node, child: &mut Child, answered: bool) -> Result<()> {
    if answered {
        quiet(&mut node.pk(["agent", "stop"]))?;
    } else {
        let _ = child.kill();
    }
    child.wait()?;
    Ok(())
}

/// Times `runs` runs of `pk vaults version v <target>`, with an untimed `last` in
/// between so that every timed run really moves the head.
fn time_version(node: &Node, runs: usize, target: &str) -> Result<Stats> {
    measure(runs, |_| {
        let t = timed(&mut node.pk(["vaults", "version", "v", target]))?;
        quiet(&mut node.pk(["vaults", "version", "v", "last"]))?;
        Ok(t)
    })
}

fn commands(plan: &Plan, node: &Node, rows: &mut Vec<Row>) -> Result<()> {
    let small = node.scratch().join("small-secret");
    std::fs::write(&small, b"a small secret value, 32 bytes!!")?;

    let create = measure(plan.ops, |i| {
        let mut cmd = node.pk(["secrets", "create"]);
        cmd.arg(&small).arg(format!("v:app/s{i}"));
        timed(&mut cmd)
    })?;
    rows.push(Row::timed(
        "`pk secrets create <file> v:app/sN` (32 bytes)",
        &create,
        Some(5.0),
        "2,467 ms",
    ));

    for (args, target_ms, polykey) in [
        (&["secrets", "cat", "v:app/s0"][..], Some(3.0), "515 ms"),
        (&["secrets", "ls", "v"], None, ""),
    ] {
        let what = format!("`pk {}`", args.join(" "));
        rows.push(Row::timed(
            what,
            &node.time(plan.ops, args)?,
            target_ms,
            polykey,
        ));
    }

    let commits = node.log("v")?;
    let log = node.time(plan.ops, &["vaults", "log", "v"])?;
    rows.push(Row::timed(
        format!("`pk vaults log v` ({} commits)", commits.len()),
        &log,
        Some(5.0),
        "1,944 ms",
    ));

    // Back to the commit before the newest, by an 8-digit prefix; `last` (untimed) in
    // between, so every timed run really moves the head.
    let target = commits.get(1).ok_or("vault has too few commits")?[..8].to_owned();
    let version = time_version(node, plan.ops, &target)?;
    rows.push(Row::timed(
        format!(
            "`pk vaults version v <8-digit prefix>` ({} commits)",
            commits.len()
        ),
        &version,
        Some(10.0),
        "4,519 ms",
    ));
    Ok(())
}

fn big_secret(plan: &Plan, node: &Node, openssl: Option<f64>, rows: &mut Vec<Row>) -> Result<()> {
    let file = node.scratch().join("big-secret");
    let mut content = Vec::new();
    let write = measure(plan.big, |i| {
        // New content each run, so the blob is really stored each time.
        content = filler(BIG, 100 + i as u64);
        std::fs::write(&file, &content)?;
        let mut cmd = node.pk(["secrets", "create"]);
        cmd.arg(&file).arg(format!("v:big/r{i}"));
        timed(&mut cmd)
    })?;
    let last = format!("v:big/r{}", plan.big - 1);
    let read = node.time(plan.big, &["secrets", "cat", &last])?;

    // One untimed check that what comes back is what went in (compared here, not shown).
    let back = node.scratch().join("big-secret-back");
    let out = node
        .pk(["secrets", "cat", &last])
        .stdout(std::fs::File::create(&back)?)
        .stderr(Stdio::piped())
        .output()?;
    check(&out, "secrets cat")?;
    if std::fs::read(&back)? != content {
        return Err("the 100 MiB secret read back differs from what was written".into());
    }
    std::fs::remove_file(&back)?;

    for (what, s) in [
        ("`pk secrets create` 100 MiB", &write),
        ("`pk secrets cat` 100 MiB > /dev/null", &read),
    ] {
        let rate = mib_s(BIG, s.median);
        let (target, met) = match openssl {
            Some(aead) => {
                let ratio = rate / aead;
                (
                    format!(
                        ">= 30% of AEAD ({:.0} MiB/s); got {:.0}%",
                        0.3 * aead,
                        ratio * 100.0
                    ),
                    if ratio >= 0.3 { "yes" } else { "no" },
                )
            }
            None => (">= 30% of AEAD (openssl missing)".into(), ""),
        };
        rows.push(Row {
            what: format!("{what} (median {})", ms(s.median)),
            runs: s.runs.to_string(),
            median: format!("{rate:.0} MiB/s"),
            min: format!("{:.0} MiB/s", mib_s(BIG, s.max)),
            max: format!("{:.0} MiB/s", mib_s(BIG, s.min)),
            target,
            met,
            polykey: "",
        });
    }
    Ok(())
}

/// Commit latency as one vault grows: populate through the library up to each size,
/// then time whole `pk` processes against an agent on that node.
fn scale(plan: &Plan, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
    let (node, key) = Node::through_library()?;
    let mut have = 0;
    let mut populated = Duration::ZERO;
    for &size in plan.sizes {
        eprintln!("bench: populating to {size} secrets");
        let took = populate(&node.path, &key, "v", have, size, 32)?;
        populated += took;
        notes.push(format!(
            "Populating {have}..{size} took {:.1} s through the library ({:.2} ms per commit, one durable transaction each); database {:.0} MiB at {size} secrets.",
            took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / (size - have) as f64,
            std::fs::metadata(node.path.dir().join(node::store::DB_FILE))?.len() as f64
                / MIB as f64,
        ));
        have = size;
        let label = if size >= 1000 {
            format!("{}k", size / 1000)
        } else {
            size.to_string()
        };

        let start = node.start_agent()?;
        rows.push(Row::timed(
            format!("`pk agent start --password-file` with {label} secrets"),
            &stats(vec![start]),
            Some(50.0),
            "",
        ));
        let content = b"a small secret value, 32 bytes!!";
        let write = measure(plan.scale_writes, |j| {
            node.write_stdin(&format!("v:{}", fanout("b", size + j)), content)
        })?;
        rows.push(Row::timed(
            format!("`pk secrets write` (stdin, 3 levels deep) with {label} secrets"),
            &write,
            Some(5.0),
            "",
        ));
        let cat_path = format!("v:{}", fanout("s", size / 2));
        let cat = node.time(plan.scale_writes, &["secrets", "cat", &cat_path])?;
        rows.push(Row::timed(
            format!("`pk secrets cat` with {label} secrets"),
            &cat,
            Some(3.0),
            "",
        ));
        let log = node.time(plan.scale_history, &["vaults", "log", "v"])?;
        rows.push(Row::timed(
            format!("`pk vaults log v` (default depth 1000) with {label} commits"),
            &log,
            Some(5.0),
            "",
        ));
        let commits = node.log("v")?;
        let full = commits.get(1).ok_or("vault has too few commits")?.clone();
        // A full id (what `vaults log` prints) is looked up directly; a short prefix has
        // to be searched for in the history, so it grows with it.
        for (what, target, goal) in [
            ("full commit id", full.clone(), Some(10.0)),
            ("8-digit prefix", full[..8].to_owned(), None),
        ] {
            let version = time_version(&node, plan.scale_history, &target)?;
            rows.push(Row::timed(
                format!("`pk vaults version v <{what}>` with {label} commits"),
                &version,
                goal,
                "",
            ));
        }
        node.stop_agent()?;
    }
    notes.push(format!(
        "Vault layout for the scaling rows: `d{{i%100}}/e{{(i/100)%100}}/s{{i}}`, so no directory holds more than 100 entries. A vault is a git object graph: a commit rewrites every tree on the path from the changed secret to the root, so its cost grows with the size of those directories, not with the number of secrets; one flat directory of n secrets would cost O(n) per commit. Population took {:.0} s in all.",
        populated.as_secs_f64()
    ));
    Ok(())
}
