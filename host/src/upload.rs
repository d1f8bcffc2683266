//! A layer uploaded while the guest is still reading it. The guest's chunks are compressed on a
//! native thread into a spool (an anonymous temporary file, gone when the upload ends), and an
//! async sender uploads the spool in chunks (`PATCH` with `Content-Range`) as they fill, so
//! export, hashing, compression and upload overlap.
//!
//! The spool is what makes a layer survive an imperfect registry: after a failed chunk the
//! sender asks the registry how much it holds (the upload status, `Range`) and resumes from
//! there; if the registry lost the session it starts the layer over in a new one; a chunk the
//! registry refuses as too large (413, or 416 while the offsets agree) is sent again in smaller
//! chunks, and every later one too. Failures are retried as `retry::Policy` says.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use wasmtime::component::Resource;

use crate::guest::ocipush::core::registry::{
    BlobDescriptor, Compression, HostLayerUpload, UploadProgress,
};
use crate::guest::HostState;
use crate::gzip::ParallelGzip;
use crate::interrupt::Runtime;
use crate::registry::{Api, Confirmed};
use crate::retry;

/// Guest chunks (1-4 MiB each) queued for the encoder: bounds memory, and lets the guest hash
/// the next chunk while this one compresses.
const INPUT_QUEUE: usize = 2;
/// The chunk size used unless `--chunk-size` says otherwise: large enough that a chunk's
/// round trip costs little, small enough to hold in memory while it is in flight.
pub const DEFAULT_CHUNK_SIZE: u64 = 16 << 20;
/// The smallest chunk the sender falls back to when a registry refuses chunks as too large.
pub const MIN_CHUNK_SIZE: u64 = 256 << 10;
/// A chunk refused as too large is sent again at most this large, then halved: GHCR refuses
/// chunks above 4 MiB.
const REFUSED_CHUNK_FALLBACK: u64 = 4 << 20;
/// A chunk's body is handed to the HTTP client in pieces of this size, so `sent` moves smoothly.
const SEND_PIECE: usize = 256 << 10;

/// One layer upload in flight.
pub struct LayerUpload {
    input: Option<std_mpsc::SyncSender<Vec<u8>>>,
    encoder: Option<JoinHandle<Result<Encoded, String>>>,
    sender: Option<tokio::task::JoinHandle<Result<(), String>>>,
    written: u64,
    /// Encoded bytes the registry acknowledged, plus those of the chunk in flight.
    sent: Arc<AtomicU64>,
    /// The upload session's current URL: each answer names the next one.
    session: Arc<Mutex<Url>>,
    api: Api,
    confirmed: Confirmed,
    rt: Runtime,
    committed: bool,
}

/// The digest and size of the encoded bytes.
pub(crate) struct Encoded {
    pub(crate) digest: String,
    pub(crate) size: u64,
}

/// How much of the layer the encoder has written to its file, and whether it is done.
#[derive(Clone, Default)]
pub(crate) struct Produced {
    pub(crate) len: u64,
    /// `Some` once the encoder stopped: `Ok` when the layer is complete.
    pub(crate) end: Option<Result<(), String>>,
}

impl LayerUpload {
    /// Opens an upload session and starts its encoder and its sender.
    pub fn start(
        rt: &Runtime,
        api: Api,
        confirmed: Confirmed,
        compression: Compression,
        level: u32,
        chunk_size: u64,
    ) -> Result<Self, String> {
        let location = rt.block_on(api.start_upload())??;
        let spool = tempfile::tempfile()
            .map(Arc::new)
            .map_err(|e| format!("creating a temporary file to spool a layer: {e}"))?;
        let (input, chunks) = std_mpsc::sync_channel::<Vec<u8>>(INPUT_QUEUE);
        let (produced, progress) = watch::channel(Produced::default());
        let encoder = {
            let spool = spool.clone();
            std::thread::spawn(move || encode(chunks, &spool, produced, compression, level))
        };
        let sent = Arc::new(AtomicU64::new(0));
        let session = Arc::new(Mutex::new(location));
        let sender = rt.spawn(
            Sender {
                api: api.clone(),
                spool,
                session: session.clone(),
                sent: sent.clone(),
                chunk_size: chunk_size.max(MIN_CHUNK_SIZE),
            }
            .run(progress),
        );
        Ok(Self {
            input: Some(input),
            encoder: Some(encoder),
            sender: Some(sender),
            written: 0,
            sent,
            session,
            api,
            confirmed,
            rt: rt.clone(),
            committed: false,
        })
    }

    fn write(&mut self, data: Vec<u8>) -> Result<(), String> {
        if self.sender.as_ref().is_some_and(|s| s.is_finished()) {
            // The sender gave up (the registry refused, or retries ran out): say why now
            // rather than after the rest of the layer.
            return Err(self.failure());
        }
        let len = data.len() as u64;
        let input = self
            .input
            .as_ref()
            .ok_or("the layer upload already ended")?;
        if input.send(data).is_err() {
            return Err(self.failure());
        }
        self.written += len;
        Ok(())
    }

    /// The first real error of a failed upload: the sender's, else the encoder's.
    fn failure(&mut self) -> String {
        self.input = None;
        let sent = match self
            .sender
            .as_mut()
            .map(|s| self.rt.block_on(s))
            .transpose()
        {
            Ok(sent) => sent,
            // The sender stays, for dropping the upload to stop it.
            Err(interrupted) => return interrupted.into(),
        };
        self.sender = None;
        let encoded = self.encoder.take().map(|e| {
            e.join()
                .unwrap_or_else(|_| Err("the layer encoder panicked".into()))
        });
        match (sent, encoded) {
            (Some(Ok(Err(e))), _) => e,
            (_, Some(Err(e))) => e,
            _ => format!("the upload to registry {} ended early", self.api.registry),
        }
    }

    fn finish(&mut self) -> Result<BlobDescriptor, String> {
        self.input = None; // ends the encoder's input
        let encoder = self
            .encoder
            .take()
            .ok_or("the layer upload already ended")?;
        let encoded = match encoder.join() {
            Ok(Ok(encoded)) => encoded,
            Ok(Err(_)) | Err(_) => return Err(self.failure()),
        };
        let sender = self
            .sender
            .as_mut()
            .ok_or("the layer upload already ended")?;
        // On a signal the sender stays, for dropping the upload to stop it.
        let sent = self.rt.block_on(sender)?;
        self.sender = None;
        match sent {
            Ok(result) => result?,
            Err(e) => {
                return Err(format!(
                    "the upload to registry {} was interrupted: {e}",
                    self.api.registry
                ))
            }
        }
        let location = self.session.lock().unwrap().clone();
        self.rt.block_on(self.api.commit_upload(
            location,
            &encoded.digest,
            encoded.size,
            Vec::new(),
        ))??;
        self.committed = true;
        self.confirmed
            .lock()
            .unwrap()
            .insert(encoded.digest.clone());
        tracing::debug!(digest = %encoded.digest, size = encoded.size, "layer committed");
        Ok(BlobDescriptor {
            digest: encoded.digest,
            size: encoded.size,
        })
    }
}

impl Drop for LayerUpload {
    /// An upload dropped before its commit is cancelled, so the registry can free it.
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        self.input = None;
        if let Some(sender) = self.sender.take() {
            sender.abort();
        }
        let location = self.session.lock().unwrap().clone();
        self.api.cancel_upload(&self.rt, location);
    }
}

/// Uploads the spool in chunks as the encoder fills it, until every byte is acknowledged.
struct Sender {
    api: Api,
    spool: Arc<File>,
    session: Arc<Mutex<Url>>,
    sent: Arc<AtomicU64>,
    chunk_size: u64,
}

/// What became of one chunk.
enum Chunk {
    /// The registry took it; the session continues at this URL.
    Taken(Url),
    /// The registry refused it as too large (413, or 416 which may also mean the offsets differ).
    TooLarge(StatusCode),
    /// Worth retrying: a lost connection, 408, 429 or 5xx (with the registry's Retry-After).
    Failed(String, Option<Duration>),
    /// Refused for good.
    Refused(String),
}

impl Sender {
    async fn run(mut self, mut produced: watch::Receiver<Produced>) -> Result<(), String> {
        let what = format!("uploading a layer to {}", self.api.name);
        let mut offset = 0u64; // bytes the registry holds
        let mut failures = 0u32; // since the last chunk the registry took
        loop {
            let want = offset + self.chunk_size;
            let state = produced
                .wait_for(|p| p.len >= want || p.end.is_some())
                .await
                .map_err(|_| "the layer encoder stopped".to_string())?
                .clone();
            if let Some(Err(e)) = state.end {
                return Err(e);
            }
            if state.end.is_some() && state.len == offset {
                return Ok(()); // everything is in the registry: ready to commit
            }
            let end = state.len.min(want);
            let location = self.session.lock().unwrap().clone();
            let refused_size = match self.patch(location, offset, end).await {
                Chunk::Taken(next) => {
                    *self.session.lock().unwrap() = next;
                    offset = end;
                    self.sent.store(offset, Ordering::Relaxed);
                    failures = 0;
                    continue;
                }
                Chunk::Refused(message) => return Err(message),
                Chunk::TooLarge(status) => Some(status),
                Chunk::Failed(reason, retry_after) => {
                    failures += 1;
                    let policy = &self.api.policy;
                    if !policy.wait(&what, failures, &reason, retry_after).await {
                        return Err(retry::gave_up(&reason, policy.retries));
                    }
                    None
                }
            };
            // Where is the registry now? Resume from there, or start over in a new session.
            let held = self.resync(&what, state.len).await?;
            if let Some(status) = refused_size {
                if held == offset || status == StatusCode::PAYLOAD_TOO_LARGE {
                    self.smaller_chunks(status, end - offset)?;
                }
            }
            offset = held;
            self.sent.store(offset, Ordering::Relaxed);
        }
    }

    /// Sends `offset..end` of the spool as one chunk.
    async fn patch(&self, location: Url, offset: u64, end: u64) -> Chunk {
        let mut bytes = vec![0u8; (end - offset) as usize];
        if let Err(e) = self.spool.read_exact_at(&mut bytes, offset) {
            return Chunk::Refused(format!("reading a layer back from its spool: {e}"));
        }
        let bytes = Bytes::from(bytes);
        let sent = self.sent.clone();
        let pieces: Vec<io::Result<Bytes>> = (0..bytes.len())
            .step_by(SEND_PIECE)
            .map(|at| Ok(bytes.slice(at..(at + SEND_PIECE).min(bytes.len()))))
            .collect();
        // Counted as the HTTP client takes each piece to write it to the socket.
        let body = futures_util::stream::iter(pieces).inspect(move |piece| {
            if let Ok(piece) = piece {
                sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
        });
        let request = self
            .api
            .request(Method::PATCH, location)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_RANGE, format!("{offset}-{}", end - 1))
            .header(CONTENT_LENGTH, end - offset)
            .body(reqwest::Body::wrap_stream(body));
        let what = format!("uploading a layer to {}", self.api.name);
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Chunk::Failed(self.api.transport_error(&what, &e), None),
        };
        match response.status() {
            StatusCode::ACCEPTED => match self.api.location(&response) {
                Ok(next) => Chunk::Taken(next),
                Err(e) => Chunk::Refused(e),
            },
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::RANGE_NOT_SATISFIABLE => {
                Chunk::TooLarge(response.status())
            }
            StatusCode::UNAUTHORIZED if self.api.renews_tokens() => {
                match self.api.renew_token().await {
                    Ok(()) => Chunk::Failed(
                        "the registry refused the token (renewed it)".into(),
                        Some(Duration::ZERO),
                    ),
                    Err(e) => Chunk::Refused(e),
                }
            }
            status if retry::retryable(status) => {
                let after = retry::retry_after(&response);
                Chunk::Failed(self.api.refusal(&what, response).await, after)
            }
            _ => Chunk::Refused(self.api.refusal(&what, response).await),
        }
    }

    /// Asks the registry how much of the upload it holds (`GET` the session: `Range: 0-N`) and
    /// returns that offset; when the session is gone, opens a new one and returns 0.
    async fn resync(&self, what: &str, produced: u64) -> Result<u64, String> {
        let location = self.session.lock().unwrap().clone();
        let response = self
            .api
            .send_retrying(what, || self.api.request(Method::GET, location.clone()))
            .await?;
        if response.status() == StatusCode::NO_CONTENT || response.status() == StatusCode::OK {
            let held = response
                .headers()
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(upload_range_end);
            if let Some(held) = held.filter(|h| *h <= produced) {
                if let Some(next) = response
                    .headers()
                    .get(LOCATION)
                    .is_some()
                    .then(|| self.api.location(&response))
                {
                    *self.session.lock().unwrap() = next?;
                }
                tracing::debug!(held, "resuming the upload where the registry is");
                return Ok(held);
            }
        }
        // The registry lost the session (distribution drops one that saw a partial chunk):
        // start the layer over in a new session; the spool still holds every byte.
        let _ = self.api.request(Method::DELETE, location).send().await;
        let next = self.api.start_upload().await?;
        *self.session.lock().unwrap() = next;
        self.api.policy.notices.upload(&format!(
            "registry {} lost the upload session of a layer: starting it over",
            self.api.registry
        ));
        Ok(0)
    }

    /// After a chunk of `size` bytes was refused with `status`: smaller chunks from now on.
    fn smaller_chunks(&mut self, status: StatusCode, size: u64) -> Result<(), String> {
        if size <= MIN_CHUNK_SIZE {
            return Err(format!(
                "registry {} refused a chunk of {size} bytes ({status}), the smallest ocipush sends",
                self.api.registry
            ));
        }
        self.chunk_size = if size > REFUSED_CHUNK_FALLBACK {
            REFUSED_CHUNK_FALLBACK
        } else {
            (size / 2).max(MIN_CHUNK_SIZE)
        };
        self.api.policy.notices.upload(&format!(
            "registry {} refused a chunk of {} ({status}): sending chunks of {}",
            self.api.registry,
            indicatif::HumanBytes(size),
            indicatif::HumanBytes(self.chunk_size)
        ));
        Ok(())
    }
}

/// How many bytes an upload status `Range: 0-N` says the registry holds: N + 1. Distribution
/// answers `0-0` for an empty upload as well as for one byte; it counts as empty (a byte sent
/// twice is caught by the digest the registry checks on commit).
fn upload_range_end(value: &str) -> Option<u64> {
    let value = value.trim().trim_start_matches("bytes=");
    let (start, end) = value.split_once('-')?;
    if start.trim() != "0" {
        return None;
    }
    match end.trim() {
        "0" | "-1" | "" => Some(0),
        end => end.parse::<u64>().ok().map(|e| e + 1),
    }
}

/// Runs on its own thread: compresses what the guest writes (on several threads where the
/// encoding allows), hashes the encoded bytes and appends them to `spool` (an upload's spool,
/// or a layout's layer file), telling `produced` how far it is.
pub(crate) fn encode(
    chunks: std_mpsc::Receiver<Vec<u8>>,
    spool: &File,
    produced: watch::Sender<Produced>,
    compression: Compression,
    level: u32,
) -> Result<Encoded, String> {
    let mut out = Spooler {
        spool,
        produced: &produced,
        hasher: Sha256::new(),
        size: 0,
    };
    let result = encode_into(chunks, &mut out, compression, level);
    let encoded = result.map(|()| Encoded {
        digest: format!("sha256:{}", hex::encode(out.hasher.finalize())),
        size: out.size,
    });
    produced.send_modify(|p| p.end = Some(encoded.as_ref().map(|_| ()).map_err(Clone::clone)));
    encoded
}

fn encode_into(
    chunks: std_mpsc::Receiver<Vec<u8>>,
    out: &mut impl Write,
    compression: Compression,
    level: u32,
) -> Result<(), String> {
    let failed = |e: io::Error| format!("spooling a layer to a temporary file: {e}");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    match compression {
        Compression::Gzip => {
            let mut gz =
                ParallelGzip::new(level, threads, |piece| out.write_all(&piece)).map_err(failed)?;
            for chunk in chunks {
                gz.write(&chunk).map_err(failed)?;
            }
            gz.finish().map_err(failed)?;
        }
        Compression::Zstd => {
            let mut zstd = zstd_encoder(out, level, threads).map_err(failed)?;
            for chunk in chunks {
                zstd.write_all(&chunk).map_err(failed)?;
            }
            zstd.finish().map_err(failed)?;
        }
        Compression::None => {
            for chunk in chunks {
                out.write_all(&chunk).map_err(failed)?;
            }
        }
    }
    Ok(())
}

/// A zstd stream compressed by `threads` workers. zstd's multi-threaded output depends on its
/// parameters, not on how many workers run them.
fn zstd_encoder<W: Write>(
    out: W,
    level: u32,
    threads: usize,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(out, level as i32)?;
    encoder.multithread(threads as u32)?;
    encoder.include_checksum(false)?;
    Ok(encoder)
}

/// Hashes encoded bytes, appends them to the spool and tells the sender how many there are.
struct Spooler<'a> {
    spool: &'a File,
    produced: &'a watch::Sender<Produced>,
    hasher: Sha256,
    size: u64,
}

impl Write for Spooler<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.spool.write_all_at(buf, self.size)?;
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        let len = self.size;
        self.produced.send_modify(|p| p.len = len);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl HostLayerUpload for HostState {
    fn write(
        &mut self,
        upload: Resource<LayerUpload>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let upload = self.table.get_mut(&upload)?;
        Ok(crate::guest::timed(&mut self.waits.upload, || {
            upload.write(data)
        }))
    }

    fn progress(&mut self, upload: Resource<LayerUpload>) -> wasmtime::Result<UploadProgress> {
        let upload = self.table.get(&upload)?;
        Ok(UploadProgress {
            written: upload.written,
            sent: upload.sent.load(Ordering::Relaxed),
        })
    }

    fn finish(
        &mut self,
        upload: Resource<LayerUpload>,
    ) -> wasmtime::Result<Result<BlobDescriptor, String>> {
        let upload = self.table.get_mut(&upload)?;
        Ok(crate::guest::timed(&mut self.waits.finish, || {
            upload.finish()
        }))
    }

    fn drop(&mut self, upload: Resource<LayerUpload>) -> wasmtime::Result<()> {
        self.table.delete(upload)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn encoded(compression: Compression, level: u32, chunks: &[&[u8]]) -> (Vec<u8>, Encoded) {
        let (input, rx) = std_mpsc::sync_channel(chunks.len() + 1);
        for chunk in chunks {
            input.send(chunk.to_vec()).unwrap();
        }
        drop(input);
        let spool = tempfile::tempfile().unwrap();
        let (produced, watched) = watch::channel(Produced::default());
        let encoded = encode(rx, &spool, produced, compression, level).unwrap();
        let state = watched.borrow().clone();
        assert_eq!(state.len, encoded.size, "the sender is told every byte");
        assert!(
            matches!(state.end, Some(Ok(()))),
            "and that the layer is complete"
        );
        let mut bytes = vec![0; encoded.size as usize];
        spool.read_exact_at(&mut bytes, 0).unwrap();
        (bytes, encoded)
    }

    #[test]
    fn upload_status_ranges_count_held_bytes() {
        assert_eq!(upload_range_end("0-1048575"), Some(1 << 20));
        assert_eq!(upload_range_end("bytes=0-9"), Some(10));
        assert_eq!(upload_range_end("0-0"), Some(0));
        assert_eq!(upload_range_end("0--1"), Some(0));
        assert_eq!(upload_range_end("5-9"), None);
        assert_eq!(upload_range_end("junk"), None);
    }

    fn data() -> Vec<u8> {
        (0..3_000_000u32)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    #[test]
    fn gzip_is_deterministic_and_hashes_what_it_sends() {
        let data = data();
        let (a, encoded_a) = encoded(
            Compression::Gzip,
            6,
            &[&data[..1_000_000], &data[1_000_000..]],
        );
        let (b, encoded_b) = encoded(
            Compression::Gzip,
            6,
            &[
                &data[..333_333],
                &data[333_333..1_500_001],
                &data[1_500_001..],
            ],
        );
        assert!(a == b, "chunking must not change the output");
        assert_eq!(encoded_a.digest, encoded_b.digest);
        assert_eq!(encoded_a.size, a.len() as u64);
        assert_eq!(
            encoded_a.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&a)))
        );
        assert_eq!(&a[4..8], &[0, 0, 0, 0], "zero mtime");
        let mut round = Vec::new();
        flate2::read::MultiGzDecoder::new(&a[..])
            .read_to_end(&mut round)
            .unwrap();
        assert!(round == data);
        let (fast, _) = encoded(Compression::Gzip, 1, &[&data]);
        assert!(fast != a, "the level is part of the encoding");
    }

    #[test]
    fn zstd_does_not_depend_on_worker_count() {
        let data = data();
        let mut outputs = Vec::new();
        for threads in [1, 3] {
            let mut out = Vec::new();
            let mut encoder = zstd_encoder(&mut out, 3, threads).unwrap();
            encoder.write_all(&data).unwrap();
            encoder.finish().unwrap();
            outputs.push(out);
        }
        assert!(
            outputs[0] == outputs[1],
            "same bytes whatever the worker count"
        );
        let (z, encoded_z) = encoded(Compression::Zstd, 3, &[&data[..7], &data[7..]]);
        assert_eq!(encoded_z.size, z.len() as u64);
        assert!(zstd::decode_all(&z[..]).unwrap() == data);
    }

    #[test]
    fn none_sends_the_bytes_as_they_are() {
        let (raw, encoded_raw) = encoded(Compression::None, 0, &[b"abc", b"def"]);
        assert_eq!(raw, b"abcdef");
        assert_eq!(
            encoded_raw.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(b"abcdef")))
        );
    }
}
