//! What podman (`podman image inspect`) and buildah (`buildah inspect --type image`) say about
//! an image in containers-storage: its ID (the config's digest), diff IDs, size, platform and
//! labels.

use std::collections::BTreeMap;

use serde::Deserialize;

/// An image in containers-storage, as the guest is told of it.
#[derive(Debug, PartialEq, Eq)]
pub struct StorageImage {
    /// `sha256:` and the image ID: the digest of its config.
    pub id: String,
    /// The uncompressed layer digests, base layer first.
    pub diff_ids: Vec<String>,
    /// The layers' size in bytes, when the tool reports one.
    pub size: u64,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    /// The config's labels, by key.
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct PodmanImage {
    #[serde(rename = "Id")]
    id: String,
    #[serde(default, rename = "RootFS")]
    root_fs: Option<PodmanRootFs>,
    #[serde(default, rename = "Size")]
    size: Option<i64>,
    #[serde(default, rename = "Os")]
    os: Option<String>,
    #[serde(default, rename = "Architecture")]
    architecture: Option<String>,
    #[serde(default, rename = "Variant")]
    variant: Option<String>,
    /// podman states the config's labels at the top (`null` when there are none).
    #[serde(default, rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct PodmanRootFs {
    #[serde(default, rename = "Layers")]
    layers: Vec<String>,
}

/// buildah's builder info: the image's ID and its OCI config.
#[derive(Deserialize)]
struct BuildahImage {
    #[serde(rename = "FromImageID")]
    id: String,
    #[serde(rename = "OCIv1")]
    config: OciConfig,
}

#[derive(Deserialize)]
struct OciConfig {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    rootfs: Option<OciRootFs>,
    #[serde(default)]
    config: Option<OciRunConfig>,
}

/// The OCI config's `config`, where its labels are.
#[derive(Deserialize)]
struct OciRunConfig {
    #[serde(default, rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct OciRootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// `podman image inspect NAME`'s answer: a JSON array holding the one image.
pub fn podman_inspect(text: &str) -> Result<StorageImage, String> {
    let mut images: Vec<PodmanImage> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if images.len() != 1 {
        return Err(format!("{} images where one was asked for", images.len()));
    }
    let image = images.remove(0);
    Ok(StorageImage {
        id: image_id(&image.id)?,
        diff_ids: image.root_fs.map(|r| r.layers).unwrap_or_default(),
        size: image.size.unwrap_or(0).max(0) as u64,
        os: non_empty(image.os),
        architecture: non_empty(image.architecture),
        variant: non_empty(image.variant),
        labels: image.labels.unwrap_or_default(),
    })
}

/// `buildah inspect --type image NAME`'s answer: one object. buildah reports no size.
pub fn buildah_inspect(text: &str) -> Result<StorageImage, String> {
    let image: BuildahImage = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(StorageImage {
        id: image_id(&image.id)?,
        diff_ids: image.config.rootfs.map(|r| r.diff_ids).unwrap_or_default(),
        size: 0,
        os: non_empty(image.config.os),
        architecture: non_empty(image.config.architecture),
        variant: non_empty(image.config.variant),
        labels: image
            .config
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default(),
    })
}

/// `sha256:HEX` from an ID given with or without its algorithm.
fn image_id(id: &str) -> Result<String, String> {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(format!("sha256:{hex}"))
    } else {
        Err(format!("the image ID {id:?} is not a sha256 digest"))
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8e0b9049f288522cc5858b2fd3c0b2fdbbd64220f7e6c8b0b0aaed604ec7cc18";
    const LAYER: &str = "sha256:22b14920bdda6e9f24de8532d7673058987c4c96e72a59f368cf372e761d433d";

    #[test]
    fn podmans_inspect_answer() {
        // As podman 4.3 prints it (abridged).
        let text = format!(
            r#"[{{"Id":"{ID}","Digest":"sha256:42dc","RepoTags":["localhost/app:1"],
                "Architecture":"arm64","Os":"linux","Variant":"v8","Size":3823,
                "Labels":{{"org.opencontainers.image.source":"https://example.com/app"}},
                "RootFS":{{"Type":"layers","Layers":["{LAYER}"]}}}}]"#
        );
        let image = podman_inspect(&text).unwrap();
        assert_eq!(
            image,
            StorageImage {
                id: format!("sha256:{ID}"),
                diff_ids: vec![LAYER.into()],
                size: 3823,
                os: Some("linux".into()),
                architecture: Some("arm64".into()),
                variant: Some("v8".into()),
                labels: [(
                    "org.opencontainers.image.source".to_string(),
                    "https://example.com/app".to_string()
                )]
                .into(),
            }
        );
        let unlabelled = format!(r#"[{{"Id":"{ID}","Labels":null}}]"#);
        assert!(podman_inspect(&unlabelled).unwrap().labels.is_empty());
        assert!(podman_inspect("[]").unwrap_err().contains("0 images"));
        let bad = r#"[{"Id":"../../etc"}]"#;
        assert!(podman_inspect(bad)
            .unwrap_err()
            .contains("not a sha256 digest"));
    }

    #[test]
    fn buildahs_inspect_answer() {
        let text = format!(
            r#"{{"Type":"buildah 0.0.1","FromImageID":"{ID}","OCIv1":{{"architecture":"amd64",
                "os":"linux","config":{{"Labels":{{"k":"v"}}}},
                "rootfs":{{"type":"layers","diff_ids":["{LAYER}"]}}}},"Docker":{{}}}}"#
        );
        let image = buildah_inspect(&text).unwrap();
        assert_eq!(image.id, format!("sha256:{ID}"));
        assert_eq!(image.diff_ids, [LAYER]);
        assert_eq!((image.size, image.variant), (0, None));
        assert_eq!(image.labels, [("k".to_string(), "v".to_string())].into());
        assert!(buildah_inspect("{}").is_err());
    }
}
