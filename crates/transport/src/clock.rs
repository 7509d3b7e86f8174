//! The system clock: the [`Clock`] every running peer reads unless a test drives the time.

use crat_core::clock::Clock;

/// The system clock: Unix seconds from [`std::time::SystemTime`] (0 before the epoch).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_s(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_system_time() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let now = SystemClock.now_s();
        assert!(now >= before && now <= before + 5, "{now} vs {before}");
    }
}
