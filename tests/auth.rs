//! Authentication and TLS against real registries: `docker-registry serve` instances started
//! on 127.0.0.1 by tests/support (`support::registry`): one with TLS (a CA and server certificate
//! made with openssl) and htpasswd, one with mutual TLS, one with token authentication backed by
//! `support::token`'s issuer. Credentials come from `--username` and `--password-stdin`, from
//! podman's auth.json, docker's config.json or credential helpers; certificates from
//! `--ca-file`, `--insecure` or a certs.d directory (`OCIPUSH_CERTS_DIRS`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use support::registry::{Registry, PASSWORD, USER};
use support::token::REFRESH_TOKEN;
use support::*;

/// `--username USER --password-stdin`, for `PASSWORD` on stdin.
const PASSWORD_STDIN: [&str; 3] = ["--username", USER, "--password-stdin"];

/// An environment with no credentials or certs.d of the user's or the machine's.
struct CleanEnv {
    dir: tempfile::TempDir,
}

impl CleanEnv {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        std::fs::create_dir_all(dir.path().join("certs.d")).unwrap();
        // REGISTRY_AUTH_FILE names it, and a named auth file must exist; tests that need one
        // write theirs over it.
        std::fs::write(dir.path().join("auth.json"), r#"{"auths": {}}"#).unwrap();
        Self { dir }
    }

    fn certs_dirs(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    fn vars(&self) -> Vec<(String, String)> {
        let p = |rel: &str| self.dir.path().join(rel).display().to_string();
        vec![
            ("HOME".into(), p("home")),
            ("DOCKER_CONFIG".into(), p("docker")),
            ("REGISTRY_AUTH_FILE".into(), p("auth.json")),
            ("XDG_RUNTIME_DIR".into(), p("run")),
            ("OCIPUSH_CERTS_DIRS".into(), p("certs.d")),
        ]
    }

    /// `vars`, with debug logs.
    fn debug_vars(&self) -> Vec<(String, String)> {
        let mut vars = self.vars();
        vars.push(("OCIPUSH_LOG".into(), "debug".into()));
        vars
    }

    /// Writes docker's `config.json` (in `DOCKER_CONFIG`).
    fn docker_config(&self, json: &str) {
        std::fs::write(self.dir.path().join("docker/config.json"), json).unwrap();
    }

    /// The registry's CA (as `ca.crt`) in the certs.d directory for its address; returns that
    /// directory.
    fn trust(&self, registry: &Registry) -> PathBuf {
        let certs = self.certs_dirs().join(&registry.address);
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(registry.path("ca.pem"), certs.join("ca.crt")).unwrap();
        certs
    }
}

/// A registry the test started (it lives as long as the case: dropping it stops it), an
/// environment with no credentials of the user's, a one-layer image in the test daemon for
/// `label` and a destination for it there.
struct Case {
    registry: Registry,
    env: CleanEnv,
    name: String,
    tag: String,
    dest: String,
}

impl Case {
    fn new(registry: Registry, label: &str) -> Self {
        let name = unique(label);
        let tag = format!("{name}:1.0");
        let file = format!("auth test {name}\n");
        build_image(&tag, None, &[("file.txt", file.as_bytes())]);
        let mut case = Self {
            registry,
            env: CleanEnv::new(),
            name,
            tag,
            dest: String::new(),
        };
        case.dest = case.at("v1");
        case
    }

    /// `REGISTRY/ocipush-test/NAME:TAG`
    fn at(&self, tag: &str) -> String {
        format!("{}/ocipush-test/{}:{tag}", self.registry.address, self.name)
    }

    /// The registry's CA file.
    fn ca(&self) -> String {
        self.registry.path("ca.pem").display().to_string()
    }

    /// `ocipush push TAG DEST --progress none ARGS` with `stdin` written to its stdin.
    fn push(&self, dest: &str, args: &[&str], stdin: &str, envs: &[(String, String)]) -> Pushed {
        push_input(&self.tag, dest, "none", args, envs, Some(stdin))
    }

    /// `push` to the case's destination in the clean environment, with nothing on stdin.
    fn push_plain(&self) -> Pushed {
        self.push(&self.dest, &[], "", &self.env.vars())
    }
}

/// The manifest digest skopeo reads from `reference` (`--creds`, no TLS verification).
fn skopeo_digest(reference: &str) -> Result<String, String> {
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        &format!("{USER}:{PASSWORD}"),
        "--format",
        "{{.Digest}}",
        &format!("docker://{reference}"),
    ]));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(describe(&out))
    }
}

/// The push succeeded, and skopeo reads the digest it reported from `dest`.
fn assert_pushed(pushed: &Pushed, dest: &str) {
    let digest = pushed.expect_success(dest);
    assert_eq!(skopeo_digest(dest).unwrap(), digest);
}

/// `USER:PASSWORD` as HTTP Basic credentials (without the `Basic ` prefix).
fn basic_credentials() -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
}

/// Neither the password nor the Basic header carrying it appears in the output.
fn assert_no_secret(pushed: &Pushed) {
    let basic = basic_credentials();
    let output = format!("{}{}", pushed.stdout, pushed.stderr);
    assert!(
        !output.contains(PASSWORD) && !output.contains(&basic),
        "the password appears in the output\n{}",
        pushed.describe()
    );
}

/// The push failed with one line that names the registry and says "unauthorized", and left
/// nothing at `dest`.
fn assert_unauthorized(pushed: &Pushed, registry: &Registry, dest: &str) {
    let line = pushed.expect_failure();
    assert!(line.contains("unauthorized"), "{line}");
    assert!(line.contains(&registry.address), "{line}");
    assert_not_pushed(dest);
}

fn assert_not_pushed(reference: &str) {
    if let Ok(digest) = skopeo_digest(reference) {
        panic!("{reference} exists ({digest}) after a failed push");
    }
}

#[test]
fn tls_registry_with_a_ca_file_and_the_password_on_stdin() {
    let case = Case::new(Registry::tls_htpasswd(), "tls-cafile");
    let ca = case.ca();
    let args = [&["--ca-file", &ca][..], &PASSWORD_STDIN].concat();
    // Debug logs say where the credential came from, never what it is.
    let vars = case.env.debug_vars();
    let pushed = case.push(&case.dest, &args, &format!("{PASSWORD}\n"), &vars);
    assert_pushed(&pushed, &case.dest);
    assert_no_secret(&pushed);
    assert!(
        pushed.stderr.contains("command line"),
        "{}",
        pushed.describe()
    );
}

#[test]
fn tls_registry_with_an_unknown_ca_fails_naming_the_certificate() {
    let case = Case::new(Registry::tls_htpasswd(), "tls-unknown-ca");
    let pushed = case.push(&case.dest, &PASSWORD_STDIN, PASSWORD, &case.env.vars());
    let line = pushed.expect_failure();
    for wanted in [
        case.registry.address.as_str(),
        "certificate",
        "--ca-file",
        "--insecure",
    ] {
        assert!(line.contains(wanted), "{wanted:?} missing from: {line}");
    }
    assert_no_secret(&pushed);
    assert_not_pushed(&case.dest);
}

#[test]
fn tls_registry_with_insecure_skips_verification() {
    let case = Case::new(Registry::tls_htpasswd(), "tls-insecure");
    let args = [&["--insecure"][..], &PASSWORD_STDIN].concat();
    let password = format!("{PASSWORD}\r\n");
    let pushed = case.push(&case.dest, &args, &password, &case.env.vars());
    assert_pushed(&pushed, &case.dest);
}

#[test]
fn a_wrong_password_is_unauthorized_prints_no_secret_and_writes_no_tag() {
    let case = Case::new(Registry::tls_htpasswd(), "tls-wrong-password");
    let ca = case.ca();
    let args = [&["--ca-file", &ca][..], &PASSWORD_STDIN].concat();
    let wrong = format!("{PASSWORD}-wrong");
    let pushed = case.push(&case.dest, &args, &format!("{wrong}\n"), &case.env.vars());
    assert_unauthorized(&pushed, &case.registry, &case.dest);
    assert!(
        !pushed.stdout.contains(&wrong) && !pushed.stderr.contains(&wrong),
        "the password appears in the output\n{}",
        pushed.describe()
    );
}

#[test]
fn certs_d_ca_and_podman_auth_json_are_used() {
    let case = Case::new(Registry::tls_htpasswd(), "tls-certs-d");
    case.env.trust(&case.registry);
    let auth = basic_credentials();
    let vars = case.env.vars();
    let auth_file = &vars
        .iter()
        .find(|(k, _)| k == "REGISTRY_AUTH_FILE")
        .unwrap()
        .1;
    std::fs::write(
        auth_file,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            case.registry.address
        ),
    )
    .unwrap();
    let pushed = case.push_plain();
    assert_pushed(&pushed, &case.dest);
    assert_no_secret(&pushed);
}

/// What ocipush asks a registry whose connection ended after the TLS handshake: whether it
/// wants a client certificate. A TLS 1.3 registry that requires one sends its alert after our
/// side of the handshake is done, so the request may see the alert or only a closed connection;
/// the probe's answer does not depend on that race.
#[test]
fn the_client_certificate_probe_tells_mutual_tls_from_plain_tls() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let asks = |registry: &Registry| {
        let (host, port) = registry.address.rsplit_once(':').unwrap();
        let port = port.parse().unwrap();
        let limit = std::time::Duration::from_secs(5);
        rt.block_on(ocipush::tls::asks_for_client_certificate(host, port, limit))
    };
    assert!(asks(&Registry::mutual_tls()));
    assert!(!asks(&Registry::tls_htpasswd()));
}

#[test]
fn certs_d_client_certificate_gives_mutual_tls() {
    let case = Case::new(Registry::mutual_tls(), "mtls");
    let (registry, d) = (&case.registry, &case.dest);
    let certs = case.env.trust(registry);
    // Without a client certificate the registry ends the handshake, and the error says where
    // one goes (not that the registry's certificate is bad).
    let line = case.push_plain().expect_failure();
    assert!(line.contains(&registry.address), "{line}");
    assert!(
        line.contains("refused the TLS handshake") && line.contains("client.cert"),
        "{line}"
    );
    assert!(!line.contains("--insecure"), "{line}");
    std::fs::copy(registry.path("client.pem"), certs.join("client.cert")).unwrap();
    std::fs::copy(registry.path("client.key"), certs.join("client.key")).unwrap();
    case.push_plain().expect_success(d);
    let cert_dir = certs.display().to_string();
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--cert-dir",
        &cert_dir,
        &format!("docker://{d}"),
    ]));
    assert!(out.status.success(), "{}", describe(&out));
}

// ---------------------------------------------------------------------------------------------
// Token authentication
// ---------------------------------------------------------------------------------------------

#[test]
fn token_auth_push_with_credentials_renews_its_token() {
    // The issuer is dropped after the registry (the case).
    let (registry, issuer) = Registry::token();
    let case = Case::new(registry, "token");
    let password = format!("{PASSWORD}\n");
    let pushed = case.push(&case.dest, &PASSWORD_STDIN, &password, &case.env.vars());
    assert_pushed(&pushed, &case.dest);
    assert_no_secret(&pushed);
    // The first token only allowed pulling: the push renewed it when the registry said 401.
    assert!(
        issuer.issued.load(Ordering::SeqCst) >= 2,
        "the push did not renew its token"
    );
}

#[test]
fn an_identity_token_is_exchanged_by_oauth2_and_never_shown() {
    let (registry, issuer) = Registry::token();
    let case = Case::new(registry, "identity");
    let docker_config = |token: &str| {
        case.env.docker_config(&format!(
            r#"{{"auths": {{"{}": {{"auth": "", "identitytoken": "{token}"}}}}}}"#,
            case.registry.address
        ));
    };
    docker_config(REFRESH_TOKEN);
    let pushed = case.push(&case.dest, &[], "", &case.env.debug_vars());
    assert_pushed(&pushed, &case.dest);
    assert!(
        !pushed.stderr.contains(REFRESH_TOKEN),
        "{}",
        pushed.describe()
    );
    assert!(
        issuer.refreshed.load(Ordering::SeqCst) >= 1,
        "no OAuth2 exchange"
    );

    docker_config("a-revoked-token");
    let d = case.at("revoked");
    let refused = case.push(&d, &[], "", &case.env.vars());
    let line = refused.expect_failure();
    assert!(line.contains("identity token was refused"), "{line}");
    assert!(!refused.stderr.contains("a-revoked-token"), "{line}");
    assert_not_pushed(&d);
}

#[test]
fn uploads_moved_to_another_host_never_get_the_credentials() {
    use support::faults::{Faults, HttpFaultProxy};
    let case = Case::new(Registry::htpasswd(), "redirect");
    let proxy = HttpFaultProxy::start(
        &case.registry.address,
        Faults {
            redirect_uploads: true,
            second_address_authorization: Some(format!("Basic {}", basic_credentials())),
            ..Faults::default()
        },
    );
    let d = format!("{}/ocipush-test/{}:v1", proxy.address, case.name);
    let pushed = case.push(
        &d,
        &PASSWORD_STDIN,
        &format!("{PASSWORD}\n"),
        &case.env.vars(),
    );
    let digest = pushed.expect_success(&d);
    let seen = proxy.seen();
    let moved: Vec<_> = seen.iter().filter(|s| s.second_address).collect();
    // The layer's and the config's uploads went to the second address: PATCH and PUT there.
    assert!(moved.iter().any(|s| s.method == "PATCH"), "{seen:#?}");
    assert!(
        moved.iter().filter(|s| s.method == "PUT").count() >= 2,
        "{seen:#?}"
    );
    assert!(
        moved.iter().all(|s| !s.authorization),
        "credentials sent to another host: {seen:#?}"
    );
    // The registry's own host got them (the manifest, the upload starts).
    assert!(
        seen.iter()
            .filter(|s| !s.second_address && s.method == "PUT")
            .all(|s| s.authorization),
        "{seen:#?}"
    );
    assert_eq!(skopeo_digest(&case.dest).unwrap(), digest);
}

#[test]
fn a_mount_asks_the_token_service_for_pull_on_its_source() {
    let (registry, issuer) = Registry::token();
    let case = Case::new(registry, "token-mount");
    let (address, name) = (&case.registry.address, &case.name);
    let password = format!("{PASSWORD}\n");
    let first = format!("ocipush-test/{name}-a");
    let d = format!("{address}/{first}:v1");
    case.push(&d, &PASSWORD_STDIN, &password, &case.env.vars())
        .expect_success(&d);
    let d = format!("{address}/ocipush-test/{name}-b:v1");
    let pushed = push_input(
        &case.tag,
        &d,
        "json",
        &PASSWORD_STDIN,
        &case.env.vars(),
        Some(&password),
    );
    let digest = pushed.expect_success(&d);
    let scopes = issuer.scopes.lock().unwrap().clone();
    assert!(
        scopes.contains(&format!("repository:{first}:pull")),
        "{scopes:?}"
    );
    let mounted = pushed
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "layer-skipped" && e["mounted_from"] == first.as_str())
        .count();
    assert_eq!(mounted, 1, "{}", pushed.describe());
    assert_eq!(skopeo_digest(&d).unwrap(), digest);
}

#[test]
fn token_auth_anonymous_push_is_unauthorized() {
    let (registry, _issuer) = Registry::token();
    let case = Case::new(registry, "token-anonymous");
    assert_unauthorized(&case.push_plain(), &case.registry, &case.dest);
}

/// A credential helper speaking docker's protocol (`docker-credential-NAME get`): it answers
/// for `registry` only, as a keychain would, and says "not found" for anything else.
fn credential_helper(dir: &Path, name: &str, registry: &str) {
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\nif [ \"$server\" = \"{registry}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n"
        ),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&path, permissions).unwrap();
}

#[test]
fn credential_helpers_from_creds_store_and_cred_helpers() {
    let case = Case::new(Registry::tls_htpasswd(), "cred-helper");
    let (registry, env) = (&case.registry, &case.env);
    let bin = tempfile::tempdir().unwrap();
    credential_helper(bin.path(), "ocitest", &registry.address);
    credential_helper(bin.path(), "elsewhere", "127.0.0.1:1");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut vars = env.vars();
    vars.push(("PATH".into(), path));
    // Debug logs name the helper that answered, never what it said.
    let mut debug = vars.clone();
    debug.push(("OCIPUSH_LOG".into(), "debug".into()));
    let ca = case.ca();
    let ca_file = ["--ca-file", &ca];

    // The default store answers for every registry.
    env.docker_config(r#"{"credsStore": "ocitest"}"#);
    let d = case.at("store");
    let pushed = case.push(&d, &ca_file, "", &debug);
    assert_pushed(&pushed, &d);
    assert_no_secret(&pushed);
    assert!(
        pushed.stderr.contains("docker-credential-ocitest"),
        "{}",
        pushed.describe()
    );

    // A registry's own helper comes before the default store.
    env.docker_config(&format!(
        r#"{{"credsStore": "elsewhere", "credHelpers": {{"{}": "ocitest"}}}}"#,
        registry.address
    ));
    let d = case.at("helper");
    case.push(&d, &ca_file, "", &vars).expect_success(&d);

    // A helper with nothing stored for the registry: anonymous, refused, no tag.
    env.docker_config(r#"{"credsStore": "elsewhere"}"#);
    let d = case.at("none");
    let refused = case.push(&d, &ca_file, "", &vars);
    let error = refused.expect_failure();
    assert!(error.contains("unauthorized"), "{error}");
    assert_no_secret(&refused);
    assert_not_pushed(&d);
}
