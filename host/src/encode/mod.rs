//! How a layer the guest streams is encoded (stored as is, gzip or zstd), in one place for both
//! destinations: the registry upload spools the encoded bytes and sends them, the OCI layout
//! writes them into its blob directory, and the same image gives the same blobs in both.
//!
//! A `Pipeline` is an encoder on a native thread fed by the guest's writes: it compresses (on
//! several threads where the encoding allows), hashes the encoded bytes, appends them to a file
//! and tells whoever waits on `Produced` how far it is. Bytes stored as they are for a registry
//! (`Pipeline::unhashed`) are not hashed here: the guest hashed them, and says their digest
//! (`Pipeline::claim`), which the registry checks on commit.

pub mod gzip;
pub mod zstd;

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use gzip::ParallelGzip;

/// Where an encoder puts the bytes it encodes, at their offsets in the layer: a file (a layout's
/// blob), or a registry upload's spool, which holds only a bounded window of the layer and so
/// takes a write only as far as its room goes, waiting for room first.
pub trait Store: Send + Sync {
    /// Writes the first part of `buf` at offset `at`, after waiting for room if need be: how
    /// many bytes it took, at least one.
    fn put(&self, buf: &[u8], at: u64) -> io::Result<usize>;
    /// Reads exactly `buf.len()` bytes at offset `at`.
    fn get(&self, buf: &mut [u8], at: u64) -> io::Result<()>;
    /// Makes what was written durable.
    fn sync(&self) -> io::Result<()>;
}

impl Store for File {
    fn put(&self, buf: &[u8], at: u64) -> io::Result<usize> {
        self.write_all_at(buf, at)?;
        Ok(buf.len())
    }

    fn get(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.read_exact_at(buf, at)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_all()
    }
}

/// Guest chunks (1-4 MiB each) queued for the encoder: bounds memory, and lets the guest hash
/// the next chunk while this one compresses.
const INPUT_QUEUE: usize = 2;

/// An encoding and its level. Every encoding is deterministic: the same bytes and level always
/// give the same output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Stored as streamed.
    None,
    /// gzip with no name and a zero mtime, in parallel 1 MiB blocks (`gzip`), level 1-9.
    Gzip { level: u32 },
    /// zstd by several threads, level 1-19.
    Zstd { level: u32 },
}

/// The digest and size of the encoded bytes, and what they are.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub digest: String,
    pub size: u64,
    pub encoding: Encoding,
}

/// What a blob's bytes are, for the lines that report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Zstd,
    Uncompressed,
}

impl Encoding {
    /// What `codec` produced from bytes that began with `head`: a blob stored as is (an
    /// export's or a layout's already compressed layer) is named by its own magic number.
    fn of(codec: Codec, head: &[u8]) -> Self {
        match codec {
            Codec::Gzip { .. } => Self::Gzip,
            Codec::Zstd { .. } => Self::Zstd,
            Codec::None if head.starts_with(&[0x1f, 0x8b]) => Self::Gzip,
            Codec::None if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) => Self::Zstd,
            Codec::None => Self::Uncompressed,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Uncompressed => "uncompressed",
        })
    }
}

/// How much of the layer the encoder has written to its file, and whether it is done.
#[derive(Clone, Debug, Default)]
pub struct Produced {
    pub len: u64,
    /// `Some` once the encoder stopped: `true` when the layer is complete.
    pub end: Option<bool>,
}

/// Why encoding a layer failed.
#[derive(Debug)]
pub enum Error {
    /// Writing the encoded bytes to their file.
    Spool(io::Error),
    /// Syncing the finished file to disk.
    Sync {
        path: PathBuf,
        error: io::Error,
    },
    Panicked,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spool(e) => write!(f, "spooling a layer to a temporary file: {e}"),
            Self::Sync { path, error } => write!(f, "writing {}: {error}", path.display()),
            Self::Panicked => f.write_str("the layer encoder panicked"),
        }
    }
}

impl std::error::Error for Error {}

/// Why the guest's bytes could not be handed to the encoder.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// The input was already ended by `finish`.
    Ended,
    /// The encoder stopped, on an error its result tells.
    Stopped,
}

/// An encoder thread and its input.
pub struct Pipeline {
    input: Option<SyncSender<Vec<u8>>>,
    encoder: Option<JoinHandle<Result<Spooled, Error>>>,
    produced: watch::Receiver<Produced>,
    /// Uncompressed bytes the guest has written.
    written: u64,
    /// Where the encoder writes, for hashing it when nobody said its digest.
    file: Arc<dyn Store>,
    /// The digest the guest said the bytes of an unhashed pipeline have.
    claimed: Option<String>,
}

/// What the encoder thread wrote: its digest, unless it was told not to hash.
struct Spooled {
    digest: Option<String>,
    size: u64,
    encoding: Encoding,
}

impl Pipeline {
    /// Starts encoding into `file` (empty) with `codec`, hashing what it writes. With `sync`,
    /// the finished file is synced to disk, and `sync` names it in an error.
    pub fn start(file: Arc<dyn Store>, codec: Codec, sync: Option<PathBuf>) -> Self {
        Self::spawn(file, codec, sync, true)
    }

    /// Starts storing bytes as they are into `file` (empty), without hashing them: their
    /// digest is the one `claim` gives (the guest's, which hashed every byte), else the file
    /// is hashed when the layer ends.
    pub fn unhashed(file: Arc<dyn Store>) -> Self {
        Self::spawn(file, Codec::None, None, false)
    }

    fn spawn(file: Arc<dyn Store>, codec: Codec, sync: Option<PathBuf>, hash: bool) -> Self {
        let (input, chunks) = mpsc::sync_channel::<Vec<u8>>(INPUT_QUEUE);
        let (tell, produced) = watch::channel(Produced::default());
        let spool = file.clone();
        let encoder = std::thread::spawn(move || {
            let encoded = encode(chunks, &*spool, &tell, codec, hash);
            // The layer's buffers, freed on this thread and its workers, go back now.
            crate::memory::release();
            let encoded = encoded?;
            if let Some(path) = sync {
                spool.sync().map_err(|error| Error::Sync { path, error })?;
            }
            Ok(encoded)
        });
        Self {
            input: Some(input),
            encoder: Some(encoder),
            produced,
            written: 0,
            file,
            claimed: None,
        }
    }

    /// Says the digest of the bytes written, for an unhashed pipeline to take as theirs.
    pub fn claim(&mut self, digest: String) {
        self.claimed = Some(digest);
    }

    /// Hands `data` to the encoder, waiting while its queue is full.
    pub fn write(&mut self, data: Vec<u8>) -> Result<(), Closed> {
        let len = data.len() as u64;
        let input = self.input.as_ref().ok_or(Closed::Ended)?;
        input.send(data).map_err(|_| Closed::Stopped)?;
        self.written += len;
        Ok(())
    }

    /// Ends the input and waits for the encoder's result; `None` once it was taken.
    pub fn finish(&mut self) -> Option<Result<Encoded, Error>> {
        self.input = None;
        let encoder = self.encoder.take()?;
        let spooled = encoder.join().unwrap_or(Err(Error::Panicked));
        Some(spooled.and_then(|spooled| {
            let digest = match spooled.digest.or_else(|| self.claimed.take()) {
                Some(digest) => digest,
                None => hash_file(&*self.file, spooled.size).map_err(Error::Spool)?,
            };
            Ok(Encoded {
                digest,
                size: spooled.size,
                encoding: spooled.encoding,
            })
        }))
    }

    /// Where a reader of the file learns how far the encoder is.
    pub fn produced(&self) -> watch::Receiver<Produced> {
        self.produced.clone()
    }

    /// Uncompressed bytes written, and encoded bytes in the file.
    pub fn counts(&self) -> (u64, u64) {
        (self.written, self.produced.borrow().len)
    }
}

impl Drop for Pipeline {
    /// The encoder ends with its input; waited for so that its file is no longer written.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Compresses what arrives on `chunks`, hashes the encoded bytes (if `hash`) and appends them
/// to `file`, telling `produced` how far it is and, at the end, whether it completed.
fn encode(
    chunks: mpsc::Receiver<Vec<u8>>,
    file: &dyn Store,
    produced: &watch::Sender<Produced>,
    codec: Codec,
    hash: bool,
) -> Result<Spooled, Error> {
    let mut out = Spooler {
        file,
        produced,
        hasher: hash.then(Sha256::new),
        size: 0,
        head: Vec::new(),
    };
    let encoded = encode_into(chunks, &mut out, codec)
        .map(|()| Spooled {
            encoding: Encoding::of(codec, &out.head),
            digest: out.hasher.take().map(sha256_name),
            size: out.size,
        })
        .map_err(Error::Spool);
    produced.send_modify(|p| p.end = Some(encoded.is_ok()));
    encoded
}

/// A finished hash as a digest string.
fn sha256_name(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// The digest of the first `size` bytes of `file`, read back in 1 MiB pieces.
fn hash_file(file: &dyn Store, size: u64) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut piece = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(piece.len() as u64) as usize;
        file.get(&mut piece[..n], at)?;
        hasher.update(&piece[..n]);
        at += n as u64;
    }
    Ok(sha256_name(hasher))
}

fn encode_into(
    chunks: mpsc::Receiver<Vec<u8>>,
    out: &mut impl Write,
    codec: Codec,
) -> io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    match codec {
        Codec::Gzip { level } => {
            let mut gz = ParallelGzip::new(level, threads, |piece| out.write_all(&piece))?;
            for chunk in chunks {
                gz.write_owned(chunk)?;
            }
            gz.finish()
        }
        Codec::Zstd { level } => {
            let mut zstd = zstd::encoder(out, level, threads)?;
            for chunk in chunks {
                zstd.write_all(&chunk)?;
            }
            zstd.finish().map(drop)
        }
        Codec::None => {
            for chunk in chunks {
                out.write_all(&chunk)?;
            }
            Ok(())
        }
    }
}

/// Hashes encoded bytes, appends them to the file and says how many there are.
struct Spooler<'a> {
    file: &'a dyn Store,
    produced: &'a watch::Sender<Produced>,
    /// `None` for bytes whose digest the guest says.
    hasher: Option<Sha256>,
    size: u64,
    /// The first bytes, enough for a magic number.
    head: Vec<u8>,
}

/// How many first bytes `Spooler` keeps.
const HEAD: usize = 4;

impl Write for Spooler<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let taken = self.file.put(buf, self.size)?;
        let buf = &buf[..taken];
        let missing = HEAD.saturating_sub(self.head.len()).min(buf.len());
        self.head.extend_from_slice(&buf[..missing]);
        if let Some(hasher) = &mut self.hasher {
            hasher.update(buf);
        }
        self.size += buf.len() as u64;
        let len = self.size;
        self.produced.send_modify(|p| p.len = len);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    pub(crate) fn data() -> Vec<u8> {
        (0..3_000_000u32)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    fn encoded(codec: Codec, chunks: &[&[u8]]) -> (Vec<u8>, Encoded) {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let mut pipeline = Pipeline::start(file.clone(), codec, None);
        let produced = pipeline.produced();
        for chunk in chunks {
            pipeline.write(chunk.to_vec()).unwrap();
        }
        let encoded = pipeline.finish().unwrap().unwrap();
        let state = produced.borrow().clone();
        assert_eq!(state.len, encoded.size, "the reader is told every byte");
        assert_eq!(state.end, Some(true), "and that the layer is complete");
        assert_eq!(pipeline.write(b"more".to_vec()), Err(Closed::Ended));
        let bytes = crate::files::read_at(&file, 0, encoded.size as usize).unwrap();
        (bytes, encoded)
    }

    #[test]
    fn gzip_is_deterministic_and_hashes_what_it_sends() {
        let data = data();
        let gzip = Codec::Gzip { level: 6 };
        let (a, encoded_a) = encoded(gzip, &[&data[..1_000_000], &data[1_000_000..]]);
        let (b, encoded_b) = encoded(
            gzip,
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
        let (fast, _) = encoded(Codec::Gzip { level: 1 }, &[&data]);
        assert!(fast != a, "the level is part of the encoding");
    }

    #[test]
    fn zstd_round_trips_whatever_the_chunking() {
        let data = data();
        let (z, encoded_z) = encoded(Codec::Zstd { level: 3 }, &[&data[..7], &data[7..]]);
        assert_eq!(encoded_z.size, z.len() as u64);
        assert!(::zstd::decode_all(&z[..]).unwrap() == data);
    }

    /// An unhashed pipeline takes the digest it is told, and hashes its file only when told
    /// none.
    #[test]
    fn unhashed_bytes_take_the_claimed_digest_or_are_hashed_at_the_end() {
        let told = format!("sha256:{}", "ab".repeat(32));
        for claim in [Some(told.clone()), None] {
            let file = Arc::new(tempfile::tempfile().unwrap());
            let mut pipeline = Pipeline::unhashed(file);
            pipeline.write(b"abc".to_vec()).unwrap();
            pipeline.write(vec![7u8; 3 << 20]).unwrap();
            if let Some(digest) = &claim {
                pipeline.claim(digest.clone());
            }
            let encoded = pipeline.finish().unwrap().unwrap();
            assert_eq!(encoded.size, 3 + (3 << 20));
            let mut all = b"abc".to_vec();
            all.extend(vec![7u8; 3 << 20]);
            let hashed = format!("sha256:{}", hex::encode(Sha256::digest(&all)));
            assert_eq!(encoded.digest, claim.unwrap_or(hashed));
        }
    }

    #[test]
    fn none_sends_the_bytes_as_they_are() {
        let (raw, encoded_raw) = encoded(Codec::None, &[b"abc", b"def"]);
        assert_eq!(raw, b"abcdef");
        assert_eq!(encoded_raw.encoding, Encoding::Uncompressed);
        // Bytes stored as they are keep their own encoding, split or not.
        let (_, gzip) = encoded(Codec::None, &[&[0x1f], &[0x8b, 8, 0]]);
        assert_eq!(gzip.encoding, Encoding::Gzip);
        let (_, zstd) = encoded(Codec::None, &[&[0x28, 0xb5, 0x2f, 0xfd, 1]]);
        assert_eq!(zstd.encoding.to_string(), "zstd");
        assert_eq!(
            encoded_raw.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(b"abcdef")))
        );
    }
}
