//! The fuzz targets of `server/fuzz` on stable `cargo test`: every committed corpus file is
//! replayed through its target (so the corpora are regression tests), and proptest feeds the
//! targets arbitrary bytes and mutated seeds. A panic, a 5xx or a failed property fails the test.
//!
//! The router target runs on a temporary SQLite database (it exercises request parsing, not
//! storage, so it is not repeated on PostgreSQL).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/checks.rs"]
mod checks;
// `Harness::start` is used only by the fuzz target.
#[allow(dead_code)]
#[path = "../fuzz/src/router.rs"]
mod router;

use std::sync::OnceLock;

use proptest::prelude::*;

/// The committed inputs of one target (`server/fuzz/corpus/<target>/*`).
fn corpus(target: &str) -> Vec<Vec<u8>> {
    hush_testkit::fuzz::corpus(env!("CARGO_MANIFEST_DIR"), target)
}

/// One router harness for the whole test binary (its database lives in a temporary directory).
fn harness() -> &'static router::Harness {
    static HARNESS: OnceLock<(tempfile::TempDir, router::Harness)> = OnceLock::new();
    &HARNESS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let harness = router::Harness::in_dir(dir.path());
            (dir, harness)
        })
        .1
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

#[test]
fn the_router_corpus_replays_cleanly() {
    for input in corpus("client_router") {
        harness().run(&input);
    }
}

/// Arbitrary bytes, arbitrary text, or a mutated seed of `target`'s corpus.
fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    hush_testkit::fuzz::input(corpus(target))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn federation_transactions_never_panic(data in input("fed_transaction")) {
        checks::fed_transaction(&data);
    }

    #[test]
    fn client_bodies_never_panic(data in input("client_bodies")) {
        checks::client_bodies(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_router_never_answers_5xx(data in input("client_router")) {
        harness().run(&data);
    }
}
