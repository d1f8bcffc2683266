//! Multi-platform images: the index an image ID names, what the source holds of each platform
//! it lists, and which platforms a push takes (`--platform`). All of it is decided from small
//! files (the index, manifests and configs) and the sizes of the blobs the source holds, before
//! any upload: a platform the source holds only the index entry of (an image pulled for one
//! platform keeps the whole index) is refused then, not found missing halfway through a push.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::config;
use crate::digest::Digest;
use crate::manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::model::{
    Blob, Held, IdKind, ImageSummary, OwnManifest, Platform, PlatformEntry, SourceIndex,
    StatedDescriptor, Within,
};

/// What a source holds, by digest: how `index_of` looks at it.
pub trait Holdings {
    /// The bytes of a small blob (an index, manifest or config), checked against its digest;
    /// `None` when the source does not hold it.
    fn small(&self, digest: &Digest) -> Result<Option<Vec<u8>>>;
    /// Whether the source holds `blob` whole: its digest, with its size.
    fn holds(&self, blob: &Blob) -> Result<bool>;
}

/// Parses `os/arch[/variant]`, as `--platform` takes it.
pub fn parse_platform(text: &str) -> Result<Platform> {
    let parts: Vec<&str> = text.split('/').collect();
    let valid = |p: &&str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    };
    if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
        bail!("platform {text:?} is not os/arch or os/arch/variant (e.g. linux/arm64)");
    }
    Ok(Platform {
        os: parts[0].to_string(),
        architecture: parts[1].to_string(),
        variant: parts.get(2).map(|v| v.to_string()),
    })
}

/// Parses a list of platforms, each `os/arch[/variant]` or several of them separated by
/// commas; a platform named twice counts once.
pub fn parse_platforms(texts: &[String]) -> Result<Vec<Platform>> {
    let mut platforms: Vec<Platform> = Vec::new();
    for text in texts.iter().flat_map(|t| t.split(',')) {
        let platform = parse_platform(text.trim())?;
        if !platforms.contains(&platform) {
            platforms.push(platform);
        }
    }
    Ok(platforms)
}

/// Whether `wanted` names `platform`: the same OS and architecture, and the same variant when
/// `wanted` names one (arm64 without one is v8, as containerd takes it).
pub fn matches(wanted: &Platform, platform: &Platform) -> bool {
    let variant = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
        ("arm64", None) => Some("v8".to_string()),
        (_, v) => v.map(str::to_string),
    };
    wanted.os == platform.os
        && wanted.architecture == platform.architecture
        && (wanted.variant.is_none() || variant(wanted) == variant(platform))
}

/// The index or manifest parts read here.
#[derive(Deserialize)]
struct Document {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<StatedDescriptor>>,
    config: Option<StatedDescriptor>,
    #[serde(default)]
    layers: Vec<StatedDescriptor>,
}

/// Whether `bytes` are an index (they name manifests), not an image manifest.
pub fn is_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Document>(bytes).is_ok_and(|d| d.manifests.is_some())
}

/// The multi-platform image `id` names in a source (`what`, for messages): `None` when `id`
/// names an image manifest. Each manifest the index names is read with its config, and each
/// layer looked for, so that what the source lacks is known before any upload. Manifests for
/// no platform (`unknown/unknown`: build attestations) are kept apart.
pub fn index_of(id: &Digest, source: &impl Holdings, what: &str) -> Result<Option<SourceIndex>> {
    let body = source.small(id)?.with_context(|| {
        format!("{what} does not hold {id}, the manifest or index the image ID names")
    })?;
    let document: Document = serde_json::from_slice(&body)
        .with_context(|| format!("{what}: {id} is neither an image manifest nor an index"))?;
    let Some(entries) = document.manifests else {
        return Ok(None);
    };
    let media_type = document.media_type.unwrap_or_else(|| OCI_INDEX.to_string());
    if media_type != OCI_INDEX && media_type != DOCKER_MANIFEST_LIST {
        bail!("{what}: index {id} has media type {media_type}, which is not an image index");
    }
    let mut platforms: Vec<PlatformEntry> = Vec::new();
    let mut others = Vec::new();
    for entry in entries {
        let manifest = entry.blob("an index entry's digest")?;
        if entry.media_type != OCI_MANIFEST && entry.media_type != DOCKER_MANIFEST {
            bail!(
                "{what}: index {id} names {} of type {:?}, not an image manifest (nested indexes are not pushed)",
                manifest.digest,
                entry.media_type
            );
        }
        let Some(platform) = entry.platform else {
            bail!(
                "{what}: index {id} names manifest {} without a platform",
                manifest.digest
            );
        };
        let platform = Platform {
            os: platform.os,
            architecture: platform.architecture,
            variant: platform.variant.filter(|v| !v.is_empty()),
        };
        if platform.os == "unknown" {
            others.push(manifest.digest);
            continue;
        }
        if platforms.iter().any(|p| p.platform == platform) {
            bail!("{what}: index {id} names two manifests for {platform}");
        }
        let held = held(&manifest, source, what)?;
        platforms.push(PlatformEntry {
            platform,
            manifest,
            held,
        });
    }
    Ok(Some(SourceIndex {
        own: OwnManifest {
            digest: id.clone(),
            media_type,
            body,
        },
        platforms,
        others,
    }))
}

/// The blobs of one platform's image, when the source holds them all; else the first it lacks.
fn held(manifest: &Blob, source: &impl Holdings, what: &str) -> Result<Result<Held, Digest>> {
    let Some(body) = source.small(&manifest.digest)? else {
        return Ok(Err(manifest.digest.clone()));
    };
    if body.len() as u64 != manifest.size {
        bail!(
            "{what}: manifest {} has {} bytes, not the {} its index states",
            manifest.digest,
            body.len(),
            manifest.size
        );
    }
    let document: Document = serde_json::from_slice(&body)
        .with_context(|| format!("{what}: manifest {} is not valid JSON", manifest.digest))?;
    let config = document
        .config
        .with_context(|| format!("{what}: manifest {} names no config", manifest.digest))?
        .blob("a manifest's config digest")?;
    let Some(config_bytes) = source.small(&config.digest)? else {
        return Ok(Err(config.digest));
    };
    let diff_ids = config::diff_ids(&config_bytes, || {
        format!(
            "{what}: config {} has no valid rootfs.diff_ids",
            config.digest
        )
    })?;
    if diff_ids.len() != document.layers.len() {
        bail!(
            "{what}: manifest {} names {} layers but its config lists {}",
            manifest.digest,
            document.layers.len(),
            diff_ids.len()
        );
    }
    let mut layers = Vec::with_capacity(document.layers.len());
    for layer in &document.layers {
        let blob = layer.blob("a manifest's layer digest")?;
        if !source.holds(&blob)? {
            return Ok(Err(blob.digest));
        }
        layers.push(blob);
    }
    let labels = config::labels(&config_bytes)
        .with_context(|| format!("{what}: config {}", config.digest))?;
    Ok(Ok(Held {
        config,
        diff_ids,
        layers,
        labels,
    }))
}

/// The platforms a push takes from a multi-platform image.
#[derive(Debug)]
pub struct Selection {
    /// The chosen platforms, in the index's order, each held whole.
    pub entries: Vec<PlatformEntry>,
    /// Every platform of the index, and nothing else is in it: its own bytes can be published.
    pub whole: bool,
}

/// Chooses the platforms of `index` that `wanted` names (all of them when it names none), and
/// refuses, in one line, a platform the index does not name or whose content the source lacks,
/// saying which it holds. `image` names the image, for messages.
pub fn select(index: &SourceIndex, wanted: &[Platform], image: &str) -> Result<Selection> {
    let names = |entries: &mut dyn Iterator<Item = &PlatformEntry>| {
        entries
            .map(|e| e.platform.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut chosen = vec![wanted.is_empty(); index.platforms.len()];
    for platform in wanted {
        let found: Vec<usize> = (0..index.platforms.len())
            .filter(|&i| matches(platform, &index.platforms[i].platform))
            .collect();
        match found[..] {
            [] => bail!(
                "image {image} has no platform {platform}: its index names {}",
                names(&mut index.platforms.iter())
            ),
            [one] => chosen[one] = true,
            _ => bail!(
                "platform {platform} matches several platforms of image {image} ({}): name the variant too",
                names(&mut found.iter().map(|&i| &index.platforms[i]))
            ),
        }
    }
    let selected = || index.platforms.iter().zip(&chosen).filter(|(_, c)| **c);
    let missing: Vec<&PlatformEntry> = selected()
        .map(|(e, _)| e)
        .filter(|e| e.held.is_err())
        .collect();
    if !missing.is_empty() {
        let held = names(&mut index.platforms.iter().filter(|e| e.held.is_ok()));
        let suggestion = if held.is_empty() {
            "and none of its platforms' content".to_string()
        } else {
            format!("; push what it holds with --platform {held}")
        };
        bail!(
            "image {image}: the source holds the index entry but not the content of {} (an image pulled for one platform keeps the whole index){suggestion}",
            names(&mut missing.into_iter())
        );
    }
    if wanted.is_empty() && !index.others.is_empty() {
        bail!(
            "image {image}: its index also names {} manifests that are no platform's image (build attestations), which are not pushed; push its platforms with --platform {}",
            index.others.len(),
            names(&mut index.platforms.iter())
        );
    }
    let entries: Vec<PlatformEntry> = selected().map(|(e, _)| e.clone()).collect();
    let whole = entries.len() == index.platforms.len() && index.others.is_empty();
    Ok(Selection { entries, whole })
}

/// `wanted` checked against an image that is not multi-platform: it must name the image's
/// own platform, which the source must state.
pub fn check_single(summary: &ImageSummary, wanted: &[Platform], image: &str) -> Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let Some(platform) = &summary.platform else {
        bail!("the source does not say which platform image {image} is for, so --platform cannot choose it");
    };
    if let Some(other) = wanted.iter().find(|w| !matches(w, platform)) {
        bail!("image {image} is for {platform} only (it is not a multi-platform image): it has no platform {other}");
    }
    Ok(())
}

impl PlatformEntry {
    /// What the source says of this platform's image, read from the export of the
    /// multi-platform image `index`; `None` when the source does not hold it whole.
    pub fn summary(&self, index: &Digest) -> Option<ImageSummary> {
        let held = self.held.as_ref().ok()?;
        Some(ImageSummary {
            id: held.config.digest.clone(),
            diff_ids: held.diff_ids.clone(),
            size: held.layers.iter().map(|l| l.size).sum(),
            platform: Some(self.platform.clone()),
            labels: held.labels.clone(),
            id_kind: IdKind::Config,
            within: Some(Within {
                index: index.clone(),
                manifest: self.manifest.clone(),
                config: held.config.clone(),
                layers: held.layers.clone(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Blobs in memory; sizes of blobs held but not small.
    #[derive(Default)]
    struct Blobs(HashMap<Digest, Vec<u8>>);

    impl Holdings for Blobs {
        fn small(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
            Ok(self.0.get(digest).cloned())
        }
        fn holds(&self, blob: &Blob) -> Result<bool> {
            Ok(self
                .0
                .get(&blob.digest)
                .is_some_and(|b| b.len() as u64 == blob.size))
        }
    }

    impl Blobs {
        fn put(&mut self, bytes: Vec<u8>) -> serde_json::Value {
            let d = Digest::of(&bytes);
            let descriptor = serde_json::json!({"digest": d.as_str(), "size": bytes.len()});
            self.0.insert(d, bytes);
            descriptor
        }
    }

    /// A two-platform index (amd64, arm64/v8) in `blobs`, with arm64's layer left out when
    /// `arm_layer` is false; returns the index's digest.
    fn two_platforms(blobs: &mut Blobs, arm_layer: bool) -> Digest {
        let mut entries = Vec::new();
        for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
            let layer = format!("{arch} layer").into_bytes();
            let layer_d = if arch == "arm64" && !arm_layer {
                serde_json::json!({"digest": Digest::of(&layer).as_str(), "size": layer.len()})
            } else {
                blobs.put(layer.clone())
            };
            let config =
                serde_json::to_vec(&serde_json::json!({"os": "linux", "architecture": arch,
                "rootfs": {"type": "layers", "diff_ids": [Digest::of(b"tar").as_str()]}}))
                .unwrap();
            let mut config_d = blobs.put(config);
            config_d["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
            let manifest = serde_json::to_vec(
                &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": config_d, "layers": [layer_d]}),
            )
            .unwrap();
            let mut entry = blobs.put(manifest);
            entry["mediaType"] = OCI_MANIFEST.into();
            entry["platform"] =
                serde_json::json!({"os": "linux", "architecture": arch, "variant": variant});
            entries.push(entry);
        }
        let index = serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
        )
        .unwrap();
        let d = Digest::of(&index);
        blobs.put(index);
        d
    }

    fn platform(text: &str) -> Platform {
        parse_platform(text).unwrap()
    }

    #[test]
    fn platforms_parse_as_os_arch_and_variant_repeated_or_comma_separated() {
        assert_eq!(
            platform("linux/arm/v7"),
            Platform {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v7".into())
            }
        );
        let list =
            parse_platforms(&["linux/amd64, linux/arm64".into(), "linux/amd64".into()]).unwrap();
        assert_eq!(list, vec![platform("linux/amd64"), platform("linux/arm64")]);
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64", ""] {
            let err = parse_platform(bad).unwrap_err().to_string();
            assert!(err.contains("is not os/arch"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_platform_without_a_variant_matches_any_and_arm64_is_v8() {
        assert!(matches(
            &platform("linux/arm64"),
            &platform("linux/arm64/v8")
        ));
        assert!(matches(
            &platform("linux/arm64/v8"),
            &platform("linux/arm64")
        ));
        assert!(matches(&platform("linux/arm"), &platform("linux/arm/v7")));
        assert!(!matches(
            &platform("linux/arm/v6"),
            &platform("linux/arm/v7")
        ));
        assert!(!matches(
            &platform("linux/amd64"),
            &platform("windows/amd64")
        ));
    }

    #[test]
    fn an_index_is_read_with_what_the_source_holds_of_each_platform() {
        let mut blobs = Blobs::default();
        let id = two_platforms(&mut blobs, false);
        let index = index_of(&id, &blobs, "the export").unwrap().unwrap();
        assert_eq!(index.own.digest, id);
        assert_eq!(index.own.body, blobs.0[&id]);
        let names: Vec<String> = index
            .platforms
            .iter()
            .map(|p| p.platform.to_string())
            .collect();
        assert_eq!(names, ["linux/amd64", "linux/arm64/v8"]);
        let held = index.platforms[0].held.as_ref().unwrap();
        assert_eq!(held.layers.len(), 1);
        assert_eq!(
            index.platforms[1].held,
            Err(Digest::of(b"arm64 layer")),
            "the missing layer is named"
        );
        let summary = index.platforms[0].summary(&id).unwrap();
        assert_eq!(summary.id, held.config.digest);
        assert_eq!(summary.within.as_ref().unwrap().index, id);
        assert_eq!(index.platforms[1].summary(&id), None);

        // An ID that names a manifest is no index; one the source lacks is an error.
        let manifest = index.platforms[0].manifest.digest.clone();
        assert_eq!(index_of(&manifest, &blobs, "the export").unwrap(), None);
        let err = index_of(&Digest::of(b"x"), &blobs, "the export")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("the export does not hold sha256:"), "{err}");
    }

    #[test]
    fn every_platform_is_taken_when_none_is_named_and_all_are_held() {
        let mut blobs = Blobs::default();
        let id = two_platforms(&mut blobs, true);
        let index = index_of(&id, &blobs, "the export").unwrap().unwrap();
        let all = select(&index, &[], "app:1").unwrap();
        assert!(all.whole);
        assert_eq!(all.entries.len(), 2);
        let both = select(
            &index,
            &[platform("linux/arm64"), platform("linux/amd64")],
            "app:1",
        )
        .unwrap();
        assert!(both.whole, "both, in the index's order");
        assert_eq!(both.entries[0].platform, platform("linux/amd64"));
        let arm = select(&index, &[platform("linux/arm64")], "app:1").unwrap();
        assert!(!arm.whole);
        assert_eq!(arm.entries[0].platform, platform("linux/arm64/v8"));
        let err = select(&index, &[platform("linux/s390x")], "app:1")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "image app:1 has no platform linux/s390x: its index names linux/amd64,linux/arm64/v8"
        );
    }

    #[test]
    fn a_platform_whose_content_the_source_lacks_is_refused_naming_it_and_suggesting_the_others() {
        let mut blobs = Blobs::default();
        let id = two_platforms(&mut blobs, false);
        let index = index_of(&id, &blobs, "the export").unwrap().unwrap();
        let expected = "image app:1: the source holds the index entry but not the content of linux/arm64/v8 (an image pulled for one platform keeps the whole index); push what it holds with --platform linux/amd64";
        let err = select(&index, &[], "app:1").unwrap_err().to_string();
        assert_eq!(err, expected);
        let err = select(&index, &[platform("linux/arm64")], "app:1")
            .unwrap_err()
            .to_string();
        assert_eq!(err, expected);
        let amd = select(&index, &[platform("linux/amd64")], "app:1").unwrap();
        assert!(!amd.whole);
        assert_eq!(amd.entries.len(), 1);
    }

    #[test]
    fn a_single_platform_image_takes_only_its_own_platform() {
        let summary = ImageSummary {
            id: Digest::of(b"c"),
            diff_ids: vec![],
            size: 0,
            platform: Some(platform("linux/amd64")),
            id_kind: IdKind::Config,
            within: None,
            labels: Default::default(),
        };
        check_single(&summary, &[], "app:1").unwrap();
        check_single(&summary, &[platform("linux/amd64")], "app:1").unwrap();
        let err = check_single(&summary, &[platform("linux/arm64")], "app:1")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "image app:1 is for linux/amd64 only (it is not a multi-platform image): it has no platform linux/arm64");
        let unsaid = ImageSummary {
            platform: None,
            ..summary
        };
        assert!(check_single(&unsaid, &[platform("linux/amd64")], "app:1").is_err());
    }
}
