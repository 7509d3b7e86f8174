//! Latency histograms of fixed size (log-linear buckets, about 3 % wide), safe to record into
//! from many tasks at once, and the counters a load run keeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: the resolution is 1/32 of the value (about 3 %).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets in all: values up to 2⁴⁰ µs (12 days) and above land in the last one.
const BUCKETS: usize = ((40 - SUB_BITS as usize) + 1) * SUB as usize;

/// A latency histogram in microseconds with [`BUCKETS`] buckets (bounded memory whatever the
/// number of samples).
pub struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // ≥ SUB_BITS
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
    let index = (exp - SUB_BITS + 1) as usize * SUB as usize + sub as usize;
    index.min(BUCKETS - 1)
}

/// The lowest value of bucket `index`.
fn bucket_floor(index: usize) -> u64 {
    let sub_n = SUB as usize;
    if index < sub_n {
        return index as u64;
    }
    let exp = (index / sub_n) as u32 + SUB_BITS - 1;
    let sub = (index % sub_n) as u64;
    (SUB | sub) << (exp - SUB_BITS)
}

impl Histogram {
    /// Records one latency.
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Forgets every sample (the start of a measurement window).
    pub fn reset(&self) {
        for c in self.counts.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// The `q` quantile (0..=1) in microseconds: the lower bound of its bucket (so within
    /// about 3 % below the true value). `None` without samples.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_floor(i));
            }
        }
        None
    }

    /// `p50/p99` as text in milliseconds, or `-` without samples.
    pub fn summary(&self) -> String {
        match (self.quantile_us(0.5), self.quantile_us(0.99)) {
            (Some(p50), Some(p99)) => format!(
                "p50 {:.2} ms, p99 {:.2} ms ({} samples)",
                p50 as f64 / 1e3,
                p99 as f64 / 1e3,
                self.count()
            ),
            _ => "no samples".into(),
        }
    }
}

/// A counter shared by tasks.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in [0u64, 1, 31, 32, 33, 63, 64, 100, 1_000, 123_456, 10_000_000] {
            let b = bucket_of(us);
            assert!(b >= last);
            last = b;
            let floor = bucket_floor(b);
            assert!(floor <= us, "{us}: floor {floor}");
            assert!(us - floor <= us / 32 + 1, "{us}: floor {floor}");
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile_us(0.5).unwrap();
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((48_000..=50_000).contains(&p50), "{p50}");
        assert!((96_000..=99_000).contains(&p99), "{p99}");
    }
}

/// Distinct errors kept for a report.
const ERRORS_KEPT_MAX: usize = 8;

/// The first distinct error texts seen (at most [`ERRORS_KEPT_MAX`]), safe to record into
/// from many tasks at once.
#[derive(Default)]
pub struct Errors(parking_lot::Mutex<Vec<String>>);

impl Errors {
    /// Keeps `what: e` unless it was seen or enough are kept.
    pub fn record(&self, what: &str, e: impl std::fmt::Display) {
        let text = format!("{what}: {e}");
        let mut errors = self.0.lock();
        if errors.len() < ERRORS_KEPT_MAX && !errors.contains(&text) {
            errors.push(text);
        }
    }

    /// Those kept, first seen first.
    pub fn list(&self) -> Vec<String> {
        self.0.lock().clone()
    }
}
