//! Where the dispatcher reads the time ([`DispatcherParts::clock`](crate::DispatcherParts::clock)):
//! the system clock, or one a test drives by hand.

/// Where time comes from: Unix seconds, read by the dispatcher's handlers and round closer.
pub trait Clock: Send + Sync + 'static {
    /// Unix seconds now.
    fn now_s(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_s(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}
