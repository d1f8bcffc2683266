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
