//! Where the time comes from, and the steady time every peer runs on.
//!
//! The rules in this crate take the time as an argument (`now_s`) and never read a clock.
//! The crates that do I/O (the node, the SDK, the dispatcher) read it through [`Clock`], so
//! that tests can drive time by hand; the clocks that read the system, `crat_transport::SystemClock`
//! and `crat_transport::SteadyClock`, live with the other I/O.
//!
//! # Steady time
//! Money follows time here: uptime is the time between heartbeats, a round closes when its
//! end has passed, and income belongs to the round in which the dispatcher received it. The
//! wall clock is the wrong ruler for all three: an operator's `date -s`, a virtual machine
//! resumed after days, or NTP stepping a clock that was wrong at boot moves it by hours or
//! days at once. Read raw, a forward step of three days marks every node offline (its last
//! heartbeat looks three days old) and closes three days of rounds that real time has not
//! reached, and a step back stamps new income into rounds already closed, where it is never
//! paid.
//!
//! [`Steady`] is the rule that fixes this: steady time is the wall clock read *once*, when
//! the clock starts, plus the time a monotonic clock has counted since. A monotonic clock
//! never steps (on Linux, `CLOCK_MONOTONIC` is slewed by NTP's frequency corrections, so it
//! keeps the wall clock's *rate*, but not its steps), so steady time:
//! - moves forward at the rate of real time, whatever the wall clock does meanwhile;
//! - never goes backwards, not even across a restart: a dispatcher raises it to the latest
//!   time its ledger has recorded ([`Steady::raise_to`]) before serving;
//! - follows a step of the wall clock only when the process starts again. A dispatcher whose
//!   wall clock was wrong when it started keeps the wrong time until restarted; the skew
//!   ([`Steady::skew_s`]) is logged and shown, so an operator sees it.
//!
//! ```
//! use crat_core::clock::Steady;
//!
//! // Started at wall time 1,000,000 s, the monotonic clock reading 5,000 ms.
//! let mut t = Steady::new(1_000_000, 5_000);
//! // 10 s later by the monotonic clock, while the wall clock stepped 3 days ahead.
//! assert_eq!(t.now_s(15_000), 1_000_010);
//! assert_eq!(t.skew_s(1_000_010 + 3 * 86_400, 15_000), 3 * 86_400);
//! // Raised to what a ledger recorded last; time never goes back.
//! t.raise_to(1_000_100, 15_000);
//! assert_eq!(t.now_s(15_000), 1_000_100);
//! assert_eq!(t.now_s(16_000), 1_000_101);
//! ```
//!
//! A clock a test drives by hand implements [`Clock`] directly:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! use crat_core::clock::Clock;
//!
//! /// A clock a test moves by hand.
//! struct Manual(AtomicU64);
//!
//! impl Clock for Manual {
//!     fn now_s(&self) -> u64 {
//!         self.0.load(Ordering::SeqCst)
//!     }
//! }
//!
//! let clock = Manual(AtomicU64::new(1_700_000_000));
//! assert_eq!(clock.now_s(), 1_700_000_000);
//! ```

/// A source of the current time, in Unix seconds.
pub trait Clock: Send + Sync + 'static {
    /// Unix seconds now.
    fn now_s(&self) -> u64;

    /// Unix milliseconds now; by default [`Clock::now_s`] in milliseconds (a clock that
    /// knows better says so: a steady clock anchored to the wall clock's millisecond agrees
    /// with it to the millisecond, not to the second).
    fn now_ms(&self) -> u64 {
        self.now_s().saturating_mul(1_000)
    }

    /// Makes the clock read at least `floor_s` from now on: a dispatcher calls it on start
    /// with the latest time its ledger recorded, so that time never goes back across a
    /// restart. A clock that cannot be moved (the raw system clock, a test's clock) ignores
    /// it, which is the default.
    fn raise_to(&self, floor_s: u64) {
        let _ = floor_s;
    }
}

/// A clock that never steps: milliseconds elapsed since some fixed point (the process's
/// start, say), as `std::time::Instant` counts them.
pub trait Monotonic: Send + Sync + 'static {
    /// Milliseconds since the fixed point; never less than an earlier reading.
    fn elapsed_ms(&self) -> u64;
}

/// Steady time: the wall clock at the start plus the monotonic time since (see the
/// [module documentation](self)). Sans-IO: the caller reads both clocks and passes them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steady {
    /// Steady time at the anchor, in Unix milliseconds.
    base_ms: u64,
    /// The monotonic reading at the anchor.
    anchor_ms: u64,
    /// The latest steady time given out, in Unix milliseconds.
    last_ms: u64,
}

impl Steady {
    /// Steady time that reads `wall_s` now, when the monotonic clock reads `mono_ms`.
    pub fn new(wall_s: u64, mono_ms: u64) -> Self {
        Self::new_ms(wall_s.saturating_mul(1_000), mono_ms)
    }

    /// Steady time that reads `wall_ms` (Unix milliseconds) now, when the monotonic clock
    /// reads `mono_ms`.
    pub fn new_ms(wall_ms: u64, mono_ms: u64) -> Self {
        let base_ms = wall_ms;
        Self {
            base_ms,
            anchor_ms: mono_ms,
            last_ms: base_ms,
        }
    }

    /// Steady time in Unix milliseconds when the monotonic clock reads `mono_ms`; never less
    /// than an earlier answer (a monotonic reading older than the anchor counts as the anchor).
    pub fn now_ms(&mut self, mono_ms: u64) -> u64 {
        let t = self
            .base_ms
            .saturating_add(mono_ms.saturating_sub(self.anchor_ms));
        self.last_ms = self.last_ms.max(t);
        self.last_ms
    }

    /// Steady time in Unix seconds when the monotonic clock reads `mono_ms`.
    pub fn now_s(&mut self, mono_ms: u64) -> u64 {
        self.now_ms(mono_ms) / 1_000
    }

    /// Moves steady time forward to at least `floor_s` (never back): from then on it counts
    /// from there.
    pub fn raise_to(&mut self, floor_s: u64, mono_ms: u64) {
        let now = self.now_ms(mono_ms);
        let floor_ms = floor_s.saturating_mul(1_000);
        if floor_ms > now {
            self.base_ms = floor_ms;
            self.anchor_ms = mono_ms.max(self.anchor_ms);
            self.last_ms = floor_ms;
        }
    }

    /// How far the wall clock (`wall_s`) is ahead of steady time (negative: behind), in
    /// seconds, when the monotonic clock reads `mono_ms`.
    pub fn skew_s(&mut self, wall_s: u64, mono_ms: u64) -> i64 {
        let now = self.now_s(mono_ms);
        let d = i128::from(wall_s) - i128::from(now);
        i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_monotonic_clock_not_the_wall_clock() {
        let mut t = Steady::new(1_000_000, 0);
        assert_eq!(t.now_s(0), 1_000_000);
        assert_eq!(t.now_s(999), 1_000_000);
        assert_eq!(t.now_s(1_000), 1_000_001);
        // Whatever the wall clock says, only the monotonic reading moves steady time.
        assert_eq!(t.skew_s(1_000_001 + 259_200, 1_000), 259_200);
        assert_eq!(t.skew_s(1_000_001 - 259_200, 1_000), -259_200);
        assert_eq!(t.now_s(61_000), 1_000_061);
    }

    #[test]
    fn never_goes_back() {
        let mut t = Steady::new(1_000, 10_000);
        assert_eq!(t.now_s(20_000), 1_010);
        // A stale monotonic reading (taken before a later one was used) does not go back.
        assert_eq!(t.now_s(15_000), 1_010);
        // Raising below the current time changes nothing.
        t.raise_to(900, 20_000);
        assert_eq!(t.now_s(20_000), 1_010);
        // Raising above moves it, and it keeps counting from there.
        t.raise_to(5_000, 20_000);
        assert_eq!(t.now_s(20_000), 5_000);
        assert_eq!(t.now_s(22_500), 5_002);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let mut t = Steady::new(u64::MAX, 0);
        assert_eq!(t.now_ms(u64::MAX), u64::MAX);
        assert_eq!(t.skew_s(0, 0), -i64::try_from(u64::MAX / 1_000).unwrap());
    }
}
