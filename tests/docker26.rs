//! Real Docker 26 daemons, beside the Docker 20.10 the other tests use: Debian 13's dockerd that
//! `scripts/services.sh` starts twice, once with the classic image store (vfs) and once with the
//! containerd image store (native snapshotter). Their `docker save` dialects (an OCI layout:
//! the layer tars themselves from the classic store; the daemon's own manifest with gzip layers
//! from the containerd store) are pushed by ocipush from the daemon and from `docker save`, then
//! read back by skopeo, which verifies every digest, and pulled back by the daemon. Needs the
//! services of `scripts/services.sh` (run `./scripts/test.sh`).

mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::*;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// One of the two Docker 26 daemons.
struct Docker26 {
    /// `unix:///…/docker26*.sock`
    host: String,
    /// The containerd image store (image ID = the manifest's or index's digest), rather than the
    /// classic one (image ID = the config's digest).
    containerd: bool,
}

impl Docker26 {
    fn classic() -> Self {
        Self::from_env("OCIPUSH_TEST_DOCKER26_HOST", false)
    }

    fn containerd() -> Self {
        Self::from_env("OCIPUSH_TEST_DOCKER26_CONTAINERD_HOST", true)
    }

    fn from_env(var: &str, containerd: bool) -> Self {
        let host = std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "{var} is not set: these tests need the Docker 26 daemons that \
                     scripts/services.sh starts (run ./scripts/test.sh)"
                )
            });
        Self { host, containerd }
    }

    fn docker(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.args(args).env("DOCKER_HOST", &self.host);
        c
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        run_ok(&mut self.docker(args))
    }

    /// `docker image inspect` of one image.
    fn inspect(&self, image: &str) -> Value {
        let json = self.docker_ok(&["image", "inspect", image]);
        let all: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("docker image inspect {image}: {e}: {json}"));
        all[0].clone()
    }

    /// (image ID, diff IDs) as the daemon reports them.
    fn id_and_layers(&self, image: &str) -> (String, Vec<String>) {
        let inspected = self.inspect(image);
        let id = inspected["Id"].as_str().unwrap().to_string();
        let layers = serde_json::from_value(inspected["RootFS"]["Layers"].clone())
            .unwrap_or_else(|e| panic!("RootFS.Layers of {image}: {e}: {inspected}"));
        (id, layers)
    }

    /// `name:1`, FROM scratch with two layers, an ENV and a LABEL, built by the legacy builder
    /// (the daemons have no network to pull from, and RUN would need one).
    fn build(&self, name: &str) -> String {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("data.bin"), random_bytes(300_000)).unwrap();
        std::fs::write(ctx.path().join("hello.txt"), format!("{name}\n")).unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\nCOPY data.bin /data/data.bin\nENV OCIPUSH_TEST=docker26\n\
             LABEL org.example.test=docker26\nCOPY hello.txt /hello.txt\n",
        )
        .unwrap();
        let tag = format!("{name}:1");
        let mut c = self.docker(&["build", "--no-cache", "-q", "-t", &tag, "."]);
        c.current_dir(ctx.path()).env("DOCKER_BUILDKIT", "0");
        run_ok(&mut c);
        tag
    }

    /// `docker save IMAGE` into `path`.
    fn save(&self, image: &str, path: &Path) {
        self.docker_ok(&["save", "-o", path.to_str().unwrap(), image]);
    }

    fn push(&self, source: &str, dest: &str) -> String {
        push_with(source, dest, "none", &[("DOCKER_HOST", self.host.as_str())]).expect_success(dest)
    }

    /// Removes IMAGE, pulls REFERENCE back (the daemon checks every blob and diff ID on the
    /// way), and returns the pulled image's (ID, diff IDs).
    fn pull_back(&self, image: &str, reference: &str) -> (String, Vec<String>) {
        self.docker_ok(&["rmi", "-f", image]);
        self.docker_ok(&["pull", "-q", reference]);
        self.id_and_layers(reference)
    }
}

/// A file of an OCI layout (a `docker save` archive, unpacked) by its digest.
fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    std::fs::read(layout.join("blobs/sha256").join(hex))
        .unwrap_or_else(|e| panic!("blob {digest} of {}: {e}", layout.display()))
}

fn json_blob(layout: &Path, digest: &str) -> Value {
    let bytes = blob(layout, digest);
    assert_eq!(self::digest(&bytes), digest);
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("blob {digest}: {e}"))
}

/// Unpacks a `docker save` archive; returns (its dir, the image manifest its index.json names).
fn unpack_save(archive: &Path) -> (tempfile::TempDir, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    run_ok(Command::new("tar").args([
        "-xf",
        archive.to_str().unwrap(),
        "-C",
        dir.path().to_str().unwrap(),
    ]));
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "one image saved: {index}");
    let digest = entries[0]["digest"].as_str().unwrap().to_string();
    let manifest = json_blob(dir.path(), &digest);
    (dir, manifest, digest)
}

/// The config blob REGISTRY/REPO holds under DIGEST, checked against its digest.
fn registry_config(registry: &str, repo: &str, digest: &str) -> Value {
    let (status, bytes) = registry_get(registry, repo, &format!("blobs/{digest}"), None);
    assert_eq!(status, 200, "config blob {digest} of {registry}/{repo}");
    assert_eq!(self::digest(&bytes), digest);
    serde_json::from_slice(&bytes).unwrap()
}

/// The pushed image at REFERENCE (`registry/repo:tag`, manifest digest `digest`): skopeo copies
/// it, verifying every blob, and each layer decodes to the diff IDs; the config blob is the
/// daemon's (`config_digest`) and names the same diff IDs. Returns the manifest.
fn verify_pushed(
    registry: &str,
    repo: &str,
    tag: &str,
    digest: &str,
    config_digest: &str,
    diff_ids: &[String],
) -> Value {
    let reference = format!("{registry}/{repo}:{tag}");
    let m = skopeo_raw_manifest(&reference);
    assert_eq!(m["mediaType"], OCI_MANIFEST, "{reference}: {m}");
    assert_eq!(
        m["config"]["digest"], config_digest,
        "{reference}: the daemon's config, byte for byte: {m}"
    );
    let config = registry_config(registry, repo, config_digest);
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(diff_ids),
        "{reference}: config diff IDs vs the daemon's RootFS.Layers"
    );
    copy_to_oci_layout_and_verify(&reference, digest, diff_ids);
    m
}

/// Build, push from the daemon, push its `docker save`, pull back: what holds for both stores.
/// Returns (the saved archive's manifest, the pushed manifest).
fn build_push_save_pull(d: &Docker26, test: &str) -> (Value, Value) {
    let s = services();
    let name = unique(test);
    let tag = d.build(&name);
    let (id, diff_ids) = d.id_and_layers(&tag);
    assert_eq!(diff_ids.len(), 2, "two COPY layers: {diff_ids:?}");

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("saved.tar");
    d.save(&tag, &archive);
    let (layout, saved, saved_digest) = unpack_save(&archive);
    let config_digest = saved["config"]["digest"].as_str().unwrap().to_string();
    let saved_config = json_blob(layout.path(), &config_digest);
    assert_eq!(
        saved_config["rootfs"]["diff_ids"],
        serde_json::json!(diff_ids)
    );
    if d.containerd {
        assert_eq!(
            id, saved_digest,
            "containerd store: image ID = manifest digest"
        );
    } else {
        assert_eq!(id, config_digest, "classic store: image ID = config digest");
    }

    // From the daemon.
    let repo = format!("docker26/{name}");
    let dest = format!("{}/{repo}:daemon", s.registry);
    let digest = d.push(&tag, &dest);
    if d.containerd {
        assert_eq!(
            digest, id,
            "containerd store: the daemon's own manifest, byte for byte: registry digest = image ID"
        );
    }
    let pushed = verify_pushed(
        &s.registry,
        &repo,
        "daemon",
        &digest,
        &config_digest,
        &diff_ids,
    );

    // From its `docker save`: the same image, so the same manifest.
    let from_archive = format!("{}/{repo}:archive", s.registry);
    let source = format!("docker-archive:{}", archive.display());
    assert_eq!(
        d.push(&source, &from_archive),
        digest,
        "the daemon's export and its docker save give one manifest"
    );
    verify_pushed(
        &s.registry,
        &repo,
        "archive",
        &digest,
        &config_digest,
        &diff_ids,
    );

    // The daemon pulls it back: the layers it checks against the config's diff IDs are the
    // image's, and the ID is what its store makes of what the registry holds.
    let (pulled_id, pulled_layers) = d.pull_back(&tag, &dest);
    assert_eq!(pulled_layers, diff_ids);
    if d.containerd {
        assert_eq!(
            pulled_id, digest,
            "containerd store: the ID of a pull is the manifest digest"
        );
    } else {
        assert_eq!(pulled_id, id, "classic store: the same config, the same ID");
    }
    (saved, pushed)
}

#[test]
fn classic_store_of_docker_26_pushes_from_the_daemon_and_its_save() {
    let d = Docker26::classic();
    let (saved, pushed) = build_push_save_pull(&d, "d26-classic");
    // Its save holds the layer tars themselves (blob digest = diff ID); ocipush compresses them.
    for layer in saved["layers"].as_array().unwrap() {
        assert_eq!(layer["mediaType"], OCI_LAYER, "{saved}");
    }
    for layer in pushed["layers"].as_array().unwrap() {
        assert_eq!(layer["mediaType"], OCI_LAYER_GZIP, "{pushed}");
    }
}

#[test]
fn containerd_store_of_docker_26_pushes_its_own_gzip_layers() {
    let d = Docker26::containerd();
    let (saved, pushed) = build_push_save_pull(&d, "d26-containerd");
    // Its save holds the daemon's manifest, with gzip layers typed as Docker's, inside an OCI
    // manifest; ocipush pushes those blobs as they are, not compressed again.
    for layer in saved["layers"].as_array().unwrap() {
        assert_eq!(layer["mediaType"], DOCKER_LAYER_GZIP, "{saved}");
    }
    let blobs = |m: &Value| -> Vec<(Value, Value)> {
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["digest"].clone(), l["size"].clone()))
            .collect()
    };
    assert_eq!(
        blobs(&pushed),
        blobs(&saved),
        "the export's own blobs: pushed: {pushed}; saved: {saved}"
    );
}

/// The JSON progress events of a push named `name`.
fn events(pushed: &Pushed, name: &str) -> Vec<Value> {
    pushed
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == name)
        .collect()
}

/// What the user asks for that the daemon's own manifest does not say (a compression, a
/// format other than its own, annotations) rebuilds it, and one progress event says so; an
/// explicit `--format oci`, what the manifest is, keeps it byte for byte.
#[test]
fn containerd_store_rebuilds_its_own_manifest_only_when_asked_and_says_so() {
    let s = services();
    let d = Docker26::containerd();
    let name = unique("d26-rebuilt");
    let tag = d.build(&name);
    let (id, diff_ids) = d.id_and_layers(&tag);
    let repo = format!("docker26/{name}");
    let env = [("DOCKER_HOST", d.host.as_str())];
    let cases: [(&str, &[&str], Option<&str>); 4] = [
        ("oci", &["--format", "oci"], None),
        ("gzip", &["--compression", "gzip"], Some("compression")),
        ("docker", &["--format", "docker"], Some("format")),
        (
            "annotated",
            &["--annotation", "org.example.k=v"],
            Some("annotations"),
        ),
    ];
    for (tag_name, args, change) in cases {
        let dest = format!("{}/{repo}:{tag_name}", s.registry);
        let pushed = push_args(&tag, &dest, "json", args, &env);
        let digest = pushed.expect_success(&dest);
        let rebuilt = events(&pushed, "manifest-rebuilt");
        match change {
            None => {
                assert_eq!(digest, id, "{args:?}: {}", pushed.describe());
                assert!(rebuilt.is_empty(), "{}", pushed.describe());
            }
            Some(change) => {
                assert_ne!(digest, id, "{args:?}");
                assert_eq!(rebuilt.len(), 1, "one line: {}", pushed.describe());
                assert_eq!(rebuilt[0]["change"], change, "{}", pushed.describe());
                assert_eq!(rebuilt[0]["source_manifest"], id.as_str());
            }
        }
        if tag_name == "docker" {
            // skopeo converts a Docker manifest on its way into an OCI layout: read it raw.
            let m = skopeo_raw_manifest(&dest);
            assert_eq!(
                m["mediaType"],
                "application/vnd.docker.distribution.manifest.v2+json"
            );
            assert_eq!(m["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
        } else {
            // skopeo reads back what was written, every digest checked.
            copy_to_oci_layout_and_verify(&dest, &digest, &diff_ids);
        }
    }
    // The plain line says it too.
    let dest = format!("{}/{repo}:plain", s.registry);
    let pushed = push_args(&tag, &dest, "auto", &["--compression", "zstd"], &env);
    pushed.expect_success(&dest);
    assert!(
        pushed.stderr.contains(&format!(
            "manifest rebuilt (--compression given): the source's own manifest {id} is not published as it is"
        )),
        "{}",
        pushed.describe()
    );
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    serde_json::json!({"mediaType": media_type, "digest": digest(bytes), "size": bytes.len()})
}

/// One platform of a multi-platform image: its layer, config and manifest.
struct Platform {
    arch: &'static str,
    layer: Vec<u8>,
    diff_id: String,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl Platform {
    fn new(arch: &'static str) -> Self {
        let (layer, diff_id) = gzip_layer(&format!("{arch}.bin"), &random_bytes(100_000));
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": {"Env": ["PATH=/bin"], "Labels": {"org.example.platform": arch}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": [descriptor(OCI_LAYER_GZIP, &layer)],
        }))
        .unwrap();
        Self {
            arch,
            layer,
            diff_id,
            config,
            manifest,
        }
    }
}

/// An OCI archive (as `docker load` reads) of `name:1`: an index of a linux/amd64 and a
/// linux/arm64 manifest. Returns (archive, index digest, platforms).
fn two_platform_archive(name: &str) -> (Vec<u8>, String, Vec<Platform>) {
    two_platform_archive_holding(name, &["amd64", "arm64"])
}

/// `two_platform_archive` holding the content (manifest, config, layer) of the `held`
/// platforms only, the others' index entries kept: what an image pulled for one platform is.
fn two_platform_archive_holding(name: &str, held: &[&str]) -> (Vec<u8>, String, Vec<Platform>) {
    let platforms = vec![Platform::new("amd64"), Platform::new("arm64")];
    let manifests: Vec<Value> = platforms
        .iter()
        .map(|p| {
            let mut d = descriptor(OCI_MANIFEST, &p.manifest);
            d["platform"] = serde_json::json!({"architecture": p.arch, "os": "linux"});
            d
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap();
    let mut top = descriptor(OCI_INDEX, &index);
    top["annotations"] = serde_json::json!({
        "io.containerd.image.name": format!("docker.io/library/{name}:1"),
        "org.opencontainers.image.ref.name": "1",
    });
    let top = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [top],
    }))
    .unwrap();

    let mut tar = Tar::new();
    tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("index.json", 0o644, &top)
        .dir("blobs")
        .dir("blobs/sha256");
    let mut put = |bytes: &[u8]| {
        tar.file(&format!("blobs/sha256/{}", sha256_hex(bytes)), 0o644, bytes);
    };
    put(&index);
    for p in platforms.iter().filter(|p| held.contains(&p.arch)) {
        put(&p.layer);
        put(&p.config);
        put(&p.manifest);
    }
    (tar.finish(), digest(&index), platforms)
}

#[test]
fn containerd_store_of_docker_26_loads_a_two_platform_oci_archive_as_its_index() {
    let s = services();
    let d = Docker26::containerd();
    let name = unique("d26-multi");
    let (archive, index_digest, platforms) = two_platform_archive(&name);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("multi.tar");
    std::fs::write(&path, archive).unwrap();
    d.docker_ok(&["load", "-q", "-i", path.to_str().unwrap()]);
    let tag = format!("{name}:1");
    let (id, diff_ids) = d.id_and_layers(&tag);
    assert_eq!(
        id, index_digest,
        "the loaded image keeps its index: ID = index digest"
    );
    let amd64 = &platforms[0];
    assert_eq!(
        diff_ids,
        vec![amd64.diff_id.clone()],
        "the daemon's own platform"
    );

    // ocipush pushes it; whatever the tag names (the index, or the manifest of this
    // machine's platform), the registry's linux/amd64 image is the archive's, verified blob by
    // blob by skopeo.
    let repo = format!("docker26/{name}");
    let dest = format!("{}/{repo}:1", s.registry);
    let pushed = d.push(&tag, &dest);
    let top = skopeo_raw_manifest(&dest);
    let amd64_digest = if top["mediaType"] == OCI_INDEX {
        assert_eq!(
            pushed, index_digest,
            "an index pushed whole keeps its digest"
        );
        let entry = top["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == "amd64")
            .unwrap_or_else(|| panic!("no linux/amd64 entry in {top}"))
            .clone();
        entry["digest"].as_str().unwrap().to_string()
    } else {
        pushed
    };
    let reference = format!("{}/{repo}@{amd64_digest}", s.registry);
    let m = skopeo_raw_manifest(&reference);
    assert_eq!(m["config"]["digest"], digest(&amd64.config), "{m}");
    let config = registry_config(&s.registry, &repo, &digest(&amd64.config));
    assert_eq!(config["architecture"], "amd64");
    copy_to_oci_layout_and_verify(&reference, &amd64_digest, &diff_ids);
}

/// `docker load`s a two-platform image holding the content of the `held` platforms into the
/// containerd store as `NAME:1`; returns (tag, index digest = image ID, platforms, the archive).
fn load_two_platforms(
    d: &Docker26,
    name: &str,
    held: &[&str],
    dir: &Path,
) -> (String, String, Vec<Platform>, std::path::PathBuf) {
    let (archive, index_digest, platforms) = two_platform_archive_holding(name, held);
    let path = dir.join(format!("{name}.tar"));
    std::fs::write(&path, archive).unwrap();
    d.docker_ok(&["load", "-q", "-i", path.to_str().unwrap()]);
    let tag = format!("{name}:1");
    assert_eq!(d.inspect(&tag)["Id"], index_digest.as_str());
    (tag, index_digest, platforms, path)
}

/// The index the registry holds at REPO@INDEX is the image's, byte for byte (parsed with
/// oci-spec: each platform's manifest by digest, in order), and `skopeo copy --all` reads every
/// platform back, verifying each digest; each platform's config is its own and its layer
/// gunzips to its diff ID.
fn check_index_pushed(registry: &str, repo: &str, index_digest: &str, platforms: &[Platform]) {
    let (status, bytes) = registry_get(
        registry,
        repo,
        &format!("manifests/{index_digest}"),
        Some(OCI_INDEX),
    );
    assert_eq!(status, 200, "{registry}/{repo}@{index_digest}");
    assert_eq!(digest(&bytes), index_digest, "the index, byte for byte");
    let index = oci_spec::image::ImageIndex::from_reader(&bytes[..])
        .unwrap_or_else(|e| panic!("the pushed index does not parse as an OCI index: {e}"));
    let entries = index.manifests();
    assert_eq!(entries.len(), platforms.len());
    for (entry, p) in entries.iter().zip(platforms) {
        assert_eq!(entry.digest().to_string(), digest(&p.manifest));
        assert_eq!(entry.size(), p.manifest.len() as u64);
        let platform = entry.platform().as_ref().unwrap();
        assert_eq!(platform.architecture().to_string(), p.arch);
        assert_eq!(platform.os().to_string(), "linux");
    }

    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--all",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{registry}/{repo}@{index_digest}"),
        &format!("oci:{}:x", layout.display()),
    ]));
    let top: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(top["manifests"][0]["digest"], index_digest, "{top}");
    for p in platforms {
        assert_eq!(
            blob(&layout, &digest(&p.manifest)),
            p.manifest,
            "{}",
            p.arch
        );
        assert_eq!(blob(&layout, &digest(&p.config)), p.config, "{}", p.arch);
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob(&layout, &digest(&p.layer))[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(digest(&tar), p.diff_id, "{}'s layer", p.arch);
    }
}

/// A push that must be refused before any upload: one line naming the platform the source
/// lacks and suggesting the one it holds, no tag, and none of the image's blobs in the
/// registry.
fn assert_refused_with_no_upload(pushed: &Pushed, registry: &str, repo: &str, p: &[Platform]) {
    let line = pushed.expect_failure();
    assert!(
        line.contains("not the content of linux/arm64")
            && line.ends_with("push what it holds with --platform linux/amd64"),
        "{line}"
    );
    assert_eq!(tags(registry, repo), Vec::<String>::new(), "no tag");
    for p in p {
        for bytes in [&p.layer, &p.config, &p.manifest] {
            let (status, _) =
                registry_get(registry, repo, &format!("blobs/{}", digest(bytes)), None);
            assert_eq!(status, 404, "{} blob {} uploaded", p.arch, digest(bytes));
        }
    }
}

/// A two-platform image in the containerd store (ID = its index's digest): pushed whole, the
/// registry digest is the image ID and every platform reads back; `--platform linux/arm64`
/// puts the arm64 manifest under the tag; the same image with only linux/amd64's content (as a
/// pull for one platform leaves it) is refused with no upload, and goes with
/// `--platform linux/amd64`.
#[test]
fn containerd_store_pushes_a_two_platform_image_whole_or_one_platform_and_refuses_a_missing_one() {
    let s = services();
    let d = Docker26::containerd();
    let dir = tempfile::tempdir().unwrap();
    let env = [("DOCKER_HOST", d.host.as_str())];
    let name = unique("d26-platforms");
    let (tag, index_digest, platforms, _) =
        load_two_platforms(&d, &name, &["amd64", "arm64"], dir.path());
    let repo = format!("docker26/{name}");

    let dest = format!("{}/{repo}:1", s.registry);
    let pushed = push_args(&tag, &dest, "none", &["--verify"], &env).expect_success(&dest);
    assert_eq!(pushed, index_digest, "registry digest = image ID");
    check_index_pushed(&s.registry, &repo, &index_digest, &platforms);

    let arm_dest = format!("{}/{repo}:arm64", s.registry);
    let arm = push_args(
        &tag,
        &arm_dest,
        "none",
        &["--platform", "linux/arm64"],
        &env,
    )
    .expect_success(&arm_dest);
    let arm64 = &platforms[1];
    assert_eq!(
        arm,
        digest(&arm64.manifest),
        "the arm64 manifest, byte for byte"
    );
    let m = skopeo_raw_manifest(&arm_dest);
    assert_eq!(m["config"]["digest"], digest(&arm64.config), "{m}");
    copy_to_oci_layout_and_verify(&arm_dest, &arm, std::slice::from_ref(&arm64.diff_id));

    let half = unique("d26-half");
    let (half_tag, _, half_platforms, _) = load_two_platforms(&d, &half, &["amd64"], dir.path());
    let half_repo = format!("docker26/{half}");
    let half_dest = format!("{}/{half_repo}:1", s.registry);
    let refused = push_args(&half_tag, &half_dest, "none", &[], &env);
    assert_refused_with_no_upload(&refused, &s.registry, &half_repo, &half_platforms);
    let refused = push_args(
        &half_tag,
        &half_dest,
        "none",
        &["--platform", "linux/arm64"],
        &env,
    );
    assert_refused_with_no_upload(&refused, &s.registry, &half_repo, &half_platforms);
    let amd = push_args(
        &half_tag,
        &half_dest,
        "none",
        &["--platform", "linux/amd64"],
        &env,
    )
    .expect_success(&half_dest);
    assert_eq!(amd, digest(&half_platforms[0].manifest));
}

/// The same from files: the daemon's `docker save` of a two-platform image (`docker-archive:`,
/// its `index.json` naming the index, its `manifest.json` one platform) and the OCI layout the
/// image was made as (`oci:`): pushed whole (the index's digest), one platform, and the
/// one-platform copy refused with no upload.
#[test]
fn docker_archive_and_oci_layout_of_a_two_platform_image_push_whole_or_one_platform() {
    let s = services();
    let d = Docker26::containerd();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("d26-files");
    let (tag, index_digest, platforms, loaded) =
        load_two_platforms(&d, &name, &["amd64", "arm64"], dir.path());
    let half = unique("d26-files-half");
    let (half_tag, _, half_platforms, half_loaded) =
        load_two_platforms(&d, &half, &["amd64"], dir.path());

    let unpack = |archive: &Path, into: &str| {
        let layout = dir.path().join(into);
        std::fs::create_dir(&layout).unwrap();
        run_ok(Command::new("tar").args([
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            layout.to_str().unwrap(),
        ]));
        format!("oci:{}:1", layout.display())
    };
    let saved = dir.path().join("saved.tar");
    d.save(&tag, &saved);
    let half_saved = dir.path().join("half-saved.tar");
    d.save(&half_tag, &half_saved);
    let sources = [
        (
            format!("docker-archive:{}", saved.display()),
            format!("docker-archive:{}", half_saved.display()),
        ),
        (
            unpack(&loaded, "layout"),
            unpack(&half_loaded, "half-layout"),
        ),
    ];
    for (kind, (whole, one_platform)) in ["archive", "layout"].iter().zip(sources) {
        let repo = format!("docker26/{name}-{kind}");
        let dest = format!("{}/{repo}:1", s.registry);
        let pushed = push_args(&whole, &dest, "none", &["--verify"], NO_ENV).expect_success(&dest);
        assert_eq!(
            pushed, index_digest,
            "{kind}: the image's index, byte for byte"
        );
        check_index_pushed(&s.registry, &repo, &index_digest, &platforms);

        let arm_dest = format!("{}/{repo}:arm64", s.registry);
        let arm = push_args(
            &whole,
            &arm_dest,
            "none",
            &["--platform", "linux/arm64"],
            NO_ENV,
        )
        .expect_success(&arm_dest);
        assert_eq!(arm, digest(&platforms[1].manifest), "{kind}");

        let half_repo = format!("docker26/{half}-{kind}");
        let half_dest = format!("{}/{half_repo}:1", s.registry);
        let refused = push_args(&one_platform, &half_dest, "none", &[], NO_ENV);
        assert_refused_with_no_upload(&refused, &s.registry, &half_repo, &half_platforms);
        let amd = push_args(
            &one_platform,
            &half_dest,
            "none",
            &["--platform", "linux/amd64"],
            NO_ENV,
        )
        .expect_success(&half_dest);
        assert_eq!(amd, digest(&half_platforms[0].manifest), "{kind}");
    }
}

/// An app on a base the registry holds, from Docker 26's classic store, whose export names each
/// layer's blob by its diff ID: the base's layers, top one included, are recognised by those
/// names and passed over unread, and only the app's layer is uploaded; the same for the app
/// rebuilt.
#[test]
fn classic_store_of_docker_26_uploads_only_an_apps_own_layer() {
    let s = services();
    let d = Docker26::classic();
    let name = unique("d26-onbase");
    let base = d.build(&name);
    let (_, base_layers) = d.id_and_layers(&base);
    let cache = tempfile::tempdir().unwrap();
    let envs = [
        ("DOCKER_HOST", d.host.as_str()),
        ("OCIPUSH_CACHE_DIR", cache.path().to_str().unwrap()),
    ];
    let repo = format!("docker26/{name}");
    let base_dest = format!("{}/{repo}:base", s.registry);
    push_with(&base, &base_dest, "none", &envs).expect_success(&base_dest);
    for version in ["1", "2"] {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("app.bin"), random_bytes(100_000)).unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            format!("FROM {base}\nCOPY app.bin /app.bin\n"),
        )
        .unwrap();
        let tag = format!("{name}-app:{version}");
        let mut c = d.docker(&["build", "-q", "-t", &tag, "."]);
        c.current_dir(ctx.path()).env("DOCKER_BUILDKIT", "0");
        run_ok(&mut c);
        let (id, diff_ids) = d.id_and_layers(&tag);
        assert_eq!(diff_ids[..2], base_layers[..]);
        let dest = format!("{}/{repo}:{version}", s.registry);
        let pushed = push_with(&tag, &dest, "json", &envs);
        let digest = pushed.expect_success(&dest);
        let positions = |name: &str| -> Vec<u64> {
            let mut p: Vec<u64> = events(&pushed, name)
                .iter()
                .map(|e| e["position"].as_u64().unwrap())
                .collect();
            p.sort();
            p
        };
        assert_eq!(positions("layer-skipped"), vec![1, 2], "{}", pushed.stderr);
        assert_eq!(positions("layer-done"), vec![3], "{}", pushed.stderr);
        // Classic store: the image ID is the config's digest.
        verify_pushed(&s.registry, &repo, version, &digest, &id, &diff_ids);
    }
}

/// A two-platform image pushed whole from the containerd store with `--provenance --sign-key`:
/// the tag names the index (digest = image ID), and so do the signature and the provenance.
/// `ocipush verify` passes with the key (and names the guest), the provenance artifact's
/// subject is the index with its media type, and its statement names this Docker 26 daemon.
#[test]
fn a_signed_two_platform_push_verifies_on_the_index_digest() {
    let s = services();
    let d = Docker26::containerd();
    let dir = tempfile::tempdir().unwrap();
    let env = [("DOCKER_HOST", d.host.as_str())];
    let name = unique("d26-signed");
    let (tag, index_digest, _, _) = load_two_platforms(&d, &name, &["amd64", "arm64"], dir.path());
    let genkey = [
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-out",
        "key.pem",
    ];
    tool(dir.path(), "openssl", &genkey);
    let pubout = ["pkey", "-in", "key.pem", "-pubout", "-out", "key.pub.pem"];
    tool(dir.path(), "openssl", &pubout);
    let key = dir.path().join("key.pem").display().to_string();
    let repo = format!("docker26/{name}");
    let dest = format!("{}/{repo}:1", s.registry);
    let evidence = ["--provenance", "--sign-key", key.as_str()];
    let pushed = push_args(&tag, &dest, "none", &evidence, &env).expect_success(&dest);
    assert_eq!(pushed, index_digest, "registry digest = image ID");

    let out = run(Command::new(ocipush_bin())
        .args(["verify", &dest, "--key"])
        .arg(dir.path().join("key.pub.pem"))
        .env_remove("OCIPUSH_LOG"));
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "verified {dest}@{index_digest}: signed by that key"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("provenance: pushed by guest sha256:")
            && stdout.trim_end().ends_with("), signed by that key"),
        "{stdout}"
    );

    let hex = index_digest.trim_start_matches("sha256:");
    let (status, listing) = registry_get(
        &s.registry,
        &repo,
        &format!("manifests/sha256-{hex}"),
        Some(OCI_INDEX),
    );
    assert_eq!(status, 200, "the referrers tag schema's index");
    published::parse_published(
        &format!("{}/{repo}:sha256-{hex}", s.registry),
        &digest(&listing),
    );
    let listing: Value = serde_json::from_slice(&listing).unwrap();
    let artifact = listing["manifests"][0]["digest"].as_str().unwrap();
    let (_, artifact) = registry_get(
        &s.registry,
        &repo,
        &format!("manifests/{artifact}"),
        Some(OCI_MANIFEST),
    );
    let artifact: Value = serde_json::from_slice(&artifact).unwrap();
    assert_eq!(artifact["subject"]["digest"], index_digest.as_str());
    assert_eq!(artifact["subject"]["mediaType"], OCI_INDEX);
    let layer = artifact["layers"][0]["digest"].as_str().unwrap();
    let (_, envelope) = registry_get(&s.registry, &repo, &format!("blobs/{layer}"), None);
    let envelope: Value = serde_json::from_slice(&envelope).unwrap();
    use base64::Engine as _;
    let statement = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    let statement: Value = serde_json::from_slice(&statement).unwrap();
    assert_eq!(statement["subject"][0]["digest"]["sha256"], hex);
    let source = &statement["predicate"]["buildDefinition"]["resolvedDependencies"][0];
    assert_eq!(source["annotations"]["imageId"], index_digest.as_str());
    let info: Value =
        serde_json::from_str(&d.docker_ok(&["info", "--format", "{{json .}}"])).unwrap();
    let daemon = &source["annotations"]["daemon"];
    assert_eq!(daemon["id"], info["ID"], "{daemon}");
    assert_eq!(daemon["serverVersion"], info["ServerVersion"], "{daemon}");
    assert_eq!(daemon["endpoint"], d.host.as_str(), "{daemon}");
}
