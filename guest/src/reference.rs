//! Sources and destinations, by skopeo-style transport prefix. Sources: an image in the daemon
//! (a bare name) or a `docker save` tarball, `docker-archive:PATH[:REF]`. Destinations: a
//! registry, `host[:port]/repository[:tag]` as in the distribution reference grammar, or an OCI
//! image layout directory, `oci:DIR[:TAG]`.

use anyhow::{bail, Result};

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An image in the daemon: `name:tag`, `name@digest` or an image ID (`docker-daemon:` may
    /// prefix it).
    Daemon(String),
    /// A `docker save` tarball (`docker-archive:PATH[:REF]`) and, when it holds several images,
    /// which one: a `name:tag` of its manifest.json, or `@N` for the N-th (from 0).
    Archive {
        path: String,
        reference: Option<String>,
    },
    /// An OCI image layout directory (`oci:DIR[:TAG]`) and the tag (its
    /// `org.opencontainers.image.ref.name`) to read, needed when it has several.
    Layout { path: String, tag: Option<String> },
}

impl Source {
    /// Parses a source by its transport prefix. Like skopeo, `docker-archive:` splits the path
    /// from the reference at the first `:` after it.
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(rest) = text.strip_prefix("docker-archive:") {
            let (path, reference) = match rest.split_once(':') {
                Some((path, reference)) => (path, Some(reference.to_string())),
                None => (rest, None),
            };
            if path.is_empty() {
                bail!("source {text:?} names no file (docker-archive:PATH[:NAME:TAG])");
            }
            if reference.as_deref() == Some("") {
                bail!("source {text:?} ends in an empty image reference");
            }
            return Ok(Self::Archive {
                path: path.to_string(),
                reference,
            });
        }
        if let Some(rest) = text.strip_prefix("oci:") {
            let (path, tag) = match rest.split_once(':') {
                Some((path, tag)) => (path, Some(tag.to_string())),
                None => (rest, None),
            };
            if path.is_empty() || tag.as_deref() == Some("") {
                bail!("source {text:?} names no directory or an empty tag (oci:DIR[:TAG])");
            }
            return Ok(Self::Layout {
                path: path.to_string(),
                tag,
            });
        }
        let image = text.strip_prefix("docker-daemon:").unwrap_or(text);
        if image.is_empty() {
            bail!("the source names no image");
        }
        Ok(Self::Daemon(image.to_string()))
    }
}

/// Where a push goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A repository in a registry (`host[:port]/repository[:tag]`, optionally `docker://`).
    Registry(Target),
    /// An OCI image layout directory on the host (`oci:DIR[:TAG]`).
    Layout(LayoutTarget),
}

/// An OCI image layout directory and the tag (`org.opencontainers.image.ref.name`) to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutTarget {
    /// The directory, as the user named it.
    pub path: String,
    pub tag: String,
}

impl Destination {
    /// Parses a destination by its transport prefix; a bare name is a registry destination.
    /// Like skopeo, `oci:` splits the directory from the tag at the first `:` after it.
    pub fn parse(text: &str) -> Result<Self> {
        let Some(rest) = text.strip_prefix("oci:") else {
            let registry = text.strip_prefix("docker://").unwrap_or(text);
            return Ok(Self::Registry(Target::parse(registry)?));
        };
        let (path, tag) = rest.split_once(':').unwrap_or((rest, "latest"));
        if path.is_empty() {
            bail!("destination {text:?} names no directory (oci:DIR[:TAG])");
        }
        if !is_tag(tag) {
            bail!("destination {text:?} has an invalid tag {tag:?} (up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)");
        }
        Ok(Self::Layout(LayoutTarget {
            path: path.to_string(),
            tag: tag.to_string(),
        }))
    }

    /// The tag the manifest is written under.
    pub fn tag(&self) -> &str {
        match self {
            Self::Registry(target) => &target.tag,
            Self::Layout(layout) => &layout.tag,
        }
    }

    /// Where the image goes, without the tag: `host[:port]/repository` or `oci:DIR`.
    pub fn location(&self) -> String {
        match self {
            Self::Registry(target) => target.repository_url(),
            Self::Layout(layout) => format!("oci:{}", layout.path),
        }
    }
}

/// Where a push goes: a registry host, a repository on it, and the tag to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host[:port]`; Docker Hub's is `docker.io`.
    pub registry: String,
    /// The repository path, e.g. `team/myapp`.
    pub repository: String,
    /// The tag the manifest is written under.
    pub tag: String,
}

/// The most characters a tag may have.
const TAG_MAX: usize = 128;
/// The most characters `host/repository` may have (the distribution's NameTotalLengthMax).
const NAME_MAX: usize = 255;

impl Target {
    /// Parses a destination against the distribution reference grammar, before any traffic.
    /// Like docker, a first path component without `.` or `:` that is not `localhost` names a
    /// Docker Hub repository, and a tag defaults to `latest`. Every refusal quotes the offending
    /// part.
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty() {
            bail!("the destination is empty: expected host[:port]/repository[:tag]");
        }
        if let Some(bad) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            bail!("destination {text:?} contains {bad:?}: no spaces or control characters");
        }
        if is_bare_digest(text) {
            bail!("destination {text:?} is a digest, not a repository: a push destination is host[:port]/repository[:tag]");
        }
        if let Some((_, digest)) = text.split_once('@') {
            check_digest(text, digest)?;
            bail!("destination {text:?} names a digest (@{digest}): a push destination needs a tag, host[:port]/repository[:tag]");
        }
        let (rest, tag) = match text.rfind(':') {
            Some(colon) if !text[colon..].contains('/') => (&text[..colon], &text[colon + 1..]),
            _ => (text, "latest"),
        };
        let (registry, repository) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            Some(_) => ("docker.io".to_string(), rest.to_string()),
            None => ("docker.io".to_string(), format!("library/{rest}")),
        };
        check_registry(text, &registry)?;
        if repository.is_empty() {
            bail!("destination {text:?} names no repository after the registry {registry:?}");
        }
        for component in repository.split('/') {
            if component.is_empty() {
                bail!("destination {text:?} has an empty repository path component in {repository:?} (a leading, trailing or doubled '/')");
            }
            if component.bytes().any(|b| b.is_ascii_uppercase()) {
                bail!("destination {text:?} has the repository component {component:?} with upper-case letters: repository names must be lower-case");
            }
            if !is_path_component(component) {
                bail!("destination {text:?} has an invalid repository component {component:?} (lowercase letters and digits, separated by '.', '_', '__' or '-')");
            }
        }
        let name_len = registry.len() + 1 + repository.len();
        if name_len > NAME_MAX {
            bail!("destination {text:?} has a name of {name_len} characters ({registry}/{repository}): at most {NAME_MAX}");
        }
        if tag.is_empty() {
            bail!("destination {text:?} has an empty tag after ':'");
        }
        if tag.len() > TAG_MAX {
            bail!(
                "destination {text:?} has a tag of {} characters: at most {TAG_MAX}",
                tag.len()
            );
        }
        if !is_tag(tag) {
            bail!("destination {text:?} has an invalid tag {tag:?} (A-Z a-z 0-9 _ . -, not starting with . or -)");
        }
        Ok(Self {
            registry,
            repository,
            tag: tag.to_string(),
        })
    }

    /// `host[:port]/repository`, without the tag.
    pub fn repository_url(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// `sha256:<hex>` or 64 hex digits alone: what `docker images --digests` or an image ID look like.
fn is_bare_digest(text: &str) -> bool {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    !text.contains('/')
        && (text.starts_with("sha256:") || hex.len() == 64)
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The digest after `@`: `sha256:` and 64 lowercase hex digits, or a message saying what is wrong.
fn check_digest(text: &str, digest: &str) -> Result<()> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        bail!(
            "destination {text:?} has the digest {digest:?}, which is not sha256:<64 hex digits>"
        );
    };
    if hex.len() != 64 {
        bail!(
            "destination {text:?} has the digest {digest:?} with {} hex digits: sha256 has 64",
            hex.len()
        );
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        bail!("destination {text:?} has the digest {digest:?}: only lowercase hex digits after sha256:");
    }
    Ok(())
}

/// `host[:port]`: DNS labels separated by dots (or a bracketed IPv6 address), and a port of 1-65535.
fn check_registry(text: &str, registry: &str) -> Result<()> {
    let (host, port) = if let Some(v6) = registry.strip_prefix('[') {
        let Some((address, rest)) = v6.split_once(']') else {
            bail!("destination {text:?} has the registry {registry:?} with an unclosed '['");
        };
        if address.is_empty()
            || !address
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            bail!("destination {text:?} has the registry {registry:?}, which is not an IPv6 address in brackets");
        }
        match rest {
            "" => (registry, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (&registry[..registry.len() - port.len() - 1], Some(port)),
                None => bail!(
                    "destination {text:?} has the registry {registry:?}: expected :port after ']'"
                ),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if !host.starts_with('[') {
        let label_ok = |label: &str| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        };
        if let Some(label) = host.split('.').find(|l| !label_ok(l)) {
            bail!("destination {text:?} has the registry host {host:?} with the invalid label {label:?} (letters, digits and inner '-', separated by '.')");
        }
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && (1..=65535).contains(&port.parse::<u32>().unwrap_or(0));
        if !valid {
            bail!("destination {text:?} has the registry port {port:?}: expected a number from 1 to 65535");
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= TAG_MAX
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(registry: &str, repository: &str, tag: &str) -> Target {
        Target {
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.into(),
        }
    }

    #[test]
    fn parses_registry_port_and_tag() {
        assert_eq!(
            Target::parse("127.0.0.1:5000/team/myapp:1.0").unwrap(),
            target("127.0.0.1:5000", "team/myapp", "1.0")
        );
        assert_eq!(
            Target::parse("localhost/a").unwrap(),
            target("localhost", "a", "latest")
        );
        assert_eq!(
            Target::parse("gitea.cnoe.localtest.me:8443/giteaadmin/app").unwrap(),
            target("gitea.cnoe.localtest.me:8443", "giteaadmin/app", "latest")
        );
    }

    #[test]
    fn docker_hub_shorthand() {
        assert_eq!(
            Target::parse("busybox").unwrap(),
            target("docker.io", "library/busybox", "latest")
        );
        assert_eq!(
            Target::parse("me/app:v2").unwrap(),
            target("docker.io", "me/app", "v2")
        );
    }

    #[test]
    fn rejects_bad_destinations() {
        for bad in [
            "127.0.0.1:5000/Team/app",
            "127.0.0.1:5000/app:",
            "127.0.0.1:5000/app@sha256:abcd",
            "127.0.0.1:5000/a//b",
            "127.0.0.1:5000/a:-x",
            "127.0.0.1:5000/a--",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} should be refused");
        }
        let err = Target::parse("127.0.0.1:5000/Team/app")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"Team\""), "{err}");
    }

    #[test]
    fn sources_by_prefix() {
        assert_eq!(
            Source::parse("app:1").unwrap(),
            Source::Daemon("app:1".into())
        );
        assert_eq!(
            Source::parse("docker-daemon:app:1").unwrap(),
            Source::Daemon("app:1".into())
        );
        assert_eq!(
            Source::parse("docker-archive:/tmp/a.tar").unwrap(),
            Source::Archive {
                path: "/tmp/a.tar".into(),
                reference: None
            }
        );
        assert_eq!(
            Source::parse("docker-archive:a.tar:app:1").unwrap(),
            Source::Archive {
                path: "a.tar".into(),
                reference: Some("app:1".into())
            }
        );
        assert_eq!(
            Source::parse("oci:/tmp/l:v1").unwrap(),
            Source::Layout {
                path: "/tmp/l".into(),
                tag: Some("v1".into())
            }
        );
        for bad in [
            "",
            "docker-archive:",
            "docker-archive::app",
            "docker-archive:a.tar:",
            "oci:",
            "oci:dir:",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    fn layout(path: &str, tag: &str) -> Destination {
        Destination::Layout(LayoutTarget {
            path: path.into(),
            tag: tag.into(),
        })
    }

    #[test]
    fn transports_by_prefix() {
        assert_eq!(
            Destination::parse("oci:/tmp/layout:v1").unwrap(),
            layout("/tmp/layout", "v1")
        );
        assert_eq!(
            Destination::parse("oci:out").unwrap(),
            layout("out", "latest")
        );
        let registry = Destination::parse("docker://127.0.0.1:5000/a:1").unwrap();
        assert_eq!(
            registry,
            Destination::Registry(target("127.0.0.1:5000", "a", "1"))
        );
        assert_eq!(registry.location(), "127.0.0.1:5000/a");
        assert_eq!(Destination::parse("127.0.0.1:5000/a:1").unwrap(), registry);
        assert_eq!(layout("d", "t").location(), "oci:d");
        assert_eq!(layout("d", "t").tag(), "t");
        for bad in ["oci:", "oci::x", "oci:dir:", "oci:dir:-x", "oci:dir:a:b"] {
            assert!(Destination::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    /// Each refusal names the offending part, so the user sees what to fix.
    #[test]
    fn refusals_quote_the_offending_part() {
        let refused = |text: &str, part: &str| {
            let err = Target::parse(text).unwrap_err().to_string();
            assert!(err.contains(part), "{text}: {err:?} should mention {part}");
        };
        let hex = "a".repeat(64);
        refused("127.0.0.1:5000/Team/app", "upper-case");
        refused("127.0.0.1:5000/team/App:1", "\"App\"");
        refused("127.0.0.1:5000/app:", "empty tag");
        refused("127.0.0.1:5000/app@sha256:abcd", "4 hex digits");
        refused(
            &format!("127.0.0.1:5000/app@sha256:{}", "a".repeat(65)),
            "65 hex digits",
        );
        refused(
            &format!("127.0.0.1:5000/app@sha256:{}", "A".repeat(64)),
            "lowercase hex",
        );
        refused("127.0.0.1:5000/app@md5:abcd", "\"md5:abcd\"");
        refused(&format!("127.0.0.1:5000/app@sha256:{hex}"), "needs a tag");
        refused(&format!("127.0.0.1:5000/app:1@sha256:{hex}"), "needs a tag");
        refused(&format!("sha256:{hex}"), "is a digest, not a repository");
        refused(&hex, "is a digest, not a repository");
        refused(
            &format!("127.0.0.1:5000/app:{}", "t".repeat(129)),
            "129 characters",
        );
        refused("127.0.0.1:5000/a//b", "empty repository path component");
        refused("127.0.0.1:5000/a/", "empty repository path component");
        refused("127.0.0.1:5000/", "no repository");
        refused("127.0.0.1:5000/a__-b", "\"a__-b\"");
        refused("127.0.0.1:5000/a b", "' '");
        refused("", "empty");
        refused("127.0.0.1:99999/a", "\"99999\"");
        refused("127.0.0.1:/a", "port \"\"");
        refused("-bad.host/a", "\"-bad\"");
        refused("a..b/c", "\"\"");
        refused("[::1/a", "unclosed");
        refused("[::1]x/a", "expected :port");
        refused(&format!("r.io/{}", "a".repeat(251)), "at most 255");
        // Long but legal.
        assert_eq!(
            Target::parse(&format!("127.0.0.1:5000/app:{}", "t".repeat(128)))
                .unwrap()
                .tag
                .len(),
            128
        );
        assert!(Target::parse(&format!("r.io/{}", "a".repeat(250))).is_ok());
        assert_eq!(
            Target::parse("[::1]:5000/a/b:c").unwrap(),
            target("[::1]:5000", "a/b", "c")
        );
        assert_eq!(
            Target::parse("R.IO/a__b/c-d/e.f_g:T_1.x-y").unwrap(),
            target("R.IO", "a__b/c-d/e.f_g", "T_1.x-y")
        );
    }
}
