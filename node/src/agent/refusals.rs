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

#[derive(Debug)]
struct Bucket {
    count: u64,
    first_ms: u64,
    last_ms: u64,
    vault: Option<String>,
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
    match text.char_indices().nth(FIELD_MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

impl Refusals {
    /// Counts one refusal at `now_ms`; the rows to write if an interval just ended.
    pub(super) fn note(
        &mut self,
        node: NodeId,
        call: &'static str,
        vault: Option<&str>,
        now_ms: u64,
    ) -> Vec<Value> {
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

    /// The rows for everything counted so far (`peer.denied` fields), and a new interval.
    pub(super) fn take(&mut self) -> Vec<Value> {
        let mut rows: Vec<Value> = std::mem::take(&mut self.buckets)
            .into_iter()
            .map(|((node, call), b)| {
                json!({
                    "node": node,
                    "call": call,
                    "vault": b.vault,
                    "count": b.count,
                    "first": b.first_ms,
                    "last": b.last_ms,
                })
            })
            .collect();
        if self.overflow > 0 {
            rows.push(json!({
                "node": null,
                "call": "*",
                "vault": null,
                "count": self.overflow,
                "reason": format!("refusals of more than {MAX_BUCKETS} nodes and calls in one interval"),
            }));
        }
        self.overflow = 0;
        self.started_ms = None;
        rows
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
            assert!(r.note(a, "clone", Some(&long), i).is_empty());
        }
        // Many strangers: bounded buckets, the rest counted together.
        for i in 0..200 {
            r.note(Identity::generate().node_id(), "scan", None, 1000 + i);
        }
        let rows = r.note(a, "pull", None, INTERVAL_MS + 5);
        assert_eq!(rows.len(), MAX_BUCKETS + 1);
        let first = rows.iter().find(|row| row["node"] == json!(a)).unwrap();
        assert_eq!(first["count"], 1000);
        assert_eq!(first["vault"].as_str().unwrap().len(), FIELD_MAX + 3);
        let overflow = rows.last().unwrap();
        assert_eq!(overflow["count"], 200 - (MAX_BUCKETS as u64 - 1));
        // The refusal that ended the interval starts the next one.
        let rows = r.take();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["call"], "pull");
        assert!(r.take().is_empty());
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(100);
        let cut = truncate(&long);
        assert_eq!(cut.chars().count(), FIELD_MAX + 3);
    }
}
