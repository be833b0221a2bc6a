//! Tests of the runtime through its Rust API: what needs real memory, threads and VA mappers (the
//! builder's order and errors, RAM content and backings, attaching, lazy population, RAM
//! visibility, device windows, private memory and poisoning; the planner's own tests cover the
//! rest), the original's defects, lazy mapping, page locking (D7), shared backings, concurrency
//! and teardown.
//!
//! Partition call logs are compared exactly with `RecordingPartition`s whose VA base is the
//! manager's window base (so `vaOffset` is the GPA of the VA used).

use super::*;
use crate::error::AttachedTo;
use crate::mapping_manager::va_mapper::MapperEvent;
use crate::mapping_manager::MapperId;
use crate::region_manager::MapParams;
use crate::region_manager::PartitionMapperError;
use crate::region_manager::RegionManagerError;
use crate::region_manager::SlotLimited;
use crate::InvalidRamRegion;
use crate::ManagerGone;
use crate::NoMapping;
use futures::executor::block_on;
use guestmem::GuestMemoryError;
use guestmem::GuestMemoryErrorKind;
use guestmem::GuestMemoryOperation;
use std::os::fd::AsRawFd;
use virt::RecordedCall as C;
use virt::RecordedOp;
use virt::RecordingPartition;
use vm_topology::memory::MemoryRangeWithNode;

const GIB: u64 = 0x4000_0000;
const MMIO_GAP: MemoryRange = MemoryRange::new(0xC000_0000..0x1_0000_0000);
const VGA: MemoryRange = MemoryRange::new(0xa0000..0xc0000);
const PAM0: MemoryRange = MemoryRange::new(0xc0000..0xc4000);
const L1_RAM: MemoryRange = MemoryRange::new(0..GIB);

fn r(start: u64, end: u64) -> MemoryRange {
    MemoryRange::new(start..end)
}

fn l1() -> MemoryLayout {
    MemoryLayout::new(GIB, &[MMIO_GAP], None).unwrap()
}

fn l2() -> MemoryLayout {
    MemoryLayout::new(4 * GIB, &[MMIO_GAP], None).unwrap()
}

fn l3() -> MemoryLayout {
    MemoryLayout::new(GIB, &[MMIO_GAP], Some(r(0x2_0000_0000, 0x2_0400_0000))).unwrap()
}

/// A layout from explicit RAM ranges and the usual MMIO gap.
fn ranges_layout(ram: &[MemoryRange]) -> MemoryLayout {
    let ram: Vec<MemoryRangeWithNode> = ram
        .iter()
        .map(|&range| MemoryRangeWithNode { range, vnode: 0 })
        .collect();
    MemoryLayout::new_from_ranges(&ram, &[MMIO_GAP]).unwrap()
}

fn build(builder: GuestMemoryBuilder, layout: &MemoryLayout) -> GuestMemoryManager {
    block_on(builder.build(layout)).unwrap()
}

fn build_err(builder: GuestMemoryBuilder, layout: &MemoryLayout) -> MemoryBuildError {
    block_on(builder.build(layout)).unwrap_err()
}

fn memory(mgr: &GuestMemoryManager) -> GuestMemory {
    block_on(mgr.client().guest_memory()).unwrap()
}

/// A recorder whose `vaOffset`s are relative to the manager's window.
fn recorder(mgr: &GuestMemoryManager) -> Arc<RecordingPartition> {
    Arc::new(RecordingPartition::with_va_base(mgr.va_window_base()))
}

fn attach(mgr: &GuestMemoryManager, vtl: Vtl) -> Arc<RecordingPartition> {
    let partition = recorder(mgr);
    let dyn_partition: Arc<dyn PartitionMemoryMap> = partition.clone();
    block_on(mgr.attach_partition(vtl, &dyn_partition, None)).unwrap();
    partition
}

fn set(mgr: &GuestMemoryManager, range: MemoryRange, visibility: RamVisibility) {
    block_on(
        mgr.ram_visibility_control()
            .set_ram_visibility(range, visibility),
    )
    .unwrap();
}

fn snapshot(mgr: &GuestMemoryManager) -> ManagerSnapshot {
    block_on(mgr.inspect()).unwrap()
}

fn read(mem: &GuestMemory, gpa: u64, len: usize) -> Result<Vec<u8>, GuestMemoryError> {
    let mut data = vec![0; len];
    mem.read_at(gpa, &mut data).map(|()| data)
}

/// The `NoMapping` cause of an `OutOfRange` access error.
fn no_mapping(error: &GuestMemoryError) -> MemoryRange {
    assert_eq!(error.kind(), GuestMemoryErrorKind::OutOfRange, "{error}");
    let source = std::error::Error::source(error).expect("a cause");
    source
        .downcast_ref::<NoMapping>()
        .unwrap_or_else(|| panic!("cause {source} is not NoMapping"))
        .0
}

/// The `ReadOnlyMapping` cause of an `OutOfRange` write error.
fn read_only(error: &GuestMemoryError) -> MemoryRange {
    assert_eq!(error.kind(), GuestMemoryErrorKind::OutOfRange, "{error}");
    let source = std::error::Error::source(error).expect("a cause");
    source
        .downcast_ref::<crate::ReadOnlyMapping>()
        .unwrap_or_else(|| panic!("cause {source} is not ReadOnlyMapping"))
        .0
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add(i.to_le_bytes()[0].wrapping_mul(31)))
        .collect()
}

/// A memfd of `len` bytes filled with `data` from offset 0.
fn object_with(data: &[u8], len: usize) -> Mappable {
    let object = sparse_mmap::alloc_shared_memory(len, "test-object").unwrap();
    pwrite(&object, 0, data);
    object
}

fn pwrite(fd: &impl AsFd, offset: u64, data: &[u8]) {
    let file = std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap());
    std::os::unix::fs::FileExt::write_all_at(&file, data, offset).unwrap();
}

fn pread(fd: &impl AsFd, offset: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let file = std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap());
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut data, offset).unwrap();
    data
}

fn mapping_ranges(snapshot: &ManagerSnapshot) -> Vec<(MemoryRange, u64, Vec<MapperId>)> {
    snapshot
        .mappings
        .iter()
        .map(|mapping| {
            (
                mapping.range,
                mapping.file_offset,
                mapping.active_mappers.clone(),
            )
        })
        .collect()
}

fn assert_send_static<T: Send + 'static>(_: &T) {}

// ----- the futures the binding awaits are Send + 'static -----

#[test]
fn futures_are_send_and_static() {
    let builder = GuestMemoryBuilder::new();
    let build = builder.build(&l1());
    assert_send_static(&build);
    let mgr = block_on(build).unwrap();
    let partition: Arc<dyn PartitionMemoryMap> = recorder(&mgr);
    let attach = mgr.attach_partition(Vtl::Vtl0, &partition, None);
    assert_send_static(&attach);
    block_on(attach).unwrap();
    let client = mgr.client();
    assert_send_static(&client);
    let guest_memory = client.guest_memory();
    assert_send_static(&guest_memory);
    drop(guest_memory);
    let control = mgr.ram_visibility_control();
    let visibility = control.set_ram_visibility(L1_RAM, RamVisibility::ReadWrite);
    assert_send_static(&visibility);
    drop(visibility);
    let (window, region) = mgr
        .device_memory_mapper()
        .new_region(0x1000, "dev".into())
        .unwrap();
    let object = object_with(&[], 0x1000);
    let map = region.map(0, &object, 0, 0x1000, true);
    drop(object);
    assert_send_static(&map);
    block_on(map).unwrap();
    let place = window.map_to_guest(0xD000_0000, true);
    assert_send_static(&place);
    block_on(place).unwrap();
    let unplace = window.unmap_from_guest();
    assert_send_static(&unplace);
    block_on(unplace);
    let unmap = region.unmap(0, 0x1000);
    assert_send_static(&unmap);
    block_on(unmap).unwrap();
    let inspect = mgr.inspect();
    assert_send_static(&inspect);
    drop(inspect);
    let decommit = mgr.decommit_ram(r(0, 0x1000));
    assert_send_static(&decommit);
    block_on(decommit).unwrap();
    let close = mgr.close();
    assert_send_static(&close);
    block_on(close);
}

// ----- the builder's order and errors -----

#[test]
fn private_with_legacy_is_checked_first() {
    let error = build_err(
        GuestMemoryBuilder::new()
            .private_memory(true)
            .x86_legacy_support(true)
            .transparent_hugepages(true)
            .vtl0_alias_map(Some(0x1000)),
        &l1(),
    );
    assert!(
        matches!(error, MemoryBuildError::PrivateMemoryWithLegacy),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "private memory is incompatible with x86 legacy support"
    );
}

#[test]
fn private_with_existing_backing() {
    let backing =
        SharedMemoryBacking::from_mappable(object_with(&[], usize::try_from(GIB).unwrap()));
    let error = build_err(
        GuestMemoryBuilder::new()
            .private_memory(true)
            .existing_backing(Some(backing)),
        &l1(),
    );
    assert!(
        matches!(error, MemoryBuildError::PrivateMemoryWithExistingBacking),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "private memory is incompatible with existing memory backing"
    );
}

#[test]
fn thp_without_private_precedes_the_alias_check() {
    let error = build_err(
        GuestMemoryBuilder::new()
            .transparent_hugepages(true)
            .vtl0_alias_map(Some(0x1000)),
        &l1(),
    );
    assert!(
        matches!(error, MemoryBuildError::ThpWithoutPrivateMemory),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "transparent huge pages requires private memory mode"
    );
}

#[test]
fn private_thp_builds_on_linux() {
    let mgr = build(
        GuestMemoryBuilder::new()
            .private_memory(true)
            .transparent_hugepages(true),
        &l1(),
    );
    let mem = memory(&mgr);
    mem.write_at(0x20_0000, b"huge").unwrap();
    assert_eq!(read(&mem, 0x20_0000, 4).unwrap(), b"huge");
    block_on(mgr.close());
}

#[test]
fn alias_boundary() {
    let error = build_err(
        GuestMemoryBuilder::new().vtl0_alias_map(Some(0xFFFF_F000)),
        &l1(),
    );
    assert!(
        matches!(error, MemoryBuildError::AliasMapWontFit),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "not enough guest address space available for the vtl0 alias map"
    );
    let mgr = build(
        GuestMemoryBuilder::new().vtl0_alias_map(Some(0x1_0000_0000)),
        &l1(),
    );
    assert_eq!(snapshot(&mgr).alias_offset, Some(0x1_0000_0000));
    // Extensions: an unaligned offset, or one whose alias would pass 2^64.
    for offset in [0x1_0000_0800, u64::MAX - 0xfff] {
        let error = build_err(
            GuestMemoryBuilder::new().vtl0_alias_map(Some(offset)),
            &l1(),
        );
        assert!(
            matches!(error, MemoryBuildError::AliasMapWontFit),
            "{offset:#x}"
        );
    }
}

#[test]
fn alias_check_precedes_the_x86_check() {
    let layout = ranges_layout(&[r(0x10_0000, GIB)]);
    let error = build_err(
        GuestMemoryBuilder::new()
            .x86_legacy_support(true)
            .vtl0_alias_map(Some(0x1000)),
        &layout,
    );
    assert!(
        matches!(error, MemoryBuildError::AliasMapWontFit),
        "{error:?}"
    );
    let error = build_err(GuestMemoryBuilder::new().x86_legacy_support(true), &layout);
    assert!(
        matches!(error, MemoryBuildError::InvalidRamForX86),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "x86 support requires RAM to start at 0 and contain at least 1MB"
    );
}

#[test]
fn x86_needs_a_megabyte() {
    let layout = ranges_layout(&[r(0, 0x80000)]);
    let error = build_err(GuestMemoryBuilder::new().x86_legacy_support(true), &layout);
    assert!(
        matches!(error, MemoryBuildError::InvalidRamForX86),
        "{error:?}"
    );
}

#[test]
fn build_extensions_reject_bad_layouts_and_short_backings() {
    let no_gap = MemoryLayout::new(GIB, &[], None).unwrap();
    let error = build_err(GuestMemoryBuilder::new(), &no_gap);
    assert!(
        matches!(
            error,
            MemoryBuildError::InvalidLayout {
                end_of_ram: GIB,
                suggested_end: 0x4000_1000
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("RAM ends at 0x40000000"), "{message}");
    assert!(
        message.contains("add a gap, e.g. 0x40000000-0x40001000"),
        "{message}"
    );
    // The suggested gap makes the same RAM buildable.
    build(
        GuestMemoryBuilder::new(),
        &MemoryLayout::new(GIB, &[MemoryRange::new(GIB..0x4000_1000)], None).unwrap(),
    );
    let short = SharedMemoryBacking::from_mappable(object_with(&[], 0x1000));
    let error = build_err(
        GuestMemoryBuilder::new().existing_backing(Some(short)),
        &l1(),
    );
    assert!(
        matches!(
            error,
            MemoryBuildError::ExistingBackingTooSmall {
                size: 0x1000,
                required: GIB
            }
        ),
        "{error:?}"
    );
}

// ----- RAM regions, backing, content -----

#[test]
fn x86_exact_megabyte_has_fifteen_regions_and_attaches() {
    let layout = ranges_layout(&[r(0, 0x10_0000), r(0x10_0000_0000, 0x10_4000_0000)]);
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &layout);
    let ram: Vec<_> = snapshot(&mgr)
        .regions
        .iter()
        .filter(|region| region.range.end() <= 0x10_0000)
        .map(|region| region.range)
        .collect();
    assert_eq!(ram.len(), 15);
    assert_eq!(ram.last(), Some(&r(0xf0000, 0x10_0000)));
    let partition = attach(&mgr, Vtl::Vtl0);
    assert_eq!(partition.log().len(), 16);
}

#[test]
fn dense_file_offsets_and_content() {
    let mgr = build(GuestMemoryBuilder::new(), &l2());
    assert_eq!(
        mapping_ranges(&snapshot(&mgr)),
        [
            (r(0, 0xC000_0000), 0, vec![]),
            (r(0x1_0000_0000, 0x1_4000_0000), 0xC000_0000, vec![]),
        ]
    );
    let mem = memory(&mgr);
    mem.write_at(0x1_0000_0000, &[0xDE, 0xAD, 0xBE, 0xEF])
        .unwrap();
    let backing = mgr.shared_memory_backing().unwrap();
    assert_eq!(pread(&backing, 0xC000_0000, 4), [0xDE, 0xAD, 0xBE, 0xEF]);
    // And the other way round.
    pwrite(&backing, 0x1234, b"file");
    assert_eq!(read(&mem, 0x1234, 4).unwrap(), b"file");
    // The DMA regions are the RAM mappings, sharing the RAM object.
    let mut regions: Vec<_> = block_on(mem.sharing().unwrap().get_regions())
        .unwrap()
        .into_iter()
        .map(|region| {
            assert_eq!(
                region.file.as_raw_fd(),
                backing.as_fd().as_raw_fd(),
                "the same object, not a duplicate"
            );
            (region.guest_address, region.size, region.file_offset)
        })
        .collect();
    regions.sort();
    assert_eq!(
        regions,
        [
            (0, 0xC000_0000, 0),
            (0x1_0000_0000, 0x4000_0000, 0xC000_0000)
        ]
    );
}

#[test]
fn vtl2_ram_is_last_and_controllable() {
    let mgr = build(GuestMemoryBuilder::new(), &l3());
    let backing = mgr.shared_memory_backing().unwrap();
    assert_eq!(backing.size().unwrap(), 0x4400_0000);
    let snap = snapshot(&mgr);
    let last = snap.regions.last().unwrap();
    assert_eq!(last.range, r(0x2_0000_0000, 0x2_0400_0000));
    assert_eq!(last.mappings[0].file_offset, 0x4000_0000);
    let mem = memory(&mgr);
    mem.write_at(0x2_0000_0000, b"vtl2").unwrap();
    assert_eq!(pread(&backing, 0x4000_0000, 4), b"vtl2");
    set(
        &mgr,
        r(0x2_0000_0000, 0x2_0400_0000),
        RamVisibility::Unmapped,
    );
    let error = read(&mem, 0x2_0000_0000, 1).unwrap_err();
    assert_eq!(no_mapping(&error), r(0x2_0000_0000, 0x2_0000_1000));
}

#[test]
fn backing_reuse_sees_writes_both_ways() {
    let a = build(GuestMemoryBuilder::new(), &l1());
    let mem_a = memory(&a);
    mem_a.write_at(0x2000, b"from A").unwrap();
    let b = build(
        GuestMemoryBuilder::new().existing_backing(a.shared_memory_backing()),
        &l1(),
    );
    let mem_b = memory(&b);
    assert_ne!(
        mem_a.full_mapping().unwrap().0,
        mem_b.full_mapping().unwrap().0,
        "each manager has its own window"
    );
    assert_eq!(read(&mem_b, 0x2000, 6).unwrap(), b"from A");
    mem_b.write_at(0x3000_0000, b"from B").unwrap();
    assert_eq!(read(&mem_a, 0x3000_0000, 6).unwrap(), b"from B");
    block_on(a.close());
    // B keeps working after A is gone: the object lives as long as a manager uses it.
    assert_eq!(read(&mem_b, 0x2000, 6).unwrap(), b"from A");
}

#[test]
fn private_backing() {
    let mgr = build(GuestMemoryBuilder::new().private_memory(true), &l1());
    assert!(mgr.shared_memory_backing().is_none());
    let mem = memory(&mgr);
    assert!(mem.sharing().is_none());
    assert_eq!(read(&mem, 0x1000, 16).unwrap(), [0; 16]);
    mem.write_at(0x3FFF_FFF0, b"private!").unwrap();
    assert_eq!(read(&mem, 0x3FFF_FFF0, 8).unwrap(), b"private!");
    let snap = snapshot(&mgr);
    assert!(snap.mappings.is_empty());
    assert!(snap.regions.iter().all(|region| region.mappings.is_empty()));
}

// ----- attach errors, lazy population, holes -----

#[test]
fn remote_process_is_unsupported() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let partition: Arc<dyn PartitionMemoryMap> = recorder(&mgr);
    let error =
        block_on(mgr.attach_partition(Vtl::Vtl0, &partition, Some(RemoteProcess(1)))).unwrap_err();
    assert!(
        matches!(error, PartitionAttachError::Unsupported),
        "{error:?}"
    );
    assert!(snapshot(&mgr).partitions.is_empty());
}

#[test]
fn lazy_population() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    assert_eq!(mapping_ranges(&snapshot(&mgr)), [(L1_RAM, 0, vec![])]);
    let mem = memory(&mgr);
    assert!(mgr.va_mapper().mapped_ranges().is_empty());
    assert_eq!(read(&mem, 0x1000, 1).unwrap(), [0]);
    assert_eq!(
        mapping_ranges(&snapshot(&mgr)),
        [(L1_RAM, 0, vec![MapperId(0)])]
    );
    // The whole mapping was mapped by that one fault.
    assert_eq!(mgr.va_mapper().mapped_ranges(), [(L1_RAM, true)]);
}

#[test]
fn gap_and_out_of_window_reads() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let mem = memory(&mgr);
    let error = read(&mem, 0xC000_0000, 1).unwrap_err();
    assert_eq!(no_mapping(&error), r(0xc000_0000, 0xc000_1000));
    assert_eq!(error.gpa(), Some(0xC000_0000));
    let inner = std::error::Error::source(&error).unwrap().to_string();
    assert_eq!(inner, "no mapping for 0xc0000000-0xc0001000");
    let events = mgr.va_mapper().events().len();
    let error = read(&mem, 0x1_0000_0000, 1).unwrap_err();
    assert_eq!(error.kind(), GuestMemoryErrorKind::OutOfRange);
    assert!(std::error::Error::source(&error)
        .unwrap()
        .downcast_ref::<NoMapping>()
        .is_none());
    assert_eq!(mgr.va_mapper().events().len(), events, "no actor traffic");
}

#[test]
fn straddling_read_fails_at_the_hole() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let mem = memory(&mgr);
    read(&mem, 0x1000, 1).unwrap();
    let error = read(&mem, 0x3FFF_F000, 0x2000).unwrap_err();
    assert_eq!(error.gpa(), Some(0x4000_0000));
    assert_eq!(no_mapping(&error), r(0x4000_0000, 0x4000_1000));

    let fresh = build(GuestMemoryBuilder::new(), &l1());
    let mem = memory(&fresh);
    let error = read(&mem, 0x3FFF_F000, 0x2000).unwrap_err();
    assert_eq!(error.gpa(), Some(0x3FFF_F000));
    assert_eq!(no_mapping(&error), r(0x3FFF_F000, 0x4000_1000));
}

#[test]
fn one_mapper_per_process() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let client = mgr.client();
    let first = memory(&mgr);
    let second = block_on(client.guest_memory()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || block_on(client.guest_memory()).unwrap())
        })
        .collect();
    let base = first.full_mapping().unwrap().0 as usize;
    assert_eq!(second.full_mapping().unwrap().0 as usize, base);
    for thread in threads {
        assert_eq!(
            thread.join().unwrap().full_mapping().unwrap().0 as usize,
            base
        );
    }
    assert_eq!(base, mgr.va_window_base());
    assert_eq!(first.debug_name(), "ram");
    assert_eq!(first.max_address(), 0x1_0000_0000);
    assert_eq!(snapshot(&mgr).mapper_count, 1);
}

// ----- RAM visibility with content -----

#[test]
fn visibility_needs_an_exact_region() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let control = mgr.ram_visibility_control();
    for range in [r(0xa0000, 0xb0000), r(0, 0x10_0000)] {
        let error =
            block_on(control.set_ram_visibility(range, RamVisibility::Unmapped)).unwrap_err();
        assert!(
            matches!(error, RegionManagerError::InvalidRamRegion(InvalidRamRegion(bad)) if bad == range),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("{range} is not a controllable RAM range")
        );
    }
}

#[test]
fn vga_unmapped_then_restored_keeps_the_content() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    partition.clear_log();
    let mem = memory(&mgr);
    let vga_pattern = pattern(7, 0x100);
    mem.write_at(0xa0000, &vga_pattern).unwrap();

    set(&mgr, VGA, RamVisibility::Unmapped);
    assert_eq!(partition.take_log(), [C::unmap(0xa0000, 0x20000)]);
    let error = read(&mem, 0xa0000, 4).unwrap_err();
    assert_eq!(no_mapping(&error), r(0xa0000, 0xa1000));
    assert!(!mapping_ranges(&snapshot(&mgr))
        .iter()
        .any(|(range, _, _)| *range == VGA));
    let regions = block_on(mem.sharing().unwrap().get_regions()).unwrap();
    assert!(!regions.iter().any(|region| region.guest_address == 0xa0000));
    assert_eq!(regions.len(), 15);

    set(&mgr, VGA, RamVisibility::ReadWrite);
    assert_eq!(
        partition.take_log(),
        [C::map(0xa0000, 0x20000, true, true, 0xa0000)]
    );
    assert_eq!(read(&mem, 0xa0000, 0x100).unwrap(), vga_pattern);
    let regions = block_on(mem.sharing().unwrap().get_regions()).unwrap();
    assert_eq!(regions.len(), 16);
    let vga = regions
        .iter()
        .find(|region| region.guest_address == 0xa0000)
        .unwrap();
    assert_eq!((vga.size, vga.file_offset), (0x20000, 0xa0000));
}

#[test]
fn read_only_ram_refuses_accessor_writes() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    partition.clear_log();
    let mem = memory(&mgr);
    mem.write_at(0xc0000, b"rom").unwrap();
    set(&mgr, PAM0, RamVisibility::ReadOnly);
    assert_eq!(
        partition.take_log(),
        [
            C::unmap(0xc0000, 0x4000),
            C::map(0xc0000, 0x4000, false, true, 0xc0000)
        ]
    );
    assert_eq!(read(&mem, 0xc0000, 3).unwrap(), b"rom");
    let error = mem.write_at(0xc0010, b"x").unwrap_err();
    assert_eq!(read_only(&error), r(0xc0000, 0xc1000));
    assert_eq!(read(&mem, 0xc0000, 3).unwrap(), b"rom");
    // Writes next to it are unaffected.
    mem.write_at(0xc4000, b"rw").unwrap();
}

// ----- device windows -----

/// x86 L1 with a partition attached, RAM at 0xa0000 holding "ram", and a 0x20000-byte window
/// holding P (0x10000 bytes) at offset 0, placed over the VGA window (shadowed by RAM).
struct VgaDevice {
    mgr: GuestMemoryManager,
    partition: Arc<RecordingPartition>,
    mem: GuestMemory,
    control: MappableGuestMemory,
    region: Arc<MappedMemoryRegion>,
    p: Vec<u8>,
}

fn vga_device() -> VgaDevice {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    let mem = memory(&mgr);
    mem.write_at(0xa0000, b"ram").unwrap();
    let (control, region) = mgr
        .device_memory_mapper()
        .new_region(0x20000, "vram".into())
        .unwrap();
    let p = pattern(0x50, 0x10000);
    let object = object_with(&p, 0x10000);
    block_on(region.map(0, &object, 0, 0x10000, true)).unwrap();
    partition.clear_log();
    block_on(control.map_to_guest(0xa0000, true)).unwrap();
    VgaDevice {
        mgr,
        partition,
        mem,
        control,
        region,
        p,
    }
}

#[test]
fn device_shadowed_surfaces_and_hides() {
    let dev = vga_device();
    // Shadowed by RAM: present, inactive, no partition calls.
    assert!(dev.partition.log().is_empty());
    let snap = snapshot(&dev.mgr);
    let vram = snap
        .regions
        .iter()
        .find(|region| region.name == "vram")
        .unwrap();
    assert!(!vram.active);
    assert_eq!(dev.control.gpa(), Some(0xa0000));
    assert_eq!(read(&dev.mem, 0xa0000, 3).unwrap(), b"ram");

    // Unmapping the VGA RAM surfaces the device window, mapped whole.
    set(&dev.mgr, VGA, RamVisibility::Unmapped);
    assert_eq!(
        dev.partition.take_log(),
        [
            C::unmap(0xa0000, 0x20000),
            C::map(0xa0000, 0x20000, true, true, 0xa0000)
        ]
    );
    assert_eq!(read(&dev.mem, 0xa0000, 0x10000).unwrap(), dev.p);
    let regions = block_on(dev.mem.sharing().unwrap().get_regions()).unwrap();
    assert!(!regions.iter().any(|region| region.guest_address == 0xa0000));
    // The window's second half has no mapping.
    let error = read(&dev.mem, 0xb0000, 1).unwrap_err();
    assert_eq!(no_mapping(&error), r(0xb0000, 0xb1000));
    // Writes reach the device object.
    dev.mem.write_at(0xa0010, b"dev").unwrap();

    // RAM returns with its own content.
    set(&dev.mgr, VGA, RamVisibility::ReadWrite);
    assert_eq!(
        dev.partition.take_log(),
        [
            C::unmap(0xa0000, 0x20000),
            C::map(0xa0000, 0x20000, true, true, 0xa0000)
        ]
    );
    assert_eq!(read(&dev.mem, 0xa0000, 3).unwrap(), b"ram");
    assert_eq!(read(&dev.mem, 0xb0000, 1).unwrap(), [0]);
    // The device object kept the write.
    set(&dev.mgr, VGA, RamVisibility::Unmapped);
    assert_eq!(read(&dev.mem, 0xa0010, 3).unwrap(), b"dev");
}

#[test]
fn runtime_dax_add_and_remove() {
    let dev = vga_device();
    let second = block_on(dev.mgr.client().uncached_mapper()).unwrap();
    set(&dev.mgr, VGA, RamVisibility::Unmapped);
    dev.partition.clear_log();

    // Add Q at offset 0x10000: no partition call, pre-populated for the partition's mapper.
    let q = pattern(0x90, 0x10000);
    let object = object_with(&q, 0x10000);
    block_on(dev.region.map(0x10000, &object, 0, 0x10000, true)).unwrap();
    assert!(dev.partition.log().is_empty());
    assert_eq!(read(&dev.mem, 0xb0000, 0x10000).unwrap(), q);
    let snap = snapshot(&dev.mgr);
    let added = snap
        .mappings
        .iter()
        .find(|mapping| mapping.range == r(0xb0000, 0xc0000))
        .unwrap();
    assert_eq!(added.active_mappers, [MapperId(0)]);
    assert!(!added.dma_target);
    assert_eq!(snap.mapper_count, 2);

    // Remove it again: the holder was invalidated before the call returned.
    let mapper = dev.mgr.va_mapper();
    block_on(dev.region.unmap(0x10000, 0x10000)).unwrap();
    assert!(dev.partition.log().is_empty());
    assert!(mapper
        .events()
        .iter()
        .any(|(_, event)| *event == MapperEvent::Unmap(r(0xb0000, 0xc0000))));
    assert!(!mapper
        .mapped_ranges()
        .iter()
        .any(|(range, _)| range.overlaps(&r(0xb0000, 0xc0000))));
    let error = read(&dev.mem, 0xb0000, 1).unwrap_err();
    assert_eq!(no_mapping(&error), r(0xb0000, 0xb1000));
    // The first half is still there.
    assert_eq!(read(&dev.mem, 0xa0000, 0x10000).unwrap(), dev.p);
    // A mapper that never touched the window got no message at all.
    assert!(second.events().is_empty(), "{:?}", second.events());
    assert_ne!(second.id(), mapper.id());
}

#[test]
fn device_unmap_keeps_the_other_mappings() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let mem = memory(&mgr);
    let (control, region) = mgr
        .device_memory_mapper()
        .new_region(0x4000, "dev".into())
        .unwrap();
    let a = object_with(b"AAAA", 0x1000);
    let b = object_with(b"BBBB", 0x1000);
    block_on(region.map(0, &a, 0, 0x1000, true)).unwrap();
    block_on(region.map(0x2000, &b, 0, 0x1000, true)).unwrap();
    block_on(control.map_to_guest(0xD000_0000, true)).unwrap();
    block_on(region.unmap(0, 0x1000)).unwrap();
    block_on(control.unmap_from_guest());
    assert_eq!(control.gpa(), None);
    block_on(control.map_to_guest(0xD000_0000, true)).unwrap();
    assert_eq!(read(&mem, 0xD000_2000, 4).unwrap(), b"BBBB");
    let error = read(&mem, 0xD000_0000, 4).unwrap_err();
    assert_eq!(no_mapping(&error), r(0xD000_0000, 0xD000_1000));
    let c = object_with(b"CCCC", 0x1000);
    block_on(region.map(0, &c, 0, 0x1000, true)).unwrap();
    assert_eq!(read(&mem, 0xD000_0000, 4).unwrap(), b"CCCC");
}

#[test]
fn mappings_of_a_shared_object_hold_references_not_descriptors() {
    const PAGES: usize = 64;
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let mem = memory(&mgr);
    let (control, region) = mgr
        .device_memory_mapper()
        .new_region(2 * PAGES * 0x1000, "dev".into())
        .unwrap();
    let data = pattern(7, PAGES * 0x1000);
    let object = Arc::new(object_with(&data, PAGES * 0x1000));
    // Page by page: the first half one call at a time, the second half in one batch.
    for page in 0..PAGES / 2 {
        let offset = page * 0x1000;
        block_on(region.map_object(offset, object.clone(), offset as u64, 0x1000, true)).unwrap();
    }
    let changes = (PAGES / 2..PAGES)
        .map(|page| {
            let offset = page * 0x1000;
            region.map_object_change(offset, object.clone(), offset as u64, 0x1000, true)
        })
        .collect();
    block_on(mgr.apply(changes)).unwrap();
    // Every mapping keeps this very object (no duplicated descriptor of its own).
    assert!(
        Arc::strong_count(&object) > PAGES,
        "{} references for {PAGES} mappings",
        Arc::strong_count(&object)
    );
    block_on(control.map_to_guest(0xD000_0000, true)).unwrap();
    assert_eq!(read(&mem, 0xD000_0000, PAGES * 0x1000).unwrap(), data);
    // Mapped objects go with their mappings.
    block_on(region.unmap(0, PAGES * 0x1000)).unwrap();
    block_on(control.unmap_from_guest());
    let settled = region.settled();
    drop((control, region));
    block_on(settled);
    drop(mem);
    assert_eq!(Arc::strong_count(&object), 1);
}

/// The `RegionManagerError` inside a device operation's `io::Error`.
fn region_error(error: &io::Error) -> &RegionManagerError {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<RegionManagerError>())
        .unwrap_or_else(|| panic!("{error:?} does not wrap a RegionManagerError"))
}

#[test]
fn device_input_errors_are_recoverable() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    partition.clear_log();
    let (control, region) = mgr
        .device_memory_mapper()
        .new_region(0x4000, "dev".into())
        .unwrap();
    let object = object_with(&[], 0x4000);
    block_on(region.map(0, &object, 0, 0x2000, true)).unwrap();
    let before = snapshot(&mgr);
    let kind = |result: io::Result<()>| result.unwrap_err().kind();
    assert_eq!(
        kind(block_on(region.map(0x800, &object, 0, 0x1000, true))),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(block_on(region.map(0x1000, &object, 0, 0x1000, true))),
        io::ErrorKind::Unsupported
    );
    assert_eq!(
        kind(block_on(region.map(0x3000, &object, 0, 0x2000, true))),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(block_on(region.unmap(0, 0x1000))),
        io::ErrorKind::Unsupported
    );
    // An object shorter than the mapping (extension).
    let error = block_on(region.map(0x2000, &object, 0x3000, 0x2000, true)).unwrap_err();
    assert!(
        matches!(
            region_error(&error),
            RegionManagerError::MappingBeyondObject {
                object_size: 0x4000,
                ..
            }
        ),
        "{error:?}"
    );
    // Placements straddling RAM and beyond the VA window.
    let error = block_on(control.map_to_guest(0x9f000, true)).unwrap_err();
    assert!(
        matches!(region_error(&error), RegionManagerError::OverlapError(overlap) if overlap.new == "dev" && overlap.existing == "ram"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "memory region dev overlaps with existing region ram"
    );
    let error = block_on(control.map_to_guest(0x1_0000_0000, true)).unwrap_err();
    assert!(
        matches!(
            region_error(&error),
            RegionManagerError::RegionOutOfRange { .. }
        ),
        "{error:?}"
    );
    let error = block_on(control.map_to_guest(u64::MAX - 0xfff, true)).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(control.gpa(), None);
    assert_eq!(snapshot(&mgr), before);
    assert!(partition.log().is_empty());
    // The manager still works.
    block_on(control.map_to_guest(0xD000_0000, true)).unwrap();
    assert_eq!(
        partition.take_log(),
        [C::map(0xD000_0000, 0x4000, true, true, 0xD000_0000)]
    );
}

#[test]
fn read_only_window_makes_its_mappings_read_only() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let mem = memory(&mgr);
    let (control, region) = mgr
        .device_memory_mapper()
        .new_region(0x2000, "rom".into())
        .unwrap();
    block_on(control.map_to_guest(0xD000_0000, false)).unwrap();
    let object = object_with(b"rom!", 0x2000);
    // Added while the region is active: the mapping's writability is ANDed too.
    block_on(region.map(0, &object, 0, 0x2000, true)).unwrap();
    assert_eq!(read(&mem, 0xD000_0000, 4).unwrap(), b"rom!");
    let error = mem.write_at(0xD000_0000, b"x").unwrap_err();
    assert_eq!(read_only(&error), r(0xD000_0000, 0xD000_1000));
    let snap = snapshot(&mgr);
    let mapping = snap
        .mappings
        .iter()
        .find(|mapping| mapping.range.start() == 0xD000_0000)
        .unwrap();
    assert!(!mapping.writable);
}

#[test]
fn moving_a_window_shows_its_mappings_at_the_new_place() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    partition.clear_log();
    let mem = memory(&mgr);
    let (control, region) = mgr
        .device_memory_mapper()
        .new_region(0x1000, "dev".into())
        .unwrap();
    // Mapped while unplaced.
    let object = object_with(b"move", 0x1000);
    block_on(region.map(0, &object, 0, 0x1000, true)).unwrap();
    block_on(control.map_to_guest(0xD000_0000, true)).unwrap();
    assert_eq!(read(&mem, 0xD000_0000, 4).unwrap(), b"move");
    block_on(control.map_to_guest(0xE000_0000, true)).unwrap();
    assert_eq!(
        partition.take_log(),
        [
            C::map(0xD000_0000, 0x1000, true, true, 0xD000_0000),
            C::unmap(0xD000_0000, 0x1000),
            C::map(0xE000_0000, 0x1000, true, true, 0xE000_0000),
        ]
    );
    assert_eq!(read(&mem, 0xE000_0000, 4).unwrap(), b"move");
    assert!(read(&mem, 0xD000_0000, 4).is_err());
}

/// An L1 manager with a VTL0 recorder (log cleared) and a new 4 KiB device window.
fn manager_with_window() -> (
    GuestMemoryManager,
    Arc<RecordingPartition>,
    MappableGuestMemory,
    Arc<MappedMemoryRegion>,
) {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    partition.clear_log();
    let (control, region) = mgr
        .device_memory_mapper()
        .new_region(0x1000, "dev".into())
        .unwrap();
    (mgr, partition, control, region)
}

/// The recorder saw the 4 KiB window placed at `0xD000_0000` and then removed, nothing else.
fn assert_placed_at_d0000000_then_removed(partition: &RecordingPartition) {
    assert_eq!(
        partition.take_log(),
        [
            C::map(0xD000_0000, 0x1000, true, true, 0xD000_0000),
            C::unmap(0xD000_0000, 0x1000)
        ]
    );
}

#[test]
fn device_window_is_removed_when_both_halves_are_dropped() {
    let (mgr, partition, control, region) = manager_with_window();
    block_on(control.map_to_guest(0xD000_0000, true)).unwrap();
    drop(control);
    // The control alone does not unmap.
    assert_eq!(snapshot(&mgr).regions.len(), 2);
    drop(region);
    // Removal is queued; the next request runs after it.
    let snap = snapshot(&mgr);
    assert_eq!(snap.regions.len(), 1);
    assert_placed_at_d0000000_then_removed(&partition);
}

#[test]
fn device_window_placed_by_a_request_pending_when_both_halves_drop_is_removed() {
    let (mgr, partition, control, region) = manager_with_window();
    // The placement is requested, but neither served nor even polled when both halves go.
    let placing = control.map_to_guest(0xD000_0000, true);
    drop(control);
    drop(region);
    block_on(placing).unwrap();
    assert_eq!(snapshot(&mgr).regions.len(), 1, "the window is gone");
    assert_placed_at_d0000000_then_removed(&partition);
}

#[test]
fn device_requests_are_served_in_the_order_they_are_made() {
    let (_mgr, partition, control, _region) = manager_with_window();
    let first = control.map_to_guest(0xD000_0000, true);
    let second = control.map_to_guest(0xE000_0000, true);
    // Awaited in the opposite order: the placement made last is the one that stays.
    block_on(second).unwrap();
    block_on(first).unwrap();
    assert_eq!(control.gpa(), Some(0xE000_0000));
    assert_eq!(
        partition.take_log(),
        [
            C::map(0xD000_0000, 0x1000, true, true, 0xD000_0000),
            C::unmap(0xD000_0000, 0x1000),
            C::map(0xE000_0000, 0x1000, true, true, 0xE000_0000),
        ]
    );
}

// ----- private memory, poisoning, invalidation order -----

#[test]
fn private_fault_kind_is_other() {
    let mgr = build(GuestMemoryBuilder::new().private_memory(true), &l1());
    let mem = memory(&mgr);
    let error = read(&mem, 0xC000_0000, 1).unwrap_err();
    assert_eq!(error.kind(), GuestMemoryErrorKind::Other);
    let cause = std::error::Error::source(&error).unwrap();
    assert_eq!(
        cause.to_string(),
        "unexpected page fault in private RAM mode"
    );
}

#[test]
fn private_unmap_leaves_the_va_and_skips_prefetch() {
    let mgr = build(
        GuestMemoryBuilder::new()
            .private_memory(true)
            .prefetch_ram(true),
        &l1(),
    );
    let partition = attach(&mgr, Vtl::Vtl0);
    assert_eq!(partition.take_log(), [C::map(0, GIB, true, true, 0)]);
    assert_eq!(
        snapshot(&mgr).regions[0].map_params,
        Some(MapParams {
            writable: true,
            executable: true,
            prefetch: false
        })
    );
    let mem = memory(&mgr);
    mem.write_at(0, b"kept").unwrap();
    set(&mgr, L1_RAM, RamVisibility::Unmapped);
    assert_eq!(partition.take_log(), [C::unmap(0, GIB)]);
    assert_eq!(read(&mem, 0, 4).unwrap(), b"kept");
}

#[test]
fn runtime_partition_failure_poisons_the_manager() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    let mem = memory(&mgr);
    partition.fail_on(RecordedOp::Map, 0xa0000);
    set(&mgr, VGA, RamVisibility::Unmapped);
    let control = mgr.ram_visibility_control();
    let error = block_on(control.set_ram_visibility(VGA, RamVisibility::ReadWrite)).unwrap_err();
    assert!(
        matches!(error, RegionManagerError::ManagerPoisoned { .. }),
        "{error:?}"
    );
    for error in [
        block_on(control.set_ram_visibility(PAM0, RamVisibility::Unmapped)).unwrap_err(),
        block_on(mgr.inspect()).unwrap_err(),
        block_on(mgr.decommit_ram(r(0, 0x1000))).unwrap_err(),
    ] {
        assert!(
            matches!(error, RegionManagerError::ManagerPoisoned { .. }),
            "{error:?}"
        );
    }
    let other: Arc<dyn PartitionMemoryMap> = recorder(&mgr);
    let error = block_on(mgr.attach_partition(Vtl::Vtl0, &other, None)).unwrap_err();
    assert!(
        matches!(
            error,
            PartitionAttachError::Manager(RegionManagerError::ManagerPoisoned { .. })
        ),
        "{error:?}"
    );
    let (device, _region) = mgr
        .device_memory_mapper()
        .new_region(0x1000, "dev".into())
        .unwrap();
    let error = block_on(device.map_to_guest(0xD000_0000, true)).unwrap_err();
    assert!(matches!(
        region_error(&error),
        RegionManagerError::ManagerPoisoned { .. }
    ));
    // The process survives and memory that stayed mapped still works.
    mem.write_at(0x10_0000, b"alive").unwrap();
    assert_eq!(read(&mem, 0x10_0000, 5).unwrap(), b"alive");
}

fn no_free_slot(error: &RegionManagerError) -> (usize, u32, u32, u32) {
    match *error {
        RegionManagerError::NoFreeSlot {
            partition,
            needed,
            free,
            max_slots,
        } => (partition, needed, free, max_slots),
        _ => panic!("expected NoFreeSlot, got {error:?}"),
    }
}

#[test]
fn running_out_of_slots_is_refused_before_any_call_and_does_not_poison() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let recording = attach(&mgr, Vtl::Vtl0);
    // RAM takes one slot of three.
    let limited = Arc::new(SlotLimited::new(3, mgr.va_window_base()));
    let dyn_limited: Arc<dyn PartitionMemoryMap> = limited.clone();
    block_on(mgr.attach_partition(Vtl::Vtl0, &dyn_limited, None)).unwrap();
    recording.clear_log();
    limited.log.clear_log();
    assert_eq!(limited.used(), 1);
    let window = |name: &str| {
        mgr.device_memory_mapper()
            .new_region(0x1000, name.into())
            .unwrap()
    };
    let (a, _a) = window("a");
    let (b, _b) = window("b");
    let (c, _c) = window("c");
    let (d, _d) = window("d");
    block_on(a.map_to_guest(0xD000_0000, true)).unwrap();
    block_on(b.map_to_guest(0xD001_0000, true)).unwrap();
    assert_eq!(limited.used(), 3);
    recording.clear_log();
    limited.log.clear_log();
    let before = snapshot(&mgr);

    // A third window: refused before any call, on every partition.
    let error = block_on(c.map_to_guest(0xD002_0000, true)).unwrap_err();
    assert_eq!(no_free_slot(region_error(&error)), (1, 1, 0, 3));
    assert!(
        error.to_string().starts_with(
            "partition 1 has 0 of its 3 memory slots free, but the change needs 1 more at once"
        ),
        "{error}"
    );
    assert_eq!(c.gpa(), None, "the refused window stays unplaced");
    // A batch needing a slot more than is free at its peak (it frees one and takes two):
    // refused as a whole.
    let error = block_on(mgr.apply(vec![
        a.unmap_from_guest_change(),
        c.map_to_guest_change(0xD002_0000, true),
        d.map_to_guest_change(0xD004_0000, true),
    ]))
    .unwrap_err();
    match &error {
        BatchError::Manager(inner) => assert_eq!(no_free_slot(inner), (1, 1, 0, 3)),
        other => panic!("{other:?}"),
    }
    // A dry run says the same.
    let error =
        block_on(mgr.plan_batch(vec![c.map_to_guest_change(0xD002_0000, true)])).unwrap_err();
    assert!(matches!(
        error,
        BatchError::Manager(RegionManagerError::NoFreeSlot { .. })
    ));
    assert!(recording.log().is_empty() && limited.log.log().is_empty());
    assert_eq!(snapshot(&mgr), before, "nothing was applied");
    assert_eq!((a.gpa(), b.gpa()), (Some(0xD000_0000), Some(0xD001_0000)));
    assert_eq!((c.gpa(), d.gpa()), (None, None));

    // A placed window moved from under RAM (shadowed: no slot) to where it would take a slot:
    // refused, and it keeps its earlier placement (the record's placement is put back).
    block_on(d.map_to_guest(0x10_0000, true)).unwrap();
    assert!(
        limited.log.log().is_empty(),
        "a window RAM shadows takes no slot"
    );
    let error = block_on(d.map_to_guest(0xD004_0000, true)).unwrap_err();
    assert_eq!(no_free_slot(region_error(&error)), (1, 1, 0, 3));
    assert_eq!(
        d.gpa(),
        Some(0x10_0000),
        "the refused move keeps the placement"
    );
    block_on(d.unmap_from_guest());
    assert_eq!(d.gpa(), None);
    assert!(recording.log().is_empty() && limited.log.log().is_empty());

    // Not poisoned: a change that frees a slot before it takes one fits: moving a window, or
    // a batch that removes a window and places another (whatever their order in the batch:
    // the batch's unmaps run before its maps).
    block_on(b.map_to_guest(0xD003_0000, true)).unwrap();
    block_on(mgr.apply(vec![
        c.map_to_guest_change(0xD002_0000, true),
        a.unmap_from_guest_change(),
    ]))
    .unwrap();
    assert_eq!(
        limited.log.take_log(),
        [
            C::unmap(0xD001_0000, 0x1000),
            C::map(0xD003_0000, 0x1000, true, true, 0xD003_0000),
            C::unmap(0xD000_0000, 0x1000),
            C::map(0xD002_0000, 0x1000, true, true, 0xD002_0000),
        ]
    );
    assert_eq!(limited.used(), 3);
    assert_eq!((a.gpa(), c.gpa()), (None, Some(0xD002_0000)));
    // After a window is removed, a new one fits.
    block_on(b.unmap_from_guest());
    block_on(a.map_to_guest(0xD000_0000, true)).unwrap();
    assert_eq!((a.gpa(), c.gpa()), (Some(0xD000_0000), Some(0xD002_0000)));
    assert_eq!(limited.used(), 3);
}

#[test]
fn partition_unmap_precedes_the_acknowledged_invalidation() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let mem = memory(&mgr);
    read(&mem, 0xa0000, 1).unwrap();
    let partition = attach(&mgr, Vtl::Vtl0);
    partition.clear_log();
    let mapper = mgr.va_mapper();
    set(&mgr, VGA, RamVisibility::Unmapped);
    // When the call resolved, the mapper had processed (and acknowledged) the invalidation.
    let unmap_seq = mapper
        .events()
        .iter()
        .find(|(_, event)| *event == MapperEvent::Unmap(VGA))
        .map(|(seq, _)| *seq)
        .expect("the mapper was invalidated before the call returned");
    assert!(!mapper
        .mapped_ranges()
        .iter()
        .any(|(range, _)| range.overlaps(&VGA)));
    let log = partition.log_with_sequence();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].1, C::unmap(0xa0000, 0x20000));
    assert!(
        log[0].0 < unmap_seq,
        "partition unmap precedes the invalidation"
    );
}

// ----- D7: locked pages stay mapped in this process until released -----

#[test]
fn locked_page_survives_invalidation_until_released() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    partition.clear_log();
    let mem = memory(&mgr);
    mem.write_at(0xa1000, b"locked").unwrap();
    let locked = mem.lock_gpns(false, &[0xa1]).unwrap();
    assert_eq!(mgr.va_mapper().locked_page_count(), 1);

    // The partition loses the range at once and the call completes (the ack is not deferred).
    set(&mgr, VGA, RamVisibility::Unmapped);
    assert_eq!(partition.take_log(), [C::unmap(0xa0000, 0x20000)]);
    // The lock holder and the accessor keep the page; its neighbours are gone.
    let mut data = [0u8; 6];
    locked.read_at(0, 0, &mut data).unwrap();
    assert_eq!(&data, b"locked");
    assert_eq!(read(&mem, 0xa1000, 6).unwrap(), b"locked");
    mem.write_at(0xa1008, b"still").unwrap();
    for gpa in [0xa0000, 0xa2000, 0xbf000] {
        let error = read(&mem, gpa, 1).unwrap_err();
        assert_eq!(no_mapping(&error).start(), gpa);
    }
    assert_eq!(
        mgr.va_mapper()
            .mapped_ranges()
            .iter()
            .filter(|(range, _)| range.overlaps(&VGA))
            .map(|(range, _)| *range)
            .collect::<Vec<_>>(),
        [r(0xa1000, 0xa2000)]
    );

    // A clone shares the lock: the page goes with the last one.
    let clone = locked.clone();
    drop(locked);
    assert_eq!(read(&mem, 0xa1000, 1).unwrap(), b"l");
    drop(clone);
    assert_eq!(mgr.va_mapper().locked_page_count(), 0);
    let error = read(&mem, 0xa1000, 1).unwrap_err();
    assert_eq!(no_mapping(&error), r(0xa1000, 0xa2000));
    // The RAM content survived for when the region returns.
    set(&mgr, VGA, RamVisibility::ReadWrite);
    assert_eq!(read(&mem, 0xa1000, 13).unwrap(), b"locked\0\0still");
}

#[test]
fn a_new_mapping_reaches_a_locked_page_at_release() {
    let dev = vga_device();
    dev.mem.write_at(0xa1000, b"RAM page").unwrap();
    let locked = dev.mem.lock_gpns(false, &[0xa1]).unwrap();
    set(&dev.mgr, VGA, RamVisibility::Unmapped);
    // The device surfaced everywhere except on the locked page, which still shows RAM.
    assert_eq!(read(&dev.mem, 0xa0000, 0x100).unwrap(), dev.p[..0x100]);
    assert_eq!(read(&dev.mem, 0xa1000, 8).unwrap(), b"RAM page");
    assert_eq!(
        read(&dev.mem, 0xa2000, 0x100).unwrap(),
        dev.p[0x2000..0x2100]
    );
    drop(locked);
    assert_eq!(
        read(&dev.mem, 0xa1000, 0x100).unwrap(),
        dev.p[0x1000..0x1100]
    );
}

#[test]
fn locked_page_keeps_its_access_until_released() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let mem = memory(&mgr);
    let locked = mem.lock_gpns(true, &[0xc0]).unwrap();
    set(&mgr, PAM0, RamVisibility::ReadOnly);
    mem.write_at(0xc0000, b"writable while locked").unwrap();
    assert!(mem.write_at(0xc1000, b"x").is_err());
    drop(locked);
    let error = mem.write_at(0xc0000, b"x").unwrap_err();
    assert_eq!(read_only(&error), r(0xc0000, 0xc1000));
    assert_eq!(read(&mem, 0xc0000, 8).unwrap(), b"writable");
    // Read-only to read-write of the same content reaches a locked page at once.
    let locked = mem.lock_gpns(false, &[0xc0]).unwrap();
    set(&mgr, PAM0, RamVisibility::ReadWrite);
    mem.write_at(0xc0000, b"W").unwrap();
    drop(locked);
}

#[test]
fn locking_a_hole_fails_and_locks_nothing() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let mem = memory(&mgr);
    let error = mem.lock_gpns(false, &[0x10, 0xC0000]).unwrap_err();
    assert_eq!(error.kind(), GuestMemoryErrorKind::OutOfRange);
    assert_eq!(mgr.va_mapper().locked_page_count(), 0);
    let locked = mem.lock_gpns(false, &[0x10, 0x10, 0x3FFFF]).unwrap();
    assert_eq!(mgr.va_mapper().locked_page_count(), 2);
    drop(locked);
    assert_eq!(mgr.va_mapper().locked_page_count(), 0);
}

// ----- teardown, decommit, D6 -----

#[test]
fn close_tears_down_and_derived_objects_report_manager_gone() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    partition.clear_log();
    let window_len = mgr.va_window_len();
    let mem = memory(&mgr);
    mem.write_at(0x1000, b"before").unwrap();
    mem.write_at(0x2000, b"locked").unwrap();
    let locked = mem.lock_gpns(false, &[0x2]).unwrap();
    let client = mgr.client();
    let control = mgr.ram_visibility_control();
    let (device, region) = mgr
        .device_memory_mapper()
        .new_region(0x1000, "dev".into())
        .unwrap();
    let mapper = mgr.va_mapper();
    block_on(mgr.close());

    assert_eq!(partition.take_log(), [C::unmap(0, window_len)]);
    assert!(mapper.is_closed());
    let error = read(&mem, 0x1000, 1).unwrap_err();
    assert_eq!(error.kind(), GuestMemoryErrorKind::OutOfRange);
    assert!(std::error::Error::source(&error)
        .unwrap()
        .downcast_ref::<ManagerGone>()
        .is_some());
    // Locked pages stay readable until released.
    assert_eq!(read(&mem, 0x2000, 6).unwrap(), b"locked");
    drop(locked);
    assert!(read(&mem, 0x2000, 1).is_err());

    let error = block_on(client.guest_memory()).unwrap_err();
    assert!(
        matches!(error, VaMapperError::MemoryManagerGone(_)),
        "{error:?}"
    );
    let error = block_on(control.set_ram_visibility(L1_RAM, RamVisibility::Unmapped)).unwrap_err();
    assert!(
        matches!(error, RegionManagerError::ManagerGone),
        "{error:?}"
    );
    let error = block_on(device.map_to_guest(0xD000_0000, true)).unwrap_err();
    assert!(matches!(
        region_error(&error),
        RegionManagerError::ManagerGone
    ));
    let object = object_with(&[], 0x1000);
    let error = block_on(region.map(0, &object, 0, 0x1000, true)).unwrap_err();
    assert!(matches!(
        region_error(&error),
        RegionManagerError::ManagerGone
    ));
    block_on(device.unmap_from_guest());
}

#[test]
fn dropping_the_manager_removes_ram_and_stops_when_unused() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    partition.clear_log();
    let window_len = mgr.va_window_len();
    drop(mgr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while partition.log().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(partition.log(), [C::unmap(0, GIB), C::unmap(0, window_len)]);
}

#[test]
fn decommit_ram_releases_pages() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let mem = memory(&mgr);
    mem.fill_at(0x9e000, 0xAB, 0x4000).unwrap();
    // Across two RAM regions (0x0-0xa0000 and the VGA window).
    block_on(mgr.decommit_ram(r(0x9f000, 0xa1000))).unwrap();
    assert_eq!(read(&mem, 0x9f000, 0x2000).unwrap(), vec![0; 0x2000]);
    assert_eq!(read(&mem, 0x9e000, 0x1000).unwrap(), vec![0xAB; 0x1000]);
    assert_eq!(read(&mem, 0xa1000, 0x1000).unwrap(), vec![0xAB; 0x1000]);
    let backing = mgr.shared_memory_backing().unwrap();
    assert_eq!(pread(&backing, 0x9f000, 16), [0; 16]);
    for bad in [
        r(0x3FFF_F000, 0x4000_1000),
        r(0xC000_0000, 0xC000_1000),
        r(0, 0),
    ] {
        let error = block_on(mgr.decommit_ram(bad)).unwrap_err();
        assert!(
            matches!(error, RegionManagerError::InvalidRamRegion(_)),
            "{bad}: {error:?}"
        );
    }

    let private = build(GuestMemoryBuilder::new().private_memory(true), &l1());
    let mem = memory(&private);
    mem.fill_at(0x10000, 0xCD, 0x3000).unwrap();
    block_on(private.decommit_ram(r(0x11000, 0x12000))).unwrap();
    assert_eq!(read(&mem, 0x10000, 1).unwrap(), [0xCD]);
    assert_eq!(read(&mem, 0x11000, 0x1000).unwrap(), vec![0; 0x1000]);
    assert_eq!(read(&mem, 0x12000, 1).unwrap(), [0xCD]);
}

#[test]
fn an_empty_request_completes_at_once() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let mapper = mgr.va_mapper();
    block_on(mapper.request(MemoryRange::EMPTY, false)).unwrap();
    mapper.request_sync(MemoryRange::EMPTY, true).unwrap();
    assert!(mapper.events().is_empty());
}

#[test]
fn inspect_snapshot_serializes() {
    let mgr = build(
        GuestMemoryBuilder::new().vtl0_alias_map(Some(1 << 40)),
        &l1(),
    );
    let mem = memory(&mgr);
    read(&mem, 0, 1).unwrap();
    let value = serde_json::to_value(snapshot(&mgr)).unwrap();
    assert_eq!(value["alias_offset"], serde_json::json!(1u64 << 40));
    assert_eq!(value["pin_mappings"], serde_json::json!(false));
    assert_eq!(value["mapper_count"], serde_json::json!(1));
    assert_eq!(
        value["mappings"],
        serde_json::json!([{
            "range": {"start": 0, "end": GIB},
            "file_offset": 0,
            "writable": true,
            "dma_target": true,
            "active_mappers": [0]
        }])
    );
    assert_eq!(value["regions"][0]["name"], serde_json::json!("ram"));
    assert_eq!(value["regions"][0]["active"], serde_json::json!(true));
}

// ----- process-wide properties, each checked in a process of its own -----

/// Runs the test `name` (a function of this module) in a fresh process of the test binary,
/// so that process-wide figures (resident memory, descriptors, mappings, threads) are not
/// disturbed by tests running in parallel. Returns true in that process, where the caller runs
/// the test's body; in the original process it waits for the child and checks it passed.
fn isolated(name: &str) -> bool {
    const VAR: &str = "MEMBACKING_ISOLATED_TEST";
    if std::env::var(VAR).as_deref() == Ok(name) {
        return true;
    }
    let path = format!("memory_manager::tests::{name}");
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([&path, "--exact", "--nocapture", "--test-threads=1"])
        .env(VAR, name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "isolated test {name} failed:\n{stdout}\n{stderr}"
    );
    print!("{stdout}");
    false
}

/// A line of /proc/self/status, in kB.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

const MIB_KB: u64 = 1024;

#[test]
fn lazy_mapping_a_1tib_guest_costs_no_resident_memory() {
    if !isolated("lazy_mapping_a_1tib_guest_costs_no_resident_memory") {
        return;
    }
    // Warm up the process-wide pieces (fault handler, first threads).
    block_on(build(GuestMemoryBuilder::new(), &l1()).close());
    let before = status_kb("VmRSS");
    let layout = MemoryLayout::new(1 << 40, &[MMIO_GAP], None).unwrap();
    let mgr = build(GuestMemoryBuilder::new(), &layout);
    // Attaching populates the VA of both RAM regions (one mmap each), still without memory.
    let partition = attach(&mgr, Vtl::Vtl0);
    assert_eq!(partition.log().len(), 2);
    let mem = memory(&mgr);
    let built = status_kb("VmRSS");
    println!("1 TiB guest: VmRSS {before} kB before, {built} kB after build and attach");
    assert!(built < before + 16 * MIB_KB, "{before} -> {built} kB");
    assert!(status_kb("VmSize") > (1 << 30), "the window is reserved VA");

    // One byte in every GiB of the guest: about 1024 pages plus their page tables.
    let mut touched = 0;
    for gib in 0..1025u64 {
        let gpa = gib << 30;
        if MMIO_GAP.contains_addr(gpa) {
            continue;
        }
        mem.write_at(gpa + 0x123, &[(gib & 0xff) as u8]).unwrap();
        touched += 1;
    }
    for gib in [0u64, 5, 1000] {
        assert_eq!(
            read(&mem, (gib << 30) + 0x123, 1).unwrap(),
            [(gib & 0xff) as u8]
        );
    }
    let sparse = status_kb("VmRSS");
    println!("after touching {touched} pages across the guest: VmRSS {sparse} kB");
    assert!(sparse < before + 32 * MIB_KB, "{before} -> {sparse} kB");

    // Touching 64 MiB makes it resident.
    mem.fill_at(0x1000_0000, 0x5A, 64 << 20).unwrap();
    let dense = status_kb("VmRSS");
    println!("after filling 64 MiB: VmRSS {dense} kB");
    assert!(dense >= sparse + 60 * MIB_KB, "{sparse} -> {dense} kB");
    block_on(mgr.close());
}

/// Descriptors, mapping lines and threads of this process.
fn process_resources() -> (usize, usize, usize) {
    let count = |path: &str| std::fs::read_dir(path).unwrap().count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count();
    (count("/proc/self/fd"), maps, count("/proc/self/task"))
}

/// Builds a manager, uses every part of it, and lets it go (with `close`, or by dropping it).
fn use_and_release_a_manager(close: bool) {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    let mem = memory(&mgr);
    mem.write_at(0x1000, b"x").unwrap();
    let locked = mem.lock_gpns(false, &[0xa1]).unwrap();
    set(&mgr, VGA, RamVisibility::Unmapped);
    let (control, region) = mgr
        .device_memory_mapper()
        .new_region(0x2000, "dev".into())
        .unwrap();
    let object = object_with(b"dev", 0x2000);
    block_on(region.map(0, &object, 0, 0x2000, true)).unwrap();
    block_on(control.map_to_guest(0xa0000, true)).unwrap();
    assert_eq!(read(&mem, 0xa0000, 3).unwrap(), b"dev");
    drop((locked, control, region, object));
    if close {
        block_on(mgr.close());
    } else {
        drop(mgr);
    }
    drop((mem, partition));
}

#[test]
fn teardown_releases_threads_descriptors_and_mappings() {
    if !isolated("teardown_releases_threads_descriptors_and_mappings") {
        return;
    }
    use_and_release_a_manager(true);
    let before = process_resources();
    for _ in 0..200 {
        use_and_release_a_manager(true);
    }
    let after_close = process_resources();
    println!(
        "fds, maps lines, threads: before {before:?}, after 200 closed managers {after_close:?}"
    );
    assert_eq!(after_close, before);

    // Dropped managers stop asynchronously: after each, wait for the figures to come back.
    // (One at a time, so that glibc's per-thread caches — malloc arenas, thread stacks — stay
    // the size the sequential closes needed.)
    for round in 0..200 {
        use_and_release_a_manager(false);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut after_drop = process_resources();
        while after_drop != before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
            after_drop = process_resources();
        }
        if after_drop != before {
            println!("{}", std::fs::read_to_string("/proc/self/maps").unwrap());
        }
        assert_eq!(after_drop, before, "dropped manager {round}");
    }
    println!("after 200 dropped managers {:?}", process_resources());
}

#[test]
fn shared_backing_rebuilds_the_memory_in_a_child_process() {
    const VAR: &str = "MEMBACKING_BACKING_FD";
    if let Ok(fd) = std::env::var(VAR) {
        // The child: rebuild the guest memory from the inherited descriptor.
        let fd: i32 = fd.parse().unwrap();
        let object = sparse_mmap::mappable_from_raw_fd(fd).unwrap();
        let backing = SharedMemoryBacking::from_mappable(object);
        let mgr = build(
            GuestMemoryBuilder::new().existing_backing(Some(backing)),
            &l1(),
        );
        let mem = memory(&mgr);
        assert_eq!(read(&mem, 0x2000, 6).unwrap(), b"parent");
        mem.write_at(0x3FFF_0000, b"child").unwrap();
        block_on(mgr.close());
        return;
    }
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let mem = memory(&mgr);
    mem.write_at(0x2000, b"parent").unwrap();
    let backing = mgr.shared_memory_backing().unwrap();
    // The child inherits a duplicate as its standard input (the original is close-on-exec).
    let inherited = backing.as_fd().try_clone_to_owned().unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "memory_manager::tests::shared_backing_rebuilds_the_memory_in_a_child_process",
            "--exact",
            "--nocapture",
        ])
        .env(VAR, "0")
        .stdin(inherited)
        .output()
        .unwrap();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(read(&mem, 0x3FFF_0000, 5).unwrap(), b"child");
}

// ----- concurrency -----

/// Whether an access error is one of the coded outcomes a concurrent visibility or device
/// change may cause: `OutOfRange` with a `NoMapping` or `ReadOnlyMapping` cause.
fn is_coded_refusal(error: &GuestMemoryError) -> bool {
    error.kind() == GuestMemoryErrorKind::OutOfRange
        && std::error::Error::source(error)
            .is_some_and(|source| source.is::<NoMapping>() || source.is::<crate::ReadOnlyMapping>())
}

#[test]
fn concurrent_accesses_survive_visibility_and_device_churn() {
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    const WORKERS: u64 = 4;
    const STABLE_BASE: u64 = 0x100_0000;
    const STABLE_LEN: usize = 0x10_0000;
    const DEVICE_GPA: u64 = 0xD000_0000;

    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    let mem = memory(&mgr);
    let stop = Arc::new(AtomicBool::new(false));
    let coded_errors = Arc::new(AtomicU64::new(0));
    let device_object = object_with(&pattern(0x33, 0x4000), 0x4000);

    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let mem = mem.clone();
            let stop = stop.clone();
            let coded_errors = coded_errors.clone();
            std::thread::spawn(move || {
                let base = STABLE_BASE + worker * STABLE_LEN as u64;
                let mut round = 0u8;
                let mut checksum = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Memory that stays mapped: every access succeeds and reads back.
                    let data = pattern(
                        round.wrapping_add(u8::try_from(worker).unwrap()),
                        STABLE_LEN,
                    );
                    mem.write_at(base, &data).unwrap();
                    assert_eq!(read(&mem, base, STABLE_LEN).unwrap(), data);
                    checksum = data.iter().map(|&byte| u64::from(byte)).sum();
                    // Memory that comes and goes: success, or a coded error, never a crash.
                    for gpa in [0xa0000, 0xa8000, 0xc0000, DEVICE_GPA, DEVICE_GPA + 0x2000] {
                        let outcomes = [
                            read(&mem, gpa, 0x100).map(drop),
                            mem.write_at(gpa + 0x10, &[round]),
                        ];
                        for outcome in outcomes {
                            if let Err(error) = outcome {
                                assert!(is_coded_refusal(&error), "{error}: {:?}", error);
                                coded_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    // A locked page stays readable while locked, whatever the churn does.
                    if let Ok(locked) = mem.lock_gpns(false, &[0xa4]) {
                        let mut byte = [0u8; 1];
                        for _ in 0..4 {
                            locked.read_at(0, 0x10, &mut byte).unwrap();
                            read(&mem, 0xa4000, 16).unwrap();
                            std::thread::yield_now();
                        }
                    }
                    round = round.wrapping_add(1);
                }
                (base, checksum, round)
            })
        })
        .collect();

    let control = mgr.ram_visibility_control();
    let (window, region) = mgr
        .device_memory_mapper()
        .new_region(0x4000, "dev".into())
        .unwrap();
    let start = std::time::Instant::now();
    let mut changes = 0;
    while changes < 300 || start.elapsed() < std::time::Duration::from_millis(300) {
        let step = changes % 6;
        match step {
            0 => block_on(control.set_ram_visibility(VGA, RamVisibility::Unmapped)).unwrap(),
            1 => block_on(control.set_ram_visibility(PAM0, RamVisibility::ReadOnly)).unwrap(),
            2 => {
                block_on(region.map(0, &device_object, 0, 0x2000, true)).unwrap();
                block_on(window.map_to_guest(DEVICE_GPA, true)).unwrap();
            }
            3 => block_on(control.set_ram_visibility(VGA, RamVisibility::ReadWrite)).unwrap(),
            4 => block_on(control.set_ram_visibility(PAM0, RamVisibility::ReadWrite)).unwrap(),
            _ => {
                block_on(window.unmap_from_guest());
                block_on(region.unmap(0, 0x2000)).unwrap();
            }
        }
        changes += 1;
        if changes > 20_000 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut rounds = 0u64;
    for worker in workers {
        let (base, checksum, round) = worker.join().unwrap();
        rounds += u64::from(round);
        // The last pattern written is intact.
        let data = read(&mem, base, STABLE_LEN).unwrap();
        assert_eq!(
            data.iter().map(|&byte| u64::from(byte)).sum::<u64>(),
            checksum
        );
    }
    println!(
        "{changes} changes, {rounds} worker rounds, {} coded errors",
        coded_errors.load(Ordering::Relaxed)
    );
    // The partition holds exactly the active regions: replay its log.
    let mut mapped: std::collections::BTreeMap<u64, u64> = Default::default();
    for call in partition.log() {
        match call.op {
            RecordedOp::Map => {
                assert!(mapped.insert(call.gpa, call.size).is_none(), "{call}");
            }
            RecordedOp::Unmap => {
                mapped.retain(|&gpa, &mut size| {
                    !(gpa >= call.gpa && gpa + size <= call.gpa + call.size)
                });
            }
            _ => {}
        }
    }
    let active: std::collections::BTreeMap<u64, u64> = snapshot(&mgr)
        .regions
        .iter()
        .filter(|region| region.active)
        .map(|region| (region.range.start(), region.range.len()))
        .collect();
    assert_eq!(mapped, active);
}

// ----- attaching partitions through the runtime's attach -----

fn attach_result(
    mgr: &GuestMemoryManager,
    vtl: Vtl,
    partition: &Arc<RecordingPartition>,
) -> Result<(), PartitionAttachError> {
    let partition: Arc<dyn PartitionMemoryMap> = partition.clone();
    block_on(mgr.attach_partition(vtl, &partition, None))
}

#[test]
fn attach_maps_regions_alias_first() {
    let mgr = build(GuestMemoryBuilder::new(), &l2());
    let partition = attach(&mgr, Vtl::Vtl0);
    assert_eq!(
        partition.log(),
        [
            C::map(0, 0xC000_0000, true, true, 0),
            C::map(0x1_0000_0000, 0x4000_0000, true, true, 0x1_0000_0000)
        ]
    );
    // The VA was populated before the partition mapped it (I5).
    assert_eq!(
        mgr.va_mapper().mapped_ranges(),
        [
            (r(0, 0xC000_0000), true),
            (r(0x1_0000_0000, 0x1_4000_0000), true)
        ]
    );

    let mgr = build(
        GuestMemoryBuilder::new().vtl0_alias_map(Some(0x1_0000_0000)),
        &l1(),
    );
    let vtl2 = attach(&mgr, Vtl::Vtl2);
    assert_eq!(
        vtl2.log(),
        [
            C::map(0x1_0000_0000, GIB, true, true, 0),
            C::map(0, GIB, true, true, 0)
        ]
    );
    let vtl0 = attach(&mgr, Vtl::Vtl0);
    assert_eq!(vtl0.log(), [C::map(0, GIB, true, true, 0)]);
    let snap = snapshot(&mgr);
    assert_eq!(
        snap.partitions
            .iter()
            .map(|info| info.offset)
            .collect::<Vec<_>>(),
        [0x1_0000_0000, 0, 0]
    );
}

#[test]
fn prefetch_and_pin_follow_map() {
    let mgr = build(
        GuestMemoryBuilder::new()
            .prefetch_ram(true)
            .pin_mappings(true),
        &l1(),
    );
    let partition = recorder(&mgr);
    partition.fail_on(RecordedOp::Prefetch, 0);
    attach_result(&mgr, Vtl::Vtl0, &partition).unwrap();
    assert_eq!(
        partition.log(),
        [
            C::map(0, GIB, true, true, 0),
            C::prefetch(0, GIB).failed(),
            C::pin(0, GIB)
        ]
    );
}

#[test]
fn pin_failure_discards_the_partition_mapper() {
    let mgr = build(GuestMemoryBuilder::new().pin_mappings(true), &l1());
    let window_len = mgr.va_window_len();
    let partition = recorder(&mgr);
    partition.fail_on(RecordedOp::Pin, 0);
    let error = attach_result(&mgr, Vtl::Vtl0, &partition).unwrap_err();
    assert!(
        matches!(
            error,
            PartitionAttachError::PartitionMapper(PartitionMapperError::Pin(_))
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "failed to attach partition to memory manager"
    );
    assert_eq!(
        std::error::Error::source(&error).unwrap().to_string(),
        "failed to pin range to partition"
    );
    assert_eq!(
        partition.take_log(),
        [
            C::map(0, GIB, true, true, 0),
            C::pin(0, GIB).failed(),
            C::unmap(0, GIB),
            C::unmap(0, window_len)
        ]
    );
    set(&mgr, L1_RAM, RamVisibility::Unmapped);
    assert!(partition.log().is_empty());
    assert!(snapshot(&mgr).partitions.is_empty());
}

#[test]
fn failed_attach_keeps_only_the_alias_mapper() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let window_len = mgr.va_window_len();
    let partition = recorder(&mgr);
    partition.fail_on(RecordedOp::Map, 0xa0000);
    let error = attach_result(&mgr, Vtl::Vtl0, &partition).unwrap_err();
    assert!(
        matches!(
            error,
            PartitionAttachError::PartitionMapper(PartitionMapperError::Map(_))
        ),
        "{error:?}"
    );
    assert_eq!(
        partition.take_log(),
        [
            C::map(0, 0xa0000, true, true, 0),
            C::map(0xa0000, 0x20000, true, true, 0xa0000).failed(),
            C::unmap(0, window_len)
        ]
    );

    let mgr = build(
        GuestMemoryBuilder::new().vtl0_alias_map(Some(0x1_0000_0000)),
        &l1(),
    );
    let window_len = mgr.va_window_len();
    let partition = recorder(&mgr);
    partition.fail_on(RecordedOp::Map, 0);
    let error = attach_result(&mgr, Vtl::Vtl2, &partition).unwrap_err();
    assert!(matches!(
        error,
        PartitionAttachError::PartitionMapper(PartitionMapperError::Map(_))
    ));
    assert_eq!(
        partition.take_log(),
        [
            C::map(0x1_0000_0000, GIB, true, true, 0),
            C::map(0, GIB, true, true, 0).failed(),
            C::unmap(0, window_len)
        ]
    );
    set(&mgr, L1_RAM, RamVisibility::Unmapped);
    assert_eq!(partition.take_log(), [C::unmap(0x1_0000_0000, GIB)]);
}

/// An x86 L1 manager with the VTL0 alias map at `0x1_0000_0000`.
fn x86_l1_with_alias() -> GuestMemoryManager {
    build(
        GuestMemoryBuilder::new()
            .x86_legacy_support(true)
            .vtl0_alias_map(Some(0x1_0000_0000)),
        &l1(),
    )
}

fn already_attached(error: PartitionAttachError) -> AttachedTo {
    match error {
        PartitionAttachError::AlreadyAttached(to) => to,
        other => panic!("expected AlreadyAttached, got {other:?}"),
    }
}

#[test]
fn attaching_an_attached_partition_again_is_refused_before_any_call() {
    let mgr = x86_l1_with_alias();
    let partition = attach(&mgr, Vtl::Vtl0);
    let first = partition.take_log();
    assert_eq!(first.len(), 16);
    for vtl in [Vtl::Vtl0, Vtl::Vtl1, Vtl::Vtl2] {
        let error = attach_result(&mgr, vtl, &partition).unwrap_err();
        assert!(error.to_string().starts_with(
            "partition is already attached to this memory manager: a partition is attached once"
        ));
        assert_eq!(already_attached(error), AttachedTo::ThisManager);
        assert!(partition.log().is_empty(), "{vtl:?}: no map, no unmap");
    }
    // Every partition mapper still has exactly the active regions mapped (I4): one mapper, and
    // a visibility change reaches it once.
    assert_eq!(snapshot(&mgr).partitions.len(), 1);
    set(&mgr, VGA, RamVisibility::Unmapped);
    assert_eq!(partition.take_log(), [C::unmap(0xa0000, 0x20000)]);
}

#[test]
fn a_partition_attached_to_another_manager_is_refused_until_that_manager_closes() {
    let a = build(GuestMemoryBuilder::new(), &l1());
    let b = build(GuestMemoryBuilder::new(), &l1());
    let a_window = a.va_window_len();
    let partition = attach(&a, Vtl::Vtl0);
    partition.clear_log();
    let error = attach_result(&b, Vtl::Vtl0, &partition).unwrap_err();
    assert!(error
        .to_string()
        .starts_with("partition is already attached to another memory manager"));
    assert_eq!(already_attached(error), AttachedTo::AnotherManager);
    assert!(partition.log().is_empty());
    assert!(snapshot(&b).partitions.is_empty());
    // A's closing discards its mapper and releases the partition.
    block_on(a.close());
    assert_eq!(partition.take_log(), [C::unmap(0, a_window)]);
    attach_result(&b, Vtl::Vtl0, &partition).unwrap();
    assert_eq!(partition.log().len(), 1);
    assert_eq!(snapshot(&b).partitions.len(), 1);
}

#[test]
fn an_attach_that_registered_no_mapper_releases_the_partition() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let partition = recorder(&mgr);
    let dyn_partition: Arc<dyn PartitionMemoryMap> = partition.clone();
    let unsupported =
        block_on(mgr.attach_partition(Vtl::Vtl0, &dyn_partition, Some(RemoteProcess(1))));
    assert!(matches!(
        unsupported,
        Err(PartitionAttachError::Unsupported)
    ));
    partition.fail_on(RecordedOp::Map, 0xa0000);
    attach_result(&mgr, Vtl::Vtl0, &partition).unwrap_err();
    partition.clear_failures();
    partition.clear_log();
    attach_result(&mgr, Vtl::Vtl0, &partition).unwrap();
    assert_eq!(partition.log().len(), 16);
    // A claim dropped unused releases the partition too; a claim is only good for its manager.
    let fresh: Arc<dyn PartitionMemoryMap> = recorder(&mgr);
    drop(mgr.claim_partition(&fresh).unwrap());
    let other = build(GuestMemoryBuilder::new(), &l1());
    let claim = other.claim_partition(&fresh).unwrap();
    let error = block_on(mgr.attach_claimed_partition(Vtl::Vtl0, claim, None)).unwrap_err();
    assert_eq!(already_attached(error), AttachedTo::AnotherManager);
    block_on(mgr.attach_partition(Vtl::Vtl0, &fresh, None)).unwrap();
}

#[test]
fn a_vtl2_attach_that_failed_after_the_alias_keeps_the_partition_attached() {
    let mgr = build(
        GuestMemoryBuilder::new().vtl0_alias_map(Some(0x1_0000_0000)),
        &l1(),
    );
    let window_len = mgr.va_window_len();
    let partition = recorder(&mgr);
    partition.fail_on(RecordedOp::Map, 0);
    attach_result(&mgr, Vtl::Vtl2, &partition).unwrap_err();
    // Scenario 57's log is unchanged.
    assert_eq!(
        partition.take_log(),
        [
            C::map(0x1_0000_0000, GIB, true, true, 0),
            C::map(0, GIB, true, true, 0).failed(),
            C::unmap(0, window_len)
        ]
    );
    // The alias mapper is registered, so the partition stays attached: a retry would map the
    // alias a second time, and its own failure would unmap the surviving alias mapping.
    partition.clear_failures();
    let error = attach_result(&mgr, Vtl::Vtl2, &partition).unwrap_err();
    assert_eq!(already_attached(error), AttachedTo::ThisManager);
    assert!(partition.log().is_empty());
    set(&mgr, L1_RAM, RamVisibility::Unmapped);
    assert_eq!(partition.take_log(), [C::unmap(0x1_0000_0000, GIB)]);
}

#[test]
fn a_dropped_partition_gets_no_calls() {
    let mgr = build(GuestMemoryBuilder::new().x86_legacy_support(true), &l1());
    let partition = attach(&mgr, Vtl::Vtl0);
    let log = partition.log_handle();
    log.clear_log();
    drop(partition);
    set(&mgr, VGA, RamVisibility::Unmapped);
    set(&mgr, VGA, RamVisibility::ReadWrite);
    assert!(log.log().is_empty());
}

#[test]
fn visibility_reaches_the_alias_then_the_primary_mapping() {
    let mgr = x86_l1_with_alias();
    let partition = attach(&mgr, Vtl::Vtl2);
    partition.clear_log();
    set(&mgr, VGA, RamVisibility::Unmapped);
    assert_eq!(
        partition.take_log(),
        [C::unmap(0x1_000a_0000, 0x20000), C::unmap(0xa0000, 0x20000)]
    );
}

// ----- dry runs -----

/// The partition calls of a plan for partition 0, as a recorder would log them.
fn planned_calls(preview: &PlanPreview) -> Vec<C> {
    preview
        .plan
        .op_list()
        .filter_map(|op| match *op {
            crate::region_manager::PlanOp::Map {
                partition: 0,
                va_offset,
                gpa,
                size,
                writable,
                exec,
            } => Some(C::map(gpa, size, writable, exec, va_offset)),
            crate::region_manager::PlanOp::Unmap {
                partition: 0,
                gpa,
                size,
            } => Some(C::unmap(gpa, size)),
            crate::region_manager::PlanOp::Prefetch {
                partition: 0,
                gpa,
                size,
            } => Some(C::prefetch(gpa, size)),
            crate::region_manager::PlanOp::Pin {
                partition: 0,
                gpa,
                size,
            } => Some(C::pin(gpa, size)),
            _ => None,
        })
        .collect()
}

#[test]
fn dry_runs_predict_the_calls_and_change_nothing() {
    let dev = vga_device();
    let before = snapshot(&dev.mgr);
    let preview = block_on(dev.mgr.plan_ram_visibility(VGA, RamVisibility::Unmapped)).unwrap();
    assert_eq!(snapshot(&dev.mgr), before);
    assert!(dev.partition.log().is_empty());
    let vga_view = preview
        .flat_view
        .iter()
        .find(|entry| entry.range.start() == 0xa0000)
        .unwrap();
    assert_eq!(vga_view.region.as_ref().unwrap().name.as_ref(), "vram");
    set(&dev.mgr, VGA, RamVisibility::Unmapped);
    assert_eq!(dev.partition.take_log(), planned_calls(&preview));

    let preview = block_on(dev.control.plan_map_to_guest(0xD000_0000, true)).unwrap();
    assert_eq!(dev.control.gpa(), Some(0xa0000));
    block_on(dev.control.map_to_guest(0xD000_0000, true)).unwrap();
    assert_eq!(dev.partition.take_log(), planned_calls(&preview));
    let preview = block_on(dev.control.plan_unmap_from_guest()).unwrap();
    block_on(dev.control.unmap_from_guest());
    assert_eq!(dev.partition.take_log(), planned_calls(&preview));

    let error = block_on(dev.control.plan_map_to_guest(0x9f000, true)).unwrap_err();
    assert!(matches!(
        region_error(&error),
        RegionManagerError::OverlapError(_)
    ));
    let error = block_on(
        dev.mgr
            .plan_ram_visibility(r(0, 0x1000), RamVisibility::ReadOnly),
    )
    .unwrap_err();
    assert!(matches!(error, RegionManagerError::InvalidRamRegion(_)));
}

#[test]
fn dry_runs_of_window_mappings_and_attach_predict_the_calls() {
    let dev = vga_device();
    set(&dev.mgr, VGA, RamVisibility::Unmapped);
    dev.partition.clear_log();
    // A mapping added to the surfaced window, then removed.
    let object = object_with(&pattern(0x21, 0x10000), 0x10000);
    let before = snapshot(&dev.mgr);
    let preview = block_on(dev.region.plan_map(0x10000, &object, 0, 0x10000, false)).unwrap();
    assert_eq!(snapshot(&dev.mgr), before, "planning changes nothing");
    assert!(dev.partition.log().is_empty());
    block_on(dev.region.map(0x10000, &object, 0, 0x10000, false)).unwrap();
    assert_eq!(dev.partition.take_log(), planned_calls(&preview));
    let preview = block_on(dev.region.plan_unmap(0x10000, 0x10000)).unwrap();
    block_on(dev.region.unmap(0x10000, 0x10000)).unwrap();
    assert_eq!(dev.partition.take_log(), planned_calls(&preview));
    // Errors are planned as they would happen.
    assert!(block_on(dev.region.plan_unmap(0x8000, 0x10000)).is_err());
    // Attaching a second partition: its index is 1, every active region is mapped into it.
    let second = recorder(&dev.mgr);
    let second_dyn: Arc<dyn PartitionMemoryMap> = second.clone();
    let preview = block_on(dev.mgr.plan_attach_partition(Vtl::Vtl0, &second_dyn)).unwrap();
    assert!(
        preview
            .steps
            .iter()
            .all(|step| step.partition.is_none_or(|index| index == 1)),
        "every step calls the new partition, index 1"
    );
    block_on(dev.mgr.attach_partition(Vtl::Vtl0, &second_dyn, None)).unwrap();
    // Attached now: its dry run is refused as a second attach would be.
    let refused = block_on(dev.mgr.plan_attach_partition(Vtl::Vtl0, &second_dyn)).unwrap_err();
    assert_eq!(already_attached(refused), AttachedTo::ThisManager);
    let planned: Vec<C> = preview
        .plan
        .op_list()
        .filter_map(|op| match *op {
            crate::region_manager::PlanOp::Map {
                partition: 1,
                va_offset,
                gpa,
                size,
                writable,
                exec,
            } => Some(C::map(gpa, size, writable, exec, va_offset)),
            _ => None,
        })
        .collect();
    assert!(!planned.is_empty());
    assert_eq!(second.log(), planned);
}

#[test]
fn prefetch_progress_reports_every_prefetched_range_up_to_the_total() {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<(u64, u64)>::new()));
    let sink = seen.clone();
    let progress: crate::PrefetchProgress = Arc::new(move |report: &crate::PrefetchReport| {
        assert_eq!(report.failure, None);
        sink.lock().push((report.done, report.total))
    });
    let mgr = build(
        GuestMemoryBuilder::new()
            .x86_legacy_support(true)
            .prefetch_ram(true)
            .prefetch_progress(Some(progress)),
        &l1(),
    );
    assert!(
        seen.lock().is_empty(),
        "nothing is prefetched before a partition is attached"
    );
    let partition = attach(&mgr, Vtl::Vtl0);
    let prefetched: u64 = partition
        .log()
        .iter()
        .filter(|call| call.op == virt::RecordedOp::Prefetch)
        .map(|call| call.size)
        .sum();
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 16, "one report per prefetched RAM region");
    assert!(
        seen.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "done grows"
    );
    assert!(seen.iter().all(|&(_, total)| total == prefetched));
    assert_eq!(seen.last().copied(), Some((prefetched, prefetched)));
    assert_eq!(prefetched, GIB);
}

#[test]
fn a_failed_prefetch_is_reported_to_progress_and_inspect_and_is_not_fatal() {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<crate::PrefetchReport>::new()));
    let sink = seen.clone();
    let progress: crate::PrefetchProgress =
        Arc::new(move |report: &crate::PrefetchReport| sink.lock().push(report.clone()));
    let mgr = build(
        GuestMemoryBuilder::new()
            .prefetch_ram(true)
            .prefetch_progress(Some(progress)),
        &l1(),
    );
    let partition = recorder(&mgr);
    partition.fail_on(virt::RecordedOp::Prefetch, 0);
    let dyn_partition: Arc<dyn PartitionMemoryMap> = partition.clone();
    block_on(mgr.attach_partition(Vtl::Vtl0, &dyn_partition, None))
        .expect("a failed prefetch does not fail the attach");
    let seen = seen.lock().clone();
    let failed: Vec<_> = seen.iter().filter_map(|r| r.failure.clone()).collect();
    assert_eq!(failed.len(), 1, "{seen:?}");
    assert_eq!(failed[0].partition, 0);
    assert_eq!(failed[0].range, r(0, GIB));
    assert_eq!(
        failed[0].errno, None,
        "the recording partition's error is no OS error"
    );
    assert!(!failed[0].message.is_empty());
    // The failed bytes count as done: the last report reaches the total.
    let last = seen.last().unwrap();
    assert_eq!((last.done, last.total), (GIB, GIB));
    let snapshot = block_on(mgr.inspect()).unwrap();
    assert_eq!(snapshot.prefetch_failures.count, 1);
    assert_eq!(snapshot.prefetch_failures.recent, failed);
    let json = serde_json::to_value(&snapshot).unwrap();
    let recent = &json["prefetch_failures"]["recent"][0];
    assert_eq!(recent["range"]["end"], GIB);
    assert!(recent["errno"].is_null());
}

#[test]
fn inspect_keeps_the_most_recent_prefetch_failures() {
    let mgr = build(GuestMemoryBuilder::new().prefetch_ram(true), &l1());
    // Each attach of a fresh partition that fails its prefetch adds one failure.
    let attempts = crate::memory_manager::region_actor::PREFETCH_FAILURES_KEPT + 3;
    let mut partitions = Vec::new();
    for _ in 0..attempts {
        let partition = recorder(&mgr);
        partition.fail_on(virt::RecordedOp::Prefetch, 0);
        let dyn_partition: Arc<dyn PartitionMemoryMap> = partition.clone();
        block_on(mgr.attach_partition(Vtl::Vtl0, &dyn_partition, None)).unwrap();
        partitions.push(partition);
    }
    let snapshot = block_on(mgr.inspect()).unwrap();
    assert_eq!(snapshot.prefetch_failures.count, attempts as u64);
    let recent = &snapshot.prefetch_failures.recent;
    assert_eq!(
        recent.len(),
        crate::memory_manager::region_actor::PREFETCH_FAILURES_KEPT
    );
    // Oldest first: the first three were dropped.
    assert_eq!(recent[0].partition, 3);
    assert_eq!(recent.last().unwrap().partition, attempts - 1);
}

#[test]
fn device_windows_may_not_overlap_private_ram() {
    let mgr = build(GuestMemoryBuilder::new().private_memory(true), &l1());
    let (control, _region) = mgr
        .device_memory_mapper()
        .new_region(0x2000, "dev".into())
        .unwrap();
    block_on(control.map_to_guest(0xD000_0000, true)).unwrap();
    let error = block_on(control.map_to_guest(0x3FFF_F000, true)).unwrap_err();
    assert!(
        matches!(
            region_error(&error),
            RegionManagerError::RegionOverlapsPrivateRam { range, .. } if *range == r(0x3FFF_F000, 0x4000_1000)
        ),
        "{error:?}"
    );
    // Like any failure of region creation, the earlier placement is gone.
    assert_eq!(control.gpa(), None);
    assert_eq!(snapshot(&mgr).regions.len(), 1);
}

#[test]
fn public_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GuestMemoryManager>();
    send_sync::<GuestMemoryClient>();
    send_sync::<RamVisibilityControl>();
    send_sync::<DeviceMemoryMapper>();
    send_sync::<MappableGuestMemory>();
    send_sync::<MappedMemoryRegion>();
    send_sync::<SharedMemoryBacking>();
    send_sync::<VaMapper>();
    send_sync::<GuestMemoryBuilder>();
    send_sync::<PlanPreview>();
}

/// A partition that panics when asked to map.
struct PanickingPartition;

impl PartitionMemoryMap for PanickingPartition {
    fn unmap_range(&self, _addr: u64, _size: u64) -> Result<(), virt::Error> {
        Ok(())
    }

    fn map_range(
        &self,
        _data: *mut u8,
        _size: usize,
        _addr: u64,
        _writable: bool,
        _exec: bool,
    ) -> Result<(), virt::Error> {
        panic!("a faulty partition");
    }
}

#[test]
fn a_panicking_partition_fails_its_attach_and_the_manager_survives() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let partition: Arc<dyn PartitionMemoryMap> = Arc::new(PanickingPartition);
    let error = block_on(mgr.attach_partition(Vtl::Vtl0, &partition, None)).unwrap_err();
    assert!(
        matches!(
            error,
            PartitionAttachError::PartitionMapper(PartitionMapperError::Map(_))
        ),
        "{error:?}"
    );
    let good = attach(&mgr, Vtl::Vtl0);
    assert_eq!(good.log(), [C::map(0, GIB, true, true, 0)]);
}

#[test]
fn the_footprint_counts_the_memfd_the_threads_and_the_reservations() {
    let shared = build(GuestMemoryBuilder::new(), &l1());
    assert_eq!(
        shared.footprint(),
        ResourceFootprint {
            descriptors: 1,
            threads: 2,
            reservations: 1
        }
    );
    let private = build(GuestMemoryBuilder::new().private_memory(true), &l1());
    assert_eq!(
        private.footprint(),
        ResourceFootprint {
            descriptors: 0,
            threads: 2,
            reservations: 2
        }
    );
    block_on(shared.close());
    block_on(private.close());
}

#[test]
fn check_access_names_the_hole_of_a_large_range_before_any_copy() {
    // 4 GiB of RAM around the gap [3 GiB, 4 GiB): a 5 GiB read from 0 crosses the gap.
    let mgr = build(GuestMemoryBuilder::new(), &l2());
    let mem = memory(&mgr);
    mem.check_access(0, 3 * GIB, GuestMemoryOperation::Read)
        .unwrap();
    mem.check_access(4 * GIB, GIB, GuestMemoryOperation::Read)
        .unwrap();
    let error = mem
        .check_access(0, 5 * GIB, GuestMemoryOperation::Read)
        .unwrap_err();
    assert_eq!(error.gpa(), Some(MMIO_GAP.start()));
    assert_eq!(no_mapping(&error), MMIO_GAP, "{error}");
    assert_eq!(error.range(), Some(0..5 * GIB));
    // Beyond the address space: OutOfRange without asking anyone.
    let beyond = mem
        .check_access(0, 1 << 40, GuestMemoryOperation::Read)
        .unwrap_err();
    assert_eq!(beyond.kind(), GuestMemoryErrorKind::OutOfRange);
    // A view of the RAM after the gap reports the hole in its own addresses.
    let view = mem.subrange(2 * GIB, 3 * GIB, false).unwrap();
    let error = view
        .check_access(0, 3 * GIB, GuestMemoryOperation::Read)
        .unwrap_err();
    assert_eq!(error.gpa(), Some(GIB));
    drop((view, mem));
    block_on(mgr.close());

    // Private RAM is mapped by the kernel: nothing to ask, only the bounds are checked.
    let private = build(GuestMemoryBuilder::new().private_memory(true), &l2());
    let mem = memory(&private);
    mem.check_access(0, 3 * GIB, GuestMemoryOperation::Read)
        .unwrap();
    assert!(mem
        .check_access(0, 1 << 40, GuestMemoryOperation::Read)
        .is_err());
    drop(mem);
    block_on(private.close());
}

#[test]
fn requests_are_served_in_call_order_whenever_their_futures_are_polled() {
    let mgr = build(GuestMemoryBuilder::new(), &l1());
    let control = mgr.ram_visibility_control();
    let ram_active = |snapshot: &ManagerSnapshot| {
        snapshot
            .regions
            .iter()
            .any(|region| region.range == L1_RAM && region.active)
    };
    let inspect = mgr.inspect();
    let flat_view = mgr.flat_view();
    let plan = mgr.plan_ram_visibility(L1_RAM, RamVisibility::Unmapped);
    let hide = control.set_ram_visibility(L1_RAM, RamVisibility::Unmapped);
    // Polled in the reverse order of the calls: what was called before the change sees RAM.
    block_on(hide).unwrap();
    assert!(!block_on(plan).unwrap().steps.is_empty());
    assert!(block_on(flat_view)
        .unwrap()
        .iter()
        .any(|entry| entry.range.start() == 0 && entry.region.is_some()));
    assert!(ram_active(&block_on(inspect).unwrap()));
    // What is called after it sees the change.
    assert!(
        block_on(mgr.plan_ram_visibility(L1_RAM, RamVisibility::Unmapped))
            .unwrap()
            .steps
            .is_empty()
    );
    assert!(!ram_active(&snapshot(&mgr)));
    block_on(mgr.close());
}
