//! TLS settings for registries: `--ca-file`, `--insecure`, and per-registry directories in the
//! layout Docker and podman share (`certs.d/HOST[:PORT]/`: `*.crt` CAs, `client.cert` and
//! `client.key` for mutual TLS). Each registry gets a client built with its own settings.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Certificate, Identity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::registries_conf::RegistriesConf;

/// Where per-registry directories are looked for, unless `OCIPUSH_CERTS_DIRS` says otherwise.
const CERTS_DIRS: &str = "/etc/docker/certs.d:/etc/containers/certs.d";

/// TLS settings from the command line and registries.conf, for every registry.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Extra trusted CAs (PEM), in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification altogether.
    pub insecure: bool,
    /// `--plain-http`: the destination registry over plain HTTP, whatever its host.
    pub plain_http: bool,
    /// Which registries registries.conf calls `insecure`.
    pub registries: RegistriesConf,
}

/// How a registry is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// HTTPS, except loopback hosts: plain HTTP unless they answer that they want HTTPS.
    Default,
    /// Plain HTTP (`--plain-http`), or HTTPS when the registry answers that it wants it.
    Plain,
    /// registries.conf's `insecure = true`, as containers/image reads it: HTTPS without
    /// verifying the certificate, or plain HTTP when the registry answers in plain HTTP.
    Insecure,
}

impl TlsOptions {
    /// How to reach `repository` on `registry`.
    pub fn scheme_for(&self, registry: &str, repository: &str) -> Scheme {
        if self.plain_http {
            Scheme::Plain
        } else if self.registries.insecure(registry, repository) {
            Scheme::Insecure
        } else {
            Scheme::Default
        }
    }

    /// An HTTP client for `registry` (`host[:port]`) reached as `scheme` says: the system's
    /// roots, `--ca-file`, the registry's certs.d CAs and client certificate, and `--insecure`
    /// (or registries.conf's `insecure`).
    pub fn client_for(&self, registry: &str, scheme: Scheme) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("ocipush/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(self.insecure || scheme == Scheme::Insecure);
        if let Some(path) = &self.ca_file {
            for cert in read_certificates(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        for dir in certs_dirs(registry) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            tracing::debug!(registry, dir = %dir.display(), "using a certs.d directory");
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "crt"))
            {
                for cert in read_certificates(path)? {
                    builder = builder.add_root_certificate(cert);
                }
            }
            let (cert, key) = (dir.join("client.cert"), dir.join("client.key"));
            if cert.exists() || key.exists() {
                builder = builder.identity(read_identity(&cert, &key)?);
            }
        }
        builder
            .build()
            .map_err(|e| format!("setting up the HTTP client for registry {registry}: {e}"))
    }
}

/// Whether the registry's certs.d directories give it a client certificate.
pub fn has_client_certificate(registry: &str) -> bool {
    certs_dirs(registry)
        .iter()
        .any(|dir| dir.join("client.cert").exists() || dir.join("client.key").exists())
}

/// Whether the TLS server at `host`:`port` asks for a client certificate, within `limit`.
/// Asked only to explain a failed request: a TLS 1.3 server that requires a certificate we do not
/// have lets our side of the handshake finish, then sends its alert and hangs up, and whether the
/// HTTP client reports that alert or just a closed connection is a race. The probe's handshake
/// sends no certificate and no data, so it does not check the server's certificate either.
pub async fn asks_for_client_certificate(host: &str, port: u16, limit: Duration) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let asked = Arc::new(AskedForCertificate::default());
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UncheckedServer(provider)))
        .with_client_cert_resolver(asked.clone());
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return false;
    };
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    };
    // The answer is in whether the server asked, not in how the handshake ended.
    let _ = tokio::time::timeout(limit, handshake).await;
    asked.0.load(Ordering::SeqCst)
}

/// Remembers that the server asked for a client certificate; offers none.
#[derive(Debug, Default)]
struct AskedForCertificate(AtomicBool);

impl ResolvesClientCert for AskedForCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts any server certificate, with signatures still checked: for the probe, which sends
/// nothing the server could misuse, and for a daemon whose Docker context says `SkipTLSVerify`.
#[derive(Debug)]
struct UncheckedServer(Arc<CryptoProvider>);

/// A verifier that accepts any server certificate (`UncheckedServer`).
pub fn unchecked_server(provider: Arc<CryptoProvider>) -> Arc<dyn ServerCertVerifier> {
    Arc::new(UncheckedServer(provider))
}

impl ServerCertVerifier for UncheckedServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `BASE/HOST[:PORT]` for every certs.d base directory.
fn certs_dirs(registry: &str) -> Vec<PathBuf> {
    let bases = std::env::var("OCIPUSH_CERTS_DIRS").unwrap_or_else(|_| CERTS_DIRS.to_string());
    bases
        .split(':')
        .filter(|b| !b.is_empty())
        // A registry name with a path separator or `..` must not escape the base directory.
        .filter(|_| !registry.contains('/') && registry != ".." && registry != ".")
        .map(|base| Path::new(base).join(registry))
        .collect()
}

fn read_certificates(path: &Path) -> Result<Vec<Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("reading the CA certificates {}: {e}", path.display()))?;
    let certs = Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("reading the CA certificates {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "reading the CA certificates {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// A client certificate and its key, as reqwest wants them: one PEM holding both.
fn read_identity(cert: &Path, key: &Path) -> Result<Identity, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| {
            format!(
                "reading the client certificate {}: {e} (mutual TLS needs both client.cert and client.key)",
                path.display()
            )
        })
    };
    let mut pem = read(cert)?;
    pem.push(b'\n');
    pem.extend(read(key)?);
    Identity::from_pem(&pem).map_err(|e| {
        format!(
            "reading the client certificate {} and key {}: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// The TLS error behind a failed request, if TLS is what failed. The HTTP client wraps it in an
/// `io::Error`, whose `source()` skips what it wraps, so that is looked into too.
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Whether the server ended the TLS handshake with an alert: it refused us (typically our
/// missing or unknown client certificate), rather than we it.
pub fn is_handshake_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(tls_error(e), Some(rustls::Error::AlertReceived(_)))
}

/// Whether a request over HTTPS failed because the server answered in plain HTTP: rustls found
/// no TLS record where the answer began (an HTTP status line is no record type).
pub fn is_plain_http_answer(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        tls_error(e),
        Some(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
        ))
    )
}

/// Whether a failed request failed on a TLS certificate: the server's, which we could not
/// verify, or ours, which the server refused or asked for.
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription as Alert;
    match tls_error(e) {
        Some(
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_),
        ) => true,
        Some(rustls::Error::AlertReceived(alert)) => matches!(
            alert,
            Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::CertificateRequired
                | Alert::CertificateUnobtainable
                | Alert::BadCertificateStatusResponse
                | Alert::BadCertificateHashValue
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certs_dirs_are_per_registry_and_stay_inside_their_base() {
        // The default bases; the environment variable is read by the integration tests.
        if std::env::var_os("OCIPUSH_CERTS_DIRS").is_none() {
            assert_eq!(
                certs_dirs("127.0.0.1:5000"),
                vec![
                    PathBuf::from("/etc/docker/certs.d/127.0.0.1:5000"),
                    PathBuf::from("/etc/containers/certs.d/127.0.0.1:5000")
                ]
            );
        }
        assert!(certs_dirs("../etc").is_empty());
        assert!(certs_dirs("..").is_empty());
    }

    #[test]
    fn tls_failures_are_told_by_their_type_through_the_io_error_that_wraps_them() {
        let wrapped =
            |tls: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let required = wrapped(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        ));
        assert!(is_handshake_refusal(&required) && is_certificate_error(&required));
        let unknown_ca = wrapped(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        ));
        assert!(is_handshake_refusal(&unknown_ca) && !is_certificate_error(&unknown_ca));
        let untrusted = wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(!is_handshake_refusal(&untrusted) && is_certificate_error(&untrusted));
        let closed = std::io::Error::other("a certificate was mentioned, but this is no TLS error");
        assert!(!is_handshake_refusal(&closed) && !is_certificate_error(&closed));
    }

    #[test]
    fn a_missing_ca_file_is_one_line_naming_it() {
        let options = TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        };
        let err = options.client_for("r:1", Scheme::Default).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[tokio::test]
    async fn an_https_request_answered_in_plain_http_is_told_apart() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let client = TlsOptions::default()
            .client_for("127.0.0.1", Scheme::Default)
            .unwrap();
        let err = client
            .get(format!("https://127.0.0.1:{port}/v2/"))
            .send()
            .await
            .unwrap_err();
        assert!(is_plain_http_answer(&err), "{err:?}");
        // Any other failure to connect is not that.
        let closed = client
            .get("https://127.0.0.1:1/v2/")
            .send()
            .await
            .unwrap_err();
        assert!(!is_plain_http_answer(&closed), "{closed:?}");
    }
}
