//! The OCI image manifest that names the config and layers.

use std::str::FromStr;

use anyhow::{Context, Result};
use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageManifestBuilder, MediaType, SCHEMA_VERSION,
};

use crate::save::{Blob, SavedImage};

/// The media type the manifest is written with.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Serializes the manifest for an image whose config and layers are in the registry as
/// `config` and `image.layers` (gzip layers). The same input always gives the same bytes.
pub fn oci_manifest(image: &SavedImage, config: &Blob) -> Result<Vec<u8>> {
    let layers = image
        .layers
        .iter()
        .map(|layer| descriptor(MediaType::ImageLayerGzip, &layer.blob))
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
    use crate::save::Layer;

    #[test]
    fn manifest_names_config_and_layers_in_order() {
        let blob = |s: &[u8], size| Blob {
            digest: Digest::of(s),
            size,
        };
        let image = SavedImage {
            config: b"{}".to_vec(),
            layers: vec![
                Layer {
                    diff_id: Digest::of(b"a"),
                    blob: blob(b"A", 10),
                },
                Layer {
                    diff_id: Digest::of(b"b"),
                    blob: blob(b"B", 20),
                },
            ],
        };
        let config = blob(b"{}", 2);
        let bytes = oci_manifest(&image, &config).unwrap();
        assert_eq!(
            bytes,
            oci_manifest(&image, &config).unwrap(),
            "deterministic"
        );
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(json["mediaType"], OCI_MANIFEST);
        assert_eq!(
            json["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(json["config"]["digest"], Digest::of(b"{}").as_str());
        assert_eq!(json["config"]["size"], 2);
        let layers = json["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(
            layers[1]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(layers[1]["digest"], Digest::of(b"B").as_str());
        assert_eq!(layers[1]["size"], 20);
    }
}
