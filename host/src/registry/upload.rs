//! A layer uploaded while the guest is still reading it. The guest's chunks are encoded on a
//! native thread (`encode::Pipeline`) into a spool (`spool::Spool`: a ring on an anonymous
//! temporary file, gone when the upload ends), and an async sender uploads the spool in chunks
//! (`PATCH` with `Content-Range`) as they fill, so export, hashing, compression and upload
//! overlap. The spool holds only what the registry has not acknowledged, at most
//! `SPOOL_CHUNKS` chunks: the encoder (and through it the guest's `write`) waits for the
//! registry beyond that, so a layer in flight costs that much temporary disk, whatever its size.
//!
//! The spool is what makes a layer survive an imperfect registry: after a failed chunk the
//! sender asks the registry how much it holds (the upload status, `Range`) and resumes from
//! there; a chunk the registry refuses as too large (413, or 416 while the offsets agree) is sent
//! again in smaller chunks, and every later one too. Failures are retried as `retry::Policy`
//! says. If the registry lost the session, the layer starts over in a new one while the spool
//! still holds its first byte; once that is released, the upload is lost (`Error::Lost`), and
//! the guest, told so in its own error case, streams the layer again.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::watch;

use super::client::Renew;
use super::error::{Error, Transport};
use super::repository::{Api, Repository};
use super::retry::{self, Decision, Outcome};
use super::spool::Spool;
use crate::confirmed::Confirmed;
use crate::encode::{self, Codec, Encoded, Pipeline, Produced, Store};
use crate::interrupt::Runtime;

/// The chunk size used unless `--chunk-size` says otherwise: large enough that a chunk's
/// round trip costs little. A chunk is read from the spool as it is sent, never held whole.
pub const DEFAULT_CHUNK_SIZE: u64 = 16 << 20;
/// How many chunks of encoded bytes the registry has not acknowledged a layer's spool holds at
/// most: the chunk in flight and the one the encoder fills meanwhile. With one, the encoder
/// would stand still for every chunk's round trip.
pub const SPOOL_CHUNKS: u64 = 2;
/// The smallest chunk the sender falls back to when a registry refuses chunks as too large.
pub const MIN_CHUNK_SIZE: u64 = 256 << 10;
/// A chunk refused as too large is sent again at most this large, then halved: GHCR refuses
/// chunks above 4 MiB.
const REFUSED_CHUNK_FALLBACK: u64 = 4 << 20;
/// A chunk's body is handed to the HTTP client in pieces of this size, so `sent` moves smoothly.
const SEND_PIECE: usize = 256 << 10;

/// The first failure of any layer upload of one repository, which every later call on its
/// uploads answers with: with several layers in flight, the one that failed ends the push
/// whichever layer the guest is busy with.
#[derive(Clone, Default)]
pub struct Failed(Arc<Mutex<Option<Arc<Error>>>>);

impl Failed {
    /// The recorded failure, if there is one.
    pub fn check(&self) -> Result<(), Error> {
        match &*self.0.lock().unwrap() {
            Some(first) => Err(Error::Shared(first.clone())),
            None => Ok(()),
        }
    }

    /// Records `error` unless an earlier failure is recorded; returns it, shared. A lost upload
    /// is not recorded: it ends only itself, and the guest streams that layer again.
    fn record(&self, error: Error) -> Error {
        if matches!(error, Error::Lost { .. }) {
            return error;
        }
        let mut slot = self.0.lock().unwrap();
        let first = slot.get_or_insert_with(|| Arc::new(error)).clone();
        Error::Shared(first)
    }
}

/// One layer upload in flight.
pub struct LayerUpload {
    pipeline: Pipeline,
    /// What the registry has not acknowledged yet: closed when the upload is dropped, so the
    /// encoder does not wait for room that will never come.
    spool: Arc<Spool>,
    /// Whether the bytes are stored as they are, unhashed: then `close` must say their digest.
    unhashed: bool,
    sender: Option<tokio::task::JoinHandle<Result<(), Error>>>,
    /// Once closed: the sending of what is left and the commit, in the background.
    commit: Option<tokio::task::JoinHandle<Result<Encoded, Error>>>,
    /// Encoded bytes the registry acknowledged, plus those of the chunk in flight.
    sent: Arc<AtomicU64>,
    /// The upload session's current URL: each answer names the next one.
    session: Arc<Mutex<Url>>,
    api: Api,
    confirmed: Confirmed,
    failed: Failed,
    rt: Runtime,
    /// Set by the commit, wherever it runs: a committed upload is not cancelled.
    committed: Arc<AtomicBool>,
}

impl LayerUpload {
    /// Opens an upload session and starts its encoder and its sender.
    pub fn start(
        rt: &Runtime,
        repository: &Repository,
        codec: Codec,
        chunk_size: u64,
    ) -> Result<Self, Error> {
        repository.failed.check()?;
        let api = repository.api.clone();
        let location = rt.block_on(api.start_upload())??;
        let chunk_size = chunk_size.max(MIN_CHUNK_SIZE);
        let spool = Spool::new(chunk_size * SPOOL_CHUNKS)
            .map(Arc::new)
            .map_err(|error| Error::Spool {
                doing: "creating a temporary file to spool a layer",
                error,
            })?;
        // Bytes stored as they are were hashed by the guest, which says their digest at
        // `close`; the registry checks it on commit.
        let pipeline = match codec {
            Codec::None => Pipeline::unhashed(spool.clone()),
            codec => Pipeline::start(spool.clone(), codec, None),
        };
        let spool_for_drop = spool.clone();
        let sent = Arc::new(AtomicU64::new(0));
        let session = Arc::new(Mutex::new(location));
        let sender = rt.spawn(
            Sender {
                api: api.clone(),
                spool,
                session: session.clone(),
                sent: sent.clone(),
                chunk_size,
            }
            .run(pipeline.produced()),
        );
        Ok(Self {
            pipeline,
            spool: spool_for_drop,
            unhashed: codec == Codec::None,
            sender: Some(sender),
            commit: None,
            sent,
            session,
            api,
            confirmed: repository.confirmed.clone(),
            failed: repository.failed.clone(),
            rt: rt.clone(),
            committed: Arc::default(),
        })
    }

    pub fn write(&mut self, data: Vec<u8>) -> Result<(), Error> {
        self.failed.check()?;
        if self.sender.as_ref().is_some_and(|s| s.is_finished()) {
            // The sender gave up (the registry refused, or retries ran out): say why now
            // rather than after the rest of the layer.
            let failure = self.failure(None);
            return Err(self.failed.record(failure));
        }
        match self.pipeline.write(data) {
            Ok(()) => Ok(()),
            Err(encode::Closed::Ended) => Err(Error::Ended),
            Err(encode::Closed::Stopped) => {
                let failure = self.failure(None);
                Err(self.failed.record(failure))
            }
        }
    }

    /// Uncompressed bytes the guest wrote, and encoded bytes sent.
    pub fn counts(&self) -> (u64, u64) {
        (self.pipeline.counts().0, self.sent.load(Ordering::Relaxed))
    }

    /// The first real error of a failed upload: the sender's, else the encoder's (`encoded`,
    /// when the caller has it already).
    fn failure(&mut self, encoded: Option<Result<Encoded, encode::Error>>) -> Error {
        let encoded = encoded.or_else(|| self.pipeline.finish());
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
        match (sent, encoded) {
            (Some(Ok(Err(Error::EncoderStopped))), Some(Err(e))) => Error::Encode(e),
            (Some(Ok(Err(e))), _) => e,
            (_, Some(Err(e))) => Error::Encode(e),
            _ => Error::EndedEarly {
                registry: self.api.client.registry.clone(),
            },
        }
    }

    /// Ends the layer and waits for the encoder only: returns what it encoded, while the rest
    /// is sent and the blob committed in the background (`finish` waits for that). `written`
    /// is the digest the guest computed of the bytes it wrote: a layer stored as it is takes
    /// it for its own (without it, the spool is hashed).
    pub fn close(&mut self, written: Option<&str>) -> Result<Encoded, Error> {
        self.failed.check()?;
        if let Some(written) = written {
            if !is_sha256(written) {
                return Err(Error::NotADigest(written.to_string()));
            }
            self.pipeline.claim(written.to_string());
        }
        let encoded = match self.pipeline.finish() {
            None => return Err(Error::Ended),
            Some(Ok(encoded)) => encoded,
            Some(Err(e)) => {
                let failure = self.failure(Some(Err(e)));
                return Err(self.failed.record(failure));
            }
        };
        let sender = self.sender.take().ok_or(Error::Ended)?;
        let (api, session) = (self.api.clone(), self.session.clone());
        let (confirmed, failed, committed) = (
            self.confirmed.clone(),
            self.failed.clone(),
            self.committed.clone(),
        );
        let described = encoded.clone();
        self.commit = Some(self.rt.spawn(async move {
            let done = async {
                match sender.await {
                    Ok(sent) => sent?,
                    Err(e) => {
                        return Err(Error::SenderDied {
                            registry: api.client.registry.clone(),
                            cause: e.to_string(),
                        })
                    }
                }
                let location = session.lock().unwrap().clone();
                api.commit_upload(location, &encoded.digest, encoded.size, Vec::new())
                    .await?;
                committed.store(true, Ordering::Relaxed);
                confirmed.insert(encoded.digest.clone());
                tracing::debug!(digest = %encoded.digest, size = encoded.size, "layer committed");
                Ok(encoded)
            };
            done.await.map_err(|e| failed.record(e))
        }));
        Ok(described)
    }

    /// Ends the layer (unless `close` did), waits for the registry to hold every byte, and
    /// commits it under the digest of the encoded bytes; a committed layer is confirmed.
    pub fn finish(&mut self) -> Result<Encoded, Error> {
        if self.commit.is_none() {
            // The spool no longer holds what the registry took: bytes stored as they are can
            // only be named by the digest the guest says.
            self.failed.check()?;
            if self.unhashed {
                return Err(Error::Unclaimed);
            }
            self.close(None)?;
        }
        let commit = self.commit.as_mut().ok_or(Error::Ended)?;
        // On a signal the commit stays, for dropping the upload to stop it.
        let committed = self.rt.block_on(commit)?;
        self.commit = None;
        match committed {
            Ok(result) => result,
            Err(e) => Err(self.failed.record(Error::SenderDied {
                registry: self.api.client.registry.clone(),
                cause: e.to_string(),
            })),
        }
    }
}

impl Drop for LayerUpload {
    /// An upload dropped before its commit is cancelled, so the registry can free it.
    fn drop(&mut self) {
        self.spool.close();
        if let Some(sender) = self.sender.take() {
            sender.abort();
        }
        if let Some(commit) = self.commit.take() {
            commit.abort();
        }
        if self.committed.load(Ordering::Relaxed) {
            return;
        }
        let location = self.session.lock().unwrap().clone();
        self.api.cancel_upload(&self.rt, location);
    }
}

/// Uploads the spool in chunks as the encoder fills it, until every byte is acknowledged,
/// releasing from the spool what the registry took.
struct Sender {
    api: Api,
    spool: Arc<Spool>,
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
    Failed(Error, Option<Duration>),
    /// Refused for good.
    Refused(Error),
}

impl Drop for Sender {
    /// However the sender ends (done, failed, aborted), the encoder stops waiting on it.
    fn drop(&mut self) {
        self.spool.close();
    }
}

impl Sender {
    async fn run(mut self, mut produced: watch::Receiver<Produced>) -> Result<(), Error> {
        let what = format!("uploading a layer to {}", self.api.name);
        let mut offset = 0u64; // bytes the registry holds
        let mut failures = 0u32; // since the last chunk the registry took
        loop {
            let want = offset + self.chunk_size;
            let state = produced
                .wait_for(|p| p.len >= want || p.end.is_some())
                .await
                .map_err(|_| Error::EncoderStopped)?
                .clone();
            if state.end == Some(false) {
                return Err(Error::EncoderStopped);
            }
            if state.end.is_some() && state.len == offset {
                return Ok(()); // everything is in the registry: ready to commit
            }
            let end = state.len.min(want);
            let location = self.session.lock().unwrap().clone();
            let refused_size = match self.patch(location, offset, end).await {
                Chunk::Taken(next) => {
                    *self.session.lock().unwrap() = next;
                    self.spool.release(end);
                    offset = end;
                    self.sent.store(offset, Ordering::Relaxed);
                    failures = 0;
                    continue;
                }
                Chunk::Refused(message) => return Err(message),
                Chunk::TooLarge(status) => Some(status),
                Chunk::Failed(reason, retry_after) => {
                    failures += 1;
                    let policy = &self.api.client.policy;
                    let notice = reason.to_string();
                    if !policy.wait(&what, failures, &notice, retry_after).await {
                        return Err(Error::GaveUp {
                            last: Box::new(reason),
                            retries: policy.retries,
                        });
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
            self.spool.release(held);
            offset = held;
            self.sent.store(offset, Ordering::Relaxed);
        }
    }

    /// Sends `offset..end` of the spool as one chunk, read from the spool piece by piece as
    /// the HTTP client takes them: a chunk never sits in memory whole.
    async fn patch(&self, location: Url, offset: u64, end: u64) -> Chunk {
        let (spool, sent) = (self.spool.clone(), self.sent.clone());
        let unreadable: Arc<Mutex<Option<io::Error>>> = Arc::default();
        let failed_read = unreadable.clone();
        // Counted as the HTTP client takes each piece to write it to the socket.
        let body = futures_util::stream::unfold(offset, move |at| {
            let (spool, sent, failed_read) = (spool.clone(), sent.clone(), failed_read.clone());
            async move {
                let len = end.saturating_sub(at).min(SEND_PIECE as u64) as usize;
                if len == 0 {
                    return None;
                }
                let mut piece = vec![0u8; len];
                if let Err(e) = spool.get(&mut piece, at) {
                    let kept = io::Error::new(e.kind(), e.to_string());
                    *failed_read.lock().unwrap() = Some(kept);
                    return Some((Err(e), end));
                }
                sent.fetch_add(len as u64, Ordering::Relaxed);
                Some((Ok(Bytes::from(piece)), at + len as u64))
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
        // Decided as every request is (`retry::decide`); when to give up is `run`'s call, as a
        // failed chunk is resumed from where the registry is rather than sent again.
        let retries = self.api.client.policy.retries;
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                if let Some(error) = unreadable.lock().unwrap().take() {
                    return Chunk::Refused(Error::Spool {
                        doing: "reading a layer back from its spool",
                        error,
                    });
                }
                let failure = self.api.client.transport(&what, &e);
                let retryable = !Transport::of(&e).certificate;
                return match retry::decide(Outcome::Failed { retryable }, 0, retries, false) {
                    Decision::Retry => Chunk::Failed(failure, None),
                    _ => Chunk::Refused(failure),
                };
            }
        };
        let status = response.status();
        if status == StatusCode::ACCEPTED {
            return match self.api.client.location(&response) {
                Ok(next) => Chunk::Taken(next),
                Err(e) => Chunk::Refused(e),
            };
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::RANGE_NOT_SATISFIABLE {
            return Chunk::TooLarge(status);
        }
        match retry::decide(Outcome::Answered(status), 0, retries, self.api.renews()) {
            Decision::Renew => match self.api.renew().await {
                Ok(()) => Chunk::Failed(Error::TokenRenewed, Some(Duration::ZERO)),
                Err(e) => Chunk::Refused(e),
            },
            Decision::Retry => {
                let after = retry::retry_after(&response);
                Chunk::Failed(self.api.refusal(&what, response).await, after)
            }
            _ => Chunk::Refused(self.api.refusal(&what, response).await),
        }
    }

    /// Asks the registry how much of the upload it holds (`GET` the session: `Range: 0-N`) and
    /// returns that offset, if the spool still holds what follows it; when the session is gone,
    /// opens a new one and returns 0 if the spool still holds the layer's first byte, else the
    /// upload is lost.
    async fn resync(&self, what: &str, produced: u64) -> Result<u64, Error> {
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
            let kept = self.spool.start();
            if let Some(held) = held.filter(|h| (kept..=produced).contains(h)) {
                if let Some(next) = response
                    .headers()
                    .get(LOCATION)
                    .is_some()
                    .then(|| self.api.client.location(&response))
                {
                    *self.session.lock().unwrap() = next?;
                }
                tracing::debug!(held, "resuming the upload where the registry is");
                return Ok(held);
            }
        }
        // The registry lost the session (distribution drops one that saw a partial chunk): start
        // the layer over in a new session if the spool still holds every byte; else only the
        // guest, which streams the layer again, can.
        let _ = self.api.request(Method::DELETE, location).send().await;
        let released = self.spool.start();
        if released > 0 {
            self.api.client.policy.notices.upload(&format!(
                "registry {} lost the upload session of a layer after taking {released} bytes, which are no longer spooled: the layer has to be exported again",
                self.api.client.registry
            ));
            return Err(Error::Lost {
                registry: self.api.client.registry.clone(),
                taken: released,
            });
        }
        let next = self.api.start_upload().await?;
        *self.session.lock().unwrap() = next;
        self.api.client.policy.notices.upload(&format!(
            "registry {} lost the upload session of a layer: starting it over",
            self.api.client.registry
        ));
        Ok(0)
    }

    /// After a chunk of `size` bytes was refused with `status`: smaller chunks from now on.
    fn smaller_chunks(&mut self, status: StatusCode, size: u64) -> Result<(), Error> {
        if size <= MIN_CHUNK_SIZE {
            return Err(Error::ChunkRefused {
                registry: self.api.client.registry.clone(),
                size,
                status,
            });
        }
        self.chunk_size = if size > REFUSED_CHUNK_FALLBACK {
            REFUSED_CHUNK_FALLBACK
        } else {
            (size / 2).max(MIN_CHUNK_SIZE)
        };
        self.api.client.policy.notices.upload(&format!(
            "registry {} refused a chunk of {} ({status}): sending chunks of {}",
            self.api.client.registry,
            indicatif::HumanBytes(size),
            indicatif::HumanBytes(self.chunk_size)
        ));
        Ok(())
    }
}

/// Whether `digest` is `sha256:` and 64 lower-case hex digits, as a commit's `?digest=` takes.
fn is_sha256(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_digests_are_taken_from_the_guest() {
        assert!(is_sha256(&format!("sha256:{}", "0a".repeat(32))));
        assert!(!is_sha256(&format!("sha256:{}", "0A".repeat(32))));
        assert!(!is_sha256(&format!("sha256:{}", "0a".repeat(31))));
        assert!(!is_sha256(&format!("sha512:{}", "0a".repeat(32))));
        assert!(!is_sha256(&format!("sha256:{}&x=1", "0a".repeat(30))));
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
}
