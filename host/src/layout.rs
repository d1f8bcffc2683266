//! An OCI image layout directory as a blob sink (the `layout` capability): `oci-layout`,
//! `index.json` and `blobs/sha256/<hex>`, the destination `oci:DIR[:TAG]`.
//!
//! Call order, as for a registry: blobs, then the manifest. `put_manifest` writes a manifest and
//! its `index.json` entry only when every blob it names is in the directory. Every file goes to
//! a temporary name in the same directory, is checked against its digest and synced, then
//! renamed into place: a reader (or a crash) never sees half a blob or half an index.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use wasmtime::component::Resource;

use crate::guest::ocipush::core::layout::{
    BlobDescriptor, Compression, Host, HostDirectory, HostLayerFile, HostReader, UploadProgress,
};
use crate::guest::HostState;
use crate::upload::{encode, Encoded, Produced};

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Chunks queued for the encoder, as for an upload.
const INPUT_QUEUE: usize = 2;
/// The largest `index.json` read back before adding an entry.
const INDEX_LIMIT: u64 = 64 << 20;
/// The most bytes of a manifest read back, as registries cap them.
const MANIFEST_LIMIT: u64 = 4 << 20;

/// One layout directory, opened for writing.
pub struct Directory {
    root: PathBuf,
    /// Blobs known to be in `blobs/sha256` (found, or written in this session).
    confirmed: Confirmed,
}

/// Blobs confirmed in a directory, shared with its layer files.
type Confirmed = Arc<Mutex<HashSet<String>>>;

/// A layer being encoded into a temporary file in `blobs/sha256`.
pub struct LayerFile {
    input: Option<std_mpsc::SyncSender<Vec<u8>>>,
    /// Encodes into the temporary file and syncs it.
    encoder: Option<JoinHandle<Result<Encoded, String>>>,
    temp: PathBuf,
    blobs: PathBuf,
    written: u64,
    /// How many encoded bytes are in the file.
    stored: watch::Receiver<Produced>,
    confirmed: Confirmed,
    /// Whether the blob was stored; then the temporary file is gone.
    done: bool,
}

/// `blobs/sha256/<hex>` of a digest, refusing anything but `sha256:` and 64 lowercase hex
/// digits: the digest becomes a file name.
fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, String> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(root.join("blobs/sha256").join(hex))
        }
        _ => Err(format!("{digest:?} is not a sha256 digest")),
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A temporary file next to `dir`'s entries, unique to this process and call.
fn temp_path(dir: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        ".ocipush-tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `path` whole or not at all: a synced temporary file renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = temp_path(dir);
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

impl Directory {
    /// Opens `root`, creating it (and `oci-layout`, an empty `index.json` and `blobs/sha256`)
    /// when it does not exist or is empty. Any other directory must already be a layout.
    pub fn open(root: &Path) -> Result<Self, String> {
        let at = |e: io::Error| format!("OCI layout {}: {e}", root.display());
        std::fs::create_dir_all(root).map_err(at)?;
        let marker = root.join("oci-layout");
        match std::fs::read(&marker) {
            Ok(bytes) => {
                let version = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v["imageLayoutVersion"].as_str().map(str::to_string));
                if !version.as_deref().is_some_and(|v| v.starts_with("1.")) {
                    return Err(format!(
                        "OCI layout {}: its oci-layout file does not say imageLayoutVersion 1.x",
                        root.display()
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if std::fs::read_dir(root).map_err(at)?.next().is_some() {
                    return Err(format!(
                        "{} is not empty and not an OCI image layout (it has no oci-layout file): refusing to write there",
                        root.display()
                    ));
                }
                write_atomic(&marker, OCI_LAYOUT.as_bytes()).map_err(at)?;
            }
            Err(e) => return Err(at(e)),
        }
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(at)?;
        let directory = Self {
            root: root.to_path_buf(),
            confirmed: Confirmed::default(),
        };
        // An empty index makes a valid layout from the start; an existing one is kept.
        directory.update_index(|_| Ok(()))?;
        Ok(directory)
    }

    fn blob_size(&mut self, digest: &str) -> Result<Option<u64>, String> {
        let path = blob_path(&self.root, digest)?;
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                self.confirmed.lock().unwrap().insert(digest.to_string());
                Ok(Some(meta.len()))
            }
            Ok(_) => Err(format!("{} is not a file", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn put_blob(&mut self, digest: &str, data: &[u8]) -> Result<(), String> {
        let path = blob_path(&self.root, digest)?;
        let actual = sha256(data);
        if actual != digest {
            return Err(format!(
                "refusing to store blob {digest}: its bytes hash to {actual}"
            ));
        }
        write_atomic(&path, data).map_err(|e| format!("writing {}: {e}", path.display()))?;
        self.confirmed.lock().unwrap().insert(digest.to_string());
        Ok(())
    }

    /// The manifest stored as blob `digest`, read back for `--verify`; at most 4 MiB.
    fn get_manifest(&mut self, digest: &str) -> Result<Option<Vec<u8>>, String> {
        let path = blob_path(&self.root, digest)?;
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut body = Vec::new();
        file.take(MANIFEST_LIMIT + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if body.len() as u64 > MANIFEST_LIMIT {
            return Err(format!(
                "{} is over {} MiB: not a manifest",
                path.display(),
                MANIFEST_LIMIT >> 20
            ));
        }
        Ok(Some(body))
    }

    fn put_manifest(&mut self, tag: &str, media_type: &str, body: &[u8]) -> Result<String, String> {
        let referenced = ocipush_parse::referenced_digests(body)?;
        let missing = {
            let confirmed = self.confirmed.lock().unwrap();
            referenced.into_iter().find(|d| !confirmed.contains(d))
        };
        if let Some(missing) = missing {
            return Err(format!(
                "refusing to write manifest {tag} to OCI layout {}: it names blob {missing}, which is not in the layout",
                self.root.display()
            ));
        }
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
            Ok(())
        })?;
        Ok(digest)
    }

    /// Reads `index.json` (an empty index if there is none), lets `change` edit its
    /// `manifests`, and replaces it atomically. An exclusive lock on the directory keeps
    /// concurrent pushes to one layout from losing each other's entries.
    fn update_index(
        &self,
        change: impl FnOnce(&mut Vec<Value>) -> Result<(), String>,
    ) -> Result<(), String> {
        let path = self.root.join("index.json");
        let at = |e: io::Error| format!("{}: {e}", path.display());
        let lock = File::open(&self.root).map_err(at)?;
        lock.lock().map_err(at)?;
        let mut index = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() > INDEX_LIMIT => {
                return Err(format!("{} is larger than 64 MiB", path.display()))
            }
            Ok(_) => serde_json::from_slice::<Value>(&std::fs::read(&path).map_err(at)?)
                .ok()
                .filter(|v| v["manifests"].is_array())
                .ok_or_else(|| format!("{} is not an OCI image index", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] })
            }
            Err(e) => return Err(at(e)),
        };
        let before = index.clone();
        let Some(manifests) = index["manifests"].as_array_mut() else {
            unreachable!("checked above");
        };
        change(manifests)?;
        if index != before || !path.exists() {
            let bytes = serde_json::to_vec(&index).map_err(|e| e.to_string())?;
            write_atomic(&path, &bytes).map_err(at)?;
        }
        Ok(())
    }
}

impl LayerFile {
    /// Starts the encoder (`upload::encode`, as for a registry upload), writing into a
    /// temporary file.
    fn start(directory: &Directory, compression: Compression, level: u32) -> Result<Self, String> {
        let blobs = directory.root.join("blobs/sha256");
        let temp = temp_path(&blobs);
        let file = File::create(&temp).map_err(|e| format!("creating {}: {e}", temp.display()))?;
        let (input, chunks) = std_mpsc::sync_channel::<Vec<u8>>(INPUT_QUEUE);
        let (produced, stored) = watch::channel(Produced::default());
        let at = temp.display().to_string();
        let encoder = std::thread::spawn(move || {
            let encoded = encode(chunks, &file, produced, compression, level)?;
            file.sync_all().map_err(|e| format!("writing {at}: {e}"))?;
            Ok(encoded)
        });
        Ok(Self {
            input: Some(input),
            encoder: Some(encoder),
            temp,
            blobs,
            written: 0,
            stored,
            confirmed: directory.confirmed.clone(),
            done: false,
        })
    }

    fn write(&mut self, data: Vec<u8>) -> Result<(), String> {
        let len = data.len() as u64;
        let input = self.input.as_ref().ok_or("the layer file already ended")?;
        if input.send(data).is_err() {
            return Err(self.failure());
        }
        self.written += len;
        Ok(())
    }

    /// Why a layer file failed: the encoder's error, which includes the disk's.
    fn failure(&mut self) -> String {
        self.input = None;
        match self.encoder.take().map(|e| e.join()) {
            Some(Ok(Err(e))) => e,
            _ => format!("writing {} failed", self.temp.display()),
        }
    }

    fn finish(&mut self) -> Result<BlobDescriptor, String> {
        self.input = None; // ends the encoder's input
        let encoder = self.encoder.take().ok_or("the layer file already ended")?;
        let encoded = match encoder.join() {
            Ok(Ok(encoded)) => encoded,
            _ => return Err(self.failure()),
        };
        let path = self
            .blobs
            .join(encoded.digest.trim_start_matches("sha256:"));
        std::fs::rename(&self.temp, &path)
            .map_err(|e| format!("storing {}: {e}", path.display()))?;
        self.done = true;
        self.confirmed
            .lock()
            .unwrap()
            .insert(encoded.digest.clone());
        Ok(BlobDescriptor {
            digest: encoded.digest,
            size: encoded.size,
        })
    }
}

impl Drop for LayerFile {
    /// A layer file dropped before `finish` stored it leaves nothing behind.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.input = None;
        if let Some(encoder) = self.encoder.take() {
            let _ = encoder.join();
        }
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// One layout directory opened for reading: the source `oci:DIR[:TAG]`.
pub struct Reader {
    root: PathBuf,
}

impl Reader {
    fn open(root: &Path) -> Result<Self, String> {
        if !root.join("oci-layout").is_file() {
            return Err(format!(
                "{} is not an OCI image layout (it has no oci-layout file)",
                root.display()
            ));
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn index(&self) -> Result<Vec<u8>, String> {
        let path = self.root.join("index.json");
        let at = |e: io::Error| format!("reading {}: {e}", path.display());
        let size = std::fs::metadata(&path).map_err(at)?.len();
        if size > INDEX_LIMIT {
            return Err(format!("{} is larger than 64 MiB", path.display()));
        }
        std::fs::read(&path).map_err(at)
    }

    /// Up to `max` bytes of a blob from `offset`; short only at its end.
    fn read_blob(&self, digest: &str, offset: u64, max: u32) -> Result<Vec<u8>, String> {
        use std::os::unix::fs::FileExt;
        let path = blob_path(&self.root, digest)?;
        let at = |e: io::Error| format!("reading {}: {e}", path.display());
        let file = File::open(&path).map_err(at)?;
        let mut buf = vec![0u8; max.min(16 << 20) as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(at(e)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }
}

impl HostReader for HostState {
    fn index(&mut self, reader: Resource<Reader>) -> wasmtime::Result<Result<Vec<u8>, String>> {
        Ok(self.table.get(&reader)?.index())
    }

    fn read_blob(
        &mut self,
        reader: Resource<Reader>,
        digest: String,
        offset: u64,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let reader = self.table.get(&reader)?;
        Ok(crate::guest::timed(&mut self.waits.export, || {
            reader.read_blob(&digest, offset, max)
        }))
    }

    fn drop(&mut self, reader: Resource<Reader>) -> wasmtime::Result<()> {
        self.table.delete(reader)?;
        Ok(())
    }
}

impl Host for HostState {
    fn open_reader(&mut self, path: String) -> wasmtime::Result<Result<Resource<Reader>, String>> {
        // The guest may read only the layout the user named as the source.
        if self.layout_source.as_deref() != Some(path.as_str()) {
            return Ok(Err(format!(
                "refusing to read OCI layout {path:?}: it is not the source this push was given"
            )));
        }
        Ok(match Reader::open(Path::new(&path)) {
            Ok(reader) => Ok(self.table.push(reader)?),
            Err(e) => Err(e),
        })
    }

    fn open(&mut self, path: String) -> wasmtime::Result<Result<Resource<Directory>, String>> {
        // The guest may write only where the user said the image goes.
        if self.layout.as_deref() != Some(path.as_str()) {
            return Ok(Err(format!(
                "refusing to open OCI layout {path:?}: it is not the destination this push was given"
            )));
        }
        Ok(match Directory::open(Path::new(&path)) {
            Ok(directory) => Ok(self.table.push(directory)?),
            Err(e) => Err(e),
        })
    }
}

impl HostDirectory for HostState {
    fn blob_size(
        &mut self,
        directory: Resource<Directory>,
        digest: String,
    ) -> wasmtime::Result<Result<Option<u64>, String>> {
        Ok(self.table.get_mut(&directory)?.blob_size(&digest))
    }

    fn put_blob(
        &mut self,
        directory: Resource<Directory>,
        digest: String,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.table.get_mut(&directory)?.put_blob(&digest, &data))
    }

    fn start_layer(
        &mut self,
        directory: Resource<Directory>,
        compression: Compression,
        level: u32,
    ) -> wasmtime::Result<Result<Resource<LayerFile>, String>> {
        let directory = self.table.get(&directory)?;
        Ok(match LayerFile::start(directory, compression, level) {
            Ok(file) => Ok(self.table.push(file)?),
            Err(e) => Err(e),
        })
    }

    fn put_manifest(
        &mut self,
        directory: Resource<Directory>,
        tag: String,
        media_type: String,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<String, String>> {
        Ok(self
            .table
            .get_mut(&directory)?
            .put_manifest(&tag, &media_type, &body))
    }

    fn get_manifest(
        &mut self,
        directory: Resource<Directory>,
        digest: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        Ok(self.table.get_mut(&directory)?.get_manifest(&digest))
    }

    fn drop(&mut self, directory: Resource<Directory>) -> wasmtime::Result<()> {
        self.table.delete(directory)?;
        Ok(())
    }
}

impl HostLayerFile for HostState {
    fn write(
        &mut self,
        file: Resource<LayerFile>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let file = self.table.get_mut(&file)?;
        Ok(crate::guest::timed(&mut self.waits.upload, || {
            file.write(data)
        }))
    }

    fn progress(&mut self, file: Resource<LayerFile>) -> wasmtime::Result<UploadProgress> {
        let file = self.table.get(&file)?;
        Ok(UploadProgress {
            written: file.written,
            sent: file.stored.borrow().len,
        })
    }

    fn finish(
        &mut self,
        file: Resource<LayerFile>,
    ) -> wasmtime::Result<Result<BlobDescriptor, String>> {
        let file = self.table.get_mut(&file)?;
        Ok(crate::guest::timed(&mut self.waits.finish, || {
            file.finish()
        }))
    }

    fn drop(&mut self, file: Resource<LayerFile>) -> wasmtime::Result<()> {
        self.table.delete(file)?;
        Ok(())
    }
}
