//! What to install: the build of ONNX Runtime the GPU allows ([`plan`]), the PyPI packages
//! that make it up ([`packages`]), and the one wheel of each that fits this host
//! ([`choose_wheel`]).

use serde::Deserialize;

use super::SetupError;

/// The ONNX Runtime version installed (the wheels of PyPI's `onnxruntime` and
/// `onnxruntime-gpu` 1.31.1; the `ort` crate's `api-24` needs 1.24 or newer).
pub const ORT_VERSION: &str = "1.31.1";

/// The CUDA major version `onnxruntime-gpu` 1.31.1 on PyPI is built with (its
/// `build_and_package_info.py` says `cuda_version = '13.0'`): the driver must support it
/// (NVIDIA driver 580 or newer).
pub const CUDA_MAJOR_REQUIRED: u32 = 13;

/// Which build of ONNX Runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// The CPU build (PyPI `onnxruntime`).
    Cpu,
    /// The CUDA build (PyPI `onnxruntime-gpu`) with the CUDA and cuDNN libraries it needs.
    Cuda,
}

impl Flavor {
    /// `cpu` or `cuda`: the name of its directory under `<data_dir>/onnxruntime/<version>/`.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Cpu => "cpu",
            Flavor::Cuda => "cuda",
        }
    }
}

/// What NVML says about the NVIDIA GPUs and driver (see [`CudaCapability::detect`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaCapability {
    /// NVIDIA GPUs NVML sees.
    pub gpus: u32,
    /// The newest CUDA version (major, minor) the driver supports; `None`: unknown.
    pub driver_cuda: Option<(u32, u32)>,
}

impl CudaCapability {
    /// No NVIDIA GPU.
    pub const NONE: Self = Self {
        gpus: 0,
        driver_cuda: None,
    };

    /// Asks NVML (the driver's `libnvidia-ml`, loaded at run time). Without a driver: no GPU,
    /// with NVML's error as the second value.
    pub fn detect() -> (Self, Option<String>) {
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(n) => n,
            Err(e) => return (Self::NONE, Some(format!("NVML: {e}"))),
        };
        let gpus = nvml.device_count().unwrap_or(0);
        let driver_cuda = nvml.sys_cuda_driver_version().ok().and_then(|v| {
            Some((
                u32::try_from(nvml_wrapper::cuda_driver_version_major(v)).ok()?,
                u32::try_from(nvml_wrapper::cuda_driver_version_minor(v)).ok()?,
            ))
        });
        (Self { gpus, driver_cuda }, None)
    }
}

/// The build to install and why: the CUDA build when `cuda_compiled` (the backend can use the
/// CUDA execution provider), NVML sees an NVIDIA GPU and its driver supports CUDA
/// [`CUDA_MAJOR_REQUIRED`]; the CPU build otherwise.
pub fn plan(cuda_compiled: bool, gpu: &CudaCapability) -> (Flavor, String) {
    if gpu.gpus == 0 {
        return (Flavor::Cpu, "no NVIDIA GPU seen by NVML".into());
    }
    if !cuda_compiled {
        return (
            Flavor::Cpu,
            format!(
                "{} NVIDIA GPU(s), but this build has no CUDA execution provider (feature `cuda`)",
                gpu.gpus
            ),
        );
    }
    match gpu.driver_cuda {
        Some((major, minor)) if major >= CUDA_MAJOR_REQUIRED => (
            Flavor::Cuda,
            format!(
                "{} NVIDIA GPU(s), driver supports CUDA {major}.{minor}",
                gpu.gpus
            ),
        ),
        Some((major, minor)) => (
            Flavor::Cpu,
            format!(
                "the NVIDIA driver supports CUDA {major}.{minor}; onnxruntime-gpu {ORT_VERSION} \
                 needs CUDA {CUDA_MAJOR_REQUIRED} (driver 580 or newer)"
            ),
        ),
        None => (
            Flavor::Cpu,
            "the NVIDIA driver did not say which CUDA version it supports".into(),
        ),
    }
}

/// One PyPI package to install and the libraries to take from its wheel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackageSpec {
    /// The project name on the index.
    pub name: &'static str,
    /// The exact version.
    pub version: &'static str,
    /// Where in the wheel its libraries are (`onnxruntime/capi/`, `nvidia/`).
    pub prefix: &'static str,
    /// Libraries that must be there (file names).
    pub required: &'static [&'static str],
    /// Also take every other shared library in a `lib/` directory under [`Self::prefix`]
    /// (cuDNN loads its engine libraries by name at run time).
    pub all_shared: bool,
}

impl PackageSpec {
    /// Whether the wheel member at `path` (a relative path inside the wheel) is one to take.
    pub(crate) fn wants(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix(self.prefix) else {
            return false;
        };
        let (dir, name) = rest.rsplit_once('/').unwrap_or(("", rest));
        if name.is_empty() {
            return false;
        }
        self.required.contains(&name)
            || (self.all_shared
                && (dir == "lib" || dir.ends_with("/lib"))
                && (name.ends_with(".so") || name.contains(".so.")))
    }
}

const ORT_LIBRARY: &str = "libonnxruntime.so.1.31.1";

/// The CPU build.
const CPU_PACKAGES: &[PackageSpec] = &[PackageSpec {
    name: "onnxruntime",
    version: ORT_VERSION,
    prefix: "onnxruntime/capi/",
    required: &[ORT_LIBRARY, "libonnxruntime_providers_shared.so"],
    all_shared: false,
}];

/// The CUDA build and, from the `cuda` and `cudnn` extras of `onnxruntime-gpu` 1.31.1
/// (`nvidia-cuda-nvrtc~=13.0`, `nvidia-cuda-runtime~=13.0`, `nvidia-cufft~=12.0`,
/// `nvidia-curand~=10.0`, `nvidia-cudnn-cu13~=9.0`, and `nvidia-cublas`, which cuDNN
/// requires), the CUDA 13.0 releases and the cuDNN current when 1.31.1 came out. The libraries
/// required are what the CUDA execution provider links to and what `ort` preloads.
const CUDA_PACKAGES: &[PackageSpec] = &[
    PackageSpec {
        name: "onnxruntime-gpu",
        version: ORT_VERSION,
        prefix: "onnxruntime/capi/",
        required: &[
            ORT_LIBRARY,
            "libonnxruntime_providers_shared.so",
            "libonnxruntime_providers_cuda.so",
        ],
        all_shared: false,
    },
    PackageSpec {
        name: "nvidia-cuda-runtime",
        version: "13.0.96",
        prefix: "nvidia/",
        required: &["libcudart.so.13"],
        all_shared: true,
    },
    PackageSpec {
        name: "nvidia-cublas",
        version: "13.1.0.3",
        prefix: "nvidia/",
        required: &["libcublas.so.13", "libcublasLt.so.13"],
        all_shared: true,
    },
    PackageSpec {
        name: "nvidia-cuda-nvrtc",
        version: "13.0.88",
        prefix: "nvidia/",
        required: &["libnvrtc.so.13"],
        all_shared: true,
    },
    PackageSpec {
        name: "nvidia-curand",
        version: "10.4.0.35",
        prefix: "nvidia/",
        required: &["libcurand.so.10"],
        all_shared: true,
    },
    PackageSpec {
        name: "nvidia-cufft",
        version: "12.0.0.61",
        prefix: "nvidia/",
        required: &["libcufft.so.12"],
        all_shared: true,
    },
    PackageSpec {
        name: "nvidia-cudnn-cu13",
        version: "9.26.1.1",
        prefix: "nvidia/",
        required: &[
            "libcudnn.so.9",
            "libcudnn_graph.so.9",
            "libcudnn_ops.so.9",
            "libcudnn_heuristic.so.9",
            "libcudnn_adv.so.9",
            "libcudnn_cnn.so.9",
            "libcudnn_engines_precompiled.so.9",
            "libcudnn_engines_runtime_compiled.so.9",
        ],
        all_shared: true,
    },
];

/// The packages that make up `flavor`, ONNX Runtime's first.
pub fn packages(flavor: Flavor) -> &'static [PackageSpec] {
    match flavor {
        Flavor::Cpu => CPU_PACKAGES,
        Flavor::Cuda => CUDA_PACKAGES,
    }
}

/// The file name of the ONNX Runtime library in an installed directory.
pub fn library_name() -> &'static str {
    ORT_LIBRARY
}

/// A host the wheels are chosen for: Linux with glibc on `arch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `x86_64` or `aarch64`, as in manylinux platform tags.
    pub arch: &'static str,
}

impl Platform {
    /// This host, if PyPI has ONNX Runtime wheels a node can use for it (manylinux: Linux
    /// with glibc, x86_64 or aarch64).
    pub fn host() -> Result<Self, SetupError> {
        let arch = if cfg!(target_arch = "x86_64") {
            "x86_64"
        } else if cfg!(target_arch = "aarch64") {
            "aarch64"
        } else {
            ""
        };
        if cfg!(all(target_os = "linux", target_env = "gnu")) && !arch.is_empty() {
            Ok(Self { arch })
        } else {
            Err(SetupError::UnsupportedPlatform(format!(
                "{}-{}{}: the node installs manylinux wheels (Linux with glibc, x86_64 or \
                 aarch64); install ONNX Runtime yourself and configure its path",
                std::env::consts::OS,
                std::env::consts::ARCH,
                if cfg!(target_env = "musl") {
                    " (musl)"
                } else {
                    ""
                }
            )))
        }
    }

    /// The glibc version (major, minor) a platform tag needs on this architecture, or `None`
    /// when the tag is not a manylinux tag for it.
    pub fn glibc_required(&self, tag: &str) -> Option<(u32, u32)> {
        let rest = tag.strip_suffix(self.arch)?.strip_suffix('_')?;
        match rest {
            "manylinux1" => Some((2, 5)),
            "manylinux2010" => Some((2, 12)),
            "manylinux2014" => Some((2, 17)),
            _ => {
                let v = rest.strip_prefix("manylinux_")?;
                let (major, minor) = v.split_once('_')?;
                Some((major.parse().ok()?, minor.parse().ok()?))
            }
        }
    }
}

/// One file of a project on the package index, as the JSON simple API (PEP 691) lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct IndexFile {
    /// File name (`onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl`).
    pub filename: String,
    /// Where to download it (absolute, or relative to the project page).
    pub url: String,
    /// Hashes by algorithm; a file without `sha256` is never chosen.
    #[serde(default)]
    pub hashes: std::collections::BTreeMap<String, String>,
    /// Size in bytes (API version 1.1 and later).
    #[serde(default)]
    pub size: Option<u64>,
    /// `false`, `true` or the reason it was yanked; a yanked file is never chosen.
    #[serde(default)]
    pub yanked: Yanked,
}

impl IndexFile {
    /// The sha256 the index lists, lower-case hex.
    pub fn sha256(&self) -> Option<String> {
        self.hashes
            .get("sha256")
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

/// The `yanked` field of a PEP 691 file: a boolean or a reason.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Yanked {
    /// `true` / `false`.
    Flag(bool),
    /// Yanked, for this reason.
    Reason(String),
    /// Not given.
    #[default]
    #[serde(skip)]
    Absent,
}

impl Yanked {
    fn is_yanked(&self) -> bool {
        matches!(self, Yanked::Flag(true) | Yanked::Reason(_))
    }
}

/// PEP 503's normalised project name: lower case, runs of `-`, `_` and `.` as one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// How well a wheel fits: lower is better.
type Rank = (bool, (u32, u32), u32);

/// How well `filename` fits `spec` on `platform`: `None` if it does not install here.
fn rank(filename: &str, spec: &PackageSpec, platform: &Platform) -> Option<Rank> {
    let stem = filename.strip_suffix(".whl")?;
    let parts: Vec<&str> = stem.split('-').collect();
    // name-version(-build)?-python-abi-platform
    let (name, version, python, abi, plat) = match parts.as_slice() {
        [n, v, p, a, pl] | [n, v, _, p, a, pl] => (*n, *v, *p, *a, *pl),
        _ => return None,
    };
    if normalize(name) != normalize(spec.name) || version != spec.version {
        return None;
    }
    // The native libraries do not depend on the Python version, but a free-threaded build
    // (`cp313t`) or a Python 2 one is not what the index's ordinary wheels are.
    let cp_minor = python
        .split('.')
        .filter_map(|t| {
            if t == "py3" || t == "py2" {
                Some(0)
            } else {
                t.strip_prefix("cp3")?.parse::<u32>().ok()
            }
        })
        .min()?;
    let abi_ok = abi.split('.').any(|a| {
        a == "none"
            || a == "abi3"
            || (a.starts_with("cp3") && a[3..].bytes().all(|b| b.is_ascii_digit()))
    });
    if !abi_ok {
        return None;
    }
    let glibc = plat
        .split('.')
        .filter_map(|t| platform.glibc_required(t))
        .min()?;
    // Prefer wheels not tied to one Python ABI, then the oldest glibc, then the oldest Python.
    let python_specific = abi != "none" && abi != "abi3";
    Some((python_specific, glibc, cp_minor))
}

/// The wheel of `spec` to install on `platform`: for this architecture, not yanked, with a
/// sha256; of those the one least tied to a Python version and glibc (see the source of
/// `rank`). Errs with [`SetupError::NoWheel`] naming what the index does have.
pub fn choose_wheel<'a>(
    files: &'a [IndexFile],
    spec: &PackageSpec,
    platform: &Platform,
) -> Result<&'a IndexFile, SetupError> {
    files
        .iter()
        .filter(|f| !f.yanked.is_yanked() && f.sha256().is_some())
        .filter_map(|f| Some((rank(&f.filename, spec, platform)?, f)))
        .min_by(|(a, fa), (b, fb)| a.cmp(b).then_with(|| fa.filename.cmp(&fb.filename)))
        .map(|(_, f)| f)
        .ok_or_else(|| {
            let prefix = format!(
                "{}-{}-",
                normalize(spec.name).replace('-', "_"),
                spec.version
            );
            let listed: Vec<&str> = files
                .iter()
                .map(|f| f.filename.as_str())
                .filter(|n| n.to_ascii_lowercase().starts_with(&prefix))
                .take(32)
                .collect();
            SetupError::NoWheel {
                package: spec.name.to_owned(),
                version: spec.version.to_owned(),
                platform: format!("manylinux {}", platform.arch),
                listed: if listed.is_empty() {
                    "no file of this version".to_owned()
                } else {
                    listed.join(", ")
                },
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: Platform = Platform { arch: "x86_64" };
    const ARM: Platform = Platform { arch: "aarch64" };

    fn file(name: &str) -> IndexFile {
        IndexFile {
            filename: name.into(),
            url: format!("../../files/{name}"),
            hashes: [("sha256".to_owned(), "ab".repeat(32))].into(),
            size: Some(1),
            yanked: Yanked::Flag(false),
        }
    }

    /// The files PyPI lists for onnxruntime 1.31.1 (Linux, macOS, Windows; cp311..cp314).
    fn ort_files() -> Vec<IndexFile> {
        let mut v = Vec::new();
        for py in ["cp311", "cp312", "cp313", "cp314"] {
            for plat in [
                "macosx_14_0_arm64",
                "manylinux_2_28_aarch64",
                "manylinux_2_28_x86_64",
                "win_amd64",
                "win_arm64",
            ] {
                v.push(file(&format!("onnxruntime-1.31.1-{py}-{py}-{plat}.whl")));
            }
        }
        v.push(file(
            "onnxruntime-1.31.1-cp314-cp314t-manylinux_2_28_x86_64.whl",
        ));
        v.push(file(
            "onnxruntime-1.30.0-cp310-cp310-manylinux_2_27_x86_64.whl",
        ));
        v
    }

    #[test]
    fn the_cpu_wheel_is_chosen_for_this_architecture() {
        let files = ort_files();
        let spec = &packages(Flavor::Cpu)[0];
        assert_eq!(
            choose_wheel(&files, spec, &X86).unwrap().filename,
            "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl"
        );
        assert_eq!(
            choose_wheel(&files, spec, &ARM).unwrap().filename,
            "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_aarch64.whl"
        );
    }

    #[test]
    fn yanked_unhashed_and_foreign_wheels_are_never_chosen() {
        let spec = &packages(Flavor::Cpu)[0];
        let mut yanked = file("onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl");
        yanked.yanked = Yanked::Reason("broken".into());
        let mut unhashed = file("onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl");
        unhashed.hashes.clear();
        let files = vec![
            yanked,
            unhashed,
            file("onnxruntime-1.31.1-cp313-cp313t-manylinux_2_28_x86_64.whl"),
            file("onnxruntime-1.31.1-cp311-cp311-win_amd64.whl"),
            file("onnxruntime-1.31.1-cp311-cp311-musllinux_1_2_x86_64.whl"),
            file("onnxruntime-1.30.0-cp311-cp311-manylinux_2_28_x86_64.whl"),
        ];
        let e = choose_wheel(&files, spec, &X86).unwrap_err();
        assert!(
            matches!(&e, SetupError::NoWheel { listed, .. } if listed.contains("win_amd64")),
            "{e}"
        );
    }

    #[test]
    fn nvidia_wheels_match_by_normalised_name_and_compressed_tags() {
        let spec = packages(Flavor::Cuda)
            .iter()
            .find(|s| s.name == "nvidia-cuda-runtime")
            .unwrap();
        let files = vec![
            file(
                "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_aarch64.manylinux_2_17_aarch64.whl",
            ),
            file(
                "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
            ),
            file("nvidia_cuda_runtime-13.0.96-py3-none-win_amd64.whl"),
            file(
                "nvidia_cuda_runtime-13.5.37-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
            ),
        ];
        assert_eq!(
            choose_wheel(&files, spec, &X86).unwrap().filename,
            "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
        );
        assert!(
            choose_wheel(&files, spec, &ARM)
                .unwrap()
                .filename
                .contains("aarch64")
        );
    }

    #[test]
    fn manylinux_tags_give_their_glibc() {
        assert_eq!(X86.glibc_required("manylinux_2_28_x86_64"), Some((2, 28)));
        assert_eq!(X86.glibc_required("manylinux2014_x86_64"), Some((2, 17)));
        assert_eq!(X86.glibc_required("manylinux1_x86_64"), Some((2, 5)));
        assert_eq!(X86.glibc_required("manylinux_2_28_aarch64"), None);
        assert_eq!(X86.glibc_required("linux_x86_64"), None);
        assert_eq!(ARM.glibc_required("manylinux_2_34_aarch64"), Some((2, 34)));
    }

    #[test]
    fn the_gpu_decides_the_build() {
        let gpu = |driver| CudaCapability {
            gpus: 1,
            driver_cuda: driver,
        };
        assert_eq!(plan(true, &CudaCapability::NONE).0, Flavor::Cpu);
        assert_eq!(plan(true, &gpu(Some((13, 0)))).0, Flavor::Cuda);
        assert_eq!(plan(true, &gpu(Some((13, 2)))).0, Flavor::Cuda);
        let (flavor, why) = plan(true, &gpu(Some((12, 8))));
        assert_eq!(flavor, Flavor::Cpu);
        assert!(why.contains("CUDA 12.8"), "{why}");
        assert_eq!(plan(true, &gpu(None)).0, Flavor::Cpu);
        let (flavor, why) = plan(false, &gpu(Some((13, 0))));
        assert_eq!(flavor, Flavor::Cpu);
        assert!(why.contains("feature `cuda`"), "{why}");
    }

    /// With a GPU, the GPU build and the CUDA/cuDNN wheels of its extras are chosen for this
    /// architecture, each by its pinned version; with none, the CPU wheel alone.
    #[test]
    fn the_gpu_build_is_onnxruntime_gpu_and_the_nvidia_wheels() {
        let names: Vec<&str> = packages(Flavor::Cuda).iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "onnxruntime-gpu",
                "nvidia-cuda-runtime",
                "nvidia-cublas",
                "nvidia-cuda-nvrtc",
                "nvidia-curand",
                "nvidia-cufft",
                "nvidia-cudnn-cu13"
            ]
        );
        let listing = |spec: &PackageSpec| -> Vec<IndexFile> {
            let dist = normalize(spec.name).replace('-', "_");
            let (py, abi) = if spec.name == "onnxruntime-gpu" {
                ("cp311", "cp311")
            } else {
                ("py3", "none")
            };
            [
                "manylinux_2_28_x86_64",
                "manylinux_2_34_aarch64",
                "win_amd64",
            ]
            .iter()
            .map(|plat| file(&format!("{dist}-{}-{py}-{abi}-{plat}.whl", spec.version)))
            .collect()
        };
        let (flavor, _) = plan(
            true,
            &CudaCapability {
                gpus: 2,
                driver_cuda: Some((13, 0)),
            },
        );
        for spec in packages(flavor) {
            let files = listing(spec);
            let chosen = choose_wheel(&files, spec, &X86).unwrap();
            assert!(
                chosen.filename.ends_with("manylinux_2_28_x86_64.whl"),
                "{chosen:?}"
            );
            assert!(chosen.filename.contains(spec.version));
        }
        assert_eq!(packages(plan(true, &CudaCapability::NONE).0).len(), 1);
    }

    #[test]
    fn wanted_members() {
        let cpu = &packages(Flavor::Cpu)[0];
        assert!(cpu.wants("onnxruntime/capi/libonnxruntime.so.1.31.1"));
        assert!(cpu.wants("onnxruntime/capi/libonnxruntime_providers_shared.so"));
        assert!(
            !cpu.wants(
                "onnxruntime/capi/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so"
            )
        );
        assert!(!cpu.wants("other/capi/libonnxruntime.so.1.31.1"));
        let cudnn = packages(Flavor::Cuda).last().unwrap();
        assert!(cudnn.wants("nvidia/cudnn/lib/libcudnn_engines_tensor_ir.so.9"));
        assert!(!cudnn.wants("nvidia/cudnn/include/cudnn.h"));
        assert!(!cudnn.wants("nvidia/cu13/lib/libcudart_static.a"));
    }

    #[test]
    fn names_normalise() {
        assert_eq!(normalize("nvidia_cuda_runtime"), "nvidia-cuda-runtime");
        assert_eq!(normalize("ONNXRuntime-GPU"), "onnxruntime-gpu");
        assert_eq!(normalize("a._-b"), "a-b");
    }
}
