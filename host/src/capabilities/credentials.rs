//! The `credentials` capability: the guest gets an opaque handle to what `credentials::lookup`
//! found, never the secret.

use wasmtime::component::Resource;

use crate::bindings::ocipush::core::credentials::{Host, HostCredential};
use crate::credentials::{lookup, Credential};
use crate::state::HostState;

impl Host for HostState {
    fn lookup(&mut self, registry: String) -> wasmtime::Result<Option<Resource<Credential>>> {
        Ok(match lookup(&registry, self.cli_credential.as_ref()) {
            Some(credential) => Some(self.table.push(credential)?),
            None => None,
        })
    }
}

impl HostCredential for HostState {
    fn drop(&mut self, credential: Resource<Credential>) -> wasmtime::Result<()> {
        self.table.delete(credential)?;
        Ok(())
    }
}
