//! Reads back what a push published and parses it with oci-spec, the reference OCI types, so
//! that ocipush's own serde types are never the only reader of the manifests, indexes and
//! configs it writes.

use std::path::Path;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde_json::Value;

use super::{registry_get_ok, sha256_hex};

/// Every manifest type a registry may hold for us; asked for all at once so that the registry
/// serves the bytes as stored.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Config media types whose blob is an image configuration (artifacts carry other configs).
const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Where a push's manifests and blobs can be read back from.
enum Store<'a> {
    /// A plain-HTTP registry without authentication.
    Registry { registry: &'a str, repo: &'a str },
    /// An OCI image layout directory.
    Layout(&'a Path),
}

impl Store<'_> {
    fn manifest(&self, digest: &str) -> Vec<u8> {
        match self {
            Store::Registry { registry, repo } => {
                registry_get_ok(registry, repo, &format!("manifests/{digest}"), Some(ACCEPT))
            }
            Store::Layout(_) => self.blob(digest),
        }
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        let bytes = match self {
            Store::Registry { registry, repo } => {
                registry_get_ok(registry, repo, &format!("blobs/{digest}"), None)
            }
            Store::Layout(dir) => {
                let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
                let path = dir.join("blobs/sha256").join(hex);
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            }
        };
        assert_eq!(
            format!("sha256:{}", sha256_hex(&bytes)),
            digest,
            "published bytes do not hash to the digest that names them"
        );
        bytes
    }
}

/// After a successful push to DEST that reported DIGEST: parses the manifest or index there with
/// oci-spec, each manifest an index names, and each image config, checking every digest. A
/// registry destination is read back when it is the services' plain-HTTP registry (pushes to
/// TLS or authenticating registries are read back by their own tests through skopeo).
pub fn parse_published(dest: &str, digest: &str) {
    if let Some(store) = store_of(dest) {
        parse(&store, digest);
    }
}

/// The image config of the manifest DEST holds at DIGEST, read back and parsed with oci-spec
/// (DEST: the services' plain-HTTP registry or an OCI layout).
pub fn published_config(dest: &str, digest: &str) -> ImageConfiguration {
    let store =
        store_of(dest).unwrap_or_else(|| panic!("{dest} is not a destination read back here"));
    let manifest = ImageManifest::from_reader(&store.manifest(digest)[..])
        .unwrap_or_else(|e| panic!("oci-spec cannot read manifest {digest}: {e}"));
    ImageConfiguration::from_reader(&store.blob(manifest.config().digest().as_ref())[..])
        .unwrap_or_else(|e| panic!("oci-spec cannot read the config of {digest}: {e}"))
}

/// Where DEST's pushes are read back from: its OCI layout, or the services' plain-HTTP
/// registry; `None` for another registry.
fn store_of(dest: &str) -> Option<Store<'_>> {
    if let Some(layout) = dest.strip_prefix("oci:") {
        let dir = match layout.rsplit_once(':') {
            Some((dir, tag)) if !tag.contains('/') => dir,
            _ => layout,
        };
        return Some(Store::Layout(Path::new(dir)));
    }
    let plain = std::env::var("OCIPUSH_TEST_REGISTRY").ok()?;
    let dest = dest.strip_prefix("docker://").unwrap_or(dest);
    let (registry, path) = dest.split_once('/')?;
    if registry != plain.trim() {
        return None;
    }
    let repo = match path.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => path,
    };
    Some(Store::Registry { registry, repo })
}

fn parse(store: &Store, digest: &str) {
    let raw = store.manifest(digest);
    assert_eq!(
        format!("sha256:{}", sha256_hex(&raw)),
        digest,
        "the manifest served by digest does not hash to it"
    );
    let value: Value = serde_json::from_slice(&raw)
        .unwrap_or_else(|e| panic!("manifest {digest} is not JSON: {e}"));
    if value.get("manifests").is_some() {
        let index = ImageIndex::from_reader(&raw[..])
            .unwrap_or_else(|e| panic!("oci-spec cannot read index {digest}: {e}"));
        for entry in index.manifests() {
            parse(store, entry.digest().as_ref());
        }
        return;
    }
    let manifest = ImageManifest::from_reader(&raw[..])
        .unwrap_or_else(|e| panic!("oci-spec cannot read manifest {digest}: {e}"));
    let config = manifest.config();
    let bytes = store.blob(config.digest().as_ref());
    assert_eq!(bytes.len() as u64, config.size(), "config size in {digest}");
    if IMAGE_CONFIGS.contains(&config.media_type().to_string().as_str()) {
        let image = ImageConfiguration::from_reader(&bytes[..])
            .unwrap_or_else(|e| panic!("oci-spec cannot read the config of {digest}: {e}"));
        assert_eq!(
            image.rootfs().diff_ids().len(),
            manifest.layers().len(),
            "manifest {digest}: one layer per diff ID in its config"
        );
    }
}
