//! A `docker save` tarball on disk as an image source: `docker-archive:PATH[:REF]`.
//!
//! The host lends random access to exactly the file the user named. The tar is indexed by its
//! headers alone (file contents are skipped by seeking, never read), `manifest.json` picks the
//! image (REF is needed when there are several), and its config gives the same summary the
//! daemon's inspect does: the ID is the config's digest, the diff IDs its `rootfs`. The export
//! is then a `docker save` stream of that one image, cut from the file: its layers, its config
//! and a `manifest.json` naming only it, which the same reader as the daemon's export
//! (`save.rs`) verifies layer by layer. Layers of other images in the file are never read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::digest::Digest;
use crate::push::ImageSource;
use crate::save::{join_link, normalize, ImageSummary};

/// How many entries an archive may have: a bound on the index's memory.
const ENTRY_LIMIT: usize = 1 << 20;
/// The most bytes `manifest.json` or a config may have.
const METADATA_LIMIT: u64 = 16 << 20;
/// The largest blob looked at as a possible OCI manifest.
const OCI_MANIFEST_LIMIT: u64 = 1 << 20;
/// How many symlinks deep a path may be.
const LINK_DEPTH_LIMIT: usize = 8;
/// Bytes fetched per crossing while reading headers: several small entries at a time.
const HEADER_FETCH: usize = 64 << 10;

/// Random access to a file the host opened.
pub trait RandomAccess {
    /// The file's size in bytes.
    fn size(&self) -> Result<u64>;
    /// Up to `max` bytes from `offset` (the host may return fewer); none only at or past the
    /// end of the file.
    fn read_at(&self, offset: u64, max: usize) -> Result<Vec<u8>>;
}

/// One `docker save` tarball, opened for one image in it.
pub struct Archive<F> {
    file: Rc<F>,
    /// The path, for messages.
    path: String,
    /// The image the user asked for (`name:tag`, or `@N` for the N-th of manifest.json).
    reference: Option<String>,
    /// What `inspect` found, for `export`.
    chosen: Option<Chosen>,
}

/// The image `inspect` picked: its summary and the pieces of its own export.
struct Chosen {
    summary: ImageSummary,
    parts: Vec<Part>,
}

/// An entry of the tarball, by its normalized path.
#[derive(Clone, Debug)]
enum Entry {
    File { offset: u64, size: u64 },
    Link(String),
}

/// One entry of `manifest.json`.
#[derive(Deserialize)]
struct SaveManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

impl<F: RandomAccess> Archive<F> {
    pub fn new(file: F, path: &str, reference: Option<&str>) -> Self {
        Self {
            file: Rc::new(file),
            path: path.to_string(),
            reference: reference.map(str::to_string),
            chosen: None,
        }
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
            let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
            let kind = entry.header().entry_type();
            let target = || {
                entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default()
            };
            if kind.is_symlink() {
                index.insert(name.clone(), Entry::Link(join_link(&name, &target())));
            } else if kind.is_hard_link() {
                index.insert(name, Entry::Link(normalize(&target())));
            } else if kind.is_file() {
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
        let mut path = normalize(path);
        for _ in 0..LINK_DEPTH_LIMIT {
            match index.get(&path) {
                Some(Entry::File { offset, size }) => return Ok((path, *offset, *size)),
                Some(Entry::Link(target)) => path = target.clone(),
                None => bail!("archive {} has no {path}", self.path),
            }
        }
        bail!(
            "archive {}: the link {path} is nested more than {LINK_DEPTH_LIMIT} deep",
            self.path
        )
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
        let manifests: Vec<SaveManifest> = serde_json::from_slice(
            &self
                .read_small(&index, "manifest.json")
                .with_context(|| format!("archive {} is not a docker save archive", self.path))?,
        )
        .with_context(|| {
            format!(
                "archive {}: manifest.json is not a docker save manifest",
                self.path
            )
        })?;
        let manifest = self.choose(manifests)?;
        let config = self.read_small(&index, &manifest.config)?;
        let parsed: ConfigRootfs = serde_json::from_slice(&config).with_context(|| {
            format!(
                "archive {}: config {} has no valid rootfs.diff_ids",
                self.path, manifest.config
            )
        })?;
        let diff_ids = parsed
            .rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d, "the config's diff ID"))
            .collect::<Result<Vec<_>>>()?;

        // The image's own export: each distinct layer once, in image order, then the config,
        // then a manifest.json that names only this image, all under resolved paths.
        let mut parts = Vec::new();
        let mut layers = Vec::new();
        let mut seen = HashSet::new();
        let mut size = 0;
        for layer in &manifest.layers {
            let (path, offset, length) = self.resolve(&index, layer)?;
            layers.push(path.clone());
            if seen.insert(path.clone()) {
                size += length;
                let file: Rc<dyn RandomAccess> = self.file.clone();
                parts.extend(file_parts(
                    &path,
                    length,
                    Part::Range {
                        file,
                        offset,
                        length,
                    },
                )?);
            }
        }
        let (config_path, _, _) = self.resolve(&index, &manifest.config)?;
        // Layers held compressed (Docker >= 25's containerd store) are named by their blob
        // digest, not a diff ID: the OCI manifest that gives their media types goes along.
        let compressed = layers.iter().zip(&diff_ids).any(|(path, diff_id)| {
            path != &format!("blobs/sha256/{}", diff_id.hex()) && path.starts_with("blobs/sha256/")
        });
        if compressed {
            for path in self.manifests_of(&index, &Digest::of(&config))? {
                let bytes = self.read_small(&index, &path)?;
                parts.extend(bytes_parts(&path, bytes)?);
            }
        }
        let save_manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_path,
            "RepoTags": manifest.repo_tags.unwrap_or_default(),
            "Layers": layers,
        }]))?;
        let summary = ImageSummary {
            id: Digest::of(&config),
            diff_ids,
            size,
            // From the config itself: the tarball's word is the config.
            platform: crate::config::platform(&config).ok(),
        };
        parts.extend(bytes_parts(&config_path, config)?);
        parts.extend(bytes_parts("manifest.json", save_manifest)?);
        parts.push(Part::Bytes(vec![0; 1024])); // the end of the tar
        self.chosen = Some(Chosen {
            summary: summary.clone(),
            parts,
        });
        Ok(summary)
    }

    fn export(&mut self, image: &str) -> Result<Export> {
        let chosen = self
            .chosen
            .take()
            .context("the archive was exported before it was inspected")?;
        if chosen.summary.id.as_str() != image {
            bail!(
                "archive {}: asked to export {image}, but it was opened for {}",
                self.path,
                chosen.summary.id
            );
        }
        Ok(Export::new(&format!("archive {}", self.path), chosen.parts))
    }
}

/// A piece of an image's export: bytes held here, or a range of a file the host opened.
pub(crate) enum Part {
    Bytes(Vec<u8>),
    Range {
        file: Rc<dyn RandomAccess>,
        offset: u64,
        length: u64,
    },
}

/// `file_parts` for a file held in memory.
pub(crate) fn bytes_parts(path: &str, bytes: Vec<u8>) -> Result<[Part; 3]> {
    file_parts(path, bytes.len() as u64, Part::Bytes(bytes))
}

/// A regular file in a tar stream: header, contents, padding to 512 bytes.
pub(crate) fn file_parts(path: &str, size: u64, contents: Part) -> Result<[Part; 3]> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(path)
        .with_context(|| format!("the archive path {path} does not fit a tar header"))?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let padding = ((512 - size % 512) % 512) as usize;
    Ok([
        Part::Bytes(header.as_bytes().to_vec()),
        contents,
        Part::Bytes(vec![0; padding]),
    ])
}

/// An image's `docker save` stream, read from the host's files as the guest consumes it.
pub struct Export {
    /// Where it comes from, for messages.
    path: String,
    parts: VecDeque<Part>,
}

impl Export {
    pub(crate) fn new(path: &str, parts: Vec<Part>) -> Self {
        Self {
            path: path.to_string(),
            parts: parts.into(),
        }
    }
}

impl Read for Export {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(part) = self.parts.front_mut() else {
                return Ok(0);
            };
            match part {
                Part::Bytes(bytes) if bytes.is_empty() => {}
                Part::Bytes(bytes) => {
                    let n = out.len().min(bytes.len());
                    out[..n].copy_from_slice(&bytes[..n]);
                    bytes.drain(..n);
                    return Ok(n);
                }
                Part::Range { length: 0, .. } => {}
                Part::Range {
                    file,
                    offset,
                    length,
                } => {
                    let max = out.len().min(*length as usize);
                    let chunk = file.read_at(*offset, max).map_err(io::Error::other)?;
                    if chunk.is_empty() || chunk.len() > max {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{} ended early", self.path),
                        ));
                    }
                    out[..chunk.len()].copy_from_slice(&chunk);
                    *offset += chunk.len() as u64;
                    *length -= chunk.len() as u64;
                    return Ok(chunk.len());
                }
            }
            self.parts.pop_front();
        }
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
    use crate::save::read_export;
    use crate::testing::{classic_export, fixture, tar, Hashing, Item};

    /// A file in memory that hands out at most 1000 bytes per read, as a host may.
    struct Memory(Vec<u8>);

    impl RandomAccess for Memory {
        fn size(&self) -> Result<u64> {
            Ok(self.0.len() as u64)
        }
        fn read_at(&self, offset: u64, max: usize) -> Result<Vec<u8>> {
            let start = (offset as usize).min(self.0.len());
            let end = (start + max.min(1000)).min(self.0.len());
            Ok(self.0[start..end].to_vec())
        }
    }

    /// Inspects and exports one image of an archive, and reads the export back as the
    /// pipeline does; returns the summary and the verified layers' diff IDs.
    fn push(bytes: Vec<u8>, reference: Option<&str>) -> Result<(ImageSummary, Vec<Digest>)> {
        let mut archive = Archive::new(Memory(bytes), "test.tar", reference);
        let summary = archive.inspect("docker-archive:test.tar")?;
        let export = archive.export(summary.id.as_str())?;
        let saved = read_export(export, &summary, &mut Hashing::new(&summary))?;
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
