//! The component glue: the pipeline's capabilities implemented over the WIT imports, and the
//! world's exports over the pipeline under a policy. The export macro is public, so that the
//! crate that names the policy exports the world (`crate::export_policy!`).

// The generated export glue takes a request's fields flattened into one argument each.
#![allow(clippy::too_many_arguments)]

use std::io::{self, Read};

use anyhow::{anyhow, Context, Result};

use crate::archive::Archive;
use crate::build;
use crate::digest::Digest;
use crate::evidence::statement::{Instant, Origin, SourceImage};
use crate::evidence::{self, Clock, Referrers, Signer};
use crate::layout::Layout;
use crate::manifest;
use crate::model::{self, Blob, Encoding, IdKind, ImageSummary, SourceIndex, Within};
use crate::policy::Policy;
use crate::ports::{
    BlobSink, Cache, Destinations, ImageSource, LayerUpload, LayoutFiles, ProgressSink,
    RandomAccess, SkipRead, UploadLost, CHUNK_SIZE,
};
use crate::progress;
use crate::push;
use crate::reference::{Destination, Source};

wit_bindgen::generate!({ world: "pusher", path: "../wit", pub_export_macro: true });

use ocipush::core::{
    archive, cache, clock, credentials, docker, layout, progress as wit, registry, signer, types,
};

/// The world's exports: the pipeline, under the policy `P`.
pub struct Component<P>(std::marker::PhantomData<P>);

impl<P: Policy + Default> Guest for Component<P> {
    fn push(request: PushRequest) -> Result<PushResult, String> {
        let run = || {
            let started = HostClock.now();
            let wanted = request.settings.evidence.clone();
            let request = push::PushRequest {
                source: request.source,
                destinations: request.destinations,
                settings: settings(request.settings)?,
                platforms: platforms(request.platforms)?,
            };
            let mut source = Recorded::new(HostSource::open(&request.source)?);
            let pushed = push::push(
                &request,
                &P::default(),
                &mut source,
                &mut HostDestinations,
                &mut HostCache,
                &mut HostProgress,
            )?;
            let asked = Asked {
                command: "push",
                destinations: &request.destinations,
                settings: &request.settings,
                evidence: &wanted,
                started,
            };
            attest(&asked, &mut source, pushed)
        };
        result(run())
    }

    fn push_index(request: IndexRequest) -> Result<PushResult, String> {
        let run = || {
            let started = HostClock.now();
            let wanted = request.settings.evidence.clone();
            let request = push::IndexRequest {
                sources: request.sources,
                destination: request.destination,
                settings: settings(request.settings)?,
            };
            let mut daemon = Recorded::new(Daemon);
            let pushed = push::push_index(
                &request,
                &P::default(),
                &mut daemon,
                &mut HostDestinations,
                &mut HostCache,
                &mut HostProgress,
            )?;
            let asked = Asked {
                command: "index",
                destinations: std::slice::from_ref(&request.destination),
                settings: &request.settings,
                evidence: &wanted,
                started,
            };
            attest(&asked, &mut daemon, pushed)
        };
        result(run())
    }

    fn build(request: BuildPushRequest) -> Result<BuildResult, String> {
        Self::build_and_push(request).map_err(|e| format!("{e:#}"))
    }
}

impl<P: Policy + Default> Component<P> {
    fn build_and_push(request: BuildPushRequest) -> Result<BuildResult> {
        let started = HostClock.now();
        let wanted = request.settings.evidence.clone();
        let request = build::BuildPushRequest {
            build: build::BuildRequest {
                context: request.build.context,
                dockerfile: request.build.dockerfile,
                tag: request.build.tag,
                build_args: request.build.build_args,
            },
            destination: request.destination,
            settings: settings(request.settings)?,
        };
        let mut daemon = Recorded::new(Daemon);
        let built = build::build_and_push(
            &request,
            &P::default(),
            &mut daemon,
            &mut HostDestinations,
            &mut HostCache,
            &mut HostProgress,
        )?;
        let pushed = match (built.pushed, &request.destination) {
            (Some(pushed), Some(destination)) => {
                let asked = Asked {
                    command: "build",
                    destinations: std::slice::from_ref(destination),
                    settings: &request.settings,
                    evidence: &wanted,
                    started,
                };
                Some(attest(&asked, &mut daemon, pushed)?)
            }
            (pushed, _) => pushed,
        };
        Ok(BuildResult {
            image_id: built.id.to_string(),
            pushed: pushed.map(|pushed| PushResult {
                digest: pushed.digest.to_string(),
                repository: pushed.repository,
            }),
        })
    }
}

/// The platforms a host asks for, checked as `--platform` is.
fn platforms(platforms: Vec<types::Platform>) -> Result<Vec<model::Platform>> {
    platforms
        .into_iter()
        .map(|p| {
            let text = match p.variant {
                Some(variant) => format!("{}/{}/{variant}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            };
            crate::platforms::parse_platform(&text)
        })
        .collect()
}

fn settings(settings: PublishSettings) -> Result<push::Settings> {
    let compression = match settings.compression {
        registry::Compression::None => model::Compression::None,
        registry::Compression::Gzip => model::Compression::Gzip,
        registry::Compression::Zstd => model::Compression::Zstd,
    };
    let format = match settings.format {
        ManifestFormat::Oci => manifest::Format::Oci,
        ManifestFormat::Docker => manifest::Format::Docker,
    };
    let mut checked = push::Settings::new(
        compression,
        settings.level,
        format,
        settings.annotations,
        settings.verify,
    )?;
    checked.chosen = push::Chosen {
        compression: settings.chosen.compression,
        format: settings.chosen.format,
    };
    checked.jobs = settings.jobs.max(1);
    Ok(checked)
}

/// What a push was asked, for the evidence written after it.
struct Asked<'a> {
    command: &'a str,
    /// Each destination the image was pushed to: each gets the evidence.
    destinations: &'a [String],
    settings: &'a push::Settings,
    evidence: &'a Evidence,
    started: Instant,
}

/// Writes the evidence asked for about a push that is published (its tags written) at each
/// destination: provenance, and a signature when the host holds a key. A failure says that the
/// image is pushed.
fn attest<S: Identify>(
    asked: &Asked<'_>,
    source: &mut Recorded<S>,
    pushed: push::Pushed,
) -> Result<push::Pushed> {
    let key = signer::key();
    if !asked.evidence.provenance && key.is_none() {
        return Ok(pushed);
    }
    let sources = source.sources(asked.evidence.provenance).map_err(|e| {
        anyhow!(
            "the image is pushed ({}@{}), but {e:#}",
            pushed.repository,
            pushed.digest
        )
    })?;
    let sources = &sources[..];
    let mut signer = key.map(HostSigner);
    for destination in asked.destinations {
        let at = Destination::parse(destination).map(|d| d.location());
        let here = push::Pushed {
            digest: pushed.digest.clone(),
            repository: at.unwrap_or_else(|_| pushed.repository.clone()),
        };
        attest_one(asked, destination, sources, &here, signer.as_mut()).map_err(|e| {
            anyhow!(
                "the image is pushed ({}@{}), but {e:#}",
                here.repository,
                here.digest
            )
        })?;
    }
    Ok(pushed)
}

/// The evidence at one destination.
fn attest_one(
    asked: &Asked<'_>,
    destination: &str,
    sources: &[SourceImage],
    pushed: &push::Pushed,
    signer: Option<&mut HostSigner>,
) -> Result<evidence::Written> {
    let request = evidence::Request {
        command: asked.command,
        destination,
        settings: asked.settings,
        provenance: asked.evidence.provenance,
        guest: Digest::parse(
            &asked.evidence.guest_digest,
            "the guest digest the host gave",
        )?,
        sources,
        started: asked.started,
    };
    let mut sink = HostDestinations.open(&Destination::parse(destination)?)?;
    evidence::publish(
        &request,
        pushed,
        &mut sink,
        &mut HostClock,
        signer.map(|s| s as &mut dyn Signer),
    )
}

/// An image source that remembers what it said of each image: what provenance names as the
/// push's source.
struct Recorded<S> {
    inner: S,
    seen: Vec<SourceImage>,
}

impl<S> Recorded<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            seen: Vec::new(),
        }
    }
}

impl<S: Identify> Recorded<S> {
    /// The images the push read, each with where it was read from when provenance wants it.
    fn sources(&mut self, provenance: bool) -> Result<Vec<SourceImage>> {
        let mut sources = self.seen.clone();
        if provenance {
            for source in &mut sources {
                source.origin = Some(
                    self.inner
                        .origin(&source.name)
                        .with_context(|| format!("naming where {} was read from", source.name))?,
                );
            }
        }
        Ok(sources)
    }
}

/// A source that says where an image it read came from, for provenance.
trait Identify {
    /// Where `image` (as `inspect` was asked for it) was read from.
    fn origin(&mut self, image: &str) -> Result<Origin>;
}

impl Identify for Daemon {
    fn origin(&mut self, image: &str) -> Result<Origin> {
        let identity = docker::identify(image).map_err(|e| anyhow!(e))?;
        Ok(match identity {
            Some(daemon) => Origin::Daemon {
                id: daemon.id,
                name: daemon.name,
                server_version: daemon.server_version,
                endpoint: daemon.endpoint,
            },
            None => Origin::ContainersStorage,
        })
    }
}

impl Identify for HostSource {
    fn origin(&mut self, _image: &str) -> Result<Origin> {
        // Both digests are set by `inspect`, which the push ran before anything else.
        let unread = |what| anyhow!("the source's {what} was not read");
        Ok(match self {
            Self::Daemon(name) => Daemon.origin(name)?,
            Self::Archive(archive) => Origin::Archive {
                path: archive.file().absolute_path().map_err(|e| anyhow!(e))?,
                manifest: archive
                    .manifest_json_digest()
                    .ok_or_else(|| unread("manifest.json"))?
                    .clone(),
            },
            Self::Layout(layout) => Origin::Layout {
                path: layout.files().absolute_path().map_err(|e| anyhow!(e))?,
                index: layout
                    .index_json_digest()
                    .ok_or_else(|| unread("index.json"))?
                    .clone(),
            },
        })
    }
}

impl<S: ImageSource> ImageSource for Recorded<S> {
    type Export = S::Export;

    fn inspect(&mut self, image: &str) -> Result<ImageSummary> {
        let summary = self.inner.inspect(image)?;
        self.seen.retain(|seen| seen.name != image);
        self.seen.push(SourceImage {
            name: image.to_string(),
            summary: summary.clone(),
            origin: None,
        });
        Ok(summary)
    }

    fn export(&mut self, image: &str) -> Result<S::Export> {
        self.inner.export(image)
    }

    // Forwarded, not left to the defaults: a tarball or layout source reads one platform of a
    // multi-platform image at random and knows its index from `inspect`.
    fn export_platform(&mut self, within: &Within) -> Result<S::Export> {
        self.inner.export_platform(within)
    }

    fn inspected_index(&mut self) -> Option<SourceIndex> {
        self.inner.inspected_index()
    }
}

impl<S: build::ImageBuilder> build::ImageBuilder for Recorded<S> {
    fn build(
        &mut self,
        request: &build::BuildRequest,
        output: &mut dyn FnMut(String),
    ) -> Result<Digest> {
        self.inner.build(request, output)
    }
}

struct HostClock;

impl Clock for HostClock {
    fn now(&mut self) -> Instant {
        let now = clock::now();
        Instant {
            seconds: now.seconds,
            nanoseconds: now.nanoseconds,
        }
    }
}

/// The host's key, as a handle.
struct HostSigner(signer::SigningKey);

impl Signer for HostSigner {
    fn sign(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        self.0.sign(payload).map_err(|e| anyhow!(e))
    }
}

impl Referrers for Sink {
    fn put_referrer(&mut self, media_type: &str, body: &[u8]) -> Result<(Digest, Option<Digest>)> {
        match self {
            Sink::Registry(r) => {
                let written = r.put_referrer(media_type, body).map_err(|e| anyhow!(e))?;
                let digest = Digest::parse(&written.digest, "the stored manifest's digest")?;
                let subject = match written.subject {
                    Some(subject) => Some(Digest::parse(&subject, "the registry's OCI-Subject")?),
                    None => None,
                };
                Ok((digest, subject))
            }
            // A layout has no referrers API: the artifact is a blob that the referrers tag
            // schema's index entry names.
            Sink::Layout(l) => {
                let digest = Digest::of(body);
                l.put_blob(digest.as_str(), body).map_err(|e| anyhow!(e))?;
                Ok((digest, None))
            }
        }
    }
}

fn result(pushed: Result<push::Pushed>) -> Result<PushResult, String> {
    pushed
        .map(|pushed| PushResult {
            digest: pushed.digest.to_string(),
            repository: pushed.repository,
        })
        .map_err(|e| format!("{e:#}"))
}

/// The source the user named: an image in the daemon, a `docker save` tarball, or an OCI
/// image layout directory.
enum HostSource {
    /// The image's name in the daemon, without a transport prefix.
    Daemon(String),
    Archive(Archive<archive::Tarball>),
    Layout(Layout<layout::Reader>),
}

impl HostSource {
    fn open(source: &str) -> Result<Self> {
        Ok(match Source::parse(source)? {
            Source::Daemon(name) => Self::Daemon(name),
            Source::Archive { path, reference } => {
                let file = archive::open(&path).map_err(|e| anyhow!(e))?;
                Self::Archive(Archive::new(file, &path, reference.as_deref()))
            }
            Source::Layout { path, tag } => {
                let files = layout::open_reader(&path).map_err(|e| anyhow!(e))?;
                Self::Layout(Layout::new(files, &path, tag.as_deref()))
            }
        })
    }
}

impl ImageSource for HostSource {
    type Export = Box<dyn SkipRead>;

    /// `image` is the source as the user wrote it; each kind already holds its parsed form.
    fn inspect(&mut self, _image: &str) -> Result<ImageSummary> {
        match self {
            Self::Daemon(name) => Daemon.inspect(name),
            Self::Archive(archive) => archive.inspect(""),
            Self::Layout(layout) => layout.inspect(""),
        }
    }

    fn export(&mut self, image: &str) -> Result<Box<dyn SkipRead>> {
        Ok(match self {
            Self::Daemon(_) => Box::new(Daemon.export(image)?),
            Self::Archive(archive) => Box::new(archive.export(image)?),
            Self::Layout(layout) => Box::new(layout.export(image)?),
        })
    }

    fn export_platform(&mut self, within: &Within) -> Result<Box<dyn SkipRead>> {
        Ok(match self {
            Self::Daemon(_) => Box::new(Daemon.export_platform(within)?),
            Self::Archive(archive) => Box::new(archive.export_platform(within)?),
            Self::Layout(layout) => Box::new(layout.export_platform(within)?),
        })
    }

    fn inspected_index(&mut self) -> Option<SourceIndex> {
        match self {
            Self::Daemon(_) => None,
            Self::Archive(archive) => archive.inspected_index(),
            Self::Layout(layout) => layout.inspected_index(),
        }
    }
}

impl LayoutFiles for layout::Reader {
    fn index(&self) -> Result<Vec<u8>> {
        layout::Reader::index(self).map_err(|e| anyhow!(e))
    }

    fn read_blob(&self, digest: &Digest, offset: u64, max: usize) -> Result<Vec<u8>> {
        let max = max.min(CHUNK_SIZE * 4) as u32;
        self.read_blob(digest.as_str(), offset, max)
            .map_err(|e| anyhow!(e))
    }
}

impl RandomAccess for archive::Tarball {
    fn size(&self) -> Result<u64> {
        archive::Tarball::size(self).map_err(|e| anyhow!(e))
    }

    fn read_at(&self, offset: u64, max: usize) -> Result<Vec<u8>> {
        let max = max.min(CHUNK_SIZE * 4) as u32;
        self.read(offset, max).map_err(|e| anyhow!(e))
    }
}

struct Daemon;

impl build::ImageBuilder for Daemon {
    fn build(
        &mut self,
        request: &build::BuildRequest,
        output: &mut dyn FnMut(String),
    ) -> Result<Digest> {
        let job = docker::build(&docker::BuildRequest {
            context: request.context.clone(),
            dockerfile: request.dockerfile.clone(),
            tag: request.tag.clone(),
            build_args: request.build_args.clone(),
        })
        .map_err(|e| anyhow!(e))?;
        loop {
            match job.next().map_err(|e| anyhow!(e))? {
                docker::BuildEvent::Output(line) => output(line),
                docker::BuildEvent::Built(id) => return Digest::parse(&id, "the built image's ID"),
            }
        }
    }
}

impl ImageSource for Daemon {
    type Export = HostStream;

    fn inspect(&mut self, image: &str) -> Result<ImageSummary> {
        let summary = docker::inspect(image).map_err(|e| anyhow!(e))?;
        let platform = summary.platform.map(|p| model::Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant,
        });
        let mut parsed =
            ImageSummary::parse(&summary.id, &summary.diff_ids, summary.size, platform)?;
        parsed.id_kind = match summary.id_kind {
            types::IdKind::Config => IdKind::Config,
            types::IdKind::Manifest => IdKind::Manifest,
        };
        parsed.labels = summary.labels.into_iter().collect();
        Ok(parsed)
    }

    fn export(&mut self, image: &str) -> Result<HostStream> {
        let stream = docker::export_image(image).map_err(|e| anyhow!(e))?;
        Ok(HostStream {
            stream,
            chunk: Vec::new(),
            pos: 0,
        })
    }
}

/// `Read` over the host's export stream, one large chunk per crossing.
struct HostStream {
    stream: docker::ExportStream,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for HostStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.chunk.len() {
            self.chunk = self
                .stream
                .read(CHUNK_SIZE as u32)
                .map_err(io::Error::other)?;
            self.pos = 0;
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl SkipRead for HostStream {
    /// What is left of the chunk at hand is dropped; the rest the host passes over, so those
    /// bytes never cross into the guest.
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let here = ((self.chunk.len() - self.pos) as u64).min(n);
        self.pos += here as usize;
        let rest = n - here;
        if rest == 0 {
            return Ok(());
        }
        self.stream.skip(rest).map_err(io::Error::other)
    }
}

struct HostDestinations;

/// A destination the host opened: a registry repository or a layout directory.
enum Sink {
    Registry(registry::Repository),
    Layout(layout::Directory),
}

/// A layer being streamed to either kind of destination.
enum Upload {
    Registry(registry::LayerUpload),
    Layout(layout::LayerFile),
}

impl Destinations for HostDestinations {
    type Repository = Sink;

    fn open(&mut self, destination: &Destination) -> Result<Sink> {
        match destination {
            Destination::Registry(target) => {
                let credential = credentials::lookup(&target.registry);
                registry::open(&target.registry, &target.repository, credential.as_ref())
                    .map(Sink::Registry)
                    .map_err(|e| anyhow!(e))
            }
            Destination::Layout(target) => layout::open(&target.path)
                .map(Sink::Layout)
                .map_err(|e| anyhow!(e)),
        }
    }
}

impl BlobSink for Sink {
    type Upload = Upload;

    fn blob_size(&mut self, digest: &Digest) -> Result<Option<u64>> {
        match self {
            Sink::Registry(r) => r.blob_size(digest.as_str()),
            Sink::Layout(l) => l.blob_size(digest.as_str()),
        }
        .map_err(|e| anyhow!(e))
    }

    fn mount_blob(&mut self, digest: &Digest, source: &str) -> Result<bool> {
        match self {
            Sink::Registry(r) => r.mount_blob(digest.as_str(), source),
            // A layout is one directory: there is nowhere to mount from.
            Sink::Layout(_) => Ok(false),
        }
        .map_err(|e| anyhow!(e))
    }

    fn put_blob(&mut self, digest: &Digest, data: &[u8]) -> Result<()> {
        match self {
            Sink::Registry(r) => r.put_blob(digest.as_str(), data),
            Sink::Layout(l) => l.put_blob(digest.as_str(), data),
        }
        .map_err(|e| anyhow!(e))
    }

    fn start_layer(&mut self, encoding: &Encoding) -> Result<Upload> {
        let compression = match encoding.compression {
            model::Compression::None => registry::Compression::None,
            model::Compression::Gzip => registry::Compression::Gzip,
            model::Compression::Zstd => registry::Compression::Zstd,
        };
        match self {
            Sink::Registry(r) => r
                .start_layer(compression, encoding.level)
                .map(Upload::Registry),
            Sink::Layout(l) => l
                .start_layer(compression, encoding.level)
                .map(Upload::Layout),
        }
        .map_err(|e| anyhow!(e))
    }

    fn put_manifest(&mut self, reference: &str, media_type: &str, body: &[u8]) -> Result<Digest> {
        let digest = match self {
            Sink::Registry(r) => r.put_manifest(reference, media_type, body),
            Sink::Layout(l) => l.put_manifest(reference, media_type, body),
        }
        .map_err(|e| anyhow!(e))?;
        Digest::parse(&digest, "the stored manifest's digest")
    }

    fn get_manifest(&mut self, reference: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Sink::Registry(r) => r.get_manifest(reference),
            Sink::Layout(l) => l.get_manifest(reference),
        }
        .map_err(|e| anyhow!(e))
    }
}

impl LayerUpload for Upload {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Upload::Registry(u) => u.write(data).map_err(upload_error),
            Upload::Layout(u) => u.write(data).map_err(|e| anyhow!(e)),
        }
    }

    fn sent(&self) -> u64 {
        match self {
            Upload::Registry(u) => u.progress().sent,
            Upload::Layout(u) => u.progress().sent,
        }
    }

    fn close(&mut self, written: &Digest) -> Result<Blob> {
        stored(match self {
            Upload::Registry(u) => u.close(written.as_str()).map_err(upload_error),
            // A layout's host hashes what it writes: its blobs have no other check.
            Upload::Layout(u) => u.close().map_err(|e| anyhow!(e)),
        })
    }

    fn finish(self) -> Result<Blob> {
        stored(match &self {
            Upload::Registry(u) => u.finish().map_err(upload_error),
            Upload::Layout(u) => u.finish().map_err(|e| anyhow!(e)),
        })
    }
}

/// A registry upload's failure: a lost upload typed, for the push to stream the layer again.
fn upload_error(error: registry::UploadError) -> anyhow::Error {
    match error {
        registry::UploadError::Lost(message) => UploadLost(message).into(),
        registry::UploadError::Failed(message) => anyhow!(message),
    }
}

/// A blob as the host describes it, its digest checked.
fn stored(blob: Result<ocipush::core::types::BlobDescriptor>) -> Result<Blob> {
    let blob = blob?;
    Ok(Blob {
        digest: Digest::parse(&blob.digest, "the stored blob's digest")?,
        size: blob.size,
    })
}

struct HostCache;

impl Cache for HostCache {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        cache::get(key)
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        cache::put(key, value)
    }
}

struct HostProgress;

impl ProgressSink for HostProgress {
    fn report(&mut self, event: progress::Event) {
        use progress::Event as E;
        let layer = |l: progress::LayerRef| wit::LayerRef {
            index: l.index,
            entry: l.entry,
        };
        let bytes = |b: progress::LayerBytes| wit::LayerBytes {
            layer: layer(b.layer),
            done: b.done,
            sent: b.sent,
            total: b.total,
        };
        let event = match event {
            E::Started {
                image,
                layers,
                total_bytes,
            } => wit::Event::Started(wit::PushStarted {
                image,
                layers,
                total_bytes,
            }),
            E::LayerStarted(b) => wit::Event::LayerStarted(bytes(b)),
            E::LayerProgress(b) => wit::Event::LayerProgress(bytes(b)),
            E::LayerDone {
                layer: l,
                diff_id,
                position,
                digest,
                size,
            } => wit::Event::LayerDone(wit::LayerFinished {
                layer: layer(l),
                diff_id: diff_id.to_string(),
                position,
                digest: digest.to_string(),
                size,
            }),
            E::LayerSkipped {
                position,
                diff_id,
                digest,
                size,
                mounted_from,
            } => wit::Event::LayerSkipped(wit::LayerPresent {
                position,
                diff_id: diff_id.to_string(),
                digest: digest.to_string(),
                size,
                mounted_from,
            }),
            E::ConfigDone(digest) => wit::Event::ConfigDone(digest.to_string()),
            E::ManifestDone { reference, digest } => {
                wit::Event::ManifestDone(wit::ManifestWritten {
                    reference,
                    digest: digest.to_string(),
                })
            }
            E::BuildOutput(line) => wit::Event::BuildOutput(line),
            E::Built { tag, id } => wit::Event::Built(wit::BuiltImage {
                tag,
                id: id.to_string(),
            }),
            E::Verified {
                digest,
                manifests,
                blobs,
            } => wit::Event::Verified(wit::Verification {
                digest: digest.to_string(),
                manifests,
                blobs,
            }),
            E::ManifestRebuilt { own, change } => {
                wit::Event::ManifestRebuilt(wit::RebuiltManifest {
                    source_manifest: own.to_string(),
                    change: match change {
                        model::Change::Compression => wit::ManifestChange::Compression,
                        model::Change::Format => wit::ManifestChange::Format,
                        model::Change::Annotations => wit::ManifestChange::Annotations,
                        model::Change::Platforms => wit::ManifestChange::Platforms,
                    },
                })
            }
        };
        wit::report(&event);
    }
}
