//! Where progress goes on stderr: bars on a terminal, plain lines (rate-limited) in CI logs,
//! JSON lines for machines, or nothing. The guest's events are rendered by the `progress`
//! capability (`capabilities::progress`); the host's own notices (retries, smaller chunks) by
//! `Notices`, which the registry client holds.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    Tty,
    Plain,
    Json,
    None,
}

/// The renderer of one push, with what it remembers between events.
pub enum Progress {
    Bars {
        multi: MultiProgress,
        bars: HashMap<u32, ProgressBar>,
        /// The image's layer count, from `started`.
        layers: u32,
    },
    Plain {
        /// When each layer last printed a progress line.
        last: HashMap<u32, Instant>,
        layers: u32,
    },
    Json,
    None,
    /// `-q`: nothing at all, warnings included.
    Quiet,
}

/// What `-q` and `-v` ask of stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// Nothing on stderr unless the push fails (`-q`): no progress, notices or warnings.
    Quiet,
    Normal,
}

impl Progress {
    /// The renderer `mode` asks for. Bars need a terminal: `tty` without one falls back to
    /// plain lines and says so once, rather than draw nothing at all.
    pub fn new(mode: Mode, verbosity: Verbosity) -> Self {
        let terminal = std::io::stderr().is_terminal();
        match mode {
            _ if verbosity == Verbosity::Quiet => Self::Quiet,
            Mode::Auto | Mode::Tty if terminal => Self::bars(),
            Mode::Tty => {
                eprintln!("ocipush: --progress tty: stderr is not a terminal, so progress comes as plain lines");
                Self::plain()
            }
            Mode::Auto | Mode::Plain => Self::plain(),
            Mode::Json => Self::Json,
            Mode::None => Self::None,
        }
    }

    /// Where the host reports what it does on its own (retries), rendered like the events;
    /// warnings are shown whatever the mode, unless `-q` asked for quiet.
    pub fn notices(&self) -> Notices {
        Notices {
            sink: match self {
                Self::Bars { multi, .. } => Sink::Bars(multi.clone()),
                Self::Plain { .. } => Sink::Plain,
                Self::Json => Sink::Json,
                Self::None | Self::Quiet => Sink::None,
            },
            warnings: !matches!(self, Self::Quiet),
        }
    }

    fn plain() -> Self {
        Self::Plain {
            last: HashMap::new(),
            layers: 0,
        }
    }

    fn bars() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        Self::Bars {
            multi,
            bars: HashMap::new(),
            layers: 0,
        }
    }
}

/// The host's own reports, which the guest does not see: each retry of a registry request, a
/// change of course in an upload, a source read from containers-storage for want of a daemon.
/// Cheap to clone and usable from any thread (uploads retry on the runtime).
#[derive(Clone)]
pub struct Notices {
    sink: Sink,
    /// Whether `warning` prints (not with `-q`).
    warnings: bool,
}

#[derive(Clone)]
enum Sink {
    Bars(MultiProgress),
    Plain,
    Json,
    None,
}

impl Notices {
    /// Nothing is reported (unit tests, `--progress none`).
    pub fn none() -> Self {
        Self {
            sink: Sink::None,
            warnings: false,
        }
    }

    /// Something the user should know although the push goes on, e.g. a password sent over
    /// plain HTTP: one `ocipush: warning: …` line, or a JSON `warning` event.
    pub fn warning(&self, message: &str) {
        if !self.warnings {
            return;
        }
        let line = format!("ocipush: warning: {message}");
        match &self.sink {
            Sink::Bars(multi) => {
                let _ = multi.println(line);
            }
            Sink::Json => eprintln!("{}", json!({"event": "warning", "message": message})),
            Sink::Plain | Sink::None => eprintln!("{line}"),
        }
    }

    /// Retry `attempt` of `retries` of `what`, after `reason`, in `delay`.
    pub fn retry(&self, what: &str, attempt: u32, retries: u32, delay: Duration, reason: &str) {
        let line = || {
            format!(
                "retrying {what} in {:.1} s (attempt {attempt} of {retries}): {reason}",
                delay.as_secs_f64()
            )
        };
        match &self.sink {
            Sink::Bars(multi) => {
                let _ = multi.println(line());
            }
            Sink::Plain => eprintln!("{}", line()),
            Sink::Json => eprintln!(
                "{}",
                json!({"event": "retry", "what": what, "attempt": attempt, "retries": retries,
                       "delay_ms": delay.as_millis() as u64, "reason": reason})
            ),
            Sink::None => {}
        }
    }

    /// Where the image is read from when that is not where the source said: no Docker daemon
    /// anywhere, so a plain name is read from containers-storage.
    pub fn source(&self, message: &str) {
        self.message("source", message);
    }

    /// A change of course in an upload that is not a retry, e.g. smaller chunks after the
    /// registry refused a large one, or starting a layer over in a new upload session.
    pub fn upload(&self, message: &str) {
        self.message("upload", message);
    }

    /// `message` as a line, or as the JSON event `event` with that `message`.
    fn message(&self, event: &str, message: &str) {
        match &self.sink {
            Sink::Bars(multi) => {
                let _ = multi.println(message);
            }
            Sink::Plain => eprintln!("{message}"),
            Sink::Json => eprintln!("{}", json!({"event": event, "message": message})),
            Sink::None => {}
        }
    }
}
