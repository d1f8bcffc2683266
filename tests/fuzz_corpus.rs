//! Every fuzz target over its corpus (`fuzz/corpus/<target>/`: the seeds and whatever the fuzzer
//! found worth keeping, including the inputs of fixed crashes), as a plain test: the test
//! command checks the fuzzed parsers without cargo-fuzz or a nightly toolchain.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_fuzz_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, run) in harness::TARGETS {
        let inputs = harness::corpus(&root.join(target));
        assert!(!inputs.is_empty(), "fuzz/corpus/{target} has no inputs");
        for (name, data) in &inputs {
            let outcome = std::panic::catch_unwind(|| run(data));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} failed on fuzz/corpus/{target}/{name}"
            );
        }
    }
}

/// The seeds describe the image the export targets expect: they are accepted, not just survived.
#[test]
fn the_export_seeds_are_valid_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/export");
    for dialect in ["seed-classic", "seed-podman", "seed-oci"] {
        let data = std::fs::read(root.join(dialect)).unwrap();
        assert!(harness::export_accepts(&data), "{dialect} is refused");
    }
}

/// So are the archive and layout seeds, each for the image it is opened for, and a file with
/// several images only when one is named.
#[test]
fn the_archive_and_layout_seeds_are_valid_sources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let seed = |target: &str, name: &str| std::fs::read(root.join(target).join(name)).unwrap();
    for dialect in ["seed-classic", "seed-podman", "seed-oci"] {
        assert!(
            harness::archive_accepts(&seed("archive", dialect), None),
            "{dialect} is refused"
        );
    }
    let two = seed("archive", "seed-two-images");
    assert!(harness::archive_accepts(&two, Some("app:1")));
    assert!(!harness::archive_accepts(&two, None));
    assert!(harness::layout_accepts(&seed("layout", "seed-one"), None));
    let tagged = seed("layout", "seed-tagged");
    assert!(harness::layout_accepts(&tagged, Some("1")));
    assert!(!harness::layout_accepts(&tagged, None));
}
