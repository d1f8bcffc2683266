//! Integration tests for finding the daemon as the Docker CLI does, with `DOCKER_HOST` unset: a
//! context made by `docker context create` and made current by `docker context use`, one named
//! by `DOCKER_CONTEXT` or `--context`, and the sockets rootless Docker, Docker Desktop and Colima
//! use; and the one line an unreachable daemon gets. Each push goes to the test daemon
//! (`scripts/services.sh`) through what names it, and is read back by skopeo.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// Where the Docker CLI keeps its state for one test: a temporary HOME (so `~/.docker` is its
/// own) and an empty XDG_RUNTIME_DIR.
struct Home(tempfile::TempDir);

impl Home {
    fn new() -> Self {
        let home = Self(tempfile::tempdir().unwrap());
        std::fs::create_dir_all(home.runtime_dir()).unwrap();
        home
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn runtime_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    /// The test daemon's socket path.
    fn daemon_socket() -> String {
        services()
            .docker_host
            .strip_prefix("unix://")
            .expect("DOCKER_HOST must be unix://…")
            .to_string()
    }

    /// The Docker CLI, with this HOME and neither DOCKER_HOST nor DOCKER_CONTEXT.
    fn docker_cli(&self, args: &[&str]) -> String {
        let mut c = Command::new("docker");
        c.args(args);
        run_ok(self.isolate(&mut c))
    }

    /// `docker context create NAME --docker host=HOST`.
    fn create_context(&self, name: &str, host: &str) {
        self.docker_cli(&[
            "context",
            "create",
            name,
            "--docker",
            &format!("host={host}"),
        ]);
    }

    fn isolate<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.env("HOME", self.path())
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_CONFIG")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("OCIPUSH_LOG")
    }

    /// `ocipush push SOURCE DEST ARGS… --digest-file …` with this HOME, `envs` added.
    fn push(&self, source: &str, dest: &str, args: &[&str], envs: &[(&str, &str)]) -> Pushed {
        let dir = tempfile::tempdir().unwrap();
        let digest_path = dir.path().join("digest");
        let mut c = Command::new(ocipush_bin());
        c.args(["push", source, dest, "--progress", "none", "--digest-file"])
            .arg(&digest_path)
            .args(args);
        self.isolate(&mut c);
        for (k, v) in envs {
            c.env(k, v);
        }
        let output = run(&mut without_system_socket(c));
        Pushed {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            digest_file: std::fs::read_to_string(&digest_path)
                .ok()
                .map(|s| s.trim().to_string()),
            output,
        }
    }
}

/// `command`, run where `/var/run/docker.sock` does not exist: as it is, or, on a machine
/// that has one, in a mount namespace of its own with a tmpfs over `/var/run` (needs root, as
/// the test daemon does).
fn without_system_socket(command: Command) -> Command {
    if !Path::new("/var/run/docker.sock").exists() {
        return command;
    }
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "sh",
        "-c",
        "mount -t tmpfs tmpfs /var/run && exec \"$@\"",
        "sh",
    ])
    .arg(command.get_program())
    .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => c.env(key, value),
            None => c.env_remove(key),
        };
    }
    c
}

/// A one-layer image in the test daemon: (tag, image ID, diff IDs).
fn small_image(name: &str) -> (String, String, Vec<String>) {
    let tag = format!("{name}:1.0");
    build_image(&tag, None, &[("ctx.txt", name.as_bytes())]);
    (tag.clone(), image_id(&tag), rootfs_layers(&tag))
}

/// Pushes `tag` as `args` and `envs` say and reads it back through skopeo.
fn pushes_through(home: &Home, name: &str, args: &[&str], envs: &[(&str, &str)]) {
    let s = services();
    let (tag, id, diff_ids) = small_image(name);
    let repo = format!("ocipush-test/{name}");
    let dest = format!("{}/{repo}:v1", s.registry);
    let digest = home.push(&tag, &dest, args, envs).expect_success(&dest);
    check_pushed_manifest(&s.registry, &repo, "v1", &digest, &id, &diff_ids);
    copy_to_oci_layout_and_verify(&dest, &digest, &diff_ids);
}

#[test]
fn the_current_context_names_the_daemon() {
    let home = Home::new();
    let name = unique("current-context");
    let socket = Home::daemon_socket();
    home.create_context(&name, &format!("unix://{socket}"));
    home.docker_cli(&["context", "use", &name]);
    // What `docker context use` wrote is what ocipush reads: ~/.docker/config.json.
    let config = std::fs::read_to_string(home.path().join(".docker/config.json")).unwrap();
    assert!(config.contains(&name), "{config}");
    pushes_through(&home, &name, &[], &[]);
}

#[test]
fn docker_context_and_the_flag_name_a_context() {
    let home = Home::new();
    let name = unique("named-context");
    let socket = Home::daemon_socket();
    home.create_context(&name, &format!("unix://{socket}"));
    pushes_through(&home, &name, &[], &[("DOCKER_CONTEXT", &name)]);
    // --context wins over DOCKER_HOST and DOCKER_CONTEXT, as docker's does.
    let other = unique("flag");
    home.create_context(&other, &format!("unix://{socket}"));
    pushes_through(
        &home,
        &other,
        &["--context", &other],
        &[
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
            ("DOCKER_CONTEXT", "no-such-context"),
        ],
    );
}

#[test]
fn docker_host_wins_over_docker_context_and_the_current_context() {
    let home = Home::new();
    let name = unique("host-wins");
    home.create_context(&name, "unix:///nonexistent/ctx.sock");
    home.docker_cli(&["context", "use", &name]);
    let docker_host = services().docker_host;
    pushes_through(
        &home,
        &name,
        &[],
        &[("DOCKER_HOST", &docker_host), ("DOCKER_CONTEXT", &name)],
    );
}

#[test]
fn rootless_dockers_socket_is_found_when_nothing_names_a_daemon() {
    let home = Home::new();
    std::os::unix::fs::symlink(
        Home::daemon_socket(),
        home.runtime_dir().join("docker.sock"),
    )
    .unwrap();
    pushes_through(&home, &unique("rootless"), &[], &[]);
}

#[test]
fn an_unreachable_daemon_is_one_line_naming_what_was_tried() {
    let s = services();
    let home = Home::new();
    let name = unique("unreachable");
    let dest = format!("{}/ocipush-test/{name}:v1", s.registry);
    home.create_context(&name, "unix:///nonexistent/ctx.sock");
    let line = home
        .push("app:1", &dest, &[], &[("DOCKER_CONTEXT", &name)])
        .expect_failure();
    assert!(
        line.contains(&format!(
            "cannot reach the Docker daemon at unix:///nonexistent/ctx.sock (context {name} from DOCKER_CONTEXT)"
        )),
        "{line}"
    );
    let line = home
        .push("app:1", &dest, &["--context", "no-such-context"], &[])
        .expect_failure();
    assert!(
        line.contains("Docker context no-such-context from --context does not exist"),
        "{line}"
    );

    // Nothing names a daemon; Colima's socket is there but nothing answers on it.
    let colima = home.path().join(".colima/default");
    std::fs::create_dir_all(&colima).unwrap();
    std::fs::write(colima.join("docker.sock"), "").unwrap();
    let line = home.push("app:1", &dest, &[], &[]).expect_failure();
    let tried = format!(
        "cannot reach the Docker daemon at unix://{home}/.colima/default/docker.sock (no socket at unix:///var/run/docker.sock, unix://{home}/run/docker.sock, unix://{home}/.docker/run/docker.sock)",
        home = home.path().display()
    );
    assert!(line.contains(&tried), "{line}");
    assert_tag_absent(&s.registry, &format!("ocipush-test/{name}"), "v1");
}
