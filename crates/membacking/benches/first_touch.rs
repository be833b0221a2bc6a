//! Benchmarks of the memory manager runtime, each printed as one JSON line in the project's
//! format (`docs/design.md`, "Benchmarks"): the measured figure, a baseline measured in the same run,
//! and their ratio.
//!
//! - `first_touch`: the first access to a lazily mapped page (SIGSEGV, request to the mapping
//!   manager, `mmap` of the mapping, retry) against the floor of one recovered SIGSEGV plus one
//!   thread round trip plus one `mmap(MAP_FIXED)` of a memfd page (issue target: ≤ 3×).
//! - `set_ram_visibility`: a visibility change with a recording partition attached and the
//!   mapper holding the region (partition unmap, VA invalidation and its acknowledgement)
//!   against one thread round trip (issue target: ≤ 5×).
//! - `build_1tib`: building a 1 TiB guest without prefetch (time, and resident memory added).
//!
//! Run with `cargo bench -p membacking --bench first_touch`.

use futures::executor::block_on;
use membacking::GuestMemoryBuilder;
use membacking::RamVisibility;
use memory_range::MemoryRange;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use virt::PartitionMemoryMap;
use virt::RecordingPartition;
use virt::Vtl;
use vm_topology::memory::MemoryLayout;

const GIB: u64 = 1 << 30;
const MMIO_GAP: MemoryRange = MemoryRange::new(0xC000_0000..0x1_0000_0000);

/// The median of `runs` measurements of `measure` (each returns nanoseconds per operation).
fn median(runs: usize, mut measure: impl FnMut() -> f64) -> f64 {
    let mut values: Vec<f64> = (0..runs).map(|_| measure()).collect();
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn print_line(
    name: &str,
    value: f64,
    unit: &str,
    baseline: &str,
    baseline_value: f64,
    target: Option<f64>,
) {
    let ratio = value / baseline_value;
    let mut line = format!(
        "{{\"name\":\"{name}\",\"value\":{value:.3},\"unit\":\"{unit}\",\"baseline\":\"{baseline}\",\"baselineValue\":{baseline_value:.3},\"ratio\":{ratio:.3}"
    );
    if let Some(target) = target {
        line += &format!(",\"target\":\"<= {target}\",\"met\":{}", ratio <= target);
    }
    line += "}";
    println!("{line}");
}

/// One recovered SIGSEGV: a guarded read of an inaccessible page.
fn recovered_fault_ns() -> f64 {
    let mapping = sparse_mmap::SparseMapping::new(0x10000).unwrap();
    let mut byte = [0u8; 1];
    let iterations = 2000;
    let start = Instant::now();
    for _ in 0..iterations {
        assert!(mapping.read_at(0x1000, &mut byte).is_err());
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

/// One condvar ping-pong round trip between two threads.
fn thread_round_trip_ns() -> f64 {
    let shared = Arc::new((Mutex::new(0u64), Condvar::new()));
    let iterations = 2000u64;
    let peer = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let (lock, cond) = &*shared;
            let mut value = lock.lock().unwrap();
            loop {
                while *value % 2 == 0 {
                    value = cond.wait(value).unwrap();
                }
                if *value >= 2 * iterations {
                    break;
                }
                *value += 1;
                cond.notify_one();
            }
        })
    };
    let (lock, cond) = &*shared;
    let start = Instant::now();
    let mut value = lock.lock().unwrap();
    for i in 0..iterations {
        *value = 2 * i + 1;
        cond.notify_one();
        while *value % 2 == 1 {
            value = cond.wait(value).unwrap();
        }
    }
    let elapsed = start.elapsed();
    *value = 2 * iterations + 1;
    cond.notify_one();
    drop(value);
    peer.join().unwrap();
    elapsed.as_nanos() as f64 / iterations as f64
}

/// One `mmap(MAP_FIXED)` of a memfd page into a reservation.
fn fixed_map_ns() -> f64 {
    let mapping = sparse_mmap::SparseMapping::new(0x10_0000).unwrap();
    let object = sparse_mmap::alloc_shared_memory(0x10_0000, "bench").unwrap();
    let iterations = 2000usize;
    let mut total = Duration::ZERO;
    for i in 0..iterations {
        let offset = (i % 256) * 0x1000;
        let start = Instant::now();
        mapping
            .map_file(offset, 0x1000, &object, offset as u64, true)
            .unwrap();
        total += start.elapsed();
        mapping.unmap(offset, 0x1000).unwrap();
    }
    total.as_nanos() as f64 / iterations as f64
}

/// The first access to a lazily mapped page: each iteration invalidates one of the twelve PAM
/// regions (untimed), then times one read in it.
fn first_touch_ns() -> f64 {
    let layout = MemoryLayout::new(GIB, &[MMIO_GAP], None).unwrap();
    let mgr = block_on(
        GuestMemoryBuilder::new()
            .x86_legacy_support(true)
            .build(&layout),
    )
    .unwrap();
    let mem = block_on(mgr.client().guest_memory()).unwrap();
    let control = mgr.ram_visibility_control();
    let pam = |index: u64| MemoryRange::new(0xc0000 + index * 0x4000..0xc4000 + index * 0x4000);
    let mut byte = [0u8; 1];
    // Allocate the memfd pages first, so every iteration measures the same thing.
    for index in 0..12 {
        mem.write_at(pam(index).start(), &[1]).unwrap();
    }
    let iterations = 600u64;
    let mut total = Duration::ZERO;
    for i in 0..iterations {
        let range = pam(i % 12);
        block_on(control.set_ram_visibility(range, RamVisibility::Unmapped)).unwrap();
        block_on(control.set_ram_visibility(range, RamVisibility::ReadWrite)).unwrap();
        let start = Instant::now();
        mem.read_at(range.start(), &mut byte).unwrap();
        total += start.elapsed();
    }
    block_on(mgr.close());
    total.as_nanos() as f64 / iterations as f64
}

/// A visibility change (alternating Unmapped and ReadWrite of the VGA window) with a recording
/// partition attached and the mapper holding the region.
fn set_ram_visibility_ns() -> f64 {
    let layout = MemoryLayout::new(GIB, &[MMIO_GAP], None).unwrap();
    let mgr = block_on(
        GuestMemoryBuilder::new()
            .x86_legacy_support(true)
            .build(&layout),
    )
    .unwrap();
    let partition: Arc<dyn PartitionMemoryMap> = Arc::new(RecordingPartition::new());
    block_on(mgr.attach_partition(Vtl::Vtl0, &partition, None)).unwrap();
    let control = mgr.ram_visibility_control();
    let vga = MemoryRange::new(0xa0000..0xc0000);
    let iterations = 1000u64;
    let start = Instant::now();
    for i in 0..iterations {
        let visibility = if i % 2 == 0 {
            RamVisibility::Unmapped
        } else {
            RamVisibility::ReadWrite
        };
        block_on(control.set_ram_visibility(vga, visibility)).unwrap();
    }
    let elapsed = start.elapsed();
    block_on(mgr.close());
    elapsed.as_nanos() as f64 / iterations as f64
}

fn vm_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    // Warm up the fault handler and the allocator.
    recovered_fault_ns();
    first_touch_ns();

    let fault = median(5, recovered_fault_ns);
    let round_trip = median(5, thread_round_trip_ns);
    let map = median(5, fixed_map_ns);
    let floor = fault + round_trip + map;
    let touch = median(5, first_touch_ns);
    print_line(
        "first_touch",
        touch / 1000.0,
        "us/page",
        "sigsegv+round_trip+mmap_fixed",
        floor / 1000.0,
        Some(3.0),
    );
    eprintln!(
        "  floor parts: recovered SIGSEGV {:.2} us, thread round trip {:.2} us, mmap FIXED {:.2} us",
        fault / 1000.0,
        round_trip / 1000.0,
        map / 1000.0
    );

    let visibility = median(5, set_ram_visibility_ns);
    print_line(
        "set_ram_visibility",
        visibility / 1000.0,
        "us",
        "thread_round_trip",
        round_trip / 1000.0,
        Some(5.0),
    );

    let rss_before = vm_rss_kb();
    let layout = MemoryLayout::new(1 << 40, &[MMIO_GAP], None).unwrap();
    let start = Instant::now();
    let mgr = block_on(GuestMemoryBuilder::new().build(&layout)).unwrap();
    let build_time = start.elapsed();
    let rss_added = vm_rss_kb().saturating_sub(rss_before);
    let small_start = Instant::now();
    let small = block_on(
        GuestMemoryBuilder::new().build(&MemoryLayout::new(GIB, &[MMIO_GAP], None).unwrap()),
    )
    .unwrap();
    let small_time = small_start.elapsed();
    print_line(
        "build_1tib",
        build_time.as_secs_f64() * 1e6,
        "us",
        "build_1gib",
        small_time.as_secs_f64() * 1e6,
        None,
    );
    println!("{{\"name\":\"build_1tib_rss_added\",\"value\":{rss_added},\"unit\":\"kB\"}}");
    block_on(small.close());
    block_on(mgr.close());
}
