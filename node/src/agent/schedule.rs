//! When scheduled pulls run: decisions over `now`, without I/O. The background loop in
//! `peers.rs` reads the agent's clock, asks [`due`], runs the pull and records it with
//! [`ran`].
//!
//! A new schedule is due at once; after each run, successful or not, the next is `every_s`
//! after the run ended. A failed pull is not retried sooner and does not back off: the
//! interval (at least 10 seconds) is the retry.

use crate::api::backups::Backup;
use crate::vault::PullOutcome;

/// Whether `backup` is due at `now_ms`.
pub(super) fn due(backup: &Backup, now_ms: u64) -> bool {
    backup.next_ms <= now_ms
}

/// Records a run of `backup` that ended at `now_ms` with `result` (what the pull did, or
/// why it failed), and when the next one is due.
pub(super) fn ran(backup: &mut Backup, result: Result<&str, &str>, now_ms: u64) {
    backup.last = Some(PullOutcome {
        node: backup.node.clone(),
        time: now_ms / 1000,
        ok: result.is_ok(),
        message: match result {
            Ok(message) | Err(message) => message.to_owned(),
        },
    });
    // Saturating: a record from before the upper bound may hold any number.
    backup.next_ms = now_ms.saturating_add(backup.every_s.saturating_mul(1000));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    const T0: u64 = 1_700_000_000_000;

    fn backup(every_s: u64) -> Backup {
        Backup {
            vault: "team".into(),
            node: "vNODE".into(),
            name: "team".into(),
            every_s,
            next_ms: 0,
            last: None,
        }
    }

    #[test]
    fn a_new_schedule_is_due_at_once() {
        let clock = ManualClock::at_ms(T0);
        assert!(due(&backup(60), clock.now_ms()));
    }

    #[test]
    fn the_next_pull_is_due_at_its_time_and_not_a_millisecond_before() {
        let clock = ManualClock::at_ms(T0);
        let mut b = backup(60);
        ran(&mut b, Ok("fast-forward"), clock.now_ms());
        assert_eq!(b.next_ms, T0 + 60_000);
        assert!(!due(&b, clock.now_ms()));
        clock.advance(Duration::from_millis(59_999));
        assert!(!due(&b, clock.now_ms()));
        clock.advance(Duration::from_millis(1));
        assert!(due(&b, clock.now_ms()));
        let last = b.last.unwrap();
        assert_eq!(
            (
                last.node.as_str(),
                last.time,
                last.ok,
                last.message.as_str()
            ),
            ("vNODE", T0 / 1000, true, "fast-forward")
        );
    }

    #[test]
    fn a_failed_pull_is_tried_again_after_the_same_interval_without_backoff() {
        let clock = ManualClock::at_ms(T0);
        let mut b = backup(10);
        for round in 0..5u64 {
            assert!(due(&b, clock.now_ms()), "round {round}");
            ran(&mut b, Err("node unreachable"), clock.now_ms());
            let last = b.last.as_ref().unwrap();
            assert!(!last.ok);
            assert_eq!(last.message, "node unreachable");
            assert_eq!(b.next_ms, clock.now_ms() + 10_000, "round {round}");
            clock.advance(Duration::from_secs(9));
            assert!(!due(&b, clock.now_ms()), "round {round}");
            clock.advance(Duration::from_secs(1));
        }
    }

    /// The loop's shape: a tick each second reads the clock, runs what is due, and each
    /// pull takes three seconds; the next is counted from the end of the last.
    #[test]
    fn a_minute_of_ticks_runs_the_pulls_counted_from_each_end() {
        let clock = ManualClock::at_ms(T0);
        let mut b = backup(10);
        let mut started = Vec::new();
        while clock.now_ms() < T0 + 60_000 {
            if due(&b, clock.now_ms()) {
                started.push((clock.now_ms() - T0) / 1000);
                clock.advance(Duration::from_secs(3));
                let result = if started.len() % 2 == 0 {
                    Ok("up to date")
                } else {
                    Err("timed out")
                };
                ran(&mut b, result, clock.now_ms());
            }
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(started, [0, 13, 26, 39, 52]);
    }

    #[test]
    fn a_huge_interval_saturates_instead_of_wrapping() {
        let mut b = backup(u64::MAX);
        ran(&mut b, Ok("up to date"), T0);
        assert_eq!(b.next_ms, u64::MAX);
        assert!(!due(&b, T0));
    }
}
