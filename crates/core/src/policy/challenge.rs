//! Compute challenges: the arithmetic of a proof of hardware (issue 13, first part).
//!
//! The dispatcher sends a node a fresh seed and the sizes `n × k` and `k × m`. The node builds
//! the two matrices from the seed, multiplies them on the device it claims, and commits to the
//! product with the Merkle root of its rows ([`RowTree`]). The dispatcher then picks rows at
//! random ([`pick_rows`], after the commitment, so the node cannot know them in advance); the
//! node opens them ([`RowTree::open`]) and the dispatcher recomputes each opened row alone
//! ([`ChallengeSpec::product_row`], `k × m` multiply-adds and `O(m)` memory) and checks it
//! against the commitment ([`verify_opening`]).
//!
//! **Exact on every device.** The matrices hold small integers (−8 … 7) stored as `f32`. Every
//! product is at most 64 in magnitude and every partial sum of a row at most `64 × k ≤ 2²⁴`
//! (`k ≤` [`K_MAX`]), so every intermediate value is an integer that `f32` holds exactly: the
//! product is the same bits whatever the summation order, blocking, fused multiply-adds or
//! TF32 inputs (4-bit integers are exact in TF32's 10-bit mantissa) a GPU kernel uses. The
//! commitment therefore binds exact bytes and the check needs no tolerance, so a node can not
//! hide a cheaper approximation inside one.
//!
//! What this module does not decide, and the dispatcher will: the sizes and the deadline for
//! a claimed GPU (from the GPU table's throughput), how many rows to open, and the schedule of
//! challenges during a round.
//!
//! ```
//! use crat_core::policy::challenge::{ChallengeSpec, RowTree, pick_rows, verify_opening};
//!
//! // The dispatcher's challenge.
//! let spec = ChallengeSpec::new([7; 32], 64, 128, 32)?;
//! // The node: the product (here the reference one; a node runs it on its device) and its root.
//! let product = spec.product();
//! let tree = RowTree::build(&product, spec.m())?;
//! // The dispatcher picks rows after seeing the root; the node opens them.
//! for row in pick_rows(&[9; 32], &tree.root(), spec.n(), 4) {
//!     let opening = tree.open(row, &product)?;
//!     verify_opening(&spec, &tree.root(), &opening)?;
//! }
//! # Ok::<(), crat_core::policy::challenge::ChallengeError>(())
//! ```

use crate::splitmix::{SplitMix64, mix64};

/// Most rows (`n`) or columns (`m`) of a challenge's product.
pub const DIM_MAX: u32 = 1 << 16;
/// Largest inner dimension: `64 × K_MAX = 2²⁴`, the largest integer up to which `f32` holds
/// every integer, so every partial sum is exact.
pub const K_MAX: u32 = 1 << 18;
/// Most elements in one challenge matrix or product (`n·k`, `k·m`, `n·m`): 2³⁰ `f32`s, 4 GiB.
pub const ELEMENTS_MAX: u64 = 1 << 30;

const LEAF_DOMAIN: &[u8] = b"crat/v1/challenge-row\0";
const NODE_DOMAIN: &[u8] = b"crat/v1/challenge-node\0";

/// Why a challenge or an answer to it is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChallengeError {
    /// A dimension is 0 or over its limit, or a matrix would be too large.
    #[error("challenge sizes {n}×{k}×{m} are out of range")]
    Sizes {
        /// Rows of the product.
        n: u32,
        /// Inner dimension.
        k: u32,
        /// Columns of the product.
        m: u32,
    },
    /// The product handed over does not have `rows × m` elements.
    #[error("a product of {len} values is not a whole number of rows of {m}")]
    Shape {
        /// Values given.
        len: usize,
        /// Row length.
        m: u32,
    },
    /// An opened row index is not a row of the product.
    #[error("row {row} of {n}")]
    Row {
        /// The row.
        row: u32,
        /// Rows in all.
        n: u32,
    },
    /// The opening's path does not lead from its row to the committed root.
    #[error("row {0} does not match the commitment")]
    NotCommitted(u32),
    /// The row matches the commitment but not the product of the challenge's matrices.
    #[error("row {0} is not the product of the challenge's matrices")]
    WrongProduct(u32),
}

/// One challenge: a seed and the sizes of `A (n × k) · B (k × m)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChallengeSpec {
    seed: [u8; 32],
    n: u32,
    k: u32,
    m: u32,
    /// The bases of `A`'s and `B`'s row streams, derived from the seed once.
    base_a: u64,
    base_b: u64,
}

impl ChallengeSpec {
    /// A challenge of `A (n × k) · B (k × m)` from `seed`; sizes within [`DIM_MAX`],
    /// [`K_MAX`] and [`ELEMENTS_MAX`].
    pub fn new(seed: [u8; 32], n: u32, k: u32, m: u32) -> Result<Self, ChallengeError> {
        let fits = |a: u32, b: u32| u64::from(a) * u64::from(b) <= ELEMENTS_MAX;
        if !(1..=DIM_MAX).contains(&n)
            || !(1..=DIM_MAX).contains(&m)
            || !(1..=K_MAX).contains(&k)
            || !fits(n, k)
            || !fits(k, m)
            || !fits(n, m)
        {
            return Err(ChallengeError::Sizes { n, k, m });
        }
        Ok(Self {
            seed,
            n,
            k,
            m,
            base_a: stream_base(&seed, b'A'),
            base_b: stream_base(&seed, b'B'),
        })
    }

    /// Rows of `A` and of the product.
    pub fn n(&self) -> u32 {
        self.n
    }

    /// Columns of `A`, rows of `B`.
    pub fn k(&self) -> u32 {
        self.k
    }

    /// Columns of `B` and of the product.
    pub fn m(&self) -> u32 {
        self.m
    }

    /// The seed.
    pub fn seed(&self) -> [u8; 32] {
        self.seed
    }

    /// Row `i` of `A` (`k` values in −8 … 7).
    pub fn a_row(&self, i: u32) -> Vec<f32> {
        row(self.base_a, i, self.k)
    }

    /// Row `t` of `B` (`m` values in −8 … 7).
    pub fn b_row(&self, t: u32) -> Vec<f32> {
        row(self.base_b, t, self.m)
    }

    /// `A`, row-major (`n × k`).
    pub fn matrix_a(&self) -> Vec<f32> {
        (0..self.n).flat_map(|i| self.a_row(i)).collect()
    }

    /// `B`, row-major (`k × m`).
    pub fn matrix_b(&self) -> Vec<f32> {
        (0..self.k).flat_map(|t| self.b_row(t)).collect()
    }

    /// Row `i` of `A · B`, computed alone: `k × m` multiply-adds, `O(m)` memory (what the
    /// dispatcher recomputes for an opened row).
    pub fn product_row(&self, i: u32) -> Vec<f32> {
        let a = self.a_row(i);
        let mut out = vec![0f32; self.m as usize];
        for (t, &a_it) in (0..self.k).zip(&a) {
            if a_it == 0.0 {
                continue;
            }
            for (o, b) in out.iter_mut().zip(self.b_row(t)) {
                *o += a_it * b;
            }
        }
        out
    }

    /// The whole product `A · B`, row-major (`n × m`): the reference a CPU node computes.
    pub fn product(&self) -> Vec<f32> {
        (0..self.n).flat_map(|i| self.product_row(i)).collect()
    }
}

/// The base of matrix `which`'s row streams for `seed`.
fn stream_base(seed: &[u8; 32], which: u8) -> u64 {
    let h = blake3::Hasher::new()
        .update(b"crat/v1/challenge-matrix\0")
        .update(seed)
        .update(&[which])
        .finalize();
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// `len` values in −8 … 7 for row `index` of the matrix whose streams start at `base`, from
/// that row's own stream.
fn row(base: u64, index: u32, len: u32) -> Vec<f32> {
    let mut rng = SplitMix64::new(mix64(base ^ u64::from(index)));
    let mut out = Vec::with_capacity(len as usize);
    while out.len() < len as usize {
        let mut bits = rng.next_u64();
        for _ in 0..16 {
            if out.len() == len as usize {
                break;
            }
            out.push(f32::from((bits & 0xf) as i8 - 8));
            bits >>= 4;
        }
    }
    out
}

fn leaf(row: u32, values: &[f32]) -> [u8; 32] {
    // One update over the row's bytes: blake3 is several times faster on long inputs than
    // on four bytes at a time.
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    *blake3::Hasher::new()
        .update(LEAF_DOMAIN)
        .update(&row.to_le_bytes())
        .update(&bytes)
        .finalize()
        .as_bytes()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    *blake3::Hasher::new()
        .update(NODE_DOMAIN)
        .update(left)
        .update(right)
        .finalize()
        .as_bytes()
}

/// The Merkle tree over a product's rows: leaves are the rows (with their index), an odd
/// node at the end of a level is carried up unchanged.
#[derive(Clone, Debug)]
pub struct RowTree {
    levels: Vec<Vec<[u8; 32]>>,
    m: u32,
}

/// An opened row: its values and the sibling hashes from its leaf up to the root.
#[derive(Clone, Debug, PartialEq)]
pub struct Opening {
    /// The row.
    pub row: u32,
    /// Its values.
    pub values: Vec<f32>,
    /// Sibling hashes, leaf level first (levels where the row's node has no sibling are
    /// skipped).
    pub path: Vec<[u8; 32]>,
}

impl Opening {
    /// The opening as [`crate::wire::NodeAck::Opened`] carries it (values as little-endian
    /// bytes).
    pub fn to_wire(&self) -> crate::wire::RowOpening {
        crate::wire::RowOpening {
            row: self.row,
            values: self.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            path: self.path.clone(),
        }
    }

    /// An opening from the wire; `None` when its values are not whole `f32`s or its path is
    /// longer than [`crate::wire::CHALLENGE_PATH_MAX`].
    pub fn from_wire(row: &crate::wire::RowOpening) -> Option<Self> {
        if !row.values.len().is_multiple_of(4) || row.path.len() > crate::wire::CHALLENGE_PATH_MAX {
            return None;
        }
        Some(Self {
            row: row.row,
            values: row
                .values
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            path: row.path.clone(),
        })
    }
}

impl RowTree {
    /// The tree over `product` (row-major, rows of `m` values).
    pub fn build(product: &[f32], m: u32) -> Result<Self, ChallengeError> {
        let shape = ChallengeError::Shape {
            len: product.len(),
            m,
        };
        if m == 0 || product.is_empty() || !product.len().is_multiple_of(m as usize) {
            return Err(shape);
        }
        let rows = product.len() / m as usize;
        if rows > DIM_MAX as usize {
            return Err(shape);
        }
        let leaves = product
            .chunks(m as usize)
            .zip(0u32..)
            .map(|(r, i)| leaf(i, r))
            .collect();
        let levels = crate::merkle::levels(leaves, node);
        Ok(Self { levels, m })
    }

    /// The commitment.
    pub fn root(&self) -> [u8; 32] {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or([0; 32])
    }

    /// Rows committed to.
    pub fn rows(&self) -> u32 {
        self.levels.first().map_or(0, |l| l.len() as u32)
    }

    /// Opens `row` of `product` (the same product the tree was built over).
    pub fn open(&self, row: u32, product: &[f32]) -> Result<Opening, ChallengeError> {
        let n = self.rows();
        let m = self.m as usize;
        let values = product
            .get(row as usize * m..(row as usize + 1) * m)
            .ok_or(ChallengeError::Row { row, n })?
            .to_vec();
        Ok(Opening {
            row,
            values,
            path: self.path(row)?,
        })
    }

    /// The sibling hashes of `row`, leaf level first (what an [`Opening`] carries beside the
    /// row's values). A node that keeps only the tree opens a row by recomputing its values
    /// ([`ChallengeSpec::product_row`]: exact, so the same bits its device committed to).
    pub fn path(&self, row: u32) -> Result<Vec<[u8; 32]>, ChallengeError> {
        let n = self.rows();
        if row >= n {
            return Err(ChallengeError::Row { row, n });
        }
        Ok(crate::merkle::path(&self.levels, row as usize))
    }
}

/// Checks an opened row: it leads to `root` among `spec.n()` rows, and it is exactly row
/// `opening.row` of the challenge's product.
pub fn verify_opening(
    spec: &ChallengeSpec,
    root: &[u8; 32],
    opening: &Opening,
) -> Result<(), ChallengeError> {
    let (row, n) = (opening.row, spec.n);
    if row >= n {
        return Err(ChallengeError::Row { row, n });
    }
    if opening.values.len() != spec.m as usize {
        return Err(ChallengeError::NotCommitted(row));
    }
    let leaf = leaf(row, &opening.values);
    if crate::merkle::root_from_path(leaf, row as usize, n as usize, &opening.path, node)
        != Some(*root)
    {
        return Err(ChallengeError::NotCommitted(row));
    }
    let expected = spec.product_row(row);
    let same = expected
        .iter()
        .zip(&opening.values)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    if !same {
        return Err(ChallengeError::WrongProduct(row));
    }
    Ok(())
}

/// `count` distinct rows out of `n` (all of them when `count ≥ n`), drawn from the
/// dispatcher's `secret` and the node's `root`: fixed once the node has committed, unknown to
/// it before.
pub fn pick_rows(secret: &[u8; 32], root: &[u8; 32], n: u32, count: u32) -> Vec<u32> {
    if count >= n {
        return (0..n).collect();
    }
    let h = blake3::Hasher::new()
        .update(b"crat/v1/challenge-pick\0")
        .update(secret)
        .update(root)
        .finalize();
    let mut rng = SplitMix64::new(u64::from_le_bytes(
        h.as_bytes()[..8].try_into().unwrap_or([0; 8]),
    ));
    let mut rows = Vec::with_capacity(count as usize);
    while rows.len() < count as usize {
        // Multiply-shift: uniform enough for picking rows (n ≤ 2¹⁶).
        let r = ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u32;
        if !rows.contains(&r) {
            rows.push(r);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u32, k: u32, m: u32) -> ChallengeSpec {
        ChallengeSpec::new([3; 32], n, k, m).expect("in range")
    }

    #[test]
    fn the_product_is_exact_in_any_summation_order() {
        let s = spec(9, 300, 7);
        let (a, b) = (s.matrix_a(), s.matrix_b());
        let (n, k, m) = (9usize, 300usize, 7usize);
        // Backwards over the inner dimension, in blocks of 16 summed separately, with fused
        // multiply-adds: a different order than the reference, the same bits.
        let mut other = vec![0f32; n * m];
        for i in 0..n {
            for j in 0..m {
                let mut blocks = Vec::new();
                for block in (0..k).rev().collect::<Vec<_>>().chunks(16) {
                    let mut acc = 0f32;
                    for &t in block {
                        acc = a[i * k + t].mul_add(b[t * m + j], acc);
                    }
                    blocks.push(acc);
                }
                other[i * m + j] = blocks.iter().rev().sum();
            }
        }
        let reference = s.product();
        assert!(
            reference
                .iter()
                .zip(&other)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        assert!(
            a.iter()
                .chain(&b)
                .all(|v| (-8.0..=7.0).contains(v) && v.fract() == 0.0)
        );
    }

    #[test]
    fn an_honest_answer_verifies_for_every_row_and_tree_shape() {
        for n in [1u32, 2, 3, 5, 8, 13] {
            let s = spec(n, 20, 4);
            let p = s.product();
            let tree = RowTree::build(&p, s.m()).expect("shape");
            assert_eq!(tree.rows(), n);
            for row in 0..n {
                let o = tree.open(row, &p).expect("a row");
                assert_eq!(
                    verify_opening(&s, &tree.root(), &o),
                    Ok(()),
                    "n {n} row {row}"
                );
            }
        }
    }

    #[test]
    fn wrong_answers_and_forged_openings_are_refused() {
        let s = spec(6, 40, 5);
        let p = s.product();
        let tree = RowTree::build(&p, s.m()).expect("shape");
        let root = tree.root();
        // A committed product that is wrong in one element: the opened row is caught.
        let mut wrong = p.clone();
        wrong[2 * 5 + 1] += 1.0;
        let wrong_tree = RowTree::build(&wrong, s.m()).expect("shape");
        let o = wrong_tree.open(2, &wrong).expect("a row");
        assert_eq!(
            verify_opening(&s, &wrong_tree.root(), &o),
            Err(ChallengeError::WrongProduct(2))
        );
        // The right values under another commitment, a changed value, a short path, another
        // row's path, an index out of range.
        let good = tree.open(3, &p).expect("a row");
        assert_eq!(
            verify_opening(&s, &wrong_tree.root(), &good),
            Err(ChallengeError::NotCommitted(3))
        );
        let mut changed = good.clone();
        changed.values[0] += 1.0;
        assert_eq!(
            verify_opening(&s, &root, &changed),
            Err(ChallengeError::NotCommitted(3))
        );
        let mut short = good.clone();
        short.path.pop();
        assert_eq!(
            verify_opening(&s, &root, &short),
            Err(ChallengeError::NotCommitted(3))
        );
        let mut moved = good.clone();
        moved.row = 2;
        assert_eq!(
            verify_opening(&s, &root, &moved),
            Err(ChallengeError::NotCommitted(2))
        );
        let mut outside = good;
        outside.row = 6;
        assert_eq!(
            verify_opening(&s, &root, &outside),
            Err(ChallengeError::Row { row: 6, n: 6 })
        );
    }

    #[test]
    fn sizes_are_bounded_and_picks_are_distinct_and_follow_the_root() {
        assert!(ChallengeSpec::new([0; 32], 0, 1, 1).is_err());
        assert!(ChallengeSpec::new([0; 32], 1, K_MAX + 1, 1).is_err());
        assert!(ChallengeSpec::new([0; 32], DIM_MAX, K_MAX, DIM_MAX).is_err());
        assert!(ChallengeSpec::new([0; 32], 8192, 8192, 8192).is_ok());
        assert!(RowTree::build(&[1.0; 7], 2).is_err());
        let picks = pick_rows(&[1; 32], &[2; 32], 100, 10);
        let mut sorted = picks.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!((picks.len(), sorted.len()), (10, 10));
        assert!(picks.iter().all(|r| *r < 100));
        assert_eq!(picks, pick_rows(&[1; 32], &[2; 32], 100, 10));
        assert_ne!(picks, pick_rows(&[1; 32], &[3; 32], 100, 10));
        assert_eq!(pick_rows(&[1; 32], &[2; 32], 3, 5), vec![0, 1, 2]);
    }
}
