//! The `docker save` stream: a tar that holds an image's layers, config and a `manifest.json`.
//!
//! Three dialects are read alike (see BRIEF.md):
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

use std::collections::HashMap;
use std::io::Read;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::Platform;

/// The most bytes one metadata file (config, `manifest.json`, index) may have.
const METADATA_FILE_LIMIT: u64 = 16 << 20;
/// The most bytes all metadata files together may have.
const METADATA_TOTAL_LIMIT: u64 = 64 << 20;
/// How many symlinks deep a layer path may be.
const LINK_DEPTH_LIMIT: usize = 8;

/// What the daemon says about the image before the export starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// The image ID; on Docker's classic store and podman, the config digest.
    pub id: Digest,
    /// The uncompressed layer digests, base first.
    pub diff_ids: Vec<Digest>,
    /// The layers' total content size in bytes.
    pub size: u64,
    /// The platform the daemon says the image is for (from its config), when it says.
    pub platform: Option<Platform>,
}

/// A blob as stored in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
}

/// A layer of the image: its uncompressed digest and the (compressed) blob stored for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub diff_id: Digest,
    pub blob: Blob,
    /// The blob's media type when it was stored as the export held it (already compressed);
    /// `None` when the host encoded it, as the push's encoding says.
    pub media_type: Option<String>,
}

/// What the caller does with layers as they pass in the export stream. Each entry must be read
/// whole.
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
    /// Its bytes.
    pub data: &'a mut dyn Read,
}

/// What the export held, checked against the daemon's summary of the image.
#[derive(Debug)]
pub struct SavedImage {
    /// The config, byte for byte as the daemon wrote it.
    pub config: Vec<u8>,
    /// The layers in image order (base first), each verified against the config's diff IDs.
    pub layers: Vec<Layer>,
}

/// Reads a `docker save` stream of the image `image` describes. Every layer entry is passed to
/// `publish`; the result is then checked against the config's `rootfs.diff_ids` and the
/// daemon's summary.
pub fn read_export(
    stream: impl Read,
    image: &ImageSummary,
    publish: &mut impl Publish,
) -> Result<SavedImage> {
    let mut archive = tar::Archive::new(stream);
    let mut layers_by_path: HashMap<String, Layer> = HashMap::new();
    let mut blobs_by_path: HashMap<String, Blob> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut metadata: HashMap<String, Vec<u8>> = HashMap::new();
    let mut metadata_bytes = 0u64;
    let mut layer_count = 0u32;

    for entry in archive.entries().context("reading the export stream")? {
        let mut entry = entry.context("reading the export stream")?;
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let resolved = if kind.is_symlink() {
                join_link(&name, &target)
            } else {
                normalize(&target)
            };
            links.insert(name, resolved);
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.size();
        match classify(&name, &image.diff_ids) {
            EntryKind::Layer => {
                layer_count += 1;
                let mut data = Exact {
                    inner: &mut entry,
                    name: &name,
                    left: size,
                };
                let layer = publish.layer(LayerEntry {
                    index: layer_count,
                    name: name.clone(),
                    size,
                    data: &mut data,
                })?;
                layers_by_path.insert(name, layer);
            }
            // Too large for metadata: an already compressed layer, stored as it passes.
            EntryKind::Blob(digest) if size > METADATA_FILE_LIMIT => {
                layer_count += 1;
                let mut data = Exact {
                    inner: &mut entry,
                    name: &name,
                    left: size,
                };
                let blob = publish.blob(
                    LayerEntry {
                        index: layer_count,
                        name: name.clone(),
                        size,
                        data: &mut data,
                    },
                    &digest,
                )?;
                blobs_by_path.insert(name, blob);
            }
            EntryKind::Metadata | EntryKind::Blob(_) => {
                metadata_bytes += size;
                if size > METADATA_FILE_LIMIT || metadata_bytes > METADATA_TOTAL_LIMIT {
                    bail!(
                        "export entry {name} ({size} bytes) is neither a layer the image lists nor small metadata"
                    );
                }
                let mut bytes = Vec::with_capacity(size as usize);
                entry
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("reading {name} from the export"))?;
                metadata.insert(name, bytes);
            }
            EntryKind::Other => {}
        }
    }

    let manifest = find_manifest(&metadata, image)?;
    let config_path = resolve(&manifest.config, &links)?;
    let config = metadata
        .remove(&config_path)
        .with_context(|| format!("the export's manifest.json names config {config_path}, which the export does not contain"))?;
    check_config(
        &config,
        &config_path,
        image,
        metadata.contains_key("index.json"),
    )?;

    if manifest.layers.len() != image.diff_ids.len() {
        bail!(
            "the export's manifest.json lists {} layers but the image has {}",
            manifest.layers.len(),
            image.diff_ids.len()
        );
    }
    let config_digest = Digest::of(&config);
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (position, (path, expected)) in manifest.layers.iter().zip(&image.diff_ids).enumerate() {
        let path = resolve(path, &links)?;
        let Some(layer) = layers_by_path.get(&path) else {
            // Not an uncompressed layer: a blob the export holds already compressed.
            let Some(digest) = path
                .strip_prefix("blobs/sha256/")
                .and_then(Digest::from_hex)
            else {
                bail!("the export's manifest.json names layer {path}, which the export does not contain");
            };
            let media_type = compressed_layer_type(&metadata, &config_digest, &digest)
                .with_context(|| format!("the export's manifest.json names layer {path}, which is neither an uncompressed layer of the image nor a compressed layer its OCI manifest describes"))?;
            let blob = match blobs_by_path.get(&path) {
                Some(blob) => blob.clone(),
                None => {
                    let bytes = metadata.get(&path).with_context(|| {
                        format!("the export's manifest.json names layer {path}, which the export does not contain")
                    })?;
                    layer_count += 1;
                    publish.blob(
                        LayerEntry {
                            index: layer_count,
                            name: path.clone(),
                            size: bytes.len() as u64,
                            data: &mut &bytes[..],
                        },
                        &digest,
                    )?
                }
            };
            layers.push(Layer {
                diff_id: expected.clone(),
                blob,
                media_type: Some(media_type),
            });
            continue;
        };
        if &layer.diff_id != expected {
            bail!(
                "digest mismatch: layer {} of the image ({path}) has diff ID {} but the image config lists {expected}",
                position + 1,
                layer.diff_id
            );
        }
        layers.push(layer.clone());
    }
    Ok(SavedImage { config, layers })
}

/// An entry's bytes, failing if the stream ends before the size its header promised (the tar
/// reader just stops early).
struct Exact<'a, R: Read> {
    inner: R,
    name: &'a str,
    left: u64,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
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

/// One entry of `manifest.json`.
#[derive(Deserialize)]
struct SaveManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Picks the `manifest.json` entry for the image: the only one, or the one whose config is the
/// image ID.
fn find_manifest(
    metadata: &HashMap<String, Vec<u8>>,
    image: &ImageSummary,
) -> Result<SaveManifest> {
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

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
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
    let parsed: ConfigRootfs = serde_json::from_slice(config)
        .context("the exported image config has no valid rootfs.diff_ids")?;
    let diff_ids = parsed
        .rootfs
        .diff_ids
        .iter()
        .map(|d| Digest::parse(d, "the config's diff ID"))
        .collect::<Result<Vec<_>>>()?;
    if diff_ids != image.diff_ids {
        bail!("the exported config's rootfs.diff_ids differ from the layers the daemon reports for {}", image.id);
    }
    Ok(())
}

/// Follows symlinks (podman's `<v1id>/layer.tar` -> `../<diffid>.tar`) to the stored entry.
fn resolve(path: &str, links: &HashMap<String, String>) -> Result<String> {
    let mut path = normalize(path);
    for _ in 0..LINK_DEPTH_LIMIT {
        match links.get(&path) {
            Some(target) => path = target.clone(),
            None => return Ok(path),
        }
    }
    bail!("the export's link {path} is nested more than {LINK_DEPTH_LIMIT} deep")
}

/// The archive path a symlink at `link` pointing to `target` refers to.
pub(crate) fn join_link(link: &str, target: &str) -> String {
    if target.starts_with('/') {
        return normalize(target);
    }
    match link.rsplit_once('/') {
        Some((dir, _)) => normalize(&format!("{dir}/{target}")),
        None => normalize(target),
    }
}

/// Removes `.`, empty components and resolves `..` (never above the archive root).
pub(crate) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
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

    #[test]
    fn paths_and_links_normalize() {
        assert_eq!(normalize("./a//b/../c"), "a/c");
        assert_eq!(join_link("v1/layer.tar", "../abc.tar"), "abc.tar");
        assert_eq!(join_link("layer.tar", "/x/y.tar"), "x/y.tar");
    }
}
