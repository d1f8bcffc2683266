//! What the destination already holds of an image, asked before the export (the slow part): the
//! blobs the cache names for it, found by a HEAD or mounted from another repository of the same
//! registry they were pushed to.

use std::collections::HashMap;

use anyhow::Result;

use super::publication::{Config, Found, Present, Publication, Stored};
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

impl<S, R: BlobSink> Publication<'_, S, R> {
    /// Asks each repository of the push once which of the image's blobs it holds: those the
    /// cache names a blob for (and for the config, holds its bytes, checked against its
    /// digest) that are found (a HEAD with the size recorded) or mounted from another
    /// repository of the same registry, one of this push that holds it or one the cache says
    /// it was pushed to. The blobs are content-addressed and were recorded only after verified
    /// uploads, so with all of them everywhere the manifest is the one a full push writes.
    pub fn held(&mut self, image: &ImageSummary) -> Result<Held> {
        // The config first: without it everywhere, the export cannot be skipped.
        let mut config = None;
        if let Some(blob) = cache::image_config(self.cache, image) {
            if let Some(bytes) = cache::config_bytes(self.cache, &blob) {
                if self.find_or_mount(&blob)?.iter().all(Option::is_some) {
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
            let Some(layer) = present.get(diff_id).filter(|p| p.everywhere()) else {
                return Ok(Held::Some(present));
            };
            mounted_from.push(layer.mounted_from());
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
                mounted_from: from,
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

    /// The layers of `image` that some repository of the push holds (or was made to hold, by
    /// a mount), by diff ID, as far as the cache knows the blobs this encoding makes of them.
    fn present_layers(&mut self, image: &ImageSummary) -> Result<HashMap<Digest, Present>> {
        let mut present = HashMap::new();
        for diff_id in &image.diff_ids {
            let Some(blob) = cache::layer_blob(self.cache, diff_id, &self.settings.encoding) else {
                continue;
            };
            let held = self.find_or_mount(&blob)?;
            if held.iter().any(Option::is_some) {
                present.insert(diff_id.clone(), Present { blob, held });
            }
        }
        Ok(present)
    }

    /// Per repository of the push, whether it holds `blob` (a HEAD with the recorded size), or
    /// can be made to by mounting it from another repository of the same registry: first one
    /// of this push that holds it, then those the cache says it was pushed to. Each mount the
    /// registry declines (Harbor answers 401) only means trying the next, then uploading.
    fn find_or_mount(&mut self, blob: &Blob) -> Result<Vec<Option<Found>>> {
        let sinks = &mut self.targets.sinks;
        let mut held = Vec::with_capacity(sinks.len());
        for sink in sinks.iter_mut() {
            held.push(sink.holds(blob)?.then_some(Found { mounted_from: None }));
        }
        for at in 0..sinks.len() {
            let Destination::Registry(target) = &sinks[at].destination else {
                continue;
            };
            if held[at].is_some() {
                continue;
            }
            let (registry, repository) = (target.registry.clone(), target.repository.clone());
            let mut sources: Vec<String> = sinks
                .iter()
                .zip(&held)
                .filter(|(sink, found)| found.is_some() && sink.registry() == Some(&registry))
                .filter_map(|(sink, _)| match &sink.destination {
                    Destination::Registry(other) => Some(other.repository.clone()),
                    Destination::Layout(_) => None,
                })
                .collect();
            for home in cache::homes(self.cache, &blob.digest) {
                if let Some(source) = home.strip_prefix(&format!("{registry}/")) {
                    if !sources.iter().any(|s| s == source) {
                        sources.push(source.to_string());
                    }
                }
            }
            for source in sources.into_iter().filter(|s| *s != repository) {
                if sinks[at].mount(blob, &source)? {
                    held[at] = Some(Found {
                        mounted_from: Some(source),
                    });
                    break;
                }
            }
        }
        Ok(held)
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
        assert_eq!(first.held, vec![Some(Found { mounted_from: None })]);
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
