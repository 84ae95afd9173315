//! Whether a freshly installed root slot is kept: the health of the appliance in this boot.
//!
//! The image's `pk-appliance-health.service` runs `pk-appliance health` on a boot that
//! systemd-boot is counting (the first boots of a slot an update wrote); systemd-bless-boot
//! marks the slot good only if it succeeds, and a failure reboots into another try (see
//! docs/theory/boot-chain-and-updates.md). Healthy means both:
//!
//! - **the node answered the daemon in this boot**: the daemon writes [`HEALTH_FILE`] in
//!   its runtime directory (`RuntimeDirectory=pk-appliance`, on `/run`, a tmpfs) once its
//!   node's agent has answered a status call, or at once when the box is not claimed yet
//!   (there is no node to ask: the console is all there is);
//! - **the console accepts connections** on its configured port, on loopback.
//!
//! The check gives up early when systemd reports the daemon failed or restarted before it
//! was healthy: waiting out the timeout would only delay the fallback.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use node::NodePath;
use node::api::agent::Status;

use crate::config::Config;

/// The file, in the daemon's runtime directory, that says its node answered in this boot.
pub const HEALTH_FILE: &str = "health";
/// The daemon's runtime directory on the image (`RuntimeDirectory=pk-appliance`).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/pk-appliance";
const UNIT: &str = "pk-appliance.service";

/// The daemon's side: once the node answers (or at once, with no node yet), records it in
/// `$RUNTIME_DIRECTORY/health`. Without a runtime directory (not under systemd), nothing.
pub(crate) async fn record(node: NodePath) {
    let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").map(PathBuf::from) else {
        return;
    };
    let state = if node.keyslots().exists() {
        let client = node::client::Client::new(&node);
        loop {
            match client.call(Status).await {
                Ok(status) => break format!("{:?}", status.state).to_lowercase(),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    } else {
        "unclaimed".to_owned()
    };
    let path = dir.join(HEALTH_FILE);
    let tmp = dir.join(format!("{HEALTH_FILE}.tmp"));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| writeln!(f, "node {state}"))
        .and_then(|()| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => {
            tracing::info!(event = "appliance.healthy", node = %state, "healthy: the node answered ({state})")
        }
        Err(e) => {
            tracing::warn!(event = "appliance.health_unrecorded", error = %e, "cannot record the health in {}", path.display())
        }
    }
}

/// Why the appliance is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    /// The daemon stopped before it was healthy.
    #[error("{UNIT} stopped before it was healthy ({0})")]
    Stopped(String),
    /// The time ran out.
    #[error("not healthy within {0} s: {1}")]
    Timeout(u64, String),
}

/// `pk-appliance health`: waits up to `timeout` for the appliance of `config` to be
/// healthy (see the module docs); the words on success.
pub fn check(config: &Config, runtime_dir: &Path, timeout: Duration) -> Result<String, Unhealthy> {
    let started = Instant::now();
    let console = loopback(config.console_listen);
    let health = runtime_dir.join(HEALTH_FILE);
    loop {
        let answered = std::fs::read_to_string(&health).ok();
        let listening = TcpStream::connect_timeout(&console, Duration::from_secs(2)).is_ok();
        if let (Some(node), true) = (&answered, listening) {
            return Ok(format!("{}; the console answers on {console}", node.trim()));
        }
        if let Some(why) = daemon_stopped() {
            return Err(Unhealthy::Stopped(why));
        }
        if started.elapsed() >= timeout {
            let missing = match (answered.is_some(), listening) {
                (false, false) => {
                    "no answer from the node, and the console does not accept connections"
                }
                (false, true) => "no answer from the node",
                _ => "the console does not accept connections",
            };
            return Err(Unhealthy::Timeout(timeout.as_secs(), missing.to_owned()));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The console's address as seen from this machine: an unspecified address is reached on
/// loopback.
fn loopback(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// What systemd says when the daemon failed or restarted; `None` while it runs (or when
/// there is no systemd to ask).
fn daemon_stopped() -> Option<String> {
    let out = Command::new("systemctl")
        .args(["show", "--property=ActiveState,Result,NRestarts", UNIT])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
            .to_owned()
    };
    let (state, result, restarts) = (value("ActiveState"), value("Result"), value("NRestarts"));
    let restarted = restarts.parse::<u32>().is_ok_and(|n| n > 0);
    (state == "failed" || restarted)
        .then(|| format!("state {state}, result {result}, restarts {restarts}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_console_address_is_checked_on_loopback() {
        assert_eq!(
            loopback("0.0.0.0:8443".parse().unwrap()),
            "127.0.0.1:8443".parse().unwrap()
        );
        assert_eq!(
            loopback("[::]:8443".parse().unwrap()),
            "[::1]:8443".parse().unwrap()
        );
        assert_eq!(
            loopback("192.0.2.1:8443".parse().unwrap()),
            "192.0.2.1:8443".parse().unwrap()
        );
    }
}
