//! `docker save` from the daemon (`GET /images/{name}/get`), or `podman image save` from
//! containers-storage (`storage`), read ahead a bounded amount and never spooled: a task pumps
//! the daemon's answer, or the tool's stdout, into chunks the guest reads.

use std::fmt;

use bollard::Docker;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::interrupt::{Interrupted, Runtime};

/// Export chunks handed to the guest are gathered to about this size.
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the guest: bounds the export's memory to a few MiB (two keep the
/// guest fed: it takes one chunk per crossing).
const READ_AHEAD: usize = 2;

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
    /// The tool reading containers-storage failed: its exit and the last line it wrote.
    Storage {
        image: String,
        tool: &'static str,
        cause: String,
    },
    /// The export ended while a layer the destination holds was being passed over.
    EndedEarly {
        skipping: u64,
        left: u64,
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
            Self::Storage { image, tool, cause } => write!(
                f,
                "exporting image {image} from containers-storage with {tool}: {cause}"
            ),
            Self::EndedEarly { skipping, left } => write!(
                f,
                "the export ended {left} bytes short of the {skipping} bytes of a layer entry"
            ),
            Self::Interrupted(interrupted) => interrupted.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

/// The pump's side: gathers what it reads into chunks of about `CHUNK` for the guest.
struct Chunks {
    tx: mpsc::Sender<Result<Bytes, Error>>,
    chunk: BytesMut,
}

impl Chunks {
    /// Adds `bytes`; false when the guest is gone and the pump should stop. Each chunk is
    /// allocated once at its full size and sent when full, never grown by doubling.
    async fn push(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let take = bytes.len().min(CHUNK - self.chunk.len());
            self.chunk.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.chunk.len() == CHUNK {
                let full = std::mem::replace(&mut self.chunk, BytesMut::with_capacity(CHUNK));
                if self.tx.send(Ok(full.freeze())).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// Sends what is left, then `end`'s error if the export failed.
    async fn finish(mut self, end: Result<(), Error>) {
        if !self.chunk.is_empty() && self.tx.send(Ok(self.chunk.split().freeze())).await.is_err() {
            return;
        }
        if let Err(e) = end {
            let _ = self.tx.send(Err(e)).await;
        }
    }
}

impl ExportStream {
    fn channel() -> (Chunks, Self) {
        let (tx, chunks) = mpsc::channel(READ_AHEAD);
        let stream = Self {
            chunks,
            pending: Bytes::new(),
        };
        (
            Chunks {
                tx,
                chunk: BytesMut::with_capacity(CHUNK),
            },
            stream,
        )
    }

    /// Starts exporting `image` from `docker` (at `address`, for messages).
    pub fn start(rt: &Runtime, docker: Docker, address: &str, image: String) -> Self {
        let (mut chunks, stream) = Self::channel();
        let address = address.to_string();
        rt.spawn(async move {
            let mut parts = docker.export_image(&image);
            while let Some(part) = parts.next().await {
                match part {
                    Ok(bytes) => {
                        if !chunks.push(&bytes).await {
                            return; // the guest is gone
                        }
                    }
                    Err(e) => {
                        let cause = e.to_string();
                        let failed = Error::Daemon {
                            image,
                            address,
                            cause,
                        };
                        return chunks.finish(Err(failed)).await;
                    }
                }
            }
            chunks.finish(Ok(())).await;
        });
        stream
    }

    /// Streams the stdout of `child` (`tool`, exporting `image`), which must have its stdout
    /// and stderr piped and be killed on drop: dropping the stream before its end stops it.
    /// An exit other than 0 fails the stream with the last line the tool wrote on stderr.
    pub fn from_process(rt: &Runtime, mut child: Child, tool: &'static str, image: String) -> Self {
        let (mut chunks, stream) = Self::channel();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        rt.spawn(async move {
            // Read while stdout is: a tool blocked on a full stderr pipe would never end.
            let errors = tokio::spawn(last_line(stderr));
            let mut buffer = vec![0; CHUNK];
            let mut read = 0;
            if let Some(mut stdout) = stdout {
                loop {
                    match stdout.read(&mut buffer).await {
                        Ok(0) => break,
                        Ok(n) if chunks.push(&buffer[..n]).await => read += n,
                        Ok(_) => return, // the guest is gone: dropping `child` kills it
                        Err(e) => {
                            let cause = format!("reading its output: {e}");
                            return chunks
                                .finish(Err(Error::Storage { image, tool, cause }))
                                .await;
                        }
                    }
                }
            }
            let status = child.wait().await;
            let said = errors.await.unwrap_or_default();
            let end = match status {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("{status} after {read} bytes: {said}")),
                Err(e) => Err(format!("waiting for it: {e}")),
            };
            let end = end.map_err(|cause| Error::Storage { image, tool, cause });
            chunks.finish(end).await;
        });
        stream
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

    /// Passes over the next `n` bytes without copying them anywhere: whole chunks are dropped
    /// as they arrive. Fails with `Error::EndedEarly` when the export ends first.
    pub fn skip(&mut self, rt: &Runtime, n: u64) -> Result<(), Error> {
        let mut left = n;
        loop {
            let take = (self.pending.len() as u64).min(left) as usize;
            let _ = self.pending.split_to(take);
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
            match rt
                .block_on(self.chunks.recv())
                .map_err(Error::Interrupted)?
            {
                Some(Ok(bytes)) => self.pending = bytes,
                Some(Err(e)) => return Err(e),
                None => return Err(Error::EndedEarly { skipping: n, left }),
            }
        }
    }
}

/// The last non-empty line a tool wrote on `stderr`, of at most its last 4 KiB.
pub async fn last_line(stderr: Option<tokio::process::ChildStderr>) -> String {
    let Some(mut stderr) = stderr else {
        return String::new();
    };
    let mut tail = Vec::new();
    let mut buffer = [0; 4096];
    while let Ok(n) = stderr.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buffer[..n]);
        let excess = tail.len().saturating_sub(4096);
        tail.drain(..excess);
    }
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find(|l| !l.trim().is_empty());
    line.unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream fed `parts`, as the pump would feed it.
    fn fed(rt: &tokio::runtime::Runtime, parts: &[&[u8]]) -> ExportStream {
        let (mut chunks, stream) = ExportStream::channel();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        rt.spawn(async move {
            for part in parts {
                chunks.chunk.extend_from_slice(&part);
                let chunk = chunks.chunk.split().freeze();
                if chunks.tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            chunks.finish(Ok(())).await;
        });
        stream
    }

    #[test]
    fn skip_passes_over_bytes_across_chunks_and_fails_past_the_end() {
        let tokio = tokio::runtime::Runtime::new().unwrap();
        let rt = Runtime::new(tokio.handle().clone());
        let mut stream = fed(&tokio, &[b"abcd", b"efgh", b"ijkl"]);
        assert_eq!(stream.read(&rt, 2).unwrap(), b"ab");
        stream.skip(&rt, 7).unwrap();
        assert_eq!(stream.read(&rt, 100).unwrap(), b"jkl");
        stream.skip(&rt, 0).unwrap();
        let err = stream.skip(&rt, 5).unwrap_err();
        assert!(
            matches!(
                err,
                Error::EndedEarly {
                    skipping: 5,
                    left: 5
                }
            ),
            "{err}"
        );
    }
}
