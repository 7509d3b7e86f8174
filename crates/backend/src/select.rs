//! Backend selection: the best backend that really works on this host, and why the better
//! ones were passed over.
//!
//! Order: ONNX Runtime with CUDA (feature `cuda`, a GPU, the provider loads) → ONNX Runtime on
//! the CPU (feature `ort`, the library loads) → tract (feature `tract`). A candidate is chosen
//! only after it has loaded and run [`PROBE_MODEL`] (the tiny CNN): registering the CUDA
//! provider is not taken on trust. Every candidate passed over adds a line to
//! [`Selected::fallbacks`], e.g. `ort: libonnxruntime not found at /opt/ort/libonnxruntime.so`
//! or `cuda: feature \`cuda\` not compiled in`, which the node logs and reports.
//!
//! Works with any combination of features; with none of the backends compiled in (or all
//! disabled) it returns [`BackendError::Unavailable`] listing the reasons.
//!
//! ```
//! use crat_backend::select::{SelectConfig, select_backend};
//!
//! let config = SelectConfig {
//!     ort_dylib_path: Some("/nonexistent/libonnxruntime.so".into()),
//!     ..SelectConfig::default()
//! };
//! # #[cfg(feature = "tract")] {
//! let selected = select_backend(&config)?;
//! assert_eq!(selected.backend.name(), "tract");
//! assert!(selected.fallbacks.iter().any(|r| r.starts_with("ort:")));
//! # }
//! # Ok::<(), crat_backend::BackendError>(())
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use crat_core::tensor::{DType, Tensor};

use crate::{BackendError, InferenceBackend};

/// The model every candidate must load and run before it is chosen: the tiny CNN of
/// `crates/backend/models/tiny_cnn.onnx` (input `input` `[N, 1, 28, 28]` f32, output `probs`
/// `[N, 10]`).
pub const PROBE_MODEL: &[u8] = include_bytes!("../models/tiny_cnn.onnx");

/// Whether the CUDA execution provider is compiled in (feature `cuda`).
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

/// What to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectConfig {
    /// Try ONNX Runtime (when compiled in).
    pub ort: bool,
    /// The ONNX Runtime library; `None` reads `ORT_DYLIB_PATH`.
    pub ort_dylib_path: Option<PathBuf>,
    /// Intra-op threads per ONNX Runtime session on the CPU; 1 by default, as in the `ort`
    /// module's `OrtConfig`.
    pub ort_intra_threads: usize,
    /// Try the CUDA execution provider (when compiled in).
    pub cuda: bool,
    /// CUDA device ordinal.
    pub cuda_device_id: i32,
    /// Under CUDA, the cap on each session's CUDA memory arena (the `ort` module's
    /// `OrtConfig::gpu_memory_bytes_max`); `None` (the default): no cap.
    pub cuda_memory_bytes_max: Option<u64>,
    /// Under CUDA, where the CUDA and cuDNN libraries are (the `ort` module's
    /// `OrtConfig::cuda_dylib_dir`); `None` (the default): the system loader's search path.
    pub cuda_dylib_dir: Option<PathBuf>,
    /// What the hardware probe found: `Some(false)` skips CUDA without trying, `Some(true)` or
    /// `None` (not probed) tries it.
    pub gpu_detected: Option<bool>,
    /// Fall back to tract (when compiled in).
    pub tract: bool,
}

impl Default for SelectConfig {
    fn default() -> Self {
        Self {
            ort: true,
            ort_dylib_path: None,
            ort_intra_threads: 1,
            cuda: true,
            cuda_device_id: 0,
            cuda_memory_bytes_max: None,
            cuda_dylib_dir: None,
            gpu_detected: None,
            tract: true,
        }
    }
}

/// The chosen backend and the reasons the better candidates were passed over.
#[derive(Clone)]
pub struct Selected {
    /// The backend to serve with.
    pub backend: Arc<dyn InferenceBackend>,
    /// One line per candidate passed over, best first (`cuda: …`, `ort: …`).
    pub fallbacks: Vec<String>,
}

impl Selected {
    /// `name/execution provider`, e.g. `ort/cuda` or `tract/cpu`.
    pub fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.backend.name(),
            self.backend.execution_provider()
        )
    }
}

impl std::fmt::Debug for Selected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selected")
            .field("backend", &self.describe())
            .field("fallbacks", &self.fallbacks)
            .finish()
    }
}

/// Loads [`PROBE_MODEL`] and runs a batch of one: proof that a backend really works.
pub fn probe(backend: &dyn InferenceBackend) -> Result<(), BackendError> {
    let model = backend.load(PROBE_MODEL)?;
    let input = Tensor::zeros(DType::F32, &[1, 1, 28, 28])
        .map_err(|e| BackendError::Input(e.to_string()))?;
    let outputs = model.run(&[input])?;
    match outputs.first() {
        Some(t) if t.shape() == [1, 10] => Ok(()),
        Some(t) => Err(BackendError::Run(format!(
            "probe model returned shape {:?}, expected [1, 10]",
            t.shape()
        ))),
        None => Err(BackendError::Run("probe model returned nothing".into())),
    }
}

/// Picks the best working backend; see the [module docs](self).
pub fn select_backend(config: &SelectConfig) -> Result<Selected, BackendError> {
    let mut fallbacks = Vec::new();

    // 1. ONNX Runtime + CUDA.
    if !config.cuda {
        fallbacks.push("cuda: disabled by configuration".to_owned());
    } else if !cfg!(feature = "cuda") {
        fallbacks.push("cuda: feature `cuda` not compiled in".to_owned());
    } else if !config.ort {
        fallbacks.push("cuda: ONNX Runtime disabled by configuration".to_owned());
    } else if config.gpu_detected == Some(false) {
        fallbacks.push("cuda: no NVIDIA GPU detected".to_owned());
    } else {
        #[cfg(feature = "cuda")]
        match try_ort(
            config,
            crate::ort::Device::Cuda {
                device_id: config.cuda_device_id,
            },
        ) {
            Ok(backend) => return Ok(chosen(backend, fallbacks)),
            Err(e) => fallbacks.push(format!("cuda: {}", reason(&e, "cuda: "))),
        }
    }

    // 2. ONNX Runtime on the CPU.
    if !cfg!(feature = "ort") {
        fallbacks.push("ort: feature `ort` not compiled in".to_owned());
    } else if !config.ort {
        fallbacks.push("ort: disabled by configuration".to_owned());
    } else {
        #[cfg(feature = "ort")]
        match try_ort(config, crate::ort::Device::Cpu) {
            Ok(backend) => return Ok(chosen(backend, fallbacks)),
            Err(e) => fallbacks.push(format!("ort: {}", reason(&e, "ort: "))),
        }
    }

    // 3. tract.
    if !cfg!(feature = "tract") {
        fallbacks.push("tract: feature `tract` not compiled in".to_owned());
    } else if !config.tract {
        fallbacks.push("tract: disabled by configuration".to_owned());
    } else {
        #[cfg(feature = "tract")]
        {
            let backend: Arc<dyn InferenceBackend> = Arc::new(crate::tract::TractBackend::new());
            match probe(backend.as_ref()) {
                Ok(()) => return Ok(chosen(backend, fallbacks)),
                Err(e) => fallbacks.push(format!("tract: {e}")),
            }
        }
    }

    Err(BackendError::Unavailable(format!(
        "no inference backend works on this host: {}",
        fallbacks.join("; ")
    )))
}

#[cfg_attr(not(any(feature = "tract", feature = "ort")), allow(dead_code))]
fn chosen(backend: Arc<dyn InferenceBackend>, fallbacks: Vec<String>) -> Selected {
    let selected = Selected { backend, fallbacks };
    for reason in &selected.fallbacks {
        tracing::info!(backend = %selected.describe(), "passed over {reason}");
    }
    tracing::info!("inference backend: {}", selected.describe());
    selected
}

/// The message of `e` without the `backend unavailable: ` wrapper or a repeated prefix.
#[cfg_attr(not(feature = "ort"), allow(dead_code))]
fn reason(e: &BackendError, prefix: &str) -> String {
    let text = match e {
        BackendError::Unavailable(m) => m.clone(),
        other => other.to_string(),
    };
    text.strip_prefix(prefix).map(str::to_owned).unwrap_or(text)
}

#[cfg(feature = "ort")]
fn try_ort(
    config: &SelectConfig,
    device: crate::ort::Device,
) -> Result<Arc<dyn InferenceBackend>, BackendError> {
    use crate::ort::{OrtBackend, OrtConfig};
    let backend = OrtBackend::new(&OrtConfig {
        dylib_path: config.ort_dylib_path.clone(),
        intra_threads: config.ort_intra_threads,
        device,
        gpu_memory_bytes_max: config.cuda_memory_bytes_max,
        cuda_dylib_dir: config.cuda_dylib_dir.clone(),
    })?;
    probe(&backend)?;
    Ok(Arc::new(backend))
}
