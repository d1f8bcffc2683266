//! Parallel, deterministic gzip: the input is cut into fixed 1 MiB blocks, each compressed on a
//! worker thread by libdeflate into a gzip member of its own, and the members are written in
//! order. A gzip file may hold several members (RFC 1952 section 2.2); every reader that pulls
//! images (Go's gzip in docker, containerd and containers/image; zlib's gunzip) joins them.
//! libdeflate at level 1 compresses about as well as zlib at 6, two to three times as fast.
//! The output depends only on the bytes and the level: never on the number of threads, on
//! timing, or on how the caller splits its writes.

use std::collections::BTreeMap;
use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

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
        let level = CompressionLvl::new(level as i32).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid gzip level {level}"),
            )
        })?;
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(threads);
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, results) = mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let queue = queue.clone();
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    let mut compressor = Compressor::new(level);
                    let mut prober =
                        Compressor::new(CompressionLvl::new(1).expect("level 1 exists"));
                    let mut storer =
                        Compressor::new(CompressionLvl::new(0).expect("level 0 stores"));
                    // Reused for every block: a fresh one would be zeroed (and faulted in)
                    // each time.
                    let mut scratch = Vec::new();
                    loop {
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let compressible = compresses(&mut prober, &job.data, &mut scratch);
                        let chosen = if compressible {
                            &mut compressor
                        } else {
                            &mut storer
                        };
                        let member = gzip_member(chosen, &job.data, &mut scratch);
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

    #[test]
    fn round_trips_and_ignores_threads_and_write_sizes() {
        let data = sample(3 * BLOCK + 12_345);
        let one = gzip(&data, &[], 1, 6);
        let many = gzip(&data, &[1, 777_777, BLOCK, 2 * BLOCK + 5], 4, 6);
        assert!(
            one == many,
            "output must not depend on threads or write sizes"
        );
        assert!(gunzip(&one) == data);
        assert!(
            one.len() < data.len() / 2,
            "compresses: {} of {}",
            one.len(),
            data.len()
        );
        assert_eq!(&one[..4], &[0x1f, 0x8b, 8, 0], "gzip, deflate, no flags");
        assert_eq!(&one[4..8], &[0, 0, 0, 0], "zero mtime");
        assert!(
            gzip(&data, &[], 2, 1) != one,
            "the level is part of the output"
        );
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
        let gz = gzip(&data, &[], 2, 6);
        assert!(gunzip(&gz) == data);
        // Stored noise costs a few header bytes per 64 KiB; the text after it still compresses.
        assert!(
            gz.len() < noise.len() + 100 + BLOCK / 2,
            "{} bytes",
            gz.len()
        );
        assert!(gz.len() > noise.len(), "noise cannot shrink");
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
            let gz = gzip(&data, &[], 2, 1);
            assert!(gunzip(&gz) == data, "len {}", data.len());
        }
    }
}
