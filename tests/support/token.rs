//! `TokenIssuer`: the token service of a registry with `auth: token`
//! (`super::registry::Registry::token`), served by a thread of the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::registry::{PASSWORD, USER};
use super::tool;

/// The OAuth2 refresh token the issuer accepts (what `docker login` stores as `identitytoken`).
pub const REFRESH_TOKEN: &str = "refresh-T0ken-for-ocipush-77";

/// A token issuer on 127.0.0.1 for a registry configured with `auth: token`: it checks HTTP
/// Basic credentials and answers `{"token": JWT}`, RS256-signed (with `openssl dgst`) by a key
/// whose self-signed certificate is the registry's `rootcertbundle` and rides in `x5c`. Its
/// first token grants only `pull`, so a push must renew it to write anything. It also answers
/// OAuth2 `POST` requests that present `REFRESH_TOKEN` (`grant_type=refresh_token`).
pub struct TokenIssuer {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Tokens issued.
    pub issued: Arc<AtomicUsize>,
    /// Tokens issued for a refresh token.
    pub refreshed: Arc<AtomicUsize>,
    /// Every scope a token was asked for.
    pub scopes: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenIssuer {
    /// Starts the issuer, with its key and certificate (`token.key`, `token.pem`) in `dir`.
    pub fn start(dir: &Path) -> Self {
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
