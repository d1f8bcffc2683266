//! Authentication and TLS against real registries: `docker-registry serve` instances started
//! here on 127.0.0.1, one with TLS (a CA and server certificate made with openssl) and htpasswd,
//! one with token authentication backed by a small token issuer in this file. Credentials come
//! from `--username` and `--password-stdin`, or from podman's auth.json; certificates from
//! `--ca-file`, `--insecure` or a certs.d directory (`OCIPUSH_CERTS_DIRS`).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use support::registry::Registry;
use support::*;

const USER: &str = "ocipush-user";
const PASSWORD: &str = "s3cret-Pa55word-42";
/// The OAuth2 refresh token the token issuer accepts (what `docker login` stores as
/// `identitytoken`).
const REFRESH_TOKEN: &str = "refresh-T0ken-for-ocipush-77";

/// Runs openssl (or any tool) in `dir`, failing the test with its output if it fails.
fn tool(dir: &Path, program: &str, args: &[&str]) -> Vec<u8> {
    let out = run(Command::new(program).args(args).current_dir(dir));
    assert!(
        out.status.success(),
        "{program} {args:?} failed\n{}",
        describe(&out)
    );
    out.stdout
}

/// A CA (`ca.pem`) and a server certificate for IP 127.0.0.1 signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=ocipush test CA",
    ]);
    tool(dir, "openssl", &args);
    let mut args = vec!["req", "-nodes"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    tool(dir, "openssl", &args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    tool(
        dir,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
}

/// A client certificate (`client.pem`, `client.key`) signed by the CA in `dir`.
fn make_client_certificate(dir: &Path) {
    tool(
        dir,
        "openssl",
        &[
            "req",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=ocipush test client",
        ],
    );
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    tool(
        dir,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "client.ext",
            "-out",
            "client.pem",
        ],
    );
}

/// A registry with TLS that requires a client certificate from its CA (no other auth).
fn mutual_tls_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    make_client_certificate(dir.path());
    let d = dir.path();
    let tls = format!(
        "  tls:\n    certificate: \"{}\"\n    key: \"{}\"\n    clientcas: [\"{}\"]\n",
        d.join("server.pem").display(),
        d.join("server.key").display(),
        d.join("ca.pem").display()
    );
    Registry::start_with(dir, &tls)
}

/// A registry with TLS (certificate from a test CA, `ca.pem` in its dir) and htpasswd auth.
fn tls_htpasswd_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let htpasswd = tool(dir.path(), "htpasswd", &["-Bbn", USER, PASSWORD]);
    std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
    let d = dir.path();
    let tls_and_auth = format!(
        "  tls: {{certificate: \"{}\", key: \"{}\"}}\nauth:\n  htpasswd: {{realm: ocipush-test, path: \"{}\"}}\n",
        d.join("server.pem").display(),
        d.join("server.key").display(),
        d.join("htpasswd").display()
    );
    Registry::start_with(dir, &tls_and_auth)
}

/// A one-layer image in the test daemon; returns its tag.
fn small_image(name: &str) -> String {
    let tag = format!("{name}:1.0");
    let file = format!("auth test {name}\n");
    build_image(&tag, None, &[("file.txt", file.as_bytes())]);
    tag
}

/// An environment with no credentials or certs.d of the user's or the machine's.
struct CleanEnv {
    dir: tempfile::TempDir,
}

impl CleanEnv {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        std::fs::create_dir_all(dir.path().join("certs.d")).unwrap();
        Self { dir }
    }

    fn certs_dirs(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    fn vars(&self) -> Vec<(String, String)> {
        let p = |rel: &str| self.dir.path().join(rel).display().to_string();
        vec![
            ("HOME".into(), p("home")),
            ("DOCKER_CONFIG".into(), p("docker")),
            ("REGISTRY_AUTH_FILE".into(), p("auth.json")),
            ("XDG_RUNTIME_DIR".into(), p("run")),
            ("OCIPUSH_CERTS_DIRS".into(), p("certs.d")),
        ]
    }
}

/// `ocipush push SOURCE DEST --digest-file … ARGS` with `stdin` written to its stdin.
fn push_stdin(
    source: &str,
    dest: &str,
    args: &[&str],
    stdin: &str,
    envs: &[(String, String)],
) -> Pushed {
    push_input(source, dest, "none", args, envs, Some(stdin))
}

/// The manifest digest skopeo reads from `reference` (`--creds`, no TLS verification).
fn skopeo_digest(reference: &str) -> Result<String, String> {
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        &format!("{USER}:{PASSWORD}"),
        "--format",
        "{{.Digest}}",
        &format!("docker://{reference}"),
    ]));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(describe(&out))
    }
}

/// Neither the password nor the Basic header carrying it appears in the output.
fn assert_no_secret(pushed: &Pushed) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let output = format!("{}{}", pushed.stdout, pushed.stderr);
    assert!(
        !output.contains(PASSWORD) && !output.contains(&basic),
        "the password appears in the output\n{}",
        pushed.describe()
    );
}

fn assert_not_pushed(reference: &str) {
    if let Ok(digest) = skopeo_digest(reference) {
        panic!("{reference} exists ({digest}) after a failed push");
    }
}

/// A TLS + htpasswd registry, an environment with no credentials of the user's, a small image
/// for `label`, the registry's CA file and a destination for the image there.
struct TlsCase {
    registry: Registry,
    env: CleanEnv,
    tag: String,
    ca: String,
    dest: String,
}

fn tls_case(label: &str) -> TlsCase {
    let registry = tls_htpasswd_registry();
    let name = unique(label);
    let tag = small_image(&name);
    let ca = registry.path("ca.pem").display().to_string();
    let dest = format!("{}/ocipush-test/{name}:v1", registry.address);
    TlsCase {
        registry,
        env: CleanEnv::new(),
        tag,
        ca,
        dest,
    }
}

#[test]
fn tls_registry_with_a_ca_file_and_the_password_on_stdin() {
    // The registry lives as long as the test: dropping it stops it.
    let TlsCase {
        registry: _registry,
        env,
        tag,
        ca,
        dest: d,
    } = tls_case("tls-cafile");
    let args = ["--ca-file", &ca, "--username", USER, "--password-stdin"];
    // Debug logs say where the credential came from, never what it is.
    let mut vars = env.vars();
    vars.push(("OCIPUSH_LOG".into(), "debug".into()));
    let pushed = push_stdin(&tag, &d, &args, &format!("{PASSWORD}\n"), &vars);
    let digest = pushed.expect_success(&d);
    assert_no_secret(&pushed);
    assert!(
        pushed.stderr.contains("command line"),
        "{}",
        pushed.describe()
    );
    assert_eq!(skopeo_digest(&d).unwrap(), digest);
}

#[test]
fn tls_registry_with_an_unknown_ca_fails_naming_the_certificate() {
    let TlsCase {
        registry,
        env,
        tag,
        dest: d,
        ..
    } = tls_case("tls-unknown-ca");
    let args = ["--username", USER, "--password-stdin"];
    let pushed = push_stdin(&tag, &d, &args, PASSWORD, &env.vars());
    let line = pushed.expect_failure();
    for wanted in [
        registry.address.as_str(),
        "certificate",
        "--ca-file",
        "--insecure",
    ] {
        assert!(line.contains(wanted), "{wanted:?} missing from: {line}");
    }
    assert_no_secret(&pushed);
    assert_not_pushed(&d);
}

#[test]
fn tls_registry_with_insecure_skips_verification() {
    // The registry lives as long as the test: dropping it stops it.
    let TlsCase {
        registry: _registry,
        env,
        tag,
        dest: d,
        ..
    } = tls_case("tls-insecure");
    let args = ["--insecure", "--username", USER, "--password-stdin"];
    let pushed = push_stdin(&tag, &d, &args, &format!("{PASSWORD}\r\n"), &env.vars());
    let digest = pushed.expect_success(&d);
    assert_eq!(skopeo_digest(&d).unwrap(), digest);
}

#[test]
fn a_wrong_password_is_unauthorized_prints_no_secret_and_writes_no_tag() {
    let TlsCase {
        registry,
        env,
        tag,
        ca,
        dest: d,
    } = tls_case("tls-wrong-password");
    let args = ["--ca-file", &ca, "--username", USER, "--password-stdin"];
    let wrong = format!("{PASSWORD}-wrong");
    let pushed = push_stdin(&tag, &d, &args, &format!("{wrong}\n"), &env.vars());
    let line = pushed.expect_failure();
    assert!(line.contains("unauthorized"), "{line}");
    assert!(line.contains(&registry.address), "{line}");
    assert!(
        !pushed.stdout.contains(&wrong) && !pushed.stderr.contains(&wrong),
        "the password appears in the output\n{}",
        pushed.describe()
    );
    assert_not_pushed(&d);
}

#[test]
fn certs_d_ca_and_podman_auth_json_are_used() {
    let registry = tls_htpasswd_registry();
    let env = CleanEnv::new();
    let certs = env.certs_dirs().join(&registry.address);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(registry.path("ca.pem"), certs.join("ca.crt")).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let vars = env.vars();
    let auth_file = &vars
        .iter()
        .find(|(k, _)| k == "REGISTRY_AUTH_FILE")
        .unwrap()
        .1;
    std::fs::write(
        auth_file,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.address
        ),
    )
    .unwrap();
    let name = unique("tls-certs-d");
    let tag = small_image(&name);
    let d = format!("{}/ocipush-test/{name}:v1", registry.address);
    let pushed = push_stdin(&tag, &d, &[], "", &vars);
    let digest = pushed.expect_success(&d);
    assert_no_secret(&pushed);
    assert_eq!(skopeo_digest(&d).unwrap(), digest);
}

/// What ocipush asks a registry whose connection ended after the TLS handshake: whether it
/// wants a client certificate. A TLS 1.3 registry that requires one sends its alert after our
/// side of the handshake is done, so the request may see the alert or only a closed connection;
/// the probe's answer does not depend on that race.
#[test]
fn the_client_certificate_probe_tells_mutual_tls_from_plain_tls() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let asks = |registry: &Registry| {
        let (host, port) = registry.address.rsplit_once(':').unwrap();
        let port = port.parse().unwrap();
        let limit = std::time::Duration::from_secs(5);
        rt.block_on(ocipush::tls::asks_for_client_certificate(host, port, limit))
    };
    assert!(asks(&mutual_tls_registry()));
    assert!(!asks(&tls_htpasswd_registry()));
}

#[test]
fn certs_d_client_certificate_gives_mutual_tls() {
    let registry = mutual_tls_registry();
    let env = CleanEnv::new();
    let certs = env.certs_dirs().join(&registry.address);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(registry.path("ca.pem"), certs.join("ca.crt")).unwrap();
    let name = unique("mtls");
    let tag = small_image(&name);
    let d = format!("{}/ocipush-test/{name}:v1", registry.address);
    // Without a client certificate the registry ends the handshake, and the error says where
    // one goes (not that the registry's certificate is bad).
    let line = push_stdin(&tag, &d, &[], "", &env.vars()).expect_failure();
    assert!(line.contains(&registry.address), "{line}");
    assert!(
        line.contains("refused the TLS handshake") && line.contains("client.cert"),
        "{line}"
    );
    assert!(!line.contains("--insecure"), "{line}");
    std::fs::copy(registry.path("client.pem"), certs.join("client.cert")).unwrap();
    std::fs::copy(registry.path("client.key"), certs.join("client.key")).unwrap();
    push_stdin(&tag, &d, &[], "", &env.vars()).expect_success(&d);
    let cert_dir = certs.display().to_string();
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--cert-dir",
        &cert_dir,
        &format!("docker://{d}"),
    ]));
    assert!(out.status.success(), "{}", describe(&out));
}

// ---------------------------------------------------------------------------------------------
// Token authentication
// ---------------------------------------------------------------------------------------------

/// A token issuer on 127.0.0.1 for a registry configured with `auth: token`: it checks HTTP
/// Basic credentials and answers `{"token": JWT}`, RS256-signed (with `openssl dgst`) by a key
/// whose self-signed certificate is the registry's `rootcertbundle` and rides in `x5c`. Its
/// first token grants only `pull`, so a push must renew it to write anything. It also answers
/// OAuth2 `POST` requests that present `REFRESH_TOKEN` (`grant_type=refresh_token`).
struct TokenIssuer {
    port: u16,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicUsize>,
    /// Tokens issued for a refresh token.
    refreshed: Arc<AtomicUsize>,
    /// Every scope a token was asked for.
    scopes: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenIssuer {
    fn start(dir: &Path) -> Self {
        tool(
            dir,
            "openssl",
            &[
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-newkey",
                "rsa:2048",
                "-keyout",
                "token.key",
                "-out",
                "token.pem",
                "-subj",
                "/CN=ocipush test token issuer",
            ],
        );
        let der = tool(
            dir,
            "openssl",
            &["x509", "-in", "token.pem", "-outform", "DER"],
        );
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicUsize::new(0));
        let refreshed = Arc::new(AtomicUsize::new(0));
        let scopes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (dir, stop2, issued2, refreshed2, scopes2) = (
            dir.to_path_buf(),
            stop.clone(),
            issued.clone(),
            refreshed.clone(),
            scopes.clone(),
        );
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = serve_token(stream, &dir, &x5c, &issued2, &refreshed2, &scopes2);
                }
            }
        });
        Self {
            port,
            stop,
            issued,
            refreshed,
            scopes,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Enough of URL decoding for a scope (`repository%3Aa%2Fb%3Apull%2Cpush`).
fn percent_decode(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers one token request.
fn serve_token(
    stream: TcpStream,
    dir: &Path,
    x5c: &str,
    issued: &AtomicUsize,
    refreshed: &AtomicUsize,
    seen_scopes: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    let mut content_length = 0;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    // GET /token?service=…&scope=… with Basic credentials, or an OAuth2 form POST.
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let params = if request_line.starts_with("POST ") {
        let mut body = vec![0; content_length.min(1 << 16)];
        reader.read_exact(&mut body)?;
        String::from_utf8_lossy(&body).into_owned()
    } else {
        target.split_once('?').map_or("", |(_, q)| q).to_string()
    };
    let param = |name: &str| {
        params
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .map(percent_decode)
    };
    let refresh = param("grant_type").as_deref() == Some("refresh_token")
        && param("refresh_token").as_deref() == Some(REFRESH_TOKEN);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let mut stream = stream;
    if refresh {
        refreshed.fetch_add(1, Ordering::SeqCst);
    } else if authorization.as_deref() != Some(expected.as_str()) {
        let body = r#"{"details":"unauthorized"}"#;
        return write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    // Every scope asked for: repeated `scope` parameters (GET), or one space-separated (POST).
    let scopes: Vec<String> = params
        .split('&')
        .filter_map(|p| p.strip_prefix("scope="))
        .flat_map(|s| {
            percent_decode(s)
                .split(' ')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    seen_scopes.lock().unwrap().extend(scopes.iter().cloned());
    let n = issued.fetch_add(1, Ordering::SeqCst);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = format!(r#"{{"alg":"RS256","typ":"JWT","x5c":["{x5c}"]}}"#);
    // Each scope's actions, except that the first token ever only allows pulling.
    let access: Vec<String> = scopes
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (_, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let actions: Vec<String> = actions
                .split(',')
                .filter(|a| n > 0 || *a == "pull")
                .map(|a| format!("{a:?}"))
                .collect();
            Some(format!(
                r#"{{"type":"repository","name":"{name}","actions":[{}]}}"#,
                actions.join(",")
            ))
        })
        .collect();
    let access = format!("[{}]", access.join(","));
    let claims = format!(
        r#"{{"iss":"test-issuer","sub":"{USER}","aud":"test-registry","exp":{},"nbf":{},"iat":{now},"jti":"ocipush-{n}-{now}","access":{access}}}"#,
        now + 300,
        now - 10
    );
    let signing_input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.as_bytes())
    );
    let input_path = dir.join(format!("jwt-{n}.txt"));
    std::fs::write(&input_path, &signing_input)?;
    let signature = tool(
        dir,
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-sign",
            "token.key",
            &input_path.display().to_string(),
        ],
    );
    let jwt = format!("{signing_input}.{}", b64url(&signature));
    // OAuth2 answers carry `access_token`; the classic endpoint `token`.
    let key = if refresh { "access_token" } else { "token" };
    let body = format!(r#"{{"{key}":"{jwt}","expires_in":300}}"#);
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A registry with `auth: token` and its issuer (dropped after the registry).
fn token_registry() -> (Registry, TokenIssuer) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::start(dir.path());
    let auth = format!(
        "auth:\n  token: {{realm: \"http://127.0.0.1:{}/token\", service: test-registry, issuer: test-issuer, rootcertbundle: \"{}\"}}\n",
        issuer.port,
        dir.path().join("token.pem").display()
    );
    (Registry::start_with(dir, &auth), issuer)
}

#[test]
fn token_auth_push_with_credentials_renews_its_token() {
    let (registry, issuer) = token_registry();
    let env = CleanEnv::new();
    let name = unique("token");
    let tag = small_image(&name);
    let d = format!("{}/ocipush-test/{name}:v1", registry.address);
    let args = ["--username", USER, "--password-stdin"];
    let pushed = push_stdin(&tag, &d, &args, &format!("{PASSWORD}\n"), &env.vars());
    let digest = pushed.expect_success(&d);
    assert_no_secret(&pushed);
    // The first token only allowed pulling: the push renewed it when the registry said 401.
    assert!(
        issuer.issued.load(Ordering::SeqCst) >= 2,
        "the push did not renew its token"
    );
    assert_eq!(skopeo_digest(&d).unwrap(), digest);
}

#[test]
fn an_identity_token_is_exchanged_by_oauth2_and_never_shown() {
    let (registry, issuer) = token_registry();
    let env = CleanEnv::new();
    let docker_config = |token: &str| {
        let dir = &env
            .vars()
            .into_iter()
            .find(|(k, _)| k == "DOCKER_CONFIG")
            .unwrap()
            .1;
        let json = format!(
            r#"{{"auths": {{"{}": {{"auth": "", "identitytoken": "{token}"}}}}}}"#,
            registry.address
        );
        std::fs::write(Path::new(dir).join("config.json"), json).unwrap();
    };
    let name = unique("identity");
    let tag = small_image(&name);
    docker_config(REFRESH_TOKEN);
    let mut debug = env.vars();
    debug.push(("OCIPUSH_LOG".into(), "debug".into()));
    let d = format!("{}/ocipush-test/{name}:v1", registry.address);
    let pushed = push_stdin(&tag, &d, &[], "", &debug);
    let digest = pushed.expect_success(&d);
    assert!(
        !pushed.stderr.contains(REFRESH_TOKEN),
        "{}",
        pushed.describe()
    );
    assert!(
        issuer.refreshed.load(Ordering::SeqCst) >= 1,
        "no OAuth2 exchange"
    );
    assert_eq!(skopeo_digest(&d).unwrap(), digest);

    docker_config("a-revoked-token");
    let d = format!("{}/ocipush-test/{name}:revoked", registry.address);
    let refused = push_stdin(&tag, &d, &[], "", &env.vars());
    let line = refused.expect_failure();
    assert!(line.contains("identity token was refused"), "{line}");
    assert!(!refused.stderr.contains("a-revoked-token"), "{line}");
    assert_not_pushed(&d);
}

/// A registry with htpasswd auth over plain HTTP on loopback, for the redirect test.
fn htpasswd_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = tool(dir.path(), "htpasswd", &["-Bbn", USER, PASSWORD]);
    std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
    let auth = format!(
        "auth:\n  htpasswd: {{realm: ocipush-test, path: \"{}\"}}\n",
        dir.path().join("htpasswd").display()
    );
    Registry::start_with(dir, &auth)
}

#[test]
fn uploads_moved_to_another_host_never_get_the_credentials() {
    use support::faults::{Faults, HttpFaultProxy};
    let registry = htpasswd_registry();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let proxy = HttpFaultProxy::start(
        &registry.address,
        Faults {
            redirect_uploads: true,
            second_address_authorization: Some(basic),
            ..Faults::default()
        },
    );
    let env = CleanEnv::new();
    let name = unique("redirect");
    let tag = small_image(&name);
    let d = format!("{}/ocipush-test/{name}:v1", proxy.address);
    let args = ["--username", USER, "--password-stdin"];
    let pushed = push_stdin(&tag, &d, &args, &format!("{PASSWORD}\n"), &env.vars());
    let digest = pushed.expect_success(&d);
    let seen = proxy.seen();
    let moved: Vec<_> = seen.iter().filter(|s| s.second_address).collect();
    // The layer's and the config's uploads went to the second address: PATCH and PUT there.
    assert!(moved.iter().any(|s| s.method == "PATCH"), "{seen:#?}");
    assert!(
        moved.iter().filter(|s| s.method == "PUT").count() >= 2,
        "{seen:#?}"
    );
    assert!(
        moved.iter().all(|s| !s.authorization),
        "credentials sent to another host: {seen:#?}"
    );
    // The registry's own host got them (the manifest, the upload starts).
    assert!(
        seen.iter()
            .filter(|s| !s.second_address && s.method == "PUT")
            .all(|s| s.authorization),
        "{seen:#?}"
    );
    let direct = format!("{}/ocipush-test/{name}:v1", registry.address);
    assert_eq!(skopeo_digest(&direct).unwrap(), digest);
}

#[test]
fn a_mount_asks_the_token_service_for_pull_on_its_source() {
    let (registry, issuer) = token_registry();
    let env = CleanEnv::new();
    let name = unique("token-mount");
    let tag = small_image(&name);
    let args = ["--username", USER, "--password-stdin"];
    let first = format!("ocipush-test/{name}-a");
    let d = format!("{}/{first}:v1", registry.address);
    push_stdin(&tag, &d, &args, &format!("{PASSWORD}\n"), &env.vars()).expect_success(&d);
    let d = format!("{}/ocipush-test/{name}-b:v1", registry.address);
    let pushed = push_input(
        &tag,
        &d,
        "json",
        &args,
        &env.vars(),
        Some(&format!("{PASSWORD}\n")),
    );
    let digest = pushed.expect_success(&d);
    let scopes = issuer.scopes.lock().unwrap().clone();
    assert!(
        scopes.contains(&format!("repository:{first}:pull")),
        "{scopes:?}"
    );
    let mounted = pushed
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "layer-skipped" && e["mounted_from"] == first.as_str())
        .count();
    assert_eq!(mounted, 1, "{}", pushed.describe());
    assert_eq!(skopeo_digest(&d).unwrap(), digest);
}

#[test]
fn token_auth_anonymous_push_is_unauthorized() {
    let (registry, _issuer) = token_registry();
    let env = CleanEnv::new();
    let name = unique("token-anonymous");
    let tag = small_image(&name);
    let d = format!("{}/ocipush-test/{name}:v1", registry.address);
    let line = push_stdin(&tag, &d, &[], "", &env.vars()).expect_failure();
    assert!(line.contains("unauthorized"), "{line}");
    assert!(line.contains(&registry.address), "{line}");
    assert_not_pushed(&d);
}

/// A credential helper speaking docker's protocol (`docker-credential-NAME get`): it answers
/// for `registry` only, as a keychain would, and says "not found" for anything else.
fn credential_helper(dir: &Path, name: &str, registry: &str) {
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\nif [ \"$server\" = \"{registry}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n"
        ),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&path, permissions).unwrap();
}

#[test]
fn credential_helpers_from_creds_store_and_cred_helpers() {
    let registry = tls_htpasswd_registry();
    let env = CleanEnv::new();
    let bin = tempfile::tempdir().unwrap();
    credential_helper(bin.path(), "ocitest", &registry.address);
    credential_helper(bin.path(), "elsewhere", "127.0.0.1:1");
    let mut vars = env.vars();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    vars.push(("PATH".into(), path));
    // Debug logs name the helper that answered, never what it said.
    let mut debug = vars.clone();
    debug.push(("OCIPUSH_LOG".into(), "debug".into()));
    let docker_config = |json: String| {
        let dir = &vars.iter().find(|(k, _)| k == "DOCKER_CONFIG").unwrap().1;
        std::fs::write(Path::new(dir).join("config.json"), json).unwrap();
    };
    let ca = registry.path("ca.pem").display().to_string();
    let name = unique("cred-helper");
    let tag = small_image(&name);

    // The default store answers for every registry.
    docker_config(r#"{"credsStore": "ocitest"}"#.to_string());
    let d = format!("{}/ocipush-test/{name}:store", registry.address);
    let pushed = push_stdin(&tag, &d, &["--ca-file", &ca], "", &debug);
    let digest = pushed.expect_success(&d);
    assert_no_secret(&pushed);
    assert!(
        pushed.stderr.contains("docker-credential-ocitest"),
        "{}",
        pushed.describe()
    );
    assert_eq!(skopeo_digest(&d).unwrap(), digest);

    // A registry's own helper comes before the default store.
    docker_config(format!(
        r#"{{"credsStore": "elsewhere", "credHelpers": {{"{}": "ocitest"}}}}"#,
        registry.address
    ));
    let d = format!("{}/ocipush-test/{name}:helper", registry.address);
    push_stdin(&tag, &d, &["--ca-file", &ca], "", &vars).expect_success(&d);

    // A helper with nothing stored for the registry: anonymous, refused, no tag.
    docker_config(r#"{"credsStore": "elsewhere"}"#.to_string());
    let d = format!("{}/ocipush-test/{name}:none", registry.address);
    let refused = push_stdin(&tag, &d, &["--ca-file", &ca], "", &vars);
    let error = refused.expect_failure();
    assert!(error.contains("unauthorized"), "{error}");
    assert_no_secret(&refused);
    assert_not_pushed(&d);
}
