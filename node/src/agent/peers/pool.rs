//! The peer endpoint and its connections, while the agent is unlocked: the QUIC endpoint
//! on the agent's UDP socket and its LAN advertisement, the accept loop (the budget, the
//! caller's place in the graph, one task per call handed to the serving layer), and the
//! outgoing side: one dial per node at a time, the pool of connections, [`call_peer`]
//! with its one retry on a stale connection.
//!
//! May depend on the agent's root (`Open`, the store helpers) and its no-I/O modules
//! (`budget`, `refusals`); nothing else in `peers` or `trust`: the serving layer is
//! handed in by [`super::start`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use crate::agent::{Open, budget, on_store, refusals};
use crate::api::nodes::{ConnectionInfo, Direction};
use crate::api::{ApiError, ErrorCode};
use crate::identity::NodeId;
use crate::lan::{self, Interfaces};
use crate::logging::PEER;
use crate::net::{Connection, Endpoint, NetError};
use crate::nodes::Nodes;
use crate::peer::{PeerError, PeerReply, PeerRequest, unary};

/// How long a dial may take.
const DIAL_DEADLINE: Duration = Duration::from_secs(15);

/// The endpoint and its connections, while the agent is unlocked.
pub(in crate::agent) struct PeerNet {
    endpoint: Endpoint,
    pool: Mutex<HashMap<NodeId, Pooled>>,
    incoming: Mutex<HashMap<usize, (NodeId, SocketAddr, Instant, Connection)>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    advertiser: Mutex<Option<lan::Advertiser>>,
    lan: Option<Interfaces>,
    /// One dial at a time per node (a second caller then reuses the first's connection);
    /// dials to different nodes do not wait for each other.
    dialing: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    /// Outbox entries being delivered now (the background loop skips them).
    delivering: Mutex<BTreeSet<u64>>,
    /// Connections taken, in all, per address and from strangers.
    budget: budget::Budget,
    /// Peer calls allowed on blocking threads at once.
    blocking_calls: tokio::sync::Semaphore,
    /// Connections turned away for the budget: logged at most once a minute.
    busy_log: Mutex<refusals::LogGate>,
}

/// An outgoing connection in the pool: since when, and when last used (for idle close).
struct Pooled {
    conn: Connection,
    since: Instant,
    last_used: Instant,
}

impl PeerNet {
    /// The interfaces the node is advertised on over mDNS, if it is.
    pub(in crate::agent) fn lan(&self) -> Option<Interfaces> {
        self.lan
    }

    /// The local address peers dial.
    pub(in crate::agent) fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Presents a new node key: new connections use it; the open ones are closed so that
    /// peers reconnect and see it.
    pub(in crate::agent) fn set_identity(
        &self,
        identity: &crate::identity::Identity,
        renewals: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<(), ApiError> {
        self.endpoint
            .set_identity(identity, renewals)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        if let (Some(interfaces), Some(addr)) = (self.lan, self.local_addr()) {
            // Advertise the new NodeId (the old advertisement is withdrawn first).
            let mut advertiser = self.advertiser.lock().unwrap_or_else(|p| p.into_inner());
            advertiser.take();
            *advertiser = advertise(&identity.node_id(), addr, interfaces);
        }
        for (_, pooled) in self.pool.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            pooled.conn.close("key renewed");
        }
        for (_, (_, _, _, conn)) in self
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            conn.close("key renewed");
        }
        Ok(())
    }

    /// Stops the background work and closes every connection.
    pub(in crate::agent) fn shutdown(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.advertiser
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.endpoint.close();
    }
}

impl PeerNet {
    /// Makes the endpoint on the agent's UDP socket (presenting the node key and its
    /// renewals) and advertises it on the LAN when asked to.
    pub(in crate::agent) fn open(
        open: &Open,
        socket: &std::net::UdpSocket,
        lan: Option<Interfaces>,
    ) -> Result<Arc<PeerNet>, ApiError> {
        let socket = socket
            .try_clone()
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("peer socket: {e}")))?;
        let renewals = crate::identity::renewals(&open.store.read()?)?;
        let endpoint = Endpoint::from_socket(socket, &open.identity(), renewals)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let net = Arc::new(PeerNet {
            endpoint,
            pool: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            advertiser: Mutex::new(None),
            lan,
            dialing: Mutex::new(HashMap::new()),
            delivering: Mutex::new(BTreeSet::new()),
            budget: budget::Budget::default(),
            blocking_calls: tokio::sync::Semaphore::new(budget::BLOCKING_CALLS),
            busy_log: Mutex::new(refusals::LogGate::default()),
        });
        tracing::info!(
            target: PEER,
            addr = net.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            node = %open.identity().node_id(),
            lan = lan.is_some(),
            "peer endpoint open"
        );
        if let (Some(interfaces), Some(addr)) = (lan, net.local_addr()) {
            *net.advertiser.lock().unwrap_or_else(|p| p.into_inner()) =
                advertise(&open.identity().node_id(), addr, interfaces);
        }
        Ok(net)
    }

    /// Keeps the tasks that [`PeerNet::shutdown`] stops.
    pub(in crate::agent) fn hold_tasks(&self, tasks: Vec<tokio::task::AbortHandle>) {
        *self.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
    }

    /// A permit to serve one call on a blocking thread: blocking threads are shared by
    /// every caller, so a bounded number of calls use them at once and the others wait
    /// here without holding one. `None` once the endpoint is shutting down.
    pub(in crate::agent) async fn blocking_permit(
        &self,
    ) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.blocking_calls.acquire().await.ok()
    }

    /// Marks outbox entry `id` as being delivered; false if it already is.
    pub(in crate::agent) fn begin_delivery(&self, id: u64) -> bool {
        self.delivering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
    }

    /// Outbox entry `id` is no longer being delivered.
    pub(in crate::agent) fn end_delivery(&self, id: u64) {
        self.delivering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Closes the outgoing connections that are closed already or unused for `idle`.
    pub(in crate::agent) fn close_idle(&self, idle: Duration) {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, p| {
                let keep = !p.conn.is_closed() && p.last_used.elapsed() < idle;
                if !keep {
                    p.conn.close("idle");
                }
                keep
            });
    }

    /// The open connections, both ways.
    pub(in crate::agent) fn connections(&self) -> Vec<ConnectionInfo> {
        let mut out = Vec::new();
        for (node, p) in self.pool.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if p.conn.is_closed() {
                continue;
            }
            out.push(ConnectionInfo {
                node: node.to_string(),
                addr: p.conn.remote_address().to_string(),
                direction: Direction::Outgoing,
                age_s: p.since.elapsed().as_secs(),
                rtt_ms: p.conn.rtt().as_millis() as u64,
            });
        }
        for (node, addr, since, conn) in self
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if conn.is_closed() {
                continue;
            }
            out.push(ConnectionInfo {
                node: node.to_string(),
                addr: addr.to_string(),
                direction: Direction::Incoming,
                age_s: since.elapsed().as_secs(),
                rtt_ms: conn.rtt().as_millis() as u64,
            });
        }
        out.sort_by(|a, b| (&a.node, &a.direction).cmp(&(&b.node, &b.direction)));
        out
    }
}

/// Starts advertising `node` over mDNS; a failure leaves the node unadvertised, and says so.
fn advertise(node: &NodeId, addr: SocketAddr, interfaces: Interfaces) -> Option<lan::Advertiser> {
    match lan::Advertiser::start(&node.to_string(), addr.port(), interfaces) {
        Ok(advertiser) => {
            tracing::info!(target: PEER, port = addr.port(), "advertised on the LAN (mDNS)");
            Some(advertiser)
        }
        Err(e) => {
            tracing::warn!(
                target: PEER,
                error = %e,
                "LAN advertisement is off: other nodes will not discover this one"
            );
            None
        }
    }
}

/// The endpoint, or why there is none.
pub(in crate::agent) fn net_of(open: &Open) -> Result<Arc<PeerNet>, ApiError> {
    open.net.get().cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "this agent has no peer endpoint (it was started with --peer-listen off)",
        )
    })
}

/// One call a node made on an accepted connection, for the serving layer.
pub(in crate::agent) struct IncomingCall {
    /// The caller, as the TLS handshake proved it.
    pub(in crate::agent) peer: NodeId,
    /// Whether the caller is in the node graph; a stranger's calls are not logged one by one.
    pub(in crate::agent) known: bool,
    /// The largest call the caller may send (smaller for strangers).
    pub(in crate::agent) max_call: usize,
    /// The call's stream, where the answer goes.
    pub(in crate::agent) send: quinn::SendStream,
    /// The call's stream, where the call comes from.
    pub(in crate::agent) recv: quinn::RecvStream,
}

/// Accepts connections within the budget until the endpoint closes, and hands each call
/// on them to `serve` in a task of its own, inside a `peer_call` span.
pub(in crate::agent) async fn accept_loop<S, F>(open: Arc<Open>, net: Arc<PeerNet>, serve: S)
where
    S: Fn(Arc<Open>, Arc<PeerNet>, IncomingCall) -> F + Copy + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    while let Some(incoming) = net.endpoint.incoming().await {
        // Refused before the handshake when the budget is spent: in all, or per address.
        let Some(slot) = net.budget.admit(incoming.remote_address().ip()) else {
            busy(&net, incoming.remote_address());
            incoming.refuse();
            continue;
        };
        tokio::spawn(serve_connection(
            open.clone(),
            net.clone(),
            incoming,
            slot,
            serve,
        ));
    }
}

/// One accepted connection, until the caller closes it: the handshake, the caller's
/// place in the graph (a stranger gets less), its calls; `slot` is its place in the
/// budget, given back at the end.
async fn serve_connection<S, F>(
    open: Arc<Open>,
    net: Arc<PeerNet>,
    incoming: crate::net::Incoming,
    mut slot: budget::Slot,
    serve: S,
) where
    S: Fn(Arc<Open>, Arc<PeerNet>, IncomingCall) -> F + Copy + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let Ok(conn) = incoming.accept().await else {
        return;
    };
    let known = caller_known(&open, &conn).await;
    // A node outside the graph gets less: fewer connections, fewer and smaller calls.
    if !known && !slot.stranger() {
        busy(&net, conn.remote_address());
        conn.close("busy");
        return;
    }
    let id = rand_id();
    net.incoming
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id,
            (
                conn.peer(),
                conn.remote_address(),
                Instant::now(),
                conn.clone(),
            ),
        );
    if known {
        note_seen(&open, &conn).await;
    }
    accept_calls(&open, &net, &conn, known, serve).await;
    net.incoming
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    drop(slot);
}

/// Whether the caller of a new connection is in the graph; a caller that renewed its key
/// first gets what it held under its old NodeId.
async fn caller_known(open: &Arc<Open>, conn: &Connection) -> bool {
    let peer = conn.peer();
    if !conn.earlier_ids().is_empty() {
        // A node that renewed its key: what it held under its old NodeId is its.
        let earlier = conn.earlier_ids().to_vec();
        let renamed = on_store(open, move |open| {
            Ok(Nodes::new(&open.store).renamed(peer, &earlier)?)
        })
        .await;
        if let Err(e) = renamed {
            tracing::warn!(
                target: PEER,
                %peer,
                error = e.message.as_str(),
                "a node that renewed its key could not be moved to its new NodeId"
            );
        }
    }
    on_store(open, move |open| {
        let tx = open.store.read()?;
        Ok(Nodes::new(&open.store).known(&tx, &peer)?)
    })
    .await
    .unwrap_or(false)
}

/// Notes a known node's connection: a debug line, and the node seen now.
async fn note_seen(open: &Arc<Open>, conn: &Connection) {
    let (peer, addr) = (conn.peer(), conn.remote_address());
    tracing::debug!(target: PEER, %peer, %addr, "connection from a known node");
    let seen = on_store(open, move |open| {
        Ok(Nodes::new(&open.store).seen(&peer, None)?)
    })
    .await;
    if let Err(e) = seen {
        tracing::debug!(
            target: PEER,
            %peer,
            error = e.message.as_str(),
            "cannot note the node as seen"
        );
    }
}

/// Hands each call on `conn` to `serve` in a task of its own, as many at once as the
/// caller's budget allows, until the connection closes.
async fn accept_calls<S, F>(
    open: &Arc<Open>,
    net: &Arc<PeerNet>,
    conn: &Connection,
    known: bool,
    serve: S,
) where
    S: Fn(Arc<Open>, Arc<PeerNet>, IncomingCall) -> F + Copy + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let peer = conn.peer();
    let calls = Arc::new(tokio::sync::Semaphore::new(if known {
        budget::CALLS_PER_CONNECTION
    } else {
        budget::STRANGER_CALLS_PER_CONNECTION
    }));
    let max_call = if known {
        crate::rpc::MAX_FRAME
    } else {
        budget::STRANGER_MAX_CALL
    };
    while let Ok((mut send, recv)) = conn.accept().await {
        // Over the calls allowed at once: this one is turned away at once.
        let Ok(permit) = calls.clone().try_acquire_owned() else {
            let _ = send.reset(0u32.into());
            drop(recv);
            continue;
        };
        let (open, net) = (open.clone(), net.clone());
        let call = IncomingCall {
            peer,
            known,
            max_call,
            send,
            recv,
        };
        // A span per call: what is logged while serving it names the caller and the call
        // (a span alone writes nothing, so a stranger's calls cost no line).
        let span = tracing::info_span!(
            target: PEER,
            "peer_call",
            %peer,
            call = tracing::field::Empty
        );
        tokio::spawn(
            async move {
                serve(open, net, call).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Notes a connection turned away because the budget is spent: a line at most once per
/// minute, however many there are.
fn busy(net: &PeerNet, from: SocketAddr) {
    let pass = net
        .busy_log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pass(crate::clock::unix_ms());
    if let Some(held) = pass {
        tracing::warn!(
            target: PEER,
            %from,
            outcome = "refused",
            more = held,
            "connections turned away: the peer endpoint's budget is spent \
             (one such line a minute at most; `more` counts those since the last)"
        );
    }
}

fn rand_id() -> usize {
    use rand_core::RngCore as _;
    rand_core::OsRng.next_u64() as usize
}

/// A connection to `node`: the pooled one, or a new one to an address from the graph (or
/// `addr`). Fails unless the peer proves it is `node`.
pub(in crate::agent) async fn dial(
    open: &Arc<Open>,
    node: NodeId,
    addr: Option<&str>,
) -> Result<Connection, ApiError> {
    let net = net_of(open)?;
    let gate = net
        .dialing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(node)
        .or_default()
        .clone();
    let _dialing = gate.lock().await;
    if addr.is_none()
        && let Some(conn) = net.pooled(&node)
    {
        return Ok(conn);
    }
    let addrs = match addr {
        Some(addr) => vec![addr.to_owned()],
        None => addresses(open, node).await?,
    };
    let mut failed = Failed::default();
    for text in &addrs {
        if let Some(conn) = connect(open, &net, node, text, &mut failed).await? {
            return Ok(conn);
        }
    }
    Err(ApiError::new(
        // Another key at a known address is a refusal to trust it, not a network fault.
        if failed.other_node {
            ErrorCode::Denied
        } else {
            ErrorCode::Unavailable
        },
        failed.reasons.join("; "),
    ))
}

impl PeerNet {
    /// The pooled connection to `node`, if it is still open (and now used).
    fn pooled(&self, node: &NodeId) -> Option<Connection> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let pooled = pool.get_mut(node).filter(|p| !p.conn.is_closed())?;
        pooled.last_used = Instant::now();
        Some(pooled.conn.clone())
    }
}

/// The addresses the graph knows for `node`; an error names the command that adds one.
async fn addresses(open: &Arc<Open>, node: NodeId) -> Result<Vec<String>, ApiError> {
    let record = on_store(open, move |open| {
        let tx = open.store.read()?;
        Ok(Nodes::new(&open.store).get(&tx, &node)?)
    })
    .await?;
    match record {
        Some(r) if !r.addrs.is_empty() => Ok(r.addrs),
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no address known for {node}: add it with `pk nodes add {node} <host> <port>`"),
        )),
    }
}

/// Tries each address `text` resolves to; the first connection to `node` goes into the
/// pool. What failed is added to `failed`.
async fn connect(
    open: &Arc<Open>,
    net: &PeerNet,
    node: NodeId,
    text: &str,
    failed: &mut Failed,
) -> Result<Option<Connection>, ApiError> {
    let resolved: Vec<SocketAddr> = match tokio::net::lookup_host(text).await {
        Ok(found) => found.collect(),
        Err(e) => {
            failed.reasons.push(format!("{text}: {e}"));
            return Ok(None);
        }
    };
    for sock in resolved {
        match tokio::time::timeout(DIAL_DEADLINE, net.endpoint.connect(sock, node)).await {
            Ok(Ok(conn)) => return keep(open, net, node, conn, text).await.map(Some),
            Ok(Err(e)) => {
                failed.other_node |= matches!(e, NetError::WrongNode { .. });
                failed.reasons.push(e.to_string());
            }
            Err(_) => failed.reasons.push(format!(
                "{node} at {sock}: no answer within {} s",
                DIAL_DEADLINE.as_secs()
            )),
        }
    }
    Ok(None)
}

/// Why every address tried for a node failed.
#[derive(Default)]
struct Failed {
    /// What each attempt said, for the user.
    reasons: Vec<String>,
    /// Whether another node's key answered at one of them.
    other_node: bool,
}

/// A new connection to `node` (reached at `text`) joins the pool; the graph notes the
/// node seen there, under its new NodeId if it renewed its key.
async fn keep(
    open: &Arc<Open>,
    net: &PeerNet,
    node: NodeId,
    conn: Connection,
    text: &str,
) -> Result<Connection, ApiError> {
    if conn.peer() != node {
        // It renewed its key; the handshake proved the chain to `node`.
        let (peer, earlier) = (conn.peer(), conn.earlier_ids().to_vec());
        on_store(open, move |open| {
            Ok(Nodes::new(&open.store).renamed(peer, &earlier)?)
        })
        .await?;
    }
    net.pool.lock().unwrap_or_else(|p| p.into_inner()).insert(
        node,
        Pooled {
            conn: conn.clone(),
            since: Instant::now(),
            last_used: Instant::now(),
        },
    );
    let text = text.to_owned();
    let _ = on_store(open, move |open| {
        Ok(Nodes::new(&open.store).seen(&node, Some(&text))?)
    })
    .await;
    Ok(conn)
}

/// The error for `pk`; a connection that broke or went silent leaves the pool, so the
/// next call dials afresh instead of waiting on a dead peer.
pub(in crate::agent) fn failed(open: &Open, e: PeerError) -> ApiError {
    if let PeerError::Connection { node, .. } | PeerError::Timeout { node, .. } = &e
        && let Some(net) = open.net.get()
        && let Some(pooled) = net
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node)
    {
        pooled.conn.close("broken");
    }
    e.to_api()
}

/// Closes the pooled connection to `node`, if any (the node is being removed).
pub(in crate::agent) fn forget(open: &Open, node: &NodeId) {
    if let Some(net) = open.net.get()
        && let Some(p) = net
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node)
    {
        p.conn.close("removed");
    }
}

/// One unary call to `node` over the pooled connection; when that connection turns out
/// to be dead (the peer restarted), a fresh one is dialled and the call made once more.
pub(in crate::agent) async fn call_peer(
    open: &Arc<Open>,
    node: NodeId,
    request: PeerRequest,
) -> Result<(Connection, PeerReply), ApiError> {
    let conn = dial(open, node, None).await?;
    match unary(&conn, request.clone()).await {
        Ok(reply) => Ok((conn, reply)),
        Err(e @ PeerError::Connection { .. }) => {
            failed(open, e);
            let conn = dial(open, node, None).await?;
            let reply = unary(&conn, request).await.map_err(|e| failed(open, e))?;
            Ok((conn, reply))
        }
        Err(e) => Err(failed(open, e)),
    }
}
