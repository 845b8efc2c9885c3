//! One training process per run folder: an exclusive lock on `RUN/.lock` (the operating
//! system's file lock, released when the process ends, however it ends), so two `train`
//! commands on the same `--out` cannot interleave their checkpoints and configuration.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File name of the lock inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// The held lock of a run folder; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
    /// This process made the lock file (and the folder, when `made_folder`).
    created: bool,
    made_folder: bool,
}

impl RunLock {
    /// Lock `run` (made when missing) for this process. Another process holding it is an
    /// error naming the folder.
    pub fn acquire(run: &Path) -> Result<Self> {
        let made_folder = !run.exists();
        std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
        let path = run.join(LOCK_FILE);
        let created = !path.exists();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let lock = RunLock {
            _file: file,
            path,
            created,
            made_folder,
        };
        match lock._file.try_lock() {
            Ok(()) => Ok(lock),
            Err(TryLockError::WouldBlock) => {
                lock.release_unused();
                Err(Error::WouldOverwrite {
                    path: run.to_path_buf(),
                    reason: "another `train` is running in this run folder; wait for it to \
                             finish or choose another --out"
                        .into(),
                })
            }
            Err(TryLockError::Error(e)) => {
                let p = lock.path.clone();
                lock.release_unused();
                Err(Error::io(&p, e))
            }
        }
    }

    /// Release the lock of a start that was refused or failed before writing anything: the
    /// lock file goes when this process made it, and the folder when it made it and it is
    /// empty again.
    pub fn release_unused(self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
        if self.made_folder
            && let Some(dir) = self.path.parent()
        {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_a_refusal_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let first = RunLock::acquire(&run).unwrap();
        let e = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(e.contains("another `train`"), "{e}");
        assert!(run.join(LOCK_FILE).exists(), "the holder's lock file stays");
        drop(first);
        let again = RunLock::acquire(&run).unwrap();
        again.release_unused();
        // The lock file existed before this holder: it stays.
        assert!(run.join(LOCK_FILE).exists());
        let fresh = d.path().join("fresh");
        RunLock::acquire(&fresh).unwrap().release_unused();
        assert!(!fresh.exists());
    }
}
