//! Batched manager changes: [`GuestMemoryManager::apply`] carries out several changes — RAM
//! visibility and every device-window operation — in one request to the manager thread, all or
//! nothing, with one plan.
//!
//! The region manager applies the changes in order to one transaction (device windows to
//! copies of their records). If any change is invalid in the state the ones before it leave,
//! the transaction is rolled back, the windows keep their records, and the error names the
//! change by its index: nothing was applied. Otherwise the plan of the whole batch is netted
//! (operations a later change undoes are left out, see `region_manager::net`), carried out, and
//! the windows get their new records. Before any call, a batch that needs more slots than an
//! attached partition has free (at the peak of the plan) is refused as a whole, with nothing
//! applied (`RegionManagerError::NoFreeSlot`). Carrying it out follows the usual failure rules:
//! a partition that refuses a map or an unmap poisons the manager, as it would for a single
//! change.
//!
//! Attaching a partition is not a batch change: a refused attach discards only the new
//! partition, which a batch could not reconcile with "all or nothing" for its other changes.

use super::device::DeviceChange;
use super::preview::PreviewStep;
use super::region_actor::BatchItem;
use super::region_actor::PlanPreview;
use super::GuestMemoryManager;
use crate::mapping_manager::SharedObject;
use crate::ram_visibility::RamVisibility;
use crate::region_manager::Plan;
use crate::region_manager::RegionManagerError;
use memory_range::MemoryRange;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::Arc;

/// One change of a batch (see [`GuestMemoryManager::apply`]). Device-window changes are made
/// by the window's halves ([`MappableGuestMemory`](crate::MappableGuestMemory)`::map_to_guest_change`,
/// …).
#[derive(Debug)]
pub enum ManagerChange {
    /// `set_ram_visibility(range, visibility)`.
    RamVisibility {
        /// Exactly one RAM region's range.
        range: MemoryRange,
        /// The new visibility.
        visibility: RamVisibility,
    },
    /// An operation on a device window.
    Device(DeviceChange),
}

/// What an applied batch did: its netted plan, in execution order, and the steps a user sees
/// (as a dry run reports them, with the slot ids each partition predicted before the calls).
#[derive(Debug, Clone)]
pub struct AppliedBatch {
    /// The operations carried out, with their reasons.
    pub plan: Plan<SharedObject>,
    /// The plan's user-visible steps.
    pub steps: Vec<PreviewStep>,
}

/// Why a change of a batch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum BatchChangeError {
    /// The region manager refused it (overlap, unknown RAM region, …).
    #[error(transparent)]
    Region(#[from] RegionManagerError),
    /// The device window refused it (as its own operation would: bad range, overlapping or
    /// partial mapping, or a wrapped region-manager error).
    #[error(transparent)]
    Device(#[from] io::Error),
}

/// A batch failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Change `index` (from 0) cannot be applied in the state the changes before it leave;
    /// nothing in the batch was applied.
    #[error("change {index} of the batch cannot be applied (nothing in the batch was applied)")]
    Change {
        /// The change's position in the batch.
        index: usize,
        /// Why.
        #[source]
        source: BatchChangeError,
    },
    /// Change `index` names a device window of another memory manager; nothing in the batch was
    /// applied.
    #[error(
        "change {index} of the batch names device memory window {name:?}, which belongs to \
         another memory manager (nothing in the batch was applied)"
    )]
    ForeignWindow {
        /// The change's position in the batch.
        index: usize,
        /// The window's name.
        name: String,
    },
    /// The manager failed as a whole: it is gone or poisoned, or carrying out the plan poisoned
    /// it.
    #[error(transparent)]
    Manager(#[from] RegionManagerError),
}

/// The device windows a batch changes, in the order the batch first names them, each with the
/// copy of its record that the batch's changes go to (the windows keep their own records until
/// the batch is carried out). A change's window is found through a map keyed by the window's
/// identity, so a batch of n changes finds its windows in O(n) whatever the number of windows,
/// instead of comparing each change's window with every window named before it.
pub(crate) struct WindowCopies<W, R> {
    copies: Vec<(Arc<W>, R)>,
    /// A window's address to its position in `copies`. The address names one window for the
    /// whole batch: `copies` holds a reference to every window in the map, so none is freed
    /// and its address reused before the batch ends.
    positions: HashMap<usize, usize>,
    /// Windows visited to find the changes' windows (tests only, see `WindowCopies::work`).
    #[cfg(test)]
    work: u64,
}

impl<W, R> WindowCopies<W, R> {
    pub fn new() -> Self {
        Self {
            copies: Vec::new(),
            positions: HashMap::new(),
            #[cfg(test)]
            work: 0,
        }
    }

    /// The copy of `window`'s record, made by `copy` the first time the batch names the window.
    pub fn copy_of(&mut self, window: Arc<W>, copy: impl FnOnce(&W) -> R) -> &mut R {
        #[cfg(test)]
        {
            self.work += 1;
        }
        let position = match self.positions.entry(Arc::as_ptr(&window).addr()) {
            Entry::Occupied(entry) => *entry.get(),
            Entry::Vacant(entry) => {
                let record = copy(&window);
                self.copies.push((window, record));
                *entry.insert(self.copies.len() - 1)
            }
        };
        &mut self.copies[position].1
    }

    /// The windows and their changed records, in the order the batch first named them.
    pub fn into_copies(self) -> Vec<(Arc<W>, R)> {
        self.copies
    }

    /// The windows visited so far to find the changes' windows: one per change.
    #[cfg(test)]
    fn work(&self) -> u64 {
        self.work
    }
}

impl GuestMemoryManager {
    /// Applies `changes` in order as one batch, all or nothing, in one request to the manager
    /// thread; resolves with the plan it carried out (netted: what a later change undoes is
    /// not done). See the `memory_manager::batch` module documentation.
    pub fn apply(
        &self,
        changes: Vec<ManagerChange>,
    ) -> impl Future<Output = Result<AppliedBatch, BatchError>> + Send + 'static {
        let batch = self.batch(changes, false);
        async move {
            let preview = batch.await?;
            Ok(AppliedBatch {
                plan: preview.plan,
                steps: preview.steps,
            })
        }
    }

    /// Dry run of [`GuestMemoryManager::apply`]: the netted plan and the flat view the batch
    /// would leave; nothing is applied. Applying the same batch next makes exactly the planned
    /// partition calls.
    pub fn plan_batch(
        &self,
        changes: Vec<ManagerChange>,
    ) -> impl Future<Output = Result<PlanPreview, BatchError>> + Send + 'static {
        self.batch(changes, true)
    }

    /// A batch request; a dry run's result has the flat view the batch would leave, an applied
    /// batch's has none (computing it costs as much as the batch).
    fn batch(
        &self,
        changes: Vec<ManagerChange>,
        dry_run: bool,
    ) -> impl Future<Output = Result<PlanPreview, BatchError>> + Send + 'static {
        let items: Result<Vec<BatchItem>, BatchError> = changes
            .into_iter()
            .enumerate()
            .map(|(index, change)| self.batch_item(index, change))
            .collect();
        let batch = items.map(|items| self.regions.batch(items, dry_run));
        async move { batch?.await }
    }

    /// The region manager's form of change `index`.
    fn batch_item(&self, index: usize, change: ManagerChange) -> Result<BatchItem, BatchError> {
        let failed = |source: BatchChangeError| BatchError::Change { index, source };
        match change {
            ManagerChange::RamVisibility { range, visibility } => {
                let (change, cause) = self
                    .ram
                    .regions
                    .change_for(range, visibility)
                    .map_err(|error| failed(RegionManagerError::from(error).into()))?;
                Ok(BatchItem::Change(change, cause))
            }
            ManagerChange::Device(device) => {
                if !device.regions.same_manager(&self.regions) {
                    return Err(BatchError::ForeignWindow {
                        index,
                        name: device.window.lock().name().to_owned(),
                    });
                }
                let op = device.op.map_err(|error| failed(error.into()))?;
                Ok(BatchItem::Device {
                    window: device.window,
                    op,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestMemoryBuilder;
    use crate::MappableGuestMemory;
    use crate::MappedMemoryRegion;
    use futures::executor::block_on;
    use std::sync::Arc;
    use virt::PartitionMemoryMap;
    use virt::RecordedCall as C;
    use virt::RecordingPartition;
    use virt::Vtl;
    use vm_topology::memory::MemoryLayout;

    const GIB: u64 = 0x4000_0000;
    const VGA: MemoryRange = MemoryRange::new(0xa0000..0xc0000);
    const PAM0: MemoryRange = MemoryRange::new(0xc0000..0xc4000);
    const PAM1: MemoryRange = MemoryRange::new(0xc4000..0xc8000);
    const MMIO: u64 = 0xd000_0000;

    /// A manager with x86 legacy RAM, a recording partition attached, and a 128 KiB device
    /// window with one 64 KiB mapping, unplaced.
    struct Vm {
        mgr: GuestMemoryManager,
        partition: Arc<RecordingPartition>,
        control: MappableGuestMemory,
        region: Arc<MappedMemoryRegion>,
        object: sparse_mmap::Mappable,
    }

    fn vm() -> Vm {
        let layout =
            MemoryLayout::new(GIB, &[MemoryRange::new(0xC000_0000..0x1_0000_0000)], None).unwrap();
        let mgr = block_on(
            GuestMemoryBuilder::new()
                .x86_legacy_support(true)
                .build(&layout),
        )
        .unwrap();
        let partition = Arc::new(RecordingPartition::with_va_base(mgr.va_window_base()));
        let dyn_partition: Arc<dyn PartitionMemoryMap> = partition.clone();
        block_on(mgr.attach_partition(Vtl::Vtl0, &dyn_partition, None)).unwrap();
        let (control, region) = mgr
            .device_memory_mapper()
            .new_region(0x20000, "vram".into())
            .unwrap();
        let object = sparse_mmap::alloc_shared_memory(0x10000, "vram").unwrap();
        block_on(region.map(0, &object, 0, 0x10000, true)).unwrap();
        partition.clear_log();
        Vm {
            mgr,
            partition,
            control,
            region,
            object,
        }
    }

    fn visibility(range: MemoryRange, visibility: RamVisibility) -> ManagerChange {
        ManagerChange::RamVisibility { range, visibility }
    }

    /// The partition calls of `preview`'s plan, as the recording partition logs them.
    fn planned_calls(plan: &Plan<SharedObject>) -> Vec<C> {
        plan.op_list()
            .filter_map(crate::region_manager::tests::recorded_call)
            .collect()
    }

    #[test]
    fn a_failing_change_leaves_nothing_of_the_batch_applied() {
        let vm = vm();
        let before = block_on(vm.mgr.inspect()).unwrap();
        let second = sparse_mmap::alloc_shared_memory(0x10000, "second").unwrap();
        let error = block_on(vm.mgr.apply(vec![
            visibility(PAM0, RamVisibility::ReadOnly),
            vm.control.map_to_guest_change(MMIO, true),
            vm.region.map_change(0x10000, &second, 0, 0x10000, true),
            // Overlaps the window's first mapping: refused, as `region.map` would refuse it.
            vm.region.map_change(0x8000, &second, 0, 0x10000, true),
        ]))
        .unwrap_err();
        let BatchError::Change {
            index: 3,
            source: BatchChangeError::Device(device),
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(device.kind(), io::ErrorKind::Unsupported);
        assert!(vm.partition.log().is_empty(), "no partition call");
        assert_eq!(block_on(vm.mgr.inspect()).unwrap(), before);
        assert_eq!(vm.control.gpa(), None, "the window is still unplaced");
        // The window did not record the batch's mapping: the same range maps now.
        block_on(vm.region.map(0x10000, &second, 0, 0x10000, true)).unwrap();
        // An invalid RAM range is reported with its index too, before anything is sent.
        let error = block_on(vm.mgr.apply(vec![
            visibility(PAM0, RamVisibility::ReadOnly),
            visibility(MemoryRange::new(0xc0000..0xc8000), RamVisibility::ReadOnly),
        ]))
        .unwrap_err();
        assert!(
            matches!(
                error,
                BatchError::Change {
                    index: 1,
                    source: BatchChangeError::Region(RegionManagerError::InvalidRamRegion(_))
                }
            ),
            "{error:?}"
        );
        assert!(vm.partition.log().is_empty());
    }

    #[test]
    fn a_batch_makes_exactly_the_calls_it_planned() {
        let vm = vm();
        let second = sparse_mmap::alloc_shared_memory(0x10000, "second").unwrap();
        let batch = || {
            vec![
                visibility(PAM0, RamVisibility::ReadOnly),
                visibility(PAM1, RamVisibility::Unmapped),
                vm.control.map_to_guest_change(MMIO, true),
                vm.region.map_change(0x10000, &second, 0, 0x10000, false),
                vm.region.unmap_change(0, 0x10000),
                visibility(VGA, RamVisibility::ReadOnly),
            ]
        };
        let before = block_on(vm.mgr.inspect()).unwrap();
        let planned = block_on(vm.mgr.plan_batch(batch())).unwrap();
        assert_eq!(
            block_on(vm.mgr.inspect()).unwrap(),
            before,
            "planning changes nothing"
        );
        assert!(vm.partition.log().is_empty());
        let applied = block_on(vm.mgr.apply(batch())).unwrap();
        assert_eq!(applied.steps, planned.steps);
        let calls = vm.partition.take_log();
        assert_eq!(calls, planned_calls(&applied.plan));
        assert_eq!(
            calls.len(),
            6,
            "PAM0 unmap and map, PAM1 unmap, the window's map, VGA unmap and map: {calls:?}"
        );
        assert_eq!(vm.control.gpa(), Some(MMIO));
        // The window's record is the batch's: its first mapping is gone, the second is there.
        assert!(block_on(vm.region.map(0, &vm.object, 0, 0x10000, true)).is_ok());
        assert!(block_on(vm.region.map(0x10000, &second, 0, 0x10000, true)).is_err());
        // The flat view the batch reported is the manager's now.
        let ranges = |view: &[crate::region_manager::FlatEntry<crate::SharedObject>]| {
            view.iter()
                .map(|entry| (entry.range, entry.writable, entry.region.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ranges(&block_on(vm.mgr.flat_view()).unwrap()),
            ranges(&planned.flat_view),
            "the flat view the dry run showed is the manager's now"
        );
    }

    #[test]
    fn a_batch_costs_its_net_change() {
        let vm = vm();
        // Read-only and back, hidden and shown again, placed and removed again: nothing.
        let applied = block_on(vm.mgr.apply(vec![
            visibility(PAM0, RamVisibility::ReadOnly),
            visibility(VGA, RamVisibility::Unmapped),
            vm.control.map_to_guest_change(MMIO, true),
            visibility(PAM0, RamVisibility::ReadWrite),
            vm.control.unmap_from_guest_change(),
            visibility(VGA, RamVisibility::ReadWrite),
        ]))
        .unwrap();
        assert!(applied.plan.ops.is_empty(), "{:?}", applied.plan);
        assert!(vm.partition.log().is_empty());
        assert_eq!(vm.control.gpa(), None);
        // Read-only, read-write, read-only: one unmap and one map, as read-only alone.
        block_on(vm.mgr.apply(vec![
            visibility(PAM0, RamVisibility::ReadOnly),
            visibility(PAM0, RamVisibility::ReadWrite),
            visibility(PAM0, RamVisibility::ReadOnly),
        ]))
        .unwrap();
        assert_eq!(
            vm.partition.take_log(),
            [
                C::unmap(PAM0.start(), PAM0.len()),
                C::map(PAM0.start(), PAM0.len(), false, true, PAM0.start())
            ]
        );
        // A placed window moved away and back: nothing.
        block_on(vm.control.map_to_guest(MMIO, true)).unwrap();
        vm.partition.clear_log();
        let applied = block_on(vm.mgr.apply(vec![
            vm.control.map_to_guest_change(MMIO + 0x10_0000, true),
            vm.control.map_to_guest_change(MMIO, true),
        ]))
        .unwrap();
        assert!(applied.plan.ops.is_empty());
        assert!(vm.partition.log().is_empty());
        assert_eq!(vm.control.gpa(), Some(MMIO));
    }

    #[test]
    fn a_window_of_another_manager_is_refused() {
        let vm = vm();
        let other = self::vm();
        let error = block_on(vm.mgr.apply(vec![
            visibility(PAM0, RamVisibility::ReadOnly),
            other.control.map_to_guest_change(MMIO, true),
        ]))
        .unwrap_err();
        assert!(
            matches!(&error, BatchError::ForeignWindow { index: 1, name } if name == "vram"),
            "{error:?}"
        );
        assert!(vm.partition.log().is_empty());
    }

    #[test]
    fn a_window_knows_the_manager_that_made_it() {
        let (vm, other) = (vm(), self::vm());
        assert!(vm.control.made_by(&vm.mgr) && vm.region.made_by(&vm.mgr));
        assert!(!other.control.made_by(&vm.mgr) && !other.region.made_by(&vm.mgr));
    }

    #[test]
    fn a_partition_refusing_a_batch_call_poisons_the_manager() {
        let vm = vm();
        vm.partition.fail_on(virt::RecordedOp::Map, PAM0.start());
        let error = block_on(
            vm.mgr
                .apply(vec![visibility(PAM0, RamVisibility::ReadOnly)]),
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                BatchError::Manager(RegionManagerError::ManagerPoisoned { .. })
            ),
            "{error:?}"
        );
        let error = block_on(vm.mgr.apply(Vec::new())).unwrap_err();
        assert!(matches!(
            error,
            BatchError::Manager(RegionManagerError::ManagerPoisoned { .. })
        ));
    }

    /// Names each of `count` windows `rounds` times (all of them, then all again) and returns
    /// the work of finding them.
    fn work_for_windows(count: usize, rounds: usize) -> u64 {
        let windows: Vec<Arc<usize>> = (0..count).map(Arc::new).collect();
        let mut copies = WindowCopies::new();
        for round in 0..rounds {
            for window in &windows {
                let record = copies.copy_of(window.clone(), |&id| vec![id]);
                assert_eq!(record[0], **window, "each change reaches its window's copy");
                record.push(round);
            }
        }
        let work = copies.work();
        let copies = copies.into_copies();
        assert_eq!(copies.len(), count, "one copy per window");
        for ((window, record), expected) in copies.iter().zip(&windows) {
            assert!(Arc::ptr_eq(window, expected), "in the order first named");
            let mut changes = vec![**window];
            changes.extend(0..rounds);
            assert_eq!(record, &changes, "every change went to the one copy");
        }
        work
    }

    #[test]
    fn a_batch_finds_each_window_without_visiting_the_others() {
        // Each change's window was searched for among all the windows named before: a batch
        // placing 30,000 windows compared some 450 million pairs (seconds).
        let small = work_for_windows(100, 3);
        let large = work_for_windows(10_000, 3);
        assert_eq!(small, 300, "one visit per change");
        assert_eq!(
            large,
            100 * small,
            "finding a window must not cost more with more windows: {small} for 100, {large} for 10,000"
        );
    }

    #[test]
    fn windows_with_equal_records_stay_apart() {
        // Identity, not equality: two windows with equal contents get a copy each.
        let (a, b) = (Arc::new(7usize), Arc::new(7usize));
        let mut copies = WindowCopies::new();
        *copies.copy_of(a.clone(), |_| 0) += 1;
        *copies.copy_of(b.clone(), |_| 0) += 2;
        *copies.copy_of(a.clone(), |_| 0) += 10;
        let copies = copies.into_copies();
        assert_eq!(copies.len(), 2);
        assert!(Arc::ptr_eq(&copies[0].0, &a) && copies[0].1 == 11);
        assert!(Arc::ptr_eq(&copies[1].0, &b) && copies[1].1 == 2);
    }
}
