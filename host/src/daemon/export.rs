//! `docker save` from the daemon (`GET /images/{name}/get`), or `podman image save` from
//! containers-storage (`storage`), read ahead a bounded amount and never spooled: a task pumps
//! the daemon's answer, or the tool's stdout, into chunks the guest reads.

use std::fmt;

use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::interrupt::{Interrupted, Runtime};

/// Export chunks handed to the guest are gathered to exactly this size (the last may be
/// shorter): the guest asks for as much at a time, so each chunk crosses without another copy.
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the guest: bounds the export's memory to a few MiB (two keep the
/// guest fed: it takes one chunk per crossing).
const READ_AHEAD: usize = 2;

/// A running export.
pub struct ExportStream {
    chunks: mpsc::Receiver<Result<Vec<u8>, Error>>,
    /// A chunk the guest has taken only part of, from `taken` on.
    pending: Vec<u8>,
    taken: usize,
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

/// The pump's side: gathers what it reads into chunks of `CHUNK` bytes for the guest.
struct Chunks {
    tx: mpsc::Sender<Result<Vec<u8>, Error>>,
    chunk: Vec<u8>,
}

impl Chunks {
    /// Adds `bytes`, sending each chunk as it fills; false when the guest is gone and the pump
    /// should stop.
    async fn push(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let take = (CHUNK - self.chunk.len()).min(bytes.len());
            self.chunk.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.chunk.len() == CHUNK {
                let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
                if self.tx.send(Ok(full)).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// Sends what is left, then `end`'s error if the export failed.
    async fn finish(mut self, end: Result<(), Error>) {
        let last = std::mem::take(&mut self.chunk);
        if !last.is_empty() && self.tx.send(Ok(last)).await.is_err() {
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
            pending: Vec::new(),
            taken: 0,
        };
        (
            Chunks {
                tx,
                chunk: Vec::with_capacity(CHUNK),
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
    /// first bytes only; then takes what is already there. A whole chunk that fits is handed
    /// over as the pump made it, without a copy.
    pub fn read(&mut self, rt: &Runtime, max: u32) -> Result<Vec<u8>, Error> {
        let max = max.max(1) as usize;
        if self.taken == self.pending.len() {
            match rt
                .block_on(self.chunks.recv())
                .map_err(Error::Interrupted)?
            {
                Some(Ok(chunk)) if chunk.len() <= max => return Ok(chunk),
                Some(Ok(chunk)) => self.hold(chunk, 0),
                Some(Err(e)) => return Err(e),
                None => return Ok(Vec::new()),
            }
        }
        let mut out = Vec::with_capacity(max.min(4 * CHUNK));
        loop {
            let n = (self.pending.len() - self.taken).min(max - out.len());
            out.extend_from_slice(&self.pending[self.taken..self.taken + n]);
            self.taken += n;
            if out.len() == max {
                break;
            }
            match self.chunks.try_recv().ok() {
                Some(Ok(chunk)) => self.hold(chunk, 0),
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(out)
    }

    /// Keeps `chunk` for the guest to take from `taken` on.
    fn hold(&mut self, chunk: Vec<u8>, taken: usize) {
        self.pending = chunk;
        self.taken = taken;
    }

    /// Passes over the next `n` bytes without copying them anywhere: whole chunks are dropped
    /// as they arrive. Fails with `Error::EndedEarly` when the export ends first.
    pub fn skip(&mut self, rt: &Runtime, n: u64) -> Result<(), Error> {
        let here = ((self.pending.len() - self.taken) as u64).min(n);
        self.taken += here as usize;
        let mut left = n - here;
        while left > 0 {
            match rt
                .block_on(self.chunks.recv())
                .map_err(Error::Interrupted)?
            {
                Some(Ok(chunk)) if chunk.len() as u64 <= left => left -= chunk.len() as u64,
                Some(Ok(chunk)) => {
                    self.hold(chunk, left as usize);
                    left = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Err(Error::EndedEarly { skipping: n, left }),
            }
        }
        Ok(())
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
        let (chunks, stream) = ExportStream::channel();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        rt.spawn(async move {
            for part in parts {
                if chunks.tx.send(Ok(part)).await.is_err() {
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

    #[test]
    fn chunks_fill_to_their_size_and_a_whole_one_crosses_as_it_is() {
        let tokio = tokio::runtime::Runtime::new().unwrap();
        let rt = Runtime::new(tokio.handle().clone());
        let (mut chunks, mut stream) = ExportStream::channel();
        tokio.spawn(async move {
            let piece = vec![7u8; 300_000];
            for _ in 0..4 {
                assert!(chunks.push(&piece).await);
            }
            chunks.finish(Ok(())).await;
        });
        let first = stream.read(&rt, CHUNK as u32).unwrap();
        assert_eq!(first.len(), CHUNK);
        assert_eq!(first.capacity(), CHUNK, "the pump's own chunk");
        assert_eq!(stream.read(&rt, 100).unwrap().len(), 100);
        let rest = stream.read(&rt, CHUNK as u32).unwrap();
        assert_eq!(rest.len(), 1_200_000 - CHUNK - 100);
        assert!(stream.read(&rt, CHUNK as u32).unwrap().is_empty());
    }
}
