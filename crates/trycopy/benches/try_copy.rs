//! Success-path cost of the guarded primitives against their unguarded equivalents.
//!
//! Criterion groups (ids `group/size`): `try_copy` vs `copy_nonoverlapping` for hot 4 KiB and
//! 1 MiB buffers, and `try_read_volatile` vs `read_volatile` for one `u32`. After a `--bench`
//! run, one JSON line per comparison is printed in the project's benchmark format
//! (`docs/design.md`, "Benchmarks"): copies compare throughput (target ≥ 0.9 of `copy_nonoverlapping`), the scalar
//! read compares time (target ≤ 3× `read_volatile`).
//!
//! Small accesses (group `small`, ids like `try_copy_8` and `plain_copy_8`): guarded copies and
//! fills of 1, 4, 8, 32 and 256 bytes with the length known at compile time, and guarded loads,
//! stores and compare-exchanges of every width, each against the unguarded instruction sequence
//! of the same access (the floor: what the access costs without fault recovery); their lines
//! carry no target. The comparison with the original's own benchmarks is described in
//! `BENCHMARKS.md`.
//!
//! Run: `cargo bench -p trycopy -- --warm-up-time 1 --measurement-time 2`.

// Unsafe code: the baselines are the raw-pointer copies the guarded ones are compared with.
#![allow(unsafe_code)]

use criterion::{black_box, Criterion, Throughput};
use std::path::PathBuf;

const COPY_SIZES: [(&str, usize); 2] = [("4KiB", 4096), ("1MiB", 1 << 20)];

fn copies(c: &mut Criterion) {
    trycopy::initialize_try_copy();
    for (label, size) in COPY_SIZES {
        let source = vec![0x5Au8; size];
        let mut destination = vec![0u8; size];

        let mut group = c.benchmark_group("try_copy");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(label, |b| {
            b.iter(|| {
                // SAFETY: two owned, disjoint buffers of `size` bytes.
                unsafe {
                    trycopy::try_copy(
                        black_box(source.as_ptr()),
                        black_box(destination.as_mut_ptr()),
                        black_box(size),
                    )
                }
                .is_ok()
            })
        });
        group.finish();

        let mut group = c.benchmark_group("copy_nonoverlapping");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(label, |b| {
            b.iter(|| {
                // SAFETY: as above.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        black_box(source.as_ptr()),
                        black_box(destination.as_mut_ptr()),
                        black_box(size),
                    )
                }
            })
        });
        group.finish();
    }
}

fn scalar_reads(c: &mut Criterion) {
    trycopy::initialize_try_copy();
    let words = [0x1234_5678u32; 16];
    c.benchmark_group("try_read_volatile")
        .bench_function("u32", |b| {
            // Only the value is kept (as in the baseline): criterion's `black_box` reads every
            // byte of what the closure returns, which would dominate with the whole `Result`.
            b.iter(|| {
                // SAFETY: an aligned u32 inside an owned buffer.
                unsafe { trycopy::try_read_volatile(black_box(words.as_ptr())) }.unwrap_or_default()
            })
        });
    c.benchmark_group("read_volatile")
        .bench_function("u32", |b| {
            // SAFETY: as above.
            b.iter(|| unsafe { black_box(words.as_ptr()).read_volatile() })
        });
}

/// Registers `try_<name>_<id>` (guarded) and `plain_<name>_<id>` (unguarded) in group `small`.
fn pair(
    c: &mut Criterion,
    name: &str,
    id: &str,
    mut guarded: impl FnMut(),
    mut plain: impl FnMut(),
) {
    let mut group = c.benchmark_group("small");
    group.bench_function(format!("try_{name}_{id}"), |b| b.iter(&mut guarded));
    group.bench_function(format!("plain_{name}_{id}"), |b| b.iter(&mut plain));
    group.finish();
}

/// The small accesses of [`SMALL`], guarded and not.
fn small(c: &mut Criterion) {
    trycopy::initialize_try_copy();
    macro_rules! copies {
        ($($n:literal),*) => {$({
            let source = [0x5Au8; $n];
            let mut destination = [0u8; $n];
            let (src, dst) = (source.as_ptr(), destination.as_mut_ptr());
            pair(c, "copy", stringify!($n),
                // SAFETY: two owned, disjoint buffers of the length.
                || unsafe { trycopy::try_copy(black_box(src), black_box(dst), $n) }.unwrap(),
                // SAFETY: as above.
                || unsafe { std::ptr::copy_nonoverlapping(black_box(src), black_box(dst), $n) });
            pair(c, "set", stringify!($n),
                // SAFETY: an owned buffer of the length.
                || unsafe { trycopy::try_write_bytes(black_box(dst), 0, $n) }.unwrap(),
                // SAFETY: as above.
                || unsafe { std::ptr::write_bytes(black_box(dst), 0, $n) });
        })*};
    }
    copies!(1, 4, 8, 32, 256);
    macro_rules! scalars {
        ($($ty:ty, $atomic:ty);*) => {$({
            let mut cell: $ty = 0;
            let p: *mut $ty = &mut cell;
            let id = stringify!($ty);
            pair(c, "read", id,
                // SAFETY: an owned, aligned value.
                || { black_box(unsafe { trycopy::try_read_volatile(black_box(p.cast_const())) }.unwrap()); },
                // SAFETY: as above.
                || { black_box(unsafe { black_box(p).read_volatile() }); });
            pair(c, "write", id,
                // SAFETY: as above.
                || unsafe { trycopy::try_write_volatile(black_box(p), &black_box(1)) }.unwrap(),
                // SAFETY: as above.
                || unsafe { black_box(p).write_volatile(black_box(1)) });
            pair(c, "cmpxchg", id,
                // SAFETY: as above.
                || { let _ = black_box(unsafe { trycopy::try_compare_exchange(black_box(p), 0, 0) }.unwrap()); },
                // SAFETY: as above; the value is only accessed atomically while measured.
                || { let _ = black_box(unsafe { <$atomic>::from_ptr(black_box(p)) }
                    .compare_exchange(0, 0, std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst)); });
        })*};
    }
    scalars!(u8, std::sync::atomic::AtomicU8; u16, std::sync::atomic::AtomicU16;
        u32, std::sync::atomic::AtomicU32; u64, std::sync::atomic::AtomicU64);
}

/// The ids of the small accesses, `(name, id)`.
const SMALL: [(&str, &[&str]); 5] = [
    ("copy", &["1", "4", "8", "32", "256"]),
    ("set", &["1", "4", "8", "32", "256"]),
    ("read", &["u8", "u16", "u32", "u64"]),
    ("write", &["u8", "u16", "u32", "u64"]),
    ("cmpxchg", &["u8", "u16", "u32", "u64"]),
];

/// Where criterion keeps its results (the same rules criterion applies, minus the call to
/// `cargo metadata`).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("criterion")
}

/// The mean time per iteration (ns) of the last run of `group/function`.
fn mean_ns(group: &str, function: &str) -> Option<f64> {
    let path = criterion_home()
        .join(group)
        .join(function)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let estimates: serde_json::Value = serde_json::from_str(&text).ok()?;
    estimates["mean"]["point_estimate"].as_f64()
}

fn report_ratios() {
    for (name, ids) in SMALL {
        for id in ids {
            let group = "small";
            let (Some(ours), Some(baseline)) = (
                mean_ns(group, &format!("try_{name}_{id}")),
                mean_ns(group, &format!("plain_{name}_{id}")),
            ) else {
                continue;
            };
            let unit = if name == "copy" || name == "set" {
                " B"
            } else {
                ""
            };
            println!(
                "{}",
                serde_json::json!({
                    "name": format!("trycopy::try_{name} {id}{unit}"),
                    "value": ours,
                    "unit": "ns",
                    "baseline": format!("unguarded {name} {id}{unit}"),
                    "baselineValue": baseline,
                    "ratio": ours / baseline,
                })
            );
        }
    }
    for (label, size) in COPY_SIZES {
        let (Some(ours), Some(baseline)) = (
            mean_ns("try_copy", label),
            mean_ns("copy_nonoverlapping", label),
        ) else {
            continue;
        };
        let throughput = |ns: f64| size as f64 / ns; // bytes per ns = GB/s
        let ratio = baseline / ours;
        println!(
            "{}",
            serde_json::json!({
                "name": format!("try_copy/{label}"),
                "value": throughput(ours),
                "unit": "GB/s",
                "baseline": format!("copy_nonoverlapping/{label}"),
                "baselineValue": throughput(baseline),
                "ratio": ratio,
                "target": ">= 0.9",
                "met": ratio >= 0.9,
            })
        );
    }
    if let (Some(ours), Some(baseline)) = (
        mean_ns("try_read_volatile", "u32"),
        mean_ns("read_volatile", "u32"),
    ) {
        let ratio = ours / baseline;
        println!(
            "{}",
            serde_json::json!({
                "name": "try_read_volatile/u32",
                "value": ours,
                "unit": "ns",
                "baseline": "read_volatile/u32",
                "baselineValue": baseline,
                "ratio": ratio,
                "target": "<= 3",
                "met": ratio <= 3.0,
            })
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    copies(&mut criterion);
    scalar_reads(&mut criterion);
    small(&mut criterion);
    criterion.final_summary();
    if std::env::args().any(|arg| arg == "--bench") {
        report_ratios();
    }
}
