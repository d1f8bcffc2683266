//! Test material shared by the guest's unit tests: tar archives in the `docker save` dialects.

use std::collections::HashMap;

use crate::cache::Cache;
use crate::digest::Digest;
use crate::manifest::Platform;
use crate::save::ImageSummary;

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
