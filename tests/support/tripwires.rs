//! Tripwires: a daemon socket and a registry port that only listen, for tests of what ocipush
//! refuses before any traffic: after the refusal, nothing may have connected to either.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::process::Command;

use super::{describe, ocipush_bin, run};

/// A daemon socket and a registry port that only listen: after a refused run, nothing may have
/// connected to either.
pub struct Tripwires {
    _dir: tempfile::TempDir,
    daemon: UnixListener,
    /// `unix://…`, the daemon socket.
    pub daemon_host: String,
    registry: TcpListener,
}

impl Tripwires {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let daemon = UnixListener::bind(&socket).unwrap();
        daemon.set_nonblocking(true).unwrap();
        let registry = TcpListener::bind("127.0.0.1:0").unwrap();
        registry.set_nonblocking(true).unwrap();
        Self {
            daemon_host: format!("unix://{}", socket.display()),
            _dir: dir,
            daemon,
            registry,
        }
    }

    /// An image reference in the registry that only listens.
    pub fn destination(&self) -> String {
        format!(
            "127.0.0.1:{}/tripwire/app:1",
            self.registry.local_addr().unwrap().port()
        )
    }

    /// Neither the daemon socket nor the registry port was connected to.
    pub fn assert_untouched(&self) {
        assert_eq!(
            self.daemon.accept().err().map(|e| e.kind()),
            Some(ErrorKind::WouldBlock),
            "the daemon was contacted"
        );
        assert_eq!(
            self.registry.accept().err().map(|e| e.kind()),
            Some(ErrorKind::WouldBlock),
            "the registry was contacted"
        );
    }

    /// `ocipush push` against the tripwires, expected to fail with one line containing `needle`.
    /// (ARGS come before `push`: the global options, such as `--guest`.)
    pub fn refused(&self, args: &[&str], envs: &[(&str, &str)], needle: &str) {
        let destination = self.destination();
        let mut command = Command::new(ocipush_bin());
        command
            .args(args)
            .args(["push", "--progress", "none", "img:1", &destination])
            .env("DOCKER_HOST", &self.daemon_host)
            .env_remove("OCIPUSH_GUEST_DIGEST");
        for (k, v) in envs {
            command.env(k, v);
        }
        let out = run(&mut command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "expected a refusal: {}",
            describe(&out)
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("ocipush: error: ") && stderr.contains(needle),
            "{needle:?} in {stderr}"
        );
        self.assert_untouched();
    }
}
