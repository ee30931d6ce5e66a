#![no_main]
//! See `freshet_types::fuzzing`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    freshet_types::fuzzing::exercise(data);
});
