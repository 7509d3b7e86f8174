//! The cheating backend: right answers most of the time, wrong ones on a fixed share of runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crat_backend::{BackendError, InferenceBackend, LoadedModel, ModelInfo};
use crat_core::tensor::{DType, Tensor};

/// A backend that returns wrong answers on a share of its runs, to play a cheating node.
/// Deterministic: of every 1,000 runs of a loaded model, exactly
/// `perturbed_per_mille` (spread evenly) get every floating-point output element increased
/// by 0.5. Give the cheating node batch size 1, so that one run is one task.
///
/// It cheats on inference only: the compute-challenge model
/// ([`crat_backend::challenge::matmul_model`]) runs unperturbed, so the node proves its
/// hardware and stays online to be caught by canaries and spot checks.
pub struct PerturbedBackend {
    inner: Arc<dyn InferenceBackend>,
    perturbed_per_mille: u32,
}

impl PerturbedBackend {
    /// Wraps `inner`; `perturbed_per_mille` is clamped to 1,000.
    pub fn new(inner: Arc<dyn InferenceBackend>, perturbed_per_mille: u32) -> Self {
        Self {
            inner,
            perturbed_per_mille: perturbed_per_mille.min(1_000),
        }
    }
}

impl InferenceBackend for PerturbedBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn execution_provider(&self) -> &str {
        self.inner.execution_provider()
    }

    fn load(&self, model: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError> {
        if model == crat_backend::challenge::matmul_model() {
            return self.inner.load(model);
        }
        Ok(Arc::new(PerturbedModel {
            inner: self.inner.load(model)?,
            perturbed_per_mille: u64::from(self.perturbed_per_mille),
            runs: AtomicU64::new(0),
        }))
    }
}

struct PerturbedModel {
    inner: Arc<dyn LoadedModel>,
    perturbed_per_mille: u64,
    runs: AtomicU64,
}

impl LoadedModel for PerturbedModel {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let outputs = self.inner.run(inputs)?;
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let p = self.perturbed_per_mille;
        if (n + 1) * p / 1_000 == n * p / 1_000 {
            return Ok(outputs);
        }
        outputs
            .into_iter()
            .map(|t| {
                if t.dtype() != DType::F32 {
                    return Ok(t);
                }
                let shape = t.shape().to_vec();
                let values: Vec<f32> = t
                    .to_vec::<f32>()
                    .map_err(|e| BackendError::Run(e.to_string()))?
                    .into_iter()
                    .map(|v| v + 0.5)
                    .collect();
                Tensor::from_slice(&shape, &values).map_err(|e| BackendError::Run(e.to_string()))
            })
            .collect()
    }

    fn memory_bytes(&self) -> u64 {
        self.inner.memory_bytes()
    }
}
