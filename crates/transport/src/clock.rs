//! The clocks every running peer reads unless a test drives the time: [`SystemClock`], the
//! raw wall clock, and [`SteadyClock`], the wall clock at the start plus a monotonic clock
//! since, which wall-clock steps do not move (see [`crat_core::clock`] for why peers run on
//! it).

use std::sync::Arc;
use std::time::Instant;

use crat_core::clock::{Clock, Monotonic, Steady};
use parking_lot::Mutex;

/// The system clock: Unix seconds from [`std::time::SystemTime`] (0 before the epoch). It
/// steps when the system's clock is set; peers run on [`SteadyClock`] instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_s(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The system's monotonic clock ([`Instant`]): milliseconds since it was made.
#[derive(Clone, Copy, Debug)]
pub struct SystemMonotonic(Instant);

impl SystemMonotonic {
    /// Counting from now.
    pub fn new() -> Self {
        Self(Instant::now())
    }
}

impl Default for SystemMonotonic {
    fn default() -> Self {
        Self::new()
    }
}

impl Monotonic for SystemMonotonic {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Skew between the wall clock and steady time that is worth a warning, in seconds; a new
/// warning needs the skew to move by as much again.
const SKEW_WARN_S: i64 = 2;

/// Steady time ([`Steady`]): the wall clock read when it is made, plus what a monotonic clock
/// counted since. Wall-clock steps in either direction do not move it; it moves forward with
/// real time and never back, and [`Clock::raise_to`] moves it forward to a floor (a ledger's
/// latest record). When the wall clock strays from it by more than 2 s, a warning is logged
/// once per 2 s of further drift ([`SteadyClock::skew_s`] reads the skew).
pub struct SteadyClock {
    wall: Arc<dyn Clock>,
    mono: Arc<dyn Monotonic>,
    state: Mutex<State>,
}

struct State {
    steady: Steady,
    /// The skew last warned about.
    warned_skew_s: i64,
}

impl std::fmt::Debug for SteadyClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteadyClock")
            .field("steady", &self.state.lock().steady)
            .finish_non_exhaustive()
    }
}

impl SteadyClock {
    /// Steady time over the system's clocks ([`SystemClock`], [`SystemMonotonic`]).
    pub fn system() -> Self {
        Self::new(Arc::new(SystemClock), Arc::new(SystemMonotonic::new()))
    }

    /// Steady time over `wall` and `mono` (tests pass clocks they move by hand).
    pub fn new(wall: Arc<dyn Clock>, mono: Arc<dyn Monotonic>) -> Self {
        let steady = Steady::new_ms(wall.now_ms(), mono.elapsed_ms());
        Self {
            wall,
            mono,
            state: Mutex::new(State {
                steady,
                warned_skew_s: 0,
            }),
        }
    }

    /// How far the wall clock is ahead of steady time now (negative: behind), in seconds.
    pub fn skew_s(&self) -> i64 {
        let wall = self.wall.now_s();
        let mono = self.mono.elapsed_ms();
        self.state.lock().steady.skew_s(wall, mono)
    }
}

impl SteadyClock {
    /// Steady time now, in Unix milliseconds, warning of a new skew on the way.
    fn read_ms(&self) -> u64 {
        let wall = self.wall.now_s();
        let mono = self.mono.elapsed_ms();
        let mut state = self.state.lock();
        let skew = state.steady.skew_s(wall, mono);
        if skew.abs_diff(state.warned_skew_s) >= SKEW_WARN_S.unsigned_abs() {
            state.warned_skew_s = skew;
            if skew.unsigned_abs() >= SKEW_WARN_S.unsigned_abs() {
                tracing::warn!(
                    skew_s = skew,
                    "the wall clock stepped away from steady time; steady time goes on at the \
                     monotonic clock's pace (restart to follow the wall clock)"
                );
            }
        }
        state.steady.now_ms(mono)
    }
}

impl Clock for SteadyClock {
    fn now_s(&self) -> u64 {
        self.read_ms() / 1_000
    }

    fn now_ms(&self) -> u64 {
        self.read_ms()
    }

    fn raise_to(&self, floor_s: u64) {
        let mono = self.mono.elapsed_ms();
        self.state.lock().steady.raise_to(floor_s, mono);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn reads_the_system_time() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let now = SystemClock.now_s();
        assert!(now >= before && now <= before + 5, "{now} vs {before}");
        let steady = SteadyClock::system().now_s();
        assert!(
            steady >= before && steady <= before + 5,
            "{steady} vs {before}"
        );
    }

    struct Manual(AtomicU64);

    impl Clock for Manual {
        fn now_s(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Monotonic for Manual {
        fn elapsed_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn wall_clock_steps_do_not_move_steady_time() {
        let wall = Arc::new(Manual(AtomicU64::new(1_000_000)));
        let mono = Arc::new(Manual(AtomicU64::new(0)));
        let clock = SteadyClock::new(wall.clone(), mono.clone());
        mono.0.store(5_000, Ordering::SeqCst);
        wall.0.store(1_000_005 + 259_200, Ordering::SeqCst);
        assert_eq!(clock.now_s(), 1_000_005);
        assert_eq!(clock.skew_s(), 259_200);
        wall.0.store(1_000_005 - 259_200, Ordering::SeqCst);
        mono.0.store(6_000, Ordering::SeqCst);
        assert_eq!(clock.now_s(), 1_000_006);
        assert_eq!(clock.skew_s(), -259_201);
        clock.raise_to(1_000_100);
        assert_eq!(clock.now_s(), 1_000_100);
    }
}
