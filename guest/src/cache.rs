//! What the guest remembers between runs, through the host's `cache` capability: for a layer's
//! diff ID and encoding, the blob it was published as, and for an export entry's name and size,
//! the diff ID it hashed to. Only verified uploads are recorded, a blob entry is used only after
//! a HEAD shows the registry holds a blob of that digest and size, and an entry name's diff ID
//! only as a guess that the entry's hash then confirms.
//! An entry that does not parse or does not match its key is ignored: it costs time, never
//! correctness.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::model::{Blob, Encoding, ImageSummary};
use crate::ports::Cache;

fn manifest_key(id: &Digest) -> String {
    format!("manifest-id/v1/{}", id.hex())
}

/// Whether image ID `id` names an image manifest, not an index, as an earlier look over its
/// export proved: the entry holds the manifest's bytes, which must hash to `id` and name no
/// manifests, so a damaged or forged entry proves nothing. Spares a push of a single-platform
/// image from Docker's containerd store the look over its export.
pub fn names_manifest(cache: &mut dyn Cache, id: &Digest) -> bool {
    cache
        .get(&manifest_key(id))
        .is_some_and(|bytes| &Digest::of(&bytes) == id && !crate::platforms::is_index(&bytes))
}

/// Records that image ID `id` names the image manifest `bytes`.
pub fn remember_manifest(cache: &mut dyn Cache, id: &Digest, bytes: &[u8]) {
    cache.put(&manifest_key(id), bytes);
}

/// One layer's published blob, as stored.
#[derive(Serialize, Deserialize)]
struct LayerEntry {
    diff_id: String,
    encoding: String,
    digest: String,
    size: u64,
}

fn key(diff_id: &Digest, encoding: &Encoding) -> String {
    format!("layer/v1/{}/{}", encoding.name(), diff_id.hex())
}

/// The blob a layer was last published as with this encoding, if the cache says so.
pub fn layer_blob(cache: &mut dyn Cache, diff_id: &Digest, encoding: &Encoding) -> Option<Blob> {
    let bytes = cache.get(&key(diff_id, encoding))?;
    let entry: LayerEntry = serde_json::from_slice(&bytes).ok()?;
    // The entry must say it is for this very key: a damaged or misplaced file is ignored.
    if entry.diff_id != diff_id.as_str() || entry.encoding != encoding.name() {
        return None;
    }
    let digest = Digest::parse(&entry.digest, "cached digest").ok()?;
    Some(Blob {
        digest,
        size: entry.size,
    })
}

/// Records that a verified layer was published as `blob`.
pub fn remember_layer(cache: &mut dyn Cache, diff_id: &Digest, encoding: &Encoding, blob: &Blob) {
    let entry = LayerEntry {
        diff_id: diff_id.to_string(),
        encoding: encoding.name(),
        digest: blob.digest.to_string(),
        size: blob.size,
    };
    if let Ok(bytes) = serde_json::to_vec(&entry) {
        cache.put(&key(diff_id, encoding), &bytes);
    }
}

/// What a layer entry of an export hashed to, as stored. Docker names a layer entry by the
/// chain of layers up to it (or by its digest), so an image built on another exports the shared
/// layers under the same names: the name says, before the bytes are read, which layer is coming.
#[derive(Serialize, Deserialize)]
struct ExportEntry {
    name: String,
    size: u64,
    diff_id: String,
}

fn entry_key(name: &str, size: u64) -> String {
    format!("entry/v1/{size}/{name}")
}

/// The diff ID an export entry of this name and size hashed to before, if the cache says so.
/// Only a guess: the entry is still hashed, and checked against it.
pub fn entry_diff_id(cache: &mut dyn Cache, name: &str, size: u64) -> Option<Digest> {
    let entry: ExportEntry = serde_json::from_slice(&cache.get(&entry_key(name, size))?).ok()?;
    if entry.name != name || entry.size != size {
        return None;
    }
    Digest::parse(&entry.diff_id, "cached diff ID").ok()
}

/// Records that the export entry `name` of `size` bytes hashed to `diff_id`.
pub fn remember_entry(cache: &mut dyn Cache, name: &str, size: u64, diff_id: &Digest) {
    let entry = ExportEntry {
        name: name.to_string(),
        size,
        diff_id: diff_id.to_string(),
    };
    if let Ok(bytes) = serde_json::to_vec(&entry) {
        cache.put(&entry_key(name, size), &bytes);
    }
}

/// A layer's size as a tar, as stored. The bytes that hash to a diff ID have one size, so this
/// is a fact of the layer, whatever its entry was named: an export entry of that size is a
/// candidate for it (the base's top layer, named after its image's config when the base was
/// pushed, has another name under an image built on it).
#[derive(Serialize, Deserialize)]
struct SizeEntry {
    diff_id: String,
    size: u64,
}

fn size_key(diff_id: &Digest) -> String {
    format!("layer-size/v1/{}", diff_id.hex())
}

/// The size of the layer tar that hashed to `diff_id`, if the cache says so.
pub fn layer_size(cache: &mut dyn Cache, diff_id: &Digest) -> Option<u64> {
    let entry: SizeEntry = serde_json::from_slice(&cache.get(&size_key(diff_id))?).ok()?;
    (entry.diff_id == diff_id.as_str()).then_some(entry.size)
}

/// Records that a layer tar of `size` bytes hashed to `diff_id`.
pub fn remember_layer_size(cache: &mut dyn Cache, diff_id: &Digest, size: u64) {
    let entry = SizeEntry {
        diff_id: diff_id.to_string(),
        size,
    };
    if let Ok(bytes) = serde_json::to_vec(&entry) {
        cache.put(&size_key(diff_id), &bytes);
    }
}

/// An image's config blob, as stored: the image ID alone does not say it is the config's
/// digest (on the containerd store it names a manifest), so the verified link is recorded.
#[derive(Serialize, Deserialize)]
struct ConfigEntry {
    image_id: String,
    diff_ids: Vec<String>,
    digest: String,
    size: u64,
}

fn config_key(image: &ImageSummary) -> String {
    format!("config/v1/{}", image.id.hex())
}

/// The config blob of `image`, if a push of it was recorded.
pub fn image_config(cache: &mut dyn Cache, image: &ImageSummary) -> Option<Blob> {
    let entry: ConfigEntry = serde_json::from_slice(&cache.get(&config_key(image))?).ok()?;
    let diff_ids: Vec<&str> = image.diff_ids.iter().map(Digest::as_str).collect();
    if entry.image_id != image.id.as_str() || entry.diff_ids != diff_ids {
        return None;
    }
    let digest = Digest::parse(&entry.digest, "cached digest").ok()?;
    Some(Blob {
        digest,
        size: entry.size,
    })
}

/// Records the config blob a verified push of `image` published.
pub fn remember_image_config(cache: &mut dyn Cache, image: &ImageSummary, config: &Blob) {
    let entry = ConfigEntry {
        image_id: image.id.to_string(),
        diff_ids: image.diff_ids.iter().map(Digest::to_string).collect(),
        digest: config.digest.to_string(),
        size: config.size,
    };
    if let Ok(bytes) = serde_json::to_vec(&entry) {
        cache.put(&config_key(image), &bytes);
    }
}

fn config_bytes_key(config: &Blob) -> String {
    format!("config-bytes/v1/{}", config.digest.hex())
}

/// The bytes of a config blob, if the cache holds bytes that hash to its digest.
pub fn config_bytes(cache: &mut dyn Cache, config: &Blob) -> Option<Vec<u8>> {
    let bytes = cache.get(&config_bytes_key(config))?;
    (bytes.len() as u64 == config.size && Digest::of(&bytes) == config.digest).then_some(bytes)
}

/// Keeps a verified config's bytes: a push that skips the export still needs what the
/// manifest takes from them (annotations, the platform).
pub fn remember_config_bytes(cache: &mut dyn Cache, config: &Blob, bytes: &[u8]) {
    cache.put(&config_bytes_key(config), bytes);
}

/// The repositories (`host[:port]/name`) a blob was last published to, most recent first.
#[derive(Serialize, Deserialize)]
struct HomesEntry {
    digest: String,
    homes: Vec<String>,
}

/// How many repositories are remembered per blob.
const HOMES: usize = 8;

fn homes_key(digest: &Digest) -> String {
    format!("homes/v1/{}", digest.hex())
}

/// Where `digest` was published, most recent first: repositories it might be mounted from.
pub fn homes(cache: &mut dyn Cache, digest: &Digest) -> Vec<String> {
    cache
        .get(&homes_key(digest))
        .and_then(|bytes| serde_json::from_slice::<HomesEntry>(&bytes).ok())
        .filter(|entry| entry.digest == digest.as_str())
        .map(|entry| entry.homes)
        .unwrap_or_default()
}

/// Records that `digest` is in `repository` (`host[:port]/name`) as part of a published image.
pub fn remember_home(cache: &mut dyn Cache, digest: &Digest, repository: &str) {
    let mut homes = homes(cache, digest);
    homes.retain(|h| h != repository);
    homes.insert(0, repository.to_string());
    homes.truncate(HOMES);
    let entry = HomesEntry {
        digest: digest.to_string(),
        homes,
    };
    if let Ok(bytes) = serde_json::to_vec(&entry) {
        cache.put(&homes_key(digest), &bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Compression;
    use crate::testing::{fixture, summary, MemoryCache};

    #[test]
    fn image_config_must_match_the_image() {
        let mut cache = MemoryCache::default();
        let f = fixture();
        let image = summary(&f);
        let config = Blob {
            digest: Digest::of(&f.config),
            size: f.config.len() as u64,
        };
        assert_eq!(image_config(&mut cache, &image), None);
        remember_image_config(&mut cache, &image, &config);
        assert_eq!(image_config(&mut cache, &image), Some(config));
        let mut changed = image.clone();
        changed.diff_ids.pop();
        assert_eq!(image_config(&mut cache, &changed), None);
    }

    #[test]
    fn config_bytes_must_hash_to_the_config_digest() {
        let mut cache = MemoryCache::default();
        let f = fixture();
        let config = Blob {
            digest: Digest::of(&f.config),
            size: f.config.len() as u64,
        };
        assert_eq!(config_bytes(&mut cache, &config), None);
        remember_config_bytes(&mut cache, &config, &f.config);
        assert_eq!(config_bytes(&mut cache, &config), Some(f.config.clone()));
        cache.put(&config_bytes_key(&config), b"{\"tampered\": true}");
        assert_eq!(config_bytes(&mut cache, &config), None);
    }

    #[test]
    fn remembers_per_diff_id_and_encoding() {
        let mut cache = MemoryCache::default();
        let gzip6 = Encoding {
            compression: Compression::Gzip,
            level: 6,
        };
        let gzip1 = Encoding {
            compression: Compression::Gzip,
            level: 1,
        };
        let diff_id = Digest::of(b"layer");
        let blob = Blob {
            digest: Digest::of(b"gz"),
            size: 42,
        };
        remember_layer(&mut cache, &diff_id, &gzip6, &blob);
        assert_eq!(layer_blob(&mut cache, &diff_id, &gzip6), Some(blob));
        assert_eq!(
            layer_blob(&mut cache, &diff_id, &gzip1),
            None,
            "another level is another blob"
        );
        assert_eq!(layer_blob(&mut cache, &Digest::of(b"other"), &gzip6), None);
    }

    #[test]
    fn damaged_or_misplaced_entries_are_ignored() {
        let mut cache = MemoryCache::default();
        let gzip = Encoding {
            compression: Compression::Gzip,
            level: 6,
        };
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        remember_layer(
            &mut cache,
            &a,
            &gzip,
            &Blob {
                digest: Digest::of(b"A"),
                size: 1,
            },
        );
        // An entry for `a` copied under `b`'s key must not be taken for `b`.
        let entry = cache.get(&key(&a, &gzip)).unwrap();
        cache.put(&key(&b, &gzip), &entry);
        assert_eq!(layer_blob(&mut cache, &b, &gzip), None);
        cache.put(&key(&a, &gzip), b"{\"diff_id\": trunc");
        assert_eq!(layer_blob(&mut cache, &a, &gzip), None);
    }

    #[test]
    fn homes_are_most_recent_first_and_bounded() {
        let mut cache = MemoryCache::default();
        let digest = Digest::of(b"blob");
        assert!(homes(&mut cache, &digest).is_empty());
        for i in 0..10 {
            remember_home(&mut cache, &digest, &format!("r:5000/repo{i}"));
        }
        remember_home(&mut cache, &digest, "r:5000/repo3");
        let found = homes(&mut cache, &digest);
        assert_eq!(found.len(), HOMES);
        assert_eq!(found[0], "r:5000/repo3");
        assert_eq!(found[1], "r:5000/repo9");
        assert_eq!(found.iter().filter(|h| *h == "r:5000/repo3").count(), 1);
        // An entry filed under another digest's key is ignored.
        let other = Digest::of(b"other");
        let misplaced = cache.get(&homes_key(&digest)).unwrap();
        cache.put(&homes_key(&other), &misplaced);
        assert!(homes(&mut cache, &other).is_empty());
    }
}
