//! The compute-challenge model: one ONNX `MatMul`, `c = a · b`, with every size dynamic, so a
//! node answers a proof-of-hardware challenge (`crat_core::policy::challenge`) with whatever
//! backend it serves with: ONNX Runtime with CUDA multiplies on the GPU for real.
//!
//! The bytes are built here, not shipped as a file: a graph of one node, inputs `a` `[n, k]`
//! and `b` `[k, m]` (f32), output `c` `[n, m]`, opset 13.
//!
//! ```
//! # #[cfg(feature = "tract")] {
//! use crat_backend::InferenceBackend;
//! use crat_backend::challenge::{matmul_model, run_product};
//! use crat_backend::tract::TractBackend;
//! use crat_core::policy::challenge::ChallengeSpec;
//!
//! let model = TractBackend::new().load(&matmul_model())?;
//! let spec = ChallengeSpec::new([1; 32], 8, 16, 4)?;
//! // Exact on any backend: the challenge's values are small integers.
//! assert_eq!(run_product(&*model, &spec)?, spec.product());
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crat_core::policy::challenge::ChallengeSpec;
use crat_core::tensor::Tensor;

use crate::{BackendError, LoadedModel};

/// The first input, `[n, k]`.
pub const INPUT_A: &str = "a";
/// The second input, `[k, m]`.
pub const INPUT_B: &str = "b";
/// The output, `[n, m]`.
pub const OUTPUT: &str = "c";

/// A minimal protobuf writer: varint and length-delimited fields.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn int(mut self, field: u64, v: u64) -> Self {
        self.varint(field << 3);
        self.varint(v);
        self
    }

    fn bytes(mut self, field: u64, b: &[u8]) -> Self {
        self.varint((field << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn msg(self, field: u64, m: Pb) -> Self {
        self.bytes(field, &m.0)
    }
}

/// `ValueInfoProto` of a float matrix with two named dimensions.
fn matrix(name: &str, rows: &str, cols: &str) -> Pb {
    let dim = |p: &str| Pb::default().bytes(2, p.as_bytes());
    let shape = Pb::default().msg(1, dim(rows)).msg(1, dim(cols));
    // TypeProto.tensor_type { elem_type FLOAT (1), shape }
    let tensor = Pb::default().int(1, 1).msg(2, shape);
    Pb::default()
        .bytes(1, name.as_bytes())
        .msg(2, Pb::default().msg(1, tensor))
}

/// The model's bytes (a few hundred): `c = MatMul(a, b)`.
pub fn matmul_model() -> Vec<u8> {
    let node = Pb::default()
        .bytes(1, INPUT_A.as_bytes())
        .bytes(1, INPUT_B.as_bytes())
        .bytes(2, OUTPUT.as_bytes())
        .bytes(3, b"challenge")
        .bytes(4, b"MatMul");
    let graph = Pb::default()
        .msg(1, node)
        .bytes(2, b"crat-challenge")
        .msg(11, matrix(INPUT_A, "n", "k"))
        .msg(11, matrix(INPUT_B, "k", "m"))
        .msg(12, matrix(OUTPUT, "n", "m"));
    Pb::default()
        .int(1, 7)
        .bytes(2, b"crat")
        .msg(8, Pb::default().bytes(1, b"").int(2, 13))
        .msg(7, graph)
        .0
}

/// Runs `spec`'s product on `model` (loaded from [`matmul_model`]): generates `A` and `B`,
/// multiplies them on the backend's device, returns `A · B` row-major.
pub fn run_product(
    model: &dyn LoadedModel,
    spec: &ChallengeSpec,
) -> Result<Vec<f32>, BackendError> {
    let input = |e: crat_core::tensor::TensorError| BackendError::Input(e.to_string());
    let (n, k, m) = (
        u64::from(spec.n()),
        u64::from(spec.k()),
        u64::from(spec.m()),
    );
    let a = Tensor::from_slice(&[n, k], &spec.matrix_a()).map_err(input)?;
    let b = Tensor::from_slice(&[k, m], &spec.matrix_b()).map_err(input)?;
    let out = model.run(&[a, b])?;
    let c = out
        .first()
        .ok_or_else(|| BackendError::Run("the challenge model returned nothing".into()))?;
    if c.shape() != [n, m] {
        return Err(BackendError::Run(format!(
            "the challenge model returned shape {:?}, expected [{n}, {m}]",
            c.shape()
        )));
    }
    c.to_vec::<f32>()
        .map_err(|e| BackendError::Run(e.to_string()))
}

#[cfg(all(test, feature = "tract"))]
mod tests {
    use super::*;
    use crate::InferenceBackend;
    use crate::onnx_check::check_model;

    #[test]
    fn the_model_passes_the_check_and_multiplies_exactly() {
        let bytes = matmul_model();
        check_model(&bytes).expect("the challenge model passes the model check");
        let model = crate::tract::TractBackend::new()
            .load(&bytes)
            .expect("loads");
        assert_eq!(model.info().inputs.len(), 2);
        for (n, k, m) in [(1, 1, 1), (7, 33, 5), (64, 256, 16)] {
            let spec = ChallengeSpec::new([n as u8; 32], n, k, m).expect("sizes");
            assert_eq!(run_product(&*model, &spec).expect("runs"), spec.product());
        }
    }
}

#[cfg(all(test, feature = "ort"))]
mod ort_tests {
    use super::*;
    use crate::InferenceBackend;
    use crate::ort::{OrtBackend, OrtConfig};

    #[test]
    fn onnx_runtime_multiplies_exactly_too() {
        // Skipped where libonnxruntime is not installed (ORT_DYLIB_PATH).
        let Ok(backend) = OrtBackend::new(&OrtConfig::default()) else {
            return;
        };
        let model = backend.load(&matmul_model()).expect("loads");
        for (n, k, m) in [(1, 1, 1), (7, 33, 5), (64, 256, 16)] {
            let spec = ChallengeSpec::new([n as u8; 32], n, k, m).expect("sizes");
            assert_eq!(run_product(&*model, &spec).expect("runs"), spec.product());
        }
    }
}
