//! Shared helpers for the integration tests: the services started by `scripts/services.sh`,
//! running commands with a time limit, building and loading images in the test daemon,
//! a hand-written `docker save` tarball builder, and registry inspection. Every server a test
//! starts for itself lives in a module here: registries with TLS or authentication and their
//! token issuer (`registry`, `token`), proxies in front of a registry (`faults`, `slow_link`) or
//! the daemon (`daemon_proxy`, `tls_daemon`: the daemon over TLS), listeners that must not be
//! contacted (`tripwires`), and a HOME of a test's own (`home`).
#![allow(dead_code)]

pub mod daemon_proxy;
pub mod faults;
pub mod home;
pub mod published;
pub mod registry;
pub mod slow_link;
pub mod tls_daemon;
pub mod token;
pub mod tripwires;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long any single external command may take before the test fails (not hangs).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// The services started by `scripts/services.sh start DIR` (see `DIR/env`).
#[derive(Clone, Debug)]
pub struct Services {
    /// `unix:///…/docker.sock`
    pub docker_host: String,
    /// `127.0.0.1:PORT`, a writable registry.
    pub registry: String,
    /// `127.0.0.1:PORT`, a registry in read-only maintenance mode.
    pub readonly_registry: String,
}

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => panic!(
            "{name} is not set: these tests need a dockerd and registries; run ./scripts/test.sh \
             (or `scripts/services.sh start DIR && . DIR/env` first)"
        ),
    }
}

pub fn services() -> Services {
    Services {
        docker_host: required_env("DOCKER_HOST"),
        registry: required_env("OCIPUSH_TEST_REGISTRY"),
        readonly_registry: required_env("OCIPUSH_TEST_READONLY_REGISTRY"),
    }
}

/// A name unique to this test, this process and this moment: lower-case, usable as a docker
/// image name, a registry repository component and a tag.
pub fn unique(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}-{}-{:x}-{}",
        test.to_lowercase().replace('_', "-"),
        std::process::id(),
        nanos % 0xffff_ffff,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

/// Runs `cmd` (stdin closed, output captured), failing the test if it outlives COMMAND_TIMEOUT.
pub fn run(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, COMMAND_TIMEOUT)
}

pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run_feeding(cmd, None, timeout)
}

/// Runs `cmd` with `input` on its stdin, like `run`.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    run_feeding(cmd, Some(input), COMMAND_TIMEOUT)
}

fn run_feeding(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // Small inputs (a password): written whole, then stdin closes.
        stdin
            .write_all(input)
            .unwrap_or_else(|e| panic!("writing to {shown}: {e}"));
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {shown}: {e}")),
        Err(_) => {
            // Only this exact child, by pid.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("{shown} did not finish within {timeout:?}; killed pid {pid}");
        }
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, panics unless it succeeds, returns its trimmed stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(out.status.success(), "{shown} failed\n{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a tool (openssl, htpasswd) in `dir`, failing the test with its output if it fails.
pub fn tool(dir: &Path, program: &str, args: &[&str]) -> Vec<u8> {
    let out = run(Command::new(program).args(args).current_dir(dir));
    assert!(
        out.status.success(),
        "{program} {args:?} failed\n{}",
        describe(&out)
    );
    out.stdout
}

pub fn docker(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(args);
    c.env("DOCKER_HOST", services().docker_host);
    c
}

pub fn docker_ok(args: &[&str]) -> String {
    run_ok(&mut docker(args))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf
}

// ---------------------------------------------------------------------------------------------
// Images in the daemon
// ---------------------------------------------------------------------------------------------

/// Builds `tag` in the test daemon from a context dir that already holds a Dockerfile.
/// Without the build cache: tests run in parallel, and one that removes an image (to pull it
/// back) can remove the cached step another build is about to use ("unable to find image").
pub fn docker_build(tag: &str, context: &Path) {
    let mut c = docker(&["build", "--no-cache", "-q", "-t", tag, "."]);
    c.current_dir(context).env("DOCKER_BUILDKIT", "0");
    run_ok(&mut c);
}

/// Builds `FROM base` (or scratch) plus one COPY per file (name, bytes), as `tag`.
pub fn build_image(tag: &str, base: Option<&str>, files: &[(&str, &[u8])]) {
    let dir = tempfile::tempdir().unwrap();
    let mut dockerfile = format!("FROM {}\n", base.unwrap_or("scratch"));
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        dockerfile += &format!("COPY {name} /{name}\n");
    }
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    docker_build(tag, dir.path());
}

pub fn image_id(image: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.Id}}", image])
}

pub fn rootfs_layers(image: &str) -> Vec<String> {
    let json = docker_ok(&["inspect", "-f", "{{json .RootFS.Layers}}", image]);
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("RootFS.Layers of {image}: {e}: {json}"))
}

/// Removes the image (every tag of it) from the daemon; it must be used by no other test.
pub fn remove_image(id: &str) {
    docker_ok(&["rmi", "-f", id]);
    let out = run(&mut docker(&["image", "inspect", id]));
    assert!(
        !out.status.success(),
        "{id} is still in the daemon after docker rmi -f"
    );
}

// ---------------------------------------------------------------------------------------------
// ocipush itself
// ---------------------------------------------------------------------------------------------

pub fn ocipush_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ocipush"))
}

pub struct Pushed {
    pub output: Output,
    pub stdout: String,
    pub stderr: String,
    /// Trimmed content of --digest-file, if the file exists.
    pub digest_file: Option<String>,
}

impl Pushed {
    pub fn describe(&self) -> String {
        describe(&self.output)
    }

    /// Asserts success and returns the manifest digest, checked against stdout (`DEST@DIGEST`,
    /// DEST canonical) and --digest-file.
    pub fn expect_success(&self, dest: &str) -> String {
        assert!(
            self.output.status.success(),
            "ocipush push to {dest} failed\n{}",
            self.describe()
        );
        let digest = self
            .digest_file
            .clone()
            .unwrap_or_else(|| panic!("no --digest-file written\n{}", self.describe()));
        assert!(
            is_sha256_digest(&digest),
            "--digest-file holds {digest:?}, not sha256:<64 hex>"
        );
        assert_eq!(
            self.stdout.trim(),
            format!("{}@{digest}", canonical(dest)),
            "stdout must be DEST@DIGEST, matching --digest-file\n{}",
            self.describe()
        );
        published::parse_published(dest, &digest);
        digest
    }

    /// Asserts failure with exactly one stderr line `ocipush: error: …`; returns that line.
    pub fn expect_failure(&self) -> String {
        assert!(
            !self.output.status.success(),
            "ocipush should have failed\n{}",
            self.describe()
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one stderr line on failure\n{}",
            self.describe()
        );
        assert!(
            lines[0].starts_with("ocipush: error:"),
            "stderr line must start with `ocipush: error:`\n{}",
            self.describe()
        );
        assert!(
            self.stdout.trim().is_empty(),
            "nothing may be printed on stdout on failure\n{}",
            self.describe()
        );
        assert!(
            self.digest_file.is_none(),
            "--digest-file must not be written on failure\n{}",
            self.describe()
        );
        // Shown with `--nocapture`.
        eprintln!("{}", lines[0]);
        lines[0].to_string()
    }
}

/// A destination as ocipush prints it: without `docker://`, with its tag (`latest` by default).
pub fn canonical(dest: &str) -> String {
    if let Some(layout) = dest.strip_prefix("oci:") {
        return match layout.contains(':') {
            true => dest.to_string(),
            false => format!("{dest}:latest"),
        };
    }
    let dest = dest.strip_prefix("docker://").unwrap_or(dest);
    let last = dest.rsplit('/').next().unwrap_or(dest);
    match last.contains(':') {
        true => dest.to_string(),
        false => format!("{dest}:latest"),
    }
}

pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `ocipush push SOURCE DEST --digest-file … --progress PROGRESS`, with `envs` overriding the
/// environment (DOCKER_HOST comes from the services unless overridden).
pub fn push_with(source: &str, dest: &str, progress: &str, envs: &[(&str, &str)]) -> Pushed {
    push_args(source, dest, progress, &[], envs)
}

/// Like `push_with`, with more command-line arguments.
pub fn push_args(
    source: &str,
    dest: &str,
    progress: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Pushed {
    push_input(source, dest, progress, args, envs, None)
}

/// Like `push_args`, with `input` written to ocipush's stdin (for `--password-stdin`).
pub fn push_input<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    source: &str,
    dest: &str,
    progress: &str,
    args: &[&str],
    envs: &[(K, V)],
    input: Option<&str>,
) -> Pushed {
    let mut c = Command::new(ocipush_bin());
    c.args(["push", source, dest, "--progress", progress])
        .args(args);
    run_ocipush(c, envs, input)
}

/// Runs `command` (an ocipush command line) with `--digest-file` added, the test daemon
/// (DOCKER_HOST from the services unless the command or `envs` says otherwise), no OCIPUSH_LOG of the caller's,
/// `envs` and `input` on stdin; collects what it printed and the digest file.
pub fn run_ocipush<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    mut command: Command,
    envs: &[(K, V)],
    input: Option<&str>,
) -> Pushed {
    let dir = tempfile::tempdir().unwrap();
    let digest_path = dir.path().join("digest");
    // The test daemon, unless the command already sets or removes DOCKER_HOST (support/home.rs).
    if !command.get_envs().any(|(key, _)| key == "DOCKER_HOST") {
        command.env("DOCKER_HOST", services().docker_host);
    }
    command
        .arg("--digest-file")
        .arg(&digest_path)
        .env_remove("OCIPUSH_LOG");
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = match input {
        Some(input) => run_with_input(&mut command, input.as_bytes()),
        None => run(&mut command),
    };
    let digest_file = std::fs::read_to_string(&digest_path)
        .ok()
        .map(|s| s.trim().to_string());
    Pushed {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        output,
        digest_file,
    }
}

/// No variables to add, as `envs` of `run_ocipush` or `push_input`.
pub const NO_ENV: &[(&str, &str)] = &[];

pub fn push(source: &str, dest: &str) -> Pushed {
    push_with(source, dest, "none", &[])
}

// ---------------------------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------------------------

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// `skopeo inspect --raw` of `docker://REF`, parsed.
pub fn skopeo_raw_manifest(reference: &str) -> Value {
    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("manifest of {reference}: {e}: {raw}"))
}

/// GET http://REGISTRY/v2/REPO/PATH with curl; returns (status, body).
pub fn registry_get(
    registry: &str,
    repo: &str,
    path: &str,
    accept: Option<&str>,
) -> (u16, Vec<u8>) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-L", "--max-time", "60", "-w", "\n%{http_code}"]);
    if let Some(a) = accept {
        c.args(["-H", &format!("Accept: {a}")]);
    }
    c.arg(format!("http://{registry}/v2/{repo}/{path}"));
    let out = run(&mut c);
    assert!(out.status.success(), "curl failed\n{}", describe(&out));
    let body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap();
    let status = std::str::from_utf8(&body[nl + 1..])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (status, body[..nl].to_vec())
}

/// GET http://REGISTRY/v2/REPO/PATH, which must answer 200; returns the body.
pub fn registry_get_ok(registry: &str, repo: &str, path: &str, accept: Option<&str>) -> Vec<u8> {
    let (status, body) = registry_get(registry, repo, path, accept);
    assert_eq!(
        status,
        200,
        "GET {registry}/v2/{repo}/{path}: {}",
        String::from_utf8_lossy(&body)
    );
    body
}

/// The status of HEAD http://REGISTRY/v2/REPO/blobs/DIGEST: 404 when the repository does not
/// hold the blob.
pub fn blob_status(registry: &str, repo: &str, digest: &str) -> u16 {
    let out = run(Command::new("curl").args([
        "-sS",
        "-I",
        "-o",
        "/dev/null",
        "--max-time",
        "60",
        "-w",
        "%{http_code}",
        &format!("http://{registry}/v2/{repo}/blobs/{digest}"),
    ]));
    assert!(out.status.success(), "curl failed\n{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The tags of REPO in REGISTRY (empty if the repository does not exist).
pub fn tags(registry: &str, repo: &str) -> Vec<String> {
    let (status, body) = registry_get(registry, repo, "tags/list", None);
    match status {
        404 => vec![],
        200 => {
            let v: Value = serde_json::from_slice(&body).unwrap();
            v["tags"]
                .as_array()
                .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        }
        other => panic!(
            "tags/list of {registry}/{repo}: HTTP {other}: {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

pub fn assert_tag_absent(registry: &str, repo: &str, tag: &str) {
    let t = tags(registry, repo);
    assert!(
        !t.iter().any(|x| x == tag),
        "tag {tag} exists in {registry}/{repo} after a failed push: {t:?}"
    );
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{registry}/{repo}:{tag}"),
    ]));
    assert!(
        !out.status.success(),
        "skopeo finds {registry}/{repo}:{tag} after a failed push\n{}",
        describe(&out)
    );
}

/// Checks the manifest at REGISTRY/REPO:TAG against the image: OCI media types, config digest ==
/// image ID, one gzip layer per rootfs layer, manifest digest == `digest`, and that the blobs the
/// manifest names exist with the sizes it states. Returns the manifest.
pub fn check_pushed_manifest(
    registry: &str,
    repo: &str,
    tag: &str,
    digest: &str,
    image_id: &str,
    diff_ids: &[String],
) -> Value {
    let reference = format!("{registry}/{repo}:{tag}");
    let m = skopeo_raw_manifest(&reference);
    assert_eq!(m["schemaVersion"], 2, "{reference}: {m}");
    assert_eq!(m["mediaType"], OCI_MANIFEST, "{reference}: {m}");
    assert_eq!(m["config"]["mediaType"], OCI_CONFIG, "{reference}: {m}");
    assert_eq!(
        m["config"]["digest"], image_id,
        "{reference}: config digest must be the image ID: {m}"
    );
    let layers = m["layers"].as_array().expect("layers array");
    assert_eq!(
        layers.len(),
        diff_ids.len(),
        "{reference}: one manifest layer per rootfs layer: {m}"
    );
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["mediaType"], OCI_LAYER_GZIP, "{reference} layer {i}: {m}");
        assert!(
            is_sha256_digest(l["digest"].as_str().unwrap_or("")),
            "{reference} layer {i}: {m}"
        );
    }

    // The manifest bytes the registry serves hash to the digest ocipush reported.
    let (status, raw) = registry_get(
        registry,
        repo,
        &format!("manifests/{tag}"),
        Some(OCI_MANIFEST),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&raw)),
        digest,
        "manifest bytes served for {reference} do not hash to the reported digest"
    );

    // The config blob is byte-for-byte the daemon's config: it hashes to the image ID.
    let (status, config) = registry_get(registry, repo, &format!("blobs/{image_id}"), None);
    assert_eq!(status, 200, "config blob {image_id}");
    assert_eq!(format!("sha256:{}", sha256_hex(&config)), image_id);
    assert_eq!(m["config"]["size"].as_u64(), Some(config.len() as u64));
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(diff_ids),
        "config rootfs.diff_ids vs docker inspect RootFS.Layers"
    );
    m
}

/// `check_pushed_manifest` of `reference` (`REGISTRY/REPO:TAG`), then
/// `copy_to_oci_layout_and_verify`: the registry holds the image as pushed, and every blob reads
/// back as its digest says. Returns the manifest.
pub fn verify_pushed(reference: &str, digest: &str, image_id: &str, diff_ids: &[String]) -> Value {
    let (registry, repo_tag) = reference.split_once('/').expect("REGISTRY/REPO:TAG");
    let (repo, tag) = repo_tag.rsplit_once(':').expect("REGISTRY/REPO:TAG");
    let manifest = check_pushed_manifest(registry, repo, tag, digest, image_id, diff_ids);
    copy_to_oci_layout_and_verify(reference, digest, diff_ids);
    manifest
}

/// `skopeo copy` the pushed image into an OCI layout (skopeo verifies every blob digest), then
/// check each layer blob: its size matches the manifest and, gunzipped, it hashes to its diff ID.
pub fn copy_to_oci_layout_and_verify(reference: &str, manifest_digest: &str, diff_ids: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:x", layout.display()),
    ]));
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"], manifest_digest,
        "skopeo copied a different manifest (it had to convert it?): {index}"
    );
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(manifest_digest)).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (i, (layer, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        let path = blob(layer["digest"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            Some(bytes.len() as u64),
            layer["size"].as_u64(),
            "layer {i}: size in manifest vs blob"
        );
        // Decoded by the media type the manifest gives, which must match the bytes.
        let tar = match layer["mediaType"].as_str().unwrap_or("") {
            // Docker's gzip type, as the containerd store's own manifests keep it.
            OCI_LAYER_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                assert_eq!(&bytes[..2], &[0x1f, 0x8b], "layer {i} is not gzip");
                let mut tar = Vec::new();
                flate2::read::MultiGzDecoder::new(&bytes[..])
                    .read_to_end(&mut tar)
                    .unwrap_or_else(|e| panic!("layer {i}: gunzip: {e}"));
                tar
            }
            OCI_LAYER_ZSTD => {
                zstd::decode_all(&bytes[..]).unwrap_or_else(|e| panic!("layer {i}: zstd: {e}"))
            }
            OCI_LAYER => bytes,
            other => panic!("layer {i} has media type {other:?}"),
        };
        assert_eq!(
            &format!("sha256:{}", sha256_hex(&tar)),
            diff_id,
            "layer {i}: the uncompressed blob must hash to the diff ID"
        );
    }
}

/// Removes the image from the daemon, pulls it back from the registry, and checks the ID.
pub fn pull_back_and_compare(original_id: &str, reference: &str) {
    remove_image(original_id);
    docker_ok(&["pull", "-q", reference]);
    assert_eq!(
        image_id(reference),
        original_id,
        "docker pull {reference} gives another image ID"
    );
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

// ---------------------------------------------------------------------------------------------
// Hand-made tarballs (ustar) and `docker save` archives
// ---------------------------------------------------------------------------------------------

pub const MTIME: u64 = 1_700_000_000;

#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
}

fn octal(field: &mut [u8], value: u64) {
    // width-1 zero-padded octal digits, then NUL
    let s = format!("{:0width$o}", value, width = field.len() - 1);
    assert!(
        s.len() < field.len(),
        "value {value} too large for tar field"
    );
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

impl Tar {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, typeflag: u8, link: &str) {
        let mut h = [0u8; 512];
        assert!(name.len() <= 100, "tar name too long: {name}");
        assert!(link.len() <= 100, "tar link name too long: {link}");
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], mode as u64);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], MTIME);
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.buf.extend_from_slice(&h);
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        let name = if name.ends_with('/') {
            name.to_string()
        } else {
            format!("{name}/")
        };
        self.header(&name, 0o755, 0, b'5', "");
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.header(name, mode, data.len() as u64, b'0', "");
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(name, 0o777, 0, b'2', target);
        self
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(name, 0o644, 0, b'1', target);
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

/// A classic (Docker <= 24) `docker save` archive for one image made of `layers` (layer tars),
/// tagged `repo_tag` (`name:tag`). Returns (archive bytes, image ID, diff IDs).
pub fn docker_save_archive(repo_tag: &str, layers: &[Vec<u8>]) -> (Vec<u8>, String, Vec<String>) {
    docker_save_archive_with(repo_tag, layers, |_| {})
}

/// Like `docker_save_archive`, with the image config changed by `edit` first (e.g. another
/// architecture).
pub fn docker_save_archive_with(
    repo_tag: &str,
    layers: &[Vec<u8>],
    edit: impl FnOnce(&mut Value),
) -> (Vec<u8>, String, Vec<String>) {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    let history: Vec<Value> = (0..layers.len())
        .map(|i| {
            serde_json::json!({
                "created": "2023-11-14T22:13:20Z",
                "created_by": format!("ocipush test layer {}", i + 1),
            })
        })
        .collect();
    let mut config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Env": ["PATH=/bin", "OCIPUSH_TEST=hand-made"],
            "Labels": {"org.example.made-by": "tests/support/mod.rs"},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    edit(&mut config);
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let image_hex = sha256_hex(&config_bytes);
    let image_id = format!("sha256:{image_hex}");

    // v1 layer IDs: a chain hash, like docker's (any 64-hex name works for `docker load`).
    let mut v1_ids = Vec::new();
    let mut parent = String::new();
    for d in &diff_ids {
        let id = sha256_hex(format!("{parent} {d}").as_bytes());
        v1_ids.push(id.clone());
        parent = id;
    }

    let mut tar = Tar::new();
    for (i, (layer, id)) in layers.iter().zip(&v1_ids).enumerate() {
        let mut v1 = serde_json::json!({
            "id": id,
            "created": "2023-11-14T22:13:20Z",
            "container_config": {"Cmd": null},
            "os": "linux",
        });
        if i > 0 {
            v1["parent"] = Value::String(v1_ids[i - 1].clone());
        }
        tar.dir(id)
            .file(&format!("{id}/VERSION"), 0o644, b"1.0")
            .file(
                &format!("{id}/json"),
                0o644,
                &serde_json::to_vec(&v1).unwrap(),
            )
            .file(&format!("{id}/layer.tar"), 0o644, layer);
    }
    tar.file(&format!("{image_hex}.json"), 0o644, &config_bytes);
    let layer_paths: Vec<String> = v1_ids.iter().map(|id| format!("{id}/layer.tar")).collect();
    let manifest = serde_json::json!([{
        "Config": format!("{image_hex}.json"),
        "RepoTags": [repo_tag],
        "Layers": layer_paths,
    }]);
    tar.file(
        "manifest.json",
        0o644,
        &serde_json::to_vec(&manifest).unwrap(),
    );
    let (name, tag) = repo_tag.rsplit_once(':').unwrap();
    let repositories = serde_json::json!({ name: { tag: v1_ids.last().unwrap() } });
    tar.file(
        "repositories",
        0o644,
        &serde_json::to_vec(&repositories).unwrap(),
    );
    (tar.finish(), image_id, diff_ids)
}

/// `docker load` an archive into the test daemon.
pub fn docker_load(archive: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    std::fs::write(&path, archive).unwrap();
    docker_ok(&["load", "-q", "-i", path.to_str().unwrap()]);
}

/// An OCI layer: a tar with one file, gzipped. Returns (blob, diff ID).
pub fn gzip_layer(name: &str, content: &[u8]) -> (Vec<u8>, String) {
    let tar = Tar::new().file(name, 0o644, content).finish();
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}
