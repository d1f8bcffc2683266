//! The daemon's build (`POST /build`, the classic builder): the context directory the user named
//! goes as a tar less what `.dockerignore` excludes (`context`), and the daemon's output comes
//! back line by line: a task pumps its answer into steps the guest takes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::interrupt::{Interrupted, Runtime};

/// Steps read ahead of the guest.
const READ_AHEAD: usize = 64;

/// What to build: the context directory, the Dockerfile in it, the tag and build arguments.
pub struct Spec<'a> {
    pub context: &'a Path,
    pub dockerfile: Option<&'a str>,
    pub tag: &'a str,
    pub build_args: &'a [(String, String)],
}

/// What a build says next.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// A line of output, without its line end.
    Output(String),
    /// The build succeeded, and this is the image's ID: the last step.
    Built(String),
}

/// A build under way.
pub struct BuildJob {
    steps: mpsc::Receiver<Result<Step, Error>>,
    /// Set once `Built` or an error was handed out.
    ended: bool,
}

/// Why a build did not start, or failed.
#[derive(Debug)]
pub enum Error {
    NotTheContext(PathBuf),
    NoDockerfile {
        context: PathBuf,
        dockerfile: String,
    },
    /// The context could not be read, or its `.dockerignore` is invalid.
    Context(super::context::Error),
    /// The daemon's own message about the build.
    Failed {
        daemon: String,
        tag: String,
        message: String,
    },
    /// The daemon's answer broke off.
    Daemon {
        daemon: String,
        tag: String,
        cause: String,
    },
    NoImage {
        daemon: String,
        tag: String,
    },
    /// Asked for a step after the last one.
    Ended,
    /// The pump stopped without a last step.
    Stopped,
    Interrupted(Interrupted),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTheContext(context) => write!(
                f,
                "refusing to build from {}: not the build context named on the command line",
                context.display()
            ),
            Self::NoDockerfile {
                context,
                dockerfile,
            } => write!(
                f,
                "the build context {} has no Dockerfile {dockerfile}",
                context.display()
            ),
            Self::Context(e) => e.fmt(f),
            Self::Failed {
                daemon,
                tag,
                message,
            } => write!(
                f,
                "the Docker daemon at {daemon} could not build {tag}: {}",
                message.trim()
            ),
            Self::Daemon { daemon, tag, cause } => {
                write!(
                    f,
                    "building {tag} in the Docker daemon at {daemon}: {cause}"
                )
            }
            Self::NoImage { daemon, tag } => write!(
                f,
                "the Docker daemon at {daemon} ended the build of {tag} without naming an image"
            ),
            Self::Ended => f.write_str("the build has ended"),
            Self::Stopped => f.write_str("the build stopped without a result"),
            Self::Interrupted(interrupted) => interrupted.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl BuildJob {
    /// Starts building `spec` in `docker` (at `daemon`, for messages), from `allowed`, the one
    /// directory the user named.
    pub fn start(
        rt: &Runtime,
        docker: Docker,
        daemon: &str,
        allowed: Option<&Path>,
        spec: &Spec<'_>,
    ) -> Result<Self, Error> {
        let context = spec.context;
        if allowed != Some(context) {
            return Err(Error::NotTheContext(context.to_path_buf()));
        }
        let dockerfile = spec.dockerfile.unwrap_or("Dockerfile");
        if !context.join(dockerfile).is_file() {
            return Err(Error::NoDockerfile {
                context: context.to_path_buf(),
                dockerfile: dockerfile.to_string(),
            });
        }
        let tar = super::context::context_tar(context, dockerfile).map_err(Error::Context)?;
        let build_args: HashMap<String, String> = spec.build_args.iter().cloned().collect();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(dockerfile)
            .t(spec.tag)
            .buildargs(&build_args)
            .rm(true)
            .forcerm(true)
            .build();
        let (tx, steps) = mpsc::channel(READ_AHEAD);
        let (daemon, tag) = (daemon.to_string(), spec.tag.to_string());
        rt.spawn(async move {
            let stream = docker.build_image(options, None, Some(bollard::body_full(tar.into())));
            let last = pump(stream, &tx, &daemon, &tag).await;
            if let Some(last) = last {
                let _ = tx.send(last).await;
            }
        });
        Ok(Self {
            steps,
            ended: false,
        })
    }

    /// The build's next step, waiting for it.
    pub fn next(&mut self, rt: &Runtime) -> Result<Step, Error> {
        if self.ended {
            return Err(Error::Ended);
        }
        let step = rt
            .block_on(self.steps.recv())
            .map_err(Error::Interrupted)?
            .unwrap_or(Err(Error::Stopped));
        self.ended = !matches!(step, Ok(Step::Output(_)));
        step
    }
}

/// Sends the build's output lines to `tx` and returns its last step: the image, or why there is
/// none. `None` when the guest is gone.
async fn pump(
    mut stream: impl futures_util::Stream<Item = Result<bollard::models::BuildInfo, bollard::errors::Error>>
        + Unpin,
    tx: &mpsc::Sender<Result<Step, Error>>,
    daemon: &str,
    tag: &str,
) -> Option<Result<Step, Error>> {
    let failed = |message: String| Error::Failed {
        daemon: daemon.to_string(),
        tag: tag.to_string(),
        message,
    };
    let mut id = None;
    while let Some(part) = stream.next().await {
        let info = match part {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Some(Err(failed(error)))
            }
            Err(e) => {
                return Some(Err(Error::Daemon {
                    daemon: daemon.to_string(),
                    tag: tag.to_string(),
                    cause: e.to_string(),
                }))
            }
        };
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Some(Err(failed(message)));
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            id = Some(aux);
        }
        for line in info.stream.iter().flat_map(|text| text.lines()) {
            if line.trim().is_empty() {
                continue;
            }
            if tx.send(Ok(Step::Output(line.to_string()))).await.is_err() {
                return None; // the guest is gone
            }
        }
    }
    Some(match id {
        Some(id) => Ok(Step::Built(id)),
        None => Err(Error::NoImage {
            daemon: daemon.to_string(),
            tag: tag.to_string(),
        }),
    })
}
