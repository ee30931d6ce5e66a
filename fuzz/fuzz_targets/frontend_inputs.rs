#![no_main]
//! See `freshet_frontend::fuzzing`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    freshet_frontend::fuzzing::exercise(data);
});
