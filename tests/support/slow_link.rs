//! `SlowLink`: a throttling TCP proxy in front of a real registry, for tests that act while an
//! upload is under way (a signal, a registry killed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A slow link to a registry: a TCP proxy on 127.0.0.1 that streams request bodies through at
/// a set rate, so that a test can act in the middle of an upload. One request per connection (it
/// asks both sides to close after it), every request line recorded, a new connection to the
/// registry for each, so a test can restart the registry behind it. (Registries that answer
/// wrongly are `super::faults::HttpFaultProxy`'s.)
pub struct SlowLink {
    /// `127.0.0.1:PORT`, to push to.
    pub address: String,
    requests: Arc<Mutex<Vec<String>>>,
    /// Bytes per second for request bodies; 0 for no limit.
    pub throttle: Arc<AtomicU64>,
}

impl SlowLink {
    /// Starts the link in front of `upstream` (`host:port` of a real registry).
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let throttle = Arc::new(AtomicU64::new(0));
        let (r, t, upstream) = (requests.clone(), throttle.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let (r, t, upstream) = (r.clone(), t.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(client, &upstream, &r, &t);
                });
            }
        });
        Self {
            address,
            requests,
            throttle,
        }
    }

    /// The request lines seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads an HTTP head (request or response) up to its blank line.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" || line == "\n" {
            return Ok(lines);
        }
        lines.push(line.trim_end().to_string());
    }
}

/// The head again, without `Connection` headers, with `Connection: close`.
fn closing_head(lines: &[String]) -> String {
    let mut head = format!("{}\r\n", lines[0]);
    for line in &lines[1..] {
        let name = line.split(':').next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive") {
            head += &format!("{line}\r\n");
        }
    }
    head + "Connection: close\r\n\r\n"
}

fn proxy_one(
    client: TcpStream,
    upstream: &str,
    requests: &Mutex<Vec<String>>,
    throttle: &AtomicU64,
) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let request = read_head(&mut from_client)?;
    let request_line = request[0].clone();
    requests.lock().unwrap().push(request_line.clone());
    let mut registry = TcpStream::connect(upstream)?;
    registry.write_all(closing_head(&request).as_bytes())?;

    // The request body, as it comes (a streamed PATCH has no length), throttled if asked.
    let mut to_registry = registry.try_clone()?;
    let rate = throttle.load(Ordering::SeqCst);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match from_client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to_registry.write_all(&buf[..n]).is_err() {
                break;
            }
            if rate > 0 {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
            }
        }
    });

    let mut from_registry = BufReader::new(registry);
    let response = read_head(&mut from_registry)?;
    let method = request_line.split(' ').next().unwrap_or("");
    let mut to_client = client;
    to_client.write_all(closing_head(&response).as_bytes())?;
    if method != "HEAD" {
        std::io::copy(&mut from_registry, &mut to_client)?;
    }
    to_client.flush()?;
    let _ = to_client.shutdown(Shutdown::Both);
    Ok(())
}
