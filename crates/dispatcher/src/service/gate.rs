//! The determinism gate: before a model is deployed, the dispatcher checks that an honest
//! replica's answers can be checked at all, by running the model itself.
//!
//! A canary or a spot check compares two computations of the same task. For a model whose
//! answers differ from run to run (an unseeded `RandomUniform`, say) every honest replica
//! would fail every check, so a client could get honest nodes slashed and excluded by
//! deploying one. The gate decides, once per model ([`ModelId`]) and before the deploy is
//! charged, whether the deployment is [`Verifiability::Verifiable`]:
//!
//! 1. The model check ([`check_model`]) estimates the memory the model needs from its graph.
//!    A model estimated above what a node holds (`DispatcherConfig::model_memory_bytes_max`)
//!    is refused: the deploy is answered `ModelRejected` with the estimate
//!    ([`GateError::OverMemory`], remembered like a verdict). Uploads are held to the same
//!    bound, so this catches models stored before the bound was lowered.
//! 2. The model check lists the random operators it uses. Any one of them, seeded or not,
//!    makes it [`Unverifiable::RandomOperator`] without running it (a seed repeats one session
//!    of one runtime, not two runtimes or two sessions).
//! 3. A model estimated above what the reference backends may hold
//!    ([`CanaryConfig::reference_memory_bytes_max`]) is [`Unverifiable::TooLarge`] without
//!    being loaded: it is deployed, exempt from canaries (and spot checks), and the client sees
//!    why in its `DeploymentInfo`.
//! 4. Otherwise the dispatcher generates inputs from the declared input specs, as canaries do
//!    ([`canary_inputs`], seeded by the model id, so the verdict is reproducible), and runs the
//!    model twice on each of its reference backends (the [`CanaryParts::references`]: tract,
//!    and ONNX Runtime where the dispatcher was given it) that loads it. Two runs that disagree
//!    by more than the validation tolerance ([`CanaryConfig::tolerance`], what canaries use)
//!    make it [`Unverifiable::Nondeterministic`]; two backends that disagree make it
//!    [`Unverifiable::BackendsDisagree`]. If no backend loads and runs it, it is
//!    [`Unverifiable::NotRunnable`].
//! 5. A dispatcher without reference backends decides from steps 1 and 2 alone.
//!
//! An unverifiable deployment is deployed all the same (the client sees the verdict in its
//! `DeploymentInfo`): the dispatcher sends it no canary, its leases sample no task for a
//! spot check (`validation_bps` 0), and a validation report about it is refused
//! (`BadRequest`), so no node is failed over it. The verdict is stored with the deployment
//! and survives a restart.
//!
//! # Limits
//! - Time: loading and the runs, on all backends together, get [`GateConfig::timeout_ms`];
//!   a model that takes longer is [`Unverifiable::TimedOut`] (deployed, not refused). A run
//!   cannot be interrupted: it finishes on tokio's blocking pool, and until it does it holds
//!   one of [`GateConfig::concurrent_max`] slots. A deploy that finds every slot taken is
//!   answered `Busy` (nothing charged, nothing remembered).
//! - Memory: a model above [`GateConfig::model_bytes_max`] is [`Unverifiable::TooLarge`]
//!   without being read (so neither is its memory estimated here: the upload check and the
//!   nodes' own estimate hold it), as is one whose declared inputs (symbolic dimensions 1) are
//!   above [`GateConfig::input_bytes_max`], and one whose estimate is above
//!   [`CanaryConfig::reference_memory_bytes_max`] (step 3). What a run allocates beyond the
//!   estimate is not bounded while it runs (tract has no memory limit; see
//!   `crat_backend::onnx_check::memory` for what the estimate cannot see), and at most
//!   `concurrent_max` models are gated at once.
//! - Verdicts are remembered per model, at most [`GateConfig::verdicts_cached_max`] (the
//!   cache is emptied when full), and reloaded from the active deployments at start.
//!
//! # What it does not catch
//! Nondeterminism the generated inputs do not reach (a branch taken only on natural inputs,
//! a batch size other than 1), and differences between the dispatcher's backends and a
//! node's (a CUDA kernel summing in another order) beyond the tolerance. Those still surface
//! as failed checks; spot checks need a majority of three, which honest nodes that all
//! disagree with each other never form.
//!
//! [`CanaryParts::references`]: super::CanaryParts::references
//! [`CanaryConfig::tolerance`]: super::CanaryConfig::tolerance
//! [`CanaryConfig::reference_memory_bytes_max`]: super::CanaryConfig::reference_memory_bytes_max

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crat_backend::onnx_check::{Bytes, check_model};
use crat_backend::{InferenceBackend, LoadedModel};
use crat_core::id::ModelId;
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::verify::{Tolerance, agree};
use crat_core::wire::{Unverifiable, Verifiability};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::canary::{InputsError, canary_inputs, run_named};

/// Hand-built models (a `RandomUniform` one) for the tests.
#[cfg(test)]
#[path = "../../../backend/tests/data/malicious/corpus.rs"]
mod corpus;

/// Settings of the determinism gate (see the `gate` module docs of the service).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateConfig {
    /// Largest model run; a larger one is unverifiable. Default 256 MiB.
    pub model_bytes_max: u64,
    /// Largest generated input, all inputs together; a model declaring more is
    /// unverifiable. Default 16 MiB.
    pub input_bytes_max: u64,
    /// Time for loading and running a model on every reference backend; past it the model is
    /// unverifiable. Keep it well below clients' request timeout (the SDK's
    /// `dispatcher_timeout_ms`, 30,000 by default): a deploy waits for the gate. Default
    /// 10,000 ms.
    pub timeout_ms: u64,
    /// Models gated at once (a run past its time limit still holds its slot until it ends);
    /// beyond, a deploy of a model not gated yet is answered `Busy`. Default 2.
    pub concurrent_max: usize,
    /// Verdicts remembered by model. Default 65,536.
    pub verdicts_cached_max: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            model_bytes_max: 256 << 20,
            input_bytes_max: 16 << 20,
            timeout_ms: 10_000,
            concurrent_max: 2,
            verdicts_cached_max: 65_536,
        }
    }
}

/// Why the gate gave no verdict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum GateError {
    /// Every slot is taken by a model being gated.
    #[error("{0} models are being checked for determinism, the most at once; try again shortly")]
    Busy(usize),
    /// The model's bytes could not be read from the blob store.
    #[error("reading the model: {0}")]
    Read(String),
    /// The model needs more memory than a node holds: the deploy is refused.
    #[error(transparent)]
    OverMemory(OverMemory),
}

/// A model estimated to need more memory than a node holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the model needs an estimated {} of memory, more than a node holds ({}): {detail}",
    Bytes(*estimate_bytes),
    Bytes(*max)
)]
pub(crate) struct OverMemory {
    /// The estimate.
    pub(crate) estimate_bytes: u64,
    /// What a node holds (`DispatcherConfig::model_memory_bytes_max`).
    pub(crate) max: u64,
    /// What the estimate is made of.
    pub(crate) detail: String,
}

/// The memory bounds the gate holds models to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemoryBounds {
    /// What a node holds of one model: above it, a deploy is refused.
    pub(crate) node_bytes_max: u64,
    /// What the reference backends may hold of one model: above it, the model is not run
    /// (and is [`Unverifiable::TooLarge`]).
    pub(crate) reference_bytes_max: u64,
}

/// What the gate decided about a model: a verdict, or a refusal.
type Decision = Result<Verifiability, OverMemory>;

/// The gate: reference backends, slots and remembered decisions.
pub(super) struct Gate {
    backends: Arc<[Arc<dyn InferenceBackend>]>,
    config: GateConfig,
    tolerance: Tolerance,
    bounds: MemoryBounds,
    slots: Arc<Semaphore>,
    verdicts: Mutex<HashMap<ModelId, Decision>>,
}

impl Gate {
    pub(super) fn new(
        backends: Vec<Arc<dyn InferenceBackend>>,
        config: GateConfig,
        tolerance: Tolerance,
        bounds: MemoryBounds,
    ) -> Self {
        Self {
            backends: backends.into(),
            slots: Arc::new(Semaphore::new(config.concurrent_max.max(1))),
            config,
            tolerance,
            bounds,
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers a verdict reached before (a stored deployment's).
    pub(super) fn remember(&self, model: ModelId, verdict: Verifiability) {
        self.remember_decision(model, Ok(verdict));
    }

    fn remember_decision(&self, model: ModelId, decision: Decision) {
        let mut verdicts = self.verdicts.lock();
        if verdicts.len() >= self.config.verdicts_cached_max.max(1) {
            verdicts.clear();
        }
        verdicts.insert(model, decision);
    }

    /// The verdict on `model` (of `model_bytes` bytes): remembered, or reached now from the
    /// bytes `read` returns (read only when needed) within the time limit;
    /// [`GateError::OverMemory`] for a model a node cannot hold (remembered too). (The service
    /// uses [`verdict_keeping`](Self::verdict_keeping).)
    #[cfg(test)]
    pub(super) async fn verdict(
        &self,
        model: ModelId,
        model_bytes: u64,
        read: impl Future<Output = Result<Vec<u8>, String>>,
    ) -> Result<Verifiability, GateError> {
        Ok(self.verdict_keeping(model, model_bytes, read).await?.0)
    }

    /// [`verdict`](Self::verdict), with the model as the first reference backend loaded it
    /// when the verdict was reached now and is verifiable: what a canary would load next (see
    /// `CanaryState::keep_reference`).
    pub(super) async fn verdict_keeping(
        &self,
        model: ModelId,
        model_bytes: u64,
        read: impl Future<Output = Result<Vec<u8>, String>>,
    ) -> Result<(Verifiability, Option<Arc<dyn LoadedModel>>), GateError> {
        if let Some(d) = self.verdicts.lock().get(&model) {
            return d.clone().map(|v| (v, None)).map_err(GateError::OverMemory);
        }
        if model_bytes > self.config.model_bytes_max {
            let v = Verifiability::Unverifiable(Unverifiable::TooLarge);
            self.remember(model, v);
            return Ok((v, None));
        }
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| GateError::Busy(self.config.concurrent_max.max(1)))?;
        let bytes = read.await.map_err(GateError::Read)?;
        let backends = self.backends.clone();
        let tolerance = self.tolerance;
        let bounds = self.bounds;
        let input_bytes_max = self.config.input_bytes_max;
        let seed = u64::from_le_bytes(model.as_bytes()[..8].try_into().unwrap_or([0; 8]));
        let job = tokio::task::spawn_blocking(move || {
            // Held until the runs really end, even past the time limit.
            let _slot = slot;
            judge_model(&bytes, &backends, seed, input_bytes_max, &tolerance, bounds)
        });
        let limit = Duration::from_millis(self.config.timeout_ms);
        let (decision, reference) = match tokio::time::timeout(limit, job).await {
            Ok(Ok(judged)) => judged,
            Ok(Err(e)) => {
                tracing::error!(%model, error = %e, "determinism gate task failed");
                (
                    Ok(Verifiability::Unverifiable(Unverifiable::NotRunnable)),
                    None,
                )
            }
            Err(_) => (
                Ok(Verifiability::Unverifiable(Unverifiable::TimedOut)),
                None,
            ),
        };
        if let Err(over) = &decision {
            tracing::warn!(%model, reason = %over, "deploy refused: over a node's memory");
        }
        self.remember_decision(model, decision.clone());
        decision
            .map(|v| (v, reference))
            .map_err(GateError::OverMemory)
    }
}

/// The gate's decision on a model's bytes, on the calling thread (see the module docs): its
/// memory estimate against `bounds`, random operators, then two runs on each backend of
/// inputs generated from `seed`. With a verifiable verdict, the model as the first backend
/// (the canaries' reference) loaded it, so that the first canary need not load it again.
pub(crate) fn judge_model(
    bytes: &[u8],
    backends: &[Arc<dyn InferenceBackend>],
    seed: u64,
    input_bytes_max: u64,
    tolerance: &Tolerance,
    bounds: MemoryBounds,
) -> (Decision, Option<Arc<dyn LoadedModel>>) {
    let decision = |d| (d, None);
    let unverifiable = |why| decision(Ok(Verifiability::Unverifiable(why)));
    let summary = match check_model(bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "determinism gate: model check failed");
            return unverifiable(Unverifiable::NotRunnable);
        }
    };
    if summary.memory.bytes > bounds.node_bytes_max {
        return decision(Err(OverMemory {
            estimate_bytes: summary.memory.bytes,
            max: bounds.node_bytes_max,
            detail: summary.memory.to_string(),
        }));
    }
    if summary.uses_random_ops() {
        tracing::info!(
            unseeded = ?summary.unseeded_random_ops,
            seeded = ?summary.seeded_random_ops,
            "determinism gate: random operators"
        );
        return unverifiable(Unverifiable::RandomOperator);
    }
    if backends.is_empty() {
        return decision(Ok(Verifiability::Verifiable));
    }
    if summary.memory.bytes > bounds.reference_bytes_max {
        tracing::warn!(
            estimate = %summary.memory,
            reference_memory_bytes_max = bounds.reference_bytes_max,
            "determinism gate: over the reference backends' memory, not run; exempt from canaries"
        );
        return unverifiable(Unverifiable::TooLarge);
    }
    let inputs = match canary_inputs(&summary.info, seed, input_bytes_max) {
        Ok(i) => i,
        Err(InputsError::TooLarge { .. }) => return unverifiable(Unverifiable::TooLarge),
        Err(e) => {
            tracing::debug!(error = %e, "determinism gate: no inputs");
            return unverifiable(Unverifiable::NotRunnable);
        }
    };
    let tensors: Vec<Tensor> = inputs.into_iter().map(|t| t.tensor).collect();
    let mut runs = Vec::with_capacity(backends.len());
    let mut reference = None;
    for (i, backend) in backends.iter().enumerate() {
        let ran = backend.load(bytes).and_then(|model| {
            let first = run_named(&*model, &tensors)?;
            let second = run_named(&*model, &tensors)?;
            if i == 0 {
                reference = Some(model);
            }
            Ok([first, second])
        });
        runs.push(
            ran.map_err(|e| {
                tracing::debug!(backend = backend.name(), error = %e, "determinism gate: not run");
            })
            .ok(),
        );
    }
    let verdict = judge_runs(&runs, tolerance);
    let reference = reference.filter(|_| verdict == Verifiability::Verifiable);
    (Ok(verdict), reference)
}

/// The verdict on what each backend made of the same inputs: `None` where it did not load or
/// run the model, else its two runs' outputs.
pub(crate) fn judge_runs(
    runs: &[Option<[Vec<NamedTensor>; 2]>],
    tolerance: &Tolerance,
) -> Verifiability {
    let mut reference: Option<&[NamedTensor]> = None;
    for [first, second] in runs.iter().flatten() {
        if let Err(d) = agree(second, first, tolerance) {
            tracing::info!(disagreement = %d, "determinism gate: two runs disagree");
            return Verifiability::Unverifiable(Unverifiable::Nondeterministic);
        }
        match reference {
            None => reference = Some(first),
            Some(r) => {
                if let Err(d) = agree(first, r, tolerance) {
                    tracing::info!(disagreement = %d, "determinism gate: backends disagree");
                    return Verifiability::Unverifiable(Unverifiable::BackendsDisagree);
                }
            }
        }
    }
    match reference {
        Some(_) => Verifiability::Verifiable,
        None => Verifiability::Unverifiable(Unverifiable::NotRunnable),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use crat_backend::{BackendError, ModelInfo};

    use super::*;

    use super::corpus::random_uniform as random_model;

    const TINY: &[u8] = include_bytes!("../../../backend/models/tiny_cnn.onnx");

    fn out(values: &[f32]) -> Vec<NamedTensor> {
        vec![NamedTensor::new(
            "y",
            Tensor::from_slice(&[values.len() as u64], values).unwrap(),
        )]
    }

    fn v(why: Unverifiable) -> Verifiability {
        Verifiability::Unverifiable(why)
    }

    #[test]
    fn runs_that_agree_are_verifiable_and_others_are_not() {
        let tol = Tolerance::default();
        let a = out(&[1.0, 2.0]);
        let near = out(&[1.0, 2.000_01]);
        let far = out(&[1.0, 2.5]);
        let same = |x: &Vec<NamedTensor>, y: &Vec<NamedTensor>| Some([x.clone(), y.clone()]);
        assert_eq!(
            judge_runs(&[same(&a, &near)], &tol),
            Verifiability::Verifiable
        );
        assert_eq!(
            judge_runs(&[same(&a, &far)], &tol),
            v(Unverifiable::Nondeterministic)
        );
        // Two backends, each consistent, not with each other.
        assert_eq!(
            judge_runs(&[same(&a, &a), same(&far, &far)], &tol),
            v(Unverifiable::BackendsDisagree)
        );
        // A backend that did not run the model is left out; none: not runnable.
        assert_eq!(
            judge_runs(&[None, same(&a, &a)], &tol),
            Verifiability::Verifiable
        );
        assert_eq!(judge_runs(&[None], &tol), v(Unverifiable::NotRunnable));
        assert_eq!(judge_runs(&[], &tol), v(Unverifiable::NotRunnable));
    }

    /// A backend that counts loads and answers from a closure.
    struct Fake<F> {
        loads: AtomicU32,
        answer: Arc<F>,
    }

    struct FakeModel<F> {
        info: ModelInfo,
        answer: Arc<F>,
    }

    impl<F: Fn() -> f32 + Send + Sync + 'static> InferenceBackend for Fake<F> {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn execution_provider(&self) -> &str {
            "cpu"
        }
        fn load(&self, model: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError> {
            self.loads.fetch_add(1, Ordering::Relaxed);
            Ok(Arc::new(FakeModel {
                info: check_model(model)?.info,
                answer: self.answer.clone(),
            }))
        }
    }

    impl<F: Fn() -> f32 + Send + Sync + 'static> LoadedModel for FakeModel<F> {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn run(&self, _: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
            Ok(vec![Tensor::from_slice(&[1], &[(self.answer)()]).unwrap()])
        }
        fn memory_bytes(&self) -> u64 {
            0
        }
    }

    fn fake(answer: impl Fn() -> f32 + Send + Sync + 'static) -> Arc<Fake<impl Fn() -> f32>> {
        Arc::new(Fake {
            loads: AtomicU32::new(0),
            answer: Arc::new(answer),
        })
    }

    fn tract() -> Arc<dyn InferenceBackend> {
        Arc::new(crat_backend::tract::TractBackend::new())
    }

    /// Bounds far above any model of these tests.
    const ROOMY: MemoryBounds = MemoryBounds {
        node_bytes_max: 1 << 40,
        reference_bytes_max: 1 << 40,
    };

    fn judge(bytes: &[u8], backends: &[Arc<dyn InferenceBackend>]) -> Verifiability {
        judge_model(bytes, backends, 7, 1 << 20, &Tolerance::default(), ROOMY)
            .0
            .unwrap()
    }

    #[test]
    fn the_tiny_cnn_is_verifiable_on_tract() {
        assert_eq!(judge(TINY, &[tract()]), Verifiability::Verifiable);
        assert_eq!(judge(TINY, &[tract(), tract()]), Verifiability::Verifiable);
    }

    /// Tract and ONNX Runtime agree on the tiny CNN within the tolerance (skipped where the
    /// ONNX Runtime library is not found: `ORT_DYLIB_PATH`).
    #[cfg(feature = "ort")]
    #[test]
    fn the_tiny_cnn_is_verifiable_on_tract_and_onnx_runtime() {
        use crat_backend::ort::{OrtBackend, OrtConfig};
        let ort = match OrtBackend::new(&OrtConfig::default()) {
            Ok(ort) => ort,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let ort: Arc<dyn InferenceBackend> = Arc::new(ort);
        assert_eq!(judge(TINY, &[tract(), ort]), Verifiability::Verifiable);
    }

    #[test]
    fn a_random_operator_is_unverifiable_without_running() {
        let counting = fake(|| 1.0);
        let backends: Vec<Arc<dyn InferenceBackend>> = vec![counting.clone()];
        for seed in [None, Some(1.0)] {
            let bytes = random_model(seed);
            assert_eq!(judge(&bytes, &backends), v(Unverifiable::RandomOperator));
            // Also without any backend: the model check alone decides.
            assert_eq!(judge(&bytes, &[]), v(Unverifiable::RandomOperator));
        }
        assert_eq!(counting.loads.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn tract_really_draws_differently_each_run() {
        // What the gate would see if the model check let an unseeded one through.
        let model = tract().load(&random_model(None)).unwrap();
        let x = Tensor::from_slice(&[1, 4], &[0f32; 4]).unwrap();
        let a = model.run(std::slice::from_ref(&x)).unwrap();
        let b = model.run(&[x]).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn runs_that_differ_are_unverifiable() {
        let n = AtomicU32::new(0);
        let counter = fake(move || n.fetch_add(1, Ordering::Relaxed) as f32);
        assert_eq!(judge(TINY, &[counter]), v(Unverifiable::Nondeterministic));
        // Each backend consistent, the two apart.
        let backends: Vec<Arc<dyn InferenceBackend>> = vec![fake(|| 1.0), fake(|| 2.0)];
        assert_eq!(judge(TINY, &backends), v(Unverifiable::BackendsDisagree));
    }

    /// The model the first backend (the canaries' reference) loaded comes back with a
    /// verifiable verdict, for the canaries to use, and only then.
    #[test]
    fn a_verifiable_verdict_hands_over_the_reference_model() {
        let judge_keeping = |backends: &[Arc<dyn InferenceBackend>]| {
            judge_model(TINY, backends, 7, 1 << 20, &Tolerance::default(), ROOMY)
        };
        let first = fake(|| 1.0);
        let backends: Vec<Arc<dyn InferenceBackend>> = vec![first.clone(), fake(|| 1.0)];
        let (verdict, reference) = judge_keeping(&backends);
        assert_eq!(verdict, Ok(Verifiability::Verifiable));
        let reference = reference.expect("the reference model of a verifiable verdict");
        assert_eq!(
            reference.run(&[]).unwrap()[0].to_vec::<f32>().unwrap(),
            vec![1.0]
        );
        assert_eq!(first.loads.load(Ordering::Relaxed), 1);
        // Backends that disagree: nothing to keep.
        let backends: Vec<Arc<dyn InferenceBackend>> = vec![fake(|| 1.0), fake(|| 2.0)];
        let (verdict, reference) = judge_keeping(&backends);
        assert_eq!(verdict, Ok(v(Unverifiable::BackendsDisagree)));
        assert!(reference.is_none());
    }

    #[test]
    fn limits_and_unrunnable_models() {
        // Inputs above the limit: the tiny CNN takes 1x1x28x28 floats (3,136 bytes).
        assert_eq!(
            judge_model(TINY, &[tract()], 7, 3_000, &Tolerance::default(), ROOMY).0,
            Ok(v(Unverifiable::TooLarge))
        );
        // Not a model the check accepts.
        assert_eq!(judge(b"junk", &[tract()]), v(Unverifiable::NotRunnable));
        // No backend: the model check alone.
        assert_eq!(judge(TINY, &[]), Verifiability::Verifiable);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_models_time_out_and_verdicts_are_remembered() {
        // Two runs of 1 s each: the slot stays taken well after the 100 ms limit.
        let slow: Arc<dyn InferenceBackend> = fake(|| {
            std::thread::sleep(Duration::from_millis(1_000));
            1.0
        });
        let config = GateConfig {
            timeout_ms: 100,
            concurrent_max: 1,
            ..GateConfig::default()
        };
        let gate = Gate::new(vec![slow], config, Tolerance::default(), ROOMY);
        let tiny = ModelId::of_bytes(TINY);
        let read = || async { Ok(TINY.to_vec()) };
        assert_eq!(
            gate.verdict(tiny, TINY.len() as u64, read()).await.unwrap(),
            v(Unverifiable::TimedOut)
        );
        // The run goes on and holds the only slot: another model must wait its turn.
        let other = ModelId::of_bytes(b"other");
        assert!(matches!(
            gate.verdict(other, 10, read()).await,
            Err(GateError::Busy(1))
        ));
        // The first model's verdict is remembered (nothing is read again).
        let unread = async { Err::<Vec<u8>, _>("read again".to_owned()) };
        assert_eq!(
            gate.verdict(tiny, TINY.len() as u64, unread).await.unwrap(),
            v(Unverifiable::TimedOut)
        );
        // Too large: decided without reading.
        let big = ModelId::of_bytes(b"big");
        let unread = async { Err::<Vec<u8>, _>("read".to_owned()) };
        assert_eq!(
            gate.verdict(big, 1 << 40, unread).await.unwrap(),
            v(Unverifiable::TooLarge)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_bounds_refuse_or_exempt_without_loading() {
        // The tiny CNN is estimated at about 23 KiB.
        let estimate = check_model(TINY).unwrap().memory.bytes;
        let counting = fake(|| 1.0);
        let backends: Vec<Arc<dyn InferenceBackend>> = vec![counting.clone()];
        let judge_with = |node_bytes_max, reference_bytes_max| {
            let bounds = MemoryBounds {
                node_bytes_max,
                reference_bytes_max,
            };
            judge_model(TINY, &backends, 7, 1 << 20, &Tolerance::default(), bounds).0
        };
        // Over what the references may hold: unverifiable (exempt from canaries), not run.
        assert_eq!(
            judge_with(1 << 30, estimate - 1),
            Ok(v(Unverifiable::TooLarge))
        );
        // Over what a node holds: refused, with the estimate.
        let over = judge_with(estimate - 1, 1 << 30).unwrap_err();
        assert_eq!((over.estimate_bytes, over.max), (estimate, estimate - 1));
        assert!(
            over.to_string().contains("more than a node holds"),
            "{over}"
        );
        assert_eq!(counting.loads.load(Ordering::Relaxed), 0);
        // Within both: run.
        assert_eq!(
            judge_with(estimate, estimate),
            Ok(Verifiability::Verifiable)
        );
        assert_eq!(counting.loads.load(Ordering::Relaxed), 1);
        // The gate remembers a refusal like a verdict: the model is not read again.
        let bounds = MemoryBounds {
            node_bytes_max: estimate - 1,
            reference_bytes_max: 1 << 30,
        };
        let gate = Gate::new(
            backends.clone(),
            GateConfig::default(),
            Tolerance::default(),
            bounds,
        );
        let tiny = ModelId::of_bytes(TINY);
        let read = async { Ok(TINY.to_vec()) };
        assert!(matches!(
            gate.verdict(tiny, TINY.len() as u64, read).await,
            Err(GateError::OverMemory(o)) if o.estimate_bytes == estimate
        ));
        let unread = async { Err::<Vec<u8>, _>("read again".to_owned()) };
        assert!(matches!(
            gate.verdict(tiny, TINY.len() as u64, unread).await,
            Err(GateError::OverMemory(_))
        ));
    }
}
