//! `connect`, `Client`, `Deployment`, the `infer_many` iterator, and the small value classes
//! (plans, quote, upload progress, key and deployment descriptions).

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use crat_core::id::{DeploymentId, ModelId, NodeId, SdkKey};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerInstancePlan, PerRequestPlan, UpdateFrequency};
use crat_core::tensor::NamedTensor;
use crat_core::wire::{self, DeploymentState, KeyStatus, TensorSignature};
use crat_sdk::Error;
use crat_transport::quic::QuicTransport;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyIterator};

use crate::errors::to_py;
use crate::tensors::{dtype_name, to_dict, to_named};
use crate::{runtime, wait, wait_on};

/// Most tasks one `infer_many` keeps in flight.
pub(crate) const CONCURRENCY_MAX: usize = 1_024;
/// Longest `wait_ready` timeout, in seconds (a day).
const WAIT_READY_S_MAX: f64 = 86_400.0;

/// Parses the arguments of `connect` and connects (with the GIL released).
pub(crate) fn connect_parsed(
    py: Python<'_>,
    addr: SocketAddr,
    dispatcher_id: NodeId,
    key: SdkKey,
) -> PyResult<Client> {
    let inner = wait(py, crat_sdk::connect(addr, dispatcher_id, key))?;
    Ok(Client { inner })
}

/// Connects to the dispatcher at `addr` (`"host:port"`), which must prove the identity
/// `dispatcher_id` (64 hex digits), with the SDK key `key` (`"sk_…"`).
#[pyfunction]
pub(crate) fn connect(
    py: Python<'_>,
    addr: &str,
    dispatcher_id: &str,
    key: &str,
) -> PyResult<Client> {
    let dispatcher_id: NodeId = dispatcher_id.parse().map_err(|e| {
        PyValueError::new_err(format!("dispatcher_id: {e} (expected 64 hex digits)"))
    })?;
    // The key is a secret: the message never repeats it.
    let key: SdkKey = key
        .parse()
        .map_err(|_| PyValueError::new_err("key: not an SDK key (sk_<32 hex>_<64 hex>)"))?;
    let addr_text = addr.to_owned();
    let resolved = py
        .detach(move || addr_text.to_socket_addrs().map(|mut a| a.next()))
        .map_err(|e| PyValueError::new_err(format!("addr {addr:?}: {e}")))?;
    let addr = resolved
        .ok_or_else(|| PyValueError::new_err(format!("addr {addr:?} resolves to no address")))?;
    connect_parsed(py, addr, dispatcher_id, key)
}

fn parse_model(model: &str) -> PyResult<ModelId> {
    model
        .parse()
        .map_err(|e| PyValueError::new_err(format!("model: {e} (expected 64 hex digits)")))
}

/// A connection to the network through one dispatcher, authenticated by an SDK key.
#[pyclass(frozen, module = "cryptorat")]
pub(crate) struct Client {
    inner: crat_sdk::Client<QuicTransport>,
}

/// A plan argument: one of the two plan classes.
fn plan_of(plan: &Bound<'_, PyAny>) -> PyResult<DeployPlan> {
    if let Ok(p) = plan.cast::<PerRequest>() {
        return Ok(p.get().plan());
    }
    if let Ok(p) = plan.cast::<PerInstance>() {
        return Ok(p.get().plan());
    }
    Err(PyTypeError::new_err(
        "plan must be a cryptorat.PerRequest or a cryptorat.PerInstance",
    ))
}

#[pymethods]
impl Client {
    /// Uploads a model and returns its id (the blake3 hash of its bytes, 64 hex digits).
    ///
    /// `model` is the ONNX bytes (`bytes`, `bytearray`) or a path (`str`, `os.PathLike`).
    /// `progress`, if given, is called with an `UploadProgress` when the upload begins and
    /// after every acknowledged chunk; if it raises, the upload stops before its next chunk
    /// (unfinished: a later upload resumes it) and the exception propagates.
    #[pyo3(signature = (model, progress = None))]
    fn upload_model(
        &self,
        py: Python<'_>,
        model: &Bound<'_, PyAny>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let bytes: Vec<u8> = if let Ok(b) = model.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(b) = model.cast::<PyByteArray>() {
            b.to_vec()
        } else if let Ok(path) = model.extract::<PathBuf>() {
            py.detach(|| std::fs::read(&path))?
        } else {
            return Err(PyTypeError::new_err(
                "model must be bytes, a bytearray or a path",
            ));
        };
        let client = self.inner.clone();
        let mut failure: Option<PyErr> = None;
        // A callback that raises stops the upload before its next chunk goes out.
        let report = |p: crat_sdk::UploadProgress| {
            let Some(callback) = &progress else {
                return ControlFlow::Continue(());
            };
            match Python::attach(|py| callback.call1(py, (UploadProgress::from(p),))) {
                Ok(_) => ControlFlow::Continue(()),
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            }
        };
        let uploaded = wait(py, client.upload_model_with(&bytes, report))?;
        if let Some(e) = failure {
            return Err(e);
        }
        uploaded
            .map(|id| id.to_string())
            .ok_or_else(|| PyRuntimeError::new_err("the upload stopped without an error"))
    }

    /// What deploying `model` under `plan` (a `PerRequest` or `PerInstance`) would cost.
    fn quote(&self, py: Python<'_>, model: &str, plan: &Bound<'_, PyAny>) -> PyResult<Quote> {
        let (model, plan) = (parse_model(model)?, plan_of(plan)?);
        let client = self.inner.clone();
        let q = wait(py, async move { client.quote(model, plan).await })?;
        Ok(Quote::from(q))
    }

    /// Deploys a stored model under `plan`; returns once the dispatcher accepted it (and took
    /// the up-front credits). `Deployment.wait_ready` waits for warm replicas.
    fn deploy(&self, py: Python<'_>, model: &str, plan: &Bound<'_, PyAny>) -> PyResult<Deployment> {
        let (model, plan) = (parse_model(model)?, plan_of(plan)?);
        let client = self.inner.clone();
        let inner = wait(py, async move { client.deploy(model, plan).await })?;
        Ok(Deployment { inner })
    }

    /// A handle on an existing deployment, by id (no call is made).
    fn deployment(&self, id: &str) -> PyResult<Deployment> {
        let id: DeploymentId = id
            .parse()
            .map_err(|e| PyValueError::new_err(format!("deployment id: {e}")))?;
        Ok(Deployment {
            inner: self.inner.deployment(id),
        })
    }

    /// Makes a model this account uploaded public (any account may deploy it), or private.
    fn set_model_public(&self, py: Python<'_>, model: &str, public: bool) -> PyResult<()> {
        let model = parse_model(model)?;
        let client = self.inner.clone();
        wait(
            py,
            async move { client.set_model_public(model, public).await },
        )
    }

    /// Credits left on the account.
    fn balance(&self, py: Python<'_>) -> PyResult<u64> {
        let client = self.inner.clone();
        let c = wait(py, async move { client.balance().await })?;
        Ok(c.get())
    }

    /// The status of the key this client uses.
    fn key_status(&self, py: Python<'_>) -> PyResult<KeyInfo> {
        let client = self.inner.clone();
        let k = wait(py, async move { client.key_status().await })?;
        Ok(KeyInfo::from(k))
    }

    /// The id of the SDK key in use (`key_…`; the secret is never shown).
    #[getter]
    fn key_id(&self) -> String {
        self.inner.key_id().to_string()
    }

    /// Task counters summed over every deployment used through this client.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.inner.stats())
    }

    fn __repr__(&self) -> String {
        format!("Client(key_id={:?})", self.inner.key_id().to_string())
    }
}

fn stats_dict(py: Python<'_>, s: crat_sdk::Stats) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("tasks", s.tasks)?;
    d.set_item("completed", s.completed)?;
    d.set_item("failed", s.failed)?;
    d.set_item("failovers", s.failovers)?;
    d.set_item("lease_renewals", s.lease_renewals)?;
    d.set_item("ticket_rejections", s.ticket_rejections)?;
    d.set_item("validations", s.validations)?;
    d.set_item("disagreements", s.disagreements)?;
    d.set_item("validations_inconclusive", s.validations_inconclusive)?;
    d.set_item("reports_dropped", s.reports_dropped)?;
    d.set_item("receipts_invalid", s.receipts_invalid)?;
    Ok(d)
}

/// A deployed model: tasks go straight to the nodes serving it.
#[pyclass(frozen, module = "cryptorat")]
pub(crate) struct Deployment {
    pub(crate) inner: crat_sdk::Deployment<QuicTransport>,
}

#[pymethods]
impl Deployment {
    /// The deployment's id.
    #[getter]
    fn id(&self) -> String {
        self.inner.id().to_string()
    }

    /// The deployment as the dispatcher describes it now.
    fn info(&self, py: Python<'_>) -> PyResult<DeploymentInfo> {
        let d = self.inner.clone();
        let info = wait(py, async move { d.info().await })?;
        Ok(DeploymentInfo::from(info))
    }

    /// Waits until the deployment is ready (at most `timeout` seconds) and returns its
    /// description. Raises `CratTimeoutError` after `timeout`, `StoppedError` if it stops,
    /// `ModelRejectedError` if no node could load the model.
    #[pyo3(signature = (timeout = 120.0))]
    fn wait_ready(&self, py: Python<'_>, timeout: f64) -> PyResult<DeploymentInfo> {
        let timeout = wait_timeout(timeout)?;
        let d = self.inner.clone();
        let info = wait(py, async move { d.wait_ready(timeout).await })?;
        Ok(DeploymentInfo::from(info))
    }

    /// Replaces the deployment's model by `model` (a stored model id, 64 hex digits) whose
    /// inputs and outputs can replace the deployed one's. Each replica loads it and switches
    /// once it is warm, serving the old model until then. Raises `UpdateTooFrequentError`
    /// beyond the plan's update frequency, `ModelRejectedError` for a model that cannot
    /// replace the deployed one. Returns the deployment as described after the update;
    /// `wait_updated` waits until every replica has switched.
    fn update_model(&self, py: Python<'_>, model: &str) -> PyResult<DeploymentInfo> {
        let model = parse_model(model)?;
        let d = self.inner.clone();
        let info = wait(py, async move { d.update_model(model).await })?;
        Ok(DeploymentInfo::from(info))
    }

    /// Waits until the deployment is ready with every replica serving its current model (at
    /// most `timeout` seconds), after `update_model`.
    #[pyo3(signature = (timeout = 120.0))]
    fn wait_updated(&self, py: Python<'_>, timeout: f64) -> PyResult<DeploymentInfo> {
        let timeout = wait_timeout(timeout)?;
        let d = self.inner.clone();
        let info = wait(py, async move { d.wait_updated(timeout).await })?;
        Ok(DeploymentInfo::from(info))
    }

    /// Runs one task: `inputs` maps input names to numpy arrays; returns the outputs by name.
    fn infer<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let inputs = to_named(py, inputs)?;
        let d = self.inner.clone();
        let outputs = wait(py, async move { d.infer(inputs).await })?;
        to_dict(py, outputs)
    }

    /// Runs a task per element of `inputs` (an iterable of input mappings), at most
    /// `concurrency` at once, and returns an iterator of their outputs in input order.
    ///
    /// Inputs are taken from `inputs` only as results are consumed (at most `concurrency`
    /// ahead). The first failure is raised in its place and ends the iteration (tasks still
    /// in flight are cancelled); every result before it has been yielded.
    #[pyo3(signature = (inputs, concurrency = 8))]
    fn infer_many(&self, inputs: &Bound<'_, PyAny>, concurrency: usize) -> PyResult<InferMany> {
        if !(1..=CONCURRENCY_MAX).contains(&concurrency) {
            return Err(PyValueError::new_err(format!(
                "concurrency must be between 1 and {CONCURRENCY_MAX}"
            )));
        }
        let iter = PyIterator::from_object(inputs)?;
        Ok(InferMany {
            deployment: self.inner.clone(),
            inputs: Some(iter.unbind()),
            pending: VecDeque::with_capacity(concurrency),
            concurrency,
        })
    }

    /// Stops the deployment: no new leases; its replicas are released.
    fn undeploy(&self, py: Python<'_>) -> PyResult<()> {
        let d = self.inner.clone();
        wait(py, async move { d.undeploy().await })
    }

    /// Counters of the tasks run through this handle.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.inner.stats())
    }

    fn __repr__(&self) -> String {
        format!("Deployment(id={:?})", self.inner.id().to_string())
    }
}

/// One task of an `infer_many`, in input order.
enum Pending {
    /// Running on the runtime.
    Task(tokio::task::JoinHandle<Result<Vec<NamedTensor>, Error>>),
    /// Its input could not be read or converted: raised when its turn comes.
    Failed(PyErr),
}

/// The iterator `Deployment.infer_many` returns.
#[pyclass(module = "cryptorat")]
pub(crate) struct InferMany {
    deployment: crat_sdk::Deployment<QuicTransport>,
    /// `None` once exhausted, failed or closed.
    inputs: Option<Py<PyIterator>>,
    /// In input order; at most `concurrency` long.
    pending: VecDeque<Pending>,
    concurrency: usize,
}

impl InferMany {
    /// Starts tasks until `concurrency` are pending or the inputs are exhausted.
    fn fill(&mut self, py: Python<'_>) -> PyResult<()> {
        while self.pending.len() < self.concurrency {
            let Some(inputs) = &self.inputs else { break };
            let next = inputs.bind(py).clone().next();
            let item = match next {
                None => {
                    self.inputs = None;
                    break;
                }
                Some(Err(e)) => {
                    self.inputs = None;
                    Pending::Failed(e)
                }
                Some(Ok(x)) => match to_named(py, &x) {
                    Ok(tensors) => {
                        let d = self.deployment.clone();
                        Pending::Task(runtime()?.spawn(async move { d.infer(tensors).await }))
                    }
                    Err(e) => Pending::Failed(e),
                },
            };
            self.pending.push_back(item);
        }
        Ok(())
    }

    /// Ends the iteration: no more inputs are read, tasks in flight are cancelled.
    fn finish(&mut self) {
        self.inputs = None;
        for p in self.pending.drain(..) {
            if let Pending::Task(handle) = p {
                handle.abort();
            }
        }
    }
}

impl Drop for InferMany {
    fn drop(&mut self) {
        self.finish();
    }
}

#[pymethods]
impl InferMany {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.fill(py)?;
        let Some(next) = self.pending.pop_front() else {
            return Ok(None);
        };
        let handle = match next {
            Pending::Task(handle) => handle,
            Pending::Failed(e) => {
                self.finish();
                return Err(e);
            }
        };
        let abort = handle.abort_handle();
        let joined = match wait_on(py, runtime()?, handle) {
            Ok(joined) => joined,
            Err(interrupted) => {
                abort.abort();
                self.finish();
                return Err(interrupted);
            }
        };
        match joined {
            Ok(Ok(outputs)) => {
                // Keep the window full while the caller works on this result.
                self.fill(py)?;
                to_dict(py, outputs).map(Some)
            }
            Ok(Err(e)) => {
                self.finish();
                Err(to_py(e))
            }
            Err(e) => {
                self.finish();
                Err(PyRuntimeError::new_err(format!("task did not finish: {e}")))
            }
        }
    }

    /// Stops early: no more inputs are read and tasks in flight are cancelled.
    fn close(&mut self) {
        self.finish();
    }

    /// Tasks started and not yet yielded.
    #[getter]
    fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// Pay per request from a credit allowance set aside at deploy time.
#[pyclass(frozen, eq, module = "cryptorat")]
#[derive(Clone, PartialEq)]
pub(crate) struct PerRequest {
    /// Largest input of one request, in bytes.
    #[pyo3(get)]
    max_input_bytes: u64,
    /// Credits set aside for the deployment's requests.
    #[pyo3(get)]
    credit_allowance: u64,
}

impl PerRequest {
    fn plan(&self) -> DeployPlan {
        DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: self.max_input_bytes,
            credit_allowance: Credits::new(self.credit_allowance),
        })
    }
}

#[pymethods]
impl PerRequest {
    #[new]
    #[pyo3(signature = (*, max_input_bytes, credit_allowance))]
    fn new(max_input_bytes: u64, credit_allowance: u64) -> Self {
        Self {
            max_input_bytes,
            credit_allowance,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "PerRequest(max_input_bytes={}, credit_allowance={})",
            self.max_input_bytes, self.credit_allowance
        )
    }
}

/// Pay per instance: capacity reserved for the deployment key's lifetime.
#[pyclass(frozen, eq, module = "cryptorat")]
#[derive(Clone, PartialEq)]
pub(crate) struct PerInstance {
    /// Requests per second the network guarantees.
    #[pyo3(get)]
    guaranteed_rps: u32,
    /// Largest input of one request, in bytes.
    #[pyo3(get)]
    max_input_bytes: u64,
    /// How often the model will be updated: "never", "monthly", "weekly", "daily", "hourly".
    #[pyo3(get)]
    update_frequency: String,
    /// How long the reservation lives, in seconds.
    #[pyo3(get)]
    key_lifetime_s: u64,
}

impl PerInstance {
    fn plan(&self) -> DeployPlan {
        DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: self.guaranteed_rps,
            max_input_bytes: self.max_input_bytes,
            // Checked in `new`.
            update_frequency: UpdateFrequency::from_name(&self.update_frequency)
                .unwrap_or(UpdateFrequency::Never),
            key_lifetime_s: self.key_lifetime_s,
        })
    }
}

#[pymethods]
impl PerInstance {
    #[new]
    #[pyo3(signature = (*, guaranteed_rps, max_input_bytes, key_lifetime_s, update_frequency = "never"))]
    fn new(
        guaranteed_rps: u32,
        max_input_bytes: u64,
        key_lifetime_s: u64,
        update_frequency: &str,
    ) -> PyResult<Self> {
        if UpdateFrequency::from_name(update_frequency).is_none() {
            return Err(PyValueError::new_err(format!(
                "update_frequency {update_frequency:?} is not one of never, monthly, weekly, daily, hourly"
            )));
        }
        Ok(Self {
            guaranteed_rps,
            max_input_bytes,
            update_frequency: update_frequency.to_owned(),
            key_lifetime_s,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "PerInstance(guaranteed_rps={}, max_input_bytes={}, key_lifetime_s={}, update_frequency={:?})",
            self.guaranteed_rps, self.max_input_bytes, self.key_lifetime_s, self.update_frequency
        )
    }
}

/// What a deployment would cost, in credits.
#[pyclass(frozen, module = "cryptorat")]
pub(crate) struct Quote {
    /// Credits taken when deploying (the instance price, or the allowance).
    #[pyo3(get)]
    upfront: u64,
    /// Cost of one request at the plan's largest input (0 for per-instance plans).
    #[pyo3(get)]
    per_request_max: u64,
    /// Per-instance plans: the reserved-capacity part of `upfront`.
    #[pyo3(get)]
    capacity: u64,
    /// Per-instance plans: the model-update part of `upfront`.
    #[pyo3(get)]
    updates: u64,
    /// Micro-USD per credit at the time of the quote.
    #[pyo3(get)]
    credit_price_usd_micro: u64,
}

impl From<crat_core::pricing::PriceQuote> for Quote {
    fn from(q: crat_core::pricing::PriceQuote) -> Self {
        Self {
            upfront: q.upfront.get(),
            per_request_max: q.per_request_max.get(),
            capacity: q.capacity.get(),
            updates: q.updates.get(),
            credit_price_usd_micro: q.credit_price_usd_micro.get(),
        }
    }
}

#[pymethods]
impl Quote {
    fn __repr__(&self) -> String {
        format!(
            "Quote(upfront={}, per_request_max={}, capacity={}, updates={}, credit_price_usd_micro={})",
            self.upfront,
            self.per_request_max,
            self.capacity,
            self.updates,
            self.credit_price_usd_micro
        )
    }
}

/// How far an upload has come (passed to `upload_model`'s `progress`).
#[pyclass(frozen, module = "cryptorat")]
pub(crate) struct UploadProgress {
    /// The model being uploaded (64 hex digits).
    #[pyo3(get)]
    model: String,
    /// Bytes the dispatcher has acknowledged.
    #[pyo3(get)]
    acked_bytes: u64,
    /// The model's size.
    #[pyo3(get)]
    total_bytes: u64,
    /// Bytes the dispatcher already had when this upload began (a resumed upload).
    #[pyo3(get)]
    resumed_from_bytes: u64,
    /// True when the dispatcher already stored the model and nothing was sent.
    #[pyo3(get)]
    already_stored: bool,
}

impl From<crat_sdk::UploadProgress> for UploadProgress {
    fn from(p: crat_sdk::UploadProgress) -> Self {
        Self {
            model: p.model.to_string(),
            acked_bytes: p.acked_bytes,
            total_bytes: p.total_bytes,
            resumed_from_bytes: p.resumed_from_bytes,
            already_stored: p.already_stored,
        }
    }
}

#[pymethods]
impl UploadProgress {
    fn __repr__(&self) -> String {
        format!(
            "UploadProgress(acked_bytes={}, total_bytes={}, resumed_from_bytes={}, already_stored={})",
            self.acked_bytes,
            self.total_bytes,
            self.resumed_from_bytes,
            if self.already_stored { "True" } else { "False" }
        )
    }
}

/// An SDK key as the dispatcher describes it.
#[pyclass(frozen, module = "cryptorat")]
pub(crate) struct KeyInfo {
    /// Its id (`key_…`).
    #[pyo3(get)]
    id: String,
    /// "active", "expired" or "revoked".
    #[pyo3(get)]
    status: &'static str,
    /// When it was created (Unix seconds).
    #[pyo3(get)]
    created_at_s: u64,
    /// When it expires (Unix seconds), `None` if never.
    #[pyo3(get)]
    expires_at_s: Option<u64>,
}

impl From<wire::KeyInfo> for KeyInfo {
    fn from(k: wire::KeyInfo) -> Self {
        Self {
            id: k.id.to_string(),
            status: match k.status {
                KeyStatus::Active => "active",
                KeyStatus::Expired => "expired",
                KeyStatus::Revoked => "revoked",
            },
            created_at_s: k.created_at_s,
            expires_at_s: k.expires_at_s,
        }
    }
}

#[pymethods]
impl KeyInfo {
    fn __repr__(&self) -> String {
        format!(
            "KeyInfo(id={:?}, status={:?}, created_at_s={}, expires_at_s={:?})",
            self.id, self.status, self.created_at_s, self.expires_at_s
        )
    }
}

/// One declared input or output of a model.
#[pyclass(frozen, module = "cryptorat")]
#[derive(Clone)]
pub(crate) struct TensorSpec {
    /// Its name in the graph.
    #[pyo3(get)]
    name: String,
    /// Its numpy dtype name ("float32", …).
    #[pyo3(get)]
    dtype: &'static str,
    /// Its dimensions (`None` for an open one), or `None` if the model does not declare it.
    #[pyo3(get)]
    shape: Option<Vec<Option<u64>>>,
}

impl From<TensorSignature> for TensorSpec {
    fn from(t: TensorSignature) -> Self {
        Self {
            name: t.name,
            dtype: dtype_name(t.dtype),
            shape: t.shape,
        }
    }
}

#[pymethods]
impl TensorSpec {
    fn __repr__(&self) -> String {
        let shape = match &self.shape {
            None => "None".to_owned(),
            Some(dims) => {
                let dims: Vec<String> = dims
                    .iter()
                    .map(|d| d.map_or_else(|| "None".to_owned(), |d| d.to_string()))
                    .collect();
                format!("[{}]", dims.join(", "))
            }
        };
        format!(
            "TensorSpec(name={:?}, dtype={:?}, shape={shape})",
            self.name, self.dtype
        )
    }
}

/// A wait's `timeout` in seconds, checked.
fn wait_timeout(timeout: f64) -> PyResult<Duration> {
    if !(timeout.is_finite() && (0.0..=WAIT_READY_S_MAX).contains(&timeout)) {
        return Err(PyValueError::new_err(format!(
            "timeout must be between 0 and {WAIT_READY_S_MAX} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(timeout))
}

/// A deployment as the dispatcher describes it.
#[pyclass(frozen, module = "cryptorat")]
pub(crate) struct DeploymentInfo {
    /// Its id.
    #[pyo3(get)]
    id: String,
    /// Its model (64 hex digits).
    #[pyo3(get)]
    model: String,
    /// "pending", "ready", "degraded", "stopped" or "failed".
    #[pyo3(get)]
    state: &'static str,
    /// Replicas ready now.
    #[pyo3(get)]
    replicas_ready: u32,
    /// Replicas the plan needs.
    #[pyo3(get)]
    replicas_wanted: u32,
    /// Of the replicas ready, those serving `model` (after an update, the others still serve
    /// the model before it until they switch).
    #[pyo3(get)]
    replicas_on_model: u32,
    /// Model updates made so far.
    #[pyo3(get)]
    updates: u32,
    /// When the plan allows the next model update (Unix seconds), `None` if never.
    #[pyo3(get)]
    next_update_at_s: Option<u64>,
    /// Credits taken when deploying.
    #[pyo3(get)]
    upfront: u64,
    /// Credits left in a per-request allowance (0 for per-instance plans).
    #[pyo3(get)]
    allowance_left: u64,
    /// Whether the network spot-checks its answers (the dispatcher's determinism gate).
    #[pyo3(get)]
    verifiable: bool,
    /// Why it failed (state "failed").
    #[pyo3(get)]
    failure: Option<String>,
    /// Why fewer replicas than `replicas_wanted` are placed (a network too small or too
    /// busy): it is served by those it has ("degraded" once they are warm) and topped up as
    /// nodes join; `None` when all are placed.
    #[pyo3(get)]
    shortfall: Option<String>,
    /// The model's declared inputs, `None` if the dispatcher did not describe them.
    #[pyo3(get)]
    inputs: Option<Vec<TensorSpec>>,
    /// The model's declared outputs, `None` if the dispatcher did not describe them.
    #[pyo3(get)]
    outputs: Option<Vec<TensorSpec>>,
}

impl From<wire::DeploymentInfo> for DeploymentInfo {
    fn from(i: wire::DeploymentInfo) -> Self {
        let (inputs, outputs) = match i.signature {
            Some(s) => (
                Some(s.inputs.into_iter().map(TensorSpec::from).collect()),
                Some(s.outputs.into_iter().map(TensorSpec::from).collect()),
            ),
            None => (None, None),
        };
        Self {
            id: i.id.to_string(),
            model: i.model.to_string(),
            state: match i.state {
                DeploymentState::Pending => "pending",
                DeploymentState::Ready => "ready",
                DeploymentState::Degraded => "degraded",
                DeploymentState::Stopped => "stopped",
                DeploymentState::Failed => "failed",
            },
            replicas_ready: i.replicas_ready,
            replicas_wanted: i.replicas_wanted,
            replicas_on_model: i.replicas_on_model,
            updates: i.updates,
            next_update_at_s: i.next_update_at_s,
            upfront: i.price.upfront.get(),
            allowance_left: i.allowance_left.get(),
            verifiable: i.verifiability.is_verifiable(),
            failure: i.failure,
            shortfall: i.shortfall,
            inputs,
            outputs,
        }
    }
}

#[pymethods]
impl DeploymentInfo {
    fn __repr__(&self) -> String {
        format!(
            "DeploymentInfo(id={:?}, state={:?}, replicas_ready={}, replicas_wanted={}, \
             shortfall={:?})",
            self.id, self.state, self.replicas_ready, self.replicas_wanted, self.shortfall
        )
    }
}
