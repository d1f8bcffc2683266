//! A bollard client for one endpoint: a unix socket, plain `tcp://`, or TLS with the files the
//! environment or the context store names. TLS goes through bollard's custom transport on the
//! rustls (ring) stack reqwest already uses, rather than bollard's `ssl` feature: that one can
//! neither skip verification (a context's `SkipTLSVerify`) nor do without a client certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::{BollardRequest, Docker, API_DEFAULT_VERSION};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::endpoint::{Endpoint, Tls};

/// Seconds a request to the daemon may take to answer, as bollard's own defaults have it.
const TIMEOUT: u64 = 120;

/// Why no client could be made for an endpoint.
#[derive(Debug)]
pub enum Error {
    /// An address ocipush cannot speak to (`ssh://`, `npipe://`…).
    Scheme(String),
    /// A TLS file that cannot be read or used.
    TlsFile {
        path: PathBuf,
        cause: String,
    },
    Tls(rustls::Error),
    Client(bollard::errors::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scheme(host) => write!(
                f,
                "{host} is not an address ocipush speaks to (unix://, tcp://, http:// or https://)"
            ),
            Self::TlsFile { path, cause } => write!(f, "{}: {cause}", path.display()),
            Self::Tls(e) => write!(f, "setting up TLS: {e}"),
            Self::Client(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

/// A client for `endpoint`; nothing is sent yet.
pub fn connect(endpoint: &Endpoint) -> Result<Docker, Error> {
    let host = endpoint.host.as_str();
    let (scheme, address) = host.split_once("://").unwrap_or(("", host));
    match (scheme, &endpoint.tls) {
        ("unix", _) => Docker::connect_with_unix(host, TIMEOUT, API_DEFAULT_VERSION),
        ("tcp" | "https", Some(tls)) => return over_tls(address, tls),
        ("https", None) => {
            let tls = Tls {
                ca: PathBuf::new(),
                cert: PathBuf::new(),
                key: PathBuf::new(),
                verify: true,
            };
            return over_tls(address, &tls);
        }
        ("tcp" | "http", None) => Docker::connect_with_http(host, TIMEOUT, API_DEFAULT_VERSION),
        _ => return Err(Error::Scheme(host.to_string())),
    }
    .map_err(Error::Client)
}

/// HTTPS to `address` (`host:port`): the system's CAs and the endpoint's `ca.pem`, its client
/// certificate when both `cert.pem` and `key.pem` exist (as the Docker CLI does), and no
/// verification when the context says `SkipTLSVerify`.
fn over_tls(address: &str, tls: &Tls) -> Result<Docker, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?;
    let builder = if tls.verify {
        builder.with_root_certificates(roots(&tls.ca)?)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(crate::tls::unchecked_server(provider))
    };
    let config = if tls.cert.is_file() && tls.key.is_file() {
        let chain = CertificateDer::pem_file_iter(&tls.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls_file(&tls.cert, e))?;
        let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| tls_file(&tls.key, e))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_file(&tls.key, e))?
    } else {
        builder.with_no_client_auth()
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut client = Client::builder(TokioExecutor::new());
    // As bollard's own transports: a connection per request.
    client.pool_max_idle_per_host(0);
    let client = Arc::new(client.build(HttpsConnector::from((http, config))));
    let transport = move |request: BollardRequest| {
        let client = Arc::clone(&client);
        async move {
            client
                .request(request)
                .await
                .map_err(bollard::errors::Error::from)
        }
    };
    Docker::connect_with_custom_transport(
        transport,
        Some(format!("https://{address}")),
        TIMEOUT,
        API_DEFAULT_VERSION,
    )
    .map_err(Error::Client)
}

/// The system's CAs, and those in `ca` when it exists.
fn roots(ca: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    // A system store that cannot be read leaves `ca.pem`, which is what a daemon's TLS uses.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if ca.is_file() {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls_file(ca, e))?;
        for cert in certs {
            roots.add(cert).map_err(|e| tls_file(ca, e))?;
        }
    }
    Ok(roots)
}

fn tls_file(path: &Path, cause: impl fmt::Display) -> Error {
    Error::TlsFile {
        path: path.to_path_buf(),
        cause: cause.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::endpoint::Origin;

    fn endpoint(host: &str, tls: Option<Tls>) -> Endpoint {
        Endpoint {
            host: host.into(),
            tls,
            origin: Origin::DockerHost,
        }
    }

    #[tokio::test]
    async fn each_scheme_gets_its_client_and_others_are_refused() {
        assert!(connect(&endpoint("tcp://127.0.0.1:2375", None)).is_ok());
        let tls = Tls {
            ca: "/nonexistent/ca.pem".into(),
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            verify: false,
        };
        assert!(connect(&endpoint("tcp://127.0.0.1:2376", Some(tls))).is_ok());
        let err = connect(&endpoint("ssh://me@host", None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ssh://me@host is not an address ocipush speaks to (unix://, tcp://, http:// or https://)"
        );
    }

    #[test]
    fn a_ca_that_is_not_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        let err = roots(&ca).unwrap_err().to_string();
        assert!(err.starts_with(&ca.display().to_string()), "{err}");
    }
}
