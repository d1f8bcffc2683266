//! Which daemon to speak to, found as the Docker CLI finds it (its `resolveContextName`), then,
//! when nothing names one, at the sockets Docker installs use:
//!
//! 1. `--context NAME`;
//! 2. `DOCKER_HOST` (the CLI's default context, with `DOCKER_TLS_VERIFY` and
//!    `DOCKER_CERT_PATH`);
//! 3. `DOCKER_CONTEXT`;
//! 4. `currentContext` in `$DOCKER_CONFIG/config.json` (default `~/.docker`);
//!
//! a context is read from `contexts/meta/<sha256 of its name>/meta.json` (endpoint and
//! `SkipTLSVerify`), its TLS material from `contexts/tls/<sha256>/docker/`; the context named
//! `default` is `DOCKER_HOST`, or the default socket. When nothing names a daemon, the first of
//! these sockets that exists: `/var/run/docker.sock`, rootless Docker's
//! `$XDG_RUNTIME_DIR/docker.sock`, Docker Desktop's `~/.docker/run/docker.sock`, Colima's
//! `~/.colima/default/docker.sock`.

use std::fmt;
use std::path::{Path, PathBuf};

use ocipush_parse::MetaError;
use sha2::{Digest as _, Sha256};

/// The daemon's socket when nothing else is named.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The context that stands for `DOCKER_HOST` or the default socket, and is never stored.
const DEFAULT_CONTEXT: &str = "default";

/// What the resolution reads from the process: the `--context` flag and the environment.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// `--context NAME`.
    pub context_flag: Option<String>,
    pub docker_host: Option<String>,
    pub docker_context: Option<String>,
    /// `DOCKER_CONFIG`: where `config.json` and the context store are.
    pub docker_config: Option<PathBuf>,
    /// `DOCKER_TLS_VERIFY` set to anything non-empty.
    pub tls_verify: bool,
    /// `DOCKER_CERT_PATH`: `ca.pem`, `cert.pem` and `key.pem` for `DOCKER_HOST`.
    pub cert_path: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub xdg_runtime_dir: Option<PathBuf>,
}

impl Environment {
    /// The process's environment, with the `--context` flag's value.
    pub fn from_process(context_flag: Option<&str>) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            context_flag: context_flag.map(str::to_string),
            docker_host: var("DOCKER_HOST"),
            docker_context: var("DOCKER_CONTEXT"),
            docker_config: var("DOCKER_CONFIG").map(PathBuf::from),
            tls_verify: var("DOCKER_TLS_VERIFY").is_some(),
            cert_path: var("DOCKER_CERT_PATH").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR").map(PathBuf::from),
        }
    }

    /// `$DOCKER_CONFIG`, else `~/.docker`.
    fn config_dir(&self) -> Option<PathBuf> {
        self.docker_config
            .clone()
            .or_else(|| self.home.as_ref().map(|home| home.join(".docker")))
    }
}

/// What named the daemon, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--context NAME`.
    Flag(String),
    DockerHost,
    /// `DOCKER_CONTEXT=NAME`.
    DockerContext(String),
    /// `currentContext` in this `config.json`.
    CurrentContext {
        name: String,
        config: PathBuf,
    },
    /// Nothing: a socket found where Docker installs put one.
    Found,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(name) => write!(f, "context {name} from --context"),
            Self::DockerHost => write!(f, "DOCKER_HOST"),
            Self::DockerContext(name) => write!(f, "context {name} from DOCKER_CONTEXT"),
            Self::CurrentContext { name, config } => {
                write!(f, "context {name}, current in {}", config.display())
            }
            Self::Found => write!(f, "found"),
        }
    }
}

/// TLS towards the daemon: a CA, a client certificate and key (each used when its file
/// exists), and whether the daemon's certificate is checked at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub verify: bool,
}

impl Tls {
    /// `ca.pem`, `cert.pem` and `key.pem` in `dir`, as the Docker CLI names them.
    fn in_dir(dir: &Path, verify: bool) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            verify,
        }
    }
}

/// One daemon: its address and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `unix:///…` or `tcp://host:port` (also `http://`, `https://`).
    pub host: String,
    pub tls: Option<Tls>,
    pub origin: Origin,
}

impl Endpoint {
    /// The address without credentials, as provenance names the daemon: a user or password in
    /// its authority (`tcp://user:secret@host:2376`) and its query and fragment are left out.
    pub fn without_credentials(&self) -> String {
        let address = self.host.split(['?', '#']).next().unwrap_or_default();
        let Some((scheme, rest)) = address.split_once("://") else {
            return address.to_string();
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        format!("{scheme}://{host}{path}")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin {
            // As before contexts: the address alone says where it came from.
            Origin::DockerHost | Origin::Found => write!(f, "{}", self.host),
            ref origin => write!(f, "{} ({origin})", self.host),
        }
    }
}

/// Where the daemon is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Something named it (the flag, the environment or `config.json`).
    Named(Endpoint),
    /// Nothing named one: the first usual socket that exists, after the sockets `tried` that
    /// do not. `None` when no Docker daemon is found anywhere.
    Searched {
        found: Option<Endpoint>,
        tried: Vec<String>,
    },
}

/// Why the context store could not say where the daemon is.
#[derive(Clone, Debug)]
pub enum Error {
    /// `config.json` is there but cannot be read, or is not JSON.
    Config { path: PathBuf, cause: String },
    /// The named context has no `meta.json`.
    NoSuchContext { origin: Origin, meta: PathBuf },
    /// Its `meta.json` cannot be read or names no Docker endpoint.
    BadContext {
        origin: Origin,
        meta: PathBuf,
        cause: String,
    },
    /// A context is named, but neither `DOCKER_CONFIG` nor `HOME` says where the store is.
    NoStore { origin: Origin },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config { path, cause } => {
                write!(f, "reading the Docker CLI's {}: {cause}", path.display())
            }
            Self::NoSuchContext { origin, meta } => write!(
                f,
                "Docker {origin} does not exist: no {} (docker context ls lists them)",
                meta.display()
            ),
            Self::BadContext {
                origin,
                meta,
                cause,
            } => write!(f, "Docker {origin}: {}: {cause}", meta.display()),
            Self::NoStore { origin } => write!(
                f,
                "Docker {origin}: neither DOCKER_CONFIG nor HOME says where the context store is"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Finds the daemon as the Docker CLI does, then at the usual sockets; `exists` says whether a
/// socket is there (the only thing looked at besides `config.json` and the context store).
pub fn resolve(env: &Environment, exists: impl Fn(&Path) -> bool) -> Result<Resolution, Error> {
    let (name, origin) = if let Some(name) = &env.context_flag {
        (name.clone(), Origin::Flag(name.clone()))
    } else if env.docker_host.is_some() {
        return Ok(Resolution::Named(docker_host_endpoint(env)));
    } else if let Some(name) = &env.docker_context {
        (name.clone(), Origin::DockerContext(name.clone()))
    } else {
        match current_context(env)? {
            Some((name, config)) => (name.clone(), Origin::CurrentContext { name, config }),
            None => return Ok(search(env, exists)),
        }
    };
    context_endpoint(env, &name, origin).map(Resolution::Named)
}

/// `DOCKER_HOST`, with TLS when `DOCKER_TLS_VERIFY` is set (files in `DOCKER_CERT_PATH`, else
/// the config directory), as the CLI's default context has it.
fn docker_host_endpoint(env: &Environment) -> Endpoint {
    let cert_dir = env.cert_path.clone().or_else(|| env.config_dir());
    Endpoint {
        host: env.docker_host.clone().unwrap_or_default(),
        tls: match cert_dir {
            Some(dir) if env.tls_verify => Some(Tls::in_dir(&dir, true)),
            _ => None,
        },
        origin: Origin::DockerHost,
    }
}

/// The context `config.json` makes current, if any, and that file.
fn current_context(env: &Environment) -> Result<Option<(String, PathBuf)>, Error> {
    let Some(dir) = env.config_dir() else {
        return Ok(None);
    };
    let config = dir.join("config.json");
    let text = match std::fs::read_to_string(&config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Config {
                path: config,
                cause: e.to_string(),
            })
        }
    };
    let name = ocipush_parse::current_context(&text).map_err(|cause| Error::Config {
        path: config.clone(),
        cause,
    })?;
    Ok(name.map(|name| (name, config)))
}

/// The endpoint of context `name` (named by `origin`); `default` is `DOCKER_HOST` or the
/// default socket.
fn context_endpoint(env: &Environment, name: &str, origin: Origin) -> Result<Endpoint, Error> {
    if name == DEFAULT_CONTEXT {
        return Ok(match env.docker_host {
            Some(_) => Endpoint {
                origin,
                ..docker_host_endpoint(env)
            },
            None => Endpoint {
                host: format!("unix://{DEFAULT_SOCKET}"),
                tls: None,
                origin,
            },
        });
    }
    let Some(store) = env.config_dir().map(|dir| dir.join("contexts")) else {
        return Err(Error::NoStore { origin });
    };
    let id = hex::encode(Sha256::digest(name.as_bytes()));
    let meta = store.join("meta").join(&id).join("meta.json");
    let text = match std::fs::read_to_string(&meta) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoSuchContext { origin, meta })
        }
        Err(e) => {
            return Err(Error::BadContext {
                origin,
                meta,
                cause: e.to_string(),
            })
        }
    };
    let endpoint = ocipush_parse::context_endpoint(&text).map_err(|e| Error::BadContext {
        origin: origin.clone(),
        meta: meta.clone(),
        cause: match e {
            MetaError::Invalid(cause) => cause,
            MetaError::NoDockerHost => "it names no Docker endpoint (Endpoints.docker.Host)".into(),
        },
    })?;
    // The CLI speaks TLS when the context holds TLS material or skips verification.
    let tls_dir = store.join("tls").join(&id).join("docker");
    let tls = (tls_dir.is_dir() || endpoint.skip_tls_verify)
        .then(|| Tls::in_dir(&tls_dir, !endpoint.skip_tls_verify));
    Ok(Endpoint {
        host: endpoint.host,
        tls,
        origin,
    })
}

/// The usual sockets, in order, for when nothing names a daemon.
pub fn usual_sockets(env: &Environment) -> Vec<PathBuf> {
    let mut sockets = vec![PathBuf::from(DEFAULT_SOCKET)];
    sockets.extend(
        env.xdg_runtime_dir
            .iter()
            .map(|dir| dir.join("docker.sock")),
    );
    if let Some(home) = &env.home {
        sockets.push(home.join(".docker/run/docker.sock"));
        sockets.push(home.join(".colima/default/docker.sock"));
    }
    sockets
}

fn search(env: &Environment, exists: impl Fn(&Path) -> bool) -> Resolution {
    let mut tried = Vec::new();
    for socket in usual_sockets(env) {
        let host = format!("unix://{}", socket.display());
        if exists(&socket) {
            let found = Endpoint {
                host,
                tls: None,
                origin: Origin::Found,
            };
            return Resolution::Searched {
                found: Some(found),
                tried,
            };
        }
        tried.push(host);
    }
    Resolution::Searched { found: None, tried }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_without_credentials_keeps_scheme_host_and_path() {
        let at = |host: &str| {
            Endpoint {
                host: host.into(),
                tls: None,
                origin: Origin::DockerHost,
            }
            .without_credentials()
        };
        assert_eq!(
            at("unix:///var/run/docker.sock"),
            "unix:///var/run/docker.sock"
        );
        assert_eq!(at("unix:///run/u@1/d.sock"), "unix:///run/u@1/d.sock");
        assert_eq!(at("tcp://10.0.0.5:2376"), "tcp://10.0.0.5:2376");
        assert_eq!(at("tcp://user:s3cret@10.0.0.5:2376"), "tcp://10.0.0.5:2376");
        assert_eq!(
            at("https://u:p@d.example:2376/v1?token=s3cret#x"),
            "https://d.example:2376/v1"
        );
    }

    /// A Docker CLI configuration directory with `config.json` and contexts, in a temp dir.
    struct Store(tempfile::TempDir);

    impl Store {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        fn dir(&self) -> PathBuf {
            self.0.path().to_path_buf()
        }

        fn current(&self, name: &str) {
            let config = format!(r#"{{"auths":{{}},"currentContext":"{name}"}}"#);
            std::fs::write(self.0.path().join("config.json"), config).unwrap();
        }

        /// A context as `docker context create NAME --docker host=HOST` writes it.
        fn context(&self, name: &str, host: &str, skip_tls_verify: bool) -> PathBuf {
            let id = hex::encode(Sha256::digest(name.as_bytes()));
            let meta = self.0.path().join("contexts/meta").join(&id);
            std::fs::create_dir_all(&meta).unwrap();
            let json = format!(
                r#"{{"Name":"{name}","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{host}","SkipTLSVerify":{skip_tls_verify}}}}}}}"#
            );
            std::fs::write(meta.join("meta.json"), json).unwrap();
            self.0.path().join("contexts/tls").join(&id).join("docker")
        }

        fn env(&self) -> Environment {
            Environment {
                docker_config: Some(self.dir()),
                home: Some(PathBuf::from("/home/u")),
                xdg_runtime_dir: Some(PathBuf::from("/run/user/1000")),
                ..Environment::default()
            }
        }
    }

    fn named(resolution: Resolution) -> Endpoint {
        match resolution {
            Resolution::Named(endpoint) => endpoint,
            other => panic!("not named: {other:?}"),
        }
    }

    fn nothing(_: &Path) -> bool {
        false
    }

    #[test]
    fn the_flag_then_docker_host_then_docker_context_then_config_json() {
        let store = Store::new();
        store.current("cur");
        store.context("cur", "unix:///run/cur.sock", false);
        store.context("env", "unix:///run/env.sock", false);
        store.context("flag", "unix:///run/flag.sock", false);
        let mut env = store.env();
        assert_eq!(
            named(resolve(&env, nothing).unwrap()).host,
            "unix:///run/cur.sock"
        );
        env.docker_context = Some("env".into());
        assert_eq!(
            named(resolve(&env, nothing).unwrap()).host,
            "unix:///run/env.sock"
        );
        // DOCKER_HOST wins over DOCKER_CONTEXT and config.json, as the CLI's default context.
        env.docker_host = Some("tcp://127.0.0.1:2375".into());
        let endpoint = named(resolve(&env, nothing).unwrap());
        assert_eq!(
            (endpoint.host.as_str(), &endpoint.origin, &endpoint.tls),
            ("tcp://127.0.0.1:2375", &Origin::DockerHost, &None)
        );
        // --context wins over everything.
        env.context_flag = Some("flag".into());
        let endpoint = named(resolve(&env, nothing).unwrap());
        assert_eq!(endpoint.host, "unix:///run/flag.sock");
        assert_eq!(
            endpoint.to_string(),
            "unix:///run/flag.sock (context flag from --context)"
        );
    }

    #[test]
    fn the_default_context_is_docker_host_or_the_default_socket() {
        let store = Store::new();
        store.current("default");
        let mut env = store.env();
        let endpoint = named(resolve(&env, nothing).unwrap());
        assert_eq!(endpoint.host, "unix:///var/run/docker.sock");
        env.context_flag = Some("default".into());
        env.docker_host = Some("unix:///run/h.sock".into());
        let endpoint = named(resolve(&env, nothing).unwrap());
        assert_eq!(endpoint.host, "unix:///run/h.sock");
        assert_eq!(endpoint.origin, Origin::Flag("default".into()));
    }

    #[test]
    fn tls_comes_from_the_environment_or_the_contexts_tls_material() {
        let store = Store::new();
        let mut env = store.env();
        env.docker_host = Some("tcp://10.0.0.1:2376".into());
        env.tls_verify = true;
        let tls = named(resolve(&env, nothing).unwrap()).tls.unwrap();
        assert_eq!(
            tls.ca,
            store.dir().join("ca.pem"),
            "the config dir by default"
        );
        assert!(tls.verify);
        env.cert_path = Some(PathBuf::from("/certs"));
        let tls = named(resolve(&env, nothing).unwrap()).tls.unwrap();
        assert_eq!(
            (tls.ca, tls.cert, tls.key),
            (
                "/certs/ca.pem".into(),
                "/certs/cert.pem".into(),
                "/certs/key.pem".into()
            )
        );

        let env = Environment {
            docker_context: Some("remote".into()),
            ..store.env()
        };
        let tls_dir = store.context("remote", "tcp://10.0.0.2:2376", false);
        assert_eq!(named(resolve(&env, nothing).unwrap()).tls, None);
        std::fs::create_dir_all(&tls_dir).unwrap();
        let tls = named(resolve(&env, nothing).unwrap()).tls.unwrap();
        assert_eq!((tls.ca, tls.verify), (tls_dir.join("ca.pem"), true));
        store.context("remote", "tcp://10.0.0.2:2376", true);
        assert!(!named(resolve(&env, nothing).unwrap()).tls.unwrap().verify);
    }

    #[test]
    fn nothing_named_searches_the_usual_sockets_in_order() {
        let store = Store::new();
        let env = store.env();
        let all = [
            "unix:///var/run/docker.sock",
            "unix:///run/user/1000/docker.sock",
            "unix:///home/u/.docker/run/docker.sock",
            "unix:///home/u/.colima/default/docker.sock",
        ];
        assert_eq!(
            resolve(&env, nothing).unwrap(),
            Resolution::Searched {
                found: None,
                tried: all.iter().map(|s| s.to_string()).collect()
            }
        );
        let desktop = |p: &Path| {
            p.ends_with(".docker/run/docker.sock") || p.ends_with("colima/default/docker.sock")
        };
        match resolve(&env, desktop).unwrap() {
            Resolution::Searched {
                found: Some(endpoint),
                tried,
            } => {
                assert_eq!(endpoint.host, all[2]);
                assert_eq!(tried, all[..2]);
            }
            other => panic!("{other:?}"),
        }
        let standard = |p: &Path| p == Path::new(DEFAULT_SOCKET);
        match resolve(&env, standard).unwrap() {
            Resolution::Searched { found, tried } => {
                assert_eq!(found.unwrap().host, all[0]);
                assert!(tried.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_or_broken_context_is_one_line_naming_it() {
        let store = Store::new();
        let mut env = store.env();
        env.docker_context = Some("gone".into());
        let err = resolve(&env, nothing).unwrap_err().to_string();
        assert!(
            err.starts_with("Docker context gone from DOCKER_CONTEXT does not exist: no ")
                && err.contains("/contexts/meta/"),
            "{err}"
        );
        let meta = store.context("odd", "", false);
        env.docker_context = None;
        store.current("odd");
        let err = resolve(&env, nothing).unwrap_err().to_string();
        assert!(err.contains("context odd, current in"), "{err}");
        assert!(
            err.ends_with("it names no Docker endpoint (Endpoints.docker.Host)"),
            "{err}"
        );
        drop(meta);
        std::fs::write(store.dir().join("config.json"), "{").unwrap();
        let err = resolve(&env, nothing).unwrap_err().to_string();
        assert!(err.starts_with("reading the Docker CLI's "), "{err}");
        // A config.json without a current context is nothing named.
        std::fs::write(store.dir().join("config.json"), "{}").unwrap();
        assert!(matches!(
            resolve(&env, nothing).unwrap(),
            Resolution::Searched { found: None, .. }
        ));
    }
}
