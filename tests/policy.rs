//! A guest of one's own: `examples/policy`, built by scripts/test.sh with
//! scripts/example-guest.sh into `$OCIPUSH_TEST_POLICY_GUEST`, run with `--guest` against the
//! test daemon. It refuses an image without an `org.opencontainers.image.source` label (each
//! platform of a multi-platform image by its own config) and a destination outside its
//! allow-list (`127.0.0.1/approved` among them: any port, repositories under `approved/`),
//! every destination of a push, with one line naming the rule and nothing stored in the
//! registry; it pushes what it allows exactly as the standard guest does, and is pinned by its
//! digest like any guest.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::published::published_config;
use support::registry::Registry;
use support::tripwires::Tripwires;
use support::*;

/// The example policy guest scripts/test.sh built.
fn policy_guest() -> String {
    let path = std::env::var("OCIPUSH_TEST_POLICY_GUEST")
        .expect("OCIPUSH_TEST_POLICY_GUEST is not set: run ./scripts/test.sh");
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: run ./scripts/test.sh"
    );
    path
}

/// `ocipush --guest GUEST [GLOBAL] push SOURCE DEST... [OPTIONS] --progress none`.
fn push_under(
    guest: &str,
    global: &[&str],
    source: &str,
    dests: &[&str],
    options: &[&str],
) -> Pushed {
    let mut command = Command::new(ocipush_bin());
    command
        .args(["--guest", guest])
        .args(global)
        .args(["push", source])
        .args(dests)
        .args(options)
        .args(["--progress", "none"])
        .env_remove("OCIPUSH_GUEST_DIGEST");
    run_ocipush(command, NO_ENV, None)
}

/// Builds `tag` from scratch with one random file and `labels`.
fn build_labelled(tag: &str, labels: &[(&str, &str)]) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("f"), random_bytes(64 * 1024)).unwrap();
    let mut dockerfile = "FROM scratch\nCOPY f /f\n".to_string();
    for (key, value) in labels {
        dockerfile += &format!("LABEL {key}=\"{value}\"\n");
    }
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    docker_build(tag, ctx.path());
}

const SOURCE_LABEL: &str = "org.opencontainers.image.source";
const SOURCE: &str = "https://example.com/ocipush/app";
const ALLOW_LIST: &str = "(127.0.0.1/approved, localhost/approved, registry.example.com/team)";

/// Every file in a registry's storage: none means no blob, upload, manifest or tag.
fn stored_files(registry: &Registry) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&registry.path("data"), &mut found);
    found
}

/// A refused push: exit status 1, one line, and nothing in the registry.
fn refused(pushed: &Pushed, registry: &Registry) -> String {
    let line = pushed.expect_failure();
    assert_eq!(
        pushed.output.status.code(),
        Some(1),
        "{}",
        pushed.describe()
    );
    assert_eq!(
        stored_files(registry),
        Vec::<PathBuf>::new(),
        "the registry stored something"
    );
    line
}

/// No tag in REPO, and HEAD answers 404 for each of `blobs` there.
fn nothing_in(registry: &str, repo: &str, blobs: &[String]) {
    assert_eq!(
        tags(registry, repo),
        Vec::<String>::new(),
        "a tag in {repo}"
    );
    for blob in blobs {
        assert_eq!(
            blob_status(registry, repo, blob),
            404,
            "HEAD {repo} blob {blob}"
        );
    }
}

/// The digests a manifest names: its config and layers.
fn named_blobs(manifest: &Value) -> Vec<String> {
    let layers = manifest["layers"].as_array().unwrap();
    std::iter::once(&manifest["config"])
        .chain(layers)
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_image_without_the_source_label_is_refused_before_any_upload() {
    let s = services();
    let guest = policy_guest();
    let registry = Registry::start();
    let name = unique("unlabelled");
    let tag = format!("{name}:1");
    build_labelled(&tag, &[("org.example.team", "ocipush")]);
    let repo = format!("approved/{name}");
    let dest = format!("{}/{repo}:1", registry.address);

    let line = refused(&push_under(&guest, &[], &tag, &[&dest], &[]), &registry);
    assert_eq!(
        line,
        format!(
            "ocipush: error: refused by policy rule source-label: image {tag} ({}) has no \
             {SOURCE_LABEL} label",
            image_id(&tag)
        )
    );
    // The blobs the push would have sent, as the standard guest sends them elsewhere: none of
    // them, nor the manifest, is in the repository the policy guest was refused.
    let standard_dest = format!("{}/ocipush-test/{name}:1", s.registry);
    let digest = push(&tag, &standard_dest).expect_success(&standard_dest);
    let mut blobs = named_blobs(&skopeo_raw_manifest(&standard_dest));
    assert_eq!(blobs.len(), 2, "a config and one layer: {blobs:?}");
    blobs.push(digest);
    nothing_in(&registry.address, &repo, &blobs);

    // An empty value says nothing either.
    let empty = format!("{name}-empty:1");
    build_labelled(&empty, &[(SOURCE_LABEL, "")]);
    let line = refused(&push_under(&guest, &[], &empty, &[&dest], &[]), &registry);
    assert!(
        line.contains("rule source-label") && line.contains("an empty"),
        "{line}"
    );
}

#[test]
fn a_destination_outside_the_allow_list_is_refused_before_any_traffic() {
    let guest = policy_guest();
    let registry = Registry::start();
    let name = unique("elsewhere");
    let tag = format!("{name}:1");
    build_labelled(&tag, &[(SOURCE_LABEL, SOURCE)]);
    let refusal = |repo: &str| {
        format!(
            "ocipush: error: refused by policy rule allowed-destination: destination {}/{repo} \
             is not under a repository the allow-list names {ALLOW_LIST}",
            registry.address
        )
    };
    for repo in [format!("other/{name}"), format!("approvedx/{name}")] {
        let dest = format!("{}/{repo}:1", registry.address);
        let line = refused(&push_under(&guest, &[], &tag, &[&dest], &[]), &registry);
        assert_eq!(line, refusal(&repo));
    }
    // Every destination of a push is judged: an allowed one beside it does not carry it.
    let allowed = format!("{}/approved/{name}:1", registry.address);
    let outside = format!("{}/other/{name}:2", registry.address);
    let pushed = push_under(&guest, &[], &tag, &[&allowed, &outside], &[]);
    assert_eq!(
        refused(&pushed, &registry),
        refusal(&format!("other/{name}"))
    );
    // Refused as soon as the destination is parsed: neither the daemon nor the registry hears
    // of it (the tripwires' destination is `127.0.0.1:PORT/tripwire/app:1`).
    Tripwires::new().refused(
        &["--guest", &guest],
        &[],
        "refused by policy rule allowed-destination: destination 127.0.0.1:",
    );
}

#[test]
fn a_labelled_image_to_an_allowed_destination_is_pushed_as_the_standard_guest_pushes_it() {
    let s = services();
    let guest = policy_guest();
    let name = unique("allowed");
    let tag = format!("{name}:1");
    build_labelled(&tag, &[(SOURCE_LABEL, SOURCE)]);
    let dest = format!("{}/approved/{name}:1", s.registry);

    // expect_success reads it back whole with oci-spec.
    let digest = push_under(&guest, &[], &tag, &[&dest], &[]).expect_success(&dest);
    let manifest = skopeo_raw_manifest(&dest);
    assert_eq!(manifest["config"]["digest"], image_id(&tag).as_str());
    assert_eq!(manifest["annotations"][SOURCE_LABEL], SOURCE);
    let config = published_config(&dest, &digest);
    let labels = config.config().as_ref().and_then(|c| c.labels().clone());
    assert_eq!(
        labels
            .unwrap_or_default()
            .get(SOURCE_LABEL)
            .map(String::as_str),
        Some(SOURCE)
    );

    // The policy only decides whether: what is published is the standard guest's manifest.
    let standard_dest = format!("{}/ocipush-test/{name}:1", s.registry);
    let standard = push(&tag, &standard_dest).expect_success(&standard_dest);
    assert_eq!(standard, digest);
}

/// One platform of a two-platform OCI layout: its layer, config and manifest.
struct Platform {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
}

impl Platform {
    fn new(arch: &str, labels: Value) -> Self {
        let (layer, diff_id) = gzip_layer(&format!("{arch}.bin"), &random_bytes(50_000));
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
        }))
        .unwrap();
        Self {
            layer,
            config,
            manifest,
        }
    }
}

/// Writes an OCI layout at `dir` whose tag `1` names an index of `platforms` (os linux, the
/// architectures given); returns the index's digest.
fn two_platform_layout(dir: &Path, platforms: &[(&str, &Platform)]) -> String {
    let entries: Vec<Value> = platforms
        .iter()
        .map(|(arch, p)| {
            let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &p.manifest);
            entry["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
            entry
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let mut top = descriptor("application/vnd.oci.image.index.v1+json", &index);
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "1"});
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |bytes: &[u8]| std::fs::write(blobs.join(sha256_hex(bytes)), bytes).unwrap();
    blob(&index);
    for (_, p) in platforms {
        blob(&p.layer);
        blob(&p.config);
        blob(&p.manifest);
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let listing = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(dir.join("index.json"), listing.to_string()).unwrap();
    sha256(&index)
}

/// A multi-platform source is judged platform by platform, each by its own config: with
/// arm64's unlabelled, the whole image is refused naming that platform, and nothing of either
/// platform is sent; amd64 alone goes.
#[test]
fn each_platform_of_a_multi_platform_image_needs_the_label_in_its_own_config() {
    let s = services();
    let guest = policy_guest();
    let amd = Platform::new("amd64", serde_json::json!({SOURCE_LABEL: SOURCE}));
    let arm = Platform::new("arm64", serde_json::json!({"org.example.team": "ocipush"}));
    let dir = tempfile::tempdir().unwrap();
    let index = two_platform_layout(dir.path(), &[("amd64", &amd), ("arm64", &arm)]);
    let source = format!("oci:{}:1", dir.path().display());
    let repo = format!("approved/{}", unique("platforms"));
    let dest = format!("{}/{repo}:1", s.registry);

    let pushed = push_under(&guest, &[], &source, &[&dest], &[]);
    assert_eq!(
        pushed.expect_failure(),
        format!(
            "ocipush: error: refused by policy rule source-label: image {source} (linux/arm64) \
             ({}) has no {SOURCE_LABEL} label",
            sha256(&arm.config)
        )
    );
    let mut blobs = vec![index];
    for p in [&amd, &arm] {
        blobs.extend([&p.layer, &p.config, &p.manifest].map(|b| sha256(b)));
    }
    nothing_in(&s.registry, &repo, &blobs);

    let amd_only = push_under(
        &guest,
        &[],
        &source,
        &[&dest],
        &["--platform", "linux/amd64"],
    );
    let digest = amd_only.expect_success(&dest);
    assert_eq!(digest, sha256(&amd.manifest), "amd64's own manifest");
    let config = published_config(&dest, &digest);
    assert_eq!(config.architecture().to_string(), "amd64");
}

/// The digest `ocipush [ARGS] guest info` names.
fn info_digest(args: &[&str]) -> String {
    let info = run_ok(
        Command::new(ocipush_bin())
            .args(args)
            .args(["guest", "info"])
            .env_remove("OCIPUSH_GUEST_DIGEST"),
    );
    let line = info.lines().find_map(|l| l.strip_prefix("digest:"));
    line.unwrap_or_else(|| panic!("no digest line in\n{info}"))
        .trim()
        .to_string()
}

#[test]
fn the_policy_guest_is_pinned_by_its_digest() {
    let s = services();
    let guest = policy_guest();
    let digest = format!("sha256:{}", sha256_file(Path::new(&guest)));
    assert_eq!(info_digest(&["--guest", &guest]), digest);

    let name = unique("pinned-policy");
    let tag = format!("{name}:1");
    build_labelled(&tag, &[(SOURCE_LABEL, SOURCE)]);
    let dest = format!("{}/approved/{name}:1", s.registry);
    push_under(&guest, &["--guest-digest", &digest], &tag, &[&dest], &[]).expect_success(&dest);

    // Any other digest, the embedded guest's included, refuses it before any traffic.
    let tripwires = Tripwires::new();
    let wrong = format!("sha256:{}", "0".repeat(64));
    tripwires.refused(
        &["--guest", &guest, "--guest-digest", &wrong],
        &[],
        "refusing to run it",
    );
    let embedded = info_digest(&[]);
    assert_ne!(embedded, digest);
    tripwires.refused(
        &["--guest", &guest, "--guest-digest", &embedded],
        &[],
        "refusing to run it",
    );
}
