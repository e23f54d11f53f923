//! The fuzz targets of `federation/fuzz` on stable `cargo test`: every committed corpus file is
//! replayed through its target (so the corpora are regression tests), and proptest feeds each
//! target arbitrary bytes and mutated seeds. A panic or failed property fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod checks;

use proptest::prelude::*;

/// The committed inputs of one target (`federation/fuzz/corpus/<target>/*`).
fn corpus(target: &str) -> Vec<Vec<u8>> {
    hush_testkit::fuzz::corpus(env!("CARGO_MANIFEST_DIR"), target)
}

fn target(name: &str) -> checks::Target {
    checks::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap()
}

#[test]
fn every_committed_corpus_file_replays_cleanly() {
    // `corpus` fails the test when a target has no committed inputs.
    for (name, check) in checks::TARGETS {
        for input in corpus(name) {
            check(&input);
        }
    }
}

/// Arbitrary bytes, arbitrary text, or a mutated seed of `target`'s corpus.
fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    hush_testkit::fuzz::input(corpus(target))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn xmatrix_header_never_panics(data in input("xmatrix_header")) {
        target("xmatrix_header")(&data);
    }

    #[test]
    fn canonical_json_round_trips(data in input("canonical_json")) {
        target("canonical_json")(&data);
    }

    #[test]
    fn signed_json_never_panics(data in input("signed_json")) {
        target("signed_json")(&data);
    }

    #[test]
    fn ids_never_panic(data in input("ids")) {
        target("ids")(&data);
    }

    #[test]
    fn wire_bodies_never_panic(data in input("wire_bodies")) {
        target("wire_bodies")(&data);
    }
}
