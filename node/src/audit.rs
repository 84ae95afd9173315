//! The audit log: an append-only, encrypted record of security-relevant events.
//!
//! Each event is one row of the `audit` table, keyed by a big-endian sequence number, and
//! is written in the same transaction as the change it records, so the log never misses
//! an acknowledged change and never records one that did not happen. Events carry names
//! (vault names, secret paths, slot numbers) but never secret values.

use serde::{Deserialize, Serialize};

use crate::clock::unix_ms;
use crate::store::{Read as _, ReadTx, StoreError, Table, WriteTx};

/// One audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// Dotted event type, e.g. `vault.created`, `secret.written`, `agent.unlocked`.
    pub event: String,
    /// Event details (vault, path, slot, ...). Never a secret value.
    #[serde(with = "fields_format")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The fields are a JSON object in JSON, and JSON text in binary formats (postcard, used
/// on the agent socket, cannot carry free-form JSON values).
mod fields_format {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Map = serde_json::Map<String, serde_json::Value>;

    pub(super) fn serialize<S: Serializer>(map: &Map, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            map.serialize(s)
        } else {
            s.serialize_str(&serde_json::Value::Object(map.clone()).to_string())
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        if d.is_human_readable() {
            Map::deserialize(d)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text).map_err(serde::de::Error::custom)
        }
    }
}

fn decode(value: &[u8]) -> Result<AuditEvent, StoreError> {
    serde_json::from_slice(value).map_err(|_| StoreError::Corrupt {
        table: "audit",
        reason: "unreadable event",
    })
}

/// Appends an event in `tx`; returns its sequence number.
pub fn append(
    tx: &mut WriteTx<'_>,
    event: &str,
    fields: serde_json::Value,
) -> Result<u64, StoreError> {
    let last = tx.range(Table::Audit, &u64::MAX.to_be_bytes(), 1, true)?;
    let seq = match last.first() {
        Some((key, _)) => u64::from_be_bytes(key.as_slice().try_into().unwrap_or([0; 8])) + 1,
        None => 1,
    };
    let record = AuditEvent {
        seq,
        time_ms: unix_ms(),
        event: event.to_owned(),
        fields: match fields {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
    };
    let bytes = serde_json::to_vec(&record).expect("an event always serialises");
    tx.put(Table::Audit, &seq.to_be_bytes(), &bytes)?;
    Ok(seq)
}

/// Which events to read.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Only events whose type starts with one of these (e.g. `vault`, `secret.revealed`).
    pub events: Vec<String>,
    /// At most this many events.
    pub limit: Option<usize>,
    /// Newest first.
    pub newest_first: bool,
    /// Only events after this sequence number (for following the log).
    pub after: Option<u64>,
}

/// Reads events matching `query`.
pub fn query(tx: &ReadTx<'_>, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
    let limit = query.limit.unwrap_or(usize::MAX);
    let matches = |e: &AuditEvent| {
        query.events.is_empty()
            || query
                .events
                .iter()
                .any(|p| e.event == *p || e.event.starts_with(&format!("{p}.")))
    };
    let mut out = Vec::new();
    let after = query.after.unwrap_or(0);
    // Scan in pages so that a filter that matches little does not load the whole log.
    let mut cursor = if query.newest_first {
        u64::MAX
    } else {
        after + 1
    };
    loop {
        let page = tx.range(Table::Audit, &cursor.to_be_bytes(), 256, query.newest_first)?;
        if page.is_empty() {
            break;
        }
        for (key, value) in &page {
            let seq = u64::from_be_bytes(key.as_slice().try_into().unwrap_or([0; 8]));
            if seq <= after {
                return Ok(out);
            }
            let event = decode(value)?;
            if matches(&event) {
                out.push(event);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            cursor = if query.newest_first {
                seq.saturating_sub(1)
            } else {
                seq + 1
            };
        }
        if cursor == 0 || page.len() < 256 {
            break;
        }
    }
    Ok(out)
}
