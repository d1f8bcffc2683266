//! Test material shared by the guest's unit tests: tar archives in the `docker save` dialects,
//! and in-memory capabilities (a source, a registry, a file, a cache, a progress sink).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Cursor, Read};
use std::rc::{Rc, Weak};

use anyhow::{bail, Result};

use crate::digest::Digest;
use crate::model::{Blob, Encoding, IdKind, ImageSummary, Layer, Platform};
use crate::ports::{
    BlobSink, Cache, Destinations, ImageSource, LayerEntry, LayerUpload, ProgressSink, Publish,
    RandomAccess, SkipRead, UploadLost,
};
use crate::progress::Event;
use crate::reference::Destination;

/// A tar entry for test archives.
pub enum Item<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

pub fn tar(items: &[Item<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_ustar();
        match item {
            Item::File(path, data) => {
                header.set_size(data.len() as u64);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            Item::Symlink(path, target) => {
                header.set_size(0);
                header.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// Two layer tars (any bytes do: the reader does not look inside layers), their config.
pub struct Fixture {
    pub layers: [Vec<u8>; 2],
    pub diff_ids: Vec<Digest>,
    pub config: Vec<u8>,
    pub id: Digest,
}

pub fn fixture() -> Fixture {
    let layers = [vec![1u8; 3000], vec![2u8; 70_000]];
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(Digest::as_str).collect::<Vec<_>>()},
    }))
    .unwrap();
    let id = Digest::of(&config);
    Fixture {
        layers,
        diff_ids,
        config,
        id,
    }
}

pub fn summary(f: &Fixture) -> ImageSummary {
    ImageSummary {
        id: f.id.clone(),
        diff_ids: f.diff_ids.clone(),
        size: 73_000,
        platform: Some(Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }),
        id_kind: IdKind::Config,
        within: None,
        labels: Default::default(),
    }
}

/// A `manifest.json` with one image.
pub fn manifest_json(config: &str, layers: &[&str]) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!([{"Config": config, "RepoTags": ["app:1"], "Layers": layers}]),
    )
    .unwrap()
}

/// The classic (Docker <= 24) export of the fixture, its manifest.json last.
pub fn classic_export(f: &Fixture) -> Vec<u8> {
    let config_name = format!("{}.json", f.id.hex());
    let manifest = manifest_json(&config_name, &["aaa/layer.tar", "bbb/layer.tar"]);
    tar(&[
        Item::File("aaa/layer.tar", &f.layers[0]),
        Item::File("bbb/layer.tar", &f.layers[1]),
        Item::File(&config_name, &f.config),
        Item::File("manifest.json", &manifest),
    ])
}

/// Docker's gzip layer type, as the containerd store writes it inside OCI manifests.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The fixture as Docker >= 25's containerd store exports it: each layer held "compressed"
/// (any bytes other than the tar do: the reader does not decompress), the daemon's own
/// manifest (indented, as Docker writes it: bytes no serializer here would reproduce), named by
/// `index.json`. Returns the export and the own manifest, whose digest is the image ID.
pub fn containerd_export(f: &Fixture) -> (Vec<u8>, Vec<u8>) {
    let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let compressed: Vec<Vec<u8>> = f.layers.iter().map(|l| [b"gz", &l[..]].concat()).collect();
    let descriptor = |media_type: &str, bytes: &[u8]| serde_json::json!({"mediaType": media_type, "digest": Digest::of(bytes).as_str(), "size": bytes.len()});
    let own = serde_json::to_vec_pretty(&serde_json::json!({
        "mediaType": crate::manifest::OCI_MANIFEST,
        "schemaVersion": 2,
        "config": descriptor(crate::manifest::OCI_CONFIG, &f.config),
        "layers": compressed.iter().map(|c| descriptor(DOCKER_LAYER_GZIP, c)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [descriptor(crate::manifest::OCI_MANIFEST, &own)],
    }))
    .unwrap();
    let layer_paths: Vec<String> = compressed.iter().map(|c| blob(&Digest::of(c))).collect();
    let manifest = manifest_json(
        &blob(&f.id),
        &layer_paths.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let export = tar(&[
        Item::File(&layer_paths[0], &compressed[0]),
        Item::File(&layer_paths[1], &compressed[1]),
        Item::File(&blob(&f.id), &f.config),
        Item::File(&blob(&Digest::of(&own)), &own),
        Item::File("index.json", &index),
        Item::File("manifest.json", &manifest),
    ]);
    (export, own)
}

/// Two platforms of one image as Docker >= 25's containerd store exports them: the fixture
/// (linux/amd64) and its arm64 twin, each with "compressed" layers of its own (a prefix per
/// platform) and an indented manifest, under one index that the image ID names. Without
/// `arm_held`, only the index entry of arm64 is there (an image pulled for one platform).
/// Returns the export, the index, and each platform's manifest.
pub fn two_platform_export(arm_held: bool) -> (Vec<u8>, Vec<u8>, [Vec<u8>; 2]) {
    let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let descriptor = |media_type: &str, bytes: &[u8]| serde_json::json!({"mediaType": media_type, "digest": Digest::of(bytes).as_str(), "size": bytes.len()});
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifests = Vec::new();
    let mut entries = Vec::new();
    for (f, prefix, variant) in [
        (fixture(), "gz", None),
        (arm_fixture(), "gzarm", Some("v8")),
    ] {
        let compressed: Vec<Vec<u8>> = f
            .layers
            .iter()
            .map(|l| [prefix.as_bytes(), &l[..]].concat())
            .collect();
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "mediaType": crate::manifest::OCI_MANIFEST,
            "schemaVersion": 2,
            "config": descriptor(crate::manifest::OCI_CONFIG, &f.config),
            "layers": compressed.iter().map(|c| descriptor(DOCKER_LAYER_GZIP, c)).collect::<Vec<_>>(),
        }))
        .unwrap();
        let mut entry = descriptor(crate::manifest::OCI_MANIFEST, &manifest);
        let config: serde_json::Value = serde_json::from_slice(&f.config).unwrap();
        entry["platform"] = serde_json::json!({"os": "linux", "architecture": config["architecture"], "variant": variant});
        entries.push(entry);
        if variant.is_none() || arm_held {
            for bytes in compressed
                .into_iter()
                .chain([f.config.clone(), manifest.clone()])
            {
                files.push((blob(&Digest::of(&bytes)), bytes));
            }
        }
        manifests.push(manifest);
    }
    let index = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::manifest::OCI_INDEX,
        "manifests": entries,
    }))
    .unwrap();
    files.push((blob(&Digest::of(&index)), index.clone()));
    // Sorted by name, as Docker writes them: the index among the blobs, index.json after.
    files.sort();
    let listing = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [descriptor(crate::manifest::OCI_INDEX, &index)],
    }))
    .unwrap();
    let f = fixture();
    let amd_layers: Vec<String> = f
        .layers
        .iter()
        .map(|l| blob(&Digest::of(&[b"gz", &l[..]].concat())))
        .collect();
    let manifest_json = manifest_json(
        &blob(&f.id),
        &amd_layers.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut items: Vec<Item> = files
        .iter()
        .map(|(name, bytes)| Item::File(name, bytes))
        .collect();
    items.push(Item::File("index.json", &listing));
    items.push(Item::File("manifest.json", &manifest_json));
    let [amd, arm]: [Vec<u8>; 2] = manifests.try_into().unwrap();
    (tar(&items), index, [amd, arm])
}

/// A cache in memory.
#[derive(Default)]
pub struct MemoryCache(pub HashMap<String, Vec<u8>>);

impl Cache for MemoryCache {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }
    fn put(&mut self, key: &str, value: &[u8]) {
        self.0.insert(key.to_string(), value.to_vec());
    }
}

/// Publishes layers as the pipeline does, storing nothing: a layer must hash to one of
/// `diff_ids` and is "stored" uncompressed; a blob must hash to its digest.
pub struct Hashing {
    pub diff_ids: Vec<Digest>,
    /// The entries handed over: index, path, size.
    pub seen: Vec<(u32, String, u64)>,
}

impl Hashing {
    pub fn new(image: &ImageSummary) -> Self {
        Self {
            diff_ids: image.diff_ids.clone(),
            seen: Vec::new(),
        }
    }

    fn read(&mut self, entry: LayerEntry<'_>) -> Result<Blob> {
        let mut bytes = Vec::new();
        entry.data.read_to_end(&mut bytes)?;
        self.seen
            .push((entry.index, entry.name.clone(), entry.size));
        Ok(Blob {
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
        })
    }
}

impl Publish for Hashing {
    fn layer(&mut self, entry: LayerEntry<'_>) -> Result<Layer> {
        let name = entry.name.clone();
        let blob = self.read(entry)?;
        if !self.diff_ids.contains(&blob.digest) {
            bail!("digest mismatch: {name} is not a layer of the image");
        }
        Ok(Layer {
            diff_id: blob.digest.clone(),
            blob,
            media_type: None,
        })
    }

    fn blob(&mut self, entry: LayerEntry<'_>, digest: &Digest) -> Result<Blob> {
        let name = entry.name.clone();
        let blob = self.read(entry)?;
        if &blob.digest != digest {
            bail!("digest mismatch: blob {name} hashes to {}", blob.digest);
        }
        Ok(blob)
    }
}

/// An image source holding one image and its export.
pub struct Memory {
    pub export: Vec<u8>,
    pub image: ImageSummary,
    /// How many times it was exported.
    pub exports: usize,
    /// Bytes of its exports read, all exports together (bytes passed over are not).
    pub read: Rc<Cell<u64>>,
}

/// An export in memory that counts the bytes read from it.
pub struct MemoryExport {
    bytes: Cursor<Vec<u8>>,
    read: Rc<Cell<u64>>,
}

impl Read for MemoryExport {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.bytes.read(out)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

impl SkipRead for MemoryExport {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        self.bytes.skip(n)
    }
}

impl Memory {
    pub fn new(export: Vec<u8>, image: ImageSummary) -> Self {
        Self {
            export,
            image,
            exports: 0,
            read: Rc::default(),
        }
    }
}

impl ImageSource for Memory {
    type Export = MemoryExport;
    fn inspect(&mut self, _image: &str) -> Result<ImageSummary> {
        Ok(self.image.clone())
    }
    fn export(&mut self, image: &str) -> Result<Self::Export> {
        assert_eq!(image, self.image.id.as_str(), "export by the inspected ID");
        self.exports += 1;
        Ok(MemoryExport {
            bytes: Cursor::new(self.export.clone()),
            read: self.read.clone(),
        })
    }
}

/// Two images in one daemon, one per platform: `amd` is the first, any other name the second.
pub struct TwoImages(pub Memory, pub Memory);

impl ImageSource for TwoImages {
    type Export = MemoryExport;
    fn inspect(&mut self, image: &str) -> Result<ImageSummary> {
        match image {
            "amd" => self.0.inspect(image),
            _ => self.1.inspect(image),
        }
    }
    fn export(&mut self, image: &str) -> Result<Self::Export> {
        if image == self.0.image.id.as_str() {
            self.0.export(image)
        } else {
            self.1.export(image)
        }
    }
}

/// The fixture, for linux/arm64/v8, with a label of its own (not an `org.opencontainers.image.*`
/// one, which would become a manifest annotation).
pub fn arm_fixture() -> Fixture {
    let mut f = fixture();
    let mut config: serde_json::Value = serde_json::from_slice(&f.config).unwrap();
    config["architecture"] = "arm64".into();
    config["variant"] = "v8".into();
    config["config"] = serde_json::json!({"Labels": {"org.example.platform": "arm"}});
    f.config = serde_json::to_vec(&config).unwrap();
    f.id = Digest::of(&f.config);
    f
}

/// What an in-memory registry saw, in order.
#[derive(Default)]
pub struct Log {
    pub calls: Vec<String>,
    pub blobs: HashMap<Digest, Vec<u8>>,
    pub manifest: Option<Vec<u8>>,
    pub manifests: HashMap<String, Vec<u8>>,
    pub misreport_manifest_digest: bool,
    /// Reports every blob one byte larger than it is.
    pub misreport_blob_sizes: bool,
    /// A blob it takes and then loses.
    pub loses: Option<Digest>,
    /// Layers whose upload it loses when it is finished, once per occurrence, as a registry
    /// that lost the session after the host released the first bytes.
    pub loses_uploads: Vec<Digest>,
    /// Refuses every blob written to it, as a read-only registry does.
    pub read_only: bool,
    /// With `MemoryRegistries`: where this repository is, and the journal of every
    /// repository's calls in order, each prefixed with where it went.
    pub journal: Option<(String, Rc<RefCell<Vec<String>>>)>,
    /// With `MemoryRegistries`: its registry, and the repositories a mount can take from.
    pub peers: Option<(String, Weak<Repositories>)>,
}

impl Log {
    /// Records a call, and journals it where there is a journal.
    fn call(&mut self, call: String) {
        if let Some((location, journal)) = &self.journal {
            journal.borrow_mut().push(format!("{location}: {call}"));
        }
        self.calls.push(call);
    }

    fn refuse_if_read_only(&mut self) -> Result<()> {
        if self.read_only {
            self.call("refused".into());
            bail!("the registry refused the upload: it is read-only");
        }
        Ok(())
    }
}

/// A registry in memory, shared by its clones: each destination it opens is itself.
#[derive(Clone, Default)]
pub struct MemoryRegistry(pub Rc<RefCell<Log>>);

impl MemoryRegistry {
    /// The last manifest written, as JSON.
    pub fn manifest_json(&self) -> serde_json::Value {
        serde_json::from_slice(self.0.borrow().manifest.as_ref().unwrap()).unwrap()
    }
}

impl Destinations for MemoryRegistry {
    type Repository = MemoryRegistry;
    fn open(&mut self, destination: &Destination) -> Result<Self> {
        self.0
            .borrow_mut()
            .call(format!("open {}", destination.location()));
        Ok(self.clone())
    }
}

/// The repositories of `MemoryRegistries`, by location.
pub type Repositories = RefCell<BTreeMap<String, MemoryRegistry>>;

/// Repositories in memory, each its own `MemoryRegistry` by location (`host/name`, or
/// `oci:DIR`), with one journal of every call in the order made, and mounts between
/// repositories of one registry.
#[derive(Clone, Default)]
pub struct MemoryRegistries {
    pub repositories: Rc<Repositories>,
    pub journal: Rc<RefCell<Vec<String>>>,
}

impl MemoryRegistries {
    /// The repository at `destination`'s location, made empty the first time it is named.
    pub fn at(&self, destination: &str) -> MemoryRegistry {
        let destination = Destination::parse(destination).unwrap();
        let location = destination.location();
        let mut repositories = self.repositories.borrow_mut();
        let repository = repositories.entry(location.clone()).or_default();
        let mut log = repository.0.borrow_mut();
        log.journal = Some((location, self.journal.clone()));
        if let Destination::Registry(target) = &destination {
            log.peers = Some((target.registry.clone(), Rc::downgrade(&self.repositories)));
        }
        drop(log);
        repository.clone()
    }

    /// Every call to every repository so far, in order, each as `LOCATION: CALL`.
    pub fn journal(&self) -> Vec<String> {
        self.journal.borrow().clone()
    }
}

impl Destinations for MemoryRegistries {
    type Repository = MemoryRegistry;
    fn open(&mut self, destination: &Destination) -> Result<MemoryRegistry> {
        let location = destination.location();
        let text = match destination {
            Destination::Registry(_) => location.clone(),
            Destination::Layout(layout) => format!("oci:{}", layout.path),
        };
        let repository = self.at(&text);
        repository.0.borrow_mut().call(format!("open {location}"));
        Ok(repository)
    }
}

impl BlobSink for MemoryRegistry {
    type Upload = MemoryUpload;
    fn blob_size(&mut self, digest: &Digest) -> Result<Option<u64>> {
        let log = self.0.borrow();
        let extra = u64::from(log.misreport_blob_sizes);
        Ok(log.blobs.get(digest).map(|b| b.len() as u64 + extra))
    }
    /// Mounts only from a repository of the same `MemoryRegistries` registry that holds it.
    fn mount_blob(&mut self, digest: &Digest, source: &str) -> Result<bool> {
        let peers = self.0.borrow().peers.clone();
        self.0
            .borrow_mut()
            .call(format!("mount {digest} from {source}"));
        let held = peers.and_then(|(registry, peers)| {
            let peers = peers.upgrade()?;
            let peers = peers.borrow();
            let peer = peers.get(&format!("{registry}/{source}"))?;
            let bytes = peer.0.borrow().blobs.get(digest).cloned();
            bytes
        });
        let mounted = held.is_some();
        if let Some(bytes) = held {
            self.0.borrow_mut().blobs.insert(digest.clone(), bytes);
        }
        Ok(mounted)
    }
    fn put_blob(&mut self, digest: &Digest, data: &[u8]) -> Result<()> {
        let mut log = self.0.borrow_mut();
        log.refuse_if_read_only()?;
        log.call(format!("blob {digest}"));
        log.blobs.insert(digest.clone(), data.to_vec());
        Ok(())
    }
    fn start_layer(&mut self, _encoding: &Encoding) -> Result<MemoryUpload> {
        self.0.borrow_mut().refuse_if_read_only()?;
        Ok(MemoryUpload {
            log: self.0.clone(),
            data: Vec::new(),
            done: false,
        })
    }
    fn put_manifest(&mut self, reference: &str, media_type: &str, body: &[u8]) -> Result<Digest> {
        let mut log = self.0.borrow_mut();
        log.call(format!("manifest {reference} {media_type}"));
        log.manifest = Some(body.to_vec());
        log.manifests
            .insert(Digest::of(body).to_string(), body.to_vec());
        log.manifests.insert(reference.to_string(), body.to_vec());
        Ok(if log.misreport_manifest_digest {
            Digest::of(b"other")
        } else {
            Digest::of(body)
        })
    }
    fn get_manifest(&mut self, reference: &str) -> Result<Option<Vec<u8>>> {
        let mut log = self.0.borrow_mut();
        log.call(format!("get {reference}"));
        Ok(log.manifests.get(reference).cloned())
    }
}

/// Stores layers as written (no compression), so the blob digest is the diff ID.
pub struct MemoryUpload {
    log: Rc<RefCell<Log>>,
    data: Vec<u8>,
    done: bool,
}

impl LayerUpload for MemoryUpload {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.data.extend_from_slice(data);
        Ok(())
    }
    fn sent(&self) -> u64 {
        self.data.len() as u64
    }
    fn close(&mut self, written: &Digest) -> Result<Blob> {
        let digest = Digest::of(&self.data);
        // The pipeline says what it hashed: for bytes stored as they are, the blob's digest.
        assert_eq!(
            written, &digest,
            "close is told the digest of the bytes written"
        );
        Ok(Blob {
            digest,
            size: self.data.len() as u64,
        })
    }
    fn finish(mut self) -> Result<Blob> {
        self.done = true;
        let digest = Digest::of(&self.data);
        let size = self.data.len() as u64;
        let mut log = self.log.borrow_mut();
        if let Some(at) = log.loses_uploads.iter().position(|d| d == &digest) {
            log.loses_uploads.remove(at);
            log.call(format!("lost {digest}"));
            return Err(UploadLost(format!(
                "registry 127.0.0.1:5000 lost the upload session of a layer after taking {size} bytes of it"
            ))
            .into());
        }
        log.call(format!("layer {digest}"));
        if log.loses.as_ref() != Some(&digest) {
            log.blobs
                .insert(digest.clone(), std::mem::take(&mut self.data));
        }
        Ok(Blob { digest, size })
    }
}

impl Drop for MemoryUpload {
    fn drop(&mut self) {
        if !self.done {
            self.log.borrow_mut().call("cancelled".into());
        }
    }
}

/// Progress events, kept in order.
#[derive(Default)]
pub struct Events(pub Vec<Event>);

impl ProgressSink for Events {
    fn report(&mut self, event: Event) {
        self.0.push(event);
    }
}

impl Events {
    /// The positions of the layers reported skipped, in order.
    pub fn skipped(&self) -> Vec<u32> {
        self.0
            .iter()
            .filter_map(|e| match e {
                Event::LayerSkipped { position, .. } => Some(*position),
                _ => None,
            })
            .collect()
    }
}

/// The fixture image in a source that exports it, and the in-memory registry, cache and
/// progress its pushes go through.
pub struct Harness {
    pub f: Fixture,
    pub source: Memory,
    pub registry: MemoryRegistry,
    pub cache: MemoryCache,
    pub events: Events,
}

impl Default for Harness {
    fn default() -> Self {
        Self::of(fixture())
    }
}

impl Harness {
    /// The fixture in Docker's containerd store: its ID is the own manifest's digest.
    pub fn containerd() -> (Self, Vec<u8>) {
        let f = fixture();
        let (export, own) = containerd_export(&f);
        let image = ImageSummary {
            id: Digest::of(&own),
            ..summary(&f)
        };
        let mut h = Self::of(f);
        h.source = Memory::new(export, image);
        (h, own)
    }

    /// The two-platform image of `two_platform_export` in Docker's containerd store, which says
    /// its ID names a manifest or index and reports the amd64 image. Returns the harness, the
    /// index, and each platform's manifest.
    pub fn two_platforms(arm_held: bool) -> (Self, Vec<u8>, [Vec<u8>; 2]) {
        let f = fixture();
        let (export, index, manifests) = two_platform_export(arm_held);
        let image = ImageSummary {
            id: Digest::of(&index),
            id_kind: IdKind::Manifest,
            ..summary(&f)
        };
        let mut h = Self::of(f);
        h.source = Memory::new(export, image);
        (h, index, manifests)
    }

    pub fn of(f: Fixture) -> Self {
        Self {
            source: Memory::new(classic_export(&f), summary(&f)),
            f,
            registry: MemoryRegistry::default(),
            cache: MemoryCache::default(),
            events: Events::default(),
        }
    }
}

/// A file in memory that hands out at most 1000 bytes per read, as a host may.
pub struct MemoryFile(pub Vec<u8>);

impl RandomAccess for MemoryFile {
    fn size(&self) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read_at(&self, offset: u64, max: usize) -> Result<Vec<u8>> {
        let start = (offset as usize).min(self.0.len());
        let end = (start + max.min(1000)).min(self.0.len());
        Ok(self.0[start..end].to_vec())
    }
}
