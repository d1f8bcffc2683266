//! The `registry` capability: repositories on the registries the guest opens
//! (`registry::Repository`), and layers uploaded to them (`registry::LayerUpload`). Credentials
//! go only to the registry they were looked up for.

use wasmtime::component::Resource;

use super::shared::{codec, descriptor};
use crate::bindings::ocipush::core::registry::{
    BlobDescriptor, Compression, Host, HostLayerUpload, HostRepository, ReferrerWritten,
    UploadError, UploadProgress,
};
use crate::credentials::Configured;
use crate::registry::retry::Policy;
use crate::registry::{self, LayerUpload, Repository};
use crate::state::{timed, HostError, HostState, UploadFailure};

impl From<registry::Error> for HostError {
    fn from(e: registry::Error) -> Self {
        match e {
            registry::Error::Interrupted(interrupted) => interrupted.into(),
            e => HostError::message(e),
        }
    }
}

impl From<registry::Error> for UploadFailure {
    fn from(e: registry::Error) -> Self {
        match e {
            registry::Error::Lost { .. } => UploadFailure::Lost(e.to_string()),
            e => UploadFailure::Failed(e.into()),
        }
    }
}

impl Host for HostState {
    /// A lost upload is told apart from every other failure, which goes as any host call's.
    fn convert_upload_error(&mut self, error: UploadFailure) -> wasmtime::Result<UploadError> {
        match error {
            UploadFailure::Lost(message) => Ok(UploadError::Lost(message)),
            UploadFailure::Failed(HostError::Message(message)) => Ok(UploadError::Failed(message)),
            UploadFailure::Failed(HostError::Trap(trap)) => Err(trap),
        }
    }

    fn open(
        &mut self,
        registry: String,
        name: String,
        credential: Option<Resource<Configured>>,
    ) -> Result<Resource<Repository>, HostError> {
        let credential = match credential {
            // A credential is only ever used for the registry it was looked up for.
            Some(handle) if self.table.get(&handle)?.registry == registry => {
                self.credentials.lookup(&registry, &name)
            }
            _ => None,
        };
        let scheme = self.tls.scheme_for(&registry, &name);
        let http = self
            .tls
            .client_for(&registry, scheme)
            .map_err(HostError::message)?;
        let policy = Policy {
            retries: self.transfer.retries,
            notices: self.progress.notices(),
        };
        let opened = Repository::open(http, registry, name, credential, scheme, policy);
        let repository = self.rt.block_on(opened)??;
        Ok(self.table.push(repository)?)
    }
}

impl HostRepository for HostState {
    fn blob_size(
        &mut self,
        repository: Resource<Repository>,
        digest: String,
    ) -> Result<Option<u64>, HostError> {
        let repository = self.table.get(&repository)?;
        Ok(self.rt.block_on(repository.blob_size(&digest))??)
    }

    fn mount_blob(
        &mut self,
        repository: Resource<Repository>,
        digest: String,
        source: String,
    ) -> Result<bool, HostError> {
        let repository = self.table.get(&repository)?;
        Ok(self
            .rt
            .block_on(repository.mount_blob(&digest, &source))??)
    }

    fn put_blob(
        &mut self,
        repository: Resource<Repository>,
        digest: String,
        data: Vec<u8>,
    ) -> Result<(), HostError> {
        let repository = self.table.get(&repository)?;
        Ok(repository.put_blob(&self.rt, &digest, data)?)
    }

    fn start_layer(
        &mut self,
        repository: Resource<Repository>,
        compression: Compression,
        level: u32,
    ) -> Result<Resource<LayerUpload>, HostError> {
        let repository = self.table.get(&repository)?;
        let upload = LayerUpload::start(
            &self.rt,
            repository,
            codec(compression, level),
            self.transfer.chunk_size,
        )?;
        Ok(self.table.push(upload)?)
    }

    fn put_manifest(
        &mut self,
        repository: Resource<Repository>,
        reference: String,
        media_type: String,
        body: Vec<u8>,
    ) -> Result<String, HostError> {
        let repository = self.table.get(&repository)?;
        let written = repository.put_manifest(&reference, &media_type, &body);
        Ok(self.rt.block_on(written)??)
    }

    fn get_manifest(
        &mut self,
        repository: Resource<Repository>,
        reference: String,
    ) -> Result<Option<Vec<u8>>, HostError> {
        let repository = self.table.get(&repository)?;
        Ok(self.rt.block_on(repository.get_manifest(&reference))??)
    }

    fn put_referrer(
        &mut self,
        repository: Resource<Repository>,
        media_type: String,
        body: Vec<u8>,
    ) -> Result<ReferrerWritten, HostError> {
        let repository = self.table.get(&repository)?;
        let stored = self
            .rt
            .block_on(repository.put_referrer(&media_type, &body))??;
        Ok(ReferrerWritten {
            digest: stored.digest,
            subject: stored.subject,
        })
    }

    fn drop(&mut self, repository: Resource<Repository>) -> wasmtime::Result<()> {
        self.table.delete(repository)?;
        Ok(())
    }
}

impl HostLayerUpload for HostState {
    fn write(&mut self, upload: Resource<LayerUpload>, data: Vec<u8>) -> Result<(), UploadFailure> {
        let upload = self.table.get_mut(&upload)?;
        Ok(timed(&mut self.waits.upload, || upload.write(data))?)
    }

    fn progress(&mut self, upload: Resource<LayerUpload>) -> wasmtime::Result<UploadProgress> {
        let (written, sent) = self.table.get(&upload)?.counts();
        Ok(UploadProgress { written, sent })
    }

    fn close(
        &mut self,
        upload: Resource<LayerUpload>,
        written: String,
    ) -> Result<BlobDescriptor, UploadFailure> {
        let upload = self.table.get_mut(&upload)?;
        let encoded = timed(&mut self.waits.finish, || upload.close(Some(&written)))?;
        Ok(descriptor(encoded, &mut self.encodings))
    }

    fn finish(&mut self, upload: Resource<LayerUpload>) -> Result<BlobDescriptor, UploadFailure> {
        let upload = self.table.get_mut(&upload)?;
        let encoded = timed(&mut self.waits.finish, || upload.finish())?;
        Ok(descriptor(encoded, &mut self.encodings))
    }

    fn drop(&mut self, upload: Resource<LayerUpload>) -> wasmtime::Result<()> {
        self.table.delete(upload)?;
        Ok(())
    }
}
