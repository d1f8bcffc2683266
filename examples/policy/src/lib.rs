//! A guest of one's own: ocipush's standard pipeline under two rules of this crate, checked
//! before anything is uploaded (no blob, no tag), each refusal one line naming its rule:
//!
//! - `source-label`: an image must say where its source lives, in a non-empty
//!   `org.opencontainers.image.source` label;
//! - `allowed-destination`: it may go only to a registry repository the allow-list names.
//!
//! The allow-list is compiled in. A guest has no files, environment or arguments of its own to
//! read a list from, and a list built into the component is covered by the digest that pins it
//! (`--guest-digest`): changing the list changes the digest an audited pipeline checks.
//!
//! `scripts/example-guest.sh` builds it; `ocipush --guest PATH push …` runs it.

use ocipush_guest::policy::{ImageReview, Policy, Refusal};
use ocipush_guest::push::Settings;
use ocipush_guest::reference::Destination;

/// Where images may go, as `HOST[:PORT]/NAMESPACE`: a registry destination is allowed when its
/// registry is HOST (on PORT, or on any port when the entry names none) and its repository is
/// NAMESPACE or lies under it. No OCI layout directory is allowed.
pub const ALLOWED: &[&str] = &[
    "127.0.0.1/approved",
    "localhost/approved",
    "registry.example.com/team",
];

/// The label an image must carry, with a value.
pub const SOURCE_LABEL: &str = "org.opencontainers.image.source";

/// The example's policy: `source-label` and `allowed-destination` over [`ALLOWED`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ExamplePolicy;

impl Policy for ExamplePolicy {
    fn check_destination(
        &self,
        destination: &Destination,
        _settings: &Settings,
    ) -> Result<(), Refusal> {
        allowed_destination(destination, ALLOWED)
    }

    fn check_image(&self, review: &ImageReview<'_>) -> Result<(), Refusal> {
        source_label(review)
    }
}

ocipush_guest::export_policy!(ExamplePolicy);

/// `allowed-destination`: `destination` is a registry repository under an entry of `allowed`.
pub fn allowed_destination(destination: &Destination, allowed: &[&str]) -> Result<(), Refusal> {
    if let Destination::Registry(target) = destination {
        if allowed
            .iter()
            .any(|entry| entry_allows(entry, &target.registry, &target.repository))
        {
            return Ok(());
        }
    }
    Err(Refusal::new(
        "allowed-destination",
        format!(
            "destination {} is not under a repository the allow-list names ({})",
            destination.location(),
            allowed.join(", ")
        ),
    ))
}

/// Whether the entry `HOST[:PORT]/NAMESPACE` allows `repository` on `registry` (`host[:port]`).
fn entry_allows(entry: &str, registry: &str, repository: &str) -> bool {
    let Some((entry_registry, namespace)) = entry.split_once('/') else {
        return false;
    };
    let registry_matches = registry == entry_registry
        || (port(entry_registry).is_none() && host(registry) == entry_registry);
    let under = repository
        .strip_prefix(namespace)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    registry_matches && under
}

/// The port of `host[:port]`, if it names one (`[::1]` is a host without one).
fn port(registry: &str) -> Option<&str> {
    registry
        .rsplit_once(':')
        .map(|(_, port)| port)
        .filter(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// `host[:port]` without its port.
fn host(registry: &str) -> &str {
    match port(registry) {
        Some(port) => &registry[..registry.len() - port.len() - 1],
        None => registry,
    }
}

/// `source-label`: the image carries a non-empty `org.opencontainers.image.source` label.
pub fn source_label(review: &ImageReview<'_>) -> Result<(), Refusal> {
    let refuse = |what: &str| {
        Err(Refusal::new(
            "source-label",
            format!(
                "image {} ({}) has {what} {SOURCE_LABEL} label",
                review.source, review.image.id
            ),
        ))
    };
    match review.image.labels.get(SOURCE_LABEL) {
        None => refuse("no"),
        Some(value) if value.trim().is_empty() => refuse("an empty"),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests;
