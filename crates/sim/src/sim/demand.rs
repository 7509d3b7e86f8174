//! Phase 3 of a round, per-request demand: requests each hour (diurnal, peak-window
//! multiplier, growth, shocks) served up to the online capacity the reservations leave,
//! pooled over nodes; the rest are dropped.

use crat_core::bps::Bps;
use crat_rewards::Interval;

use super::{DAY_S, HOUR_S, RoundClock, hour_len};
use crate::scenario::Scenario;
use crate::streams::{SHARED_STREAM_BASE, stream_rng};

/// Requests of a round.
#[derive(Clone, Copy, Debug)]
pub(super) struct Served {
    /// Requests served.
    pub(super) served: u64,
    /// Requests dropped for want of capacity.
    pub(super) dropped: u64,
}

/// Phase 3: the round's requests hour by hour, in order, from the shared demand stream.
/// `capacity_per_hour[h]` is the capacity-seconds online in hour `h`, `reserved_per_hour[h]`
/// what the per-instance deployments hold of it.
pub(super) fn serve(
    sc: &Scenario,
    clock: &RoundClock,
    seed: u64,
    demand_factor: f64,
    capacity_per_hour: &[u64],
    reserved_per_hour: &[u64],
) -> Served {
    let RoundClock {
        round,
        start_s,
        end_s,
        hours,
        ..
    } = *clock;
    let d = &sc.demand;
    let peak_windows: Vec<Interval> = sc
        .rewards
        .peak_windows
        .iter()
        .map(|w| Interval::new(start_s + w.start_s, start_s + w.end_s))
        .collect();
    let mut rng = stream_rng(seed, SHARED_STREAM_BASE, u64::from(round));
    let daily_requests =
        d.per_request_clients as f64 * d.requests_per_client_per_day as f64 * demand_factor;
    let mut served = Served {
        served: 0,
        dropped: 0,
    };
    for h in 0..hours {
        let h_start = start_s + h as u64 * HOUR_S;
        let h_len = hour_len(start_s, end_s, h);
        let mid = h_start + h_len / 2;
        let tod = (mid % DAY_S) as f64;
        let phase =
            2.0 * std::f64::consts::PI * (tod - sc.churn.peak_centre_s as f64) / DAY_S as f64;
        let mut w = 1.0 + d.diurnal_amplitude * phase.cos();
        if peak_windows
            .iter()
            .any(|p| p.start_s <= mid && mid < p.end_s)
        {
            w *= d.peak_multiplier;
        }
        let want = daily_requests * w * h_len as f64 / DAY_S as f64;
        // Fractional requests round up with their probability (shared stream).
        let want = (want + rng.unit_f64()).floor() as u64;
        let free = capacity_per_hour[h].saturating_sub(reserved_per_hour[h]);
        let s = want.min(free);
        served.served += s;
        served.dropped += want - s;
    }
    served
}

/// Demand multiplier of a round: compounded growth times the last shock that applies.
pub(super) fn demand_factor(sc: &Scenario, round: u32) -> f64 {
    let d = &sc.demand;
    let growth =
        (1.0 + d.growth_bps_per_round as f64 / f64::from(Bps::FULL.get())).powi(round as i32);
    let shock = d
        .shocks
        .iter()
        .filter(|s| s.from_round <= round)
        .max_by_key(|s| s.from_round)
        .map_or(1.0, |s| {
            f64::from(s.factor_bps) / f64::from(Bps::FULL.get())
        });
    growth * shock
}
