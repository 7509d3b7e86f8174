//! `cryptorat.testing.LocalNetwork`: a real dispatcher and real tract nodes on loopback QUIC,
//! in this process (`crat_testnet::LocalNetwork`), on a tokio runtime the object owns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crat_backend::tract::TractBackend;
use crat_core::id::{NodeId, SdkKey};
use crat_core::money::Credits;
use crat_dispatcher::DispatcherConfig;
use crat_dispatcher::admin;
use crat_dispatcher::ledger::AccountName;
use crat_testnet::NodeSpec;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::client::{CONCURRENCY_MAX, Client, Deployment, connect_parsed};
use crate::tensors::to_named;
use crate::{new_runtime, wait};

/// Most tasks one [`rust_infer_many_seconds`] runs.
const BENCH_TASKS_MAX: usize = 1_000_000;
/// Most nodes one local network starts.
const NODES_MAX: usize = 16;
/// How long closing waits for the network's tasks to end.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The account the network's key belongs to.
const ACCOUNT: &str = "local";
/// GPUs the nodes declare, in turn (they prove their CPU only; see `crat_testnet`).
const GPUS: [&str; 3] = [
    "NVIDIA GeForce RTX 3090",
    "NVIDIA GeForce RTX 3080",
    "NVIDIA GeForce GTX 1660 Ti",
];

struct Running {
    runtime: tokio::runtime::Runtime,
    network: crat_testnet::LocalNetwork,
    key: SdkKey,
    addr: SocketAddr,
    dispatcher_id: NodeId,
    /// The dispatcher's ledger, blobs and the nodes' model caches; removed when closed.
    dir: tempfile::TempDir,
}

impl Running {
    fn close(self) {
        let Running {
            runtime,
            network,
            dir,
            ..
        } = self;
        {
            let _inside = runtime.enter();
            network.shutdown();
            drop(network);
        }
        runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
        drop(dir);
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn start(nodes: usize, credits: u64) -> Result<Running, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let runtime = new_runtime("cryptorat-localnet").map_err(|e| format!("runtime: {e}"))?;
    let mut config = DispatcherConfig::new(dir.path().join("dispatcher"));
    config.dispatch.heartbeat_interval_s = 1;
    config.tick_ms = 100;
    // Keys are looked up on every call, so that `revoke_key` applies at once.
    config.key_cache_ms = 0;
    let specs = (0..nodes)
        .map(|i| NodeSpec {
            gpu: Some(GPUS[i % GPUS.len()].to_owned()),
            backend: Arc::new(TractBackend::new()),
            batch_size: 4,
        })
        .collect();
    let network = runtime
        .block_on(crat_testnet::LocalNetwork::start(config, dir.path(), specs))
        .map_err(|e| format!("starting the network: {e}"))?;
    let ledger = network.dispatcher().ledger().clone();
    let account = AccountName::new(ACCOUNT).map_err(|e| format!("account: {e}"))?;
    let now = now_s();
    admin::grant(&*ledger, &account, Credits::new(credits), now)
        .map_err(|e| format!("granting credits: {e}"))?;
    let key = admin::create_key(&*ledger, &account, now, None).map_err(|e| format!("key: {e}"))?;
    let addr = network.dispatcher_addr;
    let dispatcher_id = network.dispatcher().id();
    Ok(Running {
        runtime,
        network,
        key,
        addr,
        dispatcher_id,
        dir,
    })
}

/// A whole CryptoRAT network in this process, for notebooks and tests: a dispatcher with a
/// SQLite ledger and `nodes` compute nodes running models on the CPU (tract), on loopback
/// QUIC, in a temporary directory. An account holding `credits` and an SDK key for it are
/// made; `connect()` gives a client using that key.
///
/// Use it as a context manager, or call `close()`; it is closed when collected too.
#[pyclass(module = "cryptorat.testing")]
pub(crate) struct LocalNetwork {
    running: Option<Running>,
    nodes: usize,
    credits: u64,
}

impl LocalNetwork {
    fn running(&self) -> PyResult<&Running> {
        self.running
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("the local network is closed"))
    }
}

impl Drop for LocalNetwork {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.close();
        }
    }
}

#[pymethods]
impl LocalNetwork {
    #[new]
    #[pyo3(signature = (nodes = 2, credits = 1_000_000))]
    fn new(py: Python<'_>, nodes: usize, credits: u64) -> PyResult<Self> {
        if !(1..=NODES_MAX).contains(&nodes) {
            return Err(PyValueError::new_err(format!(
                "nodes must be between 1 and {NODES_MAX}"
            )));
        }
        let running = py
            .detach(|| start(nodes, credits))
            .map_err(|e| PyRuntimeError::new_err(format!("local network: {e}")))?;
        Ok(Self {
            running: Some(running),
            nodes,
            credits,
        })
    }

    /// The dispatcher's address, `"127.0.0.1:port"`.
    #[getter]
    fn addr(&self) -> PyResult<String> {
        Ok(self.running()?.addr.to_string())
    }

    /// The dispatcher's identity (64 hex digits), for `cryptorat.connect`.
    #[getter]
    fn dispatcher_id(&self) -> PyResult<String> {
        Ok(self.running()?.dispatcher_id.to_string())
    }

    /// The SDK key (`"sk_…"`) of the account the network made.
    #[getter]
    fn key(&self) -> PyResult<String> {
        Ok(self.running()?.key.to_string())
    }

    /// Nodes started.
    #[getter]
    fn nodes(&self) -> usize {
        self.nodes
    }

    /// Credits granted to the account at start.
    #[getter]
    fn credits(&self) -> u64 {
        self.credits
    }

    /// Nodes online at the dispatcher now.
    fn online_nodes(&self) -> PyResult<usize> {
        Ok(self.running()?.network.dispatcher().online_nodes())
    }

    /// Grants `credits` more to the account.
    fn grant(&self, credits: u64) -> PyResult<u64> {
        let running = self.running()?;
        let ledger = running.network.dispatcher().ledger().clone();
        let account = AccountName::new(ACCOUNT)
            .map_err(|e| PyRuntimeError::new_err(format!("account: {e}")))?;
        admin::grant(&*ledger, &account, Credits::new(credits), now_s())
            .map(|c| c.get())
            .map_err(|e| PyRuntimeError::new_err(format!("granting credits: {e}")))
    }

    /// A new SDK key for the same account, living `lifetime_s` seconds (`None`: forever).
    #[pyo3(signature = (lifetime_s = None))]
    fn create_key(&self, lifetime_s: Option<u64>) -> PyResult<String> {
        let running = self.running()?;
        let ledger = running.network.dispatcher().ledger().clone();
        let account = AccountName::new(ACCOUNT)
            .map_err(|e| PyRuntimeError::new_err(format!("account: {e}")))?;
        admin::create_key(&*ledger, &account, now_s(), lifetime_s)
            .map(|k| k.to_string())
            .map_err(|e| PyRuntimeError::new_err(format!("creating a key: {e}")))
    }

    /// Revokes an SDK key (`"sk_…"`) of the network: calls with it fail with
    /// `KeyRevokedError` from then on.
    fn revoke_key(&self, key: &str) -> PyResult<()> {
        let running = self.running()?;
        let key: SdkKey = key
            .parse()
            .map_err(|_| PyValueError::new_err("key: not an SDK key (sk_<32 hex>_<64 hex>)"))?;
        running
            .network
            .dispatcher()
            .ledger()
            .revoke_key(&key.id, now_s())
            .map(drop)
            .map_err(|e| PyRuntimeError::new_err(format!("revoking a key: {e}")))
    }

    /// A client connected to the network with its key (`cryptorat.connect(addr,
    /// dispatcher_id, key)`).
    fn connect(&self, py: Python<'_>) -> PyResult<Client> {
        let running = self.running()?;
        connect_parsed(py, running.addr, running.dispatcher_id, running.key.clone())
    }

    /// Stops the dispatcher and the nodes and removes their files. Idempotent.
    fn close(&mut self, py: Python<'_>) {
        if let Some(running) = self.running.take() {
            py.detach(|| running.close());
        }
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.running.is_none()
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        match &self.running {
            Some(r) => format!(
                "LocalNetwork(addr={:?}, nodes={})",
                r.addr.to_string(),
                self.nodes
            ),
            None => "LocalNetwork(closed)".to_owned(),
        }
    }
}

/// Benchmark support: runs `count` tasks, each with `inputs`, through the Rust SDK's own
/// `Deployment::infer_many` on `deployment` (at most `concurrency` at once, results in
/// order, outputs dropped) and returns the seconds it took: the baseline
/// `Deployment.infer_many` is measured against (`python/bench/infer_many.py`).
#[pyfunction]
pub(crate) fn rust_infer_many_seconds(
    py: Python<'_>,
    deployment: &Deployment,
    inputs: &Bound<'_, PyAny>,
    count: usize,
    concurrency: usize,
) -> PyResult<f64> {
    if count > BENCH_TASKS_MAX || !(1..=CONCURRENCY_MAX).contains(&concurrency) {
        return Err(PyValueError::new_err(format!(
            "count must be at most {BENCH_TASKS_MAX} and concurrency between 1 and {CONCURRENCY_MAX}"
        )));
    }
    let tensors = to_named(py, inputs)?;
    let d = deployment.inner.clone();
    wait(py, async move {
        let start = std::time::Instant::now();
        let tasks = futures_util::stream::iter((0..count).map(move |_| tensors.clone()));
        let mut results = std::pin::pin!(d.infer_many(tasks, concurrency));
        while let Some(outputs) = futures_util::StreamExt::next(&mut results).await {
            outputs?;
        }
        Ok(start.elapsed().as_secs_f64())
    })
}
