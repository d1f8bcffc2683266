//! The image model every part of the guest speaks: what a source says about an image, the blobs
//! and layers it is stored as, the platform it runs on, and how layers are encoded. Plain data,
//! with no knowledge of where images come from or go.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// What a source says about an image before exporting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// The image ID; on Docker's classic store and podman, the config digest.
    pub id: Digest,
    /// The uncompressed layer digests, base first.
    pub diff_ids: Vec<Digest>,
    /// The layers' total content size in bytes.
    pub size: u64,
    /// The platform the source says the image is for (from its config), when it says.
    pub platform: Option<Platform>,
    /// What the ID is the digest of: an image whose ID names a manifest may be a
    /// multi-platform image, which the push looks over before any upload.
    pub id_kind: IdKind,
    /// When the image is one platform of a multi-platform image: which blobs of the
    /// multi-platform image's export are this platform's.
    pub within: Option<Within>,
    /// The image's labels (its config's `config.Labels`), as the source states them.
    pub labels: Labels,
}

/// What an image ID is the digest of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// The config: Docker's classic store, podman, and the images read from files here.
    Config,
    /// A manifest or an index (Docker's containerd image store); only the export says which.
    Manifest,
}

/// One platform's part of a multi-platform image's export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Within {
    /// The multi-platform image's ID (its index's digest): what is exported.
    pub index: Digest,
    /// The platform's manifest as the index names it.
    pub manifest: Blob,
    /// The config and layer blobs the manifest names: the rest of the export is skipped.
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Within {
    /// Every blob of the export that belongs to this platform, the index included.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.index, &self.manifest.digest, &self.config.digest]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// What an image ID proved to name, once the source was looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    /// Its config: the image is the one the source described.
    Config,
    /// An image manifest, these bytes (which hash to the ID): a single-platform image.
    Manifest(Vec<u8>),
    /// An index: a multi-platform image.
    Index(SourceIndex),
}

/// A multi-platform image as its source holds it: the index its ID names, byte for byte (its
/// digest checked), and each manifest the index names, with what the source holds of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceIndex {
    pub own: OwnManifest,
    pub platforms: Vec<PlatformEntry>,
    /// Manifests the index names for no platform (`unknown/unknown`: build attestations).
    pub others: Vec<Digest>,
}

/// One manifest an index names, for one platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformEntry {
    pub platform: Platform,
    pub manifest: Blob,
    /// The blobs of this platform, when the source holds every one; else the first missing.
    pub held: Result<Held, Digest>,
}

/// A platform's image, all of whose blobs the source holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub config: Blob,
    pub diff_ids: Vec<Digest>,
    pub layers: Vec<Blob>,
    /// Its config's labels: a policy judges each platform by its own.
    pub labels: Labels,
}

impl ImageSummary {
    /// A summary from a daemon's answer, its digests checked; its labels are set apart.
    pub fn parse(
        id: &str,
        diff_ids: &[String],
        size: u64,
        platform: Option<Platform>,
    ) -> Result<Self> {
        Ok(Self {
            id: Digest::parse(id, "the daemon's image ID")?,
            diff_ids: diff_ids
                .iter()
                .map(|d| Digest::parse(d, "the daemon's diff ID"))
                .collect::<Result<_>>()?,
            size,
            platform,
            id_kind: IdKind::Config,
            within: None,
            labels: Labels::new(),
        })
    }
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

/// What an export held, checked against the source's summary of the image.
#[derive(Debug)]
pub struct SavedImage {
    /// The config, byte for byte as the source wrote it.
    pub config: Vec<u8>,
    /// The layers in image order (base first), each verified against the config's diff IDs.
    pub layers: Vec<Layer>,
    /// The source's own manifest for exactly this config and these stored blobs, when the
    /// export holds one (Docker >= 25's containerd store): publishable byte for byte.
    pub own: Option<OwnManifest>,
}

/// An image manifest as the source holds it, checked against its digest, and naming exactly
/// the config and layer blobs the push stored (digest, size and media type of each); or an
/// index as the source holds it, checked against its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnManifest {
    pub digest: Digest,
    /// `application/vnd.oci.image.manifest.v1+json` or Docker's v2 schema 2 type.
    pub media_type: String,
    pub body: Vec<u8>,
}

/// What the user asked for that the source's own manifest does not say, so a new one is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A compression (or level) given explicitly.
    Compression,
    /// A format given explicitly, other than the manifest's.
    Format,
    /// Annotations to add.
    Annotations,
    /// Not every platform of a multi-platform image (`--platform`): a new index names those
    /// chosen.
    Platforms,
}

/// The platform an image runs on, as an index names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Manifest annotations, sorted by key so that they serialize the same way every time.
pub type Annotations = BTreeMap<String, String>;

/// An image's labels, by key.
pub type Labels = BTreeMap<String, String>;

/// How layers are compressed for the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// A compression and its level: together they decide a layer's blob digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub compression: Compression,
    pub level: u32,
}

impl Encoding {
    /// Checks the level against the compression's range (gzip 1-9, zstd 1-19).
    pub fn new(compression: Compression, level: u32) -> Result<Self> {
        let range = match compression {
            Compression::None => {
                return Ok(Self {
                    compression,
                    level: 0,
                })
            }
            Compression::Gzip => 1..=9,
            Compression::Zstd => 1..=19,
        };
        if !range.contains(&level) {
            bail!(
                "compression level {level} is out of range for {} ({}-{})",
                compression.name(),
                range.start(),
                range.end()
            );
        }
        Ok(Self { compression, level })
    }

    /// Bytes as they are: how a layer the export holds already compressed is stored.
    pub fn as_is() -> Self {
        Self {
            compression: Compression::None,
            level: 0,
        }
    }

    /// A stable name, e.g. `gzip-6`, for cache keys.
    pub fn name(&self) -> String {
        match self.compression {
            Compression::None => "none".to_string(),
            other => format!("{}-{}", other.name(), self.level),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_checked() {
        assert!(Encoding::new(Compression::Gzip, 0).is_err());
        assert!(Encoding::new(Compression::Gzip, 10).is_err());
        assert_eq!(
            Encoding::new(Compression::Zstd, 19).unwrap().name(),
            "zstd-19"
        );
        assert_eq!(Encoding::new(Compression::None, 7).unwrap().name(), "none");
    }

    #[test]
    fn a_daemon_summary_has_its_digests_checked() {
        let id = Digest::of(b"config");
        let layer = Digest::of(b"layer");
        let summary = ImageSummary::parse(id.as_str(), &[layer.to_string()], 5, None).unwrap();
        assert_eq!(summary.diff_ids, vec![layer]);
        let err = ImageSummary::parse("abc", &[], 0, None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("the daemon's image ID \"abc\""), "{err}");
        let err = ImageSummary::parse(id.as_str(), &["x".into()], 0, None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("the daemon's diff ID \"x\""), "{err}");
    }
}

/// A content descriptor as a source's own JSON states it (an `index.json` entry, an index's
/// manifest, a manifest's config or layer): what both the layout source and the multi-platform
/// reading take from it, and no more.
#[derive(Deserialize)]
pub struct StatedDescriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub platform: Option<StatedPlatform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl StatedDescriptor {
    /// The blob it names; `what` says which descriptor, for the error.
    pub fn blob(&self, what: &str) -> Result<Blob> {
        Ok(Blob {
            digest: Digest::parse(&self.digest, what)?,
            size: self.size,
        })
    }
}

/// A descriptor's `platform` as stated.
#[derive(Deserialize)]
pub struct StatedPlatform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}
