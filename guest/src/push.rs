//! The push pipeline, top to bottom, over the capabilities the host offers.

use std::io::Read;

use anyhow::{bail, Context, Result};

use crate::digest::{Digest, Hasher};
use crate::manifest::{oci_manifest, OCI_MANIFEST};
use crate::progress::{Event, LayerBytes, LayerRef, ProgressSink};
use crate::reference::Target;
use crate::save::{read_export, Blob, ImageSummary, Layer, LayerEntry};

/// Bytes per crossing of the component boundary: large, because each crossing copies.
pub const CHUNK_SIZE: usize = 4 << 20;

/// Where images come from: the Docker daemon.
pub trait ImageSource {
    type Export: Read;
    /// What the daemon knows about an image before exporting it.
    fn inspect(&mut self, image: &str) -> Result<ImageSummary>;
    /// The image's `docker save` stream.
    fn export(&mut self, image: &str) -> Result<Self::Export>;
}

/// Registries the host can reach.
pub trait Registries {
    type Repository: BlobSink;
    fn open(&mut self, target: &Target) -> Result<Self::Repository>;
}

/// A repository in a registry: it takes blobs, then a manifest that names them.
pub trait BlobSink {
    type Upload: LayerUpload;
    /// The size of a blob if the registry has it.
    fn blob_size(&mut self, digest: &Digest) -> Result<Option<u64>>;
    /// Uploads a blob held whole.
    fn put_blob(&mut self, digest: &Digest, data: &[u8]) -> Result<()>;
    /// Starts streaming a layer, which the host gzips.
    fn start_layer(&mut self) -> Result<Self::Upload>;
    /// Writes a manifest under `reference`; returns the digest the registry stored.
    fn put_manifest(&mut self, reference: &str, media_type: &str, body: &[u8]) -> Result<Digest>;
}

/// A layer being streamed to a registry. Dropping it unfinished cancels it.
pub trait LayerUpload {
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Encoded bytes sent to the registry so far.
    fn sent(&self) -> u64;
    /// Completes and commits the upload.
    fn finish(self) -> Result<Blob>;
}

/// What to push and where.
pub struct PushRequest {
    pub source: String,
    pub destination: String,
}

/// What was published.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    pub digest: Digest,
    pub repository: String,
}

/// Pushes one image from `source` to the registry `request.destination` names.
pub fn push(
    request: &PushRequest,
    source: &mut impl ImageSource,
    registries: &mut impl Registries,
    progress: &mut impl ProgressSink,
) -> Result<Pushed> {
    let target = Target::parse(&request.destination)?;
    // The daemon gives the diff IDs up front, so each layer can be verified as it streams.
    let image = source.inspect(&request.source)?;
    let mut repository = registries.open(&target)?;
    progress.report(Event::Started {
        image: request.source.clone(),
        layers: image.diff_ids.len() as u32,
        total_bytes: image.size,
    });

    // Layers: one pass over the export; each is hashed while it uploads and committed only if
    // its diff ID is one the image lists. Export by ID, so inspect and export see one image.
    let export = source.export(image.id.as_str())?;
    let saved = read_export(export, &image, |entry| {
        upload_layer(&mut repository, entry, &image, progress)
    })?;

    // The config, byte for byte as the daemon wrote it, so its digest stays the image ID.
    let config = Blob {
        digest: Digest::of(&saved.config),
        size: saved.config.len() as u64,
    };
    if repository.blob_size(&config.digest)? != Some(config.size) {
        repository.put_blob(&config.digest, &saved.config)?;
    }
    progress.report(Event::ConfigDone(config.digest.clone()));

    // The manifest, last: every blob it names is in the registry now.
    let manifest = oci_manifest(&saved, &config)?;
    let digest = repository.put_manifest(&target.tag, OCI_MANIFEST, &manifest)?;
    if digest != Digest::of(&manifest) {
        bail!(
            "registry {} stored the manifest as {digest}, which is not the digest of what was sent",
            target.registry
        );
    }
    progress.report(Event::ManifestDone {
        reference: target.tag.clone(),
        digest: digest.clone(),
    });
    Ok(Pushed {
        digest,
        repository: target.repository_url(),
    })
}

/// Streams one layer to the registry, hashing it on the way, and commits it only once its diff
/// ID proves to be one the image lists; otherwise the upload is dropped, which cancels it.
fn upload_layer(
    repository: &mut impl BlobSink,
    entry: LayerEntry<'_>,
    image: &ImageSummary,
    progress: &mut impl ProgressSink,
) -> Result<Layer> {
    let layer = LayerRef {
        index: entry.index,
        entry: entry.name.clone(),
    };
    let bytes = |done, sent| LayerBytes {
        layer: layer.clone(),
        done,
        sent,
        total: entry.size,
    };
    progress.report(Event::LayerStarted(bytes(0, 0)));
    let mut upload = repository.start_layer()?;
    let mut hasher = Hasher::default();
    let mut chunk = vec![0u8; CHUNK_SIZE.min(entry.size as usize).max(1)];
    let mut done = 0u64;
    loop {
        let n = fill(entry.data, &mut chunk)
            .with_context(|| format!("reading layer {} from the export", entry.name))?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        upload.write(&chunk[..n])?;
        done += n as u64;
        progress.report(Event::LayerProgress(bytes(done, upload.sent())));
    }
    let diff_id = hasher.finish();
    if !image.diff_ids.contains(&diff_id) {
        bail!(
            "digest mismatch: layer {} of the export hashes to {diff_id}, which is not a diff ID of image {}",
            entry.name,
            image.id
        );
    }
    let blob = upload.finish()?;
    progress.report(Event::LayerDone {
        layer,
        diff_id: diff_id.clone(),
        digest: blob.digest.clone(),
        size: blob.size,
    });
    Ok(Layer { diff_id, blob })
}

/// Reads until `buf` is full or the input ends, so crossings stay large.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
