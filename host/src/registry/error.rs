//! How talking to a registry fails, typed: decisions (retry, the link race, a cancelled session)
//! are made on statuses, registry error codes and variants, never on the text. `Display` gives
//! the one line the user (and the guest) sees.

use std::fmt;

use reqwest::StatusCode;

use crate::confirmed::Unconfirmed;
use crate::encode;
use crate::interrupt::Interrupted;
use crate::limits::ManifestTooLarge;

/// A registry's refusal: the HTTP status, and the first entry of its JSON `errors` body, if it
/// sent one (`{"errors": [{"code": "DIGEST_INVALID", "message": "..."}]}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    pub status: StatusCode,
    /// The registry's error code, e.g. `DIGEST_INVALID`, `BLOB_UPLOAD_UNKNOWN`; `Some("")` for an
    /// entry without one, `None` when the body named no error.
    pub code: Option<String>,
    /// The entry's message; empty when there is none.
    pub message: String,
}

impl RegistryError {
    /// The refusal a response with `status` and (the start of) `body` makes.
    pub fn new(status: StatusCode, body: &[u8]) -> Self {
        let first = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|json| json.get("errors")?.get(0).cloned());
        let text = |key: &str| {
            first
                .as_ref()
                .and_then(|entry| entry.get(key)?.as_str())
                .unwrap_or("")
                .to_string()
        };
        Self {
            status,
            code: first.as_ref().map(|_| text("code")),
            message: text("message"),
        }
    }

    fn has_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// Whether a manifest PUT met distribution's race with a concurrent push of the same blob
    /// to the same repository: it writes blob link files in place, so a manifest PUT that reads
    /// one mid-write gets 400 DIGEST_INVALID (an empty digest) or MANIFEST_BLOB_UNKNOWN for a
    /// blob this session confirmed. It passes once the other write ends.
    pub fn is_link_race(&self) -> bool {
        (self.status == StatusCode::BAD_REQUEST && self.has_code("DIGEST_INVALID"))
            || self.has_code("MANIFEST_BLOB_UNKNOWN")
    }

    /// Whether the registry does not know the upload session: it is gone already.
    pub fn is_upload_unknown(&self) -> bool {
        self.status == StatusCode::NOT_FOUND && self.has_code("BLOB_UPLOAD_UNKNOWN")
    }
}

impl fmt::Display for RegistryError {
    /// `400 Bad Request: DIGEST_INVALID provided digest did not match uploaded content`, with
    /// ` (unauthorized)` after a 401 or 403's status.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        if self.status == StatusCode::UNAUTHORIZED || self.status == StatusCode::FORBIDDEN {
            f.write_str(" (unauthorized)")?;
        }
        if let Some(code) = &self.code {
            write!(f, ": {code} {}", self.message)?;
        }
        Ok(())
    }
}

/// What kind of failure below HTTP a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The server ended the TLS handshake with an alert: it refused us.
    HandshakeRefused,
    /// A certificate could not be verified.
    Certificate,
    /// No connection could be made.
    Connect,
    /// The connection broke.
    Lost,
    /// HTTPS was asked for, and the server answered in plain HTTP.
    PlainHttp,
}

/// A request that failed below HTTP.
#[derive(Debug, Clone)]
pub struct Transport {
    pub kind: TransportKind,
    /// The innermost cause's text, on one line.
    pub cause: String,
    /// Whether a TLS certificate was part of the failure: asking again will not help.
    pub certificate: bool,
}

impl Transport {
    pub fn of(e: &reqwest::Error) -> Self {
        let certificate = crate::tls::is_certificate_error(e);
        let kind = if crate::tls::is_plain_http_answer(e) {
            TransportKind::PlainHttp
        } else if crate::tls::is_handshake_refusal(e) {
            TransportKind::HandshakeRefused
        } else if certificate {
            TransportKind::Certificate
        } else if e.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Lost
        };
        Self {
            kind,
            cause: root_cause(e),
            certificate,
        }
    }

    /// Whether asking again may help: not when a certificate failed, nor when the server
    /// speaks another protocol.
    pub fn retryable(&self) -> bool {
        !self.certificate && self.kind != TransportKind::PlainHttp
    }
}

/// What went wrong with a token service.
#[derive(Debug)]
pub enum TokenFailure {
    /// The request failed below HTTP.
    Transport(Transport),
    /// The answer's body broke off.
    Lost(String),
    /// A 408, 429 or 5xx, worth a retry.
    Answered(StatusCode),
    /// Refused, with a hint at the credential's part in it.
    Refused {
        status: StatusCode,
        hint: &'static str,
    },
    TooLarge,
    InvalidJson(String),
    NoToken,
}

/// Why a registry request, upload or manifest failed.
#[derive(Debug)]
pub enum Error {
    /// The registry answered `what` with an error status.
    Refused {
        registry: String,
        what: String,
        error: RegistryError,
    },
    /// A request to the registry failed below HTTP.
    Transport {
        registry: String,
        what: String,
        transport: Transport,
    },
    /// The registry wants a client certificate, and none is set up for it.
    ClientCertificateWanted {
        registry: String,
        what: String,
    },
    /// The registry asked for credentials, and there are none for it.
    NoCredentials {
        registry: String,
    },
    Token {
        /// The token service's URL.
        realm: String,
        registry: String,
        failure: TokenFailure,
    },
    /// A 401 was answered with a new token; the request is worth repeating.
    TokenRenewed,
    /// Retries ran out; `last` is what the last attempt met.
    GaveUp {
        last: Box<Error>,
        retries: u32,
    },
    /// An answer over the limit the host reads.
    TooLarge {
        registry: String,
        what: String,
        limit: usize,
    },
    /// The registry committed a blob under another digest than it was sent under.
    Misstored {
        registry: String,
        name: String,
        digest: String,
        stored: String,
    },
    /// A chunk refused as too large, already at the smallest chunk size.
    ChunkRefused {
        registry: String,
        size: u64,
        status: StatusCode,
    },
    /// A blob whose bytes are not what its digest says: refused before upload.
    Mismatch {
        digest: String,
        actual: String,
    },
    /// What the guest said is the digest of a layer's bytes is not a sha256 digest.
    NotADigest(String),
    /// A manifest naming a blob not confirmed in this repository.
    Unconfirmed {
        registry: String,
        name: String,
        reference: String,
        problem: Unconfirmed,
    },
    ManifestTooLarge(ManifestTooLarge),
    /// An answer or setting that breaks the protocol (no upload Location, a token realm that is
    /// not HTTPS, an invalid address): its one line.
    Protocol(String),
    /// The layer's encoder failed.
    Encode(encode::Error),
    /// The layer's spool could not be made or read (`doing` says which).
    Spool {
        doing: &'static str,
        error: std::io::Error,
    },
    /// The registry lost a layer's upload session after it had taken `taken` bytes, which the
    /// spool no longer holds: the layer must be streamed again, in a new upload.
    Lost {
        registry: String,
        taken: u64,
    },
    /// A layer stored as it is was finished without `close` saying its digest, which the host
    /// can no longer compute: the spool keeps only what the registry has not taken.
    Unclaimed,
    /// The layer upload was used after it ended.
    Ended,
    /// The encoder stopped; its own error says why.
    EncoderStopped,
    /// The upload's sender ended without saying why.
    EndedEarly {
        registry: String,
    },
    /// The upload's sender task died.
    SenderDied {
        registry: String,
        cause: String,
    },
    /// A layer upload of the same repository failed with this, in the background or not: it
    /// ends every other upload in flight, and the push, with its own words.
    Shared(std::sync::Arc<Error>),
    Interrupted(Interrupted),
}

impl Error {
    /// The registry's refusal, if that is what this is.
    pub fn refusal(&self) -> Option<&RegistryError> {
        match self {
            Self::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether the registry answered HTTPS in plain HTTP.
    pub fn is_plain_http_answer(&self) -> bool {
        match self {
            Self::Transport { transport, .. } => transport.kind == TransportKind::PlainHttp,
            Self::GaveUp { last, .. } => last.is_plain_http_answer(),
            _ => false,
        }
    }
}

/// Where a client certificate for `registry` goes.
fn client_certificate_hint(registry: &str) -> String {
    format!(
        "put client.cert and client.key in its certs.d directory (/etc/docker/certs.d/{registry}/)"
    )
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused {
                registry,
                what,
                error,
            } => f.write_str(&one_line(&format!(
                "registry {registry} refused {what}: {error}"
            ))),
            Self::Transport {
                registry,
                what,
                transport,
            } => {
                let cause = &transport.cause;
                match transport.kind {
                    TransportKind::HandshakeRefused => write!(
                        f,
                        "registry {registry} refused the TLS handshake while {what}: {cause}; if it requires a client certificate, {}",
                        client_certificate_hint(registry)
                    ),
                    TransportKind::Certificate => write!(
                        f,
                        "cannot verify the TLS certificate of registry {registry} while {what}: {cause}; trust its CA with --ca-file (or a certs.d directory), or skip verification with --insecure"
                    ),
                    TransportKind::Connect => {
                        write!(f, "cannot reach registry {registry} while {what}: {cause}")
                    }
                    TransportKind::Lost => write!(
                        f,
                        "lost the connection to registry {registry} while {what}: {cause}"
                    ),
                    TransportKind::PlainHttp => write!(
                        f,
                        "registry {registry} answered in plain HTTP, not HTTPS, while {what}; to use it over plain HTTP, pass --plain-http (or mark it insecure = true in registries.conf)"
                    ),
                }
            }
            Self::ClientCertificateWanted { registry, what } => write!(
                f,
                "registry {registry} refused the TLS handshake while {what}: it asks for a client certificate, and none is set up for it; {}",
                client_certificate_hint(registry)
            ),
            Self::NoCredentials { registry } => write!(
                f,
                "registry {registry} refused access: 401 Unauthorized (unauthorized); no credentials for it (--username, Docker's config.json or podman's auth.json)"
            ),
            Self::Token {
                realm,
                registry,
                failure,
            } => fmt_token(f, realm, registry, failure),
            Self::TokenRenewed => f.write_str("the registry refused the token (renewed it)"),
            Self::GaveUp { last, retries: 0 } => last.fmt(f),
            Self::GaveUp { last, retries } => write!(
                f,
                "{last} (gave up after {retries} retries; --retries sets how many)"
            ),
            Self::TooLarge {
                registry,
                what,
                limit,
            } => write!(
                f,
                "registry {registry} answered {what} with more than {} MiB",
                limit >> 20
            ),
            Self::Misstored {
                registry,
                name,
                digest,
                stored,
            } => write!(
                f,
                "registry {registry} stored blob {digest} in {name} as {stored}"
            ),
            Self::ChunkRefused {
                registry,
                size,
                status,
            } => write!(
                f,
                "registry {registry} refused a chunk of {size} bytes ({status}), the smallest ocipush sends"
            ),
            Self::Mismatch { digest, actual } => write!(
                f,
                "refusing to upload blob {digest}: its bytes hash to {actual}"
            ),
            Self::NotADigest(digest) => write!(
                f,
                "the digest given for a layer's bytes, {digest:?}, is not a sha256 digest"
            ),
            Self::Unconfirmed {
                registry,
                name,
                reference,
                problem: Unconfirmed::Missing(missing),
            } => write!(
                f,
                "refusing to write manifest {name}:{reference}: it names blob {missing}, which is not confirmed in registry {registry}"
            ),
            Self::Unconfirmed { problem, .. } => problem.fmt(f),
            Self::ManifestTooLarge(e) => e.fmt(f),
            Self::Protocol(message) => f.write_str(message),
            Self::Encode(e) => e.fmt(f),
            Self::Spool { doing, error } => write!(f, "{doing}: {error}"),
            Self::Lost { registry, taken } => write!(
                f,
                "registry {registry} lost the upload session of a layer after taking {taken} bytes of it, which are no longer spooled"
            ),
            Self::Unclaimed => f.write_str(
                "a layer stored as it is was finished without close saying the digest of its bytes",
            ),
            Self::Ended => f.write_str("the layer upload already ended"),
            Self::EncoderStopped => f.write_str("the layer encoder stopped"),
            Self::EndedEarly { registry } => {
                write!(f, "the upload to registry {registry} ended early")
            }
            Self::SenderDied { registry, cause } => {
                write!(f, "the upload to registry {registry} was interrupted: {cause}")
            }
            Self::Shared(first) => first.fmt(f),
            Self::Interrupted(interrupted) => interrupted.fmt(f),
        }
    }
}

fn fmt_token(
    f: &mut fmt::Formatter<'_>,
    realm: &str,
    registry: &str,
    failure: &TokenFailure,
) -> fmt::Result {
    match failure {
        TokenFailure::Transport(transport) if transport.certificate => write!(
            f,
            "cannot verify the TLS certificate of token service {realm} for registry {registry}: {}; trust its CA with --ca-file, or skip verification with --insecure",
            transport.cause
        ),
        TokenFailure::Transport(transport) => write!(
            f,
            "cannot reach token service {realm} for registry {registry}: {}",
            transport.cause
        ),
        TokenFailure::Lost(cause) => write!(
            f,
            "lost the connection to token service {realm} for registry {registry}: {cause}"
        ),
        TokenFailure::Answered(status) => write!(f, "token service {realm} answered {status}"),
        TokenFailure::Refused { status, hint } => write!(
            f,
            "token service {realm} refused a token for registry {registry}: {status}{hint}"
        ),
        TokenFailure::TooLarge => write!(
            f,
            "token service {realm} for registry {registry} answered with more than 1 MiB"
        ),
        TokenFailure::InvalidJson(e) => write!(
            f,
            "token service {realm} for registry {registry} answered with invalid JSON: {e}"
        ),
        TokenFailure::NoToken => write!(
            f,
            "token service {realm} for registry {registry} answered without a token"
        ),
    }
}

impl std::error::Error for Error {}

impl From<Interrupted> for Error {
    fn from(interrupted: Interrupted) -> Self {
        Self::Interrupted(interrupted)
    }
}

/// The innermost cause of an error, on one line.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    one_line(&cause.to_string())
}

/// `text` with every run of whitespace (line ends included) made one space.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(status: u16, body: &str) -> RegistryError {
        RegistryError::new(StatusCode::from_u16(status).unwrap(), body.as_bytes())
    }

    fn errors(code: &str, message: &str) -> String {
        format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#)
    }

    #[test]
    fn only_the_blob_link_race_is_tried_again() {
        let digest_invalid = errors("DIGEST_INVALID", "provided digest did not match");
        assert!(refusal(400, &digest_invalid).is_link_race());
        assert!(!refusal(404, &digest_invalid).is_link_race());
        assert!(refusal(400, &errors("MANIFEST_BLOB_UNKNOWN", "blob unknown")).is_link_race());
        assert!(!refusal(400, &errors("MANIFEST_INVALID", "manifest invalid")).is_link_race());
        assert!(!refusal(403, &errors("DENIED", "")).is_link_race());
        // A message that mentions a code is not that code.
        assert!(!refusal(400, &errors("DENIED", "not DIGEST_INVALID")).is_link_race());
    }

    #[test]
    fn an_unknown_upload_is_a_404_with_its_code() {
        let unknown = errors("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry");
        assert!(refusal(404, &unknown).is_upload_unknown());
        assert!(!refusal(400, &unknown).is_upload_unknown());
        assert!(!refusal(404, &errors("BLOB_UPLOAD_INVALID", "")).is_upload_unknown());
        assert!(!refusal(404, "not json").is_upload_unknown());
    }

    #[test]
    fn refusals_read_as_one_line_with_status_code_and_message() {
        let race = Error::Refused {
            registry: "r".into(),
            what: "manifest a:1".into(),
            error: refusal(
                400,
                &errors("DIGEST_INVALID", "provided digest\\ndid not match"),
            ),
        };
        assert_eq!(
            race.to_string(),
            "registry r refused manifest a:1: 400 Bad Request: DIGEST_INVALID provided digest did not match"
        );
        assert_eq!(
            race.refusal().unwrap().code.as_deref(),
            Some("DIGEST_INVALID")
        );
        assert_eq!(
            refusal(403, r#"{"errors":[{"code":"DENIED"}]}"#).to_string(),
            "403 Forbidden (unauthorized): DENIED "
        );
        assert_eq!(
            refusal(500, "<html>").to_string(),
            "500 Internal Server Error"
        );
        assert_eq!(
            refusal(401, "").to_string(),
            "401 Unauthorized (unauthorized)"
        );
    }

    #[test]
    fn giving_up_names_the_retries_only_when_there_were_some() {
        let lost = || Error::Protocol("registry r answered oddly".into());
        assert_eq!(
            Error::GaveUp {
                last: Box::new(lost()),
                retries: 0
            }
            .to_string(),
            "registry r answered oddly"
        );
        assert_eq!(
            Error::GaveUp {
                last: Box::new(lost()),
                retries: 2
            }
            .to_string(),
            "registry r answered oddly (gave up after 2 retries; --retries sets how many)"
        );
    }
}
