//! A `docker save` tarball on disk as an image source: `docker-archive:PATH[:REF]`.
//!
//! The host lends random access to exactly the file the user named. The tar is indexed by its
//! headers alone (file contents are skipped by seeking, never read), `manifest.json` picks the
//! image (REF is needed when there are several), and its config gives the same summary the
//! daemon's inspect does: the ID is the config's digest, the diff IDs its `rootfs`. The export
//! is then a `docker save` stream of that one image, cut from the file: its layers, its config
//! and a `manifest.json` naming only it, which the same reader as the daemon's export
//! (`save.rs`) verifies layer by layer. Layers of other images in the file are never read.
//!
//! A Docker >= 25 tarball of a multi-platform image (containerd store) names, in `index.json`,
//! the image's index, and in `manifest.json` only one platform's image. When the image chosen
//! is named by such an index, the image is that index: its platforms, and what the file holds
//! of each, are read from the small blobs before any upload, and each platform's export is cut
//! from the file on its own.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

use anyhow::{anyhow, bail, Context, Result};

use crate::config;
use crate::digest::Digest;
use crate::manifest::{DOCKER_MANIFEST_LIST, OCI_INDEX};
use crate::model::{Blob, IdKind, ImageSummary, SourceIndex, Within};
use crate::platforms::{self, Holdings};
use crate::ports::{ImageSource, RandomAccess};
use crate::savefile::{
    entry_path, follow_links, platform_export, take_export, CutExport, Export, SaveManifest,
    SaveWriter,
};

/// How many entries an archive may have: a bound on the index's memory.
const ENTRY_LIMIT: usize = 1 << 20;
/// The most bytes `manifest.json` or a config may have.
const METADATA_LIMIT: u64 = 16 << 20;
/// The largest blob looked at as a possible OCI manifest.
const OCI_MANIFEST_LIMIT: u64 = 1 << 20;
/// Bytes fetched per crossing while reading headers: several small entries at a time.
const HEADER_FETCH: usize = 64 << 10;

/// One `docker save` tarball, opened for one image in it.
pub struct Archive<F> {
    file: Rc<F>,
    /// The path, for messages.
    path: String,
    /// The image the user asked for (`name:tag`, or `@N` for the N-th of manifest.json).
    reference: Option<String>,
    /// What `inspect` found, for `export`.
    chosen: Option<CutExport>,
    /// The multi-platform image `inspect` found, and the tar's entries its exports are cut from.
    multi: Option<(SourceIndex, HashMap<String, Entry>)>,
    /// The digest of the `manifest.json` `inspect` read: what provenance names the file by.
    listing: Option<Digest>,
}

/// The entries of `index.json` or an index, as far as finding an image's index needs.
#[derive(serde::Deserialize)]
struct Listing {
    #[serde(default)]
    manifests: Vec<Listed>,
}

#[derive(serde::Deserialize)]
struct Listed {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

/// An entry of the tarball, by its normalized path.
#[derive(Clone, Debug)]
enum Entry {
    File { offset: u64, size: u64 },
    Link(String),
}

impl<F: RandomAccess> Archive<F> {
    pub fn new(file: F, path: &str, reference: Option<&str>) -> Self {
        Self {
            file: Rc::new(file),
            path: path.to_string(),
            reference: reference.map(str::to_string),
            chosen: None,
            multi: None,
            listing: None,
        }
    }

    /// The digest of the `manifest.json` the last `inspect` read.
    pub fn manifest_json_digest(&self) -> Option<&Digest> {
        self.listing.as_ref()
    }

    /// The file it reads.
    pub fn file(&self) -> &F {
        &self.file
    }

    /// The small blob `digest` (at most `OCI_MANIFEST_LIMIT` bytes), checked against it; `None`
    /// when the archive holds no such blob, or a larger one.
    fn small_blob(
        &self,
        index: &HashMap<String, Entry>,
        digest: &Digest,
    ) -> Result<Option<Vec<u8>>> {
        let path = format!("blobs/sha256/{}", digest.hex());
        match index.get(&path) {
            Some(Entry::File { size, .. }) if *size <= OCI_MANIFEST_LIMIT => {}
            _ => return Ok(None),
        }
        let bytes = self.read_small(index, &path)?;
        if &Digest::of(&bytes) != digest {
            bail!(
                "digest mismatch: archive {}: {path} hashes to {}",
                self.path,
                Digest::of(&bytes)
            );
        }
        Ok(Some(bytes))
    }

    /// The index, among those `index.json` names, that names a manifest of the image whose
    /// config is `config`: what Docker >= 25 writes for a multi-platform image.
    fn index_naming(
        &self,
        index: &HashMap<String, Entry>,
        config: &Digest,
    ) -> Result<Option<Digest>> {
        if !index.contains_key("index.json") {
            return Ok(None);
        }
        let listing = |bytes: &[u8]| serde_json::from_slice::<Listing>(bytes).ok();
        let top = listing(&self.read_small(index, "index.json")?)
            .with_context(|| format!("archive {}: index.json is not an image index", self.path))?;
        for entry in top.manifests {
            if entry.media_type != OCI_INDEX && entry.media_type != DOCKER_MANIFEST_LIST {
                continue;
            }
            let digest = Digest::parse(&entry.digest, "an index.json entry's digest")?;
            let Some(children) = self.small_blob(index, &digest)?.and_then(|b| listing(&b)) else {
                continue;
            };
            for child in children.manifests {
                let Ok(child) = Digest::parse(&child.digest, "an index entry's digest") else {
                    continue;
                };
                let Some(manifest) = self.small_blob(index, &child)? else {
                    continue;
                };
                let json = serde_json::from_slice::<serde_json::Value>(&manifest);
                if json.is_ok_and(|m| m["config"]["digest"] == config.as_str()) {
                    return Ok(Some(digest));
                }
            }
        }
        Ok(None)
    }

    /// Every entry of the tar, from its headers.
    fn index(&self) -> Result<HashMap<String, Entry>> {
        let file_size = self.file.size()?;
        let reader = Reader::new(self.file.clone(), file_size);
        let mut archive = tar::Archive::new(reader);
        let mut index = HashMap::new();
        let bad = |e: io::Error| anyhow::anyhow!("archive {} is not a tar file: {e}", self.path);
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            if index.len() >= ENTRY_LIMIT {
                bail!("archive {} has more than {ENTRY_LIMIT} entries", self.path);
            }
            let (name, link) = entry_path(&entry);
            if let Some(target) = link {
                index.insert(name, Entry::Link(target));
            } else if entry.header().entry_type().is_file() {
                let (offset, size) = (entry.raw_file_position(), entry.size());
                if offset + size > file_size {
                    bail!(
                        "archive {} is truncated: {name} ends past the end of the file",
                        self.path
                    );
                }
                index.insert(name, Entry::File { offset, size });
            }
        }
        Ok(index)
    }

    /// The stored file a path names, following links.
    fn resolve(&self, index: &HashMap<String, Entry>, path: &str) -> Result<(String, u64, u64)> {
        let link = |p: &str| match index.get(p) {
            Some(Entry::Link(target)) => Some(target.as_str()),
            _ => None,
        };
        let path =
            follow_links(path, link).map_err(|e| anyhow!("archive {}: the {e}", self.path))?;
        match index.get(&path) {
            Some(Entry::File { offset, size }) => Ok((path, *offset, *size)),
            _ => bail!("archive {} has no {path}", self.path),
        }
    }

    /// A small file's bytes.
    fn read_small(&self, index: &HashMap<String, Entry>, path: &str) -> Result<Vec<u8>> {
        let (path, offset, size) = self.resolve(index, path)?;
        if size > METADATA_LIMIT {
            bail!(
                "archive {}: {path} has {size} bytes, more than metadata may",
                self.path
            );
        }
        let mut bytes = Vec::with_capacity(size as usize);
        while (bytes.len() as u64) < size {
            let chunk = self.file.read_at(
                offset + bytes.len() as u64,
                (size - bytes.len() as u64) as usize,
            )?;
            if chunk.is_empty() {
                bail!("archive {} ended inside {path}", self.path);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// The OCI manifests among the archive's small blobs whose config is `config`.
    fn manifests_of(&self, index: &HashMap<String, Entry>, config: &Digest) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for (path, entry) in index {
            let small = matches!(entry, Entry::File { size, .. } if *size <= OCI_MANIFEST_LIMIT);
            if !small || !path.starts_with("blobs/sha256/") {
                continue;
            }
            let json = serde_json::from_slice::<serde_json::Value>(&self.read_small(index, path)?);
            if json.is_ok_and(|m| m["config"]["digest"] == config.as_str()) {
                found.push(path.clone());
            }
        }
        found.sort();
        Ok(found)
    }

    /// The `manifest.json` entry of the image the user asked for.
    fn choose(&self, manifests: Vec<SaveManifest>) -> Result<SaveManifest> {
        let name = |m: &SaveManifest| match m.repo_tags.as_deref() {
            Some([first, ..]) => first.clone(),
            _ => format!("untagged {}", m.config),
        };
        let names = || {
            manifests
                .iter()
                .enumerate()
                .map(|(i, m)| format!("@{i} {}", name(m)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let position = match self.reference.as_deref() {
            None if manifests.len() == 1 => 0,
            None if manifests.is_empty() => {
                bail!("archive {} holds no image (its manifest.json is empty)", self.path)
            }
            None => bail!(
                "archive {} holds {} images ({}): name one, as docker-archive:{}:NAME:TAG or docker-archive:{}:@N",
                self.path,
                manifests.len(),
                names(),
                self.path,
                self.path
            ),
            Some(reference) => {
                let wanted = |tag: &str| {
                    tag == reference
                        || (!reference.contains(':') && tag == format!("{reference}:latest"))
                };
                let by_index = reference
                    .strip_prefix('@')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n < manifests.len());
                let by_tag = || {
                    manifests.iter().position(|m| {
                        m.repo_tags
                            .as_deref()
                            .unwrap_or_default()
                            .iter()
                            .any(|t| wanted(t))
                    })
                };
                by_index.or_else(by_tag).with_context(|| {
                    format!(
                        "archive {} has no image {reference}; it holds {}",
                        self.path,
                        names()
                    )
                })?
            }
        };
        Ok(manifests
            .into_iter()
            .nth(position)
            .expect("position checked"))
    }
}

impl<F: RandomAccess + 'static> ImageSource for Archive<F> {
    type Export = Export;

    /// Indexes the archive and summarizes the image it names; `image` is the source as the
    /// user wrote it, which this archive was opened for.
    fn inspect(&mut self, _image: &str) -> Result<ImageSummary> {
        let index = self.index()?;
        let listing = self
            .read_small(&index, "manifest.json")
            .with_context(|| format!("archive {} is not a docker save archive", self.path))?;
        self.listing = Some(Digest::of(&listing));
        let manifests: Vec<SaveManifest> = serde_json::from_slice(&listing).with_context(|| {
            format!(
                "archive {}: manifest.json is not a docker save manifest",
                self.path
            )
        })?;
        let manifest = self.choose(manifests)?;
        let config = self.read_small(&index, &manifest.config)?;
        let diff_ids = config::diff_ids(&config, || {
            format!(
                "archive {}: config {} has no valid rootfs.diff_ids",
                self.path, manifest.config
            )
        })?;
        if let Some(id) = self.index_naming(&index, &Digest::of(&config))? {
            let label = format!("archive {}", self.path);
            let blobs = TarBlobs {
                archive: self,
                index: &index,
            };
            let multi = platforms::index_of(&id, &blobs, &label)?
                .with_context(|| format!("{label}: {id} is not an index"))?;
            self.multi = Some((multi, index));
            // The platforms' own summaries come from the index; this one only names it.
            return Ok(ImageSummary {
                id,
                diff_ids,
                size: 0,
                platform: None,
                id_kind: IdKind::Manifest,
                within: None,
                labels: Default::default(),
            });
        }
        let cut = self.cut(&index, manifest, config, diff_ids)?;
        let summary = cut.summary.clone();
        self.chosen = Some(cut);
        Ok(summary)
    }

    fn export(&mut self, image: &str) -> Result<Export> {
        let label = format!("archive {}", self.path);
        take_export(&mut self.chosen, image, "archive", &label)
    }

    fn export_platform(&mut self, within: &Within) -> Result<Export> {
        let label = format!("archive {}", self.path);
        let (multi, index) = self
            .multi
            .as_ref()
            .with_context(|| format!("{label} was exported before it was inspected"))?;
        let blobs = TarBlobs {
            archive: self,
            index,
        };
        let small = |d: &Digest| {
            blobs
                .small(d)?
                .with_context(|| format!("{label} has no blob {d}"))
        };
        let layer = |blob: &Blob| -> Result<(Rc<dyn RandomAccess>, u64)> {
            let (_, offset, _) =
                self.resolve(index, &format!("blobs/sha256/{}", blob.digest.hex()))?;
            Ok((self.file.clone(), offset))
        };
        let parts = platform_export(within, &multi.own.media_type, small, layer)?;
        Ok(Export::new(&label, parts))
    }

    fn inspected_index(&mut self) -> Option<SourceIndex> {
        self.multi.as_ref().map(|(multi, _)| multi.clone())
    }
}

/// The blobs of an archive, by digest, from its entries.
struct TarBlobs<'a, F> {
    archive: &'a Archive<F>,
    index: &'a HashMap<String, Entry>,
}

impl<F: RandomAccess> Holdings for TarBlobs<'_, F> {
    fn small(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        self.archive.small_blob(self.index, digest)
    }

    fn holds(&self, blob: &Blob) -> Result<bool> {
        let path = format!("blobs/sha256/{}", blob.digest.hex());
        Ok(matches!(self.index.get(&path), Some(Entry::File { size, .. }) if *size == blob.size))
    }
}

impl<F: RandomAccess + 'static> Archive<F> {
    /// The image's own export: each distinct layer once, in image order, then the config,
    /// then a manifest.json that names only this image, all under resolved paths.
    fn cut(
        &self,
        index: &HashMap<String, Entry>,
        manifest: SaveManifest,
        config: Vec<u8>,
        diff_ids: Vec<Digest>,
    ) -> Result<CutExport> {
        let mut stream = SaveWriter::default();
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for layer in &manifest.layers {
            let (path, offset, length) = self.resolve(index, layer)?;
            stream.layer(&path, self.file.clone(), offset, length)?;
            layers.push(path);
        }
        let (config_path, _, _) = self.resolve(index, &manifest.config)?;
        // Layers held compressed (Docker >= 25's containerd store) are named by their blob
        // digest, not a diff ID: the OCI manifest that gives their media types goes along.
        let compressed = layers.iter().zip(&diff_ids).any(|(path, diff_id)| {
            path != &format!("blobs/sha256/{}", diff_id.hex()) && path.starts_with("blobs/sha256/")
        });
        if compressed {
            for path in self.manifests_of(index, &Digest::of(&config))? {
                let bytes = self.read_small(index, &path)?;
                stream.file(&path, bytes)?;
            }
        }
        let summary = ImageSummary {
            id: Digest::of(&config),
            diff_ids,
            size: stream.size(),
            // From the config itself: the tarball's word is the config.
            platform: config::platform(&config).ok(),
            id_kind: IdKind::Config,
            within: None,
            labels: config::labels(&config)
                .with_context(|| format!("archive {}: config {}", self.path, manifest.config))?,
        };
        stream.file(&config_path, config)?;
        let parts = stream.finish(&config_path, manifest.repo_tags.unwrap_or_default())?;
        Ok(CutExport { summary, parts })
    }
}

/// `Read + Seek` over the archive for the tar crate's index pass: reads go through a small
/// buffer, and seeks (over file contents) cost nothing.
struct Reader<F> {
    file: Rc<F>,
    size: u64,
    pos: u64,
    buffer: Vec<u8>,
    buffer_at: u64,
}

impl<F: RandomAccess> Reader<F> {
    fn new(file: Rc<F>, size: u64) -> Self {
        Self {
            file,
            size,
            pos: 0,
            buffer: Vec::new(),
            buffer_at: 0,
        }
    }
}

impl<F: RandomAccess> Read for Reader<F> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let end = self.buffer_at + self.buffer.len() as u64;
        if self.pos < self.buffer_at || self.pos >= end {
            if self.pos >= self.size {
                return Ok(0);
            }
            self.buffer = self
                .file
                .read_at(self.pos, HEADER_FETCH.max(out.len()))
                .map_err(io::Error::other)?;
            self.buffer_at = self.pos;
            if self.buffer.is_empty() {
                return Ok(0);
            }
        }
        let start = (self.pos - self.buffer_at) as usize;
        let n = out.len().min(self.buffer.len() - start);
        out[..n].copy_from_slice(&self.buffer[start..start + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<F: RandomAccess> Seek for Reader<F> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(n) => self.pos.checked_add_signed(n),
            SeekFrom::End(n) => self.size.checked_add_signed(n),
        };
        self.pos = pos.ok_or_else(|| io::Error::other("seek before the start of the archive"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::ReadExport;
    use crate::testing::{classic_export, fixture, tar, Hashing, Item, MemoryFile};

    /// Inspects and exports one image of an archive, and reads the export back as the
    /// pipeline does; returns the summary and the verified layers' diff IDs.
    fn push(bytes: Vec<u8>, reference: Option<&str>) -> Result<(ImageSummary, Vec<Digest>)> {
        let mut archive = Archive::new(MemoryFile(bytes), "test.tar", reference);
        let summary = archive.inspect("docker-archive:test.tar")?;
        let saved = archive.read_export(&summary, &mut Hashing::new(&summary))?;
        Ok((
            summary,
            saved.layers.into_iter().map(|l| l.diff_id).collect(),
        ))
    }

    #[test]
    fn a_classic_archive_gives_the_daemons_summary() {
        let f = fixture();
        let (summary, diff_ids) = push(classic_export(&f), None).unwrap();
        assert_eq!(summary.id, f.id);
        assert_eq!(summary.diff_ids, f.diff_ids);
        assert_eq!(summary.size, 73_000);
        assert_eq!(diff_ids, f.diff_ids);
    }

    /// Two images: the fixture (`app:1`, podman's dialect with symlinked layers) and another
    /// (`other:2`, whose layer is not the fixture's).
    fn two_images() -> Vec<u8> {
        let f = fixture();
        let other_layer = vec![9u8; 5000];
        let other_config = serde_json::to_vec(&serde_json::json!({
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&other_layer).as_str()]},
        }))
        .unwrap();
        let (a, b) = (
            format!("{}.tar", f.diff_ids[0].hex()),
            format!("{}.tar", f.diff_ids[1].hex()),
        );
        let config = format!("{}.json", f.id.hex());
        let other_config_name = format!("{}.json", Digest::of(&other_config).hex());
        let manifest = serde_json::to_vec(&serde_json::json!([
            {"Config": config, "RepoTags": ["app:1"], "Layers": ["v1a/layer.tar", "v1b/layer.tar"]},
            {"Config": other_config_name, "RepoTags": ["other:2"], "Layers": ["v1c/layer.tar"]},
        ]))
        .unwrap();
        tar(&[
            Item::File(&a, &f.layers[0]),
            Item::File(&b, &f.layers[1]),
            Item::File("v1c/layer.tar", &other_layer),
            Item::Symlink("v1a/layer.tar", &format!("../{a}")),
            Item::Symlink("v1b/layer.tar", &format!("../{b}")),
            Item::File(&config, &f.config),
            Item::File(&other_config_name, &other_config),
            Item::File("manifest.json", &manifest),
        ])
    }

    #[test]
    fn inspect_remembers_the_digest_of_the_manifest_json_it_read() {
        let manifest = serde_json::to_vec(&serde_json::json!([
            {"Config": "c.json", "RepoTags": ["app:1"], "Layers": []},
        ]))
        .unwrap();
        let bytes = tar(&[Item::File("manifest.json", &manifest)]);
        let mut archive = Archive::new(MemoryFile(bytes), "test.tar", None);
        assert_eq!(archive.manifest_json_digest(), None);
        // The config is missing, so inspect fails, but after reading manifest.json.
        assert!(archive.inspect("docker-archive:test.tar").is_err());
        assert_eq!(archive.manifest_json_digest(), Some(&Digest::of(&manifest)));
        let bytes = two_images();
        let mut archive = Archive::new(MemoryFile(bytes), "test.tar", Some("other:2"));
        archive.inspect("docker-archive:test.tar:other:2").unwrap();
        assert!(archive.manifest_json_digest().is_some());
    }

    #[test]
    fn several_images_need_a_reference_and_only_the_named_one_is_read() {
        let f = fixture();
        let err = push(two_images(), None).unwrap_err().to_string();
        assert!(
            err.contains("holds 2 images") && err.contains("app:1") && err.contains("other:2"),
            "{err}"
        );
        let (summary, diff_ids) = push(two_images(), Some("app:1")).unwrap();
        assert_eq!(summary.id, f.id);
        assert_eq!(diff_ids, f.diff_ids);
        let (by_index, _) = push(two_images(), Some("@0")).unwrap();
        assert_eq!(by_index, summary);
        let (other, diff_ids) = push(two_images(), Some("other:2")).unwrap();
        assert_eq!(other.diff_ids, diff_ids);
        assert_eq!(diff_ids, vec![Digest::of(&[9u8; 5000])]);
        let err = push(two_images(), Some("app:2")).unwrap_err().to_string();
        assert!(
            err.contains("no image app:2") && err.contains("@1 other:2"),
            "{err}"
        );
    }

    #[test]
    fn the_oci_dialect_and_a_tag_without_latest() {
        let f = fixture();
        let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": blob(&f.id), "RepoTags": ["app:latest"],
            "Layers": [blob(&f.diff_ids[0]), blob(&f.diff_ids[1])],
        }]))
        .unwrap();
        let archive = tar(&[
            Item::File("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}"),
            Item::File(&blob(&f.diff_ids[0]), &f.layers[0]),
            Item::File(&blob(&f.diff_ids[1]), &f.layers[1]),
            Item::File(&blob(&f.id), &f.config),
            Item::File("index.json", b"{}"),
            Item::File("manifest.json", &manifest),
        ]);
        let (summary, diff_ids) = push(archive, Some("app")).unwrap();
        assert_eq!(summary.id, f.id);
        assert_eq!(diff_ids, f.diff_ids);
    }

    #[test]
    fn a_tampered_layer_or_a_cut_archive_fails() {
        let f = fixture();
        let mut archive = classic_export(&f);
        let at = archive
            .windows(64)
            .position(|w| w.iter().all(|&b| b == 2))
            .unwrap();
        archive[at + 10] ^= 0xff;
        let err = format!("{:#}", push(archive, None).unwrap_err());
        assert!(err.contains("digest mismatch"), "{err}");

        let whole = classic_export(&f);
        let err = format!("{:#}", push(whole[..20_000].to_vec(), None).unwrap_err());
        assert!(err.contains("test.tar"), "{err}");
        let err = format!(
            "{:#}",
            push(b"not a tar at all".repeat(100), None).unwrap_err()
        );
        assert!(err.contains("test.tar"), "{err}");
    }
}
