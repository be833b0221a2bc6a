//! Benchmarks of snapshots and restores, each printed as one JSON line in the project's format
//! (`docs/design.md`, "Benchmarks") with a baseline measured in the same run:
//!
//! - `snapshot_bytes_written`: bytes a full snapshot of a 4 GiB guest with 256 MiB touched
//!   writes (all three files), against the touched bytes (target ≤ 1.05×).
//! - `snapshot_throughput`: the same snapshot's throughput against `copy_file_range` of the same
//!   extents from the RAM memfd into one file, fsynced like the snapshot (target ≥ 0.8×).
//! - `copy_restore_throughput`: a copy restore of that snapshot against `copy_file_range` of its
//!   memory file into a memfd (target ≥ 0.8×).
//! - `incremental_snapshot_1pct`: an incremental snapshot of a fully written 1 GiB guest with 1%
//!   of its pages dirtied, against a full snapshot of it (target ≤ 0.05×).
//! - `lazy_restore_16gib_vs_1gib`: a lazy restore until the manager is ready (the guest can run)
//!   of a 16 GiB guest against a 1 GiB one with the same 16 MiB of data (target ≤ 1.2×), and
//!   `lazy_restore_vs_build`: the 16 GiB lazy restore against building a fresh manager of the
//!   same layout (target ≤ 3×).
//! - `lazy_first_touch`: the first touch of a lazily restored page (the RAM region already
//!   mapped) against a raw userfaultfd fault served by a handler thread with `UFFDIO_COPY` of
//!   one page (target ≤ 3×).
//!
//! The snapshot directory is `MEMBACKING_BENCH_DIR` or the system temporary directory. Run with
//! `cargo bench -p membacking --bench snapshot`.

// Unsafe code: the baselines copy files with copy_file_range/sendfile and touch the pages of a
// raw userfaultfd view.
#![allow(unsafe_code)]

mod support;

use futures::executor::block_on;
use membacking::snapshot::RestoreMode;
use membacking::snapshot::RestoreOptions;
use membacking::snapshot::SnapshotOptions;
use membacking::GuestMemoryBuilder;
use memory_range::MemoryRange;
use sparse_mmap::userfaultfd::StopEvent;
use sparse_mmap::userfaultfd::Userfaultfd;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;
use support::median;
use support::random_bytes;
use support::warm_up;
use support::Figure;
use support::Rng;
use vm_topology::memory::MemoryLayout;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: usize = 4096;
const MMIO_GAP: MemoryRange = MemoryRange::new(0xC000_0000..0x1_0000_0000);

fn layout(ram: u64) -> MemoryLayout {
    MemoryLayout::new(ram, &[MMIO_GAP], None).unwrap()
}

/// The lazy-restore comparison's layouts: an MMIO gap from 512 MiB to 1 GiB, so a 1 GiB and a
/// 16 GiB guest both have two RAM regions and differ only in size.
fn two_region_layout(ram: u64) -> MemoryLayout {
    MemoryLayout::new(ram, &[MemoryRange::new(512 * MIB..GIB)], None).unwrap()
}

fn build(ram: u64) -> membacking::GuestMemoryManager {
    block_on(GuestMemoryBuilder::new().build(&layout(ram))).unwrap()
}

/// `count` distinct chunk-aligned GPAs of `chunk` bytes in the low 3 GiB of RAM.
fn spread(rng: &mut Rng, count: usize, chunk: u64, limit: u64) -> Vec<u64> {
    let slots = limit / chunk;
    let mut chosen = std::collections::BTreeSet::new();
    while chosen.len() < count {
        chosen.insert(rng.next() % slots * chunk);
    }
    chosen.into_iter().collect()
}

fn remove(path: &Path) {
    let _ = std::fs::remove_dir_all(path);
    let _ = std::fs::remove_file(path);
}

/// copy_file_range of `[offset, offset + len)` of `from` to `to` at `at`, whole; across file
/// systems (a memfd and a disk file), where the kernel refuses it (`EXDEV`), `sendfile`, the
/// same in-kernel page copy.
fn copy_range(from: i32, offset: u64, to: i32, at: u64, len: u64) {
    let mut done = 0u64;
    while done < len {
        let mut source = libc::loff_t::try_from(offset + done).unwrap();
        let mut target = libc::loff_t::try_from(at + done).unwrap();
        let remaining = usize::try_from(len - done).unwrap();
        // SAFETY: both descriptors are open and the offsets are plain in/out integers.
        let copied =
            unsafe { libc::copy_file_range(from, &mut source, to, &mut target, remaining, 0) };
        if copied < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EXDEV) {
            // SAFETY: positions the output; sendfile reads at `source` without moving `from`.
            let positioned = unsafe { libc::lseek(to, target, libc::SEEK_SET) };
            assert!(positioned >= 0);
            // SAFETY: both descriptors are open; `source` is a plain in/out offset.
            let sent = unsafe { libc::sendfile(to, from, &mut source, remaining) };
            assert!(sent > 0, "sendfile: {}", std::io::Error::last_os_error());
            done += u64::try_from(sent).unwrap();
            continue;
        }
        assert!(
            copied > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        done += u64::try_from(copied).unwrap();
    }
}

/// Snapshot of a 4 GiB guest with 256 MiB touched, its baseline, and the copy restore.
fn snapshot_and_copy_restore(dir: &Path) {
    let manager = build(4 * GIB);
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let mut rng = Rng(0x1234_5678);
    let chunk = 128 * 1024;
    let touched = 256 * MIB;
    let count = usize::try_from(touched / chunk).unwrap();
    for gpa in spread(&mut rng, count, chunk, 3 * GIB) {
        memory
            .write_at(
                gpa,
                &random_bytes(&mut rng, usize::try_from(chunk).unwrap()),
            )
            .unwrap();
    }
    let object = manager.shared_memory_backing().unwrap();
    let fd = object.as_fd_raw();
    let runs = support::data_runs(std::os::fd::AsFd::as_fd(&object), 4 * GIB);

    let target = dir.join("bench-full");
    let baseline_file = dir.join("bench-copy-file-range");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut written = 0;
    // Medians of five interleaved runs each (three moved by 0.4 under load on the shared machine).
    for _ in 0..5 {
        remove(&target);
        let start = Instant::now();
        let info = block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
        ours.push(start.elapsed().as_secs_f64());
        written = info.total_bytes;

        remove(&baseline_file);
        let start = Instant::now();
        let file = std::fs::File::create(&baseline_file).unwrap();
        let mut at = 0;
        for &(from, to) in &runs {
            copy_range(fd, from, file.as_raw_fd(), at, to - from);
            at += to - from;
        }
        file.sync_all().unwrap();
        drop(file);
        theirs.push(start.elapsed().as_secs_f64());
    }
    let ratio = written as f64 / touched as f64;
    Figure {
        name: "snapshot_bytes_written_4gib_256mib",
        value: written as f64,
        unit: "bytes",
        baseline: "touched bytes",
        baseline_value: touched as f64,
        ratio,
        target: ("<=", 1.05),
    }
    .print();
    let (ours, theirs) = (median(&ours), median(&theirs));
    let mbps = |seconds: f64| touched as f64 / seconds / 1e6;
    let ratio = mbps(ours) / mbps(theirs);
    Figure {
        name: "snapshot_throughput_4gib_256mib",
        value: mbps(ours),
        unit: "MB/s",
        baseline: "copy_file_range (sendfile across file systems) of the same extents, fsynced",
        baseline_value: mbps(theirs),
        ratio,
        target: (">=", 0.8),
    }
    .print();

    // Copy restore against copy_file_range of the memory file into a memfd.
    let memory_file = target.join(membacking::snapshot::format::MEMORY_FILE);
    let size = std::fs::metadata(&memory_file).unwrap().len();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    // Nine interleaved runs each: a run takes 0.1-0.3 s and the load of other builds varies by
    // the second.
    for _ in 0..9 {
        let start = Instant::now();
        let restored = block_on(GuestMemoryBuilder::restore(
            &target,
            RestoreOptions::default(),
        ))
        .unwrap();
        ours.push(start.elapsed().as_secs_f64());
        block_on(restored.manager.close());

        let source = std::fs::File::open(&memory_file).unwrap();
        let start = Instant::now();
        let object =
            sparse_mmap::alloc_shared_memory(usize::try_from(size).unwrap(), "baseline").unwrap();
        copy_range(source.as_raw_fd(), 0, object.as_raw_fd(), 0, size);
        theirs.push(start.elapsed().as_secs_f64());
    }
    let (ours, theirs) = (median(&ours), median(&theirs));
    let mbps = |seconds: f64| size as f64 / seconds / 1e6;
    let ratio = mbps(ours) / mbps(theirs);
    Figure {
        name: "copy_restore_throughput_256mib",
        value: mbps(ours),
        unit: "MB/s",
        baseline: "copy_file_range (sendfile across file systems) of memory.bin into a memfd",
        baseline_value: mbps(theirs),
        ratio,
        target: (">=", 0.8),
    }
    .print();
    remove(&target);
    remove(&baseline_file);
    drop(memory);
    block_on(manager.close());
}

/// A fully written 1 GiB guest: a full snapshot against an incremental one with 1% dirty.
fn incremental(dir: &Path) {
    let manager = build(GIB);
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let mut rng = Rng(0xabcd);
    let block = random_bytes(&mut rng, 4 << 20);
    for offset in (0..GIB).step_by(4 << 20) {
        memory.write_at(offset, &block).unwrap();
    }
    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    let mut full = Vec::new();
    let mut increments = Vec::new();
    for round in 0..5 {
        let base = dir.join(format!("bench-base-{round}"));
        remove(&base);
        let start = Instant::now();
        block_on(manager.snapshot(&base, SnapshotOptions::default())).unwrap();
        full.push(start.elapsed().as_secs_f64());
        let pages = GIB / PAGE as u64;
        for page in spread(
            &mut rng,
            usize::try_from(pages / 100).unwrap(),
            PAGE as u64,
            GIB,
        ) {
            memory.write_plain(page, &rng.next()).unwrap();
        }
        let top = dir.join(format!("bench-incremental-{round}"));
        remove(&top);
        let start = Instant::now();
        let info = block_on(manager.snapshot(
            &top,
            SnapshotOptions {
                base: Some(base.clone()),
                progress: None,
            },
        ))
        .unwrap();
        increments.push(start.elapsed().as_secs_f64());
        assert!(info.incremental);
        remove(&top);
        remove(&base);
    }
    let (full, increment) = (median(&full), median(&increments));
    let ratio = increment / full;
    Figure {
        name: "incremental_snapshot_1pct_dirty_1gib",
        value: increment * 1e3,
        unit: "ms",
        baseline: "full snapshot of the same guest",
        baseline_value: full * 1e3,
        ratio,
        target: ("<=", 0.05),
    }
    .print();
    drop(memory);
    block_on(manager.close());
}

/// Snapshots of a 1 GiB and a 16 GiB guest with the same 16 MiB of data.
fn snapshot_with_data(dir: &Path, ram: u64, name: &str) -> PathBuf {
    let manager = block_on(GuestMemoryBuilder::new().build(&two_region_layout(ram))).unwrap();
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let mut rng = Rng(0x77);
    for gpa in spread(&mut rng, 128, 128 * 1024, 256 * MIB) {
        memory
            .write_at(gpa, &random_bytes(&mut rng, 128 * 1024))
            .unwrap();
    }
    let target = dir.join(name);
    remove(&target);
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    drop(memory);
    block_on(manager.close());
    target
}

/// One lazy restore of `snapshot` until the manager is returned, in milliseconds (the
/// background fill, started afterwards, and the teardown are not timed).
fn lazy_restore_ms(snapshot: &Path) -> f64 {
    let start = Instant::now();
    let restored = block_on(GuestMemoryBuilder::restore(
        snapshot,
        RestoreOptions {
            mode: RestoreMode::Lazy,
            defer_background_fill: true,
            ..RestoreOptions::default()
        },
    ))
    .unwrap();
    let elapsed = start.elapsed().as_secs_f64() * 1e3;
    let lazy = restored.lazy.unwrap();
    lazy.start_background();
    block_on(lazy.wait()).unwrap();
    block_on(restored.manager.close());
    elapsed
}

fn build_ms(ram: u64) -> f64 {
    let start = Instant::now();
    let manager = block_on(GuestMemoryBuilder::new().build(&two_region_layout(ram))).unwrap();
    let elapsed = start.elapsed().as_secs_f64() * 1e3;
    block_on(manager.close());
    elapsed
}

fn lazy_restore(dir: &Path) {
    if let Err(reason) = membacking::snapshot::userfaultfd_available() {
        eprintln!("lazy restore benchmarks skipped: {reason}");
        return;
    }
    let small = snapshot_with_data(dir, GIB, "bench-lazy-1gib");
    let large = snapshot_with_data(dir, 16 * GIB, "bench-lazy-16gib");
    // Interleaved, so all three see the same machine state, and in alternating order, so
    // neither size always follows the other's teardown; medians of 41 (a restore takes well
    // under a millisecond, so one descheduling on the shared machine moves a single sample by
    // more than the whole difference being measured).
    let (mut small_times, mut large_times, mut builds) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..41 {
        if round % 2 == 0 {
            small_times.push(lazy_restore_ms(&small));
            large_times.push(lazy_restore_ms(&large));
        } else {
            large_times.push(lazy_restore_ms(&large));
            small_times.push(lazy_restore_ms(&small));
        }
        builds.push(build_ms(16 * GIB));
    }
    let (small_ms, large_ms, build_ms) =
        (median(&small_times), median(&large_times), median(&builds));
    let ratio = large_ms / small_ms;
    Figure {
        name: "lazy_restore_16gib_vs_1gib",
        value: large_ms,
        unit: "ms",
        baseline: "lazy restore of a 1 GiB guest with the same data",
        baseline_value: small_ms,
        ratio,
        target: ("<=", 1.2),
    }
    .print();
    let ratio = large_ms / build_ms;
    Figure {
        name: "lazy_restore_vs_build_16gib",
        value: large_ms,
        unit: "ms",
        baseline: "building a fresh manager of the same layout",
        baseline_value: build_ms,
        ratio,
        target: ("<=", 3.0),
    }
    .print();
    first_touch(&small);
    remove(&small);
    remove(&large);
}

/// The first touch of a lazily restored page against a raw userfaultfd fault + UFFDIO_COPY.
fn first_touch(snapshot: &Path) {
    let restored = block_on(GuestMemoryBuilder::restore(
        snapshot,
        RestoreOptions {
            mode: RestoreMode::Lazy,
            defer_background_fill: true,
            ..RestoreOptions::default()
        },
    ))
    .unwrap();
    let memory = block_on(restored.manager.client().guest_memory()).unwrap();
    // Map the region first (a lazily mapped VA window maps whole regions on first access).
    memory.read_plain::<u8>(255 * MIB).unwrap();
    let mut rng = Rng(0x99);
    let pages = spread(&mut rng, 2000, PAGE as u64, 255 * MIB);
    let start = Instant::now();
    for &gpa in &pages {
        std::hint::black_box(memory.read_plain::<u8>(gpa).unwrap());
    }
    let ours = start.elapsed().as_nanos() as f64 / pages.len() as f64;
    let lazy = restored.lazy.unwrap();
    lazy.start_background();
    block_on(lazy.wait()).unwrap();
    drop(memory);
    block_on(restored.manager.close());

    let theirs = raw_userfaultfd_touch_ns(pages.len());
    let ratio = ours / theirs;
    Figure {
        name: "lazy_first_touch",
        value: ours,
        unit: "ns",
        baseline: "raw userfaultfd fault + UFFDIO_COPY of one page (handler thread)",
        baseline_value: theirs,
        ratio,
        target: ("<=", 3.0),
    }
    .print();
}

/// Touches `count` pages of a registered memfd view; a handler thread serves each fault with
/// one `UFFDIO_COPY` of a fixed page.
fn raw_userfaultfd_touch_ns(count: usize) -> f64 {
    let len = count * PAGE;
    let object = sparse_mmap::alloc_shared_memory(len, "raw-uffd").unwrap();
    let view = sparse_mmap::SparseMapping::new(len).unwrap();
    view.map_file(0, len, &object, 0, true).unwrap();
    let base = view.as_ptr().cast::<u8>();
    let uffd = Userfaultfd::new().unwrap();
    uffd.register(&view, 0, len).unwrap();
    let stop = StopEvent::new().unwrap();
    let base_address = base as usize;
    std::thread::scope(|scope| {
        let handler = scope.spawn(|| {
            let page = vec![7u8; PAGE];
            let mut faults = Vec::new();
            loop {
                let ready = uffd.wait(&stop).unwrap();
                if ready.faults {
                    faults.clear();
                    uffd.read_faults(&mut faults).unwrap();
                    for &address in &faults {
                        let offset =
                            (usize::try_from(address).unwrap() & !(PAGE - 1)) - base_address;
                        uffd.copy(&view, offset, &page).unwrap();
                    }
                }
                if ready.stopped {
                    break;
                }
            }
        });
        let start = Instant::now();
        for index in 0..count {
            // SAFETY: inside the registered view, which lives until the end of the function; the
            // handler fills the page.
            std::hint::black_box(unsafe { std::ptr::read_volatile(base.add(index * PAGE)) });
        }
        let elapsed = start.elapsed();
        stop.signal().unwrap();
        handler.join().unwrap();
        elapsed
    })
    .as_nanos() as f64
        / count as f64
}

trait RawFdOf {
    fn as_fd_raw(&self) -> i32;
}

impl RawFdOf for membacking::SharedMemoryBacking {
    fn as_fd_raw(&self) -> i32 {
        std::os::fd::AsFd::as_fd(self).as_raw_fd()
    }
}

fn main() {
    let root = std::env::var_os("MEMBACKING_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = root.join(format!("membacking-snapshot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    warm_up();
    std::thread::sleep(Duration::from_millis(10));
    // `SNAPSHOT_BENCH=lazy` (or `snapshot`, `incremental`) runs one group.
    let only = std::env::var("SNAPSHOT_BENCH").ok();
    let wanted = |group: &str| only.as_deref().is_none_or(|only| only == group);
    if wanted("snapshot") {
        snapshot_and_copy_restore(&dir);
    }
    if wanted("incremental") {
        incremental(&dir);
    }
    if wanted("lazy") {
        lazy_restore(&dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
