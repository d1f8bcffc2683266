//! The test daemon behind TLS on 127.0.0.1, as `dockerd --tlsverify` serves it: a proxy from a
//! TLS listener that requires a client certificate from its CA to the daemon's unix socket,
//! with the CA, server and client certificates (Docker's names: `ca.pem`, `cert.pem`,
//! `key.pem`) made with openssl in its directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, UnixStream};
use tokio_rustls::TlsAcceptor;

use super::{describe, run};

pub struct TlsDaemon {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl TlsDaemon {
    /// Serves the daemon at `socket` (a path) over TLS until the test process ends.
    pub fn start(socket: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        let acceptor = TlsAcceptor::from(Arc::new(server_config(dir.path())));
        let socket = socket.to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, socket) = (acceptor.clone(), socket.clone());
                    tokio::spawn(async move {
                        // A client without a certificate fails the handshake here.
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        if let Ok(mut daemon) = UnixStream::connect(&socket).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut daemon).await;
                        }
                    });
                }
            });
        });
        Self { dir, port }
    }

    /// `ca.pem`, `cert.pem` and `key.pem` (the client's) are here.
    pub fn certs(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn host(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

fn server_config(dir: &Path) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap()
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, P-256, for two days.
fn make_certificates(dir: &Path) {
    let script = r#"set -e
key="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $key -days 2 -keyout ca.key -out ca.pem -subj "/CN=ocipush test daemon CA"
openssl req $key -keyout server.key -out server.csr -subj /CN=127.0.0.1
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem
openssl req $key -keyout key.pem -out client.csr -subj "/CN=ocipush test client"
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out cert.pem
"#;
    let out = run(Command::new("sh").args(["-c", script]).current_dir(dir));
    assert!(
        out.status.success(),
        "making certificates\n{}",
        describe(&out)
    );
}
