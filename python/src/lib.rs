//! `_cryptorat`: the native half of the `cryptorat` Python package (PyO3 over `crat-sdk`).
//!
//! The pure-Python package `cryptorat` (next to this crate) re-exports what is defined here
//! and adds the exception classes (`cryptorat.errors`, raised from [`errors`]) and
//! `cryptorat.testing`. Every call that waits on the network blocks the calling Python thread
//! on a tokio runtime **with the GIL released** ([`wait`]), checking for Ctrl-C every
//! [`SIGNAL_CHECK_INTERVAL`]; other Python threads run meanwhile.
//!
//! | module | what it owns |
//! |---|---|
//! | [`client`] | `connect`, `Client`, `Deployment`, `infer_many`'s iterator, plans, quotes, infos |
//! | [`tensors`] | numpy arrays ↔ wire tensors, for every dtype the network carries |
//! | [`errors`] | SDK errors → the typed exceptions of `cryptorat.errors` |
//! | [`testing`] | `LocalNetwork`: a dispatcher and tract nodes in this process, on loopback |
//!
//! The crate is kept out of the root workspace (see `Cargo.toml` and `README.md`); maturin
//! builds it (`pyproject.toml`).

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

mod client;
mod errors;
mod tensors;
mod testing;

/// How often a thread waiting on the network looks for a pending signal (Ctrl-C).
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Most worker threads of a runtime (the clients' one, a local network's).
const RUNTIME_WORKER_THREADS_MAX: usize = 4;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The process-wide runtime every [`client::Client`] runs on, started at first use.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = new_runtime("cryptorat")
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the tokio runtime: {e}")))?;
    // Another thread may have won the race; its runtime is kept and this one dropped.
    let _ = RUNTIME.set(rt);
    RUNTIME
        .get()
        .ok_or_else(|| PyRuntimeError::new_err("the tokio runtime vanished"))
}

/// A multi-threaded runtime of at most [`RUNTIME_WORKER_THREADS_MAX`] workers named `name`.
fn new_runtime(name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(RUNTIME_WORKER_THREADS_MAX);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
}

/// Runs `fut` to completion on `rt` with the GIL released, and returns its output.
///
/// Raises `KeyboardInterrupt` (dropping `fut`) if a signal handler raises while waiting, and
/// `RuntimeError` when called from a thread of a runtime (a progress callback calling back
/// into a blocking method).
fn wait_on<F>(py: Python<'_>, rt: &tokio::runtime::Runtime, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(PyRuntimeError::new_err(
            "a blocking cryptorat call cannot be made from inside a callback",
        ));
    }
    py.detach(|| {
        rt.block_on(async move {
            let mut fut = std::pin::pin!(fut);
            loop {
                tokio::select! {
                    out = &mut fut => return Ok(out),
                    () = tokio::time::sleep(SIGNAL_CHECK_INTERVAL) => {
                        Python::attach(|py| py.check_signals())?;
                    }
                }
            }
        })
    })
}

/// [`wait_on`] on the clients' runtime, turning an SDK error into its exception.
fn wait<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T, crat_sdk::Error>> + Send,
    T: Send,
{
    wait_on(py, runtime()?, fut)?.map_err(errors::to_py)
}

/// The native module.
#[pymodule]
fn _cryptorat(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(client::connect, m)?)?;
    m.add_function(wrap_pyfunction!(errors::error_codes, m)?)?;
    m.add_function(wrap_pyfunction!(errors::exception_for_code, m)?)?;
    m.add_class::<client::Client>()?;
    m.add_class::<client::Deployment>()?;
    m.add_class::<client::InferMany>()?;
    m.add_class::<client::PerRequest>()?;
    m.add_class::<client::PerInstance>()?;
    m.add_class::<client::Quote>()?;
    m.add_class::<client::UploadProgress>()?;
    m.add_class::<client::KeyInfo>()?;
    m.add_class::<client::DeploymentInfo>()?;
    m.add_class::<client::TensorSpec>()?;
    m.add_class::<testing::LocalNetwork>()?;
    m.add_function(wrap_pyfunction!(testing::rust_infer_many_seconds, m)?)?;
    m.add("DTYPES", tensors::DTYPE_NAMES.to_vec())?;
    Ok(())
}
