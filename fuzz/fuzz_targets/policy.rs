#![no_main]
//! See `freshet_policy::fuzzing`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    freshet_policy::fuzzing::exercise(data);
});
