//! Credential lookup. Secrets stay here: the guest gets an opaque handle (the `credentials`
//! capability), and `Debug` never prints one.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use ocipush_parse::{parse_docker_config, ConfigSource};
use serde::Deserialize;

/// A credential for one registry host.
#[derive(Clone)]
pub struct Credential {
    /// The `host[:port]` it is for; it is only ever sent there.
    pub registry: String,
    username: String,
    password: String,
    /// An OAuth2 refresh token (`identitytoken` in config.json, or a helper's `<token>` user),
    /// exchanged at the registry's token service instead of a password.
    identity_token: Option<String>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credential {{ registry: {:?}, username: {:?}, password: <hidden>, identity token: {} }}",
            self.registry,
            self.username,
            if self.identity_token.is_some() {
                "<hidden>"
            } else {
                "none"
            }
        )
    }
}

impl Credential {
    /// A credential given on the command line (`--username`, `--password-stdin`).
    pub fn new(registry: &str, username: &str, password: &str) -> Self {
        Self {
            registry: registry.to_string(),
            username: username.to_string(),
            password: password.to_string(),
            identity_token: None,
        }
    }

    /// The OAuth2 refresh token to exchange for a bearer token, if this is an identity token.
    pub fn identity_token(&self) -> Option<&str> {
        self.identity_token.as_deref()
    }

    /// The value of an `Authorization: Basic` header.
    pub fn basic_authorization(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// How long a credential helper may take (it may ask a keychain).
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// What the guest's credential handle stands for: the credentials configured for `registry`.
/// The secret is looked up for a repository only when the guest opens one (`Sources::lookup`),
/// since a file may hold keys for one repository or namespace.
#[derive(Debug)]
pub struct Configured {
    pub registry: String,
}

/// An auth file the user named (`--authfile`, `REGISTRY_AUTH_FILE`) that is not there.
#[derive(Debug)]
pub struct MissingAuthFile {
    pub path: PathBuf,
    /// `--authfile` or `REGISTRY_AUTH_FILE`.
    pub named_by: &'static str,
}

impl fmt::Display for MissingAuthFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} names the auth file {}, which does not exist",
            self.named_by,
            self.path.display()
        )
    }
}

impl std::error::Error for MissingAuthFile {}

/// Where credentials come from, in the order podman and skopeo users expect when they name a
/// file: the command line (`--username`, for the destination registry), the auth file named by
/// `--authfile` or `REGISTRY_AUTH_FILE`, Docker's `config.json` (`$DOCKER_CONFIG` or
/// `~/.docker`, with its helpers), then podman's default `auth.json` files
/// (`$XDG_RUNTIME_DIR/containers`, then `$XDG_CONFIG_HOME/containers` or
/// `~/.config/containers`). The first source with a credential for the repository wins.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    cli: Option<Credential>,
    files: Vec<PathBuf>,
}

impl Sources {
    /// The sources for this run: `cli` from the command line, `authfile` from `--authfile`
    /// (else `REGISTRY_AUTH_FILE`), which must exist.
    pub fn new(
        cli: Option<Credential>,
        authfile: Option<PathBuf>,
    ) -> Result<Self, MissingAuthFile> {
        let env = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let named = match authfile {
            Some(path) => Some((path, "--authfile")),
            None => env("REGISTRY_AUTH_FILE").map(|path| (path, "REGISTRY_AUTH_FILE")),
        };
        if let Some((path, named_by)) = &named {
            if !path.is_file() {
                return Err(MissingAuthFile {
                    path: path.clone(),
                    named_by,
                });
            }
        }
        let home = env("HOME");
        let docker = env("DOCKER_CONFIG")
            .or_else(|| home.as_ref().map(|h| h.join(".docker")))
            .map(|dir| dir.join("config.json"));
        let runtime = env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json"));
        let config = env("XDG_CONFIG_HOME")
            .or_else(|| home.map(|h| h.join(".config")))
            .map(|d| d.join("containers/auth.json"));
        let mut files: Vec<PathBuf> = Vec::new();
        for path in [named.map(|(path, _)| path), docker, runtime, config]
            .into_iter()
            .flatten()
        {
            if !files.contains(&path) {
                files.push(path);
            }
        }
        Ok(Self { cli, files })
    }

    /// Whether any source has something for `registry`, for some repository: what the guest's
    /// `lookup` answers. A helper is not run for that; `lookup` runs it.
    pub fn configured(&self, registry: &str) -> bool {
        self.cli
            .as_ref()
            .is_some_and(|c| same_registry(&c.registry, registry))
            || self.files.iter().any(|path| {
                std::fs::read_to_string(path)
                    .is_ok_and(|text| ocipush_parse::mentions_registry(&text, registry))
            })
    }

    /// The credential for `repository` on `registry`, from the first source that has one.
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<Credential> {
        if let Some(cli) = self
            .cli
            .as_ref()
            .filter(|c| same_registry(&c.registry, registry))
        {
            tracing::debug!(registry, source = "command line", "credential lookup");
            return Some(Credential {
                registry: registry.to_string(),
                ..cli.clone()
            });
        }
        self.files.iter().find_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            let found = from_docker_config(&text, registry, repository);
            tracing::debug!(registry, repository, source = %path.display(), found = found.is_some(), "credential lookup");
            found
        })
    }
}

/// Docker Hub goes by several names; everything else by its `host[:port]`.
fn same_registry(a: &str, b: &str) -> bool {
    let hub = |r: &str| matches!(r, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    a == b || (hub(a) && hub(b))
}

fn from_docker_config(text: &str, registry: &str, repository: &str) -> Option<Credential> {
    let credential = |username, password, identity_token| Credential {
        registry: registry.to_string(),
        username,
        password,
        identity_token,
    };
    match parse_docker_config(text, registry, repository)? {
        ConfigSource::Helper(helper) => from_helper(&helper, registry),
        ConfigSource::IdentityToken(token) => {
            Some(credential(String::new(), String::new(), Some(token)))
        }
        ConfigSource::Basic { username, password } => Some(credential(username, password, None)),
    }
}

/// Asks a credential helper, as docker does: `docker-credential-NAME get` with the server on
/// stdin, `{"Username", "Secret"}` on stdout. A helper that fails or says nothing is "no
/// credential". It gets `HELPER_TIMEOUT`; a helper that hangs, or is still running when a
/// signal comes, is killed.
fn from_helper(name: &str, registry: &str) -> Option<Credential> {
    // The name becomes part of a program name: nothing that could reach another path.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        tracing::debug!(
            registry,
            "ignoring a credential helper with an invalid name"
        );
        return None;
    }
    let program = format!("docker-credential-{name}");
    let server = if same_registry(registry, "docker.io") {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(
            |e| tracing::debug!(registry, program, error = %e, "credential helper did not start"),
        )
        .ok()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take()?;
        let _ = stdin.write_all(server.as_bytes());
    }
    let deadline = std::time::Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            // A signal stops the wait too: Ctrl-C must not sit out a hung helper.
            Ok(None)
                if std::time::Instant::now() < deadline
                    && crate::interrupt::received().is_none() =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::debug!(
                    registry,
                    program,
                    "credential helper did not answer in time"
                );
                return None;
            }
        }
    };
    let mut stdout = Vec::new();
    {
        use std::io::Read;
        child
            .stdout
            .take()?
            .take(1 << 20)
            .read_to_end(&mut stdout)
            .ok()?;
    }
    tracing::debug!(registry, source = %program, found = status.success(), "credential lookup");
    if !status.success() {
        return None;
    }
    #[derive(Deserialize)]
    struct Reply {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let reply: Reply = serde_json::from_slice(&stdout).ok()?;
    // Docker's convention: the user `<token>` means the secret is an identity token.
    let identity = reply.username == "<token>";
    Some(Credential {
        registry: registry.to_string(),
        username: if identity {
            String::new()
        } else {
            reply.username
        },
        password: if identity {
            String::new()
        } else {
            reply.secret.clone()
        },
        identity_token: identity.then_some(reply.secret),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_auth_by_host_with_or_without_scheme() {
        let config = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpodWI="},
            "127.0.0.1:5000": {"auth": "YWxpY2U6czNjcmV0"},
            "http://gitea.local:8443": {"username": "giteaAdmin", "password": "pw"}
        }}"#;
        let local = from_docker_config(config, "127.0.0.1:5000", "a").unwrap();
        assert_eq!(local.basic_authorization(), "Basic YWxpY2U6czNjcmV0");
        assert_eq!(
            from_docker_config(config, "docker.io", "library/a")
                .unwrap()
                .username,
            "user"
        );
        assert_eq!(
            from_docker_config(config, "gitea.local:8443", "a")
                .unwrap()
                .password,
            "pw"
        );
        assert!(from_docker_config(config, "other:5000", "a").is_none());
    }

    #[test]
    fn identity_tokens_take_the_place_of_passwords() {
        let config =
            r#"{"auths": {"127.0.0.1:5000": {"auth": "dXNlcjo=", "identitytoken": "rt-1"}}}"#;
        let found = from_docker_config(config, "127.0.0.1:5000", "a").unwrap();
        assert_eq!(found.identity_token(), Some("rt-1"));
    }

    #[test]
    fn the_command_line_credential_is_only_for_its_registry() {
        let sources = Sources {
            cli: Some(Credential::new("docker.io", "me", "pw")),
            files: Vec::new(),
        };
        let hub = sources.lookup("index.docker.io", "library/a").unwrap();
        assert_eq!(
            (hub.registry.as_str(), hub.username.as_str()),
            ("index.docker.io", "me")
        );

        assert!(!same_registry("127.0.0.1:5000", "127.0.0.1:5001"));
    }

    #[test]
    fn debug_hides_the_password() {
        let c = Credential {
            registry: "r".into(),
            username: "u".into(),
            password: "pw-42".into(),
            identity_token: Some("refresh-42".into()),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("pw-42") && !shown.contains("refresh-42"),
            "{shown}"
        );
    }
}
