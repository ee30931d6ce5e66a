//! Replays the checked-in fuzz corpus of `shardmap_changes` (fuzz/corpus/shardmap_changes), on stable,
//! as part of the ordinary test suite: every input the fuzzer kept, and
//! every crash it found and that was fixed, stays a regression test.

#[test]
fn the_fuzz_corpus_replays_cleanly() {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/shardmap_changes");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&corpus).expect("the corpus is checked in") {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        freshet_shardmap::fuzzing::exercise(&data);
        replayed += 1;
    }
    assert!(replayed > 0, "no corpus in {}", corpus.display());
}
