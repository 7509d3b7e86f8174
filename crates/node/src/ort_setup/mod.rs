//! ONNX Runtime set up by itself: find a `libonnxruntime` on this host, or install one from
//! PyPI into the node's data directory.
//!
//! [`ensure`] takes the first of:
//! 1. the configured path ([`SetupConfig::configured_path`], a node setting);
//! 2. `ORT_DYLIB_PATH` ([`SetupConfig::env_path`], which [`SetupConfig::new`] reads);
//! 3. an installed `onnxruntime` or `onnxruntime-gpu` Python package (1.24 or newer): each of
//!    [`PythonSearch::interpreters`] is asked where it is (`importlib.util.find_spec`, killed
//!    after [`PythonSearch::timeout_ms`]), then [`PythonSearch::site_packages`] are looked in;
//! 4. a copy installed earlier in `<data_dir>/onnxruntime/1.31.1/<cpu|cuda>/`;
//!
//! and otherwise, unless [`SetupConfig::install`] is off, installs one there from the package
//! index ([`SetupConfig::index_url`], PyPI by default):
//! - the **CPU build**, the `onnxruntime==1.31.1` wheel, normally;
//! - the **CUDA build** when the backend has the CUDA execution provider compiled in and NVML
//!   sees an NVIDIA GPU whose driver supports CUDA 13 ([`wheel::plan`], with a
//!   [`CudaCapability`]): `onnxruntime-gpu==1.31.1` and the CUDA 13 / cuDNN 9 libraries of
//!   its `cuda` and `cudnn` extras from the `nvidia-*` wheels ([`wheel::packages`], ~1.4 GB).
//!   If that fails, the CPU build is installed instead and the reason reported.
//!
//! For each package the wheel for this host is chosen from the index's JSON simple API
//! (PEP 691: manylinux, this architecture, not yanked, with a sha256), downloaded with
//! progress ([`Event::Download`]) under size caps and timeouts ([`Limits`]), its sha256
//! checked against the index's, and only the shared libraries needed are taken out of it. They
//! are unpacked into a staging directory beside the target and renamed into place with their
//! manifest once all are there, so a directory under the final name is always complete; an
//! interrupted install leaves nothing a later run would use. A second run finds the copy and
//! downloads nothing. Every failure is a typed [`SetupError`]; the caller serves with tract
//! then, saying why.
//!
//! Nothing here runs at build time: the network is reached only when [`ensure`] is called.
//!
//! # Why the JSON simple API
//! The index is spoken to as pip does (PEP 691 `…/simple/<project>/` with
//! `Accept: application/vnd.pypi.simple.v1+json`), not through PyPI's own
//! `pypi.org/pypi/<project>/<version>/json`: the simple API is the standard every index and
//! mirror serves (a company mirror can be [`SetupConfig::index_url`]), and it lists each file's
//! sha256 and size just the same.
//!
//! # Example
//! ```no_run
//! use crat_node::ort_setup::{CudaCapability, Event, SetupConfig, ensure};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), crat_node::ort_setup::SetupError> {
//! let config = SetupConfig::new("crat-node".into());
//! let (gpu, _why_none) = CudaCapability::detect();
//! let found = ensure(&config, &gpu, &mut |event: Event| println!("{event}")).await?;
//! println!("ONNX Runtime at {} ({:?})", found.dylib.display(), found.source);
//! // crat_backend::select::SelectConfig { ort_dylib_path: Some(found.dylib), .. }
//! # Ok(())
//! # }
//! ```

mod discover;
mod install;
pub mod wheel;

use std::path::PathBuf;

pub use discover::ORT_MINOR_MIN;
pub use wheel::{CudaCapability, Flavor, ORT_VERSION};

/// The environment variable naming the library (as crat-backend's `ort::DYLIB_PATH_ENV`).
pub const DYLIB_PATH_ENV: &str = "ORT_DYLIB_PATH";

/// The package index used unless configured: PyPI's simple API.
pub const INDEX_URL_DEFAULT: &str = "https://pypi.org/simple/";

/// Limits on everything [`ensure`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of one project page of the index (onnxruntime's is ~0.6 MB).
    pub index_bytes_max: u64,
    /// Most bytes of one wheel (the largest needed, nvidia-cudnn-cu13, is ~0.6 GB).
    pub wheel_bytes_max: u64,
    /// Most bytes of one library unpacked (libcublasLt.so.13 is ~0.55 GB).
    pub library_bytes_max: u64,
    /// Most entries in one wheel.
    pub wheel_entries_max: usize,
    /// How long connecting to the index may take.
    pub connect_timeout_ms: u64,
    /// How long the index may send nothing (response head or body) before giving up.
    pub idle_timeout_ms: u64,
    /// How long one download (a page or a wheel) may take in all.
    pub download_s_max: u64,
    /// Most redirects followed.
    pub redirects_max: usize,
    /// Most directory entries looked at in one listing (site-packages, `capi/`).
    pub scan_entries_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            index_bytes_max: 16 << 20,
            wheel_bytes_max: 2 << 30,
            library_bytes_max: 2 << 30,
            wheel_entries_max: 100_000,
            connect_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            download_s_max: 3_600,
            redirects_max: 5,
            scan_entries_max: 4_096,
        }
    }
}

/// Where to look for an `onnxruntime` Python package.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonSearch {
    /// Interpreters to ask, in order (`python3` from `PATH` by default).
    pub interpreters: Vec<PathBuf>,
    /// site-packages directories to look in after asking, in order.
    pub site_packages: Vec<PathBuf>,
    /// How long one interpreter may take to answer.
    pub timeout_ms: u64,
}

impl PythonSearch {
    /// How long an interpreter may take unless configured.
    pub const TIMEOUT_MS_DEFAULT: u64 = 5_000;

    /// `python3` from `PATH`, then the active virtual environment's, the user's and the
    /// system's site-packages.
    pub fn system(limits: &Limits) -> Self {
        Self {
            interpreters: vec![PathBuf::from("python3")],
            site_packages: discover::default_site_packages(limits),
            timeout_ms: Self::TIMEOUT_MS_DEFAULT,
        }
    }

    /// Look at no Python package.
    pub fn none() -> Self {
        Self {
            timeout_ms: Self::TIMEOUT_MS_DEFAULT,
            ..Self::default()
        }
    }
}

/// What [`ensure`] does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupConfig {
    /// The library the operator configured; looked at first.
    pub configured_path: Option<PathBuf>,
    /// `ORT_DYLIB_PATH`; looked at second.
    pub env_path: Option<PathBuf>,
    /// The Python packages looked at third.
    pub python: PythonSearch,
    /// The node's data directory; installs go to `onnxruntime/<version>/<flavor>/` in it.
    pub data_dir: PathBuf,
    /// Install from the index when nothing is found (default `true`).
    pub install: bool,
    /// The package index's simple API, e.g. `https://pypi.org/simple/` (the default) or a
    /// mirror's.
    pub index_url: String,
    /// The backend can use the CUDA execution provider (crat-backend's feature `cuda`): only
    /// then is the CUDA build worth installing.
    pub cuda_compiled: bool,
    /// Sizes and timeouts.
    pub limits: Limits,
}

impl SetupConfig {
    /// The defaults for a node whose data directory is `data_dir`: `ORT_DYLIB_PATH` from the
    /// environment, the system's Python, PyPI, installing on, CUDA as compiled into
    /// crat-backend.
    pub fn new(data_dir: PathBuf) -> Self {
        let limits = Limits::default();
        Self {
            configured_path: None,
            env_path: std::env::var_os(DYLIB_PATH_ENV)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            python: PythonSearch::system(&limits),
            data_dir,
            install: true,
            index_url: INDEX_URL_DEFAULT.to_owned(),
            cuda_compiled: crat_backend::select::CUDA_COMPILED,
            limits,
        }
    }
}

/// Where a library was found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The configured path.
    Configured,
    /// `ORT_DYLIB_PATH`.
    Env,
    /// The Python package in this directory.
    Python(PathBuf),
    /// A copy installed in the data directory earlier.
    DataDir,
    /// Installed into the data directory just now.
    Downloaded,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Configured => f.write_str("configured path"),
            Source::Env => f.write_str("ORT_DYLIB_PATH"),
            Source::Python(dir) => write!(f, "Python package {}", dir.display()),
            Source::DataDir => f.write_str("installed in the data directory"),
            Source::Downloaded => f.write_str("installed from the package index"),
        }
    }
}

/// An ONNX Runtime library to serve with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// `libonnxruntime.so.1.*`: crat-backend's `SelectConfig::ort_dylib_path`.
    pub dylib: PathBuf,
    /// Which build it is (the CUDA build has `libonnxruntime_providers_cuda.so` beside it).
    pub flavor: Flavor,
    /// For a CUDA build installed here, the directory of its CUDA and cuDNN libraries:
    /// crat-backend's `SelectConfig::cuda_dylib_dir`.
    pub cuda_dylib_dir: Option<PathBuf>,
    /// Where it was found.
    pub source: Source,
}

/// What [`ensure`] reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A place looked at and passed over, and why.
    PassedOver(String),
    /// The build about to be installed, and why this one.
    Plan {
        /// The build.
        flavor: Flavor,
        /// Why.
        reason: String,
    },
    /// Bytes of a wheel downloaded so far (at the start, every 1 % or MiB, and at the end).
    Download {
        /// The wheel's file name.
        file: String,
        /// Bytes so far.
        done_bytes: u64,
        /// Its size, if the index or the server said.
        total_bytes: Option<u64>,
    },
    /// A wheel's sha256 matched the index's.
    Verified {
        /// The wheel's file name.
        file: String,
        /// Its sha256.
        sha256: String,
    },
    /// Libraries taken out of a wheel.
    Extracted {
        /// The wheel's file name.
        file: String,
        /// The libraries' file names.
        libraries: Vec<String>,
        /// Download and unpacking, in milliseconds.
        took_ms: u64,
    },
    /// A build was renamed into place.
    Installed {
        /// Its directory.
        dir: PathBuf,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::PassedOver(why) => write!(f, "passed over {why}"),
            Event::Plan { flavor, reason } => write!(
                f,
                "installing the {} build of ONNX Runtime {ORT_VERSION}: {reason}",
                flavor.name()
            ),
            Event::Download {
                file,
                done_bytes,
                total_bytes: Some(total),
            } => write!(f, "downloading {file}: {done_bytes}/{total} bytes"),
            Event::Download {
                file, done_bytes, ..
            } => write!(f, "downloading {file}: {done_bytes} bytes"),
            Event::Verified { file, sha256 } => write!(f, "{file}: sha256 {sha256} verified"),
            Event::Extracted {
                file,
                libraries,
                took_ms,
            } => write!(f, "{file}: took {} in {took_ms} ms", libraries.join(", ")),
            Event::Installed { dir } => write!(f, "installed in {}", dir.display()),
        }
    }
}

/// Why no ONNX Runtime could be found or installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// Nothing was found and installing is turned off.
    #[error("no ONNX Runtime found and installing it is turned off")]
    NotFound,
    /// PyPI has no ONNX Runtime wheel this node can use on this host.
    #[error("no ONNX Runtime wheel for {0}")]
    UnsupportedPlatform(String),
    /// The index URL is not an http(s) URL.
    #[error("package index URL {url:?} is invalid: {reason}")]
    IndexUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A request failed: connection, TLS, protocol.
    #[error("download failed: {url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("download failed: {url}: HTTP status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The server sent nothing for too long, or a download ran out of time.
    #[error("download failed: {url}: timed out after {after_ms} ms")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit that ran out.
        after_ms: u64,
    },
    /// A project page of the index is not what the JSON simple API serves.
    #[error("package index {url}: {reason}")]
    Index {
        /// The page.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The index has no wheel of a package for this host.
    #[error(
        "no {package} {version} wheel for {platform} in the package index (it lists: {listed})"
    )]
    NoWheel {
        /// The package.
        package: String,
        /// The version.
        version: String,
        /// This host.
        platform: String,
        /// The files of that package and version it does list (at most 32).
        listed: String,
    },
    /// A wheel or library is larger than its limit.
    #[error("{file}: {size} bytes, more than the {bytes_max} allowed")]
    TooLarge {
        /// The file.
        file: String,
        /// Its size.
        size: u64,
        /// The limit.
        bytes_max: u64,
    },
    /// A download is not the size the index lists.
    #[error("download failed: {file}: {actual} bytes, the package index says {expected}")]
    SizeMismatch {
        /// The wheel.
        file: String,
        /// The size the index lists.
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// A wheel's sha256 is not the index's: refused, nothing installed.
    #[error("{file}: sha256 {actual} is not the {expected} the package index lists; refused")]
    HashMismatch {
        /// The wheel.
        file: String,
        /// The sha256 the index lists.
        expected: String,
        /// The sha256 of what was received.
        actual: String,
    },
    /// A wheel is not a readable archive or lacks a library it must have.
    #[error("{file}: {reason}")]
    Wheel {
        /// The wheel.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Not enough free disk space for the install.
    #[error("{needed} bytes needed in {dir}, {available} free")]
    DiskSpace {
        /// The directory.
        dir: PathBuf,
        /// Bytes needed (three times the wheels' size).
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Finds or installs ONNX Runtime; see the [module docs](self). `gpu` decides which build is
/// installed; `progress` hears about every place passed over and every download.
pub async fn ensure(
    config: &SetupConfig,
    gpu: &CudaCapability,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<Found, SetupError> {
    if let Some(found) = discover::discover(config, progress).await {
        return Ok(found);
    }
    let (wanted, reason) = wheel::plan(config.cuda_compiled, gpu);
    let flavors: &[Flavor] = match wanted {
        Flavor::Cuda => &[Flavor::Cuda, Flavor::Cpu],
        Flavor::Cpu => &[Flavor::Cpu],
    };
    let mut last_error = SetupError::NotFound;
    for &flavor in flavors {
        match install::installed(&config.data_dir, flavor) {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {}
            Err(why) => progress(Event::PassedOver(format!(
                "the {} build in the data directory: {why}",
                flavor.name()
            ))),
        }
        if !config.install {
            continue;
        }
        let platform = wheel::Platform::host()?;
        progress(Event::Plan {
            flavor,
            reason: if flavor == wanted {
                reason.clone()
            } else {
                format!("the {} build could not be installed", wanted.name())
            },
        });
        match install::install(config, flavor, &platform, progress).await {
            Ok(found) => return Ok(found),
            Err(e) => {
                if flavor != Flavor::Cpu {
                    progress(Event::PassedOver(format!(
                        "the {} build: {e}",
                        flavor.name()
                    )));
                }
                last_error = e;
            }
        }
    }
    Err(last_error)
}
