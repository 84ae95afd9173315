//! The peer endpoint's budget: how many connections it takes (in all, per address, from
//! nodes outside the graph), how many calls each may have running, how large a call may be,
//! and how many calls may use a blocking thread at once. Quinn bounds each connection
//! (streams and windows: [`crate::net::MAX_STREAMS`], [`crate::net::CONNECTION_WINDOW`]);
//! this bounds how many connections there are and what their calls may cost.
//!
//! No I/O here: [`Budget`] counts, and its guards give back what they took when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections at once, handshakes in progress included.
pub(super) const MAX_CONNECTIONS: usize = 256;
/// Connections at once from one IP address (an IPv6 address counts by its /64).
pub(super) const MAX_PER_ADDRESS: usize = 16;
/// Connections at once from nodes outside the graph.
pub(super) const MAX_STRANGERS: usize = 32;
/// Calls running at once on one connection from a node in the graph.
pub(super) const CALLS_PER_CONNECTION: usize = 16;
/// ... and from a node outside it.
pub(super) const STRANGER_CALLS_PER_CONNECTION: usize = 2;
/// The largest call a node outside the graph may send (a claim fits; a fetch does not
/// need to, since a stranger may fetch nothing).
pub(super) const STRANGER_MAX_CALL: usize = 64 * 1024;
/// Peer calls on blocking threads at once (the rest wait without holding a thread).
pub(super) const BLOCKING_CALLS: usize = 16;

/// The address a budget counts by: the IPv4 address, or an IPv6 address's /64 (one
/// subscriber usually has a whole /64).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
        v4 => v4,
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    strangers: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// The endpoint's connection budget.
#[derive(Debug, Default, Clone)]
pub(super) struct Budget(Arc<Mutex<Counts>>);

/// A connection's place in the budget, given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    budget: Budget,
    address: IpAddr,
    stranger: bool,
}

impl Budget {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `ip`, if the budget has one.
    pub(super) fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let address = bucket(ip);
        let mut counts = self.counts();
        let here = counts.per_address.get(&address).copied().unwrap_or(0);
        if counts.total >= MAX_CONNECTIONS || here >= MAX_PER_ADDRESS {
            return None;
        }
        counts.total += 1;
        counts.per_address.insert(address, here + 1);
        Some(Slot {
            budget: self.clone(),
            address,
            stranger: false,
        })
    }

    /// How many connections are counted now (for tests and status).
    #[cfg(test)]
    fn total(&self) -> usize {
        self.counts().total
    }
}

impl Slot {
    /// Marks the connection as one from a node outside the graph; `false` (and nothing
    /// changes) if there are as many of those as the budget allows.
    pub(super) fn stranger(&mut self) -> bool {
        if self.stranger {
            return true;
        }
        let mut counts = self.budget.counts();
        if counts.strangers >= MAX_STRANGERS {
            return false;
        }
        counts.strangers += 1;
        drop(counts);
        self.stranger = true;
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.budget.counts();
        counts.total = counts.total.saturating_sub(1);
        if self.stranger {
            counts.strangers = counts.strangers.saturating_sub(1);
        }
        if let Some(n) = counts.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_per_address_and_in_all() {
        let budget = Budget::default();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<Slot> = (0..MAX_PER_ADDRESS)
            .map(|_| budget.admit(one).unwrap())
            .collect();
        assert!(budget.admit(one).is_none(), "per address");
        assert!(budget.admit("192.0.2.2".parse().unwrap()).is_some());
        drop(slots);
        assert_eq!(budget.total(), 0, "every slot given back");
        // IPv6 counts by /64: other hosts of the same /64 share the allowance.
        let mut held = Vec::new();
        for i in 0..MAX_PER_ADDRESS {
            held.push(
                budget
                    .admit(format!("2001:db8::{i:x}").parse().unwrap())
                    .unwrap(),
            );
        }
        assert!(budget.admit("2001:db8::ffff:1".parse().unwrap()).is_none());
        assert!(budget.admit("2001:db8:0:1::1".parse().unwrap()).is_some());
        drop(held);
        let mut all = Vec::new();
        for i in 0..MAX_CONNECTIONS {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
            all.push(budget.admit(ip).unwrap());
        }
        assert!(
            budget.admit("198.51.100.1".parse().unwrap()).is_none(),
            "in all"
        );
    }

    #[test]
    fn strangers_have_a_budget_of_their_own() {
        let budget = Budget::default();
        let mut slots = Vec::new();
        for i in 0..MAX_STRANGERS {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
            let mut slot = budget.admit(ip).unwrap();
            assert!(slot.stranger());
            slots.push(slot);
        }
        let mut one_more = budget.admit("198.51.100.1".parse().unwrap()).unwrap();
        assert!(!one_more.stranger());
        slots.pop();
        assert!(one_more.stranger(), "a stranger's place was given back");
    }
}
