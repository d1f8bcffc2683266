//! What is read from an image config: its layers' diff IDs (`rootfs`, which every source checks
//! its layers against), the platform it runs on, and the OCI annotations it already states (its
//! creation time, and `org.opencontainers.image.*` labels such as the source repository).

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::digest::Digest;
use crate::model::{Annotations, Labels, Platform};

/// The label and annotation namespace of the OCI image spec's pre-defined keys.
const OCI_KEY_PREFIX: &str = "org.opencontainers.image.";
/// The annotation for when the image was created (RFC 3339).
pub const CREATED: &str = "org.opencontainers.image.created";

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize)]
struct RunConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<Labels>,
}

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The config's `rootfs.diff_ids`, base first. `invalid` says which config, for the error when
/// there is no such list.
pub fn diff_ids(config: &[u8], invalid: impl FnOnce() -> String) -> Result<Vec<Digest>> {
    let parsed: ConfigRootfs = serde_json::from_slice(config).with_context(invalid)?;
    parsed
        .rootfs
        .diff_ids
        .iter()
        .map(|d| Digest::parse(d, "the config's diff ID"))
        .collect()
}

fn parse(config: &[u8]) -> Result<ImageConfig> {
    serde_json::from_slice(config).context("the image config is not valid JSON")
}

/// The platform the config says the image is for; `os` and `architecture` are required.
pub fn platform(config: &[u8]) -> Result<Platform> {
    let config = parse(config)?;
    if config.os.is_empty() || config.architecture.is_empty() {
        bail!("the image config does not say which os and architecture it is for");
    }
    Ok(Platform {
        os: config.os,
        architecture: config.architecture,
        variant: config.variant.filter(|v| !v.is_empty()),
    })
}

/// The config's labels (`config.Labels`); none when it has none.
pub fn labels(config: &[u8]) -> Result<Labels> {
    Ok(parse(config)?
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default())
}

/// The manifest annotations the config implies: `org.opencontainers.image.created` from its
/// `created`, and every `org.opencontainers.image.*` label as it is (a label named `created`
/// wins over the config's time, as the image's author set it).
pub fn annotations(config: &[u8]) -> Result<Annotations> {
    let config = parse(config)?;
    let mut annotations = Annotations::new();
    if let Some(created) = config.created.filter(|c| !c.is_empty()) {
        annotations.insert(CREATED.to_string(), created);
    }
    let labels = config.config.and_then(|c| c.labels).unwrap_or_default();
    for (key, value) in labels {
        if key.starts_with(OCI_KEY_PREFIX) {
            annotations.insert(key, value);
        }
    }
    Ok(annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_and_oci_labels_become_annotations() {
        let config = br#"{"os":"linux","architecture":"arm","variant":"v7",
            "created":"2023-11-14T22:13:20.5Z",
            "config":{"Labels":{"org.opencontainers.image.source":"https://example.com/app",
                                "org.example.other":"x"}}}"#;
        let found = annotations(config).unwrap();
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            vec![
                (CREATED.to_string(), "2023-11-14T22:13:20.5Z".to_string()),
                (
                    "org.opencontainers.image.source".to_string(),
                    "https://example.com/app".to_string()
                ),
            ]
        );
        assert_eq!(platform(config).unwrap().to_string(), "linux/arm/v7");
        assert_eq!(labels(config).unwrap().len(), 2, "every label, OCI or not");
    }

    #[test]
    fn a_config_without_them_gives_none() {
        let config = br#"{"os":"linux","architecture":"amd64","config":{"Labels":null}}"#;
        assert!(annotations(config).unwrap().is_empty());
        assert!(labels(config).unwrap().is_empty());
        assert!(labels(br#"{"os":"linux"}"#).unwrap().is_empty());
        assert_eq!(
            platform(config).unwrap(),
            Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None
            }
        );
        assert!(platform(br#"{"os":"linux"}"#).is_err());
        assert!(annotations(b"[").is_err());
    }

    #[test]
    fn diff_ids_come_from_rootfs_and_are_checked() {
        let layer = Digest::of(b"layer");
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{layer}"]}}}}"#);
        let what = || "config c".to_string();
        assert_eq!(diff_ids(config.as_bytes(), what).unwrap(), vec![layer]);
        let err = diff_ids(b"{}", what).unwrap_err().to_string();
        assert_eq!(err, "config c");
        let err = diff_ids(br#"{"rootfs":{"diff_ids":["x"]}}"#, what)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("the config's diff ID \"x\""), "{err}");
    }
}
