//! Phase 1 of a round, churn: every node's on/off sessions advanced through the round from
//! its own random stream (PeerSim cycle style, in parallel), region outages cut out, and the
//! online capacity that leaves per node and per hour.

use crat_rewards::Interval;
use rayon::prelude::*;

use super::{DAY_S, HOUR_S, Node, RoundClock, hour_len};
use crate::scenario::{Churn, SESSIONS_PER_ROUND_MAX, SessionModel, Strategy};
use crate::streams::{StreamRng, stream_rng};

/// Nodes per parallel work item of the churn pass.
pub(super) const CHURN_CHUNK: usize = 1024;

/// Where every node was online during a round, and the capacity that gave. Its buffers are
/// kept from round to round (at a million nodes a round would otherwise map some 90 MB
/// afresh); they carry nothing between rounds.
#[derive(Default)]
pub(super) struct Churned {
    /// Per churn chunk, its nodes' online intervals one after another.
    chunk_intervals: Vec<Vec<Interval>>,
    /// Per node, where its intervals start in its chunk's buffer, and how many.
    spans: Vec<(u32, u32)>,
    /// Per node, capacity-seconds online (rps × seconds).
    pub(super) node_capacity: Vec<u64>,
    /// Per hour of the round, capacity-seconds online.
    pub(super) capacity_per_hour: Vec<u64>,
    /// Capacity-seconds online of all nodes.
    pub(super) total_cap: u64,
    /// Capacity-seconds online of the cheaters.
    pub(super) cheater_cap: u64,
}

impl Churned {
    /// Node `k`'s online intervals in the round (sorted, disjoint).
    pub(super) fn online(&self, k: usize) -> &[Interval] {
        let (at, len) = self.spans[k];
        &self.chunk_intervals[k / CHURN_CHUNK][at as usize..(at + len) as usize]
    }
}

/// Phase 1: advances every node's churn through the round (in parallel; deterministic
/// because each node draws from its own stream), cuts the region outages out of its
/// intervals, and sums the online capacity, written into `out`'s buffers.
pub(super) fn churn(
    nodes: &mut [Node],
    clock: &RoundClock,
    churn: &Churn,
    outages: &[(u32, Interval)],
    capacity_rps: &[u32; 6],
    seed: u64,
    mut out: Churned,
) -> Churned {
    let RoundClock {
        round,
        start_s,
        end_s,
        length_s,
        hours,
    } = *clock;
    let n_nodes = nodes.len();
    // Each churn chunk keeps its own interval buffer: node k's intervals are
    // `chunk_intervals[k / CHURN_CHUNK][spans[k]]`.
    out.chunk_intervals
        .resize_with(n_nodes.div_ceil(CHURN_CHUNK), Vec::new);
    out.spans.clear();
    out.spans.resize(n_nodes, (0, 0));
    out.node_capacity.clear();
    out.node_capacity.resize(n_nodes, 0);
    // Per chunk: capacity-seconds per hour of nodes online part of the round, the rps of
    // nodes online all of it, and the capacity-seconds of all nodes and of cheaters.
    let sums: Vec<(Vec<u64>, u64, u64, u64)> = nodes
        .par_chunks_mut(CHURN_CHUNK)
        .zip(out.chunk_intervals.par_iter_mut())
        .zip(out.spans.par_chunks_mut(CHURN_CHUNK))
        .zip(out.node_capacity.par_chunks_mut(CHURN_CHUNK))
        .map(|(((chunk, all), spans), caps)| {
            all.clear();
            let mut per_hour = vec![0u64; hours];
            let mut full_rps = 0u64;
            for (j, n) in chunk.iter_mut().enumerate() {
                let base = all.len();
                advance_churn(n, churn, (start_s, end_s), (seed, round), all);
                for (region, w) in outages {
                    if *region == n.region {
                        let mine: Vec<Interval> = all.drain(base..).collect();
                        all.extend(cut(mine, *w));
                    }
                }
                let online = &all[base..];
                // A chunk holds at most CHURN_CHUNK × (SESSIONS_PER_ROUND_MAX + outage
                // cuts) intervals, far below u32::MAX.
                spans[j] = (base as u32, online.len() as u32);
                let cap = u64::from(capacity_rps[usize::from(n.rating.get())]);
                if let [iv] = online
                    && iv.start_s == start_s
                    && iv.end_s == end_s
                {
                    // Online all round (most nodes): one sum, spread over the hours below.
                    full_rps += cap;
                    caps[j] = cap * length_s;
                } else {
                    let mut total = 0;
                    for iv in online {
                        total += cap * iv.len_s();
                        add_hours(&mut per_hour, start_s, *iv, cap);
                    }
                    caps[j] = total;
                }
            }
            let total: u64 = caps.iter().sum();
            let cheating: u64 = chunk
                .iter()
                .zip(caps.iter())
                .filter(|(n, _)| n.strategy == Strategy::Cheater)
                .map(|(_, c)| c)
                .sum();
            (per_hour, full_rps, total, cheating)
        })
        .collect();
    let mut capacity_per_hour = vec![0u64; hours];
    let mut full_rps = 0u64;
    let (mut total_cap, mut cheater_cap) = (0u64, 0u64);
    for (ph, full, total, cheating) in sums {
        total_cap += total;
        cheater_cap += cheating;
        for (h, v) in ph.iter().enumerate() {
            capacity_per_hour[h] += v;
        }
        full_rps += full;
    }
    for (h, c) in capacity_per_hour.iter_mut().enumerate() {
        *c += full_rps * hour_len(start_s, end_s, h);
    }
    out.capacity_per_hour = capacity_per_hour;
    out.total_cap = total_cap;
    out.cheater_cap = cheater_cap;
    out
}

/// Advances a node's on/off sessions through `[start_s, end_s)`, appending its online
/// intervals (at most [`SESSIONS_PER_ROUND_MAX`]) to `all`. Its random stream (of `seed` and
/// `round`) is started only when a session ends inside the round: most nodes draw nothing.
fn advance_churn(
    n: &mut Node,
    churn: &Churn,
    (start_s, end_s): (u64, u64),
    (seed, round): (u64, u32),
    all: &mut Vec<Interval>,
) {
    if churn.model == SessionModel::None {
        n.online = true;
        all.push(Interval::new(start_s, end_s));
        return;
    }
    let base = all.len();
    let mut out = Intervals { all, base };
    let mut rng: Option<StreamRng> = None;
    let mut t = start_s;
    // A node's sessions carry over between rounds.
    let mut toggle = n.next_toggle_s.max(start_s);
    loop {
        let seg_end = toggle.min(end_s);
        if n.online && seg_end > t {
            match out.last_mut() {
                Some(Interval { end_s: e, .. }) if *e == t => *e = seg_end,
                _ => out.push(Interval::new(t, seg_end)),
            }
        }
        t = seg_end;
        if toggle >= end_s || out.len() >= SESSIONS_PER_ROUND_MAX {
            break;
        }
        // Toggle at `toggle`, draw the next session.
        n.online = !n.online;
        let tod = (toggle % DAY_S) as f64;
        let phase = 2.0 * std::f64::consts::PI * (tod - churn.peak_centre_s as f64) / DAY_S as f64;
        let diurnal = churn.diurnal_amplitude * phase.cos();
        let (mean, scale) = if n.online {
            (churn.mean_on_s as f64, 1.0 + diurnal)
        } else {
            (churn.mean_off_s as f64, 1.0 - diurnal)
        };
        let mean = mean * scale;
        let rng = rng.get_or_insert_with(|| stream_rng(seed, u64::from(n.index), u64::from(round)));
        let u = rng.unit_f64();
        let len = match churn.model {
            SessionModel::LogNormal => {
                let s = churn.sigma;
                let v = rng.unit_f64();
                let z = (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                (mean.ln() - s * s / 2.0 + s * z).exp()
            }
            _ => -mean * (1.0 - u).ln(),
        };
        toggle += if len.is_finite() {
            len.clamp(1.0, 1e12)
        } else {
            1e12
        } as u64;
    }
    if out.len() >= SESSIONS_PER_ROUND_MAX {
        // Stay in the current state until the round ends.
        if n.online {
            match out.last_mut() {
                Some(iv) => iv.end_s = end_s,
                None => out.push(Interval::new(t, end_s)),
            }
        }
        toggle = end_s;
    }
    n.next_toggle_s = toggle;
}

/// One node's intervals at the end of a shared buffer.
struct Intervals<'a> {
    all: &'a mut Vec<Interval>,
    base: usize,
}

impl Intervals<'_> {
    fn len(&self) -> usize {
        self.all.len() - self.base
    }

    fn last_mut(&mut self) -> Option<&mut Interval> {
        if self.len() == 0 {
            None
        } else {
            self.all.last_mut()
        }
    }

    fn push(&mut self, iv: Interval) {
        self.all.push(iv);
    }
}

/// `online` minus the window `w` (the node is dark inside it).
fn cut(online: Vec<Interval>, w: Interval) -> Vec<Interval> {
    let mut out = Vec::with_capacity(online.len() + 1);
    for iv in online {
        if iv.end_s <= w.start_s || iv.start_s >= w.end_s {
            out.push(iv);
            continue;
        }
        if iv.start_s < w.start_s {
            out.push(Interval::new(iv.start_s, w.start_s));
        }
        if iv.end_s > w.end_s {
            out.push(Interval::new(w.end_s, iv.end_s));
        }
    }
    out
}

/// Adds `cap × seconds online` to each hour bucket the interval touches.
pub(super) fn add_hours(per_hour: &mut [u64], start_s: u64, iv: Interval, cap: u64) {
    let hours = per_hour.len();
    let mut t = iv.start_s;
    while t < iv.end_s {
        let h = ((t - start_s) / HOUR_S) as usize;
        if h >= hours {
            break;
        }
        let h_end = start_s + (h as u64 + 1) * HOUR_S;
        let e = h_end.min(iv.end_s);
        per_hour[h] += cap * (e - t);
        t = e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds of `online` inside `w`.
    fn overlap(online: &[Interval], w: Interval) -> u64 {
        online
            .iter()
            .map(|iv| {
                iv.end_s
                    .min(w.end_s)
                    .saturating_sub(iv.start_s.max(w.start_s))
            })
            .sum()
    }

    #[test]
    fn cut_and_hours() {
        let on = vec![Interval::new(0, 100), Interval::new(200, 300)];
        assert_eq!(
            cut(on.clone(), Interval::new(50, 250)),
            vec![Interval::new(0, 50), Interval::new(250, 300)]
        );
        assert_eq!(overlap(&on, Interval::new(50, 250)), 100);
        let mut ph = vec![0; 2];
        add_hours(&mut ph, 0, Interval::new(3_000, 4_000), 2);
        assert_eq!(ph, vec![1_200, 800]);
    }
}
