//! Publishing what was stored: the manifest that names an image's blobs, an index that names
//! manifests, and the tag, read back by digest when asked.
//!
//! Blobs, then manifest, then tag. A registry must never hold a manifest that names a blob it
//! lacks, and the tag is the write that publishes, so it comes last, after every manifest it
//! names. The steps here enforce that order by what they take: `manifest` takes the `Stored`
//! blobs (what `reuse` found or `stream` uploaded), `index_entry` an image's manifest, which it
//! writes by digest, `index` and `source_index` only manifests so written, and `tag` only a
//! manifest or index built here.

use anyhow::{bail, Context, Result};

use super::publication::{Image, Publication, Pushed, Stored};
use super::targets::Sink;
use crate::cache;
use crate::config;
use crate::digest::Digest;
use crate::limits;
use crate::manifest::{image_index, image_manifest, Format, PlatformManifest};
use crate::model::{Annotations, Change, OwnManifest};
use crate::ports::BlobSink;
use crate::progress::Event;
use crate::reference::Destination;

/// A manifest or index built here, ready to write.
pub struct Document {
    media_type: String,
    body: Vec<u8>,
}

/// An image's manifest, and the config it names (the index's platform comes from it).
pub struct ImageManifest {
    pub document: Document,
    config: Vec<u8>,
}

/// An image's manifest, written by its digest, for an index to name.
pub struct Entry(PlatformManifest);

impl<S, R: BlobSink> Publication<'_, S, R> {
    /// The manifest that names an image's stored config and layers: the source's own, byte for
    /// byte, when it has one and nothing the user asked for changes it; otherwise one built
    /// here with the annotations its config implies and the user's (and a progress line that
    /// says the source's was not kept).
    pub fn manifest(&mut self, image: &Image, stored: Stored) -> Result<ImageManifest> {
        let Stored {
            config,
            layers,
            own,
        } = stored;
        // Where these blobs now are: a later push to another repository can mount them from
        // there.
        for sink in &self.targets.sinks {
            if let Destination::Registry(target) = &sink.destination {
                for blob in std::iter::once(&config.blob).chain(layers.iter().map(|l| &l.blob)) {
                    cache::remember_home(self.cache, &blob.digest, &target.repository_url());
                }
            }
        }
        if let Some(own) = own {
            match self.settings.changes(&own) {
                None => {
                    return Ok(ImageManifest {
                        document: Document {
                            media_type: own.media_type,
                            body: own.body,
                        },
                        config: config.bytes,
                    })
                }
                Some(change) => self.progress.report(Event::ManifestRebuilt {
                    own: own.digest,
                    change,
                }),
            }
        }
        let settings = self.settings;
        let annotations = match settings.format {
            // Docker's schema has no annotations: the config's are not carried over.
            Format::Docker => Annotations::new(),
            Format::Oci => {
                let mut annotations = config::annotations(&config.bytes)
                    .with_context(|| format!("image {}", image.name))?;
                annotations.extend(settings.annotations.clone());
                annotations
            }
        };
        let body = image_manifest(
            settings.format,
            &config.blob,
            &layers,
            &settings.encoding,
            &annotations,
        )?;
        Ok(ImageManifest {
            document: Document {
                media_type: settings.format.manifest_media_type().to_string(),
                body,
            },
            config: config.bytes,
        })
    }

    /// Writes an image's manifest by its digest, for an index, with the platform from its
    /// config: the source's answer only ordered the refusal of duplicates, and must agree. A
    /// platform of a multi-platform source keeps the platform its index states (which may say
    /// more than the config, e.g. arm64's variant).
    pub fn index_entry(&mut self, image: &Image, manifest: ImageManifest) -> Result<Entry> {
        let name = &image.name;
        let from_config = match (&image.summary.within, &image.summary.platform) {
            (Some(_), Some(platform)) => platform.clone(),
            _ => config::platform(&manifest.config).with_context(|| format!("image {name}"))?,
        };
        if let Some(platform) = &image.summary.platform {
            if &from_config != platform {
                bail!("image {name}: the daemon said it is for {platform} but its config says {from_config}");
            }
        }
        let Document { media_type, body } = manifest.document;
        let digest = Digest::of(&body);
        for sink in &mut self.targets.sinks {
            let written = sink.write_manifest(digest.as_str(), &media_type, &body)?;
            self.progress.report(Event::ManifestDone {
                reference: digest.to_string(),
                digest: written,
            });
        }
        let own_type = media_type != self.settings.format.manifest_media_type();
        Ok(Entry(PlatformManifest {
            digest,
            size: body.len() as u64,
            platform: from_config,
            media_type: own_type.then_some(media_type),
        }))
    }

    /// The image index naming `entries`, in their order.
    pub fn index(&self, entries: Vec<Entry>) -> Result<Document> {
        let manifests: Vec<PlatformManifest> = entries.into_iter().map(|e| e.0).collect();
        let format = self.settings.format;
        Ok(Document {
            media_type: format.index_media_type().to_string(),
            body: image_index(format, &manifests, &self.settings.annotations)?,
        })
    }

    /// The index of a multi-platform source's platforms, `entries` (each written by digest):
    /// the source's own, byte for byte, when every platform was taken and each one's own
    /// manifest was published (the registry digest is then the image ID); otherwise one built
    /// here naming `entries`, and one event saying why the source's was not kept.
    pub fn source_index(
        &mut self,
        own: OwnManifest,
        entries: Vec<Entry>,
        whole: bool,
    ) -> Result<Document> {
        let change = match whole {
            false => Some(Change::Platforms),
            true => self.settings.changes(&own),
        };
        let names_entries = || {
            let named: Option<Vec<String>> = serde_json::from_slice::<Named>(&own.body)
                .ok()
                .map(|n| n.manifests.into_iter().map(|m| m.digest).collect());
            let written: Vec<String> = entries.iter().map(|e| e.0.digest.to_string()).collect();
            named == Some(written)
        };
        match change {
            None if names_entries() => {
                return Ok(Document {
                    media_type: own.media_type,
                    body: own.body,
                })
            }
            // A platform's manifest was built anew (its layers were not stored as the source
            // holds them): no request changed it, so no event.
            None => {}
            Some(change) => self.progress.report(Event::ManifestRebuilt {
                own: own.digest,
                change,
            }),
        }
        self.index(entries)
    }

    /// Writes a manifest or index under each destination's tag, in the order given: the
    /// writes that publish a push, so they come last, once every repository holds every blob.
    /// With several destinations, or asked to verify, each registry repository first gets the
    /// manifest by digest (read back when asked) before any tag is written, so that a
    /// repository that refuses it, or fails verification, leaves no tag anywhere. (An OCI
    /// layout gets the tag first and is read back after: a manifest written there by digest
    /// would become an index entry of its own.)
    pub fn tag(&mut self, document: Document) -> Result<Pushed> {
        let Document { media_type, body } = document;
        let digest = Digest::of(&body);
        let asked = self.settings.verify;
        let by_digest = asked || self.targets.tags.len() > 1;
        let mut checked = Vec::with_capacity(self.targets.sinks.len());
        for sink in &mut self.targets.sinks {
            let registry = matches!(sink.destination, Destination::Registry(_));
            if by_digest && registry {
                sink.write_manifest(digest.as_str(), &media_type, &body)?;
            }
            checked.push(if asked && registry {
                Some(sink.verify(&digest, "before writing")?)
            } else {
                None
            });
        }
        for (destination, at) in &self.targets.tags {
            let sink = &mut self.targets.sinks[*at];
            let tag = destination.tag().to_string();
            let written = sink.write_manifest(&tag, &media_type, &body);
            let written = match self.targets.tags.len() {
                1 => written?,
                _ => written
                    .with_context(|| format!("destination {}:{tag}", destination.location()))?,
            };
            self.progress.report(Event::ManifestDone {
                reference: tag,
                digest: written,
            });
        }
        if asked {
            for (sink, checked) in self.targets.sinks.iter_mut().zip(checked) {
                let (manifests, blobs) = match checked {
                    Some(checked) => checked,
                    None => sink.verify(&digest, "after writing")?,
                };
                self.progress.report(Event::Verified {
                    digest: digest.clone(),
                    manifests,
                    blobs,
                });
            }
        }
        Ok(Pushed {
            digest,
            repository: self.targets.sinks[0].destination.location(),
        })
    }
}

impl<R: BlobSink> Sink<R> {
    /// Writes a manifest or index under `reference` and checks the digest the registry
    /// reports.
    fn write_manifest(&mut self, reference: &str, media_type: &str, body: &[u8]) -> Result<Digest> {
        limits::check_manifest_size(body)?;
        let put = self.repository.put_manifest(reference, media_type, body);
        let digest = self.named(put)?;
        if digest != Digest::of(body) {
            bail!(
                "{} stored the manifest as {digest}, which is not the digest of what was sent ({})",
                self.destination.location(),
                Digest::of(body)
            );
        }
        Ok(digest)
    }

    /// Reads back what was written here by digest (`verify`).
    fn verify(&mut self, digest: &Digest, when: &str) -> Result<(u32, u32)> {
        verify(&mut self.repository, &self.destination, digest, when)
    }
}

/// Reads back what was published, by digest: the manifest (or index, and each manifest it
/// names) must hash to its digest, and every blob it names must be in the registry with the
/// size it states. Any difference fails the push. `when` says where the tag stands (`before
/// writing` or `after writing`), for the error. Returns how many manifests and blobs it checked.
fn verify(
    repository: &mut impl BlobSink,
    destination: &Destination,
    digest: &Digest,
    when: &str,
) -> Result<(u32, u32)> {
    read_back(repository, destination, digest).with_context(|| {
        format!(
            "verify {when} {}:{}",
            destination.location(),
            destination.tag()
        )
    })
}

/// Fetches `digest` and what it names; returns how many manifests and blobs were checked.
fn read_back(
    repository: &mut impl BlobSink,
    destination: &Destination,
    digest: &Digest,
) -> Result<(u32, u32)> {
    let location = destination.location();
    let mut manifests = 0u32;
    let mut blobs = 0u32;
    let mut pending = vec![digest.clone()];
    while let Some(digest) = pending.pop() {
        let Some(body) = repository.get_manifest(digest.as_str())? else {
            bail!("{location} has no manifest {digest}");
        };
        if Digest::of(&body) != digest {
            bail!(
                "{location} serves manifest {digest} with bytes that hash to {}",
                Digest::of(&body)
            );
        }
        manifests += 1;
        let named: Named = serde_json::from_slice(&body)
            .with_context(|| format!("manifest {digest} is not valid JSON"))?;
        for child in named.manifests {
            pending.push(Digest::parse(&child.digest, "an index entry's digest")?);
        }
        for (what, blob) in named
            .config
            .iter()
            .map(|c| ("config", c))
            .chain(named.layers.iter().map(|l| ("layer", l)))
        {
            let blob_digest = Digest::parse(&blob.digest, "a manifest's blob digest")?;
            match repository.blob_size(&blob_digest)? {
                Some(size) if size == blob.size => blobs += 1,
                Some(size) => bail!(
                    "{location} holds {what} {blob_digest} of manifest {digest} with {size} bytes, not the {} the manifest states",
                    blob.size
                ),
                None => bail!(
                    "{location} does not have {what} {blob_digest} that manifest {digest} names"
                ),
            }
        }
    }
    Ok((manifests, blobs))
}

/// What a manifest or index names, as far as verifying needs.
#[derive(serde::Deserialize)]
struct Named {
    #[serde(default)]
    config: Option<NamedBlob>,
    #[serde(default)]
    layers: Vec<NamedBlob>,
    #[serde(default)]
    manifests: Vec<NamedBlob>,
}

#[derive(serde::Deserialize)]
struct NamedBlob {
    digest: String,
    size: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::push::publication::Settings;
    use crate::testing::{Harness, MemoryRegistry};

    /// An OCI layout is tagged first and read back after: a manifest written there by digest
    /// would become an index entry of its own.
    #[test]
    fn a_layout_is_tagged_then_read_back() {
        let mut h = Harness::default();
        let settings = Settings {
            verify: true,
            ..Settings::for_tests()
        };
        let image = Image {
            name: "app:1".into(),
            summary: h.source.image.clone(),
        };
        let registry = h.registry.clone();
        let mut publication = Publication::over(&mut h, &settings, "oci:out:1");
        let stored = publication
            .export_and_upload(&image.summary, &HashMap::new())
            .unwrap();
        let manifest = publication.manifest(&image, stored).unwrap();
        let pushed = publication.tag(manifest.document).unwrap();
        assert_eq!(pushed.repository, "oci:out");
        let calls = registry.0.borrow().calls.clone();
        let manifests: Vec<&String> = calls
            .iter()
            .filter(|c| c.starts_with("manifest ") || c.starts_with("get "))
            .collect();
        assert_eq!(
            manifests,
            vec![
                &format!("manifest 1 {}", crate::manifest::OCI_MANIFEST),
                &format!("get {}", pushed.digest)
            ]
        );
        assert!(matches!(
            h.events.0.last(),
            Some(Event::Verified {
                manifests: 1,
                blobs: 3,
                ..
            })
        ));
    }

    /// Some platforms of a multi-platform source: a new index names them, and one event says
    /// the source's own index was not kept, and why.
    #[test]
    fn a_choice_of_platforms_gets_a_new_index_and_says_so() {
        let mut h = Harness::default();
        let settings = Settings::for_tests();
        let own = OwnManifest {
            digest: Digest::of(b"index"),
            media_type: crate::manifest::OCI_INDEX.into(),
            body: b"index".to_vec(),
        };
        let arm = PlatformManifest {
            digest: Digest::of(b"arm64 manifest"),
            size: 14,
            platform: crate::platforms::parse_platform("linux/arm64/v8").unwrap(),
            media_type: None,
        };
        let mut publication = Publication::over(&mut h, &settings, "127.0.0.1:5000/team/app:1");
        let arm_digest = arm.digest.clone();
        let index = publication
            .source_index(own.clone(), vec![Entry(arm)], false)
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&index.body).unwrap();
        assert_eq!(json["manifests"][0]["digest"], arm_digest.as_str());
        assert_eq!(json["manifests"][0]["platform"]["variant"], "v8");
        assert_eq!(
            h.events.0,
            vec![Event::ManifestRebuilt {
                own: own.digest,
                change: Change::Platforms
            }]
        );
    }

    #[test]
    fn verify_fails_on_a_manifest_served_with_other_bytes() {
        let registry = MemoryRegistry::default();
        let digest = Digest::of(b"{}");
        registry
            .0
            .borrow_mut()
            .manifests
            .insert(digest.to_string(), b"{ }".to_vec());
        let target = Destination::parse("127.0.0.1:5000/team/app:1").unwrap();
        let err = verify(&mut registry.clone(), &target, &digest, "after writing").unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("hash to"), "{err}");
        let missing = Digest::of(b"missing");
        let err = verify(&mut registry.clone(), &target, &missing, "after writing").unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("has no manifest"), "{err}");
    }
}
