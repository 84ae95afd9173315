//! The appliance daemon's footprint and its console under load: the resident memory of a
//! real `pk-appliance` process (idle before setup, idle once claimed and unlocked through
//! a software TPM, and after the load), and the latency of console pages under load from
//! another process (`wrk`, Debian package `wrk`). Prints Markdown tables; the figures in
//! `docs/reference/appliance-benchmarks.md` come from this program:
//!
//! ```text
//! cargo bench -p appliance --bench console             # full run (20 s per page)
//! cargo bench -p appliance --bench console -- --quick  # smoke run for CI (3 s per page)
//! ```
//!
//! Everything listens on 127.0.0.1 only.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The idle resident memory target from the appliance issue.
const IDLE_RSS_TARGET_MIB: f64 = 25.0;
const ADMIN_PASSWORD: &str = "bench admin password";

/// The daemon under test; stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `VmRSS` and `VmHWM` (peak) in MiB.
    fn memory(&self) -> Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or_else(|| format!("no {name} in /proc/pid/status"))?;
            let kib: f64 = line
                .split_whitespace()
                .nth(1)
                .ok_or("malformed status line")?
                .parse()?;
            Ok(kib / 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("timed out waiting for {what}").into())
}

/// `curl` against the console (its certificate is self-signed: `-k`), with a cookie jar.
fn curl(jar: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sSk", "-b"])
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The session cookie curl stored.
fn session_cookie(jar: &Path) -> Result<String> {
    let text = std::fs::read_to_string(jar)?;
    let value = text
        .lines()
        .filter_map(|l| {
            l.split('\t')
                .collect::<Vec<_>>()
                .get(5..7)
                .map(<[_]>::to_vec)
        })
        .find(|fields| fields[0] == appliance::console::SESSION_COOKIE)
        .map(|fields| fields[1].to_owned())
        .ok_or("no session cookie in the jar")?;
    Ok(format!("{}={value}", appliance::console::SESSION_COOKIE))
}

/// What `wrk --latency` reported.
struct Load {
    requests_per_s: String,
    p50: String,
    p90: String,
    p99: String,
    errors: String,
}

fn wrk(url: &str, cookie: Option<&str>, seconds: u32) -> Result<Load> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c16", &format!("-d{seconds}s"), "--latency"]);
    if let Some(cookie) = cookie {
        cmd.args(["-H", &format!("Cookie: {cookie}")]);
    }
    let out = cmd.arg(url).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let after = |prefix: &str| -> String {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l[prefix.len()..].split_whitespace().next())
            .unwrap_or("-")
            .to_owned()
    };
    let mut errors = Vec::new();
    for prefix in ["Non-2xx or 3xx responses:", "Socket errors:"] {
        if let Some(line) = text.lines().map(str::trim).find(|l| l.starts_with(prefix)) {
            errors.push(line.to_owned());
        }
    }
    Ok(Load {
        requests_per_s: after("Requests/sec:"),
        p50: after("50%"),
        p90: after("90%"),
        p99: after("99%"),
        errors: if errors.is_empty() {
            "none".into()
        } else {
            errors.join("; ")
        },
    })
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    hsm::sim::require_program("wrk", "wrk")?;
    hsm::sim::require_program("curl", "curl")?;
    let dir = tempfile::tempdir()?;
    let tpm = hsm::sim::Swtpm::start(&dir.path().join("swtpm"))?;
    let port = free_port()?;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nconsole_listen = \"127.0.0.1:{port}\"\npeer_listen = \"127.0.0.1:0\"\ntpm_tcti = {:?}\n",
            dir.path().join("state").display().to_string(),
            tpm.tcti(),
        ),
    )?;
    let log = dir.path().join("daemon.log");
    let child = Command::new(env!("CARGO_BIN_EXE_pk-appliance"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let daemon = Daemon { child, log };
    wait_for("the setup code", Duration::from_secs(30), || {
        daemon.log_text().contains("console at https://")
    })
    .map_err(|e| format!("{e}: {}", daemon.log_text()))?;
    let code = daemon
        .log_text()
        .split("setup code ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or("no setup code on stderr")?
        .to_owned();
    let idle = if quick { 3 } else { 10 };
    std::thread::sleep(Duration::from_secs(idle));
    let (unclaimed_rss, _) = daemon.memory()?;

    let base = format!("https://127.0.0.1:{port}");
    let jar = dir.path().join("cookies.txt");
    let setup = serde_json::json!({
        "setup_code": code,
        "password": ADMIN_PASSWORD,
        "confirm": ADMIN_PASSWORD,
    });
    let answer = curl(
        &jar,
        &[
            "-H",
            "Content-Type: application/json",
            "--data",
            &setup.to_string(),
            &format!("{base}/api/setup"),
        ],
    )?;
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    if answer["recovery_code"].as_str().is_none() {
        return Err(format!("setup failed: {}", answer["error"]).into());
    }
    let mut status = serde_json::Value::Null;
    wait_for("the TPM unlock", Duration::from_secs(60), || {
        status = curl(&jar, &[&format!("{base}/api/status")])
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        status["state"] == "unlocked"
    })?;
    std::thread::sleep(Duration::from_secs(idle));
    let (unlocked_rss, _) = daemon.memory()?;

    let cookie = session_cookie(&jar)?;
    let seconds = if quick { 3 } else { 20 };
    let mut rows = Vec::new();
    for (page, what, cookie) in [
        ("/login", "login page (no session)", None),
        (
            "/status",
            "status page (session; 4 agent calls)",
            Some(cookie.as_str()),
        ),
        ("/api/status", "`/api/status` (JSON)", Some(cookie.as_str())),
    ] {
        let load = wrk(&format!("{base}{page}"), cookie, seconds)?;
        rows.push((what, load));
    }
    let (after_rss, peak_rss) = daemon.memory()?;

    println!("## Resident memory of `pk-appliance` (MiB)\n");
    println!("| state | RSS | target |");
    println!("|---|---|---|");
    println!("| idle, before setup ({idle} s) | {unclaimed_rss:.1} | < {IDLE_RSS_TARGET_MIB} |");
    println!(
        "| idle, claimed and unlocked through the TPM ({idle} s) | {unlocked_rss:.1} | < {IDLE_RSS_TARGET_MIB}{} |",
        if unlocked_rss < IDLE_RSS_TARGET_MIB {
            ", met"
        } else {
            ", NOT met"
        }
    );
    println!("| after the load below | {after_rss:.1} | |");
    println!("| peak (VmHWM) | {peak_rss:.1} | |");
    println!(
        "\n## Console latency under load (`wrk -t2 -c16 -d{seconds}s`, HTTPS, same machine)\n"
    );
    println!("| page | requests/s | p50 | p90 | p99 | errors |");
    println!("|---|---|---|---|---|---|");
    for (what, load) in &rows {
        println!(
            "| {what} | {} | {} | {} | {} | {} |",
            load.requests_per_s, load.p50, load.p90, load.p99, load.errors
        );
    }
    let mut stderr = String::new();
    let _ = std::fs::File::open(&daemon.log).and_then(|mut f| f.read_to_string(&mut stderr));
    if stderr.contains("panicked") {
        return Err(format!("the daemon panicked: {stderr}").into());
    }
    drop(daemon);
    drop(tpm);
    Ok(())
}
