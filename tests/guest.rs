//! The guest as an auditable, swappable component: `guest info` and `guest export`, digest
//! pinning, and the sandbox. Foreign and misbehaving guests (tests/guests, built by
//! scripts/test.sh into `$OCIPUSH_TEST_GUESTS`) are refused or stopped with a clear error, before
//! any traffic where the guest is refused, and with no tag written where it ran.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::tripwires::Tripwires;
use support::*;

fn ocipush(args: &[&str]) -> Command {
    let mut command = Command::new(ocipush_bin());
    command
        .args(args)
        .env("DOCKER_HOST", services().docker_host)
        .env_remove("OCIPUSH_GUEST_DIGEST");
    command
}

/// A test guest built by scripts/test.sh.
fn test_guest(name: &str) -> PathBuf {
    let dir = std::env::var("OCIPUSH_TEST_GUESTS")
        .expect("OCIPUSH_TEST_GUESTS is not set: run ./scripts/test.sh");
    let path = PathBuf::from(dir).join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/test.sh",
        path.display()
    );
    path
}

fn embedded_digest() -> String {
    let info = run_ok(&mut ocipush(&["guest", "info"]));
    let line = info
        .lines()
        .find(|l| l.starts_with("digest:"))
        .expect("a digest line");
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn guest_info_and_export_describe_the_same_component() {
    let info = run_ok(&mut ocipush(&["guest", "info"]));
    for expected in [
        "guest:    embedded",
        "world:    ocipush:core/pusher@0.11.0",
        "  ocipush:core/docker@0.11.0",
        "  ocipush:core/registry@0.11.0",
        "exports:\n  push",
    ] {
        assert!(info.contains(expected), "{expected:?} in\n{info}");
    }
    assert!(
        !info.contains("wasi:filesystem") && !info.contains("wasi:sockets"),
        "the guest asks for no files or network:\n{info}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guest.wasm");
    let printed = run_ok(&mut ocipush(&["guest", "export", path.to_str().unwrap()]));
    let digest = format!("sha256:{}", sha256_file(&path));
    assert_eq!(digest, embedded_digest());
    assert!(printed.starts_with(&digest), "{printed}");
    // The exported file, run as an external guest, is the same guest.
    let external = run_ok(&mut ocipush(&[
        "--guest",
        path.to_str().unwrap(),
        "guest",
        "info",
    ]));
    assert!(external.contains(&digest), "{external}");
}

/// A cold cache is filled by a child process (`ocipush guest compile`, the component on its
/// stdin), so the compiler's memory is never the push's; the next run finds the file. The
/// hidden command refuses what is not a component in one line, and caches nothing for it.
#[test]
fn a_cold_cache_is_filled_by_a_child_process_that_refuses_what_is_not_a_component() {
    let cache = tempfile::tempdir().unwrap();
    let compiled = || -> Vec<PathBuf> {
        std::fs::read_dir(cache.path().join("guest"))
            .map(|dir| dir.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let info = |log: &str| {
        run(ocipush(&["guest", "info"])
            .env("OCIPUSH_CACHE_DIR", cache.path())
            .env("OCIPUSH_LOG", log))
    };
    let cold = info("ocipush=debug");
    assert!(cold.status.success(), "{}", describe(&cold));
    let stderr = String::from_utf8_lossy(&cold.stderr);
    assert_eq!(
        stderr.matches("compiling the guest").count(),
        1,
        "compiled once, not here as well\n{stderr}"
    );
    assert!(
        stderr.contains("compiling the guest in a child process"),
        "{stderr}"
    );
    assert!(!stderr.contains("did not compile"), "{stderr}");
    let files = compiled();
    assert!(
        files.len() == 1 && files[0].extension().is_some_and(|e| e == "cwasm"),
        "{files:?}"
    );
    let warm = info("ocipush=debug");
    assert!(
        !String::from_utf8_lossy(&warm.stderr).contains("compiling"),
        "{}",
        describe(&warm)
    );

    std::fs::remove_file(&files[0]).unwrap();
    let mut child = ocipush(&["guest", "compile"])
        .env("OCIPUSH_CACHE_DIR", cache.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"\0asm not a component")
        .unwrap();
    let refused = child.wait_with_output().unwrap();
    assert!(!refused.status.success(), "{}", describe(&refused));
    let line = String::from_utf8_lossy(&refused.stderr).trim().to_string();
    assert!(
        line.lines().count() == 1
            && line.starts_with("ocipush: error: guest on stdin is not a WebAssembly component"),
        "{line}"
    );
    assert!(compiled().is_empty(), "nothing cached for it");
}

#[test]
fn a_pinned_digest_runs_only_that_guest_and_refuses_others_before_any_traffic() {
    let s = services();
    let name = unique("pinned");
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("f"), random_bytes(4096)).unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY f /f\n").unwrap();
    let tag = format!("{name}:1");
    docker_build(&tag, ctx.path());
    let digest = embedded_digest();
    let dest = format!("{}/ocipush-test/{name}:1", s.registry);
    // The right digest, by flag and by environment.
    run_ok(&mut ocipush(&[
        "push",
        "--progress",
        "none",
        "--guest-digest",
        &digest,
        &tag,
        &dest,
    ]));
    run_ok(
        ocipush(&["push", "--progress", "none", &tag, &dest]).env("OCIPUSH_GUEST_DIGEST", &digest),
    );

    let wrong = format!("sha256:{}", "0".repeat(64));
    let tripwires = Tripwires::new();
    tripwires.refused(&["--guest-digest", &wrong], &[], "refusing to run it");
    tripwires.refused(
        &[],
        &[("OCIPUSH_GUEST_DIGEST", &wrong)],
        "refusing to run it",
    );
    // A swapped guest does not match the pin of the embedded one.
    let alien = test_guest("alien_guest");
    tripwires.refused(
        &[
            "--guest",
            alien.to_str().unwrap(),
            "--guest-digest",
            &digest,
        ],
        &[],
        "refusing to run it",
    );
}

#[test]
fn files_that_are_not_pusher_components_are_refused_before_any_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not wasm").unwrap();
    let module = dir.path().join("module.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let tripwires = Tripwires::new();
    tripwires.refused(
        &["--guest", text.to_str().unwrap()],
        &[],
        "is not a WebAssembly component",
    );
    tripwires.refused(
        &["--guest", module.to_str().unwrap()],
        &[],
        "is not a WebAssembly component",
    );
    let alien = test_guest("alien_guest");
    tripwires.refused(
        &["--guest", alien.to_str().unwrap()],
        &[],
        "does not implement the ocipush:core pusher world",
    );
    let missing = dir.path().join("absent.wasm");
    tripwires.refused(
        &["--guest", missing.to_str().unwrap()],
        &[],
        "reading the guest",
    );
}

#[test]
fn a_guest_that_traps_runs_out_of_memory_or_loops_is_stopped_and_writes_no_tag() {
    let s = services();
    let guest = test_guest("misbehaving_guest");
    for (behaviour, needle) in [
        ("trap", "the guest failed: wasm trap"),
        ("oom", "over its limit of 256 MiB"),
        (
            "loop",
            "the guest computed for 2 s without calling the host",
        ),
    ] {
        let repo = format!("ocipush-test/{}", unique(behaviour));
        let dest = format!("{}/{repo}:1", s.registry);
        let started = std::time::Instant::now();
        let out = run(&mut ocipush(&[
            "--guest",
            guest.to_str().unwrap(),
            "push",
            "--progress",
            "none",
            "--guest-cpu-limit",
            "2",
            behaviour,
            &dest,
        ]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{behaviour}: {}", describe(&out));
        assert_eq!(stderr.lines().count(), 1, "{behaviour}: one line: {stderr}");
        assert!(
            stderr.contains(needle),
            "{behaviour}: {needle:?} in {stderr}"
        );
        assert!(
            started.elapsed().as_secs() < 60,
            "{behaviour} was stopped in time"
        );
        // The guest had started a real push (its marker blob is in the registry), and no tag
        // was written.
        let (status, _) = registry_get(
            &s.registry,
            &repo,
            "blobs/sha256:03494afd4248c42f5fa1237bf2eeebe751ab8d9c977d55405fcb17469dbd91f8",
            None,
        );
        assert_eq!(
            status, 200,
            "{behaviour}: the marker blob was uploaded first"
        );
        assert_tag_absent(&s.registry, &repo, "1");
    }
}
