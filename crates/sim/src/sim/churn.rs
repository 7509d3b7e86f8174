//! Phase 1 of a round, churn: every node's on/off sessions advanced through the round from
//! its own random stream (PeerSim cycle style, in parallel), region outages cut out, and the
//! online capacity that leaves per node and per hour.

use crat_rewards::Interval;
use rayon::prelude::*;

use super::validation::DrawKey;
use super::{DAY_S, HOUR_S, Node, RoundClock, hour_len};
use crate::scenario::{Churn, SESSIONS_PER_ROUND_MAX, SessionModel, Strategy};
use crate::streams::{StreamRng, keyed_stream_rng, round_key};

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
    /// Per node, what its validation draws read of it.
    pub(super) draw_keys: Vec<DrawKey>,
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
    // A node's stream of the round is `stream_rng(seed, index, round)`, started from its
    // `stream_key` (of the run's seed).
    let round_key = round_key(u64::from(round));
    // Each churn chunk keeps its own interval buffer: node k's intervals are
    // `chunk_intervals[k / CHURN_CHUNK][spans[k]]`.
    out.chunk_intervals
        .resize_with(n_nodes.div_ceil(CHURN_CHUNK), Vec::new);
    out.spans.clear();
    out.spans.resize(n_nodes, (0, 0));
    out.node_capacity.clear();
    out.node_capacity.resize(n_nodes, 0);
    out.draw_keys.clear();
    out.draw_keys.resize(n_nodes, DrawKey::default());
    // Per chunk: capacity-seconds per hour of nodes online part of the round, the rps of
    // nodes online all of it, and the capacity-seconds of all nodes and of cheaters.
    let sums: Vec<(Vec<u64>, u64, u64, u64)> = nodes
        .par_chunks_mut(CHURN_CHUNK)
        .zip(out.chunk_intervals.par_iter_mut())
        .zip(out.spans.par_chunks_mut(CHURN_CHUNK))
        .zip(out.node_capacity.par_chunks_mut(CHURN_CHUNK))
        .zip(out.draw_keys.par_chunks_mut(CHURN_CHUNK))
        .map(|((((chunk, all), spans), caps), keys)| {
            all.clear();
            let mut per_hour = vec![0u64; hours];
            let mut full_rps = 0u64;
            for (j, n) in chunk.iter_mut().enumerate() {
                let base = all.len();
                advance_churn(n, churn, (start_s, end_s), round_key, all);
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
                keys[j] = DrawKey {
                    stream_key: n.stream_key,
                    rating: n.rating.get(),
                    strategy: n.strategy,
                };
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
/// intervals (at most [`SESSIONS_PER_ROUND_MAX`]) to `all`. Its random stream of the round
/// (`stream_rng(seed, index, round)`, from its `stream_key` and the round's `round_key`) is
/// started only when a session ends inside the round: most nodes draw nothing.
fn advance_churn(
    n: &mut Node,
    churn: &Churn,
    (start_s, end_s): (u64, u64),
    round_key: u64,
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
        let rng = rng.get_or_insert_with(|| keyed_stream_rng(n.stream_key, round_key));
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

/// Adds `cap × seconds online` to each hour bucket the interval touches (`iv` inside the
/// round that starts at `start_s`): its first and last hours in part, the hours between in
/// full, with no division per hour.
pub(super) fn add_hours(per_hour: &mut [u64], start_s: u64, iv: Interval, cap: u64) {
    let hours = per_hour.len();
    if iv.end_s <= iv.start_s {
        return;
    }
    let first = ((iv.start_s - start_s) / HOUR_S) as usize;
    if first >= hours {
        return;
    }
    // The hour of its last second.
    let last = ((iv.end_s - 1 - start_s) / HOUR_S) as usize;
    if last == first {
        per_hour[first] += cap * (iv.end_s - iv.start_s);
        return;
    }
    per_hour[first] += cap * (start_s + (first as u64 + 1) * HOUR_S - iv.start_s);
    for h in &mut per_hour[first + 1..last.min(hours)] {
        *h += cap * HOUR_S;
    }
    if last < hours {
        per_hour[last] += cap * (iv.end_s - (start_s + last as u64 * HOUR_S));
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
        // Hour by hour, as a loop over the seconds' hours would add them (the buckets end at
        // the last one).
        for (start, end) in [
            (0, 0),
            (0, 1),
            (5, 3_600),
            (3_599, 3_601),
            (100, 7_200),
            (100, 7_201),
            (3_600, 18_000),
            (1_000, 86_400),
            (3_600, 30_000),
            (20_000, 30_000),
        ] {
            let mut want = vec![0u64; 6];
            for t in start..end {
                if let Some(h) = want.get_mut((t / HOUR_S) as usize) {
                    *h += 3;
                }
            }
            let mut got = vec![0u64; 6];
            add_hours(&mut got, 0, Interval::new(start, end), 3);
            assert_eq!(got, want, "{start}..{end}");
            let mut shifted = vec![0u64; 6];
            add_hours(&mut shifted, 500, Interval::new(start + 500, end + 500), 3);
            assert_eq!(shifted, want, "{start}..{end} from 500");
        }
    }
}
