#![no_main]
//! See `freshet_shardmap::fuzzing`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    freshet_shardmap::fuzzing::exercise(data);
});
