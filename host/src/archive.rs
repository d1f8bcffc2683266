//! A `docker save` tarball on disk (the `archive` capability), the source
//! `docker-archive:PATH[:REF]`: random-access reads of exactly the file the user named. The guest
//! indexes it and reads what it needs; nothing else of the disk is reachable.

use std::fs::File;
use std::os::unix::fs::FileExt;

use wasmtime::component::Resource;

use crate::guest::ocipush::core::archive::{Host, HostTarball};
use crate::guest::HostState;

/// The most bytes one read returns: one guest crossing's worth.
const READ_LIMIT: u32 = 16 << 20;

/// One tarball, open for reading.
pub struct Tarball {
    file: File,
    /// The path, for messages.
    path: String,
}

impl Tarball {
    fn open(path: &str) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("cannot open archive {path}: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot open archive {path}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("archive {path} is not a file"));
        }
        Ok(Self {
            file,
            path: path.to_string(),
        })
    }

    fn size(&self) -> Result<u64, String> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| format!("archive {}: {e}", self.path))
    }

    /// Up to `max` bytes at `offset`; short only at the end of the file.
    fn read(&self, offset: u64, max: u32) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; max.min(READ_LIMIT) as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading archive {}: {e}", self.path)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }
}

impl Host for HostState {
    fn open(&mut self, path: String) -> wasmtime::Result<Result<Resource<Tarball>, String>> {
        // The guest may read only the file the user named as the source.
        if self.archive.as_deref() != Some(path.as_str()) {
            return Ok(Err(format!(
                "refusing to open archive {path:?}: it is not the source this push was given"
            )));
        }
        Ok(match Tarball::open(&path) {
            Ok(tarball) => Ok(self.table.push(tarball)?),
            Err(e) => Err(e),
        })
    }
}

impl HostTarball for HostState {
    fn size(&mut self, tarball: Resource<Tarball>) -> wasmtime::Result<Result<u64, String>> {
        Ok(self.table.get(&tarball)?.size())
    }

    fn read(
        &mut self,
        tarball: Resource<Tarball>,
        offset: u64,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let tarball = self.table.get(&tarball)?;
        Ok(crate::guest::timed(&mut self.waits.export, || {
            tarball.read(offset, max)
        }))
    }

    fn drop(&mut self, tarball: Resource<Tarball>) -> wasmtime::Result<()> {
        self.table.delete(tarball)?;
        Ok(())
    }
}
