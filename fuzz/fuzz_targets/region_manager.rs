//! cargo-fuzz target: see `membacking_fuzz::region_manager`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| membacking_fuzz::region_manager::check(data));
