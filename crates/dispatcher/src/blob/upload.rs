//! Resumable, bounded upload staging.
//!
//! The design is described on the main type.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use crat_backend::onnx_check::Bytes;
use crat_core::id::ModelId;
use crat_core::wire::CHUNK_BYTES_MAX;

use crate::ledger::AccountName;

/// Configuration of [`Uploads`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadConfig {
    /// Where partial uploads live (created if missing). Best on the same file system as a
    /// [`super::LocalBlobStore`], so storing a finished upload is a rename.
    pub staging_dir: PathBuf,
    /// Largest model accepted.
    pub model_bytes_max: u64,
    /// Most memory a model may need, as estimated from its graph
    /// ([`crat_backend::onnx_check::MemoryEstimate`]): what a node can hold of one model. A
    /// model estimated above it is refused ([`UploadError::OverMemory`]).
    pub memory_bytes_max: u64,
    /// Most partial uploads at once.
    pub uploads_max: usize,
    /// Chunk size: every chunk but the last has exactly this many bytes.
    pub chunk_bytes: u32,
    /// A partial upload untouched for this long may be dropped to make room for a new one
    /// when [`UploadConfig::uploads_max`] is reached.
    pub upload_idle_s_max: u64,
    /// Most partial uploads of one account at once.
    pub uploads_per_account_max: usize,
    /// Most bytes of one account's partial uploads together (their declared sizes).
    pub upload_bytes_per_account_max: u64,
    /// An upload is refused when the staging file system would have less free space than
    /// this left after it (so the ledger, on the same disk by default, never runs out).
    pub free_bytes_min: u64,
}

impl UploadConfig {
    /// Default [`UploadConfig::model_bytes_max`]: 1 GiB.
    pub const MODEL_BYTES_MAX_DEFAULT: u64 = 1 << 30;
    /// Default [`UploadConfig::memory_bytes_max`]: 8 GiB, the model memory of `crat node`.
    pub const MEMORY_BYTES_MAX_DEFAULT: u64 = 8 << 30;
    /// Default [`UploadConfig::uploads_max`].
    pub const UPLOADS_MAX_DEFAULT: usize = 64;
    /// Default [`UploadConfig::upload_idle_s_max`]: one day.
    pub const UPLOAD_IDLE_S_MAX_DEFAULT: u64 = 86_400;
    /// Default [`UploadConfig::uploads_per_account_max`].
    pub const UPLOADS_PER_ACCOUNT_MAX_DEFAULT: usize = 4;
    /// Default [`UploadConfig::upload_bytes_per_account_max`]: 4 GiB.
    pub const UPLOAD_BYTES_PER_ACCOUNT_MAX_DEFAULT: u64 = 4 << 30;
    /// Default [`UploadConfig::free_bytes_min`]: 1 GiB.
    pub const FREE_BYTES_MIN_DEFAULT: u64 = 1 << 30;

    /// The defaults, staging in `staging_dir`; chunks of [`CHUNK_BYTES_MAX`].
    pub fn new(staging_dir: impl Into<PathBuf>) -> Self {
        Self {
            staging_dir: staging_dir.into(),
            model_bytes_max: Self::MODEL_BYTES_MAX_DEFAULT,
            memory_bytes_max: Self::MEMORY_BYTES_MAX_DEFAULT,
            uploads_max: Self::UPLOADS_MAX_DEFAULT,
            chunk_bytes: CHUNK_BYTES_MAX,
            upload_idle_s_max: Self::UPLOAD_IDLE_S_MAX_DEFAULT,
            uploads_per_account_max: Self::UPLOADS_PER_ACCOUNT_MAX_DEFAULT,
            upload_bytes_per_account_max: Self::UPLOAD_BYTES_PER_ACCOUNT_MAX_DEFAULT,
            free_bytes_min: Self::FREE_BYTES_MIN_DEFAULT,
        }
    }
}

/// How far an upload is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UploadProgress {
    /// Bytes received contiguously from offset 0 (a client resumes from here).
    pub received_bytes: u64,
    /// The model's size.
    pub total_bytes: u64,
}

/// A finished, verified upload, ready for [`super::BlobStore::put_file`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StagedModel {
    /// The file. Removed by [`Uploads::discard`] once stored; until then the next
    /// [`Uploads::begin`] of the model, or [`Uploads::open`] after a restart, takes it up
    /// again as a whole upload.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// What it takes and returns, from the upload check (`None`: beyond what the wire
    /// carries).
    pub signature: Option<crat_core::wire::ModelSignature>,
}

/// Why an upload step was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The model is larger than [`UploadConfig::model_bytes_max`].
    #[error("model of {bytes} bytes is larger than the limit {max}")]
    TooLarge {
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A resumed upload does not match the one in progress.
    #[error("upload mismatch: {0}")]
    Mismatch(String),
    /// [`UploadConfig::uploads_max`] partial uploads are in progress.
    #[error("{max} uploads are in progress already")]
    Busy {
        /// The limit.
        max: usize,
    },
    /// The account is at [`UploadConfig::uploads_per_account_max`] or
    /// [`UploadConfig::upload_bytes_per_account_max`].
    #[error("the account's uploads in progress: {0}")]
    Quota(String),
    /// The staging disk would keep less than [`UploadConfig::free_bytes_min`] free.
    #[error(
        "the upload of {needed} bytes would leave less than {reserve} bytes free ({free} free)"
    )]
    DiskFull {
        /// Free bytes now.
        free: u64,
        /// The upload's size.
        needed: u64,
        /// The reserve.
        reserve: u64,
    },
    /// No upload of this model is in progress.
    #[error("no upload of model {0} is in progress")]
    NotStarted(ModelId),
    /// The upload of this model is being finished ([`Uploads::finish`]): it can be neither
    /// begun again nor finished twice until that ends. [`Uploads::hold`] makes callers wait
    /// instead.
    #[error("the upload of model {0} is being finished")]
    Finishing(ModelId),
    /// A chunk at a wrong offset or of a wrong length.
    #[error("bad chunk: {0}")]
    BadChunk(String),
    /// Finishing before every chunk arrived.
    #[error("upload incomplete: {received} of {total} bytes received in order")]
    Incomplete {
        /// Bytes received contiguously from 0.
        received: u64,
        /// The model's size.
        total: u64,
    },
    /// The bytes do not hash to the model id (the upload is discarded).
    #[error("the bytes hash to {actual}, not to the model id {expected}")]
    HashMismatch {
        /// The id the upload was started for.
        expected: ModelId,
        /// blake3 of what was received.
        actual: ModelId,
    },
    /// The bytes are not an acceptable ONNX model (the upload is discarded).
    #[error("not an acceptable ONNX model: {0}")]
    NotOnnx(String),
    /// The model needs more memory than a node holds, as estimated from its graph (the
    /// upload is discarded).
    #[error(
        "the model needs an estimated {} of memory, more than a node holds ({}): {detail}",
        Bytes(*estimate_bytes),
        Bytes(*max)
    )]
    OverMemory {
        /// The estimate ([`crat_backend::onnx_check::MemoryEstimate::bytes`]).
        estimate_bytes: u64,
        /// [`UploadConfig::memory_bytes_max`].
        max: u64,
        /// What the estimate is made of.
        detail: String,
    },
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> UploadError {
    let context = context.into();
    move |source| UploadError::Io { context, source }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UploadError> + Send + 'static,
) -> Result<T, UploadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UploadError::Io {
            context: "blocking task".into(),
            source: io::Error::other(e),
        })?
}

const MAGIC: &[u8; 8] = b"CRATUP01";
/// magic + total (u64) + chunk (u32) + id (32 bytes).
const HEADER_BYTES: u64 = 8 + 8 + 4 + 32;

/// Whose upload of which model: uploads are per account, so nobody writes into another
/// account's upload of the same bytes.
type Key = (AccountName, ModelId);

/// One partial upload.
struct Upload {
    id: ModelId,
    total: u64,
    chunk: u32,
    chunks: u64,
    data: File,
    meta: File,
    state: Mutex<State>,
}

struct State {
    bitmap: Vec<u8>,
    /// Chunks `0..contiguous` are all present.
    contiguous: u64,
    received: u64,
    touched: Instant,
    /// [`Uploads::finish`] is verifying it: its files are not to be touched.
    finishing: bool,
}

impl State {
    fn has(&self, chunk: u64) -> bool {
        self.bitmap
            .get((chunk / 8) as usize)
            .is_some_and(|b| b & (1 << (chunk % 8)) != 0)
    }
}

impl Upload {
    fn progress(&self, state: &State) -> UploadProgress {
        UploadProgress {
            received_bytes: state
                .contiguous
                .saturating_mul(u64::from(self.chunk))
                .min(self.total),
            total_bytes: self.total,
        }
    }

    /// Writes chunk `index` (blocking).
    fn write_chunk(
        &self,
        index: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<UploadProgress, UploadError> {
        if self.state.lock().has(index) {
            let state = self.state.lock();
            return Ok(self.progress(&state));
        }
        self.data
            .write_all_at(data, offset)
            .map_err(io_err(format!("write upload of {}", self.id)))?;
        let mut state = self.state.lock();
        if !state.has(index) {
            let byte = (index / 8) as usize;
            state.bitmap[byte] |= 1 << (index % 8);
            state.received += 1;
            while state.contiguous < self.chunks && state.has(state.contiguous) {
                state.contiguous += 1;
            }
            // The bit goes to the sidecar after the bytes went to the data file.
            self.meta
                .write_all_at(&state.bitmap[byte..=byte], HEADER_BYTES + byte as u64)
                .map_err(io_err(format!("write upload state of {}", self.id)))?;
        }
        state.touched = Instant::now();
        Ok(self.progress(&state))
    }
}

fn chunk_count(total: u64, chunk: u32) -> u64 {
    total.div_ceil(u64::from(chunk))
}

fn bitmap_bytes(chunks: u64) -> u64 {
    chunks.div_ceil(8)
}

/// The staging area for uploads.
///
/// Uploads are per account: account `a`'s upload of model `id` is its own, and another
/// account uploading the same bytes has another (they meet in the content-addressed store).
/// An account has at most [`UploadConfig::uploads_per_account_max`] uploads in progress and
/// [`UploadConfig::upload_bytes_per_account_max`] bytes in them, so one account cannot take
/// every slot nor fill the disk; an upload that would leave less than
/// [`UploadConfig::free_bytes_min`] free on the staging file system is refused.
///
/// Each upload in progress is two files in the staging directory, named by the account and
/// the model id's hex: `<account>.<id>.part`, the model's bytes written in place with positioned writes (chunks may
/// arrive in any order, repeats are harmless), and `<id>.meta`, a small sidecar holding a
/// header (magic, total size, chunk size, id) and one bit per chunk received (files of the
/// earlier `<id>.*` naming, without an account, are removed at open). A chunk's bit
/// is written after its bytes, so after a restart [`Uploads::open`] finds every upload where
/// it was and a client resumes from [`UploadProgress::received_bytes`].
///
/// Nothing is fsynced per chunk (that would cap throughput at the disk's flush rate): after
/// a process restart the page cache still has everything; after a machine crash a bit may
/// survive without its bytes, which the final blake3 check catches (the upload is discarded
/// and the client starts over). [`Uploads::finish`] reads the file once, hashes and checks
/// it from that buffer while the file is fsynced in parallel, and renames it to `<id>.model`
/// for [`super::BlobStore::put_file`]. The server removes that file once the model is stored
/// and recorded ([`Uploads::discard`]); if storing failed, the next [`Uploads::begin`] of the
/// model takes it up as a whole upload, so the client finishes it again without sending it
/// again.
///
/// One account's upload of one model is finished at most once at a time: while
/// [`Uploads::finish`] verifies it, a [`Uploads::begin`] of the same model is refused
/// ([`UploadError::Finishing`]) rather than let it truncate the file being verified, and an
/// [`Uploads::abort`] leaves it to the finish. A server holds the model
/// ([`Uploads::hold`]) around each begin and each finish-and-store, so that a begin or a
/// repeated finish waits for a finish under way and then finds the model stored, and a
/// begin never takes up a staged model that is being stored.
pub struct Uploads {
    config: UploadConfig,
    uploads: Arc<tokio::sync::Mutex<HashMap<Key, Arc<Upload>>>>,
    holds: Arc<Mutex<HashMap<Key, Held>>>,
}

/// A held model's lock, and how many [`Hold`]s hold it or wait for it.
#[derive(Default)]
struct Held {
    lock: Arc<tokio::sync::Mutex<()>>,
    users: usize,
}

/// One account's model held by [`Uploads::hold`]; released when dropped.
#[must_use = "the model is held only while the Hold lives"]
pub struct Hold {
    key: Key,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    holds: Arc<Mutex<HashMap<Key, Held>>>,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("owner", &self.key.0.as_str())
            .field("model", &self.key.1)
            .finish()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Forget the lock once nobody holds or awaits it (also when a wait was cancelled):
        // the map only has the keys in use.
        let mut holds = self.holds.lock();
        if let Some(held) = holds.get_mut(&self.key) {
            held.users -= 1;
            if held.users == 0 {
                holds.remove(&self.key);
            }
        }
    }
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Uploads {
    /// Opens the staging area: creates the directory, picks up the partial uploads a
    /// previous run left (so they resume) and the finished models it did not store whose
    /// bytes still hash to their id (whole uploads again, to be finished again), and removes
    /// what cannot be resumed (orphan or damaged files, uploads made with another chunk size
    /// or above the size limit).
    pub fn open(config: UploadConfig) -> Result<Self, UploadError> {
        if config.chunk_bytes == 0 {
            return Err(UploadError::BadChunk("chunk_bytes must be positive".into()));
        }
        let dir = &config.staging_dir;
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let mut uploads = HashMap::new();
        let entries = fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))?;
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for path in &names {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("");
            let key = stem.split_once('.').and_then(|(owner, id)| {
                Some((AccountName::new(owner).ok()?, id.parse::<ModelId>().ok()?))
            });
            let keep = match (ext, key) {
                ("meta", Some((owner, id))) => match load(&config, id, path) {
                    Ok(upload) => {
                        uploads.insert((owner, id), Arc::new(upload));
                        true
                    }
                    Err(reason) => {
                        tracing::warn!(%id, %reason, "discarding a partial upload");
                        false
                    }
                },
                ("part", Some(_)) => path.with_extension("meta").exists(),
                // After its `.meta` (names are sorted): a partial upload of the same model
                // wins over it.
                ("model", Some((owner, id))) if !uploads.contains_key(&(owner.clone(), id)) => {
                    match restage_at_open(&config, id, path) {
                        Ok(Some(upload)) => {
                            uploads.insert((owner, id), Arc::new(upload));
                            true
                        }
                        Ok(None) => false,
                        Err(e) => {
                            tracing::warn!(%id, error = %e, "discarding a staged model");
                            false
                        }
                    }
                }
                _ => false,
            };
            if !keep
                && matches!(ext, "meta" | "part" | "model")
                && let Err(e) = fs::remove_file(path)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a staging file");
            }
        }
        Ok(Self {
            config,
            uploads: Arc::new(tokio::sync::Mutex::new(uploads)),
            holds: Arc::default(),
        })
    }

    /// Holds `owner`'s model `id` until the returned [`Hold`] drops, waiting first for
    /// whoever holds it now (in the order they asked). What a server wraps around a begin
    /// and around a finish with the storing of its result, so that none of them sees another
    /// half done. The held keys are those in use: the map grows only with the callers
    /// waiting.
    pub async fn hold(&self, owner: &AccountName, id: ModelId) -> Hold {
        let key = (owner.clone(), id);
        let lock = {
            let mut holds = self.holds.lock();
            let held = holds.entry(key.clone()).or_default();
            held.users += 1;
            held.lock.clone()
        };
        // Counted from here: dropping the Hold (also before it got the lock) uncounts it.
        let mut hold = Hold {
            key,
            guard: None,
            holds: self.holds.clone(),
        };
        hold.guard = Some(lock.lock_owned().await);
        hold
    }

    /// Number of models held or waited for ([`Uploads::hold`]).
    pub fn held(&self) -> usize {
        self.holds.lock().len()
    }

    /// The configuration.
    pub fn config(&self) -> &UploadConfig {
        &self.config
    }

    /// Number of partial uploads in progress.
    pub async fn in_progress(&self) -> usize {
        self.uploads.lock().await.len()
    }

    fn path(&self, (owner, id): &Key, ext: &str) -> PathBuf {
        self.config
            .staging_dir
            .join(format!("{}.{id}.{ext}", owner.as_str()))
    }

    /// Bytes free on the staging file system.
    fn free_bytes(&self) -> Result<u64, UploadError> {
        let dir = &self.config.staging_dir;
        let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| UploadError::Io {
            context: format!("statvfs {}", dir.display()),
            source: io::Error::from(e),
        })?;
        // The fields are u64 on Linux but narrower on some other platforms.
        #[allow(clippy::useless_conversion)]
        let (blocks, size) = (
            u64::from(stat.blocks_available()),
            u64::from(stat.fragment_size()),
        );
        Ok(blocks.saturating_mul(size))
    }

    /// Starts `owner`'s upload of `total_bytes` for model `id`, or resumes the one in
    /// progress; returns how far it is (`received_bytes` = contiguous bytes from 0).
    ///
    /// [`UploadError::TooLarge`] above [`UploadConfig::model_bytes_max`];
    /// [`UploadError::Mismatch`] if an upload of `id` with another size is in progress;
    /// [`UploadError::Quota`] if the account is at its share; [`UploadError::DiskFull`] if
    /// the disk would keep less than its reserve; [`UploadError::Busy`] if
    /// [`UploadConfig::uploads_max`] others are in progress (one idle longer than
    /// [`UploadConfig::upload_idle_s_max`] is dropped to make room).
    pub async fn begin(
        &self,
        owner: &AccountName,
        id: ModelId,
        total_bytes: u64,
    ) -> Result<UploadProgress, UploadError> {
        if total_bytes > self.config.model_bytes_max {
            return Err(UploadError::TooLarge {
                bytes: total_bytes,
                max: self.config.model_bytes_max,
            });
        }
        let key = (owner.clone(), id);
        let mut uploads = self.uploads.lock().await;
        if let Some(upload) = uploads.get(&key) {
            if upload.total != total_bytes {
                return Err(UploadError::Mismatch(format!(
                    "the upload of {id} in progress is of {} bytes, not {total_bytes}",
                    upload.total
                )));
            }
            let mut state = upload.state.lock();
            if state.finishing {
                return Err(UploadError::Finishing(id));
            }
            state.touched = Instant::now();
            return Ok(upload.progress(&state));
        }
        let (count, bytes) = uploads
            .iter()
            .filter(|((o, _), _)| o == owner)
            .fold((0usize, 0u64), |(n, b), (_, u)| {
                (n + 1, b.saturating_add(u.total))
            });
        if count >= self.config.uploads_per_account_max {
            return Err(UploadError::Quota(format!(
                "{count} uploads in progress, the most an account may have"
            )));
        }
        if bytes.saturating_add(total_bytes) > self.config.upload_bytes_per_account_max {
            return Err(UploadError::Quota(format!(
                "{bytes} bytes in progress and {total_bytes} more is over the {} an account may have",
                self.config.upload_bytes_per_account_max
            )));
        }
        let free = self.free_bytes()?;
        if free.saturating_sub(total_bytes) < self.config.free_bytes_min {
            return Err(UploadError::DiskFull {
                free,
                needed: total_bytes,
                reserve: self.config.free_bytes_min,
            });
        }
        if uploads.len() >= self.config.uploads_max {
            let idle_max = Duration::from_secs(self.config.upload_idle_s_max);
            let stale = uploads
                .iter()
                .filter_map(|(k, u)| {
                    let state = u.state.lock();
                    (!state.finishing).then(|| (state.touched, k.clone()))
                })
                .filter(|(touched, _)| touched.elapsed() > idle_max)
                .min();
            let Some((_, stale)) = stale else {
                return Err(UploadError::Busy {
                    max: self.config.uploads_max,
                });
            };
            tracing::info!(owner = stale.0.as_str(), id = %stale.1, "dropping an idle partial upload to make room");
            uploads.remove(&stale);
            self.remove_files(&stale).await;
        }
        let chunk = self.config.chunk_bytes;
        let (data_path, meta_path, staged) = (
            self.path(&key, "part"),
            self.path(&key, "meta"),
            self.path(&key, "model"),
        );
        let upload = blocking(move || {
            if let Some(upload) = restage(id, total_bytes, chunk, &staged, &data_path, &meta_path)?
            {
                return Ok(upload);
            }
            create(id, total_bytes, chunk, &data_path, &meta_path)
        })
        .await?;
        let progress = upload.progress(&upload.state.lock());
        uploads.insert(key, Arc::new(upload));
        Ok(progress)
    }

    /// Writes one chunk at `offset`: a multiple of [`UploadConfig::chunk_bytes`], and `data`
    /// exactly that long except for the last chunk (which ends at the total). Chunks may
    /// arrive in any order; a chunk already received is accepted and ignored.
    /// [`UploadError::NotStarted`] if `owner` has no upload of `id` in progress.
    pub async fn write(
        &self,
        owner: &AccountName,
        id: ModelId,
        offset: u64,
        data: &[u8],
    ) -> Result<UploadProgress, UploadError> {
        let upload = self
            .uploads
            .lock()
            .await
            .get(&(owner.clone(), id))
            .cloned()
            .ok_or(UploadError::NotStarted(id))?;
        let chunk = u64::from(upload.chunk);
        if !offset.is_multiple_of(chunk) {
            return Err(UploadError::BadChunk(format!(
                "offset {offset} is not a multiple of the chunk size {chunk}"
            )));
        }
        let index = offset / chunk;
        if index >= upload.chunks {
            return Err(UploadError::BadChunk(format!(
                "offset {offset} is at or past the end of a {}-byte model",
                upload.total
            )));
        }
        let expected = chunk.min(upload.total - offset);
        if data.len() as u64 != expected {
            return Err(UploadError::BadChunk(format!(
                "the chunk at {offset} must have {expected} bytes, not {}",
                data.len()
            )));
        }
        if upload.state.lock().has(index) {
            let state = upload.state.lock();
            return Ok(upload.progress(&state));
        }
        let data = data.to_vec();
        blocking(move || upload.write_chunk(index, offset, &data)).await
    }

    /// Completes an upload: every chunk must be there ([`UploadError::Incomplete`]
    /// otherwise, and the upload stays), blake3 of the bytes must equal `id`
    /// ([`UploadError::HashMismatch`]) and they must be an ONNX model `check_model` accepts
    /// ([`UploadError::NotOnnx`]) whose memory estimate is at most
    /// [`UploadConfig::memory_bytes_max`] ([`UploadError::OverMemory`]); any failure discards
    /// the upload. Returns the staged
    /// file, fsynced, for [`super::BlobStore::put_file`].
    ///
    /// While it runs, the upload is marked: a begin or another finish of it gets
    /// [`UploadError::Finishing`]. The work goes on to its end, and the mark goes, even if
    /// the returned future is dropped.
    pub async fn finish(
        &self,
        owner: &AccountName,
        id: ModelId,
    ) -> Result<StagedModel, UploadError> {
        let key = (owner.clone(), id);
        // The upload stays in the map, marked, while it is verified: a begin of the same
        // model then cannot create its files again under the finish.
        let upload = {
            let uploads = self.uploads.lock().await;
            let upload = uploads.get(&key).ok_or(UploadError::NotStarted(id))?;
            let mut state = upload.state.lock();
            if state.finishing {
                return Err(UploadError::Finishing(id));
            }
            if state.received < upload.chunks {
                return Err(UploadError::Incomplete {
                    received: upload.progress(&state).received_bytes,
                    total: upload.total,
                });
            }
            state.finishing = true;
            upload.clone()
        };
        let (part, meta, model) = (
            self.path(&key, "part"),
            self.path(&key, "meta"),
            self.path(&key, "model"),
        );
        let dir = self.config.staging_dir.clone();
        let memory_max = self.config.memory_bytes_max;
        let uploads = self.uploads.clone();
        // On the blocking pool, which finishes it even if this future is dropped.
        blocking(move || {
            let result = verify(&upload, &part, &meta, &model, &dir, memory_max);
            // Under the map's lock, so that no begin creates the files again in between.
            let mut uploads = uploads.blocking_lock();
            if uploads.get(&key).is_some_and(|u| Arc::ptr_eq(u, &upload)) {
                uploads.remove(&key);
            }
            if result.is_err() {
                remove_files([meta, part]);
            }
            result
        })
        .await
    }

    /// Drops `owner`'s upload of `id` and its files: nothing if none is in progress, or if
    /// it is being finished (the finish keeps or discards it).
    pub async fn abort(&self, owner: &AccountName, id: ModelId) {
        let key = (owner.clone(), id);
        let mut uploads = self.uploads.lock().await;
        if uploads.get(&key).is_some_and(|u| !u.state.lock().finishing) {
            uploads.remove(&key);
            // Under the map's lock, so that no begin creates the files again in between.
            self.remove_files(&key).await;
        }
    }

    /// Removes the files of `key`'s upload, a staged model of it included.
    async fn remove_files(&self, key: &Key) {
        let paths = [
            self.path(key, "meta"),
            self.path(key, "part"),
            self.path(key, "model"),
        ];
        let _ = tokio::task::spawn_blocking(move || remove_files(paths)).await;
    }

    /// Removes `staged` once [`super::BlobStore::put_file`] stored it and the server
    /// recorded it (a store that copies leaves it in place). Until then it stays: a store
    /// that failed leaves it for the next [`Uploads::begin`] of the model, which takes it up
    /// as a whole upload, so the client finishes it again and sends nothing again.
    pub async fn discard(&self, staged: &StagedModel) {
        let path = staged.path.clone();
        let _ = tokio::task::spawn_blocking(move || remove_files([path])).await;
    }
}

/// Removes an upload's files, those that exist (blocking).
fn remove_files<const N: usize>(paths: [PathBuf; N]) {
    for path in paths {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove");
            }
        }
    }
}

/// The model a finish staged and nobody stored (storing it failed), made a whole upload
/// again so that it is finished again, not sent again (blocking). `None` if there is none;
/// one of another size is removed.
fn restage(
    id: ModelId,
    total: u64,
    chunk: u32,
    staged: &Path,
    data_path: &Path,
    meta_path: &Path,
) -> Result<Option<Upload>, UploadError> {
    let len = match fs::metadata(staged) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("stat {}", staged.display()))(e)),
    };
    if len != total {
        tracing::warn!(%id, len, total, "removing a staged model of another size");
        fs::remove_file(staged).map_err(io_err(format!("remove {}", staged.display())))?;
        return Ok(None);
    }
    let chunks = chunk_count(total, chunk);
    let mut state = State {
        bitmap: vec![0u8; bitmap_bytes(chunks) as usize],
        contiguous: chunks,
        received: chunks,
        touched: Instant::now(),
        finishing: false,
    };
    for c in 0..chunks {
        state.bitmap[(c / 8) as usize] |= 1 << (c % 8);
    }
    // The sidecar first: a crash before the rename leaves a sidecar without data, which
    // `open` removes, and the staged model, which it takes up again.
    let meta = write_meta(id, total, chunk, &state.bitmap, meta_path)?;
    fs::rename(staged, data_path).map_err(io_err(format!("rename {}", staged.display())))?;
    let data = OpenOptions::new()
        .read(true)
        .write(true)
        .open(data_path)
        .map_err(io_err(format!("open {}", data_path.display())))?;
    tracing::info!(%id, "a staged model that was not stored is an upload again");
    Ok(Some(Upload {
        id,
        total,
        chunk,
        chunks,
        data,
        meta,
        state: Mutex::new(state),
    }))
}

/// A staged model found at [`Uploads::open`], made a whole upload again if it is within the
/// size limit and its bytes hash to `id` (blocking; `None` otherwise).
fn restage_at_open(
    config: &UploadConfig,
    id: ModelId,
    staged: &Path,
) -> Result<Option<Upload>, UploadError> {
    let total = fs::metadata(staged)
        .map_err(io_err(format!("stat {}", staged.display())))?
        .len();
    if total > config.model_bytes_max {
        return Ok(None);
    }
    // Read whole, as a finish reads it, so that the id is made by the one rule.
    let bytes = fs::read(staged).map_err(io_err(format!("read {}", staged.display())))?;
    if ModelId::of_bytes(&bytes) != id {
        return Ok(None);
    }
    drop(bytes);
    let (part, meta) = (staged.with_extension("part"), staged.with_extension("meta"));
    restage(id, total, config.chunk_bytes, staged, &part, &meta)
}

/// Creates an upload's sidecar: its header and `bitmap` (blocking).
fn write_meta(
    id: ModelId,
    total: u64,
    chunk: u32,
    bitmap: &[u8],
    meta_path: &Path,
) -> Result<File, UploadError> {
    let mut header = Vec::with_capacity(HEADER_BYTES as usize + bitmap.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&total.to_le_bytes());
    header.extend_from_slice(&chunk.to_le_bytes());
    header.extend_from_slice(id.as_bytes());
    header.extend_from_slice(bitmap);
    let meta = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(meta_path)
        .map_err(io_err(format!("create {}", meta_path.display())))?;
    meta.write_all_at(&header, 0)
        .map_err(io_err(format!("write {}", meta_path.display())))?;
    Ok(meta)
}

/// Creates the files of a new upload (blocking).
fn create(
    id: ModelId,
    total: u64,
    chunk: u32,
    data_path: &Path,
    meta_path: &Path,
) -> Result<Upload, UploadError> {
    let chunks = chunk_count(total, chunk);
    let data = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(data_path)
        .map_err(io_err(format!("create {}", data_path.display())))?;
    data.set_len(total)
        .map_err(io_err(format!("size {}", data_path.display())))?;
    let bitmap = vec![0u8; bitmap_bytes(chunks) as usize];
    let meta = write_meta(id, total, chunk, &bitmap, meta_path)?;
    Ok(Upload {
        id,
        total,
        chunk,
        chunks,
        data,
        meta,
        state: Mutex::new(State {
            bitmap,
            contiguous: 0,
            received: 0,
            touched: Instant::now(),
            finishing: false,
        }),
    })
}

/// Loads a partial upload from its sidecar, or says why it cannot be resumed.
fn load(config: &UploadConfig, id: ModelId, meta_path: &Path) -> Result<Upload, String> {
    let meta = OpenOptions::new()
        .read(true)
        .write(true)
        .open(meta_path)
        .map_err(|e| format!("open: {e}"))?;
    let len = meta.metadata().map_err(|e| format!("stat: {e}"))?.len();
    if len < HEADER_BYTES {
        return Err(format!("state file of {len} bytes is too short"));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    meta.read_exact_at(&mut header, 0)
        .map_err(|e| format!("read: {e}"))?;
    let (magic, rest) = header.split_at(8);
    let (total, rest) = rest.split_at(8);
    let (chunk, stored_id) = rest.split_at(4);
    if magic != MAGIC {
        return Err("state file has no magic".into());
    }
    let total = u64::from_le_bytes(total.try_into().map_err(|_| "header")?);
    let chunk = u32::from_le_bytes(chunk.try_into().map_err(|_| "header")?);
    if stored_id != id.as_bytes() {
        return Err("state file names another model".into());
    }
    if chunk != config.chunk_bytes {
        return Err(format!(
            "made with chunks of {chunk} bytes, now {}",
            config.chunk_bytes
        ));
    }
    if total > config.model_bytes_max {
        return Err(format!(
            "{total} bytes is above the limit {}",
            config.model_bytes_max
        ));
    }
    let chunks = chunk_count(total, chunk);
    if len != HEADER_BYTES + bitmap_bytes(chunks) {
        return Err(format!("state file of {len} bytes for {chunks} chunks"));
    }
    let mut bitmap = vec![0u8; bitmap_bytes(chunks) as usize];
    meta.read_exact_at(&mut bitmap, HEADER_BYTES)
        .map_err(|e| format!("read: {e}"))?;
    let data_path = meta_path.with_extension("part");
    let data = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data_path)
        .map_err(|e| format!("open data: {e}"))?;
    let data_len = data
        .metadata()
        .map_err(|e| format!("stat data: {e}"))?
        .len();
    if data_len != total {
        return Err(format!("data file of {data_len} bytes, expected {total}"));
    }
    let mut state = State {
        bitmap,
        contiguous: 0,
        received: 0,
        touched: Instant::now(),
        finishing: false,
    };
    // Bits past the last chunk mean damage.
    if (chunks..bitmap_bytes(chunks) * 8).any(|c| state.has(c)) {
        return Err("state file marks chunks past the end".into());
    }
    state.received = (0..chunks).filter(|&c| state.has(c)).count() as u64;
    while state.contiguous < chunks && state.has(state.contiguous) {
        state.contiguous += 1;
    }
    Ok(Upload {
        id,
        total,
        chunk,
        chunks,
        data,
        meta,
        state: Mutex::new(state),
    })
}

/// Reads, hashes and checks a complete upload (the model check, and its memory estimate
/// against `memory_max`) while fsyncing it; renames it to `model` (blocking).
fn verify(
    upload: &Upload,
    part: &Path,
    meta: &Path,
    model: &Path,
    dir: &Path,
    memory_max: u64,
) -> Result<StagedModel, UploadError> {
    let total = usize::try_from(upload.total).map_err(|_| UploadError::TooLarge {
        bytes: upload.total,
        max: usize::MAX as u64,
    })?;
    let (synced, checked) = std::thread::scope(|s| {
        let sync = s.spawn(|| upload.data.sync_all());
        let checked = (|| {
            let mut bytes = vec![0u8; total];
            upload
                .data
                .read_exact_at(&mut bytes, 0)
                .map_err(io_err(format!("read {}", part.display())))?;
            let actual = ModelId::of_bytes(&bytes);
            if actual != upload.id {
                return Err(UploadError::HashMismatch {
                    expected: upload.id,
                    actual,
                });
            }
            let summary = crat_backend::onnx_check::check_model(&bytes)
                .map_err(|e| UploadError::NotOnnx(e.to_string()))?;
            if summary.memory.bytes > memory_max {
                return Err(UploadError::OverMemory {
                    estimate_bytes: summary.memory.bytes,
                    max: memory_max,
                    detail: summary.memory.to_string(),
                });
            }
            Ok(summary.signature())
        })();
        let synced = sync
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")));
        (synced, checked)
    });
    let signature = checked?;
    synced.map_err(io_err(format!("fsync {}", part.display())))?;
    fs::rename(part, model).map_err(io_err(format!("rename {}", part.display())))?;
    fs::remove_file(meta).map_err(io_err(format!("remove {}", meta.display())))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("sync {}", dir.display())))?;
    Ok(StagedModel {
        path: model.to_path_buf(),
        bytes: upload.total,
        signature,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::LocalBlobStore;
    use super::super::tests::{round_trip, tiny_cnn};
    use super::*;

    fn owner() -> AccountName {
        AccountName::new("alice").unwrap()
    }

    fn config(dir: &Path, chunk: u32) -> UploadConfig {
        UploadConfig {
            chunk_bytes: chunk,
            ..UploadConfig::new(dir.join("staging"))
        }
    }

    async fn send(uploads: &Uploads, id: ModelId, model: &[u8], order: &[usize]) -> UploadProgress {
        let chunk = uploads.config().chunk_bytes as usize;
        let mut last = None;
        for &i in order {
            let end = (i * chunk + chunk).min(model.len());
            last = Some(
                uploads
                    .write(&owner(), id, (i * chunk) as u64, &model[i * chunk..end])
                    .await
                    .unwrap(),
            );
        }
        last.unwrap()
    }

    /// Begins `model`'s upload and sends every chunk.
    async fn upload_whole(uploads: &Uploads, id: ModelId, model: &[u8]) {
        uploads
            .begin(&owner(), id, model.len() as u64)
            .await
            .unwrap();
        let chunk = uploads.config().chunk_bytes as usize;
        let order: Vec<usize> = (0..model.len().div_ceil(chunk)).collect();
        send(uploads, id, model, &order).await;
    }

    /// The bytes a begin of `model`'s upload finds received.
    async fn received_at_begin(uploads: &Uploads, id: ModelId, total: u64) -> u64 {
        uploads
            .begin(&owner(), id, total)
            .await
            .unwrap()
            .received_bytes
    }

    fn staging_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn in_order_upload_passes_and_round_trips_through_the_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let id = ModelId::of_bytes(&model);
        let uploads = Uploads::open(config(dir.path(), 1024)).unwrap();
        let p = uploads
            .begin(&owner(), id, model.len() as u64)
            .await
            .unwrap();
        assert_eq!(
            p,
            UploadProgress {
                received_bytes: 0,
                total_bytes: model.len() as u64
            }
        );
        let chunks = model.len().div_ceil(1024);
        let order: Vec<usize> = (0..chunks).collect();
        let p = send(&uploads, id, &model, &order).await;
        assert_eq!(p.received_bytes, model.len() as u64);
        let staged = uploads.finish(&owner(), id).await.unwrap();
        assert_eq!(staged.bytes, model.len() as u64);
        assert_eq!(fs::read(&staged.path).unwrap(), model);
        assert_eq!(uploads.in_progress().await, 0);
        let store = LocalBlobStore::open(&dir.path().join("blobs")).unwrap();
        round_trip(&store, &model, &staged.path).await;
        assert!(matches!(
            uploads.finish(&owner(), id).await,
            Err(UploadError::NotStarted(_))
        ));
    }

    #[cfg(feature = "object-store")]
    #[tokio::test]
    async fn an_upload_round_trips_through_an_object_store() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let id = ModelId::of_bytes(&model);
        let uploads = Uploads::open(config(dir.path(), 4096)).unwrap();
        uploads
            .begin(&owner(), id, model.len() as u64)
            .await
            .unwrap();
        let order: Vec<usize> = (0..model.len().div_ceil(4096)).rev().collect();
        send(&uploads, id, &model, &order).await;
        let staged = uploads.finish(&owner(), id).await.unwrap();
        let store = super::super::ObjectBlobStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            "models",
        );
        round_trip(&store, &model, &staged.path).await;
    }

    #[tokio::test]
    async fn out_of_order_and_repeated_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let id = ModelId::of_bytes(&model);
        let uploads = Uploads::open(config(dir.path(), 1000)).unwrap();
        uploads
            .begin(&owner(), id, model.len() as u64)
            .await
            .unwrap();
        let chunks = model.len().div_ceil(1000);
        // Everything but chunk 0, backwards: nothing is contiguous from 0 yet.
        let rest: Vec<usize> = (1..chunks).rev().collect();
        let p = send(&uploads, id, &model, &rest).await;
        assert_eq!(p.received_bytes, 0);
        assert!(matches!(
            uploads.finish(&owner(), id).await,
            Err(UploadError::Incomplete { received: 0, .. })
        ));
        // Repeats are accepted and change nothing.
        send(&uploads, id, &model, &[3, 3, chunks - 1]).await;
        let p = send(&uploads, id, &model, &[0]).await;
        assert_eq!(p.received_bytes, model.len() as u64);
        // Concurrent writes of the same upload.
        let uploads = Arc::new(uploads);
        let mut tasks = Vec::new();
        for i in 0..chunks {
            let (uploads, model) = (Arc::clone(&uploads), model.clone());
            tasks.push(tokio::spawn(async move {
                let end = (i * 1000 + 1000).min(model.len());
                uploads
                    .write(&owner(), id, (i * 1000) as u64, &model[i * 1000..end])
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let staged = uploads.finish(&owner(), id).await.unwrap();
        assert_eq!(fs::read(staged.path).unwrap(), model);
    }

    #[tokio::test]
    async fn an_upload_resumes_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let id = ModelId::of_bytes(&model);
        let chunks = model.len().div_ceil(1024);
        {
            let uploads = Uploads::open(config(dir.path(), 1024)).unwrap();
            uploads
                .begin(&owner(), id, model.len() as u64)
                .await
                .unwrap();
            let p = send(&uploads, id, &model, &[0, 1, 2, 5, 6]).await;
            assert_eq!(p.received_bytes, 3 * 1024);
        }
        // Leftovers of a previous run that cannot be resumed are cleaned up, and so are
        // uploads named without an account (before uploads were per account).
        let other = ModelId::of_bytes(b"other");
        fs::write(dir.path().join(format!("staging/alice.{other}.part")), b"x").unwrap();
        fs::write(
            dir.path().join(format!("staging/alice.{other}.model")),
            b"x",
        )
        .unwrap();
        let staging = dir.path().join("staging");
        fs::copy(
            staging.join(format!("alice.{id}.meta")),
            staging.join(format!("{id}.meta")),
        )
        .unwrap();
        fs::copy(
            staging.join(format!("alice.{id}.part")),
            staging.join(format!("{id}.part")),
        )
        .unwrap();
        let uploads = Uploads::open(config(dir.path(), 1024)).unwrap();
        assert_eq!(
            staging_files(dir.path()),
            [format!("alice.{id}.meta"), format!("alice.{id}.part")]
        );
        assert_eq!(uploads.in_progress().await, 1);
        assert!(matches!(
            uploads.begin(&owner(), id, 5).await,
            Err(UploadError::Mismatch(_))
        ));
        let p = uploads
            .begin(&owner(), id, model.len() as u64)
            .await
            .unwrap();
        assert_eq!(p.received_bytes, 3 * 1024);
        let p = send(&uploads, id, &model, &[3, 4]).await;
        assert_eq!(p.received_bytes, 7 * 1024);
        let rest: Vec<usize> = (7..chunks).collect();
        send(&uploads, id, &model, &rest).await;
        let staged = uploads.finish(&owner(), id).await.unwrap();
        assert_eq!(fs::read(staged.path).unwrap(), model);
        // A different chunk size cannot resume: the partial upload is dropped.
        let uploads = Uploads::open(config(dir.path(), 1024)).unwrap();
        uploads
            .begin(&owner(), id, model.len() as u64)
            .await
            .unwrap();
        send(&uploads, id, &model, &[0]).await;
        drop(uploads);
        let uploads = Uploads::open(config(dir.path(), 2048)).unwrap();
        assert_eq!(uploads.in_progress().await, 0);
        assert!(staging_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn uploads_are_per_account_within_quotas_and_a_disk_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 1000);
        cfg.uploads_per_account_max = 2;
        cfg.upload_bytes_per_account_max = 5_000;
        cfg.free_bytes_min = 0;
        let uploads = Uploads::open(cfg.clone()).unwrap();
        let id = |n: u8| ModelId::from_bytes([n; 32]);
        let bob = AccountName::new("bob").unwrap();
        uploads.begin(&owner(), id(1), 2_000).await.unwrap();
        // Over the account's bytes, then over its count; bob is not refused for it.
        assert!(matches!(
            uploads.begin(&owner(), id(2), 3_001).await,
            Err(UploadError::Quota(_))
        ));
        uploads.begin(&owner(), id(2), 3_000).await.unwrap();
        assert!(matches!(
            uploads.begin(&owner(), id(3), 10).await,
            Err(UploadError::Quota(_))
        ));
        uploads.begin(&bob, id(3), 10).await.unwrap();
        // Bob's upload of the same model is his own: he cannot write into alice's, nor she
        // finish his.
        uploads.begin(&bob, id(1), 2_000).await.unwrap();
        uploads.write(&bob, id(1), 0, &[7; 1000]).await.unwrap();
        let alice_progress = uploads.begin(&owner(), id(1), 2_000).await.unwrap();
        assert_eq!(alice_progress.received_bytes, 0);
        assert!(matches!(
            uploads.write(&bob, id(2), 0, &[7; 1000]).await,
            Err(UploadError::NotStarted(_))
        ));
        uploads.abort(&owner(), id(2)).await;
        uploads.begin(&owner(), id(4), 10).await.unwrap();
        // A reserve larger than the disk's free space refuses every new upload.
        drop(uploads);
        cfg.free_bytes_min = u64::MAX / 2;
        let uploads = Uploads::open(cfg).unwrap();
        let carol = AccountName::new("carol").unwrap();
        assert!(matches!(
            uploads.begin(&carol, id(9), 10).await,
            Err(UploadError::DiskFull { .. })
        ));
        // Resuming an upload in progress is not refused.
        uploads.begin(&bob, id(3), 10).await.unwrap();
    }

    #[tokio::test]
    async fn limits_and_bad_chunks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 1000);
        cfg.model_bytes_max = 10_000;
        cfg.uploads_max = 2;
        let uploads = Uploads::open(cfg).unwrap();
        let id = |n: u8| ModelId::from_bytes([n; 32]);
        assert!(matches!(
            uploads.begin(&owner(), id(1), 10_001).await,
            Err(UploadError::TooLarge {
                bytes: 10_001,
                max: 10_000
            })
        ));
        assert!(matches!(
            uploads.write(&owner(), id(1), 0, &[0; 1000]).await,
            Err(UploadError::NotStarted(_))
        ));
        uploads.begin(&owner(), id(1), 2500).await.unwrap();
        uploads.begin(&owner(), id(2), 10_000).await.unwrap();
        assert!(matches!(
            uploads.begin(&owner(), id(3), 10).await,
            Err(UploadError::Busy { max: 2 })
        ));
        // Resuming one in progress is not a new upload.
        uploads.begin(&owner(), id(1), 2500).await.unwrap();
        for (offset, len) in [
            (1, 1000),
            (500, 1000),
            (0, 999),
            (0, 1001),
            (2000, 1000),
            (2000, 499),
            (3000, 1),
            (u64::MAX, 1),
        ] {
            let err = uploads
                .write(&owner(), id(1), offset, &vec![0; len])
                .await
                .unwrap_err();
            assert!(
                matches!(err, UploadError::BadChunk(_)),
                "{offset} {len}: {err}"
            );
        }
        uploads
            .write(&owner(), id(1), 2000, &[0; 500])
            .await
            .unwrap();
        uploads.abort(&owner(), id(1)).await;
        uploads.abort(&owner(), id(1)).await;
        assert!(matches!(
            uploads.write(&owner(), id(1), 0, &[0; 1000]).await,
            Err(UploadError::NotStarted(_))
        ));
        uploads.begin(&owner(), id(3), 10).await.unwrap();
        assert_eq!(uploads.in_progress().await, 2);
        assert_eq!(staging_files(dir.path()).len(), 4);
    }

    /// Each round races a finish against a begin of the same model, as a client does that
    /// stops an upload after its last chunk went out and starts it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_begin_during_a_finish_neither_spoils_it_nor_is_spoilt() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let id = ModelId::of_bytes(&model);
        let uploads = Arc::new(Uploads::open(config(dir.path(), 1024)).unwrap());
        let (mut refused, mut begun) = (0, 0);
        for round in 0..100 {
            uploads.abort(&owner(), id).await;
            upload_whole(&uploads, id, &model).await;
            let finish = tokio::spawn({
                let uploads = uploads.clone();
                async move { uploads.finish(&owner(), id).await }
            });
            let begin = uploads.begin(&owner(), id, model.len() as u64).await;
            let staged = finish.await.unwrap().unwrap();
            assert_eq!(fs::read(&staged.path).unwrap(), model, "round {round}");
            fs::remove_file(&staged.path).unwrap();
            match begin {
                Err(UploadError::Finishing(_)) => refused += 1,
                Ok(p) => {
                    begun += 1;
                    // A whole upload (begun before the finish) or a new one.
                    assert!(p.received_bytes == 0 || p.received_bytes == p.total_bytes);
                    let files = staging_files(dir.path());
                    if p.received_bytes == 0 {
                        assert_eq!(files.len(), 2, "round {round}: {files:?}");
                        let part = dir.path().join(format!("staging/alice.{id}.part"));
                        assert_eq!(fs::metadata(part).unwrap().len(), model.len() as u64);
                    }
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(refused + begun, 100);
    }

    #[tokio::test]
    async fn a_staged_model_not_stored_is_finished_again_without_being_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let (id, total) = (ModelId::of_bytes(&model), model.len() as u64);
        let uploads = Uploads::open(config(dir.path(), 1024)).unwrap();
        upload_whole(&uploads, id, &model).await;
        // Finished, then storing it failed: nothing removed the staged file.
        let staged = uploads.finish(&owner(), id).await.unwrap();
        assert_eq!(
            received_at_begin(&uploads, id, total).await,
            total,
            "a whole upload again"
        );
        assert!(!staged.path.exists());
        // What it wrote survives a restart, as any upload's state does.
        drop(uploads);
        let uploads = Uploads::open(config(dir.path(), 1024)).unwrap();
        assert_eq!(received_at_begin(&uploads, id, total).await, total);
        let again = uploads.finish(&owner(), id).await.unwrap();
        assert_eq!(again, staged);
        assert_eq!(fs::read(&again.path).unwrap(), model);
        // Not stored this time either, and the dispatcher restarts: an upload again.
        drop(uploads);
        let uploads = Uploads::open(config(dir.path(), 1024)).unwrap();
        assert_eq!(uploads.in_progress().await, 1);
        assert_eq!(
            staging_files(dir.path()),
            [format!("alice.{id}.meta"), format!("alice.{id}.part")]
        );
        assert_eq!(received_at_begin(&uploads, id, total).await, total);
        let again = uploads.finish(&owner(), id).await.unwrap();
        assert_eq!(fs::read(&again.path).unwrap(), model);
        uploads.discard(&again).await;
        assert!(staging_files(dir.path()).is_empty());

        // One of another size is not taken up: the upload starts over.
        fs::write(&staged.path, b"short").unwrap();
        assert_eq!(received_at_begin(&uploads, id, total).await, 0);
        assert_eq!(
            staging_files(dir.path()),
            [format!("alice.{id}.meta"), format!("alice.{id}.part")]
        );
        // Dropping an upload drops a staged model of it too.
        fs::write(&staged.path, &model).unwrap();
        uploads.abort(&owner(), id).await;
        assert!(staging_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn an_upload_being_finished_is_left_to_the_finish() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 1024);
        cfg.uploads_max = 1;
        cfg.upload_idle_s_max = 0;
        let model = tiny_cnn();
        let id = ModelId::of_bytes(&model);
        let uploads = Uploads::open(cfg).unwrap();
        upload_whole(&uploads, id, &model).await;
        // What `finish` marks while it verifies.
        let upload = uploads.uploads.lock().await[&(owner(), id)].clone();
        upload.state.lock().finishing = true;
        assert!(matches!(
            uploads.begin(&owner(), id, model.len() as u64).await,
            Err(UploadError::Finishing(m)) if m == id
        ));
        assert!(matches!(
            uploads.finish(&owner(), id).await,
            Err(UploadError::Finishing(m)) if m == id
        ));
        uploads.abort(&owner(), id).await;
        std::thread::sleep(Duration::from_millis(5));
        // Idle, but not dropped to make room: another model is refused.
        assert!(matches!(
            uploads
                .begin(&owner(), ModelId::from_bytes([7; 32]), 10)
                .await,
            Err(UploadError::Busy { max: 1 })
        ));
        assert_eq!(uploads.in_progress().await, 1);
        assert_eq!(staging_files(dir.path()).len(), 2);
        upload.state.lock().finishing = false;
        let staged = uploads.finish(&owner(), id).await.unwrap();
        assert_eq!(fs::read(&staged.path).unwrap(), model);
        assert_eq!(uploads.in_progress().await, 0);
    }

    #[tokio::test]
    async fn a_hold_waits_for_the_one_before_and_is_forgotten_when_released() {
        /// Polls `f` once.
        fn now_or_never<F: std::future::Future>(f: F) -> Option<F::Output> {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::pin::pin!(f).poll(&mut cx) {
                std::task::Poll::Ready(out) => Some(out),
                std::task::Poll::Pending => None,
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::open(config(dir.path(), 1024)).unwrap();
        let (a, b) = (ModelId::from_bytes([1; 32]), ModelId::from_bytes([2; 32]));
        let bob = AccountName::new("bob").unwrap();
        let first = uploads.hold(&owner(), a).await;
        // Another model, or another account's upload of the same one, is not held.
        let other = now_or_never(uploads.hold(&owner(), b)).unwrap();
        let bobs = now_or_never(uploads.hold(&bob, a)).unwrap();
        assert_eq!(uploads.held(), 3);
        drop((other, bobs));
        // A wait given up leaves nothing behind.
        assert!(now_or_never(uploads.hold(&owner(), a)).is_none());
        assert_eq!(uploads.held(), 1);
        let alice = owner();
        let mut second = Box::pin(uploads.hold(&alice, a));
        assert!(now_or_never(&mut second).is_none());
        drop(first);
        let second = second.await;
        assert_eq!(uploads.held(), 1);
        drop(second);
        assert_eq!(uploads.held(), 0);
    }

    #[tokio::test]
    async fn idle_uploads_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 1000);
        cfg.uploads_max = 1;
        cfg.upload_idle_s_max = 0;
        let uploads = Uploads::open(cfg).unwrap();
        uploads
            .begin(&owner(), ModelId::from_bytes([1; 32]), 10)
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        uploads
            .begin(&owner(), ModelId::from_bytes([2; 32]), 10)
            .await
            .unwrap();
        assert_eq!(uploads.in_progress().await, 1);
        assert!(matches!(
            uploads
                .write(&owner(), ModelId::from_bytes([1; 32]), 0, &[0; 10])
                .await,
            Err(UploadError::NotStarted(_))
        ));
    }

    #[tokio::test]
    async fn a_corrupted_chunk_is_a_hash_mismatch_and_discards_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let id = ModelId::of_bytes(&model);
        let uploads = Uploads::open(config(dir.path(), 4096)).unwrap();
        uploads
            .begin(&owner(), id, model.len() as u64)
            .await
            .unwrap();
        let mut bad = model.clone();
        bad[5000] ^= 1;
        let order: Vec<usize> = (0..model.len().div_ceil(4096)).collect();
        send(&uploads, id, &bad, &order).await;
        let err = uploads.finish(&owner(), id).await.unwrap_err();
        assert!(
            matches!(err, UploadError::HashMismatch { expected, actual }
                if expected == id && actual == ModelId::of_bytes(&bad)),
            "{err}"
        );
        assert_eq!(uploads.in_progress().await, 0);
        assert!(staging_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_model_needing_more_memory_than_a_node_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let id = ModelId::of_bytes(&model);
        // The tiny CNN is estimated at about 23 KiB (its weights and activations).
        let estimate = crat_backend::onnx_check::check_model(&model)
            .unwrap()
            .memory
            .bytes;
        for (max, refused) in [(estimate - 1, true), (estimate, false)] {
            let uploads = Uploads::open(UploadConfig {
                memory_bytes_max: max,
                ..config(dir.path(), 4096)
            })
            .unwrap();
            uploads
                .begin(&owner(), id, model.len() as u64)
                .await
                .unwrap();
            let order: Vec<usize> = (0..model.len().div_ceil(4096)).collect();
            send(&uploads, id, &model, &order).await;
            let finished = uploads.finish(&owner(), id).await;
            if refused {
                let err = finished.unwrap_err();
                assert!(
                    matches!(&err, UploadError::OverMemory { estimate_bytes, max: m, detail }
                        if *estimate_bytes == estimate && *m == max && detail.contains("weights")),
                    "{err}"
                );
                assert!(staging_files(dir.path()).is_empty());
            } else {
                finished.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn bytes_that_are_not_onnx_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let id = ModelId::of_bytes(&junk);
        let uploads = Uploads::open(config(dir.path(), 1024)).unwrap();
        uploads
            .begin(&owner(), id, junk.len() as u64)
            .await
            .unwrap();
        send(&uploads, id, &junk, &[2, 0, 1]).await;
        let err = uploads.finish(&owner(), id).await.unwrap_err();
        assert!(matches!(err, UploadError::NotOnnx(_)), "{err}");
        assert!(staging_files(dir.path()).is_empty());
        // An empty model has no chunks and is not ONNX either.
        let empty = ModelId::of_bytes(b"");
        uploads.begin(&owner(), empty, 0).await.unwrap();
        assert!(matches!(
            uploads.finish(&owner(), empty).await,
            Err(UploadError::NotOnnx(_))
        ));
    }
}
