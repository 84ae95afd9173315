//! The throttle on password and recovery-code checks: how many each client, and all
//! clients together, have had in the last minute. No I/O: the caller passes the time.
//!
//! A check is counted *before* it runs ([`Throttle::reserve`]), so guesses sent at once
//! cannot all pass the throttle while the first ones are still hashing; a check that
//! found the right password is taken back ([`Throttle::refund`]). A client is an IPv4
//! address, or an IPv6 /64, since one host usually holds a whole /64; an IPv4 client seen
//! through a dual-stack socket (`::ffff:a.b.c.d`) is its IPv4 address.
//!
//! Only clients with a check in the last minute are kept, and every kept check also
//! counts towards the global budget, so the map never holds more clients than that
//! budget.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// How long a check counts.
pub(super) const WINDOW: Duration = Duration::from_secs(60);

/// Whose checks count together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Client {
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Net(u64),
}

impl From<IpAddr> for Client {
    fn from(ip: IpAddr) -> Client {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Client::V4(v4),
            IpAddr::V6(v6) => Client::V6Net((v6.to_bits() >> 64) as u64),
        }
    }
}

/// Why a check may not run now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// This client (address, or IPv6 /64) has had its checks for the minute.
    Client,
    /// All clients together have had theirs.
    Everyone,
}

/// A check counted in the throttle: a wrong guess unless refunded.
#[derive(Debug)]
pub(super) struct Ticket {
    client: Client,
    at: Instant,
}

/// The counts (see the module documentation).
#[derive(Debug)]
pub(super) struct Throttle {
    per_client: usize,
    global: usize,
    clients: HashMap<Client, Vec<Instant>>,
    all: Vec<Instant>,
}

impl Throttle {
    /// A throttle allowing `per_client` checks per client and `global` in all per
    /// [`WINDOW`].
    pub(super) fn new(per_client: usize, global: usize) -> Throttle {
        Throttle {
            per_client,
            global,
            clients: HashMap::new(),
            all: Vec::new(),
        }
    }

    /// Counts a check from `ip` at `now`, if its client and everyone are within budget.
    pub(super) fn reserve(&mut self, ip: IpAddr, now: Instant) -> Result<Ticket, Refused> {
        self.forget(now);
        let client = Client::from(ip);
        if self.clients.get(&client).map_or(0, Vec::len) >= self.per_client {
            return Err(Refused::Client);
        }
        if self.all.len() >= self.global {
            return Err(Refused::Everyone);
        }
        self.clients.entry(client).or_default().push(now);
        self.all.push(now);
        Ok(Ticket { client, at: now })
    }

    /// Takes back a check that found the right password, or never ran.
    pub(super) fn refund(&mut self, ticket: Ticket) {
        if let Some(list) = self.clients.get_mut(&ticket.client) {
            if let Some(i) = list.iter().position(|t| *t == ticket.at) {
                list.swap_remove(i);
            }
            if list.is_empty() {
                self.clients.remove(&ticket.client);
            }
        }
        if let Some(i) = self.all.iter().position(|t| *t == ticket.at) {
            self.all.swap_remove(i);
        }
    }

    /// Drops the checks older than [`WINDOW`], and the clients left with none.
    fn forget(&mut self, now: Instant) {
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < WINDOW;
        self.all.retain(fresh);
        self.clients.retain(|_, list| {
            list.retain(fresh);
            !list.is_empty()
        });
    }

    /// How many clients are kept.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a panic is a test failure
mod tests {
    use super::*;

    fn v6(net: u16, host: u16) -> IpAddr {
        IpAddr::from([0x2001, 0xdb8, 0, net, 0, 0, 0, host])
    }

    #[test]
    fn each_client_gets_its_budget_per_minute() {
        let start = Instant::now();
        let mut t = Throttle::new(5, 100);
        let ip = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..5 {
            t.reserve(ip, start).unwrap();
        }
        assert_eq!(t.reserve(ip, start).unwrap_err(), Refused::Client);
        t.reserve(IpAddr::from([192, 0, 2, 2]), start).unwrap();
        let later = start + WINDOW;
        t.reserve(ip, later).unwrap();
    }

    #[test]
    fn a_refunded_check_does_not_count() {
        let now = Instant::now();
        let mut t = Throttle::new(2, 100);
        let ip = IpAddr::from([192, 0, 2, 1]);
        let first = t.reserve(ip, now).unwrap();
        t.reserve(ip, now).unwrap();
        assert_eq!(t.reserve(ip, now).unwrap_err(), Refused::Client);
        t.refund(first);
        t.reserve(ip, now).unwrap();
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let now = Instant::now();
        let mut t = Throttle::new(1, 100);
        t.reserve(v6(7, 1), now).unwrap();
        assert_eq!(t.reserve(v6(7, 2), now).unwrap_err(), Refused::Client);
        t.reserve(v6(8, 1), now).unwrap();
        let v4 = Ipv4Addr::new(192, 0, 2, 9);
        t.reserve(IpAddr::V6(v4.to_ipv6_mapped()), now).unwrap();
        assert_eq!(t.reserve(IpAddr::V4(v4), now).unwrap_err(), Refused::Client);
        t.reserve(
            IpAddr::V6(Ipv4Addr::new(192, 0, 2, 10).to_ipv6_mapped()),
            now,
        )
        .unwrap();
    }

    #[test]
    fn the_global_budget_holds_across_clients_and_bounds_the_map() {
        let start = Instant::now();
        let mut t = Throttle::new(5, 60);
        for i in 0..60u32 {
            t.reserve(IpAddr::from((0xc633_6400 + i).to_be_bytes()), start)
                .unwrap();
        }
        let newcomer = IpAddr::from([203, 0, 113, 200]);
        assert_eq!(t.reserve(newcomer, start).unwrap_err(), Refused::Everyone);
        assert_eq!(t.clients(), 60);
        // A stream of new addresses, one a second for an hour: the map keeps only the
        // last minute's.
        for s in 0..3600u32 {
            let now = start + WINDOW + Duration::from_secs(u64::from(s));
            t.reserve(IpAddr::from((0x0a00_0000 + s).to_be_bytes()), now)
                .unwrap();
            assert!(t.clients() <= 60, "{} clients kept", t.clients());
        }
        t.reserve(newcomer, start + Duration::from_secs(7200))
            .unwrap();
        assert_eq!(t.clients(), 1);
    }
}
