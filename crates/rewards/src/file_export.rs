//! **Does IO.** The default [`Settlement`]: writes each round's payouts to a directory.
//!
//! This is the one module of the crate that touches the file system (`std::fs` only); the
//! rest is sans-IO. For round `N` it writes, in this order, each with [`write_durable`]
//! (a temporary file in the same directory, `fsync`ed, renamed over the final name, then the
//! directory `fsync`ed, so after a crash or a power loss a name holds either nothing, its old
//! content or its whole new content):
//!
//! - `round-NNNNNNNNNNNNNNNNNNNN.csv`: [`PayoutBatch::to_csv`];
//! - `round-NNNNNNNNNNNNNNNNNNNN.blake3`: the digest in `b3sum` format (`<hex>  <json name>`);
//! - `round-NNNNNNNNNNNNNNNNNNNN.json`: [`PayoutBatch::to_json`], last, so its presence means
//!   the round is settled.
//!
//! Settling a round again is safe, which is what lets a dispatcher retry a round after any
//! failure or restart:
//!
//! - no JSON, or a JSON that does not parse (a partial file left by a crash of a build that did
//!   not `fsync`, or by a damaged disk: never a complete settlement, so nobody can have paid
//!   from it): all three files are written again and the round is settled now;
//! - a JSON that parses and matches its digest file: the same payouts are a no-op
//!   (`newly_settled: false`; the CSV and the digest file are rewritten only if they differ),
//!   different ones are [`SettlementError::Conflict`];
//! - a JSON that parses while the digest file is missing or is not a digest line (lost in a
//!   crash): compared as above, and the digest file is written again;
//! - a JSON that parses but whose well-formed digest file names another digest, or whose
//!   round is another round: [`SettlementError::Corrupt`] (edited by hand, not by a crash),
//!   reported and never overwritten.
//!
//! Settling the same batch twice writes the same bytes and pays once.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::settlement::{PayoutBatch, Settlement, SettlementError, SettlementReceipt};

/// Writes payout batches into a directory (created on first use).
#[derive(Clone, Debug)]
pub struct FileSettlement {
    dir: PathBuf,
}

/// Writes `contents` to `path` so that a crash at any point leaves `path` either as it was or
/// holding all of `contents`: the bytes go to `<path>.tmp` in the same directory (truncated
/// first, so a temporary file left by an earlier crash is overwritten), which is `fsync`ed,
/// renamed over `path`, and then the directory is `fsync`ed so the rename itself is on disk.
/// On success no temporary file remains.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let dir = std::env::temp_dir().join(format!("crat-durable-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("round.json");
/// crat_rewards::file_export::write_durable(&path, b"{}\n")?;
/// assert_eq!(std::fs::read(&path)?, b"{}\n");
/// assert!(!dir.join("round.json.tmp").exists());
/// # std::fs::remove_dir_all(&dir)
/// # }
/// ```
pub fn write_durable(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(parent(path))
}

/// The temporary file [`write_durable`] writes `path` through.
fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `fsync`s a directory, so the names created, renamed or removed in it are on disk.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for `fsync` outside Unix; NTFS journals renames itself.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// What a settled round's files say.
enum Recorded {
    /// No JSON, or one that does not parse: the round was never completely settled here.
    Nothing,
    /// A JSON that parses (the batch and its bytes), whose digest file matches it or is
    /// missing or not a digest line (to be written again).
    Batch(PayoutBatch, Vec<u8>),
}

impl FileSettlement {
    /// Settles into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of round `round_index` with extension `ext` (`json`, `csv`, `blake3`).
    pub fn path(&self, round_index: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("round-{round_index:020}.{ext}"))
    }

    /// Creates the directory if it is missing, and makes its name durable in its parent.
    fn ensure_dir(&self) -> Result<(), SettlementError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let up = parent(&self.dir);
        sync_dir(up).map_err(|e| io(up, e))
    }

    fn write(&self, path: &Path, contents: &str) -> Result<(), SettlementError> {
        write_durable(path, contents.as_bytes()).map_err(|e| io(path, e))
    }

    /// Writes `path` unless it already holds exactly `contents`; `fsync`s it either way, so
    /// a file written by a build that did not is on disk before the round counts as settled.
    fn write_if_changed(&self, path: &Path, contents: &str) -> Result<(), SettlementError> {
        match fs::read(path) {
            Ok(old) if old == contents.as_bytes() => File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(path, e)),
            Ok(_) => self.write(path, contents),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.write(path, contents),
            Err(e) => Err(io(path, e)),
        }
    }

    fn recorded(&self, round_index: u64) -> Result<Recorded, SettlementError> {
        let json_path = self.path(round_index, "json");
        let bytes = match fs::read(&json_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recorded::Nothing),
            Err(e) => return Err(io(&json_path, e)),
        };
        let Ok(batch) = serde_json::from_slice::<PayoutBatch>(&bytes) else {
            // A partial write: never a complete settlement.
            return Ok(Recorded::Nothing);
        };
        let corrupt = |reason: String| SettlementError::Corrupt {
            path: json_path.display().to_string(),
            reason,
        };
        if batch.round_index != round_index {
            return Err(corrupt(format!("it records round {}", batch.round_index)));
        }
        let digest_path = self.path(round_index, "blake3");
        let digest = match fs::read_to_string(&digest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => String::new(),
            Err(e) => return Err(io(&digest_path, e)),
        };
        let written = digest
            .split_whitespace()
            .next()
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(written) = written else {
            return Ok(Recorded::Batch(batch, bytes));
        };
        let actual = blake3::hash(&bytes).to_hex();
        if !written.eq_ignore_ascii_case(actual.as_str()) {
            return Err(corrupt(format!(
                "blake3 is {actual}, {} says otherwise",
                digest_path.display()
            )));
        }
        Ok(Recorded::Batch(batch, bytes))
    }
}

fn io(path: &Path, source: std::io::Error) -> SettlementError {
    SettlementError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Settlement for FileSettlement {
    fn settle(&mut self, batch: &PayoutBatch) -> Result<SettlementReceipt, SettlementError> {
        let json = batch.to_json();
        let digest_hex = blake3::hash(json.as_bytes()).to_hex().to_string();
        let receipt = |newly_settled| SettlementReceipt {
            round_index: batch.round_index,
            payouts: batch.payouts.len(),
            total_usd_micro: batch.total_usd_micro,
            digest_hex: digest_hex.clone(),
            newly_settled,
        };
        let json_path = self.path(batch.round_index, "json");
        let json_name = json_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let csv_path = self.path(batch.round_index, "csv");
        let digest_path = self.path(batch.round_index, "blake3");
        match self.recorded(batch.round_index)? {
            Recorded::Batch(recorded, _) if recorded != *batch => {
                match recorded.first_difference(batch) {
                    Some(node) => Err(SettlementError::Conflict {
                        round_index: batch.round_index,
                        node,
                    }),
                    // The same payouts under another total: the record contradicts itself.
                    None => Err(SettlementError::Corrupt {
                        path: json_path.display().to_string(),
                        reason: format!(
                            "its total {} is not the sum of its payouts",
                            recorded.total_usd_micro.get()
                        ),
                    }),
                }
            }
            Recorded::Batch(_, bytes) => {
                // The same payouts: paid before. Repair what a crash may have lost (a file
                // rewritten only if its bytes differ), then say so. The JSON on record is
                // kept as it is; its digest file follows its bytes.
                self.write_if_changed(&csv_path, &batch.to_csv())?;
                File::open(&json_path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io(&json_path, e))?;
                let on_disk = blake3::hash(&bytes).to_hex();
                self.write_if_changed(&digest_path, &format!("{on_disk}  {json_name}\n"))?;
                Ok(receipt(false))
            }
            Recorded::Nothing => {
                self.ensure_dir()?;
                self.write(&csv_path, &batch.to_csv())?;
                self.write(&digest_path, &format!("{digest_hex}  {json_name}\n"))?;
                self.write(&json_path, &json)?;
                Ok(receipt(true))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "crat-rewards-durable-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_durable_write_leaves_the_content_and_no_temporary_file() {
        let dir = temp_dir("write");
        let path = dir.join("round-1.json");
        // A temporary file left by a crash, and an older version of the file.
        fs::write(
            dir.join("round-1.json.tmp"),
            b"partial garbage that is longer",
        )
        .unwrap();
        fs::write(&path, b"old").unwrap();
        write_durable(&path, b"new content\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new content\n");
        assert!(!dir.join("round-1.json.tmp").exists());
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["round-1.json"]);
        // A missing directory is an error, not a silent success.
        assert!(write_durable(&dir.join("missing").join("f"), b"x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
