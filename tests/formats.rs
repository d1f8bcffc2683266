//! Integration tests for what ocipush publishes and how: `--format docker`, `--annotation` and
//! the config's OCI annotations, `--verify` (with a registry that loses a blob), and
//! `ocipush index` (a multi-platform image). Against the real dockerd and registry from
//! `scripts/services.sh`, read back with skopeo, curl and `docker pull`.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::faults::{Faults, HttpFaultProxy};
use support::*;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A small image built by the daemon: two COPY layers and labels, one of them an OCI label.
fn build_image(name: &str) -> (String, String, Vec<String>) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("a.bin"), random_bytes(200 * 1024)).unwrap();
    std::fs::write(ctx.path().join("b.txt"), b"second layer\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY a.bin /a.bin\nCOPY b.txt /b.txt\n\
         LABEL org.opencontainers.image.source=\"https://example.com/ocipush-test\" org.example.other=x\n",
    )
    .unwrap();
    let tag = format!("{name}:1.0");
    docker_build(&tag, ctx.path());
    (tag.clone(), image_id(&tag), rootfs_layers(&tag))
}

fn dest(repo: &str, tag: &str) -> String {
    format!("{}/{repo}:{tag}", services().registry)
}

/// `skopeo copy docker://REF dir:DIR`: skopeo checks every blob against its digest and keeps
/// the manifest as it is. Returns the manifest bytes and the directory.
fn skopeo_copy_to_dir(reference: &str) -> (Vec<u8>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("dir:{}", dir.path().display()),
    ]));
    let manifest = std::fs::read(dir.path().join("manifest.json")).unwrap();
    (manifest, dir)
}

/// The blob `digest` in a `dir:` copy, gunzipped, hashes to `diff_id`.
fn check_gzip_layer(dir: &Path, digest: &str, diff_id: &str) {
    let bytes = std::fs::read(dir.join(digest.strip_prefix("sha256:").unwrap())).unwrap();
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&tar)), diff_id);
}

fn json_events(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

#[test]
fn docker_format_publishes_docker_media_types_that_docker_pulls_back() {
    let name = unique("docker-format");
    let (tag, id, diff_ids) = build_image(&name);
    let repo = format!("ocipush-test/{name}");
    let d = dest(&repo, "v2s2");
    let digest = push_args(&tag, &d, "none", &["--format", "docker"], &[]).expect_success(&d);

    let m = skopeo_raw_manifest(&d);
    assert_eq!(m["schemaVersion"], 2, "{m}");
    assert_eq!(m["mediaType"], DOCKER_MANIFEST, "{m}");
    assert_eq!(m["config"]["mediaType"], DOCKER_CONFIG, "{m}");
    assert_eq!(m["config"]["digest"], id.as_str(), "config is the image ID");
    assert!(
        m.get("annotations").is_none(),
        "no annotations in v2s2: {m}"
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for layer in layers {
        assert_eq!(layer["mediaType"], DOCKER_LAYER_GZIP, "{m}");
    }

    // skopeo verifies every digest on the way; the manifest arrives as written.
    let (manifest, dir) = skopeo_copy_to_dir(&d);
    assert_eq!(format!("sha256:{}", sha256_hex(&manifest)), digest);
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        check_gzip_layer(dir.path(), layer["digest"].as_str().unwrap(), diff_id);
    }
    // The registry serves it as a Docker manifest when asked for one.
    let (status, served) = registry_get(
        &services().registry,
        &repo,
        "manifests/v2s2",
        Some(DOCKER_MANIFEST),
    );
    assert_eq!(status, 200);
    assert_eq!(served, manifest);
    // Docker's own pull checks every layer against the config: the same image comes back.
    pull_back_and_compare(&id, &d);
}

#[test]
fn zstd_with_docker_format_is_refused_before_any_traffic() {
    // Neither the image nor the registry exists: the refusal must come first.
    let d = format!("127.0.0.1:{}/team/app:1", closed_port());
    let pushed = push_args(
        "no-such-image:1",
        &d,
        "none",
        &["--format", "docker", "--compression", "zstd"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    let line = pushed.expect_failure();
    assert!(
        line.contains("--compression zstd cannot be used with --format docker"),
        "{line}"
    );
    let pushed = push_args(
        "no-such-image:1",
        &d,
        "none",
        &["--format", "docker", "--annotation", "a=b"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    let line = pushed.expect_failure();
    assert!(line.contains("--annotation a="), "{line}");
}

#[test]
fn a_bad_annotation_is_one_clear_error_before_any_traffic() {
    let d = format!("127.0.0.1:{}/team/app:1", closed_port());
    for bad in ["novalue", "=value", "a key=v"] {
        let pushed = push_args(
            "no-such-image:1",
            &d,
            "none",
            &["--annotation", "ok=1", "--annotation", bad],
            &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
        );
        let line = pushed.expect_failure();
        assert!(
            line.contains("--annotation") && line.contains(bad),
            "{bad}: {line}"
        );
    }
}

#[test]
fn annotations_from_the_user_and_the_config_are_deterministic() {
    let name = unique("annotations");
    let (tag, id, diff_ids) = build_image(&name);
    let repo = format!("ocipush-test/{name}");
    let d1 = dest(&repo, "one");
    let args = [
        "--annotation",
        "org.example.team=infra",
        "--annotation",
        "org.opencontainers.image.title=ocipush test",
        "--annotation",
        "org.example.empty=",
    ];
    let digest1 = push_args(&tag, &d1, "none", &args, &[]).expect_success(&d1);
    let m = skopeo_raw_manifest(&d1);
    let (_, config) = registry_get(&services().registry, &repo, &format!("blobs/{id}"), None);
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        m["annotations"],
        serde_json::json!({
            "org.example.empty": "",
            "org.example.team": "infra",
            "org.opencontainers.image.created": config["created"],
            "org.opencontainers.image.source": "https://example.com/ocipush-test",
            "org.opencontainers.image.title": "ocipush test",
        }),
        "{m}"
    );
    // The same annotations in another order, from the cache this time (no export): the same
    // manifest digest.
    let mut reordered = args.to_vec();
    reordered.rotate_left(2);
    let d2 = dest(&repo, "two");
    let pushed = push_args(&tag, &d2, "json", &reordered, &[]);
    let digest2 = pushed.expect_success(&d2);
    assert_eq!(digest2, digest1);
    let events = json_events(&pushed.stderr);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "layer-skipped")
            .count(),
        diff_ids.len(),
        "the repeat push came from the cache: {}",
        pushed.stderr
    );
    // A user annotation replaces the config's for the same key.
    let d3 = dest(&repo, "three");
    push_args(
        &tag,
        &d3,
        "none",
        &[
            "--annotation",
            "org.opencontainers.image.source=https://override",
        ],
        &[],
    )
    .expect_success(&d3);
    let m3 = skopeo_raw_manifest(&d3);
    assert_eq!(
        m3["annotations"]["org.opencontainers.image.source"],
        "https://override"
    );
    // skopeo verifies the digests of everything, and the annotations travel with it.
    let (manifest, _dir) = skopeo_copy_to_dir(&d1);
    assert_eq!(format!("sha256:{}", sha256_hex(&manifest)), digest1);
}

#[test]
fn verify_reads_the_push_back_and_reports_it() {
    let name = unique("verify");
    let (tag, _id, diff_ids) = build_image(&name);
    let d = dest(&format!("ocipush-test/{name}"), "v1");
    let pushed = push_args(&tag, &d, "json", &["--verify"], &[]);
    let digest = pushed.expect_success(&d);
    let events = json_events(&pushed.stderr);
    let verified: Vec<&Value> = events.iter().filter(|e| e["event"] == "verified").collect();
    assert_eq!(verified.len(), 1, "{}", pushed.stderr);
    assert_eq!(verified[0]["digest"], digest.as_str());
    assert_eq!(verified[0]["manifests"], 1);
    assert_eq!(verified[0]["blobs"], diff_ids.len() as u64 + 1);
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some("verified".into())
    );
    // An OCI layout destination is read back the same way.
    let layout = tempfile::tempdir().unwrap();
    let to_layout = format!("oci:{}:v1", layout.path().join("out").display());
    let pushed = push_args(&tag, &to_layout, "json", &["--verify"], &[]);
    let layout_digest = pushed.expect_success(&to_layout);
    assert_eq!(
        layout_digest, digest,
        "the same manifest as in the registry"
    );
    assert!(
        json_events(&pushed.stderr)
            .iter()
            .any(|e| e["event"] == "verified" && e["blobs"] == diff_ids.len() as u64 + 1),
        "{}",
        pushed.stderr
    );
    // Plain progress ends with the summary line.
    let d2 = dest(&format!("ocipush-test/{name}"), "v2");
    let pushed = push_args(&tag, &d2, "plain", &["--verify"], &[]);
    pushed.expect_success(&d2);
    let last = pushed.stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!(
            "verified {digest}: read back 1 manifest by digest, all {} blobs present",
            diff_ids.len() + 1
        )),
        "{}",
        pushed.stderr
    );
}

#[test]
fn verify_fails_when_the_registry_does_not_have_a_blob_the_manifest_names() {
    let s = services();
    let name = unique("verify-missing");
    let (tag, _id, _diff_ids) = build_image(&name);
    let repo = format!("ocipush-test/{name}");
    // A first push tells which blob the layer becomes (layers are deterministic).
    let d = dest(&repo, "v1");
    push(&tag, &d).expect_success(&d);
    let m = skopeo_raw_manifest(&d);
    let hidden = m["layers"][0]["digest"].as_str().unwrap().to_string();

    // Through a proxy that hides that blob from HEAD: the push (which uploads it, because the
    // HEAD says it is missing) writes the manifest by digest, and --verify then finds the blob
    // missing, before the tag.
    let proxy = HttpFaultProxy::start(
        &s.registry,
        Faults {
            hide_blob: Some(hidden.clone()),
            ..Faults::default()
        },
    );
    let through = format!("{}/{repo}:v2", proxy.address);
    let pushed = push_args(&tag, &through, "none", &["--verify"], &[]);
    let line = pushed.expect_failure();
    assert!(
        line.contains(&format!(
            "verify before writing {}/{repo}:v2",
            proxy.address
        )) && line.contains(&format!("does not have layer {hidden}")),
        "{line}"
    );
    assert_tag_absent(&s.registry, &repo, "v2");
    // Without --verify the same push succeeds: the failure is verify's finding.
    let pushed = push_args(&tag, &through, "none", &[], &[]);
    pushed.expect_success(&through);
}

/// An image whose config says it is for `architecture` (and `variant`), loaded into the daemon.
fn load_platform_image(name: &str, architecture: &str, variant: Option<&str>) -> (String, String) {
    let tag = format!("{name}:1.0");
    let layer = Tar::new()
        .file(
            "platform.txt",
            0o644,
            format!("{architecture} {variant:?} {name}\n").as_bytes(),
        )
        .finish();
    let (archive, id, _) = docker_save_archive_with(&tag, &[layer], |config| {
        config["architecture"] = architecture.into();
        if let Some(variant) = variant {
            config["variant"] = variant.into();
        }
    });
    docker_load(&archive);
    assert_eq!(image_id(&tag), id);
    (tag, id)
}

/// `ocipush index DEST SOURCES… --progress none ARGS…`, with a digest file.
fn index(dest: &str, sources: &[&str], args: &[&str]) -> Pushed {
    let mut c = Command::new(ocipush_bin());
    c.args(["index", dest])
        .args(sources)
        .args(["--progress", "none"])
        .args(args);
    run_ocipush(c, NO_ENV, None)
}

#[test]
fn index_names_one_manifest_per_platform_and_each_reads_back() {
    let s = services();
    let name = unique("index");
    let (amd, amd_id) = load_platform_image(&format!("{name}-amd64"), "amd64", None);
    let (arm, arm_id) = load_platform_image(&format!("{name}-arm64"), "arm64", Some("v8"));
    let repo = format!("ocipush-test/{name}");
    let d = dest(&repo, "multi");
    let digest = index(&d, &[&amd, &arm], &["--verify"]).expect_success(&d);

    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{d}"),
    ]));
    assert_eq!(format!("sha256:{}", sha256_hex(raw.as_bytes())), digest);
    let written: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(written["mediaType"], OCI_INDEX, "{written}");
    let entries = written["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{written}");
    let platforms: Vec<(String, String, Option<String>)> = entries
        .iter()
        .map(|e| {
            let p = &e["platform"];
            (
                p["os"].as_str().unwrap().to_string(),
                p["architecture"].as_str().unwrap().to_string(),
                p["variant"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        vec![
            ("linux".into(), "amd64".into(), None),
            ("linux".into(), "arm64".into(), Some("v8".into())),
        ]
    );
    // Each child reads back by digest and names its image's config.
    for (entry, id) in entries.iter().zip([&amd_id, &arm_id]) {
        let child_ref = format!(
            "{}/{repo}@{}",
            s.registry,
            entry["digest"].as_str().unwrap()
        );
        let child = skopeo_raw_manifest(&child_ref);
        assert_eq!(child["mediaType"], OCI_MANIFEST, "{child}");
        assert_eq!(child["config"]["digest"], id.as_str());
        let (status, body) = registry_get(
            &s.registry,
            &repo,
            &format!("manifests/{}", entry["digest"].as_str().unwrap()),
            Some(OCI_MANIFEST),
        );
        assert_eq!(status, 200);
        assert_eq!(Some(body.len() as u64), entry["size"].as_u64());
    }
    // Only the index has a tag.
    assert_eq!(tags(&s.registry, &repo), vec!["multi".to_string()]);
    // skopeo copies every platform, checking every digest.
    let layout = tempfile::tempdir().unwrap();
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{d}"),
        &format!("oci:{}:x", layout.path().display()),
    ]));
    let copied: Value =
        serde_json::from_slice(&std::fs::read(layout.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(copied["manifests"][0]["digest"], digest.as_str());
    // With --format docker the same images make a Docker manifest list of v2 schema 2
    // manifests.
    let list_dest = dest(&repo, "list");
    index(
        &list_dest,
        &[&amd, &arm],
        &["--format", "docker", "--verify"],
    )
    .expect_success(&list_dest);
    let list = skopeo_raw_manifest(&list_dest);
    assert_eq!(
        list["mediaType"], "application/vnd.docker.distribution.manifest.list.v2+json",
        "{list}"
    );
    for entry in list["manifests"].as_array().unwrap() {
        assert_eq!(entry["mediaType"], DOCKER_MANIFEST, "{list}");
        let child = skopeo_raw_manifest(&format!(
            "{}/{repo}@{}",
            s.registry,
            entry["digest"].as_str().unwrap()
        ));
        assert_eq!(child["config"]["mediaType"], DOCKER_CONFIG, "{child}");
    }
    // The daemon (linux/amd64) pulls the amd64 image out of the index.
    pull_back_and_compare(&amd_id, &d);
}

#[test]
fn index_refuses_two_images_of_one_platform_before_any_upload() {
    let s = services();
    let name = unique("index-dup");
    let (one, one_id) = load_platform_image(&format!("{name}-a"), "amd64", None);
    let (two, _) = load_platform_image(&format!("{name}-b"), "amd64", None);
    let repo = format!("ocipush-test/{name}");
    let d = dest(&repo, "multi");
    let line = index(&d, &[&one, &two], &[]).expect_failure();
    assert!(
        line.contains(&one) && line.contains(&two) && line.contains("linux/amd64"),
        "{line}"
    );
    assert_tag_absent(&s.registry, &repo, "multi");
    // An index goes to a registry, not into an OCI layout directory.
    let layout = tempfile::tempdir().unwrap();
    let to_layout = format!("oci:{}:multi", layout.path().display());
    let line = index(&to_layout, &[&one], &[]).expect_failure();
    assert!(line.contains("an index goes to a registry"), "{line}");
    let (status, _) = registry_get(&s.registry, &repo, &format!("blobs/{one_id}"), None);
    assert_eq!(status, 404, "nothing was uploaded");
}
