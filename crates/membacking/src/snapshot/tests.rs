//! Tests of snapshots and restores through a running manager: byte-exact round trips in both
//! modes (file-backed and private RAM, guest-memory and KVM guest writes, visibility changes
//! and device windows), incremental chains, the dirty-tracking rules, corruption of every file,
//! layout checks, atomic replacement and a writer killed with SIGKILL.

use super::*;
use crate::memory_manager::region_actor::ManagerSnapshot;
use crate::region_manager::MapParams;
use crate::GuestMemoryBuilder;
use crate::GuestMemoryManager;
use crate::RamVisibility;
use futures::executor::block_on;
use memory_range::MemoryRange;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use vm_topology::memory::MemoryLayout;
use vm_topology::memory::MemoryRangeWithNode;

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;
pub(crate) const MMIO_GAP: MemoryRange = MemoryRange::new(0xC000_0000..0x1_0000_0000);
pub(crate) const LOW: MemoryRange = MemoryRange::new(0..16 * MIB);
pub(crate) const HIGH: MemoryRange = MemoryRange::new(4 * GIB..4 * GIB + 8 * MIB);
pub(crate) const VGA: MemoryRange = MemoryRange::new(0xa0000..0xc0000);
pub(crate) const PAM0: MemoryRange = MemoryRange::new(0xc0000..0xc4000);
pub(crate) const WINDOW_GPA: u64 = 0xD000_0000;

/// A small deterministic generator (xorshift64*).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

pub(crate) fn layout() -> MemoryLayout {
    let ram: Vec<MemoryRangeWithNode> = [LOW, HIGH]
        .iter()
        .map(|&range| MemoryRangeWithNode { range, vnode: 0 })
        .collect();
    MemoryLayout::new_from_ranges(&ram, &[MMIO_GAP]).unwrap()
}

pub(crate) fn build(private: bool) -> GuestMemoryManager {
    let builder = GuestMemoryBuilder::new()
        .private_memory(private)
        .x86_legacy_support(!private);
    block_on(builder.build(&layout())).unwrap()
}

pub(crate) fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Every byte of the RAM backing, read without faulting through the manager's own source.
pub(crate) fn ram_image(manager: &GuestMemoryManager) -> Vec<u8> {
    let view = manager.snapshot_view();
    let mut image = vec![0u8; usize::try_from(view.ram_size).unwrap()];
    for spec in &view.specs {
        let start = usize::try_from(spec.file_offset).unwrap();
        let len = usize::try_from(spec.range.len()).unwrap();
        view.source
            .read(spec.file_offset, &mut image[start..start + len])
            .unwrap();
    }
    image
}

/// Random writes of random bytes through guest memory into the visible RAM.
pub(crate) fn scribble(manager: &GuestMemoryManager, rng: &mut Rng, writes: usize) {
    let memory = block_on(manager.client().guest_memory()).unwrap();
    for _ in 0..writes {
        // Low RAM from 1 MiB: the legacy pieces below may be unmapped or read-only.
        let ram = if rng.below(3) == 0 {
            HIGH
        } else {
            MemoryRange::new(MIB..LOW.end())
        };
        let len = 1 + rng.below(3 * 4096);
        let gpa = ram.start() + rng.below(ram.len() - len);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
        memory.write_at(gpa, &bytes).unwrap();
    }
}

/// The regions, without ids, in a stable order.
pub(crate) type RegionSummary = Vec<(
    String,
    MemoryRange,
    u8,
    Option<MapParams>,
    Vec<(MemoryRange, u64, bool)>,
)>;

pub(crate) fn regions(manager: &GuestMemoryManager) -> RegionSummary {
    let snapshot: ManagerSnapshot = block_on(manager.inspect()).unwrap();
    let mut summary: RegionSummary = snapshot
        .regions
        .into_iter()
        .map(|region| {
            let mappings = region
                .mappings
                .iter()
                .map(|m| (m.range_in_region, m.file_offset, m.writable))
                .collect();
            (
                region.name,
                region.range,
                region.priority,
                region.map_params,
                mappings,
            )
        })
        .collect();
    summary.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    summary
}

pub(crate) fn memfd(len: usize, fill: u8) -> OwnedFd {
    let fd = sparse_mmap::alloc_shared_memory(len, "device").unwrap();
    let file = std::fs::File::from(fd.try_clone().unwrap());
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![fill; len], 0).unwrap();
    fd
}

/// A machine with written RAM, changed visibility and a device window with two mappings;
/// returns the window's halves (kept alive) and its backings.
fn prepared_machine(
    manager: &GuestMemoryManager,
    rng: &mut Rng,
) -> (
    crate::MappableGuestMemory,
    std::sync::Arc<crate::MappedMemoryRegion>,
    OwnedFd,
    OwnedFd,
) {
    scribble(manager, rng, 300);
    let control = manager.ram_visibility_control();
    block_on(control.set_ram_visibility(VGA, RamVisibility::Unmapped)).unwrap();
    block_on(control.set_ram_visibility(PAM0, RamVisibility::ReadOnly)).unwrap();
    let (window, region) = manager
        .device_memory_mapper()
        .new_region(0x4000, "framebuffer".into())
        .unwrap();
    let first = memfd(0x2000, 0xab);
    let second = memfd(0x1000, 0xcd);
    block_on(region.map(0, first.as_fd(), 0, 0x2000, true)).unwrap();
    block_on(region.map(0x3000, second.as_fd(), 0, 0x1000, false)).unwrap();
    block_on(window.map_to_guest(WINDOW_GPA, true)).unwrap();
    // Written after the visibility change: still saved.
    scribble(manager, rng, 50);
    (window, region, first, second)
}

/// A file-backed manager with `writes` random writes (seeded with `seed`), and a full snapshot of
/// it in `snap` under a temporary directory.
fn scribbled_snapshot(
    seed: u64,
    writes: usize,
) -> (GuestMemoryManager, tempfile::TempDir, std::path::PathBuf) {
    let manager = build(false);
    let mut rng = Rng::new(seed);
    scribble(&manager, &mut rng, writes);
    let dir = temp_dir();
    let target = dir.path().join("snap");
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    (manager, dir, target)
}

/// The options of an incremental snapshot on `base`.
fn on_base(base: impl Into<std::path::PathBuf>) -> SnapshotOptions {
    SnapshotOptions {
        base: Some(base.into()),
        progress: None,
    }
}

/// Options of a lazy restore, its background fill deferred or not.
fn lazy_options(defer_background_fill: bool) -> RestoreOptions {
    RestoreOptions {
        mode: RestoreMode::Lazy,
        defer_background_fill,
        ..RestoreOptions::default()
    }
}

fn restore(dir: &Path, options: RestoreOptions) -> RestoredManager {
    block_on(GuestMemoryBuilder::restore(dir, options)).unwrap()
}

fn lazy_available(test: &str) -> bool {
    match userfaultfd_available() {
        Ok(()) => true,
        Err(reason) => {
            // Past the test harness's capture, so the skip shows in every run.
            let _ = writeln!(std::io::stderr(), "SKIPPED {test} (lazy part): {reason}");
            false
        }
    }
}

#[test]
fn round_trips_are_byte_exact_with_visibility_and_windows_in_both_modes() {
    let test = "round_trips_are_byte_exact_with_visibility_and_windows_in_both_modes";
    for private in [false, true] {
        let manager = build(private);
        let mut rng = Rng::new(7 + u64::from(private));
        let kept = if private {
            scribble(&manager, &mut rng, 300);
            None
        } else {
            Some(prepared_machine(&manager, &mut rng))
        };
        let dir = temp_dir();
        let target = dir.path().join("snap");
        let last = std::sync::Arc::new(AtomicU64::new(0));
        let progress: Progress = {
            let last = last.clone();
            std::sync::Arc::new(move |done, total| {
                assert!(done <= total);
                last.store(done, Ordering::SeqCst);
            })
        };
        let info = block_on(manager.snapshot(
            &target,
            SnapshotOptions {
                base: None,
                progress: Some(progress),
            },
        ))
        .unwrap();
        assert!(!info.incremental);
        assert!(info.bytes > 0 && info.bytes < 4 * MIB, "{info:?}");
        assert!(last.load(Ordering::SeqCst) >= info.bytes);
        let image = ram_image(&manager);
        let summary = regions(&manager);

        for mode in [RestoreMode::Copy, RestoreMode::Lazy] {
            if mode == RestoreMode::Lazy && !lazy_available(test) {
                continue;
            }
            let backings = match &kept {
                Some((_, _, first, second)) => vec![
                    WindowBacking {
                        window: "framebuffer".into(),
                        offset: Some(0),
                        object: first.try_clone().unwrap(),
                    },
                    WindowBacking {
                        window: "framebuffer".into(),
                        offset: Some(0x3000),
                        object: second.try_clone().unwrap(),
                    },
                ],
                None => Vec::new(),
            };
            let restored = restore(
                &target,
                RestoreOptions {
                    mode,
                    window_backings: backings,
                    ..RestoreOptions::default()
                },
            );
            if let Some(lazy) = &restored.lazy {
                block_on(lazy.wait()).unwrap();
                assert!(lazy.is_finished());
            }
            assert_eq!(restored.layers, 1);
            assert!(
                ram_image(&restored.manager) == image,
                "RAM differs after a {mode:?} restore (private {private})"
            );
            assert_eq!(regions(&restored.manager), summary, "{mode:?}");
            if kept.is_some() {
                assert_eq!(restored.windows.len(), 1);
                assert_eq!(restored.windows[0].control.gpa(), Some(WINDOW_GPA));
                assert!(restored.windows[0].missing.is_empty());
                let memory = block_on(restored.manager.client().guest_memory()).unwrap();
                assert_eq!(memory.read_plain::<u8>(WINDOW_GPA + 0x1000).unwrap(), 0xab);
                assert_eq!(memory.read_plain::<u8>(WINDOW_GPA + 0x3000).unwrap(), 0xcd);
            }
            drop(restored.windows);
            block_on(restored.manager.close());
        }
        drop(kept);
        block_on(manager.close());
    }
}

#[test]
fn lazy_restore_serves_first_touches_before_the_background_fill() {
    let test = "lazy_restore_serves_first_touches_before_the_background_fill";
    if !lazy_available(test) {
        return;
    }
    let manager = build(false);
    let mut rng = Rng::new(99);
    scribble(&manager, &mut rng, 200);
    let image = ram_image(&manager);
    let dir = temp_dir();
    let target = dir.path().join("snap");
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    let restored = restore(&target, lazy_options(true));
    let lazy = restored.lazy.as_ref().unwrap();
    let memory = block_on(restored.manager.client().guest_memory()).unwrap();
    // Touch pages in random order through guest memory: each is served on its fault.
    for _ in 0..64 {
        let gpa = rng.below(LOW.len() / 4096) * 4096;
        if VGA.contains_addr(gpa) {
            continue;
        }
        let mut page = vec![0u8; 4096];
        memory.read_at(gpa, &mut page).unwrap();
        let offset = usize::try_from(gpa).unwrap();
        assert!(page == image[offset..offset + 4096], "page {gpa:#x}");
    }
    // A write to a never-touched page lands on the restored page, not on zeros.
    let gpa = 0x80_1008;
    memory.write_plain(gpa, &0x1234_5678u32).unwrap();
    assert!(lazy.stats().faults > 0);
    assert!(!lazy.is_finished());
    // A snapshot now waits for the restore to finish (and starts its deferred fill).
    let again = dir.path().join("again");
    block_on(
        restored
            .manager
            .snapshot(&again, SnapshotOptions::default()),
    )
    .unwrap();
    assert!(lazy.is_finished());
    block_on(lazy.wait()).unwrap();
    let mut expected = image.clone();
    expected[0x80_1008..0x80_100c].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    assert!(ram_image(&restored.manager) == expected);
    let copied = restore(&again, RestoreOptions::default());
    assert!(ram_image(&copied.manager) == expected);
    block_on(copied.manager.close());
    // The steady state: faults are plain page faults again (the RAM views are unregistered).
    let faults = lazy.stats().faults;
    memory.write_at(HIGH.start() + 7 * MIB, &[1; 64]).unwrap();
    assert_eq!(lazy.stats().faults, faults);
    drop(memory);
    block_on(restored.manager.close());
    block_on(manager.close());
}

#[test]
fn a_fault_in_the_helper_view_is_served_with_that_page_of_the_snapshot() {
    let test = "a_fault_in_the_helper_view_is_served_with_that_page_of_the_snapshot";
    if !lazy_available(test) {
        return;
    }
    let (manager, _dir, target) = scribbled_snapshot(41, 200);
    let image = ram_image(&manager);
    // A page with data, above the legacy pieces (whose window GPAs equal their offsets).
    let offset = (usize::try_from(MIB).unwrap()..image.len())
        .step_by(4096)
        .find(|&offset| image[offset..offset + 4096].iter().any(|&byte| byte != 0))
        .unwrap();
    let restored = restore(&target, lazy_options(true));
    let lazy = restored.lazy.as_ref().unwrap();
    let faults = lazy.stats().faults;
    // The helper maps the RAM object from offset 0: the fault there is served with the page at
    // that backing offset (the window's GPA arithmetic does not apply to it).
    let mut page = vec![0u8; 4096];
    lazy.read_helper(offset, &mut page)
        .expect("file-backed RAM has a helper view")
        .unwrap();
    assert!(page == image[offset..offset + 4096], "offset {offset:#x}");
    assert_eq!(lazy.stats().faults, faults + 1);
    lazy.start_background();
    block_on(lazy.wait()).unwrap();
    assert!(ram_image(&restored.manager) == image);
    block_on(restored.manager.close());
    block_on(manager.close());
}

#[test]
fn closing_a_manager_stops_its_lazy_restore_and_releases_it() {
    let test = "closing_a_manager_stops_its_lazy_restore_and_releases_it";
    if !lazy_available(test) {
        return;
    }
    let (manager, _dir, target) = scribbled_snapshot(5, 100);
    for deferred in [true, false] {
        let restored = restore(&target, lazy_options(deferred));
        let lazy = restored.lazy.unwrap();
        if deferred {
            assert!(!lazy.is_finished());
        }
        block_on(restored.manager.close());
        // The handler and filler have ended and dropped the userfaultfd, the snapshot's
        // files and the bitmaps: nothing of the restore is left but its outcome.
        assert!(lazy.is_released(), "deferred {deferred}");
        assert!(lazy.is_finished());
        match block_on(lazy.wait()) {
            // A restore that had finished before the close keeps its outcome.
            Ok(_) => assert!(!deferred),
            Err(SnapshotError::Manager(crate::RegionManagerError::ManagerGone)) => {}
            Err(other) => panic!("{other:?}"),
        }
        drop(restored.windows);
    }
    block_on(manager.close());
}

#[test]
fn reads_racing_the_close_of_a_lazily_restored_manager_see_the_snapshot_or_fail() {
    // Closing stopped the restore (unregistering its views) before the VA mappers were told the
    // manager was gone: in between, a read of a page not filled yet was served by the kernel
    // with zeros and returned them as guest data; and a fill that failed because the close had
    // removed its view made the restore fail with that I/O error (ENOENT) instead of
    // `ManagerGone`.
    let test = "reads_racing_the_close_of_a_lazily_restored_manager_see_the_snapshot_or_fail";
    if !lazy_available(test) {
        return;
    }
    const BYTE: u8 = 0x5a;
    let data = MemoryRange::new(MIB..LOW.end());
    let manager = build(false);
    let memory = block_on(manager.client().guest_memory()).unwrap();
    memory
        .fill_at(data.start(), BYTE, usize::try_from(data.len()).unwrap())
        .unwrap();
    drop(memory);
    let dir = temp_dir();
    let target = dir.path().join("snap");
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    block_on(manager.close());
    let pages = data.len() / 4096;
    for round in 0..8u64 {
        // The fill is deferred: every page not touched before the close is still missing.
        let restored = restore(&target, lazy_options(true));
        let lazy = restored.lazy.unwrap();
        let memory = block_on(restored.manager.client().guest_memory()).unwrap();
        let start = std::sync::Barrier::new(5);
        let wrong = std::thread::scope(|scope| {
            let readers: Vec<_> = (0..4u64)
                .map(|reader| {
                    let (memory, start) = (&memory, &start);
                    scope.spawn(move || {
                        start.wait();
                        let mut rng = Rng::new(round * 8 + reader + 1);
                        let mut page = vec![0u8; 4096];
                        // Until the close makes reads fail (bounded, should it never).
                        for _ in 0..pages {
                            let gpa = data.start() + rng.below(pages) * 4096;
                            if memory.read_at(gpa, &mut page).is_err() {
                                return None;
                            }
                            if let Some(at) = page.iter().position(|&b| b != BYTE) {
                                return Some((gpa + at as u64, page[at]));
                            }
                        }
                        None
                    })
                })
                .collect();
            start.wait();
            block_on(restored.manager.close());
            readers
                .into_iter()
                .filter_map(|reader| reader.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert!(
            wrong.is_empty(),
            "round {round}: reads racing the close returned other bytes than the snapshot's \
             (gpa, byte): {wrong:x?}"
        );
        match block_on(lazy.wait()) {
            Err(SnapshotError::Manager(crate::RegionManagerError::ManagerGone)) => {}
            other => panic!("round {round}: the restore ended with {other:?}, not ManagerGone"),
        }
        drop(restored.windows);
    }
}

#[test]
fn a_decommit_during_a_lazy_restore_wins_over_the_snapshot() {
    let test = "a_decommit_during_a_lazy_restore_wins_over_the_snapshot";
    if !lazy_available(test) {
        return;
    }
    let manager = build(false);
    let memory = block_on(manager.client().guest_memory()).unwrap();
    memory.fill_at(0x40_0000, 0x5a, 0x10000).unwrap();
    let dir = temp_dir();
    let target = dir.path().join("snap");
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    let restored = restore(&target, lazy_options(true));
    let restored_memory = block_on(restored.manager.client().guest_memory()).unwrap();
    // One page touched (filled from the snapshot) before the decommit, the rest not.
    assert_eq!(restored_memory.read_plain::<u8>(0x40_1000).unwrap(), 0x5a);
    let decommit = MemoryRange::new(0x40_0000..0x40_4000);
    block_on(restored.manager.decommit_ram(decommit)).unwrap();
    let lazy = restored.lazy.as_ref().unwrap();
    lazy.start_background();
    block_on(lazy.wait()).unwrap();
    let mut page = [0u8; 4096];
    for gpa in (0x40_0000..0x40_4000).step_by(4096) {
        restored_memory.read_at(gpa, &mut page).unwrap();
        assert!(page.iter().all(|&byte| byte == 0), "page {gpa:#x}");
    }
    restored_memory.read_at(0x40_4000, &mut page).unwrap();
    assert!(page.iter().all(|&byte| byte == 0x5a));
    drop((memory, restored_memory));
    block_on(restored.manager.close());
    block_on(manager.close());
}

#[test]
fn incremental_chains_of_five_restore_every_link() {
    let test = "incremental_chains_of_five_restore_every_link";
    let manager = build(false);
    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    let dir = temp_dir();
    let mut rng = Rng::new(5);
    scribble(&manager, &mut rng, 300);
    let mut images = Vec::new();
    let mut paths: Vec<std::path::PathBuf> = Vec::new();
    for link in 0..5 {
        let target = dir.path().join(format!("s{link}"));
        let base = paths.last().cloned();
        let info = block_on(manager.snapshot(
            &target,
            SnapshotOptions {
                base: base.clone(),
                progress: None,
            },
        ))
        .unwrap();
        assert_eq!(info.incremental, base.is_some());
        if link > 0 {
            assert!(
                info.bytes < 512 * 1024,
                "link {link} saved {} bytes",
                info.bytes
            );
        }
        images.push(ram_image(&manager));
        paths.push(target);
        // Changes for the next link: writes, a decommit, a user take (which must not steal
        // pages from the chain).
        scribble(&manager, &mut rng, 40);
        let start = LOW.start() + (2 + link) * MIB;
        block_on(manager.decommit_ram(MemoryRange::new(start..start + 0x3000))).unwrap();
        block_on(tracking.take()).unwrap();
    }
    for (link, path) in paths.iter().enumerate() {
        for mode in [RestoreMode::Copy, RestoreMode::Lazy] {
            if mode == RestoreMode::Lazy && (link % 2 == 1 || !lazy_available(test)) {
                continue;
            }
            let restored = restore(
                path,
                RestoreOptions {
                    mode,
                    ..RestoreOptions::default()
                },
            );
            if let Some(lazy) = &restored.lazy {
                block_on(lazy.wait()).unwrap();
            }
            assert_eq!(restored.layers, link + 1);
            assert!(
                ram_image(&restored.manager) == images[link],
                "link {link} ({mode:?}) differs"
            );
            block_on(restored.manager.close());
        }
    }
    block_on(manager.close());
}

#[test]
fn a_snapshot_taken_while_another_is_written_is_outside_the_chain_and_says_so() {
    // Its manifest has no tracking session, so an incremental snapshot on it was refused as
    // "taken while dirty tracking was off", although tracking was on all along.
    let manager = build(false);
    block_on(manager.dirty_tracking().start()).unwrap();
    let mut rng = Rng::new(7);
    scribble(&manager, &mut rng, 50);
    let dir = temp_dir();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    // The first snapshot waits in its first progress report (it has begun, nothing is written
    // yet) until the second one is done.
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(Some((entered_tx, release_rx)));
    let progress: Progress = std::sync::Arc::new(move |_done, _total| {
        let gate = gate.lock().unwrap().take();
        if let Some((entered, release)) = gate {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
    });
    let pending = manager.snapshot(
        &first,
        SnapshotOptions {
            base: None,
            progress: Some(progress),
        },
    );
    let writer = std::thread::spawn(move || block_on(pending));
    entered_rx.recv().unwrap();
    block_on(manager.snapshot(&second, SnapshotOptions::default())).unwrap();
    release_tx.send(()).unwrap();
    writer.join().unwrap().unwrap();

    let incremental = |base: &Path, target: &str| {
        block_on(manager.snapshot(dir.path().join(target), on_base(base.to_owned())))
    };
    match incremental(&second, "on-second") {
        Err(SnapshotError::DirtyTrackingOff { reason, .. }) => assert!(
            reason.contains("or while another snapshot of this manager was being written"),
            "{reason}"
        ),
        other => panic!("expected DirtyTrackingOff, got {other:?}"),
    }
    // The first one is the chain head.
    assert!(incremental(&first, "on-first").unwrap().incremental);
    block_on(manager.close());
}

#[test]
fn incremental_snapshots_need_tracking_since_their_base() {
    let manager = build(false);
    let dir = temp_dir();
    let untracked = dir.path().join("untracked");
    block_on(manager.snapshot(&untracked, SnapshotOptions::default())).unwrap();
    let incremental = |base: &Path, target: &str| {
        block_on(manager.snapshot(dir.path().join(target), on_base(base.to_owned())))
    };
    let reason = |result: Result<SnapshotInfo, SnapshotError>| match result {
        Err(SnapshotError::DirtyTrackingOff { reason, .. }) => reason,
        other => panic!("expected DirtyTrackingOff, got {other:?}"),
    };
    assert!(reason(incremental(&untracked, "a")).contains("taken while dirty tracking was off"));

    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    assert!(reason(incremental(&untracked, "a")).contains("taken while dirty tracking was off"));
    let first = dir.path().join("first");
    block_on(manager.snapshot(&first, SnapshotOptions::default())).unwrap();
    let second = dir.path().join("second");
    block_on(manager.snapshot(&second, SnapshotOptions::default())).unwrap();
    assert!(reason(incremental(&first, "b")).contains("not the latest"));
    incremental(&second, "c").unwrap();
    // The base cannot be replaced by its own increment, nor any snapshot the base is built
    // on: the new snapshot would depend on itself, and the chain could not be restored again.
    assert!(matches!(
        incremental(&dir.path().join("c"), "c"),
        Err(SnapshotError::InvalidArgument { .. })
    ));
    let what = match incremental(&dir.path().join("c"), "second") {
        Err(SnapshotError::InvalidArgument { what }) => what,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    assert!(what.contains("a snapshot its base"), "{what}");
    // Refused before anything was written: the chain still restores, and stays the chain head.
    let chain = block_on(read_snapshot_chain(dir.path().join("c"))).unwrap();
    assert_eq!(chain.len(), 2);
    incremental(&dir.path().join("c"), "c2").unwrap();
    block_on(tracking.stop()).unwrap();
    assert!(reason(incremental(&dir.path().join("c"), "d")).contains("off"));
    block_on(tracking.start()).unwrap();
    assert!(reason(incremental(&dir.path().join("c"), "d")).contains("continuously"));

    // A restored manager that adopted its snapshot continues the chain.
    let restored = restore(
        &dir.path().join("c"),
        RestoreOptions {
            start_dirty_tracking: true,
            ..RestoreOptions::default()
        },
    );
    assert_eq!(restored.layers, 2);
    let mut rng = Rng::new(3);
    scribble(&restored.manager, &mut rng, 20);
    let info = block_on(restored.manager.snapshot(
        dir.path().join("e"),
        SnapshotOptions {
            base: Some(dir.path().join("c")),
            progress: None,
        },
    ))
    .unwrap();
    assert!(info.incremental);
    let image = ram_image(&restored.manager);
    let again = restore(&dir.path().join("e"), RestoreOptions::default());
    assert_eq!(again.layers, 3);
    assert!(ram_image(&again.manager) == image);
    block_on(again.manager.close());
    block_on(restored.manager.close());
    block_on(manager.close());
}

#[test]
fn verifying_checks_every_page_of_every_layer() {
    let manager = build(false);
    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    let memory = block_on(manager.client().guest_memory()).unwrap();
    memory.fill_at(0x20_0000, 0x11, 0x4000).unwrap();
    let dir = temp_dir();
    let base = dir.path().join("base");
    block_on(manager.snapshot(&base, SnapshotOptions::default())).unwrap();
    // The top overwrites the base's second page: a restore never reads the base's copy.
    memory.fill_at(0x20_1000, 0x22, 0x1000).unwrap();
    let top = dir.path().join("top");
    block_on(manager.snapshot(&top, on_base(base.clone()))).unwrap();
    let verified = block_on(verify_snapshot(&top, None)).unwrap();
    let dirs: Vec<_> = verified.chain.iter().map(|(dir, _)| dir.clone()).collect();
    assert_eq!(dirs, vec![top.clone(), base.canonicalize().unwrap()]);
    assert_eq!(verified.pages, 4 + 1);
    assert_eq!(block_on(read_snapshot_chain(&top)).unwrap(), verified.chain);
    // Find the base's copy of the overwritten page and damage it.
    let memory_len = std::fs::metadata(base.join(format::MEMORY_FILE))
        .unwrap()
        .len();
    let index = format::decode_index(
        &std::fs::read(base.join(format::INDEX_FILE)).unwrap(),
        u64::MAX,
        memory_len,
    )
    .unwrap();
    let extent = index
        .extents
        .iter()
        .find(|e| e.ram_offset <= 0x20_1000 && 0x20_1000 < e.ram_offset + e.len())
        .unwrap();
    let offset = extent.data_offset + (0x20_1000 - extent.ram_offset);
    flip(&base.join(format::MEMORY_FILE), offset + 77);
    // A restore does not notice; verifying does.
    let restored = restore(&top, RestoreOptions::default());
    block_on(restored.manager.close());
    match block_on(verify_snapshot(&top, None)) {
        Err(SnapshotError::Corrupt {
            file, offset: at, ..
        }) => {
            assert_eq!(file, base.canonicalize().unwrap().join(format::MEMORY_FILE));
            assert_eq!(at, offset);
        }
        other => panic!("{other:?}"),
    }
    drop(memory);
    block_on(manager.close());
}

/// Flips one bit of `file` at `offset`.
fn flip(file: &Path, offset: u64) {
    let mut bytes = std::fs::read(file).unwrap();
    let index = usize::try_from(offset).unwrap();
    bytes[index] ^= 0x04;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_flipped_byte_in_any_file_is_detected_and_nothing_is_built() {
    let manager = build(false);
    let mut rng = Rng::new(11);
    scribble(&manager, &mut rng, 30);
    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    let dir = temp_dir();
    let base = dir.path().join("base");
    block_on(manager.snapshot(&base, SnapshotOptions::default())).unwrap();
    scribble(&manager, &mut rng, 10);
    let top = dir.path().join("top");
    block_on(manager.snapshot(&top, on_base(base.clone()))).unwrap();
    let pristine = dir.path().join("pristine");
    std::fs::create_dir(&pristine).unwrap();
    for layer in ["base", "top"] {
        std::fs::create_dir(pristine.join(layer)).unwrap();
        for file in [
            format::MANIFEST_FILE,
            format::INDEX_FILE,
            format::MEMORY_FILE,
        ] {
            std::fs::copy(
                dir.path().join(layer).join(file),
                pristine.join(layer).join(file),
            )
            .unwrap();
        }
    }
    let reset = || {
        for layer in ["base", "top"] {
            for file in [
                format::MANIFEST_FILE,
                format::INDEX_FILE,
                format::MEMORY_FILE,
            ] {
                std::fs::copy(
                    pristine.join(layer).join(file),
                    dir.path().join(layer).join(file),
                )
                .unwrap();
            }
        }
    };
    let mut checked = 0;
    for layer in ["base", "top"] {
        for file in [
            format::MANIFEST_FILE,
            format::INDEX_FILE,
            format::MEMORY_FILE,
        ] {
            let path = dir.path().join(layer).join(file);
            let len = std::fs::metadata(&path).unwrap().len();
            // Spread over the small files (the format's unit tests flip every byte of them);
            // for the memory file, a random byte of up to 24 random pages.
            let offsets: Vec<u64> = if file == format::MEMORY_FILE {
                (0..24.min(len / 4096))
                    .map(|_| rng.below(len / 4096) * 4096 + rng.below(4096))
                    .collect()
            } else {
                let step = if file == format::MANIFEST_FILE { 13 } else { 7 };
                (0..len).step_by(step).collect()
            };
            for offset in offsets {
                flip(&path, offset);
                match block_on(GuestMemoryBuilder::restore(&top, RestoreOptions::default())) {
                    Err(SnapshotError::Corrupt { file: named, .. }) => assert_eq!(
                        named.canonicalize().unwrap(),
                        path.canonicalize().unwrap(),
                        "flip at {offset} of {}",
                        path.display()
                    ),
                    Err(SnapshotError::Version { file: named, .. }) => {
                        assert_eq!(named.canonicalize().unwrap(), path.canonicalize().unwrap())
                    }
                    Err(SnapshotError::Layout { .. }) if file == format::MANIFEST_FILE => {}
                    other => panic!("flip at {offset} of {}: {other:?}", path.display()),
                }
                checked += 1;
                reset();
            }
        }
    }
    assert!(checked > 300, "{checked}");
    // A truncated memory file names the file and its size.
    let memory = top.join(format::MEMORY_FILE);
    let len = std::fs::metadata(&memory).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    match block_on(GuestMemoryBuilder::restore(&top, RestoreOptions::default())) {
        Err(SnapshotError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, memory);
            assert_eq!(offset, len - 4096);
        }
        other => panic!("{other:?}"),
    }
    block_on(manager.close());
}

#[test]
fn a_corrupt_page_fails_a_lazy_restore_when_it_is_reached() {
    let test = "a_corrupt_page_fails_a_lazy_restore_when_it_is_reached";
    if !lazy_available(test) {
        return;
    }
    let (manager, _dir, target) = scribbled_snapshot(13, 30);
    flip(&target.join(format::MEMORY_FILE), 4096 + 17);
    let restored = restore(
        &target,
        RestoreOptions {
            mode: RestoreMode::Lazy,
            ..RestoreOptions::default()
        },
    );
    match block_on(restored.lazy.as_ref().unwrap().wait()) {
        Err(SnapshotError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, target.join(format::MEMORY_FILE));
            assert_eq!(offset, 4096);
        }
        other => panic!("{other:?}"),
    }
    block_on(restored.manager.close());
    block_on(manager.close());
}

#[test]
fn a_memory_file_truncated_after_the_chain_was_loaded_is_corrupt_not_an_io_error() {
    // The size is checked when the chain is loaded; a file truncated after that (during a
    // restore, by another process) ends a read early: the file, the offset and what happened.
    let (manager, _dir, target) = scribbled_snapshot(21, 40);
    let layers = restore::load_chain(&target).unwrap();
    let items = restore::data_items(&restore::flatten(&layers));
    let last = items.last().unwrap();
    let memory = target.join(format::MEMORY_FILE);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut buffer = vec![0; usize::try_from(last.pages * 4096).unwrap()];
    match restore::read_verified(&layers, last, &mut buffer) {
        Err(error @ SnapshotError::Corrupt { .. }) => {
            let SnapshotError::Corrupt { file, offset, what } = &error else {
                unreachable!()
            };
            assert_eq!(file, &memory);
            let restore::Source::Data { data_offset, .. } = last.source else {
                panic!("{last:?}")
            };
            assert_eq!(*offset, data_offset);
            assert!(what.contains("it holds 0 bytes"), "{what}");
            assert!(what.contains("truncated"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    block_on(manager.close());
}

#[test]
fn snapshot_files_that_are_not_regular_files_are_refused_without_waiting() {
    // A FIFO in place of a snapshot file used to block the open until a writer came, holding a
    // snapshot-io thread for good (two such restores stopped every later snapshot and restore
    // of the process); a directory was reported by its st_size.
    let (manager, _dir, target) = scribbled_snapshot(22, 10);
    let pristine = temp_dir();
    for file in [
        format::MANIFEST_FILE,
        format::INDEX_FILE,
        format::MEMORY_FILE,
    ] {
        std::fs::copy(target.join(file), pristine.path().join(file)).unwrap();
    }
    for file in [
        format::MANIFEST_FILE,
        format::INDEX_FILE,
        format::MEMORY_FILE,
    ] {
        for kind in ["a FIFO", "a directory"] {
            let path = target.join(file);
            std::fs::remove_file(&path).unwrap();
            if kind == "a FIFO" {
                rustix::fs::mkfifoat(rustix::fs::CWD, &path, rustix::fs::Mode::RUSR).unwrap();
            } else {
                std::fs::create_dir(&path).unwrap();
            }
            // Three in a row: more than the snapshot-io threads, which must all stay free.
            for _ in 0..3 {
                // On a thread, so that a regression fails the test instead of hanging it.
                let (send, receive) = std::sync::mpsc::channel();
                let dir = target.clone();
                std::thread::spawn(move || {
                    let restored =
                        block_on(GuestMemoryBuilder::restore(&dir, RestoreOptions::default()))
                            .map(|restored| block_on(restored.manager.close()));
                    let chain = block_on(read_snapshot_chain(&dir)).map(|_| ());
                    let _ = send.send([restored, chain]);
                });
                let results = receive
                    .recv_timeout(std::time::Duration::from_secs(60))
                    .unwrap_or_else(|_| panic!("{} as {kind}: no answer in 60 s", path.display()));
                for result in results {
                    match result {
                        Err(SnapshotError::Corrupt { file, offset, what }) => {
                            assert_eq!(file, path);
                            assert_eq!(offset, 0);
                            assert!(
                                what.starts_with(&format!("it is {kind}, not a regular file")),
                                "{what}"
                            );
                        }
                        other => panic!("{} as {kind}: {other:?}", path.display()),
                    }
                }
            }
            if kind == "a FIFO" {
                std::fs::remove_file(&path).unwrap();
            } else {
                std::fs::remove_dir(&path).unwrap();
            }
            std::fs::copy(pristine.path().join(file), &path).unwrap();
        }
    }
    // Everything still works, on the same threads.
    let restored = restore(&target, RestoreOptions::default());
    block_on(restored.manager.close());
    block_on(manager.close());
}

#[test]
fn an_incremental_snapshot_on_a_base_a_restore_would_refuse_fails_and_writes_nothing() {
    // The base's index and memory file, and its own base, are checked as a restore checks
    // them: an incremental snapshot on a damaged chain could never be restored. The chain head
    // is untouched, so once the chain is repaired the same incremental snapshot succeeds.
    let manager = build(false);
    block_on(manager.dirty_tracking().start()).unwrap();
    let mut rng = Rng::new(23);
    scribble(&manager, &mut rng, 50);
    let dir = temp_dir();
    let full = dir.path().join("full");
    let next = dir.path().join("next");
    block_on(manager.snapshot(&full, SnapshotOptions::default())).unwrap();
    scribble(&manager, &mut rng, 20);
    block_on(manager.snapshot(&next, on_base(&full))).unwrap();
    scribble(&manager, &mut rng, 20);
    let saved = temp_dir();
    let memory = full.join(format::MEMORY_FILE);
    let index = full.join(format::INDEX_FILE);
    std::fs::copy(&memory, saved.path().join("memory")).unwrap();
    std::fs::copy(&index, saved.path().join("index")).unwrap();
    let len = std::fs::metadata(&memory).unwrap().len();
    let truncate = |path: &Path, len: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap()
    };
    let target = dir.path().join("third");
    // The base of the base: its memory file truncated, its index truncated, then removed.
    for what in ["memory truncated", "index truncated", "memory removed"] {
        match what {
            "memory truncated" => truncate(&memory, len - 4096),
            "index truncated" => truncate(&index, 10),
            _ => std::fs::remove_file(&memory).unwrap(),
        }
        match block_on(manager.snapshot(&target, on_base(&next))) {
            Err(SnapshotError::Corrupt { file, .. }) => {
                assert!(
                    file == memory || file == index,
                    "{what}: {}",
                    file.display()
                )
            }
            // A file of the base missing names the base and the snapshot built on it.
            Err(SnapshotError::BaseUnreadable {
                snapshot,
                base,
                path,
                source,
                ..
            }) => {
                assert_eq!(path, memory, "{what}");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{what}");
                assert_eq!(base, full, "{what}");
                assert_eq!(snapshot, next, "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(!target.exists(), "{what}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{what}: {names:?}");
        std::fs::copy(saved.path().join("memory"), &memory).unwrap();
        std::fs::copy(saved.path().join("index"), &index).unwrap();
    }
    let info = block_on(manager.snapshot(&target, on_base(&next))).unwrap();
    assert!(info.incremental);
    let image = ram_image(&manager);
    let restored = restore(&target, RestoreOptions::default());
    assert_eq!(ram_image(&restored.manager), image);
    block_on(restored.manager.close());
    block_on(manager.close());
}

#[test]
fn restores_refuse_other_layouts_and_unknown_window_backings() {
    let manager = build(false);
    let dir = temp_dir();
    let target = dir.path().join("snap");
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    let other = MemoryLayout::new(64 * MIB, &[MMIO_GAP], None).unwrap();
    match block_on(GuestMemoryBuilder::restore(
        &target,
        RestoreOptions {
            layout: Some(other),
            ..RestoreOptions::default()
        },
    )) {
        Err(error @ SnapshotError::Layout { .. }) => {
            let message = error.to_string();
            assert_eq!(
                message,
                format!(
                    "snapshot {} does not match: the snapshot's RAM is 0x0-0x1000000, \
                     0x100000000-0x100800000 but the expected layout's RAM is 0x0-0x4000000",
                    target.display()
                )
            );
        }
        other => panic!("{other:?}"),
    }
    // Every part that differs is named, the others are not.
    let vtl2 = MemoryLayout::new(
        16 * MIB,
        &[MMIO_GAP],
        Some(MemoryRange::new(GIB..GIB + 2 * MIB)),
    )
    .unwrap();
    match block_on(GuestMemoryBuilder::restore(
        &target,
        RestoreOptions {
            layout: Some(vtl2),
            ..RestoreOptions::default()
        },
    )) {
        Err(SnapshotError::Layout { what, .. }) => assert_eq!(
            what,
            "the snapshot's RAM is 0x0-0x1000000, 0x100000000-0x100800000 but the expected \
             layout's RAM is 0x0-0x1000000; the snapshot's VTL2 range is none but the expected \
             layout's VTL2 range is 0x40000000-0x40200000"
        ),
        other => panic!("{other:?}"),
    }
    let same = restore(
        &target,
        RestoreOptions {
            layout: Some(layout()),
            ..RestoreOptions::default()
        },
    );
    block_on(same.manager.close());
    match block_on(GuestMemoryBuilder::restore(
        &target,
        RestoreOptions {
            window_backings: vec![WindowBacking {
                window: "nic".into(),
                offset: Some(0),
                object: memfd(4096, 0),
            }],
            ..RestoreOptions::default()
        },
    )) {
        Err(SnapshotError::Layout { what, .. }) => assert!(what.contains("\"nic\""), "{what}"),
        other => panic!("{other:?}"),
    }
    // A version this build does not read.
    let manifest_path = target.join(format::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(
        &manifest_path,
        text.replacen("\"version\":1", "\"version\":9", 1),
    )
    .unwrap();
    match block_on(GuestMemoryBuilder::restore(
        &target,
        RestoreOptions::default(),
    )) {
        Err(SnapshotError::Version { found: 9, file, .. }) => assert_eq!(file, manifest_path),
        other => panic!("{other:?}"),
    }
    block_on(manager.close());
}

#[test]
fn missing_window_backings_are_listed_and_the_window_is_placed() {
    let manager = build(false);
    let mut rng = Rng::new(17);
    let kept = prepared_machine(&manager, &mut rng);
    let dir = temp_dir();
    let target = dir.path().join("snap");
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    let restored = restore(
        &target,
        RestoreOptions {
            window_backings: vec![WindowBacking {
                window: "framebuffer".into(),
                offset: Some(0x3000),
                object: kept.3.try_clone().unwrap(),
            }],
            ..RestoreOptions::default()
        },
    );
    let window = &restored.windows[0];
    assert_eq!(window.record.name, "framebuffer");
    assert_eq!(window.missing.len(), 1);
    assert_eq!(window.missing[0].offset.0, 0);
    // The caller maps the missing backing itself.
    block_on(window.region.map(0, kept.2.as_fd(), 0, 0x2000, true)).unwrap();
    let memory = block_on(restored.manager.client().guest_memory()).unwrap();
    assert_eq!(memory.read_plain::<u8>(WINDOW_GPA).unwrap(), 0xab);
    drop(memory);
    drop(restored.windows);
    block_on(restored.manager.close());
    drop(kept);
    block_on(manager.close());
}

#[test]
fn one_backing_for_a_whole_window_maps_every_recorded_mapping() {
    let manager = build(false);
    let (window, region) = manager
        .device_memory_mapper()
        .new_region(0x4000, "fb".into())
        .unwrap();
    // One object behind two mappings of the window, at different object offsets.
    let object = memfd(0x2000, 0);
    let file = std::fs::File::from(object.try_clone().unwrap());
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x11; 0x1000], 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x22; 0x1000], 0x1000).unwrap();
    block_on(region.map(0, object.as_fd(), 0, 0x1000, true)).unwrap();
    block_on(region.map(0x2000, object.as_fd(), 0x1000, 0x1000, false)).unwrap();
    block_on(window.map_to_guest(WINDOW_GPA, true)).unwrap();
    let dir = temp_dir();
    let target = dir.path().join("snap");
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    let restored = restore(
        &target,
        RestoreOptions {
            window_backings: vec![WindowBacking {
                window: "fb".into(),
                offset: None,
                object: object.try_clone().unwrap(),
            }],
            ..RestoreOptions::default()
        },
    );
    assert!(restored.windows[0].missing.is_empty());
    let memory = block_on(restored.manager.client().guest_memory()).unwrap();
    assert_eq!(memory.read_plain::<u8>(WINDOW_GPA).unwrap(), 0x11);
    assert_eq!(memory.read_plain::<u8>(WINDOW_GPA + 0x2000).unwrap(), 0x22);
    drop(memory);
    drop(restored.windows);
    block_on(restored.manager.close());
    // A window-wide backing of a window without mappings names the window.
    block_on(region.unmap(0, 0x4000)).unwrap();
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    match block_on(GuestMemoryBuilder::restore(
        &target,
        RestoreOptions {
            window_backings: vec![WindowBacking {
                window: "fb".into(),
                offset: None,
                object,
            }],
            ..RestoreOptions::default()
        },
    )) {
        Err(SnapshotError::Layout { what, .. }) => {
            assert!(
                what.contains("\"fb\", which has no recorded mappings"),
                "{what}"
            )
        }
        other => panic!("{other:?}"),
    }
    drop((window, region));
    block_on(manager.close());
}

#[test]
fn an_existing_snapshot_is_replaced_atomically_and_a_half_done_fallback_recovers() {
    let manager = build(false);
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let dir = temp_dir();
    let target = dir.path().join("snap");
    memory.write_plain(0x10_0000, &1u64).unwrap();
    let first = block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    memory.write_plain(0x10_0000, &2u64).unwrap();
    let second = block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(read_snapshot(&target).unwrap().id, second.id);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("snap")]);

    // The fallback without RENAME_EXCHANGE, interrupted between its two renames: the old
    // snapshot waits under `.snap.old-…` and is put back by the next reader.
    let parts = publish::Target::new(&target).unwrap();
    let old = dir.path().join(".snap.old-999999-abcdef01");
    std::fs::rename(&target, &old).unwrap();
    assert_eq!(read_snapshot(&target).unwrap().id, second.id);
    assert!(!old.exists());
    // The fallback, completed.
    memory.write_plain(0x10_0000, &3u64).unwrap();
    let temp = publish::create_temp(&parts).unwrap();
    std::fs::write(temp.join("marker"), b"new").unwrap();
    publish::publish(&temp, &parts, false).unwrap();
    assert!(target.join("marker").exists());
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 1);
    drop(memory);
    block_on(manager.close());
}

#[test]
fn a_snapshot_whose_directory_fsync_fails_after_the_rename_is_published_with_a_warning() {
    // The rename had put the new snapshot in place (and, replacing one, removed the old one),
    // yet the call failed and the chain head stayed on the previous snapshot.
    let manager = build(false);
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    let dir = temp_dir();
    let base = dir.path().join("base");
    block_on(manager.snapshot(&base, SnapshotOptions::default())).unwrap();
    publish::failing_syncs::fail(dir.path());
    // A new target (a plain rename).
    memory.write_plain(0x10_0000, &1u64).unwrap();
    let next = dir.path().join("next");
    let info = block_on(manager.snapshot(&next, on_base(&base))).unwrap();
    let warning = info.warning.as_deref().expect("a warning");
    assert!(
        warning.starts_with(&format!("the snapshot is in place at {}", next.display())),
        "{warning}"
    );
    assert!(warning.contains("fsync directory"), "{warning}");
    assert!(warning.contains("sync -f"), "{warning}");
    assert_eq!(read_snapshot(&next).unwrap().id, info.id);
    // It is the chain head: the next increment goes on it, and restores the RAM.
    memory.write_plain(0x20_0000, &2u64).unwrap();
    let third = dir.path().join("third");
    let info = block_on(manager.snapshot(&third, on_base(&next))).unwrap();
    assert!(info.incremental && info.warning.is_some());
    let image = ram_image(&manager);
    let restored = restore(&third, RestoreOptions::default());
    assert!(ram_image(&restored.manager) == image);
    block_on(restored.manager.close());
    // An existing target (the exchange): replaced, the old one removed, nothing left over.
    memory.write_plain(0x10_0000, &3u64).unwrap();
    let info = block_on(manager.snapshot(&third, SnapshotOptions::default())).unwrap();
    assert!(info.warning.is_some());
    assert_eq!(read_snapshot(&third).unwrap().id, info.id);
    let mut entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(entries, ["base", "next", "third"]);
    // The fallback without RENAME_EXCHANGE: both renames done, the old one removed.
    let parts = publish::Target::new(&third).unwrap();
    let temp = publish::create_temp(&parts).unwrap();
    std::fs::write(temp.join("marker"), b"new").unwrap();
    let warning = publish::publish(&temp, &parts, false).unwrap();
    assert!(warning.is_some());
    assert!(third.join("marker").exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    drop(memory);
    block_on(manager.close());
}

#[test]
fn a_snapshot_whose_parent_directory_is_moved_meanwhile_leaves_no_temporary_directory() {
    // The temporary directory was removed by its old path, which no longer existed: it stayed
    // in the moved directory.
    let manager = build(false);
    let mut rng = Rng::new(5);
    scribble(&manager, &mut rng, 50);
    let dir = temp_dir();
    let parent = dir.path().join("parent");
    let moved = dir.path().join("moved");
    std::fs::create_dir(&parent).unwrap();
    let target = parent.join("snap");
    let progress: Progress = {
        let (parent, moved) = (parent.clone(), moved.clone());
        std::sync::Arc::new(move |_done, _total| {
            if parent.exists() {
                let _ = std::fs::rename(&parent, &moved);
            }
        })
    };
    let options = SnapshotOptions {
        base: None,
        progress: Some(progress),
    };
    let error = block_on(manager.snapshot(&target, options)).expect_err("the directory moved");
    assert!(
        matches!(error, SnapshotError::NotWritten { .. }),
        "{error:?}"
    );
    assert!(!parent.exists());
    let left: Vec<_> = std::fs::read_dir(&moved)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    block_on(manager.close());
}

/// The entries of `dir` with their contents (directories as `<dir>`), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().unwrap();
            let contents = if kind.is_symlink() {
                std::fs::read_link(entry.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes()
            } else if kind.is_dir() {
                b"<dir>".to_vec()
            } else {
                std::fs::read(entry.path()).unwrap()
            };
            (name, contents)
        })
        .collect();
    entries.sort();
    entries
}

/// The refusal of `result`: its `what` and errno, after checking the message names the path,
/// the rule and the way out.
fn refusal(result: Result<SnapshotInfo, SnapshotError>, path: &Path) -> (String, i32) {
    match result {
        Err(error @ SnapshotError::TargetNotSnapshot { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(
                message.contains("replaces only an existing snapshot or an empty directory"),
                "{message}"
            );
            assert!(message.contains("or remove it first"), "{message}");
            let SnapshotError::TargetNotSnapshot { what, source, .. } = error else {
                unreachable!()
            };
            (what, source.raw_os_error().unwrap_or(0))
        }
        other => panic!(
            "expected TargetNotSnapshot for {}, got {other:?}",
            path.display()
        ),
    }
}

#[test]
fn a_base_of_another_machine_names_what_differs_in_hex() {
    let base = format::tests::sample_manifest();
    let mut other = base.clone();
    other.layout.ram[0].vnode = 1;
    other.options.private_memory = !base.options.private_memory;
    let error = writer::check_same_machine(Path::new("/s/base"), &base, "this manager's", &other)
        .unwrap_err();
    let SnapshotError::Layout { dir, what } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(dir, Path::new("/s/base"));
    assert_eq!(
        *what,
        "its RAM is 0x0-0x100000 but this manager's RAM is 0x0-0x100000 (vnode 1); its option \
         private_memory is false but this manager's option private_memory is true"
    );
    assert!(
        !what.contains("MemoryRange") && !what.contains("Hex("),
        "{what}"
    );
    writer::check_same_machine(Path::new("/s/base"), &base, "this manager's", &base).unwrap();
}

#[test]
fn a_target_that_is_not_a_snapshot_is_refused_and_left_untouched() {
    let manager = build(false);
    let memory = block_on(manager.client().guest_memory()).unwrap();
    memory.write_plain(0x10_0000, &7u64).unwrap();
    let dir = temp_dir();
    let snapshot = |target: &Path| block_on(manager.snapshot(target, SnapshotOptions::default()));

    // A directory of the user's.
    let user = dir.path().join("userdir");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("important.txt"), b"keep me\n").unwrap();
    // A regular file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"a file").unwrap();
    // A snapshot the user added a file to.
    let extended = dir.path().join("extended");
    snapshot(&extended).unwrap();
    std::fs::write(extended.join("notes.txt"), b"mine").unwrap();
    // Snapshot file names without a manifest, and a manifest of someone else.
    let nameless = dir.path().join("nameless");
    std::fs::create_dir(&nameless).unwrap();
    std::fs::write(nameless.join(format::MEMORY_FILE), b"data").unwrap();
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(
        foreign.join(format::MANIFEST_FILE),
        br#"{"format":"other-tool","version":1,"checksum":"crc32c:00000000","manifest":{}}"#,
    )
    .unwrap();
    // A directory named like a snapshot file inside an otherwise valid snapshot.
    let nested = dir.path().join("nested");
    snapshot(&nested).unwrap();
    std::fs::remove_file(nested.join(format::MEMORY_FILE)).unwrap();
    std::fs::create_dir(nested.join(format::MEMORY_FILE)).unwrap();
    // A symbolic link to a snapshot (the link would be replaced, not the snapshot).
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&extended, &link).unwrap();

    let before = tree(dir.path());
    let inside: Vec<_> = [&user, &extended, &nameless, &foreign, &nested]
        .iter()
        .map(|path| tree(path))
        .collect();
    let cases: [(&Path, i32, &str); 7] = [
        (
            &user,
            libc::ENOTEMPTY,
            "it holds \"important.txt\", which is not a snapshot file",
        ),
        (&file, libc::EEXIST, "it is a file, not a directory"),
        (
            &extended,
            libc::ENOTEMPTY,
            "it holds \"notes.txt\", which is not a snapshot file",
        ),
        (&nameless, libc::ENOTEMPTY, "no manifest.json"),
        (
            &foreign,
            libc::ENOTEMPTY,
            "is not a membacking snapshot manifest",
        ),
        (
            &nested,
            libc::ENOTEMPTY,
            "it holds \"memory.bin\", which is not a snapshot file",
        ),
        (&link, libc::EEXIST, "it is a symbolic link"),
    ];
    for (target, errno, what) in cases {
        let (found, found_errno) = refusal(snapshot(target), target);
        assert!(found.contains(what), "{}: {found}", target.display());
        assert_eq!(found_errno, errno, "{}", target.display());
    }
    // Nothing was written, renamed or removed: no temporary sibling either.
    assert_eq!(tree(dir.path()), before);
    let after: Vec<_> = [&user, &extended, &nameless, &foreign, &nested]
        .iter()
        .map(|path| tree(path))
        .collect();
    assert_eq!(after, inside);
    assert_eq!(
        std::fs::read(user.join("important.txt")).unwrap(),
        b"keep me\n"
    );
    drop(memory);
    block_on(manager.close());
}

#[test]
fn many_foreign_entries_are_counted_not_all_listed() {
    let dir = temp_dir();
    let target = dir.path().join("busy");
    std::fs::create_dir(&target).unwrap();
    for name in ["e", "d", "c", "b", "a"] {
        std::fs::write(target.join(name), b"x").unwrap();
    }
    let parts = publish::Target::new(&target).unwrap();
    match publish::check_replaceable(&parts) {
        Err(SnapshotError::TargetNotSnapshot { what, .. }) => assert_eq!(
            what,
            "it holds \"a\", \"b\", \"c\" and 2 more entries, which are not snapshot files"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_empty_directory_or_a_damaged_or_newer_snapshot_is_replaced() {
    let manager = build(false);
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let dir = temp_dir();
    let snapshot = |target: &Path| block_on(manager.snapshot(target, SnapshotOptions::default()));

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    memory.write_plain(0x10_0000, &1u64).unwrap();
    let info = snapshot(&empty).unwrap();
    assert_eq!(read_snapshot(&empty).unwrap().id, info.id);

    // A snapshot whose manifest body no longer matches its checksum is still ours to replace,
    // and so is one of another format version; so is one missing a file.
    let damaged = dir.path().join("damaged");
    snapshot(&damaged).unwrap();
    let manifest = damaged.join(format::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replacen("\"page_size\"", "\"page_sizf\"", 1),
    )
    .unwrap();
    assert!(read_snapshot(&damaged).is_err());
    let newer = dir.path().join("newer");
    snapshot(&newer).unwrap();
    let manifest = newer.join(format::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replacen("\"version\":1", "\"version\":2", 1),
    )
    .unwrap();
    let partial = dir.path().join("partial");
    snapshot(&partial).unwrap();
    std::fs::remove_file(partial.join(format::MEMORY_FILE)).unwrap();
    memory.write_plain(0x10_0000, &2u64).unwrap();
    for target in [&damaged, &newer, &partial] {
        let info = snapshot(target).unwrap();
        assert_eq!(read_snapshot(target).unwrap().id, info.id);
        let restored = restore(target, RestoreOptions::default());
        let guest = block_on(restored.manager.client().guest_memory()).unwrap();
        assert_eq!(guest.read_plain::<u64>(0x10_0000).unwrap(), 2);
        drop(guest);
        block_on(restored.manager.close());
    }
    let names: Vec<_> = tree(dir.path()).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["damaged", "empty", "newer", "partial"]);
    drop(memory);
    block_on(manager.close());
}

#[test]
fn a_refused_incremental_snapshot_leaves_the_chain_usable() {
    let manager = build(false);
    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    let dir = temp_dir();
    let base = dir.path().join("base");
    block_on(manager.snapshot(&base, SnapshotOptions::default())).unwrap();
    let mut rng = Rng::new(11);
    scribble(&manager, &mut rng, 40);
    let user = dir.path().join("userdir");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("important.txt"), b"keep me").unwrap();
    refusal(block_on(manager.snapshot(&user, on_base(&base))), &user);
    assert_eq!(
        std::fs::read(user.join("important.txt")).unwrap(),
        b"keep me"
    );
    // The refusal came before the manager was asked: the base is still the chain head and
    // the pages dirtied since are all in the next increment.
    let next = dir.path().join("next");
    let info = block_on(manager.snapshot(&next, on_base(&base))).unwrap();
    assert!(info.incremental);
    let image = ram_image(&manager);
    let restored = restore(&next, RestoreOptions::default());
    assert!(ram_image(&restored.manager) == image);
    block_on(restored.manager.close());
    block_on(manager.close());
}

#[test]
fn a_target_filled_while_the_snapshot_was_written_is_not_replaced() {
    let dir = temp_dir();
    let target = dir.path().join("snap");
    std::fs::create_dir(&target).unwrap();
    let parts = publish::Target::new(&target).unwrap();
    publish::check_replaceable(&parts).unwrap();
    let temp = publish::create_temp(&parts).unwrap();
    std::fs::write(temp.join("marker"), b"new").unwrap();
    // Someone puts a file into the (empty, so replaceable) target meanwhile.
    std::fs::write(target.join("late.txt"), b"late").unwrap();
    for exchange in [true, false] {
        match publish::publish(&temp, &parts, exchange) {
            Err(SnapshotError::TargetNotSnapshot { what, .. }) => {
                assert!(what.contains("late.txt"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(target.join("late.txt")).unwrap(), b"late");
        assert!(temp.join("marker").exists());
    }
}

/// Run by the SIGKILL test in a child process: snapshots to `$MEMBACKING_SNAPSHOT_CHILD` in a
/// loop until killed (each snapshot different from the one before).
#[test]
#[ignore = "the child process of a_writer_killed_at_random_points_leaves_a_restorable_snapshot"]
fn sigkill_child() {
    let Ok(target) = std::env::var("MEMBACKING_SNAPSHOT_CHILD") else {
        return;
    };
    let manager = build(false);
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let mut rng = Rng::new(u64::from(std::process::id()));
    for round in 0u64.. {
        for _ in 0..64 {
            let gpa = rng.below(LOW.len() / 4096 - 1) * 4096 + 4096;
            if !VGA.contains_addr(gpa) && !PAM0.contains_addr(gpa) {
                memory
                    .write_at(gpa, &[round.to_le_bytes()[0]; 4096])
                    .unwrap();
            }
        }
        memory.write_plain(0x1000, &round).unwrap();
        block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
        println!("snapshot {round} written");
    }
}

#[test]
fn a_writer_killed_at_random_points_leaves_a_restorable_snapshot() {
    let dir = temp_dir();
    let target = dir.path().join("snap");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(0x5eed);
    let mut restored_rounds = Vec::new();
    for attempt in 0..12 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "snapshot::tests::sigkill_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MEMBACKING_SNAPSHOT_CHILD", &target)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the first complete snapshot of this child, then kill it at a random point
        // of a later one (a random number of bytes of its output later).
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let wanted = 1 + rng.below(3);
        let mut buffer = [0u8; 64];
        let wanted = usize::try_from(wanted).unwrap();
        while seen.windows(7).filter(|w| w == b"written").count() < wanted {
            let read = std::io::Read::read(&mut stdout, &mut buffer).unwrap();
            assert!(read > 0, "the child stopped (attempt {attempt})");
            seen.extend_from_slice(&buffer[..read]);
        }
        // Spin a random while so the kill lands anywhere inside the next snapshot.
        let spin = rng.below(2_000_000);
        let mut x = 0u64;
        for i in 0..spin {
            x = x.wrapping_add(i).rotate_left(3);
        }
        std::hint::black_box(x);
        child.kill().unwrap();
        child.wait().unwrap();
        // The target is a complete snapshot: restore it and check its marker page.
        let restored = restore(&target, RestoreOptions::default());
        let memory = block_on(restored.manager.client().guest_memory()).unwrap();
        restored_rounds.push(memory.read_plain::<u64>(0x1000).unwrap());
        drop(memory);
        block_on(restored.manager.close());
    }
    assert_eq!(restored_rounds.len(), 12);
    // Temporary directories of dead writers are cleaned up by the next snapshot.
    let manager = build(false);
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    let entries = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries, 1);
    block_on(manager.close());
}

#[test]
fn flatten_lets_newer_layers_win() {
    use super::restore::overlay;
    use super::restore::Piece;
    use super::restore::Source;
    let piece = |start: u64, pages: u64, layer: usize, data: Option<u64>| Piece {
        start: start * 4096,
        pages,
        layer,
        source: match data {
            Some(page) => Source::Data {
                data_offset: page * 4096,
                first_crc: usize::try_from(page).unwrap(),
            },
            None => Source::Zero,
        },
    };
    let old = vec![piece(0, 10, 0, Some(0)), piece(20, 5, 0, Some(10))];
    let top = vec![
        piece(2, 3, 1, Some(0)),
        piece(9, 12, 1, None),
        piece(24, 1, 1, Some(3)),
    ];
    assert_eq!(
        overlay(old, top),
        vec![
            piece(0, 2, 0, Some(0)),
            piece(2, 3, 1, Some(0)),
            piece(5, 4, 0, Some(5)),
            piece(9, 12, 1, None),
            piece(21, 3, 0, Some(11)),
            piece(24, 1, 1, Some(3)),
        ]
    );
}

/// The manifest parser over seeded random inputs: mutations of a valid manifest and random
/// bytes never panic, and every accepted manifest re-encodes to one that decodes equal.
#[test]
fn the_manifest_parser_survives_random_inputs() {
    let iterations: u64 = std::env::var("MANIFEST_FUZZ_ITERATIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3000);
    let manager = build(false);
    let (_window, _region, _first, _second) = prepared_machine(&manager, &mut Rng::new(1));
    let dir = temp_dir();
    let target = dir.path().join("snap");
    block_on(manager.snapshot(&target, SnapshotOptions::default())).unwrap();
    let valid = std::fs::read(target.join(format::MANIFEST_FILE)).unwrap();
    let manifest = format::decode_manifest(&valid).unwrap();
    let body = serde_json::to_string_pretty(&manifest)
        .unwrap()
        .into_bytes();
    let mut rng = Rng::new(0xfeed);
    let mut accepted = 0;
    for iteration in 0..iterations {
        // Half the inputs keep a valid checksum, so the mutations reach the manifest itself.
        let mut bytes = if iteration % 2 == 0 {
            valid.clone()
        } else {
            body.clone()
        };
        for _ in 0..1 + rng.below(4) {
            let at = usize::try_from(rng.below(bytes.len() as u64 + 1)).unwrap();
            match rng.below(4) {
                0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                2 => bytes.insert(
                    at,
                    b"{}[]\",:0x-9ef\n"[usize::try_from(rng.below(14)).unwrap()],
                ),
                _ => bytes.truncate(at),
            }
        }
        let input = if iteration % 2 == 0 {
            bytes
        } else {
            let crc = crc32c::crc32c(&bytes);
            let mut sealed = format!(
                "{{\"format\":\"{}\",\"version\":{},\"checksum\":\"crc32c:{crc:08x}\",\"manifest\":",
                format::FORMAT,
                format::VERSION
            )
            .into_bytes();
            sealed.extend_from_slice(&bytes);
            sealed.push(b'}');
            sealed
        };
        if let Ok(decoded) = format::decode_manifest(&input) {
            accepted += 1;
            assert_eq!(
                format::decode_manifest(&format::encode_manifest(&decoded)),
                Ok(decoded)
            );
        }
        let _ = format::decode_index(&input, 1 << 30, 1 << 20);
    }
    assert!(accepted > 0, "no mutation kept the manifest valid");
    block_on(manager.close());
}

#[cfg(target_arch = "x86_64")]
mod kvm {
    use super::*;
    use crate::test_guest::KvmGuest;

    #[test]
    fn a_kvm_guest_reads_its_data_back_after_a_lazy_restore_touching_memory_first() {
        let test = "a_kvm_guest_reads_its_data_back_after_a_lazy_restore_touching_memory_first";
        let manager = build(false);
        let Some(guest) = KvmGuest::attach(test, &manager) else {
            return;
        };
        let tracking = manager.dirty_tracking();
        block_on(tracking.start()).unwrap();
        let dir = temp_dir();
        let base = dir.path().join("base");
        block_on(manager.snapshot(&base, SnapshotOptions::default())).unwrap();
        // The guest writes its pattern in high RAM, around a visibility change.
        let region = HIGH.start() + MIB;
        guest.fill(region, 4096, 0x1111); // 32 KiB
        let control = manager.ram_visibility_control();
        block_on(control.set_ram_visibility(HIGH, RamVisibility::Unmapped)).unwrap();
        block_on(control.set_ram_visibility(HIGH, RamVisibility::ReadWrite)).unwrap();
        guest.fill(region + 0x8000, 4096, 0x2222);
        let expected = guest.sum(region, 8192);
        let top = dir.path().join("top");
        let info = block_on(manager.snapshot(&top, on_base(base.clone()))).unwrap();
        assert!(info.incremental);
        assert!(
            info.bytes >= 0x10000,
            "the guest's 64 KiB are saved: {info:?}"
        );
        let image = ram_image(&manager);
        drop(guest);
        block_on(manager.close());

        let modes: &[RestoreMode] = if lazy_available(test) {
            &[RestoreMode::Lazy, RestoreMode::Copy]
        } else {
            &[RestoreMode::Copy]
        };
        for &mode in modes {
            let restored = restore(
                &top,
                RestoreOptions {
                    mode,
                    defer_background_fill: true,
                    ..RestoreOptions::default()
                },
            );
            // A new partition; the guest runs before any background fill (lazy: its first
            // touches, KVM's faults included, are served through userfaultfd).
            let Some(guest) = KvmGuest::attach(test, &restored.manager) else {
                return;
            };
            assert_eq!(guest.sum(region, 8192), expected, "{mode:?}");
            if let Some(lazy) = &restored.lazy {
                assert!(lazy.stats().faults >= 16, "{:?}", lazy.stats());
                lazy.start_background();
                block_on(lazy.wait()).unwrap();
            }
            // The fixture rewrote its programs and page tables, which the snapshot also
            // holds: everything is the snapshot's image.
            assert!(ram_image(&restored.manager) == image, "{mode:?}");
            drop(guest);
            block_on(restored.manager.close());
        }
    }
}

#[test]
fn parallel_items_work_on_the_calling_thread_when_no_helper_thread_can_start() {
    // Out of threads (EAGAIN from clone: a pids cgroup, RLIMIT_NPROC, no memory for a stack),
    // a snapshot or restore used to panic in `thread::scope`'s spawn and reach JavaScript as
    // ERR_PANIC ("the snapshot worker panicked"). Fewer workers are fine.
    super::FAIL_HELPER_SPAWNS.with(|fail| fail.set(true));
    let me = std::thread::current().id();
    let items: Vec<u64> = (1..=300).collect();
    let result = super::parallel_items(
        &items,
        |item| *item,
        None,
        Vec::new,
        |seen: &mut Vec<u64>, buffer, item| {
            assert_eq!(std::thread::current().id(), me);
            assert_eq!(buffer.len(), writer::ITEM_BYTES);
            seen.push(*item);
            Ok(())
        },
    );
    super::FAIL_HELPER_SPAWNS.with(|fail| fail.set(false));
    let states = result.expect("no helper is needed");
    assert_eq!(states.len(), 1);
    assert_eq!(states[0], items);
    // A failing item still fails the call.
    super::FAIL_HELPER_SPAWNS.with(|fail| fail.set(true));
    let failed = super::parallel_items(
        &items,
        |item| *item,
        None,
        || (),
        |_, _, item| match *item {
            7 => Err(SnapshotError::io(
                "write",
                "memory.bin",
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            )),
            _ => Ok(()),
        },
    );
    super::FAIL_HELPER_SPAWNS.with(|fail| fail.set(false));
    match failed {
        Err(SnapshotError::Io { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC))
        }
        other => panic!("{:?}", other.map(|states| states.len())),
    }
}

#[test]
fn parallel_progress_reports_only_grow_and_end_at_the_total() {
    // Many small items on the worker threads: a report computed by one thread and delivered
    // after a larger one from the other would make the figures go backwards.
    for _ in 0..20 {
        let items: Vec<u64> = (1..=2000).collect();
        let reports = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = reports.clone();
        let progress: Progress =
            std::sync::Arc::new(move |done, total| seen.lock().push((done, total)));
        let total: u64 = items.iter().sum();
        super::parallel_items(
            &items,
            |item| *item,
            Some(&progress),
            || (),
            |_, _, _| Ok(()),
        )
        .expect("no item fails");
        let reports = reports.lock();
        assert_eq!(
            reports.len(),
            items.len() + 1,
            "one report before the work and one per item"
        );
        assert!(reports.iter().all(|&(_, t)| t == total));
        assert!(
            reports.windows(2).all(|pair| pair[0].0 <= pair[1].0),
            "the reports went backwards"
        );
        assert_eq!(reports.last().copied(), Some((total, total)));
    }
}

#[test]
fn an_os_error_while_writing_names_the_unchanged_target() {
    let written = SnapshotError::io(
        "write",
        "/data/.snap.tmp-1-2/memory.bin",
        std::io::Error::from_raw_os_error(libc::ENOSPC),
    )
    .while_writing(Path::new("/data/snap"));
    match &written {
        SnapshotError::NotWritten {
            op,
            path,
            target,
            source,
        } => {
            assert_eq!(*op, "write");
            assert_eq!(path, Path::new("/data/.snap.tmp-1-2/memory.bin"));
            assert_eq!(target, Path::new("/data/snap"));
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
        }
        other => panic!("{other:?}"),
    }
    // The same message as the OS error of that file.
    assert_eq!(
        written.to_string(),
        "write /data/.snap.tmp-1-2/memory.bin failed"
    );
    // Any other error stays what it is.
    let corrupt = SnapshotError::Corrupt {
        file: "/data/base/memory.bin".into(),
        offset: 0,
        what: "short".into(),
    }
    .while_writing(Path::new("/data/snap"));
    assert!(matches!(corrupt, SnapshotError::Corrupt { .. }));
}
