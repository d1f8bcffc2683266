//! Hard limits on what the host takes from registries and hands them, in one place.
//!
//! Response heads are bounded by the HTTP client itself (hyper refuses a head over about
//! 400 KiB or with more than 100 headers: the push fails with "message head is too large");
//! the bodies ocipush reads whole are bounded here, and so is what it writes as a manifest.

use reqwest::Response;

/// The largest manifest the host writes, whatever guest runs: distribution refuses more than
/// 4 MiB (the guest has the same limit, `ocipush_guest::limits::MANIFEST_LIMIT`).
pub const MANIFEST_LIMIT: usize = 4 << 20;

/// A manifest over `MANIFEST_LIMIT`, refused before it is sent.
#[derive(Debug)]
pub struct ManifestTooLarge(pub usize);

impl std::fmt::Display for ManifestTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refusing to write a manifest of {} bytes: registries accept at most {} MiB",
            self.0,
            MANIFEST_LIMIT >> 20
        )
    }
}

/// Refuses a manifest over `MANIFEST_LIMIT`, before it is sent.
pub fn check_manifest_size(len: usize) -> Result<(), ManifestTooLarge> {
    if len > MANIFEST_LIMIT {
        return Err(ManifestTooLarge(len));
    }
    Ok(())
}

/// A response body read up to a limit.
#[derive(Debug, Default)]
pub struct Capped {
    /// At most the limit's worth of the body.
    pub bytes: Vec<u8>,
    /// Whether the body went on past the limit; the rest was left unread.
    pub over: bool,
}

/// Reads at most `limit` bytes of a response body and leaves the rest unread: the one way the
/// host reads a body whole (error bodies, manifests read back, token answers), so that a
/// registry that streams one forever cannot exhaust memory. A body of exactly `limit` bytes is
/// whole.
pub async fn read_capped(response: &mut Response, limit: usize) -> reqwest::Result<Capped> {
    let mut body = Capped::default();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.bytes.len();
        if chunk.len() > room {
            body.bytes.extend_from_slice(&chunk[..room]);
            body.over = true;
            break;
        }
        body.bytes.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn manifests_over_4_mib_are_refused() {
        assert!(check_manifest_size(MANIFEST_LIMIT).is_ok());
        let err = check_manifest_size(MANIFEST_LIMIT + 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("4194305 bytes"), "{err}");
    }

    /// A server on loopback that answers one request with an endless chunked body.
    fn endless_body_server() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            let chunk = format!("{:x}\r\n{}\r\n", 65536, "x".repeat(65536));
            // Until the client hangs up: stops as soon as it has read enough.
            while conn.write_all(chunk.as_bytes()).is_ok() {}
        });
        address
    }

    #[test]
    fn an_endless_error_body_is_read_only_up_to_the_limit() {
        let address = endless_body_server();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let body = rt.block_on(async {
            let mut response = reqwest::get(format!("http://{address}/v2/")).await.unwrap();
            read_capped(&mut response, 4096).await.unwrap()
        });
        assert_eq!(body.bytes, vec![b'x'; 4096]);
        assert!(body.over);
    }

    /// serde_json refuses JSON nested deeper than 128 levels: a hostile manifest or token
    /// answer parsed as a `Value` is an error, not a stack overflow.
    #[test]
    fn json_nested_past_serde_jsons_limit_is_an_error() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = serde_json::from_str::<serde_json::Value>(&deep).unwrap_err();
        assert!(
            err.to_string().contains("recursion limit exceeded"),
            "{err}"
        );
        let manifest = format!(r#"{{"layers":{deep}}}"#);
        let err = ocipush_parse::referenced_digests(manifest.as_bytes()).unwrap_err();
        assert!(err.contains("recursion limit exceeded"), "{err}");
        let within = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(serde_json::from_str::<serde_json::Value>(&within).is_ok());
    }
}
