//! A layer upload's spool: the encoded bytes the registry has not acknowledged yet, so that a
//! failed chunk can be sent again, on temporary disk bounded by a fixed window.
//!
//! It is a ring: an anonymous temporary file of `capacity` bytes in which layer offset `x` lives
//! at `x % capacity`. The sender releases what the registry took (a `202` to a `PATCH`), and the
//! encoder writes only into released room, waiting for it otherwise: that wait is the
//! backpressure that reaches the guest's `write`. A ring rather than punching holes in a file
//! that grows to the whole layer (`fallocate(FALLOC_FL_PUNCH_HOLE)`): it needs nothing of the
//! filesystem beyond plain reads and writes (hole punching is not offered everywhere a temporary
//! directory may be), and the file itself never grows past the bound, so there is no case where
//! the bound silently does not hold.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::encode::Store;

/// How often a writer waiting for room looks whether a signal asked the push to stop.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// A bounded window over a layer's encoded bytes.
pub struct Spool {
    file: File,
    capacity: u64,
    window: Mutex<Window>,
    room: Condvar,
}

/// What the spool still holds, and whether it still takes bytes.
struct Window {
    /// The layer offset of the first byte the spool holds: every byte before it was released.
    start: u64,
    /// Set once the upload ended: a writer waiting for room gives up.
    closed: bool,
}

impl Spool {
    /// A spool holding at most `capacity` bytes, on an anonymous temporary file (gone when the
    /// spool is).
    pub fn new(capacity: u64) -> io::Result<Self> {
        Ok(Self {
            file: tempfile::tempfile()?,
            capacity: capacity.max(1),
            window: Mutex::new(Window {
                start: 0,
                closed: false,
            }),
            room: Condvar::new(),
        })
    }

    /// The layer offset of the first byte the spool still holds.
    pub fn start(&self) -> u64 {
        self.window.lock().unwrap().start
    }

    /// Gives up every byte before layer offset `to`: the registry holds them.
    pub fn release(&self, to: u64) {
        let mut window = self.window.lock().unwrap();
        if to > window.start {
            window.start = to;
            self.room.notify_all();
        }
    }

    /// Takes no more bytes: a writer waiting for room fails.
    pub fn close(&self) {
        self.window.lock().unwrap().closed = true;
        self.room.notify_all();
    }

    /// The pieces of the file that layer offsets `at..at + len` occupy (`len` at most the
    /// capacity): one, or two where the range wraps around the end.
    fn pieces(&self, at: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let place = at % self.capacity;
        let first = (self.capacity - place).min(len as u64) as usize;
        [(place, 0, first), (0, first, len - first)]
            .into_iter()
            .filter(|&(_, _, n)| n > 0)
    }
}

impl Store for Spool {
    /// Writes as much of `buf` at layer offset `at` as the window has room for, waiting while
    /// it has none (until the sender releases some, the upload ends or a signal arrives).
    fn put(&self, buf: &[u8], at: u64) -> io::Result<usize> {
        let mut window = self.window.lock().unwrap();
        let room = loop {
            if window.closed {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the layer's upload ended",
                ));
            }
            let room = (window.start + self.capacity).saturating_sub(at);
            if room > 0 {
                break room;
            }
            if let Some(signal) = crate::interrupt::received() {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    format!("interrupted by {signal}"),
                ));
            }
            window = self.room.wait_timeout(window, SIGNAL_POLL).unwrap().0;
        };
        drop(window);
        let n = (buf.len() as u64).min(room) as usize;
        for (place, from, len) in self.pieces(at, n) {
            self.file.write_all_at(&buf[from..from + len], place)?;
        }
        Ok(n)
    }

    /// Reads layer offsets `at..at + buf.len()`, which must still be held.
    fn get(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let start = self.start();
        if at < start || buf.len() as u64 > self.capacity {
            return Err(io::Error::other(format!(
                "bytes {at}..{} of the layer are not in its spool, which holds from {start} on, at most {} bytes",
                at + buf.len() as u64,
                self.capacity
            )));
        }
        let len = buf.len();
        for (place, from, n) in self.pieces(at, len) {
            self.file.read_exact_at(&mut buf[from..from + n], place)?;
        }
        Ok(())
    }

    /// Nothing to make durable: the spool is gone with the upload.
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Bytes written across the end of the ring read back as written; the file never grows past
    /// the capacity, and a writer with no room waits until the reader releases some.
    #[test]
    fn the_ring_wraps_waits_for_room_and_stays_within_its_capacity() {
        let spool = Arc::new(Spool::new(10).unwrap());
        let data: Vec<u8> = (0..40u8).collect();
        assert_eq!(spool.put(&data[..7], 0).unwrap(), 7);
        assert_eq!(
            spool.put(&data[7..], 7).unwrap(),
            3,
            "only as far as the room goes"
        );
        spool.release(6);
        assert_eq!(spool.put(&data[10..], 10).unwrap(), 6, "wrapping around");
        let mut back = vec![0u8; 10];
        spool.get(&mut back, 6).unwrap();
        assert_eq!(back, &data[6..16]);
        assert!(
            spool.get(&mut back[..2], 4).is_err(),
            "released bytes are gone"
        );
        assert_eq!(spool.file.metadata().unwrap().len(), 10);

        let writer = {
            let (spool, data) = (spool.clone(), data.clone());
            std::thread::spawn(move || spool.put(&data[16..], 16))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!writer.is_finished(), "no room: the writer waits");
        spool.release(9);
        assert_eq!(writer.join().unwrap().unwrap(), 3);
        let mut back = vec![0u8; 10];
        spool.get(&mut back, 9).unwrap();
        assert_eq!(back, &data[9..19]);
        assert_eq!(spool.file.metadata().unwrap().len(), 10);
    }

    #[test]
    fn a_closed_spool_fails_a_writer_waiting_for_room() {
        let spool = Arc::new(Spool::new(4).unwrap());
        spool.put(b"abcd", 0).unwrap();
        let writer = {
            let spool = spool.clone();
            std::thread::spawn(move || spool.put(b"e", 4))
        };
        spool.close();
        let err = writer.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
