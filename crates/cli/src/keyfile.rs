//! Private key files: the dispatcher's and the node's ed25519 identity (`dispatcher.key`,
//! `node.key` in their data directories), 64 hex digits.
//!
//! A new key file is private from its first byte: it is written to a temporary file created
//! with mode 0600 in the same directory, synced, and linked into place only if no key is
//! there yet (two processes starting on one data directory agree on one key), then the
//! directory is synced. A crash leaves either no key file or a whole one.
//!
//! Reading a key file that its group or others may read (mode & 0o077) logs a warning
//! naming the fix (`chmod 600`); the key is still used. ssh refuses such keys; a node or
//! dispatcher that stopped starting after an upgrade would be worse than the warning, and
//! the files written before 0600 was the rule were 0644.

use std::fs::{self, File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use ed25519_dalek::SigningKey;

/// The mode a private key file is created with.
pub(crate) const KEY_FILE_MODE: u32 = 0o600;

/// Reads the ed25519 key at `path` (64 hex digits), creating it if absent.
pub(crate) fn load_or_create_key(path: &Path) -> anyhow::Result<SigningKey> {
    match read_key(path) {
        Ok(key) => Ok(key),
        Err(ReadError::Absent) => create_key(path),
        Err(ReadError::Other(e)) => Err(e),
    }
}

enum ReadError {
    Absent,
    Other(anyhow::Error),
}

fn read_key(path: &Path) -> Result<SigningKey, ReadError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Absent),
        Err(e) => {
            return Err(ReadError::Other(
                anyhow::Error::new(e).context(format!("reading {}", path.display())),
            ));
        }
    };
    warn_if_exposed(path);
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .with_context(|| format!("{} is not a 64-hex-digit key", path.display()))
        .map_err(ReadError::Other)?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Logs a warning when the group or others may read the key file at `path`.
fn warn_if_exposed(path: &Path) {
    match fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => tracing::warn!(
            "private key {} is readable by others (mode {:o}); run: chmod 600 {}",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot check the mode of {}: {e}", path.display()),
    }
}

/// Writes a fresh key to `path` (see the module docs), or reads the one another process
/// put there first.
fn create_key(path: &Path) -> anyhow::Result<SigningKey> {
    let key = SigningKey::from_bytes(&rand::random());
    if write_new_private(path, hex::encode(key.to_bytes()).as_bytes())? {
        return Ok(key);
    }
    // Another process created the key meanwhile: use its key, not ours.
    match read_key(path) {
        Ok(key) => Ok(key),
        Err(ReadError::Absent) => anyhow::bail!("{} vanished", path.display()),
        Err(ReadError::Other(e)) => Err(e),
    }
}

/// Writes `contents` to a new private file at `path` (mode 0600 from its first byte, synced,
/// linked into place only if nothing is there yet; see the module docs). `false` when a file
/// was there already (it is left as it is).
pub(crate) fn write_new_private(path: &Path, contents: &[u8]) -> anyhow::Result<bool> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map_or_else(|| "key".into(), |n| n.to_string_lossy().into_owned());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(KEY_FILE_MODE))
        .tempfile_in(dir)
        .with_context(|| format!("creating a private file in {}", dir.display()))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => {
            return Err(anyhow::Error::new(e.error).context(format!("writing {}", path.display())));
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_key_file_is_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let key = load_or_create_key(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load_or_create_key(&path).unwrap(), key);
        assert_eq!(mode(&path), 0o600);
        // Nothing but the key is left in the directory.
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["node.key"]);
    }

    #[test]
    fn an_existing_key_is_kept_whatever_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatcher.key");
        fs::write(&path, hex::encode([7u8; 32])).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        // Warned about (in the log), still used, never rewritten.
        let key = load_or_create_key(&path).unwrap();
        assert_eq!(key, SigningKey::from_bytes(&[7; 32]));
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn a_key_created_meanwhile_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let first = load_or_create_key(&path).unwrap();
        // A second creation (as by a process that found no file a moment earlier) keeps
        // the first key.
        assert_eq!(create_key(&path).unwrap(), first);
    }

    #[test]
    fn a_malformed_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        fs::write(&path, "not hex").unwrap();
        let e = load_or_create_key(&path).unwrap_err();
        assert!(format!("{e:#}").contains("64-hex-digit"), "{e:#}");
    }
}
