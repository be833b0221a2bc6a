//! cargo-fuzz target: see `membacking_fuzz::range_algorithms`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| membacking_fuzz::range_algorithms::check(data));
