//! A `docker-registry serve` (CNCF distribution) that a test starts on 127.0.0.1 with a config
//! and storage of its own, for what the shared registry of scripts/services.sh cannot be: one
//! with TLS or authentication, or one that a test kills and starts again.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A registry a test started, killed (by pid) when dropped.
pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub address: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// A plain registry: HTTP, no authentication, storage in a temp dir of its own.
    pub fn start() -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), "")
    }

    /// A registry with its storage in `dir` and `extra` at the end of its config (more of
    /// `http:`, indented, or sections such as `auth:`), on a free port.
    pub fn start_with(dir: tempfile::TempDir, extra: &str) -> Self {
        let mut registry = Self {
            child: None,
            address: String::new(),
            dir,
        };
        for _ in 0..5 {
            registry.address = format!("127.0.0.1:{}", super::closed_port());
            let config = format!(
                "version: 0.1\nlog: {{level: warn, formatter: text}}\nstorage:\n  filesystem: {{rootdirectory: \"{}\"}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {}\n  secret: ocipush-test-not-a-secret\n{extra}",
                registry.path("data").display(),
                registry.address
            );
            std::fs::write(registry.path("config.yml"), config).unwrap();
            if registry.serve() {
                return registry;
            }
            // Most likely another process took the port first: try another.
        }
        let log = std::fs::read_to_string(registry.path("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start:\n{log}");
    }

    /// A file in the registry's directory (e.g. a certificate the test made there).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the registry on its address and storage (again, after `kill`); false if it did
    /// not come up.
    pub fn serve(&mut self) -> bool {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.path("registry.log"))
            .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.path("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (run ./scripts/test.sh, which installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if TcpStream::connect(&self.address).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL to this registry's pid: no shutdown, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}
