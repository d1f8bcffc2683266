//! Integration tests: `ocipush push` from a real dockerd to a real registry (CNCF distribution),
//! checked with skopeo, curl and `docker pull`. The services come from `scripts/services.sh`
//! (run everything with `./scripts/test.sh`). Every test uses its own images and repositories,
//! so they can run in parallel against the one daemon and registry.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use support::daemon_proxy::FaultProxy;
use support::*;

/// Writes a build context with a Dockerfile (FROM scratch) and returns nothing; the caller
/// builds it. `big` is the size of a random (incompressible) file.
fn write_rich_context(dir: &Path, big: usize) {
    let write = |rel: &str, data: &[u8]| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    write("big/random.bin", &random_bytes(big));
    write("names/sp ace.txt", b"a name with a space\n");
    write(
        "names/ünïcødé ✓.txt",
        "unicode name, unicode content: ✓\n".as_bytes(),
    );
    write("names/日本語/ファイル.txt", "nested unicode\n".as_bytes());
    write("links/target.txt", b"the target of a symlink\n");
    // COPY of a directory keeps symlinks as symlinks (COPY of a lone symlink would follow it).
    std::os::unix::fs::symlink("target.txt", dir.join("links/link-to-target")).unwrap();
    std::os::unix::fs::symlink("/does/not/exist", dir.join("links/dangling")).unwrap();
    write(
        "Dockerfile",
        "FROM scratch\n\
         COPY big/ /data/big/\n\
         COPY names/ /data/names/\n\
         COPY links/ /data/links/\n\
         ENV OCIPUSH_TEST=1 PATH=/bin\n\
         LABEL org.example.test=\"ocipush rich image\" org.example.unicode=\"ünïcødé\"\n"
            .as_bytes(),
    );
}

/// Builds the rich test image (3 COPY layers; ENV and LABEL add none) as `name:1.0`.
fn build_rich_image(name: &str, big: usize) -> (String, String, Vec<String>) {
    let ctx = tempfile::tempdir().unwrap();
    write_rich_context(ctx.path(), big);
    let tag = format!("{name}:1.0");
    docker_build(&tag, ctx.path());
    let id = image_id(&tag);
    let diff_ids = rootfs_layers(&tag);
    assert_eq!(
        diff_ids.len(),
        3,
        "the rich image should have 3 layers: {diff_ids:?}"
    );
    let labels = docker_ok(&["inspect", "-f", "{{json .Config.Labels}}", &tag]);
    assert!(labels.contains("ocipush rich image"), "{labels}");
    (tag, id, diff_ids)
}

/// An image with `layers` COPY layers, the first holding `big` random bytes. With six layers, the
/// export stream (`docker save` orders layer directories by their v1 IDs, i.e. randomly) almost
/// never carries them in rootfs order, so index mix-ups show.
fn build_many_layers_image(name: &str, layers: usize, big: usize) -> (String, String, Vec<String>) {
    let ctx = tempfile::tempdir().unwrap();
    let mut dockerfile = String::from("FROM scratch\n");
    for i in 0..layers {
        let data = if i == 0 {
            random_bytes(big)
        } else {
            random_bytes(1000 * i)
        };
        std::fs::write(ctx.path().join(format!("f{i}")), data).unwrap();
        dockerfile.push_str(&format!("COPY f{i} /layer-{i}.bin\n"));
    }
    dockerfile.push_str("ENV OCIPUSH_TEST=progress\n");
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    let tag = format!("{name}:1.0");
    docker_build(&tag, ctx.path());
    let diff_ids = rootfs_layers(&tag);
    assert_eq!(diff_ids.len(), layers);
    (tag.clone(), image_id(&tag), diff_ids)
}

/// A small image with one COPY layer.
fn build_small_image(name: &str, content: &[u8]) -> (String, String, Vec<String>) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("file.txt"), content).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY file.txt /file.txt\nLABEL org.example.test=small\n",
    )
    .unwrap();
    let tag = format!("{name}:1.0");
    docker_build(&tag, ctx.path());
    (tag.clone(), image_id(&tag), rootfs_layers(&tag))
}

/// Layer tars for an image with a hard link, a symlink, a deleted file (whiteout) and an
/// opaque directory, the way `docker save` writes them.
fn hand_made_layers() -> Vec<Vec<u8>> {
    let big = random_bytes(2 * 1024 * 1024);
    let layer1 = Tar::new()
        .dir("etc")
        .file("etc/hello.txt", 0o644, b"hello from layer 1\n")
        .file("gone.txt", 0o644, b"deleted in layer 3\n")
        .dir("keep")
        .file(
            "keep/old.txt",
            0o644,
            b"hidden by the opaque whiteout in layer 3\n",
        )
        .finish();
    let layer2 = Tar::new()
        .dir("bin")
        .file("bin/tool", 0o755, &big)
        .hardlink("bin/tool-hardlink", "bin/tool")
        .symlink("bin/tool-symlink", "tool")
        .finish();
    let layer3 = Tar::new()
        .file(".wh.gone.txt", 0o644, b"")
        .dir("keep")
        .file("keep/.wh..wh..opq", 0o644, b"")
        .file("keep/new.txt", 0o644, b"only file left in keep/\n")
        .file("ünïcødé name.txt", 0o644, "ünïcødé\n".as_bytes())
        .finish();
    vec![layer1, layer2, layer3]
}

fn load_hand_made_image(name: &str) -> (String, String, Vec<String>) {
    let tag = format!("{name}:1.0");
    let (archive, id, diff_ids) = docker_save_archive(&tag, &hand_made_layers());
    docker_load(&archive);
    assert_eq!(image_id(&tag), id, "docker load kept the config bytes");
    assert_eq!(rootfs_layers(&tag), diff_ids);
    (tag, id, diff_ids)
}

fn dest(registry: &str, repo: &str, tag: &str) -> String {
    format!("{registry}/{repo}:{tag}")
}

/// Push, check everything visible in the registry, copy with skopeo, pull back with docker.
fn push_and_verify_roundtrip(source: &str, id: &str, diff_ids: &[String], repo: &str) {
    let s = services();
    let d = dest(&s.registry, repo, "v1");
    let pushed = push(source, &d);
    let digest = pushed.expect_success(&d);
    check_pushed_manifest(&s.registry, repo, "v1", &digest, id, diff_ids);
    assert_eq!(tags(&s.registry, repo), vec!["v1".to_string()]);
    copy_to_oci_layout_and_verify(&d, &digest, diff_ids);
    // The image must come back identical through the daemon's own pull (which checks the
    // uncompressed layers against the config's diff IDs).
    pull_back_and_compare(id, &d);

    // The pulled image now has a repo digest: push it again by `name@digest`; the manifest
    // must come out identical.
    let by_digest = docker_ok(&["inspect", "-f", "{{index .RepoDigests 0}}", id]);
    assert_eq!(by_digest, format!("{}/{repo}@{digest}", s.registry));
    let again = format!("{repo}-again");
    let d2 = dest(&s.registry, &again, "v1");
    let digest2 = push(&by_digest, &d2).expect_success(&d2);
    assert_eq!(digest2, digest, "pushing {by_digest} again");
}

#[test]
fn pushes_built_image_with_symlinks_unicode_and_big_random_file() {
    let name = unique("built");
    let (tag, id, diff_ids) = build_rich_image(&name, 6 * 1024 * 1024);
    push_and_verify_roundtrip(&tag, &id, &diff_ids, &format!("ocipush-test/{name}"));
}

#[test]
fn pushes_loaded_image_with_hardlink_and_whiteouts() {
    let name = unique("loaded");
    let (tag, id, diff_ids) = load_hand_made_image(&name);
    push_and_verify_roundtrip(&tag, &id, &diff_ids, &format!("ocipush-test/{name}"));
}

#[test]
fn push_is_deterministic_and_source_may_be_tag_or_id() {
    let s = services();
    let name = unique("determinism");
    let (tag, id, diff_ids) = build_small_image(&name, &random_bytes(300 * 1024));
    let repo_a = format!("ocipush-test/{name}-a");
    let repo_b = format!("ocipush-test/{name}-b");

    let d1 = dest(&s.registry, &repo_a, "first");
    let digest1 = push(&tag, &d1).expect_success(&d1);
    // Same repository again: every blob already exists there now.
    let d2 = dest(&s.registry, &repo_a, "second");
    let digest2 = push(&tag, &d2).expect_success(&d2);
    // A fresh repository, by image ID.
    let d3 = dest(&s.registry, &repo_b, "by-id");
    let digest3 = push(&id, &d3).expect_success(&d3);
    // By the short image ID too.
    let short = &id["sha256:".len().."sha256:".len() + 12];
    let d4 = dest(&s.registry, &repo_b, "by-short-id");
    let digest4 = push(short, &d4).expect_success(&d4);

    // No tag in DEST: `latest`, as docker does.
    let d5 = format!("{}/{repo_b}", s.registry);
    let digest5 = push(&tag, &d5).expect_success(&d5);

    assert_eq!(digest1, digest2, "same image, same repository, same digest");
    assert_eq!(digest1, digest3, "same image by ID to another repository");
    assert_eq!(digest1, digest4, "same image by short ID");
    assert_eq!(digest1, digest5, "same image, no tag in DEST");
    let mut t = tags(&s.registry, &repo_b);
    t.sort();
    assert_eq!(t, ["by-id", "by-short-id", "latest"]);
    check_pushed_manifest(&s.registry, &repo_b, "by-id", &digest3, &id, &diff_ids);
    let mut t = tags(&s.registry, &repo_a);
    t.sort();
    assert_eq!(t, vec!["first".to_string(), "second".to_string()]);
}

#[test]
fn progress_json_reports_every_layer() {
    let s = services();
    let name = unique("progress");
    let (tag, id, diff_ids) = build_many_layers_image(&name, 6, 5 * 1024 * 1024);
    let repo = format!("ocipush-test/{name}");
    let d = dest(&s.registry, &repo, "v1");
    let pushed = push_with(&tag, &d, "json", &[]);
    let digest = pushed.expect_success(&d);
    let manifest = check_pushed_manifest(&s.registry, &repo, "v1", &digest, &id, &diff_ids);

    let mut events: Vec<Value> = Vec::new();
    for line in pushed.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line:?}"));
        assert!(v["event"].is_string(), "no \"event\" in {line}");
        events.push(v);
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for k in ["started", "config-done", "manifest-done"] {
        assert_eq!(
            kinds.iter().filter(|x| **x == k).count(),
            1,
            "exactly one {k} event: {kinds:?}"
        );
    }
    assert_eq!(kinds.first(), Some(&"started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"manifest-done"), "{kinds:?}");

    let n = diff_ids.len() as u64;
    let layer_of = |e: &Value| -> u64 {
        let l = e["layer"]
            .as_u64()
            .unwrap_or_else(|| panic!("layer event without a numeric \"layer\": {e}"));
        assert!((1..=n).contains(&l), "layer index {l} not in 1..={n}: {e}");
        l
    };

    // layer-done: one per layer, diff_id/digest/size agree with the image and the manifest.
    let mut done: BTreeMap<u64, &Value> = BTreeMap::new();
    for e in events.iter().filter(|e| e["event"] == "layer-done") {
        assert!(done.insert(layer_of(e), e).is_none(), "two layer-done: {e}");
    }
    let done_diff_ids: Vec<String> = done
        .values()
        .map(|e| e["diff_id"].as_str().unwrap_or("").to_string())
        .collect();
    let (mut got, mut want) = (done_diff_ids.clone(), diff_ids.clone());
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "layer-done diff_ids vs docker inspect RootFS.Layers (as sets)"
    );
    let mlayers = manifest["layers"].as_array().unwrap();
    for e in done.values() {
        let pos = diff_ids
            .iter()
            .position(|d| e["diff_id"] == d.as_str())
            .unwrap();
        assert_eq!(
            e["digest"], mlayers[pos]["digest"],
            "layer-done digest: {e}"
        );
        assert_eq!(e["size"], mlayers[pos]["size"], "layer-done size: {e}");
    }
    // "layer" counts layers in export order, which Docker <= 24 sorts by legacy ID; "position"
    // is where the layer sits in the image (RootFS.Layers, manifest order).
    for e in done.values() {
        let position = e["position"]
            .as_u64()
            .unwrap_or_else(|| panic!("layer-done without a numeric \"position\": {e}"));
        assert!(
            (1..=n).contains(&position),
            "position {position} not in 1..={n}: {e}"
        );
        assert_eq!(
            e["diff_id"],
            diff_ids[position as usize - 1].as_str(),
            "layer-done with \"position\": N must carry the diff ID of the N-th rootfs layer: {e}"
        );
    }

    // layer-started before progress, progress counters monotonic, last `done` == `total`.
    let mut last_progress: BTreeMap<u64, &Value> = BTreeMap::new();
    for (pos, e) in events.iter().enumerate() {
        if e["event"] != "layer-progress" {
            continue;
        }
        let l = layer_of(e);
        let started_before = events[..pos]
            .iter()
            .any(|x| x["event"] == "layer-started" && x["layer"] == l);
        assert!(started_before, "layer-progress before layer-started: {e}");
        for k in ["done", "sent", "total"] {
            assert!(e[k].is_u64(), "layer-progress without numeric {k}: {e}");
        }
        if let Some(prev) = last_progress.get(&l) {
            assert!(
                e["done"].as_u64() >= prev["done"].as_u64(),
                "`done` went backwards: {prev} then {e}"
            );
        }
        last_progress.insert(l, e);
    }
    for l in 1..=n {
        let e = last_progress
            .get(&l)
            .unwrap_or_else(|| panic!("no layer-progress event for layer {l}: {kinds:?}"));
        assert_eq!(e["done"], e["total"], "last progress of layer {l}: {e}");
    }
    // The big random layer reports its uncompressed size as the total.
    assert!(
        last_progress
            .values()
            .any(|e| e["total"].as_u64().unwrap() > 5 * 1024 * 1024),
        "no layer-progress total above 5 MiB: {last_progress:?}"
    );
    let md = events
        .iter()
        .find(|e| e["event"] == "manifest-done")
        .unwrap();
    assert_eq!(md["digest"], digest.as_str(), "{md}");
    let cd = events.iter().find(|e| e["event"] == "config-done").unwrap();
    assert_eq!(cd["digest"], id.as_str(), "{cd}");
}

// ---------------------------------------------------------------------------------------------
// Failures: non-zero exit, one `ocipush: error:` line, no tag.
// ---------------------------------------------------------------------------------------------

#[test]
fn fails_when_image_is_not_in_the_daemon() {
    let s = services();
    let name = unique("missing");
    let source = format!("{name}:does-not-exist");
    let repo = format!("ocipush-test/{name}");
    let d = dest(&s.registry, &repo, "v1");
    let line = push(&source, &d).expect_failure();
    assert!(
        line.contains(&source) || line.contains(&name),
        "the error should name the missing image: {line}"
    );
    assert_tag_absent(&s.registry, &repo, "v1");
}

#[test]
fn fails_when_daemon_is_unreachable() {
    let s = services();
    let name = unique("nodaemon");
    let tag = format!("{name}:1.0");
    let repo = format!("ocipush-test/{name}");
    let d = dest(&s.registry, &repo, "v1");
    let pushed = push_with(
        &tag,
        &d,
        "none",
        &[("DOCKER_HOST", "unix:///nonexistent.sock")],
    );
    let line = pushed.expect_failure();
    assert!(
        line.contains("/nonexistent.sock"),
        "the error should name the daemon socket: {line}"
    );
    assert_tag_absent(&s.registry, &repo, "v1");
}

#[test]
fn fails_when_registry_is_unreachable() {
    let s = services();
    let name = unique("noregistry");
    let (tag, _, _) = build_small_image(&name, b"registry unreachable\n");
    let port = closed_port();
    let registry = format!("127.0.0.1:{port}");
    let repo = format!("ocipush-test/{name}");
    let d = dest(&registry, &repo, "v1");
    let start = std::time::Instant::now();
    let line = push(&tag, &d).expect_failure();
    assert!(
        line.contains(&registry),
        "the error should name the registry: {line}"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(120),
        "giving up on a closed port took {:?}",
        start.elapsed()
    );
    // Nothing reached the real registry either.
    assert_tag_absent(&s.registry, &repo, "v1");
}

#[test]
fn fails_when_registry_refuses_the_push() {
    let s = services();
    let name = unique("readonly");
    let (tag, _, _) = build_small_image(&name, b"read-only registry\n");
    let repo = format!("ocipush-test/{name}");
    let d = dest(&s.readonly_registry, &repo, "v1");
    let line = push(&tag, &d).expect_failure();
    assert!(
        line.contains(&s.readonly_registry),
        "the error should name the registry: {line}"
    );
    assert_tag_absent(&s.readonly_registry, &repo, "v1");
}

#[test]
fn fails_on_layer_digest_mismatch_from_the_daemon() {
    let s = services();
    let name = unique("corrupt");
    // One layer holding one 6 MiB random file: in the export stream (a few KiB of metadata plus
    // that layer), byte 3 MiB is well inside the file's data.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("random.bin"), random_bytes(6 * 1024 * 1024)).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY random.bin /random.bin\n",
    )
    .unwrap();
    let tag = format!("{name}:1.0");
    docker_build(&tag, ctx.path());
    assert_eq!(rootfs_layers(&tag).len(), 1);

    let proxy = FaultProxy::start(&s.docker_host, 3 * 1024 * 1024);
    let repo = format!("ocipush-test/{name}");
    let d = dest(&s.registry, &repo, "v1");
    let pushed = push_with(&tag, &d, "none", &[("DOCKER_HOST", &proxy.docker_host())]);
    let requests = proxy.requests.lock().unwrap().clone();
    assert_eq!(
        proxy.flips.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the proxy must have corrupted exactly one byte of the export; requests: {requests:?}\n{}",
        pushed.describe()
    );
    let line = pushed.expect_failure();
    let lower = line.to_lowercase();
    assert!(
        lower.contains("diff") && lower.contains("match"),
        "the error should report the diff ID mismatch: {line}"
    );
    assert_tag_absent(&s.registry, &repo, "v1");
}

#[test]
fn fault_proxy_passes_everything_but_the_flipped_byte() {
    // Checks the test harness itself: through the proxy, `docker save` differs from the
    // direct one in exactly one byte, at the chosen offset.
    let s = services();
    let name = unique("proxycheck");
    let (tag, _, _) = build_small_image(&name, &random_bytes(64 * 1024));
    let dir = tempfile::tempdir().unwrap();
    let direct = dir.path().join("direct.tar");
    let proxied = dir.path().join("proxied.tar");
    docker_ok(&["save", "-o", direct.to_str().unwrap(), &tag]);
    let proxy = FaultProxy::start(&s.docker_host, 5000);
    let mut c = docker(&["save", "-o", proxied.to_str().unwrap(), &tag]);
    c.env("DOCKER_HOST", proxy.docker_host());
    run_ok(&mut c);
    let (a, b) = (
        std::fs::read(&direct).unwrap(),
        std::fs::read(&proxied).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let diffs: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert_eq!(diffs, vec![5000]);
    assert_eq!(a[5000], !b[5000]);
}

/// The JSON progress events of a run.
fn json_events(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}

/// The positions, sorted, of the layers the events of one kind name.
fn positions(events: &[Value], kind: &str) -> Vec<u64> {
    let mut positions: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == kind)
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    positions.sort();
    positions
}

/// A push of an app whose base the registry held: the base's layers skipped, only the app's top
/// layer hashed and uploaded, and the image reads back whole through skopeo.
fn expect_only_the_top_layer_uploaded(pushed: &Pushed, dest: &str, diff_ids: &[String]) {
    let digest = pushed.expect_success(dest);
    let events = json_events(&pushed.stderr);
    let below: Vec<u64> = (1..diff_ids.len() as u64).collect();
    assert_eq!(positions(&events, "layer-skipped"), below, "{events:?}");
    let top = vec![diff_ids.len() as u64];
    assert_eq!(positions(&events, "layer-done"), top, "{events:?}");
    assert_eq!(count(&events, "layer-started"), 1, "{events:?}");
    copy_to_oci_layout_and_verify(dest, &digest, diff_ids);
}

/// `NAME-app:VERSION`, built FROM `base` (whose layers are `base_diff_ids`) with a new layer of
/// 1 MiB of random bytes; returns its tag and diff IDs.
fn build_app(
    name: &str,
    base: &str,
    base_diff_ids: &[String],
    version: u8,
) -> (String, Vec<String>) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("app.bin"), random_bytes(1 << 20)).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY app.bin /app.bin\n"),
    )
    .unwrap();
    let tag = format!("{name}-app:{version}");
    docker_build(&tag, ctx.path());
    let diff_ids = rootfs_layers(&tag);
    assert_eq!(diff_ids[..base_diff_ids.len()], base_diff_ids[..]);
    (tag, diff_ids)
}

/// The everyday case: an app image rebuilt with a change in its top layer and pushed again.
/// The layers below are in the registry, so only the new layer is compressed and uploaded: the
/// export still carries every layer, and the lower layers' entries are recognised by name (as
/// the previous push exported them) and only hashed. The image reads back whole through skopeo.
#[test]
fn a_rebuilt_image_uploads_only_its_new_layer() {
    let s = services();
    let name = unique("rebuilt");
    let (base, _, base_diff_ids) = build_many_layers_image(&name, 3, 2 * 1024 * 1024);
    let app = |version| build_app(&name, &base, &base_diff_ids, version);
    let cache = tempfile::tempdir().unwrap();
    let cache_env = [("OCIPUSH_CACHE_DIR", cache.path().to_str().unwrap())];
    let repo = format!("ocipush-test/{name}");

    let (v1, _) = app(1);
    let d1 = dest(&s.registry, &repo, "1");
    push_with(&v1, &d1, "json", &cache_env).expect_success(&d1);
    let (v2, diff_ids) = app(2);
    let d2 = dest(&s.registry, &repo, "2");
    let pushed = push_with(&v2, &d2, "json", &cache_env);
    expect_only_the_top_layer_uploaded(&pushed, &d2, &diff_ids);
}

#[test]
fn a_repeat_push_exports_nothing_and_a_stale_or_damaged_cache_costs_only_time() {
    let s = services();
    let name = unique("repeat");
    let (tag, id, diff_ids) = build_many_layers_image(&name, 3, 2 * 1024 * 1024);
    let cache = tempfile::tempdir().unwrap();
    let cache_env = [("OCIPUSH_CACHE_DIR", cache.path().to_str().unwrap())];
    let repo = format!("ocipush-test/{name}");

    let d1 = dest(&s.registry, &repo, "one");
    let first = push_with(&tag, &d1, "json", &cache_env).expect_success(&d1);

    // Every blob is in the repository and the cache knows them: nothing is exported.
    let d2 = dest(&s.registry, &repo, "two");
    let again = push_with(&tag, &d2, "json", &cache_env);
    assert_eq!(again.expect_success(&d2), first, "the same manifest");
    let events = json_events(&again.stderr);
    assert_eq!(
        count(&events, "layer-started"),
        0,
        "no layer was exported: {events:?}"
    );
    let skipped: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["event"] == "layer-skipped")
        .map(|e| {
            (
                e["position"].as_u64().unwrap(),
                e["diff_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = diff_ids
        .iter()
        .enumerate()
        .map(|(i, d)| (i as u64 + 1, d.clone()))
        .collect();
    assert_eq!(skipped, expected);
    check_pushed_manifest(&s.registry, &repo, "two", &first, &id, &diff_ids);

    // Another repository of the registry: every blob is mounted from the first, none exported.
    let other = format!("{repo}-other");
    let d3 = dest(&s.registry, &other, "one");
    let mounted = push_with(&tag, &d3, "json", &cache_env);
    assert_eq!(mounted.expect_success(&d3), first);
    let events = json_events(&mounted.stderr);
    assert_eq!(count(&events, "layer-started"), 0, "{events:?}");
    let from: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "layer-skipped")
        .filter_map(|e| e["mounted_from"].as_str())
        .collect();
    assert_eq!(from, vec![repo.as_str(); diff_ids.len()], "{events:?}");
    copy_to_oci_layout_and_verify(&format!("{}/{other}:one", s.registry), &first, &diff_ids);

    // The blobs deleted from every repository the cache names: the cache is stale, mounts are
    // declined, and a full push follows.
    let manifest = skopeo_raw_manifest(&format!("{}/{repo}:one", s.registry));
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
    for layer in manifest["layers"].as_array().unwrap() {
        blobs.push(layer["digest"].as_str().unwrap().to_string());
    }
    for r in [&repo, &other] {
        for blob in &blobs {
            let url = format!("http://{}/v2/{r}/blobs/{blob}", s.registry);
            let code = run_ok(std::process::Command::new("curl").args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "DELETE",
                &url,
            ]));
            assert_eq!(code.trim(), "202", "DELETE {url}");
        }
    }
    let third = format!("{repo}-third");
    let d5 = dest(&s.registry, &third, "one");
    let fresh = push_with(&tag, &d5, "json", &cache_env);
    assert_eq!(fresh.expect_success(&d5), first);
    assert_eq!(
        count(&json_events(&fresh.stderr), "layer-done"),
        diff_ids.len()
    );
    copy_to_oci_layout_and_verify(&format!("{}/{third}:one", s.registry), &first, &diff_ids);

    // Damaged entries, and a damaged compiled guest, are ignored.
    let mut damaged = 0;
    for dir in ["kv", "guest"] {
        for entry in std::fs::read_dir(cache.path().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(
        damaged > diff_ids.len(),
        "entries for the layers, the config and the guest"
    );
    let d4 = dest(&s.registry, &repo, "four");
    let repaired = push_with(&tag, &d4, "json", &cache_env);
    assert_eq!(repaired.expect_success(&d4), first);
    assert_eq!(
        count(&json_events(&repaired.stderr), "layer-done"),
        diff_ids.len()
    );
}

#[test]
fn zstd_uncompressed_and_other_levels_pull_back_into_the_daemon() {
    let s = services();
    let name = unique("encodings");
    let (tag, id, diff_ids) = build_many_layers_image(&name, 2, 3 * 1024 * 1024);
    let repo = format!("ocipush-test/{name}");
    let mut digests = Vec::new();
    for (args, media_type) in [
        (
            &["--compression", "zstd"][..],
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (
            &["--compression", "none"][..],
            "application/vnd.oci.image.layer.v1.tar",
        ),
        (&["--compression-level", "9"][..], OCI_LAYER_GZIP),
    ] {
        let label = args
            .join("")
            .replace("--", "-")
            .trim_start_matches('-')
            .to_string();
        let d = dest(&s.registry, &repo, &label);
        let digest = push_args(&tag, &d, "none", args, &[]).expect_success(&d);
        let manifest = skopeo_raw_manifest(&d);
        assert_eq!(manifest["config"]["digest"], id.as_str());
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), diff_ids.len());
        for layer in layers {
            assert_eq!(layer["mediaType"], media_type, "{args:?}");
        }
        if media_type.ends_with(".tar") {
            // Uncompressed layers are stored as they are: their digests are the diff IDs.
            let stored: Vec<&str> = layers
                .iter()
                .map(|l| l["digest"].as_str().unwrap())
                .collect();
            assert_eq!(
                stored,
                diff_ids.iter().map(String::as_str).collect::<Vec<_>>()
            );
        }
        digests.push(digest);
    }
    let (zstd_digest, none_digest) = (digests[0].clone(), digests[1].clone());
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), 3, "each encoding is its own manifest");
    // Debian's dockerd 20.10 cannot apply zstd layers (and skopeo will not convert them to
    // Docker's format), so skopeo copies each image to an OCI layout, verifying every digest,
    // and each layer is decompressed and checked against its diff ID.
    copy_to_oci_layout_and_verify(
        &dest(&s.registry, &repo, "compressionzstd"),
        &zstd_digest,
        &diff_ids,
    );
    // skopeo would compress uncompressed layers on the way; fetch them as the registry has them.
    let (status, manifest) = registry_get(
        &s.registry,
        &repo,
        &format!("manifests/{none_digest}"),
        Some(OCI_MANIFEST),
    );
    assert_eq!(status, 200);
    assert_eq!(format!("sha256:{}", sha256_hex(&manifest)), none_digest);
    for diff_id in &diff_ids {
        let (status, blob) = registry_get(&s.registry, &repo, &format!("blobs/{diff_id}"), None);
        assert_eq!(status, 200);
        assert_eq!(&format!("sha256:{}", sha256_hex(&blob)), diff_id);
    }
    // The daemon decompresses and checks gzip layers against their diff IDs on pull.
    pull_back_and_compare(&id, &dest(&s.registry, &repo, "compression-level9"));
}

#[test]
fn an_out_of_range_compression_level_is_refused_before_any_traffic() {
    let s = services();
    let repo = format!("ocipush-test/{}", unique("level"));
    let d = dest(&s.registry, &repo, "x");
    let pushed = push_args(
        "nonexistent-image:1",
        &d,
        "none",
        &["--compression-level", "12"],
        &[],
    );
    let error = pushed.expect_failure();
    assert!(
        error.contains("compression level 12 is out of range for gzip (1-9)"),
        "{error}"
    );
}

/// The layer tars of an image's `docker save` export: entry path, where its bytes start in the
/// stream, its size, and the sha256 of its bytes (`sha256:…`).
fn export_layers(image: &str) -> Vec<(String, u64, u64, String)> {
    let out = run(docker(&["save", image]).stdout(std::process::Stdio::piped()));
    assert!(
        out.status.success(),
        "docker save {image}: {}",
        describe(&out)
    );
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut layers = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if !path.ends_with("layer.tar") || !entry.header().entry_type().is_file() {
            continue;
        }
        let (at, size) = (entry.raw_file_position(), entry.size());
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        layers.push((path, at, size, format!("sha256:{}", sha256_hex(&bytes))));
    }
    layers
}

/// Puts `value` under `key` in ocipush's cache directory `dir`, as the host files it.
fn put_cache_entry(dir: &Path, key: &str, value: &Value) {
    let path = dir.join("kv").join(sha256_hex(key.as_bytes()));
    std::fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
}

/// The pushes made all day: an app on a base the registry holds, then the app rebuilt. Only
/// the app's new layer is hashed and uploaded; the base's layers are passed over unread: the
/// lower ones by their entry names, the base's top layer (named after the base's config when
/// the base was pushed, so under another name now) by its size. That they are never read is
/// shown by a byte flipped inside the base's top layer in the export, which the push never
/// sees. An entry taken for the wrong layer (here by a stale cache entry) costs a second
/// export that hashes and uploads every layer, and the image still comes out right.
#[test]
fn an_app_on_a_held_base_and_its_rebuilds_upload_only_the_new_layer() {
    let s = services();
    let name = unique("onbase");
    let (base, _, base_diff_ids) = build_many_layers_image(&name, 3, 2 * 1024 * 1024);
    let app = |version| build_app(&name, &base, &base_diff_ids, version);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let repo = format!("ocipush-test/{name}");
    let d = dest(&s.registry, &repo, "base");
    push_with(&base, &d, "none", &[("OCIPUSH_CACHE_DIR", cache_dir)]).expect_success(&d);

    // The first app, through a proxy that flips a byte inside the base's top layer.
    let (v1, diff_ids) = app(1);
    let layers = export_layers(&v1);
    let (_, at, size, _) = layers
        .iter()
        .find(|(_, _, _, digest)| *digest == base_diff_ids[2])
        .expect("the base's top layer in the app's export");
    let proxy = FaultProxy::start(&s.docker_host, at + size / 2);
    let d1 = dest(&s.registry, &repo, "1");
    let envs = [
        ("OCIPUSH_CACHE_DIR", cache_dir),
        ("DOCKER_HOST", &proxy.docker_host()),
    ];
    let pushed = push_with(&v1, &d1, "json", &envs);
    assert_eq!(proxy.flips.load(std::sync::atomic::Ordering::SeqCst), 1);
    expect_only_the_top_layer_uploaded(&pushed, &d1, &diff_ids);

    // The app rebuilt.
    let (v2, diff_ids) = app(2);
    let d2 = dest(&s.registry, &repo, "2");
    let pushed = push_with(&v2, &d2, "json", &[("OCIPUSH_CACHE_DIR", cache_dir)]);
    expect_only_the_top_layer_uploaded(&pushed, &d2, &diff_ids);

    // Rebuilt again, with the cache saying the new layer's entry is the base's first layer.
    let (v3, diff_ids) = app(3);
    let new_layer = export_layers(&v3)
        .into_iter()
        .find(|(_, _, _, digest)| *digest == diff_ids[3])
        .expect("the new layer in the export");
    let (entry, size) = (&new_layer.0, new_layer.2);
    put_cache_entry(
        cache.path(),
        &format!("entry/v1/{size}/{entry}"),
        &serde_json::json!({"name": entry, "size": size, "diff_id": base_diff_ids[0]}),
    );
    let d3 = dest(&s.registry, &repo, "3");
    let pushed = push_with(&v3, &d3, "json", &[("OCIPUSH_CACHE_DIR", cache_dir)]);
    let digest = pushed.expect_success(&d3);
    let events = json_events(&pushed.stderr);
    assert_eq!(
        positions(&events, "layer-done"),
        vec![1, 2, 3, 4],
        "the second export uploads every layer: {events:?}"
    );
    assert_eq!(count(&events, "layer-started"), 4, "{events:?}");
    copy_to_oci_layout_and_verify(&format!("{}/{repo}:3", s.registry), &digest, &diff_ids);
}
