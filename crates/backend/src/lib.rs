//! `crat-backend`: everything between model bytes and a run, with no node around it.
//!
//! | module | what it owns |
//! |---|---|
//! | crate root | [`ModelInfo`], [`TensorSpec`], [`Dim`]: what a model takes and returns; the [`InferenceBackend`] and [`LoadedModel`] traits; [`BackendError`] |
//! | [`onnx_check`] | the ONNX model check every backend runs first: refuses external data, absurd shapes and graphs beyond limits, and describes the model from what its graph declares |
//! | [`validate`] | request inputs against the model's declared inputs, before anything runs |
//! | [`tract`] | the pure-Rust CPU backend (feature `tract`, default) |
//! | `ort` | ONNX Runtime (feature `ort`; `cuda` adds the CUDA execution provider) |
//! | [`select`] | the best backend that really works on this host, with stated fallbacks |
//! | [`challenge`] | the compute-challenge model (one dynamic `MatMul`) a node answers proof-of-hardware challenges with |
//!
//! The compute node (`crat-node`) serves models through these; the dispatcher checks uploads
//! with [`onnx_check::check_model`] and computes canary answers with a backend, without
//! depending on the node (its hardware probe, idle workload or runtime).
//!
//! A backend never reads a path named inside a model: models whose tensors live in external
//! files are refused at load. [`LoadedModel::run`] is synchronous and CPU/GPU bound; the node
//! runs it on blocking threads, with a time limit, and catches panics.
//!
//! Two backends implement [`InferenceBackend`]:
//!
//! - [`tract`] (feature `tract`, default): pure Rust, CPU, one thread per inference, no setup;
//! - `ort` (feature `ort`; `cuda` adds CUDA): ONNX Runtime loaded at run time from
//!   `libonnxruntime` (`scripts/install-onnxruntime.sh` installs it), on the CPU or an NVIDIA GPU.
//!
//! [`select`] picks the best one that really works on this host (ort + CUDA → ort CPU →
//! tract) and says why it passed over the others. Both run every model through
//! [`onnx_check::check_model`] first, which refuses external data and absurd shapes, and
//! both describe a model from what its graph declares, so the same model has the same
//! [`ModelInfo`] on either. Neither lets a panic escape [`LoadedModel::run`] or
//! [`InferenceBackend::load`]: it comes back as [`BackendError::Panicked`].
//!
//! Select a backend, load the repository's tiny CNN, validate a request against it and run it:
//!
//! ```
//! use crat_backend::select::{SelectConfig, select_backend};
//! use crat_backend::validate::validate_inputs;
//! use crat_core::tensor::{NamedTensor, Tensor};
//!
//! // With default features and no configuration this is tract; with `ort` and
//! // ORT_DYLIB_PATH set it is ONNX Runtime.
//! let selected = select_backend(&SelectConfig::default())?;
//! println!("{} on {}", selected.backend.name(), selected.backend.execution_provider());
//! for reason in &selected.fallbacks {
//!     println!("passed over: {reason}");
//! }
//! let model = selected.backend.load(include_bytes!("../models/tiny_cnn.onnx"))?;
//! assert_eq!(model.info().outputs[0].name, "probs");
//!
//! let image = Tensor::from_slice(&[1, 1, 28, 28], &[0.5f32; 784])?;
//! let inputs = validate_inputs(model.info(), vec![NamedTensor::new("input", image)], 1 << 20)?;
//! let probs = model.run(&inputs)?[0].to_vec::<f32>()?;
//! assert_eq!(probs.len(), 10);
//! assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;

use crat_core::tensor::{DType, Tensor};

pub mod challenge;
pub mod onnx_check;
mod onnx_schema;
#[cfg(feature = "ort")]
pub mod ort;
pub mod select;
#[cfg(feature = "tract")]
pub mod tract;
pub mod validate;

/// One dimension of a declared input or output shape.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A named (or unnamed, `""`) size chosen at run time, e.g. the batch size `N`.
    Symbolic(String),
}

impl Dim {
    /// True for a symbol that names a size shared across inputs (an ONNX `dim_param` such as
    /// `N`); false for fixed sizes and for unnamed unknown sizes (empty, ONNX's `?`, or
    /// tract's generated `unk__…`), which constrain nothing beyond their own position.
    pub fn is_named_symbol(&self) -> bool {
        matches!(self, Dim::Symbolic(s) if is_named(s))
    }
}

/// See [`Dim::is_named_symbol`].
pub(crate) fn is_named(s: &str) -> bool {
    !s.is_empty() && s != "?" && !s.starts_with("unk__")
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) if s.is_empty() => f.write_str("?"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// A declared model input or output.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TensorSpec {
    /// Its name in the graph.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its shape, outermost first.
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// True when the outermost dimension is symbolic: requests can be stacked along it.
    pub fn has_batch_dim(&self) -> bool {
        matches!(self.shape.first(), Some(Dim::Symbolic(_)))
    }
}

/// What a loaded model takes and returns.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ModelInfo {
    /// Inputs in graph order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs in graph order.
    pub outputs: Vec<TensorSpec>,
}

impl ModelInfo {
    /// True when every input and output has a symbolic outermost dimension, so requests can
    /// be merged along it and split back.
    pub fn batchable(&self) -> bool {
        !self.inputs.is_empty()
            && self.inputs.iter().all(TensorSpec::has_batch_dim)
            && self.outputs.iter().all(TensorSpec::has_batch_dim)
    }
}

/// Why a backend could not load or run a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The bytes are not a model this backend can load (not ONNX, unknown operator, invalid
    /// graph, shapes beyond limits).
    #[error("cannot load model: {0}")]
    Load(String),
    /// The model refers to tensor data in external files, which nodes never read.
    #[error("model refers to external data ({0}); only self-contained models are served")]
    ExternalData(String),
    /// The inputs do not fit the model.
    #[error("invalid input: {0}")]
    Input(String),
    /// The backend failed while running.
    #[error("inference failed: {0}")]
    Run(String),
    /// The backend panicked; the node caught it and keeps serving.
    #[error("backend panicked: {0}")]
    Panicked(String),
    /// The backend (library, execution provider) is not available on this host.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

/// A runtime that turns model bytes into runnable models.
pub trait InferenceBackend: Send + Sync + 'static {
    /// Short name: `tract` or `ort`.
    fn name(&self) -> &'static str;

    /// The execution provider really in use: `cpu` or `cuda`.
    fn execution_provider(&self) -> &str;

    /// Loads a model from its bytes.
    fn load(&self, model: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError>;

    /// The same backend on GPU number `device` of this host (CUDA's device ordinal), for work
    /// that must run on one GPU in particular: a node proves each of its GPUs with its own
    /// compute challenge. `None` (the default) for a backend that runs on the CPU.
    fn on_gpu(&self, device: u32) -> Option<Arc<dyn InferenceBackend>> {
        let _ = device;
        None
    }
}

/// A model ready to run.
pub trait LoadedModel: Send + Sync + 'static {
    /// Its inputs and outputs.
    fn info(&self) -> &ModelInfo;

    /// Runs one batch. `inputs` are in [`ModelInfo::inputs`] order and already validated
    /// against it; outputs come back in [`ModelInfo::outputs`] order.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError>;

    /// Approximate memory the loaded model holds, for the cache's byte budget.
    fn memory_bytes(&self) -> u64;
}

/// True when every input has a symbolic outermost dimension.
#[cfg_attr(not(feature = "tract"), allow(dead_code))]
pub(crate) fn batchable_inputs(info: &ModelInfo) -> bool {
    !info.inputs.is_empty() && info.inputs.iter().all(TensorSpec::has_batch_dim)
}

/// Runs `f`, turning a panic inside it into [`BackendError::Panicked`]. Backends wrap every
/// call into native or third-party code with it, so a bad model or input never unwinds into
/// the node.
#[cfg_attr(not(any(feature = "tract", feature = "ort")), allow(dead_code))]
pub(crate) fn catch_panic<T>(
    f: impl FnOnce() -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Err(BackendError::Panicked(message))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors() {
        let r: Result<(), _> = catch_panic(|| panic!("boom {}", 42));
        assert_eq!(r, Err(BackendError::Panicked("boom 42".into())));
        let r: Result<u8, _> = catch_panic(|| Ok(7));
        assert_eq!(r, Ok(7));
    }
}
