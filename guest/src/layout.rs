//! An OCI image layout directory as an image source: `oci:DIR[:TAG]`.
//!
//! The host lends reads of `index.json` and of blobs by digest in exactly the directory the user
//! named. `index.json` picks the manifest (by its `org.opencontainers.image.ref.name`; TAG is
//! needed when there are several), whose bytes must hash to the digest the index gives, and
//! the config must hash to the digest the manifest gives; the config's `rootfs` gives the diff
//! IDs. The export is then the image in Docker >= 25's `docker save` dialect, cut from the
//! blobs: the reader (`save.rs`) stores compressed layers as they are, each checked against its
//! digest, and encodes uncompressed ones (named by their diff IDs) as a daemon's layers are.
//!
//! An entry that is an index (OCI image index or Docker manifest list) is a multi-platform
//! image: each manifest it names is read with its config, and each layer looked for, before any
//! upload; each platform's export is then cut from its blobs on its own.

use std::rc::Rc;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::config;
use crate::digest::Digest;
use crate::manifest::{DOCKER_MANIFEST_LIST, OCI_INDEX};
use crate::model::{Blob, IdKind, ImageSummary, SourceIndex, StatedDescriptor, Within};
use crate::platforms::{self, Holdings};
use crate::ports::{ImageSource, LayoutFiles, RandomAccess};
use crate::savefile::{platform_export, take_export, CutExport, Export, SaveWriter};

/// The most bytes `index.json`, a manifest or a config may have.
const METADATA_LIMIT: u64 = 16 << 20;
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// One layout directory, opened for one image in it.
pub struct Layout<F> {
    files: Rc<F>,
    /// The directory, for messages.
    path: String,
    tag: Option<String>,
    chosen: Option<CutExport>,
    /// The multi-platform image `inspect` found.
    multi: Option<SourceIndex>,
    /// The digest of the `index.json` `inspect` read: what provenance names the layout by.
    listing: Option<Digest>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<StatedDescriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: StatedDescriptor,
    layers: Vec<StatedDescriptor>,
}

/// One blob of the layout, as a file the export reads ranges of.
struct BlobFile<F> {
    files: Rc<F>,
    digest: Digest,
    size: u64,
}

impl<F: LayoutFiles> RandomAccess for BlobFile<F> {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }
    fn read_at(&self, offset: u64, max: usize) -> Result<Vec<u8>> {
        self.files.read_blob(&self.digest, offset, max)
    }
}

impl<F: LayoutFiles + 'static> Layout<F> {
    pub fn new(files: F, path: &str, tag: Option<&str>) -> Self {
        Self {
            files: Rc::new(files),
            path: path.to_string(),
            tag: tag.map(str::to_string),
            chosen: None,
            multi: None,
            listing: None,
        }
    }

    /// The digest of the `index.json` the last `inspect` read.
    pub fn index_json_digest(&self) -> Option<&Digest> {
        self.listing.as_ref()
    }

    /// The directory it reads.
    pub fn files(&self) -> &F {
        &self.files
    }

    /// A small blob, whole, checked against its digest.
    fn read_verified(
        &self,
        descriptor: &StatedDescriptor,
        what: &str,
    ) -> Result<(Digest, Vec<u8>)> {
        let digest = Digest::parse(&descriptor.digest, what)?;
        if descriptor.size > METADATA_LIMIT {
            bail!(
                "OCI layout {}: {what} {digest} has {} bytes, more than metadata may",
                self.path,
                descriptor.size
            );
        }
        let mut bytes = Vec::with_capacity(descriptor.size as usize);
        while (bytes.len() as u64) < descriptor.size {
            let left = (descriptor.size - bytes.len() as u64) as usize;
            let chunk = self.files.read_blob(&digest, bytes.len() as u64, left)?;
            if chunk.is_empty() {
                break;
            }
            bytes.extend_from_slice(&chunk[..chunk.len().min(left)]);
        }
        let actual = Digest::of(&bytes);
        if actual != digest || bytes.len() as u64 != descriptor.size {
            bail!(
                "digest mismatch: OCI layout {}: {what} {digest} ({} bytes) holds {} bytes hashing to {actual}",
                self.path,
                descriptor.size,
                bytes.len()
            );
        }
        Ok((digest, bytes))
    }

    /// The index entry of the image the user asked for.
    fn choose(&self, index: Index) -> Result<StatedDescriptor> {
        let names = || {
            index
                .manifests
                .iter()
                .map(|m| {
                    m.annotations
                        .get(REF_NAME)
                        .cloned()
                        .unwrap_or_else(|| m.digest.clone())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let found = match &self.tag {
            Some(tag) => index
                .manifests
                .iter()
                .position(|m| m.annotations.get(REF_NAME) == Some(tag))
                .with_context(|| {
                    format!(
                        "OCI layout {} has no image {tag}; it holds {}",
                        self.path,
                        names()
                    )
                })?,
            None if index.manifests.len() == 1 => 0,
            None => bail!(
                "OCI layout {} holds {} images ({}): name one, as oci:{}:TAG",
                self.path,
                index.manifests.len(),
                names(),
                self.path
            ),
        };
        let mut manifests = index.manifests;
        Ok(manifests.swap_remove(found))
    }
}

impl<F: LayoutFiles + 'static> ImageSource for Layout<F> {
    type Export = Export;

    /// Reads the index, the manifest and the config; `image` is the source as the user wrote it.
    fn inspect(&mut self, _image: &str) -> Result<ImageSummary> {
        let listing = self.files.index()?;
        self.listing = Some(Digest::of(&listing));
        let index: Index = serde_json::from_slice(&listing).with_context(|| {
            format!("OCI layout {}: index.json is not an image index", self.path)
        })?;
        let descriptor = self.choose(index)?;
        if descriptor.media_type == OCI_INDEX || descriptor.media_type == DOCKER_MANIFEST_LIST {
            let (id, _) = self.read_verified(&descriptor, "index")?;
            let label = format!("OCI layout {}", self.path);
            let multi = platforms::index_of(&id, &LayoutBlobs(&*self.files), &label)?
                .with_context(|| format!("{label}: {id} is not an index"))?;
            self.multi = Some(multi);
            // The platforms' own summaries come from the index; this one only names it.
            return Ok(ImageSummary {
                id,
                diff_ids: Vec::new(),
                size: 0,
                platform: None,
                id_kind: IdKind::Manifest,
                within: None,
                labels: Default::default(),
            });
        }
        if !MANIFEST_TYPES.contains(&descriptor.media_type.as_str()) {
            bail!(
                "OCI layout {}: {} is a {}, neither an image manifest nor an index",
                self.path,
                descriptor.digest,
                descriptor.media_type
            );
        }
        let (manifest_digest, manifest_bytes) = self.read_verified(&descriptor, "manifest")?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes).with_context(|| {
            format!(
                "OCI layout {}: manifest {manifest_digest} is not an image manifest",
                self.path
            )
        })?;
        let (config_digest, config) = self.read_verified(&manifest.config, "config")?;
        let diff_ids = config::diff_ids(&config, || {
            format!(
                "OCI layout {}: config {config_digest} has no valid rootfs.diff_ids",
                self.path
            )
        })?;

        // Docker >= 25's dialect: each distinct layer blob once, the config, the manifest
        // (which gives compressed layers their media types), then manifest.json.
        let blob_path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let mut stream = SaveWriter::default();
        for layer in &manifest.layers {
            let digest = Digest::parse(&layer.digest, "a layer digest")?;
            let file = Rc::new(BlobFile {
                files: self.files.clone(),
                digest: digest.clone(),
                size: layer.size,
            });
            stream.layer(&blob_path(&digest), file, 0, layer.size)?;
        }
        let summary = ImageSummary {
            id: config_digest.clone(),
            diff_ids,
            size: stream.size(),
            platform: config::platform(&config).ok(),
            id_kind: IdKind::Config,
            within: None,
            labels: config::labels(&config)
                .with_context(|| format!("OCI layout {}: config {config_digest}", self.path))?,
        };
        stream.file(&blob_path(&config_digest), config)?;
        stream.file(&blob_path(&manifest_digest), manifest_bytes)?;
        let parts = stream.finish(&blob_path(&config_digest), Vec::new())?;
        self.chosen = Some(CutExport {
            summary: summary.clone(),
            parts,
        });
        Ok(summary)
    }

    fn export(&mut self, image: &str) -> Result<Export> {
        let label = format!("OCI layout {}", self.path);
        take_export(&mut self.chosen, image, "layout", &label)
    }

    fn export_platform(&mut self, within: &Within) -> Result<Export> {
        let label = format!("OCI layout {}", self.path);
        let multi = self
            .multi
            .as_ref()
            .with_context(|| format!("{label} was exported before it was inspected"))?;
        let blobs = LayoutBlobs(&*self.files);
        let small = |d: &Digest| {
            blobs
                .small(d)?
                .with_context(|| format!("{label} has no blob {d}"))
        };
        let layer = |blob: &Blob| -> Result<(Rc<dyn RandomAccess>, u64)> {
            let file = BlobFile {
                files: self.files.clone(),
                digest: blob.digest.clone(),
                size: blob.size,
            };
            Ok((Rc::new(file), 0))
        };
        let parts = platform_export(within, &multi.own.media_type, small, layer)?;
        Ok(Export::new(&label, parts))
    }

    fn inspected_index(&mut self) -> Option<SourceIndex> {
        self.multi.clone()
    }
}

/// The blobs of a layout, by digest. The host's reads cannot say a blob is absent other than
/// by failing, so a blob that cannot be read counts as one the layout lacks: the platform it
/// belongs to is then refused, named, before any upload.
struct LayoutBlobs<'a, F>(&'a F);

impl<F: LayoutFiles> Holdings for LayoutBlobs<'_, F> {
    fn small(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let mut bytes = Vec::new();
        loop {
            let Ok(chunk) = self.0.read_blob(digest, bytes.len() as u64, 1 << 20) else {
                return Ok(None);
            };
            if chunk.is_empty() {
                break;
            }
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > METADATA_LIMIT {
                return Ok(None);
            }
        }
        if &Digest::of(&bytes) != digest {
            bail!(
                "digest mismatch: blob {digest} of the OCI layout hashes to {}",
                Digest::of(&bytes)
            );
        }
        Ok(Some(bytes))
    }

    fn holds(&self, blob: &Blob) -> Result<bool> {
        // Its last byte is there, and nothing after it.
        let last = match blob.size {
            0 => Ok(Vec::new()),
            size => self.0.read_blob(&blob.digest, size - 1, 1),
        };
        let after = self.0.read_blob(&blob.digest, blob.size, 1);
        Ok(
            matches!((last, after), (Ok(l), Ok(a)) if l.len() == blob.size.min(1) as usize && a.is_empty()),
        )
    }
}
