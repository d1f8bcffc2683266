//! A guest of one's own: `examples/policy`, built by scripts/test.sh with
//! scripts/example-guest.sh into `$OCIPUSH_TEST_POLICY_GUEST`, run with `--guest` against the
//! test daemon. It refuses an image without an `org.opencontainers.image.source` label and a
//! destination outside its allow-list (`127.0.0.1/approved` among them: any port, repositories
//! under `approved/`) with one line naming the rule and nothing stored in the registry, pushes
//! what it allows exactly as the standard guest does, and is pinned by its digest like any guest.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// `ocipush --guest GUEST [ARGS] push SOURCE DEST` with `--progress none`.
fn push_under(guest: &str, args: &[&str], source: &str, dest: &str) -> Pushed {
    let mut command = Command::new(ocipush_bin());
    command
        .args(["--guest", guest])
        .args(args)
        .args(["push", source, dest, "--progress", "none"])
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

#[test]
fn an_image_without_the_source_label_is_refused_before_any_upload() {
    let guest = policy_guest();
    let registry = Registry::start();
    let name = unique("unlabelled");
    let tag = format!("{name}:1");
    build_labelled(&tag, &[("org.example.team", "ocipush")]);
    let repo = format!("approved/{name}");
    let dest = format!("{}/{repo}:1", registry.address);

    let line = refused(&push_under(&guest, &[], &tag, &dest), &registry);
    assert_eq!(
        line,
        format!(
            "ocipush: error: refused by policy rule source-label: image {tag} ({}) has no \
             {SOURCE_LABEL} label",
            image_id(&tag)
        )
    );
    assert!(tags(&registry.address, &repo).is_empty());

    // An empty value says nothing either.
    let empty = format!("{name}-empty:1");
    build_labelled(&empty, &[(SOURCE_LABEL, "")]);
    let line = refused(&push_under(&guest, &[], &empty, &dest), &registry);
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
    for repo in [format!("other/{name}"), format!("approvedx/{name}")] {
        let dest = format!("{}/{repo}:1", registry.address);
        let line = refused(&push_under(&guest, &[], &tag, &dest), &registry);
        assert_eq!(
            line,
            format!(
                "ocipush: error: refused by policy rule allowed-destination: destination {}/{repo} \
                 is not under a repository the allow-list names \
                 (127.0.0.1/approved, localhost/approved, registry.example.com/team)",
                registry.address
            )
        );
    }
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

    let digest = push_under(&guest, &[], &tag, &dest).expect_success(&dest);
    let manifest = skopeo_raw_manifest(&dest);
    assert_eq!(manifest["config"]["digest"], image_id(&tag).as_str());
    assert_eq!(manifest["annotations"][SOURCE_LABEL], SOURCE);
    let inspected = run_ok(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{dest}"),
    ]));
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());
    assert_eq!(inspected["Labels"][SOURCE_LABEL], SOURCE);

    // The policy only decides whether: what is published is the standard guest's manifest.
    let standard_dest = format!("{}/ocipush-test/{name}:1", s.registry);
    let standard = push(&tag, &standard_dest).expect_success(&standard_dest);
    assert_eq!(standard, digest);
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
    push_under(&guest, &["--guest-digest", &digest], &tag, &dest).expect_success(&dest);

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
