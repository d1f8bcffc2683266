//! What several capabilities share: WIT types the work modules take in their own terms, and the
//! sandbox check.

use std::collections::HashMap;
use std::fmt;

use crate::bindings::ocipush::core::registry::{BlobDescriptor, Compression};
use crate::encode::{Codec, Encoded, Encoding};
use crate::state::HostError;

/// A WIT compression and level as the encoder takes them.
pub fn codec(compression: Compression, level: u32) -> Codec {
    match compression {
        Compression::None => Codec::None,
        Compression::Gzip => Codec::Gzip { level },
        Compression::Zstd => Codec::Zstd { level },
    }
}

/// The descriptor the guest gets for a finished layer; what its bytes are is remembered in
/// `encodings`, for the line that reports the layer.
pub fn descriptor(encoded: Encoded, encodings: &mut HashMap<String, Encoding>) -> BlobDescriptor {
    encodings.insert(encoded.digest.clone(), encoded.encoding);
    BlobDescriptor {
        digest: encoded.digest,
        size: encoded.size,
    }
}

/// A path the guest asked for that is not the one the user named.
#[derive(Debug)]
struct NotNamed {
    /// What was refused, e.g. `open archive`.
    action: &'static str,
    path: String,
    /// What the user named it for, e.g. `source`.
    role: &'static str,
}

impl fmt::Display for NotNamed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing to {} {:?}: it is not the {} this push was given",
            self.action, self.path, self.role
        )
    }
}

/// Lets the guest reach `path` only when it is exactly what the user named (one of `named`).
pub fn only_named<'a>(
    named: impl IntoIterator<Item = &'a str>,
    path: &str,
    action: &'static str,
    role: &'static str,
) -> Result<(), HostError> {
    if named.into_iter().any(|n| n == path) {
        return Ok(());
    }
    Err(HostError::message(NotNamed {
        action,
        path: path.to_string(),
        role,
    }))
}
