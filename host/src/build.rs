//! The daemon's build (`POST /build`, the classic builder) as the `docker.build` capability:
//! the context directory the user named goes as a tar less what `.dockerignore` excludes
//! (`context.rs`), and the daemon's output comes back line by line for the guest to report.

use std::collections::HashMap;
use std::path::Path;

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use wasmtime::component::Resource;

use crate::guest::ocipush::core::docker::{BuildEvent, BuildRequest, HostBuildJob};
use crate::guest::HostState;
use crate::interrupt::Runtime;

/// Events read ahead of the guest.
const READ_AHEAD: usize = 64;

/// A build under way: a task pumps the daemon's answer into events the guest takes.
pub struct BuildJob {
    events: mpsc::Receiver<Result<BuildEvent, String>>,
    /// Set once `built` or an error was handed out.
    ended: bool,
}

/// Starts building `request` in `docker`, from `allowed`, the one directory the user named.
pub fn start(
    rt: &Runtime,
    docker: Docker,
    daemon: &str,
    allowed: Option<&Path>,
    request: &BuildRequest,
) -> Result<BuildJob, String> {
    let context = Path::new(&request.context);
    if allowed != Some(context) {
        return Err(format!(
            "refusing to build from {}: not the build context named on the command line",
            context.display()
        ));
    }
    let dockerfile = request.dockerfile.as_deref().unwrap_or("Dockerfile");
    if !context.join(dockerfile).is_file() {
        return Err(format!(
            "the build context {} has no Dockerfile {dockerfile}",
            context.display()
        ));
    }
    let tar = crate::context::context_tar(context, dockerfile)?;
    let build_args: HashMap<String, String> = request.build_args.iter().cloned().collect();
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(dockerfile)
        .t(&request.tag)
        .buildargs(&build_args)
        .rm(true)
        .forcerm(true)
        .build();
    let (tx, events) = mpsc::channel(READ_AHEAD);
    let daemon = daemon.to_string();
    let tag = request.tag.clone();
    rt.spawn(async move {
        let mut stream = docker.build_image(options, None, Some(bollard::body_full(tar.into())));
        let mut id = None;
        while let Some(part) = stream.next().await {
            let event = match part {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        Err(format!(
                            "the Docker daemon at {daemon} could not build {tag}: {}",
                            detail.trim()
                        ))
                    } else {
                        if let Some(aux) = info.aux.and_then(|a| a.id) {
                            id = Some(aux);
                        }
                        match info.stream {
                            Some(text) => {
                                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                                    if tx
                                        .send(Ok(BuildEvent::Output(line.to_string())))
                                        .await
                                        .is_err()
                                    {
                                        return; // the guest is gone
                                    }
                                }
                                continue;
                            }
                            None => continue,
                        }
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => Err(format!(
                    "the Docker daemon at {daemon} could not build {tag}: {}",
                    error.trim()
                )),
                Err(e) => Err(format!(
                    "building {tag} in the Docker daemon at {daemon}: {e}"
                )),
            };
            let _ = tx.send(event).await;
            return;
        }
        let end = match id {
            Some(id) => Ok(BuildEvent::Built(id)),
            None => Err(format!(
                "the Docker daemon at {daemon} ended the build of {tag} without naming an image"
            )),
        };
        let _ = tx.send(end).await;
    });
    Ok(BuildJob {
        events,
        ended: false,
    })
}

impl HostBuildJob for HostState {
    fn next(&mut self, job: Resource<BuildJob>) -> wasmtime::Result<Result<BuildEvent, String>> {
        let rt = self.rt.clone();
        let job = self.table.get_mut(&job)?;
        if job.ended {
            return Ok(Err("the build has ended".to_string()));
        }
        let event = rt
            .block_on(job.events.recv())?
            .unwrap_or_else(|| Err("the build stopped without a result".to_string()));
        job.ended = !matches!(event, Ok(BuildEvent::Output(_)));
        Ok(event)
    }

    fn drop(&mut self, job: Resource<BuildJob>) -> wasmtime::Result<()> {
        self.table.delete(job)?;
        Ok(())
    }
}
