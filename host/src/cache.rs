//! The `cache` capability: a small key-value store on disk that concurrent pushes share.
//! Each value is one file named by the sha256 of its key, replaced atomically (written to a
//! unique temporary file, then renamed), so a reader sees a whole old value or a whole new one.
//! What the values mean is the guest's business; it checks what it reads.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::guest::ocipush::core::cache::Host;
use crate::guest::HostState;

/// Values are small records; anything larger is not one of ours.
const VALUE_LIMIT: u64 = 1 << 20;

/// The cache directory: `OCIPUSH_CACHE_DIR`, else the user's cache directory.
pub fn dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("OCIPUSH_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("ocipush"))
}

/// Writes `bytes` to `path` atomically: a unique temporary file in the same directory, renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let unique = format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let tmp = dir.join(unique);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// An exclusive lock named `name` in the cache directory's `locks/` (the file stays; the lock
/// goes with the process, however it ends), for work that concurrent processes should do once.
/// `None` if it cannot be taken: the caller then works unlocked, which costs time, not
/// correctness.
pub fn lock(dir: &Path, name: &str) -> Option<std::fs::File> {
    let locks = dir.join("locks");
    std::fs::create_dir_all(&locks).ok()?;
    let file = std::fs::File::create(locks.join(format!("{name}.lock"))).ok()?;
    file.lock().ok()?;
    Some(file)
}

fn entry_path(dir: &Path, key: &str) -> PathBuf {
    dir.join("kv")
        .join(hex::encode(Sha256::digest(key.as_bytes())))
}

fn get(dir: &Path, key: &str) -> Option<Vec<u8>> {
    let file = std::fs::File::open(entry_path(dir, key)).ok()?;
    let mut value = Vec::new();
    file.take(VALUE_LIMIT + 1).read_to_end(&mut value).ok()?;
    (value.len() as u64 <= VALUE_LIMIT).then_some(value)
}

impl Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.cache_dir.as_deref().and_then(|dir| get(dir, &key)))
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        if let Some(dir) = &self.cache_dir {
            if value.len() as u64 <= VALUE_LIMIT {
                if let Err(e) = write_atomic(&entry_path(dir, &key), &value) {
                    tracing::debug!(key, error = %e, "cache entry not written");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(get(dir.path(), "k"), None);
        write_atomic(&entry_path(dir.path(), "k"), b"one").unwrap();
        write_atomic(&entry_path(dir.path(), "k"), b"two").unwrap();
        assert_eq!(get(dir.path(), "k").as_deref(), Some(&b"two"[..]));
        assert_eq!(get(dir.path(), "other"), None);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("kv")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn a_lock_is_held_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path(), "guest").unwrap();
        let other = std::fs::File::open(dir.path().join("locks/guest.lock")).unwrap();
        assert!(other.try_lock().is_err(), "a second holder must wait");
        drop(held);
        assert!(other.try_lock().is_ok());
    }

    #[test]
    fn oversized_values_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(
            &entry_path(dir.path(), "big"),
            &vec![0u8; VALUE_LIMIT as usize + 1],
        )
        .unwrap();
        assert_eq!(get(dir.path(), "big"), None);
    }
}
