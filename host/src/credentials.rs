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

/// Looks `registry` up: the command line's credential (`cli`, for the destination registry)
/// first, then Docker's `config.json` (`$DOCKER_CONFIG` or `~/.docker`), then podman's
/// `auth.json` (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers`, `~/.config/containers`).
pub fn lookup(registry: &str, cli: Option<&Credential>) -> Option<Credential> {
    if let Some(cli) = cli.filter(|c| same_registry(&c.registry, registry)) {
        tracing::debug!(registry, source = "command line", "credential lookup");
        return Some(Credential {
            registry: registry.to_string(),
            ..cli.clone()
        });
    }
    config_files().into_iter().find_map(|path| {
        let text = std::fs::read_to_string(&path).ok()?;
        let found = from_docker_config(&text, registry);
        tracing::debug!(registry, source = %path.display(), found = found.is_some(), "credential lookup");
        found
    })
}

/// The files credentials are read from, in order of precedence.
fn config_files() -> Vec<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME");
    let docker = env("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker")));
    let podman = env("REGISTRY_AUTH_FILE")
        .or_else(|| env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")))
        .filter(|p| p.exists())
        .or_else(|| home.map(|h| h.join(".config/containers/auth.json")));
    docker
        .map(|d| d.join("config.json"))
        .into_iter()
        .chain(podman)
        .collect()
}

/// Docker Hub goes by several names; everything else by its `host[:port]`.
fn same_registry(a: &str, b: &str) -> bool {
    let hub = |r: &str| matches!(r, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    a == b || (hub(a) && hub(b))
}

fn from_docker_config(text: &str, registry: &str) -> Option<Credential> {
    let credential = |username, password, identity_token| Credential {
        registry: registry.to_string(),
        username,
        password,
        identity_token,
    };
    match parse_docker_config(text, registry)? {
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
        let local = from_docker_config(config, "127.0.0.1:5000").unwrap();
        assert_eq!(local.basic_authorization(), "Basic YWxpY2U6czNjcmV0");
        assert_eq!(
            from_docker_config(config, "docker.io").unwrap().username,
            "user"
        );
        assert_eq!(
            from_docker_config(config, "gitea.local:8443")
                .unwrap()
                .password,
            "pw"
        );
        assert!(from_docker_config(config, "other:5000").is_none());
    }

    #[test]
    fn identity_tokens_take_the_place_of_passwords() {
        let config =
            r#"{"auths": {"127.0.0.1:5000": {"auth": "dXNlcjo=", "identitytoken": "rt-1"}}}"#;
        let found = from_docker_config(config, "127.0.0.1:5000").unwrap();
        assert_eq!(found.identity_token(), Some("rt-1"));
    }

    #[test]
    fn the_command_line_credential_is_only_for_its_registry() {
        let cli = Credential::new("docker.io", "me", "pw");
        let hub = lookup("index.docker.io", Some(&cli)).unwrap();
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
