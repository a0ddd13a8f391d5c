//! The data directory lock: one node per directory.
//!
//! An exclusive `flock` on `<data-dir>/LOCK`, held for the life of the process. The kernel drops
//! it when the process exits however it exits, so a killed node never leaves a stale lock behind.
//! The holder's pid is written into the file so the refusal can name it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open lock file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("data directory {dir} is in use by another corekv node{holder}")]
    InUse { dir: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
}

/// Holds the lock until dropped.
pub struct DataDirLock {
    _file: Flock<File>,
}

impl DataDirLock {
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = dir.join("LOCK");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::InUse {
                    dir: dir.to_owned(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err((_, source)) => return Err(LockError::Lock { path, source }),
        };
        // Best effort: the pid only makes the message of a refused second node more helpful.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("corekv-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = DataDirLock::acquire(&dir).unwrap();
        let err = DataDirLock::acquire(&dir).err().expect("second lock refused");
        let text = err.to_string();
        assert!(text.contains("in use"), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        DataDirLock::acquire(&dir).expect("lock again after release");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
