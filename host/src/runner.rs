//! Runs the guest component in its sandbox: one engine and one store per push, only the
//! capabilities of `wit/ocipush.wit` linked in (`capabilities`), and WASI with nothing granted
//! (a std guest imports it even though it uses none of it: no files, environment, network or
//! stdio). The guest's memory is capped (`state::MemoryLimit`), and a watchdog stops a guest
//! that computes too long without calling the host. A guest is checked (digest pin, component,
//! contract version, world) before any daemon or registry traffic; its compiled form is cached.

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest as _, Sha256};
use tokio::runtime::Handle;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{CallHook, Config, Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use ocipush_guest::reference::{Destination, Source};

use crate::bindings::ocipush::core::docker::BuildRequest;
use crate::bindings::ocipush::core::types::Platform;
use crate::bindings::{
    BuildPushRequest, BuildResult, IndexRequest, PublishSettings, PushRequest, PushResult, Pusher,
};
use crate::credentials;
use crate::daemon::storage::Storage;
use crate::daemon::Daemon;
use crate::interrupt::Runtime;
use crate::progress::Progress;
use crate::registry::Transfer;
use crate::state::{HostState, MemoryLimit, Sandbox, Waits};
use crate::tls::TlsOptions;

/// The guest component built from `guest/` by build.rs.
pub static GUEST_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ocipush_guest.wasm"));

/// The WIT package this host offers; guests built for any release of its minor version run
/// here.
pub const PACKAGE: &str = "ocipush:core";
/// From `wit/ocipush.wit` itself (build.rs reads its `package` line).
pub const PACKAGE_VERSION: &str = env!("OCIPUSH_WIT_VERSION");

/// How often the watchdog looks at the guest.
const TICK: Duration = Duration::from_millis(100);

/// A guest component to run: the embedded one or one from a file, with its digest.
pub struct Guest {
    /// `embedded`, or the file it came from.
    pub origin: String,
    pub bytes: Vec<u8>,
    /// `sha256:` of the component's bytes.
    pub digest: String,
}

impl Guest {
    /// Loads the guest to run, refusing it unless it has the `pinned` digest, when one is given.
    pub fn load(path: Option<&Path>, pinned: Option<&str>) -> Result<Self> {
        let (origin, bytes) = match path {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("reading the guest {}", path.display()))?;
                (path.display().to_string(), bytes)
            }
            None => ("embedded".to_string(), GUEST_WASM.to_vec()),
        };
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if let Some(pinned) = pinned {
            if pinned.trim() != digest {
                bail!(
                    "guest {origin} has digest {digest}, not the pinned {}: refusing to run it",
                    pinned.trim()
                );
            }
        }
        Ok(Self {
            origin,
            bytes,
            digest,
        })
    }
}

/// The images a job pushes.
pub enum Images<'a> {
    /// One image, its manifest under the destination's tag; or the platforms chosen (all when
    /// none) of a multi-platform image, under its index or a new one (one platform: its
    /// manifest).
    One {
        source: &'a str,
        platforms: &'a [Platform],
    },
    /// One image per platform, and an index naming them under the tag.
    Index(&'a [String]),
}

/// What to push, where, and how.
pub struct Job<'a> {
    /// One or more (only a push takes several; an index and a build take the first).
    pub destinations: &'a [String],
    /// Compression, format, annotations and verification, as the guest takes them.
    pub settings: PublishSettings,
    /// How long the guest may compute without calling the host before it is stopped.
    pub compute_limit: Duration,
    pub tls: TlsOptions,
    /// Where credentials come from (`--username`, `--authfile`, the files).
    pub credentials: credentials::Sources,
    /// `--retries` and `--chunk-size`.
    pub transfer: Transfer,
    /// `--context NAME`: the Docker context naming the daemon, over the environment's.
    pub docker_context: Option<String>,
    /// `--sign-key`, loaded: what the guest's `signer.key` hands out.
    pub signing_key: Option<std::sync::Arc<crate::signing::Key>>,
}

impl Job<'_> {
    /// The one destination of an index or a build.
    fn destination(&self) -> &str {
        self.destinations.first().map_or("", String::as_str)
    }
}

/// Pushes `images` (from the daemon, a tarball or an OCI layout) to `job.destinations` through
/// `guest`.
pub fn push(
    rt: Handle,
    progress: Progress,
    guest: &Guest,
    job: &Job<'_>,
    images: Images<'_>,
) -> Result<PushResult> {
    // Only a single image may come from a tarball or a layout: an index's sources are in the
    // daemon.
    let mut sandbox = Sandbox::default();
    if let Images::One { source, .. } = images {
        match Source::parse(source) {
            Ok(Source::Archive { path, .. }) => sandbox.archive = Some(path),
            Ok(Source::Layout { path, .. }) => sandbox.layout_source = Some(path),
            _ => {}
        }
    }
    run_guest(
        rt,
        progress,
        guest,
        job,
        sandbox,
        |pusher, store| match images {
            Images::One { source, platforms } => pusher.call_push(
                store,
                &PushRequest {
                    source: source.to_string(),
                    destinations: job.destinations.to_vec(),
                    settings: job.settings.clone(),
                    platforms: platforms.to_vec(),
                },
            ),
            Images::Index(sources) => pusher.call_push_index(
                store,
                &IndexRequest {
                    sources: sources.to_vec(),
                    destination: job.destination().to_string(),
                    settings: job.settings.clone(),
                },
            ),
        },
    )
}

/// Builds an image from `request.context` with the daemon, through `guest`, and pushes it to
/// `job.destination()` when `push` is set. The host builds from that one directory only.
pub fn build(
    rt: Handle,
    progress: Progress,
    guest: &Guest,
    job: &Job<'_>,
    request: &BuildRequest,
    push: bool,
) -> Result<BuildResult> {
    let sandbox = Sandbox {
        build_context: Some(PathBuf::from(&request.context)),
        ..Sandbox::default()
    };
    run_guest(rt, progress, guest, job, sandbox, |pusher, store| {
        pusher.call_build(
            store,
            &BuildPushRequest {
                build: request.clone(),
                destination: push.then(|| job.destination().to_string()),
                settings: job.settings.clone(),
            },
        )
    })
}

/// Runs `call` on a fresh instance of `guest`, sandboxed, with the capabilities `job` grants
/// and the files `sandbox` names.
fn run_guest<T>(
    rt: Handle,
    progress: Progress,
    guest: &Guest,
    job: &Job<'_>,
    mut sandbox: Sandbox,
    call: impl FnOnce(&Pusher, &mut Store<HostState>) -> wasmtime::Result<Result<T, String>>,
) -> Result<T> {
    let engine = engine()?;
    let cache_dir = crate::cache::dir();
    let component = load_component(&engine, guest, cache_dir.as_deref())?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Pusher::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;

    for destination in job.destinations {
        if let Ok(Destination::Layout(target)) = Destination::parse(destination) {
            sandbox.layouts.push(target.path);
        }
    }
    let state = HostState {
        rt: Runtime::new(rt),
        table: ResourceTable::new(),
        wasi: WasiCtx::builder().build(),
        daemon: Daemon::locate(job.docker_context.as_deref()),
        storage: Storage::locate(),
        tls: job.tls.clone(),
        credentials: job.credentials.clone(),
        transfer: job.transfer,
        sandbox,
        progress,
        encodings: Default::default(),
        cache_dir,
        waits: Waits::default(),
        limits: MemoryLimit,
        guest_since: Instant::now(),
        watchdog_running: false,
        signing_key: job.signing_key.clone(),
    };
    let mut store = Store::new(&engine, state);
    store.limiter(|state| &mut state.limits);
    watch(&mut store, job.compute_limit);
    let ticker = Ticker::start(&engine);

    let result = (|| {
        let pusher = Pusher::instantiate(&mut store, &component, &linker)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("guest {} does not fit this host", guest.origin))?;
        let started = Instant::now();
        let result = call(&pusher, &mut store).map_err(|e| {
            // One line for the user: what stopped the guest. The wasm backtrace is for debugging.
            let e = anyhow::Error::from(e);
            tracing::debug!("the guest failed: {e:?}");
            anyhow!("the guest failed: {}", e.root_cause())
        })?;
        tracing::debug!(elapsed = ?started.elapsed(), waits = ?store.data().waits, "push finished");
        result.map_err(anyhow::Error::msg)
    })();
    // Dropping the store drops the guest's unfinished uploads, which cancels them.
    drop(store);
    // A push that failed because a signal stopped it says so, whatever step it was in.
    let result = match (result, crate::interrupt::received()) {
        (Err(e), Some(signal)) => {
            tracing::debug!("stopped by {signal}: {e:#}");
            Err(anyhow!(crate::interrupt::stopped(signal)))
        }
        (result, _) => result,
    };
    drop(ticker);
    result
}

/// The watchdog: every tick, a guest that has not called the host for `limit` is stopped.
/// Time spent in host calls (waiting on the daemon or a registry) does not count. After a
/// signal, no host call starts and a computing guest stops at the next tick.
fn watch(store: &mut Store<HostState>, limit: Duration) {
    store.call_hook(|mut store, hook| {
        // Ctrl-C: no further host call (so no later write); the watchdog stops a computing guest.
        if let (Some(signal), CallHook::CallingHost) = (crate::interrupt::received(), &hook) {
            return Err(wasmtime::Error::msg(format!("interrupted by {signal}")));
        }
        let state = store.data_mut();
        match hook {
            CallHook::ReturningFromHost if state.watchdog_running => state.watchdog_running = false,
            CallHook::CallingWasm | CallHook::ReturningFromHost => {
                state.guest_since = Instant::now()
            }
            CallHook::CallingHost | CallHook::ReturningFromWasm => {}
        }
        Ok(())
    });
    store.epoch_deadline_callback(move |mut store| {
        if let Some(signal) = crate::interrupt::received() {
            return Err(wasmtime::Error::msg(format!("interrupted by {signal}")));
        }
        store.data_mut().watchdog_running = true;
        if store.data().guest_since.elapsed() > limit {
            return Err(wasmtime::Error::msg(format!(
                "the guest computed for {} s without calling the host (--guest-cpu-limit): stopped it",
                limit.as_secs()
            )));
        }
        Ok(UpdateDeadline::Continue(1))
    });
    store.set_epoch_deadline(1);
}

/// The watchdog's clock: a thread that advances the engine's epoch every `TICK` until dropped.
struct Ticker {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: &Engine) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let engine = engine.clone();
        let thread = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                engine.increment_epoch();
            }
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What `ocipush guest info` prints: the guest, its digest, the contract it speaks, and every
/// import and export.
pub fn describe(guest: &Guest, cache_dir: Option<&Path>) -> Result<String> {
    let engine = engine()?;
    let component = load_component(&engine, guest, cache_dir)?;
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(&engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let exports: Vec<String> = ty
        .exports(&engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let version = contract_version(imports.iter().map(String::as_str));
    let mut text = format!("guest:    {}\ndigest:   {}\n", guest.origin, guest.digest);
    text += &format!(
        "world:    {PACKAGE}/pusher@{}\nhost:     offers {PACKAGE}@{PACKAGE_VERSION} (runs guests for {}.x)\n",
        version.as_deref().unwrap_or("?"),
        series(PACKAGE_VERSION)
    );
    text += "imports:\n";
    for name in &imports {
        text += &format!("  {name}\n");
    }
    text += "exports:\n";
    for name in &exports {
        text += &format!("  {name}\n");
    }
    Ok(text)
}

/// The engine every guest runs on: with epoch interruption, for the watchdog. `guest info`
/// uses it too, so both find the same compiled guest in the cache.
fn engine() -> Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.parallel_compilation(false);
    Engine::new(&config).map_err(anyhow::Error::from)
}

/// The version of the ocipush contract a component's imports name (`ocipush:core/x@V`).
fn contract_version<'a>(imports: impl Iterator<Item = &'a str>) -> Option<String> {
    imports
        .filter_map(|name| name.strip_prefix(&format!("{PACKAGE}/")))
        .filter_map(|rest| rest.split_once('@').map(|(_, version)| version.to_string()))
        .next()
}

/// The compatible series of a version: `0.2` for `0.2.7` (before 1.0, minor versions break).
fn series(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Refuses a guest built for another contract, naming both versions. 0.x versions are
/// compatible when their minor versions match, as in semver.
fn check_contract(origin: &str, imports: &[String], exports: &[String]) -> Result<()> {
    for name in imports {
        let Some(rest) = name.strip_prefix(&format!("{PACKAGE}/")) else {
            continue;
        };
        let version = rest.split_once('@').map_or("", |(_, v)| v);
        if series(version) != series(PACKAGE_VERSION) {
            bail!(
                "guest {origin} speaks {PACKAGE}@{version} (it imports {name}), but this host offers {PACKAGE}@{PACKAGE_VERSION}"
            );
        }
    }
    if !exports.iter().any(|e| e == "push") {
        bail!("guest {origin} does not implement the {PACKAGE} pusher world: it exports no `push` function");
    }
    Ok(())
}

/// Where the guest with `digest`, compiled by `engine`, is cached in `dir`: the engine's
/// compatibility hash is in the name, so another build of ocipush never loads it.
fn compiled_path(engine: &Engine, digest: &str, dir: &Path) -> PathBuf {
    let mut compatibility = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut compatibility);
    let digest = digest.trim_start_matches("sha256:");
    dir.join("guest").join(format!(
        "{}-{:016x}.cwasm",
        &digest[..32],
        compatibility.finish()
    ))
}

/// Compiles a component and caches the result at `path` (best effort: the push goes on
/// without a cache). An engine of its own compiles, dropped with its compiler, which keeps its
/// contexts (cranelift's buffers) for reuse as long as it lives.
fn compile(bytes: &[u8], origin: &str, path: Option<&Path>) -> Result<Vec<u8>> {
    let compiler = self::engine()?;
    let compiled = compiler
        .precompile_component(bytes)
        .map_err(|e| anyhow!("guest {origin} is not a WebAssembly component: {e}"))?;
    drop(compiler);
    if let Some(path) = path {
        let mut file = Sha256::digest(&compiled).to_vec();
        file.extend_from_slice(&compiled);
        if let Err(e) = crate::files::write_atomic(path, &file) {
            tracing::debug!(path = %path.display(), error = %e, "compiled guest not cached");
        }
    }
    Ok(compiled)
}

/// `ocipush guest compile`, which a push runs as a child process: compiles the component on
/// stdin into the cache `dir`, as a push would.
pub fn compile_stdin_into(dir: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading a guest component on stdin")?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let path = compiled_path(&engine()?, &digest, dir);
    compile(&bytes, "on stdin", Some(&path)).map(drop)
}

/// Has this same executable compile `guest` into the cache in a child process: cranelift's
/// peak memory (tens of MiB) is then the child's, all of it returned when the child exits,
/// instead of staying partly in this process's heap for the whole push. False when the child
/// could not do it; the caller then compiles here.
fn compiled_by_child(guest: &Guest) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    tracing::debug!(guest = %guest.origin, "compiling the guest in a child process");
    let child = std::process::Command::new(exe)
        .args(["guest", "compile"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let fed = child
        .stdin
        .take()
        .is_some_and(|mut stdin| stdin.write_all(&guest.bytes).is_ok());
    let done = fed && child.wait().is_ok_and(|status| status.success());
    if !done {
        tracing::debug!("the child process did not compile the guest");
    }
    done
}

/// The guest compiled for this engine and checked against the contract. From the cache when
/// this very guest was compiled by a compatible engine before (compiling is most of a small
/// push's time), else compiled now (by a child process where there is a cache) and cached.
/// Each cached file starts with the sha256 of the rest, checked before it is loaded.
fn load_component(engine: &Engine, guest: &Guest, cache_dir: Option<&Path>) -> Result<Component> {
    let compiled = |bytes: &[u8]| -> Result<Component> {
        // Safety: the bytes come from `precompile_component` of an engine with the same
        // compatibility hash (it is in the file name), and their checksum matched.
        unsafe { Component::deserialize(engine, bytes) }.map_err(anyhow::Error::from)
    };
    let path = cache_dir.map(|dir| compiled_path(engine, &guest.digest, dir));
    let cached = || {
        path.as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| {
                let intact = bytes.len() > 32 && bytes[..32] == Sha256::digest(&bytes[32..])[..];
                let component = if intact {
                    compiled(&bytes[32..]).ok()
                } else {
                    None
                };
                if component.is_none() {
                    tracing::debug!("ignoring a damaged compiled guest");
                }
                component
            })
    };
    let component = match cached() {
        Some(component) => component,
        None => {
            // Pushes that start together on a cold cache: one compiles, the others wait for
            // its file instead of all compiling at once.
            let _lock = cache_dir.and_then(|dir| crate::cache::lock(dir, "guest"));
            let by_child = || path.is_some() && compiled_by_child(guest);
            match cached().or_else(|| by_child().then(cached).flatten()) {
                Some(component) => component,
                None => {
                    tracing::debug!(guest = %guest.origin, "compiling the guest");
                    let bytes = compile(&guest.bytes, &guest.origin, path.as_deref())?;
                    let component = compiled(&bytes)?;
                    drop(bytes);
                    // Compiling left tens of MiB free in malloc's arenas.
                    crate::memory::release();
                    component
                }
            }
        }
    };
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    check_contract(&guest.origin, &imports, &exports)?;
    Ok(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn contract_versions_are_checked_by_minor_series() {
        let push = names(&["push"]);
        let ok = names(&[
            "wasi:io/streams@0.2.6",
            "ocipush:core/docker@0.11.0",
            "ocipush:core/registry@0.11.7",
        ]);
        check_contract("g", &ok, &push).unwrap();
        for other in ["0.10.0", "0.12.0"] {
            let guest = names(&[&format!("ocipush:core/docker@{other}")]);
            let err = check_contract("g", &guest, &push).unwrap_err().to_string();
            assert!(
                err.contains(&format!("ocipush:core@{other}"))
                    && err.contains("ocipush:core@0.11.0"),
                "{err}"
            );
        }
        assert_eq!(
            contract_version(ok.iter().map(String::as_str)).as_deref(),
            Some("0.11.0")
        );
    }

    #[test]
    fn a_guest_without_push_is_refused() {
        let err = check_contract("g", &[], &names(&["run"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exports no `push`"), "{err}");
    }

    #[test]
    fn the_embedded_guest_is_a_pusher_and_pins_by_digest() {
        let guest = Guest::load(None, None).unwrap();
        let text = describe(&guest, None).unwrap();
        assert!(text.contains(&guest.digest), "{text}");
        assert!(text.contains("ocipush:core/registry@0.11.0"), "{text}");
        assert!(text.contains("\n  push\n"), "{text}");
        assert!(Guest::load(None, Some(&guest.digest)).is_ok());
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = Guest::load(None, Some(&wrong)).err().unwrap().to_string();
        assert!(err.contains("refusing to run it"), "{err}");
    }
}
