//! The export reader: a `docker save` stream, a tar that holds an image's layers, config and a
//! `manifest.json`, read and checked against what the source said about the image.
//!
//! Three dialects are read alike:
//! - Docker <= 24: `<v1id>/layer.tar` per layer, `<image id>.json` config, and `manifest.json`
//!   at the end of the stream;
//! - podman's API service: `<diff id>.tar` layers at the top, `<v1id>/layer.tar` symlinks to them;
//! - Docker >= 25: an OCI layout, `blobs/sha256/<hex>` for layers and config, plus `manifest.json`.
//!   With the containerd image store its layers may already be compressed: such a blob is stored
//!   as it is (its bytes checked against the digest that names it), with the media type the
//!   export's OCI manifest gives it; its diff ID is the config's, as the daemon reports it.
//!
//! The stream is read once, in order, and never held whole: each layer is handed to the caller
//! to hash and upload as it passes, and only small metadata files are kept. Because
//! `manifest.json` may come last, layers are matched to the image by their computed diff IDs,
//! and the final order is checked against the config once the stream has ended.
//!
//! A multi-platform image (Docker >= 25's containerd store: the image ID names an index) is
//! read twice or more. Docker writes its export's entries sorted by name, so the index
//! (`blobs/sha256/<ID>`) may come after layers, and `index.json` comes after every blob; and
//! the daemon's inspect does not say whether the ID names an index or a manifest (Docker
//! Engine API 1.45 has no descriptor in the answer). So, before any upload, `survey` looks
//! over the export keeping only the small blobs (index, manifests, configs) and every blob's
//! size, which is all the completeness check needs; it stops as soon as the ID's own blob
//! proves to be a single manifest. Then each chosen platform is read from an export of its own
//! in which every other platform's blob is skipped unread (`Within`).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom};

use anyhow::{bail, Context, Result};

use crate::config;
use crate::digest::Digest;
use crate::model::{Blob, IdKind, ImageSummary, Layer, Named, SavedImage, Within};
use crate::own;
use crate::platforms::{self, Holdings};
use crate::ports::{ImageSource, LayerEntry, Publish, ReadExport, SkipRead, Unverified};
use crate::savefile::{entry_path, follow_links, normalize, SaveManifest};

/// The most bytes one metadata file (config, `manifest.json`, index) may have.
const METADATA_FILE_LIMIT: u64 = 16 << 20;
/// The most bytes all metadata files together may have.
const METADATA_TOTAL_LIMIT: u64 = 64 << 20;

impl<S: ImageSource> ReadExport for S {
    fn read_export(
        &mut self,
        image: &ImageSummary,
        publish: &mut impl Publish,
    ) -> Result<SavedImage> {
        let export = match &image.within {
            Some(within) => self.export_platform(within)?,
            // By ID, so inspect and export see one image.
            None => self.export(image.id.as_str())?,
        };
        read_export(export, image, publish)
    }

    fn survey(&mut self, image: &ImageSummary) -> Result<Named> {
        if let Some(index) = self.inspected_index() {
            return Ok(Named::Index(index));
        }
        if image.id_kind == IdKind::Config || image.within.is_some() {
            return Ok(Named::Config);
        }
        survey(self.export(image.id.as_str())?, &image.id)
    }
}

/// The largest blob `survey` reads: indexes, manifests and configs are far smaller.
const SMALL_BLOB_LIMIT: u64 = 1 << 20;

/// Looks over the export of the image whose ID is `id`, keeping only its small blobs and the
/// sizes of all: the multi-platform image it is when `id` names an index; the manifest as soon
/// as `id`'s blob proves to be one (the rest of the stream is left unread). A large blob's
/// bytes are passed over, not read (`Forward`): only its size counts here.
pub fn survey(stream: impl SkipRead, id: &Digest) -> Result<Named> {
    let mut held = Surveyed::default();
    let mut archive = Forward::archive(stream);
    let entries = archive
        .entries_with_seek()
        .context("reading the export stream")?;
    for entry in entries {
        let mut entry = entry.context("reading the export stream")?;
        let (name, link) = entry_path(&entry);
        let digest = name
            .strip_prefix("blobs/sha256/")
            .and_then(Digest::from_hex);
        let (Some(digest), None) = (digest, link) else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let size = entry.size();
        held.sizes.insert(digest.clone(), size);
        if size > SMALL_BLOB_LIMIT {
            continue;
        }
        held.small_bytes += size;
        if held.small_bytes > METADATA_TOTAL_LIMIT {
            bail!("the export's small blobs add up to more than {METADATA_TOTAL_LIMIT} bytes");
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {name} from the export"))?;
        if Digest::of(&bytes) != digest {
            bail!(
                "digest mismatch: the export's {name} hashes to {}",
                Digest::of(&bytes)
            );
        }
        if &digest == id && !platforms::is_index(&bytes) {
            return Ok(Named::Manifest(bytes));
        }
        held.small.insert(digest, bytes);
    }
    let index = platforms::index_of(id, &held, "the export")?;
    Ok(index.map_or(Named::Config, Named::Index))
}

/// What `survey` saw of an export: small blobs, checked, and every blob's size.
#[derive(Default)]
struct Surveyed {
    small: HashMap<Digest, Vec<u8>>,
    sizes: HashMap<Digest, u64>,
    small_bytes: u64,
}

impl Holdings for Surveyed {
    fn small(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        Ok(self.small.get(digest).cloned())
    }
    fn holds(&self, blob: &Blob) -> Result<bool> {
        Ok(self.sizes.get(&blob.digest) == Some(&blob.size))
    }
}

/// Reads a `docker save` stream of the image `image` describes. Every layer entry is passed to
/// `publish`; the result is then checked against the config's `rootfs.diff_ids` and the
/// daemon's summary.
pub fn read_export(
    stream: impl SkipRead,
    image: &ImageSummary,
    publish: &mut impl Publish,
) -> Result<SavedImage> {
    let mut entries = Entries::default();
    entries.read(stream, image, publish)?;
    let manifest = find_manifest(&entries.metadata, image)?;
    let config = entries.config(&manifest, image)?;
    let layers = entries.layers(&manifest, image, &config, publish)?;
    let own = own::find(&entries.metadata, &config, &layers)?;
    Ok(SavedImage {
        config,
        layers,
        own,
    })
}

/// What one pass over the stream kept, by normalized path.
#[derive(Default)]
struct Entries {
    /// Uncompressed layers, as the caller published them.
    layers: HashMap<String, Layer>,
    /// Compressed layers too large for metadata, stored as they passed.
    blobs: HashMap<String, Blob>,
    /// Links, to the path they point to.
    links: HashMap<String, String>,
    /// Small files: `manifest.json`, configs, OCI manifests and index, small blobs.
    metadata: HashMap<String, Vec<u8>>,
    metadata_bytes: u64,
    /// Layer entries handed to the caller so far.
    layer_count: u32,
    /// Layer entries the caller passed over unread, taking them for the layer their name or
    /// size promised: only their place in the image can still say they were not.
    passed_over: HashSet<String>,
}

impl Entries {
    /// The pass over the stream: layers go to `publish` as they pass, the rest is kept.
    fn read(
        &mut self,
        stream: impl SkipRead,
        image: &ImageSummary,
        publish: &mut impl Publish,
    ) -> Result<()> {
        let mut archive = Forward::archive(stream);
        // With seeking, an entry the caller does not read is passed over, not read.
        let entries = archive
            .entries_with_seek()
            .context("reading the export stream")?;
        for entry in entries {
            let mut entry = entry.context("reading the export stream")?;
            let (name, link) = entry_path(&entry);
            if let Some(target) = link {
                self.links.insert(name, target);
                continue;
            }
            if image.within.as_ref().is_some_and(|w| elsewhere(&name, w)) {
                continue;
            }
            if entry.header().entry_type().is_file() {
                let size = entry.size();
                self.take(&mut entry, name, size, image, publish)?;
            }
        }
        Ok(())
    }

    /// One regular file of the stream.
    fn take(
        &mut self,
        entry: &mut dyn Read,
        name: String,
        size: u64,
        image: &ImageSummary,
        publish: &mut impl Publish,
    ) -> Result<()> {
        match classify(&name, &image.diff_ids) {
            EntryKind::Layer => {
                let named = named_diff_id(&name, &image.diff_ids);
                let (layer, read) =
                    hand_over(&mut self.layer_count, entry, &name, size, named, |layer| {
                        publish.layer(layer)
                    })?;
                if !read {
                    self.passed_over.insert(name.clone());
                }
                self.layers.insert(name, layer);
            }
            // Too large for metadata: an already compressed layer, stored as it passes.
            EntryKind::Blob(digest) if size > METADATA_FILE_LIMIT => {
                let (blob, _) =
                    hand_over(&mut self.layer_count, entry, &name, size, None, |layer| {
                        publish.blob(layer, &digest)
                    })?;
                self.blobs.insert(name, blob);
            }
            EntryKind::Metadata | EntryKind::Blob(_) => {
                self.metadata_bytes += size;
                if size > METADATA_FILE_LIMIT || self.metadata_bytes > METADATA_TOTAL_LIMIT {
                    bail!(
                        "export entry {name} ({size} bytes) is neither a layer the image lists nor small metadata"
                    );
                }
                let mut bytes = Vec::with_capacity(size as usize);
                entry
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("reading {name} from the export"))?;
                self.metadata.insert(name, bytes);
            }
            EntryKind::Other => {}
        }
        Ok(())
    }

    /// The config `manifest` names, checked against the image.
    fn config(&mut self, manifest: &SaveManifest, image: &ImageSummary) -> Result<Vec<u8>> {
        let config_path = self.resolve(&manifest.config)?;
        let config = self
            .metadata
            .remove(&config_path)
            .with_context(|| format!("the export's manifest.json names config {config_path}, which the export does not contain"))?;
        check_config(
            &config,
            &config_path,
            image,
            self.metadata.contains_key("index.json"),
        )?;
        Ok(config)
    }

    /// The layers `manifest` names, in its order, each the one the config lists at its place.
    fn layers(
        &mut self,
        manifest: &SaveManifest,
        image: &ImageSummary,
        config: &[u8],
        publish: &mut impl Publish,
    ) -> Result<Vec<Layer>> {
        if manifest.layers.len() != image.diff_ids.len() {
            bail!(
                "the export's manifest.json lists {} layers but the image has {}",
                manifest.layers.len(),
                image.diff_ids.len()
            );
        }
        let config_digest = Digest::of(config);
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (position, (path, expected)) in manifest.layers.iter().zip(&image.diff_ids).enumerate()
        {
            let path = self.resolve(path)?;
            let Some(layer) = self.layers.get(&path) else {
                // Not an uncompressed layer: a blob the export holds already compressed.
                layers.push(self.compressed(path, expected, &config_digest, publish)?);
                continue;
            };
            if &layer.diff_id != expected && self.passed_over.contains(&path) {
                // Taken unread for another layer: its bytes are gone, so the caller exports
                // again, reading everything.
                return Err(Unverified {
                    entry: path,
                    position: position + 1,
                    taken_for: layer.diff_id.clone(),
                    expected: expected.clone(),
                }
                .into());
            }
            if &layer.diff_id != expected {
                bail!(
                    "digest mismatch: layer {} of the image ({path}) has diff ID {} but the image config lists {expected}",
                    position + 1,
                    layer.diff_id
                );
            }
            layers.push(layer.clone());
        }
        Ok(layers)
    }

    /// The layer at `path` held compressed, as the export's OCI manifest for the config
    /// describes it: stored as it passed if it was large, now if it was kept as metadata.
    fn compressed(
        &mut self,
        path: String,
        diff_id: &Digest,
        config: &Digest,
        publish: &mut impl Publish,
    ) -> Result<Layer> {
        let Some(digest) = path
            .strip_prefix("blobs/sha256/")
            .and_then(Digest::from_hex)
        else {
            bail!(
                "the export's manifest.json names layer {path}, which the export does not contain"
            );
        };
        let media_type = compressed_layer_type(&self.metadata, config, &digest)
            .with_context(|| format!("the export's manifest.json names layer {path}, which is neither an uncompressed layer of the image nor a compressed layer its OCI manifest describes"))?;
        let blob = match self.blobs.get(&path) {
            Some(blob) => blob.clone(),
            None => {
                let bytes = self.metadata.get(&path).with_context(|| {
                    format!("the export's manifest.json names layer {path}, which the export does not contain")
                })?;
                let size = bytes.len() as u64;
                hand_over(
                    &mut self.layer_count,
                    &mut &bytes[..],
                    &path,
                    size,
                    None,
                    |layer| publish.blob(layer, &digest),
                )?
                .0
            }
        };
        Ok(Layer {
            diff_id: diff_id.clone(),
            blob,
            media_type: Some(media_type),
        })
    }

    /// Follows links (podman's `<v1id>/layer.tar` -> `../<diffid>.tar`) to the stored entry.
    fn resolve(&self, path: &str) -> Result<String> {
        follow_links(path, |p| self.links.get(p).map(String::as_str))
            .map_err(|e| anyhow::anyhow!("the export's {e}"))
    }
}

/// Hands the next layer entry of the stream, `size` bytes of `data`, to the caller; says
/// whether the caller read it (or passed over it, which only a layer entry may).
fn hand_over<T>(
    count: &mut u32,
    data: &mut dyn Read,
    name: &str,
    size: u64,
    named: Option<Digest>,
    caller: impl FnOnce(LayerEntry<'_>) -> Result<T>,
) -> Result<(T, bool)> {
    *count += 1;
    let mut data = Exact {
        inner: data,
        name,
        left: size,
        read: false,
    };
    let result = caller(LayerEntry {
        index: *count,
        name: name.to_string(),
        size,
        named,
        data: &mut data,
    })?;
    Ok((result, data.read))
}

/// An entry's bytes, failing if the stream ends before the size its header promised (the tar
/// reader just stops early).
struct Exact<'a, R: Read> {
    inner: R,
    name: &'a str,
    left: u64,
    /// Whether the caller read at all (a caller passes over an entry by never reading it).
    read: bool,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read = true;
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the export stream ended {} bytes before the end of {}",
                    self.left, self.name
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The export stream as the tar reader sees it: the bytes of an entry nobody reads are passed
/// over (`SkipRead::skip`: for a daemon's export, in the host), never read. The reader only
/// seeks forward from where it is, to the next entry's header.
struct Forward<S> {
    inner: S,
    pos: u64,
}

impl<S: SkipRead> Forward<S> {
    /// A tar reader over `stream` from its start.
    fn archive(stream: S) -> tar::Archive<Self> {
        tar::Archive::new(Self {
            inner: stream,
            pos: 0,
        })
    }
}

impl<S: Read> Read for Forward<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<S: SkipRead> Seek for Forward<S> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let n = match to {
            SeekFrom::Current(n) => u64::try_from(n).ok(),
            SeekFrom::Start(at) => at.checked_sub(self.pos),
            SeekFrom::End(_) => None,
        }
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "the export stream is read forward only",
            )
        })?;
        self.inner.skip(n)?;
        self.pos += n;
        Ok(self.pos)
    }
}

/// The diff ID a layer entry's name states, when it is one of the image's: Docker >= 25
/// names a layer's blob by it (`blobs/sha256/<hex>`), podman its top-level `<hex>.tar`.
/// Docker <= 24's `<v1 id>/layer.tar` states none.
fn named_diff_id(name: &str, diff_ids: &[Digest]) -> Option<Digest> {
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".tar").filter(|n| !n.contains('/')))?;
    Digest::from_hex(hex).filter(|digest| diff_ids.contains(digest))
}

/// What an entry of the export is, by its path.
#[derive(Debug, PartialEq, Eq)]
enum EntryKind {
    /// An uncompressed layer tar, to be streamed.
    Layer,
    /// Another OCI blob: kept if small (a config, manifest or index, or a small compressed
    /// layer), stored as it passes if not (a compressed layer).
    Blob(Digest),
    /// A small file to keep: `manifest.json`, the config.
    Metadata,
    /// Anything else: directories' legacy `json` and `VERSION`, `repositories`, `oci-layout`.
    Other,
}

fn classify(name: &str, diff_ids: &[Digest]) -> EntryKind {
    if let Some(hex) = name.strip_prefix("blobs/sha256/") {
        // In the OCI dialect an uncompressed layer's blob is named by its diff ID.
        return match Digest::from_hex(hex) {
            Some(digest) if diff_ids.contains(&digest) => EntryKind::Layer,
            Some(digest) => EntryKind::Blob(digest),
            None => EntryKind::Other,
        };
    }
    let top_level = !name.contains('/');
    if name.ends_with("/layer.tar") || (top_level && name.ends_with(".tar")) {
        EntryKind::Layer
    } else if top_level && name.ends_with(".json") {
        EntryKind::Metadata
    } else {
        EntryKind::Other
    }
}

/// Whether the entry `name` is a blob of another platform than `within`'s, in the export of a
/// multi-platform image: skipped unread.
fn elsewhere(name: &str, within: &Within) -> bool {
    name.strip_prefix("blobs/sha256/")
        .and_then(Digest::from_hex)
        .is_some_and(|digest| !within.blobs().any(|b| b == &digest))
}

/// Picks the `manifest.json` entry for the image: the only one, or the one whose config is the
/// image ID. For one platform of a multi-platform image (which `manifest.json` may not list),
/// the one its manifest implies.
fn find_manifest(
    metadata: &HashMap<String, Vec<u8>>,
    image: &ImageSummary,
) -> Result<SaveManifest> {
    if let Some(within) = &image.within {
        let path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        return Ok(SaveManifest {
            config: path(&within.config.digest),
            layers: within.layers.iter().map(|l| path(&l.digest)).collect(),
            repo_tags: None,
        });
    }
    let bytes = metadata
        .get("manifest.json")
        .context("the export has no manifest.json")?;
    let mut entries: Vec<SaveManifest> = serde_json::from_slice(bytes)
        .context("the export's manifest.json is not a docker save manifest")?;
    if entries.len() == 1 {
        return Ok(entries.remove(0));
    }
    entries
        .into_iter()
        .find(|m| {
            let config = normalize(&m.config);
            config == format!("{}.json", image.id.hex())
                || config == format!("blobs/sha256/{}", image.id.hex())
        })
        .with_context(|| {
            format!(
                "the export's manifest.json has no entry for image {}",
                image.id
            )
        })
}

/// Layer media types a registry stores compressed.
const COMPRESSED_LAYER_TYPES: [&str; 3] = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// The media type of `layer` in the export's OCI manifest for the config `config` (Docker
/// >= 25 exports hold one among their blobs), when it is a compressed layer type.
fn compressed_layer_type(
    metadata: &HashMap<String, Vec<u8>>,
    config: &Digest,
    layer: &Digest,
) -> Option<String> {
    metadata
        .iter()
        .filter(|(name, _)| name.starts_with("blobs/sha256/"))
        .filter_map(|(_, bytes)| serde_json::from_slice::<serde_json::Value>(bytes).ok())
        .filter(|json| json["config"]["digest"] == config.as_str())
        .flat_map(|json| json["layers"].as_array().cloned().unwrap_or_default())
        .find(|descriptor| descriptor["digest"] == layer.as_str())
        .and_then(|descriptor| descriptor["mediaType"].as_str().map(str::to_string))
        .filter(|media_type| COMPRESSED_LAYER_TYPES.contains(&media_type.as_str()))
}

/// The config must list exactly the daemon's diff IDs and hash to the image ID, except where
/// the image ID names a manifest (the containerd store's OCI export): there it must hash to the
/// digest it is stored under (`blobs/sha256/<hex>`), as every blob of an OCI layout does.
fn check_config(config: &[u8], path: &str, image: &ImageSummary, oci_export: bool) -> Result<()> {
    let digest = Digest::of(config);
    if digest != image.id {
        let stored_as = path
            .strip_prefix("blobs/sha256/")
            .and_then(Digest::from_hex);
        if !oci_export {
            bail!(
                "digest mismatch: the exported config hashes to {digest} but the image ID is {}",
                image.id
            );
        }
        if stored_as.as_ref() != Some(&digest) {
            bail!(
                "digest mismatch: the exported config {path} hashes to {digest}, which is neither the image ID {} nor the digest it is stored under",
                image.id
            );
        }
    }
    let diff_ids = config::diff_ids(config, || {
        "the exported image config has no valid rootfs.diff_ids".to_string()
    })?;
    if diff_ids != image.diff_ids {
        bail!("the exported config's rootfs.diff_ids differ from the layers the daemon reports for {}", image.id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, manifest_json, summary, tar, Fixture, Hashing, Item};

    /// A layer entry as the reader handed it over: index, path, size.
    type Seen = (u32, String, u64);

    /// Reads an export, "publishing" each layer as its own digest; returns the entries seen.
    fn read(stream: &[u8], image: &ImageSummary) -> Result<(SavedImage, Vec<Seen>)> {
        let mut publisher = Hashing::new(image);
        let saved = read_export(stream, image, &mut publisher)?;
        Ok((saved, publisher.seen))
    }

    fn check(saved: &SavedImage, f: &Fixture) {
        assert_eq!(saved.config, f.config);
        let diff_ids: Vec<_> = saved.layers.iter().map(|l| l.diff_id.clone()).collect();
        assert_eq!(diff_ids, f.diff_ids);
    }

    #[test]
    fn docker_classic_dialect_with_manifest_last() {
        let f = fixture();
        let config_name = format!("{}.json", f.id.hex());
        let manifest = manifest_json(&config_name, &["aaa/layer.tar", "bbb/layer.tar"]);
        let stream = tar(&[
            Item::File("aaa/VERSION", b"1.0"),
            Item::File("aaa/json", b"{}"),
            Item::File("aaa/layer.tar", &f.layers[0]),
            Item::File("bbb/layer.tar", &f.layers[1]),
            Item::File(&config_name, &f.config),
            Item::File("manifest.json", &manifest),
            Item::File("repositories", b"{}"),
        ]);
        let (saved, seen) = read(&stream, &summary(&f)).unwrap();
        check(&saved, &f);
        assert_eq!(
            seen,
            vec![
                (1, "aaa/layer.tar".into(), 3000),
                (2, "bbb/layer.tar".into(), 70_000)
            ]
        );
    }

    #[test]
    fn podman_dialect_with_symlinked_layers() {
        let f = fixture();
        let (a, b) = (
            format!("{}.tar", f.diff_ids[0].hex()),
            format!("{}.tar", f.diff_ids[1].hex()),
        );
        let config_name = format!("{}.json", f.id.hex());
        let manifest = manifest_json(&config_name, &["v1a/layer.tar", "v1b/layer.tar"]);
        let stream = tar(&[
            Item::File(&b, &f.layers[1]),
            Item::File(&a, &f.layers[0]),
            Item::Symlink("v1a/layer.tar", &format!("../{a}")),
            Item::Symlink("v1b/layer.tar", &format!("../{b}")),
            Item::File(&config_name, &f.config),
            Item::File("manifest.json", &manifest),
        ]);
        let (saved, seen) = read(&stream, &summary(&f)).unwrap();
        check(&saved, &f);
        assert_eq!(seen.len(), 2, "each layer streamed once");
    }

    #[test]
    fn oci_layout_dialect() {
        let f = fixture();
        let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let manifest = manifest_json(
            &blob(&f.id),
            &[&blob(&f.diff_ids[0]), &blob(&f.diff_ids[1])],
        );
        let stream = tar(&[
            Item::File("blobs/sha256/", b""),
            Item::File(&blob(&f.diff_ids[0]), &f.layers[0]),
            Item::File(&blob(&f.diff_ids[1]), &f.layers[1]),
            Item::File(&blob(&f.id), &f.config),
            Item::File("index.json", b"{}"),
            Item::File("manifest.json", &manifest),
            Item::File("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}"),
        ]);
        let (saved, seen) = read(&stream, &summary(&f)).unwrap();
        check(&saved, &f);
        assert_eq!(seen.len(), 2);
    }

    /// Found by the `export` fuzz target: an OCI export's config was not checked at all (its
    /// image ID may name a manifest), so a tampered config with the right diff IDs passed.
    #[test]
    fn an_oci_export_config_must_hash_to_its_blob_name() {
        let f = fixture();
        let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let tampered = String::from_utf8(f.config.clone())
            .unwrap()
            .replace("amd64", "arm64")
            .into_bytes();
        assert_ne!(tampered, f.config);
        let manifest = manifest_json(
            &blob(&f.id),
            &[&blob(&f.diff_ids[0]), &blob(&f.diff_ids[1])],
        );
        let stream = tar(&[
            Item::File(&blob(&f.diff_ids[0]), &f.layers[0]),
            Item::File(&blob(&f.diff_ids[1]), &f.layers[1]),
            Item::File(&blob(&f.id), &tampered),
            Item::File("index.json", b"{}"),
            Item::File("manifest.json", &manifest),
        ]);
        // The image ID names a manifest, as on the containerd store.
        let image = ImageSummary {
            id: Digest::of(b"a manifest"),
            ..summary(&f)
        };
        let err = read(&stream, &image).unwrap_err().to_string();
        assert!(
            err.contains("digest mismatch") && err.contains("nor the digest it is stored under"),
            "{err}"
        );
    }

    #[test]
    fn config_that_is_not_the_image_id_is_refused() {
        let f = fixture();
        let mut image = summary(&f);
        image.id = Digest::of(b"another config");
        let config_name = format!("{}.json", f.id.hex());
        let manifest = manifest_json(&config_name, &["aaa/layer.tar", "bbb/layer.tar"]);
        let stream = tar(&[
            Item::File("aaa/layer.tar", &f.layers[0]),
            Item::File("bbb/layer.tar", &f.layers[1]),
            Item::File(&config_name, &f.config),
            Item::File("manifest.json", &manifest),
        ]);
        let err = read(&stream, &image).unwrap_err().to_string();
        assert!(err.contains("digest mismatch"), "{err}");
    }

    #[test]
    fn layers_in_the_wrong_order_are_refused() {
        let f = fixture();
        let config_name = format!("{}.json", f.id.hex());
        let manifest = manifest_json(&config_name, &["bbb/layer.tar", "aaa/layer.tar"]);
        let stream = tar(&[
            Item::File("aaa/layer.tar", &f.layers[0]),
            Item::File("bbb/layer.tar", &f.layers[1]),
            Item::File(&config_name, &f.config),
            Item::File("manifest.json", &manifest),
        ]);
        let err = read(&stream, &summary(&f)).unwrap_err().to_string();
        assert!(err.contains("layer 1 of the image"), "{err}");
    }

    #[test]
    fn missing_manifest_and_missing_layer_are_errors() {
        let f = fixture();
        let stream = tar(&[Item::File("aaa/layer.tar", &f.layers[0])]);
        let err = read(&stream, &summary(&f)).unwrap_err().to_string();
        assert!(err.contains("no manifest.json"), "{err}");

        let config_name = format!("{}.json", f.id.hex());
        let manifest = manifest_json(&config_name, &["aaa/layer.tar", "zzz/layer.tar"]);
        let stream = tar(&[
            Item::File("aaa/layer.tar", &f.layers[0]),
            Item::File(&config_name, &f.config),
            Item::File("manifest.json", &manifest),
        ]);
        let err = read(&stream, &summary(&f)).unwrap_err().to_string();
        assert!(err.contains("zzz/layer.tar"), "{err}");
    }

    /// Docker >= 25 with the containerd store: layer 1 of the fixture held as a "compressed"
    /// blob (any bytes: the reader does not decompress), described by the export's OCI manifest.
    fn containerd_export(compressed: &[u8], described: bool) -> Vec<u8> {
        let f = fixture();
        let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let z = Digest::of(compressed);
        let mut layers = vec![serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f.diff_ids[0].as_str(), "size": 3000,
        })];
        if described {
            layers.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": z.as_str(), "size": compressed.len(),
            }));
        }
        let oci_manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f.id.as_str(), "size": f.config.len()},
            "layers": layers,
        }))
        .unwrap();
        let manifest = manifest_json(&blob(&f.id), &[&blob(&f.diff_ids[0]), &blob(&z)]);
        tar(&[
            Item::File(&blob(&Digest::of(&oci_manifest)), &oci_manifest),
            Item::File(&blob(&f.diff_ids[0]), &f.layers[0]),
            Item::File(&blob(&z), compressed),
            Item::File(&blob(&f.id), &f.config),
            Item::File("index.json", b"{}"),
            Item::File("manifest.json", &manifest),
        ])
    }

    #[test]
    fn compressed_layers_are_stored_as_they_are_small_or_large() {
        let f = fixture();
        let large = vec![7u8; (METADATA_FILE_LIMIT + 1) as usize];
        for compressed in [&b"zstd bytes"[..], &large[..]] {
            let (saved, seen) = read(&containerd_export(compressed, true), &summary(&f)).unwrap();
            assert_eq!(saved.config, f.config);
            assert_eq!(seen.len(), 2, "each layer streamed once");
            assert_eq!(saved.layers[0].media_type, None);
            assert_eq!(saved.layers[0].diff_id, f.diff_ids[0]);
            assert_eq!(
                saved.layers[1],
                Layer {
                    diff_id: f.diff_ids[1].clone(),
                    blob: Blob {
                        digest: Digest::of(compressed),
                        size: compressed.len() as u64
                    },
                    media_type: Some("application/vnd.oci.image.layer.v1.tar+zstd".into()),
                }
            );
        }
    }

    #[test]
    fn a_compressed_layer_must_match_its_name_and_be_described() {
        let f = fixture();
        let mut stream = containerd_export(b"zstd bytes", true);
        let at = stream.windows(10).position(|w| w == b"zstd bytes").unwrap();
        stream[at] ^= 0xff;
        let err = read(&stream, &summary(&f)).unwrap_err().to_string();
        assert!(err.contains("digest mismatch"), "{err}");

        let err = format!(
            "{:#}",
            read(&containerd_export(b"zstd bytes", false), &summary(&f)).unwrap_err()
        );
        assert!(err.contains("neither an uncompressed layer"), "{err}");
    }

    /// A hostile manifest.json or config nested 100,000 deep is no stack overflow (the guest's
    /// wasm stack is small): fields the reader does not use are skipped without recursion, and
    /// typed fields give up at serde_json's recursion limit of 128.
    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let f = fixture();
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
        let config_name = format!("{}.json", f.id.hex());
        let mut manifest = br#"[{"Config":"c.json","Layers":[],"Extra":"#.to_vec();
        manifest.extend(deep(100_000));
        manifest.extend(b"}]");
        let stream = tar(&[
            Item::File("aaa/layer.tar", &f.layers[0]),
            Item::File("bbb/layer.tar", &f.layers[1]),
            Item::File(&config_name, &f.config),
            Item::File("manifest.json", &manifest),
        ]);
        let err = format!("{:#}", read(&stream, &summary(&f)).unwrap_err());
        assert!(err.contains("names config c.json"), "{err}");
        let mut manifest = br#"[{"Config":"c.json","Layers":"#.to_vec();
        manifest.extend(deep(100_000));
        manifest.extend(b"}]");
        let Err(err) = serde_json::from_slice::<Vec<SaveManifest>>(&manifest) else {
            panic!("a nested Layers parsed");
        };
        assert!(err.to_string().contains("invalid type"), "{err}");
        let err = serde_json::from_slice::<serde_json::Value>(&deep(100_000)).unwrap_err();
        assert!(
            err.to_string().contains("recursion limit exceeded"),
            "{err}"
        );

        // A config nested past the limit, its digest the image ID.
        let mut config = br#"{"rootfs":{"diff_ids":[],"x":"#.to_vec();
        config.extend(deep(100_000));
        config.extend(b"}}");
        let image = ImageSummary {
            id: Digest::of(&config),
            ..summary(&f)
        };
        let config_name = format!("{}.json", image.id.hex());
        let stream = tar(&[
            Item::File("aaa/layer.tar", &f.layers[0]),
            Item::File("bbb/layer.tar", &f.layers[1]),
            Item::File(&config_name, &config),
            Item::File(
                "manifest.json",
                &manifest_json(&config_name, &["aaa/layer.tar", "bbb/layer.tar"]),
            ),
        ]);
        let err = format!("{:#}", read(&stream, &image).unwrap_err());
        assert!(err.contains("rootfs.diff_ids differ"), "{err}");
    }

    /// The survey of an export keeps small blobs and passes over a large one's bytes unread:
    /// only its size counts.
    #[test]
    fn survey_passes_over_large_blobs_unread() {
        struct Counted<'a>(&'a [u8], &'a std::cell::Cell<u64>);
        impl Read for Counted<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(out)?;
                self.1.set(self.1.get() + n as u64);
                Ok(n)
            }
        }
        impl SkipRead for Counted<'_> {
            fn skip(&mut self, n: u64) -> io::Result<()> {
                self.0.skip(n)
            }
        }
        let large = vec![9u8; 3 * SMALL_BLOB_LIMIT as usize];
        let manifest = br#"{"schemaVersion":2,"layers":[]}"#;
        let blob = |bytes: &[u8]| format!("blobs/sha256/{}", Digest::of(bytes).hex());
        let stream = tar(&[
            Item::File(&blob(&large), &large),
            Item::File(&blob(manifest), manifest),
        ]);
        let read = std::cell::Cell::new(0);
        let named = survey(Counted(&stream, &read), &Digest::of(manifest)).unwrap();
        assert!(matches!(named, Named::Manifest(bytes) if bytes == manifest));
        assert!(read.get() < SMALL_BLOB_LIMIT, "{} bytes read", read.get());
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let f = fixture();
        let stream = tar(&[Item::File("aaa/layer.tar", &f.layers[1])]);
        let err = format!("{:#}", read(&stream[..40_000], &summary(&f)).unwrap_err());
        assert!(
            err.contains("ended") && err.contains("aaa/layer.tar"),
            "{err}"
        );
    }
}
