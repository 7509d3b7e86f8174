//! Model blobs: where verified ONNX files live, and how they get there.
//!
//! - [`BlobStore`] is the trait the dispatcher reads and writes models through: content
//!   addressed (a blob's name is its [`ModelId`], the blake3 of its bytes), written once,
//!   read by range (nodes fetch a model chunk by chunk).
//! - [`LocalBlobStore`] is the embedded default: one file per model, named by the id's hex,
//!   moved into place with an atomic rename, read with positioned reads on the blocking pool.
//! - `ObjectBlobStore` (feature `object-store`) puts the same blobs in any
//!   [`object_store::ObjectStore`]: S3-compatible stores with feature `s3`, or an in-memory
//!   one for tests.
//! - [`Uploads`] is the staging area an upload goes through before it is a blob: resumable
//!   (chunks may come in any order and the state survives a restart), bounded (size of a
//!   model, number of partial uploads), and checked at the end (blake3 must equal the id, the
//!   bytes must be an ONNX model [`crat_backend::onnx_check::check_model`] accepts).
//!
//! ```no_run
//! # async fn demo(staging: std::path::PathBuf, blobs: std::path::PathBuf, model: Vec<u8>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use crat_core::id::ModelId;
//! use crat_dispatcher::blob::{BlobStore, LocalBlobStore, UploadConfig, Uploads};
//! use crat_dispatcher::ledger::AccountName;
//!
//! let uploads = Uploads::open(UploadConfig::new(staging))?;
//! let store = LocalBlobStore::open(&blobs)?;
//! let (alice, id) = (AccountName::new("alice")?, ModelId::of_bytes(&model));
//! let chunk = uploads.config().chunk_bytes as usize;
//! {
//!     // A server holds the model around a begin, and around a finish and its storing.
//!     let _held = uploads.hold(&alice, id).await;
//!     uploads.begin(&alice, id, model.len() as u64).await?;
//! }
//! for (i, part) in model.chunks(chunk).enumerate() {
//!     uploads.write(&alice, id, (i * chunk) as u64, part).await?;
//! }
//! let _held = uploads.hold(&alice, id).await;
//! let staged = uploads.finish(&alice, id).await?;
//! store.put_file(&id, &staged.path).await?;
//! // Stored: the staged file goes (had storing failed, the next begin would take it up).
//! uploads.discard(&staged).await;
//! assert_eq!(store.size(&id).await?, Some(model.len() as u64));
//! # Ok(()) }
//! ```

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crat_core::id::ModelId;

mod upload;

pub use upload::{Hold, StagedModel, UploadConfig, UploadError, UploadProgress, Uploads};

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// No blob has this id.
    #[error("model {0} not found")]
    NotFound(ModelId),
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The storage backend (an object store) failed.
    #[error("blob backend: {0}")]
    Backend(String),
    /// A model store location that names no store this build can open.
    #[error("model store {url}: {reason}")]
    Location {
        /// The location as given (without credentials: they come from the environment).
        url: String,
        /// Why it cannot be opened.
        reason: String,
    },
    /// A read starting past the end of the blob.
    #[error("range at {offset} (+{len}) is outside a blob of {size} bytes")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u32,
        /// The blob's size.
        size: u64,
    },
}

impl BlobError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Where verified models are kept, by id. Blobs are immutable: a stored id always has the
/// same bytes.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the verified file at `path` under `id`. The store may move the file away (the
    /// caller removes it if it is still there afterwards). Storing an id that is already
    /// stored succeeds and changes nothing.
    async fn put_file(&self, id: &ModelId, path: &Path) -> Result<(), BlobError>;
    /// Size of a stored blob, `None` if absent.
    async fn size(&self, id: &ModelId) -> Result<Option<u64>, BlobError>;
    /// `len` bytes from `offset` (fewer at the end of the blob, none at its very end);
    /// [`BlobError::OutOfRange`] past the end, [`BlobError::NotFound`] if absent.
    async fn read_range(&self, id: &ModelId, offset: u64, len: u32) -> Result<Vec<u8>, BlobError>;
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::io("blocking task", io::Error::other(e)))?
}

/// The bytes of `[offset, offset + len)` clipped to a blob of `size` bytes, or why not.
fn clip(offset: u64, len: u32, size: u64) -> Result<u64, BlobError> {
    if offset > size {
        return Err(BlobError::OutOfRange { offset, len, size });
    }
    Ok(u64::from(len).min(size - offset))
}

/// Blobs as files in one directory, named by the model id's hex. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    dir: PathBuf,
}

impl LocalBlobStore {
    /// Opens (creating if needed) the blob directory and removes temporary files an
    /// interrupted `put_file` left behind.
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        fs::create_dir_all(dir)
            .map_err(|e| BlobError::io(format!("create {}", dir.display()), e))?;
        let entries =
            fs::read_dir(dir).map_err(|e| BlobError::io(format!("list {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp")
                && let Err(e) = fs::remove_file(&path)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove");
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a blob is (or would be) stored in.
    pub fn path_of(&self, id: &ModelId) -> PathBuf {
        self.dir.join(id.to_string())
    }
}

/// Makes a rename or creation in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait::async_trait]
impl BlobStore for LocalBlobStore {
    async fn put_file(&self, id: &ModelId, path: &Path) -> Result<(), BlobError> {
        let dest = self.path_of(id);
        let tmp = self.dir.join(format!("{id}.tmp"));
        let dir = self.dir.clone();
        let src = path.to_path_buf();
        blocking(move || {
            if dest.exists() {
                return Ok(());
            }
            // Same file system: one atomic rename. Otherwise copy to a temporary name in the
            // store, make it durable, then rename that into place.
            if fs::rename(&src, &dest).is_err() {
                fs::copy(&src, &tmp).map_err(|e| {
                    BlobError::io(format!("copy {} into the store", src.display()), e)
                })?;
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| BlobError::io(format!("sync {}", tmp.display()), e))?;
                fs::rename(&tmp, &dest)
                    .map_err(|e| BlobError::io(format!("rename into {}", dest.display()), e))?;
            }
            sync_dir(&dir).map_err(|e| BlobError::io(format!("sync {}", dir.display()), e))
        })
        .await
    }

    async fn size(&self, id: &ModelId) -> Result<Option<u64>, BlobError> {
        let path = self.path_of(id);
        blocking(move || match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::io(format!("stat {}", path.display()), e)),
        })
        .await
    }

    async fn read_range(&self, id: &ModelId, offset: u64, len: u32) -> Result<Vec<u8>, BlobError> {
        let path = self.path_of(id);
        let id = *id;
        blocking(move || {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(BlobError::NotFound(id));
                }
                Err(e) => return Err(BlobError::io(format!("open {}", path.display()), e)),
            };
            let size = file
                .metadata()
                .map_err(|e| BlobError::io(format!("stat {}", path.display()), e))?
                .len();
            let n = clip(offset, len, size)?;
            // `n <= len`, a u32: it fits in usize.
            let mut buf = vec![0u8; n as usize];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| BlobError::io(format!("read {}", path.display()), e))?;
            Ok(buf)
        })
        .await
    }
}

#[cfg(feature = "object-store")]
pub use object::ObjectBlobStore;

#[cfg(feature = "object-store")]
mod object {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;

    use parking_lot::Mutex;

    use crat_core::id::ModelId;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, PutPayload, WriteMultipart};

    use super::{BlobError, BlobStore, blocking};

    /// Files up to this size are stored with one `put`; larger ones with a multipart upload.
    const SINGLE_PUT_BYTES_MAX: u64 = 16 << 20;
    /// Part size of a multipart upload (S3 wants at least 5 MiB).
    const PART_BYTES: usize = 8 << 20;
    /// Parts in flight at once during a multipart upload.
    const PARTS_IN_FLIGHT_MAX: usize = 4;
    /// Sizes remembered (blobs are immutable, so a size never goes stale).
    const SIZES_CACHED_MAX: usize = 4096;

    /// Blobs in an [`ObjectStore`], under a prefix, named by the model id's hex.
    pub struct ObjectBlobStore {
        store: Arc<dyn ObjectStore>,
        prefix: String,
        sizes: Mutex<HashMap<ModelId, u64>>,
    }

    impl std::fmt::Debug for ObjectBlobStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ObjectBlobStore")
                .field("store", &self.store.to_string())
                .field("prefix", &self.prefix)
                .finish_non_exhaustive()
        }
    }

    #[cfg(feature = "s3")]
    fn s3(bucket: &str, prefix: &str, options: &[(&str, &str)]) -> Result<ObjectBlobStore, String> {
        let mut builder = object_store::aws::AmazonS3Builder::from_env();
        for (key, value) in options {
            let key: object_store::aws::AmazonS3ConfigKey = key
                .parse()
                .map_err(|e: object_store::Error| format!("option {key}: {e}"))?;
            builder = builder.with_config(key, *value);
        }
        let store = builder
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ObjectBlobStore::new(Arc::new(store), prefix))
    }

    #[cfg(not(feature = "s3"))]
    fn s3(
        _bucket: &str,
        _prefix: &str,
        _options: &[(&str, &str)],
    ) -> Result<ObjectBlobStore, String> {
        Err("this build has no S3 support (crat-dispatcher feature `s3`)".into())
    }

    fn backend(e: object_store::Error) -> BlobError {
        BlobError::Backend(e.to_string())
    }

    impl ObjectBlobStore {
        /// Blobs in `store` under `prefix` (e.g. `"models"`; empty for the root).
        pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
            let prefix = prefix.into().trim_matches('/').to_string();
            Self {
                store,
                prefix,
                sizes: Mutex::new(HashMap::new()),
            }
        }

        /// The store a URL names, with the blobs under the URL's path:
        /// - `file:///srv/crat/models`: a directory (created when missing). Dispatchers
        ///   sharing one ledger may share it over a network file system: a blob is written
        ///   to a temporary name and renamed into place, so a reader never sees half of one.
        /// - `s3://bucket/prefix` (feature `s3`): an S3-compatible bucket, configured from the
        ///   environment as the AWS tools are: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
        ///   `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`; `AWS_ENDPOINT` for another service
        ///   (MinIO, Cloudflare R2, …) and `AWS_ALLOW_HTTP=true` when that endpoint is plain
        ///   HTTP. Nothing is sent before the first blob is stored or read.
        ///
        /// Anything else is [`BlobError::Location`].
        pub fn from_url(url: &str) -> Result<Self, BlobError> {
            Self::from_url_with(url, &[])
        }

        /// [`ObjectBlobStore::from_url`], with configuration given here over what the
        /// environment says: for `s3://`, `object_store`'s S3 option names (`aws_endpoint`,
        /// `aws_allow_http`, `aws_access_key_id`, `aws_secret_access_key`, `aws_region`, …,
        /// [`object_store::aws::AmazonS3ConfigKey`]); an unknown name is
        /// [`BlobError::Location`]. `file://` takes none.
        pub fn from_url_with(url: &str, options: &[(&str, &str)]) -> Result<Self, BlobError> {
            let bad = |reason: &str| BlobError::Location {
                url: url.to_string(),
                reason: reason.to_string(),
            };
            if let Some(path) = url.strip_prefix("file://") {
                if !path.starts_with('/') {
                    return Err(bad("a file URL needs an absolute path (file:///dir)"));
                }
                if let Some((key, _)) = options.first() {
                    return Err(bad(&format!("a file URL takes no option ({key})")));
                }
                std::fs::create_dir_all(path).map_err(|e| bad(&e.to_string()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| bad(&e.to_string()))?;
                return Ok(Self::new(Arc::new(fs), ""));
            }
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("an S3 URL names its bucket (s3://bucket/prefix)"));
                }
                return s3(bucket, prefix, options).map_err(|e| bad(&e));
            }
            Err(bad("expected file:///dir or s3://bucket/prefix"))
        }

        /// The object path of a blob.
        pub fn location(&self, id: &ModelId) -> ObjectPath {
            if self.prefix.is_empty() {
                ObjectPath::from(id.to_string())
            } else {
                ObjectPath::from(format!("{}/{id}", self.prefix))
            }
        }

        fn remember(&self, id: &ModelId, size: u64) {
            let mut sizes = self.sizes.lock();
            if sizes.len() >= SIZES_CACHED_MAX {
                sizes.clear();
            }
            sizes.insert(*id, size);
        }

        fn cached(&self, id: &ModelId) -> Option<u64> {
            self.sizes.lock().get(id).copied()
        }
    }

    #[async_trait::async_trait]
    impl BlobStore for ObjectBlobStore {
        async fn put_file(&self, id: &ModelId, path: &Path) -> Result<(), BlobError> {
            if self.size(id).await?.is_some() {
                return Ok(());
            }
            let location = self.location(id);
            let src = path.to_path_buf();
            let open = src.clone();
            let (file, size) = blocking(move || {
                let file = std::fs::File::open(&open)
                    .map_err(|e| BlobError::io(format!("open {}", open.display()), e))?;
                let size = file
                    .metadata()
                    .map_err(|e| BlobError::io(format!("stat {}", open.display()), e))?
                    .len();
                Ok((file, size))
            })
            .await?;
            if size <= SINGLE_PUT_BYTES_MAX {
                let bytes = blocking(move || {
                    // At most SINGLE_PUT_BYTES_MAX: fits in usize.
                    let mut buf = vec![0u8; size as usize];
                    std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0)
                        .map_err(|e| BlobError::io(format!("read {}", src.display()), e))?;
                    Ok(buf)
                })
                .await?;
                self.store
                    .put(&location, PutPayload::from(bytes))
                    .await
                    .map_err(backend)?;
            } else {
                let upload = self.store.put_multipart(&location).await.map_err(backend)?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                let file = Arc::new(file);
                let mut offset = 0u64;
                while offset < size {
                    let n = (size - offset).min(PART_BYTES as u64);
                    let f = Arc::clone(&file);
                    let src = src.clone();
                    let part = blocking(move || {
                        // n <= PART_BYTES: fits in usize.
                        let mut buf = vec![0u8; n as usize];
                        std::os::unix::fs::FileExt::read_exact_at(&*f, &mut buf, offset)
                            .map_err(|e| BlobError::io(format!("read {}", src.display()), e))?;
                        Ok(buf)
                    })
                    .await;
                    let part = match part {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = writer.abort().await;
                            return Err(e);
                        }
                    };
                    if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT_MAX).await {
                        let _ = writer.abort().await;
                        return Err(backend(e));
                    }
                    writer.write(&part);
                    offset += n;
                }
                writer.finish().await.map_err(backend)?;
            }
            self.remember(id, size);
            Ok(())
        }

        async fn size(&self, id: &ModelId) -> Result<Option<u64>, BlobError> {
            if let Some(size) = self.cached(id) {
                return Ok(Some(size));
            }
            match self.store.head(&self.location(id)).await {
                Ok(meta) => {
                    self.remember(id, meta.size);
                    Ok(Some(meta.size))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(backend(e)),
            }
        }

        async fn read_range(
            &self,
            id: &ModelId,
            offset: u64,
            len: u32,
        ) -> Result<Vec<u8>, BlobError> {
            let size = self.size(id).await?.ok_or(BlobError::NotFound(*id))?;
            let n = super::clip(offset, len, size)?;
            if n == 0 {
                return Ok(Vec::new());
            }
            let bytes = self
                .store
                .get_range(&self.location(id), offset..offset + n)
                .await
                .map_err(|e| match e {
                    object_store::Error::NotFound { .. } => BlobError::NotFound(*id),
                    e => backend(e),
                })?;
            Ok(bytes.to_vec())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(super) fn tiny_cnn() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../backend/models/tiny_cnn.onnx");
        fs::read(path).unwrap()
    }

    /// put_file + size + read_range through any store.
    pub(super) async fn round_trip(store: &dyn BlobStore, model: &[u8], staged: &Path) {
        let id = ModelId::of_bytes(model);
        assert_eq!(store.size(&id).await.unwrap(), None);
        assert!(matches!(
            store.read_range(&id, 0, 10).await,
            Err(BlobError::NotFound(_))
        ));
        store.put_file(&id, staged).await.unwrap();
        // Idempotent, even once the source file is gone.
        store.put_file(&id, staged).await.unwrap();
        let size = model.len() as u64;
        assert_eq!(store.size(&id).await.unwrap(), Some(size));
        let mut back = Vec::new();
        let mut offset = 0u64;
        while offset < size {
            let part = store.read_range(&id, offset, 4000).await.unwrap();
            assert!(!part.is_empty());
            offset += part.len() as u64;
            back.extend_from_slice(&part);
        }
        assert_eq!(back, model);
        assert_eq!(
            store.read_range(&id, 100, 50).await.unwrap(),
            model[100..150]
        );
        assert_eq!(
            store.read_range(&id, size - 3, 50).await.unwrap(),
            model[model.len() - 3..]
        );
        assert!(store.read_range(&id, size, 50).await.unwrap().is_empty());
        assert!(matches!(
            store.read_range(&id, size + 1, 50).await,
            Err(BlobError::OutOfRange { .. })
        ));
    }

    #[tokio::test]
    async fn local_store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let staged = dir.path().join("staged");
        fs::write(&staged, &model).unwrap();
        fs::create_dir(dir.path().join("blobs")).unwrap();
        fs::write(dir.path().join("blobs/junk.tmp"), b"x").unwrap();
        let store = LocalBlobStore::open(&dir.path().join("blobs")).unwrap();
        assert!(!dir.path().join("blobs/junk.tmp").exists());
        round_trip(&store, &model, &staged).await;
        assert!(store.path_of(&ModelId::of_bytes(&model)).exists());
        // Reopening finds it.
        let store = LocalBlobStore::open(&dir.path().join("blobs")).unwrap();
        assert_eq!(
            store.size(&ModelId::of_bytes(&model)).await.unwrap(),
            Some(model.len() as u64)
        );
    }

    #[cfg(feature = "object-store")]
    #[tokio::test]
    async fn object_store_round_trip() {
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let staged = dir.path().join("staged");
        fs::write(&staged, &model).unwrap();
        let memory = Arc::new(object_store::memory::InMemory::new());
        let store = ObjectBlobStore::new(memory.clone(), "models/");
        round_trip(&store, &model, &staged).await;
        let id = ModelId::of_bytes(&model);
        let meta = object_store::ObjectStore::head(
            &*memory,
            &object_store::path::Path::from(format!("models/{id}")),
        )
        .await
        .unwrap();
        assert_eq!(meta.size, model.len() as u64);
        // A fresh adapter over the same store (no cached sizes) sees it too.
        let again = ObjectBlobStore::new(memory, "models");
        assert_eq!(again.size(&id).await.unwrap(), Some(model.len() as u64));
    }

    #[cfg(feature = "object-store")]
    #[tokio::test]
    async fn a_file_url_opens_a_shared_directory() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let staged = dir.path().join("staged");
        fs::write(&staged, &model).unwrap();
        let shared = dir.path().join("shared/models");
        let url = format!("file://{}", shared.display());
        let store = ObjectBlobStore::from_url(&url).unwrap();
        round_trip(&store, &model, &staged).await;
        let id = ModelId::of_bytes(&model);
        assert_eq!(fs::read(shared.join(id.to_string())).unwrap(), model);
        // Another dispatcher opening the same directory reads it.
        let other = ObjectBlobStore::from_url(&url).unwrap();
        assert_eq!(other.read_range(&id, 0, 8).await.unwrap(), model[..8]);
    }

    #[cfg(feature = "object-store")]
    #[test]
    fn model_store_urls_that_name_no_store_are_refused() {
        for (url, says) in [
            ("file://relative/dir", "absolute path"),
            ("s3:///models", "names its bucket"),
            (
                "gs://bucket/models",
                "expected file:///dir or s3://bucket/prefix",
            ),
            ("/srv/models", "expected file:///dir"),
        ] {
            match ObjectBlobStore::from_url(url) {
                Err(e @ BlobError::Location { .. }) => {
                    assert!(e.to_string().contains(says), "{url}: {e}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    /// Opening an S3 store sends nothing (no network here): the bucket and prefix come from
    /// the URL.
    #[cfg(feature = "s3")]
    #[test]
    fn an_s3_url_names_the_bucket_and_the_prefix() {
        let store = ObjectBlobStore::from_url("s3://crat-models/prod/models/").unwrap();
        let id = ModelId::of_bytes(b"x");
        assert_eq!(store.location(&id).as_ref(), format!("prod/models/{id}"));
        assert!(format!("{store:?}").contains("crat-models"), "{store:?}");
    }

    /// An unknown S3 option is refused by name, before anything is sent.
    #[cfg(feature = "s3")]
    #[test]
    fn an_unknown_s3_option_is_refused() {
        match ObjectBlobStore::from_url_with("s3://crat-models", &[("aws_endpoit", "x")]) {
            Err(e @ BlobError::Location { .. }) => {
                assert!(e.to_string().contains("aws_endpoit"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// The same blobs through a real S3 API: moto's server, which `scripts/test.sh` starts
    /// (`scripts/s3.sh`) and names in `CRAT_TEST_S3_ENDPOINT`, with the bucket `crat-test`.
    /// Single puts, a multipart upload (S3's rules on part sizes apply), ranged reads, and a
    /// second store (another dispatcher) reading what the first wrote.
    #[cfg(feature = "s3")]
    #[tokio::test]
    async fn an_s3_service_stores_and_serves_models() {
        let endpoint = std::env::var("CRAT_TEST_S3_ENDPOINT").expect(
            "CRAT_TEST_S3_ENDPOINT names no S3 service: run the tests with scripts/test.sh, \
             or start one with `scripts/s3.sh start` and export its endpoint",
        );
        let options = [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
        ];
        let run: [u8; 8] = rand::random();
        let url = format!("s3://crat-test/run-{}/models", hex::encode(run));
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_cnn();
        let staged = dir.path().join("staged");
        fs::write(&staged, &model).unwrap();
        let store = ObjectBlobStore::from_url_with(&url, &options).unwrap();
        round_trip(&store, &model, &staged).await;

        let big: Vec<u8> = (0..(20u32 << 20) + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let big_path = dir.path().join("big");
        fs::write(&big_path, &big).unwrap();
        let big_id = ModelId::of_bytes(&big);
        store.put_file(&big_id, &big_path).await.unwrap();

        let other = ObjectBlobStore::from_url_with(&url, &options).unwrap();
        let id = ModelId::of_bytes(&model);
        assert_eq!(other.size(&id).await.unwrap(), Some(model.len() as u64));
        assert_eq!(other.read_range(&id, 0, 8).await.unwrap(), model[..8]);
        assert_eq!(other.size(&big_id).await.unwrap(), Some(big.len() as u64));
        // Across the boundary between the first two 8 MiB parts, and the last bytes.
        let off = (8u64 << 20) - 10;
        assert_eq!(
            other.read_range(&big_id, off, 100).await.unwrap(),
            big[off as usize..off as usize + 100]
        );
        let tail = big.len() as u64 - 5;
        assert_eq!(
            other.read_range(&big_id, tail, 100).await.unwrap(),
            big[tail as usize..]
        );
        // A store under another prefix of the bucket sees none of them.
        let elsewhere =
            ObjectBlobStore::from_url_with(&format!("{url}-elsewhere"), &options).unwrap();
        assert_eq!(elsewhere.size(&id).await.unwrap(), None);
    }

    #[cfg(feature = "object-store")]
    #[tokio::test]
    async fn object_store_multipart_for_big_files() {
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(20u32 << 20) + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let staged = dir.path().join("big");
        fs::write(&staged, &big).unwrap();
        let id = ModelId::of_bytes(&big);
        let store = ObjectBlobStore::new(Arc::new(object_store::memory::InMemory::new()), "");
        store.put_file(&id, &staged).await.unwrap();
        assert_eq!(store.size(&id).await.unwrap(), Some(big.len() as u64));
        let off = (16u64 << 20) - 10;
        assert_eq!(
            store.read_range(&id, off, 100).await.unwrap(),
            big[off as usize..off as usize + 100]
        );
    }
}
