//! [`DirLock`]: one process at a time in a directory.
//!
//! Two servers on one data directory would each replay, trim and rotate the same
//! write-ahead log and lose what the other acknowledged. The lock is an advisory
//! exclusive `flock` on a `LOCK` file inside the directory, held by an open file for as
//! long as the [`DirLock`] lives; the kernel releases it when the process dies, so a
//! crash never leaves a stale lock behind. The file holds the owner's pid, for the
//! error message of the next one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An exclusive lock on a directory, released when dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist), or fails at once with
    /// [`Error::Locked`] naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(path.display().to_string(), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut owner = String::new();
                let _ = file.read_to_string(&mut owner);
                let owner = owner.trim();
                return Err(Error::Locked {
                    path: dir.display().to_string(),
                    owner: if owner.is_empty() {
                        "another process".to_string()
                    } else {
                        format!("process {owner}")
                    },
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(path.display().to_string(), e));
            }
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io(path.display().to_string(), e))?;
        Ok(DirLock { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let e = DirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        let pid = std::process::id().to_string();
        assert!(e.to_string().contains(&pid), "{e}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
