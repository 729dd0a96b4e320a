//! Reading and writing the CA's files; secrets are created 0600, atomically, never readable by others.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An I/O failure on one of the CA's files, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FileError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl FileError {
    fn new(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `dir` (and parents) as 0700 if it is missing; an existing directory is left as it is.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), FileError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| FileError::new("creating directory", dir, e))
}

/// Reads a whole file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    fs::read(path).map_err(|e| FileError::new("reading", path, e))
}

/// Whether `path` exists (an unreadable parent counts as an error, not as absence).
pub(crate) fn exists(path: &Path) -> Result<bool, FileError> {
    path.try_exists()
        .map_err(|e| FileError::new("checking", path, e))
}

/// The permission bits of `path` that let group or others in (0 when private).
pub(crate) fn loose_mode_bits(path: &Path) -> Result<u32, FileError> {
    let meta = fs::metadata(path).map_err(|e| FileError::new("inspecting", path, e))?;
    Ok(meta.permissions().mode() & 0o077)
}

/// Writes `contents` to `path` with mode `mode`, atomically: readers see the old file or the
/// whole new one, never a prefix, and the file never exists with a looser mode.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let tmp = write_temp(path, contents, mode)?;
    fs::rename(&tmp, path).map_err(|e| FileError::new("renaming into place", path, e))?;
    sync_parent(path)
}

/// Like [`write_atomic`], but only if `path` does not exist yet: of two processes racing to
/// create it, exactly one wins and the other sees the winner's file. Returns whether we won.
pub(crate) fn create_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<bool, FileError> {
    let tmp = write_temp(path, contents, mode)?;
    // link(2) fails if the target exists, unlike rename(2).
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_parent(path).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(FileError::new("creating", path, e)),
    }
}

/// A fully written, synced sibling temp file (per process, so racing writers do not collide).
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> Result<PathBuf, FileError> {
    let file_name = path.file_name().ok_or_else(|| {
        FileError::new("writing", path, io::Error::other("path has no file name"))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);

    // A stale temp file may have any mode; create_new below must make a fresh one.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(FileError::new("removing", &tmp, e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| FileError::new("creating", &tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| FileError::new("writing", &tmp, e))?;
    Ok(tmp)
}

/// A new directory entry is durable only once the directory is synced.
fn sync_parent(path: &Path) -> Result<(), FileError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::new("syncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_creates_with_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        write_atomic(&path, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(loose_mode_bits(&path).unwrap(), 0);

        // A stale, world-readable temp file must not lend its mode to the new file.
        let tmp = dir
            .path()
            .join(format!(".secret.key.{}.tmp", std::process::id()));
        fs::write(&tmp, b"stale").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!tmp.exists());
    }

    #[test]
    fn create_atomic_keeps_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        assert!(create_atomic(&path, b"first", 0o600).unwrap());
        assert!(!create_atomic(&path, b"second", 0o600).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp files are left behind either way.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_dir_is_0700_and_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        ensure_private_dir(&nested).unwrap();
        assert_eq!(
            fs::metadata(&nested).unwrap().permissions().mode() & 0o777,
            0o700
        );

        let missing = dir.path().join("nope.pem");
        let err = read(&missing).unwrap_err();
        assert_eq!(err.path(), missing);
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }
}
