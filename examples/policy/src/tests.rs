//! The policy's rules, natively: what the allow-list allows, what the label rule refuses, and
//! that the README shows this crate's code as it is.

use super::*;
use ocipush_guest::digest::Digest;
use ocipush_guest::manifest::Format;
use ocipush_guest::model::{Compression, IdKind, ImageSummary, Labels};

fn destination(text: &str) -> Result<(), String> {
    let parsed = Destination::parse(text).unwrap();
    allowed_destination(&parsed, ALLOWED).map_err(|r| r.to_string())
}

#[test]
fn destinations_under_an_entry_are_allowed_on_its_host() {
    for allowed in [
        "127.0.0.1:5000/approved/app:1",
        "127.0.0.1:39211/approved/team/app",
        "127.0.0.1/approved",
        "localhost:5000/approved/app:latest",
        "docker://registry.example.com/team/app:2",
        "registry.example.com:443/team/sub/app:2",
    ] {
        assert_eq!(destination(allowed), Ok(()), "{allowed}");
    }
}

#[test]
fn other_hosts_namespaces_and_layouts_are_refused_naming_the_rule() {
    for refused in [
        "127.0.0.1:5000/other/app:1",
        "127.0.0.1:5000/approvedx/app:1",
        "127.0.0.2:5000/approved/app:1",
        "registry.example.com/other/app:1",
        "evil.example.com/team/app:1",
        "docker.io/approved/app:1",
        "oci:/tmp/out:1",
    ] {
        let err = destination(refused).unwrap_err();
        assert!(
            err.starts_with("refused by policy rule allowed-destination: destination "),
            "{refused}: {err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }
    assert_eq!(
        destination("127.0.0.1:5000/other/app:1").unwrap_err(),
        "refused by policy rule allowed-destination: destination 127.0.0.1:5000/other/app \
         is not under a repository the allow-list names \
         (127.0.0.1/approved, localhost/approved, registry.example.com/team)"
    );
}

#[test]
fn an_entry_with_a_port_allows_only_that_port() {
    let allowed = ["127.0.0.1:5000/approved", "[::1]/approved"];
    let check = |text: &str| allowed_destination(&Destination::parse(text).unwrap(), &allowed);
    assert!(check("127.0.0.1:5000/approved/app:1").is_ok());
    assert!(check("127.0.0.1:5001/approved/app:1").is_err());
    assert!(check("[::1]:5001/approved/app:1").is_ok());
    assert_eq!((host("[::1]:5000"), port("[::1]")), ("[::1]", None));
}

fn review_of(labels: &[(&str, &str)], check: impl FnOnce(&ImageReview<'_>)) {
    let image = ImageSummary {
        id: Digest::of(b"config"),
        diff_ids: vec![Digest::of(b"layer")],
        size: 5,
        platform: None,
        id_kind: IdKind::Config,
        within: None,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Labels>(),
    };
    let destination = Destination::parse("127.0.0.1:5000/approved/app:1").unwrap();
    let settings = Settings::new(Compression::Gzip, 1, Format::Oci, vec![], false).unwrap();
    check(&ImageReview {
        source: "app:1",
        image: &image,
        destinations: std::slice::from_ref(&destination),
        settings: &settings,
    });
}

#[test]
fn the_readme_shows_this_code_as_it_is() {
    let readme = include_str!("../../../README.md");
    assert!(
        readme.contains(include_str!("lib.rs")),
        "README.md's \"A guest of one's own\" must quote examples/policy/src/lib.rs whole"
    );
    assert!(readme.contains(include_str!("../Cargo.toml")));
}

#[test]
fn an_image_needs_a_non_empty_source_label() {
    review_of(&[(SOURCE_LABEL, "https://example.com/app")], |review| {
        assert_eq!(ExamplePolicy.check_image(review), Ok(()));
    });
    let id = Digest::of(b"config");
    review_of(&[("org.example.other", "x")], |review| {
        assert_eq!(
            ExamplePolicy.check_image(review).unwrap_err().to_string(),
            format!(
                "refused by policy rule source-label: image app:1 ({id}) has no \
                 org.opencontainers.image.source label"
            )
        );
    });
    review_of(&[(SOURCE_LABEL, " ")], |review| {
        let err = ExamplePolicy.check_image(review).unwrap_err();
        assert_eq!(err.rule, "source-label");
        assert!(err.reason.contains("an empty"), "{err}");
    });
}
