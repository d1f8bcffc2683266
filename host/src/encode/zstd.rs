//! zstd compressed by several threads. zstd's multi-threaded output depends on its parameters,
//! not on how many workers run them, so a layer's digest does not depend on the machine.

use std::io::{self, Write};

/// Uncompressed bytes per zstd job. zstd's own choice at level 3 is 8 MiB, and it keeps
/// about (workers + 2) jobs of input and one compressed job per worker in memory, which made
/// a zstd push take 80 MiB more than a gzip one; 2 MiB jobs (the level's window) cost a
/// fraction of that, and a little ratio where each job starts over.
const JOB_SIZE: u32 = 2 << 20;

/// A zstd stream at `level`, compressed by `threads` workers in jobs of `JOB_SIZE`, without a
/// checksum (the digest checks the bytes).
pub fn encoder<W: Write>(
    out: W,
    level: u32,
    threads: usize,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(out, level as i32)?;
    encoder.multithread(threads as u32)?;
    encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))?;
    encoder.include_checksum(false)?;
    Ok(encoder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_does_not_depend_on_worker_count() {
        let data = crate::encode::tests::data();
        let mut outputs = Vec::new();
        for threads in [1, 3] {
            let mut out = Vec::new();
            let mut encoder = encoder(&mut out, 3, threads).unwrap();
            encoder.write_all(&data).unwrap();
            encoder.finish().unwrap();
            outputs.push(out);
        }
        assert!(
            outputs[0] == outputs[1],
            "same bytes whatever the worker count"
        );
        assert!(zstd::decode_all(&outputs[0][..]).unwrap() == data);
    }
}
