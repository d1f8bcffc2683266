//! `ocipush verify DEST --key PUB.pem`: is the manifest DEST's tag names signed by that key
//! for that repository (or `oci:` layout), and which guest published its provenance? Reading is
//! here, behind `Store`; what a signature manifest, payload, envelope or statement says is read
//! by the guest crate's pure `evidence` modules, natively.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use ocipush_guest::digest::Digest;
use ocipush_guest::evidence::referrers_tag;
use ocipush_guest::evidence::signature::{self, DSSE_ENVELOPE, IN_TOTO};
use ocipush_guest::evidence::statement::{self, Builder};
use ocipush_guest::reference::{Destination, Target};

use crate::interrupt::Runtime;
use crate::layout;
use crate::registry::{self, Repository};
use crate::signing::PublicKey;

/// Where an image and its evidence are read from: a registry repository, or an OCI layout
/// directory, into which a push writes the same artifacts under the same tags.
trait Store {
    /// A manifest by tag or digest, or `None`.
    fn manifest(&self, reference: &str) -> Result<Option<Vec<u8>>, Error>;
    /// A small blob as stored, or `None`; the caller checks it against its digest.
    fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, Error>;
    /// The referrers API's index of `digest`'s referrers, or `None` where there is no API.
    fn referrers(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error>;
}

/// A registry repository, read through the runtime a signal interrupts.
struct Registry<'a> {
    rt: &'a Runtime,
    repository: Repository,
    /// `host/name`, for the line that says the registry served other bytes.
    location: String,
}

impl Store for Registry<'_> {
    /// One asked for by digest is refused unless its bytes hash to it, as a layout's is: the
    /// referrers index names provenance manifests by digest.
    fn manifest(&self, reference: &str) -> Result<Option<Vec<u8>>, Error> {
        let body = self
            .rt
            .block_on(self.repository.get_manifest(reference))??;
        if let Some(body) = &body {
            let actual = sha256(body);
            if reference.starts_with("sha256:") && reference != actual {
                return Err(Error::Misserved {
                    location: self.location.clone(),
                    digest: reference.to_string(),
                    actual,
                });
            }
        }
        Ok(body)
    }

    fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.rt.block_on(self.repository.get_blob(digest))??)
    }

    fn referrers(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        // A registry without the API answers 404, or with an error of its own: either way, the
        // tag schema is where a client that found no API wrote its referrers.
        Ok(self
            .rt
            .block_on(self.repository.get_referrers(digest.as_str()))?
            .ok()
            .flatten())
    }
}

impl Store for layout::Reader {
    fn manifest(&self, reference: &str) -> Result<Option<Vec<u8>>, Error> {
        layout::Reader::manifest(self, reference).map_err(Error::Layout)
    }

    fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        self.small_blob(digest).map_err(Error::Layout)
    }

    /// A layout has no referrers API: a push lists its artifacts under the tag schema's tag.
    fn referrers(&self, _: &Digest) -> Result<Option<Vec<u8>>, Error> {
        Ok(None)
    }
}

/// Why an image does not verify.
#[derive(Debug)]
pub enum Failure {
    /// The tag names no manifest.
    NoImage(String),
    /// There is no signature manifest at all.
    Unsigned { image: String, tag: String },
    /// Signatures, but none by this key over an intact payload.
    OtherKey {
        image: String,
        key: PathBuf,
        signatures: usize,
    },
    /// A signature by this key, whose payload names something else (`what`: digest,
    /// repository or layout).
    Names {
        image: String,
        what: &'static str,
        named: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoImage(image) => write!(f, "{image} does not exist"),
            Self::Unsigned { image, tag } => {
                write!(f, "{image} is not signed: there is no signature manifest under {tag}")
            }
            Self::OtherKey {
                image,
                key,
                signatures,
            } => write!(
                f,
                "{image} has no signature by the key in {}: none of its {signatures} signatures verifies with it over an intact payload",
                key.display()
            ),
            Self::Names { image, what, named } => write!(
                f,
                "the signature of {image} by that key names {what} {named}, not this one"
            ),
        }
    }
}

/// A verify that could not finish, or found the image unverified.
#[derive(Debug)]
pub enum Error {
    Key(crate::signing::KeyError),
    Destination(String),
    /// The registry's HTTP client could not be built (its CA file, for one).
    Client(String),
    Registry(registry::Error),
    Layout(layout::Error),
    /// The registry answered a manifest asked for by digest with bytes that hash to `actual`.
    Misserved {
        location: String,
        digest: String,
        actual: String,
    },
    Interrupted(crate::interrupt::Interrupted),
    Failed(Failure),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(e) => e.fmt(f),
            Self::Destination(e) | Self::Client(e) => f.write_str(e),
            Self::Registry(e) => e.fmt(f),
            Self::Layout(e) => e.fmt(f),
            Self::Misserved {
                location,
                digest,
                actual,
            } => write!(
                f,
                "{location} serves manifest {digest} with bytes that hash to {actual}"
            ),
            Self::Interrupted(e) => e.fmt(f),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<registry::Error> for Error {
    fn from(e: registry::Error) -> Self {
        Self::Registry(e)
    }
}

impl From<crate::interrupt::Interrupted> for Error {
    fn from(e: crate::interrupt::Interrupted) -> Self {
        Self::Interrupted(e)
    }
}

/// Provenance found for the image.
#[derive(Debug)]
pub struct Found {
    pub builder: Builder,
    /// Whether a DSSE signature by the key covers it.
    pub signed: bool,
}

/// What a verify that passed found.
#[derive(Debug)]
pub struct Verified {
    /// `host/name:tag@sha256:…` or `oci:DIR:tag@sha256:…`.
    pub image: String,
    pub provenance: Vec<Found>,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "verified {}: signed by that key", self.image)?;
        if self.provenance.is_empty() {
            writeln!(f, "provenance: none")?;
        }
        for found in &self.provenance {
            writeln!(
                f,
                "provenance: pushed by guest {} (ocipush:core@{}), {}",
                found.builder.guest,
                found.builder.contract,
                if found.signed {
                    "signed by that key"
                } else {
                    "not signed by that key"
                }
            )?;
        }
        Ok(())
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Verifies DEST with the public key in `key`: an `oci:` layout read from its directory, a
/// registry repository opened with `open`.
pub fn verify(
    rt: &Runtime,
    destination: &str,
    key: &Path,
    open: impl FnOnce(&Target) -> Result<Repository, Error>,
) -> Result<Verified, Error> {
    let parsed =
        Destination::parse(destination).map_err(|e| Error::Destination(format!("{e:#}")))?;
    let public = PublicKey::load(key).map_err(Error::Key)?;
    let image = Image {
        name: format!("{}:{}", parsed.location(), parsed.tag()),
        tag: parsed.tag(),
        // What a push's signature names: the repository, or `oci:DIR` as the push named it.
        reference: parsed.location(),
        kind: match parsed {
            Destination::Registry(_) => "repository",
            Destination::Layout(_) => "layout",
        },
    };
    match &parsed {
        Destination::Registry(target) => {
            let store = Registry {
                rt,
                repository: open(target)?,
                location: parsed.location(),
            };
            check(&store, &image, &public, key)
        }
        Destination::Layout(target) => {
            let store = layout::Reader::open(Path::new(&target.path)).map_err(Error::Layout)?;
            check(&store, &image, &public, key)
        }
    }
}

/// The image verify is asked about.
struct Image<'a> {
    /// `host/name:tag` or `oci:DIR:tag`.
    name: String,
    tag: &'a str,
    /// What its signature must name.
    reference: String,
    /// What `reference` is, for the line that says a signature names another one.
    kind: &'static str,
}

/// The manifest under the image's tag, its signature by `public`, and its provenance.
fn check(
    store: &impl Store,
    image: &Image<'_>,
    public: &PublicKey,
    key: &Path,
) -> Result<Verified, Error> {
    let Some(manifest) = store.manifest(image.tag)? else {
        return Err(Error::Failed(Failure::NoImage(image.name.clone())));
    };
    let digest = Digest::of(&manifest);
    let shown = format!("{}@{digest}", image.name);
    check_signature(store, image, &digest, &shown, public, key)?;
    let provenance = provenance(store, &digest, public)?;
    Ok(Verified {
        image: shown,
        provenance,
    })
}

/// Passes when a signature by `public` over an intact payload names `digest` and the image's
/// repository or layout.
fn check_signature(
    store: &impl Store,
    asked: &Image<'_>,
    digest: &Digest,
    image: &str,
    public: &PublicKey,
    key: &Path,
) -> Result<(), Error> {
    let tag = signature::signature_tag(digest);
    let Some(manifest) = store.manifest(&tag)? else {
        return Err(Error::Failed(Failure::Unsigned {
            image: image.to_string(),
            tag,
        }));
    };
    let signatures = signature::signatures(&manifest).unwrap_or_default();
    let mut names_other = None;
    for signed in &signatures {
        let Some(payload) = store.blob(signed.payload.as_str())? else {
            continue;
        };
        if sha256(&payload) != signed.payload.as_str()
            || !public.verifies(&payload, &signed.signature)
        {
            continue;
        }
        match signature::parse_simple_signing(&payload) {
            Ok(claim) if claim.digest != *digest => {
                names_other = Some(("digest", claim.digest.to_string()))
            }
            Ok(claim) if claim.docker_reference != asked.reference => {
                names_other = Some((asked.kind, claim.docker_reference))
            }
            Ok(_) => return Ok(()),
            Err(_) => continue,
        }
    }
    Err(Error::Failed(match names_other {
        Some((what, named)) => Failure::Names {
            image: image.to_string(),
            what,
            named,
        },
        None => Failure::OtherKey {
            image: image.to_string(),
            key: key.to_path_buf(),
            signatures: signatures.len(),
        },
    }))
}

/// The provenance statements that refer to `digest`: from the referrers API where the registry
/// has one, else the referrers tag schema's index. Statements that do not read as ocipush's
/// provenance about this digest are left out.
fn provenance(
    store: &impl Store,
    digest: &Digest,
    public: &PublicKey,
) -> Result<Vec<Found>, Error> {
    let index = match store.referrers(digest)? {
        Some(index) => Some(index),
        None => store.manifest(&referrers_tag(digest))?,
    };
    let Some(index) = index else {
        return Ok(Vec::new());
    };
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap_or_default();
    let mut found = Vec::new();
    for entry in index["manifests"].as_array().into_iter().flatten() {
        if entry["artifactType"] != IN_TOTO {
            continue;
        }
        let Some(reference) = entry["digest"].as_str() else {
            continue;
        };
        let Some(artifact) = store.manifest(reference)? else {
            continue;
        };
        let artifact: serde_json::Value = serde_json::from_slice(&artifact).unwrap_or_default();
        let layer = &artifact["layers"][0];
        if artifact["subject"]["digest"] != digest.as_str() {
            continue;
        }
        let Some(layer_digest) = layer["digest"].as_str() else {
            continue;
        };
        let Some(blob) = store.blob(layer_digest)? else {
            continue;
        };
        if sha256(&blob) != layer_digest {
            continue;
        }
        let (statement, signed) = if layer["mediaType"] == DSSE_ENVELOPE {
            let Ok(opened) = signature::open_envelope(&blob) else {
                continue;
            };
            let pae = signature::pae(&opened.payload_type, &opened.payload);
            let signed = opened.payload_type == IN_TOTO
                && opened.signatures.iter().any(|s| public.verifies(&pae, s));
            (opened.payload, signed)
        } else {
            (blob, false)
        };
        if let Ok(builder) = statement::read_statement(&statement, digest) {
            found.push(Found { builder, signed });
        }
    }
    Ok(found)
}
