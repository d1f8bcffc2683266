//! What the destination already holds of an image, asked before the export (the slow part): the
//! blobs the cache names for it, found by a HEAD or mounted from another repository of the same
//! registry they were pushed to.

use std::collections::HashMap;

use anyhow::Result;

use super::publication::{Config, Present, Publication, Stored};
use crate::cache;
use crate::digest::Digest;
use crate::model::{Blob, ImageSummary, Layer};
use crate::ports::BlobSink;
use crate::progress::Event;
use crate::reference::Destination;

/// What the destination holds of an image, as far as the cache can tell.
pub enum Held {
    /// The config and every layer: the export is skipped.
    All(Stored),
    /// These layers, by diff ID: only hashed as the export passes.
    Some(HashMap<Digest, Present>),
}

/// How a blob came to be in the destination.
struct Found {
    /// The repository it was mounted from; `None` when the destination held it.
    mounted_from: Option<String>,
}

impl<S, R: BlobSink> Publication<'_, S, R> {
    /// Asks the destination once which of the image's blobs it holds: those the cache names a
    /// blob for (and for the config, holds its bytes, checked against its digest) that are found
    /// (a HEAD with the size recorded) or mounted from another repository of the registry they
    /// were pushed to. The blobs are content-addressed and were recorded only after verified
    /// uploads, so with all of them there the manifest is the one a full push writes.
    pub fn held(&mut self, image: &ImageSummary) -> Result<Held> {
        // The config first: without it there, the export cannot be skipped.
        let mut config = None;
        if let Some(blob) = cache::image_config(self.cache, image) {
            if let Some(bytes) = cache::config_bytes(self.cache, &blob) {
                if self.find_or_mount(&blob)?.is_some() {
                    config = Some(Config { blob, bytes });
                }
            }
        }
        let present = self.present_layers(image)?;
        let Some(config) = config else {
            return Ok(Held::Some(present));
        };
        let mut layers = Vec::with_capacity(image.diff_ids.len());
        let mut mounted_from = Vec::with_capacity(image.diff_ids.len());
        for diff_id in &image.diff_ids {
            let Some(layer) = present.get(diff_id) else {
                return Ok(Held::Some(present));
            };
            mounted_from.push(&layer.mounted_from);
            layers.push(Layer {
                diff_id: diff_id.clone(),
                blob: layer.blob.clone(),
                media_type: None,
            });
        }
        for (position, (layer, from)) in layers.iter().zip(mounted_from).enumerate() {
            self.progress.report(Event::LayerSkipped {
                position: position as u32 + 1,
                diff_id: layer.diff_id.clone(),
                digest: layer.blob.digest.clone(),
                size: layer.blob.size,
                mounted_from: from.clone(),
            });
        }
        self.progress
            .report(Event::ConfigDone(config.blob.digest.clone()));
        // Only images whose layers this encoding made are found here: their manifest is built.
        Ok(Held::All(Stored {
            config,
            layers,
            own: None,
        }))
    }

    /// The layers of `image` the destination holds (or was made to hold, by a mount), by diff
    /// ID, as far as the cache knows the blobs this encoding makes of them.
    fn present_layers(&mut self, image: &ImageSummary) -> Result<HashMap<Digest, Present>> {
        let mut present = HashMap::new();
        for diff_id in &image.diff_ids {
            let Some(blob) = cache::layer_blob(self.cache, diff_id, &self.settings.encoding) else {
                continue;
            };
            if let Some(Found { mounted_from }) = self.find_or_mount(&blob)? {
                present.insert(diff_id.clone(), Present { blob, mounted_from });
            }
        }
        Ok(present)
    }

    /// Whether the destination holds `blob` (a HEAD with the recorded size), or can be made to
    /// by mounting it from a repository of the same registry that the cache says it was pushed
    /// to. Each mount the registry declines (Harbor answers 401) only means trying the next,
    /// then uploading.
    fn find_or_mount(&mut self, blob: &Blob) -> Result<Option<Found>> {
        if self.holds(blob)? {
            return Ok(Some(Found { mounted_from: None }));
        }
        let Destination::Registry(target) = &self.destination else {
            return Ok(None);
        };
        let (registry, repository) = (target.registry.clone(), target.repository.clone());
        for home in cache::homes(self.cache, &blob.digest) {
            let Some(source) = home
                .strip_prefix(&format!("{registry}/"))
                .filter(|s| *s != repository)
            else {
                continue;
            };
            if self.repository.mount_blob(&blob.digest, source)? && self.holds(blob)? {
                return Ok(Some(Found {
                    mounted_from: Some(source.to_string()),
                }));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::publication::Settings;
    use crate::testing::Harness;

    const DESTINATION: &str = "127.0.0.1:5000/team/app:1";

    /// What a destination holds after the harness's image was exported and uploaded to it.
    fn held_after_upload(h: &mut Harness, settings: &Settings) -> Held {
        let image = h.source.image.clone();
        let mut publication = Publication::over(h, settings, DESTINATION);
        publication
            .export_and_upload(&image, &HashMap::new())
            .unwrap();
        publication.held(&image).unwrap()
    }

    #[test]
    fn a_destination_that_holds_every_blob_holds_the_image() {
        let mut h = Harness::default();
        let settings = Settings::for_tests();
        let Held::All(stored) = held_after_upload(&mut h, &settings) else {
            panic!("the uploaded image is not held whole");
        };
        assert_eq!(stored.config.bytes, h.f.config);
        let diff_ids: Vec<_> = stored.layers.iter().map(|l| l.diff_id.clone()).collect();
        assert_eq!(diff_ids, h.f.diff_ids);
        assert_eq!(h.events.skipped(), vec![1, 2]);
        assert_eq!(h.source.exports, 1, "held() exports nothing");
    }

    #[test]
    fn a_lost_blob_leaves_only_the_layers_still_there() {
        let mut h = Harness::default();
        let settings = Settings::for_tests();
        // The registry loses the second layer as it takes it.
        h.registry.0.borrow_mut().loses = Some(h.f.diff_ids[1].clone());
        let Held::Some(present) = held_after_upload(&mut h, &settings) else {
            panic!("an image with a lost layer is held whole");
        };
        assert_eq!(present.len(), 1);
        let first = &present[&h.f.diff_ids[0]];
        assert_eq!(first.blob.digest, h.f.diff_ids[0]);
        assert_eq!(first.mounted_from, None);
        // Another encoding's blobs are other blobs: none of these is known for it.
        let zstd = Settings {
            encoding: crate::model::Encoding::new(crate::model::Compression::Zstd, 3).unwrap(),
            ..Settings::for_tests()
        };
        let image = h.source.image.clone();
        let mut publication = Publication::over(&mut h, &zstd, DESTINATION);
        assert!(matches!(publication.held(&image).unwrap(), Held::Some(p) if p.is_empty()));
    }
}
