//! Uploads through an imperfect network and imperfect registries: a fault-injecting proxy
//! (tests/support/faults.rs) sits in front of the real registry started by scripts/services.sh.
//! After every successful run the image reads back through skopeo with every digest verified;
//! after every failed run no tag exists (`--verify` reads the manifest back by digest before the
//! tag), except where a registry writes the tag itself while lying about the manifest's digest.

mod support;

use std::process::Command;

use serde_json::Value;
use support::faults::{Faults, HttpFaultProxy, Seen};
use support::*;

/// An image with a 9 MiB layer of random bytes (incompressible: about 9 MiB gzipped too) and
/// a small one; returns (tag, image ID, diff IDs).
fn image_with_a_large_layer(name: &str) -> (String, String, Vec<String>) {
    let tag = format!("{name}:1");
    let small = format!("faults {name}\n");
    build_image(
        &tag,
        None,
        &[
            ("big.bin", &random_bytes(9 << 20)),
            ("small.txt", small.as_bytes()),
        ],
    );
    let id = image_id(&tag);
    let diff_ids = rootfs_layers(&tag);
    (tag, id, diff_ids)
}

/// A push through `proxy` with JSON progress; returns the result and the progress events.
fn push_through(
    proxy: &HttpFaultProxy,
    tag: &str,
    repo: &str,
    args: &[&str],
) -> (Pushed, Vec<Value>, String) {
    let dest = format!("{}/{repo}:v1", proxy.address);
    let pushed = push_args(tag, &dest, "json", args, &[]);
    let events = pushed
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    (pushed, events, dest)
}

/// Success, then the image as the real registry holds it (not through the proxy) reads back
/// through skopeo with every digest verified, and its layers hash to the diff IDs.
fn expect_published(pushed: &Pushed, dest: &str, repo: &str, id: &str, diff_ids: &[String]) {
    let digest = pushed.expect_success(dest);
    verify_pushed(
        &format!("{}/{repo}:v1", services().registry),
        &digest,
        id,
        diff_ids,
    );
}

fn events<'a>(all: &'a [Value], name: &str) -> Vec<&'a Value> {
    all.iter().filter(|e| e["event"] == name).collect()
}

fn upload_starts(seen: &[Seen]) -> usize {
    seen.iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/blobs/uploads/") && s.status == 202)
        .count()
}

#[test]
fn a_connection_dropped_between_chunks_resumes_from_the_upload_status() {
    let name = unique("resume");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            drop_patch: Some(3),
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    // One upload at a time, so the requests after the drop are that upload's.
    let (pushed, events_seen, dest) =
        push_through(&proxy, &tag, &repo, &["--chunk-size", "2M", "--jobs", "1"]);
    expect_published(&pushed, &dest, &repo, &id, &diff_ids);
    let seen = proxy.seen();
    let dropped = seen
        .iter()
        .position(|s| s.method == "PATCH" && s.status == 0);
    let dropped = dropped.unwrap_or_else(|| panic!("no PATCH was dropped: {seen:#?}"));
    // After the drop: the upload status, then the same chunk again, in the same session.
    let status_check = &seen[dropped + 1];
    assert_eq!(
        (status_check.method.as_str(), status_check.status),
        ("GET", 204),
        "{seen:#?}"
    );
    let resent = &seen[dropped + 2];
    assert_eq!(resent.method, "PATCH", "{seen:#?}");
    assert_eq!(
        resent.content_range, seen[dropped].content_range,
        "{seen:#?}"
    );
    // Two layers and the config: three sessions, none started over.
    assert_eq!(upload_starts(&seen), 3, "{seen:#?}");
    let retries = events(&events_seen, "retry");
    assert_eq!(retries.len(), 1, "{events_seen:#?}");
    assert_eq!(retries[0]["attempt"], 1);
}

/// Distribution forgets an upload session that saw part of a chunk. By then the host has let go
/// of the chunks the registry took before (it keeps only what the registry has not acknowledged),
/// so the upload is lost; the guest, told so in its own error case, exports the image again and
/// uploads that layer from its first byte in a new session, and only what is still missing.
#[test]
fn a_session_lost_after_a_chunk_the_registry_took_costs_a_second_export() {
    let name = unique("restart");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    // One upload at a time, so the third PATCH is a chunk after the large layer's first, whichever
    // layer the export holds first (the small one takes one PATCH).
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            cut_patch: Some(3),
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    let (pushed, events_seen, dest) =
        push_through(&proxy, &tag, &repo, &["--chunk-size", "2M", "--jobs", "1"]);
    expect_published(&pushed, &dest, &repo, &id, &diff_ids);
    published::parse_published(
        &format!("{}/{repo}:v1", services().registry),
        pushed.digest_file.as_deref().unwrap(),
    );
    let seen = proxy.seen();
    let cut = seen
        .iter()
        .position(|s| s.method == "PATCH" && s.status == 0)
        .unwrap_or_else(|| panic!("no PATCH was cut: {seen:#?}"));
    let large_first_chunk = |s: &&Seen| {
        s.method == "PATCH"
            && s.status == 202
            && s.body_len == 2 << 20
            && s.content_range
                .as_deref()
                .is_some_and(|r| r.starts_with("0-"))
    };
    let before: Vec<&Seen> = seen[..cut].iter().filter(large_first_chunk).collect();
    assert_eq!(
        before.len(),
        1,
        "the large layer's first chunk was taken: {seen:#?}"
    );
    assert_eq!(before[0].path, seen[cut].path, "{seen:#?}");
    // After the cut, the large layer goes up again from its first byte, in a new session.
    let again: Vec<&Seen> = seen[cut + 1..].iter().filter(large_first_chunk).collect();
    assert_eq!(again.len(), 1, "{seen:#?}");
    assert_ne!(again[0].path, before[0].path, "a new session: {seen:#?}");
    // Each blob committed once: what the first export committed is not sent again.
    assert_eq!(committed(&seen).len(), 3, "{seen:#?}");
    // The guest streamed the large layer twice: the image was exported again.
    let large: Vec<&Value> = events(&events_seen, "layer-started")
        .into_iter()
        .filter(|e| e["total"].as_u64().unwrap_or(0) > 1 << 20)
        .collect();
    assert_eq!(large.len(), 2, "{events_seen:#?}");
    assert_eq!(large[0]["entry"], large[1]["entry"], "{events_seen:#?}");
    // Said once, and the host did not start the layer over itself.
    let notes: Vec<&str> = events(&events_seen, "upload")
        .iter()
        .filter_map(|n| n["message"].as_str())
        .collect();
    assert_eq!(notes.len(), 1, "{events_seen:#?}");
    assert!(
        notes[0].contains(&format!(
            "registry {} lost the upload session of a layer after taking",
            proxy.address
        )) && notes[0].contains("exported again"),
        "{notes:?}"
    );
}

/// A layer several chunks large keeps at most two chunks of temporary disk: the chunk in flight
/// and the one the encoder fills. Sampled from outside: the allocated size of every deleted
/// temporary file the ocipush process holds open (its spools), through /proc.
#[test]
fn a_layer_upload_keeps_at_most_two_chunks_on_temporary_disk() {
    let name = unique("spool");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let proxy = HttpFaultProxy::start(&services().registry, Faults::default());
    let repo = format!("faults/{name}");
    let dest = format!("{}/{repo}:v1", proxy.address);
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(ocipush_bin())
        .args([
            "push",
            &tag,
            &dest,
            "--progress",
            "none",
            "--chunk-size",
            "1M",
        ])
        .env("DOCKER_HOST", services().docker_host)
        .env("TMPDIR", tmp.path())
        .env_remove("OCIPUSH_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let fds = std::path::PathBuf::from(format!("/proc/{}/fd", child.id()));
    let (mut peak_len, mut peak_allocated, mut samples) = (0u64, 0u64, 0u32);
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed().as_secs() < 300, "the push hangs");
        for fd in std::fs::read_dir(&fds).into_iter().flatten().flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if !(target.starts_with(&*tmp.path().to_string_lossy())
                && target.ends_with("(deleted)"))
            {
                continue;
            }
            if let Ok(meta) = std::fs::metadata(fd.path()) {
                use std::os::unix::fs::MetadataExt;
                samples += 1;
                peak_len = peak_len.max(meta.len());
                peak_allocated = peak_allocated.max(meta.blocks() * 512);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", describe(&output));
    assert!(samples > 0, "no spool was seen while the push ran");
    eprintln!("spool peak: {peak_len} bytes long, {peak_allocated} allocated ({samples} samples)");
    // A 9 MiB layer with 1 MiB chunks: without the bound its spool would grow to 9 MiB.
    let bound = 2 << 20;
    assert!(
        peak_len <= bound && peak_allocated <= bound,
        "a spool grew to {peak_len} bytes ({peak_allocated} allocated), past {bound}"
    );
    assert!(peak_len > 0, "the spool held nothing while sampled");
    let (_, digest) = stdout
        .trim()
        .rsplit_once('@')
        .expect("DEST@DIGEST on stdout");
    let stored = format!("{}/{repo}:v1", services().registry);
    verify_pushed(&stored, digest, &id, &diff_ids);
    published::parse_published(&stored, digest);
}

#[test]
fn random_500s_and_429s_with_retry_after_are_retried() {
    let name = unique("flaky");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            flaky: 0.2,
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    let (pushed, events_seen, dest) = push_through(
        &proxy,
        &tag,
        &repo,
        &["--chunk-size", "1M", "--retries", "8"],
    );
    expect_published(&pushed, &dest, &repo, &id, &diff_ids);
    let seen = proxy.seen();
    let refused = seen
        .iter()
        .filter(|s| s.status == 500 || s.status == 429)
        .count();
    assert!(
        refused >= 3,
        "the proxy should have failed several requests: {seen:#?}"
    );
    let retries = events(&events_seen, "retry");
    assert_eq!(
        retries.len(),
        refused,
        "every failure is retried, visibly: {events_seen:#?}"
    );
    // A 429's Retry-After (1 s) is what the retry waits; the others back off with jitter.
    assert!(
        retries
            .iter()
            .any(|r| r["delay_ms"] == 1000 && r["reason"].as_str().unwrap_or("").contains("429")),
        "{retries:#?}"
    );
}

#[test]
fn chunks_above_4_mib_are_refused_so_smaller_ones_are_sent() {
    let name = unique("ghcr");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            max_chunk: Some(4 << 20),
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    // The default chunk size (16M) is too large for this registry.
    let (pushed, events_seen, dest) = push_through(&proxy, &tag, &repo, &[]);
    expect_published(&pushed, &dest, &repo, &id, &diff_ids);
    let seen = proxy.seen();
    let refused: Vec<_> = seen.iter().filter(|s| s.status == 416).collect();
    assert_eq!(
        refused.len(),
        1,
        "one refusal, then only chunks that fit: {seen:#?}"
    );
    assert!(
        seen.iter()
            .filter(|s| s.method == "PATCH" && s.status == 202)
            .all(|s| s.body_len <= 4 << 20),
        "{seen:#?}"
    );
    let notes = events(&events_seen, "upload");
    assert!(
        notes.iter().any(|n| n["message"]
            .as_str()
            .unwrap_or("")
            .contains("sending chunks of 4.00 MiB")),
        "{events_seen:#?}"
    );
}

#[test]
fn gitea_patch_rule_holds_through_chunks_and_a_dropped_connection() {
    let name = unique("gitea");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            gitea_patch_rule: true,
            drop_patch: Some(4),
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    let (pushed, _, dest) = push_through(&proxy, &tag, &repo, &["--chunk-size", "1M"]);
    expect_published(&pushed, &dest, &repo, &id, &diff_ids);
    let seen = proxy.seen();
    assert!(
        seen.iter().all(|s| s.status != 416),
        "a PATCH broke Gitea's rule: {seen:#?}"
    );
    assert!(
        seen.iter()
            .filter(|s| s.method == "PATCH")
            .all(|s| s.content_range.is_some()),
        "{seen:#?}"
    );
    assert!(
        seen.iter().filter(|s| s.method == "PATCH").count() >= 10,
        "{seen:#?}"
    );
}

#[test]
fn when_retries_run_out_the_push_fails_in_one_line_and_writes_no_tag() {
    let name = unique("giveup");
    let (tag, _, _) = image_with_a_large_layer(&name);
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            flaky: 1.0,
            flaky_patch_only: true,
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    let dest = format!("{}/{repo}:v1", proxy.address);
    // One upload at a time, so the PATCHes counted are one layer's.
    let pushed = push_args(&tag, &dest, "none", &["--retries", "2", "--jobs", "1"], &[]);
    let line = pushed.expect_failure();
    assert!(line.contains("gave up after 2 retries"), "{line}");
    let patches = proxy.seen().iter().filter(|s| s.method == "PATCH").count();
    assert_eq!(patches, 3, "one try and two retries: {:#?}", proxy.seen());
    assert_tag_absent(&services().registry, &repo, "v1");
    // A run without faults then completes.
    let pushed = push(&tag, &format!("{}/{repo}:v1", services().registry));
    pushed.expect_success(&format!("{}/{repo}:v1", services().registry));
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/{repo}:v1", services().registry),
    ]));
    assert!(out.status.success(), "{}", describe(&out));
}

/// Pushes `tag` through `proxy` as `repo:v1`, so the cache records its blobs as being there
/// (on the registry at the proxy's address: mounts are only tried within one registry).
fn push_first(proxy: &HttpFaultProxy, tag: &str, repo: &str) {
    let dest = format!("{}/{repo}:v1", proxy.address);
    push(tag, &dest).expect_success(&dest);
}

fn mounts(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|s| s.method == "POST" && s.query.contains("mount="))
        .collect()
}

#[test]
fn blobs_pushed_to_another_repository_are_mounted_not_uploaded() {
    let name = unique("mount");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let first = format!("faults/{name}-a");
    let proxy = HttpFaultProxy::start(&services().registry, Faults::default());
    push_first(&proxy, &tag, &first);
    let before = proxy.seen().len();
    let repo = format!("faults/{name}-b");
    let (pushed, events_seen, dest) = push_through(&proxy, &tag, &repo, &[]);
    expect_published(&pushed, &dest, &repo, &id, &diff_ids);
    let seen = proxy.seen()[before..].to_vec();
    // Config and both layers: mounted (201), nothing uploaded.
    let mounted = mounts(&seen);
    assert_eq!(mounted.len(), 3, "{seen:#?}");
    assert!(
        mounted.iter().all(|m| m.status == 201
            && m.query
                .contains(&format!("from={}", first.replace('/', "%2F")))),
        "{seen:#?}"
    );
    assert!(seen.iter().all(|s| s.method != "PATCH"), "{seen:#?}");
    let skipped = events(&events_seen, "layer-skipped");
    assert_eq!(skipped.len(), 2, "{events_seen:#?}");
    assert!(
        skipped.iter().all(|e| e["mounted_from"] == first.as_str()),
        "{skipped:#?}"
    );
}

#[test]
fn a_mount_refused_with_401_as_harbor_does_falls_back_to_uploading() {
    let name = unique("harbor");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            refuse_mounts: true,
            ..Faults::default()
        },
    );
    push_first(&proxy, &tag, &format!("faults/{name}-a"));
    let before = proxy.seen().len();
    let repo = format!("faults/{name}-b");
    let (pushed, _, dest) = push_through(&proxy, &tag, &repo, &[]);
    expect_published(&pushed, &dest, &repo, &id, &diff_ids);
    let seen = proxy.seen()[before..].to_vec();
    let refused = mounts(&seen);
    assert!(
        !refused.is_empty() && refused.iter().all(|m| m.status == 401),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|s| s.method == "PATCH" && s.status == 202),
        "{seen:#?}"
    );
}

/// The digests of the blobs whose commit (the PUT `?digest=` that ends an upload) the registry
/// took, as the proxy saw them.
fn committed(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/") && s.status == 201)
        .filter_map(|s| s.query.split('&').find_map(|p| p.strip_prefix("digest=")))
        .map(|d| d.replace("%3A", ":"))
        .collect()
}

/// The manifest REPO:REFERENCE (a tag or digest) as the real registry holds it: its bytes and
/// their digest.
fn stored_manifest(repo: &str, reference: &str) -> (Vec<u8>, String) {
    let (status, bytes) = registry_get(
        &services().registry,
        repo,
        &format!("manifests/{reference}"),
        Some(OCI_MANIFEST),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let digest = format!("sha256:{}", sha256_hex(&bytes));
    (bytes, digest)
}

/// A clean re-run, straight to the registry, publishes the image and reads it back.
fn rerun_publishes(tag: &str, repo: &str, id: &str, diff_ids: &[String]) {
    let dest = format!("{}/{repo}:v1", services().registry);
    let pushed = push_args(tag, &dest, "none", &["--verify"], &[]);
    expect_published(&pushed, &dest, repo, id, diff_ids);
}

/// The registry took the blob but names another digest for it: the push fails in one line
/// naming the registry, the blob and the claimed digest, before any manifest is sent.
#[test]
fn a_blob_commit_answered_with_another_digest_fails_the_push_and_writes_no_tag() {
    let name = unique("commit-digest");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let claimed = format!("sha256:{}", sha256_hex(b"not the blob that was sent"));
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            commit_digest: Some(claimed.clone()),
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    let dest = format!("{}/{repo}:v1", proxy.address);
    let line = push_args(&tag, &dest, "none", &[], &[]).expect_failure();
    let seen = proxy.seen();
    let committed = committed(&seen);
    let named = committed
        .iter()
        .find(|d| line.contains(d.as_str()))
        .unwrap_or_else(|| panic!("names none of the committed blobs {committed:?}: {line}"));
    assert!(
        line.contains(&format!(
            "registry {} stored blob {named} in {repo} as {claimed}",
            proxy.address
        )),
        "{line}"
    );
    // Nothing names the blobs: no manifest was sent, and no tag exists.
    assert!(
        seen.iter().all(|s| !s.path.contains("/manifests/")),
        "{seen:#?}"
    );
    assert_tag_absent(&services().registry, &repo, "v1");

    rerun_publishes(&tag, &repo, &id, &diff_ids);
    // The blob the error named is one of the image's.
    let manifest: Value = serde_json::from_slice(&stored_manifest(&repo, "v1").0).unwrap();
    let blobs: Vec<&str> = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().unwrap())
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    assert!(blobs.contains(&named.as_str()), "{named} not in {blobs:?}");
}

/// A registry that reports every blob one byte larger than it is: `--verify` finds it after a
/// push of new blobs, and the next push, which finds the blobs there, fails before any manifest.
#[test]
fn a_registry_that_misreports_blob_sizes_fails_verify_and_the_next_push() {
    let name = unique("blob-size");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            blob_size_offset: 1,
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    let location = format!("{}/{repo}", proxy.address);
    let dest = format!("{location}:v1");
    // The blobs are new, so only verify's HEADs find them, after the manifest went up by digest.
    let line = push_args(&tag, &dest, "none", &["--verify"], &[]).expect_failure();
    let (bytes, digest) = stored_manifest(&repo, &manifest_written_by_digest(&proxy.seen()));
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    let config = &manifest["config"];
    let size = config["size"].as_u64().unwrap();
    assert!(
        line.contains(&format!("verify before writing {dest}"))
            && line.contains(&format!(
                "{location} holds config {} of manifest {digest} with {} bytes, not the {size} the manifest states",
                config["digest"].as_str().unwrap(),
                size + 1
            )),
        "{line}"
    );
    assert_tag_absent(&services().registry, &repo, "v1");

    let before = proxy.seen().len();
    let line = push(&tag, &format!("{location}:v2")).expect_failure();
    let blobs: Vec<(&str, u64)> = std::iter::once(config)
        .chain(manifest["layers"].as_array().unwrap())
        .map(|b| (b["digest"].as_str().unwrap(), b["size"].as_u64().unwrap()))
        .collect();
    assert!(
        blobs.iter().any(|(d, s)| line.contains(&format!(
            "{location} reports blob {d} as {} bytes, but it is {s} bytes",
            s + 1
        ))),
        "{line}"
    );
    let seen = proxy.seen()[before..].to_vec();
    assert!(
        seen.iter().all(|s| !s.path.contains("/manifests/")),
        "{seen:#?}"
    );
    assert_tag_absent(&services().registry, &repo, "v2");

    rerun_publishes(&tag, &repo, &id, &diff_ids);
}

/// `--verify` fetches the manifest by digest and gets bytes that hash to something else.
#[test]
fn verify_fails_when_the_registry_serves_other_manifest_bytes() {
    let name = unique("verify-bytes");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            manifest_bytes_changed: true,
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    let dest = format!("{}/{repo}:v1", proxy.address);
    let line = push_args(&tag, &dest, "none", &["--verify"], &[]).expect_failure();
    let (mut bytes, digest) = stored_manifest(&repo, &manifest_written_by_digest(&proxy.seen()));
    bytes.push(b'\n');
    assert!(
        line.contains(&format!("verify before writing {dest}"))
            && line.contains(&format!(
                "{}/{repo} serves manifest {digest} with bytes that hash to sha256:{}",
                proxy.address,
                sha256_hex(&bytes)
            )),
        "{line}"
    );
    assert_tag_absent(&services().registry, &repo, "v1");
    rerun_publishes(&tag, &repo, &id, &diff_ids);
}

/// The digest a manifest was written under (`PUT …/manifests/sha256:…`, as `--verify` does
/// before the tag), from what the proxy saw; the one such PUT.
fn manifest_written_by_digest(seen: &[Seen]) -> String {
    let puts: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == "PUT")
        .filter_map(|s| s.path.split_once("/manifests/").map(|(_, r)| r))
        .collect();
    match puts[..] {
        [digest] if digest.starts_with("sha256:") => digest.to_string(),
        _ => panic!("not one manifest PUT by digest: {puts:?}"),
    }
}

/// The registry stores the manifest but answers its PUT with another digest: the push fails in
/// one line naming the destination, the digest claimed and the digest of what was sent. With
/// `--verify` the manifest goes up by digest first, and no tag is written; without, the tag is
/// the one thing written by then: a PUT by tag writes manifest and tag at once.
#[test]
fn a_manifest_put_answered_with_another_digest_fails_the_push() {
    let name = unique("manifest-digest");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let claimed = format!("sha256:{}", "0".repeat(64));
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            manifest_digest: Some(claimed.clone()),
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    let lied_to = |line: &str, sent: &str| {
        line.contains(&format!(
            "{}/{repo} stored the manifest as {claimed}, which is not the digest of what was sent ({sent})",
            proxy.address
        ))
    };

    let dest = format!("{}/{repo}:v1", proxy.address);
    let line = push_args(&tag, &dest, "none", &["--verify"], &[]).expect_failure();
    let (_, sent) = stored_manifest(&repo, &manifest_written_by_digest(&proxy.seen()));
    assert!(lied_to(&line, &sent), "{line}");
    assert_tag_absent(&services().registry, &repo, "v1");

    let line = push_args(&tag, &dest, "none", &[], &[]).expect_failure();
    assert_eq!(stored_manifest(&repo, "v1").1, sent);
    assert!(lied_to(&line, &sent), "{line}");
    rerun_publishes(&tag, &repo, &id, &diff_ids);
}

/// A registry whose every answer carries a 1 MiB header: the first request fails the push in
/// one line naming the registry, before anything is uploaded or written.
#[test]
fn an_answer_with_a_huge_header_fails_the_push_in_one_line() {
    let name = unique("huge-header");
    let (tag, id, diff_ids) = image_with_a_large_layer(&name);
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            huge_header: true,
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    let dest = format!("{}/{repo}:v1", proxy.address);
    let line = push_args(&tag, &dest, "none", &[], &[]).expect_failure();
    assert!(
        line.contains(&format!("registry {}", proxy.address)) && line.contains("too large"),
        "{line}"
    );
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .all(|s| s.method != "PATCH" && s.method != "PUT"),
        "{seen:#?}"
    );
    assert_tag_absent(&services().registry, &repo, "v1");
    rerun_publishes(&tag, &repo, &id, &diff_ids);
}

/// Upload sessions (`…/blobs/uploads/<id>`) the proxy saw requests with `method` for, those
/// answered with `status` only when given.
fn sessions(seen: &[Seen], method: &str, status: Option<u16>) -> std::collections::HashSet<String> {
    seen.iter()
        .filter(|s| s.method == method && status.is_none_or(|st| s.status == st))
        .filter(|s| s.path.contains("/blobs/uploads/") && !s.path.ends_with("/blobs/uploads/"))
        .map(|s| s.path.clone())
        .collect()
}

#[test]
fn one_failed_upload_of_several_in_flight_ends_the_push_and_cancels_the_others() {
    let name = unique("jobsfail");
    let tag = format!("{name}:1");
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("part{i}.bin"), random_bytes(3 << 20)))
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    build_image(&tag, None, &files);
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("image.tar");
    docker_ok(&["save", "-o", tarball.to_str().unwrap(), &tag]);
    // The fifth chunk: by then the first layer's upload is closed and still sending while
    // the second streams.
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            refuse_patch: Some(5),
            ..Faults::default()
        },
    );
    let repo = format!("faults/{name}");
    let dest = format!("{}/{repo}:v1", proxy.address);
    let pushed = push_args(
        &format!("docker-archive:{}", tarball.display()),
        &dest,
        "none",
        &["--jobs", "3", "--chunk-size", "1M"],
        &[],
    );
    let line = pushed.expect_failure();
    assert!(line.contains("400"), "{line}");
    assert_tag_absent(&services().registry, &repo, "v1");
    let seen = proxy.seen();
    let patched = sessions(&seen, "PATCH", None);
    assert!(patched.len() >= 2, "several uploads in flight: {seen:#?}");
    // Every session that was not committed was cancelled.
    let committed = sessions(&seen, "PUT", Some(201));
    let deleted = sessions(&seen, "DELETE", None);
    for session in patched.difference(&committed) {
        assert!(
            deleted.contains(session),
            "{session} not cancelled: {seen:#?}"
        );
    }
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "PUT" && s.path.contains("/manifests/")),
        "{seen:#?}"
    );
}
