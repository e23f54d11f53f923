//! The fuzz targets of `federation/fuzz` on stable `cargo test`: every committed corpus file is
//! replayed through its target (so the corpora are regression tests), and proptest feeds each
//! target arbitrary bytes and mutated seeds. A panic or failed property fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::PathBuf;

use proptest::prelude::*;

/// The committed inputs of one target (`federation/fuzz/corpus/<target>/*`).
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

fn target(name: &str) -> checks::Target {
    checks::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap()
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
