//! LAN discovery of pk nodes over mDNS / DNS-SD.
//!
//! A node that advertises itself registers one DNS-SD service instance of type
//! [`SERVICE_TYPE`] (`_pk._udp.local.`):
//!
//! - the instance name is the node id;
//! - the host name is `<first 16 characters of the node id>.local.`;
//! - the SRV record carries the node's UDP (QUIC) port;
//! - the address records are filled in by `mdns-sd` from the addresses of the enabled
//!   interfaces;
//! - the TXT record carries `node=<node id>` and `v=1` (the version of this record layout).
//!
//! [`browse`] listens for such instances for a while and returns every node seen, keyed by
//! the node id from the TXT `node` property (falling back to the instance name). Values that
//! do not look like a node id are ignored, so junk on the LAN never reaches the caller.
//!
//! Advertising is off by default in the product: a node only announces itself when asked
//! to. The appliance image turns it on. Browsing only listens and queries; it announces
//! nothing about this node.
//!
//! [`Interfaces::Lan`] uses every interface except loopback; [`Interfaces::LoopbackOnly`]
//! uses loopback alone and exists for tests. The tests never send multicast on a real
//! interface: they re-execute themselves inside a fresh network namespace (`unshare -n`)
//! that holds just the loopback interface, and run only there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use mdns_sd::{
    IfKind, RecvTimeoutError, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo,
};

/// The DNS-SD service type pk nodes advertise under.
pub const SERVICE_TYPE: &str = "_pk._udp.local.";

/// The version of the TXT record layout, advertised as `v=<this>`.
const TXT_VERSION: &str = "1";

/// How many leading characters of the node id make up the mDNS host name.
const HOST_LABEL_LEN: usize = 16;

/// How long to wait for the daemon to confirm an unregister or a shutdown.
const DAEMON_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Errors from LAN discovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LanError {
    /// The mDNS daemon could not be started or configured.
    #[error("cannot start the mDNS daemon: {0}")]
    Daemon(String),
    /// The node id given to advertise does not look like a node id.
    #[error("not a node id, refusing to advertise it: {0:?}")]
    InvalidNodeId(String),
    /// The service could not be registered with the mDNS daemon.
    #[error("cannot advertise this node over mDNS: {0}")]
    Register(String),
    /// Browsing for other nodes failed.
    #[error("cannot browse for pk nodes over mDNS: {0}")]
    Browse(String),
}

/// Which interfaces to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// Every interface except loopback (the product on a LAN).
    Lan,
    /// Loopback only (tests inside a network namespace).
    LoopbackOnly,
}

/// A node found on the LAN.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Found {
    /// The node id, as advertised (not yet parsed or verified).
    pub node_id: String,
    /// The addresses the node advertised, with its port; sorted, without duplicates.
    pub addrs: Vec<SocketAddr>,
}

/// Advertises this node while alive; unregisters and shuts the daemon down on drop.
pub struct Advertiser {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Advertiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertiser")
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

impl Advertiser {
    /// Starts advertising `node_id` at `port` on the chosen interfaces.
    ///
    /// The advertisement lasts as long as the returned value: dropping it withdraws the
    /// service (mDNS "goodbye") and stops the daemon.
    ///
    /// The node becomes visible after `mdns-sd` has probed for name conflicts and announced
    /// it, a little under a second after this returns.
    ///
    /// # Errors
    ///
    /// [`LanError::InvalidNodeId`] if `node_id` does not look like a node id,
    /// [`LanError::Daemon`] if the mDNS daemon cannot be started, and
    /// [`LanError::Register`] if the service cannot be registered.
    pub fn start(node_id: &str, port: u16, interfaces: Interfaces) -> Result<Advertiser, LanError> {
        if !looks_like_node_id(node_id) {
            return Err(LanError::InvalidNodeId(node_id.to_owned()));
        }
        let host: String = node_id.chars().take(HOST_LABEL_LEN).collect();
        let host = format!("{host}.local.");
        let properties = [("node", node_id), ("v", TXT_VERSION)];
        let info = ServiceInfo::new(SERVICE_TYPE, node_id, &host, "", port, &properties[..])
            .map_err(|e| LanError::Register(e.to_string()))?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();

        let daemon = new_daemon(interfaces)?;
        if let Err(e) = daemon.register(info) {
            shutdown(&daemon);
            return Err(LanError::Register(e.to_string()));
        }
        Ok(Advertiser { daemon, fullname })
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        // Wait (briefly) for the goodbye to go out before stopping the daemon.
        if let Ok(status) = self.daemon.unregister(&self.fullname) {
            let _ = status.recv_timeout(DAEMON_REPLY_WAIT);
        }
        shutdown(&self.daemon);
    }
}

/// Browses for `wait`, returns every node seen (deduplicated by node id, addresses merged
/// and sorted), excluding `except` (our own node id) if given.
///
/// The result is sorted by node id. Services whose node id does not look like one are
/// ignored.
///
/// Wait at least about 1.5 s. A node that multicast its records less than a second ago
/// (say, answering another browse) stays silent to the first query (RFC 6762 section 6);
/// the second query goes out a second later.
///
/// # Errors
///
/// [`LanError::Daemon`] if the mDNS daemon cannot be started, and [`LanError::Browse`] if
/// browsing cannot start or the daemon stops while browsing.
pub fn browse(
    wait: Duration,
    interfaces: Interfaces,
    except: Option<&str>,
) -> Result<Vec<Found>, LanError> {
    let daemon = new_daemon(interfaces)?;
    let result = collect(&daemon, wait, except);
    let _ = daemon.stop_browse(SERVICE_TYPE);
    shutdown(&daemon);
    result
}

/// Runs one browse on `daemon` for `wait` and gathers what it resolves.
fn collect(
    daemon: &ServiceDaemon,
    wait: Duration,
    except: Option<&str>,
) -> Result<Vec<Found>, LanError> {
    let events = daemon
        .browse(SERVICE_TYPE)
        .map_err(|e| LanError::Browse(e.to_string()))?;
    let deadline = Instant::now().checked_add(wait);
    let mut seen: BTreeMap<String, BTreeSet<SocketAddr>> = BTreeMap::new();
    loop {
        let event = match deadline {
            Some(deadline) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                events.recv_timeout(remaining)
            }
            // A wait too long to represent: wait for ever.
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(ServiceEvent::ServiceResolved(service)) => {
                let Some(node_id) = node_id_of(&service) else {
                    continue;
                };
                if except == Some(node_id.as_str()) {
                    continue;
                }
                let port = service.get_port();
                seen.entry(node_id).or_default().extend(
                    service
                        .get_addresses()
                        .iter()
                        .map(|ip| socket_addr(ip, port)),
                );
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(LanError::Browse(
                    "the mDNS daemon stopped while browsing".to_owned(),
                ));
            }
        }
    }
    Ok(seen
        .into_iter()
        .map(|(node_id, addrs)| Found {
            node_id,
            addrs: addrs.into_iter().collect(),
        })
        .collect())
}

/// Starts an mDNS daemon restricted to `interfaces`.
///
/// The interface selections are queued before any other command, so nothing is registered,
/// queried or announced before they apply.
fn new_daemon(interfaces: Interfaces) -> Result<ServiceDaemon, LanError> {
    let daemon = ServiceDaemon::new().map_err(|e| LanError::Daemon(e.to_string()))?;
    let loopback = vec![IfKind::LoopbackV4, IfKind::LoopbackV6];
    let configured = match interfaces {
        Interfaces::Lan => daemon.disable_interface(loopback),
        Interfaces::LoopbackOnly => daemon
            .disable_interface(IfKind::All)
            .and_then(|()| daemon.enable_interface(loopback)),
    };
    if let Err(e) = configured {
        shutdown(&daemon);
        return Err(LanError::Daemon(format!(
            "cannot select the interfaces ({interfaces:?}): {e}"
        )));
    }
    Ok(daemon)
}

/// Stops `daemon`, waiting briefly for it to confirm; errors are ignored.
fn shutdown(daemon: &ServiceDaemon) {
    if let Ok(status) = daemon.shutdown() {
        let _ = status.recv_timeout(DAEMON_REPLY_WAIT);
    }
}

/// The node id a resolved service advertises: its TXT `node` property, else its instance
/// name; `None` unless that looks like a node id.
fn node_id_of(service: &ResolvedService) -> Option<String> {
    let candidate = match service.get_property_val_str("node") {
        Some(node) => node,
        None => instance_name(service.get_fullname())?,
    };
    looks_like_node_id(candidate).then(|| candidate.to_owned())
}

/// The instance part of `<instance>.<SERVICE_TYPE>`, if `fullname` has that shape.
fn instance_name(fullname: &str) -> Option<&str> {
    let cut = fullname.len().checked_sub(SERVICE_TYPE.len())?;
    let suffix = fullname.get(cut..)?;
    if !suffix.eq_ignore_ascii_case(SERVICE_TYPE) {
        return None;
    }
    fullname.get(..cut)?.strip_suffix('.')
}

/// Whether `s` looks like a node id: starts with `v`, 20 to 64 characters, only `[0-9a-v]`.
fn looks_like_node_id(s: &str) -> bool {
    s.starts_with('v')
        && (20..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
}

/// The socket address for `ip` and `port`, keeping the interface of an IPv6 link-local
/// address so it can be dialled.
fn socket_addr(ip: &ScopedIp, port: u16) -> SocketAddr {
    match (ip.to_ip_addr(), ip) {
        (IpAddr::V6(v6), ScopedIp::V6(scoped)) if v6.is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scoped.scope_id().index))
        }
        (IpAddr::V6(v6), _) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
        (IpAddr::V4(v4), _) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::process::Command;

    /// Set (to `1`) by the test itself when it re-executes inside a network namespace.
    const NETNS_ENV: &str = "PK_LAN_NETNS";

    const NODE_ID: &str = "v0123456789abcdefghijklmnopqrstuv0123456789abcdefghij";
    const OTHER_ID: &str = "vutsrqponmlkjihgfedcba9876543210vutsrqponmlkjihgfedcb";

    #[test]
    fn node_ids_are_recognised_and_junk_is_not() {
        assert!(looks_like_node_id(NODE_ID));
        assert!(!looks_like_node_id("v123"));
        assert!(!looks_like_node_id(&"v".repeat(65)));
        assert!(!looks_like_node_id("u0123456789abcdefghijklmnopqrstuv"));
        assert!(!looks_like_node_id("v0123456789abcdefghijklmnopqrstuvw"));
        assert!(!looks_like_node_id("v0123456789ABCDEFGHIJKLMNOPQRSTUV"));
        assert_eq!(
            instance_name(&format!("{NODE_ID}.{SERVICE_TYPE}")),
            Some(NODE_ID)
        );
        assert_eq!(instance_name("x._other._udp.local."), None);
        assert_eq!(instance_name(SERVICE_TYPE), None);
        assert!(matches!(
            Advertiser::start("not a node id", 1, Interfaces::LoopbackOnly),
            Err(LanError::InvalidNodeId(_))
        ));
    }

    /// Whether this process's network namespace holds only the loopback interface.
    ///
    /// Reads `/proc/self/net/dev`, which follows the process's network namespace;
    /// `/sys/class/net` does not (it shows the namespace sysfs was mounted in, so it still
    /// lists the host's interfaces after `unshare -n`).
    fn only_loopback() -> bool {
        let Ok(dev) = std::fs::read_to_string("/proc/self/net/dev") else {
            return false;
        };
        let names: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next())
            .map(str::trim)
            .collect();
        names == ["lo"]
    }

    /// Runs `body` only inside a network namespace holding just loopback: outside one, the
    /// test re-executes itself (this test alone) under `unshare -n` and checks the outcome.
    fn in_loopback_netns(test_name: &str, body: impl FnOnce()) {
        let inside = std::env::var(NETNS_ENV).is_ok_and(|v| v == "1");
        if inside {
            assert!(
                only_loopback(),
                "{NETNS_ENV}=1 but this network namespace has interfaces besides lo; \
                 refusing to send multicast"
            );
            body();
            return;
        }

        let module = module_path!();
        let module = module
            .split_once("::")
            .map_or(module, |(_crate, rest)| rest);
        let full_name = format!("{module}::{test_name}");
        let exe = std::env::current_exe().unwrap();
        let output = Command::new("unshare")
            .arg("-n")
            .arg("sh")
            .arg("-c")
            .arg(r#"ip link set lo up && ip link set lo multicast on && exec "$0" "$@""#)
            .arg(&exe)
            .args(["--exact", &full_name, "--nocapture", "--test-threads=1"])
            .env(NETNS_ENV, "1")
            .output()
            .expect("cannot run `unshare`: this test needs util-linux's unshare and iproute2's ip");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // `unshare: unshare failed: Operation not permitted` without the privilege.
        assert!(
            output.status.success() || !stderr.contains("unshare failed"),
            "this test needs root (or CAP_SYS_ADMIN) for `unshare -n`, to run inside a network \
             namespace holding just loopback; it never sends multicast on a real interface.\n\
             --- stderr ---\n{stderr}"
        );
        assert!(
            output.status.success(),
            "the test failed inside its network namespace ({})\n--- stdout ---\n{stdout}\n\
             --- stderr ---\n{stderr}",
            output.status
        );
        assert!(
            stdout.contains("1 passed"),
            "the re-executed test did not run `{full_name}`\n--- stdout ---\n{stdout}\n\
             --- stderr ---\n{stderr}"
        );
    }

    #[test]
    fn a_node_advertised_on_loopback_is_found() {
        in_loopback_netns("a_node_advertised_on_loopback_is_found", || {
            let advertiser = Advertiser::start(NODE_ID, 4321, Interfaces::LoopbackOnly).unwrap();
            // A second node, so the `except` browse below demonstrably sees the LAN while
            // leaving our own node out, rather than passing because it saw nothing.
            let other = Advertiser::start(OTHER_ID, 4322, Interfaces::LoopbackOnly).unwrap();

            let found = browse(Duration::from_secs(2), Interfaces::LoopbackOnly, None).unwrap();
            println!("found: {found:?}");
            let node = found
                .iter()
                .find(|f| f.node_id == NODE_ID)
                .expect("the advertised node was not found");
            assert!(
                node.addrs.iter().any(|a| a.port() == 4321
                    && (a.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)
                        || a.ip() == IpAddr::V6(Ipv6Addr::LOCALHOST))),
                "no loopback address with port 4321 in {:?}",
                node.addrs
            );
            let mut sorted = node.addrs.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted, node.addrs);
            assert!(found.iter().any(|f| f.node_id == OTHER_ID), "{found:?}");

            let found = browse(
                Duration::from_secs(2),
                Interfaces::LoopbackOnly,
                Some(NODE_ID),
            )
            .unwrap();
            println!("found, except ours: {found:?}");
            assert!(
                found.iter().all(|f| f.node_id != NODE_ID),
                "`except` did not exclude our own node: {found:?}"
            );
            assert!(
                found.iter().any(|f| f.node_id == OTHER_ID),
                "the other node was not found while excluding ours: {found:?}"
            );

            drop(other);
            drop(advertiser);
        });
    }
}
