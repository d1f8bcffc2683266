//! The `docker save` format, as both sides of it need it: the `manifest.json` that names an
//! image's config and layers, the links (podman's `<v1id>/layer.tar` symlinks) that paths go
//! through, and the writing of a stream of one image cut from pieces held elsewhere (a tarball's
//! ranges, a layout's blobs) for the export reader (`save.rs`) to read as a daemon's.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Read};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::model::{Blob, ImageSummary, Within};
use crate::ports::{ended_while_skipping, RandomAccess, SkipRead};

/// How many symlinks deep a layer path may be.
pub const LINK_DEPTH_LIMIT: usize = 8;

/// One entry of `manifest.json`.
#[derive(Deserialize, Serialize)]
pub struct SaveManifest {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
}

/// A tar entry's path, normalized, and for a link the archive path it points to.
pub fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> (String, Option<String>) {
    let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
    let kind = entry.header().entry_type();
    if !kind.is_symlink() && !kind.is_hard_link() {
        return (name, None);
    }
    let target = entry
        .link_name_bytes()
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .unwrap_or_default();
    // A symlink's target is relative to its directory, a hard link's to the archive root.
    let target = if kind.is_symlink() {
        join_link(&name, &target)
    } else {
        normalize(&target)
    };
    (name, Some(target))
}

/// A chain of links longer than `LINK_DEPTH_LIMIT`, stopped at `0`.
#[derive(Debug)]
pub struct TooDeep(pub String);

impl std::fmt::Display for TooDeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "link {} is nested more than {LINK_DEPTH_LIMIT} deep",
            self.0
        )
    }
}

impl std::error::Error for TooDeep {}

/// Follows links from `path` to the first path that is not one; `link` says where a path
/// points when it is a link.
pub fn follow_links<'a>(
    path: &str,
    link: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, TooDeep> {
    let mut path = normalize(path);
    for _ in 0..LINK_DEPTH_LIMIT {
        match link(&path) {
            Some(target) => path = target.to_string(),
            None => return Ok(path),
        }
    }
    Err(TooDeep(path))
}

/// The archive path a symlink at `link` pointing to `target` refers to.
pub fn join_link(link: &str, target: &str) -> String {
    if target.starts_with('/') {
        return normalize(target);
    }
    match link.rsplit_once('/') {
        Some((dir, _)) => normalize(&format!("{dir}/{target}")),
        None => normalize(target),
    }
}

/// Removes `.`, empty components and resolves `..` (never above the archive root).
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

/// A piece of an image's export: bytes held here, or a range of a file the host opened.
pub enum Part {
    Bytes(Vec<u8>),
    Range {
        file: Rc<dyn RandomAccess>,
        offset: u64,
        length: u64,
    },
}

/// A regular file in a tar stream: header, contents, padding to 512 bytes.
fn file_parts(path: &str, size: u64, contents: Part) -> Result<[Part; 3]> {
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

/// The `docker save` stream of one image, written as a reader expects it: each distinct layer
/// once, in image order, then small files (the config, OCI manifests), then a `manifest.json`
/// that names only this image, then the end of the tar.
#[derive(Default)]
pub struct SaveWriter {
    parts: Vec<Part>,
    /// The image's layer paths, in order, repeats included.
    layers: Vec<String>,
    written: HashSet<String>,
    size: u64,
}

impl SaveWriter {
    /// The image's next layer, stored at `path`: `length` bytes of `file` from `offset`, read
    /// as the stream passes them, once however often the image lists the path.
    pub fn layer(
        &mut self,
        path: &str,
        file: Rc<dyn RandomAccess>,
        offset: u64,
        length: u64,
    ) -> Result<()> {
        self.layers.push(path.to_string());
        if self.written.insert(path.to_string()) {
            self.size += length;
            let range = Part::Range {
                file,
                offset,
                length,
            };
            self.parts.extend(file_parts(path, length, range)?);
        }
        Ok(())
    }

    /// A small file held in memory.
    pub fn file(&mut self, path: &str, bytes: Vec<u8>) -> Result<()> {
        let size = bytes.len() as u64;
        self.parts
            .extend(file_parts(path, size, Part::Bytes(bytes))?);
        Ok(())
    }

    /// The distinct layers' total size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Ends the stream with its `manifest.json`, naming the config at `config` and the layers.
    pub fn finish(mut self, config: &str, repo_tags: Vec<String>) -> Result<Vec<Part>> {
        let manifest = serde_json::to_vec(&[SaveManifest {
            config: config.to_string(),
            layers: std::mem::take(&mut self.layers),
            repo_tags: Some(repo_tags),
        }])?;
        self.file("manifest.json", manifest)?;
        self.parts.push(Part::Bytes(vec![0; 1024])); // the end of the tar
        Ok(self.parts)
    }
}

/// The export of one platform of a multi-platform image, cut from a tarball's or layout's
/// pieces in Docker >= 25's dialect: its layers (`layer` says where each one's bytes are), its
/// config and manifest, the index, and an `index.json` naming the index (of `index_type`), so
/// that the reader finds the platform's own manifest as in a daemon's export. `small` gives a
/// small blob's bytes.
pub fn platform_export(
    within: &Within,
    index_type: &str,
    small: impl Fn(&Digest) -> Result<Vec<u8>>,
    layer: impl Fn(&Blob) -> Result<(Rc<dyn RandomAccess>, u64)>,
) -> Result<Vec<Part>> {
    let path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let mut stream = SaveWriter::default();
    for blob in &within.layers {
        let (file, offset) = layer(blob)?;
        stream.layer(&path(&blob.digest), file, offset, blob.size)?;
    }
    let config = path(&within.config.digest);
    stream.file(&config, small(&within.config.digest)?)?;
    stream.file(
        &path(&within.manifest.digest),
        small(&within.manifest.digest)?,
    )?;
    let index = small(&within.index)?;
    let listing = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": index_type, "digest": within.index.as_str(), "size": index.len()}],
    }))?;
    stream.file(&path(&within.index), index)?;
    stream.file("index.json", listing)?;
    stream.finish(&config, Vec::new())
}

/// An image's export as a source's `inspect` cut it, for its `export` to hand out once.
pub struct CutExport {
    pub summary: ImageSummary,
    pub parts: Vec<Part>,
}

/// Hands out the export `inspect` cut, if it is of `image`. `kind` names the source (`archive`,
/// `layout`), `label` the one opened (`archive PATH`), for messages.
pub fn take_export(
    cut: &mut Option<CutExport>,
    image: &str,
    kind: &str,
    label: &str,
) -> Result<Export> {
    let cut = cut
        .take()
        .with_context(|| format!("the {kind} was exported before it was inspected"))?;
    if cut.summary.id.as_str() != image {
        bail!(
            "{label}: asked to export {image}, but it was opened for {}",
            cut.summary.id
        );
    }
    Ok(Export {
        label: label.to_string(),
        parts: cut.parts.into(),
    })
}

/// An image's `docker save` stream, read from the host's files as the guest consumes it.
pub struct Export {
    /// Where it comes from, for messages.
    label: String,
    parts: VecDeque<Part>,
}

impl Export {
    /// The stream of `parts`, from the source `label` names.
    pub fn new(label: &str, parts: Vec<Part>) -> Self {
        Self {
            label: label.to_string(),
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
                            format!("{} ended early", self.label),
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

impl SkipRead for Export {
    /// Bytes held are dropped, ranges of the host's file moved past: nothing is read.
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let mut left = n;
        while left > 0 {
            let Some(part) = self.parts.front_mut() else {
                return Err(ended_while_skipping(n, left));
            };
            match part {
                Part::Bytes(bytes) if (bytes.len() as u64) > left => {
                    bytes.drain(..left as usize);
                    return Ok(());
                }
                Part::Bytes(bytes) => left -= bytes.len() as u64,
                Part::Range { offset, length, .. } if *length > left => {
                    *offset += left;
                    *length -= left;
                    return Ok(());
                }
                Part::Range { length, .. } => left -= *length,
            }
            self.parts.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryFile;
    use std::collections::HashMap;

    /// Passing over bytes drops what is held and moves past ranges of the file unread.
    #[test]
    fn an_export_passes_over_bytes_and_ranges_without_reading_them() {
        let file: Rc<dyn RandomAccess> = Rc::new(MemoryFile((0..=255u8).collect()));
        let range = |offset, length| Part::Range {
            file: file.clone(),
            offset,
            length,
        };
        let mut export = Export {
            label: "test".into(),
            parts: VecDeque::from([Part::Bytes(b"abc".to_vec()), range(10, 5), range(100, 3)]),
        };
        export.skip(2).unwrap();
        export.skip(3).unwrap(); // "c" and two bytes of the first range
        let mut rest = Vec::new();
        export.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, [12, 13, 14, 100, 101, 102]);
        export.skip(0).unwrap();
        let err = export.skip(1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn paths_and_links_normalize() {
        assert_eq!(normalize("./a//b/../c"), "a/c");
        assert_eq!(join_link("v1/layer.tar", "../abc.tar"), "abc.tar");
        assert_eq!(join_link("layer.tar", "/x/y.tar"), "x/y.tar");
    }

    #[test]
    fn links_are_followed_up_to_the_limit() {
        let links: HashMap<String, String> = (0..20)
            .map(|i| (format!("l{i}"), format!("l{}", i + 1)))
            .collect();
        let link = |p: &str| links.get(p).map(String::as_str);
        assert_eq!(follow_links("./l13", link).unwrap(), "l20");
        assert_eq!(follow_links("x/../other", link).unwrap(), "other");
        let err = follow_links("l0", link).unwrap_err().to_string();
        assert_eq!(err, "link l8 is nested more than 8 deep");
    }
}
