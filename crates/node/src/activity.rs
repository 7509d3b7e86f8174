//! What the node served lately: tasks per second and their latency over the last minute, for
//! the operator's dashboard ([`crate::dashboard`]).
//!
//! Fixed memory whatever the rate: one slot per second for the last [`WINDOW_S`] seconds,
//! each a count of tasks answered and failed and a latency histogram with four buckets per
//! doubling (so a quantile read from it is at most 25 % above the true one). The time is given by
//! the caller in milliseconds since any fixed origin (the runtime passes the time since the
//! node started), so the rules here read no clock.

use serde::Serialize;

/// Seconds of history kept.
pub const WINDOW_S: usize = 60;

/// Latency buckets: bucket `i` holds latencies below `2^((i + 1) / 4)` µs; the last one also
/// holds everything longer (about 68 s and more).
const BUCKETS: usize = 105;

/// One second of tasks.
#[derive(Clone)]
struct Slot {
    /// The second (since the origin) this slot holds; `u64::MAX` when it holds none.
    second: u64,
    ok: u32,
    failed: u32,
    latency: [u32; BUCKETS],
}

impl Slot {
    const EMPTY: Slot = Slot {
        second: u64::MAX,
        ok: 0,
        failed: 0,
        latency: [0; BUCKETS],
    };
}

/// Tasks answered over the last minute, and since the start.
pub struct Activity {
    slots: Vec<Slot>,
    ok_total: u64,
    failed_total: u64,
}

/// What [`Activity::snapshot`] reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ActivitySnapshot {
    /// Tasks answered with outputs since the node started.
    pub tasks_ok_total: u64,
    /// Tasks answered with an error since the node started (refusals included).
    pub tasks_failed_total: u64,
    /// Tasks answered with outputs per second, averaged over the last 10 full seconds.
    pub tasks_per_s: f64,
    /// Median latency of the tasks answered with outputs in the last minute, µs (the upper
    /// edge of its histogram bucket); `None` without any.
    pub latency_p50_us: Option<u64>,
    /// 99th percentile, likewise.
    pub latency_p99_us: Option<u64>,
    /// Tasks answered with outputs in each of the last [`WINDOW_S`] full seconds, oldest
    /// first.
    pub per_second: Vec<u32>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Nothing served yet.
    pub fn new() -> Self {
        Self {
            slots: vec![Slot::EMPTY; WINDOW_S],
            ok_total: 0,
            failed_total: 0,
        }
    }

    fn slot(&mut self, second: u64) -> &mut Slot {
        let slot = &mut self.slots[(second % WINDOW_S as u64) as usize];
        if slot.second != second {
            *slot = Slot::EMPTY;
            slot.second = second;
        }
        slot
    }

    /// A task was answered at `now_ms`, with outputs (`ok`) after `latency_us`, or with an
    /// error.
    pub fn record(&mut self, now_ms: u64, ok: bool, latency_us: u64) {
        let slot = self.slot(now_ms / 1_000);
        if ok {
            slot.ok = slot.ok.saturating_add(1);
            let b = &mut slot.latency[bucket(latency_us)];
            *b = b.saturating_add(1);
            self.ok_total += 1;
        } else {
            slot.failed = slot.failed.saturating_add(1);
            self.failed_total += 1;
        }
    }

    /// The figures as of `now_ms`: the last [`WINDOW_S`] full seconds, not the running one.
    pub fn snapshot(&self, now_ms: u64) -> ActivitySnapshot {
        let now_s = now_ms / 1_000;
        let window = WINDOW_S as u64;
        let mut per_second = vec![0u32; WINDOW_S];
        let mut histogram = [0u64; BUCKETS];
        for slot in &self.slots {
            // The full seconds now_s - WINDOW_S ..= now_s - 1.
            if slot.second == u64::MAX || slot.second >= now_s || slot.second + window < now_s {
                continue;
            }
            per_second[(slot.second + window - now_s) as usize] = slot.ok;
            for (h, n) in histogram.iter_mut().zip(slot.latency) {
                *h += u64::from(n);
            }
        }
        // Before the node has run for a full window, only the seconds it ran count.
        let last10 = now_s.min(10);
        let recent: u64 = per_second[WINDOW_S - last10 as usize..]
            .iter()
            .map(|&n| u64::from(n))
            .sum();
        ActivitySnapshot {
            tasks_ok_total: self.ok_total,
            tasks_failed_total: self.failed_total,
            tasks_per_s: if last10 == 0 {
                0.0
            } else {
                recent as f64 / last10 as f64
            },
            latency_p50_us: quantile(&histogram, 50),
            latency_p99_us: quantile(&histogram, 99),
            per_second,
        }
    }
}

/// The bucket of a latency: ⌊4·log2(µs)⌋, from the integer's bits (no floating point).
fn bucket(latency_us: u64) -> usize {
    if latency_us < 2 {
        return 0;
    }
    let log2 = 63 - u64::from(latency_us.leading_zeros());
    // The two bits after the leading one split each doubling in four.
    let frac = if log2 >= 2 {
        (latency_us >> (log2 - 2)) & 0b11
    } else {
        (latency_us << (2 - log2)) & 0b11
    };
    ((log2 * 4 + frac) as usize).min(BUCKETS - 1)
}

/// The upper edge of bucket `i`, µs: bucket `4·k + f` holds `[(4 + f)·2^k / 4, (5 + f)·2^k / 4)`.
fn bucket_upper_us(i: usize) -> u64 {
    let (log2, frac) = (i as u64 / 4, i as u64 % 4);
    ((5 + frac) << log2).div_ceil(4)
}

/// The `percent`-th percentile's bucket edge, or `None` for an empty histogram.
fn quantile(histogram: &[u64; BUCKETS], percent: u64) -> Option<u64> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    // The smallest latency at or above which no more than (100 - percent) % of tasks lie.
    let rank = (total * percent).div_ceil(100).max(1);
    let mut seen = 0;
    for (i, &n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_upper_us(i));
        }
    }
    Some(bucket_upper_us(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_their_edges_bound_what_they_hold() {
        let mut last = 0;
        for us in 1..200_000u64 {
            let b = bucket(us);
            assert!(b >= last, "{us} µs in bucket {b} after {last}");
            last = b;
            assert!(
                us < bucket_upper_us(b),
                "{us} µs above its edge {}",
                bucket_upper_us(b)
            );
            // At most 25 % above: four buckets per doubling.
            assert!(
                bucket_upper_us(b) as f64 <= us as f64 * 1.25 + 1.0,
                "{us} µs"
            );
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn rate_and_quantiles_over_the_last_seconds() {
        let mut a = Activity::new();
        // 100 tasks a second for 20 s: 99 of them at 1 ms, one at 50 ms; 5 failures a second.
        for s in 0..20u64 {
            for i in 0..100u64 {
                let latency = if i == 0 { 50_000 } else { 1_000 };
                a.record(s * 1_000 + i * 10, true, latency);
            }
            for i in 0..5 {
                a.record(s * 1_000 + i, false, 0);
            }
        }
        let snap = a.snapshot(20_000);
        assert_eq!(snap.tasks_ok_total, 2_000);
        assert_eq!(snap.tasks_failed_total, 100);
        assert_eq!(snap.tasks_per_s, 100.0);
        let p50 = snap.latency_p50_us.unwrap();
        assert!((1_000..=1_190).contains(&p50), "{p50}");
        // 1 % of the tasks took 50 ms: the 99th percentile is still the 1 ms bucket.
        let p99 = snap.latency_p99_us.unwrap();
        assert!((1_000..=1_190).contains(&p99), "{p99}");
        assert_eq!(snap.per_second.len(), WINDOW_S);
        assert_eq!(snap.per_second[WINDOW_S - 1], 100);
        assert_eq!(snap.per_second[WINDOW_S - 21], 0);

        // A minute of silence later, nothing is recent; the totals stay.
        let later = a.snapshot(90_000);
        assert_eq!(later.tasks_per_s, 0.0);
        assert_eq!(later.latency_p50_us, None);
        assert!(later.per_second.iter().all(|&n| n == 0));
        assert_eq!(later.tasks_ok_total, 2_000);

        // Second 79 takes second 19's slot, which then holds only the new second.
        a.record(79_500, true, 10);
        let snap = a.snapshot(80_000);
        assert_eq!(snap.per_second[WINDOW_S - 1], 1);
        assert_eq!(
            snap.per_second.iter().map(|&n| u64::from(n)).sum::<u64>(),
            1
        );
    }

    #[test]
    fn a_young_node_averages_over_the_seconds_it_ran() {
        let mut a = Activity::new();
        for i in 0..30 {
            a.record(i * 100, true, 200);
        }
        // 3 s old, 10 tasks in each full second.
        assert_eq!(a.snapshot(3_000).tasks_per_s, 10.0);
        assert_eq!(Activity::new().snapshot(0).tasks_per_s, 0.0);
    }
}
