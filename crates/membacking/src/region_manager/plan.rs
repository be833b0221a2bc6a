//! The planner: one change in, the ordered operations out.
//!
//! A [`Transaction`] applies changes to the [`RegionManagerState`] in place and records, for
//! each, the operations the applier must carry out, in this order: a region
//! that goes away is unmapped from every partition (in registration order) *before* its VA
//! mappings are invalidated; a region that appears is first added to the mapping manager, then
//! for each partition its VA is populated, then it is mapped, prefetched and pinned. Every
//! mutation is recorded on an undo log, so a failed validation, a dry run, or an attach that
//! the partition refused leaves the state exactly as it was.

use super::error::OverlapError;
use super::error::RegionManagerError;
use super::net::net_plan;
use super::net::Effect;
use super::net::OpGroup;
use super::net::RegionImage;
use super::net::SameObject;
use super::state::RegionManagerState;
use super::types::ActiveMapping;
use super::types::MapParams;
use super::types::Mappings;
use super::types::NewRegion;
use super::types::PartitionMapperInfo;
use super::types::Region;
use super::types::RegionId;
use super::types::RegionMapping;
use memory_range::MemoryRange;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// One change the region manager accepts (the region manager's messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<O> {
    /// Create a region (unmapped, inactive, no mappings).
    AddRegion(NewRegion),
    /// Delete a region, surfacing what it hid.
    RemoveRegion(RegionId),
    /// Map a region with these parameters (activation with the whole-region rule).
    MapRegion(RegionId, MapParams),
    /// Unmap a region, surfacing what it hid.
    UnmapRegion(RegionId),
    /// Add a mapping inside a region.
    AddMapping(RegionId, RegionMapping<O>),
    /// Remove the mappings of a region inside a range (relative to the region's start).
    RemoveMappings(RegionId, MemoryRange),
    /// Register a partition mapper and map every active region into it.
    AddPartition(PartitionMapperInfo),
}

/// What a successful change produced.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// A region was created with this id.
    RegionAdded(RegionId),
    /// A partition mapper was registered at this index (registration order).
    PartitionAdded(usize),
    /// The change was applied.
    Applied,
    /// The change had nothing to do (e.g. mapping a region with the parameters it has).
    Unchanged,
}

/// One operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanOp<O> {
    /// Mapping manager: add a mapping to the active mapping set.
    AddMapping(ActiveMapping<O>),
    /// Mapping manager: remove every mapping inside `range` and invalidate the VA mappers
    /// that received one (waits for their acknowledgements).
    Invalidate {
        /// The GPA range.
        range: MemoryRange,
    },
    /// Ask the partition's VA mapper to populate `range` and wait; the outcome is ignored
    /// (holes inside a device window are fine).
    PopulateVa {
        /// The partition (registration index).
        partition: usize,
        /// The GPA (= VA window offset) range.
        range: MemoryRange,
    },
    /// `map_range(va_base + va_offset, size, gpa, writable, exec)` on the partition.
    Map {
        /// The partition (registration index).
        partition: usize,
        /// The offset of the mapped VA in the VA window.
        va_offset: u64,
        /// The GPA in the partition (region start plus the partition mapper's offset).
        gpa: u64,
        /// The size in bytes.
        size: u64,
        /// Writable.
        writable: bool,
        /// Executable.
        exec: bool,
    },
    /// `prefetch_range(gpa, size)` on the partition; a failure is logged and ignored.
    Prefetch {
        /// The partition (registration index).
        partition: usize,
        /// The GPA.
        gpa: u64,
        /// The size in bytes.
        size: u64,
    },
    /// `pin_range(gpa, size)` on the partition; on failure the range is unmapped again.
    Pin {
        /// The partition (registration index).
        partition: usize,
        /// The GPA.
        gpa: u64,
        /// The size in bytes.
        size: u64,
    },
    /// `unmap_range(gpa, size)` on the partition.
    Unmap {
        /// The partition (registration index).
        partition: usize,
        /// The GPA.
        gpa: u64,
        /// The size in bytes.
        size: u64,
    },
}

impl<O> PlanOp<O> {
    /// The partition this operation addresses, if it is a partition operation.
    pub fn partition(&self) -> Option<usize> {
        match *self {
            PlanOp::AddMapping(_) | PlanOp::Invalidate { .. } => None,
            PlanOp::PopulateVa { partition, .. }
            | PlanOp::Map { partition, .. }
            | PlanOp::Prefetch { partition, .. }
            | PlanOp::Pin { partition, .. }
            | PlanOp::Unmap { partition, .. } => Some(partition),
        }
    }

    /// The operation's kind as the dry-run API names it (`"invalidate"`, `"map"`, …);
    /// `"addMapping"` and `"populateVa"` for the two bookkeeping operations the JS plan omits.
    pub fn kind(&self) -> &'static str {
        match self {
            PlanOp::AddMapping(_) => "addMapping",
            PlanOp::Invalidate { .. } => "invalidate",
            PlanOp::PopulateVa { .. } => "populateVa",
            PlanOp::Map { .. } => "map",
            PlanOp::Prefetch { .. } => "prefetch",
            PlanOp::Pin { .. } => "pin",
            PlanOp::Unmap { .. } => "unmap",
        }
    }
}

impl<O> fmt::Display for PlanOp<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanOp::AddMapping(mapping) => write!(
                f,
                "add mapping {} (file offset {:#x}, {}{})",
                mapping.range,
                mapping.file_offset,
                if mapping.writable { "rw" } else { "ro" },
                if mapping.dma_target { ", dma" } else { "" }
            ),
            PlanOp::Invalidate { range } => write!(f, "invalidate {range}"),
            PlanOp::PopulateVa { partition, range } => {
                write!(f, "populate VA {range} for partition {partition}")
            }
            PlanOp::Map {
                partition,
                va_offset,
                gpa,
                size,
                writable,
                exec,
            } => write!(
                f,
                "partition {partition}: map({gpa:#x}, {size:#x}, {}{}, va+{va_offset:#x})",
                if *writable { "w" } else { "-" },
                if *exec { "x" } else { "-" }
            ),
            PlanOp::Prefetch {
                partition,
                gpa,
                size,
            } => write!(f, "partition {partition}: prefetch({gpa:#x}, {size:#x})"),
            PlanOp::Pin {
                partition,
                gpa,
                size,
            } => write!(f, "partition {partition}: pin({gpa:#x}, {size:#x})"),
            PlanOp::Unmap {
                partition,
                gpa,
                size,
            } => write!(f, "partition {partition}: unmap({gpa:#x}, {size:#x})"),
        }
    }
}

/// An operation with the reason it is needed, e.g.
/// `VGA window 0xa0000-0xc0000 hidden: RAM visibility Unmapped`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOp<O> {
    /// What to do.
    pub op: PlanOp<O>,
    /// Why, in words.
    pub reason: String,
}

impl<O> fmt::Display for PlannedOp<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.op, self.reason)
    }
}

/// The partition mapper an `AddPartition` change registers: its failures abort the attach
/// instead of poisoning the manager.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct AttachingPartition {
    /// The new partition mapper's registration index.
    pub partition: usize,
    /// Its GPA offset (the start of the whole-window unmap that discards it).
    pub offset: u64,
}

/// The ordered operations of one or more changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<O> {
    /// The operations, in execution order.
    pub ops: Vec<PlannedOp<O>>,
    /// Set when the plan registers a partition mapper.
    pub attaching: Option<AttachingPartition>,
    /// The GPA ranges whose flat view may differ after the plan, in the order touched.
    pub affected: Vec<MemoryRange>,
}

impl<O> Default for Plan<O> {
    fn default() -> Self {
        Self {
            ops: Vec::new(),
            attaching: None,
            affected: Vec::new(),
        }
    }
}

impl<O> Plan<O> {
    /// Whether the plan has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations without their reasons.
    pub fn op_list(&self) -> impl Iterator<Item = &PlanOp<O>> + '_ {
        self.ops.iter().map(|planned| &planned.op)
    }
}

/// A set of changes applied to the state, with the plan that carries them out; rolled back
/// unless committed (dropping it rolls back).
#[derive(Debug)]
pub struct Transaction<'a, O> {
    state: &'a mut RegionManagerState<O>,
    mark: usize,
    plan: Plan<O>,
    /// What each group of the plan's operations does, for [`Transaction::take_net_plan`].
    groups: Vec<OpGroup<O>>,
    finished: bool,
}

impl<O> Drop for Transaction<'_, O> {
    fn drop(&mut self) {
        if !self.finished {
            self.state.rollback_to(self.mark);
        }
    }
}

impl<O: Clone> RegionManagerState<O> {
    /// Starts a transaction. Changes applied through it are visible in
    /// [`Transaction::state`] at once and become permanent with [`Transaction::commit`].
    pub fn begin(&mut self) -> Transaction<'_, O> {
        let mark = self.undo.len();
        Transaction {
            state: self,
            mark,
            plan: Plan::default(),
            groups: Vec::new(),
            finished: false,
        }
    }

    /// Dry run: the operations `change` would need, without changing anything.
    pub fn plan(&mut self, change: Change<O>) -> Result<Plan<O>, RegionManagerError> {
        self.plan_with(change, |_| ()).map(|(plan, ())| plan)
    }

    /// Dry run that also lets `inspect` look at the state as the change leaves it (e.g. to
    /// compute the new flat view) before everything is rolled back.
    pub fn plan_with<R>(
        &mut self,
        change: Change<O>,
        inspect: impl FnOnce(&Transaction<'_, O>) -> R,
    ) -> Result<(Plan<O>, R), RegionManagerError> {
        let mut transaction = self.begin();
        transaction.apply(change)?;
        let result = inspect(&transaction);
        let plan = transaction.take_plan();
        transaction.rollback();
        Ok((plan, result))
    }
}

/// How an activation or deactivation is worded in reasons.
#[derive(Copy, Clone)]
enum Verb<'a> {
    Hidden,
    HiddenBy(&'a str),
    Remapped,
    Shown,
    Surfaced,
}

impl<O: Clone> Transaction<'_, O> {
    /// The state with every change so far applied.
    pub fn state(&self) -> &RegionManagerState<O> {
        self.state
    }

    /// The operations of every change so far.
    pub fn plan(&self) -> &Plan<O> {
        &self.plan
    }

    /// Takes the plan out (the transaction keeps its changes).
    pub fn take_plan(&mut self) -> Plan<O> {
        self.groups.clear();
        std::mem::take(&mut self.plan)
    }

    /// Takes the plan out without the operations that later changes of the transaction undo
    /// (a region hidden and shown again as it was, a mapping added and removed again, …), so
    /// the plan carries out the net change of every change applied so far (see the `net`
    /// module). The transaction keeps its changes.
    pub fn take_net_plan(&mut self) -> Plan<O>
    where
        O: SameObject,
    {
        let groups = std::mem::take(&mut self.groups);
        net_plan(
            std::mem::take(&mut self.plan),
            &groups,
            &mut self.state.work,
        )
    }

    /// Makes the changes permanent.
    pub fn commit(mut self) {
        self.state.commit_to(self.mark);
        self.finished = true;
    }

    /// Undoes every change of the transaction.
    pub fn rollback(mut self) {
        self.state.rollback_to(self.mark);
        self.finished = true;
    }

    /// Applies one change; on error neither the state nor the plan changes.
    pub fn apply(&mut self, change: Change<O>) -> Result<ChangeOutcome, RegionManagerError> {
        self.apply_with_cause(change, None)
    }

    /// Applies one change, naming `cause` in the reasons of its operations (for example
    /// `"RAM visibility Unmapped"`); without a cause a default wording is used.
    pub fn apply_with_cause(
        &mut self,
        change: Change<O>,
        cause: Option<&str>,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        let undo_mark = self.state.undo.len();
        let ops_mark = self.plan.ops.len();
        let affected_mark = self.plan.affected.len();
        let groups_mark = self.groups.len();
        let attaching = self.plan.attaching;
        let result = match change {
            Change::AddRegion(new) => self.add_region(new),
            Change::RemoveRegion(id) => self.remove_region(id, cause.unwrap_or("region removed")),
            Change::MapRegion(id, params) => self.map_region(id, params, cause),
            Change::UnmapRegion(id) => self.unmap_region(id, cause.unwrap_or("region unmapped")),
            Change::AddMapping(id, mapping) => self.add_mapping(id, mapping, cause),
            Change::RemoveMappings(id, range) => self.remove_mappings(id, range, cause),
            Change::AddPartition(info) => self.add_partition(info, cause),
        };
        if result.is_err() {
            self.state.rollback_to(undo_mark);
            self.plan.ops.truncate(ops_mark);
            self.plan.affected.truncate(affected_mark);
            self.groups.truncate(groups_mark);
            self.plan.attaching = attaching;
        }
        result
    }

    fn region(&self, id: RegionId) -> Result<&Region<O>, RegionManagerError> {
        self.state
            .regions
            .get(&id)
            .ok_or(RegionManagerError::NoSuchRegion(id))
    }

    fn push(&mut self, op: PlanOp<O>, reason: &str) {
        self.plan.ops.push(PlannedOp {
            op,
            reason: reason.to_owned(),
        });
    }

    /// Records that the operations planned since `first_op` have `effect` on `range`.
    fn group(&mut self, first_op: usize, range: MemoryRange, effect: Effect<O>) {
        self.groups.push(OpGroup {
            ops: first_op..self.plan.ops.len(),
            range,
            effect,
        });
    }

    fn touch(&mut self, range: MemoryRange) {
        if self.plan.affected.last() != Some(&range) {
            self.plan.affected.push(range);
        }
    }

    /// `AddRegion`: checks emptiness, the VA window, then the nesting rule
    /// against every overlapping region in list order.
    fn add_region(&mut self, new: NewRegion) -> Result<ChangeOutcome, RegionManagerError> {
        if new.range.is_empty() {
            return Err(RegionManagerError::EmptyRegion {
                name: new.name,
                range: new.range,
            });
        }
        if new.range.end() > self.state.va_window_len {
            return Err(RegionManagerError::RegionOutOfRange {
                name: new.name,
                range: new.range,
                window_len: self.state.va_window_len,
            });
        }
        for existing_id in self.state.overlapping_regions(new.range) {
            let existing = &self.state.regions[&existing_id];
            let allowed = match existing.priority.cmp(&new.priority) {
                Ordering::Greater => existing.range.contains(&new.range),
                Ordering::Equal => existing.range == new.range,
                Ordering::Less => new.range.contains(&existing.range),
            };
            if !allowed {
                return Err(OverlapError {
                    existing: existing.name.to_string(),
                    new: new.name,
                }
                .into());
            }
        }
        let id = self.state.allocate_id();
        self.state.insert_region(Region {
            id,
            name: new.name.into(),
            description: new.description.map(Arc::from),
            range: new.range,
            priority: new.priority,
            dma_target: new.dma_target,
            params: None,
            active: false,
            mappings: Mappings::default(),
        });
        Ok(ChangeOutcome::RegionAdded(id))
    }

    /// `RemoveRegion`.
    fn remove_region(
        &mut self,
        id: RegionId,
        cause: &str,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        let region = self.region(id)?;
        let was_active = region.active;
        let range = region.range;
        if was_active {
            self.deactivate(id, Verb::Hidden, cause);
        }
        self.state.remove_region(id);
        if was_active {
            self.activate_best(range, None, cause);
        }
        Ok(ChangeOutcome::Applied)
    }

    /// `UnmapRegion`.
    fn unmap_region(
        &mut self,
        id: RegionId,
        cause: &str,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        let region = self.region(id)?;
        let was_active = region.active;
        let range = region.range;
        if region.params.is_none() && !was_active {
            return Ok(ChangeOutcome::Unchanged);
        }
        if was_active {
            self.deactivate(id, Verb::Hidden, cause);
        }
        self.state.set_params(id, None);
        if was_active {
            self.activate_best(range, None, cause);
        }
        Ok(ChangeOutcome::Applied)
    }

    /// `MapRegion`: no-op for equal parameters; otherwise every active region
    /// overlapping this one is deactivated (in list order) unless one of them blocks it.
    fn map_region(
        &mut self,
        id: RegionId,
        params: MapParams,
        cause: Option<&str>,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        let region = self.region(id)?;
        if region.params == Some(params) {
            return Ok(ChangeOutcome::Unchanged);
        }
        let range = region.range;
        let priority = region.priority;
        let was_active = region.active;
        let display = region.display_name();
        let default_cause;
        let cause = match cause {
            Some(cause) => cause,
            None => {
                default_cause = format!("region mapped {params}");
                &default_cause
            }
        };
        let mut blocked = false;
        for other_id in self.state.overlapping_active(range) {
            let other = &self.state.regions[&other_id];
            if other.priority > priority || (other.priority == priority && other_id < id) {
                blocked = true;
            } else if other_id == id {
                self.deactivate(other_id, Verb::Remapped, cause);
            } else {
                self.deactivate(other_id, Verb::HiddenBy(&display), cause);
            }
        }
        self.state.set_params(id, Some(params));
        if !blocked {
            let verb = if was_active {
                Verb::Remapped
            } else {
                Verb::Shown
            };
            self.activate_best(range, Some((id, verb)), cause);
        }
        Ok(ChangeOutcome::Applied)
    }

    /// `AddMapping`.
    fn add_mapping(
        &mut self,
        id: RegionId,
        mapping: RegionMapping<O>,
        cause: Option<&str>,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        let region = self.region(id)?;
        let range = mapping.range_in_region;
        if range.is_empty() {
            return Err(RegionManagerError::EmptyMapping {
                region: region.name.to_string(),
                range,
            });
        }
        if let Some(seq) = region.mappings.overlapping(range).first() {
            return Err(RegionManagerError::MappingOverlap {
                region: region.name.to_string(),
                range,
                existing: region.mappings.by_seq[seq].range_in_region,
            });
        }
        if range.end() > region.range.len() {
            return Err(RegionManagerError::MappingOutOfRange {
                region: region.name.to_string(),
                range,
                region_len: region.range.len(),
            });
        }
        let activation = match (region.active, region.params) {
            (true, Some(params)) => {
                let absolute = offset_range(region.range, range);
                let what = format!("mapping {absolute} added to {}", region.display_name());
                Some((
                    with_cause(&what, cause),
                    ActiveMapping {
                        range: absolute,
                        object: mapping.object.clone(),
                        file_offset: mapping.file_offset,
                        writable: mapping.writable && params.writable,
                        dma_target: region.dma_target,
                    },
                ))
            }
            _ => None,
        };
        self.state.work += 1;
        if let Some((reason, active_mapping)) = activation {
            let absolute = active_mapping.range;
            let first_op = self.plan.ops.len();
            self.push(PlanOp::AddMapping(active_mapping.clone()), &reason);
            for partition in 0..self.state.partitions.len() {
                self.push(
                    PlanOp::PopulateVa {
                        partition,
                        range: absolute,
                    },
                    &reason,
                );
            }
            self.group(first_op, absolute, Effect::MappingAdded(active_mapping));
            self.touch(absolute);
        }
        self.state.insert_mapping(id, mapping);
        Ok(ChangeOutcome::Applied)
    }

    /// `RemoveMappings`.
    fn remove_mappings(
        &mut self,
        id: RegionId,
        range: MemoryRange,
        cause: Option<&str>,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        let region = self.region(id)?;
        if range.end() > region.range.len() {
            return Err(RegionManagerError::MappingOutOfRange {
                region: region.name.to_string(),
                range,
                region_len: region.range.len(),
            });
        }
        let overlapping = region.mappings.overlapping(range);
        for seq in &overlapping {
            let mapping = region.mappings.by_seq[seq].range_in_region;
            if !range.contains(&mapping) {
                return Err(RegionManagerError::PartialUnmap {
                    region: region.name.to_string(),
                    range,
                    mapping,
                });
            }
        }
        let active = region.active;
        let absolute = offset_range(region.range, range);
        let what = format!(
            "mappings in {absolute} removed from {}",
            region.display_name()
        );
        let removed = match (active, region.params) {
            (true, Some(params)) => {
                let mut removed: Vec<ActiveMapping<O>> = overlapping
                    .iter()
                    .map(|seq| active_mapping(region, &region.mappings.by_seq[seq], params))
                    .collect();
                removed.sort_by_key(|mapping| mapping.range.start());
                removed
            }
            _ => Vec::new(),
        };
        self.state.work += 1 + overlapping.len() as u64;
        for seq in overlapping {
            self.state.remove_mapping(id, seq);
        }
        if active {
            let first_op = self.plan.ops.len();
            self.push(
                PlanOp::Invalidate { range: absolute },
                &with_cause(&what, cause),
            );
            self.group(first_op, absolute, Effect::MappingsRemoved(removed));
            self.touch(absolute);
        }
        Ok(ChangeOutcome::Applied)
    }

    /// `AddPartition`: registers the mapper and maps every active region into
    /// it, in list order.
    fn add_partition(
        &mut self,
        info: PartitionMapperInfo,
        cause: Option<&str>,
    ) -> Result<ChangeOutcome, RegionManagerError> {
        if info.offset.checked_add(self.state.va_window_len).is_none() {
            return Err(RegionManagerError::InvalidPartitionOffset {
                offset: info.offset,
                window_len: self.state.va_window_len,
            });
        }
        let partition = self.state.push_partition(info);
        self.plan.attaching = Some(AttachingPartition {
            partition,
            offset: info.offset,
        });
        let mut active: Vec<RegionId> = self.state.active.values().copied().collect();
        active.sort_unstable();
        self.state.work += active.len() as u64;
        let default_cause = format!("partition {partition} attached");
        let cause = cause.unwrap_or(&default_cause);
        let first_op = self.plan.ops.len();
        for id in active {
            let region = &self.state.regions[&id];
            let reason = format!(
                "{} mapped into partition {partition}: {cause}",
                region.display_name()
            );
            let range = region.range;
            if let Some(params) = region.params {
                self.map_into_partition(partition, range, params, &reason);
            }
        }
        let window = MemoryRange::new(0..self.state.va_window_len);
        self.group(first_op, window, Effect::Other);
        Ok(ChangeOutcome::PartitionAdded(partition))
    }

    /// The partition mapper's `map`: populate the VA, map, prefetch, pin.
    fn map_into_partition(
        &mut self,
        partition: usize,
        range: MemoryRange,
        params: MapParams,
        reason: &str,
    ) {
        let info = self.state.partitions[partition];
        // AddPartition checked that offset + window length fits, and regions end in the window.
        let gpa = range.start() + info.offset;
        let size = range.len();
        self.push(PlanOp::PopulateVa { partition, range }, reason);
        self.push(
            PlanOp::Map {
                partition,
                va_offset: range.start(),
                gpa,
                size,
                writable: params.writable,
                exec: params.executable,
            },
            reason,
        );
        if params.prefetch {
            self.push(
                PlanOp::Prefetch {
                    partition,
                    gpa,
                    size,
                },
                reason,
            );
        }
        if info.pin_mappings {
            self.push(
                PlanOp::Pin {
                    partition,
                    gpa,
                    size,
                },
                reason,
            );
        }
    }

    /// *activate(R)*: its mappings to the mapping manager, then each partition.
    fn activate(&mut self, id: RegionId, verb: Verb<'_>, cause: &str) {
        let region = &self.state.regions[&id];
        debug_assert!(!region.active, "activating an active region");
        let Some(params) = region.params else {
            return;
        };
        let reason = describe(region, verb, cause);
        let range = region.range;
        let mappings: Vec<ActiveMapping<O>> = region
            .mappings()
            .map(|mapping| active_mapping(region, mapping, params))
            .collect();
        let image = image(range, params, &mappings);
        self.state.work += 1 + mappings.len() as u64;
        let first_op = self.plan.ops.len();
        for mapping in mappings {
            self.push(PlanOp::AddMapping(mapping), &reason);
        }
        for partition in 0..self.state.partitions.len() {
            self.map_into_partition(partition, range, params, &reason);
        }
        self.group(first_op, range, Effect::Shown(image));
        self.state.set_active(id, true);
        self.touch(range);
    }

    /// *deactivate(R)*: unmap from each partition, then invalidate the VA.
    fn deactivate(&mut self, id: RegionId, verb: Verb<'_>, cause: &str) {
        let region = &self.state.regions[&id];
        debug_assert!(region.active, "deactivating an inactive region");
        let reason = describe(region, verb, cause);
        let range = region.range;
        let shown = region.params.map(|params| {
            let mappings: Vec<ActiveMapping<O>> = region
                .mappings()
                .map(|mapping| active_mapping(region, mapping, params))
                .collect();
            image(range, params, &mappings)
        });
        self.state.work += 1;
        let first_op = self.plan.ops.len();
        for partition in 0..self.state.partitions.len() {
            let offset = self.state.partitions[partition].offset;
            self.push(
                PlanOp::Unmap {
                    partition,
                    gpa: range.start() + offset,
                    size: range.len(),
                },
                &reason,
            );
        }
        self.push(PlanOp::Invalidate { range }, &reason);
        // An active region always has parameters; without them nothing could cancel this.
        let effect = shown.map_or(Effect::Other, Effect::Hidden);
        self.group(first_op, range, effect);
        self.state.set_active(id, false);
        self.touch(range);
    }

    /// *activate_best(span)*: repeatedly activate the best mapped region lying
    /// inside the rest of the span, in ascending address order. `subject` is the region the
    /// change is about (worded with its own verb); others "surface".
    fn activate_best(
        &mut self,
        span: MemoryRange,
        subject: Option<(RegionId, Verb<'_>)>,
        cause: &str,
    ) {
        let mut cursor = span.start();
        while cursor < span.end() {
            let Some(id) = self.state.best_mapped_inside(cursor, span.end()) else {
                break;
            };
            let verb = match subject {
                Some((subject_id, verb)) if subject_id == id => verb,
                _ => Verb::Surfaced,
            };
            self.activate(id, verb, cause);
            cursor = self.state.regions[&id].range.end();
        }
    }
}

/// How the mapping manager holds `mapping` of `region` mapped with `params`.
fn active_mapping<O: Clone>(
    region: &Region<O>,
    mapping: &RegionMapping<O>,
    params: MapParams,
) -> ActiveMapping<O> {
    ActiveMapping {
        range: offset_range(region.range, mapping.range_in_region),
        object: mapping.object.clone(),
        file_offset: mapping.file_offset,
        writable: mapping.writable && params.writable,
        dma_target: region.dma_target,
    }
}

/// What a region at `range` mapped with `params` and holding `mappings` looks like from outside.
fn image<O: Clone>(
    range: MemoryRange,
    params: MapParams,
    mappings: &[ActiveMapping<O>],
) -> RegionImage<O> {
    let mut mappings = mappings.to_vec();
    mappings.sort_by_key(|mapping| mapping.range.start());
    RegionImage {
        range,
        writable: params.writable,
        executable: params.executable,
        mappings,
    }
}

/// `inner` (relative to `outer`'s start) as an absolute range.
fn offset_range(outer: MemoryRange, inner: MemoryRange) -> MemoryRange {
    MemoryRange::new(outer.start() + inner.start()..outer.start() + inner.end())
}

fn with_cause(what: &str, cause: Option<&str>) -> String {
    match cause {
        Some(cause) => format!("{what}: {cause}"),
        None => what.to_owned(),
    }
}

fn describe<O>(region: &Region<O>, verb: Verb<'_>, cause: &str) -> String {
    let name = region.display_name();
    match verb {
        Verb::Hidden => format!("{name} hidden: {cause}"),
        Verb::HiddenBy(by) => format!("{name} hidden by {by}: {cause}"),
        Verb::Remapped => format!("{name} remapped: {cause}"),
        Verb::Shown => format!("{name} shown: {cause}"),
        Verb::Surfaced => format!("{name} surfaced: {cause}"),
    }
}
