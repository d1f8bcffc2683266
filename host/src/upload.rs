//! A layer streamed to a registry while the guest is still reading it: the guest's chunks are
//! compressed on a native thread and sent in one PATCH whose body is fed as they come, so
//! export, hashing, compression and upload overlap. Nothing touches the disk.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use wasmtime::component::Resource;

use crate::guest::ocipush::core::registry::{
    BlobDescriptor, Compression, HostLayerUpload, UploadProgress,
};
use crate::guest::HostState;
use crate::gzip::ParallelGzip;
use crate::registry::{Api, Confirmed};

/// Guest chunks (1-4 MiB each) queued for the encoder: bounds memory, and lets the guest hash
/// the next chunk while this one compresses.
const INPUT_QUEUE: usize = 2;
/// Encoded bytes are sent in pieces of about this size.
const SEND_PIECE: usize = 256 << 10;
const SEND_QUEUE: usize = 8;
/// One layer upload in flight.
pub struct LayerUpload {
    input: Option<std_mpsc::SyncSender<Vec<u8>>>,
    encoder: Option<JoinHandle<Result<Encoded, String>>>,
    sending: Option<tokio::task::JoinHandle<Result<reqwest::Response, String>>>,
    written: u64,
    sent: Arc<AtomicU64>,
    location: Url,
    api: Api,
    confirmed: Confirmed,
    rt: Handle,
    committed: bool,
}

/// The digest and size of the encoded bytes.
pub(crate) struct Encoded {
    pub(crate) digest: String,
    pub(crate) size: u64,
}

impl LayerUpload {
    /// Opens an upload session and starts its encoder and its streaming PATCH.
    pub fn start(
        rt: &Handle,
        api: Api,
        confirmed: Confirmed,
        compression: Compression,
        level: u32,
    ) -> Result<Self, String> {
        let location = rt.block_on(api.start_upload())?;
        let (input, chunks) = std_mpsc::sync_channel::<Vec<u8>>(INPUT_QUEUE);
        let (pieces, body) = mpsc::channel::<io::Result<Bytes>>(SEND_QUEUE);
        let encoder = std::thread::spawn(move || encode(chunks, pieces, compression, level));

        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        // Counted as the HTTP client takes each piece to write it to the socket.
        let body = futures_util::stream::unfold(body, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        })
        .inspect(move |piece| {
            if let Ok(bytes) = piece {
                counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        });
        let request = api
            .request(Method::PATCH, location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body));
        let patch_api = api.clone();
        let sending = rt.spawn(async move { patch_api.send("uploading a layer", request).await });

        Ok(Self {
            input: Some(input),
            encoder: Some(encoder),
            sending: Some(sending),
            written: 0,
            sent,
            location,
            api,
            confirmed,
            rt: rt.clone(),
            committed: false,
        })
    }

    fn write(&mut self, data: Vec<u8>) -> Result<(), String> {
        let len = data.len() as u64;
        let input = self
            .input
            .as_ref()
            .ok_or("the layer upload already ended")?;
        if input.send(data).is_err() {
            // The encoder stopped: the registry connection failed. Report why.
            return Err(self.failure());
        }
        self.written += len;
        Ok(())
    }

    /// The first real error of a failed upload: the registry's answer if it gave one.
    fn failure(&mut self) -> String {
        self.input = None;
        let encoded = self.encoder.take().map(|e| {
            e.join()
                .unwrap_or_else(|_| Err("the layer encoder panicked".into()))
        });
        let response = self.sending.take().map(|s| self.rt.block_on(s));
        match (response, encoded) {
            (Some(Ok(Err(e))), _) => e,
            (Some(Ok(Ok(response))), _) if !response.status().is_success() => self
                .rt
                .block_on(self.api.refusal("a layer upload", response)),
            // The registry took what it was sent: the encoder is what failed.
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
        let sending = self
            .sending
            .take()
            .ok_or("the layer upload already ended")?;
        let response = match self.rt.block_on(sending) {
            Ok(result) => result?,
            Err(e) => {
                return Err(format!(
                    "the upload to registry {} was interrupted: {e}",
                    self.api.registry
                ))
            }
        };
        if response.status() != StatusCode::ACCEPTED {
            return Err(self
                .rt
                .block_on(self.api.refusal("a layer upload", response)));
        }
        let location = self.api.location(&response)?;
        self.rt.block_on(
            self.api
                .commit_upload(location, &encoded.digest, Vec::new()),
        )?;
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
        if let Some(sending) = self.sending.take() {
            sending.abort();
        }
        let request = self.api.request(Method::DELETE, self.location.clone());
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), request.send()).await });
    }
}

/// Runs on its own thread: compresses what the guest writes (on several threads where the
/// encoding allows), hashes the encoded bytes and feeds them to `pieces` (the PATCH body, or
/// a layout's layer file).
pub(crate) fn encode(
    chunks: std_mpsc::Receiver<Vec<u8>>,
    pieces: mpsc::Sender<io::Result<Bytes>>,
    compression: Compression,
    level: u32,
) -> Result<Encoded, String> {
    let mut out = Forward {
        pieces,
        piece: Vec::with_capacity(SEND_PIECE),
        hasher: Sha256::new(),
        size: 0,
    };
    let closed = |e: io::Error| format!("sending a layer: {e}");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    match compression {
        Compression::Gzip => {
            let mut gz =
                ParallelGzip::new(level, threads, |piece| out.write_all(&piece)).map_err(closed)?;
            for chunk in chunks {
                gz.write(&chunk).map_err(closed)?;
            }
            gz.finish().map_err(closed)?;
        }
        Compression::Zstd => {
            let mut zstd = zstd_encoder(&mut out, level, threads).map_err(closed)?;
            for chunk in chunks {
                zstd.write_all(&chunk).map_err(closed)?;
            }
            zstd.finish().map_err(closed)?;
        }
        Compression::None => {
            for chunk in chunks {
                out.write_all(&chunk).map_err(closed)?;
            }
        }
    }
    out.flush_piece().map_err(closed)?;
    Ok(Encoded {
        digest: format!("sha256:{}", hex::encode(out.hasher.finalize())),
        size: out.size,
    })
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

/// Hashes encoded bytes and passes them on in pieces of `SEND_PIECE`.
struct Forward {
    pieces: mpsc::Sender<io::Result<Bytes>>,
    piece: Vec<u8>,
    hasher: Sha256,
    size: u64,
}

impl Forward {
    fn flush_piece(&mut self) -> io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(SEND_PIECE));
        self.pieces
            .blocking_send(Ok(Bytes::from(piece)))
            .map_err(|_| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the registry connection closed")
            })
    }
}

impl Write for Forward {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        self.piece.extend_from_slice(buf);
        if self.piece.len() >= SEND_PIECE {
            self.flush_piece()?;
        }
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (input, rx) = std_mpsc::sync_channel(chunks.len() + 1);
        let (pieces, mut body) = mpsc::channel(4096);
        for chunk in chunks {
            input.send(chunk.to_vec()).unwrap();
        }
        drop(input);
        let encoded = encode(rx, pieces, compression, level).unwrap();
        let mut bytes = Vec::new();
        rt.block_on(async {
            while let Some(piece) = body.recv().await {
                bytes.extend_from_slice(&piece.unwrap());
            }
        });
        (bytes, encoded)
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
