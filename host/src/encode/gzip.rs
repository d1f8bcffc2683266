//! Parallel, deterministic gzip: the input is cut into fixed 1 MiB blocks, each compressed on a
//! worker thread into a gzip member of its own, and the members are written in order. A gzip
//! file may hold several members (RFC 1952 section 2.2); every reader that pulls images (Go's
//! gzip in docker, containerd and containers/image; zlib's gunzip) joins them.
//! Level 1 (the default) is ISA-L's igzip at its level 1: on the benchmark's JDK, gcc and docs it
//! costs a third of libdeflate's level 1 in CPU for 2% more bytes. Levels 2-9 are libdeflate's.
//! The output depends only on the bytes and the level: never on the number of threads, on
//! timing, or on how the caller splits its writes.

use std::collections::BTreeMap;
use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use isal_sys::igzip_lib as isal;
use libdeflater::{CompressionLvl, Compressor};

/// Uncompressed bytes per block, and so per gzip member.
pub const BLOCK: usize = 1 << 20;
/// How much of a block is test-compressed to tell whether it compresses at all.
const PROBE: usize = 64 << 10;

struct Job {
    seq: u64,
    data: Vec<u8>,
}

/// A gzip stream being written; `out` receives compressed members in order.
pub struct ParallelGzip<W: FnMut(Vec<u8>) -> io::Result<()>> {
    out: W,
    jobs: Option<mpsc::SyncSender<Job>>,
    results: mpsc::Receiver<(u64, io::Result<Vec<u8>>)>,
    workers: Vec<JoinHandle<()>>,
    /// Bytes waiting to fill the current block.
    block: Vec<u8>,
    /// Whether any block was sent: an empty input still makes one (empty) member.
    started: bool,
    next_seq: u64,
    next_out: u64,
    in_flight: usize,
    done: BTreeMap<u64, Vec<u8>>,
}

impl<W: FnMut(Vec<u8>) -> io::Result<()>> ParallelGzip<W> {
    /// Starts a stream compressed at `level` (1-9) by `threads` workers.
    pub fn new(level: u32, threads: usize, out: W) -> io::Result<Self> {
        let level = Level::new(level)?;
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(threads);
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, results) = mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let queue = queue.clone();
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    let mut encoder = Encoder::new(level);
                    // Reused for every block: a fresh one would be zeroed (and faulted in)
                    // each time.
                    let mut scratch = Vec::new();
                    loop {
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let member = encoder.member(&job.data, &mut scratch);
                        if done_tx.send((job.seq, member)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Ok(Self {
            out,
            jobs: Some(jobs),
            results,
            workers,
            block: Vec::with_capacity(BLOCK),
            started: false,
            next_seq: 0,
            next_out: 0,
            in_flight: 0,
            done: BTreeMap::new(),
        })
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let take = data.len().min(BLOCK - self.block.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == BLOCK {
                self.dispatch()?;
            }
        }
        Ok(())
    }

    /// Takes `data` as `write` does, without copying it when it is a whole block of its own
    /// (the guest writes 1 MiB at a time).
    pub fn write_owned(&mut self, data: Vec<u8>) -> io::Result<()> {
        if self.block.is_empty() && data.len() == BLOCK {
            self.block = data;
            return self.dispatch();
        }
        self.write(&data)
    }

    /// Compresses what is left and waits for every member to be written.
    pub fn finish(mut self) -> io::Result<()> {
        if !self.block.is_empty() || !self.started {
            self.dispatch()?;
        }
        self.jobs = None;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        Ok(())
    }

    fn dispatch(&mut self) -> io::Result<()> {
        self.started = true;
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        // Bound the work queued ahead (and so memory: a block in and a member out each): one
        // block per worker and one waiting keep every worker busy.
        while self.in_flight > self.workers.len() {
            self.collect_one()?;
        }
        let job = Job {
            seq: self.next_seq,
            data,
        };
        self.next_seq += 1;
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))?;
        jobs.send(job)
            .map_err(|_| io::Error::other("a gzip worker stopped"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for one compressed block, and writes out every member that is now next in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let (seq, member) = self
            .results
            .recv()
            .map_err(|_| io::Error::other("a gzip worker stopped"))?;
        self.in_flight -= 1;
        self.done.insert(seq, member?);
        while let Some(member) = self.done.remove(&self.next_out) {
            self.next_out += 1;
            (self.out)(member)?;
        }
        Ok(())
    }
}

/// A gzip level, checked once, and the encoder it names.
#[derive(Clone, Copy)]
enum Level {
    /// Level 1: igzip.
    Igzip,
    /// Levels 2-9: libdeflate at that level.
    Libdeflate(CompressionLvl),
}

impl Level {
    fn new(level: u32) -> io::Result<Self> {
        if level == 1 {
            return Ok(Self::Igzip);
        }
        i32::try_from(level)
            .ok()
            .and_then(|level| CompressionLvl::new(level).ok())
            .map(Self::Libdeflate)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid gzip level {level}"),
                )
            })
    }
}

/// One worker's encoder, kept for every block it compresses.
enum Encoder {
    Igzip(Igzip),
    Libdeflate {
        compressor: Compressor,
        prober: Compressor,
        storer: Compressor,
    },
}

impl Encoder {
    fn new(level: Level) -> Self {
        match level {
            Level::Igzip => Self::Igzip(Igzip::new()),
            Level::Libdeflate(level) => Self::Libdeflate {
                compressor: Compressor::new(level),
                prober: Compressor::new(CompressionLvl::new(1).expect("level 1 exists")),
                storer: Compressor::new(CompressionLvl::new(0).expect("level 0 stores")),
            },
        }
    }

    /// `data` as one gzip member, stored when it does not compress.
    fn member(&mut self, data: &[u8], scratch: &mut Vec<u8>) -> io::Result<Vec<u8>> {
        match self {
            Self::Igzip(igzip) => igzip.member(data, scratch),
            Self::Libdeflate {
                compressor,
                prober,
                storer,
            } => {
                let chosen = if compresses(prober, data, scratch) {
                    compressor
                } else {
                    storer
                };
                gzip_member(chosen, data, scratch)
            }
        }
    }
}

/// ISA-L's igzip at level 1, stateless: each block is compressed whole in one call, its match
/// history reset first, so a member depends on its block's bytes alone. igzip stores a block
/// itself when deflating it would not make it smaller, so it needs no probe: random data costs
/// it about as much as the probe and the stored copy cost libdeflate.
struct Igzip {
    /// Boxed: about 90 KiB, most of it history that stateless compression never uses.
    stream: Box<isal::isal_zstream>,
    /// Level 1's hash table and token buffer, reused for every block.
    level_buf: Vec<u8>,
}

impl Igzip {
    fn new() -> Self {
        // SAFETY: isal_zstream is a plain C struct of integers, arrays and pointers, for which
        // all zeroes is a valid value; isal_deflate_stateless_init sets what it needs per block.
        let stream = unsafe { Box::<isal::isal_zstream>::new_zeroed().assume_init() };
        Self {
            stream,
            level_buf: vec![0; isal::ISAL_DEF_LVL1_DEFAULT as usize],
        }
    }

    fn member(&mut self, data: &[u8], scratch: &mut Vec<u8>) -> io::Result<Vec<u8>> {
        let too_big = || io::Error::other(format!("gzip: a block of {} bytes", data.len()));
        // What igzip falls back to: stored blocks of at most 65535 bytes, 5 bytes of header
        // each, in gzip's 10-byte header and 8-byte trailer; with slack.
        let bound = data.len() + 5 * (data.len() / 65535 + 1) + 18 + 64;
        let out = room(scratch, bound);
        let avail_in = u32::try_from(data.len()).map_err(|_| too_big())?;
        let avail_out = u32::try_from(out.len()).map_err(|_| too_big())?;
        let level_buf_size = u32::try_from(self.level_buf.len()).map_err(|_| too_big())?;
        let stream = &mut *self.stream;
        // SAFETY: the stream is a valid isal_zstream; init only writes its fields.
        unsafe { isal::isal_deflate_stateless_init(stream) };
        stream.level = 1;
        stream.level_buf = self.level_buf.as_mut_ptr();
        stream.level_buf_size = level_buf_size;
        stream.gzip_flag = isal::IGZIP_GZIP as u16;
        stream.flush = isal::NO_FLUSH as u16;
        stream.end_of_stream = 1;
        // igzip only reads through next_in.
        stream.next_in = data.as_ptr().cast_mut();
        stream.avail_in = avail_in;
        stream.next_out = out.as_mut_ptr();
        stream.avail_out = avail_out;
        // SAFETY: next_in/avail_in, next_out/avail_out and level_buf/level_buf_size describe
        // live buffers of those sizes, borrowed for this call; igzip keeps no pointer to them
        // past it that is read later (the next block sets them again).
        let code = unsafe { isal::isal_deflate_stateless(stream) };
        if code != isal::COMP_OK as i32 {
            return Err(io::Error::other(format!("igzip: error {code}")));
        }
        let size = stream.total_out as usize;
        Ok(out[..size].to_vec())
    }
}

/// Whether a block is worth deflating. Already-compressed data (archives, jars, media) costs
/// as much CPU to deflate as text and saves nothing, so such blocks are stored; a fast
/// compression of the block's first 64 KiB decides, from the bytes alone.
fn compresses(prober: &mut Compressor, data: &[u8], scratch: &mut Vec<u8>) -> bool {
    if data.len() < PROBE {
        return true;
    }
    let probe = &data[..PROBE];
    let out = room(scratch, prober.deflate_compress_bound(PROBE));
    match prober.deflate_compress(probe, out) {
        Ok(size) => size * 100 < PROBE * 97,
        Err(_) => true,
    }
}

/// `data` as one gzip member, compressed into `scratch` and copied out at its size (a member
/// may wait for earlier ones: it holds only its bytes, not the bound).
fn gzip_member(
    compressor: &mut Compressor,
    data: &[u8],
    scratch: &mut Vec<u8>,
) -> io::Result<Vec<u8>> {
    let out = room(scratch, compressor.gzip_compress_bound(data.len()));
    let size = compressor
        .gzip_compress(data, out)
        .map_err(|e| io::Error::other(format!("gzip: {e:?}")))?;
    Ok(out[..size].to_vec())
}

/// At least `len` bytes of `scratch` to write into, zeroed only when it first grows.
fn room(scratch: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    &mut scratch[..len]
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    fn gzip(data: &[u8], splits: &[usize], threads: usize, level: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut gz = ParallelGzip::new(level, threads, |member| {
            out.extend_from_slice(&member);
            Ok(())
        })
        .unwrap();
        let mut at = 0;
        for &split in splits {
            gz.write(&data[at..split]).unwrap();
            at = split;
        }
        gz.write(&data[at..]).unwrap();
        gz.finish().unwrap();
        out
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut round = Vec::new();
        MultiGzDecoder::new(gz).read_to_end(&mut round).unwrap();
        round
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible text with noise.
        let mut state = 0x2545_f491_u32;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                if i % 7 == 0 {
                    state as u8
                } else {
                    b"the quick brown fox "[i % 20]
                }
            })
            .collect()
    }

    /// Level 1 (igzip) and a libdeflate level alike.
    #[test]
    fn round_trips_and_ignores_threads_and_write_sizes() {
        let data = sample(3 * BLOCK + 12_345);
        for level in [1, 6] {
            let one = gzip(&data, &[], 1, level);
            let many = gzip(&data, &[1, 777_777, BLOCK, 2 * BLOCK + 5], 4, level);
            assert!(
                one == many,
                "level {level}: output must not depend on threads or write sizes"
            );
            assert!(gunzip(&one) == data, "level {level}");
            assert!(
                one.len() < data.len() / 2,
                "level {level} compresses: {} of {}",
                one.len(),
                data.len()
            );
            assert_eq!(&one[..4], &[0x1f, 0x8b, 8, 0], "gzip, deflate, no flags");
            assert_eq!(&one[4..8], &[0, 0, 0, 0], "zero mtime");
        }
        assert!(
            gzip(&data, &[], 2, 1) != gzip(&data, &[], 2, 6),
            "the level is part of the output"
        );
    }

    /// A worker's igzip member depends on its block alone, not on what that worker compressed
    /// before (its hash table is reused).
    #[test]
    fn igzip_members_do_not_depend_on_earlier_blocks() {
        let block = sample(BLOCK);
        let mut scratch = Vec::new();
        let fresh = Igzip::new().member(&block, &mut scratch).unwrap();
        let mut used = Igzip::new();
        used.member(&sample(BLOCK / 3)[..], &mut scratch).unwrap();
        used.member(&block[BLOCK / 2..], &mut scratch).unwrap();
        assert!(used.member(&block, &mut scratch).unwrap() == fresh);
        assert!(gunzip(&fresh) == block);
    }

    #[test]
    fn incompressible_blocks_are_stored_and_round_trip() {
        let mut state = 0x9e37_79b9_u32;
        let noise: Vec<u8> = (0..2 * BLOCK + 99)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 11) as u8
            })
            .collect();
        let mut data = noise.clone();
        data.extend_from_slice(&sample(BLOCK));
        for level in [1, 6] {
            let gz = gzip(&data, &[], 2, level);
            assert!(gunzip(&gz) == data, "level {level}");
            // Stored noise costs a few header bytes per 64 KiB; the text after it still
            // compresses.
            assert!(
                gz.len() < noise.len() + 100 + BLOCK / 2,
                "level {level}: {} bytes",
                gz.len()
            );
            assert!(gz.len() > noise.len(), "noise cannot shrink");
        }
    }

    /// Whole blocks handed over owned, or partial ones, give the same bytes as copied writes.
    #[test]
    fn owned_writes_give_the_same_stream() {
        let data = sample(3 * BLOCK + 12345);
        let mut owned = Vec::new();
        let mut gz = ParallelGzip::new(1, 2, |member| {
            owned.extend_from_slice(&member);
            Ok(())
        })
        .unwrap();
        gz.write_owned(data[..BLOCK].to_vec()).unwrap();
        gz.write_owned(data[BLOCK..BLOCK + 10].to_vec()).unwrap();
        gz.write_owned(data[BLOCK + 10..2 * BLOCK + 10].to_vec())
            .unwrap();
        gz.write_owned(data[2 * BLOCK + 10..].to_vec()).unwrap();
        gz.finish().unwrap();
        assert!(owned == gzip(&data, &[], 2, 1));
        assert!(gunzip(&owned) == data);
    }

    #[test]
    fn empty_and_tiny_inputs() {
        for data in [Vec::new(), b"x".to_vec(), sample(BLOCK), sample(BLOCK + 1)] {
            for level in [1, 6] {
                let gz = gzip(&data, &[], 2, level);
                assert!(gunzip(&gz) == data, "level {level}, len {}", data.len());
            }
        }
    }
}
