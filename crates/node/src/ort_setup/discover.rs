//! Finding a `libonnxruntime` already on this host: the configured path, `ORT_DYLIB_PATH`,
//! an installed `onnxruntime` / `onnxruntime-gpu` Python package.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::wheel::Flavor;
use super::{Event, Found, Limits, PythonSearch, SetupConfig, Source};

/// The lowest ONNX Runtime minor version the `ort` crate's `api-24` loads.
pub const ORT_MINOR_MIN: u32 = 24;

/// Asks an interpreter where its `onnxruntime` package is, without importing it.
const FIND_SPEC: &str = "import importlib.util as u, os\n\
s = u.find_spec('onnxruntime')\n\
print(os.path.dirname(s.origin) if s is not None and s.origin else '')";

/// Most bytes of an interpreter's answer read.
const PYTHON_OUTPUT_BYTES_MAX: u64 = 4096;

/// The places [`super::ensure`] looks at before the data directory, in order; the first that
/// has a library wins. Places passed over are reported through `progress`.
pub(crate) async fn discover(
    config: &SetupConfig,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Option<Found> {
    for (path, source, what) in [
        (
            &config.configured_path,
            Source::Configured,
            "configured path",
        ),
        (&config.env_path, Source::Env, "ORT_DYLIB_PATH"),
    ] {
        let Some(path) = path else { continue };
        if path.is_file() {
            return Some(found_at(path.clone(), source));
        }
        progress(Event::PassedOver(format!(
            "{what} {}: no such file",
            path.display()
        )));
    }
    python_package(&config.python, &config.limits, progress).await
}

/// A library at `dylib`: the CUDA build if the CUDA provider library is beside it.
fn found_at(dylib: PathBuf, source: Source) -> Found {
    let cuda = dylib
        .parent()
        .is_some_and(|d| d.join("libonnxruntime_providers_cuda.so").is_file());
    Found {
        dylib,
        flavor: if cuda { Flavor::Cuda } else { Flavor::Cpu },
        cuda_dylib_dir: None,
        source,
    }
}

/// The library of an installed `onnxruntime` Python package: asked of each interpreter, then
/// looked for in each site-packages directory.
async fn python_package(
    search: &PythonSearch,
    limits: &Limits,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Option<Found> {
    for interpreter in &search.interpreters {
        match ask_interpreter(interpreter, search.timeout_ms).await {
            Ok(Some(package)) => match library_in_package(&package, limits) {
                Ok(dylib) => {
                    return Some(found_at(dylib, Source::Python(package)));
                }
                Err(reason) => progress(Event::PassedOver(format!(
                    "Python package {}: {reason}",
                    package.display()
                ))),
            },
            Ok(None) => {}
            Err(reason) => progress(Event::PassedOver(format!(
                "{}: {reason}",
                interpreter.display()
            ))),
        }
    }
    for dir in search.site_packages.iter().take(limits.scan_entries_max) {
        let package = dir.join("onnxruntime");
        if !package.join("capi").is_dir() {
            continue;
        }
        match library_in_package(&package, limits) {
            Ok(dylib) => return Some(found_at(dylib, Source::Python(package))),
            Err(reason) => progress(Event::PassedOver(format!(
                "Python package {}: {reason}",
                package.display()
            ))),
        }
    }
    None
}

/// Runs `interpreter` to find its `onnxruntime` package, killed after `timeout_ms`.
async fn ask_interpreter(interpreter: &Path, timeout_ms: u64) -> Result<Option<PathBuf>, String> {
    let mut child = tokio::process::Command::new(interpreter)
        .args(["-c", FIND_SPEC])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let run = async {
        let mut out = Vec::new();
        (&mut stdout)
            .take(PYTHON_OUTPUT_BYTES_MAX)
            .read_to_end(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        let status = child.wait().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, out))
    };
    let (status, out) = tokio::time::timeout(Duration::from_millis(timeout_ms), run)
        .await
        .map_err(|_| format!("no answer within {timeout_ms} ms"))??;
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    let text = String::from_utf8_lossy(&out);
    let dir = text.trim();
    Ok((!dir.is_empty()).then(|| PathBuf::from(dir)))
}

/// `libonnxruntime.so.1.N.P` in `package/capi/` with the highest version, if N is at least
/// [`ORT_MINOR_MIN`].
fn library_in_package(package: &Path, limits: &Limits) -> Result<PathBuf, String> {
    let capi = package.join("capi");
    let entries = std::fs::read_dir(&capi).map_err(|e| format!("{}: {e}", capi.display()))?;
    let best = entries
        .take(limits.scan_entries_max)
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("libonnxruntime.so.")?;
            let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
            let v = (
                parts.next()??,
                parts.next()??,
                parts.next().flatten().unwrap_or(0),
            );
            Some((v, e.path()))
        })
        .max();
    match best {
        Some(((1, minor, _), path)) if minor >= ORT_MINOR_MIN => Ok(path),
        Some(((major, minor, patch), _)) => Err(format!(
            "ONNX Runtime {major}.{minor}.{patch} is older than 1.{ORT_MINOR_MIN}"
        )),
        None => Err("no libonnxruntime.so.1.* in capi/".into()),
    }
}

/// The site-packages directories an ordinary installation puts packages in: the active
/// virtual environment's, the user's, and the system's (`lib/python3.*/site-packages`,
/// `dist-packages`), found with bounded directory listings.
pub(crate) fn default_site_packages(limits: &Limits) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(venv).join("lib"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local/lib"));
    }
    roots.push("/usr/local/lib".into());
    roots.push("/usr/lib".into());
    let mut dirs = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .take(limits.scan_entries_max)
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        for python in pythons.into_iter().rev() {
            for sub in ["site-packages", "dist-packages"] {
                let dir = python.join(sub);
                if dir.is_dir() && dirs.len() < limits.scan_entries_max {
                    dirs.push(dir);
                }
            }
        }
    }
    dirs
}
