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
use crate::identity::NodeId;
use crate::nodes::VaultPermission;
use crate::store::{Read, Store, StoreError, Table};
use crate::vault::VaultId;

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

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
}

impl<'s> Notifications<'s> {
    /// The boxes on `store`.
    pub fn new(store: &'s Store) -> Self {
        Notifications { store }
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
                time_ms: now_ms(),
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
                time_ms: now_ms(),
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
        let attempts = match &n.delivery {
            Some(Delivery::Pending { attempts, .. }) => *attempts + 1,
            _ => 1,
        };
        n.delivery = Some(match outcome {
            Ok(()) => Delivery::Delivered { at_ms: now_ms() },
            Err((true, reason)) => Delivery::Refused { reason },
            Err((false, error)) => Delivery::Pending {
                attempts,
                next_ms: now_ms() + backoff_ms(attempts - 1),
                last_error: Some(error),
            },
        });
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
        let now = now_ms();
        Ok(self
            .list(Mailbox::Outbox)?
            .into_iter()
            .filter(
                |n| matches!(n.delivery, Some(Delivery::Pending { next_ms, .. }) if next_ms <= now),
            )
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
