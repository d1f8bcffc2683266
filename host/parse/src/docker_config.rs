//! Docker's `config.json` and podman's `auth.json`: where a registry's credential comes from.

use base64::Engine as _;
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
    /// The credential helper for every registry (`docker-credential-NAME`).
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    /// Credential helpers by registry, ahead of `credsStore`.
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::HashMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    /// An OAuth2 refresh token `docker login` stored instead of the password.
    identitytoken: Option<String>,
}

/// Where a Docker `config.json` (or podman `auth.json`) says a registry's credential comes from.
/// No `Debug`: it holds secrets.
pub enum ConfigSource {
    /// Run `docker-credential-NAME get` (from `credHelpers` or `credsStore`).
    Helper(String),
    /// An OAuth2 refresh token `docker login` stored instead of the password.
    IdentityToken(String),
    /// A user name and password from `auths`.
    Basic { username: String, password: String },
}

/// Reads a Docker `config.json` or podman `auth.json` for `registry`, as docker does: the
/// registry's own helper, else the default store, else the file's `auths` entry. Pure parsing:
/// no helper runs here (the `docker_config` fuzz target calls this on arbitrary text).
pub fn parse_docker_config(text: &str, registry: &str) -> Option<ConfigSource> {
    let config: DockerConfig = serde_json::from_str(text).ok()?;
    let wanted = if registry == "docker.io" {
        "index.docker.io"
    } else {
        registry
    };
    let key_is = |key: &str| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        key.split('/').next() == Some(wanted)
    };
    let helper = config
        .cred_helpers
        .iter()
        .find(|(key, _)| key_is(key))
        .map(|(_, helper)| helper)
        .or(config.creds_store.as_ref());
    if let Some(helper) = helper {
        return Some(ConfigSource::Helper(helper.clone()));
    }
    let (_, entry) = config.auths.iter().find(|(key, _)| key_is(key))?;
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Some(ConfigSource::IdentityToken(token.clone()));
    }
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
    Some(ConfigSource::Basic { username, password })
}
