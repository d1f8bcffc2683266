//! Ctrl-C and `kill`: SIGINT or SIGTERM in the middle of a push stops it promptly, whatever it
//! is doing, and before any later write (no manifest or tag; cache entries are only ever
//! whole):
//! - a guest that is computing stops at its next step (a call into or back from the host, or
//!   the watchdog's next tick), and no host call starts after the signal;
//! - a host call that is waiting (on a registry that stopped answering, a daemon that stalls,
//!   a retry's backoff) waits through `Runtime::block_on`, the one way host calls block, which
//!   ends the wait at the signal: the pending request is dropped with its connection, and the
//!   call fails (a credential helper still running is killed).
//!
//! The stopped guest's store is then dropped, and dropping an unfinished upload cancels its
//! session in the registry (DELETE), bounded by `CANCEL_LIMIT` so that a registry which does not
//! answer that either cannot hold the exit. `GRACE` is the last resort: a push that has not
//! ended by then is ended regardless, without cleaning up.

use std::future::Future;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

/// The signal received, 0 while none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Upload sessions a stopped or failed push could not cancel (the registry refused the `DELETE`
/// or did not answer it within `CANCEL_LIMIT`): the line a stopped push ends with says so.
static LEFT_OPEN: AtomicUsize = AtomicUsize::new(0);

/// How long a push has, after the signal, to cancel its uploads and exit.
const GRACE: Duration = Duration::from_secs(10);
/// How long cleanup after a stop (cancelling an upload session) may wait for a registry.
pub const CANCEL_LIMIT: Duration = Duration::from_secs(2);
/// How often a wait looks for a signal: well under what a person notices.
const POLL: Duration = Duration::from_millis(20);

/// Catches SIGINT and SIGTERM from now on (on `rt`); the first one is remembered.
pub fn catch(rt: &Handle) -> std::io::Result<()> {
    let _guard = rt.enter();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    rt.spawn(async move {
        let number = tokio::select! {
            _ = interrupt.recv() => 2,
            _ = terminate.recv() => 15,
        };
        RECEIVED.store(number, Ordering::SeqCst);
        tracing::debug!(signal = name(number), "stopping the push");
        tokio::time::sleep(GRACE).await;
        eprintln!(
            "ocipush: error: interrupted by {}: did not stop within {} s; exiting",
            name(number),
            GRACE.as_secs()
        );
        std::process::exit(128 + number);
    });
    Ok(())
}

/// The signal that asked the push to stop, if one did.
pub fn received() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        number => Some(name(number)),
    }
}

/// Counts an upload session that cancelling did not close.
pub fn upload_left_open() {
    LEFT_OPEN.fetch_add(1, Ordering::SeqCst);
}

/// The line a push stopped by `signal` ends with: said after its unfinished uploads were
/// dropped (each cancelled, or counted by `upload_left_open`), so that it is true.
pub fn stopped(signal: &str) -> String {
    let stopped = format!("interrupted by {signal}: the push stopped");
    match LEFT_OPEN.load(Ordering::SeqCst) {
        0 => format!("{stopped} and its unfinished uploads were cancelled"),
        1 => format!("{stopped}; 1 unfinished upload could not be cancelled (the registry purges it later)"),
        n => format!("{stopped}; {n} unfinished uploads could not be cancelled (the registry purges them later)"),
    }
}

/// Completes once a signal asked the push to stop, with its name.
async fn wait() -> &'static str {
    loop {
        if let Some(signal) = received() {
            return signal;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A wait that a signal ended: the host call fails with it, as a trap or as its error.
#[derive(Debug, Clone, Copy)]
pub struct Interrupted(pub &'static str);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// The async runtime as host calls see it: they run on the guest's thread, outside the runtime,
/// and block on it only through `block_on`, which a signal ends.
#[derive(Clone)]
pub struct Runtime(Handle);

impl Runtime {
    pub fn new(handle: Handle) -> Self {
        Self(handle)
    }

    /// Runs `future` to its end, unless a signal asks the push to stop first (or already
    /// did): then `future` is dropped, which drops its requests and their connections.
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, Interrupted> {
        self.0.block_on(async {
            tokio::select! {
                biased;
                signal = wait() => Err(Interrupted(signal)),
                output = future => Ok(output),
            }
        })
    }

    /// For cleanup after a push failed or stopped: runs `future` to its end, signal or not, so
    /// `future` must bound its own wait (as `Api::cancel` does with `CANCEL_LIMIT`).
    pub fn block_on_cleanup<F: Future>(&self, future: F) -> F::Output {
        self.0.block_on(future)
    }

    /// Runs `future` in the background (an export pump, an upload's sender).
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.spawn(future)
    }
}

/// The exit status for an interrupted run: 128 + the signal's number, as shells report it.
pub fn exit_status() -> Option<u8> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        number => Some(128 + number as u8),
    }
}

fn name(number: i32) -> &'static str {
    if number == 2 {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}
