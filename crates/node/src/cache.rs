//! Model cache: content-addressed bytes on disk, loaded models in memory.
//!
//! - [`ModelStore`] keeps model files under `<dir>/<blake3 hex>.onnx`, written atomically
//!   (temporary file, then rename) and verified against their id on **every** read: a file
//!   corrupted on disk is deleted and reported, never loaded. The store is bounded by
//!   [`ModelStore::disk_bytes_max`], evicting least recently used files.
//! - [`ModelCache`] keeps loaded models in memory under a byte budget with LRU eviction.
//!   Concurrent requests for a model that is loading wait for that one load (single flight)
//!   and share its result, success or failure.
//!
//! # Limits of a load
//! Before a model is loaded, its memory is estimated from its graph
//! ([`crat_backend::onnx_check::MemoryEstimate`]): a model estimated above the cache's budget
//! is refused ([`CacheError::OverMemory`], with the estimate and what it is made of) without
//! reaching the backend, and a loaded model counts in the budget as the larger of the estimate
//! and what the backend reports. A load gets [`ModelCache::load_timeout_ms`] (waiting for a
//! slot included; [`CacheError::LoadTimedOut`] past it), and at most [`LOADS_AT_ONCE_MAX`] run
//! at once: a load cannot be interrupted, so one over its time finishes on its blocking thread
//! and keeps its slot until then, and stuck loads never pile up threads or memory.
//!
//! What a model allocates *while* it loads or runs is not bounded by the node: tract has no
//! memory limit of its own, and the ONNX Runtime CPU arena cap is not reachable from the safe
//! `ort` API this workspace uses (its CUDA arena is, `OrtConfig::gpu_memory_bytes_max`).
//! The estimate is what stands between a node and a model built to exhaust its memory; its
//! blind spots (sizes computed at run time) are listed in
//! [`crat_backend::onnx_check::memory`].

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crat_backend::onnx_check::{Bytes, check_model};
use crat_backend::{BackendError, InferenceBackend, LoadedModel};
use crat_core::id::ModelId;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, watch};

/// Default of [`ModelCache::load_timeout_ms`]: two minutes (tract optimises a large model for
/// tens of seconds on a slow CPU).
pub const LOAD_TIMEOUT_MS_DEFAULT: u64 = 120_000;

/// Model loads running at once in one cache (each on a blocking thread); a load over its time
/// keeps its slot until it really ends.
pub const LOADS_AT_ONCE_MAX: usize = 2;

/// Why a model could not be provided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The bytes on disk or from the network do not hash to the model's id.
    #[error("model {model}: content hashes to {actual}")]
    HashMismatch {
        /// The id asked for.
        model: ModelId,
        /// What the bytes hash to.
        actual: ModelId,
    },
    /// The model is larger than the cache may hold.
    #[error("model of {bytes} bytes exceeds the cache budget of {budget}")]
    TooLarge {
        /// Model size.
        bytes: u64,
        /// The budget.
        budget: u64,
    },
    /// Not in the store and the fetch failed.
    #[error("model {model} unavailable: {reason}")]
    Unavailable {
        /// The model.
        model: ModelId,
        /// Why.
        reason: String,
    },
    /// The memory the model needs, estimated from its graph before loading, is above the
    /// cache's budget: it is not loaded.
    #[error(
        "model {model} needs an estimated {} of memory, above this node's model memory of {}: {detail}",
        Bytes(*estimate_bytes),
        Bytes(*budget)
    )]
    OverMemory {
        /// The model.
        model: ModelId,
        /// The estimate ([`crat_backend::onnx_check::MemoryEstimate::bytes`]).
        estimate_bytes: u64,
        /// The cache's budget.
        budget: u64,
        /// What the estimate is made of.
        detail: String,
    },
    /// Loading took longer than [`ModelCache::load_timeout_ms`] (waiting for a load slot
    /// included).
    #[error("loading model {model} took more than {limit_ms} ms{}", if *waiting { " (waiting for a load slot)" } else { "" })]
    LoadTimedOut {
        /// The model.
        model: ModelId,
        /// The limit.
        limit_ms: u64,
        /// Whether the time ran out before a load slot was free (other loads over their
        /// time hold them).
        waiting: bool,
    },
    /// The backend could not load it.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A local file operation failed.
    #[error("model store I/O: {0}")]
    Io(String),
}

fn io(e: std::io::Error) -> CacheError {
    CacheError::Io(e.to_string())
}

struct StoreEntry {
    bytes: u64,
    last_used: u64,
}

/// Content-addressed model files on disk.
pub struct ModelStore {
    dir: PathBuf,
    disk_bytes_max: u64,
    index: Mutex<StoreIndex>,
}

#[derive(Default)]
struct StoreIndex {
    entries: HashMap<ModelId, StoreEntry>,
    total: u64,
    clock: u64,
}

impl ModelStore {
    /// Opens (creating if needed) a store in `dir` holding at most `disk_bytes_max` bytes.
    /// Files already there are indexed; stray temporary files are removed.
    pub fn open(dir: impl Into<PathBuf>, disk_bytes_max: u64) -> Result<Self, CacheError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut index = StoreIndex::default();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(id) = name
                .strip_suffix(".onnx")
                .and_then(|h| h.parse::<ModelId>().ok())
            else {
                continue;
            };
            let bytes = entry.metadata().map_err(io)?.len();
            index.total += bytes;
            index.entries.insert(
                id,
                StoreEntry {
                    bytes,
                    last_used: 0,
                },
            );
        }
        Ok(Self {
            dir,
            disk_bytes_max,
            index: Mutex::new(index),
        })
    }

    /// The byte limit of the store.
    pub fn disk_bytes_max(&self) -> u64 {
        self.disk_bytes_max
    }

    /// Bytes held now.
    pub fn disk_bytes(&self) -> u64 {
        self.index.lock().total
    }

    fn path(&self, id: &ModelId) -> PathBuf {
        self.dir.join(format!("{id}.onnx"))
    }

    /// True if the store has a file for `id` (not yet verified).
    pub fn contains(&self, id: &ModelId) -> bool {
        self.index.lock().entries.contains_key(id)
    }

    /// Stores `bytes` as model `id` after checking they hash to it, evicting least recently
    /// used models to stay within the budget.
    pub fn put(&self, id: &ModelId, bytes: &[u8]) -> Result<(), CacheError> {
        let actual = ModelId::of_bytes(bytes);
        if actual != *id {
            return Err(CacheError::HashMismatch { model: *id, actual });
        }
        let len = bytes.len() as u64;
        if len > self.disk_bytes_max {
            return Err(CacheError::TooLarge {
                bytes: len,
                budget: self.disk_bytes_max,
            });
        }
        let tmp = self.dir.join(format!("{id}.tmp"));
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, self.path(id)).map_err(io)?;
        let evict = {
            let mut index = self.index.lock();
            index.clock += 1;
            let clock = index.clock;
            if let Some(old) = index.entries.insert(
                *id,
                StoreEntry {
                    bytes: len,
                    last_used: clock,
                },
            ) {
                index.total -= old.bytes;
            }
            index.total += len;
            let mut evict = Vec::new();
            while index.total > self.disk_bytes_max {
                let Some((&victim, _)) = index
                    .entries
                    .iter()
                    .filter(|(k, _)| *k != id)
                    .min_by_key(|(_, e)| e.last_used)
                else {
                    break;
                };
                if let Some(e) = index.entries.remove(&victim) {
                    index.total -= e.bytes;
                }
                evict.push(victim);
            }
            evict
        };
        for victim in evict {
            let _ = std::fs::remove_file(self.path(&victim));
        }
        Ok(())
    }

    /// Reads model `id`, verifying its hash. `Ok(None)` if absent; a file whose content does
    /// not match its id is deleted and reported as [`CacheError::HashMismatch`].
    pub fn get(&self, id: &ModelId) -> Result<Option<Vec<u8>>, CacheError> {
        let bytes = match std::fs::read(self.path(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(id);
                return Ok(None);
            }
            Err(e) => return Err(io(e)),
        };
        let actual = ModelId::of_bytes(&bytes);
        if actual != *id {
            tracing::warn!(model = %id, "model file corrupted on disk; deleting it");
            let _ = std::fs::remove_file(self.path(id));
            self.forget(id);
            return Err(CacheError::HashMismatch { model: *id, actual });
        }
        let mut index = self.index.lock();
        index.clock += 1;
        let clock = index.clock;
        if let Some(e) = index.entries.get_mut(id) {
            e.last_used = clock;
        }
        Ok(Some(bytes))
    }

    fn forget(&self, id: &ModelId) {
        let mut index = self.index.lock();
        if let Some(e) = index.entries.remove(id) {
            index.total -= e.bytes;
        }
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

type LoadResult = Result<Arc<dyn LoadedModel>, CacheError>;

enum Slot {
    Loading(watch::Receiver<Option<LoadResult>>),
    Ready {
        model: Arc<dyn LoadedModel>,
        bytes: u64,
        last_used: u64,
    },
}

#[derive(Default)]
struct Slots {
    slots: HashMap<ModelId, Slot>,
    total: u64,
    clock: u64,
}

/// Loaded models in memory, under a byte budget, LRU-evicted, loaded once per model (see
/// the [module docs](self) for the limits of a load).
pub struct ModelCache {
    backend: Arc<dyn InferenceBackend>,
    memory_bytes_max: u64,
    load_timeout_ms: u64,
    /// Loads running, at most [`LOADS_AT_ONCE_MAX`].
    loads: Arc<Semaphore>,
    slots: Mutex<Slots>,
}

impl ModelCache {
    /// A cache loading with `backend`, holding at most `memory_bytes_max` bytes of models
    /// (each the larger of its estimate from the graph and [`LoadedModel::memory_bytes`]),
    /// refusing to load a model estimated above it, with loads limited to
    /// [`LOAD_TIMEOUT_MS_DEFAULT`].
    pub fn new(backend: Arc<dyn InferenceBackend>, memory_bytes_max: u64) -> Self {
        Self {
            backend,
            memory_bytes_max,
            load_timeout_ms: LOAD_TIMEOUT_MS_DEFAULT,
            loads: Arc::new(Semaphore::new(LOADS_AT_ONCE_MAX)),
            slots: Mutex::new(Slots::default()),
        }
    }

    /// The same cache with loads limited to `ms` milliseconds (at least 1).
    pub fn with_load_timeout_ms(mut self, ms: u64) -> Self {
        self.load_timeout_ms = ms.max(1);
        self
    }

    /// How long one load may take, waiting for a load slot included.
    pub fn load_timeout_ms(&self) -> u64 {
        self.load_timeout_ms
    }

    /// The byte budget of loaded models.
    pub fn memory_bytes_max(&self) -> u64 {
        self.memory_bytes_max
    }

    /// The backend models are loaded with.
    pub fn backend(&self) -> &Arc<dyn InferenceBackend> {
        &self.backend
    }

    /// Bytes of loaded models held now.
    pub fn memory_bytes(&self) -> u64 {
        self.slots.lock().total
    }

    /// Ids of the loaded models.
    pub fn loaded(&self) -> Vec<ModelId> {
        self.slots
            .lock()
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Ready { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Drops a loaded model (e.g. when its last deployment goes away).
    pub fn unload(&self, id: &ModelId) {
        let mut slots = self.slots.lock();
        if let Some(Slot::Ready { bytes, .. }) = slots.slots.get(id) {
            let bytes = *bytes;
            slots.slots.remove(id);
            slots.total -= bytes;
        }
    }

    /// The loaded model `id`, loading it from `fetch` (which yields the model's bytes) if it
    /// is not in memory. Concurrent callers for the same id share one load.
    pub async fn get_or_load<F, Fut>(&self, id: ModelId, fetch: F) -> LoadResult
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, CacheError>>,
    {
        // One critical section decides this caller's role, so two callers can never both
        // become the loader of the same model.
        let tx = {
            let mut slots = self.slots.lock();
            slots.clock += 1;
            let clock = slots.clock;
            match slots.slots.get_mut(&id) {
                Some(Slot::Ready {
                    model, last_used, ..
                }) => {
                    *last_used = clock;
                    return Ok(model.clone());
                }
                Some(Slot::Loading(rx)) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    slots.slots.insert(id, Slot::Loading(rx));
                    Ok(tx)
                }
            }
        };
        let tx = match tx {
            Ok(tx) => tx,
            Err(mut rx) => {
                return match rx.wait_for(Option::is_some).await {
                    Ok(result) => result.clone().unwrap_or_else(|| {
                        Err(CacheError::Io("invariant: waited for a result".into()))
                    }),
                    Err(_) => Err(CacheError::Unavailable {
                        model: id,
                        reason: "the loading task went away".into(),
                    }),
                };
            }
        };
        // If this future is dropped mid-load, the guard frees the slot so others retry.
        let mut guard = LoadGuard {
            cache: self,
            id,
            armed: true,
        };
        let result = self.load(id, fetch).await;
        guard.armed = false;
        let result = result.map(|(model, estimate)| {
            let bytes = model.memory_bytes().max(estimate);
            (model, bytes)
        });
        {
            let mut slots = self.slots.lock();
            match &result {
                Ok((model, bytes)) => {
                    let bytes = *bytes;
                    slots.clock += 1;
                    let clock = slots.clock;
                    slots.slots.insert(
                        id,
                        Slot::Ready {
                            model: model.clone(),
                            bytes,
                            last_used: clock,
                        },
                    );
                    slots.total += bytes;
                    self.evict(&mut slots, &id);
                }
                Err(_) => {
                    slots.slots.remove(&id);
                }
            }
        }
        let result = result.map(|(model, _)| model);
        let _ = tx.send(Some(result.clone()));
        result
    }

    /// Fetches, verifies, estimates and loads model `id`; returns it with its memory estimate
    /// (0 for bytes the model check does not accept: the backend then decides).
    async fn load<F, Fut>(
        &self,
        id: ModelId,
        fetch: F,
    ) -> Result<(Arc<dyn LoadedModel>, u64), CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, CacheError>>,
    {
        let bytes = fetch().await?;
        let actual = ModelId::of_bytes(&bytes);
        if actual != id {
            return Err(CacheError::HashMismatch { model: id, actual });
        }
        let limit_ms = self.load_timeout_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(limit_ms);
        let timed_out = |waiting| CacheError::LoadTimedOut {
            model: id,
            limit_ms,
            waiting,
        };
        let permit = tokio::time::timeout_at(deadline, self.loads.clone().acquire_owned())
            .await
            .map_err(|_| timed_out(true))?
            .map_err(|_| CacheError::Io("invariant: the load semaphore is never closed".into()))?;
        let backend = self.backend.clone();
        let budget = self.memory_bytes_max;
        let job = tokio::task::spawn_blocking(move || {
            // Held until the load really ends, even past its time.
            let _permit = permit;
            // Bytes the check refuses are the backend's to refuse (with the same error).
            let estimate = check_model(&bytes).ok().map(|s| s.memory);
            if let Some(e) = &estimate
                && e.bytes > budget
            {
                return Err(CacheError::OverMemory {
                    model: id,
                    estimate_bytes: e.bytes,
                    budget,
                    detail: e.to_string(),
                });
            }
            let model = backend.load(&bytes)?;
            Ok((model, estimate.map_or(0, |e| e.bytes)))
        });
        let (model, estimate) = tokio::time::timeout_at(deadline, job)
            .await
            .map_err(|_| timed_out(false))?
            .map_err(|e| CacheError::Backend(BackendError::Panicked(e.to_string())))??;
        let bytes = model.memory_bytes().max(estimate);
        if bytes > self.memory_bytes_max {
            return Err(CacheError::TooLarge {
                bytes,
                budget: self.memory_bytes_max,
            });
        }
        Ok((model, estimate))
    }

    /// Evicts least recently used ready models (never `keep`) until within budget.
    fn evict(&self, slots: &mut Slots, keep: &ModelId) {
        while slots.total > self.memory_bytes_max {
            let victim = slots
                .slots
                .iter()
                .filter_map(|(id, s)| match s {
                    Slot::Ready { last_used, .. } if id != keep => Some((*id, *last_used)),
                    _ => None,
                })
                .min_by_key(|(_, used)| *used)
                .map(|(id, _)| id);
            let Some(victim) = victim else { break };
            if let Some(Slot::Ready { bytes, .. }) = slots.slots.remove(&victim) {
                slots.total -= bytes;
                tracing::debug!(model = %victim, "evicted from memory");
            }
        }
    }
}

struct LoadGuard<'a> {
    cache: &'a ModelCache,
    id: ModelId,
    armed: bool,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut slots = self.cache.slots.lock();
            if matches!(slots.slots.get(&self.id), Some(Slot::Loading(_))) {
                slots.slots.remove(&self.id);
            }
        }
    }
}

/// Hand-built models (`ConstantOfShape` ones) for the tests.
#[cfg(test)]
#[path = "../../backend/tests/data/malicious/corpus.rs"]
mod corpus;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crat_core::tensor::Tensor;

    use super::*;
    use crat_backend::ModelInfo;

    /// Loads any bytes not starting with "bad" as a model holding `len` bytes; counts loads.
    struct BytesBackend {
        loads: AtomicUsize,
    }

    struct BytesModel {
        info: ModelInfo,
        bytes: u64,
    }

    impl LoadedModel for BytesModel {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn run(&self, _: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
            Ok(vec![])
        }
        fn memory_bytes(&self) -> u64 {
            self.bytes
        }
    }

    impl InferenceBackend for BytesBackend {
        fn name(&self) -> &'static str {
            "bytes"
        }
        fn execution_provider(&self) -> &str {
            "cpu"
        }
        fn load(&self, model: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            // "slow…" takes a second, anything else 50 ms.
            let ms = if model.starts_with(b"slow") {
                1_000
            } else {
                50
            };
            std::thread::sleep(Duration::from_millis(ms));
            if model.starts_with(b"bad") {
                return Err(BackendError::Load("bad model".into()));
            }
            Ok(Arc::new(BytesModel {
                info: ModelInfo {
                    inputs: vec![],
                    outputs: vec![],
                },
                bytes: model.len() as u64,
            }))
        }
    }

    fn backend() -> Arc<BytesBackend> {
        Arc::new(BytesBackend {
            loads: AtomicUsize::new(0),
        })
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("crat-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn store_verifies_and_detects_corruption() {
        let dir = tmpdir("verify");
        let store = ModelStore::open(&dir, 1 << 20).unwrap();
        let model = b"model bytes".to_vec();
        let id = ModelId::of_bytes(&model);
        // Wrong id for the bytes is refused.
        assert!(matches!(
            store.put(&ModelId::of_bytes(b"other"), &model),
            Err(CacheError::HashMismatch { .. })
        ));
        store.put(&id, &model).unwrap();
        assert_eq!(store.get(&id).unwrap(), Some(model.clone()));
        // Corrupt the file on disk: detected on read, deleted, reported.
        std::fs::write(dir.join(format!("{id}.onnx")), b"tampered").unwrap();
        assert!(matches!(
            store.get(&id),
            Err(CacheError::HashMismatch { .. })
        ));
        assert!(!store.contains(&id));
        assert_eq!(store.get(&id).unwrap(), None);
        // Reopening indexes what is there.
        store.put(&id, &model).unwrap();
        let reopened = ModelStore::open(&dir, 1 << 20).unwrap();
        assert!(reopened.contains(&id));
        assert_eq!(reopened.disk_bytes(), model.len() as u64);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn store_evicts_least_recently_used_within_budget() {
        let dir = tmpdir("evict");
        let store = ModelStore::open(&dir, 25).unwrap();
        let models: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10]).collect();
        let ids: Vec<ModelId> = models.iter().map(|m| ModelId::of_bytes(m)).collect();
        store.put(&ids[0], &models[0]).unwrap();
        store.put(&ids[1], &models[1]).unwrap();
        store.get(&ids[0]).unwrap(); // 0 is now more recent than 1
        store.put(&ids[2], &models[2]).unwrap();
        assert!(store.contains(&ids[0]) && store.contains(&ids[2]));
        assert!(!store.contains(&ids[1]));
        assert!(store.disk_bytes() <= 25);
        assert!(matches!(
            store.put(&ModelId::of_bytes(&[9; 30]), &[9; 30]),
            Err(CacheError::TooLarge { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_load() {
        let b = backend();
        let cache = Arc::new(ModelCache::new(b.clone(), 1 << 20));
        let model = b"shared".to_vec();
        let id = ModelId::of_bytes(&model);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let cache = cache.clone();
            let model = model.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(id, || async { Ok(model) })
                    .await
                    .map(|_| ())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(b.loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.loaded(), vec![id]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_are_shared_then_retried() {
        let b = backend();
        let cache = Arc::new(ModelCache::new(b.clone(), 1 << 20));
        let bad = b"bad model".to_vec();
        let id = ModelId::of_bytes(&bad);
        let (x, y) = tokio::join!(
            cache.get_or_load(id, || async { Ok(bad.clone()) }),
            cache.get_or_load(id, || async { Ok(bad.clone()) }),
        );
        assert!(matches!(x, Err(CacheError::Backend(_))));
        assert!(matches!(y, Err(CacheError::Backend(_))));
        assert_eq!(b.loads.load(Ordering::SeqCst), 1);
        // Not cached as a failure forever: the next request tries again.
        let _ = cache.get_or_load(id, || async { Ok(bad.clone()) }).await;
        assert_eq!(b.loads.load(Ordering::SeqCst), 2);
        // Bytes that do not hash to the id never reach the backend.
        let wrong = cache
            .get_or_load(id, || async { Ok(b"something else".to_vec()) })
            .await;
        assert!(matches!(wrong, Err(CacheError::HashMismatch { .. })));
        assert_eq!(b.loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eviction_respects_the_budget() {
        let cache = ModelCache::new(backend(), 100);
        let models: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 40]).collect();
        let ids: Vec<ModelId> = models.iter().map(|m| ModelId::of_bytes(m)).collect();
        for (id, m) in ids.iter().zip(&models) {
            cache
                .get_or_load(*id, || async { Ok(m.clone()) })
                .await
                .unwrap();
            assert!(cache.memory_bytes() <= 100);
        }
        let loaded = cache.loaded();
        assert_eq!(loaded.len(), 2);
        assert!(loaded.contains(&ids[2]) && loaded.contains(&ids[3]));
        let big = vec![7u8; 101];
        assert!(matches!(
            cache
                .get_or_load(ModelId::of_bytes(&big), || async { Ok(big.clone()) })
                .await,
            Err(CacheError::TooLarge { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_estimated_over_the_budget_is_refused_before_loading() {
        let b = backend();
        let cache = ModelCache::new(b.clone(), 16 << 20);
        // ConstantOfShape([65536, 65536]) never passes the model check: the backend refuses it.
        // [4096, 4096] floats (64 MiB) pass it, and are over this cache's 16 MiB.
        let bomb = super::corpus::constant_of_shape(&[4096, 4096]);
        let id = ModelId::of_bytes(&bomb);
        let e = cache
            .get_or_load(id, || async { Ok(bomb.clone()) })
            .await
            .err()
            .unwrap();
        match &e {
            CacheError::OverMemory {
                estimate_bytes,
                budget,
                detail,
                ..
            } => {
                assert!(*estimate_bytes >= 64 << 20, "{e}");
                assert_eq!(*budget, 16 << 20);
                assert!(detail.contains("64.0 MiB made"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("estimated"), "{e}");
        assert_eq!(
            b.loads.load(Ordering::SeqCst),
            0,
            "never reached the backend"
        );
        assert!(cache.loaded().is_empty());
        // A model under the budget is loaded and counted at its estimate (the backend says
        // it holds its file's length, a few hundred bytes).
        let small = super::corpus::zeros_then_identity(&[256, 1024]);
        let id = ModelId::of_bytes(&small);
        cache
            .get_or_load(id, || async { Ok(small.clone()) })
            .await
            .unwrap();
        let estimate = crat_backend::onnx_check::check_model(&small)
            .unwrap()
            .memory
            .bytes;
        assert!(estimate >= 1 << 20);
        assert_eq!(cache.memory_bytes(), estimate);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loads_have_a_time_limit_and_stuck_ones_do_not_pile_up() {
        let b = backend();
        let cache = Arc::new(ModelCache::new(b.clone(), 1 << 20).with_load_timeout_ms(200));
        let slow: Vec<Vec<u8>> = (0..3u8).map(|i| [&b"slow"[..], &[i]].concat()).collect();
        let started = std::time::Instant::now();
        // Two slow loads run (each over its time, keeping its slot); a third waits for a slot
        // and runs out of time waiting; none is cached.
        let load = |m: Vec<u8>| {
            let cache = cache.clone();
            async move {
                cache
                    .get_or_load(ModelId::of_bytes(&m), || async { Ok(m) })
                    .await
            }
        };
        let (x, y) = tokio::join!(load(slow[0].clone()), load(slow[1].clone()));
        for r in [x, y] {
            assert!(
                matches!(
                    r,
                    Err(CacheError::LoadTimedOut {
                        limit_ms: 200,
                        waiting: false,
                        ..
                    })
                ),
                "{:?}",
                r.err()
            );
        }
        let z = load(slow[2].clone()).await;
        assert!(
            matches!(z, Err(CacheError::LoadTimedOut { waiting: true, .. })),
            "{:?}",
            z.err()
        );
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(b.loads.load(Ordering::SeqCst), 2, "the third never started");
        assert!(cache.loaded().is_empty());
        // Once the stuck loads end, their slots come back.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let quick = b"quick".to_vec();
        cache
            .get_or_load(ModelId::of_bytes(&quick), || async { Ok(quick.clone()) })
            .await
            .unwrap();
    }
}
