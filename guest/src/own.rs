//! The source's own manifest: Docker >= 25's containerd store exports the image's manifest (or
//! the index that names it) with its compressed layers, and the image ID is that manifest's (or
//! index's) digest. When the push stored exactly the blobs that manifest names, publishing its
//! bytes unchanged keeps the registry digest the image ID, as `docker push` does.
//!
//! Only what the export proves is used: the manifest must hash to the name it is stored under
//! (which is the digest `index.json` names), and name the very config and layer blobs the push
//! stored, each by digest, size and media type; the layers themselves were checked against
//! their digests while they streamed.

use std::collections::HashMap;

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::model::{Layer, OwnManifest};

/// The parts of a manifest (or index) compared here.
#[derive(Deserialize)]
struct Document {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, PartialEq, Eq)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    size: u64,
}

/// The manifest among the export's small files (`blobs/sha256/<hex>`) that names exactly
/// `config` and `layers`, when every layer was stored as the export held it. With an
/// `index.json`, only a manifest it names (directly, or through an index it names) counts;
/// without one (an export cut from a tarball or a layout), the one such manifest. A manifest
/// for this config that does not hash to its name is refused, and so is one `index.json` names
/// that describes other blobs than those stored; several candidates give none (rebuilt).
pub fn find(
    metadata: &HashMap<String, Vec<u8>>,
    config: &[u8],
    layers: &[Layer],
) -> Result<Option<OwnManifest>> {
    if layers.is_empty() || layers.iter().any(|l| l.media_type.is_none()) {
        return Ok(None);
    }
    let named = named_by_index(metadata);
    let config_digest = Digest::of(config);
    let mut found: Vec<OwnManifest> = Vec::new();
    for (path, body) in metadata {
        let Some(digest) = path
            .strip_prefix("blobs/sha256/")
            .and_then(Digest::from_hex)
        else {
            continue;
        };
        let Ok(document) = serde_json::from_slice::<Document>(body) else {
            continue;
        };
        let Some(described) = &document.config else {
            continue;
        };
        if described.digest != config_digest.as_str() {
            continue;
        }
        if Digest::of(body) != digest {
            bail!(
                "digest mismatch: the export's manifest {path} hashes to {}",
                Digest::of(body)
            );
        }
        let is_named = named.as_ref().map(|n| n.contains(&digest));
        if is_named == Some(false) {
            continue;
        }
        if !names_exactly(&document, config, layers) {
            if is_named == Some(true) {
                bail!("the export's manifest {digest}, which its index.json names, does not describe the config and layers the export holds");
            }
            continue;
        }
        let media_type = document.media_type.unwrap_or_else(|| OCI_MANIFEST.into());
        if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
            continue;
        }
        found.push(OwnManifest {
            digest,
            media_type,
            body: body.clone(),
        });
    }
    Ok(match found.len() {
        1 => found.pop(),
        _ => None,
    })
}

/// Whether `document` names `config` and exactly `layers`, in order: digest, size, media type.
fn names_exactly(document: &Document, config: &[u8], layers: &[Layer]) -> bool {
    let config_size = document.config.as_ref().map(|c| c.size);
    config_size == Some(config.len() as u64)
        && document.layers.len() == layers.len()
        && document.layers.iter().zip(layers).all(|(d, l)| {
            d.digest == l.blob.digest.as_str()
                && d.size == l.blob.size
                && d.media_type.is_some()
                && d.media_type == l.media_type
        })
}

/// The digests `index.json` names, and those named by an index it names (held in the export):
/// `None` when the export has no `index.json`.
fn named_by_index(metadata: &HashMap<String, Vec<u8>>) -> Option<Vec<Digest>> {
    let index = metadata.get("index.json")?;
    let top = serde_json::from_slice::<Document>(index).ok();
    let mut named = Vec::new();
    for entry in top.map(|t| t.manifests).unwrap_or_default() {
        let Some(digest) = Digest::from_hex(entry.digest.strip_prefix("sha256:").unwrap_or(""))
        else {
            continue;
        };
        let media_type = entry.media_type.as_deref();
        if media_type == Some(OCI_INDEX) || media_type == Some(DOCKER_MANIFEST_LIST) {
            let nested = metadata
                .get(&format!("blobs/sha256/{}", digest.hex()))
                .filter(|body| Digest::of(body) == digest)
                .and_then(|body| serde_json::from_slice::<Document>(body).ok());
            for child in nested.map(|n| n.manifests).unwrap_or_default() {
                let hex = child.digest.strip_prefix("sha256:").unwrap_or("");
                named.extend(Digest::from_hex(hex));
            }
        }
        named.push(digest);
    }
    Some(named)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Blob;
    use crate::testing::{fixture, DOCKER_LAYER_GZIP};

    /// The fixture's layers as stored compressed, and export metadata holding `manifest` (named
    /// by `index.json` when `indexed`).
    fn export(
        manifest: &serde_json::Value,
        indexed: bool,
    ) -> (HashMap<String, Vec<u8>>, Vec<Layer>, Vec<u8>) {
        let f = fixture();
        let layers: Vec<Layer> = f
            .diff_ids
            .iter()
            .zip([7u64, 9])
            .map(|(diff_id, size)| Layer {
                diff_id: diff_id.clone(),
                blob: Blob {
                    digest: Digest::of(&size.to_be_bytes()),
                    size,
                },
                media_type: Some(DOCKER_LAYER_GZIP.into()),
            })
            .collect();
        let body = serde_json::to_vec(manifest).unwrap();
        let mut metadata = HashMap::new();
        if indexed {
            let index = serde_json::json!({"manifests": [{"mediaType": OCI_MANIFEST, "digest": Digest::of(&body).as_str(), "size": body.len()}]});
            metadata.insert("index.json".into(), serde_json::to_vec(&index).unwrap());
        }
        metadata.insert(
            format!("blobs/sha256/{}", Digest::of(&body).hex()),
            body.clone(),
        );
        (metadata, layers, body)
    }

    fn manifest_of(config: &[u8], layers: &[Layer]) -> serde_json::Value {
        let layers: Vec<_> = layers.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.blob.digest.as_str(), "size": l.blob.size})).collect();
        serde_json::json!({"mediaType": OCI_MANIFEST, "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(config).as_str(), "size": config.len()},
            "layers": layers})
    }

    #[test]
    fn the_manifest_naming_exactly_the_stored_blobs_is_found_with_or_without_an_index() {
        let f = fixture();
        let (_, layers, _) = export(&serde_json::json!({}), false);
        for indexed in [true, false] {
            let (metadata, _, body) = export(&manifest_of(&f.config, &layers), indexed);
            let own = find(&metadata, &f.config, &layers).unwrap().unwrap();
            assert_eq!(
                (own.digest, own.body, own.media_type.as_str()),
                (Digest::of(&body), body, OCI_MANIFEST)
            );
        }
        // A layer the host encoded: the manifest is built, not the source's.
        let mut encoded = layers.clone();
        encoded[0].media_type = None;
        let (metadata, _, _) = export(&manifest_of(&f.config, &layers), true);
        assert_eq!(find(&metadata, &f.config, &encoded).unwrap(), None);
    }

    #[test]
    fn a_manifest_that_is_not_what_its_name_says_or_describes_other_blobs_is_refused() {
        let f = fixture();
        let (_, layers, _) = export(&serde_json::json!({}), false);
        let (mut metadata, _, body) = export(&manifest_of(&f.config, &layers), true);
        let path = format!("blobs/sha256/{}", Digest::of(&body).hex());
        metadata.get_mut(&path).unwrap().push(b' ');
        let err = find(&metadata, &f.config, &layers).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "digest mismatch: the export's manifest {path} hashes to"
            )),
            "{err}"
        );

        // Named by index.json, for this config, but another size for a layer.
        let mut other = layers.clone();
        other[1].blob.size += 1;
        let (metadata, _, body) = export(&manifest_of(&f.config, &other), true);
        let err = find(&metadata, &f.config, &layers).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "manifest {}, which its index.json names, does not describe",
                Digest::of(&body)
            )),
            "{err}"
        );
        // Unnamed (a cut export), it is only not the image's own.
        let (metadata, _, _) = export(&manifest_of(&f.config, &other), false);
        assert_eq!(find(&metadata, &f.config, &layers).unwrap(), None);
    }
}
