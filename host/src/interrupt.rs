//! Ctrl-C and `kill`: SIGINT or SIGTERM in the middle of a push stops the guest at its next
//! step (a call into or back from the host, or the watchdog's next tick), which fails the push
//! before any later write: no manifest or tag, cache entries only ever whole. The stopped
//! guest's store is then dropped, and dropping an unfinished layer upload cancels its session
//! in the registry (DELETE). A push that does not stop within `GRACE` is ended regardless.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::signal::unix::{signal, SignalKind};

/// The signal received, 0 while none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// How long a push has, after the signal, to cancel its uploads and exit.
const GRACE: Duration = Duration::from_secs(10);

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

/// Completes once a signal asked the push to stop, with its name: for host calls that block
/// for long (sending the rest of a layer) to race against.
pub async fn wait() -> &'static str {
    loop {
        if let Some(signal) = received() {
            return signal;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
