#![no_main]
//! See `freshet_log::fuzzing`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    freshet_log::fuzzing::exercise(data);
});
