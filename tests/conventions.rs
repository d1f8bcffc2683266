//! The conventions users of docker, skopeo, podman and oras already type (issue #15): a
//! plain-HTTP registry reached by name (`--plain-http`, registries.conf), credentials in
//! podman's order, what each output mode prints, completions, the man page and `--version`.
//!
//! A registry "by name" is a loopback registry reached as `NAME:PORT`, NAME resolving to
//! 127.0.0.1 through a hosts file bind-mounted over /etc/hosts in a mount namespace of ocipush's
//! own (`unshare -m`): the machine's /etc/hosts is never touched.

mod support;

use std::ffi::OsStr;
use std::process::Command;

use base64::Engine as _;
use support::registry::{Registry, PASSWORD, USER};
use support::*;

/// The name the test registries are reached by.
const NAME: &str = "plain-registry.test";

/// A one-layer image in the test daemon, tagged `ocipush-conventions/LABEL:1`.
fn small_image(label: &str) -> String {
    let tag = format!("ocipush-conventions/{}:1", unique(label));
    build_image(&tag, None, &[("hello.txt", label.as_bytes())]);
    tag
}

/// An environment without the machine's credential files or registries.conf.
struct CleanEnv {
    dir: tempfile::TempDir,
}

impl CleanEnv {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home", "docker", "run"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("registries.conf"), "").unwrap();
        std::fs::write(
            dir.path().join("hosts"),
            format!("127.0.0.1 localhost {NAME}\n::1 localhost\n"),
        )
        .unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    fn vars(&self) -> Vec<(String, String)> {
        vec![
            ("HOME".into(), self.path("home")),
            ("DOCKER_CONFIG".into(), self.path("docker")),
            ("XDG_RUNTIME_DIR".into(), self.path("run")),
            ("XDG_CONFIG_HOME".into(), self.path("home/.config")),
            (
                "CONTAINERS_REGISTRIES_CONF".into(),
                self.path("registries.conf"),
            ),
        ]
    }

    /// `vars` and more.
    fn with(&self, more: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = self.vars();
        for (k, v) in more {
            vars.retain(|(key, _)| key != k);
            vars.push((k.to_string(), v.to_string()));
        }
        vars
    }
}

/// `{"auths": {KEY: {"auth": base64(USER:password)}}, ...}` for each key and password.
fn auth_json(entries: &[(&str, &str)], extra: &str) -> String {
    let auths = entries
        .iter()
        .map(|(key, password)| {
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
            format!(r#""{key}": {{"auth": "{auth}"}}"#)
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(r#"{{{extra}"auths": {{{auths}}}}}"#)
}

/// `ocipush ARGS` run with NAME resolving to 127.0.0.1 (the hosts file of `env`), in a mount
/// namespace of its own.
fn by_name(env: &CleanEnv, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "sh",
        "-c",
        r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#,
        "sh",
    ])
    .arg(env.path("hosts"))
    .arg(ocipush_bin())
    .args(args);
    c
}

fn push_by_name<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    env: &CleanEnv,
    source: &str,
    dest: &str,
    args: &[&str],
    envs: &[(K, V)],
    input: Option<&str>,
) -> Pushed {
    let mut all = vec!["push", source, dest, "--progress", "plain"];
    all.extend_from_slice(args);
    run_ocipush(by_name(env, &all), envs, input)
}

/// The digest skopeo reads from `reference` over plain HTTP.
fn skopeo_digest(reference: &str, creds: Option<&str>) -> String {
    let mut c = Command::new("skopeo");
    c.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
    if let Some(creds) = creds {
        c.args(["--creds", creds]);
    }
    run_ok(c.arg(format!("docker://{reference}")))
        .trim()
        .to_string()
}

#[test]
fn a_plain_http_registry_by_name_needs_plain_http_or_registries_conf() {
    let registry = Registry::start();
    let port = registry.address.rsplit(':').next().unwrap().to_string();
    let host = format!("{NAME}:{port}");
    let image = small_image("plain-http");
    let env = CleanEnv::new();

    // Over HTTPS, the answer comes in plain HTTP: one line that says so, with the way out.
    let dest = format!("{host}/conventions/plain:v1");
    let refused = push_by_name(&env, &image, &dest, &[], &env.vars(), None);
    let line = refused.expect_failure();
    assert!(
        line.contains("answered in plain HTTP") && line.contains("--plain-http"),
        "{line}"
    );
    assert!(line.contains(&host), "{line}");
    assert_tag_absent(&registry.address, "conventions/plain", "v1");

    let pushed = push_by_name(&env, &image, &dest, &["--plain-http"], &env.vars(), None);
    let digest = pushed.expect_success(&dest);
    let on_loopback = format!("{}/conventions/plain:v1", registry.address);
    assert_eq!(skopeo_digest(&on_loopback, None), digest);

    // registries.conf: the longest prefix decides; insecure = true allows plain HTTP.
    let conf = env.path("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{host}\"\ninsecure = true\n[[registry]]\nlocation = \"{host}/conventions/strict\"\n"
        ),
    )
    .unwrap();
    let dest = format!("{host}/conventions/conf:v1");
    let pushed = push_by_name(&env, &image, &dest, &[], &env.vars(), None);
    assert_eq!(pushed.expect_success(&dest), digest);
    let strict = format!("{host}/conventions/strict:v1");
    let line = push_by_name(&env, &image, &strict, &[], &env.vars(), None).expect_failure();
    assert!(line.contains("--plain-http"), "{line}");

    // A broken registries.conf is one line naming it, before any traffic.
    std::fs::write(
        &conf,
        "[[registry]]\nlocation = \"x\"\ninsecure = \"yes\"\n",
    )
    .unwrap();
    let line = push_by_name(&env, &image, &dest, &[], &env.vars(), None).expect_failure();
    assert!(line.contains(&conf) && line.contains("line 3"), "{line}");
}

#[test]
fn credentials_over_plain_http_off_loopback_get_a_warning() {
    let registry = Registry::htpasswd();
    let port = registry.address.rsplit(':').next().unwrap().to_string();
    let image = small_image("plain-http-auth");
    let env = CleanEnv::new();
    let dest = format!("{NAME}:{port}/conventions/warned:v1");
    let args = ["--plain-http", "-u", USER, "--password-stdin"];
    let input = format!("{PASSWORD}\n");
    let pushed = push_by_name(&env, &image, &dest, &args, &env.vars(), Some(&input));
    pushed.expect_success(&dest);
    let warnings: Vec<&str> = pushed
        .stderr
        .lines()
        .filter(|l| l.starts_with("ocipush: warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", pushed.describe());
    assert!(warnings[0].contains("plain HTTP"), "{}", warnings[0]);
    assert!(!pushed.stderr.contains(PASSWORD));

    // On loopback nothing crosses a network: no warning.
    let dest = format!("{}/conventions/loopback:v1", registry.address);
    let pushed = push_input(
        &image,
        &dest,
        "plain",
        &args[1..],
        &env.vars(),
        Some(&input),
    );
    pushed.expect_success(&dest);
    assert!(!pushed.stderr.contains("warning"), "{}", pushed.describe());
}

#[test]
fn credentials_come_in_podmans_order_most_specific_key_first() {
    let registry = Registry::htpasswd();
    let host = registry.address.clone();
    let image = small_image("auth-order");
    let env = CleanEnv::new();
    let docker_config = env.path("docker/config.json");
    let named = env.path("named-auth.json");
    let podman = env.path("run/containers/auth.json");
    std::fs::create_dir_all(env.path("run/containers")).unwrap();
    let write = |path: &str, text: String| std::fs::write(path, text).unwrap();

    // A wrong config.json loses to the file REGISTRY_AUTH_FILE names.
    write(&docker_config, auth_json(&[(&host, "wrong")], ""));
    write(&named, auth_json(&[(&host, PASSWORD)], ""));
    let dest = format!("{host}/conventions/order:v1");
    let named_env = env.with(&[("REGISTRY_AUTH_FILE", &named)]);
    let digest = push_input(&image, &dest, "none", &[], &named_env, None).expect_success(&dest);
    assert_eq!(
        skopeo_digest(&dest, Some(&format!("{USER}:{PASSWORD}"))),
        digest
    );
    // Without it, the wrong config.json is used, ahead of a right podman auth.json.
    write(&podman, auth_json(&[(&host, PASSWORD)], ""));
    let line = push_input(&image, &dest, "none", &[], &env.vars(), None).expect_failure();
    assert!(line.contains("401"), "{line}");
    // --authfile is the same as REGISTRY_AUTH_FILE; the command line comes before both.
    push_input(
        &image,
        &dest,
        "none",
        &["--authfile", &named],
        &env.vars(),
        None,
    )
    .expect_success(&dest);
    write(&named, auth_json(&[(&host, "wrong")], ""));
    let input = format!("{PASSWORD}\n");
    push_input(
        &image,
        &dest,
        "none",
        &["-u", USER, "--password-stdin"],
        &named_env,
        Some(&input),
    )
    .expect_success(&dest);

    // Keys: the repository's before its namespace's before the host's.
    write(
        &named,
        auth_json(
            &[
                (&host, "wrong"),
                (&format!("{host}/conventions"), "wrong too"),
                (&format!("{host}/conventions/scoped"), PASSWORD),
            ],
            "",
        ),
    );
    let scoped = format!("{host}/conventions/scoped:v1");
    push_input(&image, &scoped, "none", &[], &named_env, None).expect_success(&scoped);
    let other = format!("{host}/conventions/other:v1");
    push_input(&image, &other, "none", &[], &named_env, None).expect_failure();

    // `"credsStore": ""` is no helper: the file's own entry is used.
    std::fs::remove_file(&podman).unwrap();
    write(
        &docker_config,
        auth_json(&[(&host, PASSWORD)], r#""credsStore": "", "#),
    );
    push_input(&image, &dest, "none", &[], &env.vars(), None).expect_success(&dest);

    // A file the user named must be there.
    let missing = env.path("missing.json");
    let line = push_input(
        &image,
        &dest,
        "none",
        &[],
        &env.with(&[("REGISTRY_AUTH_FILE", &missing)]),
        None,
    )
    .expect_failure();
    assert!(
        line.contains("REGISTRY_AUTH_FILE") && line.contains(&missing),
        "{line}"
    );
    let line = push_input(
        &image,
        &dest,
        "none",
        &["--authfile", &missing],
        &env.vars(),
        None,
    )
    .expect_failure();
    assert!(line.contains("--authfile"), "{line}");
}

#[test]
fn each_output_mode_prints_what_it_says() {
    let s = services();
    let image = small_image("output");
    let repo = format!("conventions/{}", unique("output"));

    // stdout is canonical: no docker://, the default tag written out.
    let pushed = run_ocipush(
        {
            let mut c = Command::new(ocipush_bin());
            c.args([
                "-q",
                "push",
                &image,
                &format!("docker://{}/{repo}", s.registry),
            ]);
            c
        },
        NO_ENV,
        None,
    );
    let digest = pushed.expect_success(&format!("{}/{repo}:latest", s.registry));
    assert_eq!(pushed.stderr, "", "-q prints nothing on stderr");

    // --progress tty without a terminal: one notice, then plain lines naming the encoding.
    let dest = format!("{}/{repo}:zstd", s.registry);
    let pushed = push_args(&image, &dest, "tty", &["--compression", "zstd"], NO_ENV);
    pushed.expect_success(&dest);
    let lines: Vec<&str> = pushed.stderr.lines().collect();
    assert!(
        lines[0].contains("--progress tty") && lines[0].contains("not a terminal"),
        "{}",
        pushed.describe()
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("not a terminal"))
            .count(),
        1
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" done: ") && l.ends_with(" zstd)")),
        "{}",
        pushed.describe()
    );
    // (Another image: this one's gzip layer is in the registry already.)
    let dest = format!("{}/{repo}:gz", s.registry);
    let gzip = push_args(&small_image("output-gzip"), &dest, "plain", &[], NO_ENV);
    gzip.expect_success(&dest);
    assert!(
        gzip.stderr
            .lines()
            .any(|l| l.contains(" done: ") && l.ends_with(" gzip)")),
        "{}",
        gzip.describe()
    );

    // -v: debug logs; on a terminal coloured unless NO_COLOR says otherwise.
    let verbose = |no_color: bool| {
        let dest = format!("{}/{repo}:v", s.registry);
        let command = format!(
            "{} -v push {image} {dest} --progress none",
            ocipush_bin().display()
        );
        let mut c = Command::new("script");
        c.args(["-qec", &command, "/dev/null"])
            .env("DOCKER_HOST", &s.docker_host)
            .env_remove("OCIPUSH_LOG");
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        let out = run(&mut c);
        assert!(out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = verbose(false);
    assert!(coloured.contains("DEBUG"), "{coloured}");
    assert!(coloured.contains("\x1b["), "{coloured}");
    let plain = verbose(true);
    assert!(plain.contains("DEBUG"), "{plain}");
    assert!(!plain.contains("\x1b["), "{plain}");
    assert!(plain.contains(&digest));

    // -q and -v together are a usage error: exit 2.
    let out = run(Command::new(ocipush_bin()).args(["-q", "-v", "push", &image, &dest]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn verbose_logs_never_show_a_secret() {
    let registry = Registry::htpasswd();
    let image = small_image("verbose-secret");
    let env = CleanEnv::new();
    let dest = format!("{}/conventions/verbose:v1", registry.address);
    let input = format!("{PASSWORD}\n");
    let pushed = push_input(
        &image,
        &dest,
        "plain",
        &["-v", "-u", USER, "--password-stdin"],
        &env.vars(),
        Some(&input),
    );
    pushed.expect_success(&dest);
    assert!(pushed.stderr.contains("DEBUG"), "{}", pushed.describe());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    assert!(
        !pushed.stderr.contains(PASSWORD) && !pushed.stderr.contains(&basic),
        "{}",
        pushed.describe()
    );
}

#[test]
fn completions_man_page_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let bash = run_ok(Command::new(ocipush_bin()).args(["completions", "bash"]));
    let script = dir.path().join("ocipush.bash");
    std::fs::write(&script, &bash).unwrap();
    let out = run(Command::new("bash").arg("-n").arg(&script));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(bash.contains("--plain-http") && bash.contains("--authfile"));
    for shell in ["zsh", "fish"] {
        let text = run_ok(Command::new(ocipush_bin()).args(["completions", shell]));
        assert!(text.contains("plain-http"), "{shell}: {text}");
    }

    let page = dir.path().join("ocipush.1");
    std::fs::write(&page, run_ok(Command::new(ocipush_bin()).arg("man"))).unwrap();
    let out = run(Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100"));
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "OCIPUSH PUSH",
        "OCIPUSH INDEX",
        "--plain-http",
        "--authfile",
        "130",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }

    let version = run_ok(Command::new(ocipush_bin()).arg("--version"));
    let lines: Vec<&str> = version.lines().collect();
    let exported = dir.path().join("guest.wasm");
    run_ok(
        Command::new(ocipush_bin())
            .arg("guest")
            .arg("export")
            .arg(&exported),
    );
    assert_eq!(lines.len(), 3, "{version}");
    assert!(lines[0].starts_with("ocipush "), "{version}");
    assert!(lines[1].starts_with("contract ocipush:core@"), "{version}");
    assert_eq!(
        lines[2],
        format!("guest sha256:{} (embedded)", sha256_file(&exported)),
        "{version}"
    );
}
