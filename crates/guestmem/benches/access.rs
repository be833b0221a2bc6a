//! Success-path cost of small guest memory accesses against the same access without the
//! protocol (the floor: an unguarded copy, load or store at the same host address).
//!
//! `GuestMemory` over heap memory: `read_at`/`write_at` of 1, 4, 8, 32 and 256 bytes (buffer
//! lengths known at compile time) and `read_plain`/`write_plain` of every scalar width and of
//! 32- and 256-byte arrays. After a `--bench` run one JSON line per comparison is printed in
//! the project's benchmark format (`docs/design.md`, "Benchmarks"), `ratio = ours / floor`
//! (times), no target.
//!
//! Run: `cargo bench -p guestmem --bench access -- --warm-up-time 1 --measurement-time 2`.

// Unsafe code: the floors are the raw-pointer accesses the guarded ones are compared with.
#![allow(unsafe_code)]

use criterion::{black_box, Criterion};
use guestmem::GuestMemory;
use std::path::PathBuf;

const GPA: u64 = 64;
/// [`GPA`] as a host offset.
const GPA_OFFSET: usize = 64;

/// Registers `ours_<name>_<size>` and `floor_<name>_<size>` in group `guestmem`.
fn pair(c: &mut Criterion, id: &str, mut ours: impl FnMut(), mut floor: impl FnMut()) {
    let mut group = c.benchmark_group("guestmem");
    group.bench_function(format!("ours_{id}"), |b| b.iter(&mut ours));
    group.bench_function(format!("floor_{id}"), |b| b.iter(&mut floor));
    group.finish();
}

/// The ids measured, in order.
const IDS: [&str; 22] = [
    "read_at_1",
    "read_at_4",
    "read_at_8",
    "read_at_32",
    "read_at_256",
    "write_at_1",
    "write_at_4",
    "write_at_8",
    "write_at_32",
    "write_at_256",
    "read_plain_1",
    "read_plain_2",
    "read_plain_4",
    "read_plain_8",
    "read_plain_32",
    "read_plain_256",
    "write_plain_1",
    "write_plain_2",
    "write_plain_4",
    "write_plain_8",
    "write_plain_32",
    "write_plain_256",
];

fn accesses(c: &mut Criterion) {
    let memory = GuestMemory::allocate(1 << 20);
    let (base, _) = memory.full_mapping().expect("heap memory is one mapping");
    let host = base.wrapping_add(GPA_OFFSET);
    macro_rules! copies {
        ($($n:literal),*) => {$({
            let mut buffer = [0u8; $n];
            let b = buffer.as_mut_ptr();
            pair(c, concat!("read_at_", $n),
                || { memory.read_at(black_box(GPA), &mut buffer).unwrap(); black_box(&buffer); },
                // SAFETY: `host` is inside the heap memory; `b` is a disjoint owned buffer.
                || unsafe { std::ptr::copy_nonoverlapping(black_box(host), black_box(b), $n) });
            let source = [0x5Au8; $n];
            let s = source.as_ptr();
            pair(c, concat!("write_at_", $n),
                || memory.write_at(black_box(GPA), &source).unwrap(),
                // SAFETY: as above.
                || unsafe { std::ptr::copy_nonoverlapping(black_box(s), black_box(host), $n) });
        })*};
    }
    copies!(1, 4, 8, 32, 256);
    macro_rules! plain {
        ($($ty:ty => $size:literal),*) => {$({
            pair(c, concat!("read_plain_", $size),
                || { black_box(memory.read_plain::<$ty>(black_box(GPA)).unwrap()); },
                // SAFETY: `host` is inside the heap memory and aligned for every width here.
                || { black_box(unsafe { black_box(host).cast::<$ty>().read() }); });
            pair(c, concat!("write_plain_", $size),
                || memory.write_plain::<$ty>(black_box(GPA), &black_box(<$ty as zerocopy::FromZeros>::new_zeroed())).unwrap(),
                // SAFETY: as above.
                || unsafe { black_box(host).cast::<$ty>().write(black_box(<$ty as zerocopy::FromZeros>::new_zeroed())) });
        })*};
    }
    plain!(u8 => 1, u16 => 2, u32 => 4, u64 => 8, [u8; 32] => 32, [u8; 256] => 256);
}

/// Where criterion keeps its results (criterion's rules, minus the call to `cargo metadata`).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("criterion")
}

/// The mean time per iteration (ns) of the last run of `guestmem/<id>`.
fn mean_ns(id: &str) -> Option<f64> {
    let path = criterion_home()
        .join("guestmem")
        .join(id)
        .join("new")
        .join("estimates.json");
    let estimates: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    estimates["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    accesses(&mut criterion);
    criterion.final_summary();
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    for id in IDS {
        let (Some(ours), Some(floor)) = (
            mean_ns(&format!("ours_{id}")),
            mean_ns(&format!("floor_{id}")),
        ) else {
            continue;
        };
        let (operation, size) = id.rsplit_once('_').unwrap_or((id, ""));
        println!(
            "{}",
            serde_json::json!({
                "name": format!("guestmem::GuestMemory::{operation} {size} B"),
                "value": ours,
                "unit": "ns",
                "baseline": format!("unguarded {size}-byte access at the same host address"),
                "baselineValue": floor,
                "ratio": ours / floor,
            })
        );
    }
}
