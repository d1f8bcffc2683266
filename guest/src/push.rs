//! The push pipeline, top to bottom, over the capabilities the host offers.

use std::io::Read;

use anyhow::{bail, Context, Result};

use crate::cache::{self, Cache};
use crate::digest::{Digest, Hasher};
use crate::manifest::{oci_manifest, Encoding, OCI_MANIFEST};
use crate::progress::{Event, LayerBytes, LayerRef, ProgressSink};
use crate::reference::Destination;
use crate::save::{read_export, Blob, ImageSummary, Layer, LayerEntry};

/// Bytes per crossing of the component boundary: large, because each crossing copies.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Where images come from: the Docker daemon.
pub trait ImageSource {
    type Export: Read;
    /// What the daemon knows about an image before exporting it.
    fn inspect(&mut self, image: &str) -> Result<ImageSummary>;
    /// The image's `docker save` stream.
    fn export(&mut self, image: &str) -> Result<Self::Export>;
}

/// Where images go: registries the host can reach, and OCI image layout directories.
pub trait Registries {
    type Repository: BlobSink;
    fn open(&mut self, destination: &Destination) -> Result<Self::Repository>;
}

/// A repository in a registry, or a layout directory: it takes blobs, then a manifest that
/// names them.
pub trait BlobSink {
    type Upload: LayerUpload;
    /// The size of a blob if the registry has it.
    fn blob_size(&mut self, digest: &Digest) -> Result<Option<u64>>;
    /// Uploads a blob held whole.
    fn put_blob(&mut self, digest: &Digest, data: &[u8]) -> Result<()>;
    /// Starts streaming a layer, which the host encodes.
    fn start_layer(&mut self, encoding: &Encoding) -> Result<Self::Upload>;
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

/// What to push, where, and how to encode its layers.
pub struct PushRequest {
    pub source: String,
    pub destination: String,
    pub encoding: Encoding,
}

/// What was published.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    pub digest: Digest,
    pub repository: String,
}

/// Pushes one image from `source` to the registry or layout `request.destination` names.
pub fn push(
    request: &PushRequest,
    source: &mut impl ImageSource,
    registries: &mut impl Registries,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
) -> Result<Pushed> {
    let destination = Destination::parse(&request.destination)?;
    let encoding = request.encoding;
    // The daemon gives the diff IDs up front: enough to find what the registry already has,
    // and to verify each layer as it streams.
    let image = source.inspect(&request.source)?;
    let mut repository = registries.open(&destination)?;
    progress.report(Event::Started {
        image: request.source.clone(),
        layers: image.diff_ids.len() as u32,
        total_bytes: image.size,
    });

    // Blobs: none to send if the registry holds them all (the export is the slow part);
    // otherwise one pass over the export.
    let (config, layers) =
        match already_published(&image, &encoding, &mut repository, cache, progress)? {
            Some(published) => published,
            None => export_and_upload(&image, &encoding, source, &mut repository, cache, progress)?,
        };

    // The manifest, last: every blob it names is in the registry now.
    let manifest = oci_manifest(&config, &layers, &encoding)?;
    let digest = repository.put_manifest(destination.tag(), OCI_MANIFEST, &manifest)?;
    if digest != Digest::of(&manifest) {
        bail!(
            "{} stored the manifest as {digest}, which is not the digest of what was sent",
            destination.location()
        );
    }
    progress.report(Event::ManifestDone {
        reference: destination.tag().to_string(),
        digest: digest.clone(),
    });
    Ok(Pushed {
        digest,
        repository: destination.location(),
    })
}

/// The config and layers as already in the registry, when the cache names a blob for each
/// and a HEAD finds every one with the size recorded. The blobs are content-addressed and
/// were recorded only after verified uploads, so the manifest is the one a full push writes.
fn already_published(
    image: &ImageSummary,
    encoding: &Encoding,
    repository: &mut impl BlobSink,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
) -> Result<Option<(Blob, Vec<Layer>)>> {
    let Some(config) = cache::image_config(cache, image) else {
        return Ok(None);
    };
    if repository.blob_size(&config.digest)? != Some(config.size) {
        return Ok(None);
    }
    let mut layers = Vec::with_capacity(image.diff_ids.len());
    for diff_id in &image.diff_ids {
        let Some(blob) = cache::layer_blob(cache, diff_id, encoding) else {
            return Ok(None);
        };
        if repository.blob_size(&blob.digest)? != Some(blob.size) {
            return Ok(None);
        }
        layers.push(Layer {
            diff_id: diff_id.clone(),
            blob,
        });
    }
    for (position, layer) in layers.iter().enumerate() {
        progress.report(Event::LayerSkipped {
            position: position as u32 + 1,
            diff_id: layer.diff_id.clone(),
            digest: layer.blob.digest.clone(),
            size: layer.blob.size,
        });
    }
    progress.report(Event::ConfigDone(config.digest.clone()));
    Ok(Some((config, layers)))
}

/// Streams the export once: each layer is hashed while it uploads and committed only if its
/// diff ID is one the image lists; then the config goes up byte for byte as the daemon wrote
/// it, so its digest stays the image ID. What was verified is remembered in the cache.
fn export_and_upload(
    image: &ImageSummary,
    encoding: &Encoding,
    source: &mut impl ImageSource,
    repository: &mut impl BlobSink,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
) -> Result<(Blob, Vec<Layer>)> {
    // Export by ID, so inspect and export see one image.
    let export = source.export(image.id.as_str())?;
    let saved = read_export(export, image, |entry| {
        upload_layer(repository, entry, image, encoding, progress)
    })?;
    let config = Blob {
        digest: Digest::of(&saved.config),
        size: saved.config.len() as u64,
    };
    if repository.blob_size(&config.digest)? != Some(config.size) {
        repository.put_blob(&config.digest, &saved.config)?;
    }
    progress.report(Event::ConfigDone(config.digest.clone()));
    for layer in &saved.layers {
        cache::remember_layer(cache, &layer.diff_id, encoding, &layer.blob);
    }
    cache::remember_image_config(cache, image, &config);
    Ok((config, saved.layers))
}

/// Streams one layer to the registry, hashing it on the way, and commits it only once its diff
/// ID proves to be one the image lists; otherwise the upload is dropped, which cancels it.
fn upload_layer(
    repository: &mut impl BlobSink,
    entry: LayerEntry<'_>,
    image: &ImageSummary,
    encoding: &Encoding,
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
    let mut upload = repository.start_layer(encoding)?;
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
    let Some(position) = image.diff_ids.iter().position(|d| d == &diff_id) else {
        bail!(
            "digest mismatch: layer {} of the export hashes to {diff_id}, which is not a diff ID of image {}",
            entry.name,
            image.id
        );
    };
    let blob = upload.finish()?;
    progress.report(Event::LayerDone {
        layer,
        diff_id: diff_id.clone(),
        position: position as u32 + 1,
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::io::Cursor;
    use std::rc::Rc;

    use super::*;
    use crate::manifest::Compression;
    use crate::testing::{classic_export, fixture, summary, MemoryCache};

    struct Memory {
        export: Vec<u8>,
        image: ImageSummary,
        exports: usize,
    }

    impl Memory {
        fn new(export: Vec<u8>, image: ImageSummary) -> Self {
            Self {
                export,
                image,
                exports: 0,
            }
        }
    }

    impl ImageSource for Memory {
        type Export = Cursor<Vec<u8>>;
        fn inspect(&mut self, _image: &str) -> Result<ImageSummary> {
            Ok(self.image.clone())
        }
        fn export(&mut self, image: &str) -> Result<Self::Export> {
            assert_eq!(image, self.image.id.as_str(), "export by the inspected ID");
            self.exports += 1;
            Ok(Cursor::new(self.export.clone()))
        }
    }

    /// What an in-memory registry saw, in order.
    #[derive(Default)]
    struct Log {
        calls: Vec<String>,
        blobs: HashMap<Digest, Vec<u8>>,
        manifest: Option<Vec<u8>>,
        misreport_manifest_digest: bool,
    }

    #[derive(Clone, Default)]
    struct MemoryRegistry(Rc<RefCell<Log>>);

    impl Registries for MemoryRegistry {
        type Repository = MemoryRegistry;
        fn open(&mut self, destination: &Destination) -> Result<Self> {
            self.0
                .borrow_mut()
                .calls
                .push(format!("open {}", destination.location()));
            Ok(self.clone())
        }
    }

    impl BlobSink for MemoryRegistry {
        type Upload = MemoryUpload;
        fn blob_size(&mut self, digest: &Digest) -> Result<Option<u64>> {
            Ok(self.0.borrow().blobs.get(digest).map(|b| b.len() as u64))
        }
        fn put_blob(&mut self, digest: &Digest, data: &[u8]) -> Result<()> {
            let mut log = self.0.borrow_mut();
            log.calls.push(format!("blob {digest}"));
            log.blobs.insert(digest.clone(), data.to_vec());
            Ok(())
        }
        fn start_layer(&mut self, _encoding: &Encoding) -> Result<MemoryUpload> {
            Ok(MemoryUpload {
                log: self.0.clone(),
                data: Vec::new(),
                done: false,
            })
        }
        fn put_manifest(
            &mut self,
            reference: &str,
            media_type: &str,
            body: &[u8],
        ) -> Result<Digest> {
            let mut log = self.0.borrow_mut();
            log.calls.push(format!("manifest {reference} {media_type}"));
            log.manifest = Some(body.to_vec());
            Ok(if log.misreport_manifest_digest {
                Digest::of(b"other")
            } else {
                Digest::of(body)
            })
        }
    }

    /// Stores layers as written (no compression), so the blob digest is the diff ID.
    struct MemoryUpload {
        log: Rc<RefCell<Log>>,
        data: Vec<u8>,
        done: bool,
    }

    impl LayerUpload for MemoryUpload {
        fn write(&mut self, data: &[u8]) -> Result<()> {
            self.data.extend_from_slice(data);
            Ok(())
        }
        fn sent(&self) -> u64 {
            self.data.len() as u64
        }
        fn finish(mut self) -> Result<Blob> {
            self.done = true;
            let digest = Digest::of(&self.data);
            let size = self.data.len() as u64;
            let mut log = self.log.borrow_mut();
            log.calls.push(format!("layer {digest}"));
            log.blobs
                .insert(digest.clone(), std::mem::take(&mut self.data));
            Ok(Blob { digest, size })
        }
    }

    impl Drop for MemoryUpload {
        fn drop(&mut self) {
            if !self.done {
                self.log.borrow_mut().calls.push("cancelled".into());
            }
        }
    }

    #[derive(Default)]
    struct Events(Vec<Event>);

    impl ProgressSink for Events {
        fn report(&mut self, event: Event) {
            self.0.push(event);
        }
    }

    fn request() -> PushRequest {
        PushRequest {
            source: "app:1".into(),
            destination: "127.0.0.1:5000/team/app:1.0".into(),
            encoding: Encoding::new(Compression::Gzip, 6).unwrap(),
        }
    }

    /// Runs the pipeline against in-memory capabilities.
    fn run(
        request: &PushRequest,
        source: &mut Memory,
        registry: &MemoryRegistry,
        cache: &mut MemoryCache,
        events: &mut Events,
    ) -> Result<Pushed> {
        push(request, source, &mut registry.clone(), cache, events)
    }

    #[test]
    fn pushes_layers_then_config_then_manifest() {
        let f = fixture();
        let mut source = Memory::new(classic_export(&f), summary(&f));
        let registry = MemoryRegistry::default();
        let mut events = Events::default();
        let pushed = run(
            &request(),
            &mut source,
            &registry,
            &mut MemoryCache::default(),
            &mut events,
        )
        .unwrap();

        let log = registry.0.borrow();
        let manifest = log.manifest.clone().unwrap();
        assert_eq!(pushed.digest, Digest::of(&manifest));
        assert_eq!(pushed.repository, "127.0.0.1:5000/team/app");
        let config = Digest::of(&f.config);
        assert_eq!(
            log.calls,
            vec![
                "open 127.0.0.1:5000/team/app".to_string(),
                format!("layer {}", f.diff_ids[0]),
                format!("layer {}", f.diff_ids[1]),
                format!("blob {config}"),
                format!("manifest 1.0 {OCI_MANIFEST}"),
            ]
        );
        let json: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(json["config"]["digest"], config.as_str());
        assert_eq!(json["layers"][0]["digest"], f.diff_ids[0].as_str());
        assert_eq!(json["layers"][1]["digest"], f.diff_ids[1].as_str());

        assert!(matches!(
            events.0.first(),
            Some(Event::Started { layers: 2, .. })
        ));
        assert!(matches!(events.0.last(), Some(Event::ManifestDone { .. })));
        let done: Vec<_> = events
            .0
            .iter()
            .filter_map(|e| match e {
                Event::LayerDone {
                    diff_id, position, ..
                } => Some((*position, diff_id.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            done,
            vec![(1, f.diff_ids[0].clone()), (2, f.diff_ids[1].clone())]
        );
        let last_progress = events
            .0
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::LayerProgress(b) => Some(b.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!((last_progress.done, last_progress.total), (70_000, 70_000));
    }

    #[test]
    fn a_corrupt_layer_is_never_committed_and_no_manifest_is_written() {
        let f = fixture();
        let mut export = classic_export(&f);
        // Flip a byte inside the second layer's data (after its 512-byte header).
        let at = export
            .windows(64)
            .position(|w| w.iter().all(|&b| b == 2))
            .unwrap()
            + 100;
        export[at] ^= 0xff;
        let mut source = Memory::new(export, summary(&f));
        let registry = MemoryRegistry::default();
        let err = run(
            &request(),
            &mut source,
            &registry,
            &mut MemoryCache::default(),
            &mut Events::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("digest mismatch"), "{err:#}");
        let log = registry.0.borrow();
        assert!(log.manifest.is_none());
        assert_eq!(log.calls.last().map(String::as_str), Some("cancelled"));
    }

    #[test]
    fn a_registry_that_misreports_the_manifest_digest_fails_the_push() {
        let f = fixture();
        let mut source = Memory::new(classic_export(&f), summary(&f));
        let registry = MemoryRegistry::default();
        registry.0.borrow_mut().misreport_manifest_digest = true;
        let err = run(
            &request(),
            &mut source,
            &registry,
            &mut MemoryCache::default(),
            &mut Events::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not the digest of what was sent"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_destination_is_refused_before_any_traffic() {
        let f = fixture();
        let mut source = Memory::new(classic_export(&f), summary(&f));
        let registry = MemoryRegistry::default();
        let request = PushRequest {
            destination: "127.0.0.1:5000/App".into(),
            ..request()
        };
        assert!(run(
            &request,
            &mut source,
            &registry,
            &mut MemoryCache::default(),
            &mut Events::default()
        )
        .is_err());
        assert!(registry.0.borrow().calls.is_empty());
    }

    #[test]
    fn a_repeat_push_of_a_published_image_skips_the_export() {
        let f = fixture();
        let mut source = Memory::new(classic_export(&f), summary(&f));
        let registry = MemoryRegistry::default();
        let mut cache = MemoryCache::default();
        let first = run(
            &request(),
            &mut source,
            &registry,
            &mut cache,
            &mut Events::default(),
        )
        .unwrap();
        registry.0.borrow_mut().calls.clear();

        let mut events = Events::default();
        let again = run(&request(), &mut source, &registry, &mut cache, &mut events).unwrap();
        assert_eq!(again, first, "the same manifest");
        assert_eq!(source.exports, 1, "no second export");
        assert_eq!(
            registry.0.borrow().calls,
            vec![
                "open 127.0.0.1:5000/team/app".to_string(),
                format!("manifest 1.0 {OCI_MANIFEST}")
            ]
        );
        let skipped: Vec<u32> = events
            .0
            .iter()
            .filter_map(|e| match e {
                Event::LayerSkipped { position, .. } => Some(*position),
                _ => None,
            })
            .collect();
        assert_eq!(skipped, vec![1, 2]);
    }

    #[test]
    fn a_cache_entry_for_a_blob_the_registry_lost_costs_only_an_export() {
        let f = fixture();
        let mut source = Memory::new(classic_export(&f), summary(&f));
        let mut cache = MemoryCache::default();
        let first = run(
            &request(),
            &mut source,
            &MemoryRegistry::default(),
            &mut cache,
            &mut Events::default(),
        )
        .unwrap();
        // A new, empty registry: the cache is stale for it.
        let registry = MemoryRegistry::default();
        let again = run(
            &request(),
            &mut source,
            &registry,
            &mut cache,
            &mut Events::default(),
        )
        .unwrap();
        assert_eq!(again, first);
        assert_eq!(source.exports, 2);
        assert!(registry
            .0
            .borrow()
            .calls
            .iter()
            .any(|c| c.starts_with("layer ")));
    }
}
