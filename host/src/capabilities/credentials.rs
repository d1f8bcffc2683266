//! The `credentials` capability: the guest gets an opaque handle standing for the credentials
//! configured for a registry (`credentials::Configured`), never the secret, which the
//! `registry` capability looks up for the repository the guest opens.

use wasmtime::component::Resource;

use crate::bindings::ocipush::core::credentials::{Host, HostCredential};
use crate::credentials::Configured;
use crate::state::HostState;

impl Host for HostState {
    fn lookup(&mut self, registry: String) -> wasmtime::Result<Option<Resource<Configured>>> {
        Ok(if self.credentials.configured(&registry) {
            Some(self.table.push(Configured { registry })?)
        } else {
            tracing::debug!(registry, "no credentials configured");
            None
        })
    }
}

impl HostCredential for HostState {
    fn drop(&mut self, credential: Resource<Configured>) -> wasmtime::Result<()> {
        self.table.delete(credential)?;
        Ok(())
    }
}
