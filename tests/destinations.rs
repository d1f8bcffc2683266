//! Several destinations in one push (`ocipush push SOURCE DEST DEST...`) against real registries,
//! read back by skopeo and parsed with oci-spec: one export, each repository's blobs sent once,
//! one manifest everywhere, tags only once every destination holds every blob, and a destination
//! that fails leaves no tag anywhere. Needs the services of `scripts/services.sh` (run
//! `./scripts/test.sh`).

mod support;

use std::path::Path;
use std::process::Command;

use oci_spec::image::{ImageIndex, ImageManifest};
use serde_json::Value;
use support::faults::{Faults, HttpFaultProxy, Seen};
use support::registry::Registry;
use support::*;

/// `name:1`: FROM scratch, two COPY layers.
fn build_two_layer_image(name: &str) -> (String, String, Vec<String>) {
    let tag = format!("{name}:1");
    build_image(
        &tag,
        None,
        &[
            ("data.bin", &random_bytes(200_000)),
            ("hello.txt", format!("{name}\n").as_bytes()),
        ],
    );
    (tag.clone(), image_id(&tag), rootfs_layers(&tag))
}

/// `ocipush push SOURCE DEST... ARGS` (with --digest-file).
fn push_to(source: &str, destinations: &[&str], args: &[&str], envs: &[(&str, &str)]) -> Pushed {
    let mut command = Command::new(ocipush_bin());
    command
        .arg("push")
        .arg(source)
        .args(destinations)
        .args(args);
    run_ocipush(command, envs, None)
}

/// Success: one `DEST@DIGEST` line per destination, in order, and the digest in --digest-file.
/// Returns the digest.
fn expect_lines(pushed: &Pushed, destinations: &[&str]) -> String {
    assert!(pushed.output.status.success(), "{}", pushed.describe());
    let digest = pushed.digest_file.clone().expect("a --digest-file");
    assert!(is_sha256_digest(&digest), "{digest}");
    let expected: Vec<String> = destinations
        .iter()
        .map(|d| format!("{}@{digest}", canonical(d)))
        .collect();
    let lines: Vec<&str> = pushed.stdout.lines().collect();
    assert_eq!(lines, expected, "{}", pushed.describe());
    digest
}

/// The manifest at `reference` (`docker://…` or `oci:…`), as skopeo reads it: its digest, by
/// skopeo, and its bytes parsed with oci-spec.
fn skopeo_manifest(reference: &str) -> (String, ImageManifest) {
    let digest = run_ok(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        reference,
    ]));
    let raw =
        run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", reference]));
    assert!(raw.status.success(), "{}", describe(&raw));
    let manifest = ImageManifest::from_reader(&raw.stdout[..])
        .unwrap_or_else(|e| panic!("oci-spec cannot parse the manifest of {reference}: {e}"));
    (digest, manifest)
}

/// The image's config and layers, as a manifest of it must name them.
fn check_names_image(reference: &str, manifest: &ImageManifest, id: &str, diff_ids: &[String]) {
    assert_eq!(manifest.config().digest().to_string(), id, "{reference}");
    assert_eq!(manifest.layers().len(), diff_ids.len(), "{reference}");
}

/// Blob uploads the registry behind the proxy started in `repository` (`POST …/blobs/uploads/`,
/// mounts aside).
fn upload_starts(seen: &[Seen], repository: &str) -> usize {
    seen.iter()
        .filter(|s| {
            s.method == "POST"
                && s.path == format!("/v2/{repository}/blobs/uploads/")
                && !s.query.contains("mount=")
                && s.status == 202
        })
        .count()
}

/// Writes of tags: manifest PUTs whose reference is not a digest, in the order seen.
fn tag_writes(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/manifests/"))
        .filter(|s| !s.path.contains("/manifests/sha256:"))
        .map(|s| s.path.clone())
        .collect()
}

/// Two tags in one repository and one in another, with --verify: skopeo reads one digest back
/// from all three, each repository got each blob once, and the tags came last, in order.
#[test]
fn three_destinations_read_back_with_one_digest() {
    let name = unique("dests");
    let (tag, id, diff_ids) = build_two_layer_image(&name);
    let proxy = HttpFaultProxy::start(&services().registry, Faults::default());
    let (one, other) = (format!("dests/{name}-a"), format!("dests/{name}-b"));
    let destinations = [
        format!("{}/{one}:1.0", proxy.address),
        format!("{}/{other}:1.0", proxy.address),
        format!("docker://{}/{one}", proxy.address),
    ];
    let destinations: Vec<&str> = destinations.iter().map(String::as_str).collect();
    let pushed = push_to(
        &tag,
        &destinations,
        &["--verify", "--progress", "json"],
        NO_ENV,
    );
    let digest = expect_lines(&pushed, &destinations);

    let registry = services().registry;
    for reference in [
        format!("{registry}/{one}:1.0"),
        format!("{registry}/{other}:1.0"),
        format!("{registry}/{one}:latest"),
    ] {
        let (read, manifest) = skopeo_manifest(&format!("docker://{reference}"));
        assert_eq!(read, digest, "{reference}");
        check_names_image(&reference, &manifest, &id, &diff_ids);
    }
    copy_to_oci_layout_and_verify(&format!("{registry}/{other}:1.0"), &digest, &diff_ids);

    let seen = proxy.seen();
    // Two layers and the config, once per repository, whatever its number of tags.
    assert_eq!(upload_starts(&seen, &one), 3, "{seen:#?}");
    assert_eq!(upload_starts(&seen, &other), 3, "{seen:#?}");
    assert_eq!(
        tag_writes(&seen),
        vec![
            format!("/v2/{one}/manifests/1.0"),
            format!("/v2/{other}/manifests/1.0"),
            format!("/v2/{one}/manifests/latest"),
        ]
    );
    let first_tag = seen
        .iter()
        .position(|s| s.method == "PUT" && s.path == format!("/v2/{one}/manifests/1.0"))
        .unwrap();
    let last_blob = seen
        .iter()
        .rposition(|s| s.path.contains("/blobs/uploads/"))
        .unwrap();
    assert!(
        last_blob < first_tag,
        "a tag before the last blob: {seen:#?}"
    );
    let verified = pushed
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "verified")
        .count();
    assert_eq!(
        verified, 2,
        "one read-back per repository\n{}",
        pushed.stderr
    );
}

/// A registry and an OCI layout directory in one push: the same manifest in both, and a second
/// registry of its own gets it too.
#[test]
fn a_registry_a_layout_and_another_registry_get_one_manifest() {
    let name = unique("dests-mixed");
    let (tag, id, diff_ids) = build_two_layer_image(&name);
    let elsewhere = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:v1", dir.path().join("out").display());
    let destinations = [
        format!("{}/dests/{name}:v1", services().registry),
        layout.clone(),
        format!("{}/dests/{name}:v1", elsewhere.address),
    ];
    let destinations: Vec<&str> = destinations.iter().map(String::as_str).collect();
    let pushed = push_to(&tag, &destinations, &["--progress", "plain"], NO_ENV);
    let digest = expect_lines(&pushed, &destinations);
    for reference in [
        format!("docker://{}", destinations[0]),
        layout.clone(),
        format!("docker://{}", destinations[2]),
    ] {
        let (read, manifest) = skopeo_manifest(&reference);
        assert_eq!(read, digest, "{reference}");
        check_names_image(&reference, &manifest, &id, &diff_ids);
    }
    let index = ImageIndex::from_file(dir.path().join("out/index.json")).unwrap();
    let entry = &index.manifests()[0];
    assert_eq!(entry.digest().to_string(), digest);
    assert_eq!(
        entry
            .annotations()
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name"))
            .map(String::as_str),
        Some("v1")
    );
    verify_pushed(destinations[2], &digest, &id, &diff_ids);
}

/// A destination that refuses the upload (a read-only registry) after another took blobs: the
/// push fails with one line naming it, no tag anywhere, no --digest-file, nothing on stdout.
#[test]
fn a_failing_destination_leaves_no_tag_anywhere() {
    let s = services();
    let name = unique("dests-readonly");
    let (tag, _, _) = build_two_layer_image(&name);
    let repo = format!("dests/{name}");
    let layout_dir = tempfile::tempdir().unwrap();
    let layout = layout_dir.path().join("out");
    let writable = format!("{}/{repo}:v1", s.registry);
    let read_only = format!("{}/{repo}:v1", s.readonly_registry);
    let layout_dest = format!("oci:{}:v1", layout.display());
    let pushed = push_to(
        &tag,
        &[&writable, &layout_dest, &read_only],
        &["--progress", "none"],
        NO_ENV,
    );
    let line = pushed.expect_failure();
    assert!(
        line.starts_with(&format!(
            "ocipush: error: destination {}/{repo}: ",
            s.readonly_registry
        )),
        "the error names the destination that failed: {line}"
    );
    assert_tag_absent(&s.registry, &repo, "v1");
    assert_tag_absent(&s.readonly_registry, &repo, "v1");
    assert!(!has_index_entry(&layout), "the layout got no tag");
}

/// Whether the layout directory's index.json names any manifest.
fn has_index_entry(layout: &Path) -> bool {
    std::fs::read(layout.join("index.json"))
        .ok()
        .map(|bytes| {
            let index: Value = serde_json::from_slice(&bytes).unwrap();
            index["manifests"].as_array().is_some_and(|m| !m.is_empty())
        })
        .unwrap_or(false)
}

/// Refused before any traffic, with one line, as a single destination is: Docker's format with
/// zstd, and a destination named twice (however spelled).
#[test]
fn bad_destination_lists_are_refused_before_any_traffic() {
    let name = unique("dests-refused");
    let proxy = HttpFaultProxy::start(&services().registry, Faults::default());
    let a = format!("{}/dests/{name}:v1", proxy.address);
    let b = format!("{}/dests/{name}-b:v1", proxy.address);
    let twice = format!("docker://{}/dests/{name}:v1", proxy.address);
    let zstd = push_to(
        "no-such-image:1",
        &[&a, &b],
        &["--format", "docker", "--compression", "zstd"],
        NO_ENV,
    );
    let line = zstd.expect_failure();
    assert!(line.contains("zstd"), "{line}");
    let repeated = push_to("no-such-image:1", &[&a, &b, &twice], &[], NO_ENV);
    let line = repeated.expect_failure();
    assert_eq!(
        line,
        format!("ocipush: error: destination {twice} is given twice")
    );
    assert!(proxy.seen().is_empty(), "{:#?}", proxy.seen());
}

/// Docker's containerd image store: its own manifest goes byte for byte to a registry and a
/// layout, so both have the image ID as their digest.
#[test]
fn the_containerd_stores_own_manifest_goes_to_every_destination() {
    let Ok(host) = std::env::var("OCIPUSH_TEST_DOCKER26_CONTAINERD_HOST") else {
        panic!("OCIPUSH_TEST_DOCKER26_CONTAINERD_HOST is not set: run ./scripts/test.sh");
    };
    let name = unique("dests-containerd");
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("data.bin"), random_bytes(100_000)).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY data.bin /data.bin\n",
    )
    .unwrap();
    let tag = format!("{name}:1");
    let mut build = Command::new("docker");
    build
        .args(["build", "--no-cache", "-q", "-t", &tag, "."])
        .current_dir(ctx.path())
        .env("DOCKER_HOST", &host)
        .env("DOCKER_BUILDKIT", "0");
    run_ok(&mut build);
    let id = run_ok(
        Command::new("docker")
            .args(["image", "inspect", "-f", "{{.Id}}", &tag])
            .env("DOCKER_HOST", &host),
    );
    let dir = tempfile::tempdir().unwrap();
    let destinations = [
        format!("{}/dests/{name}:1", services().registry),
        format!("oci:{}:1", dir.path().join("out").display()),
    ];
    let destinations: Vec<&str> = destinations.iter().map(String::as_str).collect();
    let pushed = push_to(
        &tag,
        &destinations,
        &["--progress", "none"],
        &[("DOCKER_HOST", host.as_str())],
    );
    let digest = expect_lines(&pushed, &destinations);
    assert_eq!(digest, id, "the registry digest is the image ID");
    for reference in [
        format!("docker://{}", destinations[0]),
        destinations[1].to_string(),
    ] {
        let (read, _) = skopeo_manifest(&reference);
        assert_eq!(read, id, "{reference}");
    }
}
