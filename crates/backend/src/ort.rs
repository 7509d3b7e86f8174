//! The ONNX Runtime backend (feature `ort`; feature `cuda` adds the CUDA execution provider).
//!
//! ONNX Runtime is loaded at run time from a `libonnxruntime` shared library (ort's
//! `load-dynamic`), 1.24 or newer (`api-24`); `scripts/install-onnxruntime.sh` installs the CPU
//! build of 1.31.1 from PyPI and prints its path. The path comes from
//! [`OrtConfig::dylib_path`] or, when that is `None`, the `ORT_DYLIB_PATH` environment
//! variable. A missing or unusable library is an error ([`BackendError::Unavailable`]), never
//! a panic.
//!
//! ```no_run
//! use crat_backend::InferenceBackend;
//! use crat_backend::ort::{OrtBackend, OrtConfig};
//!
//! // ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)
//! let backend = OrtBackend::new(&OrtConfig::default())?;
//! assert_eq!(backend.execution_provider(), "cpu");
//! let model = backend.load(include_bytes!("../models/tiny_cnn.onnx"))?;
//! assert_eq!(model.info().inputs[0].name, "input");
//! # Ok::<(), crat_backend::BackendError>(())
//! ```
//!
//! # Execution providers and threads
//! Each model gets its own ONNX Runtime session. On the CPU a session runs an inference on
//! [`OrtConfig::intra_threads`] threads, [`INTRA_THREADS_DEFAULT`] (1) by default: one request
//! per core is how a node shares its cores between models and requests, and it keeps
//! benchmarks against the single-threaded tract backend fair. Raise it for latency on an
//! otherwise idle host.
//!
//! With feature `cuda` and [`Device::Cuda`], the CUDA execution provider is registered with
//! `error_on_failure`: if ONNX Runtime cannot bring it up (a CPU-only library, no driver, no
//! GPU, missing CUDA/cuDNN libraries) creating the session fails with
//! [`BackendError::Unavailable`] instead of silently running on the CPU, so
//! [`execution_provider`](InferenceBackend::execution_provider) is what really runs. ONNX
//! Runtime still places operators the CUDA provider lacks on the CPU, as it always does.
//!
//! # Memory
//! With CUDA, [`OrtConfig::gpu_memory_bytes_max`] caps the CUDA provider's memory arena
//! (ONNX Runtime's `gpu_mem_limit`, with the arena growing by what is requested, not by powers
//! of two): a session that needs more fails its allocation with an error instead of taking the
//! whole GPU. ONNX Runtime notes that the total device memory used may be higher (cuDNN and
//! cuBLAS workspaces are outside the arena). On the CPU nothing is capped while a model loads
//! or runs: ONNX Runtime's CPU arena limit (`OrtArenaCfg::max_mem`, set through an allocator
//! registered on the environment) is not exposed by the safe `ort` 2.0 API, and this crate
//! forbids `unsafe`. What stands before a model built to exhaust host memory is the model
//! check's estimate (`crate::onnx_check::memory`), which the node holds to its budget before
//! loading.
//!
//! ort's `Session::run` takes `&mut self` (ONNX Runtime's run is not safe to call concurrently
//! on every provider), so runs of one model are serialised by a mutex; concurrency across
//! requests comes from batching them.
//!
//! # Library loading
//! A process loads ONNX Runtime once. The first backend to load it fixes the library; asking
//! for another path later fails with [`BackendError::Unavailable`] rather than quietly using
//! the first one. A failed load leaves nothing behind, so a later attempt with a correct path
//! can still succeed.
//!
//! # Telemetry
//! Microsoft's builds of ONNX Runtime (the PyPI wheel `scripts/install-onnxruntime.sh`
//! installs, 1.31.1) collect telemetry on Linux too: the process, the OS and CPU, each session
//! (the model's graph name, producer and metadata, the execution providers) and run counts and
//! times. They keep it in `~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db` and
//! upload it to `mobile.events.data.microsoft.com`. A node runs its clients' models: none of
//! that leaves the machine. This crate turns the events off on its environment
//! (`DisableTelemetryEvents`), but only an environment variable set to `1` *before the library
//! loads* keeps the uploader from starting and the database from being written (checked on
//! 1.31.1: with the call alone, a node still looked up the collector's address and wrote two
//! events). 1.31.1 reads `ORT_DISABLE_TELEMETRY`; newer sources read `ORT_TELEMETRY_DISABLED`,
//! and a node may load a newer library from the operator's Python packages, so both are set
//! ([`TELEMETRY_OFF_ENVS`]). The `crat` binary sets it first thing; a program embedding
//! this crate should do the same before any thread starts (or export it), and is warned in
//! the log when it did not. ONNX Runtime also stays quiet where a CI variable (`CI`,
//! `GITHUB_ACTIONS`, …) is set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crat_core::tensor::{DType, Tensor};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, ValueType};
use zerocopy::{FromBytes, IntoBytes};

use crate::onnx_check::{ModelSummary, check_model};
use crate::{BackendError, Dim, InferenceBackend, LoadedModel, ModelInfo, catch_panic};

/// Intra-op threads per session unless configured: one (see the [module docs](self)).
pub const INTRA_THREADS_DEFAULT: usize = 1;

/// Most intra-op threads a session may be configured with.
pub const INTRA_THREADS_MAX: usize = 256;

/// Environment variable naming the ONNX Runtime library when the configuration does not.
pub const DYLIB_PATH_ENV: &str = "ORT_DYLIB_PATH";

/// Environment variables that, set to `1` before ONNX Runtime loads, keep its telemetry
/// uploader from starting: the one 1.31.1 reads, and the one newer versions read (see
/// [Telemetry](self#telemetry)).
pub const TELEMETRY_OFF_ENVS: [&str; 2] = ["ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED"];

/// Whether every one of [`TELEMETRY_OFF_ENVS`] is set to `1` in this process's environment.
pub fn telemetry_off_in_env() -> bool {
    TELEMETRY_OFF_ENVS
        .iter()
        .all(|name| std::env::var_os(name).is_some_and(|v| v == "1"))
}

/// Where a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on this GPU (needs feature `cuda`).
    Cuda {
        /// CUDA device ordinal.
        device_id: i32,
    },
}

/// How to set up the ONNX Runtime backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrtConfig {
    /// Path of `libonnxruntime.so.1.*`; `None` reads [`DYLIB_PATH_ENV`].
    pub dylib_path: Option<PathBuf>,
    /// Intra-op threads per session, at least 1 and at most [`INTRA_THREADS_MAX`].
    pub intra_threads: usize,
    /// Execution provider to run on.
    pub device: Device,
    /// Under CUDA, the most bytes the CUDA provider's memory arena of one session may take
    /// (see [Memory](self#memory)); `None` (the default): ONNX Runtime's own, no limit.
    /// Ignored on the CPU.
    pub gpu_memory_bytes_max: Option<u64>,
    /// Under CUDA, a directory holding the CUDA and cuDNN libraries the CUDA execution provider
    /// links to (`libcudart.so.13`, `libcublas.so.13`, `libcudnn.so.9`, …, as `crat-node`'s
    /// `ort_setup` installs them from PyPI). They are loaded from there before the provider
    /// is (ort's `preload_dylibs`), so the provider finds them without `LD_LIBRARY_PATH`.
    /// `None` (the default): the system loader's search path. Ignored on the CPU.
    pub cuda_dylib_dir: Option<PathBuf>,
}

impl Default for OrtConfig {
    fn default() -> Self {
        Self {
            dylib_path: None,
            intra_threads: INTRA_THREADS_DEFAULT,
            device: Device::Cpu,
            gpu_memory_bytes_max: None,
            cuda_dylib_dir: None,
        }
    }
}

impl OrtConfig {
    /// The library path this configuration resolves to: the configured one, else
    /// `$ORT_DYLIB_PATH`.
    pub fn resolved_dylib_path(&self) -> Result<PathBuf, BackendError> {
        if let Some(p) = &self.dylib_path {
            return Ok(p.clone());
        }
        match std::env::var_os(DYLIB_PATH_ENV) {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(BackendError::Unavailable(format!(
                "no ONNX Runtime library configured and {DYLIB_PATH_ENV} is not set \
                 (scripts/install-onnxruntime.sh installs one and prints its path)"
            ))),
        }
    }
}

/// The library this process loaded and its environment.
static RUNTIME: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// Loads ONNX Runtime from `path` (once per process) and returns the shared environment.
fn environment(path: &Path) -> Result<Environment, BackendError> {
    let mut runtime = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((loaded, env)) = &*runtime {
        if loaded == path {
            return Ok(env.clone());
        }
        return Err(BackendError::Unavailable(format!(
            "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
            loaded.display(),
            path.display()
        )));
    }
    if !path.is_file() {
        return Err(BackendError::Unavailable(format!(
            "libonnxruntime not found at {}",
            path.display()
        )));
    }
    if !telemetry_off_in_env() {
        tracing::warn!(
            "{TELEMETRY_OFF_ENVS:?} are not all 1: ONNX Runtime's telemetry uploader may start \
             (Microsoft's builds send it to mobile.events.data.microsoft.com); set it before \
             the process starts threads, as `crat` does"
        );
    }
    let env = catch_panic(|| {
        let builder = ort::init_from(path).map_err(|e| {
            BackendError::Unavailable(format!(
                "cannot load libonnxruntime from {}: {e}",
                path.display()
            ))
        })?;
        // Events off on this environment; the uploader itself only by the variable above.
        builder
            .with_name("crat-node")
            .with_telemetry(false)
            .build()
            .map_err(|e| {
                BackendError::Unavailable(format!("cannot create an ONNX Runtime environment: {e}"))
            })
    })?;
    *runtime = Some((path.to_path_buf(), env.clone()));
    Ok(env)
}

/// Loads the CUDA and cuDNN libraries of `dir` into the process, so that the CUDA execution
/// provider's dependencies resolve to them (see [`OrtConfig::cuda_dylib_dir`]).
#[cfg(feature = "cuda")]
fn preload_cuda_libraries(dir: &Path) -> Result<(), BackendError> {
    catch_panic(|| {
        ort::ep::cuda::preload_dylibs(Some(dir), Some(dir)).map_err(|e| {
            BackendError::Unavailable(format!(
                "cuda: cannot load the CUDA libraries of {}: {e}",
                dir.display()
            ))
        })
    })
}

/// The ONNX Runtime backend. See the [module docs](self).
#[derive(Debug)]
pub struct OrtBackend {
    env: Environment,
    dylib: PathBuf,
    version: String,
    intra_threads: usize,
    device: Device,
    gpu_memory_bytes_max: Option<u64>,
}

impl OrtBackend {
    /// Loads ONNX Runtime (once per process) and checks the requested execution provider is
    /// compiled in. Whether CUDA really comes up is known when a session is created: see
    /// [`OrtBackend::load_model`] and [`select`](crate::select), which tries it on a small model.
    pub fn new(config: &OrtConfig) -> Result<Self, BackendError> {
        if config.intra_threads == 0 || config.intra_threads > INTRA_THREADS_MAX {
            return Err(BackendError::Unavailable(format!(
                "intra_threads must be between 1 and {INTRA_THREADS_MAX}, not {}",
                config.intra_threads
            )));
        }
        if matches!(config.device, Device::Cuda { .. }) && !cfg!(feature = "cuda") {
            return Err(BackendError::Unavailable(
                "cuda: feature `cuda` not compiled in".into(),
            ));
        }
        let dylib = config.resolved_dylib_path()?;
        #[cfg(feature = "cuda")]
        if let (Device::Cuda { .. }, Some(dir)) = (config.device, &config.cuda_dylib_dir) {
            preload_cuda_libraries(dir)?;
        }
        let env = environment(&dylib)?;
        let version = catch_panic(|| Ok(ort::info().to_owned())).unwrap_or_default();
        Ok(Self {
            env,
            dylib,
            version,
            intra_threads: config.intra_threads,
            device: config.device,
            gpu_memory_bytes_max: config.gpu_memory_bytes_max,
        })
    }

    /// The library in use.
    pub fn library_path(&self) -> &Path {
        &self.dylib
    }

    /// ONNX Runtime's build description (version, commit, build flags).
    pub fn build_info(&self) -> &str {
        &self.version
    }

    /// The device sessions are created on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Loads a model, returning the concrete type.
    pub fn load_model(&self, model: &[u8]) -> Result<OrtModel, BackendError> {
        catch_panic(|| OrtModel::load(self, model))
    }

    fn session(&self, model: &[u8]) -> Result<Session, BackendError> {
        let load = |e: &dyn std::fmt::Display| BackendError::Load(e.to_string());
        // Every graph optimisation, as onnxruntime's Python `SessionOptions` default to: said
        // explicitly rather than left to the C API's default.
        let builder = Session::builder(&self.env)
            .map_err(|e| load(&e))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| load(&e))?
            .with_intra_threads(self.intra_threads)
            .map_err(|e| load(&e))?
            .with_inter_threads(1)
            .map_err(|e| load(&e))?;
        let mut builder = match self.device {
            Device::Cpu => builder,
            #[cfg(feature = "cuda")]
            Device::Cuda { device_id } => {
                let mut cuda = ort::ep::CUDA::default().with_device_id(device_id);
                if let Some(max) = self.gpu_memory_bytes_max {
                    cuda = cuda
                        .with_memory_limit(usize::try_from(max).unwrap_or(usize::MAX))
                        .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested);
                }
                builder
                    .with_execution_providers([cuda.build().error_on_failure()])
                    .map_err(|e| {
                        BackendError::Unavailable(format!("cuda: execution provider failed: {e}"))
                    })?
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda { .. } => {
                return Err(BackendError::Unavailable(
                    "cuda: feature `cuda` not compiled in".into(),
                ));
            }
        };
        builder.commit_from_memory(model).map_err(|e| {
            let message = e.to_string();
            // CUDA errors surface while the session initialises its providers.
            if matches!(self.device, Device::Cuda { .. })
                && (message.contains("CUDA") || message.contains("cuda"))
            {
                BackendError::Unavailable(format!("cuda: {message}"))
            } else {
                BackendError::Load(message)
            }
        })
    }
}

impl InferenceBackend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn execution_provider(&self) -> &str {
        match self.device {
            Device::Cpu => "cpu",
            Device::Cuda { .. } => "cuda",
        }
    }

    fn load(&self, model: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError> {
        Ok(Arc::new(self.load_model(model)?))
    }

    /// Under CUDA, the same library and threads on CUDA device `device`; on the CPU, `None`.
    fn on_gpu(&self, device: u32) -> Option<Arc<dyn InferenceBackend>> {
        let Device::Cuda { .. } = self.device else {
            return None;
        };
        Some(Arc::new(Self {
            env: self.env.clone(),
            dylib: self.dylib.clone(),
            version: self.version.clone(),
            intra_threads: self.intra_threads,
            device: Device::Cuda {
                device_id: i32::try_from(device).ok()?,
            },
            gpu_memory_bytes_max: self.gpu_memory_bytes_max,
        }))
    }
}

/// A model loaded into an ONNX Runtime session.
#[derive(Debug)]
pub struct OrtModel {
    info: ModelInfo,
    session: Mutex<Session>,
    model_bytes: u64,
}

impl OrtModel {
    fn load(backend: &OrtBackend, bytes: &[u8]) -> Result<Self, BackendError> {
        let ModelSummary {
            mut info,
            undeclared_output_shapes,
            ..
        } = check_model(bytes)?;
        let session = backend.session(bytes)?;
        let names_in: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let declared_in: Vec<&str> = info.inputs.iter().map(|s| s.name.as_str()).collect();
        if names_in != declared_in {
            return Err(BackendError::Load(format!(
                "ONNX Runtime sees inputs {names_in:?}, the graph declares {declared_in:?}"
            )));
        }
        let names_out: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let declared_out: Vec<&str> = info.outputs.iter().map(|s| s.name.as_str()).collect();
        if names_out != declared_out {
            return Err(BackendError::Load(format!(
                "ONNX Runtime sees outputs {names_out:?}, the graph declares {declared_out:?}"
            )));
        }
        for i in undeclared_output_shapes {
            if let ValueType::Tensor {
                shape,
                dimension_symbols,
                ..
            } = session.outputs()[i].dtype()
                && !shape.is_empty()
            {
                info.outputs[i].shape = shape
                    .iter()
                    .enumerate()
                    .map(|(k, &d)| {
                        if d >= 0 {
                            Dim::Fixed(d as u64)
                        } else {
                            Dim::Symbolic(
                                dimension_symbols
                                    .get(k)
                                    .map(|s| s.to_string())
                                    .unwrap_or_default(),
                            )
                        }
                    })
                    .collect();
            } else {
                return Err(BackendError::Load(format!(
                    "output '{}' declares no shape",
                    info.outputs[i].name
                )));
            }
        }
        Ok(Self {
            info,
            session: Mutex::new(session),
            model_bytes: bytes.len() as u64,
        })
    }

    fn run_inner(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        if inputs.len() != self.info.inputs.len() {
            return Err(BackendError::Input(format!(
                "{} inputs given, the model takes {}",
                inputs.len(),
                self.info.inputs.len()
            )));
        }
        let mut values: Vec<SessionInputValue<'_>> = Vec::with_capacity(inputs.len());
        for (t, spec) in inputs.iter().zip(&self.info.inputs) {
            if t.dtype() != spec.dtype {
                return Err(BackendError::Input(format!(
                    "input '{}' is {}, the model takes {}",
                    spec.name,
                    t.dtype(),
                    spec.dtype
                )));
            }
            values.push(to_ort(t)?);
        }
        // A panic while the lock is held poisons it; the session itself is still usable.
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(&values[..])
            .map_err(|e| BackendError::Run(e.to_string()))?;
        self.info
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    BackendError::Run(format!("ONNX Runtime returned no output '{}'", spec.name))
                })?;
                from_ort(value, spec.dtype)
            })
            .collect()
    }
}

impl LoadedModel for OrtModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        catch_panic(|| self.run_inner(inputs))
    }

    /// Approximate: twice the model file (the parsed graph and ONNX Runtime's prepacked
    /// weights). Device memory for CUDA sessions is not counted.
    fn memory_bytes(&self) -> u64 {
        self.model_bytes.saturating_mul(2)
    }
}

fn input_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Input(e.to_string())
}

/// A wire tensor as an ONNX Runtime input: a view of its bytes where they can be read as
/// the element type in place (little-endian host, aligned buffer, which the decoder's
/// allocations are), a copy otherwise.
fn to_ort(t: &Tensor) -> Result<SessionInputValue<'_>, BackendError> {
    let shape: Vec<i64> = t
        .shape()
        .iter()
        .map(|&d| i64::try_from(d).map_err(input_err))
        .collect::<Result<_, _>>()?;
    fn owned<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        shape: Vec<i64>,
        data: Vec<T>,
    ) -> Result<SessionInputValue<'static>, BackendError> {
        ort::value::Tensor::from_array((shape, data))
            .map(|v| v.into_dyn().into())
            .map_err(input_err)
    }
    /// In place when the bytes are the elements as they lie, else a decoded copy.
    fn view<'a, T>(t: &'a Tensor, shape: Vec<i64>) -> Result<SessionInputValue<'a>, BackendError>
    where
        T: ort::value::PrimitiveTensorElementType
            + crat_core::tensor::Element
            + zerocopy::FromBytes
            + zerocopy::Immutable
            + std::fmt::Debug
            + Clone
            + 'static,
    {
        if cfg!(target_endian = "little")
            && let Ok(elements) = <[T]>::ref_from_bytes(t.bytes())
        {
            return ort::value::TensorRef::from_array_view((shape, elements))
                .map(|v| v.into_dyn().into())
                .map_err(input_err);
        }
        owned(shape, t.to_vec::<T>().map_err(input_err)?)
    }
    match t.dtype() {
        DType::F32 => view::<f32>(t, shape),
        DType::F64 => view::<f64>(t, shape),
        DType::I64 => view::<i64>(t, shape),
        DType::I32 => view::<i32>(t, shape),
        DType::I8 => view::<i8>(t, shape),
        DType::U8 => view::<u8>(t, shape),
        DType::Bool => owned(shape, t.to_vec::<bool>().map_err(input_err)?),
        DType::F16 => owned(
            shape,
            t.bytes()
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect::<Vec<_>>(),
        ),
        #[allow(unreachable_patterns)]
        other => Err(BackendError::Input(format!(
            "dtype {other} is not supported by ONNX Runtime here"
        ))),
    }
}

/// The ONNX Runtime element type of a wire dtype.
fn element_type(dtype: DType) -> Option<TensorElementType> {
    Some(match dtype {
        DType::F32 => TensorElementType::Float32,
        DType::F16 => TensorElementType::Float16,
        DType::F64 => TensorElementType::Float64,
        DType::I64 => TensorElementType::Int64,
        DType::I32 => TensorElementType::Int32,
        DType::I8 => TensorElementType::Int8,
        DType::U8 => TensorElementType::Uint8,
        DType::Bool => TensorElementType::Bool,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// Copies an ONNX Runtime output into a wire tensor of the declared dtype.
fn from_ort(value: &DynValue, declared: DType) -> Result<Tensor, BackendError> {
    let actual = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(BackendError::Run(format!(
                "output is {other}, not a tensor"
            )));
        }
    };
    if Some(actual) != element_type(declared) {
        return Err(BackendError::Run(format!(
            "output holds {actual}, the model declares {declared}"
        )));
    }
    fn build<T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug>(
        value: &DynValue,
        mut write: impl FnMut(&[T], &mut Vec<u8>),
        declared: DType,
    ) -> Result<Tensor, BackendError> {
        let (shape, data) = value
            .try_extract_tensor::<T>()
            .map_err(|e| BackendError::Run(e.to_string()))?;
        let shape: Vec<u64> = shape.iter().map(|&d| d.max(0) as u64).collect();
        let mut bytes = Vec::with_capacity(data.len() * declared.size());
        write(data, &mut bytes);
        Tensor::new(declared, shape, bytes).map_err(|e| BackendError::Run(e.to_string()))
    }
    /// The elements' little-endian bytes: one copy on a little-endian host.
    fn le<T: zerocopy::IntoBytes + zerocopy::Immutable + crat_core::tensor::Element>(
        data: &[T],
        bytes: &mut Vec<u8>,
    ) {
        if cfg!(target_endian = "little") {
            bytes.extend_from_slice(data.as_bytes());
        } else {
            for x in data {
                x.write_le(bytes);
            }
        }
    }
    match declared {
        DType::F32 => build::<f32>(value, le, declared),
        DType::F64 => build::<f64>(value, le, declared),
        DType::I64 => build::<i64>(value, le, declared),
        DType::I32 => build::<i32>(value, le, declared),
        DType::I8 => build::<i8>(value, le, declared),
        DType::U8 => build::<u8>(value, |d, b| b.extend_from_slice(d), declared),
        DType::Bool => build::<bool>(
            value,
            |d, b| b.extend(d.iter().map(|&x| u8::from(x))),
            declared,
        ),
        DType::F16 => build::<half::f16>(
            value,
            |d, b| {
                for x in d {
                    b.extend(x.to_bits().to_le_bytes());
                }
            },
            declared,
        ),
        #[allow(unreachable_patterns)]
        other => Err(BackendError::Run(format!("dtype {other} not supported"))),
    }
}
