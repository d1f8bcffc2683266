//! `docker save` from the daemon (`GET /images/{name}/get`), read ahead a bounded amount and
//! never spooled: a task pumps the daemon's answer into chunks the guest reads.

use std::fmt;

use bollard::Docker;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::interrupt::{Interrupted, Runtime};

/// Export chunks handed to the guest are gathered to about this size.
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the guest: bounds the export's memory to a few MiB.
const READ_AHEAD: usize = 4;

/// A running export.
pub struct ExportStream {
    chunks: mpsc::Receiver<Result<Bytes, Error>>,
    /// Part of a chunk the guest has not taken yet.
    pending: Bytes,
}

/// Why an export failed.
#[derive(Debug)]
pub enum Error {
    Daemon {
        image: String,
        address: String,
        cause: String,
    },
    Interrupted(Interrupted),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Daemon {
                image,
                address,
                cause,
            } => write!(
                f,
                "exporting image {image} from the Docker daemon at {address}: {cause}"
            ),
            Self::Interrupted(interrupted) => interrupted.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl ExportStream {
    /// Starts exporting `image` from `docker` (at `address`, for messages).
    pub fn start(rt: &Runtime, docker: Docker, address: &str, image: String) -> Self {
        let (tx, chunks) = mpsc::channel(READ_AHEAD);
        let address = address.to_string();
        rt.spawn(async move {
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
                        let cause = e.to_string();
                        let _ = tx
                            .send(Err(Error::Daemon {
                                image,
                                address,
                                cause,
                            }))
                            .await;
                        return;
                    }
                }
            }
            if !chunk.is_empty() {
                let _ = tx.send(Ok(chunk.freeze())).await;
            }
        });
        Self {
            chunks,
            pending: Bytes::new(),
        }
    }

    /// The next bytes: at most `max`, at least one unless the export ended. Waits for the
    /// first bytes only; then takes what is already there.
    pub fn read(&mut self, rt: &Runtime, max: u32) -> Result<Vec<u8>, Error> {
        let max = max.max(1) as usize;
        let mut out = Vec::with_capacity(max.min(4 * CHUNK));
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(max - out.len());
                out.extend_from_slice(&self.pending.split_to(n));
                if out.len() == max {
                    break;
                }
            }
            let next = if out.is_empty() {
                rt.block_on(self.chunks.recv())
                    .map_err(Error::Interrupted)?
            } else {
                self.chunks.try_recv().ok()
            };
            match next {
                Some(Ok(bytes)) => self.pending = bytes,
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(out)
    }
}
