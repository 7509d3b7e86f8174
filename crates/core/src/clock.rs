//! Where the time comes from.
//!
//! The rules in this crate take the time as an argument (`now_s`) and never read a clock.
//! The crates that do I/O (the node, the SDK, the dispatcher) read it through [`Clock`], so
//! that tests can drive time by hand; the system clock, `crat_transport::SystemClock`, lives
//! with the other I/O.
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
}
