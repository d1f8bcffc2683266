//! Call order, enforced whatever guest runs: a manifest is written only when every blob it
//! names was confirmed at its destination during this session (found there, mounted, or
//! written). One set per registry repository or layout directory, shared with its uploads.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

/// The blobs a destination is known to hold.
#[derive(Clone, Default)]
pub struct Confirmed(Arc<Mutex<HashSet<String>>>);

/// Why a manifest may not be written yet.
#[derive(Debug, PartialEq)]
pub enum Unconfirmed {
    /// The manifest is not JSON that names blobs the way manifests and indexes do.
    Unreadable(String),
    /// It names this blob, which is not confirmed.
    Missing(String),
}

impl Confirmed {
    pub fn insert(&self, digest: impl Into<String>) {
        self.0.lock().unwrap().insert(digest.into());
    }

    /// Passes when every blob (config, layers, or an index's manifests) that `manifest` names
    /// is confirmed.
    pub fn check(&self, manifest: &[u8]) -> Result<(), Unconfirmed> {
        let referenced =
            ocipush_parse::referenced_digests(manifest).map_err(Unconfirmed::Unreadable)?;
        let confirmed = self.0.lock().unwrap();
        match referenced.into_iter().find(|d| !confirmed.contains(d)) {
            Some(missing) => Err(Unconfirmed::Missing(missing)),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Unconfirmed {
    /// The manifest's own problem; a missing blob is worded by the destination, which knows
    /// where it is missing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable(e) => f.write_str(e),
            Self::Missing(digest) => write!(f, "it names blob {digest}, which is not confirmed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_passes_only_when_every_blob_it_names_is_confirmed() {
        let (config, layer) = (
            format!("sha256:{}", "c".repeat(64)),
            format!("sha256:{}", "1".repeat(64)),
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{config}"}},"layers":[{{"digest":"{layer}"}}]}}"#
        );
        let confirmed = Confirmed::default();
        confirmed.insert(&config);
        assert_eq!(
            confirmed.check(manifest.as_bytes()),
            Err(Unconfirmed::Missing(layer.clone()))
        );
        confirmed.clone().insert(&layer);
        assert_eq!(confirmed.check(manifest.as_bytes()), Ok(()));
        assert!(matches!(
            confirmed.check(b"not json"),
            Err(Unconfirmed::Unreadable(_))
        ));
    }
}
