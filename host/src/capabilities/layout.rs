//! The `layout` capability: the OCI layout directories the user named, as the destination
//! (`layout::Directory`, `layout::LayerFile`) and as the source (`layout::Reader`).

use std::path::Path;

use wasmtime::component::Resource;

use super::shared::{codec, descriptor, only_named};
use crate::bindings::ocipush::core::layout::{
    BlobDescriptor, Compression, Host, HostDirectory, HostLayerFile, HostReader, UploadProgress,
};
use crate::layout::{self, Directory, LayerFile, Reader};
use crate::state::{timed, HostError, HostState};

impl From<layout::Error> for HostError {
    fn from(e: layout::Error) -> Self {
        HostError::message(e)
    }
}

impl Host for HostState {
    fn open_reader(&mut self, path: String) -> Result<Resource<Reader>, HostError> {
        let source = self.sandbox.layout_source.as_deref();
        only_named(source, &path, "read OCI layout", "source")?;
        Ok(self.table.push(Reader::open(Path::new(&path))?)?)
    }

    fn open(&mut self, path: String) -> Result<Resource<Directory>, HostError> {
        let destinations = self.sandbox.layouts.iter().map(String::as_str);
        only_named(destinations, &path, "open OCI layout", "destination")?;
        Ok(self.table.push(Directory::open(Path::new(&path))?)?)
    }
}

impl HostReader for HostState {
    fn index(&mut self, reader: Resource<Reader>) -> Result<Vec<u8>, HostError> {
        Ok(self.table.get(&reader)?.index()?)
    }

    fn read_blob(
        &mut self,
        reader: Resource<Reader>,
        digest: String,
        offset: u64,
        max: u32,
    ) -> Result<Vec<u8>, HostError> {
        let reader = self.table.get(&reader)?;
        Ok(timed(&mut self.waits.export, || {
            reader.read_blob(&digest, offset, max)
        })?)
    }

    fn absolute_path(&mut self, reader: Resource<Reader>) -> Result<String, HostError> {
        Ok(self.table.get(&reader)?.absolute_path()?)
    }

    fn drop(&mut self, reader: Resource<Reader>) -> wasmtime::Result<()> {
        self.table.delete(reader)?;
        Ok(())
    }
}

impl HostDirectory for HostState {
    fn blob_size(
        &mut self,
        directory: Resource<Directory>,
        digest: String,
    ) -> Result<Option<u64>, HostError> {
        Ok(self.table.get_mut(&directory)?.blob_size(&digest)?)
    }

    fn put_blob(
        &mut self,
        directory: Resource<Directory>,
        digest: String,
        data: Vec<u8>,
    ) -> Result<(), HostError> {
        Ok(self.table.get_mut(&directory)?.put_blob(&digest, &data)?)
    }

    fn start_layer(
        &mut self,
        directory: Resource<Directory>,
        compression: Compression,
        level: u32,
    ) -> Result<Resource<LayerFile>, HostError> {
        let directory = self.table.get(&directory)?;
        let file = LayerFile::start(directory, codec(compression, level))?;
        Ok(self.table.push(file)?)
    }

    fn put_manifest(
        &mut self,
        directory: Resource<Directory>,
        tag: String,
        media_type: String,
        body: Vec<u8>,
    ) -> Result<String, HostError> {
        let directory = self.table.get_mut(&directory)?;
        Ok(directory.put_manifest(&tag, &media_type, &body)?)
    }

    fn get_manifest(
        &mut self,
        directory: Resource<Directory>,
        reference: String,
    ) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.table.get_mut(&directory)?.get_manifest(&reference)?)
    }

    fn drop(&mut self, directory: Resource<Directory>) -> wasmtime::Result<()> {
        self.table.delete(directory)?;
        Ok(())
    }
}

impl HostLayerFile for HostState {
    fn write(&mut self, file: Resource<LayerFile>, data: Vec<u8>) -> Result<(), HostError> {
        let file = self.table.get_mut(&file)?;
        Ok(timed(&mut self.waits.upload, || file.write(data))?)
    }

    fn progress(&mut self, file: Resource<LayerFile>) -> wasmtime::Result<UploadProgress> {
        let (written, sent) = self.table.get(&file)?.counts();
        Ok(UploadProgress { written, sent })
    }

    fn close(&mut self, file: Resource<LayerFile>) -> Result<BlobDescriptor, HostError> {
        let file = self.table.get_mut(&file)?;
        let encoded = timed(&mut self.waits.finish, || file.close())?;
        Ok(descriptor(encoded, &mut self.encodings))
    }

    fn finish(&mut self, file: Resource<LayerFile>) -> Result<BlobDescriptor, HostError> {
        let file = self.table.get_mut(&file)?;
        let encoded = timed(&mut self.waits.finish, || file.finish())?;
        Ok(descriptor(encoded, &mut self.encodings))
    }

    fn drop(&mut self, file: Resource<LayerFile>) -> wasmtime::Result<()> {
        self.table.delete(file)?;
        Ok(())
    }
}
