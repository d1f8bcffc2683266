//! Where one push goes: every destination the user named, in the order given, and the
//! repositories (or layout directories) they name, each opened once. Two destinations in one
//! repository share it: its blobs go up once, and each gets its own tag. A layer that several
//! repositories lack is streamed once from the export into one upload per repository, fed the
//! same bytes (`Uploads`).

use anyhow::{bail, Context, Result};

use crate::digest::Digest;
use crate::model::{Blob, Encoding};
use crate::ports::{BlobSink, Destinations, LayerUpload};
use crate::reference::Destination;

/// The destinations of a push, opened.
pub struct Targets<R> {
    /// Every destination in the order given, with the index of its repository in `sinks`.
    pub tags: Vec<(Destination, usize)>,
    /// Each repository or layout directory once, in the order first named.
    pub sinks: Vec<Sink<R>>,
}

/// One repository or layout directory of a push, opened.
pub struct Sink<R> {
    /// The first destination that names it.
    pub destination: Destination,
    pub repository: R,
    /// With several repositories, which one an error happened at: `destination LOCATION`.
    label: Option<String>,
}

/// Parses every destination of a push, refusing an empty list and one named twice (the same
/// repository and tag, however spelled).
pub fn parse(destinations: &[String]) -> Result<Vec<Destination>> {
    if destinations.is_empty() {
        bail!("a push needs a destination");
    }
    let mut parsed: Vec<Destination> = Vec::with_capacity(destinations.len());
    for (text, destination) in destinations
        .iter()
        .map(|d| Ok((d, Destination::parse(d)?)))
        .collect::<Result<Vec<_>>>()?
    {
        if parsed.iter().any(|p| same_tag(p, &destination)) {
            bail!("destination {text} is given twice");
        }
        parsed.push(destination);
    }
    Ok(parsed)
}

fn same_tag(a: &Destination, b: &Destination) -> bool {
    a.location() == b.location() && a.tag() == b.tag()
}

impl<R: BlobSink> Targets<R> {
    /// Opens each repository the destinations name, once.
    pub fn open<D: Destinations<Repository = R>>(
        parsed: Vec<Destination>,
        destinations: &mut D,
    ) -> Result<Self> {
        let mut sinks: Vec<Sink<R>> = Vec::new();
        let mut tags = Vec::with_capacity(parsed.len());
        for destination in parsed {
            let location = destination.location();
            let at = match sinks
                .iter()
                .position(|s| s.destination.location() == location)
            {
                Some(at) => at,
                None => {
                    sinks.push(Sink {
                        repository: destinations.open(&destination)?,
                        destination: destination.clone(),
                        label: None,
                    });
                    sinks.len() - 1
                }
            };
            tags.push((destination, at));
        }
        Ok(Self::new(tags, sinks))
    }

    /// Targets over sinks already opened; labels them when there are several.
    pub fn new(tags: Vec<(Destination, usize)>, mut sinks: Vec<Sink<R>>) -> Self {
        if sinks.len() > 1 {
            for sink in &mut sinks {
                sink.label = Some(format!("destination {}", sink.destination.location()));
            }
        }
        Self { tags, sinks }
    }

    /// The one repository a single-destination test publishes to.
    #[cfg(test)]
    pub fn one(destination: Destination, repository: R) -> Self {
        let sink = Sink {
            destination: destination.clone(),
            repository,
            label: None,
        };
        Self::new(vec![(destination, 0)], vec![sink])
    }
}

impl<R: BlobSink> Sink<R> {
    /// Says which destination `result` failed at, when the push has several.
    pub fn named<T>(&self, result: Result<T>) -> Result<T> {
        named(&self.label, result)
    }

    /// Whether this repository holds `blob`. A digest fixes the size: a registry that reports
    /// another size for it is broken or lying, which fails the push rather than being papered
    /// over.
    pub fn holds(&mut self, blob: &Blob) -> Result<bool> {
        let size = self.repository.blob_size(&blob.digest);
        match self.named(size)? {
            None => Ok(false),
            Some(size) if size == blob.size => Ok(true),
            Some(size) => bail!(
                "{} reports blob {} as {size} bytes, but it is {} bytes",
                self.destination.location(),
                blob.digest,
                blob.size
            ),
        }
    }

    /// Asks the registry to link `blob` from repository `source`; false if it declines.
    pub fn mount(&mut self, blob: &Blob, source: &str) -> Result<bool> {
        let mounted = self.repository.mount_blob(&blob.digest, source);
        Ok(self.named(mounted)? && self.holds(blob)?)
    }

    /// Puts a blob held whole (the config) here, unless this repository holds it.
    pub fn put_blob(&mut self, blob: &Blob, bytes: &[u8]) -> Result<()> {
        if !self.holds(blob)? {
            let put = self.repository.put_blob(&blob.digest, bytes);
            self.named(put)?;
        }
        Ok(())
    }

    /// The registry this sink is a repository of (`None` for a layout directory).
    pub fn registry(&self) -> Option<&str> {
        match &self.destination {
            Destination::Registry(target) => Some(&target.registry),
            Destination::Layout(_) => None,
        }
    }
}

/// One layer streamed into an upload per repository that lacks it, the same bytes to each.
/// Dropping it before `finish` cancels every upload.
pub struct Uploads<U> {
    each: Vec<(Option<String>, String, U)>,
}

impl<U: LayerUpload> Uploads<U> {
    /// Starts an upload encoded as `encoding` in each of `sinks`' repositories named by `at`.
    pub fn start<R: BlobSink<Upload = U>>(
        sinks: &mut [Sink<R>],
        at: &[usize],
        encoding: &Encoding,
    ) -> Result<Self> {
        let mut each = Vec::with_capacity(at.len());
        for &i in at {
            let sink = &mut sinks[i];
            let upload = sink.repository.start_layer(encoding);
            let upload = sink.named(upload)?;
            each.push((sink.label.clone(), sink.destination.location(), upload));
        }
        Ok(Self { each })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        for (label, _, upload) in &mut self.each {
            named(label, upload.write(data))?;
        }
        Ok(())
    }

    /// Encoded bytes sent so far by the upload furthest behind.
    pub fn sent(&self) -> u64 {
        self.each
            .iter()
            .map(|(_, _, u)| u.sent())
            .min()
            .unwrap_or(0)
    }

    /// Ends every upload, whose bytes hashed to `written`: the blob each host encoded, while
    /// they go on sending it. The same everywhere, as `finish` checks.
    pub fn close(&mut self, written: &Digest) -> Result<Blob> {
        agreed(self.each.iter_mut().map(|(label, location, upload)| {
            (location.clone(), named(label, upload.close(written)))
        }))
    }

    /// Commits every upload. The encoding is deterministic, so each repository must have
    /// stored the same blob; one that did not fails the push (its manifest would name a blob
    /// another repository lacks).
    pub fn finish(self) -> Result<Blob> {
        agreed(
            self.each
                .into_iter()
                .map(|(label, location, upload)| (location, named(&label, upload.finish()))),
        )
    }
}

/// The one blob every repository (by location) stored or encoded; the first error, or a
/// repository whose blob differs, fails.
fn agreed(each: impl Iterator<Item = (String, Result<Blob>)>) -> Result<Blob> {
    let mut stored: Option<(String, Blob)> = None;
    for (location, blob) in each {
        let blob = blob?;
        match &stored {
            None => stored = Some((location, blob)),
            Some((first, same)) if *same != blob => bail!(
                "{location} stored a layer as {} ({} bytes) but {first} stored the same bytes as {} ({} bytes)",
                blob.digest,
                blob.size,
                same.digest,
                same.size
            ),
            Some(_) => {}
        }
    }
    stored
        .map(|(_, blob)| blob)
        .context("a layer was streamed to no destination")
}

fn named<T>(label: &Option<String>, result: Result<T>) -> Result<T> {
    match label {
        Some(label) => result.with_context(|| label.clone()),
        None => result,
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Result;

    use crate::cache;
    use crate::digest::Digest;
    use crate::manifest::Format;
    use crate::model::{Blob, Compression, Encoding};
    use crate::progress::Event;
    use crate::push::{push, PushRequest, Pushed, Settings};
    use crate::testing::{Events, Harness, MemoryRegistries};

    const APP_1: &str = "127.0.0.1:5000/team/app:1";
    const APP_LATEST: &str = "127.0.0.1:5000/team/app:latest";
    const OTHER: &str = "127.0.0.1:5000/other/app:2";
    const ELSEWHERE: &str = "127.0.0.2:5000/team/app:1";

    fn request(destinations: &[&str]) -> PushRequest {
        PushRequest {
            source: "app:1".into(),
            destinations: destinations.iter().map(|d| d.to_string()).collect(),
            settings: Settings::for_tests(),
            platforms: Vec::new(),
        }
    }

    /// Pushes the harness's image through `registries`; its events are this push's only.
    fn run(
        h: &mut Harness,
        registries: &MemoryRegistries,
        request: &PushRequest,
    ) -> Result<Pushed> {
        h.events = Events::default();
        push(
            request,
            &crate::policy::AllowAll,
            &mut h.source,
            &mut registries.clone(),
            &mut h.cache,
            &mut h.events,
        )
    }

    /// The calls of `journal` that start with `LOCATION: WHAT`, by their place in it.
    fn at<'a>(journal: &'a [String], prefix: &str) -> Vec<(usize, &'a String)> {
        journal
            .iter()
            .enumerate()
            .filter(|(_, call)| call.starts_with(prefix))
            .collect()
    }

    /// The places of blob writes (layers and configs) and of tag writes in `journal`.
    fn blob_and_tag_writes(journal: &[String]) -> (Vec<usize>, Vec<&String>, Vec<usize>) {
        let blobs = journal
            .iter()
            .enumerate()
            .filter(|(_, c)| c.contains(": layer ") || c.contains(": blob "))
            .map(|(i, _)| i)
            .collect();
        let tags: Vec<(usize, &String)> = journal
            .iter()
            .enumerate()
            .filter(|(_, c)| c.contains(": manifest ") && !c.contains(": manifest sha256:"))
            .collect();
        (
            blobs,
            tags.iter().map(|(_, c)| *c).collect(),
            tags.iter().map(|(i, _)| *i).collect(),
        )
    }

    /// Two tags in one repository and one in another: one export, each repository gets each
    /// blob once and the manifest by digest, and only then the tags, in the order given, all
    /// naming one manifest.
    #[test]
    fn three_destinations_get_blobs_once_per_repository_then_tags_in_order() {
        let mut h = Harness::default();
        let registries = MemoryRegistries::default();
        let pushed = run(&mut h, &registries, &request(&[APP_1, OTHER, APP_LATEST])).unwrap();
        assert_eq!(h.source.exports, 1);
        assert_eq!(pushed.repository, "127.0.0.1:5000/team/app");

        let journal = registries.journal();
        let (blobs, tags, tag_places) = blob_and_tag_writes(&journal);
        let media_type = crate::manifest::OCI_MANIFEST;
        assert_eq!(
            tags,
            vec![
                &format!("127.0.0.1:5000/team/app: manifest 1 {media_type}"),
                &format!("127.0.0.1:5000/other/app: manifest 2 {media_type}"),
                &format!("127.0.0.1:5000/team/app: manifest latest {media_type}"),
            ]
        );
        let by_digest: Vec<usize> = journal
            .iter()
            .enumerate()
            .filter(|(_, c)| c.contains(&format!(": manifest {} ", pushed.digest)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(by_digest.len(), 2, "{journal:#?}");
        let first_tag = tag_places[0];
        assert!(
            blobs.iter().chain(&by_digest).all(|&i| i < first_tag),
            "{journal:#?}"
        );
        for location in ["127.0.0.1:5000/team/app", "127.0.0.1:5000/other/app"] {
            let repository = registries.at(location);
            let log = repository.0.borrow();
            let uploads: Vec<&String> = log
                .calls
                .iter()
                .filter(|c| c.starts_with("layer ") || c.starts_with("blob "))
                .collect();
            assert_eq!(uploads.len(), 3, "{location}: {:#?}", log.calls);
            let manifest = log.manifest.as_ref().unwrap();
            assert_eq!(Digest::of(manifest), pushed.digest, "{location}");
        }
        let done: Vec<&Event> = h
            .events
            .0
            .iter()
            .filter(|e| matches!(e, Event::LayerDone { .. }))
            .collect();
        assert_eq!(done.len(), 2, "one layer-done per layer");
    }

    /// A repository that lacks what another repository of the same registry in this push
    /// holds has it mounted from there: nothing exported, nothing sent.
    #[test]
    fn a_repository_of_the_same_registry_mounts_what_another_holds() {
        let mut h = Harness::default();
        let registries = MemoryRegistries::default();
        let first = run(&mut h, &registries, &request(&[APP_1])).unwrap();
        let pushed = run(&mut h, &registries, &request(&[OTHER, APP_1])).unwrap();
        assert_eq!(pushed.digest, first.digest);
        assert_eq!(h.source.exports, 1, "nothing exported again");
        let other = registries.at(OTHER);
        let calls = other.0.borrow().calls.clone();
        assert!(
            !calls
                .iter()
                .any(|c| c.starts_with("layer ") || c.starts_with("blob ")),
            "{calls:#?}"
        );
        let mounts = calls
            .iter()
            .filter(|c| c.ends_with(" from team/app"))
            .count();
        assert_eq!(mounts, 3, "{calls:#?}");
        let mounted: Vec<Option<String>> = h
            .events
            .0
            .iter()
            .filter_map(|e| match e {
                Event::LayerSkipped { mounted_from, .. } => Some(mounted_from.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(mounted, vec![Some("team/app".to_string()); 2]);
    }

    /// A repository on another registry that lacks the image gets the layers from one export;
    /// the repository that holds them gets none again.
    #[test]
    fn layers_go_only_to_the_repositories_that_lack_them() {
        let mut h = Harness::default();
        let registries = MemoryRegistries::default();
        run(&mut h, &registries, &request(&[APP_1])).unwrap();
        let held = registries.at(APP_1);
        held.0.borrow_mut().calls.clear();
        let pushed = run(&mut h, &registries, &request(&[APP_1, ELSEWHERE])).unwrap();
        assert_eq!(h.source.exports, 2);
        let sent = |location: &str| -> usize {
            registries
                .at(location)
                .0
                .borrow()
                .calls
                .iter()
                .filter(|c| c.starts_with("layer ") || c.starts_with("blob "))
                .count()
        };
        assert_eq!(sent(APP_1), 0);
        assert_eq!(sent(ELSEWHERE), 3);
        for location in [APP_1, ELSEWHERE] {
            let manifest = registries.at(location).0.borrow().manifest.clone().unwrap();
            assert_eq!(Digest::of(&manifest), pushed.digest, "{location}");
        }
    }

    /// A destination that refuses its blobs fails the push before any tag anywhere, with one
    /// line naming it.
    #[test]
    fn a_failing_destination_leaves_no_tag_anywhere_and_is_named() {
        let mut h = Harness::default();
        let registries = MemoryRegistries::default();
        registries.at(ELSEWHERE).0.borrow_mut().read_only = true;
        let err = run(&mut h, &registries, &request(&[APP_1, ELSEWHERE])).unwrap_err();
        let err = format!("{err:#}");
        assert_eq!(
            err,
            "destination 127.0.0.2:5000/team/app: the registry refused the upload: it is read-only"
        );
        let journal = registries.journal();
        assert!(
            !journal.iter().any(|c| c.contains(": manifest ")),
            "{journal:#?}"
        );
    }

    /// A registry and a layout directory: one manifest in both. Asked to verify, the registry
    /// is read back by digest before any tag; the layout, after its tag.
    #[test]
    fn a_registry_and_a_layout_get_one_manifest() {
        let mut h = Harness::default();
        let registries = MemoryRegistries::default();
        let mut verifying = request(&[APP_1, "oci:out:v1"]);
        verifying.settings.verify = true;
        let pushed = run(&mut h, &registries, &verifying).unwrap();
        let journal = registries.journal();
        let registry_read = at(
            &journal,
            &format!("127.0.0.1:5000/team/app: get {}", pushed.digest),
        );
        let (_, _, tags) = blob_and_tag_writes(&journal);
        let layout_read = at(&journal, &format!("oci:out: get {}", pushed.digest));
        assert_eq!(tags.len(), 2, "{journal:#?}");
        assert!(registry_read[0].0 < tags[0], "{journal:#?}");
        assert!(layout_read[0].0 > tags[1], "{journal:#?}");
        for location in [APP_1, "oci:out"] {
            let manifest = registries.at(location).0.borrow().manifest.clone().unwrap();
            assert_eq!(Digest::of(&manifest), pushed.digest, "{location}");
        }
        let verified = h
            .events
            .0
            .iter()
            .filter(|e| matches!(e, Event::Verified { blobs: 3, .. }))
            .count();
        assert_eq!(verified, 2);
    }

    /// What the format cannot say, a destination named twice, or none at all: refused before
    /// any traffic, whatever the destinations.
    #[test]
    fn bad_destination_lists_are_refused_before_any_traffic() {
        let zstd_docker = PushRequest {
            settings: Settings {
                encoding: Encoding::new(Compression::Zstd, 3).unwrap(),
                format: Format::Docker,
                ..Settings::for_tests()
            },
            ..request(&[APP_1, "oci:out"])
        };
        let twice = request(&[APP_1, OTHER, "docker://127.0.0.1:5000/team/app:1"]);
        let cases = [
            (zstd_docker, "has no zstd"),
            (
                twice,
                "destination docker://127.0.0.1:5000/team/app:1 is given twice",
            ),
            (request(&[]), "a push needs a destination"),
            (
                request(&[APP_1, "127.0.0.1:5000/Bad"]),
                "127.0.0.1:5000/Bad",
            ),
        ];
        for (request, expected) in cases {
            let mut h = Harness::default();
            let registries = MemoryRegistries::default();
            let err = format!("{:#}", run(&mut h, &registries, &request).unwrap_err());
            assert!(err.contains(expected), "{err}");
            assert!(registries.journal().is_empty(), "{err}");
            assert_eq!(h.source.exports, 0, "{err}");
        }
    }

    /// Docker's containerd store: its own manifest goes to every destination byte for byte.
    #[test]
    fn the_daemons_own_manifest_goes_everywhere_byte_for_byte() {
        let (mut h, own) = Harness::containerd();
        let registries = MemoryRegistries::default();
        let pushed = run(
            &mut h,
            &registries,
            &request(&[APP_1, ELSEWHERE, "oci:out"]),
        )
        .unwrap();
        assert_eq!(pushed.digest, h.source.image.id);
        for location in [APP_1, ELSEWHERE, "oci:out"] {
            let manifest = registries.at(location).0.borrow().manifest.clone();
            assert_eq!(manifest.as_deref(), Some(&own[..]), "{location}");
        }
        assert_eq!(h.source.exports, 1);
    }

    /// A layer one repository holds as the blob the cache named, which the encoder no longer
    /// makes: the push stops before any tag and the cache learns the new blob, so the next
    /// push sends it everywhere.
    #[test]
    fn a_held_layer_the_encoder_no_longer_makes_stops_the_push_then_the_next_sends_it() {
        let mut h = Harness::default();
        let registries = MemoryRegistries::default();
        let settings = Settings::for_tests();
        let diff_id = h.f.diff_ids[0].clone();
        let old = Blob {
            digest: Digest::of(b"an older encoder's blob"),
            size: 3000,
        };
        cache::remember_layer(&mut h.cache, &diff_id, &settings.encoding, &old);
        cache::remember_entry(&mut h.cache, "aaa/layer.tar", 3000, &diff_id);
        registries
            .at(APP_1)
            .0
            .borrow_mut()
            .blobs
            .insert(old.digest.clone(), vec![0; 3000]);
        let err = run(&mut h, &registries, &request(&[APP_1, ELSEWHERE])).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.starts_with(&format!("layer {diff_id} encodes to {diff_id} now, but 127.0.0.1:5000/team/app holds it as {}", old.digest)),
            "{err}"
        );
        assert!(!registries
            .journal()
            .iter()
            .any(|c| c.contains(": manifest ")));

        let pushed = run(&mut h, &registries, &request(&[APP_1, ELSEWHERE])).unwrap();
        for location in [APP_1, ELSEWHERE] {
            let manifest = registries.at(location).0.borrow().manifest.clone().unwrap();
            assert_eq!(Digest::of(&manifest), pushed.digest, "{location}");
            let json: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
            assert_eq!(json["layers"][0]["digest"], diff_id.as_str(), "{location}");
        }
    }
}
