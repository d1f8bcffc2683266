//! The Docker daemon (or podman's compatible API service) named by `DOCKER_HOST`: the image
//! source (`export`, the `docker save` stream) and the builder (`build`, with the context tar of
//! `context`). The `docker` capability (`capabilities::daemon`) lends them to the guest.

pub mod build;
pub mod context;
pub mod export;

use std::fmt;

use bollard::Docker;

use crate::interrupt::{Interrupted, Runtime};

/// Where the daemon is when `DOCKER_HOST` does not say.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// A connection to the daemon, made on first use.
pub struct Daemon {
    /// `DOCKER_HOST` as given, for messages.
    pub address: String,
    docker: Option<Docker>,
}

/// What went wrong with the daemon or one of its images.
#[derive(Debug)]
pub enum Error {
    Unreachable {
        address: String,
        cause: String,
    },
    NotFound {
        address: String,
        image: String,
    },
    Refused {
        address: String,
        image: String,
        status: u16,
        message: String,
    },
    Failed {
        address: String,
        image: String,
        cause: String,
    },
    NoId {
        image: String,
    },
    /// A signal stopped the wait.
    Interrupted(Interrupted),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable { address, cause } => {
                write!(f, "cannot reach the Docker daemon at {address}: {cause}")
            }
            Self::NotFound { address, image } => {
                write!(
                    f,
                    "image {image} not found in the Docker daemon at {address}"
                )
            }
            Self::Refused {
                address,
                image,
                status,
                message,
            } => write!(
                f,
                "the Docker daemon at {address} refused image {image}: {status} {message}"
            ),
            Self::Failed {
                address,
                image,
                cause,
            } => write!(
                f,
                "the Docker daemon at {address} failed on image {image}: {cause}"
            ),
            Self::NoId { image } => write!(f, "the Docker daemon reported no ID for image {image}"),
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

impl Daemon {
    /// The daemon `DOCKER_HOST` names, or the default socket.
    pub fn from_env() -> Self {
        Self::new(std::env::var("DOCKER_HOST").ok())
    }

    /// The daemon at `docker_host` (`DOCKER_HOST`'s value), or at the default socket when it is
    /// unset, as the client (bollard) reads it.
    pub fn new(docker_host: Option<String>) -> Self {
        Self {
            address: docker_host.unwrap_or_else(|| DEFAULT_HOST.to_string()),
            docker: None,
        }
    }

    /// Connects on first use, agreeing on an API version the daemon speaks (Debian's dockerd
    /// 20.10 is far older than the client's default).
    pub fn docker(&mut self, rt: &Runtime) -> Result<Docker, Error> {
        if let Some(docker) = &self.docker {
            return Ok(docker.clone());
        }
        let unreachable = |e: bollard::errors::Error| Error::Unreachable {
            address: self.address.clone(),
            cause: e.to_string(),
        };
        let docker = Docker::connect_with_defaults().map_err(unreachable)?;
        let docker = rt
            .block_on(docker.negotiate_version())?
            .map_err(unreachable)?;
        self.docker = Some(docker.clone());
        Ok(docker)
    }

    /// What the daemon's answer about `image` means.
    pub fn describe(&self, image: &str, e: bollard::errors::Error) -> Error {
        let (address, image) = (self.address.clone(), image.to_string());
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => Error::NotFound { address, image },
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => Error::Refused {
                address,
                image,
                status: status_code,
                message,
            },
            other => Error::Failed {
                address,
                image,
                cause: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_names_the_daemon_and_defaults_to_the_socket() {
        assert_eq!(Daemon::new(None).address, "unix:///var/run/docker.sock");
        assert_eq!(
            Daemon::new(Some("tcp://127.0.0.1:2375".into())).address,
            "tcp://127.0.0.1:2375"
        );
    }

    #[test]
    fn daemon_answers_become_one_line_naming_the_image_and_daemon() {
        let daemon = Daemon::new(Some("unix:///run/d.sock".into()));
        let server =
            |status_code, message: &str| bollard::errors::Error::DockerResponseServerError {
                status_code,
                message: message.into(),
            };
        assert_eq!(
            daemon
                .describe("app:1", server(404, "no such image"))
                .to_string(),
            "image app:1 not found in the Docker daemon at unix:///run/d.sock"
        );
        assert_eq!(
            daemon.describe("app:1", server(500, "boom")).to_string(),
            "the Docker daemon at unix:///run/d.sock refused image app:1: 500 boom"
        );
    }
}
