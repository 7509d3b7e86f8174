//! The memory a model needs, estimated from its graph before any backend loads it
//! ([`MemoryEstimate`], reported in [`ModelSummary::memory`](super::ModelSummary::memory)).
//!
//! What the estimate sees:
//!
//! - **weights**: every initializer (sparse ones at their dense size), `Constant` value and
//!   other tensor attribute, at its declared shape × its element size;
//! - **tensors made from constants**: the output of `ConstantOfShape` (shape), `Expand`
//!   (shape, broadcast with the input where the input's shape is declared), `Tile`
//!   (repeats × the input), `Resize` and `Upsample` (sizes, or scales × the input), `Range`
//!   (start, limit and step) and `Pad` (pads, as an operand or the old attribute) whose size
//!   operands are constants (initializers or `Constant` nodes). A backend that folds constants
//!   at load (tract does) holds all of them at once; one that makes them at run time holds at
//!   least the largest. `Reshape` of a tensor of known shape is followed too (it makes nothing
//!   new, but what is made from its output is then known);
//! - **declared tensors**: graph inputs, outputs and `value_info`, with symbolic dimensions
//!   counted as 1 (one item: a batch of N needs about N times the activations).
//!
//! The estimate is [`MemoryEstimate::bytes`] = weights + tensors made from constants + twice
//! the largest tensor (a run holds at least one operator's input and output at once).
//!
//! What it cannot see, so where it is a lower bound: sizes *computed* at run time (a
//! `ConstantOfShape` of `Shape(x)`, an `Expand` to a shape that a `Concat` builds: the
//! operators are listed in [`MemoryEstimate::not_followed`]); intermediate tensors nobody
//! declares (their sizes are not inferred); the backend's own overhead (tract keeps the
//! decluttered and the optimised graph while loading; ONNX Runtime prepacks weights). Where the
//! element type of a tensor is not known, elements count [`UNKNOWN_ELEMENT_BYTES`] each.

use std::collections::HashMap;
use std::fmt;

use super::{ELEMENTS_MAX, TENSOR_BYTES_MAX, truncate};
use crate::BackendError;

/// Bytes counted per element of a tensor whose element type is not known: the widest common
/// one (`f64`, `i64`), so the estimate errs high.
pub const UNKNOWN_ELEMENT_BYTES: u64 = 8;

/// How much memory a model needs, from its graph (see the [module docs](self)).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct MemoryEstimate {
    /// The estimate: `weights_bytes + made_bytes + 2 × largest_tensor_bytes`, saturating.
    pub bytes: u64,
    /// Initializers, `Constant` values and other tensor attributes.
    pub weights_bytes: u64,
    /// Tensors that operators make from constant operands (`ConstantOfShape`, `Expand`,
    /// `Tile`, `Resize`, `Upsample`, `Range`, `Pad`), all together.
    pub made_bytes: u64,
    /// The largest single tensor among declared and made ones (symbolic dimensions 1).
    pub largest_tensor_bytes: u64,
    /// Its name (empty when the graph declares no tensor with a static size).
    pub largest_tensor: String,
    /// Tensor-making operators whose size operand is computed at run time (not a constant),
    /// each named once, in the order met: what they make is not in the estimate.
    pub not_followed: Vec<&'static str>,
}

impl MemoryEstimate {
    /// Whether every tensor-making operator's size was known: otherwise [`Self::bytes`] is a
    /// lower bound.
    pub fn is_complete(&self) -> bool {
        self.not_followed.is_empty()
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "about {} ({} of weights, {} made from constant shapes, twice the largest tensor",
            Bytes(self.bytes),
            Bytes(self.weights_bytes),
            Bytes(self.made_bytes),
        )?;
        if !self.largest_tensor.is_empty() {
            write!(
                f,
                " '{}' of {}",
                self.largest_tensor,
                Bytes(self.largest_tensor_bytes)
            )?;
        }
        f.write_str(")")?;
        if !self.not_followed.is_empty() {
            write!(
                f,
                "; not counted: sizes computed at run time by {}",
                self.not_followed.join(", ")
            )?;
        }
        Ok(())
    }
}

/// A byte count for people: exact below 1 KiB, else in KiB, MiB or GiB with one decimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 3] = [("GiB", 30), ("MiB", 20), ("KiB", 10)];
        for (unit, shift) in UNITS {
            if self.0 >= 1 << shift {
                // Tenths, rounded down: display only, never compared.
                let tenths = (u128::from(self.0) * 10) >> shift;
                return write!(f, "{}.{} {unit}", tenths / 10, tenths % 10);
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

/// Bytes of one element of ONNX element type `code` (`TensorProto.DataType`); `None` for
/// types of no fixed size (strings) and codes this crate does not know. 4-bit and 2-bit
/// types count a whole byte.
pub fn element_bytes(code: i64) -> Option<u64> {
    Some(match code {
        // UINT8, INT8, BOOL, the FLOAT8 kinds, UINT4, INT4, FLOAT4E2M1, FLOAT8E8M0, UINT2, INT2.
        2 | 3 | 9 | 17..=26 => 1,
        // UINT16, INT16, FLOAT16, BFLOAT16.
        4 | 5 | 10 | 16 => 2,
        // FLOAT, INT32, UINT32.
        1 | 6 | 12 => 4,
        // INT64, DOUBLE, UINT64, COMPLEX64.
        7 | 11 | 13 | 14 => 8,
        // COMPLEX128.
        15 => 16,
        _ => return None,
    })
}

/// [`element_bytes`], [`UNKNOWN_ELEMENT_BYTES`] where it is not known.
pub(super) fn element_bytes_or_wide(code: Option<i64>) -> u64 {
    code.and_then(element_bytes)
        .unwrap_or(UNKNOWN_ELEMENT_BYTES)
}

/// ONNX `FLOAT`, the default element type of `ConstantOfShape`.
const ONNX_FLOAT: i64 = 1;

/// The operators that make a tensor whose size their operands set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MakerOp {
    ConstantOfShape,
    Expand,
    Tile,
    Resize,
    Upsample,
    Range,
    Pad,
    Reshape,
}

impl MakerOp {
    pub(super) fn from_op(op: &[u8]) -> Option<Self> {
        Some(match op {
            b"ConstantOfShape" => Self::ConstantOfShape,
            b"Expand" => Self::Expand,
            b"Tile" => Self::Tile,
            b"Resize" => Self::Resize,
            b"Upsample" => Self::Upsample,
            b"Range" => Self::Range,
            b"Pad" => Self::Pad,
            b"Reshape" => Self::Reshape,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::ConstantOfShape => "ConstantOfShape",
            Self::Expand => "Expand",
            Self::Tile => "Tile",
            Self::Resize => "Resize",
            Self::Upsample => "Upsample",
            Self::Range => "Range",
            Self::Pad => "Pad",
            Self::Reshape => "Reshape",
        }
    }
}

/// One tensor-making node, as the walker met it.
#[derive(Debug)]
pub(super) struct Maker {
    pub(super) op: MakerOp,
    /// Its inputs, by name (empty: an absent optional input).
    pub(super) inputs: Vec<String>,
    /// Its first output.
    pub(super) output: String,
    /// `ConstantOfShape`: the element type of its `value` attribute.
    pub(super) value_type: Option<i64>,
    /// `Pad` before opset 11: its `pads` attribute.
    pub(super) pads: Option<Vec<f64>>,
}

/// A small numeric constant (an initializer or a `Constant` output of at most
/// `SHAPE_VALUES_MAX` values of a numeric type).
#[derive(Debug)]
pub(super) struct Constant {
    /// Its ONNX element type.
    pub(super) elem_type: i64,
    /// Its values, as `f64` (exact for the integers shapes hold).
    pub(super) values: Vec<f64>,
}

/// A tensor's type as declared (or an initializer's): dimensions with symbolic ones as 1,
/// and its ONNX element type if known.
#[derive(Clone, Debug)]
pub(super) struct Declared {
    pub(super) dims: Vec<u64>,
    pub(super) elem_type: Option<i64>,
}

/// What the walker gathered for the estimate.
#[derive(Default, Debug)]
pub(super) struct Facts {
    /// Bytes of initializers and tensor attributes.
    pub(super) weights_bytes: u64,
    /// The largest declared tensor: bytes, name.
    pub(super) largest_declared: (u64, String),
    /// Every tensor-making node.
    pub(super) makers: Vec<Maker>,
    /// Small constants that are operands of tensor-making nodes.
    pub(super) constants: HashMap<String, Constant>,
    /// Declared types of the operands of tensor-making nodes.
    pub(super) declared: HashMap<String, Declared>,
}

/// Elements of a tensor of these dimensions, saturating.
pub(super) fn elements(dims: &[u64]) -> u64 {
    dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
}

/// A shape value as a dimension: negative, NaN → 0; beyond `u64` → `u64::MAX`.
fn dim(v: f64) -> u64 {
    if v.is_nan() || v <= 0.0 {
        0
    } else {
        // `as` saturates: +inf and values past u64::MAX become u64::MAX.
        v as u64
    }
}

/// A tensor the estimate knows the shape of.
#[derive(Clone, Debug)]
struct Known {
    dims: Vec<u64>,
    elem_bytes: u64,
}

/// What one tensor-making node makes.
struct Made<'a> {
    known: Known,
    /// The constant operand that sets its size (for the error message).
    operand: &'a str,
}

/// Most dimensions kept of a made tensor; one of higher rank is kept flattened (its
/// elements as one dimension), so what the estimate holds per node stays small.
const MADE_RANK_MAX: usize = 8;

impl Maker {
    fn operand(&self, i: usize) -> Option<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// What it makes, from the constants and the tensors known so far; `None` when a size
    /// operand is not a constant (or, for `Reshape`, its input's shape is not known).
    fn made<'a>(
        &'a self,
        known: &HashMap<&str, Known>,
        constants: &'a HashMap<String, Constant>,
    ) -> Option<Made<'a>> {
        let constant = |i: usize| {
            let name = self.operand(i)?;
            constants.get(name).map(|c| (name, c))
        };
        let x = self.operand(0).and_then(|n| known.get(n));
        let x_bytes = x.map_or(UNKNOWN_ELEMENT_BYTES, |x| x.elem_bytes);
        let made = |dims: Vec<u64>, elem_bytes: u64, operand: &'a str| {
            let dims = if dims.len() > MADE_RANK_MAX {
                vec![elements(&dims)]
            } else {
                dims
            };
            Made {
                known: Known { dims, elem_bytes },
                operand,
            }
        };
        match self.op {
            MakerOp::ConstantOfShape => {
                let (name, s) = constant(0)?;
                let dims = s.values.iter().map(|&v| dim(v)).collect();
                let bytes = element_bytes_or_wide(Some(self.value_type.unwrap_or(ONNX_FLOAT)));
                Some(made(dims, bytes, name))
            }
            MakerOp::Expand => {
                let (name, s) = constant(1)?;
                let shape: Vec<u64> = s.values.iter().map(|&v| dim(v)).collect();
                let x_dims = x.map_or(&[][..], |x| &x.dims[..]);
                Some(made(broadcast(x_dims, &shape), x_bytes, name))
            }
            MakerOp::Tile => {
                let (name, r) = constant(1)?;
                let repeats: Vec<u64> = r.values.iter().map(|&v| dim(v)).collect();
                let dims = match x {
                    Some(x) if x.dims.len() == repeats.len() => x
                        .dims
                        .iter()
                        .zip(&repeats)
                        .map(|(d, r)| d.saturating_mul(*r))
                        .collect(),
                    Some(x) => vec![elements(&x.dims).saturating_mul(elements(&repeats))],
                    None => repeats,
                };
                Some(made(dims, x_bytes, name))
            }
            MakerOp::Resize | MakerOp::Upsample => {
                // Resize (opset 11+): X, roi, scales, sizes; Resize 10 and Upsample: X, scales.
                let scales_at = if self.op == MakerOp::Upsample || self.inputs.len() == 2 {
                    1
                } else {
                    2
                };
                let x_dims = x.map(|x| &x.dims[..]);
                if self.op == MakerOp::Resize
                    && let Some((name, sizes)) = constant(3).filter(|(_, c)| !c.values.is_empty())
                {
                    let dims = sizes.values.iter().map(|&v| dim(v)).collect();
                    return Some(made(dims, x_bytes, name));
                }
                let (name, scales) = constant(scales_at).filter(|(_, c)| !c.values.is_empty())?;
                let dims = scales
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| {
                        let d = x_dims
                            .filter(|d| d.len() == scales.values.len())
                            .map_or(1, |d| d[i]);
                        dim((d as f64 * s).floor())
                    })
                    .collect();
                Some(made(dims, x_bytes, name))
            }
            MakerOp::Range => {
                let scalar = |i: usize| {
                    let (name, c) = constant(i)?;
                    match c.values[..] {
                        [v] => Some((name, c.elem_type, v)),
                        _ => None,
                    }
                };
                let (name, elem_type, start) = scalar(0)?;
                let (_, _, limit) = scalar(1)?;
                let (_, _, delta) = scalar(2)?;
                let n = if delta == 0.0 {
                    // A zero step never reaches the limit.
                    u64::MAX
                } else {
                    dim(((limit - start) / delta).ceil())
                };
                Some(made(vec![n], element_bytes_or_wide(Some(elem_type)), name))
            }
            MakerOp::Pad => {
                let (name, pads) = match constant(1) {
                    Some((name, c)) => (name, &c.values),
                    None => ("pads", self.pads.as_ref()?),
                };
                let rank = pads.len() / 2;
                let grow = |d: u64, i: usize| {
                    // `as` saturates a float to i128; the sums saturate too.
                    let total = i128::from(d)
                        .saturating_add(pads[i] as i128)
                        .saturating_add(pads[i + rank] as i128);
                    u64::try_from(total.max(0)).unwrap_or(u64::MAX)
                };
                let dims = match x {
                    Some(x) if x.dims.len() == rank => x
                        .dims
                        .iter()
                        .enumerate()
                        .map(|(i, &d)| grow(d, i))
                        .collect(),
                    // Pads for some axes only (`axes`): each padded axis grows the whole
                    // tensor at most by (1 + before + after) times.
                    Some(x) => {
                        let grown = (0..rank).fold(1u64, |n, i| n.saturating_mul(grow(1, i)));
                        vec![elements(&x.dims).saturating_mul(grown)]
                    }
                    None => (0..rank).map(|i| grow(1, i)).collect(),
                };
                Some(made(dims, x_bytes, name))
            }
            MakerOp::Reshape => {
                let x = x?;
                let (name, s) = constant(1)?;
                let total = elements(&x.dims);
                let mut dims: Vec<u64> = Vec::with_capacity(s.values.len());
                let mut infer = None;
                for (i, &v) in s.values.iter().enumerate() {
                    if v == 0.0 {
                        dims.push(x.dims.get(i).copied().unwrap_or(1));
                    } else if v == -1.0 && infer.is_none() {
                        infer = Some(i);
                        dims.push(1);
                    } else {
                        dims.push(dim(v));
                    }
                }
                if let Some(i) = infer {
                    let rest = elements(&dims);
                    dims[i] = total.checked_div(rest)?;
                }
                // A shape that does not hold the input's elements is an error at run time.
                (elements(&dims) == total).then(|| made(dims, x.elem_bytes, name))
            }
        }
    }
}

/// The shape of broadcasting `a` and `b` (NumPy rules, right-aligned): each dimension the
/// larger of the two.
fn broadcast(a: &[u64], b: &[u64]) -> Vec<u64> {
    let rank = a.len().max(b.len());
    let at = |s: &[u64], i: usize| {
        let pad = rank - s.len();
        if i < pad { 1 } else { s[i - pad] }
    };
    (0..rank).map(|i| at(a, i).max(at(b, i))).collect()
}

/// Estimates the memory of a model from what the walker gathered; refuses a tensor made from
/// constants of more than [`ELEMENTS_MAX`] elements or [`TENSOR_BYTES_MAX`] bytes.
pub(super) fn estimate(facts: &Facts) -> Result<MemoryEstimate, BackendError> {
    let mut known: HashMap<&str, Known> = facts
        .declared
        .iter()
        .map(|(name, d)| {
            let known = Known {
                dims: d.dims.clone(),
                elem_bytes: element_bytes_or_wide(d.elem_type),
            };
            (name.as_str(), known)
        })
        .collect();
    // Two passes: a node may use what a later one makes (subgraphs and functions are not
    // sorted with their parents), one level of which the second pass sees.
    // Per node: (elements, bytes, the constant operand), or `None` where not followed.
    let mut made: Vec<Option<(u64, u64, &str)>> = Vec::with_capacity(facts.makers.len());
    for _ in 0..2 {
        made.clear();
        for m in &facts.makers {
            let out = m.made(&known, &facts.constants).map(|out| {
                let elements = elements(&out.known.dims);
                let bytes = elements.saturating_mul(out.known.elem_bytes);
                known.insert(m.output.as_str(), out.known);
                (elements, bytes, out.operand)
            });
            made.push(out);
        }
    }
    let mut estimate = MemoryEstimate {
        weights_bytes: facts.weights_bytes,
        largest_tensor_bytes: facts.largest_declared.0,
        largest_tensor: facts.largest_declared.1.clone(),
        ..MemoryEstimate::default()
    };
    for (m, out) in facts.makers.iter().zip(&made) {
        let Some((elements, bytes, operand)) = *out else {
            if m.op != MakerOp::Reshape && !estimate.not_followed.contains(&m.op.name()) {
                estimate.not_followed.push(m.op.name());
            }
            continue;
        };
        if m.op == MakerOp::Reshape {
            continue;
        }
        if elements > ELEMENTS_MAX || bytes > TENSOR_BYTES_MAX {
            let what = if m.op == MakerOp::Range {
                "bounds"
            } else {
                "shape"
            };
            return Err(BackendError::Load(format!(
                "{} would make a tensor of {elements} elements ({}) from the constant {what} \
                 '{}': more than a node holds (at most {ELEMENTS_MAX} elements and {} per \
                 tensor)",
                m.op.name(),
                Bytes(bytes),
                truncate(operand),
                Bytes(TENSOR_BYTES_MAX),
            )));
        }
        estimate.made_bytes = estimate.made_bytes.saturating_add(bytes);
        if bytes > estimate.largest_tensor_bytes {
            estimate.largest_tensor_bytes = bytes;
            estimate.largest_tensor = truncate(&m.output);
        }
    }
    estimate.bytes = estimate
        .weights_bytes
        .saturating_add(estimate.made_bytes)
        .saturating_add(estimate.largest_tensor_bytes.saturating_mul(2));
    Ok(estimate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_print_for_people() {
        assert_eq!(Bytes(512).to_string(), "512 bytes");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(16 << 30).to_string(), "16.0 GiB");
        assert_eq!(Bytes(u64::MAX).to_string(), "17179869183.9 GiB");
    }

    #[test]
    fn broadcasting_and_dimensions() {
        assert_eq!(broadcast(&[3, 1], &[1, 4]), vec![3, 4]);
        assert_eq!(broadcast(&[5], &[2, 1, 1]), vec![2, 1, 5]);
        assert_eq!(broadcast(&[], &[7, 8]), vec![7, 8]);
        assert_eq!(dim(-1.0), 0);
        assert_eq!(dim(f64::NAN), 0);
        assert_eq!(dim(f64::INFINITY), u64::MAX);
        assert_eq!(dim(3.9), 3);
        assert_eq!(elements(&[1 << 40, 1 << 40]), u64::MAX);
        assert_eq!(element_bytes(1), Some(4));
        assert_eq!(element_bytes(11), Some(8));
        assert_eq!(element_bytes(8), None);
        assert_eq!(element_bytes_or_wide(None), UNKNOWN_ELEMENT_BYTES);
    }
}
