//! Integration tests for the places an image comes from and goes to beyond the daemon and a
//! registry: the OCI image layout destination (`oci:DIR[:TAG]`), read back by skopeo, which
//! checks every digest. Needs the services of `scripts/services.sh` (run `./scripts/test.sh`).

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
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
    check_pushed_manifest(
        &s.registry,
        &repo,
        "v1",
        &digest,
        &first_id,
        &first_diff_ids,
    );
    copy_to_oci_layout_and_verify(&reference, &digest, &first_diff_ids);

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
        &[] as &[(&str, &str)],
        Some("p\n"),
    );
    let line = pushed.expect_failure();
    assert!(line.contains("--username is for registries"), "{line}");

    // Bad oci: references are refused before any traffic.
    let line = push(&tag, "oci::v1").expect_failure();
    assert!(line.contains("names no directory"), "{line}");
}
