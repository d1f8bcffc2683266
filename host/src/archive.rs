//! A `docker save` tarball on disk, the source `docker-archive:PATH[:REF]`: random-access reads
//! of exactly the file the user named (the `archive` capability opens only that one). The guest
//! indexes it and reads what it needs; nothing else of the disk is reachable.

use std::fmt;
use std::fs::File;

use crate::files::{read_at, IoError};

/// The most bytes one read returns: one guest crossing's worth.
const READ_LIMIT: u32 = 16 << 20;

/// One tarball, open for reading.
pub struct Tarball {
    file: File,
    /// The path, for messages.
    path: String,
}

/// Why a tarball could not be opened or read.
#[derive(Debug)]
pub enum Error {
    Io(IoError),
    NotAFile(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => e.fmt(f),
            Self::NotAFile(path) => write!(f, "archive {path} is not a file"),
        }
    }
}

impl From<IoError> for Error {
    fn from(e: IoError) -> Self {
        Self::Io(e)
    }
}

impl Tarball {
    pub fn open(path: &str) -> Result<Self, Error> {
        let opening = || IoError::at(format!("cannot open archive {path}"));
        let file = File::open(path).map_err(opening())?;
        if !file.metadata().map_err(opening())?.is_file() {
            return Err(Error::NotAFile(path.to_string()));
        }
        Ok(Self {
            file,
            path: path.to_string(),
        })
    }

    pub fn size(&self) -> Result<u64, Error> {
        let meta = self
            .file
            .metadata()
            .map_err(IoError::at(format!("archive {}", self.path)))?;
        Ok(meta.len())
    }

    /// The file's absolute path (symbolic links left as they are), for provenance.
    pub fn absolute_path(&self) -> Result<String, Error> {
        Ok(crate::files::absolute(std::path::Path::new(&self.path))?)
    }

    /// Up to `max` bytes at `offset`; short only at the end of the file.
    pub fn read(&self, offset: u64, max: u32) -> Result<Vec<u8>, Error> {
        let bytes = read_at(&self.file, offset, max.min(READ_LIMIT) as usize)
            .map_err(IoError::at(format!("reading archive {}", self.path)))?;
        Ok(bytes)
    }
}
