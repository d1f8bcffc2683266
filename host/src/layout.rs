//! An OCI image layout directory (`oci-layout`, `index.json` and `blobs/sha256/<hex>`): the
//! destination `oci:DIR[:TAG]` as a blob sink (`Directory`, `LayerFile`), and the source
//! `oci:DIR[:TAG]` (`Reader`). The `layout` capability opens only the directories the user named.
//!
//! Call order, as for a registry: blobs, then the manifest. `put_manifest` writes a manifest and
//! its `index.json` entry only when every blob it names is in the directory. Every file goes to
//! a temporary name in the same directory, is checked against its digest and synced, then
//! renamed into place: a reader (or a crash) never sees half a blob or half an index.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::confirmed::{Confirmed, Unconfirmed};
use crate::encode::{self, Codec, Encoded, Pipeline};
use crate::files::{read_at, temp_path, write_atomic, IoError};
use crate::limits::MANIFEST_LIMIT;

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The largest `index.json` read back before adding an entry.
const INDEX_LIMIT: u64 = 64 << 20;
/// The most bytes one read of a blob returns: one guest crossing's worth.
const READ_LIMIT: u32 = 16 << 20;

/// What went wrong with a layout directory.
#[derive(Debug)]
pub enum Error {
    Io(IoError),
    /// `oci-layout` does not say version 1.x.
    Version(PathBuf),
    /// A directory that is neither empty nor a layout, as a destination.
    NotEmpty(PathBuf),
    /// A directory that is not a layout, as a source.
    NotALayout(PathBuf),
    NotADigest(String),
    NotAFile(PathBuf),
    /// A blob whose bytes are not what its digest says.
    Mismatch {
        digest: String,
        actual: String,
    },
    /// A manifest file whose bytes are not what its name says, read from a layout.
    Corrupt {
        path: PathBuf,
        actual: String,
    },
    /// A file over its limit (`what` names the limit).
    TooLarge {
        path: PathBuf,
        what: &'static str,
    },
    NotAnIndex(PathBuf),
    /// A manifest that names a blob the directory does not hold, or that names none readably.
    Unconfirmed {
        tag: String,
        root: PathBuf,
        problem: Unconfirmed,
    },
    Encode(encode::Error),
    Json(serde_json::Error),
    /// Written to after `finish`.
    Ended,
    /// The encoder stopped without saying why.
    Failed(PathBuf),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => e.fmt(f),
            Self::Version(root) => write!(
                f,
                "OCI layout {}: its oci-layout file does not say imageLayoutVersion 1.x",
                root.display()
            ),
            Self::NotEmpty(root) => write!(
                f,
                "{} is not empty and not an OCI image layout (it has no oci-layout file): refusing to write there",
                root.display()
            ),
            Self::NotALayout(root) => write!(
                f,
                "{} is not an OCI image layout (it has no oci-layout file)",
                root.display()
            ),
            Self::NotADigest(digest) => write!(f, "{digest:?} is not a sha256 digest"),
            Self::NotAFile(path) => write!(f, "{} is not a file", path.display()),
            Self::Mismatch { digest, actual } => write!(
                f,
                "refusing to store blob {digest}: its bytes hash to {actual}"
            ),
            Self::Corrupt { path, actual } => write!(
                f,
                "{} does not hold the manifest its name says: its bytes hash to {actual}",
                path.display()
            ),
            Self::TooLarge { path, what } => write!(f, "{} is {what}", path.display()),
            Self::NotAnIndex(path) => write!(f, "{} is not an OCI image index", path.display()),
            Self::Unconfirmed {
                tag,
                root,
                problem: Unconfirmed::Missing(missing),
            } => write!(
                f,
                "refusing to write manifest {tag} to OCI layout {}: it names blob {missing}, which is not in the layout",
                root.display()
            ),
            Self::Unconfirmed { problem, .. } => problem.fmt(f),
            Self::Encode(e) => e.fmt(f),
            Self::Json(e) => e.fmt(f),
            Self::Ended => f.write_str("the layer file already ended"),
            Self::Failed(temp) => write!(f, "writing {} failed", temp.display()),
        }
    }
}

impl std::error::Error for Error {}

impl From<IoError> for Error {
    fn from(e: IoError) -> Self {
        Self::Io(e)
    }
}

/// `blobs/sha256/<hex>` of a digest, refusing anything but `sha256:` and 64 lowercase hex
/// digits: the digest becomes a file name.
fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, Error> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(root.join("blobs/sha256").join(hex))
        }
        _ => Err(Error::NotADigest(digest.to_string())),
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The digest `reference` stands for: itself when it is one, else the one `index.json` names
/// under the tag `reference`, if any.
fn resolve(root: &Path, reference: &str) -> Result<Option<String>, Error> {
    if reference.starts_with("sha256:") {
        return Ok(Some(reference.to_string()));
    }
    let path = root.join("index.json");
    let at = || IoError::at(path.display());
    let bytes = match std::fs::metadata(&path) {
        Ok(meta) if meta.len() > INDEX_LIMIT => {
            return Err(Error::TooLarge {
                path,
                what: "larger than 64 MiB",
            })
        }
        Ok(_) => std::fs::read(&path).map_err(at())?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(at()(e).into()),
    };
    let index: Value =
        serde_json::from_slice(&bytes).map_err(|_| Error::NotAnIndex(path.clone()))?;
    Ok(index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"][REF_NAME].as_str() == Some(reference))
        .and_then(|m| m["digest"].as_str())
        .map(str::to_string))
}

/// A blob read whole, at most `MANIFEST_LIMIT` bytes (`over` says what a larger one is not), as
/// the file holds it; `None` when the layout lacks it.
fn read_small(root: &Path, digest: &str, over: &'static str) -> Result<Option<Vec<u8>>, Error> {
    let path = blob_path(root, digest)?;
    let at = || IoError::at(path.display());
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(at()(e).into()),
    };
    let mut body = Vec::new();
    file.take(MANIFEST_LIMIT as u64 + 1)
        .read_to_end(&mut body)
        .map_err(at())?;
    if body.len() > MANIFEST_LIMIT {
        return Err(Error::TooLarge { path, what: over });
    }
    Ok(Some(body))
}

/// One layout directory, opened for writing.
pub struct Directory {
    root: PathBuf,
    /// Blobs known to be in `blobs/sha256` (found, or written in this session).
    confirmed: Confirmed,
}

impl Directory {
    /// Opens `root`, creating it (and `oci-layout`, an empty `index.json` and `blobs/sha256`)
    /// when it does not exist or is empty. Any other directory must already be a layout.
    pub fn open(root: &Path) -> Result<Self, Error> {
        let at = || IoError::at(format!("OCI layout {}", root.display()));
        // Through its components: create_dir_all gives up on a path ending in `/.` (`oci:out/.`)
        // whose parent does not exist yet.
        std::fs::create_dir_all(root.components().collect::<PathBuf>()).map_err(at())?;
        let marker = root.join("oci-layout");
        match std::fs::read(&marker) {
            Ok(bytes) => {
                let version = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v["imageLayoutVersion"].as_str().map(str::to_string));
                if !version.as_deref().is_some_and(|v| v.starts_with("1.")) {
                    return Err(Error::Version(root.to_path_buf()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if std::fs::read_dir(root).map_err(at())?.next().is_some() {
                    return Err(Error::NotEmpty(root.to_path_buf()));
                }
                write_atomic(&marker, OCI_LAYOUT.as_bytes()).map_err(at())?;
            }
            Err(e) => return Err(at()(e).into()),
        }
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(at())?;
        let directory = Self {
            root: root.to_path_buf(),
            confirmed: Confirmed::default(),
        };
        // An empty index makes a valid layout from the start; an existing one is kept.
        directory.update_index(|_| {})?;
        Ok(directory)
    }

    /// The size of a blob the directory holds, which confirms it.
    pub fn blob_size(&mut self, digest: &str) -> Result<Option<u64>, Error> {
        let path = blob_path(&self.root, digest)?;
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                self.confirmed.insert(digest);
                Ok(Some(meta.len()))
            }
            Ok(_) => Err(Error::NotAFile(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IoError::at(path.display())(e).into()),
        }
    }

    /// Stores a blob held whole, after checking it against `digest`.
    pub fn put_blob(&mut self, digest: &str, data: &[u8]) -> Result<(), Error> {
        let path = blob_path(&self.root, digest)?;
        let actual = sha256(data);
        if actual != digest {
            return Err(Error::Mismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        write_atomic(&path, data).map_err(IoError::at(format!("writing {}", path.display())))?;
        self.confirmed.insert(digest);
        Ok(())
    }

    /// The manifest stored as blob `reference` (a digest), or the one `index.json` names under
    /// the tag `reference`; at most 4 MiB. Read back for `--verify`, and to extend a referrers
    /// index; the directory holds it, so it counts as confirmed.
    pub fn get_manifest(&mut self, reference: &str) -> Result<Option<Vec<u8>>, Error> {
        let Some(digest) = resolve(&self.root, reference)? else {
            return Ok(None);
        };
        let body = read_small(&self.root, &digest, "over 4 MiB: not a manifest")?;
        if let Some(body) = &body {
            self.confirmed.insert(sha256(body));
        }
        Ok(body)
    }

    /// Stores the manifest as a blob and points `index.json` at it under `tag`, replacing an
    /// entry with the same tag and keeping every other one; refused unless every blob it names
    /// is confirmed.
    pub fn put_manifest(
        &mut self,
        tag: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String, Error> {
        self.confirmed
            .check(body)
            .map_err(|problem| Error::Unconfirmed {
                tag: tag.to_string(),
                root: self.root.clone(),
                problem,
            })?;
        let digest = sha256(body);
        self.put_blob(&digest, body)?;
        let entry = json!({
            "mediaType": media_type,
            "digest": digest,
            "size": body.len(),
            "annotations": { REF_NAME: tag },
        });
        self.update_index(|manifests| {
            manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
            manifests.push(entry);
        })?;
        Ok(digest)
    }

    /// Reads `index.json` (an empty index if there is none), lets `change` edit its
    /// `manifests`, and replaces it atomically. An exclusive lock on the directory keeps
    /// concurrent pushes to one layout from losing each other's entries.
    fn update_index(&self, change: impl FnOnce(&mut Vec<Value>)) -> Result<(), Error> {
        let path = self.root.join("index.json");
        let at = || IoError::at(path.display());
        let lock = File::open(&self.root).map_err(at())?;
        lock.lock().map_err(at())?;
        let mut index = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() > INDEX_LIMIT => {
                return Err(Error::TooLarge {
                    path,
                    what: "larger than 64 MiB",
                })
            }
            Ok(_) => serde_json::from_slice::<Value>(&std::fs::read(&path).map_err(at())?)
                .ok()
                .filter(|v| v["manifests"].is_array())
                .ok_or_else(|| Error::NotAnIndex(path.clone()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] })
            }
            Err(e) => return Err(at()(e).into()),
        };
        let before = index.clone();
        let Some(manifests) = index["manifests"].as_array_mut() else {
            unreachable!("checked above");
        };
        change(manifests);
        if index != before || !path.exists() {
            let bytes = serde_json::to_vec(&index).map_err(Error::Json)?;
            write_atomic(&path, &bytes).map_err(at())?;
        }
        Ok(())
    }
}

/// A layer being encoded into a temporary file in `blobs/sha256`.
pub struct LayerFile {
    /// Encodes into the temporary file and syncs it.
    pipeline: Pipeline,
    temp: PathBuf,
    blobs: PathBuf,
    confirmed: Confirmed,
    /// Whether the blob was stored; then the temporary file is gone.
    done: bool,
    /// What `close` encoded, still to be stored by `finish`.
    closed: Option<Encoded>,
}

impl LayerFile {
    /// Starts encoding a layer with `codec` (as a registry upload encodes it) into a temporary
    /// file.
    pub fn start(directory: &Directory, codec: Codec) -> Result<Self, Error> {
        let blobs = directory.root.join("blobs/sha256");
        let temp = temp_path(&blobs);
        let file =
            File::create(&temp).map_err(IoError::at(format!("creating {}", temp.display())))?;
        Ok(Self {
            pipeline: Pipeline::start(Arc::new(file), codec, Some(temp.clone())),
            temp,
            blobs,
            confirmed: directory.confirmed.clone(),
            done: false,
            closed: None,
        })
    }

    pub fn write(&mut self, data: Vec<u8>) -> Result<(), Error> {
        match self.pipeline.write(data) {
            Ok(()) => Ok(()),
            Err(encode::Closed::Ended) => Err(Error::Ended),
            Err(encode::Closed::Stopped) => Err(self.failure()),
        }
    }

    /// Uncompressed bytes written, and encoded bytes in the file.
    pub fn counts(&self) -> (u64, u64) {
        self.pipeline.counts()
    }

    /// Why the encoder stopped: its error, which includes the disk's.
    fn failure(&mut self) -> Error {
        match self.pipeline.finish() {
            Some(Err(e)) => Error::Encode(e),
            _ => Error::Failed(self.temp.clone()),
        }
    }

    /// Ends the layer: its encoded bytes are all in the temporary file, synced.
    pub fn close(&mut self) -> Result<Encoded, Error> {
        let encoded = self
            .pipeline
            .finish()
            .ok_or(Error::Ended)?
            .map_err(Error::Encode)?;
        self.closed = Some(encoded.clone());
        Ok(encoded)
    }

    /// Ends the layer (unless `close` did) and stores it under the digest of its encoded bytes.
    pub fn finish(&mut self) -> Result<Encoded, Error> {
        let encoded = match self.closed.take() {
            Some(encoded) => encoded,
            None => self.close()?,
        };
        self.closed = None;
        let path = self
            .blobs
            .join(encoded.digest.trim_start_matches("sha256:"));
        std::fs::rename(&self.temp, &path)
            .map_err(IoError::at(format!("storing {}", path.display())))?;
        self.done = true;
        self.confirmed.insert(encoded.digest.clone());
        Ok(encoded)
    }
}

impl Drop for LayerFile {
    /// A layer file dropped before `finish` stored it leaves nothing behind.
    fn drop(&mut self) {
        if !self.done {
            let _ = self.pipeline.finish();
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// One layout directory opened for reading: the source `oci:DIR[:TAG]`.
pub struct Reader {
    root: PathBuf,
}

impl Reader {
    pub fn open(root: &Path) -> Result<Self, Error> {
        if !root.join("oci-layout").is_file() {
            return Err(Error::NotALayout(root.to_path_buf()));
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The directory's absolute path (symbolic links left as they are), for provenance.
    pub fn absolute_path(&self) -> Result<String, Error> {
        Ok(crate::files::absolute(&self.root)?)
    }

    /// The bytes of `index.json`, at most 64 MiB.
    pub fn index(&self) -> Result<Vec<u8>, Error> {
        let path = self.root.join("index.json");
        let at = || IoError::at(format!("reading {}", path.display()));
        let size = std::fs::metadata(&path).map_err(at())?.len();
        if size > INDEX_LIMIT {
            return Err(Error::TooLarge {
                path,
                what: "larger than 64 MiB",
            });
        }
        Ok(std::fs::read(&path).map_err(at())?)
    }

    /// The manifest stored as blob `reference` (a digest), or the one `index.json` names under
    /// the tag `reference`; at most 4 MiB, and refused unless its bytes hash to its digest (what
    /// `ocipush verify` takes as the image's identity).
    pub fn manifest(&self, reference: &str) -> Result<Option<Vec<u8>>, Error> {
        let Some(digest) = resolve(&self.root, reference)? else {
            return Ok(None);
        };
        let body = read_small(&self.root, &digest, "over 4 MiB: not a manifest")?;
        if let Some(body) = &body {
            let actual = sha256(body);
            if actual != digest {
                return Err(Error::Corrupt {
                    path: blob_path(&self.root, &digest)?,
                    actual,
                });
            }
        }
        Ok(body)
    }

    /// A blob of at most 4 MiB (a signature payload, a statement) as its file holds it, or
    /// `None`; the caller checks it against its digest, as it checks a registry's.
    pub fn small_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        read_small(
            &self.root,
            digest,
            "over 4 MiB: not a signature payload or statement",
        )
    }

    /// Up to `max` bytes of a blob from `offset`; short only at its end.
    pub fn read_blob(&self, digest: &str, offset: u64, max: u32) -> Result<Vec<u8>, Error> {
        let path = blob_path(&self.root, digest)?;
        let at = || IoError::at(format!("reading {}", path.display()));
        let file = File::open(&path).map_err(at())?;
        Ok(read_at(&file, offset, max.min(READ_LIMIT) as usize).map_err(at())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(root: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap()
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".ocipush-tmp-") && name.ends_with(".tmp"))
            .collect()
    }

    /// A manifest naming `blobs`, as the guest writes one.
    fn manifest(blobs: &[&str]) -> Vec<u8> {
        let layers: Vec<Value> = blobs.iter().map(|d| json!({ "digest": d })).collect();
        serde_json::to_vec(&json!({ "schemaVersion": 2, "layers": layers })).unwrap()
    }

    #[test]
    fn a_new_directory_named_with_a_trailing_dot_is_created() {
        let dir = tempfile::tempdir().unwrap();
        Directory::open(&dir.path().join("new/.")).unwrap();
        assert!(dir.path().join("new/oci-layout").is_file());
    }

    #[test]
    fn a_new_directory_becomes_an_empty_layout_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        Directory::open(&root).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("oci-layout")).unwrap(),
            OCI_LAYOUT
        );
        assert_eq!(index(&root)["manifests"], json!([]));
        assert!(root.join("blobs/sha256").is_dir());
        Directory::open(&root).expect("an existing layout opens again");

        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("file"), b"x").unwrap();
        let err = Directory::open(&other).err().unwrap().to_string();
        assert!(
            err.contains("is not empty and not an OCI image layout"),
            "{err}"
        );
        assert!(Reader::open(&other).is_err());
    }

    #[test]
    fn blobs_are_checked_against_their_digest_before_they_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut layout = Directory::open(dir.path()).unwrap();
        let digest = sha256(b"config");
        let wrong = sha256(b"other");
        let err = layout.put_blob(&wrong, b"config").unwrap_err().to_string();
        assert_eq!(
            err,
            format!("refusing to store blob {wrong}: its bytes hash to {digest}")
        );
        assert_eq!(layout.blob_size(&wrong).unwrap(), None);
        layout.put_blob(&digest, b"config").unwrap();
        assert_eq!(layout.blob_size(&digest).unwrap(), Some(6));
        assert!(layout.blob_size("sha256:../../etc").is_err());
        assert!(leftovers(&dir.path().join("blobs/sha256")).is_empty());
    }

    #[test]
    fn a_layer_goes_to_a_temporary_file_and_is_renamed_to_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Directory::open(dir.path()).unwrap();
        let blobs = dir.path().join("blobs/sha256");
        let mut file = LayerFile::start(&layout, Codec::None).unwrap();
        file.write(b"layer ".to_vec()).unwrap();
        file.write(b"bytes".to_vec()).unwrap();
        assert_eq!(leftovers(&blobs).len(), 1, "written to a temporary file");
        let encoded = file.finish().unwrap();
        assert_eq!(encoded.digest, sha256(b"layer bytes"));
        assert_eq!(file.counts(), (11, 11));
        assert!(matches!(file.write(b"late".to_vec()), Err(Error::Ended)));
        drop(file);
        let stored = blobs.join(encoded.digest.trim_start_matches("sha256:"));
        assert_eq!(std::fs::read(stored).unwrap(), b"layer bytes");
        assert!(leftovers(&blobs).is_empty());

        let mut dropped = LayerFile::start(&layout, Codec::Gzip { level: 1 }).unwrap();
        dropped.write(b"never stored".to_vec()).unwrap();
        drop(dropped);
        assert!(
            leftovers(&blobs).is_empty(),
            "a dropped layer leaves nothing"
        );
        assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 1);
    }

    #[test]
    fn a_manifest_needs_its_blobs_and_replaces_only_its_own_tag() {
        let dir = tempfile::tempdir().unwrap();
        let mut layout = Directory::open(dir.path()).unwrap();
        let layer = sha256(b"layer");
        let body = manifest(&[&layer]);
        let err = layout
            .put_manifest("v1", OCI_INDEX, &body)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "it names blob {layer}, which is not in the layout"
            )),
            "{err}"
        );
        assert_eq!(index(dir.path())["manifests"], json!([]), "nothing written");

        layout.put_blob(&layer, b"layer").unwrap();
        let first = layout.put_manifest("v1", "m/1", &body).unwrap();
        let other = layout.put_manifest("v2", "m/2", &manifest(&[])).unwrap();
        let again = layout
            .put_manifest("v1", "m/3", &manifest(&[&layer, &layer]))
            .unwrap();
        assert_ne!(first, again);
        let entries = index(dir.path())["manifests"].as_array().unwrap().clone();
        let tags: Vec<(&str, &str)> = entries
            .iter()
            .map(|m| {
                (
                    m["annotations"][REF_NAME].as_str().unwrap(),
                    m["digest"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(tags, [("v2", other.as_str()), ("v1", again.as_str())]);
        assert_eq!(entries[1]["mediaType"], "m/3");
        assert_eq!(
            layout.get_manifest(&again).unwrap().as_deref(),
            Some(&manifest(&[&layer, &layer])[..])
        );

        let reader = Reader::open(dir.path()).unwrap();
        let read: Value = serde_json::from_slice(&reader.index().unwrap()).unwrap();
        assert_eq!(read, index(dir.path()));
        assert_eq!(reader.read_blob(&layer, 2, 100).unwrap(), b"yer");
    }

    #[test]
    fn a_reader_gives_manifests_by_tag_or_digest_only_when_their_bytes_are_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut layout = Directory::open(dir.path()).unwrap();
        let body = manifest(&[]);
        let digest = layout.put_manifest("v1", "m/1", &body).unwrap();
        layout.put_blob(&sha256(b"payload"), b"payload").unwrap();
        let reader = Reader::open(dir.path()).unwrap();
        assert_eq!(reader.manifest("v1").unwrap(), Some(body.clone()));
        assert_eq!(reader.manifest(&digest).unwrap(), Some(body));
        assert_eq!(reader.manifest("v2").unwrap(), None);
        assert_eq!(reader.manifest(&sha256(b"absent")).unwrap(), None);
        assert_eq!(
            reader.small_blob(&sha256(b"payload")).unwrap().as_deref(),
            Some(&b"payload"[..])
        );

        // Rewritten in place: the blob is read as it is, the manifest refused.
        std::fs::write(
            blob_path(dir.path(), &sha256(b"payload")).unwrap(),
            b"other",
        )
        .unwrap();
        assert_eq!(
            reader.small_blob(&sha256(b"payload")).unwrap().as_deref(),
            Some(&b"other"[..])
        );
        let path = blob_path(dir.path(), &digest).unwrap();
        std::fs::write(&path, b"{}").unwrap();
        let err = reader.manifest("v1").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{} does not hold the manifest its name says: its bytes hash to {}",
                path.display(),
                sha256(b"{}")
            )
        );
    }
}
