//! Credential lookup. Secrets stay here: the guest gets an opaque handle, and `Debug` never
//! prints one.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;

/// A credential for one registry host.
#[derive(Clone)]
pub struct Credential {
    /// The `host[:port]` it is for; it is only ever sent there.
    pub registry: String,
    username: String,
    password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credential {{ registry: {:?}, username: {:?}, password: <hidden> }}",
            self.registry, self.username
        )
    }
}

impl Credential {
    /// The value of an `Authorization: Basic` header.
    pub fn basic_authorization(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Looks `registry` up in Docker's `config.json` (`$DOCKER_CONFIG` or `~/.docker`).
pub fn lookup(registry: &str) -> Option<Credential> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")))?;
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let found = from_docker_config(&text, registry);
    tracing::debug!(registry, source = %path.display(), found = found.is_some(), "credential lookup");
    found
}

fn from_docker_config(text: &str, registry: &str) -> Option<Credential> {
    let config: DockerConfig = serde_json::from_str(text).ok()?;
    let wanted = if registry == "docker.io" {
        "index.docker.io"
    } else {
        registry
    };
    let (_, entry) = config.auths.iter().find(|(key, _)| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        key.split('/').next() == Some(wanted)
    })?;
    let (username, password) = match (&entry.auth, &entry.username, &entry.password) {
        (Some(auth), _, _) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, pass) = text.split_once(':')?;
            (user.to_string(), pass.to_string())
        }
        (None, Some(user), Some(pass)) => (user.clone(), pass.clone()),
        _ => return None,
    };
    Some(Credential {
        registry: registry.to_string(),
        username,
        password,
    })
}

impl crate::guest::ocipush::core::credentials::Host for crate::guest::HostState {
    fn lookup(
        &mut self,
        registry: String,
    ) -> wasmtime::Result<Option<wasmtime::component::Resource<Credential>>> {
        Ok(match lookup(&registry) {
            Some(credential) => Some(self.table.push(credential)?),
            None => None,
        })
    }
}

impl crate::guest::ocipush::core::credentials::HostCredential for crate::guest::HostState {
    fn drop(
        &mut self,
        credential: wasmtime::component::Resource<Credential>,
    ) -> wasmtime::Result<()> {
        self.table.delete(credential)?;
        Ok(())
    }
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
    fn debug_hides_the_password() {
        let c = Credential {
            registry: "r".into(),
            username: "u".into(),
            password: "pw-42".into(),
        };
        assert!(!format!("{c:?}").contains("pw-42"));
    }
}
