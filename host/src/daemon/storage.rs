//! containers-storage, podman's and buildah's local image store, read without a daemon through
//! their command lines: `podman image inspect` and `podman image save --format docker-archive`
//! (a `docker save` stream on stdout), or, when only buildah is installed, `buildah inspect
//! --type image` and `buildah push IMAGE docker-archive:/dev/stdout`. The tool runs with fixed
//! arguments and the image's name after `--`, never through a shell, with the environment
//! ocipush has: `CONTAINERS_STORAGE_CONF` and storage.conf are honoured as the tool honours them.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub use ocipush_parse::StorageImage;
use tokio::process::Command;

use super::export::ExportStream;
use crate::interrupt::{Interrupted, Runtime};

/// How a source names an image in containers-storage (skopeo's transport name).
pub const PREFIX: &str = "containers-storage:";

/// The tool that reads the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tool {
    Podman(PathBuf),
    Buildah(PathBuf),
}

impl Tool {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Podman(_) => "podman",
            Self::Buildah(_) => "buildah",
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Podman(path) | Self::Buildah(path) => path,
        }
    }

    /// The arguments that inspect `image`.
    fn inspect_args(&self, image: &str) -> Vec<String> {
        let args: &[&str] = match self {
            Self::Podman(_) => &["image", "inspect", "--"],
            Self::Buildah(_) => &["inspect", "--type", "image", "--"],
        };
        args.iter()
            .map(|a| a.to_string())
            .chain([image.into()])
            .collect()
    }

    /// The arguments that write `image` as a `docker save` stream on stdout.
    fn save_args(&self, image: &str) -> Vec<String> {
        let args: &[&str] = match self {
            Self::Podman(_) => &["image", "save", "--format", "docker-archive", "--"],
            Self::Buildah(_) => &["push", "--quiet", "--"],
        };
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(image.into());
        if let Self::Buildah(_) = self {
            args.push("docker-archive:/dev/stdout".into());
        }
        args
    }

    fn parse(&self, text: &str) -> Result<StorageImage, String> {
        match self {
            Self::Podman(_) => ocipush_parse::podman_inspect(text),
            Self::Buildah(_) => ocipush_parse::buildah_inspect(text),
        }
    }
}

/// podman, else buildah, on `path` (a `PATH` value): the first executable file of that name.
pub fn find_tool(path: Option<&str>) -> Option<Tool> {
    let dirs: Vec<PathBuf> = std::env::split_paths(path?).collect();
    let find = |name: &str| {
        dirs.iter().map(|dir| dir.join(name)).find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    };
    find("podman")
        .map(Tool::Podman)
        .or_else(|| find("buildah").map(Tool::Buildah))
}

/// What went wrong reading containers-storage.
#[derive(Debug)]
pub enum Error {
    /// Neither podman nor buildah is on `PATH`.
    NoTool {
        image: String,
    },
    /// The tool could not be started, failed, or answered what is not an image.
    Failed {
        tool: &'static str,
        image: String,
        cause: String,
    },
    Interrupted(Interrupted),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTool { image } => write!(
                f,
                "image {image} is in containers-storage, which ocipush reads with podman or buildah: neither is on PATH"
            ),
            Self::Failed { tool, image, cause } => write!(
                f,
                "reading image {image} from containers-storage with {tool}: {cause}"
            ),
            Self::Interrupted(interrupted) => interrupted.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<Interrupted> for Error {
    fn from(interrupted: Interrupted) -> Self {
        Self::Interrupted(interrupted)
    }
}

/// containers-storage as the host reads it, and the images it has answered for: their exports,
/// asked for by the ID inspect gave, come from here too.
pub struct Storage {
    tool: Option<Tool>,
    ids: HashSet<String>,
    /// Whether the line saying a source falls back to this store was written.
    announced: bool,
}

impl Storage {
    /// The store, read with the tool `PATH` offers.
    pub fn locate() -> Self {
        Self::new(find_tool(std::env::var("PATH").ok().as_deref()))
    }

    pub fn new(tool: Option<Tool>) -> Self {
        Self {
            tool,
            ids: HashSet::new(),
            announced: false,
        }
    }

    /// True the first time only: the fallback is announced once per run.
    pub fn first_fallback(&mut self) -> bool {
        !std::mem::replace(&mut self.announced, true)
    }

    pub fn tool(&self) -> Option<&Tool> {
        self.tool.as_ref()
    }

    /// Whether `image` is an ID this store's inspect gave.
    pub fn answered_for(&self, image: &str) -> bool {
        self.ids.contains(image)
    }

    fn tool_for(&self, image: &str) -> Result<&Tool, Error> {
        self.tool.as_ref().ok_or_else(|| Error::NoTool {
            image: image.to_string(),
        })
    }

    /// Inspects `image` (a name or ID, without the prefix).
    pub fn inspect(&mut self, rt: &Runtime, image: &str) -> Result<StorageImage, Error> {
        let tool = self.tool_for(image)?.clone();
        let failed = |cause: String| Error::Failed {
            tool: tool.name(),
            image: image.to_string(),
            cause,
        };
        let mut command = Command::new(tool.path());
        command
            .args(tool.inspect_args(image))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // Inside the runtime: tokio's child processes need its reactor from their start.
        let output = rt
            .block_on(async { command.output().await })?
            .map_err(|e| failed(format!("starting {}: {e}", tool.path().display())))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said = stderr.lines().rev().find(|l| !l.trim().is_empty());
            let said = said.unwrap_or("").trim();
            return Err(failed(format!("{}: {said}", output.status)));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let inspected = tool
            .parse(&text)
            .map_err(|e| failed(format!("its inspect answer: {e}")))?;
        self.ids.insert(inspected.id.clone());
        Ok(inspected)
    }

    /// Starts `image`'s `docker save` stream.
    pub fn export(&self, rt: &Runtime, image: &str) -> Result<ExportStream, Error> {
        let tool = self.tool_for(image)?;
        let mut command = Command::new(tool.path());
        command
            .args(tool.save_args(image))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = rt.block_on(async { command.spawn() })?;
        let child = child.map_err(|e| Error::Failed {
            tool: tool.name(),
            image: image.to_string(),
            cause: format!("starting {}: {e}", tool.path().display()),
        })?;
        Ok(ExportStream::from_process(
            rt,
            child,
            tool.name(),
            image.to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &Path, name: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn podman_is_preferred_then_buildah() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        let path = path.to_str().unwrap();
        assert_eq!(find_tool(Some(path)), None);
        std::fs::write(a.path().join("podman"), "not executable").unwrap();
        assert_eq!(find_tool(Some(path)), None);
        executable(b.path(), "buildah");
        assert_eq!(
            find_tool(Some(path)),
            Some(Tool::Buildah(b.path().join("buildah")))
        );
        executable(b.path(), "podman");
        assert_eq!(
            find_tool(Some(path)),
            Some(Tool::Podman(b.path().join("podman")))
        );
        assert_eq!(find_tool(None), None);
    }

    #[test]
    fn the_image_goes_after_the_options_end() {
        let podman = Tool::Podman("podman".into());
        assert_eq!(
            podman.save_args("--rm"),
            ["image", "save", "--format", "docker-archive", "--", "--rm"]
        );
        assert_eq!(
            podman.inspect_args("app:1"),
            ["image", "inspect", "--", "app:1"]
        );
        let buildah = Tool::Buildah("buildah".into());
        assert_eq!(
            buildah.save_args("app:1"),
            [
                "push",
                "--quiet",
                "--",
                "app:1",
                "docker-archive:/dev/stdout"
            ]
        );
        assert_eq!(
            buildah.inspect_args("app:1"),
            ["inspect", "--type", "image", "--", "app:1"]
        );
    }
}
