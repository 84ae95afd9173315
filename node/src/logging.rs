//! What the node library logs, and how a binary turns it on.
//!
//! The library emits structured [`tracing`] events under four fixed targets, whatever
//! module they come from, so that a filter written today keeps working when code moves:
//!
//! - [`AGENT`] (`pk::agent`): the agent's start and stop, lock and unlock (and failed
//!   unlocks, with the slot and the error, never the secret).
//! - [`PEER`] (`pk::peer`): calls served to other nodes, one span per call (`peer`,
//!   `call`), refusals as the aggregated rows the audit log gets, the endpoint, the LAN
//!   advertisement.
//! - [`SYNC`] (`pk::sync`): clones and pulls this node makes, and the scheduled pulls.
//! - [`NOTIFY`] (`pk::notify`): notification deliveries and their retries.
//!
//! Fields have the same names everywhere: `peer` (a NodeId), `vault` (a vault's name as
//! this node knows it, or as a caller asked for it, cut short), `call`, `outcome`
//! (`ok`, `refused`, `failed`, ...), `error` (an error's message), and `event`, the audit
//! event's name when there is one (`agent.unlocked`). No secret value, PIN, passphrase,
//! key, token or recovery word is ever a field or part of a message: errors are the
//! messages `pk` shows, which carry none.
//!
//! Text that may come from outside (a peer's error message, a vault name a caller sent)
//! is a string field, which the text format quotes and escapes, and reaches a message
//! only through [`printable`]: nobody can write a line of their own into `agent.log`.
//!
//! Nothing a stranger does is logged one line per call: its refusals reach the log as
//! the audit log's aggregated `peer.denied` rows ([`crate::agent`]'s refusal counting),
//! at most one per node and call per minute.
//!
//! Binaries install a subscriber with [`filter`]: `pk agent start --log`/`PK_LOG`, the
//! appliance's `log` key.

use tracing_subscriber::EnvFilter;

/// The target of the agent's life: start, stop, lock, unlock.
pub const AGENT: &str = "pk::agent";
/// The target of the calls other nodes make to this one.
pub const PEER: &str = "pk::peer";
/// The target of clones and pulls this node makes, scheduled or asked for.
pub const SYNC: &str = "pk::sync";
/// The target of notification deliveries.
pub const NOTIFY: &str = "pk::notify";

/// The filter when none is given: this node's events at INFO and above (and everything
/// else's).
pub const DEFAULT_FILTER: &str = "info";

/// The environment variable `pk agent start` reads its filter from.
pub const FILTER_ENV: &str = "PK_LOG";

/// `text` on one line: control characters (a newline in a peer's error message) escaped,
/// so that text from outside cannot forge a log line of its own.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A log filter that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "{text:?} is not a log filter: {reason} (write a level such as `info`, or directives such as `warn,pk::sync=debug`)"
)]
pub struct BadFilter {
    text: String,
    reason: String,
}

/// Parses a `RUST_LOG`-style filter: a level (`error`, `warn`, `info`, `debug`, `trace`,
/// `off`), or comma-separated `target=level` directives. An error says what is wrong; it
/// never panics.
pub fn filter(text: &str) -> Result<EnvFilter, BadFilter> {
    let bad = |reason: String| BadFilter {
        text: text.chars().take(200).collect(),
        reason,
    };
    if text.trim().is_empty() {
        return Err(bad("it is empty".into()));
    }
    EnvFilter::builder()
        .with_regex(false)
        .parse(text)
        .map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_mistakes_are_errors() {
        for good in [
            "info",
            "warn,pk::sync=debug",
            "pk=trace,quinn=warn",
            "off",
            DEFAULT_FILTER,
        ] {
            filter(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["", "  ", "pk=loud", "info,=x=y", "pk[{=debug"] {
            let e = filter(bad).expect_err(bad).to_string();
            assert!(e.contains("not a log filter"), "{e}");
        }
    }

    #[test]
    fn outside_text_stays_on_one_line() {
        assert_eq!(printable("plain \"text\" é"), "plain \"text\" é");
        let forged = "refused\n2026-01-01T00:00:00Z  INFO pk::agent: agent unlocked\r\x1b[31m";
        let shown = printable(forged);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(
            shown.contains("\\n2026") && shown.contains("\\u{1b}"),
            "{shown}"
        );
    }
}
