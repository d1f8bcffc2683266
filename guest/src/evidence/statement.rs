//! The provenance statement: an in-toto v1 Statement whose predicate is SLSA provenance v1,
//! saying which guest published which digest, from which source image, with which settings,
//! and when. Also read back (natively, by `ocipush verify`) for the guest digest it names.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::digest::Digest;
use crate::model::ImageSummary;
use crate::push::Settings;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const SLSA_PROVENANCE: &str = "https://slsa.dev/provenance/v1";
/// The build type: what `externalParameters` and `resolvedDependencies` mean.
pub const BUILD_TYPE: &str = "ocipush:push@v1";
/// The contract this guest is built against (`wit/ocipush.wit`'s package line; a unit test
/// keeps them equal).
pub const CONTRACT: &str = "ocipush:core@0.11.0";

/// A point in time, UTC, as the host's clock gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instant {
    pub seconds: u64,
    pub nanoseconds: u32,
}

impl Instant {
    /// RFC 3339, UTC, with nanoseconds when there are any (`2026-12-02T03:04:05.123Z`).
    pub fn rfc3339(self) -> String {
        let days = (self.seconds / 86_400) as i64;
        let rest = self.seconds % 86_400;
        let (year, month, day) = civil(days);
        let mut text = format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            rest / 3600,
            rest / 60 % 60,
            rest % 60
        );
        if self.nanoseconds != 0 {
            let fraction = format!("{:09}", self.nanoseconds);
            text.push('.');
            text.push_str(fraction.trim_end_matches('0'));
        }
        text.push('Z');
        text
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A source image as the push read it: how the user named it, what its source said, and
/// where the source is (asked only when provenance is written).
#[derive(Clone, Debug)]
pub struct SourceImage {
    pub name: String,
    pub summary: ImageSummary,
    pub origin: Option<Origin>,
}

/// Which daemon, file or directory a source image was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A Docker daemon (or podman's service): what its `/info` states, and where it is
    /// reached (without credentials).
    Daemon {
        id: Option<String>,
        name: Option<String>,
        server_version: Option<String>,
        endpoint: String,
    },
    /// podman's or buildah's local store, read through their command line: no daemon.
    ContainersStorage,
    /// A `docker save` tarball: its absolute path, and the digest of its `manifest.json` (what
    /// it says it holds, read anyway; the layers are not read twice for this).
    Archive { path: String, manifest: Digest },
    /// An OCI image layout directory: its absolute path, and the digest of its `index.json`.
    Layout { path: String, index: Digest },
}

/// A `file:` URI of an absolute path: each byte outside RFC 3986's unreserved characters and
/// `/` percent-encoded, so that spaces, `%`, `?` and `#` in a name keep their meaning.
pub fn file_uri(path: &str) -> String {
    let mut uri = String::from("file://");
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            uri.push(byte as char);
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri
}

/// What provenance says of an origin, under the dependency's `annotations`: none for
/// containers-storage, which the `source` annotation names.
fn origin(origin: &Origin) -> Option<(&'static str, Value)> {
    Some(match origin {
        Origin::Daemon {
            id,
            name,
            server_version,
            endpoint,
        } => (
            "daemon",
            json!({ "id": id, "name": name, "serverVersion": server_version, "endpoint": endpoint }),
        ),
        Origin::ContainersStorage => return None,
        Origin::Archive { path, manifest } => (
            "file",
            json!({ "uri": file_uri(path), "manifestJson": { "sha256": manifest.hex() } }),
        ),
        Origin::Layout { path, index } => (
            "file",
            json!({ "uri": file_uri(path), "indexJson": { "sha256": index.hex() } }),
        ),
    })
}

/// Everything a statement says.
pub struct Provenance<'a> {
    /// The command: `push`, `index` or `build`.
    pub command: &'a str,
    /// The destination as the user named it, and where it went (`host/name` or `oci:DIR`).
    pub destination: &'a str,
    pub repository: &'a str,
    pub tag: &'a str,
    pub digest: &'a Digest,
    pub sources: &'a [SourceImage],
    pub settings: &'a Settings,
    pub guest: &'a Digest,
    pub started: Instant,
    pub finished: Instant,
}

/// What a source name says about where the image came from, for `resolvedDependencies`.
fn dependency(source: &SourceImage) -> Value {
    let name = &source.name;
    let (uri, kind) = if name.starts_with("docker-archive:") {
        (name.clone(), "docker save tarball")
    } else if name.starts_with("oci:") {
        (name.clone(), "OCI image layout")
    } else if name.starts_with("containers-storage:") {
        (name.clone(), "containers-storage")
    } else if source.origin == Some(Origin::ContainersStorage) {
        // A bare name the host read from containers-storage (no Docker daemon found).
        (format!("containers-storage:{name}"), "containers-storage")
    } else {
        let bare = name.strip_prefix("docker-daemon:").unwrap_or(name);
        (format!("docker-daemon:{bare}"), "Docker daemon")
    };
    let diff_ids: Vec<&str> = source.summary.diff_ids.iter().map(Digest::as_str).collect();
    let mut annotations = json!({
        "source": kind,
        "imageId": source.summary.id.as_str(),
        "diffIds": diff_ids,
        "platform": source.summary.platform.as_ref().map(ToString::to_string),
    });
    if let Some((key, value)) = source.origin.as_ref().and_then(origin) {
        annotations[key] = value;
    }
    json!({
        "uri": uri,
        "digest": { "sha256": source.summary.id.hex() },
        "annotations": annotations,
    })
}

/// The builder's ID: ocipush's contract and the guest's digest.
pub fn builder_id(guest: &Digest) -> String {
    format!("{CONTRACT}/guest@{guest}")
}

/// The statement, as JSON bytes.
pub fn statement(p: &Provenance<'_>) -> Vec<u8> {
    let settings = p.settings;
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": [{
            "name": format!("{}:{}", p.repository, p.tag),
            "digest": { "sha256": p.digest.hex() },
        }],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "command": p.command,
                    "sources": p.sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
                    "destination": p.destination,
                    "format": match settings.format {
                        crate::manifest::Format::Oci => "oci",
                        crate::manifest::Format::Docker => "docker",
                    },
                    "compression": settings.encoding.compression.name(),
                    "compressionLevel": settings.encoding.level,
                    "annotations": settings.annotations,
                    "verify": settings.verify,
                },
                "resolvedDependencies": p.sources.iter().map(dependency).collect::<Vec<_>>(),
            },
            "runDetails": {
                "builder": {
                    "id": builder_id(p.guest),
                    "version": { "ocipush:core": CONTRACT.trim_start_matches("ocipush:core@"), "guest": p.guest.as_str() },
                },
                "metadata": {
                    "startedOn": p.started.rfc3339(),
                    "finishedOn": p.finished.rfc3339(),
                },
            },
        },
    });
    serde_json::to_vec(&statement).unwrap_or_default()
}

/// What `ocipush verify` reports of a statement.
#[derive(Debug, PartialEq, Eq)]
pub struct Builder {
    /// The guest's digest.
    pub guest: String,
    /// The contract version it was built for.
    pub contract: String,
}

/// Reads a statement about `subject`: refused unless it is SLSA provenance v1 naming that
/// digest as a subject.
pub fn read_statement(bytes: &[u8], subject: &Digest) -> Result<Builder> {
    let json: Value = serde_json::from_slice(bytes).context("the provenance is not JSON")?;
    if json["_type"] != STATEMENT_TYPE || json["predicateType"] != SLSA_PROVENANCE {
        bail!("not an in-toto statement of SLSA provenance v1");
    }
    let names_subject = json["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["digest"]["sha256"] == subject.hex());
    if !names_subject {
        bail!("the provenance is about another digest than {subject}");
    }
    let version = &json["predicate"]["runDetails"]["builder"]["version"];
    match (version["guest"].as_str(), version["ocipush:core"].as_str()) {
        (Some(guest), Some(contract)) => Ok(Builder {
            guest: guest.to_string(),
            contract: contract.to_string(),
        }),
        _ => bail!("the provenance names no ocipush guest as its builder"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |seconds, nanoseconds| {
            Instant {
                seconds,
                nanoseconds,
            }
            .rfc3339()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_180_645, 120_000_000), "2026-12-02T03:04:05.12Z");
        assert_eq!(at(4_107_542_399, 1), "2100-02-28T23:59:59.000000001Z");
    }

    #[test]
    fn the_contract_is_the_one_in_the_wit_file() {
        let wit = include_str!("../../../wit/ocipush.wit");
        let package = wit
            .lines()
            .find_map(|l| l.strip_prefix("package "))
            .unwrap()
            .trim_end_matches(';');
        assert_eq!(package, CONTRACT);
    }

    #[test]
    fn a_statement_names_the_subject_the_sources_and_the_guest() {
        let summary = ImageSummary {
            id: Digest::of(b"config"),
            diff_ids: vec![Digest::of(b"layer")],
            size: 5,
            platform: None,
            id_kind: crate::model::IdKind::Config,
            within: None,
            labels: Default::default(),
        };
        let sources = [SourceImage {
            name: "app:1".into(),
            summary,
            origin: Some(Origin::Daemon {
                id: Some("e345468a-5eda-4c92-951e-b65a65ab769f".into()),
                name: Some("builder-7".into()),
                server_version: Some("26.1.5".into()),
                endpoint: "unix:///var/run/docker.sock".into(),
            }),
        }];
        let (digest, guest) = (Digest::of(b"manifest"), Digest::of(b"guest"));
        let settings = Settings::for_tests();
        let bytes = statement(&Provenance {
            command: "push",
            destination: "127.0.0.1:5000/team/app:1",
            repository: "127.0.0.1:5000/team/app",
            tag: "1",
            digest: &digest,
            sources: &sources,
            settings: &settings,
            guest: &guest,
            started: Instant {
                seconds: 10,
                nanoseconds: 0,
            },
            finished: Instant {
                seconds: 12,
                nanoseconds: 0,
            },
        });
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["subject"][0]["digest"]["sha256"], digest.hex());
        let dependency = &json["predicate"]["buildDefinition"]["resolvedDependencies"][0];
        assert_eq!(dependency["uri"], "docker-daemon:app:1");
        let daemon = &dependency["annotations"]["daemon"];
        assert_eq!(daemon["id"], "e345468a-5eda-4c92-951e-b65a65ab769f");
        assert_eq!(daemon["name"], "builder-7");
        assert_eq!(daemon["serverVersion"], "26.1.5");
        assert_eq!(daemon["endpoint"], "unix:///var/run/docker.sock");
        assert_eq!(
            dependency["annotations"]["diffIds"][0],
            Digest::of(b"layer").as_str()
        );
        assert_eq!(
            json["predicate"]["runDetails"]["metadata"]["finishedOn"],
            "1970-01-01T00:00:12Z"
        );
        let builder = read_statement(&bytes, &digest).unwrap();
        assert_eq!(builder.guest, guest.as_str());
        assert_eq!(builder.contract, "0.11.0");
        assert!(read_statement(&bytes, &guest).is_err());
    }

    /// The dependency a statement names for one source image with `origin`.
    fn dependency_of(name: &str, origin: Option<Origin>) -> Value {
        let source = SourceImage {
            name: name.into(),
            summary: ImageSummary {
                id: Digest::of(b"config"),
                diff_ids: Vec::new(),
                size: 0,
                platform: None,
                id_kind: crate::model::IdKind::Config,
                within: None,
                labels: Default::default(),
            },
            origin,
        };
        dependency(&source)
    }

    #[test]
    fn a_file_source_is_named_by_its_uri_and_the_digest_of_what_it_lists() {
        let manifest = Digest::of(b"[]");
        let archive = dependency_of(
            "docker-archive:app.tar:app:1",
            Some(Origin::Archive {
                path: "/work/my images/app.tar".into(),
                manifest: manifest.clone(),
            }),
        );
        let file = &archive["annotations"]["file"];
        assert_eq!(file["uri"], "file:///work/my%20images/app.tar");
        assert_eq!(file["manifestJson"]["sha256"], manifest.hex());
        assert_eq!(archive["annotations"]["source"], "docker save tarball");
        let layout = dependency_of(
            "oci:out:1",
            Some(Origin::Layout {
                path: "/tmp/out".into(),
                index: manifest.clone(),
            }),
        );
        assert_eq!(layout["annotations"]["file"]["uri"], "file:///tmp/out");
        assert_eq!(
            layout["annotations"]["file"]["indexJson"]["sha256"],
            manifest.hex()
        );
        // Without provenance's look at the origin, nothing is said of it.
        assert!(dependency_of("app:1", None)["annotations"]
            .get("daemon")
            .is_none());
    }

    #[test]
    fn a_name_read_from_containers_storage_says_so() {
        let read = dependency_of("app:1", Some(Origin::ContainersStorage));
        assert_eq!(read["uri"], "containers-storage:app:1");
        assert_eq!(read["annotations"]["source"], "containers-storage");
        assert!(read["annotations"].get("daemon").is_none());
    }

    #[test]
    fn file_uris_percent_encode_what_is_not_plain() {
        assert_eq!(file_uri("/a/b-c_d.e~f"), "file:///a/b-c_d.e~f");
        assert_eq!(file_uri("/x/50% #1?.tar"), "file:///x/50%25%20%231%3F.tar");
        assert_eq!(file_uri("/caf\u{e9}"), "file:///caf%C3%A9");
    }
}
