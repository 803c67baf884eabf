//! Key files: one base64 key per file, written atomically with mode 0600, loaded only when no
//! one but the owner can read them.
//!
//! Writing goes to a temporary file in the same directory (created 0600), is synced, renamed over
//! the target and the directory synced: a crash leaves either the old file or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

use crate::{KeyError, PrivateKey};

/// Why a key file could not be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path}: permissions {mode:04o} are too open: a private key must be readable by its \
         owner only (run: chmod 600 {path})"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: KeyError },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    write_atomic(path, contents, 0o600, true).map(|_| ())
}

/// Creates `path` with `contents` and `mode` unless it already exists (then returns false and
/// leaves it alone), with the same crash safety: the file appears complete or not at all.
pub fn create_exclusive(path: &Path, contents: &[u8], mode: u32) -> Result<bool, KeyFileError> {
    write_atomic(path, contents, mode, false)
}

/// Writes a synced temporary file beside `path`, then renames it over `path` (`replace`) or
/// links it there unless `path` exists; syncs the directory. True when `path` was written.
fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    replace: bool,
) -> Result<bool, KeyFileError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode above is filtered by the umask only towards fewer bits, but a file that
        // already existed keeps its mode: set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        let written = if replace {
            fs::rename(&tmp, path)?;
            true
        } else {
            match fs::hard_link(&tmp, path) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            }
        };
        File::open(dir)?.sync_all()?;
        Ok(written)
    })();
    // After a rename the temporary name is gone; otherwise it is removed here.
    let _ = fs::remove_file(&tmp);
    result.map_err(io_err(path))
}

/// Reads a file that must be readable by its owner only (no group/other permission bits).
pub fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mode = f.metadata().map_err(io_err(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let mut buf = Zeroizing::new(Vec::new());
    io::Read::read_to_end(&mut &f, &mut buf).map_err(io_err(path))?;
    Ok(buf)
}

/// Saves a private key as WireGuard base64 text plus a newline (what `wg genkey > file` writes).
pub fn save_private_key(path: &Path, key: &PrivateKey) -> Result<(), KeyFileError> {
    let mut text = Zeroizing::new(key.to_base64().as_bytes().to_vec());
    text.push(b'\n');
    write_private(path, &text)
}

/// Loads a private key file written by us or by `wg genkey`; refuses group/other-readable files.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let bytes = read_private(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| KeyFileError::Invalid {
        path: path.to_owned(),
        source: KeyError::Base64,
    })?;
    text.parse().map_err(|source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let k = PrivateKey::generate();
        save_private_key(&path, &k).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_private_key(&path).unwrap(), k);
        // Overwrite keeps 0600 and replaces the content.
        let k2 = PrivateKey::generate();
        save_private_key(&path, &k2).unwrap();
        assert_eq!(load_private_key(&path).unwrap(), k2);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn group_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        save_private_key(&path, &PrivateKey::generate()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_private_key(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::TooOpen { mode: 0o640, .. }));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        write_private(&path, b"hello\n").unwrap();
        let err = load_private_key(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Invalid { .. }), "{err}");
        write_private(&path, &[0xff, 0xfe]).unwrap();
        assert!(load_private_key(&path).is_err());
        let missing = dir.path().join("missing.key");
        assert!(matches!(
            load_private_key(&missing),
            Err(KeyFileError::Io { .. })
        ));
    }
}
