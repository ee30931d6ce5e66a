#![no_main]
//! See `freshet_sigv4::fuzzing`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    freshet_sigv4::fuzzing::exercise(data);
});
