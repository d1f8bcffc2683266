//! What each fuzz target does with its input. Shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/`) and by the corpus replay test (`tests/fuzz_corpus.rs`), which runs every
//! file of `fuzz/corpus/<target>/` through the same function in the normal test command.
//!
//! A target may reject its input (every parser returns an error for garbage); it must not panic,
//! loop, or allocate without bound, and what it accepts must satisfy the asserted invariants.

use std::collections::HashMap;
use std::io::Read;

use ocipush_guest::archive::Archive;
use ocipush_guest::cache;
use ocipush_guest::digest::Digest;
use ocipush_guest::layout::Layout;
use ocipush_guest::model::{Blob, Compression, Encoding, IdKind, ImageSummary, Layer, Named};
use ocipush_guest::ports::{
    Cache, ImageSource, LayerEntry, LayoutFiles, Publish, RandomAccess, ReadExport,
};
use ocipush_guest::reference;
use ocipush_guest::save::read_export;

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory and its cargo-fuzz binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("export", export),
    ("export_metadata", export_metadata),
    ("reference", reference),
    ("challenge", challenge),
    ("docker_config", docker_config),
    ("storage_inspect", storage_inspect),
    ("manifest", manifest),
    ("cache_entry", cache_entry),
    ("image_config", image_config),
    ("archive", archive),
    ("layout", layout),
];

/// The two layers of the image the export targets read (any bytes do: layers are not parsed).
pub const LAYERS: [&[u8]; 2] = [b"first layer of the fuzzed image\n", b"second layer\n"];

/// The config of that image, byte for byte: its sha256 is the image ID.
pub fn config() -> Vec<u8> {
    let diff_ids: Vec<String> = LAYERS.iter().map(|l| Digest::of(l).to_string()).collect();
    format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
        diff_ids[0], diff_ids[1]
    )
    .into_bytes()
}

fn image(config: &[u8]) -> ImageSummary {
    ImageSummary {
        id: Digest::of(config),
        diff_ids: LAYERS.iter().map(|l| Digest::of(l)).collect(),
        size: LAYERS.iter().map(|l| l.len() as u64).sum(),
        platform: None,
        id_kind: IdKind::Config,
        within: None,
        labels: Default::default(),
    }
}

/// Hashes layers and blobs as the push pipeline does and "publishes" each as its own digest.
struct Drain;

impl Drain {
    fn read(entry: LayerEntry<'_>) -> anyhow::Result<Blob> {
        let mut bytes = Vec::new();
        // The header may promise more than the input holds: the reader must fail, not wait.
        entry.data.take(1 << 20).read_to_end(&mut bytes)?;
        Ok(Blob {
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
        })
    }
}

impl Publish for Drain {
    fn layer(&mut self, entry: LayerEntry<'_>) -> anyhow::Result<Layer> {
        let blob = Self::read(entry)?;
        Ok(Layer {
            diff_id: blob.digest.clone(),
            blob,
            media_type: None,
        })
    }

    fn blob(&mut self, entry: LayerEntry<'_>, digest: &Digest) -> anyhow::Result<Blob> {
        let blob = Self::read(entry)?;
        anyhow::ensure!(&blob.digest == digest, "blob does not hash to its name");
        Ok(blob)
    }
}

/// Any bytes as a `docker save` stream of the fixed image. What it accepts must be that image.
pub fn export(data: &[u8]) {
    export_accepts(data);
}

/// Whether `data` reads as an export of the fixed image (asserting it is exactly that image).
pub fn export_accepts(data: &[u8]) -> bool {
    let config = config();
    let image = image(&config);
    let Ok(saved) = read_export(data, &image, &mut Drain) else {
        return false;
    };
    assert_eq!(saved.config, config);
    let diff_ids: Vec<_> = saved.layers.into_iter().map(|l| l.diff_id).collect();
    assert_eq!(diff_ids, image.diff_ids);
    true
}

/// A valid classic export whose `manifest.json` and config are the input, split at its first
/// NUL byte: reaches the JSON handling of both. The image ID is the input config's digest.
pub fn export_metadata(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let manifest = &data[..split];
    let config = data.get(split + 1..).unwrap_or_default();
    let image = image(config);
    let config_name = format!("{}.json", image.id.hex());
    let stream = tar(&[
        ("aaa/layer.tar", LAYERS[0]),
        ("bbb/layer.tar", LAYERS[1]),
        (&config_name, config),
        ("manifest.json", manifest),
    ]);
    if let Ok(saved) = read_export(&stream[..], &image, &mut Drain) {
        assert_eq!(saved.config, config);
        assert_eq!(saved.layers.len(), 2);
    }
}

/// A tar of regular files.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Any bytes as a `docker-archive:` file, opened without a reference and as `app:1`.
pub fn archive(data: &[u8]) {
    for reference in [None, Some("app:1")] {
        archive_accepts(data, reference);
    }
}

/// Whether `data` pushes as a `docker-archive:` file opened for `reference`; what it accepts
/// must read back through the export reader as the image its inspection described.
pub fn archive_accepts(data: &[u8], reference: Option<&str>) -> bool {
    let source = Archive::new(Memory(data.to_vec()), "fuzz.tar", reference);
    pushes_as_inspected(source, "docker-archive:fuzz.tar")
}

/// Any bytes as an `oci:` layout directory (see `layout_accepts`), opened without a tag and as
/// tag `1`.
pub fn layout(data: &[u8]) {
    for tag in [None, Some("1")] {
        layout_accepts(data, tag);
    }
}

/// Whether `data` pushes as an `oci:` layout directory opened for `tag`: its `index.json` is
/// `data` up to the first NUL byte, then come blobs separated by NUL bytes, each found by its
/// sha256. So that mutated manifests and configs still reach the checks behind their digests,
/// `@dN` in a piece stands for the digest of blob N (counted from 0) and `@sN` for its size,
/// for any later blob.
pub fn layout_accepts(data: &[u8], tag: Option<&str>) -> bool {
    let mut pieces: Vec<Vec<u8>> = data.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    // Backwards, so that each piece names blobs already resolved.
    for i in (0..pieces.len()).rev() {
        pieces[i] = resolve_blob_names(&pieces[i], &pieces[i + 1..], i);
    }
    let mut pieces = pieces.into_iter();
    let files = Directory {
        index: pieces.next().unwrap_or_default(),
        blobs: pieces.map(|b| (Digest::of(&b), b)).collect(),
    };
    pushes_as_inspected(Layout::new(files, "fuzz", tag), "oci:fuzz")
}

/// `piece`, at position `at` of the input (0 is the index, blob N is N + 1), with `@dN` and
/// `@sN` replaced by the digest and size of blob N when that blob comes later (in `later`, the
/// pieces after it, already resolved). Other `@` sequences stay as they are.
fn resolve_blob_names(piece: &[u8], later: &[Vec<u8>], at: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(piece.len());
    let mut i = 0;
    while i < piece.len() {
        if let [b'@', kind @ (b'd' | b's'), n @ b'0'..=b'9', ..] = piece[i..] {
            let position = (n - b'0') as usize + 1;
            if let Some(target) = position.checked_sub(at + 1).and_then(|k| later.get(k)) {
                match kind {
                    b'd' => out.extend_from_slice(Digest::of(target).as_str().as_bytes()),
                    _ => out.extend_from_slice(target.len().to_string().as_bytes()),
                }
                i += 3;
                continue;
            }
        }
        out.push(piece[i]);
        i += 1;
    }
    out
}

/// Inspects and exports a source, and reads the export as a push does. Whatever is read whole
/// must be the image the inspection described: its config hashes to the image ID, its layers
/// to the diff IDs.
fn pushes_as_inspected(mut source: impl ImageSource, name: &str) -> bool {
    let Ok(image) = source.inspect(name) else {
        return false;
    };
    // A multi-platform image: each platform the source holds whole reads as its own image.
    if let Ok(Named::Index(index)) = source.survey(&image) {
        for entry in &index.platforms {
            let Some(platform) = entry.summary(&index.own.digest) else {
                continue;
            };
            if let Ok(saved) = source.read_export(&platform, &mut Drain) {
                assert_eq!(Digest::of(&saved.config), platform.id);
                let diff_ids: Vec<_> = saved.layers.into_iter().map(|l| l.diff_id).collect();
                assert_eq!(diff_ids, platform.diff_ids);
            }
        }
        return true;
    }
    let Ok(saved) = source.read_export(&image, &mut Drain) else {
        return false;
    };
    assert_eq!(Digest::of(&saved.config), image.id);
    let diff_ids: Vec<_> = saved.layers.into_iter().map(|l| l.diff_id).collect();
    assert_eq!(diff_ids, image.diff_ids);
    true
}

/// A file in memory that hands out at most 1000 bytes per read, as a host may.
struct Memory(Vec<u8>);

impl RandomAccess for Memory {
    fn size(&self) -> anyhow::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read_at(&self, offset: u64, max: usize) -> anyhow::Result<Vec<u8>> {
        Ok(short_read(&self.0, offset, max))
    }
}

/// Up to `max` bytes of `bytes` from `offset`, but never more than 1000.
fn short_read(bytes: &[u8], offset: u64, max: usize) -> Vec<u8> {
    let start = offset.min(bytes.len() as u64) as usize;
    let end = (start + max.min(1000)).min(bytes.len());
    bytes[start..end].to_vec()
}

/// A layout directory in memory.
struct Directory {
    index: Vec<u8>,
    blobs: HashMap<Digest, Vec<u8>>,
}

impl LayoutFiles for Directory {
    fn index(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.index.clone())
    }
    fn read_blob(&self, digest: &Digest, offset: u64, max: usize) -> anyhow::Result<Vec<u8>> {
        let blob = self
            .blobs
            .get(digest)
            .ok_or_else(|| anyhow::anyhow!("no blob {digest}"))?;
        Ok(short_read(blob, offset, max))
    }
}

/// A push destination. What parses must print back to itself.
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(target) = reference::Target::parse(text) {
        assert!(!target.registry.is_empty() && !target.repository.is_empty());
        assert!(!target.tag.is_empty() && target.tag.len() <= 128);
        let again =
            reference::Target::parse(&format!("{}:{}", target.repository_url(), target.tag))
                .expect("a parsed destination prints as a valid one");
        assert_eq!(again, target);
    }
    let _ = reference::Destination::parse(text);
}

/// An image config, for what the manifest and index take from it (platform, annotations).
pub fn image_config(data: &[u8]) {
    if let Ok(platform) = ocipush_guest::config::platform(data) {
        let _ = format!("{platform:?}");
    }
    let _ = ocipush_guest::config::annotations(data);
}

/// A `WWW-Authenticate` header value.
pub fn challenge(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (scheme, params) = ocipush_parse::parse_challenge(&text);
    assert_eq!(scheme, scheme.to_ascii_lowercase());
    for (name, _) in params {
        assert!(!name.is_empty() && name == name.to_ascii_lowercase());
    }
}

/// A Docker `config.json` or podman `auth.json`, looked up for a few registry names, and
/// read for its current context; the same text as a context's `meta.json`.
pub fn docker_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for registry in ["docker.io", "127.0.0.1:5000", "ghcr.io"] {
        let _ = ocipush_parse::parse_docker_config(&text, registry, "team/app");
        let _ = ocipush_parse::mentions_registry(&text, registry);
    }
    let _ = ocipush_parse::current_context(&text);
    let _ = ocipush_parse::context_endpoint(&text);
}

/// What `podman image inspect` or `buildah inspect --type image` answered: an accepted image
/// has a well-formed ID.
pub fn storage_inspect(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = [
        ocipush_parse::podman_inspect(&text),
        ocipush_parse::buildah_inspect(&text),
    ];
    for image in parsed.into_iter().flatten() {
        assert_eq!(image.id.len(), "sha256:".len() + 64);
    }
}

/// A manifest the guest hands the host: the host finds the blobs it names before writing it.
pub fn manifest(data: &[u8]) {
    if let Ok(digests) = ocipush_parse::referenced_digests(data) {
        assert!(digests.len() <= data.len());
    }
}

/// A cache entry read back from disk (the cache directory is shared and may be damaged).
pub fn cache_entry(data: &[u8]) {
    let config = config();
    let image = image(&config);
    let encoding = Encoding::new(Compression::Gzip, 1).unwrap();
    let mut cache = Everything(data);
    if let Some(blob) = cache::layer_blob(&mut cache, &image.diff_ids[0], &encoding) {
        assert!(Digest::parse(blob.digest.as_str(), "digest").is_ok());
    }
    if let Some(blob) = cache::image_config(&mut cache, &image) {
        assert!(Digest::parse(blob.digest.as_str(), "digest").is_ok());
    }
}

/// A cache that answers every key with the same bytes.
struct Everything<'a>(&'a [u8]);

impl Cache for Everything<'_> {
    fn get(&mut self, _key: &str) -> Option<Vec<u8>> {
        Some(self.0.to_vec())
    }
    fn put(&mut self, _key: &str, _value: &[u8]) {}
}

/// Files of a corpus directory, by name (for the replay test).
pub fn corpus(dir: &std::path::Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_file())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
