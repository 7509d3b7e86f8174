//! Installing from the package index: the project pages (JSON simple API, PEP 691), the
//! wheels (size-capped, sha256-checked, with progress), the libraries taken out of them, and
//! the directory they land in, renamed into place only when complete.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::wheel::{self, Flavor, IndexFile, PackageSpec, Platform};
use super::{Event, Found, Limits, SetupConfig, SetupError, Source};

/// The media type of the JSON simple API (PEP 691), version 1.
const SIMPLE_JSON: &str = "application/vnd.pypi.simple.v1+json";

/// The file listing what an installed directory holds; written last, so a directory with it is
/// complete.
pub(crate) const MANIFEST: &str = "manifest.json";

/// Most bytes of a manifest read back.
const MANIFEST_BYTES_MAX: u64 = 1 << 20;

/// Staging directories older than this are left over from an interrupted install and removed.
const STALE_STAGING_S: u64 = 24 * 3600;

/// What an installed directory holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) version: String,
    pub(crate) flavor: String,
    /// `(file name, sha256)` of each wheel the libraries came from.
    pub(crate) wheels: Vec<(String, String)>,
    /// `(file name, bytes)` of each library.
    pub(crate) libraries: Vec<(String, u64)>,
}

/// The project page of one project of the index.
#[derive(Debug, Deserialize)]
struct ProjectPage {
    files: Vec<IndexFile>,
}

pub(crate) fn index_base(url: &str) -> Result<reqwest::Url, SetupError> {
    let bad = |reason: &str| SetupError::IndexUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let with_slash = if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    };
    let base = reqwest::Url::parse(&with_slash).map_err(|e| bad(&e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(bad("not an http(s) URL"));
    }
    Ok(base)
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback()),
        None => false,
    }
}

pub(crate) fn client(base: &reqwest::Url, limits: &Limits) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(limits.connect_timeout_ms))
        .redirect(reqwest::redirect::Policy::limited(limits.redirects_max))
        .user_agent(concat!("crat-node/", env!("CARGO_PKG_VERSION")));
    if is_loopback(base) {
        // A loopback index (a mirror on this host, the tests) is never reached through a proxy.
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| SetupError::Http {
        url: base.to_string(),
        reason: e.to_string(),
    })
}

fn http_error(url: &reqwest::Url, e: reqwest::Error) -> SetupError {
    // reqwest's Display omits the cause ("error sending request"); the chain says why. The URL
    // is said once, by the error.
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    SetupError::Http {
        url: url.to_string(),
        reason,
    }
}

/// Sends a GET and waits (bounded) for the response head.
async fn get(
    client: &reqwest::Client,
    url: &reqwest::Url,
    accept: &str,
    limits: &Limits,
) -> Result<reqwest::Response, SetupError> {
    let send = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, accept)
        .send();
    let response = tokio::time::timeout(Duration::from_millis(limits.idle_timeout_ms), send)
        .await
        .map_err(|_| SetupError::Timeout {
            url: url.to_string(),
            after_ms: limits.idle_timeout_ms,
        })?
        .map_err(|e| http_error(url, e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(SetupError::Status {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    Ok(response)
}

/// The next chunk of a body, waiting at most the idle timeout and never past `deadline`.
async fn chunk(
    response: &mut reqwest::Response,
    url: &reqwest::Url,
    limits: &Limits,
    deadline: tokio::time::Instant,
) -> Result<Option<bytes::Bytes>, SetupError> {
    let idle = tokio::time::Instant::now() + Duration::from_millis(limits.idle_timeout_ms);
    match tokio::time::timeout_at(idle.min(deadline), response.chunk()).await {
        Ok(r) => r.map_err(|e| http_error(url, e)),
        Err(_) => Err(SetupError::Timeout {
            url: url.to_string(),
            after_ms: if deadline <= idle {
                limits.download_s_max.saturating_mul(1000)
            } else {
                limits.idle_timeout_ms
            },
        }),
    }
}

/// The files the index lists for `name`.
pub(crate) async fn project_files(
    client: &reqwest::Client,
    base: &reqwest::Url,
    name: &str,
    limits: &Limits,
) -> Result<(reqwest::Url, Vec<IndexFile>), SetupError> {
    let url = base
        .join(&format!("{}/", wheel::normalize(name)))
        .map_err(|e| SetupError::IndexUrl {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
    let index_error = |reason: String| SetupError::Index {
        url: url.to_string(),
        reason,
    };
    let mut response = get(client, &url, SIMPLE_JSON, limits).await?;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !content_type.starts_with(SIMPLE_JSON) && !content_type.starts_with("application/json") {
        return Err(index_error(format!(
            "answered {content_type:?}, not the JSON simple API ({SIMPLE_JSON}, PEP 691)"
        )));
    }
    if response
        .content_length()
        .is_some_and(|n| n > limits.index_bytes_max)
    {
        return Err(index_error(format!(
            "page larger than {} bytes",
            limits.index_bytes_max
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(limits.download_s_max);
    let mut body = Vec::new();
    while let Some(c) = chunk(&mut response, &url, limits, deadline).await? {
        if body.len() as u64 + c.len() as u64 > limits.index_bytes_max {
            return Err(index_error(format!(
                "page larger than {} bytes",
                limits.index_bytes_max
            )));
        }
        body.extend_from_slice(&c);
    }
    let page: ProjectPage =
        serde_json::from_slice(&body).map_err(|e| index_error(format!("bad JSON: {e}")))?;
    Ok((url, page.files))
}

/// Downloads `file` into `dest`, checking its size against the index and `limits` and its
/// sha256 against the index's; a file that fails either is deleted.
pub(crate) async fn download(
    client: &reqwest::Client,
    url: &reqwest::Url,
    file: &IndexFile,
    dest: &Path,
    limits: &Limits,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<(), SetupError> {
    let name = &file.filename;
    let expected_sha256 = file.sha256().ok_or_else(|| SetupError::Index {
        url: url.to_string(),
        reason: format!("{name} has no sha256"),
    })?;
    let too_large = |size| SetupError::TooLarge {
        file: name.clone(),
        size,
        bytes_max: limits.wheel_bytes_max,
    };
    if let Some(size) = file.size.filter(|&s| s > limits.wheel_bytes_max) {
        return Err(too_large(size));
    }
    let mut response = get(client, url, "*/*", limits).await?;
    let total = file.size.or(response.content_length());
    if let (Some(listed), Some(sent)) = (file.size, response.content_length())
        && listed != sent
    {
        return Err(SetupError::SizeMismatch {
            file: name.clone(),
            expected: listed,
            actual: sent,
        });
    }
    if let Some(size) = total.filter(|&s| s > limits.wheel_bytes_max) {
        return Err(too_large(size));
    }
    let io = |e| SetupError::Io {
        path: dest.to_path_buf(),
        source: e,
    };
    let result = async {
        let mut out = std::io::BufWriter::new(std::fs::File::create(dest).map_err(io)?);
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let mut reported: u64 = 0;
        let step = (total.unwrap_or(0) / 100).max(1 << 20);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(limits.download_s_max);
        progress(Event::Download {
            file: name.clone(),
            done_bytes: 0,
            total_bytes: total,
        });
        while let Some(c) = chunk(&mut response, url, limits, deadline).await? {
            done += c.len() as u64;
            if done > total.unwrap_or(limits.wheel_bytes_max) {
                return Err(if total.is_some() {
                    SetupError::SizeMismatch {
                        file: name.clone(),
                        expected: total.unwrap_or(0),
                        actual: done,
                    }
                } else {
                    too_large(done)
                });
            }
            hasher.update(&c);
            out.write_all(&c).map_err(io)?;
            if done - reported >= step {
                reported = done;
                progress(Event::Download {
                    file: name.clone(),
                    done_bytes: done,
                    total_bytes: total,
                });
            }
        }
        out.flush().map_err(io)?;
        if let Some(expected) = total
            && done != expected
        {
            return Err(SetupError::SizeMismatch {
                file: name.clone(),
                expected,
                actual: done,
            });
        }
        if reported != done {
            progress(Event::Download {
                file: name.clone(),
                done_bytes: done,
                total_bytes: total,
            });
        }
        let actual = hex::encode(hasher.finalize());
        if actual != expected_sha256 {
            return Err(SetupError::HashMismatch {
                file: name.clone(),
                expected: expected_sha256.clone(),
                actual,
            });
        }
        progress(Event::Verified {
            file: name.clone(),
            sha256: actual,
        });
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// Takes the libraries `spec` wants out of `wheel` into `dest`, each at most
/// `limits.library_bytes_max`; every required one must be there. Returns `(name, bytes)` of
/// each. Blocking.
pub(crate) fn extract(
    wheel: &Path,
    spec: &PackageSpec,
    dest: &Path,
    limits: &Limits,
) -> Result<Vec<(String, u64)>, SetupError> {
    let file_name = wheel
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let bad = |reason: String| SetupError::Wheel {
        file: file_name.clone(),
        reason,
    };
    let io = |path: &Path, e| SetupError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let file = std::fs::File::open(wheel).map_err(|e| io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    if zip.len() > limits.wheel_entries_max {
        return Err(bad(format!(
            "{} entries, more than the {} allowed",
            zip.len(),
            limits.wheel_entries_max
        )));
    }
    let mut taken: Vec<(String, u64)> = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        if !entry.is_file() {
            continue;
        }
        // A member whose name climbs out of the archive is never a library we want.
        let Some(path) = entry.enclosed_name() else {
            continue;
        };
        let Some(path_str) = path.to_str() else {
            continue;
        };
        if !spec.wants(path_str) {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if taken.iter().any(|(n, _)| *n == name) {
            return Err(bad(format!("{name} is in the wheel twice")));
        }
        if entry.size() > limits.library_bytes_max {
            return Err(SetupError::TooLarge {
                file: format!("{file_name}: {path_str}"),
                size: entry.size(),
                bytes_max: limits.library_bytes_max,
            });
        }
        let target = dest.join(&name);
        let mut out = std::fs::File::create(&target).map_err(|e| io(&target, e))?;
        // The zip reader checks the member's CRC-32 when it reaches its end.
        let written = std::io::copy(
            &mut (&mut entry).take(limits.library_bytes_max + 1),
            &mut out,
        )
        .map_err(|e| bad(format!("{path_str}: {e}")))?;
        if written != entry.size() {
            return Err(bad(format!(
                "{path_str}: {written} bytes unpacked, the archive says {}",
                entry.size()
            )));
        }
        out.sync_all().map_err(|e| io(&target, e))?;
        taken.push((name, written));
    }
    for required in spec.required {
        if !taken.iter().any(|(n, _)| n == required) {
            return Err(bad(format!("has no {}{required}", spec.prefix)));
        }
    }
    Ok(taken)
}

/// Bytes free for an unprivileged user on the file system of `dir`; `None` if unknown.
// `fsblkcnt_t` and `c_ulong` are `u64` here but narrower on 32-bit targets.
#[allow(clippy::useless_conversion)]
fn available_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    u64::from(s.blocks_available()).checked_mul(u64::from(s.fragment_size()))
}

/// Removes staging directories an interrupted install left in `dir` a day or more ago.
fn remove_stale_staging(dir: &Path, limits: &Limits) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.take(limits.scan_entries_max).flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age.as_secs() >= STALE_STAGING_S);
        if stale && entry.file_name().to_string_lossy().starts_with(".staging-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Where `flavor` is installed under the data directory.
pub(crate) fn install_dir(data_dir: &Path, flavor: Flavor) -> PathBuf {
    data_dir
        .join("onnxruntime")
        .join(wheel::ORT_VERSION)
        .join(flavor.name())
}

/// The installed copy of `flavor` in the data directory, if complete: its manifest is there
/// and names every library at its size.
pub(crate) fn installed(data_dir: &Path, flavor: Flavor) -> Result<Option<Found>, String> {
    let dir = install_dir(data_dir, flavor);
    let manifest_path = dir.join(MANIFEST);
    let Ok(file) = std::fs::File::open(&manifest_path) else {
        return Ok(None);
    };
    let mut text = Vec::new();
    file.take(MANIFEST_BYTES_MAX)
        .read_to_end(&mut text)
        .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    for (name, bytes) in &manifest.libraries {
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == *bytes => {}
            Ok(m) => {
                return Err(format!(
                    "{} is {} bytes, the manifest says {bytes}",
                    path.display(),
                    m.len()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    let dylib = dir.join(wheel::library_name());
    if !manifest
        .libraries
        .iter()
        .any(|(n, _)| n == wheel::library_name())
    {
        return Err(format!(
            "{} lists no {}",
            manifest_path.display(),
            wheel::library_name()
        ));
    }
    Ok(Some(Found {
        dylib,
        flavor,
        cuda_dylib_dir: (flavor == Flavor::Cuda).then(|| dir.clone()),
        source: Source::DataDir,
    }))
}

/// Installs `flavor` into the data directory from the index; see the [module docs](super).
pub(crate) async fn install(
    config: &SetupConfig,
    flavor: Flavor,
    platform: &Platform,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<Found, SetupError> {
    let limits = &config.limits;
    let base = index_base(&config.index_url)?;
    let client = client(&base, limits)?;

    // Every wheel is chosen before any is downloaded: a missing one fails in seconds.
    let mut chosen = Vec::new();
    for spec in wheel::packages(flavor) {
        let (page, files) = project_files(&client, &base, spec.name, limits).await?;
        let file = wheel::choose_wheel(&files, spec, platform)?.clone();
        let url = page.join(&file.url).map_err(|e| SetupError::Index {
            url: page.to_string(),
            reason: format!("{}: bad URL {:?}: {e}", file.filename, file.url),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SetupError::Index {
                url: page.to_string(),
                reason: format!("{}: URL {url} is not http(s)", file.filename),
            });
        }
        chosen.push((spec, file, url));
    }

    let version_dir = config.data_dir.join("onnxruntime").join(wheel::ORT_VERSION);
    std::fs::create_dir_all(&version_dir).map_err(|e| SetupError::Io {
        path: version_dir.clone(),
        source: e,
    })?;
    remove_stale_staging(&version_dir, limits);
    // A wheel and what comes out of it (compressed libraries unpack to up to ~2.5×) side by
    // side: three times the wheels' bytes.
    let listed: u64 = chosen.iter().filter_map(|(_, f, _)| f.size).sum();
    let needed = listed.saturating_mul(3);
    if let Some(available) = available_bytes(&version_dir)
        && available < needed
    {
        return Err(SetupError::DiskSpace {
            dir: version_dir,
            needed,
            available,
        });
    }

    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&version_dir)
        .map_err(|e| SetupError::Io {
            path: version_dir.clone(),
            source: e,
        })?;
    let lib_dir = staging.path().join("lib");
    std::fs::create_dir(&lib_dir).map_err(|e| SetupError::Io {
        path: lib_dir.clone(),
        source: e,
    })?;
    let mut manifest = Manifest {
        version: wheel::ORT_VERSION.to_owned(),
        flavor: flavor.name().to_owned(),
        wheels: Vec::new(),
        libraries: Vec::new(),
    };
    for (spec, file, url) in chosen {
        let wheel_path = staging.path().join(&file.filename);
        let started = Instant::now();
        download(&client, &url, &file, &wheel_path, limits, progress).await?;
        let (spec, limits_copy, dest, path) = (*spec, *limits, lib_dir.clone(), wheel_path.clone());
        let libraries =
            tokio::task::spawn_blocking(move || extract(&path, &spec, &dest, &limits_copy))
                .await
                .map_err(|e| SetupError::Wheel {
                    file: file.filename.clone(),
                    reason: format!("unpacking stopped: {e}"),
                })??;
        let _ = std::fs::remove_file(&wheel_path);
        progress(Event::Extracted {
            file: file.filename.clone(),
            libraries: libraries.iter().map(|(n, _)| n.clone()).collect(),
            took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        manifest
            .wheels
            .push((file.filename.clone(), file.sha256().unwrap_or_default()));
        manifest.libraries.extend(libraries);
    }
    let manifest_path = lib_dir.join(MANIFEST);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| SetupError::Io {
        path: manifest_path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&manifest_path, json).map_err(|e| SetupError::Io {
        path: manifest_path.clone(),
        source: e,
    })?;

    let final_dir = install_dir(&config.data_dir, flavor);
    if let Err(e) = std::fs::rename(&lib_dir, &final_dir) {
        // Another node process may have finished the same install first; an incomplete
        // directory (no manifest) is replaced.
        if let Ok(Some(found)) = installed(&config.data_dir, flavor) {
            return Ok(found);
        }
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&lib_dir, &final_dir).map_err(|_| SetupError::Io {
            path: final_dir.clone(),
            source: e,
        })?;
    }
    progress(Event::Installed {
        dir: final_dir.clone(),
    });
    match installed(&config.data_dir, flavor) {
        Ok(Some(found)) => Ok(Found {
            source: Source::Downloaded,
            ..found
        }),
        Ok(None) => Err(SetupError::Io {
            path: final_dir,
            source: std::io::Error::other("installed directory has no manifest"),
        }),
        Err(reason) => Err(SetupError::Io {
            path: final_dir,
            source: std::io::Error::other(reason),
        }),
    }
}
