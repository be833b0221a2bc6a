//! Tests of dirty tracking through a running manager: guest-memory writes, decommits, guest
//! writes through a KVM partition across visibility changes, and writers racing `take()`.

use super::*;
use crate::GuestMemoryBuilder;
use crate::GuestMemoryManager;
use crate::RamVisibility;
use futures::executor::block_on;
use std::collections::BTreeSet;
use vm_topology::memory::MemoryLayout;
use vm_topology::memory::MemoryRangeWithNode;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const MMIO_GAP: MemoryRange = MemoryRange::new(0xC000_0000..0x1_0000_0000);
const LOW: MemoryRange = MemoryRange::new(0..32 * MIB);
const HIGH: MemoryRange = MemoryRange::new(4 * GIB..4 * GIB + 32 * MIB);

/// RAM below and above the MMIO gap, as two RAM regions.
fn manager() -> GuestMemoryManager {
    let ram: Vec<MemoryRangeWithNode> = [LOW, HIGH]
        .iter()
        .map(|&range| MemoryRangeWithNode { range, vnode: 0 })
        .collect();
    let layout = MemoryLayout::new_from_ranges(&ram, &[MMIO_GAP]).unwrap();
    block_on(GuestMemoryBuilder::new().build(&layout)).unwrap()
}

fn pages(ranges: &[MemoryRange]) -> BTreeSet<u64> {
    ranges
        .iter()
        .flat_map(|range| (range.start() / 4096)..(range.end() / 4096))
        .collect()
}

fn page_of(gpa: u64) -> u64 {
    gpa / 4096
}

#[test]
fn guest_memory_writes_and_decommits_are_tracked_only_while_on() {
    let manager = manager();
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let tracking = manager.dirty_tracking();
    assert!(!tracking.is_active());
    assert!(matches!(
        block_on(tracking.take()),
        Err(DirtyTrackingError::Off)
    ));
    memory.write_at(0x1000, &[1]).unwrap();

    block_on(tracking.start()).unwrap();
    block_on(tracking.start()).unwrap(); // a no-op
    assert!(tracking.is_active());
    assert_eq!(block_on(tracking.take()).unwrap(), vec![]);
    memory.write_at(0x5000, &[1; 0x2000]).unwrap();
    memory.write_plain(HIGH.start() + 0x3008, &7u64).unwrap();
    let mut buffer = [0u8; 16];
    memory.read_at(0x9000, &mut buffer).unwrap();
    assert_eq!(
        block_on(tracking.take()).unwrap(),
        vec![
            MemoryRange::new(0x5000..0x7000),
            MemoryRange::new(HIGH.start() + 0x3000..HIGH.start() + 0x4000)
        ]
    );
    assert_eq!(
        block_on(tracking.take()).unwrap(),
        vec![],
        "reset by the take"
    );

    // Decommitted pages read back as zeros: a change.
    block_on(manager.decommit_ram(MemoryRange::new(0x10_0000..0x10_2000))).unwrap();
    assert_eq!(
        block_on(tracking.take()).unwrap(),
        vec![MemoryRange::new(0x10_0000..0x10_2000)]
    );

    block_on(tracking.stop()).unwrap();
    assert!(!tracking.is_active());
    memory.write_at(0x5000, &[2]).unwrap();
    assert!(matches!(
        block_on(tracking.take()),
        Err(DirtyTrackingError::Off)
    ));
    block_on(tracking.start()).unwrap();
    assert_eq!(
        block_on(tracking.take()).unwrap(),
        vec![],
        "a write while off is not reported after a restart"
    );
    block_on(manager.close());
}

/// A partition whose "guest" writes are entries of its dirty log (host addresses), reported
/// only when the log is harvested.
#[derive(Default)]
struct LoggingPartition {
    /// Host address of GPA 0 (from the mapping of RAM at GPA 0).
    base: parking_lot::Mutex<Option<u64>>,
    log: parking_lot::Mutex<Vec<(u64, u64)>>,
}

impl LoggingPartition {
    /// The guest writes the page at `gpa`.
    fn guest_writes(&self, gpa: u64) {
        let base = self.base.lock().expect("RAM at GPA 0 is mapped");
        self.log.lock().push((base + gpa, 4096));
    }
}

impl PartitionMemoryMap for LoggingPartition {
    fn unmap_range(&self, _addr: u64, _size: u64) -> Result<(), virt::Error> {
        Ok(())
    }

    fn map_range(
        &self,
        data: *mut u8,
        _size: usize,
        addr: u64,
        _writable: bool,
        _exec: bool,
    ) -> Result<(), virt::Error> {
        if addr == 0 {
            *self.base.lock() = Some(data as u64);
        }
        Ok(())
    }

    fn start_dirty_log(&self) -> Result<(), virt::Error> {
        Ok(())
    }

    fn take_dirty_log(&self, report: &mut dyn FnMut(u64, u64)) -> Result<(), virt::Error> {
        for (address, len) in self.log.lock().drain(..) {
            report(address, len);
        }
        Ok(())
    }
}

#[test]
fn a_partition_dropped_with_unharvested_writes_makes_the_next_take_report_all_ram() {
    for attach_before_start in [true, false] {
        let manager = manager();
        let tracking = manager.dirty_tracking();
        if !attach_before_start {
            block_on(tracking.start()).unwrap();
        }
        let partition = Arc::new(LoggingPartition::default());
        let as_map: Arc<dyn PartitionMemoryMap> = partition.clone();
        block_on(manager.attach_partition(virt::Vtl::Vtl0, &as_map, None)).unwrap();
        drop(as_map);
        if attach_before_start {
            block_on(tracking.start()).unwrap();
        }
        // Harvested while the partition lives: exactly the page written.
        partition.guest_writes(0x7000);
        assert_eq!(
            block_on(tracking.take()).unwrap(),
            vec![MemoryRange::new(0x7000..0x8000)]
        );
        // Written, then the partition goes (the VM is closed) before any harvest: its log is
        // gone, so every RAM page may have changed.
        partition.guest_writes(0x9000);
        drop(partition);
        assert_eq!(block_on(tracking.take()).unwrap(), vec![LOW, HIGH]);
        assert_eq!(block_on(tracking.take()).unwrap(), vec![], "once");
        block_on(manager.close());
    }
}

#[test]
fn a_recording_partition_closed_while_tracking_does_not_make_take_report_all_ram() {
    // No guest writes through a recording partition: losing it loses no write, so the next
    // take reports only what was written (it reported all RAM).
    let manager = manager();
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    let recording: Arc<dyn PartitionMemoryMap> = Arc::new(virt::RecordingPartition::new());
    block_on(manager.attach_partition(virt::Vtl::Vtl0, &recording, None)).unwrap();
    memory.write_at(0x7000, &[1]).unwrap();
    drop(recording);
    assert_eq!(
        block_on(tracking.take()).unwrap(),
        vec![MemoryRange::new(0x7000..0x8000)]
    );
    assert_eq!(block_on(tracking.take()).unwrap(), vec![]);
    block_on(manager.close());
}

#[test]
fn requests_are_carried_out_in_call_order_whenever_their_futures_are_polled() {
    let manager = manager();
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    memory.write_at(0x1000, &[1]).unwrap();
    let decommit = manager.decommit_ram(MemoryRange::new(0x8000..0xa000));
    let first = tracking.take();
    let second = tracking.take();
    let stop = tracking.stop();
    // Polled in the reverse order of the calls.
    block_on(stop).unwrap();
    assert!(!tracking.is_active());
    assert_eq!(block_on(second).unwrap(), vec![]);
    assert_eq!(
        block_on(first).unwrap(),
        vec![
            MemoryRange::new(0x1000..0x2000),
            MemoryRange::new(0x8000..0xa000)
        ],
        "the first take sees the write and the decommit called before it"
    );
    block_on(decommit).unwrap();
    // A start called before a take is carried out first, even when the take is awaited first.
    let start = tracking.start();
    assert_eq!(block_on(tracking.take()).unwrap(), vec![]);
    block_on(start).unwrap();
    block_on(manager.close());
}

#[test]
fn guest_memory_writers_racing_take_lose_nothing() {
    let manager = manager();
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    let page_count = LOW.len() / 4096;
    let (written, seen) = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..2u64)
            .map(|thread| {
                let memory = memory.clone();
                scope.spawn(move || {
                    let mut written = Vec::new();
                    let mut page = thread + 1;
                    for value in 0..20_000u64 {
                        page = (page * 2_654_435_761 + 97) % page_count;
                        memory
                            .write_plain(page * 4096 + 8 * thread, &value)
                            .unwrap();
                        written.push(page);
                    }
                    written
                })
            })
            .collect();
        let mut seen = BTreeSet::new();
        while !writers.iter().all(|writer| writer.is_finished()) {
            seen.extend(pages(&block_on(tracking.take()).unwrap()));
        }
        let written: Vec<u64> = writers
            .into_iter()
            .flat_map(|writer| writer.join().unwrap())
            .collect();
        seen.extend(pages(&block_on(tracking.take()).unwrap()));
        (written, seen)
    });
    for page in written {
        assert!(seen.contains(&page), "the write to page {page:#x} was lost");
    }
    block_on(manager.close());
}

#[cfg(target_arch = "x86_64")]
mod kvm {
    use super::*;
    use crate::test_guest::KvmGuest;
    use crate::test_guest::GUEST_LOW_END;

    #[test]
    fn guest_writes_are_tracked_across_visibility_changes_and_attaches() {
        let test = "guest_writes_are_tracked_across_visibility_changes_and_attaches";
        let manager = manager();
        let tracking = manager.dirty_tracking();
        block_on(tracking.start()).unwrap();
        // Attached while tracking: the partition starts logging as it is attached.
        let Some(guest) = KvmGuest::attach(test, &manager) else {
            return;
        };
        let first = block_on(tracking.take()).unwrap();
        assert!(
            pages(&first)
                .iter()
                .all(|&page| page < page_of(GUEST_LOW_END)),
            "only the programs and page tables were written: {first:?}"
        );

        guest.fill(HIGH.start() + 0x5000, 8, 1);
        guest.fill(0x80_0000, 1024, 2); // two pages
        let control = manager.ram_visibility_control();
        // The slot of HIGH is deleted and created again: its dirty bits survive.
        block_on(control.set_ram_visibility(HIGH, RamVisibility::Unmapped)).unwrap();
        block_on(control.set_ram_visibility(HIGH, RamVisibility::ReadWrite)).unwrap();
        guest.fill(HIGH.start() + 0x9000, 8, 3);
        let expected = BTreeSet::from([
            page_of(0x80_0000),
            page_of(0x80_1000),
            page_of(HIGH.start() + 0x5000),
            page_of(HIGH.start() + 0x9000),
        ]);
        // A shadow-paging KVM (as on this project's machines) also reports pages the guest only
        // read or executed when its page tables preset the dirty bit: dirty is a superset of
        // written. Here that can only be the code page.
        let taken = pages(&block_on(tracking.take()).unwrap());
        assert!(
            taken.is_superset(&expected),
            "{taken:?} misses some of {expected:?}"
        );
        let code_page = BTreeSet::from([1]);
        assert!(
            taken
                .difference(&expected)
                .all(|page| code_page.contains(page)),
            "{taken:?} has pages nobody wrote"
        );
        guest.fill(HIGH.start() + 0x2000, 8, 3);
        let taken = pages(&block_on(tracking.take()).unwrap());
        assert!(taken.contains(&page_of(HIGH.start() + 0x2000)));
        assert!(
            !taken.contains(&page_of(HIGH.start() + 0x5000)),
            "reset by the take"
        );

        block_on(tracking.stop()).unwrap();
        guest.fill(HIGH.start(), 8, 4);
        block_on(tracking.start()).unwrap();
        assert_eq!(block_on(tracking.take()).unwrap(), vec![]);
        drop(guest);
        block_on(manager.close());
    }

    #[test]
    fn a_continuously_writing_guest_and_thread_racing_take_lose_nothing() {
        let test = "a_continuously_writing_guest_and_thread_racing_take_lose_nothing";
        let manager = manager();
        let Some(guest) = KvmGuest::attach(test, &manager) else {
            return;
        };
        let memory = block_on(manager.client().guest_memory()).unwrap();
        let tracking = manager.dirty_tracking();
        block_on(tracking.start()).unwrap();
        let page_count = HIGH.len() / 4096;
        let guest = &guest;
        let (written, seen) = std::thread::scope(|scope| {
            let by_guest = scope.spawn(move || {
                let mut written = Vec::new();
                let mut page = 3u64;
                for round in 0..300 {
                    page = (page * 37 + 11) % page_count;
                    guest.fill(HIGH.start() + page * 4096, 1, round);
                    written.push(HIGH.start() / 4096 + page);
                }
                written
            });
            let by_thread = scope.spawn(move || {
                let mut written = Vec::new();
                let mut page = 5u64;
                for value in 0..5_000u64 {
                    page = (page * 2_654_435_761 + 7) % page_count;
                    let gpa = HIGH.start() + page * 4096 + 64;
                    memory.write_plain(gpa, &value).unwrap();
                    written.push(gpa / 4096);
                }
                written
            });
            let mut seen = BTreeSet::new();
            while !(by_guest.is_finished() && by_thread.is_finished()) {
                seen.extend(pages(&block_on(tracking.take()).unwrap()));
            }
            let mut written = by_guest.join().unwrap();
            written.extend(by_thread.join().unwrap());
            seen.extend(pages(&block_on(tracking.take()).unwrap()));
            (written, seen)
        });
        for page in written {
            assert!(seen.contains(&page), "the write to page {page:#x} was lost");
        }
        block_on(manager.close());
    }
}

#[test]
fn a_decommit_that_fails_after_it_started_counts_its_range_as_written() {
    // RAM on a memfd that can be sealed: once the manager has mapped it, a future-write seal
    // makes punching holes into it fail (EPERM), as an I/O error could halfway through a range.
    let ram: Vec<MemoryRangeWithNode> = [LOW, HIGH]
        .iter()
        .map(|&range| MemoryRangeWithNode { range, vnode: 0 })
        .collect();
    let layout = MemoryLayout::new_from_ranges(&ram, &[MMIO_GAP]).unwrap();
    let fd = rustix::fs::memfd_create(
        "decommit-fails",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, LOW.len() + HIGH.len()).unwrap();
    let backing = crate::SharedMemoryBacking::from_mappable(fd);
    let manager = block_on(
        GuestMemoryBuilder::new()
            .existing_backing(Some(backing))
            .build(&layout),
    )
    .unwrap();
    let tracking = manager.dirty_tracking();
    block_on(tracking.start()).unwrap();
    let ram_object = manager.shared_memory_backing().unwrap();
    rustix::fs::fcntl_add_seals(ram_object.mappable(), rustix::fs::SealFlags::FUTURE_WRITE)
        .unwrap();
    let range = MemoryRange::new(0x10000..0x20000);
    let error = block_on(manager.decommit_ram(range)).unwrap_err();
    assert!(
        matches!(error, RegionManagerError::DecommitFailed { .. }),
        "{error:?}"
    );
    assert_eq!(
        block_on(tracking.take()).unwrap(),
        vec![range],
        "what a failed decommit changed is not known: its whole range counts"
    );
    // A decommit refused before it starts (not RAM) changes nothing and records nothing.
    let outside = MemoryRange::new(MMIO_GAP.start()..MMIO_GAP.start() + 0x1000);
    assert!(block_on(manager.decommit_ram(outside)).is_err());
    assert_eq!(block_on(tracking.take()).unwrap(), vec![]);
}
