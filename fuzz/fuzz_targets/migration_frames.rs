//! cargo-fuzz target: see `membacking_fuzz::migration_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| membacking_fuzz::migration_frames::check(data));
