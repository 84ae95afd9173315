//! The agent's background work while unlocked, one tick a second ([`run`]): discovery of
//! a queued vertex every ten ticks, notification deliveries and their retries, refusals
//! written once their interval ends, scheduled pulls when due, and idle connections
//! closed. Discoveries and deliveries run in tasks of their own, so that an unreachable
//! node holds up nothing else; locking the agent stops them with the loop.
//!
//! [`start`] makes the peer endpoint at each unlock and starts the accept loop (handing
//! calls to `peers::serve`) and this loop: it is the one place that wires the peer
//! layers together. This module may depend on `peers` (commands, the serving layer's
//! refusals, the pool), `trust`'s discovery and the agent's root; nothing but the
//! unlock depends on it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::peers::commands::{backups, clone, deliver, pull, save_backup};
use super::peers::pool::{self, PeerNet};
use super::peers::serve::{self, flush_refusals};
use super::trust::discovery;
use crate::agent::{Open, node_id, on_store, refusals, schedule, vaults};
use crate::api::ApiError;
use crate::api::backups::Backup;
use crate::gestalt::Gestalts;
use crate::lan::Interfaces;
use crate::logging::{SYNC, printable};
use crate::notifications::Notifications;
use crate::vault::FetchOutcome;

/// Makes the endpoint on the agent's UDP socket and starts serving calls and the
/// background work.
pub(super) fn start(
    open: &Arc<Open>,
    socket: &std::net::UdpSocket,
    lan: Option<Interfaces>,
) -> Result<Arc<PeerNet>, ApiError> {
    let net = PeerNet::open(open, socket, lan)?;
    net.hold_tasks(vec![
        tokio::spawn(pool::accept_loop(
            open.clone(),
            net.clone(),
            serve::serve_call,
        ))
        .abort_handle(),
        tokio::spawn(run(open.clone(), net.clone())).abort_handle(),
    ]);
    Ok(net)
}

/// Outgoing connections unused this long are closed.
const IDLE_CLOSE: Duration = Duration::from_secs(120);
/// Discovery runs every this many ticks.
const DISCOVERY_TICKS: u64 = 10;
/// A queued vertex is tried this many times at most.
const DISCOVERY_ATTEMPTS: u32 = 10;

/// Delivers pending notifications, runs due pulls, and closes idle connections.
pub(super) async fn run(open: Arc<Open>, net: Arc<PeerNet>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Discoveries and deliveries in flight (each returns whether it delivered).
    let mut tasks = JoinSet::new();
    let mut ticks: u64 = 0;
    let mut unread = Unread::default();
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(DISCOVERY_TICKS) {
            discover_queued(&open, &mut tasks, &mut unread).await;
        }
        deliver_due(&open, &mut tasks, &mut unread).await;
        while tasks.try_join_next().is_some() {}
        let _ = on_store(&open, |open| {
            flush_refusals(open, false);
            Ok(())
        })
        .await;
        run_due_pulls(&open, &mut unread).await;
        net.close_idle(IDLE_CLOSE);
    }
}

/// The store failing to answer would fail every tick: one line a minute says so.
#[derive(Default)]
struct Unread(refusals::LogGate);

impl Unread {
    /// Notes that `what` could not be read.
    fn note(&mut self, open: &Open, what: &str, e: &ApiError) {
        if let Some(held) = self.0.pass(open.clock.now_ms()) {
            tracing::warn!(
                target: SYNC,
                error = e.message.as_str(),
                more = held,
                "the background work cannot read {what}; it tries again every second"
            );
        }
    }
}

/// Discovery in the background: one queued vertex at a time, a few attempts, in a task
/// of its own.
async fn discover_queued(open: &Arc<Open>, tasks: &mut JoinSet<bool>, unread: &mut Unread) {
    let queued = on_store(open, |open| {
        let tx = open.store.read()?;
        Ok(Gestalts::new(&open.store).queue(&tx)?)
    })
    .await
    .unwrap_or_else(|e| {
        unread.note(open, "the discovery queue", &e);
        Vec::new()
    });
    let Some(q) = queued.into_iter().find(|q| q.attempts < DISCOVERY_ATTEMPTS) else {
        return;
    };
    let open = open.clone();
    tasks.spawn(async move {
        let vertex = q.vertex.to_string();
        if let Err(e) = discovery::discover(&open, q.vertex).await {
            // Queued again with one more attempt; not worth more than DEBUG.
            tracing::debug!(
                target: SYNC,
                vertex,
                attempts = q.attempts + 1,
                error = e.message.as_str(),
                "background discovery failed"
            );
        }
        false
    });
}

/// One delivery attempt for each notification due, each in a task of its own.
async fn deliver_due(open: &Arc<Open>, tasks: &mut JoinSet<bool>, unread: &mut Unread) {
    let due = on_store(open, |open| {
        Ok(Notifications::new(&open.store)
            .with_clock(open.clock.clone())
            .due()?)
    })
    .await
    .unwrap_or_else(|e| {
        unread.note(open, "the notification outbox", &e);
        Vec::new()
    });
    for n in due {
        let open = open.clone();
        tasks.spawn(async move { deliver(&open, n.id, n.peer, n.body).await });
    }
}

/// Runs the scheduled pulls that are due, one after the other.
async fn run_due_pulls(open: &Arc<Open>, unread: &mut Unread) {
    let now = open.clock.now_ms();
    let list = on_store(open, backups).await.unwrap_or_else(|e| {
        unread.note(open, "the scheduled pulls", &e);
        Vec::new()
    });
    for backup in list {
        if schedule::due(&backup, now) {
            run_backup(open, backup).await;
        }
    }
}

/// One scheduled pull, inside its span (`vault`, `peer`, `every_s`).
async fn run_backup(open: &Arc<Open>, backup: Backup) {
    let span = tracing::info_span!(
        target: SYNC,
        "scheduled_pull",
        vault = backup.name,
        peer = %backup.node,
        every_s = backup.every_s
    );
    run_backup_in(open, backup).instrument(span).await
}

/// Pulls into the backup's vault (cloned first if it is not here), then saves when the
/// next run is due.
async fn run_backup_in(open: &Arc<Open>, mut backup: Backup) {
    let result = async {
        let node = node_id(&backup.node)?;
        let name = backup.name.clone();
        let exists = on_store(open, move |open| Ok(vaults(open).find(None, &name).is_ok())).await?;
        if exists {
            pull(open, &backup.name, Some(node)).await
        } else {
            clone(open, node, &backup.vault, Some(backup.name.clone())).await
        }
    }
    .await;
    let summary = result.as_ref().map(FetchOutcome::summary);
    let summary = match &summary {
        Ok(text) => Ok(text.as_str()),
        Err(e) => Err(e.message.as_str()),
    };
    schedule::ran(&mut backup, summary, open.clock.now_ms());
    if let Err(e) = &result {
        // Nobody is at a terminal to see it: this line is how the operator learns.
        tracing::warn!(
            target: SYNC,
            outcome = "failed",
            code = ?e.code,
            error = e.message.as_str(),
            next_in_s = backup.every_s,
            "scheduled pull failed: {}",
            printable(&e.message)
        );
    }
    if let Err(e) = on_store(open, move |open| save_backup(open, &backup)).await {
        // The next run time is not saved either: the pull is tried again at the next tick.
        tracing::warn!(
            target: SYNC,
            error = e.message.as_str(),
            "the scheduled pull's outcome could not be saved"
        );
    }
}
