//! Atomic file output.
//!
//! Checkpoints, weights and result tables are written to a temporary file beside the target,
//! flushed to disk, then renamed over it: a reader (or a resumed run) sees the old file or the
//! new one, never a half-written one, even if the process is killed mid-write.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Write a file atomically: `write` fills a buffered writer on a temporary file in the same
/// directory, which is then synced and renamed onto `path`. On any error the temporary file is
/// removed and `path` is untouched.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("result.txt");
/// transferlab::fsutil::write_atomic(&path, |w| {
///     use std::io::Write;
///     w.write_all(b"ca,asr\n0.98,0.99\n")
/// }).unwrap();
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), "ca,asr\n0.98,0.99\n");
/// ```
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", path, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("rename into place", path, e)
    })?;
    // Persist the rename itself; not all platforms allow syncing a directory, so ignore failure.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    remove_stale_temps(path);
    Ok(())
}

/// Remove temporary files of `path` left by writers that were killed mid-write (their
/// process no longer exists), so an interrupted run leaves no debris once it resumes.
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() || !Path::new("/proc/self").exists();
        if !alive {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Atomically write a byte buffer.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// The temporary name used while `path` is being written: hidden, unique per process.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Read a whole file, naming the path in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io("read", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.csv");
        write_bytes_atomic(&path, b"old").unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("killed"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file was not cleaned up");
    }
}

/// An exclusive advisory lock on a file (`flock`), held until dropped. The kernel releases it
/// when the holder exits, however it exits, so a killed process leaves no stale lock.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Take the lock on `path` (created if missing), or `None` at once if another process
    /// holds it.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use transferlab::fsutil::FileLock;
    /// let path = dir.path().join("task.lock");
    /// let held = FileLock::try_acquire(&path).unwrap().expect("free");
    /// drop(held);
    /// assert!(FileLock::try_acquire(&path).unwrap().is_some());
    /// ```
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        Self::lock(path, libc::LOCK_EX | libc::LOCK_NB)
    }

    /// Take the lock on `path`, waiting for another holder to release it.
    pub fn acquire(path: &Path) -> Result<FileLock> {
        Self::lock(path, libc::LOCK_EX)?.ok_or_else(|| Error::io("lock", path, std::io::Error::other("a blocking lock returned without the lock")))
    }

    fn lock(path: &Path, operation: libc::c_int) -> Result<Option<FileLock>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(|e| Error::io("open lock file", path, e))?;
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(Some(FileLock { _file: file }));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(Error::io("lock", path, e))
        }
    }
}
