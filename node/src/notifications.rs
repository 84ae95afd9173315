//! Notifications between nodes: an inbox of what peers sent, an outbox of what this node
//! sends.
//!
//! A notification is accepted only from a node in the graph that holds the `notify`
//! permission. Sending puts it in the outbox first (so nothing is lost when the peer is
//! away); the agent delivers pending ones and retries failures with exponential backoff
//! (1 s, 2 s, 4 s ... up to an hour between attempts).

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit;
use crate::clock::Clock;
use crate::identity::NodeId;
use crate::ids::VaultId;
use crate::permissions::VaultPermission;
use crate::store::{Read, Store, StoreError, Table};

/// The longest message text accepted.
pub const MAX_MESSAGE: usize = 4096;
/// The longest wait between delivery attempts, in seconds.
pub const MAX_BACKOFF_S: u64 = 3600;

const INBOX: u8 = b'i';
const OUTBOX: u8 = b'o';

/// What a notification says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// A text message.
    Message {
        /// The text.
        text: String,
    },
    /// A vault was shared with the receiver.
    VaultShare {
        /// The vault's id.
        vault: VaultId,
        /// Its name on the sender.
        name: String,
        /// What the receiver may do.
        permissions: Vec<VaultPermission>,
    },
    /// The sender invites the receiver to join its gestalt: `pk nodes claim <sender>` on
    /// the receiver links the two nodes.
    GestaltInvite,
}

impl Body {
    /// Checks a body from a peer.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Body::Message { text } if text.len() > MAX_MESSAGE => {
                Err(format!("a message may be at most {MAX_MESSAGE} bytes"))
            }
            Body::VaultShare { name, .. } if name.len() > 255 => {
                Err("a vault name may be at most 255 bytes".into())
            }
            _ => Ok(()),
        }
    }
}

/// Delivery state of an outgoing notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Not delivered yet.
    Pending {
        /// Attempts so far.
        attempts: u32,
        /// Unix milliseconds of the next attempt.
        next_ms: u64,
        /// Why the last attempt failed.
        last_error: Option<String>,
    },
    /// The peer accepted it.
    Delivered {
        /// Unix milliseconds.
        at_ms: u64,
    },
    /// The peer refused it (no permission): not retried.
    Refused {
        /// Why.
        reason: String,
    },
}

impl Delivery {
    /// Whether an attempt is due at `now_ms`: a pending delivery whose time has come.
    /// Delivered and refused ones are never tried again (they stay in the outbox until
    /// removed).
    pub fn is_due(&self, now_ms: u64) -> bool {
        matches!(self, Delivery::Pending { next_ms, .. } if *next_ms <= now_ms)
    }

    /// The state after an attempt made at `now_ms`, from the state before (`previous`):
    /// delivered; refused by the peer (`Err((true, why))`: given up); or failed
    /// (`Err((false, why))`: pending, tried again after [`backoff_ms`] of the attempts so
    /// far, for as long as it stays in the outbox).
    pub fn after_attempt(
        previous: Option<&Delivery>,
        outcome: Result<(), (bool, String)>,
        now_ms: u64,
    ) -> Delivery {
        let attempts = match previous {
            Some(Delivery::Pending { attempts, .. }) => *attempts + 1,
            _ => 1,
        };
        match outcome {
            Ok(()) => Delivery::Delivered { at_ms: now_ms },
            Err((true, reason)) => Delivery::Refused { reason },
            Err((false, error)) => Delivery::Pending {
                attempts,
                next_ms: now_ms.saturating_add(backoff_ms(attempts - 1)),
                last_error: Some(error),
            },
        }
    }
}

/// A notification in the inbox or the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Its number in its box.
    pub id: u64,
    /// The other node: the sender (inbox) or the receiver (outbox).
    pub peer: NodeId,
    /// Unix milliseconds when it was sent or received.
    pub time_ms: u64,
    /// What it says.
    pub body: Body,
    /// Inbox: whether it has been read.
    #[serde(default)]
    pub read: bool,
    /// Outbox: delivery state.
    #[serde(default)]
    pub delivery: Option<Delivery>,
}

/// Which box.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mailbox {
    /// Received.
    Inbox,
    /// Sent.
    Outbox,
}

impl Mailbox {
    fn prefix(self) -> u8 {
        match self {
            Mailbox::Inbox => INBOX,
            Mailbox::Outbox => OUTBOX,
        }
    }
}

fn key(mailbox: Mailbox, id: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = mailbox.prefix();
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

fn corrupt() -> StoreError {
    StoreError::Corrupt {
        table: "notifications",
        reason: "unreadable notification",
    }
}

/// The delay before attempt number `attempts + 1`.
pub fn backoff_ms(attempts: u32) -> u64 {
    1000u64
        .saturating_mul(1u64 << attempts.min(12))
        .min(MAX_BACKOFF_S * 1000)
}

/// The inbox and outbox on one store.
pub struct Notifications<'s> {
    store: &'s Store,
    /// Times notifications and decides which deliveries are due.
    clock: Clock,
}

impl<'s> Notifications<'s> {
    /// The boxes on `store`, on the system clock.
    pub fn new(store: &'s Store) -> Self {
        Notifications {
            store,
            clock: Clock::system(),
        }
    }

    /// The same boxes on `clock`.
    pub fn with_clock(self, clock: Clock) -> Self {
        Notifications { clock, ..self }
    }

    /// Every notification in `mailbox`, oldest first.
    pub fn list(&self, mailbox: Mailbox) -> Result<Vec<Notification>, StoreError> {
        let tx = self.store.read()?;
        list_in(&tx, mailbox)
    }

    fn add(&self, mailbox: Mailbox, mut n: Notification) -> Result<Notification, StoreError> {
        let mut tx = self.store.write()?;
        // Numbers are never reused, even after the newest entry is removed.
        let counter = [b'#', mailbox.prefix()];
        let listed = list_in(&tx, mailbox)?.last().map(|n| n.id).unwrap_or(0);
        let counted = tx
            .get(Table::Notifications, &counter)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        n.id = listed.max(counted) + 1;
        tx.put(Table::Notifications, &counter, &n.id.to_be_bytes())?;
        let bytes = serde_json::to_vec(&n).expect("a notification always serialises");
        tx.put(Table::Notifications, &key(mailbox, n.id), &bytes)?;
        let event = match mailbox {
            Mailbox::Inbox => "notification.received",
            Mailbox::Outbox => "notification.queued",
        };
        audit::append(
            &mut tx,
            event,
            json!({ "node": n.peer, "id": n.id, "type": kind(&n.body) }),
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Puts a received notification in the inbox.
    pub fn receive(&self, from: NodeId, body: Body) -> Result<Notification, StoreError> {
        self.add(
            Mailbox::Inbox,
            Notification {
                id: 0,
                peer: from,
                time_ms: self.clock.now_ms(),
                body,
                read: false,
                delivery: None,
            },
        )
    }

    /// Queues a notification to `to`; the agent delivers it.
    pub fn queue(&self, to: NodeId, body: Body) -> Result<Notification, StoreError> {
        self.add(
            Mailbox::Outbox,
            Notification {
                id: 0,
                peer: to,
                time_ms: self.clock.now_ms(),
                body,
                read: false,
                delivery: Some(Delivery::Pending {
                    attempts: 0,
                    next_ms: 0,
                    last_error: None,
                }),
            },
        )
    }

    /// Records the outcome of a delivery attempt of outbox entry `id`.
    pub fn delivered(
        &self,
        id: u64,
        outcome: Result<(), (bool, String)>,
    ) -> Result<(), StoreError> {
        let mut tx = self.store.write()?;
        let Some(value) = tx.get(Table::Notifications, &key(Mailbox::Outbox, id))? else {
            return Ok(());
        };
        let mut n: Notification = serde_json::from_slice(&value).map_err(|_| corrupt())?;
        n.delivery = Some(Delivery::after_attempt(
            n.delivery.as_ref(),
            outcome,
            self.clock.now_ms(),
        ));
        let bytes = serde_json::to_vec(&n).expect("a notification always serialises");
        tx.put(Table::Notifications, &key(Mailbox::Outbox, id), &bytes)?;
        if let Some(Delivery::Delivered { .. }) = n.delivery {
            audit::append(
                &mut tx,
                "notification.delivered",
                json!({ "node": n.peer, "id": n.id }),
            )?;
        }
        tx.commit()
    }

    /// Outbox entries due for an attempt now.
    pub fn due(&self) -> Result<Vec<Notification>, StoreError> {
        let now = self.clock.now_ms();
        Ok(self
            .list(Mailbox::Outbox)?
            .into_iter()
            .filter(|n| n.delivery.as_ref().is_some_and(|d| d.is_due(now)))
            .collect())
    }

    /// Marks inbox entries read (`id`, or all); returns how many changed.
    pub fn mark_read(&self, id: Option<u64>) -> Result<usize, StoreError> {
        let mut tx = self.store.write()?;
        let mut changed = 0;
        for mut n in list_in(&tx, Mailbox::Inbox)? {
            if n.read || id.is_some_and(|id| id != n.id) {
                continue;
            }
            n.read = true;
            let bytes = serde_json::to_vec(&n).expect("a notification always serialises");
            tx.put(Table::Notifications, &key(Mailbox::Inbox, n.id), &bytes)?;
            changed += 1;
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Removes entry `id` (or, with `None`, every entry) of `mailbox`; returns how many.
    pub fn remove(&self, mailbox: Mailbox, id: Option<u64>) -> Result<usize, StoreError> {
        let mut tx = self.store.write()?;
        let mut removed = 0;
        for n in list_in(&tx, mailbox)? {
            if id.is_some_and(|id| id != n.id) {
                continue;
            }
            tx.delete(Table::Notifications, &key(mailbox, n.id))?;
            removed += 1;
        }
        tx.commit()?;
        Ok(removed)
    }
}

fn kind(body: &Body) -> &'static str {
    match body {
        Body::Message { .. } => "message",
        Body::VaultShare { .. } => "vault_share",
        Body::GestaltInvite => "gestalt_invite",
    }
}

fn list_in(tx: &impl Read, mailbox: Mailbox) -> Result<Vec<Notification>, StoreError> {
    let prefix = [mailbox.prefix()];
    let mut out = Vec::new();
    for (k, value) in tx.range(Table::Notifications, &prefix, usize::MAX, false)? {
        if k.first() != Some(&mailbox.prefix()) {
            break;
        }
        out.push(serde_json::from_slice(&value).map_err(|_| corrupt())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Delivery retries on a manual clock: no sleeps.
    use std::time::Duration;

    use super::*;
    use crate::NodePath;
    use crate::clock::ManualClock;
    use crate::identity::Identity;
    use hsm_core::DataKey;

    const T0: u64 = 1_700_000_000_000;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&NodePath::new(dir.path()), &DataKey::generate()).unwrap();
        (dir, store)
    }

    fn message() -> Body {
        Body::Message { text: "hi".into() }
    }

    fn due_ids(boxes: &Notifications<'_>) -> Vec<u64> {
        boxes.due().unwrap().iter().map(|n| n.id).collect()
    }

    fn delivery(boxes: &Notifications<'_>, id: u64) -> Delivery {
        let list = boxes.list(Mailbox::Outbox).unwrap();
        let n = list.into_iter().find(|n| n.id == id).unwrap();
        n.delivery.unwrap()
    }

    #[test]
    fn the_backoff_doubles_from_a_second_to_an_hour() {
        let waits: Vec<u64> = (0..15).map(|a| backoff_ms(a) / 1000).collect();
        assert_eq!(
            waits,
            [
                1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600, 3600
            ]
        );
        assert_eq!(backoff_ms(u32::MAX), MAX_BACKOFF_S * 1000);
    }

    #[test]
    fn the_state_after_an_attempt() {
        let failed = || Err((false, "unreachable".to_owned()));
        let first = Delivery::after_attempt(None, failed(), T0);
        assert_eq!(
            first,
            Delivery::Pending {
                attempts: 1,
                next_ms: T0 + 1000,
                last_error: Some("unreachable".into()),
            }
        );
        let third = Delivery::Pending {
            attempts: 3,
            next_ms: T0,
            last_error: None,
        };
        let fourth = Delivery::after_attempt(Some(&third), failed(), T0);
        assert!(
            matches!(fourth, Delivery::Pending { attempts: 4, next_ms, .. } if next_ms == T0 + 8000)
        );
        let refused = Delivery::after_attempt(Some(&third), Err((true, "no".into())), T0);
        assert_eq!(
            refused,
            Delivery::Refused {
                reason: "no".into()
            }
        );
        let delivered = Delivery::after_attempt(Some(&third), Ok(()), T0);
        assert_eq!(delivered, Delivery::Delivered { at_ms: T0 });
        for done in [refused, delivered] {
            assert!(!done.is_due(u64::MAX), "{done:?}");
        }
        assert!(!first.is_due(T0 + 999));
        assert!(first.is_due(T0 + 1000));
    }

    #[test]
    fn a_failing_delivery_is_retried_on_schedule_and_kept() {
        let (_dir, store) = store();
        let clock = ManualClock::at_ms(T0);
        let boxes = Notifications::new(&store).with_clock(clock.clock());
        let queued = boxes
            .queue(Identity::generate().node_id(), message())
            .unwrap();
        assert_eq!(queued.time_ms, T0);
        assert_eq!(due_ids(&boxes), [queued.id], "due as soon as it is queued");
        for attempt in 0..14u32 {
            boxes
                .delivered(queued.id, Err((false, "unreachable".into())))
                .unwrap();
            clock.advance(Duration::from_millis(backoff_ms(attempt) - 1));
            assert!(due_ids(&boxes).is_empty(), "attempt {attempt}: too early");
            clock.advance(Duration::from_millis(1));
            assert_eq!(due_ids(&boxes), [queued.id], "attempt {attempt}: on time");
        }
        assert!(matches!(
            delivery(&boxes, queued.id),
            Delivery::Pending { attempts: 14, last_error: Some(e), .. } if e == "unreachable"
        ));
    }

    #[test]
    fn a_refused_delivery_is_given_up_and_a_delivered_one_is_done() {
        let (_dir, store) = store();
        let clock = ManualClock::at_ms(T0);
        let boxes = Notifications::new(&store).with_clock(clock.clock());
        let peer = Identity::generate().node_id();
        let refused = boxes.queue(peer, message()).unwrap();
        let delivered = boxes.queue(peer, message()).unwrap();
        assert_eq!(due_ids(&boxes), [refused.id, delivered.id]);
        boxes
            .delivered(refused.id, Err((true, "no notify permission".into())))
            .unwrap();
        clock.advance(Duration::from_secs(5));
        boxes.delivered(delivered.id, Ok(())).unwrap();
        clock.advance(Duration::from_secs(24 * 3600));
        assert!(due_ids(&boxes).is_empty());
        assert_eq!(
            delivery(&boxes, refused.id),
            Delivery::Refused {
                reason: "no notify permission".into()
            }
        );
        assert_eq!(
            delivery(&boxes, delivered.id),
            Delivery::Delivered { at_ms: T0 + 5000 }
        );
    }
}
