//! containers-registries.conf(5), the file podman, skopeo and buildah read: only what decides
//! how ocipush reaches a registry, a `[[registry]]` entry's `insecure = true` (plain HTTP and
//! unverified certificates allowed), and version 1's `[registries.insecure] registries = [...]`.
//! Matching is containers/image's (`sysregistriesv2`): an entry's `prefix` (its `location` when
//! it has none) matches `host[:port]/repository` when it equals it or is followed there by
//! `/`, `:` or `@`; `*.example.com` matches subdomains; the longest matching prefix wins.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The system file, read when neither `CONTAINERS_REGISTRIES_CONF` nor the user's file says
/// otherwise.
const SYSTEM_FILE: &str = "/etc/containers/registries.conf";

/// The entries that matter here, from the one file in effect.
#[derive(Clone, Debug, Default)]
pub struct RegistriesConf {
    /// Prefix and whether it is insecure, in file order.
    entries: Vec<(String, bool)>,
}

/// A registries.conf that could not be read or parsed.
#[derive(Debug)]
pub struct ConfError {
    pub path: PathBuf,
    pub detail: String,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "registries.conf {}: {}",
            self.path.display(),
            self.detail
        )
    }
}

impl std::error::Error for ConfError {}

#[derive(Deserialize, Default)]
struct File {
    #[serde(default)]
    registry: Vec<Entry>,
    /// Version 1's tables.
    #[serde(default)]
    registries: V1,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    location: String,
    prefix: Option<String>,
    #[serde(default)]
    insecure: bool,
}

#[derive(Deserialize, Default)]
struct V1 {
    #[serde(default)]
    insecure: V1List,
}

#[derive(Deserialize, Default)]
struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

impl RegistriesConf {
    /// The file in effect, as containers/image picks it: `CONTAINERS_REGISTRIES_CONF` (which
    /// must exist), else `$HOME/.config/containers/registries.conf` if it exists, else
    /// `/etc/containers/registries.conf` if it exists; none at all is an empty configuration.
    pub fn load() -> Result<Self, ConfError> {
        let named = std::env::var_os("CONTAINERS_REGISTRIES_CONF").filter(|v| !v.is_empty());
        let path = match named {
            Some(path) => PathBuf::from(path),
            None => {
                let user = std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|home| Path::new(&home).join(".config/containers/registries.conf"));
                match user.filter(|p| p.exists()) {
                    Some(path) => path,
                    None if Path::new(SYSTEM_FILE).exists() => PathBuf::from(SYSTEM_FILE),
                    None => return Ok(Self::default()),
                }
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfError {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        Self::parse(&text).map_err(|detail| ConfError { path, detail })
    }

    /// Parses a registries.conf; an error says where in it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |span| {
                text[..span.start.min(text.len())].lines().count().max(1)
            });
            format!("line {line}: {}", e.message())
        })?;
        let entries = file
            .registry
            .into_iter()
            .map(|entry| (entry.prefix.unwrap_or(entry.location), entry.insecure))
            .chain(
                file.registries
                    .insecure
                    .registries
                    .into_iter()
                    .map(|host| (host, true)),
            )
            .filter(|(prefix, _)| !prefix.is_empty())
            .collect();
        Ok(Self { entries })
    }

    /// Whether the entry that matches `repository` on `registry` best says `insecure = true`.
    pub fn insecure(&self, registry: &str, repository: &str) -> bool {
        let name = format!("{registry}/{repository}");
        let mut best: Option<(usize, bool)> = None;
        for (prefix, insecure) in &self.entries {
            if let Some(length) = matching_prefix(&name, prefix) {
                // The first of equally long prefixes wins, as in containers/image.
                if best.is_none_or(|(longest, _)| length > longest) {
                    best = Some((length, *insecure));
                }
            }
        }
        best.is_some_and(|(_, insecure)| insecure)
    }
}

/// How long a match of `prefix` on `name` is, if it matches (containers/image's
/// `refMatchingPrefix`).
fn matching_prefix(name: &str, prefix: &str) -> Option<usize> {
    if let Some(domain) = prefix.strip_prefix('*') {
        // `*.example.com`: a subdomain, within the host part.
        let index = name.find(domain)?;
        if name[..index].contains('/') {
            return None;
        }
        let end = index + domain.len();
        return match name[end..].chars().next() {
            None | Some(':' | '/' | '@') => Some(end),
            _ => None,
        };
    }
    let rest = name.strip_prefix(prefix)?;
    match rest.chars().next() {
        None | Some(':' | '/' | '@') => Some(prefix.len()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_prefix_decides() {
        let conf = RegistriesConf::parse(
            r#"
            unqualified-search-registries = ["docker.io"]
            [[registry]]
            location = "reg.lan:5000"
            insecure = true
            [[registry]]
            location = "reg.lan:5000/secure"
            [[registry]]
            prefix = "*.corp.example"
            location = "mirror.corp.example"
            insecure = true
            [aliases]
            "app" = "reg.lan:5000/app"
            "#,
        )
        .unwrap();
        assert!(conf.insecure("reg.lan:5000", "team/app"));
        assert!(!conf.insecure("reg.lan:5000", "secure/app"));
        assert!(conf.insecure("reg.lan:5000", "securer/app"));
        assert!(!conf.insecure("reg.lan:5001", "team/app"));
        assert!(!conf.insecure("reg.la", "team/app"));
        assert!(conf.insecure("a.corp.example:443", "x"));
        assert!(!conf.insecure("corp.example", "x"));
        assert!(!conf.insecure("other.lan", "a.corp.example"));
    }

    #[test]
    fn version_1_insecure_lists_and_errors_with_their_line() {
        let conf = RegistriesConf::parse(
            "[registries.search]\nregistries = ['docker.io']\n[registries.insecure]\nregistries = ['old.lan']\n",
        )
        .unwrap();
        assert!(conf.insecure("old.lan", "a"));
        assert!(!conf.insecure("new.lan", "a"));
        let err = RegistriesConf::parse("[[registry]]\nlocation = \"a\"\ninsecure = \"yes\"\n")
            .unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
