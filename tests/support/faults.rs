//! A fault-injecting HTTP proxy in front of a real registry, for the upload tests: it forwards
//! each request to the registry over a fresh connection (one request per client connection)
//! and, as its `Faults` say, drops connections in the middle of a chunk, answers 500 or 429
//! (with Retry-After) instead of the registry, refuses chunks above a size as GHCR does,
//! enforces Gitea's PATCH rule, moves uploads to a second loopback address, as registries do
//! that hand uploads to object storage, alters the registry's answers (another digest for a
//! blob commit or a manifest, another size for a blob, other bytes for a manifest, any or only
//! one asked for by digest, a header of 1 MiB), hides a blob, or holds a request unanswered, as
//! a registry that stops answering mid-push does. It records every request it saw.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What the proxy does instead of, or to, a request.
#[derive(Clone, Default)]
pub struct Faults {
    /// Close the connection of the Nth PATCH (1-based) without forwarding any of it: the
    /// registry never sees the chunk, and its upload status still says where it was.
    pub drop_patch: Option<usize>,
    /// Answer the Nth PATCH (1-based) with 400, unforwarded: a refusal that is not retried.
    pub refuse_patch: Option<usize>,
    /// Forward only the first half of the Nth PATCH's body, then close both connections: the
    /// registry saw part of a chunk (distribution then forgets the upload session).
    pub cut_patch: Option<usize>,
    /// Answer this fraction of requests with 500, or 429 with `Retry-After: 1`, unforwarded.
    pub flaky: f64,
    /// Only PATCH requests are made flaky.
    pub flaky_patch_only: bool,
    /// Answer 416 to a PATCH whose body is larger than this, unforwarded (GHCR: 4 MiB).
    pub max_chunk: Option<usize>,
    /// Gitea's rule: a PATCH without Content-Range only as an upload's first write, and a
    /// Content-Range must start where the upload is; 416 otherwise.
    pub gitea_patch_rule: bool,
    /// Answer 401 to every cross-repository mount (`POST …/blobs/uploads/?mount=`), as Harbor
    /// does for a source repository it does not let the user read.
    pub refuse_mounts: bool,
    /// Answer the start of an upload with a Location on the second address (127.0.0.2).
    pub redirect_uploads: bool,
    /// Requests at the second address are sent on with this `Authorization` (the proxy plays
    /// object storage, which authorizes by the URL it handed out, never by the client's header).
    pub second_address_authorization: Option<String>,
    /// Answer every blob commit the registry took (the PUT `?digest=` that ends an upload, 201)
    /// with this `Docker-Content-Digest` in place of the registry's.
    pub commit_digest: Option<String>,
    /// Add this to the `Content-Length` of every blob HEAD that finds the blob.
    pub blob_size_offset: u64,
    /// Append a newline to every manifest a GET finds: the same JSON, bytes with another digest.
    pub manifest_bytes_changed: bool,
    /// The same, only for manifests a GET asks for by digest (`…/manifests/sha256:…`), once
    /// set: the test keeps a clone and sets it while the proxy runs.
    pub manifest_by_digest_bytes_changed: Arc<AtomicBool>,
    /// Hold every request with this method whose path contains this text: unforwarded and
    /// unanswered until the client hangs up (recorded with status 0 when it arrives).
    pub hold: Option<(String, String)>,
    /// Answer 404, unforwarded, to every HEAD of this blob: a registry that lost it.
    pub hide_blob: Option<String>,
    /// Answer every manifest PUT the registry took (201) with this `Docker-Content-Digest` in
    /// place of the registry's.
    pub manifest_digest: Option<String>,
    /// Add a 1 MiB header to every answer.
    pub huge_header: bool,
}

/// A request the proxy saw, and what became of it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Whether it arrived at the second address.
    pub second_address: bool,
    pub method: String,
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    /// Whether the client sent an `Authorization` header.
    pub authorization: bool,
    pub content_range: Option<String>,
    pub body_len: usize,
    /// The status the client got; 0 when its connection was dropped.
    pub status: u16,
}

pub struct HttpFaultProxy {
    /// `127.0.0.1:PORT`, to push to.
    pub address: String,
    /// `127.0.0.2:PORT`, where uploads are moved with `redirect_uploads`.
    pub second_address: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

struct Shared {
    upstream: String,
    faults: Faults,
    seen: Arc<Mutex<Vec<Seen>>>,
    patches: Mutex<usize>,
    /// Bytes each upload (by its id) holds, from the registry's answers, for Gitea's rule.
    uploads: Mutex<HashMap<String, u64>>,
    rng: Mutex<u64>,
    second_address: String,
}

impl HttpFaultProxy {
    /// Starts the proxy in front of `upstream` (`host:port` of a real registry).
    pub fn start(upstream: &str, faults: Faults) -> Self {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let second = TcpListener::bind("127.0.0.2:0").unwrap();
        let address = first.local_addr().unwrap().to_string();
        let second_address = second.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            faults,
            seen: seen.clone(),
            patches: Mutex::new(0),
            uploads: Mutex::new(HashMap::new()),
            rng: Mutex::new(0x9e37_79b9_7f4a_7c15),
            second_address: second_address.clone(),
        });
        for (listener, is_second) in [(first, false), (second, true)] {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { break };
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let _ = serve(conn, &shared, is_second);
                    });
                }
            });
        }
        Self {
            address,
            second_address,
            seen,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Shared {
    /// A deterministic pseudo-random number in [0, 1) (xorshift), so failures repeat run to run.
    fn random(&self) -> f64 {
        let mut x = self.rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A parsed HTTP request.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The upload id in `/v2/<name>/blobs/uploads/<id>`.
    fn upload_id(&self) -> Option<String> {
        let path = self.target.split('?').next()?;
        let (_, id) = path.split_once("/blobs/uploads/")?;
        (!id.is_empty()).then(|| id.to_string())
    }
}

fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut request = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = request.header("content-length") {
        let mut body = vec![0; len.parse().unwrap_or(0)];
        reader.read_exact(&mut body)?;
        request.body = body;
    } else if request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            request.body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(Some(request))
}

fn answer(client: &mut TcpStream, status: &str, extra: &str) -> std::io::Result<()> {
    write!(
        client,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// Alters what the registry answered, as `faults` say: a registry that claims another digest
/// or size than the one it holds, or serves other bytes than it was given.
fn lie(
    request: &Request,
    seen: &Seen,
    status: u16,
    headers: &mut [(String, String)],
    body: &mut Vec<u8>,
    faults: &Faults,
) {
    fn header<'a>(headers: &'a mut [(String, String)], name: &str) -> Option<&'a mut String> {
        headers
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    let (method, path) = (request.method.as_str(), seen.path.as_str());
    let commit =
        method == "PUT" && path.contains("/blobs/uploads/") && seen.query.contains("digest=");
    let manifest_put = method == "PUT" && path.contains("/manifests/");
    let claimed = match status {
        201 if commit => faults.commit_digest.as_ref(),
        201 if manifest_put => faults.manifest_digest.as_ref(),
        _ => None,
    };
    if let (Some(digest), Some(v)) = (claimed, header(headers, "docker-content-digest")) {
        *v = digest.clone();
    }
    if method == "HEAD" && path.contains("/blobs/") && status == 200 && faults.blob_size_offset > 0
    {
        if let Some(v) = header(headers, "content-length") {
            let size: u64 = v.parse().unwrap_or(0);
            *v = (size + faults.blob_size_offset).to_string();
        }
    }
    if method == "GET"
        && path.contains("/manifests/")
        && status == 200
        && (faults.manifest_bytes_changed
            || (faults
                .manifest_by_digest_bytes_changed
                .load(Ordering::SeqCst)
                && path.contains("/manifests/sha256:")))
    {
        body.push(b'\n');
        if let Some(v) = header(headers, "content-length") {
            *v = body.len().to_string();
        }
    }
}

fn serve(client: TcpStream, shared: &Shared, second: bool) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some(request) = read_request(&mut reader)? else {
        return Ok(());
    };
    let faults = &shared.faults;
    let mut seen = Seen {
        second_address: second,
        method: request.method.clone(),
        path: request.target.split('?').next().unwrap_or("").to_string(),
        query: request
            .target
            .split_once('?')
            .map_or("", |(_, q)| q)
            .to_string(),
        authorization: request.header("authorization").is_some(),
        content_range: request.header("content-range").map(str::to_string),
        body_len: request.body.len(),
        status: 0,
    };
    let record = |seen: Seen| shared.seen.lock().unwrap().push(seen);
    let is_patch = request.method == "PATCH";
    let patch_number = if is_patch {
        let mut n = shared.patches.lock().unwrap();
        *n += 1;
        *n
    } else {
        0
    };

    if faults
        .hold
        .as_ref()
        .is_some_and(|(method, path)| request.method == *method && seen.path.contains(path))
    {
        record(seen);
        let mut byte = [0u8; 1];
        while matches!(reader.read(&mut byte), Ok(n) if n > 0) {}
        return Ok(());
    }
    if request.method == "HEAD"
        && faults
            .hide_blob
            .as_ref()
            .is_some_and(|digest| seen.path.ends_with(&format!("/blobs/{digest}")))
    {
        seen.status = 404;
        record(seen);
        return answer(&mut client, "404 Not Found", "");
    }
    if faults.refuse_mounts && request.method == "POST" && seen.query.contains("mount=") {
        seen.status = 401;
        record(seen);
        return answer(&mut client, "401 Unauthorized", "");
    }
    if is_patch && faults.drop_patch == Some(patch_number) {
        record(seen);
        return client.shutdown(Shutdown::Both);
    }
    if is_patch && faults.refuse_patch == Some(patch_number) {
        seen.status = 400;
        record(seen);
        return answer(&mut client, "400 Bad Request", "");
    }
    if faults.flaky > 0.0
        && (is_patch || !faults.flaky_patch_only)
        && shared.random() < faults.flaky
    {
        let (status, extra) = if shared.random() < 0.5 {
            ("500 Internal Server Error", "")
        } else {
            ("429 Too Many Requests", "Retry-After: 1\r\n")
        };
        seen.status = status[..3].parse().unwrap();
        record(seen);
        return answer(&mut client, status, extra);
    }
    if is_patch && faults.max_chunk.is_some_and(|max| request.body.len() > max) {
        seen.status = 416;
        record(seen);
        return answer(&mut client, "416 Requested Range Not Satisfiable", "");
    }
    if is_patch && faults.gitea_patch_rule {
        let held = request
            .upload_id()
            .and_then(|id| shared.uploads.lock().unwrap().get(&id).copied())
            .unwrap_or(0);
        let ok = match request.header("content-range") {
            None => held == 0,
            Some(range) => {
                range
                    .split('-')
                    .next()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    == Some(held)
            }
        };
        if !ok {
            seen.status = 416;
            record(seen);
            return answer(&mut client, "416 Requested Range Not Satisfiable", "");
        }
    }

    // Forward to the registry.
    let mut upstream = TcpStream::connect(&shared.upstream)?;
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (k, v) in &request.headers {
        let key = k.to_ascii_lowercase();
        if matches!(
            key.as_str(),
            "connection" | "transfer-encoding" | "content-length"
        ) || (second && key == "authorization")
        {
            continue;
        }
        head += &format!("{k}: {v}\r\n");
    }
    if second {
        if let Some(value) = &faults.second_address_authorization {
            head += &format!("Authorization: {value}\r\n");
        }
    }
    head += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        request.body.len()
    );
    upstream.write_all(head.as_bytes())?;
    if is_patch && faults.cut_patch == Some(patch_number) {
        upstream.write_all(&request.body[..request.body.len() / 2])?;
        upstream.flush()?;
        // Give the registry time to take the half it got before the connection goes.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = upstream.shutdown(Shutdown::Both);
        record(seen);
        return client.shutdown(Shutdown::Both);
    }
    upstream.write_all(&request.body)?;

    // The registry's answer, with the upload's place moved to the second address if asked.
    let mut up = BufReader::new(upstream);
    let mut status_line = String::new();
    up.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if up.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if request.method != "HEAD" && status != 204 && status != 304 {
        match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            Some(len) => {
                body = vec![0; len];
                up.read_exact(&mut body)?;
            }
            None => {
                up.read_to_end(&mut body)?;
            }
        }
    }
    if status == 202 {
        if let (Some(location), Some(range)) = (header("location"), header("range")) {
            let held = range
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .map_or(0, |n| n + 1);
            let held = if range == "0-0" { 0 } else { held };
            if let Some((_, id)) = location
                .split('?')
                .next()
                .unwrap()
                .split_once("/blobs/uploads/")
            {
                shared.uploads.lock().unwrap().insert(id.to_string(), held);
            }
        }
    }
    lie(&request, &seen, status, &mut headers, &mut body, faults);
    let mut out = format!("{}\r\n", status_line.trim_end());
    for (k, v) in &headers {
        let key = k.to_ascii_lowercase();
        if key == "connection" {
            continue;
        }
        let v = if key == "location"
            && faults.redirect_uploads
            && request.method == "POST"
            && status == 202
        {
            let first = format!("//{}", request.header("host").unwrap_or(""));
            v.replacen(&first, &format!("//{}", shared.second_address), 1)
        } else {
            v.clone()
        };
        out += &format!("{k}: {v}\r\n");
    }
    if faults.huge_header {
        out += &format!("X-Filler: {}\r\n", "f".repeat(1 << 20));
    }
    out += "Connection: close\r\n\r\n";
    // Recorded before the client hears the answer, so the log is in the order things happened.
    seen.status = status;
    record(seen);
    client.write_all(out.as_bytes())?;
    client.write_all(&body)?;
    client.flush()?;
    client.shutdown(Shutdown::Both)
}
