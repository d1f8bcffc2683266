//! Runs the guest component: one engine and one store per push, the capabilities of
//! `wit/ocipush.wit` linked in, and WASI with nothing granted (a std guest imports it even
//! though it uses none of it: no files, environment, network or stdio).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use tokio::runtime::Handle;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::daemon::Daemon;
use crate::progress::Progress;

wasmtime::component::bindgen!({
    world: "pusher",
    path: "../wit",
    imports: { default: trappable },
    with: {
        "ocipush:core/docker.export-stream": crate::daemon::ExportStream,
        "ocipush:core/credentials.credential": crate::credentials::Credential,
        "ocipush:core/registry.repository": crate::registry::Repository,
        "ocipush:core/registry.layer-upload": crate::upload::LayerUpload,
    },
});

/// The guest component, built from `guest/` by build.rs.
pub static GUEST_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ocipush_guest.wasm"));

/// Everything the guest's imports reach: the store's data.
pub struct HostState {
    /// Host calls block on async I/O here; the guest runs on a thread outside the runtime.
    pub rt: Handle,
    /// Resources handed to the guest as opaque handles.
    pub table: ResourceTable,
    wasi: WasiCtx,
    pub daemon: Daemon,
    pub http: reqwest::Client,
    pub progress: Progress,
    /// Where the `cache` capability keeps its entries; `None` when no directory is known.
    pub cache_dir: Option<PathBuf>,
    /// How long the guest's calls blocked, by kind: where a push spends its time.
    pub waits: Waits,
}

/// Time the guest spent blocked in host calls, logged at debug level after a push.
#[derive(Debug, Default)]
pub struct Waits {
    /// Waiting for the daemon's export.
    pub export: std::time::Duration,
    /// Waiting for a layer's encoder to take more bytes.
    pub upload: std::time::Duration,
    /// Waiting for a layer's last bytes to be sent and committed.
    pub finish: std::time::Duration,
}

/// Runs `f`, adding the time it took to `slot`.
pub fn timed<T>(slot: &mut std::time::Duration, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let result = f();
    *slot += start.elapsed();
    result
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ocipush::core::types::Host for HostState {}

/// What to push, where, and how to encode its layers.
pub struct Job<'a> {
    pub source: &'a str,
    pub destination: &'a str,
    pub compression: ocipush::core::registry::Compression,
    pub level: u32,
}

/// Pushes `job.source` from the daemon to `job.destination` through the guest.
pub fn push(rt: Handle, progress: Progress, job: &Job<'_>) -> Result<PushResult> {
    let engine = Engine::new(&Config::new())?;
    let cache_dir = crate::cache::dir();
    let component = load_component(&engine, cache_dir.as_deref())?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Pusher::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;

    let http = reqwest::Client::builder()
        .user_agent(concat!("ocipush/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("setting up the HTTP client")?;
    let state = HostState {
        rt,
        table: ResourceTable::new(),
        wasi: WasiCtx::builder().build(),
        daemon: Daemon::from_env(),
        http,
        progress,
        cache_dir,
        waits: Waits::default(),
    };
    let mut store = Store::new(&engine, state);
    let pusher = Pusher::instantiate(&mut store, &component, &linker)
        .map_err(anyhow::Error::from)
        .context("instantiating the guest")?;
    let request = PushRequest {
        source: job.source.to_string(),
        destination: job.destination.to_string(),
        compression: job.compression,
        level: job.level,
    };
    let started = std::time::Instant::now();
    let result = pusher
        .call_push(&mut store, &request)
        .map_err(anyhow::Error::from)
        .context("the guest trapped")?;
    tracing::debug!(elapsed = ?started.elapsed(), waits = ?store.data().waits, "push finished");
    result.map_err(anyhow::Error::msg)
}

/// The guest compiled for this engine: from the cache when this very guest was compiled by a
/// compatible engine before (compiling is most of a small push's time), else compiled now and
/// cached. Each cached file starts with the sha256 of the rest, checked before it is loaded.
fn load_component(engine: &Engine, cache_dir: Option<&Path>) -> Result<Component> {
    let compiled = |bytes: &[u8]| -> Result<Component> {
        // Safety: the bytes come from `precompile_component` of an engine with the same
        // compatibility hash (it is in the file name), and their checksum matched.
        unsafe { Component::deserialize(engine, bytes) }.map_err(anyhow::Error::from)
    };
    let path = cache_dir.map(|dir| {
        let mut compatibility = std::collections::hash_map::DefaultHasher::new();
        engine
            .precompile_compatibility_hash()
            .hash(&mut compatibility);
        let guest = hex::encode(Sha256::digest(GUEST_WASM));
        dir.join("guest").join(format!(
            "{}-{:016x}.cwasm",
            &guest[..32],
            compatibility.finish()
        ))
    });
    if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        if bytes.len() > 32 && bytes[..32] == Sha256::digest(&bytes[32..])[..] {
            if let Ok(component) = compiled(&bytes[32..]) {
                return Ok(component);
            }
        }
        tracing::debug!(path = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(), "ignoring a damaged compiled guest");
    }
    let bytes = engine
        .precompile_component(GUEST_WASM)
        .map_err(anyhow::Error::from)
        .context("compiling the guest component")?;
    if let Some(path) = &path {
        let mut file = Sha256::digest(&bytes).to_vec();
        file.extend_from_slice(&bytes);
        if let Err(e) = crate::cache::write_atomic(path, &file) {
            tracing::debug!(path = %path.display(), error = %e, "compiled guest not cached");
        }
    }
    compiled(&bytes)
}
