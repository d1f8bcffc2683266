//! Evidence from the audited core, written after the tag: SLSA provenance as an OCI artifact
//! that refers to the pushed manifest, and cosign signatures made with a key the host holds.
//! The image is published by then, so a failure here says so (`component` words it).
//!
//! `signature` and `statement` are pure: the host uses them natively to check what `ocipush
//! verify` fetches.

pub mod signature;
pub mod statement;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::digest::Digest;
use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::ports::BlobSink;
use crate::push::{Pushed, Settings};
use crate::reference::Destination;
use signature::{DSSE_ENVELOPE, IN_TOTO};
use statement::{Instant, Provenance, SourceImage};

/// The OCI 1.1 empty descriptor's media type, and its content `{}`.
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_CONTENT: &[u8] = b"{}";

/// The host's clock.
pub trait Clock {
    fn now(&mut self) -> Instant;
}

/// The key the host holds for the guest: it signs what it is given (ECDSA P-256, DER).
pub trait Signer {
    fn sign(&mut self, payload: &[u8]) -> Result<Vec<u8>>;
}

/// A destination that takes artifacts referring to a manifest.
pub trait Referrers: BlobSink {
    /// Writes an artifact manifest under its digest; returns that digest and, when the
    /// registry keeps referrers itself (an `OCI-Subject` answer), the subject it names.
    fn put_referrer(&mut self, media_type: &str, body: &[u8]) -> Result<(Digest, Option<Digest>)>;
}

/// What to publish about a push, and what it needs to say it.
pub struct Request<'a> {
    /// `push`, `index` or `build`.
    pub command: &'a str,
    /// The destination as the user named it.
    pub destination: &'a str,
    pub settings: &'a Settings,
    pub provenance: bool,
    /// The guest's digest, as the host loaded it.
    pub guest: Digest,
    /// The source images, as the push read them.
    pub sources: &'a [SourceImage],
    /// When the push started, by the host's clock.
    pub started: Instant,
}

/// What was written.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The provenance artifact's digest.
    pub provenance: Option<Digest>,
    /// The signature manifest's digest.
    pub signature: Option<Digest>,
}

/// Writes provenance (when asked) and a signature (when there is a key) about `pushed`.
pub fn publish(
    request: &Request<'_>,
    pushed: &Pushed,
    sink: &mut impl Referrers,
    clock: &mut dyn Clock,
    mut signer: Option<&mut dyn Signer>,
) -> Result<Written> {
    let mut written = Written::default();
    if !request.provenance && signer.is_none() {
        return Ok(written);
    }
    let subject = subject(sink, &pushed.digest)?;
    if request.provenance {
        let tag = match Destination::parse(request.destination)? {
            Destination::Registry(target) => target.tag,
            Destination::Layout(layout) => layout.tag,
        };
        let statement = statement::statement(&Provenance {
            command: request.command,
            destination: request.destination,
            repository: &pushed.repository,
            tag: &tag,
            digest: &pushed.digest,
            sources: request.sources,
            settings: request.settings,
            guest: &request.guest,
            started: request.started,
            finished: clock.now(),
        });
        let layer = match signer.as_deref_mut() {
            Some(signer) => {
                let signature = signer
                    .sign(&signature::pae(IN_TOTO, &statement))
                    .context("signing the provenance")?;
                (
                    DSSE_ENVELOPE,
                    signature::envelope(IN_TOTO, &statement, &signature),
                )
            }
            None => (IN_TOTO, statement),
        };
        written.provenance = Some(
            put_artifact(sink, &subject, IN_TOTO, layer).context("publishing the provenance")?,
        );
    }
    if let Some(signer) = signer {
        written.signature = Some(sign(sink, pushed, signer).context("publishing the signature")?);
    }
    Ok(written)
}

/// The pushed manifest's descriptor, read back from the destination (which confirms it there).
fn subject(sink: &mut impl BlobSink, digest: &Digest) -> Result<Value> {
    let Some(body) = sink.get_manifest(digest.as_str())? else {
        bail!("the destination does not hold manifest {digest}");
    };
    if Digest::of(&body) != *digest {
        bail!("manifest {digest} reads back as other bytes");
    }
    let json: Value = serde_json::from_slice(&body).context("the pushed manifest")?;
    let media_type = json["mediaType"].as_str().unwrap_or(OCI_MANIFEST);
    Ok(json!({ "mediaType": media_type, "digest": digest.as_str(), "size": body.len() }))
}

/// Writes an OCI 1.1 artifact manifest (`artifact_type`, the empty config, one layer) that
/// refers to `subject`, and lists it in the referrers tag schema's index unless the registry
/// keeps referrers itself.
fn put_artifact(
    sink: &mut impl Referrers,
    subject: &Value,
    artifact_type: &str,
    (layer_type, layer): (&str, Vec<u8>),
) -> Result<Digest> {
    let empty = Digest::of(EMPTY_CONTENT);
    sink.put_blob(&empty, EMPTY_CONTENT)?;
    let layer_digest = Digest::of(&layer);
    sink.put_blob(&layer_digest, &layer)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": EMPTY, "digest": empty.as_str(), "size": EMPTY_CONTENT.len(), "data": "e30=" },
        "layers": [{ "mediaType": layer_type, "digest": layer_digest.as_str(), "size": layer.len() }],
        "subject": subject,
    }))?;
    let (digest, answered) = sink.put_referrer(OCI_MANIFEST, &manifest)?;
    let subject_digest = Digest::parse(
        subject["digest"].as_str().unwrap_or_default(),
        "the subject",
    )?;
    if answered.as_ref() != Some(&subject_digest) {
        let entry = json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest.as_str(),
            "size": manifest.len(),
            "artifactType": artifact_type,
        });
        list_referrer(sink, &subject_digest, entry)?;
    }
    Ok(digest)
}

/// The referrers tag schema's tag for `subject`.
pub fn referrers_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// Adds `entry` to the index under `sha256-<hex>`, keeping every referrer it already lists
/// that the destination still holds.
fn list_referrer(sink: &mut impl BlobSink, subject: &Digest, entry: Value) -> Result<()> {
    let tag = referrers_tag(subject);
    let listed = match sink.get_manifest(&tag)? {
        None => Vec::new(),
        Some(bytes) => {
            let index: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("the referrers index {tag} is not JSON"))?;
            match index["manifests"].as_array() {
                Some(listed) => listed.clone(),
                None => bail!("{tag} is not a referrers index: it lists no manifests"),
            }
        }
    };
    let mut manifests = Vec::with_capacity(listed.len() + 1);
    for listed in listed {
        if listed["digest"] == entry["digest"] {
            continue;
        }
        let digest = Digest::parse(
            listed["digest"].as_str().unwrap_or_default(),
            "a referrer's digest",
        )?;
        // Reading it back confirms it for the host's check of the index.
        if sink.get_manifest(digest.as_str())?.is_some() {
            manifests.push(listed);
        }
    }
    manifests.push(entry);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))?;
    sink.put_manifest(&tag, OCI_INDEX, &index)?;
    Ok(())
}

/// Signs `pushed` as cosign does: a simple-signing payload naming the repository and digest,
/// its signature in the layer's annotation, under `sha256-<hex>.sig`, beside the signatures
/// already there.
fn sign(sink: &mut impl BlobSink, pushed: &Pushed, signer: &mut dyn Signer) -> Result<Digest> {
    let payload = signature::simple_signing_payload(&pushed.repository, &pushed.digest);
    let signed = signer.sign(&payload)?;
    let tag = signature::signature_tag(&pushed.digest);
    let existing = sink.get_manifest(&tag)?;
    if let Some(existing) = &existing {
        for (digest, size) in signature::payloads(existing)? {
            if sink.blob_size(&digest)? != Some(size) {
                bail!("the signatures under {tag} name payload {digest}, which the destination does not hold");
            }
        }
    }
    let manifest = signature::add_signature(existing.as_deref(), &payload, &signed)?;
    sink.put_blob(&Digest::of(&payload), &payload)?;
    sink.put_blob(&Digest::of(&manifest.config), &manifest.config)?;
    sink.put_manifest(&tag, OCI_MANIFEST, &manifest.manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryRegistry;

    impl Referrers for MemoryRegistry {
        fn put_referrer(
            &mut self,
            media_type: &str,
            body: &[u8],
        ) -> Result<(Digest, Option<Digest>)> {
            let digest = Digest::of(body);
            self.put_manifest(digest.as_str(), media_type, body)?;
            Ok((digest, None))
        }
    }

    struct Ticks(u64);
    impl Clock for Ticks {
        fn now(&mut self) -> Instant {
            self.0 += 1;
            Instant {
                seconds: self.0,
                nanoseconds: 0,
            }
        }
    }

    /// Signs with a keyed hash: enough to tell what was signed.
    struct Keyed;
    impl Signer for Keyed {
        fn sign(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
            let mut keyed = b"key".to_vec();
            keyed.extend_from_slice(payload);
            Ok(Digest::of(&keyed).as_str().as_bytes().to_vec())
        }
    }

    fn pushed(registry: &mut MemoryRegistry) -> Pushed {
        let manifest =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        let digest = registry.put_manifest("1", OCI_MANIFEST, manifest).unwrap();
        Pushed {
            digest,
            repository: "127.0.0.1:5000/team/app".into(),
        }
    }

    #[test]
    fn provenance_and_signatures_go_under_the_tag_schema_keeping_what_is_there() {
        let mut registry = MemoryRegistry::default();
        let pushed = pushed(&mut registry);
        let settings = Settings::for_tests();
        let request = Request {
            command: "push",
            destination: "127.0.0.1:5000/team/app:1",
            settings: &settings,
            provenance: true,
            guest: Digest::of(b"guest"),
            sources: &[],
            started: Instant {
                seconds: 0,
                nanoseconds: 0,
            },
        };
        let first = publish(&request, &pushed, &mut registry, &mut Ticks(0), None).unwrap();
        let mut keyed = Keyed;
        let second = publish(
            &request,
            &pushed,
            &mut registry,
            &mut Ticks(5),
            Some(&mut keyed),
        )
        .unwrap();
        let log = registry.0.borrow();
        let index: Value =
            serde_json::from_slice(&log.manifests[&referrers_tag(&pushed.digest)]).unwrap();
        let listed: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        let (a, b) = (first.provenance.unwrap(), second.provenance.unwrap());
        assert_eq!(listed, vec![a.as_str(), b.as_str()]);
        let artifact: Value = serde_json::from_slice(&log.manifests[b.as_str()]).unwrap();
        assert_eq!(artifact["artifactType"], IN_TOTO);
        assert_eq!(artifact["config"]["mediaType"], EMPTY);
        assert_eq!(artifact["subject"]["digest"], pushed.digest.as_str());
        assert_eq!(artifact["layers"][0]["mediaType"], DSSE_ENVELOPE);
        let envelope = &log.blobs
            [&Digest::parse(artifact["layers"][0]["digest"].as_str().unwrap(), "").unwrap()];
        let opened = signature::open_envelope(envelope).unwrap();
        assert_eq!(
            opened.signatures[0],
            Keyed
                .sign(&signature::pae(IN_TOTO, &opened.payload))
                .unwrap()
        );
        let builder = statement::read_statement(&opened.payload, &pushed.digest).unwrap();
        assert_eq!(builder.guest, Digest::of(b"guest").as_str());

        let sig = &log.manifests[&signature::signature_tag(&pushed.digest)];
        assert_eq!(Some(Digest::of(sig)), second.signature);
        let signed = signature::signatures(sig).unwrap();
        assert_eq!(signed.len(), 1);
        let payload = &log.blobs[&signed[0].payload];
        let claim = signature::parse_simple_signing(payload).unwrap();
        assert_eq!(claim.digest, pushed.digest);
        assert_eq!(claim.docker_reference, "127.0.0.1:5000/team/app");
    }

    #[test]
    fn nothing_is_written_without_provenance_or_a_key() {
        let mut registry = MemoryRegistry::default();
        let pushed = pushed(&mut registry);
        let calls = registry.0.borrow().calls.len();
        let settings = Settings::for_tests();
        let request = Request {
            command: "push",
            destination: "127.0.0.1:5000/team/app:1",
            settings: &settings,
            provenance: false,
            guest: Digest::of(b"guest"),
            sources: &[],
            started: Instant {
                seconds: 0,
                nanoseconds: 0,
            },
        };
        let written = publish(&request, &pushed, &mut registry, &mut Ticks(0), None).unwrap();
        assert_eq!(written, Written::default());
        assert_eq!(registry.0.borrow().calls.len(), calls);
    }
}
