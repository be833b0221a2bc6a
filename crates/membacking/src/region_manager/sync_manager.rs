//! A synchronous reference driver: the planner plus [`apply_plan`] against real
//! [`PartitionMemoryMap`]s and a mapping-manager callback, all on the caller's thread.
//!
//! It does exactly what the region-manager thread will do per message — begin a transaction,
//! apply the change, check the partitions' slots, run the plan, then commit, roll back (failed
//! attach or no free slot) or poison (fatal failure) — without threads or OS memory, so the
//! whole pipeline can be tested with
//! `RecordingPartition`s. The mapping manager and VA mappers are stood in for by a callback
//! that receives each [`MapperRequest`].

use super::apply::apply_plan;
use super::apply::ApplyError;
use super::apply::PlanTarget;
use super::error::FatalError;
use super::error::RegionManagerError;
use super::plan::Change;
use super::plan::ChangeOutcome;
use super::plan::Plan;
use super::plan::Transaction;
use super::slot_check::check_slot_capacity;
use super::state::RegionManagerState;
use super::types::ActiveMapping;
use super::types::MapParams;
use super::types::NewRegion;
use super::types::PartitionMapperInfo;
use super::types::RegionId;
use super::types::RegionMapping;
use memory_range::MemoryRange;
use std::sync::Arc;
use std::sync::Weak;
use virt::PartitionMemoryMap;

/// Something that accepts region-manager changes: the synchronous manager (which applies
/// them), a [`Transaction`] (which only plans them), and later the region manager's client
/// handle. The device-window and RAM-visibility logic is written against this trait so that
/// the same code both acts and plans.
pub trait RegionCommands<O> {
    /// Applies one change; `cause` words the reasons of its operations.
    fn run(
        &mut self,
        change: Change<O>,
        cause: Option<&str>,
    ) -> Result<ChangeOutcome, RegionManagerError>;
}

impl<O: Clone> RegionCommands<O> for Transaction<'_, O> {
    fn run(
        &mut self,
        change: Change<O>,
        cause: Option<&str>,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        self.apply_with_cause(change, cause)
    }
}

/// A request to the mapping manager or a VA mapper, as the synchronous applier hands it to
/// its callback.
#[derive(Debug)]
pub enum MapperRequest<'a, O> {
    /// Add a mapping to the active mapping set.
    AddMapping(&'a ActiveMapping<O>),
    /// Remove the mappings inside the range and invalidate the VA mappers holding them.
    Invalidate(MemoryRange),
    /// Populate the VA of `range` for this partition's mapper before it is mapped.
    PopulateVa {
        /// The partition (registration index).
        partition: usize,
        /// The GPA (= VA window offset) range.
        range: MemoryRange,
    },
}

/// A [`PlanTarget`] that calls partitions directly and passes mapper requests to a callback.
/// Partitions are held weakly; a gone partition makes its operations succeed silently (and
/// skips its VA population).
pub struct PartitionApplier<'a, F> {
    /// The partitions, indexed like the planner's partition mappers.
    pub partitions: &'a [Weak<dyn PartitionMemoryMap>],
    /// The VA window base that `va_offset`s are added to.
    pub va_base: usize,
    /// The mapping-manager stand-in.
    pub mapper: &'a mut F,
}

impl<F> PartitionApplier<'_, F> {
    fn partition(&self, index: usize) -> Result<Option<Arc<dyn PartitionMemoryMap>>, virt::Error> {
        let weak = self
            .partitions
            .get(index)
            .ok_or_else(|| format!("plan names partition {index}, which is not attached"))?;
        Ok(weak.upgrade())
    }
}

impl<O, F> PlanTarget<O> for PartitionApplier<'_, F>
where
    F: FnMut(MapperRequest<'_, O>) -> Result<(), virt::Error>,
{
    fn add_mapping(&mut self, mapping: &ActiveMapping<O>) -> Result<(), virt::Error> {
        (self.mapper)(MapperRequest::AddMapping(mapping))
    }

    fn invalidate(&mut self, range: MemoryRange) -> Result<(), virt::Error> {
        (self.mapper)(MapperRequest::Invalidate(range))
    }

    fn populate_va(&mut self, partition: usize, range: MemoryRange) -> Result<(), virt::Error> {
        if self.partition(partition)?.is_none() {
            return Ok(());
        }
        (self.mapper)(MapperRequest::PopulateVa { partition, range })
    }

    fn map(
        &mut self,
        partition: usize,
        va_offset: u64,
        gpa: u64,
        size: u64,
        writable: bool,
        exec: bool,
    ) -> Result<(), virt::Error> {
        let Some(target) = self.partition(partition)? else {
            return Ok(());
        };
        let va = usize::try_from(va_offset)
            .ok()
            .and_then(|offset| self.va_base.checked_add(offset))
            .ok_or("VA offset does not fit the address space")?;
        let size = usize::try_from(size).map_err(|_| "size does not fit the address space")?;
        target.map_range(va as *mut u8, size, gpa, writable, exec)
    }

    fn prefetch(&mut self, partition: usize, gpa: u64, size: u64) -> Result<(), virt::Error> {
        match self.partition(partition)? {
            Some(target) => target.prefetch_range(gpa, size),
            None => Ok(()),
        }
    }

    fn pin(&mut self, partition: usize, gpa: u64, size: u64) -> Result<(), virt::Error> {
        match self.partition(partition)? {
            Some(target) => target.pin_range(gpa, size),
            None => Ok(()),
        }
    }

    fn unmap(&mut self, partition: usize, gpa: u64, size: u64) -> Result<(), virt::Error> {
        match self.partition(partition)? {
            Some(target) => target.unmap_range(gpa, size),
            None => Ok(()),
        }
    }
}

/// The region manager driven synchronously: planner state, attached partitions (weak), a
/// mapping-manager callback, and the poisoned flag.
pub struct SyncRegionManager<O, F> {
    state: RegionManagerState<O>,
    partitions: Vec<Weak<dyn PartitionMemoryMap>>,
    va_base: usize,
    mapper: F,
    poisoned: Option<Arc<FatalError>>,
}

impl<O, F> SyncRegionManager<O, F>
where
    O: Clone,
    F: FnMut(MapperRequest<'_, O>) -> Result<(), virt::Error>,
{
    /// A manager for a VA window of `va_window_len` bytes based at `va_base` (only used to
    /// compute the addresses handed to partitions), with `mapper` standing in for the mapping
    /// manager.
    pub fn new(va_window_len: u64, va_base: usize, mapper: F) -> Self {
        Self {
            state: RegionManagerState::new(va_window_len),
            partitions: Vec::new(),
            va_base,
            mapper,
            poisoned: None,
        }
    }

    /// The planner state.
    pub fn state(&self) -> &RegionManagerState<O> {
        &self.state
    }

    /// The planner state, mutable, for tests that plan against it directly.
    #[cfg(test)]
    pub(crate) fn state_mut_for_tests(&mut self) -> &mut RegionManagerState<O> {
        &mut self.state
    }

    /// The mapping-manager callback.
    pub fn mapper(&mut self) -> &mut F {
        &mut self.mapper
    }

    /// Whether an unrecoverable failure poisoned the manager.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check_poisoned(&self) -> Result<(), RegionManagerError> {
        match &self.poisoned {
            Some(cause) => Err(RegionManagerError::ManagerPoisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Dry run of one change: the plan, nothing applied.
    pub fn plan(&mut self, change: Change<O>) -> Result<Plan<O>, RegionManagerError> {
        self.check_poisoned()?;
        self.state.plan(change)
    }

    /// Dry run of one change that also lets `inspect` look at the state the change would
    /// leave (e.g. its flat view).
    pub fn plan_with<R>(
        &mut self,
        change: Change<O>,
        cause: Option<&str>,
        inspect: impl FnOnce(&Transaction<'_, O>) -> R,
    ) -> Result<(Plan<O>, R), RegionManagerError> {
        self.check_poisoned()?;
        let mut transaction = self.state.begin();
        transaction.apply_with_cause(change, cause)?;
        let result = inspect(&transaction);
        let plan = transaction.take_plan();
        transaction.rollback();
        Ok((plan, result))
    }

    /// Applies one change and carries out its plan. An `AddPartition` change registers a
    /// partition mapper without a partition (as if it were gone); use
    /// [`SyncRegionManager::add_partition`] to attach one.
    pub fn run_change(
        &mut self,
        change: Change<O>,
        cause: Option<&str>,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        let gone: Weak<dyn PartitionMemoryMap> = Weak::<virt::RecordingPartition>::new();
        let new_partition = matches!(change, Change::AddPartition(_)).then_some(gone);
        self.run_inner(change, cause, new_partition)
    }

    fn run_inner(
        &mut self,
        change: Change<O>,
        cause: Option<&str>,
        new_partition: Option<Weak<dyn PartitionMemoryMap>>,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        self.check_poisoned()?;
        let va_window_len = self.state.va_window_len();
        let mut transaction = self.state.begin();
        let outcome = transaction.apply_with_cause(change, cause)?;
        // Dropping the transaction on a refusal rolls it back.
        check_slot_capacity(transaction.plan(), |index| {
            self.partitions.get(index).and_then(Weak::upgrade)
        })?;
        let pushed = if let Some(partition) = new_partition {
            self.partitions.push(partition);
            true
        } else {
            false
        };
        let mut applier = PartitionApplier {
            partitions: &self.partitions,
            va_base: self.va_base,
            mapper: &mut self.mapper,
        };
        match apply_plan(transaction.plan(), va_window_len, &mut applier) {
            Ok(()) => {
                transaction.commit();
                Ok(outcome)
            }
            Err(ApplyError::Attach(error)) => {
                transaction.rollback();
                if pushed {
                    self.partitions.pop();
                }
                Err(RegionManagerError::PartitionMapper(error))
            }
            Err(ApplyError::Fatal(error)) => {
                transaction.commit();
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "memory manager poisoned"
                );
                let cause = Arc::new(error);
                self.poisoned = Some(cause.clone());
                Err(RegionManagerError::ManagerPoisoned { cause })
            }
        }
    }

    /// `AddPartition`: maps every active region into `partition` (held weakly) at `offset`.
    /// On failure the partition mapper is discarded (one whole-window unmap) and nothing else
    /// changes. Returns the partition mapper's index.
    pub fn add_partition(
        &mut self,
        partition: &Arc<dyn PartitionMemoryMap>,
        offset: u64,
        pin_mappings: bool,
    ) -> Result<usize, RegionManagerError> {
        let change = Change::AddPartition(PartitionMapperInfo {
            offset,
            pin_mappings,
        });
        match self.run_inner(change, None, Some(Arc::downgrade(partition)))? {
            ChangeOutcome::PartitionAdded(index) => Ok(index),
            _ => Ok(self.partitions.len() - 1),
        }
    }

    /// `AddRegion`.
    pub fn add_region(
        &mut self,
        name: &str,
        range: MemoryRange,
        priority: u8,
        dma_target: bool,
    ) -> Result<RegionId, RegionManagerError> {
        self.add_region_with(NewRegion::new(name, range, priority, dma_target))
    }

    /// `AddRegion` with a description for reasons.
    pub fn add_region_with(&mut self, new: NewRegion) -> Result<RegionId, RegionManagerError> {
        match self.run_inner(Change::AddRegion(new), None, None)? {
            ChangeOutcome::RegionAdded(id) => Ok(id),
            other => unreachable!("AddRegion produced {other:?}"),
        }
    }

    /// `RemoveRegion`.
    pub fn remove_region(&mut self, id: RegionId) -> Result<(), RegionManagerError> {
        self.run_inner(Change::RemoveRegion(id), None, None)
            .map(drop)
    }

    /// `MapRegion`.
    pub fn map_region(
        &mut self,
        id: RegionId,
        params: MapParams,
    ) -> Result<(), RegionManagerError> {
        self.run_inner(Change::MapRegion(id, params), None, None)
            .map(drop)
    }

    /// `UnmapRegion`.
    pub fn unmap_region(&mut self, id: RegionId) -> Result<(), RegionManagerError> {
        self.run_inner(Change::UnmapRegion(id), None, None)
            .map(drop)
    }

    /// `AddMapping`.
    pub fn add_mapping(
        &mut self,
        id: RegionId,
        mapping: RegionMapping<O>,
    ) -> Result<(), RegionManagerError> {
        self.run_inner(Change::AddMapping(id, mapping), None, None)
            .map(drop)
    }

    /// `RemoveMappings`.
    pub fn remove_mappings(
        &mut self,
        id: RegionId,
        range_in_region: MemoryRange,
    ) -> Result<(), RegionManagerError> {
        self.run_inner(Change::RemoveMappings(id, range_in_region), None, None)
            .map(drop)
    }
}

impl<O, F> RegionCommands<O> for SyncRegionManager<O, F>
where
    O: Clone,
    F: FnMut(MapperRequest<'_, O>) -> Result<(), virt::Error>,
{
    fn run(
        &mut self,
        change: Change<O>,
        cause: Option<&str>,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        self.run_change(change, cause)
    }
}

impl<O, F> Drop for SyncRegionManager<O, F> {
    /// Stopping the region manager discards every partition mapper: each live partition gets
    /// one whole-window unmap per mapper.
    fn drop(&mut self) {
        let window_len = self.state.va_window_len();
        for (info, partition) in self.state.partitions().iter().zip(&self.partitions) {
            if let Some(partition) = partition.upgrade() {
                if let Err(error) = partition.unmap_range(info.offset, window_len) {
                    tracing::warn!(
                        error = error.as_ref() as &dyn std::error::Error,
                        "unmapping a partition at shutdown failed"
                    );
                }
            }
        }
    }
}
