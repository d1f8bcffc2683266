//! Hard limits on what the guest builds and accepts, each refused with one line that says
//! which limit and by how much. (The export's own limits, on metadata files and link depth,
//! sit with the reader in `save.rs`.)

use anyhow::{bail, Result};

use crate::model::ImageSummary;

/// The largest manifest written: distribution and most registries refuse manifests over 4 MiB
/// (others allow up to 10 MiB), so a larger one could never be pulled everywhere.
pub const MANIFEST_LIMIT: usize = 4 << 20;

/// The most layers an image may have. Docker's storage drivers stop at 125-128; this leaves
/// room for other builders while refusing an inspect answer no real image gives.
pub const LAYER_LIMIT: usize = 1000;

/// Refuses a manifest no registry would store.
pub fn check_manifest_size(manifest: &[u8]) -> Result<()> {
    if manifest.len() > MANIFEST_LIMIT {
        bail!(
            "the image manifest would be {} bytes, over the {} MiB registries accept",
            manifest.len(),
            MANIFEST_LIMIT >> 20
        );
    }
    Ok(())
}

/// Refuses an image with more layers than any real one has, before anything is exported.
pub fn check_layer_count(image_name: &str, image: &ImageSummary) -> Result<()> {
    if image.diff_ids.len() > LAYER_LIMIT {
        bail!(
            "image {image_name} has {} layers, over the limit of {LAYER_LIMIT}",
            image.diff_ids.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn manifests_over_4_mib_are_refused() {
        assert!(check_manifest_size(&vec![b' '; MANIFEST_LIMIT]).is_ok());
        let err = check_manifest_size(&vec![b' '; MANIFEST_LIMIT + 1]).unwrap_err();
        assert!(
            err.to_string().contains("4194305 bytes, over the 4 MiB"),
            "{err}"
        );
    }

    #[test]
    fn more_than_1000_layers_are_refused() {
        let image = |n: usize| ImageSummary {
            id: Digest::of(b"config"),
            diff_ids: vec![Digest::of(b"layer"); n],
            size: 0,
            platform: None,
            id_kind: crate::model::IdKind::Config,
            within: None,
            labels: Default::default(),
        };
        assert!(check_layer_count("app:1", &image(LAYER_LIMIT)).is_ok());
        let err = check_layer_count("app:1", &image(LAYER_LIMIT + 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image app:1 has 1001 layers, over the limit of 1000"
        );
    }
}
