//! ocipush's policy core. It reads a `docker save` stream, verifies every layer against the
//! image config, builds the manifest and decides the upload order; the host only lends it
//! capabilities (see `wit/ocipush.wit`). Everything but `component` is plain Rust, tested
//! natively against in-memory capabilities.

pub mod archive;
pub mod build;
pub mod cache;
pub mod config;
pub mod digest;
pub mod layout;
pub mod limits;
pub mod manifest;
pub mod progress;
pub mod push;
pub mod reference;
pub mod save;

#[cfg(target_arch = "wasm32")]
mod component;

#[cfg(test)]
mod testing;
