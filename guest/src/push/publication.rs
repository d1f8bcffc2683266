//! The context every stage of a push works in, and what the stages hand each other: one
//! `Publication` (the request's settings, the destinations and the repositories opened there,
//! the source, the cache, progress) in place of argument lists.

use anyhow::Result;

use super::targets::Targets;
use crate::digest::Digest;
use crate::manifest::{parse_annotation, Format};
use crate::model::{
    Annotations, Blob, Change, Compression, Encoding, ImageSummary, Layer, OwnManifest,
};
use crate::ports::{Cache, ProgressSink};
#[cfg(test)]
use crate::reference::Destination;

/// How images are published: layer encoding, manifest format, annotations, and whether to read
/// the result back.
#[derive(Clone, Debug)]
pub struct Settings {
    pub encoding: Encoding,
    pub format: Format,
    /// The user's annotations, on every manifest and index written (OCI format only).
    pub annotations: Annotations,
    /// After writing, fetch what was written by digest and check every blob it names.
    pub verify: bool,
    /// Which of these the user chose rather than took by default: what decides whether the
    /// source's own manifest can be published unchanged.
    pub chosen: Chosen,
    /// Layer uploads in flight at once (at least 1): one being written, the others closed
    /// and still being sent by the host.
    pub jobs: u32,
}

/// Settings the user gave explicitly (a level counts as choosing the compression).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chosen {
    pub compression: bool,
    pub format: bool,
}

impl Settings {
    /// Settings as a host sends them, checked as the command line checks them (for hosts that
    /// do not): the level against the compression's range, each annotation's key.
    pub fn new(
        compression: Compression,
        level: u32,
        format: Format,
        annotations: Vec<(String, String)>,
        verify: bool,
    ) -> Result<Self> {
        let mut checked = Annotations::new();
        for (key, value) in annotations {
            let (key, value) = parse_annotation(&format!("{key}={value}"))?;
            checked.insert(key, value);
        }
        Ok(Self {
            encoding: Encoding::new(compression, level)?,
            format,
            annotations: checked,
            verify,
            chosen: Chosen::default(),
            jobs: 1,
        })
    }

    /// What in these settings the source's own manifest (or index) `own` does not say: `None`
    /// when it is published byte for byte.
    pub fn changes(&self, own: &OwnManifest) -> Option<Change> {
        let ours = [
            self.format.manifest_media_type(),
            self.format.index_media_type(),
        ];
        if self.chosen.compression {
            Some(Change::Compression)
        } else if self.chosen.format && !ours.contains(&own.media_type.as_str()) {
            Some(Change::Format)
        } else if !self.annotations.is_empty() {
            Some(Change::Annotations)
        } else {
            None
        }
    }
}

/// What was published.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    pub digest: Digest,
    pub repository: String,
}

/// An image to publish: its name as the user gave it, and what its source said of it before
/// any traffic.
pub struct Image {
    pub name: String,
    pub summary: ImageSummary,
}

/// One push: what it was asked, where it goes, and the capabilities it goes through.
pub struct Publication<'a, S, R> {
    pub settings: &'a Settings,
    /// The destinations, and the repositories (or layout directories) opened there.
    pub targets: Targets<R>,
    pub source: &'a mut S,
    pub cache: &'a mut dyn Cache,
    pub progress: &'a mut dyn ProgressSink,
}

/// A config as published: its blob, and its bytes (the manifest's annotations and the index's
/// platform come from them).
pub struct Config {
    pub blob: Blob,
    pub bytes: Vec<u8>,
}

/// An image's config and layers, all in the destination now: what a manifest may name.
pub struct Stored {
    pub config: Config,
    pub layers: Vec<Layer>,
    /// The source's own manifest naming exactly these blobs, when the export held one.
    pub own: Option<OwnManifest>,
}

/// A layer some repository of the push holds already, found before the export.
#[derive(Clone)]
pub struct Present {
    pub blob: Blob,
    /// Per repository of the push (`Targets::sinks`), how it holds the blob; `None` where it
    /// lacks it.
    pub held: Vec<Option<Found>>,
}

/// How a repository came to hold a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The repository it was mounted from; `None` when the destination held it.
    pub mounted_from: Option<String>,
}

impl Present {
    /// Whether every repository of the push holds it: then it is not uploaded at all.
    pub fn everywhere(&self) -> bool {
        self.held.iter().all(Option::is_some)
    }

    /// The repository a mount brought it from, if one did.
    pub fn mounted_from(&self) -> Option<String> {
        self.held
            .iter()
            .flatten()
            .find_map(|found| found.mounted_from.clone())
    }
}

#[cfg(test)]
impl Settings {
    /// gzip level 6, OCI, no annotations, no read-back: the tests' defaults.
    pub fn for_tests() -> Self {
        Self::new(Compression::Gzip, 6, Format::Oci, Vec::new(), false).unwrap()
    }
}

#[cfg(test)]
impl<'a> Publication<'a, crate::testing::Memory, crate::testing::MemoryRegistry> {
    /// A publication to `destination` over a harness's in-memory capabilities, for the tests
    /// of a single stage.
    pub fn over(
        h: &'a mut crate::testing::Harness,
        settings: &'a Settings,
        destination: &str,
    ) -> Self {
        Self {
            settings,
            targets: Targets::one(Destination::parse(destination).unwrap(), h.registry.clone()),
            source: &mut h.source,
            cache: &mut h.cache,
            progress: &mut h.events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_a_host_are_checked_as_the_command_line_checks_them() {
        let annotations = vec![("org.example.k".to_string(), "v=w".to_string())];
        let settings =
            Settings::new(Compression::Zstd, 19, Format::Oci, annotations, true).unwrap();
        assert_eq!(settings.encoding.name(), "zstd-19");
        assert_eq!(settings.annotations["org.example.k"], "v=w");
        assert!(settings.verify);

        let err = Settings::new(Compression::Gzip, 10, Format::Oci, vec![], false)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "compression level 10 is out of range for gzip (1-9)");
        let bad_key = vec![("a b".to_string(), "c".to_string())];
        let err = Settings::new(Compression::Gzip, 6, Format::Oci, bad_key, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid key \"a b\""), "{err}");
    }
}
