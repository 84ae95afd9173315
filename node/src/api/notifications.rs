//! Notifications between nodes: sending, and the inbox and outbox.

use serde::{Deserialize, Serialize};

use super::domain;
use crate::notifications::{Mailbox, Notification};

domain! {
    /// Calls about notifications.
    NotificationsRequest in Notifications {
        Send -> Queued,
        List -> Vec<Notification>,
        Read -> u64,
        Remove -> u64,
    }
}

/// Send a text notification.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Send {
    /// The node.
    pub node: String,
    /// The text.
    pub text: String,
}

/// Read a mailbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct List {
    /// Which.
    pub mailbox: Mailbox,
    /// Inbox: unread only.
    pub unread: bool,
}

/// Mark inbox entries read (one, or all); answers how many changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Read {
    /// The entry [default: all].
    pub id: Option<u64>,
}

/// Remove entries (one, or all) of a mailbox; answers how many were removed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Remove {
    /// Which.
    pub mailbox: Mailbox,
    /// The entry [default: all].
    pub id: Option<u64>,
}

/// A notification queued (and whether it was delivered at once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The outbox entry.
    pub notification: Notification,
    /// Delivered now (else it is retried).
    pub delivered: bool,
}
