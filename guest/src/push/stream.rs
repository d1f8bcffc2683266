//! Export and upload: one pass over the image's export, each layer hashed while it streams to
//! the destination and committed only once it proves to be a layer of the image; then the
//! config. What was verified is remembered in the cache.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;

use anyhow::{bail, Context, Result};

use super::publication::{Config, Found, Present, Publication, Stored};
use super::targets::{Sink, Uploads};
use crate::cache;
use crate::digest::{Digest, Hasher};
use crate::model::{Blob, Encoding, ImageSummary, Layer, SavedImage};
use crate::ports::{
    BlobSink, Cache, LayerEntry, ProgressSink, Publish, ReadExport, Unverified, UploadLost,
    CHUNK_SIZE,
};
use crate::progress::{Event, LayerBytes, LayerRef};

impl<S: ReadExport, R: BlobSink> Publication<'_, S, R> {
    /// Streams the export (again only if an entry was not the layer it was taken for): each
    /// layer is hashed while it uploads and committed only if its diff ID is one the image
    /// lists (a layer the export holds already compressed is stored as it is, if it hashes to
    /// its name); an entry recognised as a layer every repository already holds (`present`)
    /// is passed over unread: those bytes are not published, the manifest names that layer's
    /// blob through the config, which is checked against the image ID. Then the config goes up
    /// byte for byte as the source wrote it, so its digest stays the image ID.
    ///
    /// A layer upload the registry lost (`UploadLost`) costs one more export, which passes over
    /// the layers committed before the loss as it does those held already; a second loss ends
    /// the push.
    pub fn export_and_upload(
        &mut self,
        image: &ImageSummary,
        present: &HashMap<Digest, Present>,
    ) -> Result<Stored> {
        let mut held = present.clone();
        // Layers the passes committed, which every repository of the push holds from then on.
        let mut committed = HashMap::new();
        let (mut misread, mut lost) = (false, false);
        // A stored blob's place in the image is known only once the export is read.
        let (saved, stored) = loop {
            match self.export_once(image, &held, &mut committed) {
                // An entry was not the layer it was taken for, and its bytes are gone: export
                // again, hashing and uploading every layer.
                Err(e)
                    if !misread
                        && (e.downcast_ref::<Misnamed>().is_some()
                            || e.downcast_ref::<Unverified>().is_some()) =>
                {
                    misread = true;
                    held.clear();
                }
                Err(e) if e.downcast_ref::<UploadLost>().is_some() => {
                    if lost {
                        return Err(e.context(
                            "the image was exported again after a lost layer upload, and an upload was lost again",
                        ));
                    }
                    lost = true;
                    let everywhere =
                        vec![Some(Found { mounted_from: None }); self.targets.sinks.len()];
                    for (diff_id, blob) in &committed {
                        held.insert(
                            diff_id.clone(),
                            Present {
                                blob: blob.clone(),
                                held: everywhere.clone(),
                            },
                        );
                    }
                }
                result => break result?,
            }
        };
        for (position, layer) in saved.layers.iter().enumerate() {
            if let Some(entry) = stored.get(&layer.blob.digest) {
                self.progress.report(Event::LayerDone {
                    layer: entry.clone(),
                    diff_id: layer.diff_id.clone(),
                    position: position as u32 + 1,
                    digest: layer.blob.digest.clone(),
                    size: layer.blob.size,
                });
            }
        }
        let config = self.upload_config(&saved.config)?;
        self.remember(image, &saved, &config);
        Ok(Stored {
            config: Config {
                blob: config,
                bytes: saved.config,
            },
            layers: saved.layers,
            own: saved.own,
        })
    }

    /// Puts the config in each repository of the push that does not hold it.
    fn upload_config(&mut self, bytes: &[u8]) -> Result<Blob> {
        let config = Blob {
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
        };
        for sink in &mut self.targets.sinks {
            sink.put_blob(&config, bytes)?;
        }
        self.progress
            .report(Event::ConfigDone(config.digest.clone()));
        Ok(config)
    }

    /// Records what the export proved: each layer this encoding produced, the config's bytes,
    /// and the image's config when every layer is one a later push can find by its diff ID.
    fn remember(&mut self, image: &ImageSummary, saved: &SavedImage, config: &Blob) {
        // Only layers this encoding produced: a stored blob is not what it gives for the diff ID.
        let encoded: Vec<&Layer> = saved
            .layers
            .iter()
            .filter(|l| l.media_type.is_none())
            .collect();
        let encoding = &self.settings.encoding;
        for layer in &encoded {
            cache::remember_layer(self.cache, &layer.diff_id, encoding, &layer.blob);
        }
        cache::remember_config_bytes(self.cache, config, &saved.config);
        if encoded.len() == saved.layers.len() {
            cache::remember_image_config(self.cache, image, config);
        }
    }

    /// Exports the image and reads the export, publishing its layers as they pass; returns
    /// what it held and the blobs stored as the export held them, by digest, with their
    /// entries. The layers it committed are added to `committed`, by diff ID, whether the pass
    /// succeeds or not.
    fn export_once(
        &mut self,
        image: &ImageSummary,
        present: &HashMap<Digest, Present>,
        committed: &mut HashMap<Digest, Blob>,
    ) -> Result<(SavedImage, HashMap<Digest, LayerRef>)> {
        // Sizes are looked up once: every entry that has no name to go by is matched to them.
        let sizes = present
            .iter()
            .filter(|(_, held)| held.everywhere())
            .filter_map(|(diff_id, _)| {
                Some((diff_id.clone(), cache::layer_size(self.cache, diff_id)?))
            })
            .collect();
        let mut publisher = Publisher {
            sinks: &mut self.targets.sinks,
            image,
            encoding: &self.settings.encoding,
            progress: &mut *self.progress,
            cache: &mut *self.cache,
            present,
            sizes,
            passed: HashSet::new(),
            stored: HashMap::new(),
            pending: VecDeque::new(),
            jobs: self.settings.jobs.max(1) as usize,
            committed,
        };
        let saved = self.source.read_export(image, &mut publisher)?;
        // Every layer in the destination before the config and manifest that name them.
        publisher.settle(0)?;
        Ok((saved, publisher.stored))
    }
}

/// An export entry that did not hash to the layer its name did before.
#[derive(Debug)]
struct Misnamed {
    entry: String,
    expected: Digest,
    hashed: Digest,
}

impl std::fmt::Display for Misnamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "export entry {} hashed to {}, not to {} as before",
            self.entry, self.hashed, self.expected
        )
    }
}

impl std::error::Error for Misnamed {}

/// Publishes the layers of an export as they pass.
struct Publisher<'a, R: BlobSink> {
    /// The repositories of the push.
    sinks: &'a mut [Sink<R>],
    image: &'a ImageSummary,
    encoding: &'a Encoding,
    progress: &'a mut dyn ProgressSink,
    cache: &'a mut dyn Cache,
    /// Layers some repositories hold: not uploaded to those again.
    present: &'a HashMap<Digest, Present>,
    /// The tar sizes of the layers every repository holds that the cache knows.
    sizes: HashMap<Digest, u64>,
    /// The layers of `present` passed over so far.
    passed: HashSet<Digest>,
    /// Blobs stored as the export held them, by digest: where they were in the export.
    stored: HashMap<Digest, LayerRef>,
    /// Uploads closed and still being sent by the host, oldest first. Dropped with the
    /// publisher when the export fails, which cancels them.
    pending: VecDeque<Pending<Uploads<R::Upload>>>,
    /// Uploads in flight at once: the one being written and `jobs - 1` pending.
    jobs: usize,
    /// The layers this pass committed, by diff ID: kept should the pass fail.
    committed: &'a mut HashMap<Digest, Blob>,
}

/// A closed upload the host is still sending.
struct Pending<U> {
    upload: U,
    /// The blob `close` described, which the commit must confirm.
    blob: Blob,
    /// The layer's byte counts, for progress while it is sent.
    bytes: LayerBytes,
    /// What to report once it is committed: `LayerDone` for a layer this push encoded; none
    /// for a blob stored as the export held it (reported once its place is known).
    done: Option<Event>,
}

impl<R: BlobSink> Publish for Publisher<'_, R> {
    /// Streams one layer to each repository that lacks it, hashing it on the way, and commits
    /// it only once its diff ID proves to be one the image lists; otherwise the uploads are
    /// dropped, which cancels them. An entry recognised as a layer every repository holds is
    /// passed over unread (`recognise`).
    fn layer(&mut self, entry: LayerEntry<'_>) -> Result<Layer> {
        if let Some(diff_id) = self.recognise(&entry) {
            return Ok(self.pass_over(diff_id));
        }
        let (name, size) = (entry.name.clone(), entry.size);
        let present = self.present;
        let promised = cache::entry_diff_id(self.cache, &name, size)
            .and_then(|diff_id| present.get(&diff_id).map(|p| (diff_id, p)));
        let lacking: Vec<usize> = match promised {
            Some((_, present)) => (0..self.sinks.len())
                .filter(|&at| present.held[at].is_none())
                .collect(),
            None => (0..self.sinks.len()).collect(),
        };
        let (layer, mut uploads, diff_id) = self.stream(entry, self.encoding, &lacking)?;
        if let Some((promised, _)) = &promised {
            if promised != &diff_id {
                // The repositories that hold the promised layer may lack this one.
                return Err(Misnamed {
                    entry: name,
                    expected: promised.clone(),
                    hashed: diff_id,
                }
                .into());
            }
        }
        let Some(position) = self.image.diff_ids.iter().position(|d| d == &diff_id) else {
            bail!(
                "digest mismatch: layer {} of the export hashes to {diff_id}, which is not a diff ID of image {}",
                layer.entry,
                self.image.id
            );
        };
        let blob = name_lost(uploads.close(&diff_id), &layer)?;
        if let Some((_, present)) = promised {
            self.same_as_held(&diff_id, present, &blob)?;
        }
        cache::remember_entry(self.cache, &name, size, &diff_id);
        cache::remember_layer_size(self.cache, &diff_id, size);
        let done = Event::LayerDone {
            layer: layer.clone(),
            diff_id: diff_id.clone(),
            position: position as u32 + 1,
            digest: blob.digest.clone(),
            size: blob.size,
        };
        self.defer(uploads, &blob, layer, size, Some(done))?;
        Ok(Layer {
            diff_id,
            blob,
            media_type: None,
        })
    }

    /// Streams an already compressed layer to the registry as it is, and commits it only if
    /// it hashes to the digest that names it.
    fn blob(&mut self, entry: LayerEntry<'_>, digest: &Digest) -> Result<Blob> {
        let size = entry.size;
        let every: Vec<usize> = (0..self.sinks.len()).collect();
        let (layer, mut upload, hashed) = self.stream(entry, &Encoding::as_is(), &every)?;
        if &hashed != digest {
            bail!(
                "digest mismatch: blob {} of the export hashes to {hashed}",
                layer.entry
            );
        }
        let blob = name_lost(upload.close(&hashed), &layer)?;
        if &blob.digest != digest {
            bail!("the destination stored blob {digest} as {}", blob.digest);
        }
        self.stored.insert(blob.digest.clone(), layer.clone());
        self.defer(upload, &blob, layer, size, None)?;
        Ok(blob)
    }
}

impl<R: BlobSink> Publisher<'_, R> {
    /// Keeps a closed upload in flight while the next layer is read, then finishes the oldest
    /// until no more than `jobs - 1` are.
    fn defer(
        &mut self,
        upload: Uploads<R::Upload>,
        blob: &Blob,
        layer: LayerRef,
        total: u64,
        done: Option<Event>,
    ) -> Result<()> {
        self.pending.push_back(Pending {
            upload,
            blob: blob.clone(),
            bytes: LayerBytes {
                layer,
                done: total,
                sent: 0,
                total,
            },
            done,
        });
        self.settle(self.jobs - 1)
    }

    /// Finishes the oldest pending uploads until at most `left` remain, each confirmed in the
    /// destination as the blob its `close` described.
    fn settle(&mut self, left: usize) -> Result<()> {
        while self.pending.len() > left {
            let Some(pending) = self.pending.pop_front() else {
                break;
            };
            let expected = pending.blob;
            let blob = name_lost(pending.upload.finish(), &pending.bytes.layer)?;
            if blob != expected {
                bail!(
                    "the destination stored layer {} as {} ({} bytes), not as {} ({} bytes) as it was encoded",
                    pending.bytes.layer.entry,
                    blob.digest,
                    blob.size,
                    expected.digest,
                    expected.size
                );
            }
            self.progress.report(Event::LayerProgress(LayerBytes {
                sent: blob.size,
                ..pending.bytes
            }));
            if let Some(done) = pending.done {
                if let Event::LayerDone { diff_id, .. } = &done {
                    self.committed.insert(diff_id.clone(), blob);
                }
                self.progress.report(done);
            }
        }
        Ok(())
    }

    /// The layer every repository holds that `entry` is, as far as can be told before reading
    /// it: the diff ID its name states; else the one an entry of this name and size hashed to
    /// before (Docker <= 24 names lower layers by their chain, the same under every image
    /// built on them); else, for a name the cache does not know, the one layer held, not
    /// passed over yet, whose tar has this size (a base's top layer under an image built on
    /// it). A wrong guess costs a second export, never a wrong image: the reader finds it when
    /// `manifest.json` places the entry (`Unverified`).
    fn recognise(&mut self, entry: &LayerEntry<'_>) -> Option<Digest> {
        let named = entry
            .named
            .clone()
            .or_else(|| cache::entry_diff_id(self.cache, &entry.name, entry.size));
        if let Some(diff_id) = named {
            let everywhere = self.present.get(&diff_id).is_some_and(Present::everywhere);
            return everywhere.then_some(diff_id);
        }
        let mut sized = self
            .sizes
            .iter()
            .filter(|(diff_id, size)| **size == entry.size && !self.passed.contains(*diff_id));
        match (sized.next(), sized.next()) {
            (Some((diff_id, _)), None) => Some(diff_id.clone()),
            _ => None,
        }
    }

    /// A layer every repository holds, its entry passed over unread: reported as skipped.
    fn pass_over(&mut self, diff_id: Digest) -> Layer {
        self.passed.insert(diff_id.clone());
        let present = &self.present[&diff_id];
        let position = self.image.diff_ids.iter().position(|d| d == &diff_id);
        self.progress.report(Event::LayerSkipped {
            position: position.map_or(0, |p| p as u32 + 1),
            diff_id: diff_id.clone(),
            digest: present.blob.digest.clone(),
            size: present.blob.size,
            mounted_from: present.mounted_from(),
        });
        Layer {
            diff_id,
            blob: present.blob.clone(),
            media_type: None,
        }
    }

    /// A layer some repositories held (the blob the cache named) and the others were just
    /// sent must be one blob, or the manifest would name a blob one of them lacks. Should
    /// the encoder no longer give that blob, the cache learns the new one and the push stops
    /// before any tag: the next push sends it everywhere.
    fn same_as_held(&mut self, diff_id: &Digest, present: &Present, stored: &Blob) -> Result<()> {
        if &present.blob == stored {
            return Ok(());
        }
        cache::remember_layer(self.cache, diff_id, self.encoding, stored);
        let holder = present
            .held
            .iter()
            .position(Option::is_some)
            .map_or_else(String::new, |at| self.sinks[at].destination.location());
        bail!(
            "layer {diff_id} encodes to {} now, but {holder} holds it as {} from an earlier push: no tag was written; push again to send it as {} everywhere",
            stored.digest,
            present.blob.digest,
            stored.digest
        )
    }

    /// Streams an entry whole into a new upload encoded as `encoding` in each repository `at`
    /// names, reporting progress; returns the uploads, still to finish, and the digest of the
    /// bytes streamed.
    fn stream(
        &mut self,
        entry: LayerEntry<'_>,
        encoding: &Encoding,
        at: &[usize],
    ) -> Result<(LayerRef, Uploads<R::Upload>, Digest)> {
        let layer = LayerRef {
            index: entry.index,
            entry: entry.name.clone(),
        };
        let bytes = |done, sent| LayerBytes {
            layer: layer.clone(),
            done,
            sent,
            total: entry.size,
        };
        self.progress.report(Event::LayerStarted(bytes(0, 0)));
        let mut upload = Uploads::start(self.sinks, at, encoding)?;
        let mut done = 0u64;
        let progress = &mut *self.progress;
        let pending = &self.pending;
        let hashed = pass(entry.data, &entry.name, entry.size, |chunk| {
            let written = upload.write(chunk);
            name_lost(written, &layer)?;
            done += chunk.len() as u64;
            progress.report(Event::LayerProgress(bytes(done, upload.sent())));
            // The layers still being sent move too.
            for p in pending {
                progress.report(Event::LayerProgress(LayerBytes {
                    sent: p.upload.sent(),
                    ..p.bytes.clone()
                }));
            }
            Ok(())
        })?;
        Ok((layer, upload, hashed))
    }
}

/// Names the layer whose upload the registry lost, for the line a second loss ends the push with.
fn name_lost<T>(result: Result<T>, layer: &LayerRef) -> Result<T> {
    result.map_err(|e| match e.downcast_ref::<UploadLost>() {
        Some(_) => e.context(format!("layer {}", layer.entry)),
        None => e,
    })
}

/// Reads an entry of `size` bytes whole, in large chunks (so crossings stay large), handing
/// each chunk to `each`; returns the digest of all it read.
fn pass(
    data: &mut dyn Read,
    name: &str,
    size: u64,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Digest> {
    let mut hasher = Hasher::default();
    let mut chunk = vec![0u8; CHUNK_SIZE.min(size as usize).max(1)];
    loop {
        let n = fill(data, &mut chunk)
            .with_context(|| format!("reading layer {name} from the export"))?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        each(&chunk[..n])?;
    }
    Ok(hasher.finish())
}

/// Reads until `buf` is full or the input ends, so crossings stay large.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::publication::Settings;
    use crate::testing::{classic_export, fixture, manifest_json, tar, Harness, Item};

    /// A layer the destination holds, and whose entry the cache names, is hashed as the export
    /// passes and never uploaded; the others are, and everything verified is remembered.
    #[test]
    fn present_layers_are_hashed_the_others_uploaded_and_all_remembered() {
        let mut h = Harness::default();
        let settings = Settings::for_tests();
        let image = h.source.image.clone();
        let (first, second) = (h.f.diff_ids[0].clone(), h.f.diff_ids[1].clone());
        // An earlier export named the entry of the first layer; the registry holds its blob.
        cache::remember_entry(&mut h.cache, "aaa/layer.tar", 3000, &first);
        let blob = Blob {
            digest: first.clone(),
            size: 3000,
        };
        let present = HashMap::from([(
            first.clone(),
            Present {
                blob: blob.clone(),
                held: vec![Some(crate::push::publication::Found { mounted_from: None })],
            },
        )]);
        let registry = h.registry.clone();
        let stored = Publication::over(&mut h, &settings, "127.0.0.1:5000/team/app:1")
            .export_and_upload(&image, &present)
            .unwrap();

        assert_eq!(stored.layers[0].blob, blob);
        assert_eq!(stored.layers[1].blob.digest, second);
        let uploads: Vec<String> = registry
            .0
            .borrow()
            .calls
            .iter()
            .filter(|c| c.starts_with("layer ") || c.starts_with("blob "))
            .cloned()
            .collect();
        let config = Digest::of(&h.f.config);
        assert_eq!(
            uploads,
            vec![format!("layer {second}"), format!("blob {config}")]
        );
        assert_eq!(h.events.skipped(), vec![1]);
        assert_eq!(h.events.0.last(), Some(&Event::ConfigDone(config.clone())));
        let encoding = &settings.encoding;
        assert_eq!(
            cache::layer_blob(&mut h.cache, &second, encoding),
            Some(stored.layers[1].blob.clone())
        );
        assert_eq!(
            cache::image_config(&mut h.cache, &image).map(|c| c.digest),
            Some(config)
        );
    }

    /// With two jobs, the second layer streams while the first is still being sent: its
    /// upload is finished (and reported done) only then; with one, each layer is done before
    /// the next starts. Either way every layer is in the registry before the config.
    #[test]
    fn with_two_jobs_the_next_layer_streams_before_the_last_one_is_finished() {
        for (jobs, overlapped) in [(1, false), (2, true)] {
            let mut h = Harness::default();
            let mut settings = Settings::for_tests();
            settings.jobs = jobs;
            let image = h.source.image.clone();
            let registry = h.registry.clone();
            Publication::over(&mut h, &settings, "127.0.0.1:5000/team/app:1")
                .export_and_upload(&image, &HashMap::new())
                .unwrap();
            let at = |wanted: &dyn Fn(&Event) -> bool| h.events.0.iter().position(wanted).unwrap();
            let second_started = at(&|e| matches!(e, Event::LayerStarted(b) if b.layer.index == 2));
            let first_done =
                at(&|e| matches!(e, Event::LayerDone { layer, .. } if layer.index == 1));
            assert_eq!(second_started < first_done, overlapped, "jobs {jobs}");
            let calls = registry.0.borrow().calls.clone();
            let config = calls.iter().position(|c| c.starts_with("blob ")).unwrap();
            let layers: Vec<usize> = (0..calls.len())
                .filter(|&i| calls[i].starts_with("layer "))
                .collect();
            assert_eq!(layers.len(), 2, "{calls:?}");
            assert!(layers.iter().all(|&i| i < config), "{calls:?}");
        }
    }

    /// The destination holds the first layer of the harness's image.
    fn first_held(h: &Harness) -> HashMap<Digest, Present> {
        let first = h.f.diff_ids[0].clone();
        let blob = Blob {
            digest: first.clone(),
            size: 3000,
        };
        HashMap::from([(
            first,
            Present {
                blob,
                held: vec![Some(crate::push::publication::Found { mounted_from: None })],
            },
        )])
    }

    /// Layer and blob uploads the registry saw, in order.
    fn uploads(h: &Harness) -> Vec<String> {
        h.registry
            .0
            .borrow()
            .calls
            .iter()
            .filter(|c| c.starts_with("layer ") || c.starts_with("blob "))
            .cloned()
            .collect()
    }

    /// A held layer is passed over unread when its entry's name states its diff ID (Docker >=
    /// 25, podman), or when no name is known and its tar is the only held one of that size (a
    /// base's top layer under an image built on it): its bytes are never read.
    #[test]
    fn a_held_layer_is_passed_over_unread_by_its_name_or_its_size() {
        let f = fixture();
        let blob_name = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let config_name = blob_name(&f.id);
        let (a, b) = (blob_name(&f.diff_ids[0]), blob_name(&f.diff_ids[1]));
        let oci = tar(&[
            Item::File(&a, &f.layers[0]),
            Item::File(&b, &f.layers[1]),
            Item::File(&config_name, &f.config),
            Item::File("manifest.json", &manifest_json(&config_name, &[&a, &b])),
        ]);
        for (export, by_size) in [(oci, false), (classic_export(&f), true)] {
            let mut h = Harness::default();
            let settings = Settings::for_tests();
            let image = h.source.image.clone();
            h.source.export = export;
            let total = h.source.export.len() as u64;
            if by_size {
                cache::remember_layer_size(&mut h.cache, &h.f.diff_ids[0], 3000);
            }
            let present = first_held(&h);
            let stored = Publication::over(&mut h, &settings, "127.0.0.1:5000/team/app:1")
                .export_and_upload(&image, &present)
                .unwrap();
            assert_eq!(stored.layers[0].blob, present[&h.f.diff_ids[0]].blob);
            assert_eq!(stored.layers[1].diff_id, h.f.diff_ids[1]);
            assert_eq!(h.events.skipped(), vec![1]);
            let config = Digest::of(&h.f.config);
            let second = &h.f.diff_ids[1];
            assert_eq!(
                uploads(&h),
                vec![format!("layer {second}"), format!("blob {config}")]
            );
            assert_eq!(h.source.exports, 1);
            let read = h.source.read.get();
            assert!(read <= total - 3000, "{read} of {total} bytes read");
            // What was hashed is remembered: its size, for the next image built on it.
            assert_eq!(cache::layer_size(&mut h.cache, second), Some(70_000));
        }
    }

    /// An entry passed over as a held layer, by a stale name or a size that was another
    /// layer's, is found out when manifest.json places it: the export is read again, every
    /// layer hashed and uploaded, and the image comes out right.
    #[test]
    fn an_entry_taken_for_the_wrong_layer_costs_a_second_export_that_hashes_everything() {
        for by_size in [false, true] {
            let mut h = Harness::default();
            let settings = Settings::for_tests();
            let image = h.source.image.clone();
            let first = h.f.diff_ids[0].clone();
            // The second layer's entry is taken for the first.
            if by_size {
                cache::remember_layer_size(&mut h.cache, &first, 70_000);
            } else {
                cache::remember_entry(&mut h.cache, "bbb/layer.tar", 70_000, &first);
            }
            let present = first_held(&h);
            let stored = Publication::over(&mut h, &settings, "127.0.0.1:5000/team/app:1")
                .export_and_upload(&image, &present)
                .unwrap();
            assert_eq!(h.source.exports, 2, "read again");
            let diff_ids: Vec<_> = stored.layers.iter().map(|l| l.diff_id.clone()).collect();
            assert_eq!(diff_ids, h.f.diff_ids);
            let layers: Vec<String> = uploads(&h)
                .into_iter()
                .filter(|c| c.starts_with("layer "))
                .collect();
            let second = &h.f.diff_ids[1];
            assert_eq!(
                layers,
                vec![
                    format!("layer {first}"),
                    format!("layer {first}"),
                    format!("layer {second}")
                ],
                "the first export uploaded what it hashed, the second everything"
            );
        }
    }

    #[test]
    fn fill_reads_until_the_buffer_is_full_or_the_input_ends() {
        /// Hands out at most 3 bytes per read.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = out.len().min(3).min(self.0.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut input = Trickle(b"0123456789");
        let mut buf = [0u8; 8];
        assert_eq!(fill(&mut input, &mut buf).unwrap(), 8);
        assert_eq!(&buf, b"01234567");
        assert_eq!(fill(&mut input, &mut buf).unwrap(), 2);
        assert_eq!(fill(&mut input, &mut buf).unwrap(), 0);
    }
}
