//! Tests of the region manager: RAM regions as the builder creates them, attaching partitions,
//! RAM visibility, device windows and priorities (driven through [`SyncRegionManager`] with
//! `RecordingPartition`s, partition logs compared exactly), the no-change-on-error rule, dry
//! runs, the cost of a change, and a randomized check of the invariants.

use super::*;
use crate::device_memory::DeviceWindow;
use crate::ram_visibility::RamRegionSpec;
use crate::ram_visibility::RamRegions;
use crate::ram_visibility::RamVisibility;
use memory_range::MemoryRange;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use virt::PartitionMemoryMap;
use virt::RecordedCall as C;
use virt::RecordedOp;
use virt::RecordingPartition;
use virt::Vtl;
use vm_topology::memory::MemoryLayout;

const VA_BASE: usize = 0x7f00_0000_0000;
const GIB: u64 = 0x4000_0000;
const MMIO_GAP: MemoryRange = MemoryRange::new(0xC000_0000..0x1_0000_0000);
const VGA: MemoryRange = MemoryRange::new(0xa0000..0xc0000);
const RW: MapParams = MapParams {
    writable: true,
    executable: true,
    prefetch: false,
};

type Obj = &'static str;
type Mapper = Box<dyn FnMut(MapperRequest<'_, Obj>) -> Result<(), virt::Error>>;
type Manager = SyncRegionManager<Obj, Mapper>;

fn r(start: u64, end: u64) -> MemoryRange {
    MemoryRange::new(start..end)
}

/// What the mapping-manager stand-in received.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Add(ActiveMapping<Obj>),
    Invalidate(MemoryRange),
    Populate(usize, MemoryRange),
}

fn add(range: MemoryRange, object: Obj, file_offset: u64, writable: bool, dma: bool) -> Event {
    Event::Add(ActiveMapping {
        range,
        object,
        file_offset,
        writable,
        dma_target: dma,
    })
}

/// A test VM: the synchronous manager, the mapper event log, the RAM regions.
struct Vm {
    mgr: Manager,
    events: Arc<Mutex<Vec<(u64, Event)>>>,
    ram: RamRegions,
    alias: Option<u64>,
    pin: bool,
}

impl Vm {
    fn empty(window_len: u64) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let mapper: Mapper = Box::new(move |request| {
            let event = match request {
                MapperRequest::AddMapping(mapping) => Event::Add(mapping.clone()),
                MapperRequest::Invalidate(range) => Event::Invalidate(range),
                MapperRequest::PopulateVa { partition, range } => Event::Populate(partition, range),
            };
            sink.lock()
                .unwrap()
                .push((virt::next_sequence_number(), event));
            Ok(())
        });
        Self {
            mgr: SyncRegionManager::new(window_len, VA_BASE, mapper),
            events,
            ram: RamRegions::new(),
            alias: None,
            pin: false,
        }
    }

    /// Builds like `GuestMemoryBuilder::build`: RAM regions from the layout, file-backed by
    /// object `"ram"` unless private.
    fn build(layout: &MemoryLayout, options: BuildOptions) -> Self {
        let specs: Vec<RamRegionSpec> =
            vm_topology::x86_legacy::x86_legacy_ram_ranges(layout, options.x86)
                .unwrap()
                .into_iter()
                .map(|region| RamRegionSpec {
                    range: region.range,
                    file_offset: region.file_offset,
                })
                .collect();
        let max_addr = layout
            .end_of_ram_or_mmio()
            .max(layout.vtl2_range().map_or(0, |range| range.end()));
        let mut vm = Self::empty(max_addr.next_multiple_of(GIB));
        let object = (!options.private).then_some(&"ram");
        vm.ram = RamRegions::create(
            &mut vm.mgr,
            &specs,
            object,
            options.prefetch && !options.private,
        )
        .unwrap();
        vm.alias = options.alias;
        vm.pin = options.pin;
        vm.take_events();
        vm
    }

    fn l1(options: BuildOptions) -> Self {
        Self::build(&layout(GIB, None), options)
    }

    fn l2(options: BuildOptions) -> Self {
        Self::build(&layout(4 * GIB, None), options)
    }

    fn window_len(&self) -> u64 {
        self.mgr.state().va_window_len()
    }

    /// `attach_partition(vtl, partition)`: the alias mapper first for VTL2, then offset 0.
    fn attach(
        &mut self,
        vtl: Vtl,
        partition: &Arc<RecordingPartition>,
    ) -> Result<(), RegionManagerError> {
        let partition: Arc<dyn PartitionMemoryMap> = partition.clone();
        if vtl == Vtl::Vtl2 {
            if let Some(alias) = self.alias {
                self.mgr.add_partition(&partition, alias, self.pin)?;
            }
        }
        self.mgr.add_partition(&partition, 0, self.pin)?;
        Ok(())
    }

    fn attach_new(&mut self, vtl: Vtl) -> Arc<RecordingPartition> {
        let partition = Arc::new(RecordingPartition::with_va_base(VA_BASE));
        self.attach(vtl, &partition).unwrap();
        partition
    }

    fn set(
        &mut self,
        range: MemoryRange,
        visibility: RamVisibility,
    ) -> Result<(), RegionManagerError> {
        self.ram
            .set_ram_visibility(&mut self.mgr, range, visibility)
    }

    fn events_with_sequence(&self) -> Vec<(u64, Event)> {
        self.events.lock().unwrap().clone()
    }

    fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
            .into_iter()
            .map(|(_, event)| event)
            .collect()
    }

    fn region(&self, range: MemoryRange) -> &Region<Obj> {
        self.mgr
            .state()
            .regions()
            .find(|region| region.range() == range)
            .unwrap()
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(self.mgr.state())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct BuildOptions {
    x86: bool,
    prefetch: bool,
    pin: bool,
    private: bool,
    alias: Option<u64>,
}

const PLAIN: BuildOptions = BuildOptions {
    x86: false,
    prefetch: false,
    pin: false,
    private: false,
    alias: None,
};
const X86: BuildOptions = BuildOptions { x86: true, ..PLAIN };

fn layout(ram_size: u64, vtl2: Option<MemoryRange>) -> MemoryLayout {
    MemoryLayout::new(ram_size, &[MMIO_GAP], vtl2).unwrap()
}

/// Everything observable about a state, for "nothing changed" checks.
#[derive(Debug, PartialEq)]
struct Snapshot {
    regions: Vec<RegionInspect>,
    partitions: Vec<PartitionMapperInfo>,
    flat_view: Vec<FlatEntry<Obj>>,
}

fn snapshot(state: &RegionManagerState<Obj>) -> Snapshot {
    Snapshot {
        regions: state.regions().map(Region::inspect).collect(),
        partitions: state.partitions().to_vec(),
        flat_view: state.flat_view(),
    }
}

/// The active mapping set as the mapping manager would hold it (list order of regions).
fn active_mappings(state: &RegionManagerState<Obj>) -> Vec<(MemoryRange, Obj, u64, bool, bool)> {
    let mut mappings = Vec::new();
    for region in state.regions().filter(|region| region.is_active()) {
        let writable = region.params().is_some_and(|params| params.writable);
        for mapping in region.mappings() {
            mappings.push((
                r(
                    region.range().start() + mapping.range_in_region.start(),
                    region.range().start() + mapping.range_in_region.end(),
                ),
                mapping.object,
                mapping.file_offset,
                mapping.writable && writable,
                region.dma_target(),
            ));
        }
    }
    mappings
}

fn io_region_error(error: &io::Error) -> &RegionManagerError {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<RegionManagerError>())
        .expect("an io::Error wrapping a RegionManagerError")
}

// ----- RAM regions as the builder creates them -----

#[test]
fn x86_split_creates_sixteen_active_ram_regions() {
    let vm = Vm::l1(X86);
    let regions: Vec<&Region<Obj>> = vm.mgr.state().regions().collect();
    let mut expected = vec![r(0, 0xa0000), VGA];
    expected.extend((0..12).map(|i| r(0xc0000 + i * 0x4000, 0xc4000 + i * 0x4000)));
    expected.push(r(0xf0000, 0x100000));
    expected.push(r(0x100000, GIB));
    assert_eq!(
        regions
            .iter()
            .map(|region| region.range())
            .collect::<Vec<_>>(),
        expected
    );
    for region in regions {
        assert_eq!(region.name(), "ram");
        assert_eq!(region.priority(), RAM_PRIORITY);
        assert!(region.dma_target());
        assert!(region.is_active());
        assert_eq!(region.params(), Some(RW));
        let mappings: Vec<_> = region.mappings().collect();
        assert_eq!(mappings.len(), 1);
        assert_eq!(mappings[0].file_offset, region.range().start());
        assert_eq!(mappings[0].range_in_region, r(0, region.range().len()));
    }
    assert_eq!(vm.region(VGA).display_name(), "VGA window 0xa0000-0xc0000");
}

#[test]
fn x86_exactly_one_megabyte_has_fifteen_regions_and_attaches() {
    let mut vm = Vm::build(&layout(0x100000, None), X86);
    assert_eq!(vm.mgr.state().region_count(), 15);
    let partition = vm.attach_new(Vtl::Vtl0);
    let log = partition.take_log();
    assert_eq!(log.len(), 15);
    assert!(log
        .iter()
        .all(|call| call.op == RecordedOp::Map && call.size > 0));
    assert_eq!(log.last().unwrap().gpa, 0xf0000);
}

#[test]
fn dense_file_offsets() {
    let vm = Vm::l2(PLAIN);
    assert_eq!(
        active_mappings(vm.mgr.state()),
        [
            (r(0, 0xC000_0000), "ram", 0, true, true),
            (
                r(0x1_0000_0000, 0x1_4000_0000),
                "ram",
                0xC000_0000,
                true,
                true
            ),
        ]
    );
}

#[test]
fn vtl2_ram_region_is_last_and_controllable() {
    let vtl2 = r(0x2_0000_0000, 0x2_0400_0000);
    let mut vm = Vm::build(&layout(GIB, Some(vtl2)), PLAIN);
    let last = vm.mgr.state().regions().last().unwrap();
    assert_eq!(last.range(), vtl2);
    assert_eq!(last.mappings().next().unwrap().file_offset, 0x4000_0000);
    vm.set(vtl2, RamVisibility::Unmapped).unwrap();
    assert!(!vm.region(vtl2).is_active());
}

#[test]
fn private_ram_has_no_mappings_and_no_prefetch() {
    let mut vm = Vm::l1(BuildOptions {
        private: true,
        prefetch: true,
        ..PLAIN
    });
    assert!(active_mappings(vm.mgr.state()).is_empty());
    assert_eq!(vm.region(r(0, GIB)).params(), Some(RW));
    let partition = vm.attach_new(Vtl::Vtl0);
    assert_eq!(partition.take_log(), [C::map(0, GIB, true, true, 0)]);
    assert!(vm
        .take_events()
        .iter()
        .all(|event| matches!(event, Event::Populate(..))));
}

// ----- attaching partitions -----

#[test]
fn attach_vtl0_maps_every_ram_region() {
    let mut vm = Vm::l2(PLAIN);
    let partition = vm.attach_new(Vtl::Vtl0);
    assert_eq!(
        partition.log(),
        [
            C::map(0, 0xC000_0000, true, true, 0),
            C::map(0x1_0000_0000, GIB, true, true, 0x1_0000_0000),
        ]
    );
    // The VA is populated before each map (invariant I5).
    assert_eq!(
        vm.take_events(),
        [
            Event::Populate(0, r(0, 0xC000_0000)),
            Event::Populate(0, r(0x1_0000_0000, 0x1_4000_0000)),
        ]
    );
}

#[test]
fn attach_vtl2_with_alias_maps_alias_first() {
    let mut vm = Vm::l1(BuildOptions {
        alias: Some(0x1_0000_0000),
        ..PLAIN
    });
    let vtl2 = vm.attach_new(Vtl::Vtl2);
    assert_eq!(
        vtl2.log(),
        [
            C::map(0x1_0000_0000, GIB, true, true, 0),
            C::map(0, GIB, true, true, 0),
        ]
    );
    let vtl0 = vm.attach_new(Vtl::Vtl0);
    assert_eq!(vtl0.log(), [C::map(0, GIB, true, true, 0)]);
    assert_eq!(vtl2.log().len(), 2, "the first partition saw nothing new");
}

#[test]
fn prefetch_follows_map_and_its_failure_is_ignored() {
    let mut vm = Vm::l1(BuildOptions {
        prefetch: true,
        ..PLAIN
    });
    let partition = vm.attach_new(Vtl::Vtl0);
    assert_eq!(
        partition.log(),
        [C::map(0, GIB, true, true, 0), C::prefetch(0, GIB)]
    );

    let failing = Arc::new(RecordingPartition::with_va_base(VA_BASE));
    failing.fail_on(RecordedOp::Prefetch, 0);
    vm.attach(Vtl::Vtl0, &failing).unwrap();
    assert_eq!(
        failing.log(),
        [C::map(0, GIB, true, true, 0), C::prefetch(0, GIB).failed()]
    );
    assert_eq!(vm.mgr.state().partitions().len(), 2);
}

#[test]
fn pin_follows_map_and_prefetch() {
    let mut vm = Vm::l1(BuildOptions { pin: true, ..PLAIN });
    let partition = vm.attach_new(Vtl::Vtl0);
    assert_eq!(
        partition.log(),
        [C::map(0, GIB, true, true, 0), C::pin(0, GIB)]
    );

    let mut vm = Vm::l1(BuildOptions {
        pin: true,
        prefetch: true,
        ..PLAIN
    });
    let partition = vm.attach_new(Vtl::Vtl0);
    assert_eq!(
        partition.log(),
        [
            C::map(0, GIB, true, true, 0),
            C::prefetch(0, GIB),
            C::pin(0, GIB)
        ]
    );
}

#[test]
fn pin_failure_unmaps_and_discards_the_partition() {
    let mut vm = Vm::l1(BuildOptions { pin: true, ..PLAIN });
    let before = vm.snapshot();
    let partition = Arc::new(RecordingPartition::with_va_base(VA_BASE));
    partition.fail_on(RecordedOp::Pin, 0);
    let error = vm.attach(Vtl::Vtl0, &partition).unwrap_err();
    assert!(matches!(
        error,
        RegionManagerError::PartitionMapper(PartitionMapperError::Pin(_))
    ));
    assert_eq!(error.to_string(), "failed to pin range to partition");
    assert_eq!(
        partition.take_log(),
        [
            C::map(0, GIB, true, true, 0),
            C::pin(0, GIB).failed(),
            C::unmap(0, GIB),
            C::unmap(0, 0x1_0000_0000),
        ]
    );
    assert_eq!(vm.snapshot(), before, "a failed attach changes nothing");
    vm.set(r(0, GIB), RamVisibility::Unmapped).unwrap();
    assert!(partition.log().is_empty(), "later changes do not reach it");
}

#[test]
fn map_failure_mid_attach_discards_the_partition() {
    let mut vm = Vm::l1(X86);
    let partition = Arc::new(RecordingPartition::with_va_base(VA_BASE));
    partition.fail_on(RecordedOp::Map, 0xa0000);
    let error = vm.attach(Vtl::Vtl0, &partition).unwrap_err();
    assert!(matches!(
        error,
        RegionManagerError::PartitionMapper(PartitionMapperError::Map(_))
    ));
    assert_eq!(error.to_string(), "failed to map range to partition");
    assert_eq!(
        partition.take_log(),
        [
            C::map(0, 0xa0000, true, true, 0),
            C::map(0xa0000, 0x20000, true, true, 0xa0000).failed(),
            C::unmap(0, 0x1_0000_0000),
        ]
    );
    assert!(vm.mgr.state().partitions().is_empty());
}

#[test]
fn dead_partition_gets_no_calls() {
    let mut vm = Vm::l1(X86);
    let partition = vm.attach_new(Vtl::Vtl0);
    let log = partition.log_handle();
    log.clear_log();
    vm.take_events();
    drop(partition);
    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    vm.set(VGA, RamVisibility::ReadWrite).unwrap();
    assert!(log.log().is_empty());
    // No VA population for a gone partition either; invalidation still happens.
    assert_eq!(
        vm.take_events(),
        [Event::Invalidate(VGA), add(VGA, "ram", 0xa0000, true, true),]
    );

    // close() has the same effect while a strong reference is still held.
    let closed = vm.attach_new(Vtl::Vtl0);
    closed.clear_log();
    closed.close();
    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    assert!(closed.log().is_empty());
}

#[test]
fn failed_primary_attach_keeps_the_alias_mapper() {
    let mut vm = Vm::l1(BuildOptions {
        alias: Some(0x1_0000_0000),
        ..PLAIN
    });
    let partition = Arc::new(RecordingPartition::with_va_base(VA_BASE));
    partition.fail_on(RecordedOp::Map, 0);
    let error = vm.attach(Vtl::Vtl2, &partition).unwrap_err();
    assert!(matches!(
        error,
        RegionManagerError::PartitionMapper(PartitionMapperError::Map(_))
    ));
    assert_eq!(
        partition.take_log(),
        [
            C::map(0x1_0000_0000, GIB, true, true, 0),
            C::map(0, GIB, true, true, 0).failed(),
            C::unmap(0, 0x1_0000_0000),
        ]
    );
    vm.set(r(0, GIB), RamVisibility::Unmapped).unwrap();
    assert_eq!(partition.take_log(), [C::unmap(0x1_0000_0000, GIB)]);
}

#[test]
fn visibility_reaches_alias_then_primary() {
    let mut vm = Vm::l1(BuildOptions {
        alias: Some(0x1_0000_0000),
        ..X86
    });
    let partition = vm.attach_new(Vtl::Vtl2);
    partition.clear_log();
    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    assert_eq!(
        partition.take_log(),
        [C::unmap(0x1_000a_0000, 0x20000), C::unmap(0xa0000, 0x20000)]
    );
}

// ----- RAM visibility -----

#[test]
fn visibility_needs_an_exact_region() {
    let mut vm = Vm::l1(X86);
    let before = vm.snapshot();
    for range in [r(0xa0000, 0xb0000), r(0, 0x100000)] {
        let error = vm.set(range, RamVisibility::Unmapped).unwrap_err();
        assert!(
            matches!(error, RegionManagerError::InvalidRamRegion(InvalidRamRegion(bad)) if bad == range)
        );
        assert_eq!(
            error.to_string(),
            format!("{range} is not a controllable RAM range")
        );
    }
    assert_eq!(
        vm.set(r(0xa0000, 0xb0000), RamVisibility::ReadWrite)
            .unwrap_err()
            .to_string(),
        "0xa0000-0xb0000 is not a controllable RAM range"
    );
    assert_eq!(vm.snapshot(), before);

    let mut vm = Vm::l1(PLAIN);
    let error = vm.set(VGA, RamVisibility::Unmapped).unwrap_err();
    assert_eq!(
        error.to_string(),
        "0xa0000-0xc0000 is not a controllable RAM range"
    );
}

#[test]
fn vga_unmapped_then_restored() {
    let mut vm = Vm::l1(X86);
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.clear_log();
    vm.take_events();

    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    assert_eq!(partition.take_log(), [C::unmap(0xa0000, 0x20000)]);
    assert_eq!(vm.take_events(), [Event::Invalidate(VGA)]);
    assert!(!vm.region(VGA).is_active());
    assert_eq!(vm.region(VGA).params(), None);
    assert!(active_mappings(vm.mgr.state())
        .iter()
        .all(|mapping| mapping.0 != VGA));

    vm.set(VGA, RamVisibility::ReadWrite).unwrap();
    assert_eq!(
        partition.take_log(),
        [C::map(0xa0000, 0x20000, true, true, 0xa0000)]
    );
    assert_eq!(
        vm.take_events(),
        [
            add(VGA, "ram", 0xa0000, true, true),
            Event::Populate(0, VGA)
        ]
    );
}

#[test]
fn read_only_remaps_read_only_everywhere() {
    let mut vm = Vm::l1(X86);
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.clear_log();
    vm.take_events();
    let pam = r(0xc0000, 0xc4000);
    vm.set(pam, RamVisibility::ReadOnly).unwrap();
    assert_eq!(
        partition.take_log(),
        [
            C::unmap(0xc0000, 0x4000),
            C::map(0xc0000, 0x4000, false, true, 0xc0000)
        ]
    );
    // The VA mapping is read-only too: mapping writability AND region writability.
    assert_eq!(
        vm.take_events(),
        [
            Event::Invalidate(pam),
            add(pam, "ram", 0xc0000, false, true),
            Event::Populate(0, pam)
        ]
    );
}

#[test]
fn mapping_with_equal_parameters_does_nothing() {
    let mut vm = Vm::l1(PLAIN);
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.clear_log();
    vm.take_events();
    vm.set(r(0, GIB), RamVisibility::ReadWrite).unwrap();
    assert!(partition.log().is_empty());
    assert!(vm.take_events().is_empty());
}

#[test]
fn read_write_after_prefetch_build_is_a_remap_without_prefetch() {
    let mut vm = Vm::l1(BuildOptions {
        prefetch: true,
        ..PLAIN
    });
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.clear_log();
    vm.set(r(0, GIB), RamVisibility::ReadWrite).unwrap();
    assert_eq!(
        partition.take_log(),
        [C::unmap(0, GIB), C::map(0, GIB, true, true, 0)]
    );
    assert_eq!(vm.region(r(0, GIB)).params(), Some(RW));
}

#[test]
fn unmapping_twice_is_a_no_op() {
    let mut vm = Vm::l1(PLAIN);
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.clear_log();
    vm.set(r(0, GIB), RamVisibility::Unmapped).unwrap();
    assert_eq!(partition.take_log(), [C::unmap(0, GIB)]);
    vm.take_events();
    vm.set(r(0, GIB), RamVisibility::Unmapped).unwrap();
    assert!(partition.log().is_empty());
    assert!(vm.take_events().is_empty());
}

#[test]
fn runtime_partition_failure_poisons_the_manager() {
    let mut vm = Vm::l1(X86);
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.fail_on(RecordedOp::Map, 0xa0000);
    partition.clear_log();
    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    let error = vm.set(VGA, RamVisibility::ReadWrite).unwrap_err();
    assert!(matches!(error, RegionManagerError::ManagerPoisoned { .. }));
    assert!(vm.mgr.is_poisoned());
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert!(cause.contains("map(0xa0000, 0x20000"), "{cause}");
    assert_eq!(
        partition.take_log(),
        [
            C::unmap(0xa0000, 0x20000),
            C::map(0xa0000, 0x20000, true, true, 0xa0000).failed()
        ]
    );
    // Every later operation fails the same way and does nothing.
    assert!(matches!(
        vm.set(r(0, 0xa0000), RamVisibility::Unmapped),
        Err(RegionManagerError::ManagerPoisoned { .. })
    ));
    assert!(matches!(
        vm.mgr
            .add_region("late", r(0xD000_0000, 0xD000_1000), 0, false),
        Err(RegionManagerError::ManagerPoisoned { .. })
    ));
    assert!(matches!(
        vm.mgr.plan(Change::UnmapRegion(vm.region(VGA).id())),
        Err(RegionManagerError::ManagerPoisoned { .. })
    ));
    assert!(partition.log().is_empty());
}

#[test]
fn running_out_of_slots_is_refused_before_any_call_and_does_not_poison() {
    let mut vm = Vm::l1(PLAIN);
    // RAM takes one slot of two.
    let limited = Arc::new(SlotLimited::new(2, VA_BASE));
    let partition: Arc<dyn PartitionMemoryMap> = limited.clone();
    vm.mgr.add_partition(&partition, 0, false).unwrap();
    let params = MapParams {
        writable: true,
        executable: false,
        prefetch: false,
    };
    let a = vm
        .mgr
        .add_region("a", r(0xD000_0000, 0xD000_1000), 0, false)
        .unwrap();
    let b = vm
        .mgr
        .add_region("b", r(0xD001_0000, 0xD001_1000), 0, false)
        .unwrap();
    vm.mgr.map_region(a, params).unwrap();
    assert_eq!(limited.used(), 2);
    limited.log.clear_log();
    vm.take_events();
    let before = vm.snapshot();
    match vm.mgr.map_region(b, params) {
        Err(RegionManagerError::NoFreeSlot {
            partition: 0,
            needed: 1,
            free: 0,
            max_slots: 2,
        }) => {}
        other => panic!("expected NoFreeSlot, got {other:?}"),
    }
    assert!(!vm.mgr.is_poisoned());
    assert!(limited.log.log().is_empty(), "no partition call");
    assert!(vm.take_events().is_empty(), "no mapper request");
    assert_eq!(vm.snapshot(), before, "the state is unchanged");
    // Once a slot is free again, the same change works.
    vm.mgr.unmap_region(a).unwrap();
    vm.mgr.map_region(b, params).unwrap();
    assert_eq!(
        limited.log.take_log(),
        [
            C::unmap(0xD000_0000, 0x1000),
            C::map(0xD001_0000, 0x1000, true, false, 0xD001_0000)
        ]
    );
}

#[test]
fn runtime_pin_failure_unmaps_then_poisons() {
    let mut vm = Vm::l1(BuildOptions { pin: true, ..X86 });
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.fail_on(RecordedOp::Pin, 0xa0000);
    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    partition.clear_log();
    let error = vm.set(VGA, RamVisibility::ReadWrite).unwrap_err();
    assert!(matches!(error, RegionManagerError::ManagerPoisoned { .. }));
    assert_eq!(
        partition.take_log(),
        [
            C::map(0xa0000, 0x20000, true, true, 0xa0000),
            C::pin(0xa0000, 0x20000).failed(),
            C::unmap(0xa0000, 0x20000),
        ]
    );
}

#[test]
fn runtime_unmap_failure_poisons() {
    let mut vm = Vm::l1(X86);
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.fail_on(RecordedOp::Unmap, 0xa0000);
    vm.take_events();
    let error = vm.set(VGA, RamVisibility::Unmapped).unwrap_err();
    assert!(matches!(error, RegionManagerError::ManagerPoisoned { .. }));
    assert!(
        vm.take_events().is_empty(),
        "nothing after the failed unmap is carried out"
    );
}

#[test]
fn partition_unmap_precedes_the_va_invalidation() {
    let mut vm = Vm::l1(X86);
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.clear_log();
    vm.events.lock().unwrap().clear();
    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    vm.set(VGA, RamVisibility::ReadWrite).unwrap();
    let mut merged: Vec<(u64, String)> = partition
        .log_with_sequence()
        .into_iter()
        .map(|(seq, call)| (seq, call.to_string()))
        .chain(
            vm.events_with_sequence()
                .into_iter()
                .map(|(seq, event)| (seq, format!("{event:?}"))),
        )
        .collect();
    merged.sort();
    let order: Vec<String> = merged.into_iter().map(|(_, text)| text).collect();
    assert_eq!(
        order,
        [
            "unmap(0xa0000, 0x20000)".to_owned(),
            format!("{:?}", Event::Invalidate(VGA)),
            format!("{:?}", add(VGA, "ram", 0xa0000, true, true)),
            format!("{:?}", Event::Populate(0, VGA)),
            "map(0xa0000, 0x20000, wx, va+0xa0000)".to_owned(),
        ]
    );
}

// ----- device windows -----

/// x86 L1 with a partition attached and a 0x20000-byte window holding P at offset 0.
fn vga_device() -> (Vm, Arc<RecordingPartition>, DeviceWindow<Obj>) {
    let mut vm = Vm::l1(X86);
    let partition = vm.attach_new(Vtl::Vtl0);
    let mut window = DeviceWindow::new(0x20000, "vram");
    window.map(&mut vm.mgr, 0, "P", 0, 0x10000, true).unwrap();
    partition.clear_log();
    vm.take_events();
    (vm, partition, window)
}

#[test]
fn device_window_under_ram_stays_shadowed() {
    let (mut vm, partition, mut window) = vga_device();
    window.map_to_guest(&mut vm.mgr, 0xa0000, true).unwrap();
    let placement = window.placement().unwrap();
    let region = vm.mgr.state().region(placement.region).unwrap();
    assert_eq!(region.name(), "vram");
    assert_eq!(region.priority(), DEVICE_PRIORITY);
    assert!(!region.dma_target());
    assert_eq!(region.params(), Some(RW));
    assert!(!region.is_active());
    assert!(partition.log().is_empty());
    assert!(vm.take_events().is_empty());
}

#[test]
fn device_surfaces_under_unmapped_ram_and_hides_again() {
    let (mut vm, partition, mut window) = vga_device();
    window.map_to_guest(&mut vm.mgr, 0xa0000, true).unwrap();

    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    assert_eq!(
        partition.take_log(),
        [
            C::unmap(0xa0000, 0x20000),
            C::map(0xa0000, 0x20000, true, true, 0xa0000)
        ]
    );
    assert_eq!(
        vm.take_events(),
        [
            Event::Invalidate(VGA),
            add(r(0xa0000, 0xb0000), "P", 0, true, false),
            Event::Populate(0, VGA),
        ]
    );
    // Not a DMA target: absent from get_regions().
    assert!(active_mappings(vm.mgr.state())
        .iter()
        .filter(|mapping| mapping.4)
        .all(|mapping| !mapping.0.overlaps(&VGA)));

    vm.set(VGA, RamVisibility::ReadWrite).unwrap();
    assert_eq!(
        partition.take_log(),
        [
            C::unmap(0xa0000, 0x20000),
            C::map(0xa0000, 0x20000, true, true, 0xa0000)
        ]
    );
    assert_eq!(
        vm.take_events(),
        [
            Event::Invalidate(VGA),
            add(VGA, "ram", 0xa0000, true, true),
            Event::Populate(0, VGA),
        ]
    );
    assert!(vm.region(VGA).is_active());
}

#[test]
fn partial_device_window_is_mapped_whole() {
    let mut vm = Vm::l1(PLAIN);
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.clear_log();
    let mut window = DeviceWindow::new(0x20000, "fb");
    window.map(&mut vm.mgr, 0, "P", 0, 0x10000, true).unwrap();
    window.map_to_guest(&mut vm.mgr, 0xD000_0000, true).unwrap();
    assert_eq!(
        partition.take_log(),
        [C::map(0xD000_0000, 0x20000, true, true, 0xD000_0000)]
    );
    let view = vm.mgr.state().flat_view_range(r(0xD000_0000, 0xD002_0000));
    assert_eq!(view.len(), 2);
    assert_eq!(view[0].range, r(0xD000_0000, 0xD001_0000));
    assert_eq!(
        view[0].backing,
        Some(FlatBacking {
            object: "P",
            file_offset: 0,
            writable: true
        })
    );
    assert_eq!(view[1].range, r(0xD001_0000, 0xD002_0000));
    assert_eq!(view[1].backing, None, "a hole: reads there fail NoMapping");
    assert_eq!(view[1].region.as_ref().unwrap().name.as_ref(), "fb");
}

#[test]
fn device_straddling_ram_is_rejected() {
    let mut vm = Vm::l1(X86);
    let before = vm.snapshot();
    let mut window: DeviceWindow<Obj> = DeviceWindow::new(0x2000, "dev");
    let error = window.map_to_guest(&mut vm.mgr, 0x9f000, true).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::Other);
    assert!(matches!(
        io_region_error(&error),
        RegionManagerError::OverlapError(OverlapError { existing, new }) if existing == "ram" && new == "dev"
    ));
    assert_eq!(
        error.to_string(),
        "memory region dev overlaps with existing region ram"
    );
    assert_eq!(window.placement(), None);
    assert_eq!(vm.snapshot(), before);
}

#[test]
fn identical_device_windows_first_created_wins() {
    let mut vm = Vm::l1(PLAIN);
    let partition = vm.attach_new(Vtl::Vtl0);
    partition.clear_log();
    let mut first = DeviceWindow::new(0x2000, "first");
    let mut second = DeviceWindow::new(0x2000, "second");
    first.map_to_guest(&mut vm.mgr, 0xD000_0000, true).unwrap();
    second.map_to_guest(&mut vm.mgr, 0xD000_0000, true).unwrap();
    let state = vm.mgr.state();
    assert!(state
        .region(first.placement().unwrap().region)
        .unwrap()
        .is_active());
    assert!(!state
        .region(second.placement().unwrap().region)
        .unwrap()
        .is_active());
    assert_eq!(
        partition.take_log(),
        [C::map(0xD000_0000, 0x2000, true, true, 0xD000_0000)]
    );
    first.unmap_from_guest(&mut vm.mgr);
    assert!(vm
        .mgr
        .state()
        .region(second.placement().unwrap().region)
        .unwrap()
        .is_active());
    assert_eq!(
        partition.take_log(),
        [
            C::unmap(0xD000_0000, 0x2000),
            C::map(0xD000_0000, 0x2000, true, true, 0xD000_0000)
        ]
    );
}

#[test]
fn equal_priority_partial_overlap_is_rejected() {
    let mut vm = Vm::l1(PLAIN);
    let mut first: DeviceWindow<Obj> = DeviceWindow::new(0x2000, "a");
    let mut second: DeviceWindow<Obj> = DeviceWindow::new(0x2000, "b");
    first.map_to_guest(&mut vm.mgr, 0xD000_0000, true).unwrap();
    let error = second
        .map_to_guest(&mut vm.mgr, 0xD000_1000, true)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "memory region b overlaps with existing region a"
    );
    assert_eq!(second.placement(), None);
}

#[test]
fn runtime_dax_mappings_touch_only_the_va() {
    let (mut vm, partition, mut window) = vga_device();
    window.map_to_guest(&mut vm.mgr, 0xa0000, true).unwrap();
    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    partition.clear_log();
    vm.take_events();

    window
        .map(&mut vm.mgr, 0x10000, "Q", 0, 0x10000, true)
        .unwrap();
    assert!(partition.log().is_empty());
    let q = r(0xb0000, 0xc0000);
    assert_eq!(
        vm.take_events(),
        [add(q, "Q", 0, true, false), Event::Populate(0, q)]
    );
    let view = vm.mgr.state().flat_view_range(q);
    assert_eq!(view[0].backing.as_ref().unwrap().object, "Q");

    window.unmap(&mut vm.mgr, 0x10000, 0x10000).unwrap();
    assert!(partition.log().is_empty());
    assert_eq!(vm.take_events(), [Event::Invalidate(q)]);
    assert_eq!(vm.mgr.state().flat_view_range(q)[0].backing, None);
}

#[test]
fn device_unmap_keeps_the_other_mappings() {
    let mut vm = Vm::l1(PLAIN);
    let mut window = DeviceWindow::new(0x4000, "dax");
    window.map(&mut vm.mgr, 0, "A", 0, 0x1000, true).unwrap();
    window
        .map(&mut vm.mgr, 0x2000, "B", 0, 0x1000, true)
        .unwrap();
    window.map_to_guest(&mut vm.mgr, 0xD000_0000, true).unwrap();
    window.unmap(&mut vm.mgr, 0, 0x1000).unwrap();
    window.unmap_from_guest(&mut vm.mgr);
    window.map_to_guest(&mut vm.mgr, 0xD000_0000, true).unwrap();
    let region = vm
        .mgr
        .state()
        .region(window.placement().unwrap().region)
        .unwrap();
    let objects: Vec<(MemoryRange, Obj)> = region
        .mappings()
        .map(|mapping| (mapping.range_in_region, mapping.object))
        .collect();
    assert_eq!(objects, [(r(0x2000, 0x3000), "B")]);
    window.map(&mut vm.mgr, 0, "C", 0, 0x1000, true).unwrap();
    assert_eq!(window.mappings().len(), 2);
}

#[test]
fn device_input_errors_change_nothing() {
    let mut vm = Vm::l1(PLAIN);
    let mut window = DeviceWindow::new(0x4000, "dev");
    window.map(&mut vm.mgr, 0, "A", 0, 0x2000, true).unwrap();
    window.map_to_guest(&mut vm.mgr, 0xD000_0000, true).unwrap();
    let before = vm.snapshot();
    let recorded = window.mappings().len();

    let error = window
        .map(&mut vm.mgr, 0x800, "B", 0, 0x1000, true)
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("0x800"), "{error}");
    let error = window
        .map(&mut vm.mgr, 0x1000, "B", 0, 0x1000, true)
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::Unsupported);
    let error = window
        .map(&mut vm.mgr, 0x3000, "B", 0, 0x2000, true)
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    let error = window
        .map(&mut vm.mgr, !0xfff_u64, "B", 0, 0x2000, true)
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "wrapping range");
    let error = window.unmap(&mut vm.mgr, 0, 0x1000).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::Unsupported);
    let error = window
        .map(&mut vm.mgr, 0x2000, "B", 0, 0, true)
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "empty mapping");
    let error = window
        .map(&mut vm.mgr, 0x2000, "B", 0x800, 0x1000, true)
        .unwrap_err();
    assert_eq!(
        error.kind(),
        io::ErrorKind::InvalidInput,
        "unaligned file offset"
    );
    assert!(error.to_string().contains("file offset 0x800"), "{error}");

    assert_eq!(vm.snapshot(), before);
    assert_eq!(window.mappings().len(), recorded);
}

#[test]
fn read_only_window_makes_its_mappings_read_only() {
    let mut vm = Vm::l1(PLAIN);
    let mut window = DeviceWindow::new(0x2000, "rom");
    window
        .map_to_guest(&mut vm.mgr, 0xD000_0000, false)
        .unwrap();
    vm.take_events();
    window.map(&mut vm.mgr, 0, "W", 0, 0x2000, true).unwrap();
    assert_eq!(
        vm.take_events(),
        [add(r(0xD000_0000, 0xD000_2000), "W", 0, false, false)]
    );
}

#[test]
fn moving_a_window_unmaps_then_maps() {
    let mut vm = Vm::l1(PLAIN);
    let partition = vm.attach_new(Vtl::Vtl0);
    let mut window = DeviceWindow::new(0x2000, "dev");
    window
        .map(&mut vm.mgr, 0, "M", 0x5000, 0x2000, true)
        .unwrap();
    window.map_to_guest(&mut vm.mgr, 0xD000_0000, true).unwrap();
    partition.clear_log();
    vm.take_events();
    window.map_to_guest(&mut vm.mgr, 0xE000_0000, true).unwrap();
    assert_eq!(
        partition.take_log(),
        [
            C::unmap(0xD000_0000, 0x2000),
            C::map(0xE000_0000, 0x2000, true, true, 0xE000_0000)
        ]
    );
    assert!(vm
        .take_events()
        .contains(&add(r(0xE000_0000, 0xE000_2000), "M", 0x5000, true, false)));
}

#[test]
fn mapping_recorded_while_unplaced_appears_when_placed() {
    let mut vm = Vm::l1(PLAIN);
    let mut window = DeviceWindow::new(0x2000, "dev");
    window
        .map(&mut vm.mgr, 0x1000, "U", 0, 0x1000, true)
        .unwrap();
    assert!(vm.take_events().is_empty());
    window.map_to_guest(&mut vm.mgr, 0xD000_0000, true).unwrap();
    assert_eq!(
        vm.take_events(),
        [add(r(0xD000_1000, 0xD000_2000), "U", 0, true, false)]
    );
}

#[test]
fn window_beyond_the_va_window_is_rejected() {
    let mut vm = Vm::l1(PLAIN);
    let mut window: DeviceWindow<Obj> = DeviceWindow::new(0x2000, "dev");
    let error = window
        .map_to_guest(&mut vm.mgr, 0x1_0000_0000, true)
        .unwrap_err();
    assert!(matches!(
        io_region_error(&error),
        RegionManagerError::RegionOutOfRange {
            window_len: 0x1_0000_0000,
            ..
        }
    ));
    let error = window.map_to_guest(&mut vm.mgr, 0x1001, true).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn dma_targets_are_the_ram_mappings() {
    let mut vm = Vm::l2(PLAIN);
    let mut window = DeviceWindow::new(0x2000, "dev");
    window.map(&mut vm.mgr, 0, "D", 0, 0x2000, true).unwrap();
    window.map_to_guest(&mut vm.mgr, 0xD000_0000, true).unwrap();
    let dma: Vec<(MemoryRange, u64)> = active_mappings(vm.mgr.state())
        .into_iter()
        .filter(|mapping| mapping.4)
        .map(|mapping| (mapping.0, mapping.2))
        .collect();
    assert_eq!(
        dma,
        [
            (r(0, 0xC000_0000), 0),
            (r(0x1_0000_0000, 0x1_4000_0000), 0xC000_0000)
        ]
    );
}

// ----- priorities (internal) -----

fn map_new(
    vm: &mut Vm,
    name: &str,
    range: MemoryRange,
    priority: u8,
) -> Result<RegionId, RegionManagerError> {
    let id = vm.mgr.add_region(name, range, priority, false)?;
    vm.mgr.map_region(id, RW)?;
    Ok(id)
}

#[test]
fn priority_matrix() {
    let mut vm = Vm::empty(0x10_0000);
    let hi = map_new(&mut vm, "hi", r(0x1000, 0x3000), 1).unwrap();
    let error = map_new(&mut vm, "lo", r(0x2000, 0x4000), 0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "memory region lo overlaps with existing region hi"
    );
    let lo = map_new(&mut vm, "lo", r(0x1000, 0x3000), 0).unwrap();
    vm.mgr.remove_region(hi).unwrap();
    assert!(
        vm.mgr.state().region(lo).unwrap().is_active(),
        "lo surfaced"
    );
    for range in [r(0x2000, 0x4000), r(0x2000, 0x3000)] {
        let error = map_new(&mut vm, "hi", range, 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "memory region hi overlaps with existing region lo"
        );
    }
    let hi = map_new(&mut vm, "hi", r(0, 0x10000), 1).unwrap();
    assert!(vm.mgr.state().region(hi).unwrap().is_active());
    assert!(!vm.mgr.state().region(lo).unwrap().is_active());
    vm.mgr.remove_region(lo).unwrap();
    let error = map_new(&mut vm, "lo", r(0, 0x20000), 0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "memory region lo overlaps with existing region hi"
    );
    map_new(&mut vm, "lo", r(0x1000, 0x8000), 0).unwrap();
    // Ids: hi=1, lo=2, hi=3, lo=4 (rejected creations consume no id).
    assert_eq!(
        vm.mgr
            .state()
            .regions()
            .map(|region| region.id().get())
            .collect::<Vec<_>>(),
        [3, 4]
    );
}

#[test]
fn unmapping_a_cover_surfaces_in_address_order() {
    let mut vm = Vm::empty(0x10_0000);
    let partition = vm.attach_new(Vtl::Vtl0);
    map_new(&mut vm, "lo-a", r(0x4000, 0x5000), 0).unwrap();
    map_new(&mut vm, "lo-b", r(0x1000, 0x2000), 0).unwrap();
    let hi = map_new(&mut vm, "hi", r(0, 0x10000), 1).unwrap();
    assert_eq!(
        partition.take_log()[2..],
        [
            C::unmap(0x4000, 0x1000),
            C::unmap(0x1000, 0x1000),
            C::map(0, 0x10000, true, true, 0)
        ]
    );
    vm.mgr.unmap_region(hi).unwrap();
    assert_eq!(
        partition.take_log(),
        [
            C::unmap(0, 0x10000),
            C::map(0x1000, 0x1000, true, true, 0x1000),
            C::map(0x4000, 0x1000, true, true, 0x4000)
        ]
    );
}

#[test]
fn mapping_a_blocked_region_only_stores_its_parameters() {
    let mut vm = Vm::empty(0x10_0000);
    let partition = vm.attach_new(Vtl::Vtl0);
    map_new(&mut vm, "hi", r(0, 0x10000), 1).unwrap();
    let lo = vm
        .mgr
        .add_region("lo", r(0x1000, 0x2000), 0, false)
        .unwrap();
    partition.clear_log();
    vm.take_events();
    vm.mgr.map_region(lo, RW).unwrap();
    assert!(partition.log().is_empty());
    assert!(vm.take_events().is_empty());
    let region = vm.mgr.state().region(lo).unwrap();
    assert_eq!(region.params(), Some(RW));
    assert!(!region.is_active());
}

// ----- validation errors leave everything unchanged -----

#[test]
fn validation_errors_change_nothing() {
    let mut vm = Vm::empty(0x10_0000);
    let region = map_new(&mut vm, "dev", r(0x10000, 0x20000), 0).unwrap();
    vm.mgr
        .add_mapping(
            region,
            RegionMapping {
                range_in_region: r(0x1000, 0x3000),
                object: "A",
                file_offset: 0,
                writable: true,
            },
        )
        .unwrap();
    let before = vm.snapshot();
    let mapping = |start, end| RegionMapping {
        range_in_region: r(start, end),
        object: "B",
        file_offset: 0,
        writable: true,
    };

    let cases: Vec<(Change<Obj>, &str)> = vec![
        (
            Change::AddRegion(NewRegion::new("big", r(0x1000, 0x20_0000), 0, false)),
            "memory region big 0x1000-0x200000 extends beyond the guest address space (VA window length 0x100000)",
        ),
        (
            Change::AddRegion(NewRegion::new("none", r(0x5000, 0x5000), 0, false)),
            "memory region none has an empty range 0x5000-0x5000",
        ),
        (
            Change::AddRegion(NewRegion::new("cut", r(0x18000, 0x28000), 0, false)),
            "memory region cut overlaps with existing region dev",
        ),
        (
            Change::AddMapping(region, mapping(0x2000, 0x4000)),
            "mapping 0x2000-0x4000 overlaps mapping 0x1000-0x3000 in memory region dev",
        ),
        (
            Change::AddMapping(region, mapping(0xf000, 0x11000)),
            "mapping range 0xf000-0x11000 is outside memory region dev of length 0x10000",
        ),
        (
            Change::AddMapping(region, mapping(0x4000, 0x4000)),
            "mapping range 0x4000-0x4000 in memory region dev is empty",
        ),
        (
            Change::RemoveMappings(region, r(0x2000, 0x5000)),
            "cannot remove 0x2000-0x5000 from memory region dev: mapping 0x1000-0x3000 is only partly inside it",
        ),
        (
            Change::RemoveMappings(region, r(0x2000, 0x2000)),
            "cannot remove 0x2000-0x2000 from memory region dev: mapping 0x1000-0x3000 is only partly inside it",
        ),
        (
            Change::RemoveMappings(region, r(0, 0x11000)),
            "mapping range 0x0-0x11000 is outside memory region dev of length 0x10000",
        ),
        (Change::MapRegion(RegionId(99), RW), "memory region 99 does not exist"),
        (Change::RemoveRegion(RegionId(99)), "memory region 99 does not exist"),
        (
            Change::AddPartition(PartitionMapperInfo {
                offset: !0xfff_u64,
                pin_mappings: false,
            }),
            "partition offset 0xfffffffffffff000 does not fit the VA window length 0x100000",
        ),
    ];
    for (change, message) in cases {
        let error = vm.mgr.run_change(change.clone(), None).unwrap_err();
        assert_eq!(error.to_string(), message, "{change:?}");
        assert!(vm.mgr.plan(change.clone()).is_err());
        assert_eq!(vm.snapshot(), before, "{change:?}");
    }
    // The next region still gets the next id.
    let next = vm
        .mgr
        .add_region("next", r(0x30000, 0x31000), 0, false)
        .unwrap();
    assert_eq!(next.get(), 2);
    // A removal range holding no mappings is fine (and still invalidates the active region).
    vm.take_events();
    vm.mgr.remove_mappings(region, r(0x8000, 0x9000)).unwrap();
    assert_eq!(vm.take_events(), [Event::Invalidate(r(0x18000, 0x19000))]);
}

// ----- dry runs, reasons, transactions -----

#[test]
fn dry_run_matches_what_applying_does() {
    let (mut vm, partition, mut window) = vga_device();
    window.map_to_guest(&mut vm.mgr, 0xa0000, true).unwrap();
    partition.clear_log();
    let before = vm.snapshot();
    let (change, cause) = vm
        .ram
        .change_for::<Obj>(VGA, RamVisibility::Unmapped)
        .unwrap();

    let mut transaction = vm.mgr.state_mut_for_tests().begin();
    transaction
        .apply_with_cause(change.clone(), Some(&cause))
        .unwrap();
    let plan = transaction.take_plan();
    let view_after = transaction.state().flat_view();
    drop(transaction);
    assert_eq!(vm.snapshot(), before, "dry run applied nothing");
    assert!(partition.log().is_empty());

    let reasons: Vec<(String, String)> = plan
        .ops
        .iter()
        .map(|op| (op.op.to_string(), op.reason.clone()))
        .collect();
    let hidden = "VGA window 0xa0000-0xc0000 hidden: RAM visibility Unmapped".to_owned();
    let surfaced = "vram 0xa0000-0xc0000 surfaced: RAM visibility Unmapped".to_owned();
    assert_eq!(
        reasons,
        [
            (
                "partition 0: unmap(0xa0000, 0x20000)".to_owned(),
                hidden.clone()
            ),
            ("invalidate 0xa0000-0xc0000".to_owned(), hidden),
            (
                "add mapping 0xa0000-0xb0000 (file offset 0x0, rw)".to_owned(),
                surfaced.clone()
            ),
            (
                "populate VA 0xa0000-0xc0000 for partition 0".to_owned(),
                surfaced.clone()
            ),
            (
                "partition 0: map(0xa0000, 0x20000, wx, va+0xa0000)".to_owned(),
                surfaced
            ),
        ]
    );
    assert_eq!(plan.affected, [VGA]);

    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    assert_eq!(
        partition.take_log(),
        partition_calls(&plan, 0),
        "applying produces exactly the planned partition calls"
    );
    assert_eq!(vm.mgr.state().flat_view(), view_after);
}

/// The partition calls a plan makes on one partition, as a recorder would log them.
fn partition_calls(plan: &Plan<Obj>, partition: usize) -> Vec<C> {
    plan.op_list()
        .filter(|op| op.partition() == Some(partition))
        .filter_map(recorded_call)
        .collect()
}

/// The call a recording partition logs for a plan operation (`None`: not a partition call).
pub(crate) fn recorded_call<T>(op: &PlanOp<T>) -> Option<C> {
    match *op {
        PlanOp::Map {
            va_offset,
            gpa,
            size,
            writable,
            exec,
            ..
        } => Some(C::map(gpa, size, writable, exec, va_offset)),
        PlanOp::Unmap { gpa, size, .. } => Some(C::unmap(gpa, size)),
        PlanOp::Prefetch { gpa, size, .. } => Some(C::prefetch(gpa, size)),
        PlanOp::Pin { gpa, size, .. } => Some(C::pin(gpa, size)),
        _ => None,
    }
}

#[test]
fn device_placement_can_be_planned_on_a_copy() {
    let (mut vm, partition, window) = vga_device();
    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    partition.clear_log();
    let before = vm.snapshot();
    let mut copy = window.clone();
    let mut transaction = vm.mgr.state_mut_for_tests().begin();
    copy.map_to_guest(&mut transaction, 0xa0000, true).unwrap();
    let plan = transaction.take_plan();
    transaction.rollback();
    assert_eq!(vm.snapshot(), before);
    assert_eq!(window.placement(), None);
    assert_eq!(
        partition_calls(&plan, 0),
        [C::map(0xa0000, 0x20000, true, true, 0xa0000)]
    );
    assert_eq!(
        plan.ops[0].reason,
        "vram 0xa0000-0xc0000 shown: region mapped rwx"
    );

    let mut window = window;
    window.map_to_guest(&mut vm.mgr, 0xa0000, true).unwrap();
    assert_eq!(partition.take_log(), partition_calls(&plan, 0));
}

#[test]
fn transaction_rollback_restores_everything() {
    let mut vm = Vm::l1(X86);
    vm.attach_new(Vtl::Vtl0);
    let before = vm.snapshot();
    let state = vm.mgr.state_mut_for_tests();
    let mut transaction = state.begin();
    let vga = transaction
        .state()
        .regions()
        .find(|region| region.range() == VGA)
        .unwrap()
        .id();
    transaction.apply(Change::UnmapRegion(vga)).unwrap();
    let ChangeOutcome::RegionAdded(dev) = transaction
        .apply(Change::AddRegion(NewRegion::new("dev", VGA, 0, false)))
        .unwrap()
    else {
        panic!("no region")
    };
    transaction
        .apply(Change::AddMapping(
            dev,
            RegionMapping {
                range_in_region: r(0, 0x1000),
                object: "X",
                file_offset: 0,
                writable: true,
            },
        ))
        .unwrap();
    transaction.apply(Change::MapRegion(dev, RW)).unwrap();
    transaction.apply(Change::RemoveRegion(dev)).unwrap();
    transaction
        .apply(Change::AddPartition(PartitionMapperInfo {
            offset: 0,
            pin_mappings: true,
        }))
        .unwrap();
    assert!(transaction.plan().ops.len() > 10);
    transaction.rollback();
    assert_eq!(vm.snapshot(), before);
    let next = vm
        .mgr
        .add_region("dev", r(0xD000_0000, 0xD000_1000), 0, false)
        .unwrap();
    assert_eq!(next.get(), 17, "ids were restored too");
}

#[test]
fn flat_view_shows_winners_backings_and_hidden_regions() {
    let (mut vm, _partition, mut window) = vga_device();
    window.map_to_guest(&mut vm.mgr, 0xa0000, true).unwrap();
    let view = vm.mgr.state().flat_view_range(r(0x9f000, 0xc1000));
    type Piece<'a> = (
        MemoryRange,
        Option<&'a str>,
        Option<(Obj, u64)>,
        Vec<&'a str>,
    );
    let summary: Vec<Piece<'_>> = view
        .iter()
        .map(|entry| {
            (
                entry.range,
                entry.region.as_ref().map(|region| region.name.as_ref()),
                entry
                    .backing
                    .as_ref()
                    .map(|backing| (backing.object, backing.file_offset)),
                entry
                    .hidden
                    .iter()
                    .map(|region| region.name.as_ref())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                r(0x9f000, 0xa0000),
                Some("ram"),
                Some(("ram", 0x9f000)),
                vec![]
            ),
            (
                r(0xa0000, 0xc0000),
                Some("ram"),
                Some(("ram", 0xa0000)),
                vec!["vram"]
            ),
            (
                r(0xc0000, 0xc1000),
                Some("ram"),
                Some(("ram", 0xc0000)),
                vec![]
            ),
        ]
    );
    vm.set(VGA, RamVisibility::ReadOnly).unwrap();
    let vga = vm.mgr.state().flat_view_range(VGA);
    assert!(!vga[0].writable && vga[0].executable);
    assert!(!vga[0].backing.as_ref().unwrap().writable);
    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    let vga = vm.mgr.state().flat_view_range(VGA);
    assert_eq!(vga.len(), 2);
    assert_eq!(vga[0].region.as_ref().unwrap().name.as_ref(), "vram");
    assert_eq!(vga[0].hidden[0].name.as_ref(), "ram");
    assert_eq!(vga[1].backing, None);
    window.unmap_from_guest(&mut vm.mgr);
    let vga = vm.mgr.state().flat_view_range(VGA);
    assert_eq!(vga.len(), 1);
    assert_eq!(
        vga[0].region, None,
        "nothing mapped: only the hidden RAM region"
    );
    assert!(!vga[0].writable);
    // The whole view covers only addresses some region covers.
    let whole = vm.mgr.state().flat_view();
    assert_eq!(whole.first().unwrap().range.start(), 0);
    assert_eq!(whole.last().unwrap().range.end(), GIB);
    assert_eq!(vm.mgr.state().active_region_at(0xa0000), None);
    assert_eq!(
        vm.mgr.state().active_region_at(0x9ffff),
        Some(vm.region(r(0, 0xa0000)).id())
    );
}

#[test]
fn shutdown_unmaps_each_partition_mapper_window() {
    let mut vm = Vm::l1(BuildOptions {
        alias: Some(0x1_0000_0000),
        ..PLAIN
    });
    let partition = vm.attach_new(Vtl::Vtl2);
    partition.clear_log();
    let window_len = vm.window_len();
    assert_eq!(window_len, 0x1_0000_0000);
    drop(vm);
    assert_eq!(
        partition.take_log(),
        [C::unmap(0x1_0000_0000, window_len), C::unmap(0, window_len)]
    );
}

// ----- cost of a change -----

fn commit(state: &mut RegionManagerState<Obj>, change: Change<Obj>) -> ChangeOutcome {
    let mut transaction = state.begin();
    let outcome = transaction.apply(change).unwrap();
    transaction.commit();
    outcome
}

/// Adds and maps `count` one-page device regions 8 KiB apart from 4 GiB up; returns their ids.
fn add_spaced_devices(transaction: &mut Transaction<'_, Obj>, count: u64) -> Vec<RegionId> {
    (0..count)
        .map(|index| {
            let start = 0x1_0000_0000 + index * 0x2000;
            let ChangeOutcome::RegionAdded(id) = transaction
                .apply(Change::AddRegion(NewRegion::new(
                    "dev",
                    r(start, start + 0x1000),
                    0,
                    false,
                )))
                .unwrap()
            else {
                unreachable!()
            };
            transaction.apply(Change::MapRegion(id, RW)).unwrap();
            id
        })
        .collect()
}

/// Builds `count` disjoint mapped device-like regions (plus a RAM region far away) and
/// measures the planner work of changes near the start.
fn work_for_far_away_changes(count: u64) -> Vec<u64> {
    let window = 0x1000_0000_0000;
    let mut state: RegionManagerState<Obj> = RegionManagerState::new(window);
    let mut transaction = state.begin();
    let ids = add_spaced_devices(&mut transaction, count);
    transaction
        .apply(Change::AddPartition(PartitionMapperInfo {
            offset: 0,
            pin_mappings: false,
        }))
        .unwrap();
    transaction.commit();
    let ChangeOutcome::RegionAdded(ram) = commit(
        &mut state,
        Change::AddRegion(NewRegion::new("ram", r(0, 0x10_0000), RAM_PRIORITY, true)),
    ) else {
        unreachable!()
    };
    commit(&mut state, Change::MapRegion(ram, RW));

    let read_only = MapParams {
        writable: false,
        ..RW
    };
    let middle = ids[usize::try_from(count / 2).unwrap()];
    let changes = [
        Change::UnmapRegion(ram),
        Change::MapRegion(ram, read_only),
        Change::RemoveRegion(ram),
        Change::AddRegion(NewRegion::new(
            "ram2",
            r(0x20_0000, 0x30_0000),
            RAM_PRIORITY,
            true,
        )),
        Change::AddRegion(NewRegion::new(
            "cover",
            r(0x1_0000_0000, 0x1_0000_2000),
            1,
            false,
        )),
        Change::AddMapping(
            ram,
            RegionMapping {
                range_in_region: r(0, 0x1000),
                object: "M",
                file_offset: 0,
                writable: true,
            },
        ),
        Change::UnmapRegion(middle),
        Change::MapRegion(middle, read_only),
    ];
    changes
        .into_iter()
        .map(|change| {
            let before = state.work_counter();
            let plan = state.plan(change).unwrap();
            assert!(plan.ops.len() <= 4);
            state.work_counter() - before
        })
        .collect()
}

#[test]
fn a_change_costs_the_same_whatever_the_number_of_regions() {
    let small = work_for_far_away_changes(10);
    let medium = work_for_far_away_changes(1_000);
    assert_eq!(
        small, medium,
        "work must not grow with the number of regions"
    );
    let large = work_for_far_away_changes(10_000);
    assert_eq!(
        small, large,
        "work must not grow with the number of regions"
    );
    assert!(
        small.iter().all(|&work| (1..20).contains(&work)),
        "{small:?}"
    );
}

/// The planner work of netting one batch that places `count` windows side by side (each shown
/// in a partition, none overlapping another), and the number of operations left.
fn work_for_netting_a_batch(count: u64) -> (u64, usize) {
    let mut state: RegionManagerState<Obj> = RegionManagerState::new(0x1000_0000_0000);
    commit(
        &mut state,
        Change::AddPartition(PartitionMapperInfo {
            offset: 0,
            pin_mappings: false,
        }),
    );
    let mut transaction = state.begin();
    add_spaced_devices(&mut transaction, count);
    let before = transaction.state().work_counter();
    let net = transaction.take_net_plan();
    let work = transaction.state().work_counter() - before;
    transaction.rollback();
    (work, net.ops.len())
}

#[test]
fn netting_a_batch_costs_in_proportion_to_its_changes() {
    // Each group was compared with every group kept before it: 10,000 windows visited some
    // 10^8 groups (seconds for a batch of device placements).
    let (small, small_ops) = work_for_netting_a_batch(100);
    let (large, large_ops) = work_for_netting_a_batch(10_000);
    assert_eq!(large_ops, 100 * small_ops, "nothing of the batch cancels");
    assert!(small >= 200, "netting counts the groups it visits: {small}");
    assert!(
        large <= 100 * small + 100,
        "netting work grows faster than the batch: {small} for 100 windows, {large} for 10,000"
    );
}

// ----- randomized invariants -----

/// A tiny deterministic generator (no dependency needed for this).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// A random index into a list of `len` elements.
    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap()
    }
}

/// Replays a partition log into the set of GPA mappings the partition holds.
fn replay(log: &[C], mapped: &mut BTreeMap<u64, (u64, bool)>) {
    for call in log {
        match call.op {
            RecordedOp::Map => {
                let overlapping = mapped.iter().any(|(&start, &(size, _))| {
                    start < call.gpa + call.size && call.gpa < start + size
                });
                assert!(!overlapping, "map over an existing mapping: {call}");
                mapped.insert(call.gpa, (call.size, call.writable.unwrap()));
            }
            RecordedOp::Unmap => {
                let inside: Vec<u64> = mapped
                    .iter()
                    .filter(|(&start, &(size, _))| {
                        start < call.gpa + call.size && call.gpa < start + size
                    })
                    .map(|(&start, &(size, _))| {
                        assert!(
                            start >= call.gpa && start + size <= call.gpa + call.size,
                            "unmap cuts a mapping: {call}"
                        );
                        start
                    })
                    .collect();
                for start in inside {
                    mapped.remove(&start);
                }
            }
            RecordedOp::Prefetch | RecordedOp::Pin => {}
        }
    }
}

/// Checks I1 (active regions disjoint), I2 (each active region is the best mapped one where it
/// lies, and nothing better is left inactive) and I4 (the partition holds exactly the active
/// regions).
fn check_invariants(
    state: &RegionManagerState<Obj>,
    partition_mappings: &BTreeMap<u64, (u64, bool)>,
) {
    let regions: Vec<&Region<Obj>> = state.regions().collect();
    let active: Vec<&Region<Obj>> = state.active_regions().collect();
    for pair in active.windows(2) {
        assert!(pair[0].range().end() <= pair[1].range().start(), "I1");
    }
    for region in &regions {
        if region.is_active() {
            assert!(region.params().is_some());
        }
        if region.params().is_none() {
            continue;
        }
        // The best mapped region covering this one's range (by priority, then age) among those
        // overlapping it; with nesting, either it or something containing it must be active.
        let better_mapped = regions.iter().any(|other| {
            other.id() != region.id()
                && other.params().is_some()
                && other.range().overlaps(&region.range())
                && (other.priority() > region.priority()
                    || (other.priority() == region.priority() && other.id() < region.id()))
        });
        assert_eq!(
            region.is_active(),
            !better_mapped,
            "I2 for {:?}",
            region.inspect()
        );
    }
    let expected: BTreeMap<u64, (u64, bool)> = active
        .iter()
        .map(|region| {
            (
                region.range().start(),
                (region.range().len(), region.params().unwrap().writable),
            )
        })
        .collect();
    assert_eq!(partition_mappings, &expected, "I4");
}

#[test]
fn random_changes_keep_the_invariants_and_plans_match_calls() {
    for seed in 1..=20 {
        let mut rng = Lcg(seed);
        let mut vm = Vm::empty(0x100_0000);
        let partition = vm.attach_new(Vtl::Vtl0);
        let mut mapped = BTreeMap::new();
        let mut ids: Vec<RegionId> = Vec::new();
        let (mut applied, mut with_calls, mut rejected) = (0, 0, 0);
        for _ in 0..300 {
            let change = match rng.below(6) {
                0 | 1 => {
                    let start = rng.below(64) * 0x4000;
                    let len = (1 + rng.below(16)) * 0x1000 * (1 << rng.below(4));
                    let priority = u8::try_from(rng.below(4)).unwrap();
                    Change::AddRegion(NewRegion::new(
                        format!("p{priority}"),
                        r(start, (start + len).min(0x100_0000)),
                        priority,
                        false,
                    ))
                }
                _ if ids.is_empty() => continue,
                2 | 3 => {
                    let id = ids[rng.index(ids.len())];
                    Change::MapRegion(
                        id,
                        MapParams {
                            writable: rng.below(2) == 0,
                            executable: true,
                            prefetch: false,
                        },
                    )
                }
                4 => Change::UnmapRegion(ids[rng.index(ids.len())]),
                _ => {
                    let index = rng.index(ids.len());
                    Change::RemoveRegion(ids.swap_remove(index))
                }
            };
            let before = snapshot(vm.mgr.state());
            let planned = vm.mgr.state_mut_for_tests().plan(change.clone());
            assert_eq!(
                snapshot(vm.mgr.state()),
                before,
                "dry run changed the state"
            );
            match vm.mgr.run_change(change, None) {
                Ok(outcome) => {
                    let plan = planned.unwrap();
                    if let ChangeOutcome::RegionAdded(id) = outcome {
                        ids.push(id);
                    }
                    let log = partition.take_log();
                    assert_eq!(log, partition_calls(&plan, 0), "seed {seed}");
                    applied += 1;
                    with_calls += usize::from(!log.is_empty());
                    replay(&log, &mut mapped);
                }
                Err(error) => {
                    assert!(planned.is_err());
                    assert!(
                        matches!(error, RegionManagerError::OverlapError(_)),
                        "{error}"
                    );
                    assert_eq!(snapshot(vm.mgr.state()), before);
                    assert!(partition.log().is_empty());
                    rejected += 1;
                }
            }
            check_invariants(vm.mgr.state(), &mapped);
        }
        // The sequence exercised the interesting paths, not only rejections.
        assert!(
            applied > 100 && with_calls > 40 && rejected > 10,
            "{applied} {with_calls} {rejected}"
        );
    }
}

#[test]
fn inspect_snapshot_serializes_with_upstream_names() {
    let mut vm = Vm::l1(X86);
    vm.attach_new(Vtl::Vtl0);
    vm.set(VGA, RamVisibility::Unmapped).unwrap();
    let inspect = vm.mgr.state().inspect();
    assert_eq!(inspect.regions.len(), 16);
    assert_eq!(
        inspect.partitions,
        [PartitionMapperInfo {
            offset: 0,
            pin_mappings: false
        }]
    );
    let json = serde_json::to_value(&inspect).unwrap();
    let vga = &json["regions"][1];
    assert_eq!(vga["id"], 2);
    assert_eq!(vga["name"], "ram");
    assert_eq!(vga["range"]["start"], 0xa0000);
    assert_eq!(vga["range"]["end"], 0xc0000);
    assert_eq!(vga["priority"], 255);
    assert_eq!(vga["dma_target"], true);
    assert!(vga["map_params"].is_null());
    assert_eq!(vga["active"], false);
    assert_eq!(vga["mappings"][0]["range_in_region"]["end"], 0x20000);
    assert_eq!(vga["mappings"][0]["file_offset"], 0xa0000);
    assert_eq!(json["regions"][0]["map_params"]["prefetch"], false);
    assert_eq!(json["partitions"][0]["pin_mappings"], false);
}

#[test]
fn plan_with_shows_the_flat_view_the_change_would_leave() {
    let (mut vm, partition, mut window) = vga_device();
    window.map_to_guest(&mut vm.mgr, 0xa0000, true).unwrap();
    let (change, cause) = vm
        .ram
        .change_for::<Obj>(VGA, RamVisibility::Unmapped)
        .unwrap();
    let (plan, view) = vm
        .mgr
        .plan_with(change, Some(&cause), |transaction| {
            transaction.state().flat_view_range(VGA)
        })
        .unwrap();
    assert_eq!(plan.ops.len(), 5);
    assert_eq!(view[0].region.as_ref().unwrap().name.as_ref(), "vram");
    assert_eq!(
        vm.mgr.state().flat_view_range(VGA)[0]
            .region
            .as_ref()
            .unwrap()
            .name
            .as_ref(),
        "ram"
    );
    assert!(partition.log().is_empty());
}

#[test]
fn ram_regions_find_exact_ranges_and_detect_overlap() {
    let vm = Vm::l1(X86);
    assert_eq!(vm.ram.iter().count(), 16);
    assert_eq!(vm.ram.find(VGA).unwrap(), vm.region(VGA).id());
    assert!(vm.ram.overlaps(r(0x9f000, 0xa1000)));
    assert!(vm.ram.overlaps(r(0x3000_0000, 0x5000_0000)));
    assert!(!vm.ram.overlaps(r(0x4000_0000, 0x5000_0000)));
    assert!(!vm.ram.overlaps(r(0xD000_0000, 0xD000_1000)));
    assert_eq!(
        "ReadOnly".parse::<RamVisibility>(),
        Ok(RamVisibility::ReadOnly)
    );
    assert!("readonly".parse::<RamVisibility>().is_err());
    assert_eq!(RamVisibility::Unmapped.to_string(), "Unmapped");
    assert_eq!(RamVisibility::Unmapped.map_params(), None);
}

// ----- batches: the net plan -----

const READ_ONLY: MapParams = MapParams {
    writable: false,
    ..RW
};
const PAM0: MemoryRange = MemoryRange::new(0xc0000..0xc4000);

/// What partitions and the mapping manager hold after a plan: per (partition, GPA) the mapped
/// size, permissions and VA offset, and the active mappings.
#[derive(Debug, Clone, Default, PartialEq)]
struct World {
    partitions: BTreeMap<(usize, u64), (u64, bool, bool, u64)>,
    mappings: BTreeMap<u64, ActiveMapping<Obj>>,
}

impl World {
    /// Carries out `plan`, checking that it never maps over something or cuts a mapping.
    fn run(&mut self, plan: &Plan<Obj>) {
        for op in plan.op_list() {
            match *op {
                PlanOp::Map {
                    partition,
                    va_offset,
                    gpa,
                    size,
                    writable,
                    exec,
                } => {
                    let overlapping = self.partitions.iter().any(|(&(p, start), &(len, ..))| {
                        p == partition && start < gpa + size && gpa < start + len
                    });
                    assert!(!overlapping, "{op} maps over a mapping");
                    self.partitions
                        .insert((partition, gpa), (size, writable, exec, va_offset));
                }
                PlanOp::Unmap {
                    partition,
                    gpa,
                    size,
                } => {
                    let inside: Vec<(usize, u64)> = self
                        .partitions
                        .iter()
                        .filter(|(&(p, start), &(len, ..))| {
                            p == partition && start < gpa + size && gpa < start + len
                        })
                        .map(|(&key, &(len, ..))| {
                            assert!(key.1 >= gpa && key.1 + len <= gpa + size, "{op} cuts");
                            key
                        })
                        .collect();
                    for key in inside {
                        self.partitions.remove(&key);
                    }
                }
                PlanOp::AddMapping(ref mapping) => {
                    assert!(
                        self.mappings
                            .values()
                            .all(|held| !held.range.overlaps(&mapping.range)),
                        "{op} adds over a mapping"
                    );
                    self.mappings.insert(mapping.range.start(), mapping.clone());
                }
                PlanOp::Invalidate { range } => {
                    self.mappings.retain(|_, held| {
                        assert!(
                            range.contains(&held.range) || !range.overlaps(&held.range),
                            "{op} cuts {}",
                            held.range
                        );
                        !range.contains(&held.range)
                    });
                }
                PlanOp::PopulateVa { .. } | PlanOp::Prefetch { .. } | PlanOp::Pin { .. } => {}
            }
        }
    }

    /// What partition 0 and the mapping manager must hold for `state`.
    fn of(state: &RegionManagerState<Obj>) -> Self {
        let mut world = World::default();
        for region in state.active_regions() {
            let params = region.params().unwrap();
            let range = region.range();
            world.partitions.insert(
                (0, range.start()),
                (
                    range.len(),
                    params.writable,
                    params.executable,
                    range.start(),
                ),
            );
            for mapping in region.mappings() {
                let absolute = r(
                    range.start() + mapping.range_in_region.start(),
                    range.start() + mapping.range_in_region.end(),
                );
                world.mappings.insert(
                    absolute.start(),
                    ActiveMapping {
                        range: absolute,
                        object: mapping.object,
                        file_offset: mapping.file_offset,
                        writable: mapping.writable && params.writable,
                        dma_target: region.dma_target(),
                    },
                );
            }
        }
        world
    }
}

/// A step of a test batch: issues changes through the transaction.
type Step<'a> = &'a mut dyn FnMut(&mut Transaction<'_, Obj>);

/// Applies `steps` to one transaction of `vm`'s state (each step issues its changes through the
/// transaction) and returns the whole plan and the net plan; everything is rolled back.
fn batch_plans(vm: &mut Vm, steps: &mut [Step<'_>]) -> (Plan<Obj>, Plan<Obj>) {
    let mut transaction = vm.mgr.state_mut_for_tests().begin();
    for step in steps.iter_mut() {
        step(&mut transaction);
    }
    let full = transaction.plan().clone();
    let net = transaction.take_net_plan();
    transaction.rollback();
    (full, net)
}

/// A step that sets the visibility of the RAM region `range`.
fn visibility(
    ram: &RamRegions,
    range: MemoryRange,
    to: RamVisibility,
) -> impl FnMut(&mut Transaction<'_, Obj>) + '_ {
    move |transaction| ram.set_ram_visibility(transaction, range, to).unwrap()
}

#[test]
fn a_region_hidden_and_shown_again_in_one_batch_costs_nothing() {
    let mut vm = Vm::l1(X86);
    vm.attach_new(Vtl::Vtl0);
    let ram = vm.ram.clone();
    let (full, net) = batch_plans(
        &mut vm,
        &mut [
            &mut visibility(&ram, VGA, RamVisibility::Unmapped),
            &mut visibility(&ram, VGA, RamVisibility::ReadWrite),
        ],
    );
    assert_eq!(
        full.ops.len(),
        5,
        "unmap, invalidate, add mapping, populate, map: {full:?}"
    );
    assert!(net.ops.is_empty(), "{net:?}");
    assert!(net.affected.is_empty());
    // Read-only and back again.
    let (_, net) = batch_plans(
        &mut vm,
        &mut [
            &mut visibility(&ram, PAM0, RamVisibility::ReadOnly),
            &mut visibility(&ram, PAM0, RamVisibility::ReadWrite),
        ],
    );
    assert!(net.ops.is_empty(), "{net:?}");
}

#[test]
fn a_batch_plans_only_its_net_change() {
    let mut vm = Vm::l1(X86);
    vm.attach_new(Vtl::Vtl0);
    let ram = vm.ram.clone();
    // Read-only, read-write, read-only: what read-only alone does.
    let pam = vm.region(PAM0).id();
    let single = vm
        .mgr
        .state_mut_for_tests()
        .plan(Change::MapRegion(pam, READ_ONLY))
        .unwrap();
    let (full, net) = batch_plans(
        &mut vm,
        &mut [
            &mut visibility(&ram, PAM0, RamVisibility::ReadOnly),
            &mut visibility(&ram, PAM0, RamVisibility::ReadWrite),
            &mut visibility(&ram, PAM0, RamVisibility::ReadOnly),
        ],
    );
    assert_eq!(full.ops.len(), 3 * single.ops.len());
    assert_eq!(
        net.op_list().collect::<Vec<_>>(),
        single.op_list().collect::<Vec<_>>()
    );
    assert_eq!(net.affected, [PAM0]);
    // Read-only, then unmapped: the unmap of the read-write region alone.
    let unmap = vm
        .mgr
        .state_mut_for_tests()
        .plan(Change::UnmapRegion(pam))
        .unwrap();
    let (_, net) = batch_plans(
        &mut vm,
        &mut [
            &mut visibility(&ram, PAM0, RamVisibility::ReadOnly),
            &mut visibility(&ram, PAM0, RamVisibility::Unmapped),
        ],
    );
    assert_eq!(
        net.op_list().collect::<Vec<_>>(),
        unmap.op_list().collect::<Vec<_>>()
    );
    // Two different regions: nothing cancels, and the operations go in phases (every unmap,
    // then every invalidation, then the additions, populations and maps).
    let (full, net) = batch_plans(
        &mut vm,
        &mut [
            &mut visibility(&ram, PAM0, RamVisibility::ReadOnly),
            &mut visibility(&ram, VGA, RamVisibility::Unmapped),
        ],
    );
    assert_eq!(net.ops.len(), full.ops.len());
    let kinds: Vec<&str> = net.op_list().map(PlanOp::kind).collect();
    assert_eq!(
        kinds,
        [
            "unmap",
            "unmap",
            "invalidate",
            "invalidate",
            "addMapping",
            "populateVa",
            "map"
        ]
    );
    let (mut by_full, mut by_net) = (World::default(), World::default());
    by_full.run(&full);
    by_net.run(&net);
    assert_eq!(by_full, by_net);
}

#[test]
fn a_device_that_surfaces_and_hides_again_inside_a_batch_costs_nothing() {
    let (mut vm, partition, window) = vga_device();
    let mut window = window;
    window.map_to_guest(&mut vm.mgr, 0xa0000, true).unwrap();
    partition.clear_log();
    let ram = vm.ram.clone();
    // RAM hidden (the window surfaces: its mapping is added, it is mapped), then shown (the
    // window is hidden again): nested pairs cancel from the inside out.
    let (full, net) = batch_plans(
        &mut vm,
        &mut [
            &mut visibility(&ram, VGA, RamVisibility::Unmapped),
            &mut visibility(&ram, VGA, RamVisibility::ReadWrite),
        ],
    );
    assert!(full
        .op_list()
        .any(|op| matches!(op, PlanOp::AddMapping(m) if m.object == "P")));
    assert!(net.ops.is_empty(), "{net:?}");
}

#[test]
fn a_window_placed_again_where_it_was_costs_nothing() {
    let (mut vm, _partition, mut window) = vga_device();
    window.map_to_guest(&mut vm.mgr, 0xd000_0000, true).unwrap();
    let mut copy = window.clone();
    let (full, net) = batch_plans(
        &mut vm,
        &mut [&mut |transaction| {
            copy.unmap_from_guest(transaction);
            copy.map_to_guest(transaction, 0xd000_0000, true).unwrap();
        }],
    );
    assert!(!full.ops.is_empty());
    assert!(
        net.ops.is_empty(),
        "a new region with the same image: {net:?}"
    );
    // Placed elsewhere, or read-only: carried out.
    let mut moved = window.clone();
    let (_, net) = batch_plans(
        &mut vm,
        &mut [&mut |transaction| moved.map_to_guest(transaction, 0xd001_0000, true).unwrap()],
    );
    assert!(!net.ops.is_empty());
    let mut read_only = window.clone();
    let (_, net) = batch_plans(
        &mut vm,
        &mut [&mut |transaction| {
            read_only
                .map_to_guest(transaction, 0xd000_0000, false)
                .unwrap()
        }],
    );
    assert!(net.op_list().any(|op| matches!(
        op,
        PlanOp::Map {
            writable: false,
            ..
        }
    )));
}

#[test]
fn a_mapping_added_and_removed_in_one_batch_costs_nothing() {
    let (mut vm, _partition, mut window) = vga_device();
    window.map_to_guest(&mut vm.mgr, 0xd000_0000, true).unwrap();
    let mut copy = window.clone();
    let (full, net) = batch_plans(
        &mut vm,
        &mut [&mut |transaction| {
            copy.map(transaction, 0x10000, "Q", 0, 0x10000, true)
                .unwrap();
            copy.unmap(transaction, 0x10000, 0x10000).unwrap();
        }],
    );
    assert_eq!(full.ops.len(), 3, "add, populate, invalidate: {full:?}");
    assert!(net.ops.is_empty());
    // Removed and added again: the same.
    let mut copy = window.clone();
    let (_, net) = batch_plans(
        &mut vm,
        &mut [&mut |transaction| {
            copy.unmap(transaction, 0, 0x10000).unwrap();
            copy.map(transaction, 0, "P", 0, 0x10000, true).unwrap();
        }],
    );
    assert!(net.ops.is_empty());
    // Added again with another object: carried out.
    let mut copy = window.clone();
    let (_, net) = batch_plans(
        &mut vm,
        &mut [&mut |transaction| {
            copy.unmap(transaction, 0, 0x10000).unwrap();
            copy.map(transaction, 0, "Q", 0, 0x10000, true).unwrap();
        }],
    );
    assert_eq!(net.ops.len(), 3);
}

#[test]
fn random_batches_leave_the_world_their_whole_plan_leaves() {
    let objects = ["A", "B"];
    for seed in 1..=30 {
        let mut rng = Lcg(seed);
        let mut vm = Vm::empty(0x100_0000);
        vm.attach_new(Vtl::Vtl0);
        let mut world = World::default();
        let mut ids: Vec<RegionId> = Vec::new();
        let (mut full_ops, mut net_ops) = (0, 0);
        for _ in 0..40 {
            let mut transaction = vm.mgr.state_mut_for_tests().begin();
            for _ in 0..1 + rng.below(8) {
                let change = match rng.below(8) {
                    0 => {
                        let start = rng.below(16) * 0x4000;
                        let len = (1 + rng.below(4)) * 0x4000;
                        let priority = u8::try_from(rng.below(3)).unwrap();
                        Change::AddRegion(NewRegion::new(
                            "r",
                            r(start, start + len),
                            priority,
                            false,
                        ))
                    }
                    _ if ids.is_empty() => continue,
                    1 | 2 => Change::MapRegion(
                        ids[rng.index(ids.len())],
                        if rng.below(2) == 0 { RW } else { READ_ONLY },
                    ),
                    3 => Change::UnmapRegion(ids[rng.index(ids.len())]),
                    4 => Change::RemoveRegion(ids[rng.index(ids.len())]),
                    5 | 6 => {
                        let start = rng.below(4) * 0x4000;
                        Change::AddMapping(
                            ids[rng.index(ids.len())],
                            RegionMapping {
                                range_in_region: r(start, start + 0x4000),
                                object: objects[rng.index(2)],
                                file_offset: rng.below(2) * 0x4000,
                                writable: rng.below(2) == 0,
                            },
                        )
                    }
                    _ => {
                        let start = rng.below(4) * 0x4000;
                        Change::RemoveMappings(ids[rng.index(ids.len())], r(start, start + 0x4000))
                    }
                };
                // A change that fails leaves no trace; the batch goes on.
                if let Ok(ChangeOutcome::RegionAdded(id)) = transaction.apply(change) {
                    ids.push(id);
                }
            }
            let full = transaction.plan().clone();
            let net = transaction.take_net_plan();
            transaction.commit();
            ids.retain(|id| vm.mgr.state().regions().any(|region| region.id() == *id));
            let mut by_full = world.clone();
            by_full.run(&full);
            world.run(&net);
            assert_eq!(world, by_full, "seed {seed}");
            assert_eq!(world, World::of(vm.mgr.state()), "seed {seed}");
            assert!(net.ops.len() <= full.ops.len());
            full_ops += full.ops.len();
            net_ops += net.ops.len();
        }
        assert!(net_ops < full_ops, "seed {seed}: something cancelled");
    }
}
