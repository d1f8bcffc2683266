//! The Docker daemon (or podman's compatible API service), found as the Docker CLI finds it
//! (`endpoint`: `--context`, `DOCKER_HOST`, `DOCKER_CONTEXT`, the current context, then the
//! usual sockets) and reached over a unix socket, TCP or TLS (`connect`): the image source
//! (`export`, the `docker save` stream) and the builder (`build`, with the context tar of
//! `context`). The `docker` capability (`capabilities::daemon`) lends them to the guest.

pub mod build;
pub mod connect;
pub mod context;
pub mod endpoint;
pub mod export;
pub mod storage;

use std::fmt;

use bollard::Docker;

use crate::interrupt::{Interrupted, Runtime};
use endpoint::{Environment, Resolution};

/// A connection to the daemon, made on first use.
pub struct Daemon {
    /// Where the daemon is, or why the Docker CLI's configuration could not say.
    resolution: Result<Resolution, endpoint::Error>,
    /// The daemon's address and what named it, for messages.
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
    /// Nothing names a daemon and none of the usual sockets exists.
    NoDaemon {
        tried: Vec<String>,
    },
    /// The Docker CLI's configuration (a context) could not say where the daemon is.
    Context(endpoint::Error),
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
    /// `GET /info`, asked for provenance, failed.
    Info {
        address: String,
        cause: String,
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
            Self::NoDaemon { tried } => write!(
                f,
                "no Docker daemon found: tried {} (no socket there); set DOCKER_HOST, or a context with docker context use or --context",
                tried.join(", ")
            ),
            Self::Context(e) => e.fmt(f),
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
            Self::Info { address, cause } => write!(
                f,
                "the Docker daemon at {address} did not say who it is (GET /info): {cause}"
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

impl Daemon {
    /// The daemon the process's environment names, with `--context`'s value.
    pub fn locate(context_flag: Option<&str>) -> Self {
        let env = Environment::from_process(context_flag);
        Self::new(endpoint::resolve(&env, |socket| socket.exists()))
    }

    /// The daemon `resolution` found.
    pub fn new(resolution: Result<Resolution, endpoint::Error>) -> Self {
        let address = match &resolution {
            Ok(Resolution::Named(endpoint)) => endpoint.to_string(),
            Ok(Resolution::Searched {
                found: Some(endpoint),
                tried,
            }) if !tried.is_empty() => {
                format!("{endpoint} (no socket at {})", tried.join(", "))
            }
            Ok(Resolution::Searched {
                found: Some(endpoint),
                ..
            }) => endpoint.to_string(),
            Ok(Resolution::Searched { found: None, .. }) | Err(_) => String::new(),
        };
        Self {
            resolution,
            address,
            docker: None,
        }
    }

    /// Where the daemon is, without credentials (`Endpoint::without_credentials`); none when
    /// nothing says.
    pub fn endpoint(&self) -> Option<String> {
        match &self.resolution {
            Ok(Resolution::Named(endpoint))
            | Ok(Resolution::Searched {
                found: Some(endpoint),
                ..
            }) => Some(endpoint.without_credentials()),
            Ok(Resolution::Searched { found: None, .. }) | Err(_) => None,
        }
    }

    /// When nothing names a daemon and none of the usual sockets exists (no Docker here): the
    /// sockets tried.
    pub fn absent(&self) -> Option<&[String]> {
        match &self.resolution {
            Ok(Resolution::Searched { found: None, tried }) => Some(tried),
            _ => None,
        }
    }

    /// Connects on first use, agreeing on an API version the daemon speaks (Debian's dockerd
    /// 20.10 is far older than the client's default).
    pub fn docker(&mut self, rt: &Runtime) -> Result<Docker, Error> {
        if let Some(docker) = &self.docker {
            return Ok(docker.clone());
        }
        let endpoint = match &self.resolution {
            Ok(Resolution::Named(endpoint))
            | Ok(Resolution::Searched {
                found: Some(endpoint),
                ..
            }) => endpoint,
            Ok(Resolution::Searched { found: None, tried }) => {
                return Err(Error::NoDaemon {
                    tried: tried.clone(),
                })
            }
            Err(e) => return Err(Error::Context(e.clone())),
        };
        let unreachable = |cause: String| Error::Unreachable {
            address: self.address.clone(),
            cause,
        };
        let docker = connect::connect(endpoint).map_err(|e| unreachable(root_cause(&e)))?;
        let docker = rt
            .block_on(docker.negotiate_version())?
            .map_err(|e| unreachable(root_cause(&e)))?;
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

/// An error with its innermost cause, where the client's own words hide it ("client error
/// (Connect)": connection refused).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    if std::ptr::addr_eq(inner, error) {
        error.to_string()
    } else {
        format!("{error}: {inner}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(host: &str) -> Daemon {
        Daemon::new(Ok(Resolution::Named(endpoint::Endpoint {
            host: host.into(),
            tls: None,
            origin: endpoint::Origin::DockerHost,
        })))
    }

    #[test]
    fn the_address_says_where_the_daemon_is_and_what_was_tried() {
        assert_eq!(at("tcp://127.0.0.1:2375").address, "tcp://127.0.0.1:2375");
        let found = endpoint::Endpoint {
            host: "unix:///home/u/.docker/run/docker.sock".into(),
            tls: None,
            origin: endpoint::Origin::Found,
        };
        let daemon = Daemon::new(Ok(Resolution::Searched {
            found: Some(found),
            tried: vec!["unix:///var/run/docker.sock".into()],
        }));
        assert_eq!(
            daemon.address,
            "unix:///home/u/.docker/run/docker.sock (no socket at unix:///var/run/docker.sock)"
        );
        assert!(daemon.absent().is_none());
        let mut none = Daemon::new(Ok(Resolution::Searched {
            found: None,
            tried: vec![
                "unix:///var/run/docker.sock".into(),
                "unix:///run/user/1/docker.sock".into(),
            ],
        }));
        assert_eq!(none.absent().map(<[String]>::len), Some(2));
        let tokio = tokio::runtime::Runtime::new().unwrap();
        let err = none
            .docker(&Runtime::new(tokio.handle().clone()))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "no Docker daemon found: tried unix:///var/run/docker.sock, unix:///run/user/1/docker.sock (no socket there); set DOCKER_HOST, or a context with docker context use or --context");
    }

    #[test]
    fn daemon_answers_become_one_line_naming_the_image_and_daemon() {
        let daemon = at("unix:///run/d.sock");
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
