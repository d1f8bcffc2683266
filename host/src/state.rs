//! What every capability shares: `HostState`, the store's data that the guest's imports reach,
//! the sandbox of files the user named, the time the guest spent waiting on the host, the
//! guest's memory limit, and `HostError`, how a host call fails.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{ResourceTable, ResourceTableError};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::credentials;
use crate::daemon::storage::Storage;
use crate::daemon::Daemon;
use crate::encode::Encoding;
use crate::interrupt::{Interrupted, Runtime};
use crate::progress::Progress;
use crate::registry::Transfer;
use crate::signing;
use crate::tls::TlsOptions;

/// The most linear memory a guest may have. A push needs a few MiB of buffers and its
/// metadata (capped at 64 MiB by the guest itself).
pub const MEMORY_LIMIT: usize = 256 << 20;

/// Everything the guest's imports reach: the store's data.
pub struct HostState {
    /// Host calls block on async I/O here, and only here: a signal ends any such wait. The
    /// guest runs on a thread outside the runtime.
    pub rt: Runtime,
    /// Resources handed to the guest as opaque handles.
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    pub daemon: Daemon,
    /// containers-storage (podman, buildah): `containers-storage:NAME` sources, and plain names
    /// when no Docker daemon is found anywhere.
    pub storage: Storage,
    /// TLS settings; each registry gets a client built with them and its certs.d directory.
    pub tls: TlsOptions,
    /// Where credentials come from: the command line's, then the files, in order.
    pub credentials: credentials::Sources,
    /// `--retries` and `--chunk-size`.
    pub transfer: Transfer,
    /// The files and directories the user named: the only ones the guest may reach.
    pub sandbox: Sandbox,
    pub progress: Progress,
    /// What each layer finished in this session is (by its digest), for the line reporting it.
    pub encodings: HashMap<String, Encoding>,
    /// Where the `cache` capability keeps its entries; `None` when no directory is known.
    pub cache_dir: Option<PathBuf>,
    /// How long the guest's calls blocked, by kind: where a push spends its time.
    pub waits: Waits,
    pub limits: MemoryLimit,
    /// When the guest last got control back from one of its imports: the watchdog's clock.
    pub guest_since: Instant,
    /// Set while the watchdog itself runs: its return to the guest is not a host call.
    pub watchdog_running: bool,
    /// `--sign-key`, loaded: the `signer` capability signs with it.
    pub signing_key: Option<Arc<signing::Key>>,
}

/// The files the user named, which the guest may have the host read or write: nothing else.
#[derive(Debug, Default)]
pub struct Sandbox {
    /// A `docker save` tarball to push from.
    pub archive: Option<String>,
    /// An OCI layout directory to push from.
    pub layout_source: Option<String>,
    /// The OCI layout directories to push to.
    pub layouts: Vec<String>,
    /// A directory to build from (`ocipush build`).
    pub build_context: Option<PathBuf>,
}

/// Time the guest spent blocked in host calls, logged at debug level after a push.
#[derive(Debug, Default)]
pub struct Waits {
    /// Waiting for the daemon's export (or a tarball's or layout's bytes).
    pub export: Duration,
    /// Waiting for a layer's encoder to take more bytes.
    pub upload: Duration,
    /// Waiting for a layer's last bytes to be sent and committed.
    pub finish: Duration,
}

/// Runs `f`, adding the time it took to `slot`.
pub fn timed<T>(slot: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
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

/// Caps the guest's memory, with a message that says so.
pub struct MemoryLimit;

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MEMORY_LIMIT {
            return Err(wasmtime::Error::msg(format!(
                "the guest tried to grow its memory to {} MiB, over its limit of {} MiB",
                desired >> 20,
                MEMORY_LIMIT >> 20
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// How a host call fails: with a one-line `error-message` the guest gets, or with a trap that
/// ends the guest (a bad handle, or a signal that stopped the wait).
#[derive(Debug)]
pub enum HostError {
    Message(String),
    Trap(wasmtime::Error),
}

impl HostError {
    /// A typed error's one line, for the guest.
    pub fn message(error: impl fmt::Display) -> Self {
        Self::Message(error.to_string())
    }
}

impl From<wasmtime::Error> for HostError {
    fn from(trap: wasmtime::Error) -> Self {
        Self::Trap(trap)
    }
}

impl From<ResourceTableError> for HostError {
    fn from(e: ResourceTableError) -> Self {
        Self::Trap(e.into())
    }
}

impl From<Interrupted> for HostError {
    fn from(interrupted: Interrupted) -> Self {
        Self::Trap(interrupted.into())
    }
}

/// How a call on a layer upload fails: the registry lost the upload (the guest streams the
/// layer again), or as any host call fails.
#[derive(Debug)]
pub enum UploadFailure {
    Lost(String),
    Failed(HostError),
}

impl From<ResourceTableError> for UploadFailure {
    fn from(e: ResourceTableError) -> Self {
        Self::Failed(e.into())
    }
}
