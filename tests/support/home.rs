//! A HOME of a test's own, for finding the daemon as a user's machine would: its `~/.docker`
//! (the Docker CLI's config and contexts), an empty XDG_RUNTIME_DIR, none of the caller's
//! DOCKER_* variables; and running ocipush where `/var/run/docker.sock` does not exist.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ocipush_bin, run_ocipush, run_ok, services, Pushed};

/// Where the Docker CLI keeps its state for one test: a temporary HOME (so `~/.docker` is its
/// own) and an empty XDG_RUNTIME_DIR.
pub struct Home(tempfile::TempDir);

impl Home {
    pub fn new() -> Self {
        let home = Self(tempfile::tempdir().unwrap());
        std::fs::create_dir_all(home.runtime_dir()).unwrap();
        home
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    /// The test daemon's socket path.
    pub fn daemon_socket() -> String {
        services()
            .docker_host
            .strip_prefix("unix://")
            .expect("DOCKER_HOST must be unix://…")
            .to_string()
    }

    /// The Docker CLI, with this HOME and neither DOCKER_HOST nor DOCKER_CONTEXT.
    pub fn docker_cli(&self, args: &[&str]) -> String {
        let mut c = Command::new("docker");
        c.args(args);
        run_ok(self.isolate(&mut c))
    }

    /// A context named `name` for the test daemon's socket.
    pub fn context_for_test_daemon(&self, name: &str) {
        self.create_context(name, &format!("unix://{}", Self::daemon_socket()));
    }

    /// `docker context create NAME --docker host=HOST`.
    pub fn create_context(&self, name: &str, host: &str) {
        self.docker_cli(&[
            "context",
            "create",
            name,
            "--docker",
            &format!("host={host}"),
        ]);
    }

    pub fn isolate<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.env("HOME", self.path())
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_CONFIG")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("OCIPUSH_LOG")
    }

    /// `ocipush push SOURCE DEST --progress PROGRESS ARGS… --digest-file …` with this HOME,
    /// `envs` added, where `/var/run/docker.sock` does not exist.
    pub fn push(
        &self,
        source: &str,
        dest: &str,
        progress: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Pushed {
        let mut c = Command::new(ocipush_bin());
        c.args(["push", source, dest, "--progress", progress])
            .args(args);
        self.isolate(&mut c);
        run_ocipush(without_system_socket(c), envs, None)
    }
}

/// `command`, run where `/var/run/docker.sock` does not exist: as it is, or, on a machine
/// that has one, in a mount namespace of its own with a tmpfs over `/var/run` (needs root, as
/// the test daemon does).
pub fn without_system_socket(command: Command) -> Command {
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
