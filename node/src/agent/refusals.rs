//! Refused peer calls, counted in memory and written to the audit log in aggregate.
//!
//! Any self-made key completes the QUIC handshake, so a refusal must cost whoever causes
//! it nothing durable beyond a bounded record: one `peer.denied` row per node and call per
//! [`INTERVAL_MS`] (with the count, the first and last time, and the first vault name asked
//! for, cut to [`FIELD_MAX`] characters), for at most [`MAX_BUCKETS`] nodes and calls per
//! interval; refusals beyond that are counted in one row of their own. The rows are written
//! when the interval ends (at the next refusal or the background loop's next tick), when the
//! audit log is read, and when the agent locks.
//!
//! The same rows, with the first refusal's reason, are what the log gets: a stranger
//! cannot make the node write a log line per call either. [`LogGate`] bounds the other
//! lines a stranger can cause (connections turned away) to one per interval.
//!
//! No I/O here: [`Refusals::note`] takes the time and hands back the rows to write.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::identity::NodeId;

/// How long refusals are counted before their rows are written.
pub(super) const INTERVAL_MS: u64 = 60_000;
/// The most distinct (node, call) pairs kept per interval.
pub(super) const MAX_BUCKETS: usize = 64;
/// The most characters of a peer-supplied field (a vault name) kept in a row.
pub(super) const FIELD_MAX: usize = 64;
/// The most characters of a refusal's reason kept for the log (ours, but it may quote a
/// caller's name or claim).
pub(super) const REASON_MAX: usize = 256;

#[derive(Debug)]
struct Bucket {
    count: u64,
    first_ms: u64,
    last_ms: u64,
    vault: Option<String>,
    /// Why the first of these calls was refused (our message, for the log).
    reason: String,
}

/// One aggregated row: refusals of one node's calls of one kind in one interval, or
/// (`node: None`, `call: "*"`) those beyond [`MAX_BUCKETS`].
#[derive(Debug)]
pub(super) struct Row {
    pub(super) node: Option<NodeId>,
    pub(super) call: &'static str,
    /// The first vault name asked for, cut to [`FIELD_MAX`] characters.
    pub(super) vault: Option<String>,
    pub(super) count: u64,
    /// The first and last refusal's time (not kept for the overflow row).
    pub(super) span_ms: Option<(u64, u64)>,
    /// Why the first refusal was refused.
    pub(super) reason: String,
}

impl Row {
    /// The `peer.denied` audit event's fields. The reason is left out: it is the log's.
    pub(super) fn audit_fields(&self) -> Value {
        match self.span_ms {
            Some((first, last)) => json!({
                "node": self.node,
                "call": self.call,
                "vault": self.vault,
                "count": self.count,
                "first": first,
                "last": last,
            }),
            None => json!({
                "node": self.node,
                "call": self.call,
                "vault": self.vault,
                "count": self.count,
                "reason": self.reason,
            }),
        }
    }
}

/// The refusals of the current interval.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    started_ms: Option<u64>,
    buckets: BTreeMap<(NodeId, &'static str), Bucket>,
    /// Refusals of pairs beyond [`MAX_BUCKETS`].
    overflow: u64,
}

/// `text` cut to [`FIELD_MAX`] characters, with `...` when it was longer.
pub(super) fn truncate(text: &str) -> String {
    cut(text, FIELD_MAX)
}

/// `text` cut to `max` characters, with `...` when it was longer.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

impl Refusals {
    /// Counts one refusal at `now_ms`, refused for `reason`; the rows to write if an
    /// interval just ended.
    pub(super) fn note(
        &mut self,
        node: NodeId,
        call: &'static str,
        vault: Option<&str>,
        reason: &str,
        now_ms: u64,
    ) -> Vec<Row> {
        let rows = if self.due(now_ms) {
            self.take()
        } else {
            Vec::new()
        };
        self.started_ms.get_or_insert(now_ms);
        let room = self.buckets.len() < MAX_BUCKETS;
        match self.buckets.get_mut(&(node, call)) {
            Some(bucket) => {
                bucket.count += 1;
                bucket.last_ms = now_ms;
            }
            None if room => {
                self.buckets.insert(
                    (node, call),
                    Bucket {
                        count: 1,
                        first_ms: now_ms,
                        last_ms: now_ms,
                        vault: vault.map(truncate),
                        reason: cut(reason, REASON_MAX),
                    },
                );
            }
            None => self.overflow += 1,
        }
        rows
    }

    /// Whether the current interval has ended at `now_ms`.
    pub(super) fn due(&self, now_ms: u64) -> bool {
        self.started_ms
            .is_some_and(|start| now_ms.saturating_sub(start) >= INTERVAL_MS)
    }

    /// The rows for everything counted so far, and a new interval.
    pub(super) fn take(&mut self) -> Vec<Row> {
        let mut rows: Vec<Row> = std::mem::take(&mut self.buckets)
            .into_iter()
            .map(|((node, call), b)| Row {
                node: Some(node),
                call,
                vault: b.vault,
                count: b.count,
                span_ms: Some((b.first_ms, b.last_ms)),
                reason: b.reason,
            })
            .collect();
        if self.overflow > 0 {
            rows.push(Row {
                node: None,
                call: "*",
                vault: None,
                count: self.overflow,
                span_ms: None,
                reason: format!(
                    "refusals of more than {MAX_BUCKETS} nodes and calls in one interval"
                ),
            });
        }
        self.overflow = 0;
        self.started_ms = None;
        rows
    }
}

/// Lets a line that others can cause at will through at most once per [`INTERVAL_MS`],
/// counting the ones held back.
#[derive(Debug, Default)]
pub(super) struct LogGate {
    last_ms: Option<u64>,
    held: u64,
}

impl LogGate {
    /// Whether a line may be written at `now_ms`: `Some(lines held back since the last
    /// one)`, or `None` (this one is counted instead).
    pub(super) fn pass(&mut self, now_ms: u64) -> Option<u64> {
        match self.last_ms {
            Some(last) if now_ms.saturating_sub(last) < INTERVAL_MS => {
                self.held += 1;
                None
            }
            _ => {
                self.last_ms = Some(now_ms);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn refusals_are_counted_per_node_and_call_and_bounded() {
        let mut r = Refusals::default();
        let a = Identity::generate().node_id();
        let long = "x".repeat(1 << 20);
        for i in 0..1000 {
            let why = format!("reason {i}");
            assert!(r.note(a, "clone", Some(&long), &why, i).is_empty());
        }
        // Many strangers: bounded buckets, the rest counted together.
        for i in 0..200 {
            r.note(Identity::generate().node_id(), "scan", None, "no", 1000 + i);
        }
        let rows = r.note(a, "pull", None, "no", INTERVAL_MS + 5);
        assert_eq!(rows.len(), MAX_BUCKETS + 1);
        let first = rows.iter().find(|row| row.node == Some(a)).unwrap();
        assert_eq!(first.count, 1000);
        assert_eq!(first.reason, "reason 0", "the first reason is kept");
        let other = Identity::generate().node_id();
        let mut r2 = Refusals::default();
        r2.note(other, "claim", None, &"y".repeat(10_000), 0);
        assert_eq!(r2.take()[0].reason.len(), REASON_MAX + 3);
        let fields = first.audit_fields();
        assert_eq!(fields["count"], 1000);
        assert_eq!(fields["vault"].as_str().unwrap().len(), FIELD_MAX + 3);
        assert!(fields.get("reason").is_none(), "{fields}");
        let overflow = rows.last().unwrap().audit_fields();
        assert_eq!(overflow["count"], 200 - (MAX_BUCKETS as u64 - 1));
        assert_eq!(overflow["node"], Value::Null);
        // The refusal that ended the interval starts the next one.
        let rows = r.take();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].call, "pull");
        assert!(r.take().is_empty());
    }

    #[test]
    fn the_log_gate_lets_one_line_through_per_interval() {
        let mut gate = LogGate::default();
        assert_eq!(gate.pass(5), Some(0));
        for i in 0..1000 {
            assert_eq!(gate.pass(6 + i), None);
        }
        assert_eq!(gate.pass(5 + INTERVAL_MS), Some(1000));
        assert_eq!(gate.pass(6 + INTERVAL_MS), None);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(100);
        let cut = truncate(&long);
        assert_eq!(cut.chars().count(), FIELD_MAX + 3);
    }
}
