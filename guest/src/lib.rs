//! ocipush's policy core. It reads a `docker save` stream, verifies every layer against the
//! image config, builds the manifest and decides the upload order; the host only lends it
//! capabilities (see `wit/ocipush.wit`). Everything but `component` is plain Rust, tested
//! natively against in-memory capabilities.
//!
//! Imports go one way. `model` (the image) and `ports` (the capabilities, as traits) are what
//! the rest speaks. The sources (`archive`, `layout`, and `save`, the export reader they and the
//! daemon's export go through) and the pipeline's stages (`push`) each depend on those, never
//! on each other; `component` ties them to the host.

pub mod archive;
pub mod build;
pub mod cache;
pub mod config;
pub mod digest;
pub mod evidence;
pub mod layout;
pub mod limits;
pub mod manifest;
pub mod model;
pub mod own;
pub mod platforms;
pub mod ports;
pub mod progress;
pub mod push;
pub mod reference;
pub mod save;
pub mod savefile;

#[cfg(target_arch = "wasm32")]
mod component;

#[cfg(test)]
mod testing;
