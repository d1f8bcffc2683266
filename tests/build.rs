//! Integration tests for `ocipush build`: the real dockerd builds (classic builder, FROM
//! scratch) from a context with a `.dockerignore` and a build argument, and `--push` publishes
//! the result to the real registry, read back by skopeo and curl.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::*;

/// `ocipush build CONTEXT ARGS… --progress PROGRESS` with the test daemon.
fn build(context: &Path, progress: &str, args: &[&str]) -> Pushed {
    let mut c = Command::new(ocipush_bin());
    c.arg("build")
        .arg(context)
        .args(args)
        .args(["--progress", progress]);
    run_ocipush(c, NO_ENV, None)
}

fn write(dir: &Path, rel: &str, data: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// The paths in a gzipped layer blob.
fn layer_paths(blob: &[u8]) -> Vec<String> {
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(blob)
        .read_to_end(&mut tar)
        .unwrap();
    let mut paths = Vec::new();
    let mut at = 0;
    // ustar headers: the name is the first 100 bytes, the size octal at 124..136.
    while at + 512 <= tar.len() && tar[at] != 0 {
        let header = &tar[at..at + 512];
        let name = String::from_utf8_lossy(&header[..100])
            .trim_end_matches('\0')
            .to_string();
        let prefix = String::from_utf8_lossy(&header[345..500])
            .trim_end_matches('\0')
            .to_string();
        let size_text = String::from_utf8_lossy(&header[124..136]);
        let size = u64::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .unwrap_or(0);
        paths.push(if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        });
        at += 512 + size.div_ceil(512) as usize * 512;
    }
    paths
}

#[test]
fn builds_with_dockerignore_and_build_args_then_pushes() {
    let s = services();
    let name = unique("build");
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    write(
        c,
        "Dockerfile",
        "FROM scratch\n\
         ARG GREETING=unset\n\
         COPY . /app/\n\
         ENV GREETING=$GREETING\n\
         LABEL org.example.greeting=$GREETING org.opencontainers.image.source=https://example.com/built\n",
    );
    write(
        c,
        ".dockerignore",
        "# the build tests' ignore file\nsecret*\n**/*.log\n!keep.log\ncache/\n",
    );
    write(c, "app.txt", "the app\n");
    write(c, "secret.txt", "do not send\n");
    write(c, "keep.log", "kept by an exception\n");
    write(c, "sub/debug.log", "ignored at any depth\n");
    write(c, "sub/data.txt", "kept\n");
    write(c, "cache/blob", "a whole directory ignored\n");

    let tag = format!("{name}:1.0");
    let repo = format!("ocipush-test/{name}");
    let dest = format!("{}/{repo}:built", s.registry);
    let pushed = build(
        c,
        "json",
        &["-t", &tag, "--build-arg", "GREETING=hello", "--push", &dest],
    );
    let digest = pushed.expect_success(&dest);

    // The build's output came through as progress, then the push.
    let events: Vec<Value> = pushed
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "build-output"
                && e["line"].as_str().unwrap_or("").contains("COPY")),
        "{}",
        pushed.stderr
    );
    let id = image_id(&tag);
    let built: Vec<&Value> = events.iter().filter(|e| e["event"] == "built").collect();
    assert_eq!(built.len(), 1, "{}", pushed.stderr);
    assert_eq!(built[0]["id"], id.as_str());
    assert_eq!(built[0]["tag"], tag.as_str());

    // The registry holds the daemon's image: its config, with the build argument applied.
    let m = skopeo_raw_manifest(&dest);
    assert_eq!(m["config"]["digest"], id.as_str(), "{m}");
    assert_eq!(
        m["annotations"]["org.opencontainers.image.source"],
        "https://example.com/built"
    );
    let (_, config) = registry_get(&s.registry, &repo, &format!("blobs/{id}"), None);
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["config"]["Labels"]["org.example.greeting"], "hello");
    assert!(
        config["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "GREETING=hello"),
        "{config}"
    );

    // What .dockerignore excludes never reached the daemon, so it is not in the layer.
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{m}");
    let (status, blob) = registry_get(
        &s.registry,
        &repo,
        &format!("blobs/{}", layers[0]["digest"].as_str().unwrap()),
        None,
    );
    assert_eq!(status, 200);
    let paths: Vec<String> = layer_paths(&blob)
        .into_iter()
        .map(|p| p.trim_end_matches('/').to_string())
        .collect();
    for kept in [
        "app/app.txt",
        "app/keep.log",
        "app/sub/data.txt",
        "app/Dockerfile",
        "app/.dockerignore",
    ] {
        assert!(paths.iter().any(|p| p == kept), "{kept} missing: {paths:?}");
    }
    for ignored in ["secret.txt", "debug.log", "cache"] {
        assert!(
            !paths.iter().any(|p| p.contains(ignored)),
            "{ignored} was sent: {paths:?}"
        );
    }
    // skopeo copies it, checking every digest.
    let layout = tempfile::tempdir().unwrap();
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{dest}"),
        &format!("oci:{}:x", layout.path().display()),
    ]));
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
}

#[test]
fn build_without_push_prints_the_image_id_and_failures_are_one_line() {
    let name = unique("build-only");
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM scratch\nCOPY a.txt /a.txt\n",
    );
    write(ctx.path(), "a.txt", "a\n");
    let tag = format!("{name}:1.0");
    let out = build(ctx.path(), "none", &["-t", &tag]);
    assert!(out.output.status.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), image_id(&tag));

    // A Dockerfile that fails: the daemon's message, one line, no image.
    let bad = tempfile::tempdir().unwrap();
    write(
        bad.path(),
        "Dockerfile",
        "FROM scratch\nCOPY missing.txt /m\n",
    );
    let line = build(bad.path(), "none", &["-t", &format!("{name}-bad:1")]).expect_failure();
    assert!(
        line.contains("could not build") && line.contains("missing.txt"),
        "{line}"
    );

    // A bad destination is refused before the build starts.
    let line = build(
        ctx.path(),
        "none",
        &[
            "-t",
            &format!("{name}-never:1"),
            "--push",
            "127.0.0.1:5000/Upper/x:1",
        ],
    )
    .expect_failure();
    assert!(line.contains("Upper"), "{line}");
    let out = run(&mut docker(&[
        "image",
        "inspect",
        &format!("{name}-never:1"),
    ]));
    assert!(!out.status.success(), "the image was built anyway");

    // A .dockerignore Docker would refuse.
    write(ctx.path(), ".dockerignore", "ok\n!\n");
    let line = build(ctx.path(), "none", &["-t", &format!("{name}-ignore:1")]).expect_failure();
    assert!(line.contains(".dockerignore line 2"), "{line}");
}
