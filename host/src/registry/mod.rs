//! An OCI distribution registry as a blob sink: the client the `registry` capability
//! (`capabilities::registry`) lends the guest one repository at a time.
//!
//! - `client`: where a registry is, and the one retry loop every retried request goes through;
//! - `retry`: the retry decision and backoff;
//! - `auth`: Basic and bearer-token authorization, shared by a repository and its uploads;
//! - `repository`: opening a repository, blobs and manifests, and the call order;
//! - `upload`: a layer streamed in chunks while the guest still reads it;
//! - `spool`: what of such a layer the registry has not acknowledged yet, on bounded disk;
//! - `error`: typed failures, `RegistryError` for a registry's own refusals.

pub mod auth;
pub mod client;
pub mod error;
pub mod repository;
pub mod retry;
pub mod spool;
pub mod upload;

pub use error::{Error, RegistryError};
pub use repository::Repository;
pub use upload::{LayerUpload, DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE};

/// How uploads behave: `--retries` and `--chunk-size`.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// How many times a failed request is tried again.
    pub retries: u32,
    /// The largest chunk of a layer sent in one request.
    pub chunk_size: u64,
}
