//! `FaultProxy`: a fault-injecting proxy in front of the daemon's unix socket (a flipped byte in
//! an image export, or an export that stalls).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Listens on a unix socket and forwards each request to the real daemon over a fresh
/// connection, rewritten to HTTP/1.0 so the daemon answers without chunked encoding and closes
/// the connection after the response. In the response body of an image export
/// (`GET /images/…/get`), the byte at `flip_at` is inverted (`start`), or the body stops at
/// `stall_at` without ending, until the client hangs up (`stalling`), as a daemon that stalls
/// does. One request per client connection.
pub struct FaultProxy {
    pub socket: PathBuf,
    /// How many bytes were flipped so far (so a test can prove the fault was injected).
    pub flips: Arc<AtomicUsize>,
    /// Whether an export stalled.
    pub stalled: Arc<AtomicBool>,
    /// Request lines seen, for diagnostics.
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// What the proxy does to an export's body.
#[derive(Clone, Copy)]
enum ExportFault {
    /// Invert the byte at this offset.
    Flip(u64),
    /// Send the bytes before this offset, then nothing more.
    Stall(u64),
}

impl FaultProxy {
    pub fn start(upstream: &str, flip_at: u64) -> Self {
        Self::with(upstream, ExportFault::Flip(flip_at))
    }

    pub fn stalling(upstream: &str, stall_at: u64) -> Self {
        Self::with(upstream, ExportFault::Stall(stall_at))
    }

    fn with(upstream: &str, fault: ExportFault) -> Self {
        let upstream = PathBuf::from(
            upstream
                .strip_prefix("unix://")
                .expect("DOCKER_HOST must be unix://…"),
        );
        let dir = tempfile::Builder::new()
            .prefix("ocipush-proxy")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("p.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let flips = Arc::new(AtomicUsize::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (f, st, r) = (flips.clone(), stalled.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let (upstream, f, st, r) = (upstream.clone(), f.clone(), st.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(conn, &upstream, fault, &f, &st, &r);
                });
            }
        });
        FaultProxy {
            socket,
            flips,
            stalled,
            requests,
            _dir: dir,
        }
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

fn proxy_one(
    client: UnixStream,
    upstream: &Path,
    fault: ExportFault,
    flips: &AtomicUsize,
    stalled: &AtomicBool,
    requests: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client_w = client;
    // Request head.
    let mut head_lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(()); // client went away
        }
        let end = line == "\r\n" || line == "\n";
        head_lines.push(line);
        if end {
            break;
        }
    }
    let request_line = head_lines[0].trim_end().to_string();
    requests.lock().unwrap().push(request_line.clone());
    let mut parts = request_line.splitn(3, ' ');
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let path = target.split('?').next().unwrap_or("");
    let is_export = method == "GET" && path.contains("/images/") && path.ends_with("/get");

    let mut headers: HashMap<String, String> = HashMap::new();
    let mut out_head = format!("{method} {target} HTTP/1.0\r\n");
    for l in &head_lines[1..head_lines.len() - 1] {
        if let Some((k, v)) = l.trim_end().split_once(':') {
            let key = k.trim().to_ascii_lowercase();
            headers.insert(key.clone(), v.trim().to_string());
            if key == "connection" || key == "keep-alive" || key == "transfer-encoding" {
                continue;
            }
        }
        out_head.push_str(l.trim_end());
        out_head.push_str("\r\n");
    }
    out_head.push_str("Connection: close\r\n\r\n");
    // Request body (Content-Length only; the API calls under test send none or a small one).
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;

    let mut up = UnixStream::connect(upstream)?;
    up.write_all(out_head.as_bytes())?;
    up.write_all(&body)?;

    // Response head goes through unchanged; the body until EOF, with its fault.
    let mut up_r = BufReader::new(up);
    loop {
        let mut line = Vec::new();
        if up_r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        client_w.write_all(&line)?;
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut offset: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = up_r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        match fault {
            ExportFault::Flip(at) if is_export && at >= offset && at < offset + n as u64 => {
                buf[(at - offset) as usize] ^= 0xff;
                flips.fetch_add(1, Ordering::SeqCst);
            }
            ExportFault::Stall(at) if is_export && at < offset + n as u64 => {
                client_w.write_all(&buf[..(at - offset) as usize])?;
                client_w.flush()?;
                stalled.store(true, Ordering::SeqCst);
                let mut byte = [0u8; 1];
                while matches!(reader.read(&mut byte), Ok(n) if n > 0) {}
                return Ok(());
            }
            _ => {}
        }
        offset += n as u64;
        client_w.write_all(&buf[..n])?;
    }
    client_w.flush()?;
    client_w.shutdown(std::net::Shutdown::Both)?;
    Ok(())
}
