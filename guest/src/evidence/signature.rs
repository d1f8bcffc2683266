//! What is signed, and how a signature is stored: cosign's simple-signing payload under the
//! `sha256-<hex>.sig` tag, and DSSE envelopes (provenance). Pure functions over bytes, used by
//! the guest to build them and by the host (natively) to check them in `ocipush verify`.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::digest::Digest;
use crate::manifest::{OCI_CONFIG, OCI_MANIFEST};

/// The media type of a simple-signing payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a layer's base64 DER signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a simple-signing payload.
const COSIGN_TYPE: &str = "cosign container image signature";
/// The payload type of an in-toto statement in a DSSE envelope.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The media type of a DSSE envelope as an artifact's layer.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";

/// The tag cosign keeps the signatures of manifest `digest` under.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// What a simple-signing payload says: this repository's manifest `digest` is signed.
#[derive(Debug, PartialEq, Eq)]
pub struct Claim {
    pub docker_reference: String,
    pub digest: Digest,
}

/// cosign's payload for manifest `digest` published in `repository` (`host/name`, no tag).
pub fn simple_signing_payload(repository: &str, digest: &Digest) -> Vec<u8> {
    let payload = json!({
        "critical": {
            "identity": { "docker-reference": repository },
            "image": { "docker-manifest-digest": digest.as_str() },
            "type": COSIGN_TYPE,
        },
        "optional": null,
    });
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// Reads a simple-signing payload: refused unless its type is cosign's.
pub fn parse_simple_signing(payload: &[u8]) -> Result<Claim> {
    #[derive(Deserialize)]
    struct Payload {
        critical: Critical,
    }
    #[derive(Deserialize)]
    struct Critical {
        identity: Identity,
        image: Image,
        #[serde(rename = "type")]
        kind: String,
    }
    #[derive(Deserialize)]
    struct Identity {
        #[serde(rename = "docker-reference")]
        docker_reference: String,
    }
    #[derive(Deserialize)]
    struct Image {
        #[serde(rename = "docker-manifest-digest")]
        digest: String,
    }
    let payload: Payload =
        serde_json::from_slice(payload).context("not a simple-signing payload")?;
    if payload.critical.kind != COSIGN_TYPE {
        bail!(
            "a simple-signing payload of type {:?}, not {COSIGN_TYPE:?}",
            payload.critical.kind
        );
    }
    Ok(Claim {
        docker_reference: payload.critical.identity.docker_reference,
        digest: Digest::parse(&payload.critical.image.digest, "the signed manifest digest")?,
    })
}

/// One signature of a signature manifest: a payload blob and its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub payload: Digest,
    pub size: u64,
    /// The DER signature, as the annotation's base64 says.
    pub signature: Vec<u8>,
}

/// The signatures a signature manifest lists, in order. Layers that are not simple-signing
/// payloads with a signature are skipped (cosign may add certificates and bundles as
/// annotations; they are kept when signatures are added, but not checked here).
pub fn signatures(manifest: &[u8]) -> Result<Vec<Signed>> {
    let json: serde_json::Value =
        serde_json::from_slice(manifest).context("the signature manifest is not JSON")?;
    let Some(layers) = json["layers"].as_array() else {
        bail!("the signature manifest lists no layers");
    };
    let mut found = Vec::new();
    for layer in layers {
        if layer["mediaType"] != SIMPLE_SIGNING {
            continue;
        }
        let (Some(digest), Some(size), Some(signature)) = (
            layer["digest"].as_str(),
            layer["size"].as_u64(),
            layer["annotations"][SIGNATURE_ANNOTATION].as_str(),
        ) else {
            continue;
        };
        let Ok(signature) = BASE64.decode(signature) else {
            continue;
        };
        found.push(Signed {
            payload: Digest::parse(digest, "a signature layer's digest")?,
            size,
            signature,
        });
    }
    Ok(found)
}

/// A signature manifest and its config, ready to write: the signatures of `existing` (if any)
/// and then `payload` signed by `signature`, unless an identical one is there already.
pub struct SignatureManifest {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    /// Whether `payload` with `signature` was new.
    pub added: bool,
}

/// Adds a signature to those a signature manifest holds (cosign's layout: one layer per
/// payload, the signature in its annotation, a config whose `rootfs.diff_ids` are the layers).
pub fn add_signature(
    existing: Option<&[u8]>,
    payload: &[u8],
    signature: &[u8],
) -> Result<SignatureManifest> {
    let mut layers: Vec<serde_json::Value> = match existing {
        Some(bytes) => {
            let json: serde_json::Value = serde_json::from_slice(bytes)
                .context("the signature manifest already there is not JSON")?;
            json["layers"].as_array().cloned().unwrap_or_default()
        }
        None => Vec::new(),
    };
    let digest = Digest::of(payload);
    let encoded = BASE64.encode(signature);
    let added = !layers.iter().any(|l| {
        l["digest"] == digest.as_str() && l["annotations"][SIGNATURE_ANNOTATION] == encoded.as_str()
    });
    if added {
        layers.push(json!({
            "mediaType": SIMPLE_SIGNING,
            "digest": digest.as_str(),
            "size": payload.len(),
            "annotations": { SIGNATURE_ANNOTATION: encoded },
        }));
    }
    let diff_ids: Vec<&serde_json::Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": Digest::of(&config).as_str(),
            "size": config.len(),
        },
        "layers": layers,
    }))?;
    Ok(SignatureManifest {
        config,
        manifest,
        added,
    })
}

/// The blobs a signature manifest names besides its config: the payloads it keeps.
pub fn payloads(manifest: &[u8]) -> Result<BTreeSet<(Digest, u64)>> {
    let json: serde_json::Value = serde_json::from_slice(manifest)?;
    let mut blobs = BTreeSet::new();
    for layer in json["layers"].as_array().into_iter().flatten() {
        let digest = layer["digest"].as_str().unwrap_or_default();
        blobs.insert((
            Digest::parse(digest, "a signature layer's digest")?,
            layer["size"].as_u64().unwrap_or_default(),
        ));
    }
    Ok(blobs)
}

/// DSSE's pre-authentication encoding: what is signed for an envelope
/// (`DSSEv1 <len(type)> <type> <len(body)> <body>`).
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// base64.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: String,
    /// base64 DER.
    pub sig: String,
}

/// An envelope around `payload` with one signature over its PAE.
pub fn envelope(payload_type: &str, payload: &[u8], signature: &[u8]) -> Vec<u8> {
    let envelope = Envelope {
        payload_type: payload_type.to_string(),
        payload: BASE64.encode(payload),
        signatures: vec![EnvelopeSignature {
            keyid: String::new(),
            sig: BASE64.encode(signature),
        }],
    };
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// An envelope read: its payload type, payload and signatures (DER), for checking.
pub struct Opened {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<Vec<u8>>,
}

pub fn open_envelope(bytes: &[u8]) -> Result<Opened> {
    let envelope: Envelope = serde_json::from_slice(bytes).context("not a DSSE envelope")?;
    let payload = BASE64
        .decode(&envelope.payload)
        .context("a DSSE envelope whose payload is not base64")?;
    Ok(Opened {
        payload_type: envelope.payload_type,
        payload,
        signatures: envelope
            .signatures
            .iter()
            .filter_map(|s| BASE64.decode(&s.sig).ok())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_reads_back_as_what_it_claims() {
        let digest = Digest::of(b"manifest");
        let payload = simple_signing_payload("127.0.0.1:5000/team/app", &digest);
        let claim = parse_simple_signing(&payload).unwrap();
        assert_eq!(claim.digest, digest);
        assert_eq!(claim.docker_reference, "127.0.0.1:5000/team/app");
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["critical"]["type"], COSIGN_TYPE);
        let other = br#"{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"sha256:x"},"type":"other"}}"#;
        assert!(parse_simple_signing(other).is_err());
        assert_eq!(
            signature_tag(&digest),
            format!("sha256-{}.sig", digest.hex())
        );
    }

    #[test]
    fn signatures_are_added_to_those_already_there_once() {
        let first = add_signature(None, b"payload one", b"sig1").unwrap();
        assert!(first.added);
        let second = add_signature(Some(&first.manifest), b"payload two", b"sig2").unwrap();
        let again = add_signature(Some(&second.manifest), b"payload two", b"sig2").unwrap();
        assert!(second.added && !again.added);
        assert_eq!(again.manifest, second.manifest);
        let listed = signatures(&second.manifest).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].payload, Digest::of(b"payload one"));
        assert_eq!(listed[1].signature, b"sig2");
        let config: serde_json::Value = serde_json::from_slice(&second.config).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        assert_eq!(payloads(&second.manifest).unwrap().len(), 2);
    }

    #[test]
    fn pae_and_envelopes_follow_the_dsse_spec() {
        // The spec's own example: DSSEv1 29 http://example.com/HelloWorld 11 hello world
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        let bytes = envelope(IN_TOTO, b"{}", b"sig");
        let opened = open_envelope(&bytes).unwrap();
        assert_eq!(opened.payload_type, IN_TOTO);
        assert_eq!(opened.payload, b"{}");
        assert_eq!(opened.signatures, vec![b"sig".to_vec()]);
    }
}
