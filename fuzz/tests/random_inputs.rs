//! Runs every fuzz check of this crate as a plain `cargo test`: over seeded random inputs (the
//! count from FUZZ_ITERATIONS, default 20,000 per check; FUZZ_SEED picks the seed) and over the
//! inputs saved in `corpus/<target>/` and `artifacts/<target>/` when those folders exist (what
//! `cargo fuzz run` collected or found). A failing input is written to
//! `artifacts/<target>/cargo-test-failure` so `cargo fuzz run <target> <file>` can replay it.

use membacking_fuzz::input::XorShift;
use std::path::Path;

fn iterations() -> u64 {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_ef01)
}

fn run(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for folder in ["corpus", "artifacts"] {
        if let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) {
            for entry in entries.flatten() {
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    inputs.push(bytes);
                }
            }
        }
    }
    let saved = inputs.len();
    let mut rng = XorShift(seed() ^ target.len() as u64 ^ u64::from(target.as_bytes()[0]) << 32);
    for _ in 0..iterations() {
        let len = (rng.next_u64() % 512) as usize;
        inputs.push(rng.bytes(len));
    }
    for (index, input) in inputs.iter().enumerate() {
        let outcome = std::panic::catch_unwind(|| check(input));
        if let Err(payload) = outcome {
            let folder = root.join("artifacts").join(target);
            let _ = std::fs::create_dir_all(&folder);
            let _ = std::fs::write(folder.join("cargo-test-failure"), input);
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!(
                "{target}: input {index} ({} saved + random) failed: {message}",
                saved
            );
        }
    }
    println!(
        "{target}: {} inputs ({saved} saved, {} random) passed",
        inputs.len(),
        inputs.len() - saved
    );
}

#[test]
fn range_algorithms() {
    run("range_algorithms", membacking_fuzz::range_algorithms::check);
}

#[test]
fn memory_layout() {
    run("memory_layout", membacking_fuzz::memory_layout::check);
}

#[test]
fn region_manager() {
    run("region_manager", membacking_fuzz::region_manager::check);
}

#[test]
fn recovering_copy() {
    run("recovering_copy", membacking_fuzz::recovering_copy::check);
}

#[test]
fn snapshot_manifest() {
    run(
        "snapshot_manifest",
        membacking_fuzz::snapshot_manifest::check,
    );
}

#[test]
fn migration_frames() {
    run("migration_frames", membacking_fuzz::migration_frames::check);
}
