//! The host's cache directory: the guest's small key-value store on disk (the `cache`
//! capability), which concurrent pushes share, and the compiled guest (`runner`).
//! Each value is one file named by the sha256 of its key, replaced atomically (written to a
//! unique temporary file, then renamed), so a reader sees a whole old value or a whole new one.
//! What the values mean is the guest's business; it checks what it reads.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::files::write_atomic;

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

/// The value stored under `key`, if there is one and it could be read.
pub fn get(dir: &Path, key: &str) -> Option<Vec<u8>> {
    let file = std::fs::File::open(entry_path(dir, key)).ok()?;
    let mut value = Vec::new();
    file.take(VALUE_LIMIT + 1).read_to_end(&mut value).ok()?;
    (value.len() as u64 <= VALUE_LIMIT).then_some(value)
}

/// Stores `value` under `key`, atomically replacing an earlier value; a value over the limit is
/// not stored. Never fails: a cache that cannot be written only costs time.
pub fn put(dir: &Path, key: &str, value: &[u8]) {
    if value.len() as u64 > VALUE_LIMIT {
        return;
    }
    if let Err(e) = write_atomic(&entry_path(dir, key), value) {
        tracing::debug!(key, error = %e, "cache entry not written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(get(dir.path(), "k"), None);
        put(dir.path(), "k", b"one");
        put(dir.path(), "k", b"two");
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
    fn oversized_values_are_neither_stored_nor_read() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(
            &entry_path(dir.path(), "big"),
            &vec![0u8; VALUE_LIMIT as usize + 1],
        )
        .unwrap();
        assert_eq!(get(dir.path(), "big"), None);
        put(dir.path(), "big2", &vec![0u8; VALUE_LIMIT as usize + 1]);
        assert!(!entry_path(dir.path(), "big2").exists());
    }
}
