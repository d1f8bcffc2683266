//! Evidence from the audited core against the real registry of scripts/services.sh
//! (distribution 2.8, which has no referrers API, so the referrers tag schema is used):
//! `--provenance` (an in-toto SLSA provenance artifact whose subject is the pushed manifest and
//! which names the guest's digest), `--sign-key` (cosign's signature manifest, checked with
//! `openssl dgst -verify`, the outside verifier: Debian's skopeo is built without sigstore
//! verification), and `ocipush verify` on signed, unsigned, wrong-key and tampered images, in
//! the registry and in an `oci:` layout.
//! Keys are made by openssl in each test.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use serde_json::Value;
use support::faults::{Faults, HttpFaultProxy};
use support::*;

const IN_TOTO: &str = "application/vnd.in-toto+json";
const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE: &str = "dev.cosignproject.cosign/signature";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A key pair made by openssl in `dir`: (private key path, public key path).
fn key_pair(dir: &Path, name: &str, private_args: &[&str]) -> (PathBuf, PathBuf) {
    let private = format!("{name}.pem");
    let public = format!("{name}.pub.pem");
    let mut args = private_args.to_vec();
    args.extend(["-out", &private]);
    tool(dir, "openssl", &args);
    tool(
        dir,
        "openssl",
        &["pkey", "-in", &private, "-pubout", "-out", &public],
    );
    (dir.join(private), dir.join(public))
}

/// A SEC1 key, as `openssl ecparam -genkey` writes it (EC PARAMETERS, then EC PRIVATE KEY).
fn sec1_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    key_pair(dir, name, &["ecparam", "-name", "prime256v1", "-genkey"])
}

/// A PKCS#8 key (PRIVATE KEY).
fn pkcs8_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    key_pair(
        dir,
        name,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    )
}

/// The digest of the guest this ocipush embeds (`ocipush guest info`).
fn embedded_guest() -> String {
    let info = run_ok(Command::new(ocipush_bin()).args(["guest", "info"]));
    info.lines()
        .find_map(|l| l.strip_prefix("digest:"))
        .unwrap()
        .trim()
        .to_string()
}

/// A small image of its own in the test daemon.
fn image(test: &str) -> String {
    let tag = format!("{}:1", unique(test));
    build_image(&tag, None, &[("file.bin", &random_bytes(3000))]);
    tag
}

/// A blob, checked against its digest.
fn blob(registry: &str, repo: &str, digest: &str) -> Vec<u8> {
    let body = registry_get_ok(registry, repo, &format!("blobs/{digest}"), None);
    assert_eq!(format!("sha256:{}", sha256_hex(&body)), digest);
    body
}

fn manifest(registry: &str, repo: &str, reference: &str, accept: &str) -> Vec<u8> {
    registry_get_ok(
        registry,
        repo,
        &format!("manifests/{reference}"),
        Some(accept),
    )
}

/// Uploads a blob with curl (POST, then a monolithic PUT).
fn put_blob(registry: &str, repo: &str, data: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(data));
    let out = run(Command::new("curl").args([
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        &format!("http://{registry}/v2/{repo}/blobs/uploads/"),
    ]));
    let headers = String::from_utf8_lossy(&out.stdout).into_owned();
    let location = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .unwrap_or_else(|| panic!("no upload location in\n{headers}"))
        .trim()
        .to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("http://{registry}{location}")
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    curl_put(
        &format!("{location}{separator}digest={digest}"),
        "application/octet-stream",
        data,
    );
    digest
}

fn put_manifest(registry: &str, repo: &str, tag: &str, media_type: &str, body: &[u8]) {
    curl_put(
        &format!("http://{registry}/v2/{repo}/manifests/{tag}"),
        media_type,
        body,
    );
}

/// PUT `body` to `url` with curl, which must succeed.
fn curl_put(url: &str, content_type: &str, body: &[u8]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    run_ok(Command::new("curl").args([
        "-sS",
        "-f",
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {content_type}"),
        "--data-binary",
        &format!("@{}", file.path().display()),
        url,
    ]));
}

/// `ocipush verify DEST --key KEY`.
fn verify(dest: &str, key: &Path) -> std::process::Output {
    run(Command::new(ocipush_bin())
        .args(["verify", dest, "--key"])
        .arg(key)
        .env_remove("OCIPUSH_LOG"))
}

/// A verify that fails: exit 1, one line on stderr, nothing on stdout; returns the line.
fn verify_fails(dest: &str, key: &Path) -> String {
    let out = verify(dest, key);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("ocipush: error: "), "{stderr}");
    stderr
}

/// `ocipush verify DEST` passes with `public`, naming the image and the provenance by the
/// embedded guest signed by that key, and fails with `other_public`.
fn verifies_only_with(dest: &str, digest: &str, public: &Path, other_public: &Path) {
    let out = verify(dest, public);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("verified {dest}@{digest}: signed by that key")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "provenance: pushed by guest {} (ocipush:core@0.11.0), signed by that key",
            embedded_guest()
        )),
        "{stdout}"
    );
    let line = verify_fails(dest, other_public);
    assert!(line.contains("has no signature by the key in"), "{line}");
}

/// Reads back what `tag` names as every push's result is read back (support/published.rs):
/// parsed with oci-spec, with each manifest an index lists and each config, every digest
/// checked. Evidence is no push result of its own, so its tests call this.
fn read_back(registry: &str, repo: &str, tag: &str, accept: &str) -> Vec<u8> {
    let body = manifest(registry, repo, tag, accept);
    let digest = format!("sha256:{}", sha256_hex(&body));
    published::parse_published(&format!("{registry}/{repo}:{tag}"), &digest);
    body
}

/// The provenance artifacts the referrers tag schema lists for `digest`, as (artifact
/// manifest, statement-or-envelope layer bytes).
fn referrers(registry: &str, repo: &str, digest: &str) -> Vec<(ImageManifest, Vec<u8>)> {
    let tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    let index = read_back(registry, repo, &tag, OCI_INDEX);
    let index: ImageIndex = serde_json::from_slice(&index).unwrap();
    index
        .manifests()
        .iter()
        .map(|entry| {
            assert_eq!(
                entry.artifact_type().as_ref(),
                Some(&MediaType::Other(IN_TOTO.into()))
            );
            let body = manifest(
                registry,
                repo,
                entry.digest().as_ref(),
                "application/vnd.oci.image.manifest.v1+json",
            );
            let artifact: ImageManifest = serde_json::from_slice(&body).unwrap();
            let layer = blob(registry, repo, artifact.layers()[0].digest().as_ref());
            (artifact, layer)
        })
        .collect()
}

#[test]
fn provenance_refers_to_the_pushed_digest_under_the_tag_schema_and_names_the_guest() {
    let registry = services().registry;
    let source = image("prov");
    let repo = format!("evidence/{}", unique("prov"));
    let dest = format!("{registry}/{repo}:1");
    let digest = push_args(&source, &dest, "none", &["--provenance"], NO_ENV).expect_success(&dest);

    let found = referrers(&registry, &repo, &digest);
    assert_eq!(found.len(), 1);
    let (artifact, layer) = &found[0];
    assert_eq!(
        artifact.artifact_type().as_ref(),
        Some(&MediaType::Other(IN_TOTO.into()))
    );
    assert_eq!(artifact.config().media_type(), &MediaType::EmptyJSON);
    assert_eq!(artifact.config().media_type().to_string(), EMPTY);
    assert_eq!(artifact.config().size(), 2);
    let subject = artifact.subject().as_ref().expect("a subject");
    assert_eq!(subject.digest().to_string(), digest);
    assert_eq!(subject.media_type(), &MediaType::ImageManifest);
    assert_eq!(
        artifact.layers()[0].media_type(),
        &MediaType::Other(IN_TOTO.into())
    );
    let statement: Value = serde_json::from_slice(layer).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );
    assert_eq!(statement["subject"][0]["name"], dest);
    let guest = embedded_guest();
    let builder = &statement["predicate"]["runDetails"]["builder"];
    assert!(
        builder["id"].as_str().unwrap().contains(&guest),
        "{builder}"
    );
    assert_eq!(builder["version"]["guest"], guest);
    assert_eq!(builder["version"]["ocipush:core"], "0.11.0");
    let dependency = &statement["predicate"]["buildDefinition"]["resolvedDependencies"][0];
    assert_eq!(dependency["uri"], format!("docker-daemon:{source}"));
    assert_eq!(dependency["annotations"]["imageId"], image_id(&source));
    assert_eq!(
        dependency["annotations"]["diffIds"],
        serde_json::json!(rootfs_layers(&source))
    );
    // The daemon, as its /info states it, at the address the push reached it by.
    let info: Value =
        serde_json::from_str(&docker_ok(&["info", "--format", "{{json .}}"])).unwrap();
    let daemon = &dependency["annotations"]["daemon"];
    assert_eq!(daemon["id"], info["ID"], "{daemon}");
    assert_eq!(daemon["name"], info["Name"], "{daemon}");
    assert_eq!(daemon["serverVersion"], info["ServerVersion"], "{daemon}");
    assert_eq!(daemon["endpoint"], services().docker_host, "{daemon}");
    let parameters = &statement["predicate"]["buildDefinition"]["externalParameters"];
    assert_eq!(parameters["compression"], "gzip");
    assert_eq!(parameters["format"], "oci");
    let metadata = &statement["predicate"]["runDetails"]["metadata"];
    assert!(metadata["startedOn"].as_str().unwrap() <= metadata["finishedOn"].as_str().unwrap());

    // A second push of the same image adds its statement and keeps the first.
    let again = push_args(&source, &dest, "none", &["--provenance"], NO_ENV).expect_success(&dest);
    assert_eq!(again, digest);
    assert_eq!(referrers(&registry, &repo, &digest).len(), 2);
    // The image is what it was: skopeo reads it by its tag.
    assert_eq!(
        skopeo_raw_manifest(&dest)["layers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// The statement's resolved dependency (its source image) of the provenance a push to
/// `registry/repo` with digest `digest` published.
fn dependency(registry: &str, repo: &str, digest: &str) -> Value {
    let found = referrers(registry, repo, digest);
    assert_eq!(found.len(), 1);
    let statement: Value = serde_json::from_slice(&found[0].1).unwrap();
    statement["predicate"]["buildDefinition"]["resolvedDependencies"][0].clone()
}

#[test]
fn provenance_names_the_tarball_or_layout_a_source_was_read_from() {
    let registry = services().registry;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().canonicalize().unwrap();
    assert!(
        work.to_str()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)),
        "a temporary directory whose file: URI is its path: {}",
        work.display()
    );
    let (archive, image_id, _) =
        docker_save_archive(&format!("{}:1", unique("tarball")), &[random_bytes(2000)]);
    std::fs::write(work.join("app image.tar"), &archive).unwrap();
    let listed = tool(&work, "tar", &["-xOf", "app image.tar", "manifest.json"]);

    // A relative path, read from the directory it is relative to: the URI is absolute, with
    // the space percent-encoded.
    let repo = format!("evidence/{}", unique("from-tarball"));
    let dest = format!("{registry}/{repo}:1");
    let mut command = Command::new(ocipush_bin());
    command
        .args(["push", "docker-archive:app image.tar", &dest])
        .args(["--progress", "none", "--provenance"])
        .current_dir(&work);
    let digest = run_ocipush(command, NO_ENV, None).expect_success(&dest);
    let from_tarball = dependency(&registry, &repo, &digest);
    let annotations = &from_tarball["annotations"];
    assert_eq!(annotations["source"], "docker save tarball");
    assert_eq!(annotations["imageId"], image_id);
    assert_eq!(
        annotations["file"]["uri"],
        format!("file://{}/app%20image.tar", work.display())
    );
    assert_eq!(
        annotations["file"]["manifestJson"]["sha256"],
        sha256_hex(&listed)
    );
    assert!(annotations.get("daemon").is_none(), "{annotations}");

    // The same image into a layout, then from the layout.
    let layout = work.join("layout");
    let into = format!("oci:{}:1", layout.display());
    push(
        &format!("docker-archive:{}/app image.tar", work.display()),
        &into,
    )
    .expect_success(&into);
    let index = std::fs::read(layout.join("index.json")).unwrap();
    let repo = format!("evidence/{}", unique("from-layout"));
    let dest = format!("{registry}/{repo}:1");
    let from_layout = dependency(
        &registry,
        &repo,
        &push_args(&into, &dest, "none", &["--provenance"], NO_ENV).expect_success(&dest),
    );
    let annotations = &from_layout["annotations"];
    assert_eq!(annotations["source"], "OCI image layout");
    assert_eq!(
        annotations["file"]["uri"],
        format!("file://{}", layout.display())
    );
    assert_eq!(
        annotations["file"]["indexJson"]["sha256"],
        sha256_hex(&index)
    );
}

#[test]
fn signatures_verify_with_openssl_and_ocipush_verify_only_with_their_key() {
    let registry = services().registry;
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = sec1_key(keys.path(), "signer");
    let (other_key, other_public) = pkcs8_key(keys.path(), "other");
    let source = image("signed");
    let repo = format!("evidence/{}", unique("signed"));
    let dest = format!("{registry}/{repo}:1");

    // Unsigned first: verify says so.
    let digest = push(&source, &dest).expect_success(&dest);
    let line = verify_fails(&dest, &public);
    assert!(line.contains("is not signed"), "{line}");

    let key_arg = key.display().to_string();
    let pushed = push_args(
        &source,
        &dest,
        "none",
        &["--provenance", "--sign-key", &key_arg],
        NO_ENV,
    );
    assert_eq!(pushed.expect_success(&dest), digest);
    assert!(
        !pushed.stderr.contains("PRIVATE"),
        "no key material in output"
    );

    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let sig_manifest: ImageManifest = serde_json::from_slice(&read_back(
        &registry,
        &repo,
        &sig_tag,
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    assert_eq!(sig_manifest.layers().len(), 1);
    let layer = &sig_manifest.layers()[0];
    assert_eq!(layer.media_type(), &MediaType::Other(SIMPLE_SIGNING.into()));
    let payload = blob(&registry, &repo, layer.digest().as_ref());
    let claim: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        claim["critical"]["identity"]["docker-reference"],
        format!("{registry}/{repo}")
    );
    assert_eq!(claim["critical"]["image"]["docker-manifest-digest"], digest);
    assert_eq!(
        claim["critical"]["type"],
        "cosign container image signature"
    );
    let signature = base64::engine::general_purpose::STANDARD
        .decode(layer.annotations().as_ref().unwrap()[SIGNATURE].as_bytes())
        .unwrap();

    // openssl, the outside verifier: this key verifies it, another does not.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("payload"), &payload).unwrap();
    std::fs::write(dir.path().join("sig.der"), &signature).unwrap();
    let openssl = |public: &Path| {
        run(Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(public)
            .args(["-signature", "sig.der", "payload"])
            .current_dir(dir.path()))
    };
    let out = openssl(&public);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Verified OK"));
    assert!(!openssl(&other_public).status.success());

    // The provenance is a DSSE envelope signed with the same key (over DSSE's PAE).
    let found = referrers(&registry, &repo, &digest);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].0.layers()[0].media_type(),
        &MediaType::Other(DSSE.into())
    );
    let envelope: Value = serde_json::from_slice(&found[0].1).unwrap();
    assert_eq!(envelope["payloadType"], IN_TOTO);
    let statement = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    let mut pae = format!("DSSEv1 {} {IN_TOTO} {} ", IN_TOTO.len(), statement.len()).into_bytes();
    pae.extend_from_slice(&statement);
    std::fs::write(dir.path().join("payload"), &pae).unwrap();
    std::fs::write(
        dir.path().join("sig.der"),
        base64::engine::general_purpose::STANDARD
            .decode(envelope["signatures"][0]["sig"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(openssl(&public).status.success());

    // ocipush verify: this key passes and names the guest; another key does not.
    verifies_only_with(&dest, &digest, &public, &other_public);

    // A second key's signature is added beside the first.
    let other_arg = other_key.display().to_string();
    push_args(&source, &dest, "none", &["--sign-key", &other_arg], NO_ENV).expect_success(&dest);
    let sig_manifest: ImageManifest = serde_json::from_slice(&manifest(
        &registry,
        &repo,
        &sig_tag,
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    assert_eq!(sig_manifest.layers().len(), 2);
    assert!(verify(&dest, &public).status.success());
    assert!(verify(&dest, &other_public).status.success());

    // Tampered: the payload rewritten in the registry to name another repository, with the
    // signatures kept. No key verifies it.
    let mut tampered: Value = serde_json::from_slice(&payload).unwrap();
    tampered["critical"]["identity"]["docker-reference"] = format!("{registry}/elsewhere").into();
    let tampered = serde_json::to_vec(&tampered).unwrap();
    let tampered_digest = put_blob(&registry, &repo, &tampered);
    let mut forged: Value = serde_json::from_slice(&manifest(
        &registry,
        &repo,
        &sig_tag,
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    for layer in forged["layers"].as_array_mut().unwrap() {
        layer["digest"] = tampered_digest.clone().into();
        layer["size"] = tampered.len().into();
    }
    put_manifest(
        &registry,
        &repo,
        &sig_tag,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&forged).unwrap(),
    );
    let line = verify_fails(&dest, &public);
    assert!(line.contains("has no signature by the key in"), "{line}");
}

/// A registry that answers a manifest asked for by digest (the provenance artifact the referrers
/// index names) with other bytes: `verify`, which passed a moment before, refuses it in one line.
#[test]
fn verify_refuses_a_manifest_served_by_digest_with_other_bytes() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = pkcs8_key(keys.path(), "signer");
    let key_arg = key.display().to_string();
    let misserve = Arc::new(AtomicBool::new(false));
    let proxy = HttpFaultProxy::start(
        &services().registry,
        Faults {
            manifest_by_digest_bytes_changed: misserve.clone(),
            ..Faults::default()
        },
    );
    let repo = format!("evidence/{}", unique("misserved"));
    let dest = format!("{}/{repo}:1", proxy.address);
    push_args(
        &image("misserved"),
        &dest,
        "none",
        &["--provenance", "--sign-key", &key_arg],
        NO_ENV,
    )
    .expect_success(&dest);
    assert!(verify(&dest, &public).status.success());
    let by_digest = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/manifests/sha256:"))
        .count();
    assert!(by_digest > 0, "verify read a manifest by digest");

    misserve.store(true, Ordering::SeqCst);
    let line = verify_fails(&dest, &public);
    assert!(
        line.contains(&format!("{}/{repo} serves manifest sha256:", proxy.address))
            && line.contains("with bytes that hash to sha256:"),
        "{line}"
    );
}

#[test]
fn a_signature_for_another_digest_does_not_verify_this_one() {
    let registry = services().registry;
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = pkcs8_key(keys.path(), "signer");
    let key_arg = key.display().to_string();
    let repo = format!("evidence/{}", unique("moved"));
    let dest = format!("{registry}/{repo}:1");
    let first = image("moved-a");
    let digest =
        push_args(&first, &dest, "none", &["--sign-key", &key_arg], NO_ENV).expect_success(&dest);
    // The second image's signature manifest is copied under the first's tag: a valid
    // signature by the key, naming another digest.
    let second_dest = format!("{registry}/{repo}:2");
    let second = push_args(
        &image("moved-b"),
        &second_dest,
        "none",
        &["--sign-key", &key_arg],
        NO_ENV,
    )
    .expect_success(&second_dest);
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let signatures = manifest(
        &registry,
        &repo,
        &format!("sha256-{}.sig", hex(&second)),
        accept,
    );
    put_manifest(
        &registry,
        &repo,
        &format!("sha256-{}.sig", hex(&digest)),
        accept,
        &signatures,
    );
    let line = verify_fails(&dest, &public);
    assert!(
        line.contains(&format!("names digest {second}, not this one")),
        "{line}"
    );
}

#[test]
fn an_encrypted_key_signs_with_its_passphrase_file_and_is_refused_without_it() {
    let registry = services().registry;
    let keys = tempfile::tempdir().unwrap();
    let passphrase = "correct-horse-battery";
    // The public key is written from the encrypted key, which needs the passphrase too.
    tool(
        keys.path(),
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-aes-256-cbc",
            "-pass",
            &format!("pass:{passphrase}"),
            "-out",
            "encrypted.pem",
        ],
    );
    tool(
        keys.path(),
        "openssl",
        &[
            "pkey",
            "-in",
            "encrypted.pem",
            "-passin",
            &format!("pass:{passphrase}"),
            "-pubout",
            "-out",
            "encrypted.pub.pem",
        ],
    );
    let (key, public) = (
        keys.path().join("encrypted.pem"),
        keys.path().join("encrypted.pub.pem"),
    );
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .contains("ENCRYPTED PRIVATE KEY"));
    let pass_file = keys.path().join("pass");
    std::fs::write(&pass_file, format!("{passphrase}\n")).unwrap();
    let wrong_file = keys.path().join("wrong");
    std::fs::write(&wrong_file, "not-it\n").unwrap();
    let source = image("encrypted");
    let repo = format!("evidence/{}", unique("encrypted"));
    let dest = format!("{registry}/{repo}:1");
    let key_arg = key.display().to_string();

    let refused = push_args(&source, &dest, "none", &["--sign-key", &key_arg], NO_ENV);
    let line = refused.expect_failure();
    assert!(line.contains("is encrypted"), "{line}");
    let wrong = wrong_file.display().to_string();
    let refused = push_args(
        &source,
        &dest,
        "none",
        &["--sign-key", &key_arg, "--sign-key-passphrase-file", &wrong],
        NO_ENV,
    );
    let line = refused.expect_failure();
    assert!(line.contains("does not decrypt"), "{line}");
    assert!(!line.contains("not-it"), "{line}");
    // Refused before any traffic: no tag.
    assert_tag_absent(&registry, &repo, "1");

    let pass = pass_file.display().to_string();
    let pushed = push_args(
        &source,
        &dest,
        "none",
        &["--sign-key", &key_arg, "--sign-key-passphrase-file", &pass],
        NO_ENV,
    );
    pushed.expect_success(&dest);
    assert!(!pushed.stderr.contains(passphrase));
    let out = verify(&dest, &public);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("provenance: none"));
}

/// The digest the `index.json` of the layout at `layout` names under `name`.
fn layout_tagged(layout: &Path, name: &str) -> String {
    let index: ImageIndex =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index
        .manifests()
        .iter()
        .find(|m| {
            m.annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .map(String::as_str)
                == Some(name)
        })
        .unwrap_or_else(|| panic!("no {name} in index.json"))
        .digest()
        .to_string()
}

/// The file of blob `digest` in the layout at `layout`.
fn layout_blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[test]
fn an_oci_layout_destination_gets_the_provenance_artifact() {
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let dest = format!("oci:{}:1", layout.display());
    let source = image("layout-prov");
    let digest = push_args(&source, &dest, "none", &["--provenance"], NO_ENV).expect_success(&dest);
    let tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    assert_eq!(layout_tagged(&layout, "1"), digest);
    let blob = |digest: &str| std::fs::read(layout_blob(&layout, digest)).unwrap();
    let referrers: ImageIndex =
        serde_json::from_slice(&blob(&layout_tagged(&layout, &tag))).unwrap();
    assert_eq!(referrers.manifests().len(), 1);
    let artifact: ImageManifest =
        serde_json::from_slice(&blob(referrers.manifests()[0].digest().as_ref())).unwrap();
    assert_eq!(
        artifact.subject().as_ref().unwrap().digest().to_string(),
        digest
    );
    let statement: Value =
        serde_json::from_slice(&blob(artifact.layers()[0].digest().as_ref())).unwrap();
    assert_eq!(
        statement["predicate"]["runDetails"]["builder"]["version"]["guest"],
        embedded_guest()
    );
    // skopeo still reads the image by its tag.
    let inspected =
        run_ok(Command::new("skopeo").args(["inspect", &format!("oci:{}:1", layout.display())]));
    let inspected: Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(inspected["Digest"], digest);
}

#[test]
fn ocipush_verify_reads_an_oci_layout_with_the_checks_it_makes_of_a_registry() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = sec1_key(keys.path(), "signer");
    let (_, other_public) = pkcs8_key(keys.path(), "other");
    let key_arg = key.display().to_string();
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let dest = format!("oci:{}:1", layout.display());
    let source = image("layout-verify");

    // Unsigned first: verify says so.
    let digest = push(&source, &dest).expect_success(&dest);
    let line = verify_fails(&dest, &public);
    assert!(
        line.contains(&format!("{dest}@{digest} is not signed")),
        "{line}"
    );

    let signed = push_args(
        &source,
        &dest,
        "none",
        &["--provenance", "--sign-key", &key_arg],
        NO_ENV,
    );
    assert_eq!(signed.expect_success(&dest), digest);
    verifies_only_with(&dest, &digest, &public, &other_public);

    // Tampered: the payload file rewritten in the layout to name another layout. Restored, the
    // signature verifies again.
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let sig_manifest: Value = serde_json::from_slice(
        &std::fs::read(layout_blob(&layout, &layout_tagged(&layout, &sig_tag))).unwrap(),
    )
    .unwrap();
    let payload_file = layout_blob(
        &layout,
        sig_manifest["layers"][0]["digest"].as_str().unwrap(),
    );
    let payload = std::fs::read(&payload_file).unwrap();
    let mut tampered: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        tampered["critical"]["identity"]["docker-reference"],
        format!("oci:{}", layout.display())
    );
    tampered["critical"]["identity"]["docker-reference"] = "oci:/elsewhere".into();
    std::fs::write(&payload_file, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let line = verify_fails(&dest, &public);
    assert!(
        line.contains("none of its 1 signatures verifies with it over an intact payload"),
        "{line}"
    );
    std::fs::write(&payload_file, &payload).unwrap();
    verifies_only_with(&dest, &digest, &public, &other_public);

    // Another image's signatures under this digest's .sig tag: a valid signature by the key,
    // naming another digest.
    let second_dest = format!("oci:{}:2", layout.display());
    let second = push_args(
        &image("layout-verify-b"),
        &second_dest,
        "none",
        &["--sign-key", &key_arg],
        NO_ENV,
    )
    .expect_success(&second_dest);
    let index_file = layout.join("index.json");
    let index = std::fs::read(&index_file).unwrap();
    let second_sigs = layout_tagged(
        &layout,
        &format!("sha256-{}.sig", second.trim_start_matches("sha256:")),
    );
    let mut moved: Value = serde_json::from_slice(&index).unwrap();
    for entry in moved["manifests"].as_array_mut().unwrap() {
        if entry["annotations"]["org.opencontainers.image.ref.name"] == sig_tag {
            entry["digest"] = second_sigs.clone().into();
        }
    }
    std::fs::write(&index_file, serde_json::to_vec(&moved).unwrap()).unwrap();
    let line = verify_fails(&dest, &public);
    assert!(
        line.contains(&format!("names digest {second}, not this one")),
        "{line}"
    );
    std::fs::write(&index_file, &index).unwrap();
    verifies_only_with(&dest, &digest, &public, &other_public);

    // The image manifest's file rewritten: one line naming it.
    let manifest_file = layout_blob(&layout, &digest);
    std::fs::write(&manifest_file, b"{}").unwrap();
    let line = verify_fails(&dest, &public);
    assert!(
        line.contains(&format!(
            "{} does not hold the manifest its name says",
            manifest_file.display()
        )),
        "{line}"
    );

    // A signature names the layout as its push spelt it: the same directory named otherwise
    // is another reference.
    let elsewhere = out.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let spelt = format!("oci:{}/.:1", elsewhere.display());
    push_args(&source, &spelt, "none", &["--sign-key", &key_arg], NO_ENV).expect_success(&spelt);
    assert!(verify(&spelt, &public).status.success());
    let line = verify_fails(&format!("oci:{}:1", elsewhere.display()), &public);
    assert!(
        line.contains(&format!(
            "names layout oci:{}/., not this one",
            elsewhere.display()
        )),
        "{line}"
    );
}

#[test]
fn each_destination_of_a_push_gets_its_signature_and_provenance() {
    let registry = services().registry;
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = sec1_key(keys.path(), "signer");
    let source = image("two-dests");
    let (repo_a, repo_b) = (
        format!("evidence/{}", unique("dest-a")),
        format!("evidence/{}", unique("dest-b")),
    );
    let (a, b) = (
        format!("{registry}/{repo_a}:1"),
        format!("{registry}/{repo_b}:1"),
    );
    let key_arg = key.display().to_string();
    let pushed = push_args(
        &source,
        &a,
        "none",
        &[&b, "--provenance", "--sign-key", &key_arg],
        NO_ENV,
    );
    assert!(pushed.output.status.success(), "{}", pushed.describe());
    let digest = pushed.digest_file.clone().unwrap();
    for (dest, repo) in [(&a, &repo_a), (&b, &repo_b)] {
        let out = verify(dest, &public);
        assert!(out.status.success(), "{dest}: {}", describe(&out));
        let found = referrers(&registry, repo, &digest);
        assert_eq!(found.len(), 1, "{dest}");
        // Each repository's signature names that repository.
        let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
        let signatures: Value = serde_json::from_slice(&manifest(
            &registry,
            repo,
            &sig_tag,
            "application/vnd.oci.image.manifest.v1+json",
        ))
        .unwrap();
        let payload = blob(
            &registry,
            repo,
            signatures["layers"][0]["digest"].as_str().unwrap(),
        );
        let claim: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            claim["critical"]["identity"]["docker-reference"],
            format!("{registry}/{repo}")
        );
    }
}
