//! The guest is not tied to our host: the very component `ocipush` runs is transpiled with jco and
//! run by Node.js (`tests/jco/host.mjs`), whose imports answer from a `docker save` tarball and
//! write an OCI image layout. For the same image it must publish the same manifest digest as
//! `ocipush push --compression none` does to a real registry.
//!
//! Needs the services of `scripts/services.sh` (as tests/push.rs does), `node` (20 or later) and
//! `npm ci` run in tests/jco (`./scripts/test.sh` does all of that).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the workspace")
        .to_path_buf()
}

/// `tests/jco/host.mjs`, after checking that node and the JS dependencies are there.
fn jco_host() -> PathBuf {
    let dir = repo_root().join("tests/jco");
    let node = run(Command::new("node").arg("--version"));
    assert!(
        node.status.success(),
        "node is needed to run the jco host\n{}",
        describe(&node)
    );
    assert!(
        dir.join("node_modules/@bytecodealliance/jco/package.json")
            .is_file()
            && dir
                .join("node_modules/@bytecodealliance/preview2-shim/package.json")
                .is_file(),
        "{}/node_modules lacks @bytecodealliance/jco or preview2-shim: run npm ci in tests/jco \
         (`npm ci --prefix tests/jco`; ./scripts/test.sh does it)",
        dir.display()
    );
    dir.join("host.mjs")
}

/// The guest component that `ocipush` embeds, as `ocipush guest export` writes it out.
fn guest_component(dir: &Path) -> PathBuf {
    let exported = dir.join("guest.wasm");
    let out = run(Command::new(ocipush_bin())
        .args(["guest", "export"])
        .arg(&exported));
    assert!(
        out.status.success() && exported.is_file(),
        "ocipush guest export {} failed\n{}",
        exported.display(),
        describe(&out)
    );
    exported
}

/// An image built in the test daemon and saved with `docker save`.
struct Saved {
    tag: String,
    id: String,
    diff_ids: Vec<String>,
    /// The content of its largest file, which appears verbatim in the tarball.
    big: Vec<u8>,
    /// Holds the tarball.
    dir: tempfile::TempDir,
}

impl Saved {
    fn tar(&self) -> PathBuf {
        self.dir.path().join("image.tar")
    }
}

/// Three COPY layers (one of 2.5 MiB random bytes, so the export crosses the component boundary
/// in several chunks), plus ENV and LABEL; saved to a tarball.
fn build_and_save_image(name: &str) -> Saved {
    let ctx = tempfile::tempdir().unwrap();
    let big = random_bytes(5 << 19);
    std::fs::write(ctx.path().join("big.bin"), &big).unwrap();
    std::fs::write(ctx.path().join("small.txt"), b"a small layer\n").unwrap();
    std::fs::create_dir(ctx.path().join("etc")).unwrap();
    std::fs::write(ctx.path().join("etc/app.conf"), b"answer = 42\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\n\
         COPY big.bin /data/big.bin\n\
         COPY small.txt /data/small.txt\n\
         COPY etc/ /etc/\n\
         ENV OCIPUSH_TEST=jco\n\
         LABEL org.example.test=jco\n",
    )
    .unwrap();
    let tag = format!("{name}:1.0");
    docker_build(&tag, ctx.path());
    let diff_ids = rootfs_layers(&tag);
    assert_eq!(diff_ids.len(), 3, "{tag}: {diff_ids:?}");
    let saved = Saved {
        id: image_id(&tag),
        tag,
        diff_ids,
        big,
        dir: tempfile::tempdir().unwrap(),
    };
    docker_ok(&["save", "-o", saved.tar().to_str().unwrap(), &saved.tag]);
    saved
}

/// `node host.mjs GUEST TAR IMAGE_ID OUT`.
fn run_jco_host(guest: &Path, tar: &Path, id: &str, out: &Path) -> std::process::Output {
    std::fs::create_dir_all(out).unwrap();
    run(Command::new("node")
        .arg(jco_host())
        .arg(guest)
        .arg(tar)
        .arg(id)
        .arg(out)
        .env_remove("NODE_OPTIONS"))
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    assert!(is_sha256_digest(digest), "{digest:?}");
    layout.join("blobs/sha256").join(&digest["sha256:".len()..])
}

#[test]
fn jco_host_publishes_the_same_manifest_as_ocipush() {
    let host = jco_host(); // fail first, and clearly, when node_modules is missing
    let s = services();
    let name = unique("jco");
    let image = build_and_save_image(&name);
    let (tag, id, diff_ids) = (&image.tag, image.id.as_str(), &image.diff_ids[..]);
    let tmp = image.dir.path();
    let guest = guest_component(tmp);
    let tar = image.tar();

    // ocipush, to the real registry.
    let dest = format!("{}/jco/{name}:1", s.registry);
    let digest =
        push_args(tag, &dest, "none", &["--compression", "none"], &[]).expect_success(&dest);

    // The same guest under Node.js, into an OCI layout.
    let layout = tmp.join("layout");
    let out = run_jco_host(&guest, &tar, id, &layout);
    assert!(
        out.status.success(),
        "node {} failed\n{}",
        host.display(),
        describe(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let jco_digest = stdout.lines().last().unwrap_or("").trim();
    assert_eq!(
        jco_digest,
        digest,
        "the guest under jco/Node.js published another manifest than under ocipush ({})\n{}",
        guest.display(),
        describe(&out)
    );

    // The layout holds what the manifest names: the config is the daemon's (its digest is the
    // image ID), the layers are the uncompressed layer tars in rootfs order, and every blob
    // hashes to its name.
    assert_eq!(
        read_json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = read_json(&layout.join("index.json"));
    let entries = index["manifests"].as_array().expect("index.json manifests");
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(entries[0]["digest"], digest, "{index}");
    assert_eq!(entries[0]["mediaType"], OCI_MANIFEST, "{index}");
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"], "1",
        "{index}"
    );
    let manifest_bytes = std::fs::read(blob(&layout, &digest)).unwrap();
    let (status, served) = registry_get(
        &s.registry,
        &format!("jco/{name}"),
        "manifests/1",
        Some(OCI_MANIFEST),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&served));
    assert_eq!(
        manifest_bytes, served,
        "the manifest bytes differ between the two hosts"
    );
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(
        manifest["config"]["digest"], id,
        "config blob == image ID: {manifest}"
    );
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        layers, diff_ids,
        "uncompressed layers, in rootfs order: {manifest}"
    );
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            sha256_file(&path),
            name,
            "{} does not hash to its name",
            path.display()
        );
    }
    assert_eq!(
        sha256_file(&blob(&layout, id)),
        &id["sha256:".len()..],
        "the config blob hashes to the image ID"
    );
}

/// Runs the jco host where the push must fail; returns its error line (last) and its stderr,
/// after checking that it printed no digest and wrote no manifest.
fn expect_jco_failure(guest: &Path, tar: &Path, id: &str, layout: &Path) -> (String, String) {
    let out = run_jco_host(guest, tar, id, layout);
    assert!(
        !out.status.success(),
        "the push should have failed\n{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("ocipush-jco: error:"),
        "expected an error line last\n{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "no digest on failure\n{}",
        describe(&out)
    );
    assert!(
        !layout.join("index.json").exists(),
        "a manifest was written after a failed push\n{}",
        describe(&out)
    );
    // Nothing half-written either: every file in blobs/ is a whole blob under its digest.
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(sha256_file(&path), name, "{}", path.display());
    }
    eprintln!("{last}");
    (last.to_string(), stderr.into_owned())
}

#[test]
fn jco_host_refuses_a_config_that_is_not_the_image_id() {
    jco_host();
    let image = build_and_save_image(&unique("jco-wrong-id"));
    let guest = guest_component(image.dir.path());
    // The "daemon" claims another image ID than the config's digest: the guest must notice,
    // whichever host runs it, and write no manifest.
    let wrong = format!("sha256:{}", sha256_hex(b"not this image"));
    let (error, _) = expect_jco_failure(
        &guest,
        &image.tar(),
        &wrong,
        &image.dir.path().join("layout"),
    );
    assert!(
        error.contains("digest mismatch") && error.contains(&wrong) && error.contains(&image.id),
        "{error}"
    );
}

#[test]
fn jco_host_cancels_a_tampered_layer() {
    jco_host();
    let image = build_and_save_image(&unique("jco-tampered"));
    let guest = guest_component(image.dir.path());
    // Flip one byte inside the big file, where it sits in the layer tar inside the export.
    let tar = image.tar();
    let mut bytes = std::fs::read(&tar).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &image.big[..64])
        .expect("the big file's bytes in the docker save tarball")
        + (1 << 20);
    bytes[at] ^= 0xff;
    std::fs::write(&tar, bytes).unwrap();

    let (error, stderr) =
        expect_jco_failure(&guest, &tar, &image.id, &image.dir.path().join("layout"));
    assert!(
        error.contains("digest mismatch") && error.contains(&image.id),
        "{error}"
    );
    // The guest dropped the upload unfinished, which cancels it (host.mjs logs that) ...
    assert!(stderr.contains("layer upload cancelled"), "{stderr}");
    // ... so the layer with the big file (the first) is not in the layout.
    assert!(
        !blob(&image.dir.path().join("layout"), &image.diff_ids[0]).exists(),
        "the tampered layer was committed"
    );
}
