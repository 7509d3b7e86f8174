//! Rule 6, the rank order, and the fast ways of reaching it.
//!
//! [`cmp_rank`] is the definition: the eligible nodes ordered by score descending, total
//! uptime descending, registration time ascending, id bytes ascending. Everything else here
//! reaches the order that sorting by [`cmp_rank`] gives (it is total once ids are unique,
//! which [`id_order`] checks) faster on large rounds: radix sorts of packed integer keys
//! ([`rank_order`]) and the selection of just the paid ranks ([`top_order`]). The tests
//! below hold each of them to [`cmp_rank`].

use std::cmp::Ordering;

use crate::RewardsError;
use crate::round::NodeInput;
use crate::rules::score;

/// Most nodes in one round. Node positions are kept as `u32` while ranking, in the low
/// `INDEX_BITS` (26) bits of the packed keys.
pub const ROUND_NODES_MAX: usize = 1 << INDEX_BITS;

/// The first 8 bytes of an id, big-endian: comparing these first orders ids like their bytes.
pub(crate) fn id_prefix(node: &NodeInput) -> u64 {
    let b = node.id.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Buffers of the radix sorts, kept from round to round (they carry no state).
#[derive(Clone, Debug, Default)]
pub(crate) struct RankBuffers {
    keys: Vec<u128>,
    keys_tmp: Vec<u128>,
    ranked_tmp: Vec<RankKey>,
    /// The radix sorts' digit counts.
    counts: Vec<usize>,
}

/// Rule 6's sort key, precomputed so the sort touches one small array.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RankKey {
    score: u128,
    uptime_total_s: u64,
    registered_at_s: u64,
    id_prefix: u64,
    index: u32,
}

impl RankKey {
    /// The key of node `index` (below [`ROUND_NODES_MAX`], checked with the round) whose
    /// total uptime (rule 1) is `uptime_total_s`.
    #[inline]
    pub(crate) fn new(index: usize, node: &NodeInput, uptime_total_s: u64) -> Self {
        Self {
            score: score(node),
            uptime_total_s,
            registered_at_s: node.registered_at_s,
            id_prefix: id_prefix(node),
            // index < ROUND_NODES_MAX < 2^32.
            index: index as u32,
        }
    }
}

/// Rule 6, the definition of the rank order: `score` descending, `uptime_total_s`
/// descending, `registered_at_s` ascending, id bytes ascending (the id's first 8 bytes
/// first, the full id only when they tie: the same order as comparing the full ids). Every
/// faster way below is tested to give the order `sort_unstable_by(cmp_rank)` gives.
pub(crate) fn cmp_rank(nodes: &[NodeInput], a: &RankKey, b: &RankKey) -> Ordering {
    b.score
        .cmp(&a.score)
        .then(b.uptime_total_s.cmp(&a.uptime_total_s))
        .then(a.registered_at_s.cmp(&b.registered_at_s))
        .then(a.id_prefix.cmp(&b.id_prefix))
        .then_with(|| nodes[a.index as usize].id.cmp(&nodes[b.index as usize].id))
}

/// Bits of an id-order entry that hold the node's position (`ROUND_NODES_MAX` = 2^26).
const INDEX_BITS: u32 = 26;

/// An entry of [`id_order`]: the id's first 38 bits above the node's position.
pub(crate) fn id_order_entry(index: usize, node: &NodeInput) -> u64 {
    (id_prefix(node) >> INDEX_BITS) << INDEX_BITS | index as u64
}

/// Node positions in id byte order, from one [`id_order_entry`] per node: one integer sort
/// does almost all the work, then runs that share the 38 bits are put in full-id order.
/// Fails on a duplicate id.
pub(crate) fn id_order(
    nodes: &[NodeInput],
    mut order: Vec<u64>,
    tmp: &mut Vec<u64>,
) -> Result<Vec<u64>, RewardsError> {
    if order.len() < RADIX_MIN {
        order.sort_unstable();
    } else {
        // Three passes of 13 bits over the 38-bit prefix.
        radix_sort_bits::<_, { 1 << 13 }>(&mut order, tmp, &mut Vec::new(), INDEX_BITS, 64);
    }
    let index = |e: u64| (e & ((1 << INDEX_BITS) - 1)) as usize;
    let prefix = |e: u64| e >> INDEX_BITS;
    // Runs sharing the 38 bits are rare for public keys: order them by full id, then
    // position. Equal ids can then only be neighbours.
    sort_runs(
        &mut order,
        |&a, &b| prefix(a) == prefix(b),
        |&a, &b| nodes[index(a)].id.cmp(&nodes[index(b)].id).then(a.cmp(&b)),
    );
    for pair in order.windows(2) {
        let (a, b) = (index(pair[0]), index(pair[1]));
        if prefix(pair[0]) == prefix(pair[1]) && nodes[a].id == nodes[b].id {
            return Err(RewardsError::DuplicateNode {
                index: b,
                first: a,
                id: nodes[a].id,
            });
        }
    }
    for e in &mut order {
        *e = index(*e) as u64;
    }
    Ok(order)
}

/// Sorts by `cmp` each run of neighbours that `same` groups together: a forward scan, O(n)
/// over all runs plus the sorts of the runs longer than one.
fn sort_runs<T>(
    v: &mut [T],
    same: impl Fn(&T, &T) -> bool,
    mut cmp: impl FnMut(&T, &T) -> Ordering,
) {
    let mut run = 0;
    while run < v.len() {
        let mut end = run + 1;
        while end < v.len() && same(&v[run], &v[end]) {
            end += 1;
        }
        if end - run > 1 {
            v[run..end].sort_unstable_by(&mut cmp);
        }
        run = end;
    }
}

/// The eligible nodes' positions in rule 6's order, into `order`; `ranked` holds their keys
/// in input order (and is left in some order). The result is the order
/// `sort_unstable_by(cmp_rank)` gives, since that order is total; how it is reached depends
/// on the round:
///
/// - when most scores are shared (a network whose balances move in equal steps; 99.9 % of a
///   simulated million-node round), score, total uptime and registration time are packed
///   with the node's position into one 128-bit key when they fit 102 bits, one radix sort
///   orders the keys, and only nodes equal in all three are then ordered by id;
/// - when scores mostly differ, a radix sort orders by score and a comparison sort orders
///   each (short) run of equal scores by the whole rule;
/// - small rounds, and scores or fields too wide to pack, take the comparison sort.
pub(crate) fn rank_order(
    nodes: &[NodeInput],
    ranked: &mut [RankKey],
    scratch: &mut RankBuffers,
    order: &mut Vec<u32>,
) {
    order.clear();
    match rank_path(ranked) {
        RankPath::Packed(layout) => rank_by_packed_keys(nodes, ranked, &layout, scratch, order),
        RankPath::Score => rank_by_score(nodes, ranked, scratch, order),
        RankPath::Compare => {
            ranked.sort_unstable_by(|a, b| cmp_rank(nodes, a, b));
            order.extend(ranked.iter().map(|k| k.index));
        }
    }
}

/// How [`rank_order`] sorts a round's eligible nodes.
enum RankPath {
    Packed(KeyLayout),
    Score,
    Compare,
}

fn rank_path(ranked: &[RankKey]) -> RankPath {
    if ranked.len() < RADIX_MIN {
        return RankPath::Compare;
    }
    if scores_mostly_shared(ranked)
        && let Some(layout) = KeyLayout::fit(ranked)
    {
        return RankPath::Packed(layout);
    }
    if ranked.iter().all(|k| k.score <= u128::from(u64::MAX)) {
        return RankPath::Score;
    }
    RankPath::Compare
}

/// The positions of rule 6's first `k` eligible nodes, in order, into `order`: what
/// [`rank_order`] would list first, found by selecting the first `k` (O(n)) and sorting only
/// them: by a radix selection of packed keys ([`top_by_packed_keys`]) on large rounds whose
/// fields pack, by a comparison selection when `k` is small against the round, else by
/// the whole order.
pub(crate) fn top_order(
    nodes: &[NodeInput],
    ranked: &mut [RankKey],
    k: usize,
    scratch: &mut RankBuffers,
    order: &mut Vec<u32>,
) {
    order.clear();
    let k = k.min(ranked.len());
    if k == 0 {
        return;
    }
    if ranked.len() >= RADIX_MIN
        && let Some(layout) = KeyLayout::fit(ranked)
    {
        top_by_packed_keys(nodes, ranked.iter(), k, &layout, scratch, order);
        return;
    }
    if ranked.len() < RADIX_MIN || k > ranked.len() / 8 {
        rank_order(nodes, ranked, scratch, order);
        order.truncate(k);
        return;
    }
    ranked.select_nth_unstable_by(k - 1, |a, b| cmp_rank(nodes, a, b));
    let top = &mut ranked[..k];
    top.sort_unstable_by(|a, b| cmp_rank(nodes, a, b));
    order.extend(top.iter().map(|key| key.index));
}

/// [`top_order`] of the keys of `parts` (one after another in input order, `len` in all, with
/// fields spanning `extrema`), read where they are: on large rounds whose fields pack, the
/// packed keys are made straight from the parts; otherwise the keys are first gathered into
/// `gathered`. The same order as [`top_order`] of the gathered keys.
pub(crate) fn top_order_in_parts<'r>(
    nodes: &[NodeInput],
    parts: impl Iterator<Item = &'r [RankKey]> + Clone,
    (len, extrema): (usize, &Extrema),
    k: usize,
    (scratch, gathered): (&mut RankBuffers, &mut Vec<RankKey>),
    order: &mut Vec<u32>,
) {
    order.clear();
    let k = k.min(len);
    if k == 0 {
        return;
    }
    if len >= RADIX_MIN
        && let Some(layout) = KeyLayout::of(extrema)
    {
        top_by_packed_keys(nodes, parts.flatten(), k, &layout, scratch, order);
        return;
    }
    gathered.clear();
    for part in parts {
        gathered.extend_from_slice(part);
    }
    top_order(nodes, gathered, k, scratch, order);
}

/// [`top_order`] by packed keys (as [`rank_by_packed_keys`] packs them): a radix selection,
/// digit by digit from the most significant, narrows the keys to those that rule 6's first
/// three criteria put among the first `k` (with every key equal to the last of them in all
/// three), and only those are sorted, then ordered by id where all three are equal.
///
/// When the first digit spreads the keys (at most [`SPREAD_BUCKET_MAX`] keys share the
/// `k`-th key's digit, as with some ten thousand keys with distinct scores), the keys are
/// instead put in digit order in one pass (a counting sort) and only the buckets up to the
/// `k`-th key's are sorted: the same first `k`, with two fewer passes over the keys.
fn top_by_packed_keys<'r>(
    nodes: &[NodeInput],
    ranked: impl IntoIterator<Item = &'r RankKey>,
    k: usize,
    layout: &KeyLayout,
    scratch: &mut RankBuffers,
    order: &mut Vec<u32>,
) {
    const DIGIT_BITS: u32 = 11;
    let mut keys = std::mem::take(&mut scratch.keys);
    keys.clear();
    let (mut and, mut or) = (u128::MAX, 0u128);
    let packed = layout.keys();
    keys.extend(ranked.into_iter().map(|key| {
        let e = packed(key);
        (and, or) = (and & e, or | e);
        e
    }));
    let tmp = &mut scratch.keys_tmp;
    // The bit above the highest of the three criteria's bits that differ among `keys`
    // (INDEX_BITS when they are all equal).
    let split_top =
        |and: u128, or: u128| INDEX_BITS + (128 - ((and ^ or) >> INDEX_BITS).leading_zeros());
    // keys[..lo] come before every other key by the three criteria (they are in), keys[hi..]
    // after every key of keys[..hi] (they are out), and keys[lo..hi] share their bits from
    // `top` up; `need` of them are in: lo < k ≤ hi.
    let (mut lo, mut hi, mut need) = (0, keys.len(), k);
    let mut top = split_top(and, or);
    while top > INDEX_BITS && hi - lo > need && hi - lo > 64 {
        let bits = DIGIT_BITS.min(top - INDEX_BITS);
        let shift = top - bits;
        let digit = |e: u128| ((e >> shift) as usize) & ((1 << bits) - 1);
        let counts = &mut scratch.counts;
        counts.clear();
        counts.resize(1 << bits, 0);
        for &e in &keys[lo..hi] {
            counts[digit(e)] += 1;
        }
        // The digit of the need-th key: those below are in, those above out.
        let (mut below, mut at) = (0, 0);
        while below + counts[at] < need {
            below += counts[at];
            at += 1;
        }
        if lo == 0 && counts[at] <= SPREAD_BUCKET_MAX {
            // No key is known to be in yet (keys[hi..] are out): keys[..hi] go into their
            // buckets, every key written (a branch per key would be mispredicted as often
            // as a key is in), and the buckets holding the first `k` are sorted.
            #[cfg(test)]
            SPREAD_PATH.with(|n| n.set(n.get() + 1));
            let end = below + counts[at];
            let mut start = 0;
            for c in counts.iter_mut() {
                (*c, start) = (start, start + *c);
            }
            tmp.clear();
            tmp.resize(hi, 0);
            for &e in &keys[..hi] {
                let d = digit(e);
                tmp[counts[d]] = e;
                counts[d] += 1;
            }
            // counts[d] is now where bucket d ends.
            tmp.truncate(end);
            let mut bucket_start = 0;
            for &bucket_end in &counts[..=at] {
                if bucket_end - bucket_start > 1 {
                    tmp[bucket_start..bucket_end].sort_unstable();
                }
                bucket_start = bucket_end;
            }
            std::mem::swap(&mut keys, tmp);
            order_ties_by_id(nodes, &mut keys);
            order.extend(keys[..k].iter().map(|&e| packed_index(e)));
            scratch.keys = keys;
            return;
        }
        #[cfg(test)]
        NARROWING_PATH.with(|n| n.set(n.get() + 1));
        tmp.clear();
        let mut write = lo;
        (and, or) = (u128::MAX, 0);
        for read in lo..hi {
            let e = keys[read];
            let d = digit(e);
            if d < at {
                keys[write] = e;
                write += 1;
            } else if d == at {
                tmp.push(e);
                (and, or) = (and & e, or | e);
            }
        }
        keys[write..write + tmp.len()].copy_from_slice(tmp);
        lo = write;
        hi = write + tmp.len();
        need -= below;
        top = split_top(and, or);
    }
    keys.truncate(hi);
    bucket_sort(&mut keys, tmp, &mut scratch.counts);
    order_ties_by_id(nodes, &mut keys);
    order.extend(keys[..k].iter().map(|&e| packed_index(e)));
    scratch.keys = keys;
}

/// Sorts `keys` ascending: distributed by their highest 11 bits that differ into buckets (a
/// few keys each for the spread-out keys [`top_by_packed_keys`] sorts), then each bucket
/// sorted; `tmp` and `counts` are buffers.
fn bucket_sort(keys: &mut Vec<u128>, tmp: &mut Vec<u128>, counts: &mut Vec<usize>) {
    const BITS: u32 = 11;
    if keys.len() < 256 {
        keys.sort_unstable();
        return;
    }
    let (and, or) = keys
        .iter()
        .fold((u128::MAX, 0u128), |(and, or), &e| (and & e, or | e));
    let shift = (128 - (and ^ or).leading_zeros()).saturating_sub(BITS);
    let bucket = |e: u128| ((e >> shift) as usize) & ((1 << BITS) - 1);
    counts.clear();
    counts.resize((1 << BITS) + 1, 0);
    for &e in keys.iter() {
        counts[bucket(e) + 1] += 1;
    }
    for b in 1..counts.len() {
        counts[b] += counts[b - 1];
    }
    // counts[b]: where bucket b starts; filled in order, it ends where bucket b + 1 starts.
    tmp.clear();
    tmp.resize(keys.len(), 0);
    for &e in keys.iter() {
        let b = bucket(e);
        tmp[counts[b]] = e;
        counts[b] += 1;
    }
    let mut start = 0;
    for &end in &counts[..1 << BITS] {
        if end - start > 1 {
            tmp[start..end].sort_unstable();
        }
        start = end;
    }
    std::mem::swap(keys, tmp);
}

/// Keys sharing the `k`-th key's first digit up to which [`top_by_packed_keys`] sorts the
/// first buckets at once instead of narrowing digit by digit (a million keys put some 500
/// in a bucket of the first digit: those are narrowed).
const SPREAD_BUCKET_MAX: usize = 256;

#[cfg(test)]
thread_local! {
    /// How often [`top_by_packed_keys`] took each way (for the tests to see both taken).
    static SPREAD_PATH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static NARROWING_PATH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Eligible nodes below which rule 6 is a plain comparison sort.
pub(crate) const RADIX_MIN: usize = 4096;

/// Whether more than half of an evenly spaced sample of 1,024 scores repeat within it.
fn scores_mostly_shared(ranked: &[RankKey]) -> bool {
    let step = (ranked.len() / 1024).max(1);
    let mut sample: Vec<u128> = ranked.iter().step_by(step).map(|k| k.score).collect();
    sample.sort_unstable();
    let repeats = sample.windows(2).filter(|w| w[0] == w[1]).count();
    repeats * 2 > sample.len()
}

/// [`rank_order`] by one radix sort of packed keys.
fn rank_by_packed_keys(
    nodes: &[NodeInput],
    ranked: &[RankKey],
    layout: &KeyLayout,
    scratch: &mut RankBuffers,
    order: &mut Vec<u32>,
) {
    let mut keys = std::mem::take(&mut scratch.keys);
    keys.clear();
    keys.extend(ranked.iter().map(layout.keys()));
    radix_sort_bits::<_, { 1 << 11 }>(
        &mut keys,
        &mut scratch.keys_tmp,
        &mut scratch.counts,
        INDEX_BITS,
        INDEX_BITS + layout.bits(),
    );
    order_ties_by_id(nodes, &mut keys);
    order.extend(keys.iter().map(|&e| packed_index(e)));
    scratch.keys = keys;
}

/// The node position a packed key ([`KeyLayout::keys`]) carries in its low bits.
fn packed_index(e: u128) -> u32 {
    (e as u32) & ((1 << INDEX_BITS) - 1)
}

/// Rule 6's last tie-break on sorted packed keys: where score, total uptime and registration
/// are all equal (the bits above [`INDEX_BITS`]), the id bytes decide.
fn order_ties_by_id(nodes: &[NodeInput], keys: &mut [u128]) {
    sort_runs(
        keys,
        |&a, &b| a >> INDEX_BITS == b >> INDEX_BITS,
        |&a, &b| {
            nodes[packed_index(a) as usize]
                .id
                .cmp(&nodes[packed_index(b) as usize].id)
        },
    );
}

/// [`rank_order`] by a radix sort on scores (which fit 64 bits) and comparison sorts of the
/// runs of equal scores.
fn rank_by_score(
    nodes: &[NodeInput],
    ranked: &mut [RankKey],
    scratch: &mut RankBuffers,
    order: &mut Vec<u32>,
) {
    // (inverted score, position): higher scores first. Positions < ROUND_NODES_MAX < 2^32.
    let mut keys = std::mem::take(&mut scratch.keys);
    keys.clear();
    keys.extend(
        ranked
            .iter()
            .enumerate()
            .map(|(p, k)| u128::from(!(k.score as u64)) << 64 | p as u128),
    );
    radix_sort_bits::<_, { 1 << 11 }>(
        &mut keys,
        &mut scratch.keys_tmp,
        &mut scratch.counts,
        64,
        128,
    );
    let mut sorted = std::mem::take(&mut scratch.ranked_tmp);
    sorted.clear();
    sorted.extend(keys.iter().map(|&e| ranked[e as u32 as usize]));
    scratch.keys = keys;
    sort_runs(
        &mut sorted,
        |a, b| a.score == b.score,
        |a, b| cmp_rank(nodes, a, b),
    );
    order.extend(sorted.iter().map(|k| k.index));
    scratch.ranked_tmp = sorted;
}

/// The span of rank keys' fields that [`KeyLayout`] packs: gathered key by key where the
/// keys are made (the parts of a round's pass each keep their own, then merged), so that
/// ranking need not read the keys once more to find them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extrema {
    score_max: u128,
    uptime_max: u64,
    registered_min: u64,
    registered_max: u64,
}

impl Default for Extrema {
    /// The extrema of no key.
    fn default() -> Self {
        Self {
            score_max: 0,
            uptime_max: 0,
            registered_min: u64::MAX,
            registered_max: 0,
        }
    }
}

impl Extrema {
    /// Widened to cover `k`.
    #[inline]
    pub(crate) fn add(&mut self, k: &RankKey) {
        self.score_max = self.score_max.max(k.score);
        self.uptime_max = self.uptime_max.max(k.uptime_total_s);
        self.registered_min = self.registered_min.min(k.registered_at_s);
        self.registered_max = self.registered_max.max(k.registered_at_s);
    }

    /// Widened to cover `other`'s keys too.
    pub(crate) fn merge(&mut self, other: &Self) {
        self.score_max = self.score_max.max(other.score_max);
        self.uptime_max = self.uptime_max.max(other.uptime_max);
        self.registered_min = self.registered_min.min(other.registered_min);
        self.registered_max = self.registered_max.max(other.registered_max);
    }
}

/// How [`rank_order`] packs rule 6's first three criteria above a node's position: the
/// score and the total uptime inverted (higher first), the registration time from the
/// earliest (earlier first).
struct KeyLayout {
    score_bits: u32,
    uptime_bits: u32,
    registered_bits: u32,
    registered_min: u64,
}

impl KeyLayout {
    /// The layout for `ranked`, if its fields fit 128 bits with the position.
    fn fit(ranked: &[RankKey]) -> Option<Self> {
        let mut extrema = Extrema::default();
        for k in ranked {
            extrema.add(k);
        }
        Self::of(&extrema)
    }

    /// The layout for keys whose fields span `extrema`, if they fit 128 bits with the
    /// position.
    fn of(extrema: &Extrema) -> Option<Self> {
        let bits = |max: u128| 128 - max.leading_zeros();
        let Extrema {
            score_max,
            uptime_max,
            registered_min,
            registered_max,
        } = *extrema;
        let registered_min = registered_min.min(registered_max);
        let layout = Self {
            score_bits: bits(score_max),
            uptime_bits: bits(u128::from(uptime_max)),
            registered_bits: bits(u128::from(registered_max - registered_min)),
            registered_min,
        };
        (layout.bits() + INDEX_BITS <= 128).then_some(layout)
    }

    fn bits(&self) -> u32 {
        self.score_bits + self.uptime_bits + self.registered_bits
    }

    /// The key of `k`: ascending keys are rule 6's order up to the id, then position (the
    /// definition [`KeyLayout::keys`] is tested against).
    #[cfg(test)]
    fn key(&self, k: &RankKey) -> u128 {
        let ones = |bits: u32| (1u128 << bits) - 1;
        let score = ones(self.score_bits) - k.score;
        let uptime = ones(self.uptime_bits) - u128::from(k.uptime_total_s);
        let registered = u128::from(k.registered_at_s - self.registered_min);
        let rule = (score << self.uptime_bits | uptime) << self.registered_bits | registered;
        rule << INDEX_BITS | u128::from(k.index)
    }

    /// [`KeyLayout::key`] for many keys: the masks and shifts worked out once (each field
    /// fits its bits, so the fields are ORed in at their places).
    fn keys(&self) -> impl Fn(&RankKey) -> u128 + use<> {
        let score_ones = (1u128 << self.score_bits) - 1;
        let uptime_ones = (1u128 << self.uptime_bits) - 1;
        let registered_at = INDEX_BITS;
        let uptime_at = registered_at + self.registered_bits;
        let score_at = uptime_at + self.uptime_bits;
        let registered_min = self.registered_min;
        move |k| {
            (score_ones - k.score) << score_at
                | (uptime_ones - u128::from(k.uptime_total_s)) << uptime_at
                | u128::from(k.registered_at_s - registered_min) << registered_at
                | u128::from(k.index)
        }
    }
}

/// LSD radix sort of integer entries (u64 or u128) by their bits `lo..hi` (entries equal
/// there keep their order), log2(`BUCKETS`) bits a pass: one read of the entries counts
/// every digit, then a pass per digit, skipping digits that every entry shares.
fn radix_sort_bits<K: Copy + Default + Into<u128>, const BUCKETS: usize>(
    v: &mut Vec<K>,
    to: &mut Vec<K>,
    counts: &mut Vec<usize>,
    lo: u32,
    hi: u32,
) {
    const { assert!(BUCKETS.is_power_of_two()) };
    let digit_bits = BUCKETS.trailing_zeros();
    let digits = (hi.saturating_sub(lo)).div_ceil(digit_bits) as usize;
    to.clear();
    to.resize(v.len(), K::default());
    let digit =
        |e: K, d: usize| ((e.into() >> (lo + d as u32 * digit_bits)) as usize) & (BUCKETS - 1);
    // Kept by the caller: a fresh zeroed block of digits × BUCKETS counts each sort costs more
    // than a small sort itself.
    counts.clear();
    counts.resize(digits * BUCKETS, 0);
    for &e in v.iter() {
        for (d, count) in counts.chunks_exact_mut(BUCKETS).enumerate() {
            count[digit(e, d)] += 1;
        }
    }
    for (d, count) in counts.chunks_exact_mut(BUCKETS).enumerate() {
        if count.contains(&v.len()) {
            continue;
        }
        let mut sum = 0;
        for c in count.iter_mut() {
            let here = *c;
            *c = sum;
            sum += here;
        }
        for &e in v.iter() {
            let b = digit(e, d);
            to[count[b]] = e;
            count[b] += 1;
        }
        std::mem::swap(v, to);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crat_core::id::NodeId;
    use crat_core::money::{MicroCrat, MicroUsd};

    use super::*;

    /// A node with id `id` and nothing else: rating 1, no CRAT, no activity.
    pub(crate) fn input(id: [u8; 32]) -> NodeInput {
        NodeInput {
            id: NodeId::from_bytes(id),
            rating: crat_core::hardware::PowerRating::MIN,
            registered_at_s: 0,
            mining_income_usd_micro_per_day: MicroUsd::ZERO,
            crat_start_micro: MicroCrat::ZERO,
            streak_start: 0,
            uptime_total_s_before: 0,
            online: Vec::new(),
            validations_ok: 0,
            validations_failed: 0,
            crat_external_micro: MicroCrat::ZERO,
        }
    }

    #[test]
    fn id_order_matches_a_plain_sort_above_the_radix_threshold() {
        // 10,000 ids from a simple generator; every 7th shares its first 38 bits (and more)
        // with another, so the run fix-up is exercised.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut nodes: Vec<NodeInput> = (0..10_000u32)
            .map(|i| {
                let mut id = [0u8; 32];
                for chunk in id.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_be_bytes());
                }
                if i % 7 == 0 {
                    id[..6].copy_from_slice(&[1, 2, 3, 4, 5, (i % 3) as u8]);
                }
                input(id)
            })
            .collect();
        let entries = |nodes: &[NodeInput]| {
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| id_order_entry(i, n))
                .collect::<Vec<_>>()
        };
        let order = id_order(&nodes, entries(&nodes), &mut Vec::new()).unwrap();
        let mut want: Vec<u64> = (0..nodes.len() as u64).collect();
        want.sort_by_key(|&i| nodes[i as usize].id);
        assert_eq!(order, want);
        // A duplicate anywhere is found.
        nodes[9_999].id = nodes[14].id;
        assert_eq!(
            id_order(&nodes, entries(&nodes), &mut Vec::new()),
            Err(RewardsError::DuplicateNode {
                index: 9_999,
                first: 14,
                id: nodes[14].id
            })
        );
    }

    #[test]
    fn bucket_sort_sorts() {
        let mut x = 5u64;
        let (mut tmp, mut counts) = (Vec::new(), Vec::new());
        for (n, spread) in [
            (0usize, 128u32),
            (300, 128),
            (3_000, 128),
            (3_000, 40),
            (2_000, 3),
        ] {
            let mut keys: Vec<u128> = (0..n)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let hi = u128::from(x) << 64 | u128::from(x.rotate_left(29));
                    // Runs of equal keys too.
                    if i % 4 == 0 { 77 } else { hi >> (128 - spread) }
                })
                .collect();
            let mut want = keys.clone();
            want.sort_unstable();
            bucket_sort(&mut keys, &mut tmp, &mut counts);
            assert_eq!(keys, want, "{n} keys of {spread} bits");
        }
    }

    #[test]
    fn packed_keys_are_the_keys() {
        let keys: Vec<RankKey> = (0..200u64)
            .map(|i| RankKey {
                score: u128::from(i * 7919 % 1000) << (i % 40),
                uptime_total_s: i * 104_729 % 100_000,
                registered_at_s: 1_000 + i * 31 % 500,
                id_prefix: i,
                index: i as u32,
            })
            .collect();
        let layout = KeyLayout::fit(&keys).unwrap();
        let packed = layout.keys();
        for k in &keys {
            assert_eq!(packed(k), layout.key(k));
        }
    }

    #[test]
    fn radix_rank_sort_equals_the_comparison_sort() {
        use crat_core::hardware::PowerRating;
        let mut x = 11u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // (nodes, CRAT levels, total uptime levels): packed keys with few and many distinct
        // values, all three equal (ids decide), and fields too wide to pack (comparison sort).
        let mut paths = std::collections::BTreeSet::new();
        for (count, crat_levels, uptime_levels) in [
            (5_000usize, 40u64, 4u64),
            (9_000, 3, 4),
            (4_096, 1, 1),
            (6_000, 1 << 40, 4),
            (6_000, u64::MAX, 4),
            (5_000, 40, u64::MAX),
            (4_000, 40, 4),
        ] {
            let nodes: Vec<NodeInput> = (0..count)
                .map(|i| {
                    let mut id = [0u8; 32];
                    id[..8].copy_from_slice(&next().to_be_bytes());
                    // Some ids share their first 8 bytes.
                    if i % 97 == 1 {
                        id[..8].copy_from_slice(&[7; 8]);
                        id[8..16].copy_from_slice(&(i as u64).to_be_bytes());
                    }
                    NodeInput {
                        id: NodeId::from_bytes(id),
                        rating: PowerRating::new(1 + (next() % 5) as u8)
                            .unwrap_or(PowerRating::MIN),
                        registered_at_s: next() % 3.min(uptime_levels),
                        mining_income_usd_micro_per_day: MicroUsd::ZERO,
                        crat_start_micro: MicroCrat::new(next() % crat_levels.max(1)),
                        streak_start: 0,
                        uptime_total_s_before: next() % uptime_levels,
                        online: Vec::new(),
                        validations_ok: 0,
                        validations_failed: 0,
                        crat_external_micro: MicroCrat::ZERO,
                    }
                })
                .collect();
            let keys = keys_of(&nodes);
            paths.insert(match rank_path(&keys) {
                RankPath::Packed(_) => "packed",
                RankPath::Score => "score",
                RankPath::Compare => "compare",
            });
            let mut a = keys.clone();
            a.sort_unstable_by(|p, q| cmp_rank(&nodes, p, q));
            let mut b = keys.clone();
            let mut ib = Vec::new();
            rank_order(&nodes, &mut b, &mut RankBuffers::default(), &mut ib);
            let ia: Vec<u32> = a.iter().map(|k| k.index).collect();
            assert_eq!(ia, ib, "{count} nodes, {crat_levels} CRAT levels");
            // The paid ranks alone, by radix selection of packed keys, by selection (k ≤ n / 8)
            // or by the whole sort: the first k of the comparison sort.
            for k in [
                0,
                1,
                7,
                count / 8,
                count / 8 + 1,
                count / 5,
                count / 2,
                count - 1,
                count,
            ] {
                let mut c = keys.clone();
                let mut top = Vec::new();
                top_order(&nodes, &mut c, k, &mut RankBuffers::default(), &mut top);
                assert_eq!(top, ia[..k], "{count} nodes, first {k}");
                // The same keys left in parts (as a round's pass in parts leaves them), with
                // their extrema gathered part by part.
                for part_len in [1_000, 1_024, count] {
                    let parts: Vec<&[RankKey]> = keys.chunks(part_len).collect();
                    let mut extrema = Extrema::default();
                    for part in &parts {
                        let mut e = Extrema::default();
                        part.iter().for_each(|key| e.add(key));
                        extrema.merge(&e);
                    }
                    let mut gathered = Vec::new();
                    let mut in_parts = vec![u32::MAX; 3];
                    top_order_in_parts(
                        &nodes,
                        parts.iter().copied(),
                        (count, &extrema),
                        k,
                        (&mut RankBuffers::default(), &mut gathered),
                        &mut in_parts,
                    );
                    assert_eq!(
                        in_parts,
                        ia[..k],
                        "{count} nodes in parts of {part_len}, first {k}"
                    );
                }
            }
        }
        assert_eq!(paths.len(), 3, "every path is exercised: {paths:?}");
        assert!(
            SPREAD_PATH.with(|n| n.get()) > 0,
            "the spread way is exercised"
        );
    }

    /// Each node's rank key, its total uptime the one it starts the round with.
    fn keys_of(nodes: &[NodeInput]) -> Vec<RankKey> {
        nodes
            .iter()
            .enumerate()
            .map(|(i, node)| RankKey::new(i, node, node.uptime_total_s_before))
            .collect()
    }

    #[test]
    fn clustered_keys_are_narrowed_digit_by_digit() {
        // One score; total uptimes in two clusters far apart, spread within each: the first
        // digit puts some 3,000 keys in each of two buckets, so the selection narrows.
        let mut x = 5u64;
        let nodes: Vec<NodeInput> = (0..6_000u64)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&x.to_be_bytes());
                NodeInput {
                    // Some uptimes repeat (ties decided by id).
                    uptime_total_s_before: (i % 2) << 40 | (x >> 50),
                    ..input(id)
                }
            })
            .collect();
        let keys = keys_of(&nodes);
        let mut all = keys.clone();
        all.sort_unstable_by(|p, q| cmp_rank(&nodes, p, q));
        let before = NARROWING_PATH.with(|n| n.get());
        for k in [1, 700, 2_999, 3_000, 3_001, 5_999] {
            let mut c = keys.clone();
            let mut top = Vec::new();
            top_order(&nodes, &mut c, k, &mut RankBuffers::default(), &mut top);
            let want: Vec<u32> = all[..k].iter().map(|key| key.index).collect();
            assert_eq!(top, want, "first {k}");
        }
        assert!(NARROWING_PATH.with(|n| n.get()) > before, "narrowed");
    }
}
