//! Parallel, deterministic gzip, the way pigz does it: the input is cut into fixed blocks, each
//! compressed on a worker thread as raw deflate primed with the previous block's last 32 KiB and
//! ended with a sync flush; the pieces are joined in order under one gzip header and trailer.
//! The output depends only on the bytes, the block size and the level: never on the number of
//! threads, on timing, or on how the caller splits its writes.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Uncompressed bytes per block.
pub const BLOCK: usize = 1 << 20;
/// Deflate's window: how much of the previous block primes the next.
const WINDOW: usize = 32 << 10;
/// gzip header: deflate, no flags, zero mtime, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

struct Job {
    seq: u64,
    dictionary: Vec<u8>,
    data: Vec<u8>,
    last: bool,
}

/// A gzip stream being written; `out` receives compressed pieces in order.
pub struct ParallelGzip<W: FnMut(Vec<u8>) -> io::Result<()>> {
    out: W,
    jobs: Option<mpsc::SyncSender<Job>>,
    results: mpsc::Receiver<(u64, io::Result<Vec<u8>>)>,
    workers: Vec<JoinHandle<()>>,
    /// Bytes waiting to fill the current block.
    block: Vec<u8>,
    /// The tail of the previous block, the next block's dictionary.
    window: Vec<u8>,
    crc: crc32fast::Hasher,
    size: u64,
    next_seq: u64,
    next_out: u64,
    in_flight: usize,
    done: BTreeMap<u64, Vec<u8>>,
}

impl<W: FnMut(Vec<u8>) -> io::Result<()>> ParallelGzip<W> {
    /// Starts a stream compressed at `level` (1-9) by `threads` workers.
    pub fn new(level: u32, threads: usize, mut out: W) -> io::Result<Self> {
        out(HEADER.to_vec())?;
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(threads);
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let (done_tx, results) = mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let queue = queue.clone();
                let done_tx = done_tx.clone();
                std::thread::spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let piece = deflate_block(level, &job.dictionary, &job.data, job.last);
                    if done_tx.send((job.seq, piece)).is_err() {
                        return;
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
            window: Vec::new(),
            crc: crc32fast::Hasher::new(),
            size: 0,
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
                self.dispatch(false)?;
            }
        }
        Ok(())
    }

    /// Compresses what is left and writes the trailer.
    pub fn finish(mut self) -> io::Result<()> {
        self.dispatch(true)?;
        self.jobs = None;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        let mut trailer = Vec::with_capacity(8);
        trailer.extend_from_slice(&self.crc.clone().finalize().to_le_bytes());
        trailer.extend_from_slice(&(self.size as u32).to_le_bytes());
        (self.out)(trailer)
    }

    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        self.crc.update(&data);
        self.size += data.len() as u64;
        // Every block but the last is a full BLOCK, so its tail is the whole window.
        let dictionary = std::mem::replace(
            &mut self.window,
            data[data.len().saturating_sub(WINDOW)..].to_vec(),
        );
        // Bound the work queued ahead: at most two blocks per worker in flight.
        while self.in_flight >= 2 * self.workers.len() {
            self.collect_one()?;
        }
        let job = Job {
            seq: self.next_seq,
            dictionary,
            data,
            last,
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

    /// Waits for one compressed block, and writes out every block that is now next in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let (seq, piece) = self
            .results
            .recv()
            .map_err(|_| io::Error::other("a gzip worker stopped"))?;
        self.in_flight -= 1;
        self.done.insert(seq, piece?);
        while let Some(piece) = self.done.remove(&self.next_out) {
            self.next_out += 1;
            (self.out)(piece)?;
        }
        Ok(())
    }
}

/// One block as raw deflate: primed with `dictionary`, ended with a sync flush (byte-aligned,
/// so blocks concatenate) or, for the last block, with the final deflate block.
fn deflate_block(level: u32, dictionary: &[u8], data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut deflate = Compress::new(Compression::new(level), false);
    if !dictionary.is_empty() {
        deflate
            .set_dictionary(dictionary)
            .map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 1024);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity() / 2 + 1024);
        }
        let before = deflate.total_in();
        let status = deflate
            .compress_vec(input, &mut out, flush)
            .map_err(io::Error::other)?;
        input = &input[(deflate.total_in() - before) as usize..];
        let room_left = out.len() < out.capacity();
        let finished = if last {
            status == Status::StreamEnd
        } else {
            input.is_empty() && room_left
        };
        if finished {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    fn gzip(data: &[u8], splits: &[usize], threads: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut gz = ParallelGzip::new(6, threads, |piece| {
            out.extend_from_slice(&piece);
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

    fn sample(len: usize) -> Vec<u8> {
        // Compressible with long-range repeats across block boundaries, plus noise.
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
        let one = gzip(&data, &[], 1);
        let many = gzip(&data, &[1, 777_777, BLOCK, 2 * BLOCK + 5], 4);
        assert!(
            one == many,
            "output must not depend on threads or write sizes"
        );
        let mut round = Vec::new();
        // A plain (single-member) gzip reader must accept it.
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut round)
            .unwrap();
        assert!(round == data);
        assert!(
            one.len() < data.len() / 2,
            "compresses: {} of {}",
            one.len(),
            data.len()
        );
    }

    #[test]
    fn empty_and_tiny_inputs() {
        for data in [Vec::new(), b"x".to_vec(), sample(WINDOW + 3)] {
            let gz = gzip(&data, &[], 2);
            let mut round = Vec::new();
            MultiGzDecoder::new(&gz[..])
                .read_to_end(&mut round)
                .unwrap();
            assert!(round == data, "len {}", data.len());
        }
    }
}
