//! Model cache: content-addressed bytes on disk, loaded models in memory.
//!
//! - [`ModelStore`] keeps model files under `<dir>/<blake3 hex>.onnx`, written atomically
//!   (temporary file, then rename) and verified against their id on **every** read: a file
//!   corrupted on disk is deleted and reported, never loaded. The store is bounded by
//!   [`ModelStore::disk_bytes_max`], evicting least recently used files.
//! - [`ModelCache`] keeps loaded models in memory under a byte budget with LRU eviction.
//!   Concurrent requests for a model that is loading wait for that one load (single flight)
//!   and share its result, success or failure.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crat_backend::{BackendError, InferenceBackend, LoadedModel};
use crat_core::id::ModelId;
use parking_lot::Mutex;
use tokio::sync::watch;

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

/// Loaded models in memory, under a byte budget, LRU-evicted, loaded once per model.
pub struct ModelCache {
    backend: Arc<dyn InferenceBackend>,
    memory_bytes_max: u64,
    slots: Mutex<Slots>,
}

impl ModelCache {
    /// A cache loading with `backend`, holding at most `memory_bytes_max` bytes of models
    /// (as [`LoadedModel::memory_bytes`] reports them).
    pub fn new(backend: Arc<dyn InferenceBackend>, memory_bytes_max: u64) -> Self {
        Self {
            backend,
            memory_bytes_max,
            slots: Mutex::new(Slots::default()),
        }
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
        {
            let mut slots = self.slots.lock();
            match &result {
                Ok(model) => {
                    let bytes = model.memory_bytes();
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
        let _ = tx.send(Some(result.clone()));
        result
    }

    async fn load<F, Fut>(&self, id: ModelId, fetch: F) -> LoadResult
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, CacheError>>,
    {
        let bytes = fetch().await?;
        let actual = ModelId::of_bytes(&bytes);
        if actual != id {
            return Err(CacheError::HashMismatch { model: id, actual });
        }
        let backend = self.backend.clone();
        let model = tokio::task::spawn_blocking(move || backend.load(&bytes))
            .await
            .map_err(|e| CacheError::Backend(BackendError::Panicked(e.to_string())))??;
        if model.memory_bytes() > self.memory_bytes_max {
            return Err(CacheError::TooLarge {
                bytes: model.memory_bytes(),
                budget: self.memory_bytes_max,
            });
        }
        Ok(model)
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
            std::thread::sleep(Duration::from_millis(50));
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
}
