//! The `clock` capability: the host's wall clock, for the times provenance states.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bindings::ocipush::core::clock::{Host, Instant};
use crate::state::HostState;

impl Host for HostState {
    fn now(&mut self) -> wasmtime::Result<Instant> {
        // A clock set before 1970 reads as 1970: provenance times are informative.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Instant {
            seconds: since.as_secs(),
            nanoseconds: since.subsec_nanos(),
        })
    }
}
