//! The capabilities the guest works through, as traits: where images come from, where they go,
//! what is remembered between runs, and where progress is reported. The host lends each one
//! (`component.rs` implements them over the WIT imports); the tests lend in-memory ones.

use std::io::{self, Cursor, Read};

use anyhow::Result;

use crate::digest::Digest;
use crate::model::{Blob, Encoding, ImageSummary, Layer, Named, SavedImage, SourceIndex, Within};
use crate::progress::Event;
use crate::reference::Destination;

/// Bytes per crossing of the component boundary: large, because each crossing copies.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Where images come from: the Docker daemon, a `docker save` tarball, a layout directory.
pub trait ImageSource {
    type Export: SkipRead;
    /// What the source knows about an image before exporting it.
    fn inspect(&mut self, image: &str) -> Result<ImageSummary>;
    /// The image's `docker save` stream.
    fn export(&mut self, image: &str) -> Result<Self::Export>;
    /// The stream one platform of a multi-platform image is read from: by default the whole
    /// image's export, of which the reader takes only that platform's blobs.
    fn export_platform(&mut self, within: &Within) -> Result<Self::Export> {
        self.export(within.index.as_str())
    }
    /// The multi-platform image the last `inspect` found, when the source read its index then
    /// (tarballs and layouts, read at random); `None` leaves it to a look over the export.
    fn inspected_index(&mut self) -> Option<SourceIndex> {
        None
    }
}

/// An export stream, read or passed over. A layer the destination holds need not be hashed, so
/// its bytes are passed over: by the host where it can (`export-stream.skip`), so that they
/// never cross into the guest; by reading and discarding them where nothing better exists.
pub trait SkipRead: Read {
    /// Passes over the next `n` bytes; fails if the stream ends first.
    fn skip(&mut self, n: u64) -> io::Result<()> {
        skip_by_reading(self, n)
    }
}

/// Passes over `n` bytes of `input` by reading them; fails if it ends first.
pub fn skip_by_reading<R: Read + ?Sized>(input: &mut R, n: u64) -> io::Result<()> {
    let read = io::copy(&mut input.take(n), &mut io::sink())?;
    if read < n {
        return Err(ended_while_skipping(n, n - read));
    }
    Ok(())
}

/// The error of a stream that ended `left` bytes short of the `n` it was to pass over.
pub fn ended_while_skipping(n: u64, left: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the export stream ended {left} bytes short of the {n} bytes of an entry it passed over"),
    )
}

impl SkipRead for &[u8] {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let len = self.len() as u64;
        if n > len {
            *self = &[];
            return Err(ended_while_skipping(n, n - len));
        }
        *self = &self[n as usize..];
        Ok(())
    }
}

impl<T: AsRef<[u8]>> SkipRead for Cursor<T> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let len = self.get_ref().as_ref().len() as u64;
        let to = self.position().saturating_add(n);
        self.set_position(to.min(len));
        if to > len {
            return Err(ended_while_skipping(n, to - len));
        }
        Ok(())
    }
}

impl<S: SkipRead + ?Sized> SkipRead for Box<S> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        (**self).skip(n)
    }
}

/// A source whose exports are read as they pass: each layer handed to `publish`, the whole
/// checked against the summary. The export reader (`save.rs`) gives every `ImageSource` this.
pub trait ReadExport: ImageSource {
    /// Exports `image` by its ID and reads the export.
    fn read_export(
        &mut self,
        image: &ImageSummary,
        publish: &mut impl Publish,
    ) -> Result<SavedImage>;
    /// What `image`'s ID names: for an index (a multi-platform image), from what `inspect`
    /// read, or else from a look over its export that keeps only the small files. Uploads
    /// nothing.
    fn survey(&mut self, image: &ImageSummary) -> Result<Named>;
}

/// What the caller does with layers as they pass in the export stream. Each entry is read whole,
/// or not at all (`Publish::layer` may pass over one it recognises as a layer the destination
/// holds; the reader then checks its place against the config, and `Unverified` says it was
/// not the layer it was taken for).
pub trait Publish {
    /// An uncompressed layer tar: stored (encoded) only if it hashes to a diff ID of the image.
    fn layer(&mut self, entry: LayerEntry<'_>) -> Result<Layer>;
    /// A blob the export holds already encoded (a compressed layer): stored as it is, only if
    /// it hashes to `digest`, the digest that names it.
    fn blob(&mut self, entry: LayerEntry<'_>, digest: &Digest) -> Result<Blob>;
}

/// A layer tar as it passes in the export stream, for the caller to consume whole.
pub struct LayerEntry<'a> {
    /// 1-based position among the layer entries of the stream.
    pub index: u32,
    /// The tar entry's path.
    pub name: String,
    /// Its exact size in bytes.
    pub size: u64,
    /// The diff ID its name states, when it states one of the image's (Docker >= 25 and
    /// podman name layers by it; Docker <= 24 by a chain of IDs).
    pub named: Option<Digest>,
    /// Its bytes.
    pub data: &'a mut dyn Read,
}

/// A layer entry that was passed over unread, taken for the layer its name or size promised,
/// and that the export's `manifest.json` then placed where the config lists another layer: its
/// bytes are gone, so the export is read again, every entry hashed.
#[derive(Debug)]
pub struct Unverified {
    /// The entry's path.
    pub entry: String,
    /// Its place in the image, from 1.
    pub position: usize,
    /// The layer it was taken for.
    pub taken_for: Digest,
    /// The layer the config lists there.
    pub expected: Digest,
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "export entry {} was passed over as layer {}, but it is layer {} of the image, which is {}",
            self.entry, self.taken_for, self.position, self.expected
        )
    }
}

impl std::error::Error for Unverified {}

/// Where images go: registries the host can reach, and OCI image layout directories.
pub trait Destinations {
    type Repository: BlobSink;
    fn open(&mut self, destination: &Destination) -> Result<Self::Repository>;
}

/// A repository in a registry, or a layout directory: it takes blobs, then a manifest that
/// names them.
pub trait BlobSink {
    type Upload: LayerUpload;
    /// The size of a blob if the registry has it.
    fn blob_size(&mut self, digest: &Digest) -> Result<Option<u64>>;
    /// Links a blob from repository `source` of the same registry; false if declined.
    fn mount_blob(&mut self, digest: &Digest, source: &str) -> Result<bool>;
    /// Uploads a blob held whole.
    fn put_blob(&mut self, digest: &Digest, data: &[u8]) -> Result<()>;
    /// Starts streaming a layer, which the host encodes.
    fn start_layer(&mut self, encoding: &Encoding) -> Result<Self::Upload>;
    /// Writes a manifest under `reference`; returns the digest the registry stored.
    fn put_manifest(&mut self, reference: &str, media_type: &str, body: &[u8]) -> Result<Digest>;
    /// The bytes of the manifest under `reference`, if the registry has it.
    fn get_manifest(&mut self, reference: &str) -> Result<Option<Vec<u8>>>;
}

/// The registry lost a layer's upload, and holds none of it: the host keeps only what the
/// registry has not acknowledged, so it could not start the layer over. The layer is streamed
/// again (a second export); the other uploads are not affected.
#[derive(Debug)]
pub struct UploadLost(pub String);

impl std::fmt::Display for UploadLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UploadLost {}

/// A layer being streamed to a registry. Dropping it unfinished cancels it. Any call may fail
/// with `UploadLost`.
pub trait LayerUpload {
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Encoded bytes sent to the registry so far.
    fn sent(&self) -> u64;
    /// Ends the stream: the encoded blob, which the host goes on sending. It is not in the
    /// destination until `finish` says so. `written` is the digest of the bytes written (the
    /// blob's own when they are stored as they are: the host need not hash them again).
    fn close(&mut self, written: &Digest) -> Result<Blob>;
    /// Completes (closing it if need be) and commits the upload.
    fn finish(self) -> Result<Blob>;
}

/// A key-value store that survives the process.
pub trait Cache {
    fn get(&mut self, key: &str) -> Option<Vec<u8>>;
    fn put(&mut self, key: &str, value: &[u8]);
}

/// Where progress events go.
pub trait ProgressSink {
    fn report(&mut self, event: Event);
}

/// Random access to a file the host opened (a `docker save` tarball).
pub trait RandomAccess {
    /// The file's size in bytes.
    fn size(&self) -> Result<u64>;
    /// Up to `max` bytes from `offset` (the host may return fewer); none only at or past the
    /// end of the file.
    fn read_at(&self, offset: u64, max: usize) -> Result<Vec<u8>>;
}

/// Reads of one layout directory the host opened.
pub trait LayoutFiles {
    /// The bytes of `index.json`.
    fn index(&self) -> Result<Vec<u8>>;
    /// Up to `max` bytes of blob `digest` from `offset` (the host may return fewer); none only
    /// at or past its end.
    fn read_blob(&self, digest: &Digest, offset: u64, max: usize) -> Result<Vec<u8>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_cursors_pass_over_bytes_and_fail_past_the_end() {
        let mut slice: &[u8] = b"0123456789";
        slice.skip(4).unwrap();
        assert_eq!(slice, b"456789");
        assert_eq!(
            slice.skip(7).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut cursor = Cursor::new(b"0123456789".to_vec());
        cursor.skip(9).unwrap();
        assert_eq!(cursor.position(), 9);
        assert!(cursor.skip(2).is_err());
        let mut read = io::Read::chain(&b"01"[..], &b"234"[..]);
        skip_by_reading(&mut read, 3).unwrap();
        let err = skip_by_reading(&mut read, 5).unwrap_err();
        assert!(err.to_string().contains("3 bytes short of the 5"), "{err}");
    }
}
