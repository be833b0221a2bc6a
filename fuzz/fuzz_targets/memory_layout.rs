//! cargo-fuzz target: see `membacking_fuzz::memory_layout`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| membacking_fuzz::memory_layout::check(data));
