//! Hostile conditions against the real daemon and real registries: ten concurrent pushes sharing
//! one cache, Ctrl-C (SIGINT/SIGTERM) in the middle of an upload and while a registry or the
//! daemon stops answering, and a registry killed mid-push and restarted. Proxies stand in the
//! way of the real registry (tests/support's `SlowLink` to act mid-upload, `HttpFaultProxy` to
//! hold a request) or the daemon (`FaultProxy`); every image that is pushed is read back and
//! verified through skopeo. Registries that answer wrongly are tests/faults.rs's.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::daemon_proxy::FaultProxy;
use support::faults::{Faults, HttpFaultProxy, Seen};
use support::registry::Registry;
use support::slow_link::SlowLink;
use support::*;

// ---------------------------------------------------------------------------------------------
// ocipush runs this file watches, and what it checks after them
// ---------------------------------------------------------------------------------------------

/// An ocipush push started in the background, its stderr (JSON progress) read line by line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Running {
    fn start(source: &str, dest: &str, envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(ocipush_bin());
        command
            .args(["push", source, dest, "--progress", "json"])
            .env("DOCKER_HOST", services().docker_host)
            .env_remove("OCIPUSH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Waits until `proxy` has seen a layer's bytes start on their way to `repository` (a PATCH
    /// to its upload session), and a moment more.
    fn wait_until_uploading(&mut self, proxy: &SlowLink, repository: &str) {
        let patch = format!("PATCH /v2/{repository}/blobs/uploads/");
        self.wait_until("an upload", || {
            proxy.requests().iter().any(|r| r.starts_with(&patch))
        });
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Waits (at most 2 minutes) until `reached` says the push got to `what`, while it runs.
    fn wait_until(&mut self, what: &str, reached: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            while let Ok(line) = self.lines.try_recv() {
                self.stderr.push(line);
            }
            if reached() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ocipush ended ({status}) before {what}:\n{}",
                    self.stderr.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("waited 2 minutes for {what}:\n{}", self.stderr.join("\n"));
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIG`signal` while the push is stuck (`stuck` says how, for messages) and checks
    /// that it stops as a signal must stop it: within 3 s, not after the 10 s grace, with exit
    /// status `code` and one line saying it was interrupted.
    /// Returns the error line.
    fn stop_promptly(self, signal: &str, code: i32, stuck: &str) -> String {
        self.signal(signal);
        let started = Instant::now();
        let (exit, stderr) = self.finish(Duration::from_secs(60));
        let took = started.elapsed();
        eprintln!("SIG{signal} while {stuck}: exited in {took:?}");
        assert!(
            took < Duration::from_secs(3),
            "SIG{signal} while {stuck}: took {took:?}"
        );
        assert_eq!(exit, Some(code), "SIG{signal}:\n{}", stderr.join("\n"));
        let error = the_error_line(&stderr);
        assert!(
            error.starts_with(&format!(
                "ocipush: error: interrupted by SIG{signal}: the push stopped"
            )),
            "{error}"
        );
        error.to_string()
    }

    /// Waits for the exit (at most `limit`); returns the exit code and the full stderr.
    fn finish(mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread ends with the pipe.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.stderr.push(line);
                }
                return (status.code(), self.stderr);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "ocipush did not exit within {limit:?}:\n{}",
                    self.stderr.join("\n")
                );
            }
            while let Ok(line) = self.lines.try_recv() {
                self.stderr.push(line);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The one `ocipush: error:` line among a run's stderr (JSON progress otherwise).
fn the_error_line(stderr: &[String]) -> &str {
    let errors: Vec<_> = stderr
        .iter()
        .filter(|l| l.starts_with("ocipush: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", stderr.join("\n"));
    errors[0]
}

/// The cache is whole: no temporary file left, every entry a whole JSON document (a record naming
/// a digest, or a cached image config), every compiled guest's checksum intact.
fn assert_cache_intact(dir: &Path) {
    let mut entries = 0;
    for sub in ["kv", "guest"] {
        let Ok(files) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for file in files {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "a temporary file was left: {name}");
            let bytes = std::fs::read(&path).unwrap();
            if sub == "kv" {
                let json: serde_json::Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("cache entry {name} is damaged: {e}"));
                // Records name a digest (a blob's, or an export entry's diff ID); cached configs
                // are the daemon's config, whole.
                assert!(
                    json["digest"].as_str().is_some_and(is_sha256_digest)
                        || json["diff_id"].as_str().is_some_and(is_sha256_digest)
                        || json["rootfs"]["diff_ids"].is_array(),
                    "{name}: {json}"
                );
                entries += 1;
            } else if name.ends_with(".cwasm") {
                assert!(
                    bytes.len() > 32 && bytes[..32] == *hex_decode(&sha256_hex(&bytes[32..])),
                    "compiled guest {name} is damaged"
                );
            }
        }
    }
    assert!(
        entries > 0,
        "the pushes recorded nothing in {}",
        dir.display()
    );
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A layer that does not compress: uploads take as long as the bytes say.
fn incompressible(n: usize) -> Vec<u8> {
    random_bytes(n)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Ten ocipush processes push ten images that share two base layers into three repositories of
/// one registry at once, with one cold cache directory. All succeed, each image reads back
/// through skopeo with every digest verified, the guest is compiled once, the cache is whole,
/// and ten repeat pushes, again at once, export nothing and give the same digests.
#[test]
fn ten_concurrent_pushes_share_one_cache() {
    let registry = services().registry;
    let name = unique("concurrent");
    let base = format!("{name}-base:1");
    build_image(
        &base,
        None,
        &[
            ("shared.bin", &incompressible(3 << 20)),
            ("common.txt", b"shared by all ten\n"),
        ],
    );
    let images: Vec<String> = (0..10)
        .map(|i| {
            let tag = format!("{name}-{i}:1");
            build_image(
                &tag,
                Some(&base),
                &[("own.bin", &incompressible((256 << 10) + i))],
            );
            tag
        })
        .collect();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap().to_string();
    let dest = |i: usize| format!("{registry}/{name}-repo{}/app:{i}", i % 3);

    let push_all = |progress: &'static str| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let (source, dest, cache_dir) = (images[i].clone(), dest(i), cache_dir.clone());
                std::thread::spawn(move || {
                    push_with(
                        &source,
                        &dest,
                        progress,
                        &[
                            ("OCIPUSH_CACHE_DIR", cache_dir.as_str()),
                            ("OCIPUSH_LOG", "ocipush=debug"),
                        ],
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    };

    let first = push_all("none");
    let digests: Vec<String> = first
        .iter()
        .enumerate()
        .map(|(i, pushed)| pushed.expect_success(&dest(i)))
        .collect();
    let compiles = first
        .iter()
        .filter(|p| p.stderr.contains("compiling the guest"))
        .count();
    assert_eq!(
        compiles, 1,
        "ten pushes on a cold cache compile the guest once"
    );
    for (i, digest) in digests.iter().enumerate() {
        copy_to_oci_layout_and_verify(&dest(i), digest, &rootfs_layers(&images[i]));
    }
    assert_cache_intact(cache.path());

    let again = push_all("json");
    for (i, pushed) in again.iter().enumerate() {
        assert_eq!(pushed.expect_success(&dest(i)), digests[i]);
        assert!(
            pushed.stderr.contains("\"event\":\"layer-skipped\"")
                && !pushed.stderr.contains("\"event\":\"layer-started\""),
            "a repeat push with a warm shared cache exports nothing\n{}",
            pushed.describe()
        );
    }
    assert_cache_intact(cache.path());
}

/// SIGINT, then SIGTERM, in the middle of a layer upload (slowed by the proxy): ocipush exits
/// with 130 / 143 and one line, writes no tag, tries to cancel its upload session (DELETE) and
/// says whether the registry still holds it, leaves the cache whole; a re-run completes and the
/// image verifies.
#[test]
fn an_interrupted_push_leaves_no_tag_and_a_rerun_completes() {
    // A registry of its own, whose storage shows which upload sessions are open.
    let own = Registry::start();
    let registry = own.address.clone();
    let name = unique("interrupted");
    let image = format!("{name}:1");
    build_image(&image, None, &[("big.bin", &incompressible(24 << 20))]);
    let proxy = SlowLink::start(&registry);
    proxy.throttle.store(2 << 20, Ordering::SeqCst);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let dest = format!("{}/{name}/app:1", proxy.address);
    // Compile the guest first, so the interrupted runs are interrupted while uploading.
    run_ok(
        Command::new(ocipush_bin())
            .args(["guest", "info"])
            .env("OCIPUSH_CACHE_DIR", cache_dir),
    );

    let cancelled = format!("DELETE /v2/{name}/app/blobs/uploads/");
    let mut open_before = 0;
    for (run, (signal, code)) in [("INT", 130), ("TERM", 143)].into_iter().enumerate() {
        let mut running = Running::start(&image, &dest, &[("OCIPUSH_CACHE_DIR", cache_dir)]);
        running.wait_until_uploading(&proxy, &format!("{name}/app"));
        running.signal(signal);
        // Well within the 10 s grace after which ocipush exits without cleaning up.
        let started = Instant::now();
        let (exit, stderr) = running.finish(Duration::from_secs(60));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(exit, Some(code), "SIG{signal}:\n{}", stderr.join("\n"));
        let error = the_error_line(&stderr);
        assert!(
            error.starts_with(&format!("ocipush: error: interrupted by SIG{signal}")),
            "{error}"
        );
        assert_tag_absent(&registry, &format!("{name}/app"), "1");
        let requests = proxy.requests();
        let deletes: Vec<_> = requests
            .iter()
            .filter(|r| r.starts_with(&cancelled))
            .collect();
        assert_eq!(
            deletes.len(),
            run + 1,
            "the upload session is cancelled: {requests:#?}"
        );
        // The line tells the truth about the session: the registry forgot it, or still holds it
        // and the line says so (distribution refuses a DELETE whose `_state` predates the PATCH
        // the signal cut short).
        let open = open_sessions(&own, &format!("{name}/app")).len();
        let left_open = if error.ends_with("its unfinished uploads were cancelled") {
            0
        } else if error
            .ends_with("1 unfinished upload could not be cancelled (the registry purges it later)")
        {
            1
        } else {
            panic!("{error}")
        };
        eprintln!("SIG{signal} mid-PATCH: {left_open} upload session left open");
        assert_eq!(open, open_before + left_open, "{error}");
        open_before = open;
        assert_cache_intact_or_empty(cache.path());
    }

    proxy.throttle.store(0, Ordering::SeqCst);
    let pushed = push_with(&image, &dest, "none", &[("OCIPUSH_CACHE_DIR", cache_dir)]);
    let digest = pushed.expect_success(&dest);
    copy_to_oci_layout_and_verify(
        &format!("{registry}/{name}/app:1"),
        &digest,
        &rootfs_layers(&image),
    );
    assert_cache_intact(cache.path());
}

/// After an interrupted first push nothing may be recorded yet; what is there must be whole.
fn assert_cache_intact_or_empty(dir: &Path) {
    if std::fs::read_dir(dir.join("kv")).is_ok_and(|mut d| d.next().is_some()) {
        assert_cache_intact(dir);
    }
}

/// The upload sessions `registry` holds open for `repository`: those its storage still has a
/// `startedat` file for (a commit or a DELETE removes it). The session URL cannot tell: the
/// registry answers 404 to any but its latest `_state`, cancelled or not.
fn open_sessions(registry: &Registry, repository: &str) -> Vec<String> {
    let uploads = registry
        .path("data/docker/registry/v2/repositories")
        .join(repository)
        .join("_uploads");
    let Ok(entries) = std::fs::read_dir(&uploads) else {
        return Vec::new();
    };
    entries
        .map(|entry| entry.unwrap().path())
        .filter(|session| session.join("startedat").exists())
        .map(|session| session.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A registry that stops answering mid-push: the fault proxy holds one request unanswered (a
/// layer's commit PUT, then in a second push the manifest PUT), and SIGINT / SIGTERM comes while
/// ocipush waits for it. ocipush exits with 130 / 143 within 3 s, not after the 10 s grace, with
/// one line and no tag; no upload session is left open in the registry (the held commit's is
/// cancelled by a DELETE); the cache is whole; a re-run without the fault completes and verifies.
#[test]
fn a_signal_ends_a_request_the_registry_never_answers() {
    let own = Registry::start();
    let registry = own.address.clone();
    let name = unique("held");
    let repository = format!("{name}/app");
    let image = format!("{name}:1");
    build_image(&image, None, &[("a.bin", &incompressible(2 << 20))]);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();

    for (held, signal, code) in [
        ("/blobs/uploads/", "INT", 130),
        ("/manifests/", "TERM", 143),
    ] {
        let proxy = HttpFaultProxy::start(
            &registry,
            Faults {
                hold: Some(("PUT".into(), held.into())),
                ..Faults::default()
            },
        );
        let dest = format!("{}/{repository}:1", proxy.address);
        let mut running = Running::start(&image, &dest, &[("OCIPUSH_CACHE_DIR", cache_dir)]);
        running.wait_until(&format!("a PUT to {held}"), || {
            proxy
                .seen()
                .iter()
                .any(|s| s.method == "PUT" && s.path.contains(held))
        });
        let error = running.stop_promptly(signal, code, &format!("PUT {held} was held"));
        assert!(
            error.ends_with("its unfinished uploads were cancelled"),
            "{error}"
        );
        assert_tag_absent(&registry, &repository, "1");
        assert_eq!(open_sessions(&own, &repository), Vec::<String>::new());
        if held == "/blobs/uploads/" {
            assert_eq!(cancelled(&proxy.seen()), 1, "the held commit's session");
        }
        assert_cache_intact_or_empty(cache.path());
    }

    let dest = format!("{registry}/{repository}:1");
    let pushed = push_with(&image, &dest, "none", &[("OCIPUSH_CACHE_DIR", cache_dir)]);
    let digest = pushed.expect_success(&dest);
    copy_to_oci_layout_and_verify(&dest, &digest, &rootfs_layers(&image));
    assert_cache_intact(cache.path());
}

/// A daemon that stalls in the middle of an export, while the layer's upload session is open:
/// SIGINT ends the wait for the export's next bytes, ocipush exits with 130 within 3 s and one
/// line, no tag. The upload session is cancelled; when the registry does not answer that
/// `DELETE` either, ocipush gives up on it after 2 s and its line says the upload could not be
/// cancelled (the registry still holds it). A re-run straight from the daemon completes.
#[test]
fn a_signal_ends_a_stalled_export() {
    let s = services();
    let own = Registry::start();
    let name = unique("stalled");
    let repository = format!("{name}/app");
    let image = format!("{name}:1");
    build_image(&image, None, &[("a.bin", &incompressible(4 << 20))]);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();

    for delete_answered in [true, false] {
        let daemon = FaultProxy::stalling(&s.docker_host, 3 << 20);
        let proxy = HttpFaultProxy::start(
            &own.address,
            Faults {
                hold: (!delete_answered).then(|| ("DELETE".into(), "/blobs/uploads/".into())),
                ..Faults::default()
            },
        );
        let envs = [
            ("OCIPUSH_CACHE_DIR", cache_dir),
            ("DOCKER_HOST", &daemon.docker_host()),
        ];
        let dest = format!("{}/{repository}:1", proxy.address);
        let mut running = Running::start(&image, &dest, &envs);
        let session_opened = |seen: &[Seen]| {
            seen.iter().any(|r| {
                r.method == "POST" && r.path.ends_with("/blobs/uploads/") && r.status == 202
            })
        };
        running.wait_until("the export stalling in an open upload", || {
            daemon.stalled.load(Ordering::SeqCst) && session_opened(&proxy.seen())
        });
        let error = running.stop_promptly("INT", 130, "the export stalled");
        assert_tag_absent(&own.address, &repository, "1");
        assert_eq!(cancelled(&proxy.seen()), 1, "{:#?}", proxy.seen());
        let open = open_sessions(&own, &repository);
        if delete_answered {
            assert!(
                error.ends_with("its unfinished uploads were cancelled"),
                "{error}"
            );
            assert_eq!(open, Vec::<String>::new());
        } else {
            assert!(
                error.ends_with(
                    "1 unfinished upload could not be cancelled (the registry purges it later)"
                ),
                "{error}"
            );
            assert_eq!(open.len(), 1, "the session whose DELETE went unanswered");
        }
    }

    let dest = format!("{}/{repository}:1", own.address);
    let pushed = push_with(&image, &dest, "none", &[("OCIPUSH_CACHE_DIR", cache_dir)]);
    let digest = pushed.expect_success(&dest);
    copy_to_oci_layout_and_verify(&dest, &digest, &rootfs_layers(&image));
}

/// How many upload sessions (`/v2/NAME/blobs/uploads/ID`) ocipush sent a `DELETE` for.
fn cancelled(seen: &[Seen]) -> usize {
    seen.iter()
        .filter(|s| s.method == "DELETE" && s.path.contains("/blobs/uploads/"))
        .map(|s| s.path.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// The registry is killed (SIGKILL, by pid) while a layer uploads: the push fails with one line
/// and writes no tag. The registry comes back on the same port and storage, and a re-run
/// completes and verifies through skopeo. (Whether the first run retries or not, it cannot
/// succeed while the registry is down; the re-run must.)
#[test]
fn a_registry_killed_mid_push_and_restarted_gets_the_image_on_a_rerun() {
    let mut registry = Registry::start();
    let name = unique("killed");
    let image = format!("{name}:1");
    build_image(&image, None, &[("big.bin", &incompressible(24 << 20))]);
    let proxy = SlowLink::start(&registry.address);
    proxy.throttle.store(2 << 20, Ordering::SeqCst);
    let dest = format!("{}/{name}/app:1", proxy.address);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();

    let mut running = Running::start(&image, &dest, &[("OCIPUSH_CACHE_DIR", cache_dir)]);
    running.wait_until_uploading(&proxy, &format!("{name}/app"));
    registry.kill();
    // Long enough for any retries with backoff to give up.
    let (exit, stderr) = running.finish(Duration::from_secs(240));
    assert_eq!(exit, Some(1), "{}", stderr.join("\n"));
    let error = the_error_line(&stderr);
    assert!(
        error.contains(&proxy.address),
        "names the registry: {error}"
    );

    assert!(
        registry.serve(),
        "the registry did not come back on its port"
    );
    assert_tag_absent(&registry.address, &format!("{name}/app"), "1");
    proxy.throttle.store(0, Ordering::SeqCst);
    let pushed = push_with(&image, &dest, "none", &[("OCIPUSH_CACHE_DIR", cache_dir)]);
    let digest = pushed.expect_success(&dest);
    copy_to_oci_layout_and_verify(
        &format!("{}/{name}/app:1", registry.address),
        &digest,
        &rootfs_layers(&image),
    );
    assert_cache_intact(cache.path());
}
