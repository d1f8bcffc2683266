//! The push pipeline: one image, or several under one index, from a source to registries or
//! layouts. `prepare` makes every check that can refuse a push before any traffic (for a
//! multi-platform source, which platforms go and that the source holds each whole; the
//! policy's word on each destination and image) and opens the destinations (`targets`: each
//! repository once); then, per image, `reuse` asks what each repository already holds, `stream`
//! exports once and uploads the rest to each repository that lacks it, and `publish` writes the
//! manifests and, last, the tags.

mod publication;
mod publish;
mod reuse;
mod stream;
mod targets;

use anyhow::{bail, Context, Result};

pub use publication::{Chosen, Pushed, Settings};

use publication::{Image, Publication, Stored};
use reuse::Held;
use targets::Targets;

use crate::cache;
use crate::limits;
use crate::model::{ImageSummary, Named, OwnManifest, Platform};
use crate::platforms;
use crate::policy::{ImageReview, Policy};
use crate::ports::{BlobSink, Cache, Destinations, ProgressSink, ReadExport};
use crate::progress::Event;
use crate::reference::{Destination, Source};

/// What to push, where, and how to encode and describe it.
pub struct PushRequest {
    pub source: String,
    /// One or more destinations: each gets the same manifest, tagged in this order once every
    /// one holds every blob.
    pub destinations: Vec<String>,
    pub settings: Settings,
    /// The platforms to take from a multi-platform source; none means all of them.
    pub platforms: Vec<Platform>,
}

/// Several images, one per platform, to publish under one tag as an image index.
pub struct IndexRequest {
    pub sources: Vec<String>,
    pub destination: String,
    pub settings: Settings,
}

/// Pushes one image from `source` to the registries and layouts `request.destinations` name,
/// if `policy` allows it.
pub fn push(
    request: &PushRequest,
    policy: &dyn Policy,
    source: &mut impl ReadExport,
    destinations: &mut impl Destinations,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
) -> Result<Pushed> {
    let plan = Plan {
        sources: std::slice::from_ref(&request.source),
        destinations: &request.destinations,
        settings: &request.settings,
        index: false,
        platforms: &request.platforms,
        policy,
    };
    let (mut publication, images, shape) = prepare(&plan, source, destinations, cache, progress)?;
    let Shape::Platforms { own, whole } = shape else {
        // One image: the source's, or the one platform chosen of a multi-platform image.
        let image = &images[0];
        let stored = publication.store(image)?;
        let manifest = publication.manifest(image, stored)?;
        return publication.tag(manifest.document);
    };
    let mut entries = Vec::with_capacity(images.len());
    for image in &images {
        let stored = publication.store(image)?;
        let manifest = publication.manifest(image, stored)?;
        entries.push(publication.index_entry(image, manifest)?);
    }
    let index = publication.source_index(own, entries, whole)?;
    publication.tag(index)
}

/// Pushes several images from the daemon and then an image index naming each image's manifest
/// with the platform from its config. Each image's manifest is written by its digest; only the
/// index gets the tag.
pub fn push_index(
    request: &IndexRequest,
    policy: &dyn Policy,
    daemon: &mut impl ReadExport,
    destinations: &mut impl Destinations,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
) -> Result<Pushed> {
    let plan = Plan {
        sources: &request.sources,
        destinations: std::slice::from_ref(&request.destination),
        settings: &request.settings,
        index: true,
        platforms: &[],
        policy,
    };
    let (mut publication, images, _) = prepare(&plan, daemon, destinations, cache, progress)?;
    let mut entries = Vec::with_capacity(images.len());
    for image in &images {
        let stored = publication.store(image)?;
        let manifest = publication.manifest(image, stored)?;
        entries.push(publication.index_entry(image, manifest)?);
    }
    let index = publication.index(entries)?;
    publication.tag(index)
}

/// Parses the destinations (one or more, none named twice) and refuses settings the manifest
/// format cannot say, and what the policy refuses at any of them: what would stop a push,
/// checked before anything else starts (a build, an export).
pub fn check_destinations(
    destinations: &[String],
    settings: &Settings,
    policy: &dyn Policy,
) -> Result<Vec<Destination>> {
    let parsed = targets::parse(destinations)?;
    settings
        .format
        .check(&settings.encoding, &settings.annotations)?;
    for destination in &parsed {
        policy.check_destination(destination, settings)?;
    }
    Ok(parsed)
}

/// What a push or an index push asks for, as `prepare` checks it.
struct Plan<'a> {
    sources: &'a [String],
    destinations: &'a [String],
    settings: &'a Settings,
    /// An index: one image per platform, under one tag.
    index: bool,
    /// The platforms to take from a multi-platform source (none: all).
    platforms: &'a [Platform],
    policy: &'a dyn Policy,
}

/// What a push's images are published as.
enum Shape {
    /// Each image's manifest under the tag (one image), or an index of them built here
    /// (`push_index`).
    Images,
    /// Platforms of one multi-platform source, under an index: the source's own (`whole`: every
    /// platform it names was taken), or one built here naming those chosen.
    Platforms { own: OwnManifest, whole: bool },
}

/// A push ready to go: its publication, the images to publish, as their source described
/// them, and what they are published as.
type Prepared<'a, S, R> = (Publication<'a, S, R>, Vec<Image>, Shape);

/// Every check that can refuse a push before any traffic, then the destination opened: the
/// destination and the settings its format can say, an index's sources (images in the
/// daemon, at least one, one per platform, to a registry), what the source says of each
/// image (how many layers, which platform; for a multi-platform source, the platforms chosen
/// and that it holds each whole), and the policy's word on each destination and on each image
/// pushed (each platform's, as its config states it). The daemon gives the diff IDs up front:
/// enough to find what the registry already has, and to verify each layer as it streams.
fn prepare<'a, S: ReadExport, D: Destinations>(
    plan: &Plan<'a>,
    source: &'a mut S,
    destinations: &mut D,
    cache: &'a mut dyn Cache,
    progress: &'a mut dyn ProgressSink,
) -> Result<Prepared<'a, S, D::Repository>> {
    if plan.index {
        for name in plan.sources {
            if !matches!(Source::parse(name)?, Source::Daemon(_)) {
                bail!("index source {name}: an index's sources are images in the daemon (docker load the tarball first)");
            }
        }
    }
    let settings = plan.settings;
    let parsed = check_destinations(plan.destinations, settings, plan.policy)?;
    if plan.index {
        if let Some((name, _)) = plan
            .destinations
            .iter()
            .zip(&parsed)
            .find(|(_, d)| matches!(d, Destination::Layout(_)))
        {
            bail!("destination {name}: an index goes to a registry (OCI layout directories take single images)");
        }
    }
    if plan.index && plan.sources.is_empty() {
        bail!("an index needs at least one source image");
    }
    let mut images: Vec<Image> = Vec::with_capacity(plan.sources.len());
    for name in plan.sources {
        let summary = source.inspect(name)?;
        limits::check_layer_count(name, &summary)?;
        if plan.index {
            one_per_platform(&images, name, &summary)?;
        }
        images.push(Image {
            name: name.clone(),
            summary,
        });
    }
    let shape = match images.pop() {
        Some(image) if !plan.index => {
            let (chosen, shape) = platforms_of(image, plan.platforms, source, cache)?;
            images = chosen;
            shape
        }
        other => {
            images.extend(other);
            Shape::Images
        }
    };
    if matches!(shape, Shape::Platforms { .. }) {
        if let Some((name, _)) = plan
            .destinations
            .iter()
            .zip(&parsed)
            .find(|(_, d)| matches!(d, Destination::Layout(_)))
        {
            bail!("destination {name}: a multi-platform image goes to a registry (OCI layout directories take single images): choose one platform with --platform");
        }
    }
    // Each image as it will be pushed: a multi-platform source's platforms each by its own
    // config, once the platforms are chosen.
    for image in &images {
        plan.policy.check_image(&ImageReview {
            source: &image.name,
            image: &image.summary,
            destinations: &parsed,
            settings,
        })?;
    }
    let targets = Targets::open(parsed, destinations)?;
    let publication = Publication {
        settings,
        targets,
        source,
        cache,
        progress,
    };
    Ok((publication, images, shape))
}

/// The images a push of `image` publishes: the image itself, or the platforms `wanted` chooses
/// (all when none) of the multi-platform image it proves to be. Its index is read before any
/// upload (from what inspect read, or a look over the export, which an ID the cache proves to
/// name a manifest is spared), and a platform the source does not hold whole is refused here.
fn platforms_of(
    image: Image,
    wanted: &[Platform],
    source: &mut impl ReadExport,
    cache: &mut dyn Cache,
) -> Result<(Vec<Image>, Shape)> {
    let id = &image.summary.id;
    let named = match cache::names_manifest(cache, id) {
        true => Named::Config,
        false => source.survey(&image.summary)?,
    };
    let index = match named {
        Named::Index(index) => index,
        single => {
            if let Named::Manifest(bytes) = single {
                cache::remember_manifest(cache, id, &bytes);
            }
            platforms::check_single(&image.summary, wanted, &image.name)?;
            return Ok((vec![image], Shape::Images));
        }
    };
    let selection = platforms::select(&index, wanted, &image.name)?;
    let mut images = Vec::with_capacity(selection.entries.len());
    for entry in &selection.entries {
        let name = format!("{} ({})", image.name, entry.platform);
        let summary = entry
            .summary(&index.own.digest)
            .with_context(|| format!("image {name}: the source does not hold it whole"))?;
        limits::check_layer_count(&name, &summary)?;
        images.push(Image { name, summary });
    }
    let shape = if images.len() == 1 && !selection.whole {
        Shape::Images
    } else {
        Shape::Platforms {
            own: index.own,
            whole: selection.whole,
        }
    };
    Ok((images, shape))
}

/// An index names one image per platform: the daemon says each image's platform before any
/// export, so a second image for one is refused here.
fn one_per_platform(earlier: &[Image], name: &str, summary: &ImageSummary) -> Result<()> {
    let Some(platform) = &summary.platform else {
        bail!(
            "the daemon does not say which platform image {name} is for: it cannot go in an index"
        );
    };
    if let Some(other) = earlier
        .iter()
        .find(|i| i.summary.platform.as_ref() == Some(platform))
    {
        bail!(
            "images {} and {name} are both for {platform}: an index names one image per platform",
            other.name
        );
    }
    Ok(())
}

impl<S: ReadExport, R: BlobSink> Publication<'_, S, R> {
    /// Puts an image's config and layers in every repository of the push: none to send if
    /// they hold them all or can mount them from repositories they were pushed to (the export
    /// is the slow part); otherwise one pass over the export, each layer sent to each
    /// repository that lacks it.
    fn store(&mut self, image: &Image) -> Result<Stored> {
        self.progress.report(Event::Started {
            image: image.name.clone(),
            layers: image.summary.diff_ids.len() as u32,
            total_bytes: image.summary.size,
        });
        match self.held(&image.summary)? {
            Held::All(stored) => Ok(stored),
            Held::Some(present) => self.export_and_upload(&image.summary, &present),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::manifest::Format;
    use crate::model::{Annotations, Compression, Encoding, Platform};
    use crate::policy::{AllowAll, Refusal};
    use crate::testing::{
        arm_fixture, classic_export, fixture, summary, Events, Fixture, Harness, Memory,
        MemoryCache, MemoryRegistry, TwoImages,
    };

    fn settings() -> Settings {
        Settings::for_tests()
    }

    fn request() -> PushRequest {
        PushRequest {
            source: "app:1".into(),
            destinations: vec!["127.0.0.1:5000/team/app:1.0".into()],
            settings: settings(),
            platforms: Vec::new(),
        }
    }

    /// Runs the pipeline against the harness's in-memory capabilities; its events are this
    /// push's only.
    fn run(h: &mut Harness, request: &PushRequest) -> Result<Pushed> {
        run_under(&AllowAll, h, request)
    }

    /// `run` under `policy`.
    fn run_under(policy: &dyn Policy, h: &mut Harness, request: &PushRequest) -> Result<Pushed> {
        h.events = Events::default();
        push(
            request,
            policy,
            &mut h.source,
            &mut h.registry.clone(),
            &mut h.cache,
            &mut h.events,
        )
    }

    /// Runs a push that must fail before any traffic, and returns its error: the registry saw
    /// no call and the source exported nothing.
    fn refused_before_traffic(request: &PushRequest, source: Memory) -> String {
        let mut h = Harness {
            source,
            ..Harness::default()
        };
        let err = run(&mut h, request).unwrap_err();
        assert!(h.registry.0.borrow().calls.is_empty(), "{err}");
        assert_eq!(h.source.exports, 0, "{err}");
        err.to_string()
    }

    /// A layer upload the registry lost costs one more export: the layer committed before the
    /// loss is passed over (it is in the registry), the lost one uploaded again, and the image
    /// published whole.
    #[test]
    fn a_lost_upload_exports_again_and_uploads_only_what_is_missing() {
        let mut h = Harness::default();
        let (first, second) = (h.f.diff_ids[0].clone(), h.f.diff_ids[1].clone());
        h.registry.0.borrow_mut().loses_uploads = vec![second.clone()];
        let pushed = run(&mut h, &request()).unwrap();
        assert_eq!(h.source.exports, 2);
        let log = h.registry.0.borrow();
        let config = Digest::of(&h.f.config);
        assert_eq!(
            log.calls,
            vec![
                "open 127.0.0.1:5000/team/app".to_string(),
                format!("layer {first}"),
                format!("lost {second}"),
                format!("layer {second}"),
                format!("blob {config}"),
                format!("manifest 1.0 {}", crate::manifest::OCI_MANIFEST),
            ]
        );
        assert_eq!(pushed.digest, Digest::of(log.manifest.as_ref().unwrap()));
        let json = h.registry.manifest_json();
        assert_eq!(json["layers"][0]["digest"], first.as_str());
        assert_eq!(json["layers"][1]["digest"], second.as_str());
        assert!(log.blobs.contains_key(&first) && log.blobs.contains_key(&second));
        assert_eq!(
            h.events.skipped(),
            vec![1],
            "the second export passed it over"
        );
    }

    /// A second lost upload ends the push in one line naming the registry and the layer, with
    /// nothing named: no config, no manifest.
    #[test]
    fn a_second_lost_upload_fails_the_push_and_writes_no_manifest() {
        let mut h = Harness::default();
        let second = h.f.diff_ids[1].clone();
        h.registry.0.borrow_mut().loses_uploads = vec![second.clone(), second.clone()];
        let err = format!("{:#}", run(&mut h, &request()).unwrap_err());
        assert_eq!(h.source.exports, 2);
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.contains("lost again")
                && err.contains("layer bbb/layer.tar")
                && err.contains("registry 127.0.0.1:5000 lost the upload session"),
            "{err}"
        );
        let log = h.registry.0.borrow();
        assert_eq!(
            log.calls
                .iter()
                .filter(|c| *c == &format!("lost {second}"))
                .count(),
            2
        );
        assert!(
            log.calls
                .iter()
                .all(|c| !c.starts_with("manifest") && !c.starts_with("blob")),
            "{:?}",
            log.calls
        );
    }

    #[test]
    fn pushes_layers_then_config_then_manifest() {
        let mut h = Harness::default();
        let pushed = run(&mut h, &request()).unwrap();
        let (f, events) = (&h.f, &h.events);

        let log = h.registry.0.borrow();
        let manifest = log.manifest.clone().unwrap();
        assert_eq!(pushed.digest, Digest::of(&manifest));
        assert_eq!(pushed.repository, "127.0.0.1:5000/team/app");
        let config = Digest::of(&f.config);
        assert_eq!(
            log.calls,
            vec![
                "open 127.0.0.1:5000/team/app".to_string(),
                format!("layer {}", f.diff_ids[0]),
                format!("layer {}", f.diff_ids[1]),
                format!("blob {config}"),
                format!("manifest 1.0 {}", crate::manifest::OCI_MANIFEST),
            ]
        );
        let json: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(json["config"]["digest"], config.as_str());
        assert_eq!(json["layers"][0]["digest"], f.diff_ids[0].as_str());
        assert_eq!(json["layers"][1]["digest"], f.diff_ids[1].as_str());

        assert!(matches!(
            events.0.first(),
            Some(Event::Started { layers: 2, .. })
        ));
        assert!(matches!(events.0.last(), Some(Event::ManifestDone { .. })));
        let done: Vec<_> = events
            .0
            .iter()
            .filter_map(|e| match e {
                Event::LayerDone {
                    diff_id, position, ..
                } => Some((*position, diff_id.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            done,
            vec![(1, f.diff_ids[0].clone()), (2, f.diff_ids[1].clone())]
        );
        let last_progress = events
            .0
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::LayerProgress(b) => Some(b.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!((last_progress.done, last_progress.total), (70_000, 70_000));
    }

    #[test]
    fn a_corrupt_layer_is_never_committed_and_no_manifest_is_written() {
        let mut h = Harness::default();
        let mut export = classic_export(&h.f);
        // Flip a byte inside the second layer's data (after its 512-byte header).
        let at = export
            .windows(64)
            .position(|w| w.iter().all(|&b| b == 2))
            .unwrap()
            + 100;
        export[at] ^= 0xff;
        h.source = Memory::new(export, summary(&h.f));
        let err = run(&mut h, &request()).unwrap_err();
        assert!(format!("{err:#}").contains("digest mismatch"), "{err:#}");
        let log = h.registry.0.borrow();
        assert!(log.manifest.is_none());
        assert_eq!(log.calls.last().map(String::as_str), Some("cancelled"));
    }

    #[test]
    fn a_registry_that_misreports_the_manifest_digest_fails_the_push() {
        let mut h = Harness::default();
        h.registry.0.borrow_mut().misreport_manifest_digest = true;
        let err = run(&mut h, &request()).unwrap_err();
        let sent = h.registry.0.borrow().manifest.clone().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "127.0.0.1:5000/team/app stored the manifest as {}, which is not the digest of what was sent ({})",
                Digest::of(b"other"),
                Digest::of(&sent)
            )
        );
    }

    #[test]
    fn a_registry_that_misreports_a_blob_size_fails_the_push() {
        let mut h = Harness::default();
        let config = h.f.config.clone();
        // The config is already there (another image shares it), at the wrong size.
        h.registry
            .0
            .borrow_mut()
            .blobs
            .insert(Digest::of(&config), config.clone());
        h.registry.0.borrow_mut().misreport_blob_sizes = true;
        let err = run(&mut h, &request()).unwrap_err().to_string();
        let expected = format!(
            "127.0.0.1:5000/team/app reports blob {} as {} bytes, but it is {} bytes",
            Digest::of(&config),
            config.len() + 1,
            config.len()
        );
        assert_eq!(err, expected);
        assert!(h.registry.0.borrow().manifest.is_none());

        // A repeat push whose cache names blobs the registry misreports fails the same way.
        h.registry.0.borrow_mut().misreport_blob_sizes = false;
        run(&mut h, &request()).unwrap();
        h.registry.0.borrow_mut().manifest = None;
        h.registry.0.borrow_mut().misreport_blob_sizes = true;
        assert_eq!(run(&mut h, &request()).unwrap_err().to_string(), expected);
        assert!(h.registry.0.borrow().manifest.is_none());
    }

    #[test]
    fn an_image_with_too_many_layers_is_refused_before_any_traffic() {
        let f = fixture();
        let mut image = summary(&f);
        image.diff_ids = vec![f.diff_ids[0].clone(); crate::limits::LAYER_LIMIT + 1];
        let err = refused_before_traffic(&request(), Memory::new(classic_export(&f), image));
        assert!(err.contains("1001 layers"), "{err}");
    }

    /// Refuses what a test names, and records what it was shown.
    #[derive(Default)]
    struct Strict {
        destination: Option<&'static str>,
        label: Option<&'static str>,
        seen: std::cell::RefCell<Vec<String>>,
    }

    impl Policy for Strict {
        fn check_destination(
            &self,
            destination: &Destination,
            settings: &Settings,
        ) -> Result<(), Refusal> {
            self.seen.borrow_mut().push(format!(
                "destination {} {}",
                destination.location(),
                settings.encoding.name()
            ));
            match self.destination {
                Some(refused) if destination.location() == refused => {
                    Err(Refusal::new("destination", "not that one"))
                }
                _ => Ok(()),
            }
        }

        fn check_image(&self, review: &ImageReview<'_>) -> Result<(), Refusal> {
            let tags: Vec<&str> = review.destinations.iter().map(|d| d.tag()).collect();
            self.seen.borrow_mut().push(format!(
                "image {} {} {:?} {}",
                review.source,
                review.image.id,
                review.image.labels,
                tags.join(",")
            ));
            match self.label {
                Some(label) if !review.image.labels.contains_key(label) => {
                    Err(Refusal::new("label", format!("no {label}")))
                }
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn a_policy_sees_the_destination_then_the_image_before_any_traffic() {
        let mut h = Harness::default();
        let policy = Strict {
            label: Some("org.opencontainers.image.source"),
            ..Strict::default()
        };
        let err = run_under(&policy, &mut h, &request()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused by policy rule label: no org.opencontainers.image.source"
        );
        assert!(err.downcast_ref::<Refusal>().is_some(), "a typed refusal");
        assert!(h.registry.0.borrow().calls.is_empty());
        assert_eq!(h.source.exports, 0);
        assert_eq!(
            *policy.seen.borrow(),
            [
                "destination 127.0.0.1:5000/team/app gzip-6".to_string(),
                format!("image app:1 {} {{}} 1.0", h.f.id),
            ]
        );

        // Labelled, the same image passes and is pushed as without a policy.
        let source = "https://example.com/app".to_string();
        h.source.image.labels = [("org.opencontainers.image.source".to_string(), source)].into();
        let pushed = run_under(&policy, &mut h, &request()).unwrap();
        assert_eq!(pushed, run(&mut Harness::default(), &request()).unwrap());
    }

    #[test]
    fn a_destination_the_policy_refuses_is_refused_before_the_source_is_inspected() {
        let mut h = Harness::default();
        let policy = Strict {
            destination: Some("127.0.0.1:5000/team/app"),
            ..Strict::default()
        };
        let err = run_under(&policy, &mut h, &request()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused by policy rule destination: not that one"
        );
        assert_eq!(policy.seen.borrow().len(), 1, "no image was reviewed");
        assert!(h.registry.0.borrow().calls.is_empty());
        assert_eq!(h.source.exports, 0);
    }

    /// A multi-platform image is judged platform by platform, each by its own config's labels
    /// (what the daemon's inspect says is one platform's word), before any upload.
    #[test]
    fn the_policy_judges_each_platform_of_a_multi_platform_image_by_its_config() {
        let policy = Strict {
            label: Some("org.example.platform"),
            ..Strict::default()
        };
        let (mut h, _, _) = Harness::two_platforms(true);
        h.source.image.labels = [("org.example.platform".to_string(), "x".to_string())].into();
        let err = run_under(&policy, &mut h, &request()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused by policy rule label: no org.example.platform"
        );
        assert!(h.registry.0.borrow().calls.is_empty());
        assert_eq!(h.source.exports, 1, "only the look over the export");
        assert_eq!(
            policy.seen.borrow()[1],
            format!("image app:1 (linux/amd64) {} {{}} 1.0", h.f.id),
            "amd64's config has no labels, whatever the daemon said"
        );

        // arm64 alone carries it, and goes.
        let policy = Strict {
            label: Some("org.example.platform"),
            ..Strict::default()
        };
        let (mut h, _, [_, arm]) = Harness::two_platforms(true);
        let pushed = run_under(&policy, &mut h, &platforms_request(&["linux/arm64"])).unwrap();
        assert_eq!(pushed.digest, Digest::of(&arm));
        let arm_id = crate::testing::arm_fixture().id;
        assert_eq!(
            policy.seen.borrow()[1],
            format!(
                "image app:1 (linux/arm64/v8) {arm_id} {{\"org.example.platform\": \"arm\"}} 1.0"
            )
        );
    }

    #[test]
    fn the_policy_sees_every_destination_and_one_refusal_stops_the_push() {
        let mut h = Harness::default();
        let policy = Strict {
            destination: Some("127.0.0.1:5000/other/app"),
            ..Strict::default()
        };
        let request = PushRequest {
            destinations: vec![
                "127.0.0.1:5000/team/app:1.0".into(),
                "127.0.0.1:5000/other/app:2".into(),
            ],
            ..request()
        };
        let err = run_under(&policy, &mut h, &request).unwrap_err();
        assert!(err.to_string().contains("rule destination"), "{err}");
        assert!(h.registry.0.borrow().calls.is_empty());
        assert_eq!(h.source.exports, 0);
        assert_eq!(
            *policy.seen.borrow(),
            [
                "destination 127.0.0.1:5000/team/app gzip-6",
                "destination 127.0.0.1:5000/other/app gzip-6"
            ]
        );

        // Allowed, the image review names both, in the order given.
        let policy = Strict::default();
        let request = PushRequest {
            destinations: vec![
                "127.0.0.1:5000/team/app:1.0".into(),
                "127.0.0.1:5000/team/app:2".into(),
            ],
            ..request
        };
        run_under(&policy, &mut h, &request).unwrap();
        assert!(
            policy.seen.borrow()[2].ends_with(" 1.0,2"),
            "{:?}",
            policy.seen.borrow()
        );
    }

    #[test]
    fn a_bad_destination_is_refused_before_any_traffic() {
        let f = fixture();
        let request = PushRequest {
            destinations: vec!["127.0.0.1:5000/App".into()],
            ..request()
        };
        refused_before_traffic(&request, Memory::new(classic_export(&f), summary(&f)));
    }

    #[test]
    fn a_repeat_push_of_a_published_image_skips_the_export() {
        let mut h = Harness::default();
        let first = run(&mut h, &request()).unwrap();
        h.registry.0.borrow_mut().calls.clear();

        let again = run(&mut h, &request()).unwrap();
        assert_eq!(again, first, "the same manifest");
        assert_eq!(h.source.exports, 1, "no second export");
        assert_eq!(
            h.registry.0.borrow().calls,
            vec![
                "open 127.0.0.1:5000/team/app".to_string(),
                format!("manifest 1.0 {}", crate::manifest::OCI_MANIFEST)
            ]
        );
        assert_eq!(h.events.skipped(), vec![1, 2]);
    }

    #[test]
    fn a_cache_entry_for_a_blob_the_registry_lost_costs_only_an_export() {
        let mut h = Harness::default();
        let first = run(&mut h, &request()).unwrap();
        // A new, empty registry: the cache is stale for it.
        h.registry = MemoryRegistry::default();
        let again = run(&mut h, &request()).unwrap();
        assert_eq!(again, first);
        assert_eq!(h.source.exports, 2);
        assert!(h
            .registry
            .0
            .borrow()
            .calls
            .iter()
            .any(|c| c.starts_with("layer ")));
    }

    /// The fixture image pushed once to an in-memory registry, and what the push gave.
    fn pushed_once() -> (Harness, Pushed) {
        let mut h = Harness::default();
        let first = run(&mut h, &request()).unwrap();
        (h, first)
    }

    /// A registry that holds some of an image's layers: only the others are uploaded. The
    /// export still passes every layer, and the ones the registry holds are only hashed, since
    /// their entries' names say which layers they are.
    #[test]
    fn layers_the_registry_holds_are_hashed_not_uploaded() {
        let (mut h, first) = pushed_once();
        let lost = h.f.diff_ids[1].clone();
        h.registry.0.borrow_mut().blobs.remove(&lost);
        h.registry.0.borrow_mut().calls.clear();

        let again = run(&mut h, &request()).unwrap();
        assert_eq!(again, first);
        assert_eq!(h.source.exports, 2);
        let uploads: Vec<String> = h
            .registry
            .0
            .borrow()
            .calls
            .iter()
            .filter(|c| c.starts_with("layer "))
            .cloned()
            .collect();
        assert_eq!(uploads, vec![format!("layer {lost}")]);
        assert_eq!(h.events.skipped(), vec![1]);
    }

    /// An entry whose name promised a layer the registry holds, but whose bytes are another
    /// layer: the export is read again and every layer uploaded, so nothing is lost.
    #[test]
    fn an_entry_that_breaks_its_names_promise_costs_a_second_export() {
        let (mut h, first) = pushed_once();
        // The second layer's entry now says it was the first layer, which the registry holds.
        let (second, first_layer) = (h.f.diff_ids[1].to_string(), h.f.diff_ids[0].to_string());
        for (key, value) in h.cache.0.iter_mut() {
            let text = String::from_utf8(value.clone()).unwrap();
            if key.starts_with("entry/") && text.contains(&second) {
                *value = text.replace(&second, &first_layer).into_bytes();
            }
        }
        h.registry.0.borrow_mut().blobs.remove(&h.f.diff_ids[1]);

        let again = run(&mut h, &request()).unwrap();
        assert_eq!(again, first);
        assert_eq!(
            h.source.exports, 3,
            "one export, and one more after the broken promise"
        );
        assert!(h.registry.0.borrow().blobs.contains_key(&h.f.diff_ids[1]));
    }

    #[test]
    fn docker_format_names_docker_media_types_and_no_annotations() {
        let mut h = Harness::default();
        let request = PushRequest {
            settings: Settings {
                format: Format::Docker,
                ..settings()
            },
            ..request()
        };
        run(&mut h, &request).unwrap();
        let json = h.registry.manifest_json();
        assert_eq!(json["mediaType"], crate::manifest::DOCKER_MANIFEST);
        assert_eq!(json["config"]["mediaType"], crate::manifest::DOCKER_CONFIG);
        assert!(json.get("annotations").is_none(), "{json}");
        assert!(h.registry.0.borrow().calls.contains(&format!(
            "manifest 1.0 {}",
            crate::manifest::DOCKER_MANIFEST
        )));
    }

    #[test]
    fn zstd_with_docker_format_is_refused_before_any_traffic() {
        let f = fixture();
        let request = PushRequest {
            settings: Settings {
                format: Format::Docker,
                encoding: Encoding::new(Compression::Zstd, 3).unwrap(),
                ..settings()
            },
            ..request()
        };
        let err = refused_before_traffic(&request, Memory::new(classic_export(&f), summary(&f)));
        assert!(err.contains("zstd"), "{err}");
    }

    #[test]
    fn annotations_come_from_the_config_and_the_user_and_survive_a_repeat_push() {
        let mut h = Harness::of(fixture_with_labels());
        let mut annotations = Annotations::new();
        annotations.insert("org.example.team".into(), "infra".into());
        annotations.insert(
            "org.opencontainers.image.source".into(),
            "https://override".into(),
        );
        let request = PushRequest {
            settings: Settings {
                annotations,
                ..settings()
            },
            ..request()
        };
        let first = run(&mut h, &request).unwrap();
        let json = h.registry.manifest_json();
        assert_eq!(
            json["annotations"],
            serde_json::json!({
                "org.example.team": "infra",
                "org.opencontainers.image.created": "2024-01-02T03:04:05Z",
                "org.opencontainers.image.revision": "abc123",
                "org.opencontainers.image.source": "https://override",
            })
        );
        // From the cache, without an export, the very same manifest.
        let again = run(&mut h, &request).unwrap();
        assert_eq!(h.source.exports, 1);
        assert_eq!(again, first);
    }

    fn fixture_with_labels() -> Fixture {
        let mut f = fixture();
        let mut config: serde_json::Value = serde_json::from_slice(&f.config).unwrap();
        config["created"] = "2024-01-02T03:04:05Z".into();
        config["config"] = serde_json::json!({"Labels": {
            "org.opencontainers.image.source": "https://example.com/app",
            "org.opencontainers.image.revision": "abc123",
            "maintainer": "not an OCI key",
        }});
        f.config = serde_json::to_vec(&config).unwrap();
        f.id = Digest::of(&f.config);
        f
    }

    fn verifying() -> PushRequest {
        PushRequest {
            settings: Settings {
                verify: true,
                ..settings()
            },
            ..request()
        }
    }

    #[test]
    fn verify_reads_back_the_manifest_and_checks_every_blob() {
        let mut h = Harness::default();
        let pushed = run(&mut h, &verifying()).unwrap();
        assert!(h
            .registry
            .0
            .borrow()
            .calls
            .contains(&format!("get {}", pushed.digest)));
        assert_eq!(
            h.events.0.last(),
            Some(&Event::Verified {
                digest: pushed.digest.clone(),
                manifests: 1,
                blobs: 3
            })
        );

        // The manifest went up by digest, was read back, and only then got its tag.
        let calls = h.registry.0.borrow().calls.clone();
        let at = |call: &str| calls.iter().position(|c| c.starts_with(call));
        let by_digest = at(&format!("manifest {}", pushed.digest)).unwrap();
        let read = at(&format!("get {}", pushed.digest)).unwrap();
        let tagged = at("manifest 1.0").unwrap();
        assert!(by_digest < read && read < tagged, "{calls:#?}");
    }

    /// A registry that takes a layer and loses it: verify reads back the manifest, finds the
    /// layer missing, and the tag is never written.
    #[test]
    fn a_push_that_fails_verify_writes_no_tag() {
        let mut h = Harness::default();
        let lost = h.f.diff_ids[1].clone();
        h.registry.0.borrow_mut().loses = Some(lost.clone());
        let err = run(&mut h, &verifying()).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.starts_with("verify before writing 127.0.0.1:5000/team/app:1.0: ")
                && err.contains(&format!("does not have layer {lost}")),
            "{err}"
        );
        let calls = h.registry.0.borrow().calls.clone();
        assert!(
            !calls.iter().any(|c| c.starts_with("manifest 1.0")),
            "{calls:#?}"
        );
    }

    /// Docker's containerd store: the daemon's own manifest goes up byte for byte, so the
    /// registry digest is the image ID; its gzip layers go up as they are, Docker's layer type
    /// kept. A repeat push (the stored layers are not the encoding's, so it exports again) and
    /// an explicit `--format oci` (what the manifest is) give the same.
    #[test]
    fn the_daemons_own_manifest_is_published_byte_for_byte() {
        let (mut h, own) = Harness::containerd();
        let pushed = run(&mut h, &verifying()).unwrap();
        assert_eq!(pushed.digest, Digest::of(&own));
        assert_eq!(
            pushed.digest, h.source.image.id,
            "registry digest = image ID"
        );
        {
            let log = h.registry.0.borrow();
            assert_eq!(log.manifest.as_deref(), Some(&own[..]));
            let layers: serde_json::Value = serde_json::from_slice(&own).unwrap();
            for layer in layers["layers"].as_array().unwrap() {
                assert_eq!(layer["mediaType"], crate::testing::DOCKER_LAYER_GZIP);
                let digest = Digest::parse(layer["digest"].as_str().unwrap(), "t").unwrap();
                assert!(log.blobs.contains_key(&digest), "{digest} stored as it was");
            }
        }
        assert!(matches!(
            h.events.0.last(),
            Some(Event::Verified { blobs: 3, .. })
        ));
        assert!(!h
            .events
            .0
            .iter()
            .any(|e| matches!(e, Event::ManifestRebuilt { .. })));

        let oci_chosen = PushRequest {
            settings: Settings {
                chosen: Chosen {
                    compression: false,
                    format: true,
                },
                ..settings()
            },
            ..request()
        };
        for request in [request(), oci_chosen] {
            assert_eq!(run(&mut h, &request).unwrap(), pushed);
            assert_eq!(h.registry.0.borrow().manifest.as_deref(), Some(&own[..]));
        }
        assert_eq!(h.source.exports, 3);
    }

    /// A compression or another format given explicitly, or annotations, are not what the
    /// daemon's manifest says: a new one is built, and one event says so before it is written.
    #[test]
    fn what_the_own_manifest_does_not_say_rebuilds_it_and_says_so_once() {
        use crate::model::Change;
        let mut annotated = Annotations::new();
        annotated.insert("org.example.k".into(), "v".into());
        let cases = [
            (
                true,
                false,
                Format::Oci,
                Annotations::new(),
                Change::Compression,
            ),
            (
                false,
                true,
                Format::Docker,
                Annotations::new(),
                Change::Format,
            ),
            (false, false, Format::Oci, annotated, Change::Annotations),
        ];
        for (compression, format_chosen, format, annotations, change) in cases {
            let (mut h, own) = Harness::containerd();
            let request = PushRequest {
                settings: Settings {
                    format,
                    annotations,
                    chosen: Chosen {
                        compression,
                        format: format_chosen,
                    },
                    ..settings()
                },
                ..request()
            };
            let pushed = run(&mut h, &request).unwrap();
            assert_ne!(pushed.digest, Digest::of(&own), "{change:?}");
            let rebuilt: Vec<usize> = h
                .events
                .0
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e, Event::ManifestRebuilt { .. }))
                .map(|(at, _)| at)
                .collect();
            assert_eq!(rebuilt.len(), 1, "{change:?}: {:?}", h.events.0);
            assert_eq!(
                h.events.0[rebuilt[0]],
                Event::ManifestRebuilt {
                    own: Digest::of(&own),
                    change
                }
            );
            assert!(matches!(
                h.events.0.last(),
                Some(Event::ManifestDone { .. })
            ));
            // The new manifest still names the daemon's config and its gzip blobs.
            let json = h.registry.manifest_json();
            let own: serde_json::Value = serde_json::from_slice(&own).unwrap();
            assert_eq!(json["config"]["digest"], own["config"]["digest"]);
            assert_eq!(json["layers"][1]["digest"], own["layers"][1]["digest"]);
        }
    }

    /// The daemon's manifest is checked as everything else: one that is not the bytes its
    /// name says, or a layer that is not, fails the push with no manifest written.
    #[test]
    fn an_own_manifest_or_layer_that_is_not_what_its_name_says_is_refused() {
        let (h, own) = Harness::containerd();
        let export = h.source.export.clone();
        let at = export
            .windows(own.len())
            .position(|w| w == &own[..])
            .unwrap();
        let first_layer = export
            .windows(2 + 3000)
            .position(|w| w[..2] == *b"gz" && w[2..].iter().all(|&b| b == 1))
            .unwrap();
        let expected = [
            // Indentation, after "{\n".
            (
                at + 2,
                "digest mismatch: the export's manifest blobs/sha256/",
            ),
            (first_layer + 100, "digest mismatch: blob blobs/sha256/"),
        ];
        for (byte, error) in expected {
            let (mut h, _) = Harness::containerd();
            let mut tampered = export.clone();
            // A space for a tab keeps the JSON valid and the tar header right.
            tampered[byte] = if tampered[byte] == b' ' {
                b'\t'
            } else {
                tampered[byte] ^ 0xff
            };
            h.source.export = tampered;
            let err = format!("{:#}", run(&mut h, &request()).unwrap_err());
            assert!(err.contains(error), "{err}");
            assert!(h.registry.0.borrow().manifest.is_none(), "{err}");
        }
    }

    /// The platforms named, as `--platform` gives them.
    fn platforms_request(platforms: &[&str]) -> PushRequest {
        PushRequest {
            platforms: platforms
                .iter()
                .map(|p| crate::platforms::parse_platform(p).unwrap())
                .collect(),
            ..verifying()
        }
    }

    /// The uploads and manifest writes a registry saw, in order (no HEADs, gets or opens).
    fn writes(registry: &MemoryRegistry) -> Vec<String> {
        let log = registry.0.borrow();
        log.calls
            .iter()
            .filter(|c| {
                ["layer ", "blob ", "manifest "]
                    .iter()
                    .any(|p| c.starts_with(p))
            })
            .cloned()
            .collect()
    }

    /// A two-platform image of the containerd store goes whole: every platform's blobs, each
    /// platform's own manifest by digest, then the daemon's own index under the tag, byte for
    /// byte, so the registry digest is the image ID. The export is looked over once before any
    /// upload, then read once per platform.
    #[test]
    fn a_multi_platform_image_goes_whole_with_its_own_index_tagged_last() {
        let (mut h, index, [amd, arm]) = Harness::two_platforms(true);
        let pushed = run(&mut h, &verifying()).unwrap();
        assert_eq!(
            pushed.digest, h.source.image.id,
            "registry digest = image ID"
        );
        assert_eq!(h.registry.0.borrow().manifest.as_deref(), Some(&index[..]));
        let writes = writes(&h.registry);
        let manifests: Vec<&String> = writes
            .iter()
            .filter(|w| w.starts_with("manifest "))
            .collect();
        let index_type = crate::manifest::OCI_INDEX;
        let manifest_type = crate::manifest::OCI_MANIFEST;
        assert_eq!(
            manifests,
            [
                &format!("manifest {} {manifest_type}", Digest::of(&amd)),
                &format!("manifest {} {manifest_type}", Digest::of(&arm)),
                &format!("manifest {} {index_type}", pushed.digest),
                &format!("manifest 1.0 {index_type}"),
            ]
        );
        // Blobs before the manifest that names them: arm64's after amd64's manifest.
        let first_manifest = writes
            .iter()
            .position(|w| w.starts_with("manifest "))
            .unwrap();
        assert_eq!(
            first_manifest, 3,
            "amd64's two layers and config first: {writes:#?}"
        );
        assert_eq!(writes.len(), 3 + 1 + 3 + 1 + 2, "{writes:#?}");
        assert_eq!(
            h.source.exports, 3,
            "a look over the export, then one per platform"
        );
        assert!(matches!(
            h.events.0.last(),
            Some(Event::Verified {
                manifests: 3,
                blobs: 6,
                ..
            })
        ));
        assert!(!h
            .events
            .0
            .iter()
            .any(|e| matches!(e, Event::ManifestRebuilt { .. })));

        // Both platforms named are the whole image too.
        let (mut h, index, _) = Harness::two_platforms(true);
        let both = platforms_request(&["linux/arm64", "linux/amd64"]);
        assert_eq!(run(&mut h, &both).unwrap().digest, Digest::of(&index));
    }

    /// A single-platform image of the containerd store (its ID names a manifest, which only the
    /// export says) is looked over once before its first push; the cache, which keeps the
    /// manifest's bytes (they prove what the ID names), spares the look over its next pushes.
    #[test]
    fn a_containerd_image_is_looked_over_before_its_first_push_only() {
        let (mut h, own) = Harness::containerd();
        h.source.image.id_kind = crate::model::IdKind::Manifest;
        let first = run(&mut h, &request()).unwrap();
        assert_eq!(first.digest, Digest::of(&own));
        assert_eq!(
            h.source.exports, 2,
            "a look over the export, then the push's"
        );
        assert_eq!(run(&mut h, &request()).unwrap(), first);
        assert_eq!(
            h.source.exports, 3,
            "the cache proves the ID names a manifest"
        );
        // A cache entry that is not the manifest proves nothing.
        let key = format!("manifest-id/v1/{}", first.digest.hex());
        h.cache.0.insert(key, b"{}".to_vec());
        run(&mut h, &request()).unwrap();
        assert_eq!(h.source.exports, 5);
    }

    /// One platform chosen: its own manifest under the tag, and nothing of the other platform
    /// sent.
    #[test]
    fn one_platform_chosen_gives_its_own_manifest_under_the_tag() {
        let (mut h, _, [amd, arm]) = Harness::two_platforms(true);
        let pushed = run(&mut h, &platforms_request(&["linux/arm64"])).unwrap();
        assert_eq!(pushed.digest, Digest::of(&arm));
        let writes = writes(&h.registry);
        let manifest_type = crate::manifest::OCI_MANIFEST;
        assert_eq!(
            writes
                .iter()
                .filter(|w| w.starts_with("manifest "))
                .collect::<Vec<_>>(),
            [
                &format!("manifest {} {manifest_type}", pushed.digest),
                &format!("manifest 1.0 {manifest_type}")
            ]
        );
        let amd: serde_json::Value = serde_json::from_slice(&amd).unwrap();
        for layer in amd["layers"].as_array().unwrap() {
            let digest = layer["digest"].as_str().unwrap();
            assert!(
                !writes.iter().any(|w| w.contains(digest)),
                "{digest} of amd64 sent"
            );
        }
        assert_eq!(writes.len(), 3 + 2, "{writes:#?}");
    }

    /// A platform whose content the source lacks is refused before any traffic, naming it and
    /// suggesting the platforms it holds, whether all were asked for or that one; the one it
    /// holds goes.
    #[test]
    fn a_platform_the_source_holds_only_the_index_entry_of_is_refused_before_any_traffic() {
        let expected = "image app:1: the source holds the index entry but not the content of linux/arm64/v8 (an image pulled for one platform keeps the whole index); push what it holds with --platform linux/amd64";
        for request in [request(), platforms_request(&["linux/arm64"])] {
            let (mut h, _, _) = Harness::two_platforms(false);
            let err = run(&mut h, &request).unwrap_err().to_string();
            assert_eq!(err, expected);
            assert!(h.registry.0.borrow().calls.is_empty(), "{err}");
            assert_eq!(h.source.exports, 1, "only the look over the export");
        }
        let (mut h, _, [amd, _]) = Harness::two_platforms(false);
        let pushed = run(&mut h, &platforms_request(&["linux/amd64"])).unwrap();
        assert_eq!(pushed.digest, Digest::of(&amd));
        // A platform the image does not have, and one a single-platform image is not for.
        let (mut h, _, _) = Harness::two_platforms(true);
        let err = run(&mut h, &platforms_request(&["linux/s390x"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("image app:1 has no platform linux/s390x"),
            "{err}"
        );
        assert!(h.registry.0.borrow().calls.is_empty(), "{err}");
        let h = Harness::default();
        let err = refused_before_traffic(&platforms_request(&["linux/arm64"]), h.source);
        assert!(err.contains("is for linux/amd64 only"), "{err}");
    }

    /// What the user asked that the source's index does not say builds a new index naming the
    /// platforms' manifests, said once.
    #[test]
    fn a_multi_platform_image_with_annotations_gets_a_new_index_and_says_so() {
        let (mut h, index, _) = Harness::two_platforms(true);
        let mut annotations = Annotations::new();
        annotations.insert("org.example.k".into(), "v".into());
        let request = PushRequest {
            settings: Settings {
                annotations,
                ..settings()
            },
            ..request()
        };
        let pushed = run(&mut h, &request).unwrap();
        assert_ne!(pushed.digest, Digest::of(&index));
        let rebuilt: Vec<&Event> = h
            .events
            .0
            .iter()
            .filter(|e| matches!(e, Event::ManifestRebuilt { .. }))
            .collect();
        // Each platform's manifest, then the index.
        assert_eq!(rebuilt.len(), 3, "{rebuilt:?}");
        assert_eq!(
            rebuilt[2],
            &Event::ManifestRebuilt {
                own: Digest::of(&index),
                change: crate::model::Change::Annotations
            }
        );
        let json = h.registry.manifest_json();
        assert_eq!(json["annotations"]["org.example.k"], "v");
        assert_eq!(json["manifests"][1]["platform"]["variant"], "v8");
    }

    fn index_request(sources: &[&str]) -> IndexRequest {
        IndexRequest {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            destination: "127.0.0.1:5000/team/multi:1".into(),
            settings: Settings {
                verify: true,
                ..settings()
            },
        }
    }

    /// Pushes an index of `source`'s images to `registry`.
    fn run_index(
        request: &IndexRequest,
        source: &mut TwoImages,
        registry: &MemoryRegistry,
        events: &mut Events,
    ) -> Result<Pushed> {
        push_index(
            request,
            &AllowAll,
            source,
            &mut registry.clone(),
            &mut MemoryCache::default(),
            events,
        )
    }

    #[test]
    fn an_index_names_each_platform_manifest_and_is_tagged_last() {
        let (amd, arm) = (fixture(), arm_fixture());
        let mut arm_summary = summary(&arm);
        arm_summary.platform = Some(Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        });
        let mut source = TwoImages(
            Memory::new(classic_export(&amd), summary(&amd)),
            Memory::new(classic_export(&arm), arm_summary),
        );
        let registry = MemoryRegistry::default();
        let mut events = Events::default();
        let pushed = run_index(
            &index_request(&["amd", "arm"]),
            &mut source,
            &registry,
            &mut events,
        )
        .unwrap();
        let log = registry.0.borrow();
        let index: serde_json::Value =
            serde_json::from_slice(log.manifest.as_ref().unwrap()).unwrap();
        assert_eq!(pushed.digest, Digest::of(log.manifest.as_ref().unwrap()));
        assert_eq!(index["mediaType"], crate::manifest::OCI_INDEX);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["platform"]["architecture"], "amd64");
        assert_eq!(entries[1]["platform"]["architecture"], "arm64");
        assert_eq!(entries[1]["platform"]["variant"], "v8");
        // Children by digest, the index by digest (to verify it before it is tagged), the
        // tag last.
        let writes: Vec<&String> = log
            .calls
            .iter()
            .filter(|c| c.starts_with("manifest "))
            .collect();
        assert_eq!(writes.len(), 4);
        for (write, entry) in writes.iter().zip(entries) {
            assert!(
                write.starts_with(&format!("manifest {} ", entry["digest"].as_str().unwrap())),
                "{write}"
            );
        }
        let index_type = crate::manifest::OCI_INDEX;
        assert_eq!(
            writes[2],
            &format!("manifest {} {index_type}", pushed.digest)
        );
        assert_eq!(writes[3], &format!("manifest 1 {index_type}"));
        assert!(matches!(
            events.0.last(),
            Some(Event::Verified {
                manifests: 3,
                blobs: 6,
                ..
            })
        ));
    }

    /// Runs an index push that must fail before any traffic, and returns its error.
    fn index_refused_before_traffic(request: &IndexRequest, mut source: TwoImages) -> String {
        let registry = MemoryRegistry::default();
        let err = run_index(request, &mut source, &registry, &mut Events::default())
            .unwrap_err()
            .to_string();
        assert!(registry.0.borrow().calls.is_empty(), "{err}");
        assert_eq!(source.0.exports + source.1.exports, 0, "{err}");
        err
    }

    #[test]
    fn two_images_for_one_platform_are_refused_before_any_upload() {
        let (amd, other) = (fixture(), arm_fixture());
        // The daemon says both are linux/amd64.
        let source = TwoImages(
            Memory::new(classic_export(&amd), summary(&amd)),
            Memory::new(classic_export(&other), summary(&amd)),
        );
        let err = index_refused_before_traffic(&index_request(&["amd", "amd2"]), source);
        assert!(err.contains("both for linux/amd64"), "{err}");
    }

    /// `push_index` checks the layer count `push` checks, before any traffic.
    #[test]
    fn an_index_of_an_image_with_too_many_layers_is_refused_before_any_traffic() {
        let (amd, arm) = (fixture(), arm_fixture());
        let mut arm_summary = summary(&arm);
        arm_summary.diff_ids = vec![arm.diff_ids[0].clone(); crate::limits::LAYER_LIMIT + 1];
        let source = TwoImages(
            Memory::new(classic_export(&amd), summary(&amd)),
            Memory::new(classic_export(&arm), arm_summary),
        );
        let err = index_refused_before_traffic(&index_request(&["amd", "arm"]), source);
        assert_eq!(err, "image arm has 1001 layers, over the limit of 1000");
    }

    /// An index's sources are images in the daemon: a tarball or layout source is refused
    /// before the daemon is asked anything.
    #[test]
    fn an_index_of_sources_outside_the_daemon_is_refused_before_any_traffic() {
        let f = fixture();
        let two = || {
            TwoImages(
                Memory::new(classic_export(&f), summary(&f)),
                Memory::new(classic_export(&f), summary(&f)),
            )
        };
        let err =
            index_refused_before_traffic(&index_request(&["amd", "docker-archive:app.tar"]), two());
        assert_eq!(err, "index source docker-archive:app.tar: an index's sources are images in the daemon (docker load the tarball first)");
        let err = index_refused_before_traffic(&index_request(&["oci:dir:1", "amd"]), two());
        assert!(err.starts_with("index source oci:dir:1: "), "{err}");
        let err = index_refused_before_traffic(&index_request(&["docker-archive:"]), two());
        assert!(err.contains("names no file"), "{err}");

        let err = index_refused_before_traffic(&index_request(&[]), two());
        assert_eq!(err, "an index needs at least one source image");
        let request = IndexRequest {
            destination: "oci:out".into(),
            ..index_request(&["amd"])
        };
        let err = index_refused_before_traffic(&request, two());
        assert!(err.contains("an index goes to a registry"), "{err}");
    }
}
