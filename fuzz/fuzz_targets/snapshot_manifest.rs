//! cargo-fuzz target: see `membacking_fuzz::snapshot_manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| membacking_fuzz::snapshot_manifest::check(data));
