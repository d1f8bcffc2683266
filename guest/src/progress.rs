//! Progress events, as the guest reports them to the host's progress sink (mirrors the WIT
//! `progress` interface, so the pipeline stays testable without bindings). They go to a
//! `ports::ProgressSink`.

use crate::digest::Digest;
use crate::model::Change;

/// One layer, by its 1-based position in the export and the tar entry it is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    pub index: u32,
    pub entry: String,
}

/// Byte counts of one layer: read from the export (`done`), encoded and sent (`sent`), and the
/// layer's exact uncompressed size (`total`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBytes {
    pub layer: LayerRef,
    pub done: u64,
    pub sent: u64,
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Started {
        image: String,
        layers: u32,
        total_bytes: u64,
    },
    LayerStarted(LayerBytes),
    LayerProgress(LayerBytes),
    LayerDone {
        layer: LayerRef,
        diff_id: Digest,
        /// 1-based position of the layer in the image's diff IDs.
        position: u32,
        digest: Digest,
        size: u64,
    },
    /// The registry already holds this layer, or mounted it: neither exported nor uploaded.
    LayerSkipped {
        position: u32,
        diff_id: Digest,
        digest: Digest,
        size: u64,
        /// The repository it was mounted from, if it was.
        mounted_from: Option<String>,
    },
    ConfigDone(Digest),
    ManifestDone {
        reference: String,
        digest: Digest,
    },
    /// What was written was read back by digest: `manifests` manifests (an index and those it
    /// names, or one) hashed to their digests, and all `blobs` blobs they name are present.
    Verified {
        digest: Digest,
        manifests: u32,
        blobs: u32,
    },
    /// The source's own manifest `own` was not published as it is: a new one was built, because
    /// the user asked for what it does not say (`change`).
    ManifestRebuilt {
        own: Digest,
        change: Change,
    },
    /// A line of a build's output.
    BuildOutput(String),
    /// The daemon built the image `tag` as `id`.
    Built {
        tag: String,
        id: Digest,
    },
}
