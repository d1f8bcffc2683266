//! Docker's `config.json` and podman's `auth.json`: where a registry's credential comes from.

use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    /// The credential helper for every registry (`docker-credential-NAME`).
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    /// Credential helpers by registry, ahead of `credsStore`.
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
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

/// Docker Hub's names, as keys spell it.
fn hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// Whether a key written as a URL (`https://HOST/...`, as `docker login` wrote them for years)
/// or a bare host names `registry`.
fn host_key_is(key: &str, registry: &str) -> bool {
    let host = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .map_or(key, |rest| rest.split('/').next().unwrap_or(""));
    host == registry || (hub(host) && hub(registry))
}

/// The `auths` entry for `repository` on `registry`, as containers-auth.json(5) orders them:
/// the most specific key first (`host/ns/repo`, then `host/ns`, then `host`), then a key
/// written as a URL whose host is the registry's (the first in sorted order, so the choice
/// never depends on the file's order).
fn auths_entry<'a>(
    auths: &'a HashMap<String, AuthEntry>,
    registry: &str,
    repository: &str,
) -> Option<&'a AuthEntry> {
    let mut scope = if hub(registry) {
        format!("docker.io/{repository}")
    } else {
        format!("{registry}/{repository}")
    };
    loop {
        if let Some(entry) = auths.get(&scope) {
            return Some(entry);
        }
        match scope.rfind('/') {
            Some(slash) => scope.truncate(slash),
            None => break,
        }
    }
    let mut keys: Vec<&String> = auths
        .keys()
        .filter(|key| key.contains("://") && host_key_is(key, registry))
        .collect();
    keys.sort();
    keys.first().and_then(|key| auths.get(*key))
}

/// Reads a Docker `config.json` or podman `auth.json` for `repository` on `registry`, as docker
/// does: the registry's own helper, else the default store (`"credsStore": ""` is none), else
/// the file's `auths` entry (`auths_entry`). Pure parsing: no helper runs here (the
/// `docker_config` fuzz target calls this on arbitrary text).
pub fn parse_docker_config(text: &str, registry: &str, repository: &str) -> Option<ConfigSource> {
    let config: DockerConfig = serde_json::from_str(text).ok()?;
    let mut helpers: Vec<(&String, &String)> = config
        .cred_helpers
        .iter()
        .filter(|(key, _)| host_key_is(key, registry))
        .collect();
    helpers.sort();
    let helper = helpers.first().map(|(_, helper)| *helper).or(config
        .creds_store
        .as_ref()
        .filter(|store| !store.is_empty()));
    if let Some(helper) = helper {
        return Some(ConfigSource::Helper(helper.clone()));
    }
    let entry = auths_entry(&config.auths, registry, repository)?;
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

/// Whether a config file has anything for `registry`, for any repository: a helper (its own or
/// the default store), or an `auths` key on that host.
pub fn mentions_registry(text: &str, registry: &str) -> bool {
    let Ok(config) = serde_json::from_str::<DockerConfig>(text) else {
        return false;
    };
    let on_host = |key: &String| {
        host_key_is(key, registry) || {
            let host = key.split('/').next().unwrap_or("");
            host == registry || (hub(host) && hub(registry))
        }
    };
    config.creds_store.is_some_and(|store| !store.is_empty())
        || config
            .cred_helpers
            .keys()
            .any(|key| host_key_is(key, registry))
        || config.auths.keys().any(on_host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(source: Option<ConfigSource>) -> String {
        match source {
            Some(ConfigSource::Basic { username, .. }) => username,
            Some(ConfigSource::Helper(helper)) => format!("helper {helper}"),
            Some(ConfigSource::IdentityToken(_)) => "token".into(),
            None => "none".into(),
        }
    }

    #[test]
    fn the_most_specific_key_wins() {
        let text = r#"{"auths": {
            "r:5": {"username": "host", "password": "p"},
            "r:5/team/app": {"username": "repo", "password": "p"},
            "r:5/team": {"username": "namespace", "password": "p"}
        }}"#;
        assert_eq!(user(parse_docker_config(text, "r:5", "team/app")), "repo");
        assert_eq!(
            user(parse_docker_config(text, "r:5", "team/app/sub")),
            "repo"
        );
        assert_eq!(
            user(parse_docker_config(text, "r:5", "team/other")),
            "namespace"
        );
        assert_eq!(user(parse_docker_config(text, "r:5", "solo")), "host");
        assert_eq!(user(parse_docker_config(text, "r:6", "team/app")), "none");
        // A scoped key is no host key for another repository, and keys are whole components.
        let text = r#"{"auths": {"r:5/team": {"username": "t", "password": "p"}}}"#;
        assert_eq!(user(parse_docker_config(text, "r:5", "teams/app")), "none");
        assert!(mentions_registry(text, "r:5") && !mentions_registry(text, "r:6"));
    }

    #[test]
    fn url_keys_and_hub_names_match_the_host() {
        let text = r#"{"auths": {
            "https://index.docker.io/v1/": {"username": "hub", "password": "p"},
            "http://r:5/v2/": {"username": "url", "password": "p"}
        }}"#;
        assert_eq!(
            user(parse_docker_config(text, "docker.io", "library/a")),
            "hub"
        );
        assert_eq!(user(parse_docker_config(text, "r:5", "a")), "url");
    }

    #[test]
    fn an_empty_creds_store_is_none_and_helpers_come_first() {
        let text = r#"{"credsStore": "", "auths": {"r:5": {"username": "file", "password": "p"}}}"#;
        assert_eq!(user(parse_docker_config(text, "r:5", "a")), "file");
        let text = r#"{"credsStore": "desktop", "credHelpers": {"r:5": "pass"},
                       "auths": {"r:5": {"username": "file", "password": "p"}}}"#;
        assert_eq!(user(parse_docker_config(text, "r:5", "a")), "helper pass");
        assert_eq!(
            user(parse_docker_config(text, "r:6", "a")),
            "helper desktop"
        );
    }
}
