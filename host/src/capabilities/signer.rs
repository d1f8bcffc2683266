//! The `signer` capability: the guest gets an opaque handle standing for the `--sign-key` the
//! host loaded, and hands it payloads to sign; the key never crosses into the guest.

use std::sync::Arc;

use wasmtime::component::Resource;

use crate::bindings::ocipush::core::signer::{Host, HostSigningKey};
use crate::signing::Key;
use crate::state::{HostError, HostState};

/// What a `signing-key` handle stands for.
pub struct Handle(Arc<Key>);

impl Host for HostState {
    fn key(&mut self) -> wasmtime::Result<Option<Resource<Handle>>> {
        Ok(match &self.signing_key {
            Some(key) => Some(self.table.push(Handle(key.clone()))?),
            None => None,
        })
    }
}

impl HostSigningKey for HostState {
    fn sign(&mut self, key: Resource<Handle>, payload: Vec<u8>) -> Result<Vec<u8>, HostError> {
        let key = self.table.get(&key)?;
        tracing::debug!(bytes = payload.len(), "signing for the guest");
        Ok(key.0.sign(&payload))
    }

    fn drop(&mut self, key: Resource<Handle>) -> wasmtime::Result<()> {
        self.table.delete(key)?;
        Ok(())
    }
}
