//! The OCI image manifest that names the config and layers, and the layer encodings it can name.

use std::str::FromStr;

use anyhow::{bail, Context, Result};
use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageManifestBuilder, MediaType, SCHEMA_VERSION,
};

use crate::save::{Blob, Layer};

/// The media type the manifest is written with.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// How layers are compressed for the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
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
                name(compression),
                range.start(),
                range.end()
            );
        }
        Ok(Self { compression, level })
    }

    /// A stable name, e.g. `gzip-6`, for cache keys.
    pub fn name(&self) -> String {
        match self.compression {
            Compression::None => "none".to_string(),
            other => format!("{}-{}", name(other), self.level),
        }
    }

    fn layer_media_type(&self) -> MediaType {
        match self.compression {
            Compression::None => MediaType::ImageLayer,
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
        }
    }
}

fn name(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// Serializes the manifest for an image whose `config` and `layers` (encoded as `encoding`
/// says) are in the registry. The same input always gives the same bytes.
pub fn oci_manifest(config: &Blob, layers: &[Layer], encoding: &Encoding) -> Result<Vec<u8>> {
    let layers = layers
        .iter()
        .map(|layer| descriptor(encoding.layer_media_type(), &layer.blob))
        .collect::<Result<Vec<_>>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, config)?)
        .layers(layers)
        .build()
        .context("building the image manifest")?;
    serde_json::to_vec(&manifest).context("serializing the image manifest")
}

fn descriptor(media_type: MediaType, blob: &Blob) -> Result<Descriptor> {
    let digest = oci_spec::image::Digest::from_str(blob.digest.as_str())
        .with_context(|| format!("digest {}", blob.digest))?;
    Ok(DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(blob.size)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn blob(bytes: &[u8], size: u64) -> Blob {
        Blob {
            digest: Digest::of(bytes),
            size,
        }
    }

    fn manifest_json(layers: &[Layer], encoding: Encoding) -> serde_json::Value {
        serde_json::from_slice(&oci_manifest(&blob(b"{}", 2), layers, &encoding).unwrap()).unwrap()
    }

    #[test]
    fn manifest_names_config_and_layers_in_order() {
        let layers = vec![
            Layer {
                diff_id: Digest::of(b"a"),
                blob: blob(b"A", 10),
            },
            Layer {
                diff_id: Digest::of(b"b"),
                blob: blob(b"B", 20),
            },
        ];
        let gzip = Encoding::new(Compression::Gzip, 6).unwrap();
        let bytes = oci_manifest(&blob(b"{}", 2), &layers, &gzip).unwrap();
        assert_eq!(
            bytes,
            oci_manifest(&blob(b"{}", 2), &layers, &gzip).unwrap(),
            "deterministic"
        );
        let json = manifest_json(&layers, gzip);
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(json["mediaType"], OCI_MANIFEST);
        assert_eq!(
            json["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(json["config"]["digest"], Digest::of(b"{}").as_str());
        assert_eq!(json["config"]["size"], 2);
        let listed = json["layers"].as_array().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            listed[1]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(listed[1]["digest"], Digest::of(b"B").as_str());
        assert_eq!(listed[1]["size"], 20);
    }

    #[test]
    fn media_type_follows_the_compression() {
        let layers = vec![Layer {
            diff_id: Digest::of(b"a"),
            blob: blob(b"A", 1),
        }];
        let zstd = manifest_json(&layers, Encoding::new(Compression::Zstd, 3).unwrap());
        assert_eq!(
            zstd["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let none = manifest_json(&layers, Encoding::new(Compression::None, 0).unwrap());
        assert_eq!(
            none["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar"
        );
    }

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
}
