//! The host's parsers of untrusted text: a registry's `WWW-Authenticate` challenge, a Docker
//! `config.json` or podman `auth.json`, the Docker CLI's context store, podman's and buildah's
//! inspect answers, and the digests a manifest names. Pure functions in a
//! crate of their own, with no network or wasmtime, so the fuzz targets (`fuzz/`) can build
//! them with sanitizers cheaply. Everything the guest parses lives in the guest crate.

mod challenge;
mod docker_config;
mod docker_context;
mod manifest;
mod storage_image;

pub use challenge::parse_challenge;
pub use docker_config::{mentions_registry, parse_docker_config, ConfigSource};
pub use docker_context::{context_endpoint, current_context, ContextEndpoint, MetaError};
pub use manifest::referenced_digests;
pub use storage_image::{buildah_inspect, podman_inspect, StorageImage};
