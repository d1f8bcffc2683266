//! The `types` interface: nothing to lend but the conversion every capability's failures go
//! through, from `HostError` to the guest's one-line `error-message` (or a trap).

use crate::bindings::ocipush::core::types::Host;
use crate::state::{HostError, HostState};

impl Host for HostState {
    fn convert_error_message(&mut self, error: HostError) -> wasmtime::Result<String> {
        match error {
            HostError::Message(message) => Ok(message),
            HostError::Trap(trap) => Err(trap),
        }
    }
}
