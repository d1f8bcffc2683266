//! The Docker daemon (or podman's compatible API service) as an image source: inspect, and the
//! `docker save` stream, read ahead a bounded amount and never spooled.

use bollard::Docker;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use wasmtime::component::Resource;

use crate::guest::ocipush::core::docker::{BuildRequest, Host, HostExportStream, ImageSummary};
use crate::guest::ocipush::core::types::Platform;
use crate::guest::HostState;
use crate::interrupt::Runtime;

/// Export chunks handed to the guest are gathered to about this size.
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the guest: bounds the export's memory to a few MiB.
const READ_AHEAD: usize = 4;

/// A connection to the daemon named by `DOCKER_HOST`.
pub struct Daemon {
    /// `DOCKER_HOST` as given, for messages.
    address: String,
    docker: Option<Docker>,
}

impl Daemon {
    pub fn from_env() -> Self {
        let address =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        Self {
            address,
            docker: None,
        }
    }

    /// Connects on first use, agreeing on an API version the daemon speaks (Debian's dockerd
    /// 20.10 is far older than the client's default).
    fn docker(&mut self, rt: &Runtime) -> Result<Docker, String> {
        if let Some(docker) = &self.docker {
            return Ok(docker.clone());
        }
        let unreachable = |e: bollard::errors::Error| {
            format!("cannot reach the Docker daemon at {}: {e}", self.address)
        };
        let docker = Docker::connect_with_defaults().map_err(unreachable)?;
        let docker = rt
            .block_on(docker.negotiate_version())?
            .map_err(unreachable)?;
        self.docker = Some(docker.clone());
        Ok(docker)
    }

    fn describe(&self, image: &str, e: bollard::errors::Error) -> String {
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => {
                format!(
                    "image {image} not found in the Docker daemon at {}",
                    self.address
                )
            }
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => {
                format!(
                    "the Docker daemon at {} refused image {image}: {status_code} {message}",
                    self.address
                )
            }
            other => format!(
                "the Docker daemon at {} failed on image {image}: {other}",
                self.address
            ),
        }
    }
}

/// A running export: a task pumps the daemon's response into chunks the guest reads.
pub struct ExportStream {
    chunks: mpsc::Receiver<Result<Bytes, String>>,
    /// Part of a chunk the guest has not taken yet.
    pending: Bytes,
}

impl Host for HostState {
    fn build(
        &mut self,
        request: BuildRequest,
    ) -> wasmtime::Result<Result<Resource<crate::build::BuildJob>, String>> {
        let docker = match self.daemon.docker(&self.rt) {
            Ok(docker) => docker,
            Err(e) => return Ok(Err(e)),
        };
        Ok(
            match crate::build::start(
                &self.rt,
                docker,
                &self.daemon.address,
                self.build_context.as_deref(),
                &request,
            ) {
                Ok(job) => Ok(self.table.push(job)?),
                Err(e) => Err(e),
            },
        )
    }

    fn inspect(&mut self, image: String) -> wasmtime::Result<Result<ImageSummary, String>> {
        Ok(self.inspect_image(&image))
    }

    fn export_image(
        &mut self,
        image: String,
    ) -> wasmtime::Result<Result<Resource<ExportStream>, String>> {
        let docker = match self.daemon.docker(&self.rt) {
            Ok(docker) => docker,
            Err(e) => return Ok(Err(e)),
        };
        let (tx, chunks) = mpsc::channel(READ_AHEAD);
        let address = self.daemon.address.clone();
        self.rt.spawn(async move {
            let mut stream = docker.export_image(&image);
            let mut chunk = BytesMut::with_capacity(CHUNK);
            while let Some(part) = stream.next().await {
                match part {
                    Ok(bytes) => {
                        chunk.extend_from_slice(&bytes);
                        if chunk.len() >= CHUNK
                            && tx.send(Ok(chunk.split().freeze())).await.is_err()
                        {
                            return; // the guest is gone
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(format!(
                                "exporting image {image} from the Docker daemon at {address}: {e}"
                            )))
                            .await;
                        return;
                    }
                }
            }
            if !chunk.is_empty() {
                let _ = tx.send(Ok(chunk.freeze())).await;
            }
        });
        Ok(Ok(self.table.push(ExportStream {
            chunks,
            pending: Bytes::new(),
        })?))
    }
}

impl HostState {
    fn inspect_image(&mut self, image: &str) -> Result<ImageSummary, String> {
        let docker = self.daemon.docker(&self.rt)?;
        let inspect = self
            .rt
            .block_on(docker.inspect_image(image))?
            .map_err(|e| self.daemon.describe(image, e))?;
        let id = inspect
            .id
            .ok_or_else(|| format!("the Docker daemon reported no ID for image {image}"))?;
        let diff_ids = inspect.root_fs.and_then(|r| r.layers).unwrap_or_default();
        let size = inspect.size.unwrap_or(0).max(0) as u64;
        let platform = match (inspect.os, inspect.architecture) {
            (Some(os), Some(architecture)) if !os.is_empty() && !architecture.is_empty() => {
                Some(Platform {
                    os,
                    architecture,
                    variant: inspect.variant.filter(|v| !v.is_empty()),
                })
            }
            _ => None,
        };
        tracing::debug!(image, %id, layers = diff_ids.len(), size, ?platform, "inspected");
        Ok(ImageSummary {
            id,
            diff_ids,
            size,
            platform,
        })
    }
}

impl HostExportStream for HostState {
    fn read(
        &mut self,
        stream: Resource<ExportStream>,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let rt = self.rt.clone();
        let stream = self.table.get_mut(&stream)?;
        let max = max.max(1) as usize;
        let mut out = Vec::with_capacity(max.min(4 * CHUNK));
        // Wait for the first bytes only; then take what is already there, up to `max`.
        loop {
            if !stream.pending.is_empty() {
                let n = stream.pending.len().min(max - out.len());
                out.extend_from_slice(&stream.pending.split_to(n));
                if out.len() == max {
                    break;
                }
            }
            let next = if out.is_empty() {
                crate::guest::timed(&mut self.waits.export, || rt.block_on(stream.chunks.recv()))?
            } else {
                stream.chunks.try_recv().ok()
            };
            match next {
                Some(Ok(bytes)) => stream.pending = bytes,
                Some(Err(e)) => return Ok(Err(e)),
                None => break,
            }
        }
        Ok(Ok(out))
    }

    fn drop(&mut self, stream: Resource<ExportStream>) -> wasmtime::Result<()> {
        // Dropping the receiver ends the pump task at its next send.
        self.table.delete(stream)?;
        Ok(())
    }
}
