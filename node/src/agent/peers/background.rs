//! The agent's background work while unlocked, one tick a second: discovery of a queued
//! vertex every ten ticks, notification deliveries and their retries, refusals written
//! once their interval ends, scheduled pulls when due, and idle connections closed.
//!
//! May depend on the commands (`super::commands`), the serving layer's refusals, the
//! pool, `trust`'s discovery and the agent's root; nothing depends on it but
//! [`super::start`].

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

use super::commands::{backups, clone, deliver, pull, save_backup};
use super::pool::PeerNet;
use super::serve::flush_refusals;
use crate::agent::trust::discovery;
use crate::agent::{Open, blocking, node_id, refusals, schedule, store_error, vaults};
use crate::api::ApiError;
use crate::api::backups::Backup;
use crate::logging::{SYNC, printable};
use crate::notifications::Notifications;

/// Outgoing connections unused this long are closed.
const IDLE_CLOSE: Duration = Duration::from_secs(120);

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

async fn run_backup_in(open: &Arc<Open>, mut backup: Backup) {
    let result = async {
        let node = node_id(&backup.node)?;
        let exists = {
            let open = open.clone();
            let name = backup.name.clone();
            blocking(move || Ok(vaults(&open).find(None, &name).is_ok())).await?
        };
        if exists {
            pull(open, &backup.name, Some(node)).await
        } else {
            clone(open, node, &backup.vault, Some(backup.name.clone())).await
        }
    }
    .await;
    let summary = match &result {
        Ok(outcome) => Ok(outcome.result.as_str()),
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
    let open = open.clone();
    if let Err(e) = blocking(move || save_backup(&open, &backup, "")).await {
        // The next run time is not saved either: the pull is tried again at the next tick.
        tracing::warn!(
            target: SYNC,
            error = e.message.as_str(),
            "the scheduled pull's outcome could not be saved"
        );
    }
}

/// Delivers pending notifications, runs due pulls, and closes idle connections.
pub(super) async fn run(open: Arc<Open>, net: Arc<PeerNet>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut deliveries = tokio::task::JoinSet::new();
    let mut ticks: u64 = 0;
    // The store failing to answer would fail every tick: one line a minute says so.
    let mut trouble = refusals::LogGate::default();
    let mut unread = |what: &str, e: &ApiError| {
        if let Some(held) = trouble.pass(open.clock.now_ms()) {
            tracing::warn!(
                target: SYNC,
                error = e.message.as_str(),
                more = held,
                "the background work cannot read {what}; it tries again every second"
            );
        }
    };
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(10) {
            // Discovery in the background: one queued vertex at a time, a few attempts.
            let queued = {
                let open = open.clone();
                blocking(move || {
                    let tx = open.store.read().map_err(store_error)?;
                    crate::gestalt::Gestalts::new(&open.store)
                        .queue(&tx)
                        .map_err(store_error)
                })
                .await
            };
            let queued = queued.unwrap_or_else(|e| {
                unread("the discovery queue", &e);
                Vec::new()
            });
            if let Some(q) = queued.into_iter().find(|q| q.attempts < 10) {
                // In its own task (stopped with the others by a lock): an unreachable
                // node does not hold up deliveries and scheduled pulls.
                let open = open.clone();
                deliveries.spawn(async move {
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
        }
        let due = {
            let open = open.clone();
            blocking(move || {
                Notifications::new(&open.store)
                    .with_clock(open.clock.clone())
                    .due()
                    .map_err(store_error)
            })
            .await
        };
        let due = due.unwrap_or_else(|e| {
            unread("the notification outbox", &e);
            Vec::new()
        });
        for n in due {
            // Each in its own task: one unreachable node does not hold up the others.
            // They live in this task's set, so locking the agent stops them too.
            let open = open.clone();
            deliveries.spawn(async move { deliver(&open, n.id, n.peer, n.body).await });
        }
        while deliveries.try_join_next().is_some() {}
        {
            let open = open.clone();
            let _ = blocking(move || {
                flush_refusals(&open, false);
                Ok(())
            })
            .await;
        }
        let now = open.clock.now_ms();
        let list = {
            let open = open.clone();
            blocking(move || backups(&open)).await
        };
        let list = list.unwrap_or_else(|e| {
            unread("the scheduled pulls", &e);
            Vec::new()
        });
        for backup in list {
            if schedule::due(&backup, now) {
                run_backup(&open, backup).await;
            }
        }
        net.close_idle(IDLE_CLOSE);
    }
}
