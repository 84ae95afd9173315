//! Crash safety: SIGKILL the agent while clients are writing; every write that `pk`
//! acknowledged must be there after a restart, and the store must open clean.
//!
//! 50 rounds run with the suite. For a longer run (1,000 rounds, a few minutes):
//!
//! ```text
//! PK_CRASH_ROUNDS=1000 cargo test -p node --test it crash -- --nocapture
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::{World, agent_pid, kill9};

#[test]
fn kill_9_keeps_every_acknowledged_write() {
    let rounds: usize = std::env::var("PK_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let w = Arc::new(World::new());
    let (node, pass) = w.soft_node("correct horse battery staple");
    let pass = pass.to_str().unwrap().to_owned();
    let _guard = w.agent(&node, &["--password-file", &pass]);
    w.pk(&node, &["vaults", "create", "v"]).ok();

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut total_acked = 0;
    for round in 0..rounds {
        if round > 0 {
            w.pk(&node, &["agent", "start", "--password-file", &pass])
                .ok();
        }
        let pid = agent_pid(&node).expect("agent running");
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..2)
            .map(|writer| {
                let (w, node, stop, acks) = (w.clone(), node.clone(), stop.clone(), acks.clone());
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let path = format!("v:r{round}/w{writer}-{i}");
                        let value = format!("value {round} {writer} {i}");
                        let run = w.pk_stdin(&node, &["secrets", "write", &path], value.as_bytes());
                        if run.code != 0 {
                            // The agent died under us: this write was not acknowledged.
                            assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
                            break;
                        }
                        acked.push((path, value));
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    acked
                })
            })
            .collect();
        // The kill lands while writes are under way: after the first acknowledged one (a
        // busy machine may take longer than the random delay to start a `pk`), then at a
        // random point.
        let started = std::time::Instant::now();
        while acks.load(Ordering::Relaxed) == 0 && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(1));
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(15 + (seed >> 33) % 60));
        kill9(pid);
        stop.store(true, Ordering::Relaxed);
        let acked: Vec<(String, String)> = writers
            .into_iter()
            .flat_map(|h| h.join().expect("writer thread"))
            .collect();
        total_acked += acked.len();

        // Restart on the crashed store: it must open and hold every acknowledged write.
        w.pk(&node, &["agent", "start", "--password-file", &pass])
            .ok();
        for (path, value) in &acked {
            let got = w.pk(&node, &["secrets", "cat", path]);
            assert_eq!(
                got.code, 0,
                "round {round}: acknowledged {path} is gone: {}",
                got.stderr
            );
            assert_eq!(
                &got.stdout, value,
                "round {round}: {path} has other content"
            );
        }
        w.pk(&node, &["vaults", "log", "v", "--depth", "1"]).ok();
        // Leave it killed for the next round's restart, as a crash would.
        kill9(agent_pid(&node).expect("agent running"));
    }
    assert!(
        total_acked >= rounds,
        "too few writes were acknowledged to test anything: {total_acked}"
    );
    eprintln!("crash test: {rounds} rounds, {total_acked} acknowledged writes, all present");
}
