//! Test material shared by the guest's unit tests: tar archives in the `docker save` dialects.

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::cache::Cache;
use crate::digest::Digest;
use crate::manifest::Platform;
use crate::save::{Blob, ImageSummary, Layer, LayerEntry, Publish};

/// A tar entry for test archives.
pub enum Item<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

pub fn tar(items: &[Item<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_ustar();
        match item {
            Item::File(path, data) => {
                header.set_size(data.len() as u64);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            Item::Symlink(path, target) => {
                header.set_size(0);
                header.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// Two layer tars (any bytes do: the reader does not look inside layers), their config.
pub struct Fixture {
    pub layers: [Vec<u8>; 2],
    pub diff_ids: Vec<Digest>,
    pub config: Vec<u8>,
    pub id: Digest,
}

pub fn fixture() -> Fixture {
    let layers = [vec![1u8; 3000], vec![2u8; 70_000]];
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(Digest::as_str).collect::<Vec<_>>()},
    }))
    .unwrap();
    let id = Digest::of(&config);
    Fixture {
        layers,
        diff_ids,
        config,
        id,
    }
}

pub fn summary(f: &Fixture) -> ImageSummary {
    ImageSummary {
        id: f.id.clone(),
        diff_ids: f.diff_ids.clone(),
        size: 73_000,
        platform: Some(Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }),
    }
}

/// A `manifest.json` with one image.
pub fn manifest_json(config: &str, layers: &[&str]) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!([{"Config": config, "RepoTags": ["app:1"], "Layers": layers}]),
    )
    .unwrap()
}

/// The classic (Docker <= 24) export of the fixture, its manifest.json last.
pub fn classic_export(f: &Fixture) -> Vec<u8> {
    let config_name = format!("{}.json", f.id.hex());
    let manifest = manifest_json(&config_name, &["aaa/layer.tar", "bbb/layer.tar"]);
    tar(&[
        Item::File("aaa/layer.tar", &f.layers[0]),
        Item::File("bbb/layer.tar", &f.layers[1]),
        Item::File(&config_name, &f.config),
        Item::File("manifest.json", &manifest),
    ])
}

/// A cache in memory.
#[derive(Default)]
pub struct MemoryCache(pub HashMap<String, Vec<u8>>);

impl Cache for MemoryCache {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }
    fn put(&mut self, key: &str, value: &[u8]) {
        self.0.insert(key.to_string(), value.to_vec());
    }
}

/// Publishes layers as the pipeline does, storing nothing: a layer must hash to one of
/// `diff_ids` and is "stored" uncompressed; a blob must hash to its digest.
pub struct Hashing {
    pub diff_ids: Vec<Digest>,
    /// The entries handed over: index, path, size.
    pub seen: Vec<(u32, String, u64)>,
}

impl Hashing {
    pub fn new(image: &ImageSummary) -> Self {
        Self {
            diff_ids: image.diff_ids.clone(),
            seen: Vec::new(),
        }
    }

    fn read(&mut self, entry: LayerEntry<'_>) -> Result<Blob> {
        let mut bytes = Vec::new();
        entry.data.read_to_end(&mut bytes)?;
        self.seen
            .push((entry.index, entry.name.clone(), entry.size));
        Ok(Blob {
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
        })
    }
}

impl Publish for Hashing {
    fn layer(&mut self, entry: LayerEntry<'_>) -> Result<Layer> {
        let name = entry.name.clone();
        let blob = self.read(entry)?;
        if !self.diff_ids.contains(&blob.digest) {
            bail!("digest mismatch: {name} is not a layer of the image");
        }
        Ok(Layer {
            diff_id: blob.digest.clone(),
            blob,
            media_type: None,
        })
    }

    fn blob(&mut self, entry: LayerEntry<'_>, digest: &Digest) -> Result<Blob> {
        let name = entry.name.clone();
        let blob = self.read(entry)?;
        if &blob.digest != digest {
            bail!("digest mismatch: blob {name} hashes to {}", blob.digest);
        }
        Ok(blob)
    }
}
