//! **Does IO.** The default [`Settlement`]: writes each round's payouts to a directory.
//!
//! This is the one module of the crate that touches the file system (`std::fs` only); the
//! rest is sans-IO. For round `N` it writes, in this order, each through a temporary file and
//! a rename:
//!
//! - `round-NNNNNNNNNNNNNNNNNNNN.csv`: [`PayoutBatch::to_csv`];
//! - `round-NNNNNNNNNNNNNNNNNNNN.blake3`: the digest in `b3sum` format (`<hex>  <json name>`);
//! - `round-NNNNNNNNNNNNNNNNNNNN.json`: [`PayoutBatch::to_json`], last, so its presence means
//!   the round is settled.
//!
//! Settling a round whose JSON exists compares batches: the same payouts are a no-op
//! (`newly_settled: false`), different ones are [`SettlementError::Conflict`]. The recorded
//! JSON is checked against its digest first.

use std::fs;
use std::path::{Path, PathBuf};

use crate::settlement::{PayoutBatch, Settlement, SettlementError, SettlementReceipt};

/// Writes payout batches into a directory (created on first use).
#[derive(Clone, Debug)]
pub struct FileSettlement {
    dir: PathBuf,
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

    fn write_atomic(&self, path: &Path, contents: &str) -> Result<(), SettlementError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        fs::write(&tmp, contents).map_err(|e| io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io(path, e))
    }

    fn recorded(&self, round_index: u64) -> Result<Option<PayoutBatch>, SettlementError> {
        let json_path = self.path(round_index, "json");
        let text = match fs::read_to_string(&json_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&json_path, e)),
        };
        let digest_path = self.path(round_index, "blake3");
        let digest = fs::read_to_string(&digest_path).map_err(|e| io(&digest_path, e))?;
        let actual = blake3::hash(text.as_bytes()).to_hex();
        if digest.split_whitespace().next() != Some(actual.as_str()) {
            return Err(SettlementError::Corrupt {
                path: json_path.display().to_string(),
                reason: format!(
                    "blake3 is {actual}, {} says otherwise",
                    digest_path.display()
                ),
            });
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| SettlementError::Corrupt {
                path: json_path.display().to_string(),
                reason: e.to_string(),
            })
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
        if let Some(recorded) = self.recorded(batch.round_index)? {
            return match recorded.first_difference(batch) {
                None => Ok(receipt(false)),
                Some(node) => Err(SettlementError::Conflict {
                    round_index: batch.round_index,
                    node,
                }),
            };
        }
        fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let json_path = self.path(batch.round_index, "json");
        let json_name = json_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.write_atomic(&self.path(batch.round_index, "csv"), &batch.to_csv())?;
        self.write_atomic(
            &self.path(batch.round_index, "blake3"),
            &format!("{digest_hex}  {json_name}\n"),
        )?;
        self.write_atomic(&json_path, &json)?;
        Ok(receipt(true))
    }
}
