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

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;

/// The committed inputs of one target (`server/fuzz/corpus/<target>/*`).
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect()
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
    for (name, check) in checks::TARGETS {
        let inputs = corpus(name);
        assert!(!inputs.is_empty(), "the corpus of {name} is empty");
        for input in &inputs {
            check(input);
        }
    }
}

#[test]
fn the_router_corpus_replays_cleanly() {
    let inputs = corpus("client_router");
    assert!(!inputs.is_empty());
    for input in &inputs {
        harness().run(input);
    }
}

/// A seed of `target` with random byte edits, insertions and truncation.
fn mutated_seed(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    (
        prop::sample::select(seeds),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..8),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(mut seed, edits, cut, truncate)| {
            for (at, byte, kind) in edits {
                if seed.is_empty() {
                    seed.push(byte);
                    continue;
                }
                let at = at.index(seed.len());
                match kind {
                    0 => seed[at] = byte,
                    1 => seed.insert(at, byte),
                    _ => {
                        seed.remove(at);
                    }
                }
            }
            if truncate && !seed.is_empty() {
                seed.truncate(cut.index(seed.len()));
            }
            seed
        })
}

/// Arbitrary bytes, arbitrary text, or a mutated seed of `target`.
fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        any::<String>().prop_map(String::into_bytes),
        mutated_seed(target),
        mutated_seed(target),
    ]
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
