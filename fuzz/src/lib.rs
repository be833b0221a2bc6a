//! Fuzz checks for membacking (issue 7). Each module has `check(data)`, which decodes `data`
//! into inputs, runs the code under test and asserts its properties (panicking on a violation).
//! The cargo-fuzz targets in `fuzz_targets/` call these; `tests/random_inputs.rs` runs them over
//! seeded random inputs and the saved corpora with plain `cargo test`.

pub mod input;
pub mod memory_layout;
pub mod migration_frames;
pub mod range_algorithms;
pub mod recovering_copy;
pub mod region_manager;
pub mod snapshot_manifest;
