//! ONNX Runtime set up by itself (`crat_node::ort_setup`), against a package index served on
//! loopback: the real `onnxruntime` 1.31.1 wheel installed, verified and selected; a tampered
//! wheel refused; the discovery order; the GPU build falling back to the CPU build.
//!
//! The real wheel comes from `scripts/install-onnxruntime.sh --print-wheel` (which
//! `scripts/test.sh` and so CI run first; it downloads the wheel once into
//! `~/.cache/cryptorat/wheels/`), or `CRAT_ORT_WHEEL`. Without it the test fails and says so.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use crat_node::ort_setup::{
    CudaCapability, Event, Flavor, Limits, PythonSearch, SetupConfig, SetupError, Source, ensure,
};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// sha256 of the wheels PyPI lists for onnxruntime 1.31.1, cp311, manylinux_2_28.
const PYPI_SHA256: [(&str, &str); 2] = [
    (
        "x86_64",
        "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
    ),
    (
        "aarch64",
        "da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3",
    ),
];

fn arch() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aarch64"
    } else {
        "x86_64"
    }
}

fn other_arch() -> &'static str {
    if arch() == "x86_64" {
        "aarch64"
    } else {
        "x86_64"
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The real wheel; a test that needs it fails without it.
fn real_wheel() -> (String, Vec<u8>) {
    let name = format!(
        "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_{}.whl",
        arch()
    );
    let path = match std::env::var_os("CRAT_ORT_WHEEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("CRAT_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cryptorat"))
                })
                .expect("HOME or CRAT_CACHE_DIR is set");
            cache.join("wheels").join(&name)
        }
    };
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "the real onnxruntime 1.31.1 wheel is needed at {} ({e}): run \
             `scripts/install-onnxruntime.sh --print-wheel` (scripts/test.sh does) or set \
             CRAT_ORT_WHEEL",
            path.display()
        )
    });
    (name, bytes)
}

/// A file the index lists: what it lists about it and what it serves.
#[derive(Clone)]
struct IndexedFile {
    name: String,
    listed_sha256: String,
    listed_size: u64,
    served: Arc<Vec<u8>>,
}

impl IndexedFile {
    fn honest(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            listed_sha256: sha256(&bytes),
            listed_size: bytes.len() as u64,
            served: Arc::new(bytes),
        }
    }
}

#[derive(Default)]
struct IndexState {
    projects: Mutex<BTreeMap<String, Vec<IndexedFile>>>,
    /// GETs per path.
    hits: Mutex<BTreeMap<String, usize>>,
    requests: AtomicUsize,
}

/// A package index (JSON simple API, PEP 691) on loopback.
struct Index {
    state: Arc<IndexState>,
    url: String,
}

impl Index {
    async fn start(projects: BTreeMap<String, Vec<IndexedFile>>) -> Self {
        let state = Arc::new(IndexState {
            projects: Mutex::new(projects),
            ..IndexState::default()
        });
        let app = Router::new()
            .route("/simple/{project}/", get(page))
            .route("/files/{name}", get(file))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            state,
            url: format!("http://{addr}/simple/"),
        }
    }

    fn hits(&self, path: &str) -> usize {
        self.state.hits.lock().get(path).copied().unwrap_or(0)
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

fn count(state: &IndexState, path: String) {
    state.requests.fetch_add(1, Ordering::SeqCst);
    *state.hits.lock().entry(path).or_default() += 1;
}

async fn page(State(state): State<Arc<IndexState>>, UrlPath(project): UrlPath<String>) -> Response {
    count(&state, format!("/simple/{project}/"));
    let Some(files) = state.projects.lock().get(&project).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let files: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            serde_json::json!({
                "filename": f.name,
                // Relative to the page, as PEP 691 allows.
                "url": format!("../../files/{}", f.name),
                "hashes": { "sha256": f.listed_sha256 },
                "size": f.listed_size,
                "yanked": false,
            })
        })
        .collect();
    let body = serde_json::json!({
        "meta": { "api-version": "1.1" },
        "name": project,
        "files": files,
    });
    (
        [(header::CONTENT_TYPE, "application/vnd.pypi.simple.v1+json")],
        body.to_string(),
    )
        .into_response()
}

async fn file(State(state): State<Arc<IndexState>>, UrlPath(name): UrlPath<String>) -> Response {
    count(&state, format!("/files/{name}"));
    let found = state
        .projects
        .lock()
        .values()
        .flatten()
        .find(|f| f.name == name)
        .map(|f| f.served.clone());
    match found {
        Some(bytes) => (*bytes).clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A small wheel holding fake libraries under `onnxruntime/capi/`.
fn fake_wheel(libraries: &[&str]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("onnxruntime/__init__.py", options).unwrap();
    zip.write_all(b"# not the real package\n").unwrap();
    for lib in libraries {
        zip.start_file(format!("onnxruntime/capi/{lib}"), options)
            .unwrap();
        zip.write_all(format!("fake {lib}").as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn config(data_dir: &Path, index_url: &str) -> SetupConfig {
    SetupConfig {
        configured_path: None,
        env_path: None,
        python: PythonSearch::none(),
        data_dir: data_dir.to_path_buf(),
        install: true,
        index_url: index_url.to_owned(),
        cuda_compiled: false,
        limits: Limits::default(),
    }
}

fn staging_left(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("onnxruntime/1.31.1");
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(".staging-")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The real wheel, among wheels for other platforms, is chosen, downloaded, verified and
/// unpacked; crat-backend then serves with ONNX Runtime from it; a second run finds it
/// installed and asks the index for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_the_real_wheel_from_a_loopback_index_then_finds_it_installed() {
    let (name, bytes) = real_wheel();
    let real = IndexedFile::honest(&name, bytes);
    let pypi = PYPI_SHA256.iter().find(|(a, _)| *a == arch()).unwrap().1;
    assert_eq!(
        real.listed_sha256, pypi,
        "the cached wheel is not PyPI's {name}"
    );
    // Wheels for other hosts, served as garbage: choosing one would fail the install.
    let decoy = |n: String| IndexedFile::honest(&n, b"not this one".to_vec());
    let files = vec![
        decoy(format!(
            "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_{}.whl",
            other_arch()
        )),
        decoy("onnxruntime-1.31.1-cp311-cp311-win_amd64.whl".into()),
        decoy("onnxruntime-1.31.1-cp311-cp311-macosx_14_0_arm64.whl".into()),
        decoy(format!(
            "onnxruntime-1.31.1-cp314-cp314t-manylinux_2_28_{}.whl",
            arch()
        )),
        decoy(format!(
            "onnxruntime-1.30.0-cp311-cp311-manylinux_2_28_{}.whl",
            arch()
        )),
        real.clone(),
    ];
    let index = Index::start([("onnxruntime".to_owned(), files)].into()).await;
    let data = tempfile::tempdir().unwrap();
    let config = config(data.path(), &index.url);

    let mut events = Vec::new();
    let started = Instant::now();
    let found = ensure(&config, &CudaCapability::NONE, &mut |e| events.push(e))
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!(
        "download + verify + unpack of {name} ({} bytes) from loopback: {} ms",
        real.listed_size,
        took.as_millis()
    );
    let dir = data.path().join("onnxruntime/1.31.1/cpu");
    assert_eq!(found.source, Source::Downloaded);
    assert_eq!(found.flavor, Flavor::Cpu);
    assert_eq!(found.dylib, dir.join("libonnxruntime.so.1.31.1"));
    assert_eq!(found.cuda_dylib_dir, None);
    assert!(dir.join("libonnxruntime_providers_shared.so").is_file());
    // Only the libraries: not the Python extension module nor anything else.
    let mut installed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    installed.sort();
    assert_eq!(
        installed,
        [
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_shared.so",
            "manifest.json"
        ]
    );
    assert!(staging_left(data.path()).is_empty());
    assert_eq!(index.hits("/simple/onnxruntime/"), 1);
    assert_eq!(index.hits(&format!("/files/{name}")), 1);
    assert_eq!(index.requests(), 2, "no decoy was downloaded");
    assert!(events.iter().any(|e| matches!(e,
        Event::Download { done_bytes, total_bytes: Some(t), .. } if done_bytes == t && *t == real.listed_size)));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Verified { sha256, .. } if sha256 == pypi))
    );
    assert!(events.iter().any(|e| matches!(e, Event::Installed { .. })));

    // crat-backend selects ONNX Runtime from the installed library (and runs its probe model).
    let selected = crat_backend::select::select_backend(&crat_backend::select::SelectConfig {
        ort_dylib_path: Some(found.dylib.clone()),
        cuda: false,
        ..crat_backend::select::SelectConfig::default()
    })
    .unwrap();
    assert_eq!(selected.describe(), "ort/cpu", "{:?}", selected.fallbacks);

    // Second run: found in the data directory, nothing asked of the index.
    let mut events = Vec::new();
    let again = ensure(&config, &CudaCapability::NONE, &mut |e| events.push(e))
        .await
        .unwrap();
    assert_eq!(again.source, Source::DataDir);
    assert_eq!(again.dylib, found.dylib);
    assert_eq!(index.requests(), 2);
    assert!(events.is_empty(), "{events:?}");
}

/// A wheel whose bytes are not those the index lists is refused with the typed error, and
/// nothing is installed nor left behind.
#[tokio::test]
async fn a_tampered_wheel_is_refused_and_nothing_is_installed() {
    let name = format!(
        "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_{}.whl",
        arch()
    );
    let genuine = fake_wheel(&[
        "libonnxruntime.so.1.31.1",
        "libonnxruntime_providers_shared.so",
    ]);
    let mut tampered = genuine.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x40;
    let file = IndexedFile {
        served: Arc::new(tampered.clone()),
        ..IndexedFile::honest(&name, genuine.clone())
    };
    let index = Index::start([("onnxruntime".to_owned(), vec![file])].into()).await;
    let data = tempfile::tempdir().unwrap();
    let e = ensure(
        &config(data.path(), &index.url),
        &CudaCapability::NONE,
        &mut |_| {},
    )
    .await
    .unwrap_err();
    match &e {
        SetupError::HashMismatch {
            file,
            expected,
            actual,
        } => {
            assert_eq!(file, &name);
            assert_eq!(expected, &sha256(&genuine));
            assert_eq!(actual, &sha256(&tampered));
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    assert!(!data.path().join("onnxruntime/1.31.1/cpu").exists());
    assert!(staging_left(data.path()).is_empty());

    // The same index serving the genuine bytes installs (the fake libraries).
    index.state.projects.lock().insert(
        "onnxruntime".into(),
        vec![IndexedFile::honest(&name, genuine)],
    );
    let found = ensure(
        &config(data.path(), &index.url),
        &CudaCapability::NONE,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(found.source, Source::Downloaded);
    assert_eq!(
        std::fs::read(&found.dylib).unwrap(),
        b"fake libonnxruntime.so.1.31.1"
    );
}

/// A wheel that lacks a library it must have is refused with the typed error.
#[tokio::test]
async fn a_wheel_without_the_library_is_refused() {
    let name = format!(
        "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_{}.whl",
        arch()
    );
    let wheel = fake_wheel(&["libonnxruntime_providers_shared.so"]);
    let index = Index::start(
        [(
            "onnxruntime".to_owned(),
            vec![IndexedFile::honest(&name, wheel)],
        )]
        .into(),
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    let e = ensure(
        &config(data.path(), &index.url),
        &CudaCapability::NONE,
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, SetupError::Wheel { reason, .. } if reason.contains("libonnxruntime.so.1.31.1")),
        "{e}"
    );
    assert!(!data.path().join("onnxruntime/1.31.1/cpu").exists());
}

/// With a GPU the CUDA build is asked for first (`onnxruntime-gpu`); an index without it
/// makes the node install the CPU build and say why.
#[tokio::test]
async fn the_gpu_build_falls_back_to_the_cpu_build() {
    let name = format!(
        "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_{}.whl",
        arch()
    );
    let wheel = fake_wheel(&[
        "libonnxruntime.so.1.31.1",
        "libonnxruntime_providers_shared.so",
    ]);
    let index = Index::start(
        [(
            "onnxruntime".to_owned(),
            vec![IndexedFile::honest(&name, wheel)],
        )]
        .into(),
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    let config = SetupConfig {
        cuda_compiled: true,
        ..config(data.path(), &index.url)
    };
    let gpu = CudaCapability {
        gpus: 1,
        driver_cuda: Some((13, 0)),
    };
    let mut events = Vec::new();
    let found = ensure(&config, &gpu, &mut |e| events.push(e))
        .await
        .unwrap();
    assert_eq!(found.flavor, Flavor::Cpu);
    assert_eq!(index.hits("/simple/onnxruntime-gpu/"), 1);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Plan {
                flavor: Flavor::Cuda,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, Event::PassedOver(why)
            if why.starts_with("the cuda build: download failed") && why.contains("404"))),
        "{events:?}"
    );
}

fn touch(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The configured path beats `ORT_DYLIB_PATH`, which beats a Python package, which beats the
/// data directory; a missing path is passed over with the reason; with installing off and
/// nothing found the error says so. Nothing here reaches the network.
#[tokio::test]
async fn discovery_order() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let configured = t.join("configured/libonnxruntime.so.1.31.1");
    let env = t.join("env/libonnxruntime.so.1.31.1");
    let old_site = t.join("old-site");
    let site = t.join("site");
    touch(&configured, b"configured");
    touch(&env, b"env");
    touch(
        &old_site.join("onnxruntime/capi/libonnxruntime.so.1.20.0"),
        b"too old",
    );
    touch(
        &site.join("onnxruntime/capi/libonnxruntime.so.1.31.1"),
        b"python",
    );
    touch(
        &site.join("onnxruntime/capi/libonnxruntime.so.1.24.0"),
        b"python, older",
    );
    let data = t.join("data");
    let installed = data.join("onnxruntime/1.31.1/cpu");
    touch(&installed.join("libonnxruntime.so.1.31.1"), b"data");
    touch(
        &installed.join("manifest.json"),
        br#"{"version":"1.31.1","flavor":"cpu","wheels":[],"libraries":[["libonnxruntime.so.1.31.1",4]]}"#,
    );

    let mut config = SetupConfig {
        configured_path: Some(configured.clone()),
        env_path: Some(env.clone()),
        python: PythonSearch {
            interpreters: Vec::new(),
            site_packages: vec![old_site.clone(), site.clone()],
            timeout_ms: 1_000,
        },
        install: false,
        // Never asked: nothing listens there.
        index_url: "http://127.0.0.1:9/simple/".into(),
        ..self::config(&data, "")
    };
    let run = |config: SetupConfig| async move {
        let mut events = Vec::new();
        let r = ensure(&config, &CudaCapability::NONE, &mut |e| events.push(e)).await;
        (r, events)
    };

    let (found, _) = run(config.clone()).await;
    let found = found.unwrap();
    assert_eq!(
        (found.source, found.dylib),
        (Source::Configured, configured.clone())
    );

    config.configured_path = Some(t.join("missing/libonnxruntime.so"));
    let (found, events) = run(config.clone()).await;
    let found = found.unwrap();
    assert_eq!((found.source, found.dylib), (Source::Env, env.clone()));
    assert!(
        matches!(&events[..], [Event::PassedOver(why)] if why.contains("configured path") && why.contains("missing")),
        "{events:?}"
    );

    config.configured_path = None;
    config.env_path = None;
    let (found, events) = run(config.clone()).await;
    let found = found.unwrap();
    assert_eq!(found.source, Source::Python(site.join("onnxruntime")));
    assert_eq!(
        found.dylib,
        site.join("onnxruntime/capi/libonnxruntime.so.1.31.1")
    );
    assert!(
        events.iter().any(
            |e| matches!(e, Event::PassedOver(why) if why.contains("1.20.0 is older than 1.24"))
        ),
        "{events:?}"
    );

    config.python.site_packages.clear();
    let (found, _) = run(config.clone()).await;
    let found = found.unwrap();
    assert_eq!(found.source, Source::DataDir);
    assert_eq!(found.dylib, installed.join("libonnxruntime.so.1.31.1"));

    // A damaged copy (the library not the size its manifest says) is passed over.
    std::fs::write(installed.join("libonnxruntime.so.1.31.1"), b"truncated!").unwrap();
    let (found, events) = run(config.clone()).await;
    assert!(matches!(found, Err(SetupError::NotFound)), "{found:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::PassedOver(why) if why.contains("manifest says"))),
        "{events:?}"
    );
}

/// An interpreter is asked where its package is; one that does not answer in time is given up
/// on (and killed) and the next asked.
#[tokio::test]
async fn python_interpreters_are_asked_with_a_timeout() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let package = tmp.path().join("venv/site-packages/onnxruntime");
    touch(&package.join("capi/libonnxruntime.so.1.31.1"), b"python");
    let script = |name: &str, body: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let slow = script("slow-python", "sleep 30");
    let none = script("bare-python", "echo");
    let good = script("venv-python", &format!("echo '{}'", package.display()));
    let config = SetupConfig {
        python: PythonSearch {
            interpreters: vec![tmp.path().join("no-such-python"), slow, none, good],
            site_packages: Vec::new(),
            timeout_ms: 300,
        },
        install: false,
        ..config(&tmp.path().join("data"), "http://127.0.0.1:9/simple/")
    };
    let mut events = Vec::new();
    let started = Instant::now();
    let found = ensure(&config, &CudaCapability::NONE, &mut |e| events.push(e))
        .await
        .unwrap();
    assert!(
        started.elapsed().as_secs() < 10,
        "the slow interpreter was waited for"
    );
    assert_eq!(found.source, Source::Python(package.clone()));
    assert_eq!(found.dylib, package.join("capi/libonnxruntime.so.1.31.1"));
    let reasons: Vec<String> = events.iter().map(ToString::to_string).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no-such-python") && r.contains("cannot run")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("slow-python") && r.contains("no answer within 300 ms")),
        "{reasons:?}"
    );
}
