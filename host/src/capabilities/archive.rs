//! The `archive` capability: the one `docker save` tarball the user named (`archive::Tarball`).

use wasmtime::component::Resource;

use super::shared::only_named;
use crate::archive::{self, Tarball};
use crate::bindings::ocipush::core::archive::{Host, HostTarball};
use crate::state::{timed, HostError, HostState};

impl From<archive::Error> for HostError {
    fn from(e: archive::Error) -> Self {
        HostError::message(e)
    }
}

impl Host for HostState {
    fn open(&mut self, path: String) -> Result<Resource<Tarball>, HostError> {
        only_named(
            self.sandbox.archive.as_deref(),
            &path,
            "open archive",
            "source",
        )?;
        Ok(self.table.push(Tarball::open(&path)?)?)
    }
}

impl HostTarball for HostState {
    fn size(&mut self, tarball: Resource<Tarball>) -> Result<u64, HostError> {
        Ok(self.table.get(&tarball)?.size()?)
    }

    fn read(
        &mut self,
        tarball: Resource<Tarball>,
        offset: u64,
        max: u32,
    ) -> Result<Vec<u8>, HostError> {
        let tarball = self.table.get(&tarball)?;
        Ok(timed(&mut self.waits.export, || tarball.read(offset, max))?)
    }

    fn absolute_path(&mut self, tarball: Resource<Tarball>) -> Result<String, HostError> {
        Ok(self.table.get(&tarball)?.absolute_path()?)
    }

    fn drop(&mut self, tarball: Resource<Tarball>) -> wasmtime::Result<()> {
        self.table.delete(tarball)?;
        Ok(())
    }
}
