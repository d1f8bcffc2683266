//! A guest that misbehaves on purpose, to test the host's sandbox. It speaks the real contract
//! and starts a real push (opens the repository and uploads a small blob), then does what the
//! request's source names: `trap`, `oom` (grows its memory until stopped) or `loop` (computes
//! forever without calling the host).
#![cfg(target_arch = "wasm32")]
// The generated export glue takes a request's fields flattened into one argument each.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ world: "pusher", path: "../../../wit" });

use ocipush::core::registry;

/// The blob uploaded first, and its digest.
const MARKER: &[u8] = b"started";
const MARKER_DIGEST: &str =
    "sha256:03494afd4248c42f5fa1237bf2eeebe751ab8d9c977d55405fcb17469dbd91f8";

struct Misbehaving;

impl Guest for Misbehaving {
    fn push(request: PushRequest) -> Result<PushResult, String> {
        let destination = request.destinations.first().ok_or("no destination")?;
        let (host, path) = destination
            .split_once('/')
            .ok_or("destination has no repository")?;
        let repository = path
            .rsplit_once(':')
            .map_or(path, |(repository, _tag)| repository);
        let repo = registry::open(host, repository, None)?;
        repo.put_blob(MARKER_DIGEST, MARKER)?;
        match request.source.as_str() {
            "trap" => panic!("misbehaving on purpose"),
            "oom" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                }
            }
            "loop" => {
                let mut count = 0u64;
                loop {
                    count = std::hint::black_box(count.wrapping_add(1));
                }
            }
            other => Err(format!("unknown misbehaviour {other:?}")),
        }
    }

    fn build(_request: BuildPushRequest) -> Result<BuildResult, String> {
        Err("the misbehaving guest builds nothing".to_string())
    }

    fn push_index(request: IndexRequest) -> Result<PushResult, String> {
        let source = request.sources.first().cloned().unwrap_or_default();
        Self::push(PushRequest {
            source,
            destinations: vec![request.destination],
            settings: request.settings,
            platforms: Vec::new(),
        })
    }
}

export!(Misbehaving);
