//! The push pipeline, top to bottom, over the capabilities the host offers.

use std::collections::HashMap;
use std::io::Read;

use anyhow::{bail, Context, Result};

use crate::cache::{self, Cache};
use crate::config;
use crate::digest::{Digest, Hasher};
use crate::limits;
use crate::manifest::{
    image_index, image_manifest, Annotations, Compression, Encoding, Format, Platform,
    PlatformManifest,
};
use crate::progress::{Event, LayerBytes, LayerRef, ProgressSink};
use crate::reference::Destination;
use crate::save::{read_export, Blob, ImageSummary, Layer, LayerEntry, Publish, SavedImage};

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

/// A layer being streamed to a registry. Dropping it unfinished cancels it.
pub trait LayerUpload {
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Encoded bytes sent to the registry so far.
    fn sent(&self) -> u64;
    /// Completes and commits the upload.
    fn finish(self) -> Result<Blob>;
}

/// What to push, where, and how to encode and describe it.
pub struct PushRequest {
    pub source: String,
    pub destination: String,
    pub settings: Settings,
}

/// Several images, one per platform, to publish under one tag as an image index.
pub struct IndexRequest {
    pub sources: Vec<String>,
    pub destination: String,
    pub settings: Settings,
}

/// How images are published: layer encoding, manifest format, annotations, and whether to read
/// the result back.
#[derive(Clone, Debug)]
pub struct Settings {
    pub encoding: Encoding,
    pub format: Format,
    /// The user's annotations, on every manifest and index written (OCI format only).
    pub annotations: Annotations,
    /// After writing, fetch what was written by digest and check every blob it names.
    pub verify: bool,
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
    let settings = &request.settings;
    let destination = Destination::parse(&request.destination)?;
    settings
        .format
        .check(&settings.encoding, &settings.annotations)?;
    // The daemon gives the diff IDs up front: enough to find what the registry already has,
    // and to verify each layer as it streams.
    let image = source.inspect(&request.source)?;
    limits::check_layer_count(&request.source, &image)?;
    let mut repository = registries.open(&destination)?;

    let manifest = publish_blobs_and_manifest(
        &request.source,
        &image,
        settings,
        &destination,
        source,
        &mut repository,
        cache,
        progress,
    )?;

    // The manifest, last: every blob it names is in the registry now.
    let media_type = settings.format.manifest_media_type();
    tag(
        &mut repository,
        &destination,
        media_type,
        &manifest.body,
        settings,
        progress,
    )
}

/// Pushes several images and then an image index naming each image's manifest with the
/// platform from its config. Two sources for one platform are refused before any upload. Each
/// image's manifest is written by its digest; only the index gets the tag, and last.
pub fn push_index(
    request: &IndexRequest,
    source: &mut impl ImageSource,
    registries: &mut impl Registries,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
) -> Result<Pushed> {
    let settings = &request.settings;
    let destination = Destination::parse(&request.destination)?;
    if let Destination::Layout(_) = destination {
        bail!("destination {}: an index goes to a registry (OCI layout directories take single images)", request.destination);
    }
    settings
        .format
        .check(&settings.encoding, &settings.annotations)?;
    if request.sources.is_empty() {
        bail!("an index needs at least one source image");
    }
    // The daemon says each image's platform before any export: duplicates are refused here.
    let mut images: Vec<(&String, ImageSummary, Platform)> = Vec::new();
    for name in &request.sources {
        let image = source.inspect(name)?;
        let Some(platform) = image.platform.clone() else {
            bail!("the daemon does not say which platform image {name} is for: it cannot go in an index");
        };
        if let Some((other, _, _)) = images.iter().find(|(_, _, p)| p == &platform) {
            bail!("images {other} and {name} are both for {platform}: an index names one image per platform");
        }
        images.push((name, image, platform));
    }
    let mut repository = registries.open(&destination)?;

    let mut manifests = Vec::with_capacity(images.len());
    for (name, image, platform) in &images {
        let manifest = publish_blobs_and_manifest(
            name,
            image,
            settings,
            &destination,
            source,
            &mut repository,
            cache,
            progress,
        )?;
        // The platform the index states is the config's; the daemon's answer only ordered the
        // refusal of duplicates, and must agree.
        let from_config =
            config::platform(&manifest.config).with_context(|| format!("image {name}"))?;
        if &from_config != platform {
            bail!("image {name}: the daemon said it is for {platform} but its config says {from_config}");
        }
        let digest = Digest::of(&manifest.body);
        let written = write_manifest(
            &mut repository,
            &destination,
            digest.as_str(),
            settings.format.manifest_media_type(),
            &manifest.body,
        )?;
        progress.report(Event::ManifestDone {
            reference: digest.to_string(),
            digest: written,
        });
        manifests.push(PlatformManifest {
            digest,
            size: manifest.body.len() as u64,
            platform: from_config,
        });
    }

    let index = image_index(settings.format, &manifests, &settings.annotations)?;
    let media_type = settings.format.index_media_type();
    tag(
        &mut repository,
        &destination,
        media_type,
        &index,
        settings,
        progress,
    )
}

/// An image's manifest, ready to write, and the config it names.
struct ImageManifest {
    body: Vec<u8>,
    config: Vec<u8>,
}

/// Puts an image's config and layers in the registry (none to send if the registry holds them
/// all or can mount them from repositories they were pushed to: the export is the slow part;
/// otherwise one pass over the export), and builds the manifest that names them, with the
/// annotations its config implies and the user's.
#[allow(clippy::too_many_arguments)]
fn publish_blobs_and_manifest(
    name: &str,
    image: &ImageSummary,
    settings: &Settings,
    destination: &Destination,
    source: &mut impl ImageSource,
    repository: &mut impl BlobSink,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
) -> Result<ImageManifest> {
    progress.report(Event::Started {
        image: name.to_string(),
        layers: image.diff_ids.len() as u32,
        total_bytes: image.size,
    });
    let encoding = &settings.encoding;
    let (config, layers) = match held(image, encoding, destination, repository, cache, progress)? {
        Held::All(config, layers) => (config, layers),
        Held::Some(present) => export_and_upload(
            image,
            encoding,
            destination,
            source,
            repository,
            cache,
            progress,
            &present,
        )?,
    };
    // Where these blobs now are: a later push to another repository can mount them from here.
    if let Destination::Registry(target) = destination {
        for blob in std::iter::once(&config.blob).chain(layers.iter().map(|l| &l.blob)) {
            cache::remember_home(cache, &blob.digest, &target.repository_url());
        }
    }
    let annotations = match settings.format {
        // Docker's schema has no annotations: the config's are not carried over.
        Format::Docker => Annotations::new(),
        Format::Oci => {
            let mut annotations =
                config::annotations(&config.bytes).with_context(|| format!("image {name}"))?;
            annotations.extend(settings.annotations.clone());
            annotations
        }
    };
    let body = image_manifest(
        settings.format,
        &config.blob,
        &layers,
        encoding,
        &annotations,
    )?;
    Ok(ImageManifest {
        body,
        config: config.bytes,
    })
}

/// Writes a manifest or index under the destination's tag: the write that publishes a push, so
/// it comes last. Asked to verify, a registry first gets the manifest by digest and it is read
/// back before the tag names it, so a push that fails verification leaves no tag. (An OCI
/// layout gets the tag first and is read back after: a manifest written there by digest would
/// become an index entry of its own.)
fn tag(
    repository: &mut impl BlobSink,
    destination: &Destination,
    media_type: &str,
    body: &[u8],
    settings: &Settings,
    progress: &mut impl ProgressSink,
) -> Result<Pushed> {
    let before_tagging = settings.verify && matches!(destination, Destination::Registry(_));
    let checked = if before_tagging {
        let digest = write_manifest(
            repository,
            destination,
            Digest::of(body).as_str(),
            media_type,
            body,
        )?;
        Some(verify(repository, destination, &digest, "before writing")?)
    } else {
        None
    };
    let digest = write_manifest(repository, destination, destination.tag(), media_type, body)?;
    progress.report(Event::ManifestDone {
        reference: destination.tag().to_string(),
        digest: digest.clone(),
    });
    if settings.verify {
        let (manifests, blobs) = match checked {
            Some(checked) => checked,
            None => verify(repository, destination, &digest, "after writing")?,
        };
        progress.report(Event::Verified {
            digest: digest.clone(),
            manifests,
            blobs,
        });
    }
    Ok(Pushed {
        digest,
        repository: destination.location(),
    })
}

/// Writes a manifest or index under `reference` and checks the digest the registry reports.
fn write_manifest(
    repository: &mut impl BlobSink,
    destination: &Destination,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Result<Digest> {
    limits::check_manifest_size(body)?;
    let digest = repository.put_manifest(reference, media_type, body)?;
    if digest != Digest::of(body) {
        bail!(
            "{} stored the manifest as {digest}, which is not the digest of what was sent ({})",
            destination.location(),
            Digest::of(body)
        );
    }
    Ok(digest)
}

/// Reads back what was published, by digest: the manifest (or index, and each manifest it
/// names) must hash to its digest, and every blob it names must be in the registry with the
/// size it states. Any difference fails the push. `when` says where the tag stands (`before
/// writing` or `after writing`), for the error. Returns how many manifests and blobs it checked.
fn verify(
    repository: &mut impl BlobSink,
    destination: &Destination,
    digest: &Digest,
    when: &str,
) -> Result<(u32, u32)> {
    read_back(repository, destination, digest).with_context(|| {
        format!(
            "verify {when} {}:{}",
            destination.location(),
            destination.tag()
        )
    })
}

/// Fetches `digest` and what it names; returns how many manifests and blobs were checked.
fn read_back(
    repository: &mut impl BlobSink,
    destination: &Destination,
    digest: &Digest,
) -> Result<(u32, u32)> {
    let location = destination.location();
    let mut manifests = 0u32;
    let mut blobs = 0u32;
    let mut pending = vec![digest.clone()];
    while let Some(digest) = pending.pop() {
        let Some(body) = repository.get_manifest(digest.as_str())? else {
            bail!("{location} has no manifest {digest}");
        };
        if Digest::of(&body) != digest {
            bail!(
                "{location} serves manifest {digest} with bytes that hash to {}",
                Digest::of(&body)
            );
        }
        manifests += 1;
        let named: Named = serde_json::from_slice(&body)
            .with_context(|| format!("manifest {digest} is not valid JSON"))?;
        for child in named.manifests {
            pending.push(Digest::parse(&child.digest, "an index entry's digest")?);
        }
        for (what, blob) in named
            .config
            .iter()
            .map(|c| ("config", c))
            .chain(named.layers.iter().map(|l| ("layer", l)))
        {
            let blob_digest = Digest::parse(&blob.digest, "a manifest's blob digest")?;
            match repository.blob_size(&blob_digest)? {
                Some(size) if size == blob.size => blobs += 1,
                Some(size) => bail!(
                    "{location} holds {what} {blob_digest} of manifest {digest} with {size} bytes, not the {} the manifest states",
                    blob.size
                ),
                None => bail!(
                    "{location} does not have {what} {blob_digest} that manifest {digest} names"
                ),
            }
        }
    }
    Ok((manifests, blobs))
}

/// What a manifest or index names, as far as verifying needs.
#[derive(serde::Deserialize)]
struct Named {
    #[serde(default)]
    config: Option<NamedBlob>,
    #[serde(default)]
    layers: Vec<NamedBlob>,
    #[serde(default)]
    manifests: Vec<NamedBlob>,
}

#[derive(serde::Deserialize)]
struct NamedBlob {
    digest: String,
    size: u64,
}

/// A config as published: its blob, and its bytes (the manifest's annotations and the index's
/// platform come from them).
struct Config {
    blob: Blob,
    bytes: Vec<u8>,
}

/// What the destination holds of an image, as far as the cache can tell.
enum Held {
    /// The config and every layer: the export is skipped.
    All(Config, Vec<Layer>),
    /// These layers, by diff ID: only hashed as the export passes.
    Some(HashMap<Digest, Present>),
}

/// Asks the destination once which of the image's blobs it holds: those the cache names a blob
/// for (and for the config, holds its bytes, checked against its digest) that are found (a HEAD
/// with the size recorded) or mounted from another repository of the registry they were pushed
/// to. The blobs are content-addressed and were recorded only after verified uploads, so with
/// all of them there the manifest is the one a full push writes.
fn held(
    image: &ImageSummary,
    encoding: &Encoding,
    destination: &Destination,
    repository: &mut impl BlobSink,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
) -> Result<Held> {
    // The config first: without it there, the export cannot be skipped.
    let mut config = None;
    if let Some(blob) = cache::image_config(cache, image) {
        if let Some(bytes) = cache::config_bytes(cache, &blob) {
            if find_or_mount(&blob, destination, repository, cache)?.is_some() {
                config = Some(Config { blob, bytes });
            }
        }
    }
    let present = present_layers(image, encoding, destination, repository, cache)?;
    let Some(config) = config else {
        return Ok(Held::Some(present));
    };
    let mut layers = Vec::with_capacity(image.diff_ids.len());
    let mut found = Vec::with_capacity(image.diff_ids.len());
    for diff_id in &image.diff_ids {
        let Some(layer) = present.get(diff_id) else {
            return Ok(Held::Some(present));
        };
        found.push(&layer.found);
        layers.push(Layer {
            diff_id: diff_id.clone(),
            blob: layer.blob.clone(),
            media_type: None,
        });
    }
    for (position, (layer, how)) in layers.iter().zip(found).enumerate() {
        progress.report(Event::LayerSkipped {
            position: position as u32 + 1,
            diff_id: layer.diff_id.clone(),
            digest: layer.blob.digest.clone(),
            size: layer.blob.size,
            mounted_from: how.mounted_from.clone(),
        });
    }
    progress.report(Event::ConfigDone(config.blob.digest.clone()));
    Ok(Held::All(config, layers))
}

/// How a blob came to be in the destination.
struct Found {
    /// The repository it was mounted from; `None` when the destination held it.
    mounted_from: Option<String>,
}

/// Whether the destination holds `blob` (a HEAD with the recorded size), or can be made to by
/// mounting it from a repository of the same registry that the cache says it was pushed to.
/// Each mount the registry declines (Harbor answers 401) only means trying the next, then
/// uploading.
fn find_or_mount(
    blob: &Blob,
    destination: &Destination,
    repository: &mut impl BlobSink,
    cache: &mut impl Cache,
) -> Result<Option<Found>> {
    if holds(repository, blob, destination)? {
        return Ok(Some(Found { mounted_from: None }));
    }
    let Destination::Registry(target) = destination else {
        return Ok(None);
    };
    for home in cache::homes(cache, &blob.digest) {
        let Some(source) = home
            .strip_prefix(&format!("{}/", target.registry))
            .filter(|s| *s != target.repository)
        else {
            continue;
        };
        if repository.mount_blob(&blob.digest, source)? && holds(repository, blob, destination)? {
            return Ok(Some(Found {
                mounted_from: Some(source.to_string()),
            }));
        }
    }
    Ok(None)
}

/// Whether the registry holds `blob`. A digest fixes the size: a registry that reports another
/// size for it is broken or lying, which fails the push rather than being papered over.
fn holds(repository: &mut impl BlobSink, blob: &Blob, destination: &Destination) -> Result<bool> {
    match repository.blob_size(&blob.digest)? {
        None => Ok(false),
        Some(size) if size == blob.size => Ok(true),
        Some(size) => bail!(
            "{} reports blob {} as {size} bytes, but it is {} bytes",
            destination.location(),
            blob.digest,
            blob.size
        ),
    }
}

/// Streams the export (again only if an entry was not the layer its name promised): each layer
/// is hashed while it uploads and committed only if its
/// diff ID is one the image lists (a layer the export holds already compressed is stored as it
/// is, if it hashes to its name); a layer the destination already holds is only hashed, when
/// its entry's name says it is that layer. Then the config goes up byte for byte as the daemon
/// wrote it, so its digest stays the image ID. What was verified is remembered in the cache.
#[allow(clippy::too_many_arguments)]
fn export_and_upload(
    image: &ImageSummary,
    encoding: &Encoding,
    destination: &Destination,
    source: &mut impl ImageSource,
    repository: &mut impl BlobSink,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
    present: &HashMap<Digest, Present>,
) -> Result<(Config, Vec<Layer>)> {
    // A stored blob's place in the image is known only once the export is read.
    let (saved, stored) = match export_once(
        image, encoding, source, repository, cache, progress, present,
    ) {
        // An entry was not the layer its name promised, and its bytes are gone: export
        // again, uploading every layer.
        Err(e) if e.downcast_ref::<Misnamed>().is_some() => export_once(
            image,
            encoding,
            source,
            repository,
            cache,
            progress,
            &HashMap::new(),
        )?,
        result => result?,
    };
    for (position, layer) in saved.layers.iter().enumerate() {
        if let Some(entry) = stored.get(&layer.blob.digest) {
            progress.report(Event::LayerDone {
                layer: entry.clone(),
                diff_id: layer.diff_id.clone(),
                position: position as u32 + 1,
                digest: layer.blob.digest.clone(),
                size: layer.blob.size,
            });
        }
    }
    let config = Blob {
        digest: Digest::of(&saved.config),
        size: saved.config.len() as u64,
    };
    if !holds(repository, &config, destination)? {
        repository.put_blob(&config.digest, &saved.config)?;
    }
    progress.report(Event::ConfigDone(config.digest.clone()));
    // Only layers this encoding produced: a stored blob is not what it gives for the diff ID.
    let encoded: Vec<&Layer> = saved
        .layers
        .iter()
        .filter(|l| l.media_type.is_none())
        .collect();
    for layer in &encoded {
        cache::remember_layer(cache, &layer.diff_id, encoding, &layer.blob);
    }
    cache::remember_config_bytes(cache, &config, &saved.config);
    if encoded.len() == saved.layers.len() {
        cache::remember_image_config(cache, image, &config);
    }
    Ok((
        Config {
            blob: config,
            bytes: saved.config,
        },
        saved.layers,
    ))
}

/// A layer the destination holds already, found before the export.
struct Present {
    blob: Blob,
    found: Found,
}

/// The layers of `image` the destination holds (or was made to hold, by a mount), by diff ID,
/// as far as the cache knows the blobs this encoding makes of them.
fn present_layers(
    image: &ImageSummary,
    encoding: &Encoding,
    destination: &Destination,
    repository: &mut impl BlobSink,
    cache: &mut impl Cache,
) -> Result<HashMap<Digest, Present>> {
    let mut present = HashMap::new();
    for diff_id in &image.diff_ids {
        let Some(blob) = cache::layer_blob(cache, diff_id, encoding) else {
            continue;
        };
        if let Some(found) = find_or_mount(&blob, destination, repository, cache)? {
            present.insert(diff_id.clone(), Present { blob, found });
        }
    }
    Ok(present)
}

/// Exports the image and reads the export, publishing its layers as they pass; returns what
/// it held and the blobs stored as the export held them, by digest, with their entries.
fn export_once(
    image: &ImageSummary,
    encoding: &Encoding,
    source: &mut impl ImageSource,
    repository: &mut impl BlobSink,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
    present: &HashMap<Digest, Present>,
) -> Result<(SavedImage, HashMap<Digest, LayerRef>)> {
    // Export by ID, so inspect and export see one image.
    let export = source.export(image.id.as_str())?;
    let mut publisher = Publisher {
        repository,
        image,
        encoding,
        progress,
        cache,
        present,
        stored: HashMap::new(),
    };
    let saved = read_export(export, image, &mut publisher)?;
    Ok((saved, publisher.stored))
}

/// An export entry that did not hash to the layer its name did before.
#[derive(Debug)]
struct Misnamed {
    entry: String,
    expected: Digest,
    hashed: Digest,
}

impl std::fmt::Display for Misnamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "export entry {} hashed to {}, not to {} as before",
            self.entry, self.hashed, self.expected
        )
    }
}

impl std::error::Error for Misnamed {}

/// Publishes the layers of an export as they pass.
struct Publisher<'a, S: BlobSink, P: ProgressSink, C: Cache> {
    repository: &'a mut S,
    image: &'a ImageSummary,
    encoding: &'a Encoding,
    progress: &'a mut P,
    cache: &'a mut C,
    /// Layers the destination holds: not uploaded again.
    present: &'a HashMap<Digest, Present>,
    /// Blobs stored as the export held them, by digest: where they were in the export.
    stored: HashMap<Digest, LayerRef>,
}

impl<S: BlobSink, P: ProgressSink, C: Cache> Publish for Publisher<'_, S, P, C> {
    /// Streams one layer to the registry, hashing it on the way, and commits it only once its
    /// diff ID proves to be one the image lists; otherwise the upload is dropped, which
    /// cancels it. A layer the destination holds, by what its entry hashed to before, is only
    /// hashed (`check_present`).
    fn layer(&mut self, entry: LayerEntry<'_>) -> Result<Layer> {
        let (name, size) = (entry.name.clone(), entry.size);
        let promised = cache::entry_diff_id(self.cache, &name, size)
            .filter(|diff_id| self.present.contains_key(diff_id));
        if let Some(promised) = promised {
            return self.check_present(entry, promised);
        }
        let (layer, upload, diff_id) = self.stream(entry, self.encoding)?;
        let Some(position) = self.image.diff_ids.iter().position(|d| d == &diff_id) else {
            bail!(
                "digest mismatch: layer {} of the export hashes to {diff_id}, which is not a diff ID of image {}",
                layer.entry,
                self.image.id
            );
        };
        let blob = upload.finish()?;
        cache::remember_entry(self.cache, &name, size, &diff_id);
        self.progress.report(Event::LayerDone {
            layer,
            diff_id: diff_id.clone(),
            position: position as u32 + 1,
            digest: blob.digest.clone(),
            size: blob.size,
        });
        Ok(Layer {
            diff_id,
            blob,
            media_type: None,
        })
    }

    /// Streams an already compressed layer to the registry as it is, and commits it only if
    /// it hashes to the digest that names it.
    fn blob(&mut self, entry: LayerEntry<'_>, digest: &Digest) -> Result<Blob> {
        let as_is = Encoding::new(Compression::None, 0)?;
        let (layer, upload, hashed) = self.stream(entry, &as_is)?;
        if &hashed != digest {
            bail!(
                "digest mismatch: blob {} of the export hashes to {hashed}",
                layer.entry
            );
        }
        let blob = upload.finish()?;
        if &blob.digest != digest {
            bail!("the destination stored blob {digest} as {}", blob.digest);
        }
        self.stored.insert(blob.digest.clone(), layer);
        Ok(blob)
    }
}

impl<S: BlobSink, P: ProgressSink, C: Cache> Publisher<'_, S, P, C> {
    /// A layer the destination holds, if the entry is what its name promised: hashed whole,
    /// never uploaded. Anything else fails the export with `Misnamed`: its bytes are gone.
    fn check_present(&mut self, entry: LayerEntry<'_>, promised: Digest) -> Result<Layer> {
        let mut hasher = Hasher::default();
        let mut chunk = vec![0u8; CHUNK_SIZE.min(entry.size as usize).max(1)];
        loop {
            let n = fill(entry.data, &mut chunk)
                .with_context(|| format!("reading layer {} from the export", entry.name))?;
            if n == 0 {
                break;
            }
            hasher.update(&chunk[..n]);
        }
        let hashed = hasher.finish();
        if hashed != promised {
            return Err(Misnamed {
                entry: entry.name,
                expected: promised,
                hashed,
            }
            .into());
        }
        let present = &self.present[&hashed];
        let position = self.image.diff_ids.iter().position(|d| d == &hashed);
        self.progress.report(Event::LayerSkipped {
            position: position.map_or(0, |p| p as u32 + 1),
            diff_id: hashed.clone(),
            digest: present.blob.digest.clone(),
            size: present.blob.size,
            mounted_from: present.found.mounted_from.clone(),
        });
        Ok(Layer {
            diff_id: hashed,
            blob: present.blob.clone(),
            media_type: None,
        })
    }

    /// Streams an entry whole into a new upload encoded as `encoding`, reporting progress;
    /// returns the upload, still to finish, and the digest of the bytes streamed.
    fn stream(
        &mut self,
        entry: LayerEntry<'_>,
        encoding: &Encoding,
    ) -> Result<(LayerRef, S::Upload, Digest)> {
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
        self.progress.report(Event::LayerStarted(bytes(0, 0)));
        let mut upload = self.repository.start_layer(encoding)?;
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
            self.progress
                .report(Event::LayerProgress(bytes(done, upload.sent())));
        }
        Ok((layer, upload, hasher.finish()))
    }
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
        manifests: HashMap<String, Vec<u8>>,
        misreport_manifest_digest: bool,
        /// Reports every blob one byte larger than it is.
        misreport_blob_sizes: bool,
        /// A blob it takes and then loses.
        loses: Option<Digest>,
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
            let log = self.0.borrow();
            let extra = u64::from(log.misreport_blob_sizes);
            Ok(log.blobs.get(digest).map(|b| b.len() as u64 + extra))
        }
        fn mount_blob(&mut self, digest: &Digest, source: &str) -> Result<bool> {
            let mut log = self.0.borrow_mut();
            log.calls.push(format!("mount {digest} from {source}"));
            Ok(false)
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
            log.manifests
                .insert(Digest::of(body).to_string(), body.to_vec());
            log.manifests.insert(reference.to_string(), body.to_vec());
            Ok(if log.misreport_manifest_digest {
                Digest::of(b"other")
            } else {
                Digest::of(body)
            })
        }
        fn get_manifest(&mut self, reference: &str) -> Result<Option<Vec<u8>>> {
            let mut log = self.0.borrow_mut();
            log.calls.push(format!("get {reference}"));
            Ok(log.manifests.get(reference).cloned())
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
            if log.loses.as_ref() != Some(&digest) {
                log.blobs
                    .insert(digest.clone(), std::mem::take(&mut self.data));
            }
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

    fn settings() -> Settings {
        Settings {
            encoding: Encoding::new(Compression::Gzip, 6).unwrap(),
            format: Format::Oci,
            annotations: Annotations::new(),
            verify: false,
        }
    }

    fn request() -> PushRequest {
        PushRequest {
            source: "app:1".into(),
            destination: "127.0.0.1:5000/team/app:1.0".into(),
            settings: settings(),
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

    /// Runs a push that must fail before any traffic, and returns its error: the registry saw
    /// no call and the source exported nothing.
    fn refused_before_traffic(request: &PushRequest, mut source: Memory) -> String {
        let registry = MemoryRegistry::default();
        let err = run(
            request,
            &mut source,
            &registry,
            &mut MemoryCache::default(),
            &mut Events::default(),
        )
        .unwrap_err();
        assert!(registry.0.borrow().calls.is_empty(), "{err}");
        assert_eq!(source.exports, 0, "{err}");
        err.to_string()
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
                format!("manifest 1.0 {}", crate::manifest::OCI_MANIFEST),
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
        let sent = registry.0.borrow().manifest.clone().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "127.0.0.1:5000/team/app stored the manifest as {}, which is not the digest of what was sent ({})",
                Digest::of(b"other"),
                Digest::of(&sent)
            )
        );
    }

    #[test]
    fn a_registry_that_misreports_a_blob_size_fails_the_push() {
        let f = fixture();
        let mut source = Memory::new(classic_export(&f), summary(&f));
        let registry = MemoryRegistry::default();
        let mut cache = MemoryCache::default();
        let push = |source: &mut Memory, cache: &mut MemoryCache| {
            run(&request(), source, &registry, cache, &mut Events::default())
        };
        // The config is already there (another image shares it), at the wrong size.
        registry
            .0
            .borrow_mut()
            .blobs
            .insert(Digest::of(&f.config), f.config.clone());
        registry.0.borrow_mut().misreport_blob_sizes = true;
        let err = push(&mut source, &mut cache).unwrap_err().to_string();
        let expected = format!(
            "127.0.0.1:5000/team/app reports blob {} as {} bytes, but it is {} bytes",
            Digest::of(&f.config),
            f.config.len() + 1,
            f.config.len()
        );
        assert_eq!(err, expected);
        assert!(registry.0.borrow().manifest.is_none());

        // A repeat push whose cache names blobs the registry misreports fails the same way.
        registry.0.borrow_mut().misreport_blob_sizes = false;
        push(&mut source, &mut cache).unwrap();
        registry.0.borrow_mut().manifest = None;
        registry.0.borrow_mut().misreport_blob_sizes = true;
        assert_eq!(
            push(&mut source, &mut cache).unwrap_err().to_string(),
            expected
        );
        assert!(registry.0.borrow().manifest.is_none());
    }

    #[test]
    fn an_image_with_too_many_layers_is_refused_before_any_traffic() {
        let f = fixture();
        let mut image = summary(&f);
        image.diff_ids = vec![f.diff_ids[0].clone(); crate::limits::LAYER_LIMIT + 1];
        let err = refused_before_traffic(&request(), Memory::new(classic_export(&f), image));
        assert!(err.contains("1001 layers"), "{err}");
    }

    #[test]
    fn a_bad_destination_is_refused_before_any_traffic() {
        let f = fixture();
        let request = PushRequest {
            destination: "127.0.0.1:5000/App".into(),
            ..request()
        };
        refused_before_traffic(&request, Memory::new(classic_export(&f), summary(&f)));
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
                format!("manifest 1.0 {}", crate::manifest::OCI_MANIFEST)
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

    /// The fixture image pushed once to an in-memory registry: its source, cache and registry,
    /// and what the push gave.
    fn pushed_once(f: &crate::testing::Fixture) -> (Memory, MemoryCache, MemoryRegistry, Pushed) {
        let mut source = Memory::new(classic_export(f), summary(f));
        let mut cache = MemoryCache::default();
        let registry = MemoryRegistry::default();
        let first = run(
            &request(),
            &mut source,
            &registry,
            &mut cache,
            &mut Events::default(),
        )
        .unwrap();
        (source, cache, registry, first)
    }

    /// A registry that holds some of an image's layers: only the others are uploaded. The
    /// export still passes every layer, and the ones the registry holds are only hashed, since
    /// their entries' names say which layers they are.
    #[test]
    fn layers_the_registry_holds_are_hashed_not_uploaded() {
        let f = fixture();
        let (mut source, mut cache, registry, first) = pushed_once(&f);
        let lost = f.diff_ids[1].clone();
        registry.0.borrow_mut().blobs.remove(&lost);
        registry.0.borrow_mut().calls.clear();

        let mut events = Events::default();
        let again = run(&request(), &mut source, &registry, &mut cache, &mut events).unwrap();
        assert_eq!(again, first);
        assert_eq!(source.exports, 2);
        let uploads: Vec<String> = registry
            .0
            .borrow()
            .calls
            .iter()
            .filter(|c| c.starts_with("layer "))
            .cloned()
            .collect();
        assert_eq!(uploads, vec![format!("layer {lost}")]);
        let skipped: Vec<u32> = events
            .0
            .iter()
            .filter_map(|e| match e {
                Event::LayerSkipped { position, .. } => Some(*position),
                _ => None,
            })
            .collect();
        assert_eq!(skipped, vec![1]);
    }

    /// An entry whose name promised a layer the registry holds, but whose bytes are another
    /// layer: the export is read again and every layer uploaded, so nothing is lost.
    #[test]
    fn an_entry_that_breaks_its_names_promise_costs_a_second_export() {
        let f = fixture();
        let (mut source, mut cache, registry, first) = pushed_once(&f);
        // The second layer's entry now says it was the first layer, which the registry holds.
        let (second, first_layer) = (f.diff_ids[1].as_str(), f.diff_ids[0].as_str());
        for (key, value) in cache.0.iter_mut() {
            let text = String::from_utf8(value.clone()).unwrap();
            if key.starts_with("entry/") && text.contains(second) {
                *value = text.replace(second, first_layer).into_bytes();
            }
        }
        registry.0.borrow_mut().blobs.remove(&f.diff_ids[1]);

        let again = run(
            &request(),
            &mut source,
            &registry,
            &mut cache,
            &mut Events::default(),
        )
        .unwrap();
        assert_eq!(again, first);
        assert_eq!(
            source.exports, 3,
            "one export, and one more after the broken promise"
        );
        assert!(registry.0.borrow().blobs.contains_key(&f.diff_ids[1]));
    }

    fn manifest_of(registry: &MemoryRegistry) -> serde_json::Value {
        serde_json::from_slice(registry.0.borrow().manifest.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn docker_format_names_docker_media_types_and_no_annotations() {
        let f = fixture();
        let mut source = Memory::new(classic_export(&f), summary(&f));
        let registry = MemoryRegistry::default();
        let request = PushRequest {
            settings: Settings {
                format: Format::Docker,
                ..settings()
            },
            ..request()
        };
        run(
            &request,
            &mut source,
            &registry,
            &mut MemoryCache::default(),
            &mut Events::default(),
        )
        .unwrap();
        let json = manifest_of(&registry);
        assert_eq!(json["mediaType"], crate::manifest::DOCKER_MANIFEST);
        assert_eq!(json["config"]["mediaType"], crate::manifest::DOCKER_CONFIG);
        assert!(json.get("annotations").is_none(), "{json}");
        assert!(registry.0.borrow().calls.contains(&format!(
            "manifest 1.0 {}",
            crate::manifest::DOCKER_MANIFEST
        )));
    }

    #[test]
    fn zstd_with_docker_format_is_refused_before_any_traffic() {
        let f = fixture();
        let request = PushRequest {
            settings: Settings {
                format: Format::Docker,
                encoding: Encoding::new(Compression::Zstd, 3).unwrap(),
                ..settings()
            },
            ..request()
        };
        let err = refused_before_traffic(&request, Memory::new(classic_export(&f), summary(&f)));
        assert!(err.contains("zstd"), "{err}");
    }

    #[test]
    fn annotations_come_from_the_config_and_the_user_and_survive_a_repeat_push() {
        let f = fixture_with_labels();
        let mut source = Memory::new(classic_export(&f), summary(&f));
        let registry = MemoryRegistry::default();
        let mut cache = MemoryCache::default();
        let mut annotations = Annotations::new();
        annotations.insert("org.example.team".into(), "infra".into());
        annotations.insert(
            "org.opencontainers.image.source".into(),
            "https://override".into(),
        );
        let request = PushRequest {
            settings: Settings {
                annotations,
                ..settings()
            },
            ..request()
        };
        let first = run(
            &request,
            &mut source,
            &registry,
            &mut cache,
            &mut Events::default(),
        )
        .unwrap();
        let json = manifest_of(&registry);
        assert_eq!(
            json["annotations"],
            serde_json::json!({
                "org.example.team": "infra",
                "org.opencontainers.image.created": "2024-01-02T03:04:05Z",
                "org.opencontainers.image.revision": "abc123",
                "org.opencontainers.image.source": "https://override",
            })
        );
        // From the cache, without an export, the very same manifest.
        let again = run(
            &request,
            &mut source,
            &registry,
            &mut cache,
            &mut Events::default(),
        )
        .unwrap();
        assert_eq!(source.exports, 1);
        assert_eq!(again, first);
    }

    fn fixture_with_labels() -> crate::testing::Fixture {
        let mut f = fixture();
        let mut config: serde_json::Value = serde_json::from_slice(&f.config).unwrap();
        config["created"] = "2024-01-02T03:04:05Z".into();
        config["config"] = serde_json::json!({"Labels": {
            "org.opencontainers.image.source": "https://example.com/app",
            "org.opencontainers.image.revision": "abc123",
            "maintainer": "not an OCI key",
        }});
        f.config = serde_json::to_vec(&config).unwrap();
        f.id = Digest::of(&f.config);
        f
    }

    #[test]
    fn verify_reads_back_the_manifest_and_checks_every_blob() {
        let f = fixture();
        let mut source = Memory::new(classic_export(&f), summary(&f));
        let registry = MemoryRegistry::default();
        let request = PushRequest {
            settings: Settings {
                verify: true,
                ..settings()
            },
            ..request()
        };
        let mut events = Events::default();
        let pushed = run(
            &request,
            &mut source,
            &registry,
            &mut MemoryCache::default(),
            &mut events,
        )
        .unwrap();
        assert!(registry
            .0
            .borrow()
            .calls
            .contains(&format!("get {}", pushed.digest)));
        assert_eq!(
            events.0.last(),
            Some(&Event::Verified {
                digest: pushed.digest.clone(),
                manifests: 1,
                blobs: 3
            })
        );

        // The manifest went up by digest, was read back, and only then got its tag.
        let calls = registry.0.borrow().calls.clone();
        let at = |call: &str| calls.iter().position(|c| c.starts_with(call));
        let by_digest = at(&format!("manifest {}", pushed.digest)).unwrap();
        let read = at(&format!("get {}", pushed.digest)).unwrap();
        let tagged = at("manifest 1.0").unwrap();
        assert!(by_digest < read && read < tagged, "{calls:#?}");
    }

    /// A registry that takes a layer and loses it: verify reads back the manifest, finds the
    /// layer missing, and the tag is never written.
    #[test]
    fn a_push_that_fails_verify_writes_no_tag() {
        let f = fixture();
        let mut source = Memory::new(classic_export(&f), summary(&f));
        let registry = MemoryRegistry::default();
        let lost = f.diff_ids[1].clone();
        registry.0.borrow_mut().loses = Some(lost.clone());
        let request = PushRequest {
            settings: Settings {
                verify: true,
                ..settings()
            },
            ..request()
        };
        let err = run(
            &request,
            &mut source,
            &registry,
            &mut MemoryCache::default(),
            &mut Events::default(),
        )
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.starts_with("verify before writing 127.0.0.1:5000/team/app:1.0: ")
                && err.contains(&format!("does not have layer {lost}")),
            "{err}"
        );
        let calls = registry.0.borrow().calls.clone();
        assert!(
            !calls.iter().any(|c| c.starts_with("manifest 1.0")),
            "{calls:#?}"
        );
    }

    #[test]
    fn verify_fails_on_a_manifest_served_with_other_bytes() {
        let registry = MemoryRegistry::default();
        let digest = Digest::of(b"{}");
        registry
            .0
            .borrow_mut()
            .manifests
            .insert(digest.to_string(), b"{ }".to_vec());
        let target = Destination::parse("127.0.0.1:5000/team/app:1").unwrap();
        let err = verify(&mut registry.clone(), &target, &digest, "after writing").unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("hash to"), "{err}");
        let missing = Digest::of(b"missing");
        let err = verify(&mut registry.clone(), &target, &missing, "after writing").unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("has no manifest"), "{err}");
    }

    /// Two images in one daemon, one per platform.
    struct TwoImages(Memory, Memory);

    impl ImageSource for TwoImages {
        type Export = Cursor<Vec<u8>>;
        fn inspect(&mut self, image: &str) -> Result<ImageSummary> {
            match image {
                "amd" => self.0.inspect(image),
                _ => self.1.inspect(image),
            }
        }
        fn export(&mut self, image: &str) -> Result<Self::Export> {
            if image == self.0.image.id.as_str() {
                self.0.export(image)
            } else {
                self.1.export(image)
            }
        }
    }

    fn arm_fixture() -> crate::testing::Fixture {
        let mut f = fixture();
        let mut config: serde_json::Value = serde_json::from_slice(&f.config).unwrap();
        config["architecture"] = "arm64".into();
        config["variant"] = "v8".into();
        f.config = serde_json::to_vec(&config).unwrap();
        f.id = Digest::of(&f.config);
        f
    }

    fn index_request(sources: &[&str]) -> IndexRequest {
        IndexRequest {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            destination: "127.0.0.1:5000/team/multi:1".into(),
            settings: Settings {
                verify: true,
                ..settings()
            },
        }
    }

    #[test]
    fn an_index_names_each_platform_manifest_and_is_tagged_last() {
        let (amd, arm) = (fixture(), arm_fixture());
        let mut arm_summary = summary(&arm);
        arm_summary.platform = Some(Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        });
        let mut source = TwoImages(
            Memory::new(classic_export(&amd), summary(&amd)),
            Memory::new(classic_export(&arm), arm_summary),
        );
        let registry = MemoryRegistry::default();
        let mut events = Events::default();
        let pushed = push_index(
            &index_request(&["amd", "arm"]),
            &mut source,
            &mut registry.clone(),
            &mut MemoryCache::default(),
            &mut events,
        )
        .unwrap();
        let log = registry.0.borrow();
        let index: serde_json::Value =
            serde_json::from_slice(log.manifest.as_ref().unwrap()).unwrap();
        assert_eq!(pushed.digest, Digest::of(log.manifest.as_ref().unwrap()));
        assert_eq!(index["mediaType"], crate::manifest::OCI_INDEX);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["platform"]["architecture"], "amd64");
        assert_eq!(entries[1]["platform"]["architecture"], "arm64");
        assert_eq!(entries[1]["platform"]["variant"], "v8");
        // Children by digest, the index by digest (to verify it before it is tagged), the
        // tag last.
        let writes: Vec<&String> = log
            .calls
            .iter()
            .filter(|c| c.starts_with("manifest "))
            .collect();
        assert_eq!(writes.len(), 4);
        for (write, entry) in writes.iter().zip(entries) {
            assert!(
                write.starts_with(&format!("manifest {} ", entry["digest"].as_str().unwrap())),
                "{write}"
            );
        }
        let index_type = crate::manifest::OCI_INDEX;
        assert_eq!(
            writes[2],
            &format!("manifest {} {index_type}", pushed.digest)
        );
        assert_eq!(writes[3], &format!("manifest 1 {index_type}"));
        assert!(matches!(
            events.0.last(),
            Some(Event::Verified {
                manifests: 3,
                blobs: 6,
                ..
            })
        ));
    }

    #[test]
    fn two_images_for_one_platform_are_refused_before_any_upload() {
        let (amd, other) = (fixture(), arm_fixture());
        // The daemon says both are linux/amd64.
        let mut source = TwoImages(
            Memory::new(classic_export(&amd), summary(&amd)),
            Memory::new(classic_export(&other), summary(&amd)),
        );
        let registry = MemoryRegistry::default();
        let err = push_index(
            &index_request(&["amd", "amd2"]),
            &mut source,
            &mut registry.clone(),
            &mut MemoryCache::default(),
            &mut Events::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("both for linux/amd64"), "{err}");
        assert!(registry.0.borrow().calls.is_empty());
    }

    impl crate::build::ImageBuilder for Memory {
        fn build(
            &mut self,
            request: &crate::build::BuildRequest,
            output: &mut dyn FnMut(String),
        ) -> Result<Digest> {
            output(format!("building {}", request.tag));
            Ok(self.image.id.clone())
        }
    }

    #[test]
    fn a_build_reports_its_output_then_pushes_the_image_by_id() {
        use crate::build::{build_and_push, BuildPushRequest, BuildRequest};
        let f = fixture();
        let mut daemon = Memory::new(classic_export(&f), summary(&f));
        let registry = MemoryRegistry::default();
        let mut events = Events::default();
        let mut request = BuildPushRequest {
            build: BuildRequest {
                context: "ctx".into(),
                dockerfile: None,
                tag: "app:1".into(),
                build_args: vec![],
            },
            destination: Some("127.0.0.1:5000/team/app:1".into()),
            settings: settings(),
        };
        let built = build_and_push(
            &request,
            &mut daemon,
            &mut registry.clone(),
            &mut MemoryCache::default(),
            &mut events,
        )
        .unwrap();
        assert_eq!(built.id, f.id);
        let pushed = built.pushed.unwrap();
        assert_eq!(
            pushed.digest,
            Digest::of(registry.0.borrow().manifest.as_ref().unwrap())
        );
        assert_eq!(events.0[0], Event::BuildOutput("building app:1".into()));
        assert_eq!(
            events.0[1],
            Event::Built {
                tag: "app:1".into(),
                id: f.id.clone()
            }
        );
        assert!(matches!(&events.0[2], Event::Started { image, .. } if image == f.id.as_str()));

        // A destination the push would refuse stops the build from starting.
        request.destination = Some("127.0.0.1:5000/Team/app:1".into());
        let mut events = Events::default();
        assert!(build_and_push(
            &request,
            &mut daemon,
            &mut registry.clone(),
            &mut MemoryCache::default(),
            &mut events,
        )
        .is_err());
        assert!(events.0.is_empty());
        // Without a destination, only the build.
        request.destination = None;
        let built = build_and_push(
            &request,
            &mut daemon,
            &mut MemoryRegistry::default(),
            &mut MemoryCache::default(),
            &mut Events::default(),
        )
        .unwrap();
        assert_eq!(built.pushed, None);
    }
}
