//! The `cache` capability: the guest's key-value store in the cache directory (`cache`), when
//! there is one.

use crate::bindings::ocipush::core::cache::Host;
use crate::cache;
use crate::state::HostState;

impl Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self
            .cache_dir
            .as_deref()
            .and_then(|dir| cache::get(dir, &key)))
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        if let Some(dir) = &self.cache_dir {
            cache::put(dir, &key, &value);
        }
        Ok(())
    }
}
