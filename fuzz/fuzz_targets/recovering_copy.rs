//! cargo-fuzz target: see `membacking_fuzz::recovering_copy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| membacking_fuzz::recovering_copy::check(data));
