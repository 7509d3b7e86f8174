//! Placement: which nodes serve a deployment. One rule, used by the dispatcher and the
//! simulator alike.
//!
//! Sans-IO and deterministic: the same candidates and requests always give the same
//! assignments, whatever order the candidates are listed in. A [`Placer`] is built once from
//! the candidate nodes (O(n)) and then places requests one after another (O(log n) per
//! replica), each placement taking capacity away from the nodes it chose.
//!
//! The rule: only online nodes with at least the request's minimum rating and some free
//! capacity are candidates. Each replica goes to the candidate with the most free capacity,
//! ties broken by higher rating, then smaller id. A replica takes `min(free, still needed)`
//! requests per second from its node; a request asks either for a number of replicas of a
//! fixed size or for a total rate, and a node holds at most one replica of a request. At
//! most [`Request::per_operator_max`] replicas of one request go to one operator (address
//! block or owner), a first limit on sybils.
//!
//! ```
//! use crat_core::hardware::PowerRating;
//! use crat_core::id::NodeId;
//! use crat_core::placement::{Candidate, Placer, Request};
//!
//! let node = |b: u8, rating: u8, free_rps: u32| Candidate {
//!     id: NodeId::from_bytes([b; 32]),
//!     rating: PowerRating::new(rating).expect("1..=5"),
//!     free_rps,
//!     operator: u64::from(b),
//!     online: true,
//! };
//! let mut placer = Placer::new(vec![node(1, 3, 40), node(2, 5, 40), node(3, 1, 100)]);
//! // 60 rps on nodes rated 3 or more: node 2 (rating 5 wins the tie), then node 1.
//! let got = placer.place(&Request::rate(60, PowerRating::new(3).expect("1..=5")))?;
//! assert_eq!(got.len(), 2);
//! assert_eq!((got[0].id, got[0].rps), (NodeId::from_bytes([2; 32]), 40));
//! assert_eq!((got[1].id, got[1].rps), (NodeId::from_bytes([1; 32]), 20));
//! // Node 1 has 20 rps left; asking for 30 more on rated-3+ nodes fails and changes nothing.
//! assert!(placer.place(&Request::rate(30, PowerRating::new(3).expect("1..=5"))).is_err());
//! assert_eq!(placer.free_rps(&NodeId::from_bytes([1; 32])), Some(20));
//! # Ok::<(), crat_core::placement::PlacementError>(())
//! ```

use std::collections::BinaryHeap;

use crate::hardware::PowerRating;
use crate::id::NodeId;

/// Most candidates one [`Placer`] accepts.
pub const PLACEMENT_CANDIDATES_MAX: usize = 1 << 24;

/// Most replicas one request may ask for.
pub const PLACEMENT_REPLICAS_MAX: u32 = 1024;

/// A node that might receive replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub id: NodeId,
    /// Its power rating.
    pub rating: PowerRating,
    /// Requests per second it can still take.
    pub free_rps: u32,
    /// Who controls it (an address block or an owner key, hashed); replicas of one request
    /// per operator are limited by [`Request::per_operator_max`].
    pub operator: u64,
    /// Whether it is online now; offline nodes are never chosen.
    pub online: bool,
}

/// What a deployment needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Total requests per second to place.
    pub rps: u32,
    /// When set, exactly this many replicas of `rps / replicas` each (rounded up); when
    /// `None`, as few replicas as capacity allows.
    pub replicas: Option<u32>,
    /// Lowest rating a node must have.
    pub rating_min: PowerRating,
    /// Most replicas on nodes of one operator (0 means no limit).
    pub per_operator_max: u32,
}

impl Request {
    /// `rps` requests per second on nodes rated `rating_min` or better, any number of
    /// replicas, no operator limit.
    pub const fn rate(rps: u32, rating_min: PowerRating) -> Self {
        Self {
            rps,
            replicas: None,
            rating_min,
            per_operator_max: 0,
        }
    }
}

/// One replica: a node and the rate it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The node.
    pub id: NodeId,
    /// Requests per second it serves for this request.
    pub rps: u32,
    /// Its position in the candidate list the [`Placer`] was built from.
    pub candidate: u32,
}

/// Why a request could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// The eligible nodes do not have enough free capacity; nothing was taken.
    #[error("no capacity: {needed_rps} rps asked, {placed_rps} rps could be placed")]
    NoCapacity {
        /// Rate asked for.
        needed_rps: u32,
        /// Rate that could have been placed.
        placed_rps: u32,
    },
    /// Too many candidates or replicas, or a request of zero.
    #[error("invalid placement request: {0}")]
    Invalid(&'static str),
}

/// Heap entry, packed so that a larger number is a better node: free capacity in the top 32
/// bits, then the rating (8 bits), then the candidate's id rank inverted (24 bits, a smaller
/// id is better). Sifting compares plain integers, with no id comparison.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Slot(u64);

/// Bits of a [`Slot`] holding the inverted id rank.
const RANK_BITS: u32 = 24;
const RANK_MASK: u64 = (1 << RANK_BITS) - 1;

impl Slot {
    fn new(free_rps: u32, rating: PowerRating, id_rank: u32) -> Self {
        Self(
            u64::from(free_rps) << 32
                | u64::from(rating.get()) << RANK_BITS
                | (RANK_MASK - u64::from(id_rank)),
        )
    }

    fn free_rps(self) -> u32 {
        (self.0 >> 32) as u32
    }

    fn rating(self) -> u8 {
        (self.0 >> RANK_BITS) as u8
    }

    fn id_rank(self) -> u32 {
        (RANK_MASK - (self.0 & RANK_MASK)) as u32
    }

    fn with_free_rps(self, free_rps: u32) -> Self {
        Self(u64::from(free_rps) << 32 | (self.0 & u64::from(u32::MAX)))
    }
}

/// Places requests on a fixed set of candidates, taking capacity as it goes.
#[derive(Clone)]
pub struct Placer {
    candidates: Vec<Candidate>,
    /// Candidate indices in id order (empty when the candidates came in id order).
    by_id: Vec<u32>,
    heap: BinaryHeap<Slot>,
    /// Buffers of [`Placer::place`], kept from call to call (they carry nothing).
    taken: Vec<Slot>,
    skipped: Vec<Slot>,
    operators: Vec<(u64, u32)>,
}

impl Placer {
    /// A placer over `candidates` (offline nodes and nodes without free capacity are kept
    /// for lookups but never chosen). Candidates beyond [`PLACEMENT_CANDIDATES_MAX`] are
    /// ignored.
    ///
    /// O(n) for candidates listed in id order, O(n log n) otherwise (they are ranked by id
    /// once, so that placing never compares ids).
    pub fn new(mut candidates: Vec<Candidate>) -> Self {
        candidates.truncate(PLACEMENT_CANDIDATES_MAX);
        // Truncated to PLACEMENT_CANDIDATES_MAX = 2^24 above, so indices and ranks fit
        // RANK_BITS.
        let slot = |rank: usize, c: &Candidate| {
            (c.online && c.free_rps > 0).then(|| Slot::new(c.free_rps, c.rating, rank as u32))
        };
        // One pass for candidates in id order (the usual case): each one's slot, ranked by
        // its position, while checking the order.
        let mut heap: Vec<Slot> = Vec::with_capacity(candidates.len());
        let mut in_order = true;
        for (rank, c) in candidates.iter().enumerate() {
            if rank > 0 && candidates[rank - 1].id >= c.id {
                in_order = false;
                break;
            }
            heap.extend(slot(rank, c));
        }
        let by_id: Vec<u32> = if in_order {
            Vec::new()
        } else {
            let mut by_id: Vec<u32> = (0..candidates.len() as u32).collect();
            by_id.sort_unstable_by(|&a, &b| {
                candidates[a as usize]
                    .id
                    .cmp(&candidates[b as usize].id)
                    .then(a.cmp(&b))
            });
            heap.clear();
            heap.extend(
                by_id
                    .iter()
                    .enumerate()
                    .filter_map(|(rank, &i)| slot(rank, &candidates[i as usize])),
            );
            by_id
        };
        Self {
            candidates,
            by_id,
            heap: BinaryHeap::from(heap),
            taken: Vec::new(),
            skipped: Vec::new(),
            operators: Vec::new(),
        }
    }

    /// The candidate index of a slot.
    fn index(&self, slot: Slot) -> usize {
        let rank = slot.id_rank();
        if self.by_id.is_empty() {
            rank as usize
        } else {
            self.by_id[rank as usize] as usize
        }
    }

    /// The candidates, each with the free capacity placing left it: for a caller that
    /// fills the same buffer again for its next placer (no fresh allocation to fault in).
    pub fn into_candidates(self) -> Vec<Candidate> {
        self.candidates
    }

    /// Free capacity left on a node, `None` if it is not a candidate (a linear search).
    pub fn free_rps(&self, id: &NodeId) -> Option<u32> {
        self.candidates
            .iter()
            .find(|c| c.id == *id)
            .map(|c| c.free_rps)
    }

    /// Total free capacity on online candidates.
    pub fn total_free_rps(&self) -> u64 {
        self.heap.iter().map(|s| u64::from(s.free_rps())).sum()
    }

    /// Places one request. On success its capacity is taken from the chosen nodes; on
    /// error nothing changes.
    pub fn place(&mut self, request: &Request) -> Result<Vec<Assignment>, PlacementError> {
        if request.rps == 0 {
            return Err(PlacementError::Invalid("rps is 0"));
        }
        let (per_replica, replicas_max) = match request.replicas {
            Some(0) => return Err(PlacementError::Invalid("replicas is 0")),
            Some(r) if r > PLACEMENT_REPLICAS_MAX => {
                return Err(PlacementError::Invalid(
                    "more than PLACEMENT_REPLICAS_MAX replicas",
                ));
            }
            Some(r) => (request.rps.div_ceil(r), r),
            None => (u32::MAX, PLACEMENT_REPLICAS_MAX),
        };
        let mut taken = std::mem::take(&mut self.taken);
        let mut skipped = std::mem::take(&mut self.skipped);
        let mut operators = std::mem::take(&mut self.operators);
        taken.clear();
        skipped.clear();
        operators.clear();
        let mut out = Vec::new();
        let mut left = request.rps;
        while left > 0 && (out.len() as u32) < replicas_max {
            let Some(slot) = self.heap.pop() else { break };
            let index = self.index(slot);
            let c = &self.candidates[index];
            let operator_full = request.per_operator_max > 0
                && operators
                    .iter()
                    .any(|&(o, n)| o == c.operator && n >= request.per_operator_max);
            let want = per_replica.min(left);
            // A fixed-size replica needs a node that holds all of it.
            let fits = request.replicas.is_none() || slot.free_rps() >= want;
            if slot.rating() < request.rating_min.get() || operator_full || !fits {
                skipped.push(slot);
                continue;
            }
            let rps = want.min(slot.free_rps());
            left -= rps;
            out.push(Assignment {
                id: c.id,
                rps,
                // Below PLACEMENT_CANDIDATES_MAX = 2^24.
                candidate: index as u32,
            });
            match operators.iter_mut().find(|(o, _)| *o == c.operator) {
                Some((_, n)) => *n += 1,
                None => operators.push((c.operator, 1)),
            }
            taken.push(slot);
        }
        let placed: u32 = out.iter().map(|a| a.rps).sum();
        self.heap.extend(skipped.drain(..));
        let result = if left > 0 {
            self.heap.extend(taken.drain(..));
            Err(PlacementError::NoCapacity {
                needed_rps: request.rps,
                placed_rps: placed,
            })
        } else {
            for (slot, a) in taken.drain(..).zip(&out) {
                let free_rps = slot.free_rps() - a.rps;
                self.candidates[a.candidate as usize].free_rps = free_rps;
                if free_rps > 0 {
                    self.heap.push(slot.with_free_rps(free_rps));
                }
            }
            Ok(out)
        };
        (self.taken, self.skipped, self.operators) = (taken, skipped, operators);
        result
    }
}

/// Places one request on `candidates` (a one-shot [`Placer`]).
pub fn place(
    candidates: &[Candidate],
    request: &Request,
) -> Result<Vec<Assignment>, PlacementError> {
    Placer::new(candidates.to_vec()).place(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(b: u8, rating: u8, free_rps: u32, operator: u64) -> Candidate {
        Candidate {
            id: NodeId::from_bytes([b; 32]),
            rating: PowerRating::new(rating).unwrap(),
            free_rps,
            operator,
            online: true,
        }
    }

    fn r(rating: u8) -> PowerRating {
        PowerRating::new(rating).unwrap()
    }

    #[test]
    fn order_free_then_rating_then_id() {
        let cands = vec![
            c(3, 2, 10, 3),
            c(2, 2, 10, 2),
            c(1, 4, 10, 1),
            c(4, 1, 50, 4),
        ];
        let got = place(&cands, &Request::rate(35, r(1))).unwrap();
        let ids: Vec<u8> = got.iter().map(|a| a.id.as_bytes()[0]).collect();
        assert_eq!(ids, vec![4]);
        let got = place(&cands, &Request::rate(75, r(1))).unwrap();
        let ids: Vec<u8> = got.iter().map(|a| a.id.as_bytes()[0]).collect();
        assert_eq!(ids, vec![4, 1, 2, 3]);
        assert_eq!(got[3].rps, 5);
    }

    #[test]
    fn independent_of_candidate_order() {
        let mut cands: Vec<Candidate> = (1..=20)
            .map(|b| c(b, b % 5 + 1, u32::from(b % 7) * 10, 0))
            .collect();
        let a = place(&cands, &Request::rate(200, r(2))).unwrap();
        cands.reverse();
        let b = place(&cands, &Request::rate(200, r(2))).unwrap();
        let key = |v: &[Assignment]| v.iter().map(|x| (x.id, x.rps)).collect::<Vec<_>>();
        assert_eq!(key(&a), key(&b));
        // Candidate positions refer to each call's own list.
        assert!(b.iter().all(|x| cands[x.candidate as usize].id == x.id));
    }

    #[test]
    fn no_capacity_changes_nothing() {
        let mut p = Placer::new(vec![c(1, 5, 10, 1), c(2, 1, 100, 2)]);
        let err = p.place(&Request::rate(20, r(3))).unwrap_err();
        assert_eq!(
            err,
            PlacementError::NoCapacity {
                needed_rps: 20,
                placed_rps: 10
            }
        );
        assert_eq!(p.total_free_rps(), 110);
        assert_eq!(p.place(&Request::rate(10, r(3))).unwrap().len(), 1);
        assert_eq!(p.free_rps(&NodeId::from_bytes([1; 32])), Some(0));
        assert!(p.place(&Request::rate(1, r(3))).is_err());
        // The candidates come back in their order, with what placing left them.
        let back = p.into_candidates();
        assert_eq!(
            back.iter().map(|c| c.free_rps).collect::<Vec<_>>(),
            [0, 100]
        );
        assert_eq!(back[1].id, NodeId::from_bytes([2; 32]));
    }

    #[test]
    fn offline_never_chosen_and_operator_limit() {
        let mut off = c(9, 5, 1000, 9);
        off.online = false;
        let cands = vec![off, c(1, 3, 10, 7), c(2, 3, 10, 7), c(3, 3, 5, 8)];
        let req = Request {
            per_operator_max: 1,
            ..Request::rate(15, r(1))
        };
        let got = place(&cands, &req).unwrap();
        let ids: Vec<u8> = got.iter().map(|a| a.id.as_bytes()[0]).collect();
        assert_eq!(ids, vec![1, 3]);
        assert!(place(&cands, &Request { rps: 16, ..req }).is_err());
    }

    #[test]
    fn fixed_replicas() {
        let cands = vec![c(1, 3, 10, 1), c(2, 3, 4, 2), c(3, 3, 6, 3)];
        let req = Request {
            replicas: Some(2),
            ..Request::rate(12, r(1))
        };
        let got = place(&cands, &req).unwrap();
        assert_eq!(
            got,
            vec![
                Assignment {
                    id: NodeId::from_bytes([1; 32]),
                    rps: 6,
                    candidate: 0,
                },
                Assignment {
                    id: NodeId::from_bytes([3; 32]),
                    rps: 6,
                    candidate: 2,
                },
            ]
        );
        assert!(
            place(
                &cands,
                &Request {
                    replicas: Some(3),
                    rps: 21,
                    ..req
                }
            )
            .is_err()
        );
        assert!(
            place(
                &cands,
                &Request {
                    replicas: Some(0),
                    ..req
                }
            )
            .is_err()
        );
        assert!(place(&cands, &Request { rps: 0, ..req }).is_err());
    }

    #[test]
    fn any_candidate_order_places_alike() {
        // Many ties on (free, rating): the id decides, whatever the listing order.
        let mut x = 7u64;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            x >> 33
        };
        let sorted: Vec<Candidate> = (0..300u32)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_be_bytes());
                Candidate {
                    id: NodeId::from_bytes(id),
                    rating: r(1 + (next() % 3) as u8),
                    free_rps: 20 * (1 + (next() % 3) as u32),
                    operator: next() % 50,
                    online: next() % 10 != 0,
                }
            })
            .collect();
        let mut shuffled = sorted.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let mut a = Placer::new(sorted.clone());
        let mut b = Placer::new(shuffled.clone());
        for k in 0..200u32 {
            let req = Request {
                per_operator_max: k % 3,
                replicas: (k % 2 == 0).then_some(1 + k % 4),
                ..Request::rate(5 + k % 70, r(1 + (k % 3) as u8))
            };
            let (ra, rb) = (a.place(&req), b.place(&req));
            match (ra, rb) {
                (Ok(ra), Ok(rb)) => {
                    let ids = |v: &[Assignment], c: &[Candidate]| -> Vec<(NodeId, u32)> {
                        v.iter()
                            .map(|x| {
                                assert_eq!(c[x.candidate as usize].id, x.id);
                                (x.id, x.rps)
                            })
                            .collect()
                    };
                    assert_eq!(ids(&ra, &sorted), ids(&rb, &shuffled), "request {k}");
                }
                (Err(ea), Err(eb)) => assert_eq!(ea, eb),
                (ra, rb) => panic!("request {k}: {ra:?} vs {rb:?}"),
            }
        }
        assert_eq!(a.total_free_rps(), b.total_free_rps());
    }
}
