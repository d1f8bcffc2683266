//! What the registry stores to name an image: the manifest (OCI, or Docker's v2 schema 2) that
//! lists the config and layers, the image index that lists one manifest per platform, and the
//! layer encodings they can name. Written with our own small types rather than a spec crate's,
//! because their bytes are their digest: every field is in a fixed order and annotations are
//! sorted, so the same image and settings always give the same manifest.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::digest::Digest;
use crate::model::{Annotations, Blob, Compression, Encoding, Layer, Platform};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Which manifest format the registry gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The OCI image manifest and image index (the default).
    Oci,
    /// Docker's image manifest v2 schema 2 and manifest list, for registries and tools that
    /// predate OCI.
    Docker,
}

impl Format {
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn index_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }

    fn config_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }

    fn layer_media_type(self, compression: Compression) -> &'static str {
        match (self, compression) {
            (Format::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (Format::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Format::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Format::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (Format::Docker, _) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        }
    }

    /// The media type of a layer stored as an export held it (already compressed), in this
    /// format's vocabulary: gzip has a type in both, zstd only in OCI.
    fn stored_layer_media_type(self, stored: &str) -> Result<&str> {
        const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
        const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
        Ok(match (self, stored) {
            (Format::Oci, DOCKER_GZIP) => OCI_GZIP,
            (Format::Docker, OCI_GZIP) => DOCKER_GZIP,
            (Format::Docker, other) if other != DOCKER_GZIP => bail!(
                "the image has a layer stored as {other}, which Docker's manifest v2 schema 2 cannot name (use --format oci)"
            ),
            (_, other) => other,
        })
    }

    /// Refuses what the format cannot say, before anything is sent: Docker's schema has no
    /// zstd layer type and no annotations (dropping the user's annotations silently would
    /// publish something other than what was asked for).
    pub fn check(self, encoding: &Encoding, annotations: &Annotations) -> Result<()> {
        if self == Format::Docker {
            if encoding.compression == Compression::Zstd {
                bail!("--compression zstd cannot be used with --format docker: Docker's manifest v2 schema 2 has no zstd layer type (use --format oci, or gzip)");
            }
            if let Some(key) = annotations.keys().next() {
                bail!("--annotation {key}=… cannot be used with --format docker: Docker's manifest v2 schema 2 has no annotations (use --format oci)");
            }
        }
        Ok(())
    }
}

/// Parses `key=value` as given to `--annotation`: a non-empty key without whitespace, and any
/// value (it may be empty, or hold `=`).
pub fn parse_annotation(text: &str) -> Result<(String, String)> {
    let Some((key, value)) = text.split_once('=') else {
        bail!("annotation {text:?} is not key=value");
    };
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("annotation {text:?} has an invalid key {key:?} (not empty, no spaces)");
    }
    Ok((key.to_string(), value.to_string()))
}

/// A descriptor: what a manifest or index says about a blob or manifest it names.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a Platform>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a Annotations,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a Annotations,
}

/// The manifest for an image whose `config` and `layers` (encoded as `encoding` says) are in
/// the registry. `annotations` must be empty for the Docker format (see `Format::check`).
pub fn image_manifest(
    format: Format,
    config: &Blob,
    layers: &[Layer],
    encoding: &Encoding,
    annotations: &Annotations,
) -> Result<Vec<u8>> {
    format.check(encoding, annotations)?;
    let layer_type = format.layer_media_type(encoding.compression);
    let layer_types = layers
        .iter()
        .map(|layer| match &layer.media_type {
            Some(stored) => format.stored_layer_media_type(stored),
            None => Ok(layer_type),
        })
        .collect::<Result<Vec<_>>>()?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: format.manifest_media_type(),
        config: Descriptor {
            media_type: format.config_media_type(),
            digest: config.digest.as_str(),
            size: config.size,
            platform: None,
        },
        layers: layers
            .iter()
            .zip(&layer_types)
            .map(|(layer, layer_type)| Descriptor {
                media_type: layer_type,
                digest: layer.blob.digest.as_str(),
                size: layer.blob.size,
                platform: None,
            })
            .collect(),
        annotations,
    };
    serde_json::to_vec(&manifest).context("serializing the image manifest")
}

/// A manifest in the registry, for an index to name.
pub struct PlatformManifest {
    pub digest: Digest,
    pub size: u64,
    pub platform: Platform,
    /// The type of a source's own manifest, published as it was (a Docker v2 manifest may sit
    /// in an OCI index); `None` for one built here in the index's format.
    pub media_type: Option<String>,
}

/// The image index (Docker: manifest list) naming one manifest per platform, in the order given.
pub fn image_index(
    format: Format,
    manifests: &[PlatformManifest],
    annotations: &Annotations,
) -> Result<Vec<u8>> {
    if format == Format::Docker && !annotations.is_empty() {
        bail!("annotations cannot be used with --format docker: Docker's manifest list has no annotations (use --format oci)");
    }
    let index = Index {
        schema_version: 2,
        media_type: format.index_media_type(),
        manifests: manifests
            .iter()
            .map(|m| Descriptor {
                media_type: m
                    .media_type
                    .as_deref()
                    .unwrap_or(format.manifest_media_type()),
                digest: m.digest.as_str(),
                size: m.size,
                platform: Some(&m.platform),
            })
            .collect(),
        annotations,
    };
    serde_json::to_vec(&index).context("serializing the image index")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(bytes: &[u8], size: u64) -> Blob {
        Blob {
            digest: Digest::of(bytes),
            size,
        }
    }

    fn layers() -> Vec<Layer> {
        vec![
            Layer {
                diff_id: Digest::of(b"a"),
                blob: blob(b"A", 10),
                media_type: None,
            },
            Layer {
                diff_id: Digest::of(b"b"),
                blob: blob(b"B", 20),
                media_type: None,
            },
        ]
    }

    fn manifest_json(
        format: Format,
        encoding: Encoding,
        annotations: &Annotations,
    ) -> serde_json::Value {
        let bytes =
            image_manifest(format, &blob(b"{}", 2), &layers(), &encoding, annotations).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn gzip() -> Encoding {
        Encoding::new(Compression::Gzip, 6).unwrap()
    }

    #[test]
    fn stored_layers_keep_their_type_in_each_format() {
        let mut stored = layers();
        stored[1].media_type = Some("application/vnd.oci.image.layer.v1.tar+gzip".into());
        let none = Annotations::new();
        let json = |format, stored: &[Layer]| -> Result<serde_json::Value> {
            let bytes = image_manifest(format, &blob(b"{}", 2), stored, &gzip(), &none)?;
            Ok(serde_json::from_slice(&bytes).unwrap())
        };
        let oci = json(Format::Oci, &stored).unwrap();
        assert_eq!(
            oci["layers"][1]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let docker = json(Format::Docker, &stored).unwrap();
        assert_eq!(
            docker["layers"][1]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        stored[1].media_type = Some("application/vnd.oci.image.layer.v1.tar+zstd".into());
        assert!(json(Format::Oci, &stored).is_ok());
        let err = json(Format::Docker, &stored).unwrap_err().to_string();
        assert!(err.contains("tar+zstd"), "{err}");
    }

    #[test]
    fn oci_manifest_names_config_and_layers_in_order() {
        let none = Annotations::new();
        let bytes =
            image_manifest(Format::Oci, &blob(b"{}", 2), &layers(), &gzip(), &none).unwrap();
        let json = manifest_json(Format::Oci, gzip(), &none);
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(json["mediaType"], OCI_MANIFEST);
        assert_eq!(json["config"]["mediaType"], OCI_CONFIG);
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
        assert!(
            json.get("annotations").is_none(),
            "none when there are none"
        );
        // Field order is fixed, so the digest is too.
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"#),
            "{text}"
        );
    }

    #[test]
    fn docker_manifest_uses_docker_media_types() {
        let none = Annotations::new();
        let json = manifest_json(Format::Docker, gzip(), &none);
        assert_eq!(json["mediaType"], DOCKER_MANIFEST);
        assert_eq!(json["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(
            json["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        let plain = manifest_json(
            Format::Docker,
            Encoding::new(Compression::None, 0).unwrap(),
            &none,
        );
        assert_eq!(
            plain["layers"][1]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar"
        );
    }

    #[test]
    fn docker_format_refuses_zstd_and_annotations() {
        let zstd = Encoding::new(Compression::Zstd, 3).unwrap();
        let err = Format::Docker
            .check(&zstd, &Annotations::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("zstd") && err.contains("--format docker"),
            "{err}"
        );
        let annotated = Annotations::from([("a".to_string(), "b".to_string())]);
        let err = Format::Docker
            .check(&gzip(), &annotated)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--annotation a="), "{err}");
        Format::Oci.check(&zstd, &annotated).unwrap();
    }

    #[test]
    fn media_type_follows_the_compression() {
        let none = Annotations::new();
        let zstd = manifest_json(
            Format::Oci,
            Encoding::new(Compression::Zstd, 3).unwrap(),
            &none,
        );
        assert_eq!(
            zstd["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let plain = manifest_json(
            Format::Oci,
            Encoding::new(Compression::None, 0).unwrap(),
            &none,
        );
        assert_eq!(
            plain["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar"
        );
    }

    #[test]
    fn annotations_are_sorted_whatever_order_they_came_in() {
        let mut a = Annotations::new();
        a.insert("z".into(), "1".into());
        a.insert("a".into(), "2".into());
        let mut b = Annotations::new();
        b.insert("a".into(), "2".into());
        b.insert("z".into(), "1".into());
        let one = image_manifest(Format::Oci, &blob(b"{}", 2), &layers(), &gzip(), &a).unwrap();
        let two = image_manifest(Format::Oci, &blob(b"{}", 2), &layers(), &gzip(), &b).unwrap();
        assert_eq!(one, two);
        let text = String::from_utf8(one).unwrap();
        assert!(
            text.ends_with(r#""annotations":{"a":"2","z":"1"}}"#),
            "{text}"
        );
    }

    #[test]
    fn annotations_parse_as_key_equals_value() {
        assert_eq!(
            parse_annotation("org.example.k=v=w").unwrap(),
            ("org.example.k".into(), "v=w".into())
        );
        assert_eq!(parse_annotation("k=").unwrap(), ("k".into(), "".into()));
        for bad in ["novalue", "=v", "a b=c", ""] {
            assert!(parse_annotation(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn index_names_each_manifest_with_its_platform() {
        let manifests = vec![
            PlatformManifest {
                digest: Digest::of(b"m1"),
                size: 100,
                platform: Platform {
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    variant: None,
                },
                media_type: None,
            },
            PlatformManifest {
                digest: Digest::of(b"m2"),
                size: 200,
                platform: Platform {
                    os: "linux".into(),
                    architecture: "arm64".into(),
                    variant: Some("v8".into()),
                },
                media_type: None,
            },
        ];
        let json: serde_json::Value = serde_json::from_slice(
            &image_index(Format::Oci, &manifests, &Annotations::new()).unwrap(),
        )
        .unwrap();
        assert_eq!(json["mediaType"], OCI_INDEX);
        assert_eq!(json["manifests"][0]["mediaType"], OCI_MANIFEST);
        assert_eq!(json["manifests"][0]["platform"]["architecture"], "amd64");
        assert!(json["manifests"][0]["platform"].get("variant").is_none());
        assert_eq!(json["manifests"][1]["platform"]["variant"], "v8");
        assert_eq!(json["manifests"][1]["size"], 200);
        let list: serde_json::Value = serde_json::from_slice(
            &image_index(Format::Docker, &manifests, &Annotations::new()).unwrap(),
        )
        .unwrap();
        assert_eq!(list["mediaType"], DOCKER_MANIFEST_LIST);
        assert_eq!(list["manifests"][1]["mediaType"], DOCKER_MANIFEST);

        // A source's own Docker v2 manifest, published as it was, is named as what it is.
        let mut manifests = manifests;
        manifests[1].media_type = Some(DOCKER_MANIFEST.into());
        let json: serde_json::Value = serde_json::from_slice(
            &image_index(Format::Oci, &manifests, &Annotations::new()).unwrap(),
        )
        .unwrap();
        assert_eq!(json["manifests"][0]["mediaType"], OCI_MANIFEST);
        assert_eq!(json["manifests"][1]["mediaType"], DOCKER_MANIFEST);
    }
}
