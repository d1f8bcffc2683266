//! Integration tests for the places an image comes from and goes to beyond the daemon and a
//! registry: the OCI image layout destination (`oci:DIR[:TAG]`) and `docker save` tarballs as a
//! source (`docker-archive:PATH[:REF]`, real `docker save` output and the podman and Docker >= 25
//! dialects), and podman's Docker-compatible API service as the daemon, all read back by skopeo,
//! which checks every digest. Needs the services of `scripts/services.sh` (run
//! `./scripts/test.sh`).

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::daemon_proxy::FaultProxy;
use support::*;

/// A one-layer image built in the test daemon; returns (tag, image ID, diff IDs).
fn build_image(name: &str, content: &[u8]) -> (String, String, Vec<String>) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("file.bin"), content).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY file.bin /file.bin\nLABEL org.example.test=sources\n",
    )
    .unwrap();
    let tag = format!("{name}:1.0");
    docker_build(&tag, ctx.path());
    (tag.clone(), image_id(&tag), rootfs_layers(&tag))
}

fn index(layout: &Path) -> Value {
    let bytes = std::fs::read(layout.join("index.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The `org.opencontainers.image.ref.name` -> digest entries of a layout's index.json.
fn refs(layout: &Path) -> Vec<(String, String)> {
    let mut refs: Vec<(String, String)> = index(layout)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    refs.sort();
    refs
}

/// Names in `blobs/sha256` that are not `<64 hex>` (left-over temporary files).
fn stray_files(layout: &Path) -> Vec<String> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !is_sha256_digest(&format!("sha256:{name}")))
        .collect()
}

fn skopeo_inspect(reference: &str) -> Value {
    let out = run_ok(Command::new("skopeo").args(["inspect", reference]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo inspect {reference}: {e}: {out}"))
}

#[test]
fn oci_layout_destination_is_read_by_skopeo_and_keeps_other_images() {
    let s = services();
    let name = unique("layout");
    let (first, first_id, first_diff_ids) =
        build_image(&format!("{name}-a"), &random_bytes(300_000));
    let (second, _, second_diff_ids) = build_image(&format!("{name}-b"), b"second image\n");
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: ocipush creates it.
    let layout = dir.path().join("nested/layout");
    let dest = |tag: &str| format!("oci:{}:{tag}", layout.display());

    let digest = push(&first, &dest("v1")).expect_success(&dest("v1"));
    assert_eq!(
        std::fs::read_to_string(layout.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    assert_eq!(refs(&layout), vec![("v1".to_string(), digest.clone())]);

    // skopeo reads the layout: the manifest digest and the layer blobs.
    let inspected = skopeo_inspect(&dest("v1"));
    assert_eq!(inspected["Digest"], digest.as_str(), "{inspected}");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["digest"], first_id.as_str());
    assert_eq!(inspected["Layers"][0], manifest["layers"][0]["digest"]);

    // skopeo copies it to a registry, verifying every blob against its digest on the way; the
    // registry then holds the very manifest, whose layers gunzip to the image's diff IDs.
    let repo = format!("sources/{name}");
    let reference = format!("{}/{repo}:v1", s.registry);
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &dest("v1"),
        &format!("docker://{reference}"),
    ]));
    verify_pushed(&reference, &digest, &first_id, &first_diff_ids);

    // A layout gets the same manifest a registry gets for the same image and settings.
    let direct = format!("{}/{repo}-direct:v1", s.registry);
    assert_eq!(push(&first, &direct).expect_success(&direct), digest);

    // A second image under another tag keeps the first; the same tag again replaces only
    // that entry.
    let second_digest = push(&second, &dest("v2")).expect_success(&dest("v2"));
    assert_eq!(
        refs(&layout),
        vec![
            ("v1".to_string(), digest.clone()),
            ("v2".to_string(), second_digest.clone())
        ]
    );
    assert_eq!(skopeo_inspect(&dest("v1"))["Digest"], digest.as_str());
    let layers = skopeo_inspect(&dest("v2"))["Layers"].clone();
    assert_eq!(layers.as_array().map(Vec::len), Some(second_diff_ids.len()));

    push(&second, &dest("v1")).expect_success(&dest("v1"));
    assert_eq!(
        refs(&layout),
        vec![
            ("v1".to_string(), second_digest.clone()),
            ("v2".to_string(), second_digest)
        ]
    );
    assert_eq!(stray_files(&layout), Vec::<String>::new());
}

#[test]
fn oci_layout_failures_write_no_manifest() {
    let s = services();
    let name = unique("layout-fail");
    // 6 MiB of random data in one layer: byte 3 MiB of the export is inside it.
    let (tag, _, _) = build_image(&name, &random_bytes(6 << 20));
    let dir = tempfile::tempdir().unwrap();

    // A directory that holds something else is not written to.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let dest = format!("oci:{}:v1", other.display());
    let line = push(&tag, &dest).expect_failure();
    assert!(
        line.contains("not an OCI image layout") && line.contains(&other.display().to_string()),
        "{line}"
    );
    let names: Vec<_> = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["notes.txt"]);

    // A layer that does not match its diff ID (one byte flipped in the export) is never
    // stored, and no manifest or index entry is written.
    let layout = dir.path().join("layout");
    let dest = format!("oci:{}:v1", layout.display());
    let proxy = FaultProxy::start(&s.docker_host, 3 << 20);
    let pushed = push_with(
        &tag,
        &dest,
        "none",
        &[("DOCKER_HOST", &proxy.docker_host())],
    );
    assert_eq!(proxy.flips.load(std::sync::atomic::Ordering::SeqCst), 1);
    let line = pushed.expect_failure();
    assert!(line.contains("digest mismatch"), "{line}");
    assert_eq!(refs(&layout), vec![]);
    let blobs: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(blobs.is_empty(), "nothing stored: {blobs:?}");

    // Credentials are for registries.
    let pushed = push_input(
        &tag,
        &dest,
        "none",
        &["--username", "u", "--password-stdin"],
        NO_ENV,
        Some("p\n"),
    );
    let line = pushed.expect_failure();
    assert!(line.contains("--username is for registries"), "{line}");

    // Bad oci: references are refused before any traffic.
    let line = push(&tag, "oci::v1").expect_failure();
    assert!(line.contains("names no directory"), "{line}");
}

#[test]
fn docker_archive_of_a_real_docker_save_pushes_the_image_it_names() {
    let s = services();
    let name = unique("archive");
    let (first, first_id, first_diff_ids) =
        build_image(&format!("{name}-a"), &random_bytes(300_000));
    let (second, second_id, second_diff_ids) = build_image(&format!("{name}-b"), b"second\n");
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single.tar");
    let multi = dir.path().join("multi.tar");
    docker_ok(&["save", "-o", single.to_str().unwrap(), &first]);
    docker_ok(&["save", "-o", multi.to_str().unwrap(), &first, &second]);

    // One image: no reference needed, and the manifest is the one a push from the daemon writes.
    let repo = format!("sources/{name}");
    let dest = format!("{}/{repo}:v1", s.registry);
    let source = format!("docker-archive:{}", single.display());
    let digest = push(&source, &dest).expect_success(&dest);
    verify_pushed(&dest, &digest, &first_id, &first_diff_ids);
    let from_daemon = format!("{}/{repo}-daemon:v1", s.registry);
    assert_eq!(
        push(&first, &from_daemon).expect_success(&from_daemon),
        digest
    );

    // Several images: without a reference the error lists them, and nothing is written.
    let many = format!("{}/{repo}-many:v1", s.registry);
    let line = push(&format!("docker-archive:{}", multi.display()), &many).expect_failure();
    assert!(
        line.contains("holds 2 images") && line.contains(&first) && line.contains(&second),
        "{line}"
    );
    assert_tag_absent(&s.registry, &format!("{repo}-many"), "v1");
    // Named by tag, each comes out as pushed from the daemon; only its own layers are read.
    let named = push(
        &format!("docker-archive:{}:{second}", multi.display()),
        &many,
    )
    .expect_success(&many);
    verify_pushed(&many, &named, &second_id, &second_diff_ids);
    let line = push(
        &format!("docker-archive:{}:nothere:1", multi.display()),
        &many,
    )
    .expect_failure();
    assert!(line.contains("no image nothere:1"), "{line}");

    // A file that is not there, or not a tar.
    let line = push(
        &format!("docker-archive:{}/missing.tar", dir.path().display()),
        &dest,
    )
    .expect_failure();
    assert!(line.contains("cannot open archive"), "{line}");
    std::fs::write(dir.path().join("text.tar"), "not a tarball\n".repeat(100)).unwrap();
    let line = push(
        &format!("docker-archive:{}/text.tar", dir.path().display()),
        &dest,
    )
    .expect_failure();
    assert!(line.contains("text.tar"), "{line}");
}

/// An image config for `diff_ids`, as `docker save` writes one.
fn config_for(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// The `docker save` archive of one image (`app:1`) in podman's dialect: `<diffid>.tar` layers
/// at the top, `<v1id>/layer.tar` symlinks to them.
fn podman_archive(layers: &[Vec<u8>], config: &[u8]) -> Vec<u8> {
    let config_name = format!("{}.json", sha256_hex(config));
    let mut tar = Tar::new();
    let mut paths = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let file = format!("{}.tar", sha256_hex(layer));
        let v1 = sha256_hex(format!("v1 {i}").as_bytes());
        tar.file(&file, 0o644, layer)
            .dir(&v1)
            .symlink(&format!("{v1}/layer.tar"), &format!("../{file}"));
        paths.push(format!("{v1}/layer.tar"));
    }
    tar.file(&config_name, 0o644, config);
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["localhost/app:1"], "Layers": paths}]);
    tar.file(
        "manifest.json",
        0o644,
        &serde_json::to_vec(&manifest).unwrap(),
    );
    tar.finish()
}

/// The same image in Docker >= 25's dialect: an OCI layout plus `manifest.json`. Its layers are
/// `blobs` of media type `layer_type`: the layer tars themselves (named by their diff IDs), or,
/// as with the containerd image store, already compressed.
fn docker25_archive(layers: &[Vec<u8>], config: &[u8], layer_type: &str) -> Vec<u8> {
    let blob = |bytes: &[u8]| format!("blobs/sha256/{}", sha256_hex(bytes));
    let layer_descriptors: Vec<Value> = layers
        .iter()
        .map(|l| {
            serde_json::json!({"mediaType": layer_type, "digest": format!("sha256:{}", sha256_hex(l)), "size": l.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": format!("sha256:{}", sha256_hex(config)), "size": config.len()},
        "layers": layer_descriptors,
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", sha256_hex(&manifest)), "size": manifest.len()}],
    }))
    .unwrap();
    let mut tar = Tar::new();
    tar.dir("blobs").dir("blobs/sha256");
    for layer in layers {
        tar.file(&blob(layer), 0o644, layer);
    }
    tar.file(&blob(config), 0o644, config)
        .file(&blob(&manifest), 0o644, &manifest)
        .file("index.json", 0o644, &index);
    let save_manifest = serde_json::json!([{
        "Config": blob(config),
        "RepoTags": ["app:1"],
        "Layers": layers.iter().map(|l| blob(l)).collect::<Vec<_>>(),
    }]);
    tar.file(
        "manifest.json",
        0o644,
        &serde_json::to_vec(&save_manifest).unwrap(),
    )
    .file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#);
    tar.finish()
}

#[test]
fn docker_archive_reads_the_podman_and_docker_25_dialects() {
    let s = services();
    let name = unique("dialects");
    let layers = vec![
        Tar::new()
            .dir("etc")
            .file("etc/hello.txt", 0o644, b"hello\n")
            .finish(),
        Tar::new()
            .file("data.bin", 0o644, &random_bytes(200_000))
            .symlink("data-link", "data.bin")
            .finish(),
    ];
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    let config = config_for(&diff_ids);
    let image_id = format!("sha256:{}", sha256_hex(&config));
    let dir = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for (dialect, archive) in [
        ("podman", podman_archive(&layers, &config)),
        ("docker25", docker25_archive(&layers, &config, OCI_LAYER)),
    ] {
        let path = dir.path().join(format!("{dialect}.tar"));
        std::fs::write(&path, archive).unwrap();
        let repo = format!("sources/{name}-{dialect}");
        let dest = format!("{}/{repo}:v1", s.registry);
        let digest =
            push(&format!("docker-archive:{}", path.display()), &dest).expect_success(&dest);
        verify_pushed(&dest, &digest, &image_id, &diff_ids);
        digests.push(digest);
    }
    assert_eq!(
        digests[0], digests[1],
        "one image, one manifest, whatever the dialect"
    );

    // A layer whose bytes are not its diff ID is refused, and no tag is written. (With a cache
    // of its own: the shared one knows this image's verified blobs, which a push would mount
    // from the repositories above without reading the archive's layers at all.)
    let mut tampered = layers.clone();
    let last = tampered[1].len() - 2000;
    tampered[1][last] ^= 0xff;
    let path = dir.path().join("tampered.tar");
    std::fs::write(&path, podman_archive(&tampered, &config)).unwrap();
    let repo = format!("sources/{name}-tampered");
    let dest = format!("{}/{repo}:v1", s.registry);
    let cache = tempfile::tempdir().unwrap();
    let line = push_with(
        &format!("docker-archive:{}", path.display()),
        &dest,
        "none",
        &[("OCIPUSH_CACHE_DIR", cache.path().to_str().unwrap())],
    )
    .expect_failure();
    assert!(line.contains("digest mismatch"), "{line}");
    assert_tag_absent(&s.registry, &repo, "v1");
}

#[test]
fn the_daemon_source_works_against_podmans_api_service() {
    let s = services();
    let podman = std::env::var("OCIPUSH_TEST_PODMAN_HOST")
        .expect("OCIPUSH_TEST_PODMAN_HOST is not set: run ./scripts/test.sh (services.sh starts podman's service)");
    let name = unique("podman");
    // Two layers, built by dockerd and loaded into podman through its Docker API.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("a.bin"), random_bytes(400_000)).unwrap();
    std::fs::write(ctx.path().join("b.txt"), b"second layer\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY a.bin /a.bin\nCOPY b.txt /b.txt\nENV OCIPUSH_TEST=podman\n",
    )
    .unwrap();
    let tag = format!("{name}:1.0");
    docker_build(&tag, ctx.path());
    let (id, diff_ids) = (image_id(&tag), rootfs_layers(&tag));
    assert_eq!(diff_ids.len(), 2);
    let archive = ctx.path().join("image.tar");
    docker_ok(&["save", "-o", archive.to_str().unwrap(), &tag]);
    let mut load = Command::new("docker");
    load.args(["load", "-q", "-i", archive.to_str().unwrap()])
        .env("DOCKER_HOST", &podman);
    run_ok(&mut load);

    // podman's export is its own dialect (layers named by diff ID, symlinked from v1 dirs):
    // the manifest comes out as it does from dockerd.
    let repo = format!("sources/{name}");
    let dest = format!("{}/{repo}:v1", s.registry);
    let pushed = push_with(&tag, &dest, "json", &[("DOCKER_HOST", &podman)]);
    let digest = pushed.expect_success(&dest);
    let entries: Vec<String> = pushed
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "layer-done")
        .map(|e| e["entry"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(entries.len(), 2, "{}", pushed.describe());
    for diff_id in &diff_ids {
        let file = format!("{}.tar", &diff_id["sha256:".len()..]);
        assert!(
            entries.contains(&file),
            "podman's layer entries: {entries:?}"
        );
    }
    verify_pushed(&dest, &digest, &id, &diff_ids);
    let from_docker = format!("{}/{repo}-docker:v1", s.registry);
    assert_eq!(
        push(&tag, &from_docker).expect_success(&from_docker),
        digest
    );

    // An image podman does not have: one line naming it and the service.
    let line = push_with(
        &format!("{name}-absent:1"),
        &dest,
        "none",
        &[("DOCKER_HOST", &podman)],
    )
    .expect_failure();
    assert!(
        line.contains("not found") && line.contains(&podman),
        "{line}"
    );
}

#[test]
fn docker_25_compressed_layers_are_pushed_as_they_are() {
    use std::io::Write;
    let s = services();
    let name = unique("compressed");
    let layers = [
        Tar::new()
            .file("etc/motd", 0o644, b"already compressed\n")
            .finish(),
        Tar::new()
            .file("data.bin", 0o644, &random_bytes(300_000))
            .finish(),
    ];
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    // Compressed by someone else (zlib's level 9 here, unlike ocipush's own gzip).
    let gzipped: Vec<Vec<u8>> = layers
        .iter()
        .map(|l| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(l).unwrap();
            gz.finish().unwrap()
        })
        .collect();
    let blob_digests: Vec<String> = gzipped
        .iter()
        .map(|b| format!("sha256:{}", sha256_hex(b)))
        .collect();
    let config = config_for(&diff_ids);
    let image_id = format!("sha256:{}", sha256_hex(&config));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("containerd.tar");
    std::fs::write(&path, docker25_archive(&gzipped, &config, OCI_LAYER_GZIP)).unwrap();

    // Whatever compression is asked for, the blobs go up byte for byte as the export held
    // them, with their media types; skopeo's copy verifies each digest and the gunzipped
    // layers hash to the diff IDs.
    let repo = format!("sources/{name}");
    let dest = format!("{}/{repo}:v1", s.registry);
    let pushed = push_args(
        &format!("docker-archive:{}", path.display()),
        &dest,
        "json",
        &["--compression", "zstd"],
        &[],
    );
    let digest = pushed.expect_success(&dest);
    let manifest = verify_pushed(&dest, &digest, &image_id, &diff_ids);
    let pushed_blobs: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        pushed_blobs, blob_digests,
        "the export's own blobs, not recompressed"
    );
    let done: Vec<Value> = pushed
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "layer-done")
        .collect();
    assert_eq!(done.len(), 2, "{}", pushed.describe());

    // A compressed blob that does not hash to its name is refused; no tag is written.
    let original = &gzipped[1];
    let at = original.len() / 2;
    let mut archive = docker25_archive(&gzipped, &config, OCI_LAYER_GZIP);
    let offset = archive
        .windows(original.len())
        .position(|w| w == &original[..])
        .unwrap();
    archive[offset + at] ^= 0xff;
    std::fs::write(&path, archive).unwrap();
    let repo = format!("sources/{name}-tampered");
    let dest = format!("{}/{repo}:v1", s.registry);
    let line = push(&format!("docker-archive:{}", path.display()), &dest).expect_failure();
    assert!(line.contains("digest mismatch"), "{line}");
    assert_tag_absent(&s.registry, &repo, "v1");
}

#[test]
fn oci_layout_source_pushes_its_blobs_as_they_are() {
    let s = services();
    let name = unique("from-layout");
    let (tag, id, diff_ids) = build_image(&name, &random_bytes(300_000));
    let (other, _, _) = build_image(&format!("{name}-other"), b"other\n");
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let at = |t: &str| format!("oci:{}:{t}", layout.display());
    let digest = push(&tag, &at("v1")).expect_success(&at("v1"));

    // From the layout to a registry: whatever --compression says, the layout's gzip blobs go
    // up as they are, so the registry gets the very manifest the layout holds.
    let repo = format!("sources/{name}");
    let dest = format!("{}/{repo}:v1", s.registry);
    let pushed = push_args(&at("v1"), &dest, "none", &["--compression", "zstd"], &[]);
    assert_eq!(pushed.expect_success(&dest), digest);
    verify_pushed(&dest, &digest, &id, &diff_ids);

    // A layout written by skopeo reads the same.
    let copied = dir.path().join("skopeo");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{dest}"),
        &format!("oci:{}:copied", copied.display()),
    ]));
    let again = format!("{}/{repo}-again:v1", s.registry);
    let source = format!("oci:{}", copied.display());
    assert_eq!(push(&source, &again).expect_success(&again), digest);

    // Several images and no tag: the error lists them; an unknown tag too.
    push(&other, &at("v2")).expect_success(&at("v2"));
    let bare = format!("oci:{}", layout.display());
    let line = push(&bare, &dest).expect_failure();
    assert!(
        line.contains("holds 2 images") && line.contains("v1") && line.contains("v2"),
        "{line}"
    );
    let line = push(&at("v9"), &dest).expect_failure();
    assert!(line.contains("has no image v9"), "{line}");

    // A blob that does not hash to its name is refused; no tag is written.
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap(),
    )
    .unwrap();
    let layer = layout
        .join("blobs/sha256")
        .join(&manifest["layers"][0]["digest"].as_str().unwrap()["sha256:".len()..]);
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    // (With a cache of its own: the shared one would let the push mount the verified blobs
    // from the repositories above without reading the layout's.)
    let tampered = format!("{}/{repo}-tampered:v1", s.registry);
    let cache = tempfile::tempdir().unwrap();
    let line = push_with(
        &at("v1"),
        &tampered,
        "none",
        &[("OCIPUSH_CACHE_DIR", cache.path().to_str().unwrap())],
    )
    .expect_failure();
    assert!(line.contains("digest mismatch"), "{line}");
    assert_tag_absent(&s.registry, &format!("{repo}-tampered"), "v1");
}

#[test]
fn a_zstd_push_is_pulled_back_by_podman() {
    let s = services();
    let podman = std::env::var("OCIPUSH_TEST_PODMAN_HOST")
        .expect("OCIPUSH_TEST_PODMAN_HOST is not set: run ./scripts/test.sh (services.sh starts podman's service)");
    let socket = podman.strip_prefix("unix://").unwrap().to_string();
    let name = unique("zstd-podman");
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("a.bin"), random_bytes(300_000)).unwrap();
    std::fs::write(ctx.path().join("b.txt"), "zstd for podman\n".repeat(5000)).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY a.bin /a.bin\nCOPY b.txt /b.txt\n",
    )
    .unwrap();
    let tag = format!("{name}:1.0");
    docker_build(&tag, ctx.path());
    let (id, diff_ids) = (image_id(&tag), rootfs_layers(&tag));
    let reference = format!("{}/sources/{name}:zstd", s.registry);
    push_args(&tag, &reference, "none", &["--compression", "zstd"], &[]).expect_success(&reference);
    let manifest = skopeo_raw_manifest(&reference);
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(layer["mediaType"], OCI_LAYER_ZSTD, "{manifest}");
    }

    // podman pulls it through its own API: it decompresses each zstd layer and checks it
    // against the config's diff IDs.
    let api = |method: &str, path: &str, query: &[(&str, &str)]| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--fail-with-body",
            "--max-time",
            "120",
            "--unix-socket",
            &socket,
        ])
        .args(["-X", method, "-G"]);
        for (k, v) in query {
            c.args(["--data-urlencode", &format!("{k}={v}")]);
        }
        c.arg(format!("http://podman/v4.0.0/libpod/{path}"));
        run_ok(&mut c)
    };
    let pulled = api(
        "POST",
        "images/pull",
        &[
            ("reference", &reference),
            ("tlsVerify", "false"),
            ("quiet", "true"),
        ],
    );
    assert!(!pulled.contains("\"error\""), "podman's pull: {pulled}");
    let inspect: Value =
        serde_json::from_str(&api("GET", &format!("images/{reference}/json"), &[])).unwrap();
    assert_eq!(
        inspect["RootFS"]["Layers"],
        serde_json::json!(diff_ids),
        "{inspect}"
    );
    assert_eq!(
        format!("sha256:{}", inspect["Id"].as_str().unwrap_or("")),
        id,
        "podman's image ID is the config digest: {inspect}"
    );
}

/// The JSON progress events of a push, in order.
fn json_events(pushed: &Pushed) -> Vec<Value> {
    pushed
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Whether a layer started streaming before the first layer was done: uploads overlapped.
fn uploads_overlapped(events: &[Value]) -> bool {
    let at = |name: &str, layer: u64| {
        events
            .iter()
            .position(|e| e["event"] == name && e["layer"] == layer)
    };
    let (Some(second_started), Some(first_done)) = (at("layer-started", 2), at("layer-done", 1))
    else {
        panic!("no layer-started 2 or layer-done 1 in {events:#?}");
    };
    second_started < first_done
}

#[test]
fn tarball_and_layout_sources_upload_several_layers_at_once() {
    let s = services();
    let name = unique("jobs");
    let tag = format!("{name}:1");
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("part{i}.bin"),
                random_bytes(1_500_000 + i * 100_000),
            )
        })
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    support::build_image(&tag, None, &files);
    let (id, diff_ids) = (image_id(&tag), rootfs_layers(&tag));
    assert_eq!(diff_ids.len(), 4);
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("image.tar");
    docker_ok(&["save", "-o", tarball.to_str().unwrap(), &tag]);

    // A tarball, three layers in flight: the same manifest as one at a time, read back whole.
    let repo = format!("sources/{name}");
    let source = format!("docker-archive:{}", tarball.display());
    let one = format!("{}/{repo}-one:v1", s.registry);
    // Each push with a cache of its own: nothing is mounted from the one before.
    let caches: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cache = |i: usize| [("OCIPUSH_CACHE_DIR", caches[i].path().to_str().unwrap())];
    let single = push_args(&source, &one, "json", &["--jobs", "1"], &cache(0));
    let single_digest = single.expect_success(&one);
    assert!(!uploads_overlapped(&json_events(&single)));
    let three = format!("{}/{repo}:v1", s.registry);
    let pushed = push_args(&source, &three, "json", &["--jobs", "3"], &cache(1));
    let digest = pushed.expect_success(&three);
    assert_eq!(digest, single_digest);
    verify_pushed(&three, &digest, &id, &diff_ids);
    let events = json_events(&pushed);
    assert!(uploads_overlapped(&events), "{events:#?}");
    // A layer still being sent keeps reporting its bytes while the next one streams.
    let second_started = events
        .iter()
        .position(|e| e["event"] == "layer-started" && e["layer"] == 2)
        .unwrap();
    assert!(
        events[second_started..]
            .iter()
            .any(|e| e["event"] == "layer-progress" && e["layer"] == 1),
        "{events:#?}"
    );
    let done = events.iter().filter(|e| e["event"] == "layer-done").count();
    assert_eq!(done, 4, "{events:#?}");

    // An OCI layout of it (its gzip blobs pushed as they are), three at a time.
    let layout = dir.path().join("layout");
    let to_layout = format!("oci:{}:v1", layout.display());
    push(&tag, &to_layout).expect_success(&to_layout);
    let from_layout = format!("{}/{repo}-layout:v1", s.registry);
    let pushed = push_args(
        &to_layout,
        &from_layout,
        "json",
        &["--jobs", "3"],
        &cache(2),
    );
    assert_eq!(pushed.expect_success(&from_layout), digest);
    verify_pushed(&from_layout, &digest, &id, &diff_ids);
}
