//! The tract backend: pure-Rust ONNX inference on the CPU (feature `tract`, on by default).
//!
//! Works on every host with zero setup; the fallback when ONNX Runtime is missing.
//!
//! ```
//! use crat_core::tensor::Tensor;
//! use crat_backend::{Dim, InferenceBackend, tract::TractBackend};
//!
//! let model = TractBackend::new().load(include_bytes!("../models/tiny_cnn.onnx"))?;
//! assert_eq!(model.info().inputs[0].name, "input");
//! assert_eq!(model.info().inputs[0].shape[0], Dim::Symbolic("N".into()));
//!
//! let images = Tensor::from_slice(&[2, 1, 28, 28], &[0.5f32; 2 * 28 * 28])?;
//! let probs = model.run(&[images])?.remove(0);
//! assert_eq!(probs.shape(), &[2, 10]);
//! let sum: f32 = probs.to_vec::<f32>()?[..10].iter().sum();
//! assert!((sum - 1.0).abs() < 1e-5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Plans
//! tract turns a model into an optimised *plan* for given input shapes. Real models often cannot
//! be planned with a symbolic batch size (a `Reshape` whose target shape is computed from the
//! input shape, as in the PaddleOCR classifier), and some declare other dimensions as unknown
//! (that model's height and width). So [`TractModel`] plans lazily, per set of concrete input
//! shapes, and keeps the last [`PLANS_MAX`] plans (least recently used evicted):
//!
//! 1. first it tries one plan with a symbolic batch dimension and the other dimensions fixed,
//!    which then serves every batch size for those dimensions;
//! 2. if tract cannot plan that for this model, it remembers so and plans each concrete batch
//!    size separately.
//!
//! Planning takes milliseconds for small models and a few hundred for larger ones; it happens
//! once per shape, on the first request with that shape (and for a batch of one at load when
//! every other dimension is fixed, so a model that cannot be planned fails at load).
//!
//! # Threads
//! tract runs an inference entirely on the calling thread: this build does not enable
//! tract-linalg's `multithread-mm` feature, so one `run` uses one core. Plans are shared
//! (`Arc`) and every `run` spawns its own state, so several requests can run at once on
//! several threads; the node scales across cores that way.
//!
//! # Security
//! Models pass [`crate::onnx_check::check_model`] first, and the tract parser is
//! additionally given a data resolver that refuses every external file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crat_core::tensor::{DType, Tensor};
use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable,
    IntoTensor, Symbol, TDim, TValue, TVec, Tensor as TTensor, ToDim, TractError, TractResult,
    TypedSimplePlan, f16,
};

use crate::onnx_check::{ModelSummary, check_model};
use crate::{
    BackendError, Dim, InferenceBackend, LoadedModel, ModelInfo, batchable_inputs, catch_panic,
    is_named,
};

/// Most plans (one per set of input shapes) kept per model.
pub const PLANS_MAX: usize = 8;

/// The tract backend. Stateless and cheap to create; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct TractBackend {
    _private: (),
}

impl TractBackend {
    /// A tract backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a model, returning the concrete type (with its plan statistics).
    pub fn load_model(&self, model: &[u8]) -> Result<TractModel, BackendError> {
        catch_panic(|| TractModel::load(model))
    }
}

impl InferenceBackend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn execution_provider(&self) -> &str {
        "cpu"
    }

    fn load(&self, model: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError> {
        Ok(Arc::new(self.load_model(model)?))
    }
}

/// Refuses to read any file a model names.
struct NoExternalData;

impl ModelDataResolver for NoExternalData {
    fn read_bytes_from_path(
        &self,
        _buf: &mut Vec<u8>,
        p: &Path,
        _offset: usize,
        _length: Option<usize>,
    ) -> TractResult<()> {
        Err(TractError::msg(format!(
            "external data ({}) is never read",
            p.display()
        )))
    }
}

/// Whether a one-plan-for-all-batch-sizes plan works for this model.
const SYMBOLIC_UNTRIED: u8 = 0;
const SYMBOLIC_WORKS: u8 = 1;
const SYMBOLIC_FAILS: u8 = 2;

/// Name of the batch symbol when the model does not name its batch dimension.
const BATCH_SYMBOL: &str = "crat_batch";

/// Plan cache key: the input shapes, with the batch dimension of a symbolic-batch plan
/// recorded as `None`.
type PlanKey = Vec<Vec<Option<u64>>>;

/// A model loaded into tract.
pub struct TractModel {
    info: ModelInfo,
    model: InferenceModel,
    input_types: Vec<DatumType>,
    model_bytes: u64,
    symbolic: AtomicU8,
    plans: Mutex<Vec<(PlanKey, Arc<TypedSimplePlan>)>>,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractModel")
            .field("info", &self.info)
            .field("model_bytes", &self.model_bytes)
            .field("plans", &self.plan_count())
            .finish_non_exhaustive()
    }
}

fn load_err(e: impl std::fmt::Debug) -> BackendError {
    BackendError::Load(format!("{e:?}"))
}

fn run_err(e: impl std::fmt::Debug) -> BackendError {
    BackendError::Run(format!("{e:?}"))
}

impl TractModel {
    fn load(bytes: &[u8]) -> Result<Self, BackendError> {
        let ModelSummary {
            info,
            undeclared_output_shapes,
            ..
        } = check_model(bytes)?;
        let mut onnx = tract_onnx::onnx();
        onnx.provider = Arc::new(NoExternalData);
        let model = onnx.model_for_read(&mut &*bytes).map_err(load_err)?;
        if let Some(node) = model
            .nodes()
            .iter()
            .find(|n| n.op_is::<tract_onnx::tract_hir::ops::unimpl::UnimplementedOp>())
        {
            return Err(BackendError::Load(format!(
                "tract does not implement node '{}': {}",
                node.name,
                node.op().name()
            )));
        }
        let names_in = model
            .input_outlets()
            .map_err(load_err)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect::<Vec<_>>();
        let names_out = model
            .output_outlets()
            .map_err(load_err)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect::<Vec<_>>();
        let declared_in: Vec<_> = info.inputs.iter().map(|s| s.name.clone()).collect();
        if names_in != declared_in {
            return Err(BackendError::Load(format!(
                "tract sees inputs {names_in:?}, the graph declares {declared_in:?}"
            )));
        }
        if names_out.len() != info.outputs.len() {
            return Err(BackendError::Load(format!(
                "tract sees {} outputs, the graph declares {}",
                names_out.len(),
                info.outputs.len()
            )));
        }
        let input_types = info.inputs.iter().map(|s| datum_type(s.dtype)).collect();
        let mut loaded = TractModel {
            info,
            model,
            input_types,
            model_bytes: bytes.len() as u64,
            symbolic: AtomicU8::new(SYMBOLIC_UNTRIED),
            plans: Mutex::new(Vec::new()),
        };
        // Plan a batch of one now when the other dimensions are known: a model tract cannot
        // run then fails at load, not at its first request.
        let mut unresolved = undeclared_output_shapes;
        if let Some(shapes) = loaded.example_shapes() {
            let plan = loaded.plan(&shapes).map_err(|e| match e {
                BackendError::Run(m) => BackendError::Load(m),
                e => e,
            })?;
            let batch_name =
                batchable_inputs(&loaded.info).then(|| match &loaded.info.inputs[0].shape[0] {
                    Dim::Symbolic(s) if is_named(s) => s.clone(),
                    _ => String::new(),
                });
            unresolved.retain(|&i| {
                let Ok(fact) = plan.model().output_fact(i) else {
                    return true;
                };
                loaded.info.outputs[i].shape = fact
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(k, d)| match (k, &batch_name, d.to_i64()) {
                        // The batch dimension follows the inputs' (planned at 1 or symbolic).
                        (0, Some(name), _) => Dim::Symbolic(name.clone()),
                        (_, _, Ok(n)) => Dim::Fixed(n as u64),
                        (_, _, Err(_)) => Dim::Symbolic(d.to_string()),
                    })
                    .collect();
                false
            });
        }
        if let Some(&i) = unresolved.first() {
            return Err(BackendError::Load(format!(
                "output '{}' declares no shape and tract cannot infer it",
                loaded.info.outputs[i].name
            )));
        }
        Ok(loaded)
    }

    /// Input shapes for a batch of one when every other dimension is fixed.
    fn example_shapes(&self) -> Option<Vec<Vec<u64>>> {
        self.info
            .inputs
            .iter()
            .map(|spec| {
                spec.shape
                    .iter()
                    .enumerate()
                    .map(|(k, d)| match d {
                        Dim::Fixed(n) => Some(*n),
                        Dim::Symbolic(_) if k == 0 => Some(1),
                        Dim::Symbolic(_) => None,
                    })
                    .collect()
            })
            .collect()
    }

    /// Number of plans currently cached.
    pub fn plan_count(&self) -> usize {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether one symbolic-batch plan serves all batch sizes: `Some(true)` or `Some(false)`
    /// once tried, `None` before.
    pub fn symbolic_batch(&self) -> Option<bool> {
        match self.symbolic.load(Ordering::Relaxed) {
            SYMBOLIC_WORKS => Some(true),
            SYMBOLIC_FAILS => Some(false),
            _ => None,
        }
    }

    fn cached(&self, key: &PlanKey) -> Option<Arc<TypedSimplePlan>> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let at = plans.iter().position(|(k, _)| k == key)?;
        // Move to the back: the back is the most recently used.
        let entry = plans.remove(at);
        let plan = Arc::clone(&entry.1);
        plans.push(entry);
        Some(plan)
    }

    fn insert(&self, key: PlanKey, plan: Arc<TypedSimplePlan>) {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.iter().any(|(k, _)| *k == key) {
            return;
        }
        if plans.len() >= PLANS_MAX {
            plans.remove(0);
        }
        plans.push((key, plan));
    }

    /// The plan for these input shapes, from the cache or built now.
    fn plan(&self, shapes: &[Vec<u64>]) -> Result<Arc<TypedSimplePlan>, BackendError> {
        let batch_ok = batchable_inputs(&self.info)
            && shapes
                .iter()
                .all(|s| !s.is_empty() && s.first() == shapes[0].first());
        let symbolic_key = |shapes: &[Vec<u64>]| -> PlanKey {
            shapes
                .iter()
                .map(|s| {
                    s.iter()
                        .enumerate()
                        .map(|(k, &d)| (k != 0).then_some(d))
                        .collect()
                })
                .collect()
        };
        let concrete_key: PlanKey = shapes
            .iter()
            .map(|s| s.iter().map(|&d| Some(d)).collect())
            .collect();
        if batch_ok && self.symbolic.load(Ordering::Relaxed) != SYMBOLIC_FAILS {
            let key = symbolic_key(shapes);
            if let Some(plan) = self.cached(&key) {
                return Ok(plan);
            }
            match self.build_plan(shapes, true) {
                Ok(plan) => {
                    self.symbolic.store(SYMBOLIC_WORKS, Ordering::Relaxed);
                    self.insert(key, Arc::clone(&plan));
                    return Ok(plan);
                }
                Err(e) => {
                    tracing::debug!(
                        "tract cannot plan a symbolic batch size for this model, planning per \
                         batch size: {e:?}"
                    );
                    self.symbolic.store(SYMBOLIC_FAILS, Ordering::Relaxed);
                }
            }
        }
        if let Some(plan) = self.cached(&concrete_key) {
            return Ok(plan);
        }
        let plan = self.build_plan(shapes, false).map_err(run_err)?;
        self.insert(concrete_key, Arc::clone(&plan));
        Ok(plan)
    }

    fn build_plan(
        &self,
        shapes: &[Vec<u64>],
        symbolic_batch: bool,
    ) -> TractResult<Arc<TypedSimplePlan>> {
        let mut model = self.model.clone();
        // Declared symbols (`N`, `height`, …) get the values of this request, so that value_info
        // facts naming them agree with the concrete input facts.
        let batch_name = match self.info.inputs[0].shape.first() {
            Some(Dim::Symbolic(s)) if is_named(s) => s.clone(),
            _ => BATCH_SYMBOL.to_owned(),
        };
        let batch: Symbol = model.symbols.sym(&batch_name);
        let mut subs: HashMap<Symbol, TDim> = HashMap::new();
        for (spec, shape) in self.info.inputs.iter().zip(shapes) {
            for (k, (dim, &n)) in spec.shape.iter().zip(shape).enumerate() {
                if let Dim::Symbolic(name) = dim
                    && is_named(name)
                    && !(symbolic_batch && k == 0)
                {
                    subs.insert(model.symbols.sym(name), (n as usize).to_dim());
                }
            }
        }
        if !subs.is_empty() {
            model.set_symbols(&subs)?;
        }
        for (i, (shape, dt)) in shapes.iter().zip(&self.input_types).enumerate() {
            let dims: TVec<TDim> = shape
                .iter()
                .enumerate()
                .map(|(k, &n)| {
                    if symbolic_batch && k == 0 {
                        batch.clone().into()
                    } else {
                        (n as usize).to_dim()
                    }
                })
                .collect();
            model.set_input_fact(i, InferenceFact::dt_shape(*dt, dims))?;
        }
        model.into_optimized()?.into_runnable()
    }

    fn run_inner(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        if inputs.len() != self.info.inputs.len() {
            return Err(BackendError::Input(format!(
                "{} inputs given, the model takes {}",
                inputs.len(),
                self.info.inputs.len()
            )));
        }
        for (t, spec) in inputs.iter().zip(&self.info.inputs) {
            if t.dtype() != spec.dtype || t.shape().len() != spec.shape.len() {
                return Err(BackendError::Input(format!(
                    "input '{}' is {} {:?}, the model takes {} of rank {}",
                    spec.name,
                    t.dtype(),
                    t.shape(),
                    spec.dtype,
                    spec.shape.len()
                )));
            }
        }
        let shapes: Vec<Vec<u64>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let plan = self.plan(&shapes)?;
        let values: TVec<TValue> = inputs
            .iter()
            .map(|t| to_tract(t).map(TValue::from))
            .collect::<Result<_, _>>()?;
        let outputs = plan.run(values).map_err(run_err)?;
        if outputs.len() != self.info.outputs.len() {
            return Err(BackendError::Run(format!(
                "tract returned {} outputs, the model declares {}",
                outputs.len(),
                self.info.outputs.len()
            )));
        }
        outputs
            .into_iter()
            .zip(&self.info.outputs)
            .map(|(v, spec)| from_tract(v.into_tensor(), spec.dtype))
            .collect()
    }
}

impl LoadedModel for TractModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        catch_panic(|| self.run_inner(inputs))
    }

    /// Approximate: the parsed model plus one optimised copy of the weights per cached plan,
    /// each counted as the size of the model file.
    fn memory_bytes(&self) -> u64 {
        self.model_bytes
            .saturating_mul(1 + self.plan_count() as u64)
    }
}

/// The tract datum type of a wire dtype.
fn datum_type(dtype: DType) -> DatumType {
    match dtype {
        DType::F32 => DatumType::F32,
        DType::F16 => DatumType::F16,
        DType::F64 => DatumType::F64,
        DType::I64 => DatumType::I64,
        DType::I32 => DatumType::I32,
        DType::I8 => DatumType::I8,
        DType::U8 => DatumType::U8,
        DType::Bool => DatumType::Bool,
        // `DType` is non-exhaustive; a new variant needs a line here.
        #[allow(unreachable_patterns)]
        _ => DatumType::Blob,
    }
}

fn input_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Input(e.to_string())
}

/// Copies a wire tensor into a tract tensor (little-endian bytes to native values).
fn to_tract(t: &Tensor) -> Result<TTensor, BackendError> {
    let shape: Vec<usize> = t
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(input_err))
        .collect::<Result<_, _>>()?;
    let tensor = match t.dtype() {
        DType::F32 => TTensor::from_shape(&shape, &t.to_vec::<f32>().map_err(input_err)?),
        DType::F64 => TTensor::from_shape(&shape, &t.to_vec::<f64>().map_err(input_err)?),
        DType::I64 => TTensor::from_shape(&shape, &t.to_vec::<i64>().map_err(input_err)?),
        DType::I32 => TTensor::from_shape(&shape, &t.to_vec::<i32>().map_err(input_err)?),
        DType::I8 => TTensor::from_shape(&shape, &t.to_vec::<i8>().map_err(input_err)?),
        DType::U8 => TTensor::from_shape(&shape, t.bytes()),
        DType::Bool => TTensor::from_shape(&shape, &t.to_vec::<bool>().map_err(input_err)?),
        DType::F16 => {
            let v: Vec<f16> = t
                .bytes()
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            TTensor::from_shape(&shape, &v)
        }
        #[allow(unreachable_patterns)]
        other => {
            return Err(BackendError::Input(format!(
                "dtype {other} is not supported by tract"
            )));
        }
    };
    tensor.map_err(|e| BackendError::Input(format!("{e:?}")))
}

/// The wire dtype of a tract datum type, when it has one.
fn dtype_of(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F32 => DType::F32,
        DatumType::F16 => DType::F16,
        DatumType::F64 => DType::F64,
        DatumType::I64 => DType::I64,
        DatumType::I32 => DType::I32,
        DatumType::I8 => DType::I8,
        DatumType::U8 => DType::U8,
        DatumType::Bool => DType::Bool,
        _ => return None,
    })
}

/// Copies a tract output into a wire tensor of the declared dtype.
fn from_tract(t: TTensor, declared: DType) -> Result<Tensor, BackendError> {
    let t = if dtype_of(t.datum_type()) == Some(declared) {
        t
    } else {
        // tract may compute a declared int64 as TDim, or keep a wider type; cast to what the
        // graph declares.
        t.cast_to_dt(datum_type(declared))
            .map_err(run_err)?
            .into_owned()
    };
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let view = t.try_as_plain_ram().map_err(run_err)?;
    let mut bytes = view.as_bytes().to_vec();
    if cfg!(target_endian = "big") {
        for element in bytes.chunks_exact_mut(declared.size()) {
            element.reverse();
        }
    }
    Tensor::new(declared, shape, bytes).map_err(|e| BackendError::Run(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_round_trips() {
        for dtype in DType::ALL {
            let n = 6usize;
            let bytes: Vec<u8> = match dtype {
                DType::Bool => (0..n).map(|i| (i % 2) as u8).collect(),
                DType::F16 => (0..n)
                    .flat_map(|i| f16::from_f32(i as f32 - 2.5).to_bits().to_le_bytes())
                    .collect(),
                _ => (0..n * dtype.size())
                    .map(|i| (i * 37 % 251) as u8)
                    .collect(),
            };
            let t = Tensor::new(dtype, vec![2, 3], bytes).unwrap();
            let tt = to_tract(&t).unwrap();
            assert_eq!(tt.datum_type(), datum_type(dtype));
            assert_eq!(tt.shape(), &[2, 3]);
            assert_eq!(from_tract(tt, dtype).unwrap(), t, "{dtype}");
        }
    }

    #[test]
    fn plan_cache_is_bounded_lru() {
        let model = TractBackend::new()
            .load_model(include_bytes!("../models/tiny_cnn.onnx"))
            .unwrap();
        // Batch 1 was planned at load, with a symbolic batch dimension.
        assert_eq!(model.plan_count(), 1);
        assert_eq!(model.symbolic_batch(), Some(true));
        for batch in [1u64, 3, 7] {
            let x = Tensor::zeros(DType::F32, &[batch, 1, 28, 28]).unwrap();
            assert_eq!(model.run(&[x]).unwrap()[0].shape(), &[batch, 10]);
        }
        // One plan serves every batch size.
        assert_eq!(model.plan_count(), 1);
        for batch in 1..=(PLANS_MAX as u64 + 3) {
            let key: PlanKey = vec![vec![Some(batch)]];
            let plan = model.cached(&vec![vec![None, Some(1), Some(28), Some(28)]]);
            model.insert(key, plan.unwrap());
        }
        assert_eq!(model.plan_count(), PLANS_MAX);
    }
}
