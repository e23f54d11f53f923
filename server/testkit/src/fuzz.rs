//! Fuzz targets on stable `cargo test`: the committed corpus of a target, and a proptest
//! strategy of inputs (arbitrary bytes, arbitrary text, and corpus seeds with random edits).

use std::path::Path;

use proptest::prelude::*;

/// Most random edits applied to one seed by [`input`].
const MAX_EDITS: usize = 8;
/// Longest arbitrary byte string produced by [`input`].
const MAX_RANDOM_LEN: usize = 256;

/// Every file of `<crate_dir>/fuzz/corpus/<target>/`, sorted by name. Panics when the folder
/// is missing or empty: a target without a committed corpus is a mistake.
pub fn corpus(crate_dir: &str, target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(crate_dir).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files
        .iter()
        .map(|path| std::fs::read(path).expect("corpus file"))
        .collect();
    assert!(!inputs.is_empty(), "the corpus of {target} is empty");
    inputs
}

/// A seed with up to [`MAX_EDITS`] random byte replacements, insertions and removals, and
/// sometimes truncated.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(
            (any::<prop::sample::Index>(), any::<u8>(), 0..3u8),
            0..MAX_EDITS,
        ),
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

/// Inputs for a fuzz target: arbitrary bytes, arbitrary text, or (half of the time) a mutated
/// seed of `seeds` (its committed corpus, see [`corpus`]).
pub fn input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..MAX_RANDOM_LEN),
        any::<String>().prop_map(String::into_bytes),
        mutated(seeds.clone()),
        mutated(seeds),
    ]
}
