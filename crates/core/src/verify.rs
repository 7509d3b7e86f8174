//! Comparing two answers to the same task: the rule canaries and spot checks share.
//!
//! Two honest nodes may run a model on different backends (ONNX Runtime on CUDA, tract on
//! the CPU) and get floats that differ in the last bits: kernels sum in different orders,
//! use fused multiply-adds, or TF32. So floating-point outputs agree when every element
//! satisfies `|a − b| ≤ atol + rtol·|b|` (NumPy's `isclose`, `b` the reference), with
//! [`Tolerance::default`] `atol = 1e-4`, `rtol = 1e-3`: about ten times the largest
//! difference measured between ort and tract on the test models, and far below what a
//! perturbation a cheater could profit from changes. NaN agrees only with NaN, an infinity
//! only with the same infinity. Integer and boolean outputs must be equal exactly. Shapes,
//! dtypes and output names must be equal.
//!
//! ```
//! use crat_core::tensor::{NamedTensor, Tensor};
//! use crat_core::verify::{Tolerance, agree};
//!
//! let a = vec![NamedTensor::new("y", Tensor::from_slice(&[2], &[1.0f32, 2.0])?)];
//! let b = vec![NamedTensor::new("y", Tensor::from_slice(&[2], &[1.00005f32, 2.0])?)];
//! let c = vec![NamedTensor::new("y", Tensor::from_slice(&[2], &[1.1f32, 2.0])?)];
//! assert!(agree(&a, &b, &Tolerance::default()).is_ok());
//! assert!(agree(&a, &c, &Tolerance::default()).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::tensor::{DType, NamedTensor, Tensor};

/// How far floating-point outputs of two honest backends may differ (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute part. Default 1e-4.
    pub atol: f64,
    /// Relative part, times the reference's magnitude. Default 1e-3.
    pub rtol: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            atol: 1e-4,
            rtol: 1e-3,
        }
    }
}

/// Why two answers disagree.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Disagreement {
    /// Different numbers of outputs, or different names.
    #[error("outputs differ: {0}")]
    Outputs(String),
    /// An output's dtype or shape differs.
    #[error("output {name}: {what}")]
    Shape {
        /// The output.
        name: String,
        /// What differs.
        what: String,
    },
    /// An element is outside the tolerance.
    #[error("output {name}, element {index}: {got} vs {want}")]
    Value {
        /// The output.
        name: String,
        /// The first differing element.
        index: usize,
        /// The value checked.
        got: String,
        /// The reference value.
        want: String,
    },
}

/// Whether `got` agrees with `reference` within `tol` (outputs matched by name, in any
/// order). Returns the first disagreement found.
pub fn agree(
    got: &[NamedTensor],
    reference: &[NamedTensor],
    tol: &Tolerance,
) -> Result<(), Disagreement> {
    if got.len() != reference.len() {
        return Err(Disagreement::Outputs(format!(
            "{} outputs vs {}",
            got.len(),
            reference.len()
        )));
    }
    for want in reference {
        let Some(g) = got.iter().find(|g| g.name == want.name) else {
            return Err(Disagreement::Outputs(format!("{} missing", want.name)));
        };
        tensors_agree(&want.name, &g.tensor, &want.tensor, tol)?;
    }
    Ok(())
}

/// [`agree`] for one tensor.
pub fn tensors_agree(
    name: &str,
    got: &Tensor,
    want: &Tensor,
    tol: &Tolerance,
) -> Result<(), Disagreement> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Err(Disagreement::Shape {
            name: name.to_owned(),
            what: format!(
                "{} {:?} vs {} {:?}",
                got.dtype(),
                got.shape(),
                want.dtype(),
                want.shape()
            ),
        });
    }
    let size = want.dtype().size();
    let float = matches!(want.dtype(), DType::F32 | DType::F64 | DType::F16);
    for (index, (g, w)) in got
        .bytes()
        .chunks_exact(size)
        .zip(want.bytes().chunks_exact(size))
        .enumerate()
    {
        if float {
            let (a, b) = (as_f64(want.dtype(), g), as_f64(want.dtype(), w));
            if !close(a, b, tol) {
                return Err(Disagreement::Value {
                    name: name.to_owned(),
                    index,
                    got: a.to_string(),
                    want: b.to_string(),
                });
            }
        } else if g != w {
            return Err(Disagreement::Value {
                name: name.to_owned(),
                index,
                got: format!("{g:?}"),
                want: format!("{w:?}"),
            });
        }
    }
    Ok(())
}

fn close(a: f64, b: f64, tol: &Tolerance) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= tol.atol + tol.rtol * b.abs()
}

fn as_f64(dtype: DType, bytes: &[u8]) -> f64 {
    match (dtype, bytes.len()) {
        (DType::F32, 4) => f64::from(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
        (DType::F64, 8) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            f64::from_le_bytes(b)
        }
        (DType::F16, 2) => f16_to_f64(u16::from_le_bytes([bytes[0], bytes[1]])),
        _ => f64::NAN,
    }
}

/// IEEE half precision bits to a double.
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<T: crate::tensor::Element>(v: &[T]) -> Vec<NamedTensor> {
        vec![NamedTensor::new(
            "y",
            Tensor::from_slice(&[v.len() as u64], v).unwrap(),
        )]
    }

    #[test]
    fn floats_within_tolerance_agree() {
        let tol = Tolerance::default();
        assert!(agree(&t(&[1000.0f32]), &t(&[1000.9f32]), &tol).is_ok());
        assert!(agree(&t(&[1000.0f32]), &t(&[1001.2f32]), &tol).is_err());
        assert!(agree(&t(&[0.0f32]), &t(&[0.00009f32]), &tol).is_ok());
        assert!(agree(&t(&[0.0f32]), &t(&[0.0002f32]), &tol).is_err());
        assert!(agree(&t(&[f32::NAN]), &t(&[f32::NAN]), &tol).is_ok());
        assert!(agree(&t(&[f32::NAN]), &t(&[0.0f32]), &tol).is_err());
        assert!(agree(&t(&[f32::INFINITY]), &t(&[f32::MAX]), &tol).is_err());
        assert!(agree(&t(&[1.0f64]), &t(&[1.0005f64]), &tol).is_ok());
    }

    #[test]
    fn integers_and_shapes_exact() {
        let tol = Tolerance::default();
        assert!(agree(&t(&[7i64, 8]), &t(&[7i64, 8]), &tol).is_ok());
        assert!(agree(&t(&[7i64, 8]), &t(&[7i64, 9]), &tol).is_err());
        assert!(agree(&t(&[true]), &t(&[false]), &tol).is_err());
        assert!(agree(&t(&[1i32]), &t(&[1i64]), &tol).is_err());
        assert!(agree(&t(&[1.0f32, 2.0]), &t(&[1.0f32]), &tol).is_err());
        assert!(agree(&t(&[1.0f32]), &[], &tol).is_err());
        let other = vec![NamedTensor::new(
            "z",
            Tensor::from_slice(&[1], &[1.0f32]).unwrap(),
        )];
        assert!(agree(&t(&[1.0f32]), &other, &tol).is_err());
    }

    #[test]
    fn half_precision() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x7c00), f64::INFINITY);
        assert!(f16_to_f64(0x7e00).is_nan());
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
    }
}
