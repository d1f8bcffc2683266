//! Runs the guest component: one engine and one store per push, the capabilities of
//! `wit/ocipush.wit` linked in, and WASI with nothing granted (a std guest imports it even
//! though it uses none of it: no files, environment, network or stdio).

use anyhow::{Context, Result};
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

/// Pushes `source` from the daemon to `destination` through the guest.
pub fn push(rt: Handle, progress: Progress, source: &str, destination: &str) -> Result<PushResult> {
    let engine = Engine::new(&Config::new())?;
    let component = Component::new(&engine, GUEST_WASM)
        .map_err(anyhow::Error::from)
        .context("compiling the guest component")?;
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
    };
    let mut store = Store::new(&engine, state);
    let pusher = Pusher::instantiate(&mut store, &component, &linker)
        .map_err(anyhow::Error::from)
        .context("instantiating the guest")?;
    let request = PushRequest {
        source: source.to_string(),
        destination: destination.to_string(),
    };
    let result = pusher
        .call_push(&mut store, &request)
        .map_err(anyhow::Error::from)
        .context("the guest trapped")?;
    result.map_err(anyhow::Error::msg)
}
