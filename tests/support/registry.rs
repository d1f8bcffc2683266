//! A `docker-registry serve` (CNCF distribution) that a test starts on 127.0.0.1 with a config
//! and storage of its own, for what the shared registry of scripts/services.sh cannot be: one
//! with TLS (a CA and certificates made with openssl), htpasswd or token authentication (with
//! the issuer of `super::token`), or one that a test kills and starts again.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::token::TokenIssuer;
use super::tool;

/// The user the htpasswd and token registries know, and the password they accept.
pub const USER: &str = "ocipush-user";
pub const PASSWORD: &str = "s3cret-Pa55word-42";

/// A registry a test started, killed (by pid) when dropped.
pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub address: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// A plain registry: HTTP, no authentication, storage in a temp dir of its own.
    pub fn start() -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), "")
    }

    /// A registry with its storage in `dir` and `extra` at the end of its config (more of
    /// `http:`, indented, or sections such as `auth:`), on a free port.
    pub fn start_with(dir: tempfile::TempDir, extra: &str) -> Self {
        let mut registry = Self {
            child: None,
            address: String::new(),
            dir,
        };
        for _ in 0..5 {
            registry.address = format!("127.0.0.1:{}", super::closed_port());
            let config = format!(
                "version: 0.1\nlog: {{level: warn, formatter: text}}\nstorage:\n  filesystem: {{rootdirectory: \"{}\"}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {}\n  secret: ocipush-test-not-a-secret\n{extra}",
                registry.path("data").display(),
                registry.address
            );
            std::fs::write(registry.path("config.yml"), config).unwrap();
            if registry.serve() {
                return registry;
            }
            // Most likely another process took the port first: try another.
        }
        let log = std::fs::read_to_string(registry.path("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start:\n{log}");
    }

    /// TLS with a certificate from a test CA (`ca.pem` in its dir) and htpasswd auth.
    pub fn tls_htpasswd() -> Self {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        write_htpasswd(dir.path());
        let d = dir.path();
        let tls_and_auth = format!(
            "  tls: {{certificate: \"{}\", key: \"{}\"}}\n{}",
            d.join("server.pem").display(),
            d.join("server.key").display(),
            htpasswd_auth(d)
        );
        Self::start_with(dir, &tls_and_auth)
    }

    /// TLS that requires a client certificate from its CA (`client.pem`, `client.key` in its
    /// dir), and no other authentication.
    pub fn mutual_tls() -> Self {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        make_certificate(
            dir.path(),
            "client",
            "/CN=ocipush test client",
            "clientAuth",
            "",
        );
        let d = dir.path();
        let tls = format!(
            "  tls:\n    certificate: \"{}\"\n    key: \"{}\"\n    clientcas: [\"{}\"]\n",
            d.join("server.pem").display(),
            d.join("server.key").display(),
            d.join("ca.pem").display()
        );
        Self::start_with(dir, &tls)
    }

    /// htpasswd auth over plain HTTP on loopback.
    pub fn htpasswd() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_htpasswd(dir.path());
        let auth = htpasswd_auth(dir.path());
        Self::start_with(dir, &auth)
    }

    /// `auth: token`, with the issuer it trusts (drop it after the registry).
    pub fn token() -> (Self, TokenIssuer) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::start(dir.path());
        let auth = format!(
            "auth:\n  token: {{realm: \"http://127.0.0.1:{}/token\", service: test-registry, issuer: test-issuer, rootcertbundle: \"{}\"}}\n",
            issuer.port,
            dir.path().join("token.pem").display()
        );
        (Self::start_with(dir, &auth), issuer)
    }

    /// A file in the registry's directory (e.g. a certificate the test made there).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the registry on its address and storage (again, after `kill`); false if it did
    /// not come up.
    pub fn serve(&mut self) -> bool {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.path("registry.log"))
            .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.path("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (run ./scripts/test.sh, which installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if TcpStream::connect(&self.address).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL to this registry's pid: no shutdown, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `USER:PASSWORD` in `dir/htpasswd` (bcrypt, as distribution wants).
fn write_htpasswd(dir: &Path) {
    let htpasswd = tool(dir, "htpasswd", &["-Bbn", USER, PASSWORD]);
    std::fs::write(dir.join("htpasswd"), htpasswd).unwrap();
}

/// The config section for `dir/htpasswd`.
fn htpasswd_auth(dir: &Path) -> String {
    format!(
        "auth:\n  htpasswd: {{realm: ocipush-test, path: \"{}\"}}\n",
        dir.join("htpasswd").display()
    )
}

/// A CA (`ca.pem`, `ca.key`) and a server certificate for IP 127.0.0.1 signed by it
/// (`server.pem`, `server.key`), in `dir`.
fn make_certificates(dir: &Path) {
    let mut args = vec!["req", "-x509", "-days", "2"];
    args.extend(new_key("ca.key", "ca.pem", "/CN=ocipush test CA"));
    tool(dir, "openssl", &args);
    make_certificate(
        dir,
        "server",
        "/CN=127.0.0.1",
        "serverAuth",
        "subjectAltName=IP:127.0.0.1\n",
    );
}

/// `NAME.pem` and `NAME.key`: a certificate for `subject` and `usage` (with `more` extensions
/// first), signed by the CA in `dir`.
fn make_certificate(dir: &Path, name: &str, subject: &str, usage: &str, more: &str) {
    let (key, csr, ext, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.pem"),
    );
    let mut args = vec!["req"];
    args.extend(new_key(&key, &csr, subject));
    tool(dir, "openssl", &args);
    std::fs::write(
        dir.join(&ext),
        format!(
            "{more}basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
        ),
    )
    .unwrap();
    tool(
        dir,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
}

/// `openssl req` arguments for a new P-256 key in `key` and a request (or with `-x509`, a
/// self-signed certificate) for `subject` in `out`.
fn new_key<'a>(key: &'a str, out: &'a str, subject: &'a str) -> [&'a str; 11] {
    [
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        key,
        "-out",
        out,
        "-subj",
        subject,
    ]
}
