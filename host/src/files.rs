//! Files the host writes whole or not at all, and reads by offset: one way to do each, shared by
//! the cache, the OCI layout destination and source, the archive source and `guest export`.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file operation that failed, and what it was doing: `{context}: {error}`.
#[derive(Debug)]
pub struct IoError {
    pub context: String,
    pub error: io::Error,
}

impl IoError {
    /// Wraps an `io::Error` with `context`, for `map_err`.
    pub fn at(context: impl fmt::Display) -> impl FnOnce(io::Error) -> Self {
        move |error| Self {
            context: context.to_string(),
            error,
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.error)
    }
}

impl std::error::Error for IoError {}

/// `path` made absolute against the working directory, symbolic links left as they are: where
/// provenance says a source file or directory is. Fails only without a working directory, or
/// for a path that is not UTF-8 once made absolute.
pub fn absolute(path: &Path) -> Result<String, IoError> {
    let context = || format!("the absolute path of {}", path.display());
    let absolute = std::path::absolute(path).map_err(IoError::at(context()))?;
    absolute
        .into_os_string()
        .into_string()
        .map_err(|_| IoError {
            context: context(),
            error: io::Error::new(io::ErrorKind::InvalidData, "it is not UTF-8"),
        })
}

/// A temporary file name in `dir`, unique to this process and call: concurrent pushes (other
/// processes) and concurrent calls (other threads) never share one. Hidden, and ending in
/// `.tmp`, so that a reader of the directory can tell it from an entry.
pub fn temp_path(dir: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        ".ocipush-tmp-{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `path` whole or not at all: a synced temporary file in the same directory (created if
/// missing), renamed over it. A reader sees the whole old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temp = temp_path(dir);
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Up to `max` bytes of `file` from `offset`: fewer only at its end, none past it.
pub fn read_at(file: &File, offset: u64, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_are_made_against_the_working_directory_without_resolving_links() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            absolute(Path::new("a b/../c.tar")).unwrap(),
            format!("{}/a b/../c.tar", cwd.display())
        );
        assert_eq!(absolute(Path::new("/x/./y")).unwrap(), "/x/y");
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["file"]);
    }

    #[test]
    fn reads_by_offset_are_short_only_at_the_end() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"abcdef").unwrap();
        assert_eq!(read_at(&file, 1, 3).unwrap(), b"bcd");
        assert_eq!(read_at(&file, 4, 10).unwrap(), b"ef");
        assert!(read_at(&file, 9, 10).unwrap().is_empty());
    }
}
