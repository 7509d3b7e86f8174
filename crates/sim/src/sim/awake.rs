//! A round with rayon's workers kept awake: they poll for work (running whatever they find)
//! until the round ends, instead of going to sleep between its parallel passes.
//!
//! A round is a chain of seven short parallel passes (churn, placement's candidates, the
//! Poisson tables, the close's parts, the metrics, the carry, the departures: at 10,000 nodes
//! from a few µs to some 330 µs each) with serial steps between them (placement, the
//! ranking). Left alone, a rayon worker that
//! finds no work yields a few dozen times and then sleeps, and each pass then waits for the
//! sleepers to be woken; so does a thread waiting in a join for work another one stole.
//! On a 2-vCPU KVM guest such a wake-up showed as a gap of some 40 µs after a pass's last
//! chunk. Polling is OpenMP's "active" wait policy: it spends the idle workers' cores while
//! a round runs, which a simulation, running alone, does not need for anything else.
//! It changes no byte of the results: who runs a chunk never does.
//!
//! The polling is done by jobs, one per worker, each of which looks for one job to run and
//! then spawns itself again and returns. A job that polled until the round ended would
//! hang the round whenever a worker picked it up while waiting, inside a pass, for work it
//! had split off: the pass below it on that worker's stack could not go on.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `round` on a worker of rayon's pool while the pool's workers poll for work, and
/// returns what it returned (a panic in it is propagated once the polling stopped).
pub(super) fn with_workers_awake<R: Send>(round: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let done = &done;
        // Set when the round returns or unwinds, so that the polling stops and the scope ends.
        let stop = Stop(done);
        // As many polling jobs as workers: whichever worker runs out of work, one waiting
        // in a join included, finds one to steal instead of going to sleep.
        if rayon::current_num_threads() > 1 {
            for _ in 0..rayon::current_num_threads() {
                s.spawn(move |s| poll(s, done));
            }
        }
        let out = round();
        drop(stop);
        out
    })
}

/// Sets its flag when dropped.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// One turn of polling: runs one pending job if there is one (stolen from another worker:
/// this worker's own queue holds nothing else when it runs this), then, unless `done`,
/// spawns the next turn and returns.
fn poll<'s>(s: &rayon::Scope<'s>, done: &'s AtomicBool) {
    if done.load(Ordering::Acquire) {
        return;
    }
    if rayon::yield_now() != Some(rayon::Yield::Executed) {
        std::hint::spin_loop();
    }
    s.spawn(move |s| poll(s, done));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::Duration;

    use rayon::prelude::*;

    use super::*;

    /// Runs `f` on a thread of its own and fails if it has not returned within a minute (a
    /// poller left running would keep its scope, and so `f`, from ever returning).
    fn within_a_minute(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("still running after a minute"),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the test body panicked"),
        }
    }

    #[test]
    fn rounds_run_their_passes_and_the_pollers_stop() {
        within_a_minute(|| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(4)
                .build()
                .unwrap();
            pool.install(|| {
                for round in 0..50u64 {
                    let ran = AtomicUsize::new(0);
                    let sum: u64 = with_workers_awake(|| {
                        // Passes with joins, as a round makes them.
                        (0..10_000u32)
                            .into_par_iter()
                            .with_max_len(64)
                            .map(|x| {
                                ran.fetch_add(1, Ordering::Relaxed);
                                u64::from(x) * round
                            })
                            .sum()
                    });
                    assert_eq!(sum, round * (10_000 * 9_999 / 2));
                    assert_eq!(ran.load(Ordering::Relaxed), 10_000);
                }
            });
        });
    }

    #[test]
    fn workers_waiting_inside_a_pass_are_not_held_by_the_polling() {
        // Two threads and nested passes of uneven work, as a round's: a worker often waits
        // inside a pass for work it split off, and picks up whatever job is pending then,
        // a polling turn included. A turn that polled until the round ended would hold the
        // pass below it, and the round would never end: the first design (one poller pinned
        // to each worker, polling until the round ended) hung here within the minute.
        within_a_minute(|| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            pool.install(|| {
                for round in 0..5_000u64 {
                    let sum: u64 = with_workers_awake(|| {
                        (0..16u32)
                            .into_par_iter()
                            .map(|i| {
                                (0..64u32)
                                    .into_par_iter()
                                    .with_max_len(1)
                                    .map(|j| (0..(u64::from(i * j) + round) % 97).sum::<u64>())
                                    .sum::<u64>()
                            })
                            .sum()
                    });
                    let want: u64 = (0..16u64)
                        .flat_map(|i| (0..64u64).map(move |j| (i * j + round) % 97))
                        .map(|n| n * n.saturating_sub(1) / 2)
                        .sum();
                    assert_eq!(sum, want, "round {round}");
                }
            });
        });
    }

    #[test]
    fn a_panicking_round_stops_the_pollers_and_panics() {
        within_a_minute(|| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap();
            let caught = pool.install(|| {
                std::panic::catch_unwind(|| with_workers_awake(|| panic!("round failed")))
            });
            assert!(caught.is_err());
        });
    }

    #[test]
    fn a_one_thread_pool_runs_its_rounds() {
        within_a_minute(|| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let got =
                pool.install(|| with_workers_awake(|| (0..1_000u32).into_par_iter().sum::<u32>()));
            assert_eq!(got, 499_500);
        });
    }
}
