//! A policy: what a push must satisfy before anything is uploaded. The pipeline asks it twice:
//! about the destination as soon as it is parsed (before a build, an inspect or any other
//! traffic), and about each image once its source has described it (after the inspect, before
//! the destination is opened). A refusal ends the push there, with one line naming the rule.
//!
//! The standard guest runs [`AllowAll`]. A policy of one's own is a small crate that depends
//! on this one, implements [`Policy`] and exports the `pusher` world with
//! [`export_policy!`](crate::export_policy) (`examples/policy` is one).

use std::fmt;

use crate::model::ImageSummary;
use crate::push::Settings;
use crate::reference::Destination;

/// An image about to be pushed, as a policy sees it: everything is known, nothing is sent.
#[derive(Clone, Copy, Debug)]
pub struct ImageReview<'a> {
    /// The source as the request named it (`app:1`, `docker-archive:PATH`, `oci:DIR:TAG`, an
    /// image ID after a build).
    pub source: &'a str,
    /// What the source states of the image: its ID, diff IDs, size, platform and labels.
    pub image: &'a ImageSummary,
    /// Where it goes: every destination of the push, in the order given (an index has one).
    pub destinations: &'a [Destination],
    /// How it is published: encoding, manifest format, annotations, read-back.
    pub settings: &'a Settings,
}

/// The checks a push must pass. Each hook allows by default, so a policy implements only the
/// ones it needs; an `Err` refuses the push before anything is uploaded.
pub trait Policy {
    /// Whether anything may go to `destination` with these settings. Called for each
    /// destination of a push before anything else happens, a build included.
    fn check_destination(
        &self,
        _destination: &Destination,
        _settings: &Settings,
    ) -> Result<(), Refusal> {
        Ok(())
    }

    /// Whether this image may go where the review says. Called for every image of a push (each
    /// source of an index) before the destination is opened.
    fn check_image(&self, _review: &ImageReview<'_>) -> Result<(), Refusal> {
        Ok(())
    }
}

/// A push a policy refused: the rule, and why this push breaks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// A short name for the rule, e.g. `source-label`.
    pub rule: String,
    /// What about this push breaks it, on one line.
    pub reason: String,
}

impl Refusal {
    pub fn new(rule: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            rule: rule.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused by policy rule {}: {}", self.rule, self.reason)
    }
}

impl std::error::Error for Refusal {}

/// The standard guest's policy: every push the pipeline itself accepts.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Policy for AllowAll {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_one_line_naming_its_rule() {
        let refusal = Refusal::new("source-label", "image app:1 has no label");
        assert_eq!(
            refusal.to_string(),
            "refused by policy rule source-label: image app:1 has no label"
        );
        let err: anyhow::Error = refusal.clone().into();
        assert_eq!(err.downcast_ref::<Refusal>(), Some(&refusal));
    }
}
