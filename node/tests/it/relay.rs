//! A userspace UDP relay that sits between a QUIC client and server on 127.0.0.1 and can
//! drop and delay datagrams: the kernel here has no netem qdisc, so the tests that want
//! packet loss, latency or a server that goes away mid-transfer put one of these in the
//! path.
//!
//! The client dials [`Relay::addr`]; the relay forwards what it receives to the current
//! target and the target's replies back to the last client address it has seen. Only one
//! client at a time is supported. Loss is applied to each direction independently, from a
//! small self-contained PRNG; delay is one-way and keeps each direction in order.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a thread blocks (on a socket read or on the queue) before it looks at the
/// stop flag again.
const POLL: Duration = Duration::from_millis(50);

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Counters of what the relay has done so far.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RelayStats {
    /// Payload bytes sent on to the server.
    pub(crate) to_server_bytes: u64,
    /// Payload bytes sent back to the client.
    pub(crate) to_client_bytes: u64,
    /// Datagrams dropped by the configured loss (both directions).
    pub(crate) dropped: u64,
    /// Datagrams sent on (both directions).
    pub(crate) forwarded: u64,
}

/// A UDP relay between one client and one (re-targetable) server; its threads stop when it
/// is dropped.
pub(crate) struct Relay {
    /// State shared with the relay's threads.
    shared: Arc<Shared>,
    /// The client-facing address.
    addr: SocketAddr,
    /// The two receiver threads and the sender thread.
    threads: Vec<JoinHandle<()>>,
}

/// Which way a datagram travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

/// A datagram waiting for its due time.
struct Pending {
    /// When to send it.
    due: Instant,
    /// The payload.
    data: Vec<u8>,
}

/// Everything the threads share, behind one lock.
struct State {
    /// Where client datagrams go.
    target: SocketAddr,
    /// The last client address seen; replies go there.
    client: Option<SocketAddr>,
    /// Probability of dropping a datagram.
    loss: f64,
    /// One-way delay added to every datagram.
    delay: Duration,
    /// xorshift64* state (never zero).
    rng: u64,
    /// Counters.
    stats: RelayStats,
    /// Datagrams waiting to go to the server, in order of due time.
    to_server: VecDeque<Pending>,
    /// Datagrams waiting to go to the client, in order of due time.
    to_client: VecDeque<Pending>,
}

impl State {
    /// The next PRNG draw, uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The queue for one direction.
    fn queue(&mut self, dir: Direction) -> &mut VecDeque<Pending> {
        match dir {
            Direction::ToServer => &mut self.to_server,
            Direction::ToClient => &mut self.to_client,
        }
    }

    /// The earliest due time of any queued datagram.
    fn next_due(&self) -> Option<Instant> {
        let a = self.to_server.front().map(|p| p.due);
        let b = self.to_client.front().map(|p| p.due);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The relay's shared state plus the means to wake and stop its threads.
struct Shared {
    /// Configuration, counters and queues.
    state: Mutex<State>,
    /// Signalled when a datagram is queued or the relay stops.
    wake: Condvar,
    /// Set on drop.
    stop: AtomicBool,
    /// Socket facing the client (bound to the relay's public address).
    client_sock: UdpSocket,
    /// Socket facing the server.
    server_sock: UdpSocket,
}

impl Shared {
    /// Locks the state, ignoring poisoning (a panicked thread leaves nothing half-done that
    /// matters to a test relay).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the relay is shutting down.
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A PRNG seed from the clock and a process-wide counter, never zero.
fn seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let s = nanos ^ n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    if s == 0 { 0x9e37_79b9_7f4a_7c15 } else { s }
}

/// Binds a UDP socket on 127.0.0.1 with the polling read timeout.
fn bind_local() -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind relay socket on 127.0.0.1");
    sock.set_read_timeout(Some(POLL))
        .expect("set relay socket read timeout");
    sock
}

impl Relay {
    /// Listens on 127.0.0.1:0 and forwards to `target` (a 127.0.0.1 address).
    pub(crate) fn start(target: SocketAddr) -> Relay {
        let client_sock = bind_local();
        let server_sock = bind_local();
        let addr = client_sock.local_addr().expect("relay local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                target,
                client: None,
                loss: 0.0,
                delay: Duration::ZERO,
                rng: seed(),
                stats: RelayStats::default(),
                to_server: VecDeque::new(),
                to_client: VecDeque::new(),
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            client_sock,
            server_sock,
        });
        let spawn = |name: &str, f: fn(&Shared)| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || f(&shared))
                .expect("spawn relay thread")
        };
        let threads = vec![
            spawn("relay-from-client", |s| receive(s, Direction::ToServer)),
            spawn("relay-from-server", |s| receive(s, Direction::ToClient)),
            spawn("relay-send", send),
        ];
        Relay {
            shared,
            addr,
            threads,
        }
    }

    /// The address clients should dial.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drop each datagram (each direction independently) with this probability, 0.0..=1.0.
    pub(crate) fn set_loss(&self, p: f64) {
        self.shared.lock().loss = p.clamp(0.0, 1.0);
    }

    /// Delay every datagram by this one-way delay (RTT = 2x).
    ///
    /// Datagrams already queued keep their due times; each direction stays in order, so
    /// after a decrease new datagrams wait behind the older, slower ones.
    pub(crate) fn set_delay(&self, one_way: Duration) {
        self.shared.lock().delay = one_way;
    }

    /// Datagrams and bytes forwarded / dropped so far: server->client bytes forwarded is
    /// what tests watch to kill a server mid-transfer.
    ///
    /// `dropped` counts only datagrams dropped by the configured loss.
    pub(crate) fn stats(&self) -> RelayStats {
        self.shared.lock().stats
    }

    /// Point the relay at another server address (a restarted server on a new port); the
    /// client keeps dialling the relay.
    ///
    /// Datagrams already queued for the server go to the new target; replies are accepted
    /// only from the current target's port.
    pub(crate) fn retarget(&self, target: SocketAddr) {
        self.shared.lock().target = target;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Take the lock so the sender is either waiting (and gets this notify) or has yet
        // to check the flag.
        drop(self.shared.lock());
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Receives datagrams on the socket for `dir`'s source side and queues them (or drops
/// them) until the relay stops.
fn receive(shared: &Shared, dir: Direction) {
    let sock = match dir {
        Direction::ToServer => &shared.client_sock,
        Direction::ToClient => &shared.server_sock,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stopping() {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue;
            }
            // ICMP errors (a peer that went away) and the like: keep relaying.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let now = Instant::now();
        let mut st = shared.lock();
        match dir {
            Direction::ToServer => st.client = Some(from),
            Direction::ToClient => {
                // Ignore strays (e.g. an old server after a retarget) and replies before
                // any client has spoken.
                if from.port() != st.target.port() || st.client.is_none() {
                    continue;
                }
            }
        }
        if st.loss > 0.0 && st.next_f64() < st.loss {
            st.stats.dropped += 1;
            continue;
        }
        let delay = st.delay;
        let queue = st.queue(dir);
        // Never due before the datagram ahead of it: a delay change must not reorder.
        let due = queue
            .back()
            .map_or(now + delay, |last| last.due.max(now + delay));
        queue.push_back(Pending {
            due,
            data: buf[..n].to_vec(),
        });
        drop(st);
        shared.wake.notify_all();
    }
}

/// Sends queued datagrams when they fall due until the relay stops.
///
/// Sends happen under the lock so that the counters never lag behind what a peer has
/// received (a UDP send on loopback does not block for long).
fn send(shared: &Shared) {
    let mut st = shared.lock();
    while !shared.stopping() {
        let now = Instant::now();
        for dir in [Direction::ToServer, Direction::ToClient] {
            let (sock, dest) = match dir {
                Direction::ToServer => (&shared.server_sock, Some(st.target)),
                Direction::ToClient => (&shared.client_sock, st.client),
            };
            while st.queue(dir).front().is_some_and(|p| p.due <= now) {
                let (Some(p), Some(dest)) = (st.queue(dir).pop_front(), dest) else {
                    continue;
                };
                // A peer that has gone away is not the relay's problem: ignore send errors.
                if sock.send_to(&p.data, dest).is_ok() {
                    let bytes = p.data.len() as u64;
                    match dir {
                        Direction::ToServer => st.stats.to_server_bytes += bytes,
                        Direction::ToClient => st.stats.to_client_bytes += bytes,
                    }
                    st.stats.forwarded += 1;
                }
            }
        }
        let wait = st
            .next_due()
            .map_or(POLL, |due| due.saturating_duration_since(now).min(POLL));
        st = shared
            .wake
            .wait_timeout(st, wait)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

mod tests {
    use std::net::{SocketAddr, UdpSocket};
    use std::time::Duration;

    use super::Relay;

    /// A UDP echo server on 127.0.0.1:0 that runs until the test process exits.
    fn echo_server() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        addr
    }

    /// A client socket on 127.0.0.1:0 with a receive timeout.
    fn client(timeout: Duration) -> UdpSocket {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(timeout)).unwrap();
        sock
    }

    #[test]
    fn relay_forwards_both_ways_and_counts() {
        let relay = Relay::start(echo_server());
        let c = client(Duration::from_secs(1));
        let mut buf = [0u8; 64];
        for i in 0..5u8 {
            c.send_to(&[i; 10], relay.addr()).unwrap();
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(from, relay.addr());
            assert_eq!(&buf[..n], &[i; 10]);
        }
        let s = relay.stats();
        assert_eq!(s.to_server_bytes, 50);
        assert_eq!(s.to_client_bytes, 50);
        assert_eq!(s.forwarded, 10);
        assert_eq!(s.dropped, 0);
    }

    #[test]
    fn relay_with_total_loss_forwards_nothing() {
        let relay = Relay::start(echo_server());
        relay.set_loss(1.0);
        let c = client(Duration::from_millis(200));
        for _ in 0..5 {
            c.send_to(b"lost", relay.addr()).unwrap();
        }
        let mut buf = [0u8; 64];
        assert!(c.recv_from(&mut buf).is_err(), "a datagram got through");
        let s = relay.stats();
        assert_eq!(s.dropped, 5);
        assert_eq!(s.forwarded, 0);
        assert_eq!(s.to_server_bytes + s.to_client_bytes, 0);
    }
}
