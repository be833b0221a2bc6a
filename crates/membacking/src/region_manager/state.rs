//! The region manager's state, its indexes, and the undoable mutations the planner is built on.
//!
//! Indexes (all kept in step by the mutation primitives below):
//! - `regions`: id → region; id order is list (creation) order.
//! - `by_priority`: per priority, `(start, id) → end`. The nesting rule makes the regions of one
//!   priority pairwise disjoint or identical, so the regions overlapping a range are found per
//!   priority with one predecessor lookup plus a range scan.
//! - `active`: start → id of the active regions, which are pairwise disjoint.
//! - `mapped`: `(start, Reverse(priority), id)` of every mapped region, the order in which
//!   `activate_best` considers candidates.
//!
//! Every mutation pushes its inverse on the undo log, so a transaction can be rolled back in
//! time proportional to what it changed.

use super::types::MapParams;
use super::types::PartitionMapperInfo;
use super::types::Region;
use super::types::RegionId;
use super::types::RegionManagerInspect;
use super::types::RegionMapping;
use memory_range::MemoryRange;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// The inverse of one mutation.
#[derive(Debug)]
pub(crate) enum Undo<O> {
    /// Undo an insertion: remove the region.
    RemoveRegion(RegionId),
    /// Undo a removal: put the region back, exactly as it was.
    InsertRegion(Box<Region<O>>),
    /// Undo a parameter change.
    SetParams(RegionId, Option<MapParams>),
    /// Undo an activation flag change.
    SetActive(RegionId, bool),
    /// Undo a mapping insertion (also restores the region's next sequence number).
    RemoveMapping(RegionId, u64),
    /// Undo a mapping removal.
    InsertMapping(RegionId, u64, RegionMapping<O>),
    /// Undo an id allocation.
    SetNextId(u64),
    /// Undo a partition registration.
    PopPartition,
}

/// The region manager's state: regions, partition mappers and the indexes that make every
/// change cost O(log n + size of the change).
///
/// Change it only through [`RegionManagerState::begin`] (a transaction) or the dry-run
/// [`RegionManagerState::plan`].
#[derive(Debug)]
pub struct RegionManagerState<O> {
    pub(crate) va_window_len: u64,
    pub(crate) next_id: u64,
    pub(crate) regions: BTreeMap<RegionId, Region<O>>,
    pub(crate) by_priority: BTreeMap<u8, BTreeMap<(u64, RegionId), u64>>,
    pub(crate) active: BTreeMap<u64, RegionId>,
    pub(crate) mapped: BTreeSet<(u64, Reverse<u8>, RegionId)>,
    pub(crate) partitions: Vec<PartitionMapperInfo>,
    pub(crate) undo: Vec<Undo<O>>,
    /// Index entries and regions visited by planning, for complexity checks.
    pub(crate) work: u64,
}

impl<O> RegionManagerState<O> {
    /// An empty region manager for a VA window of `va_window_len` bytes (regions must end
    /// within it).
    pub fn new(va_window_len: u64) -> Self {
        Self {
            va_window_len,
            next_id: 1,
            regions: BTreeMap::new(),
            by_priority: BTreeMap::new(),
            active: BTreeMap::new(),
            mapped: BTreeSet::new(),
            partitions: Vec::new(),
            undo: Vec::new(),
            work: 0,
        }
    }

    /// The VA window length.
    pub fn va_window_len(&self) -> u64 {
        self.va_window_len
    }

    /// The region with this id.
    pub fn region(&self, id: RegionId) -> Option<&Region<O>> {
        self.regions.get(&id)
    }

    /// All regions in list (creation) order.
    pub fn regions(&self) -> impl Iterator<Item = &Region<O>> + '_ {
        self.regions.values()
    }

    /// The number of regions.
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// The active regions in address order.
    pub fn active_regions(&self) -> impl Iterator<Item = &Region<O>> + '_ {
        self.active.values().map(|id| &self.regions[id])
    }

    /// The inspect snapshot of the regions and partition mappers.
    pub fn inspect(&self) -> RegionManagerInspect {
        RegionManagerInspect {
            regions: self.regions().map(Region::inspect).collect(),
            partitions: self.partitions.clone(),
        }
    }

    /// The partition mappers in registration order.
    pub fn partitions(&self) -> &[PartitionMapperInfo] {
        &self.partitions
    }

    /// How many index entries and regions planning has visited so far (a monotonic counter
    /// for complexity tests and benchmarks).
    pub fn work_counter(&self) -> u64 {
        self.work
    }

    /// The ids of every region overlapping `range`, in list order. O(P log n + k) for P
    /// priorities in use and k results. Counts its work.
    pub(crate) fn overlapping_regions(&mut self, range: MemoryRange) -> Vec<RegionId> {
        let (found, work) = self.find_overlapping_regions(range);
        self.work += work;
        found
    }

    /// The ids of every region overlapping `range`, in list order, and the number of index
    /// entries visited.
    pub(crate) fn find_overlapping_regions(&self, range: MemoryRange) -> (Vec<RegionId>, u64) {
        let mut found = Vec::new();
        let mut work = 0;
        for index in self.by_priority.values() {
            work += 1;
            // Within one priority, regions are disjoint or identical: only the group that
            // starts last before `range` can reach into it.
            if let Some((&(start, _), &end)) =
                index.range(..(range.start(), RegionId::MIN)).next_back()
            {
                if end > range.start() {
                    for (&(_, id), _) in
                        index.range((start, RegionId::MIN)..=(start, RegionId::MAX))
                    {
                        work += 1;
                        found.push(id);
                    }
                }
            }
            for (&(_, id), _) in
                index.range((range.start(), RegionId::MIN)..(range.end(), RegionId::MIN))
            {
                work += 1;
                found.push(id);
            }
        }
        found.sort_unstable();
        (found, work)
    }

    /// The ids of the active regions overlapping `range`, in list order.
    pub(crate) fn overlapping_active(&mut self, range: MemoryRange) -> Vec<RegionId> {
        let mut found = Vec::new();
        if let Some((_, &id)) = self.active.range(..range.start()).next_back() {
            if self.regions[&id].range.end() > range.start() {
                found.push(id);
            }
        }
        found.extend(
            self.active
                .range(range.start()..range.end())
                .map(|(_, &id)| id),
        );
        self.work += 1 + found.len() as u64;
        found.sort_unstable();
        found
    }

    /// The best mapped region lying entirely inside `[cursor, limit)`: lowest start, then
    /// highest priority, then earliest creation.
    pub(crate) fn best_mapped_inside(&mut self, cursor: u64, limit: u64) -> Option<RegionId> {
        let mut work = 0;
        let mut picked = None;
        for &(start, _, id) in self
            .mapped
            .range((cursor, Reverse(u8::MAX), RegionId::MIN)..)
        {
            work += 1;
            if start >= limit {
                break;
            }
            // Candidates that start inside but end beyond the span can only be regions that
            // contain the span's region and share its start: a bounded number.
            if self.regions[&id].range.end() <= limit {
                picked = Some(id);
                break;
            }
        }
        self.work += work;
        picked
    }

    // ----- mutation primitives; each records its inverse -----

    fn index_region(&mut self, region: &Region<O>) {
        self.by_priority
            .entry(region.priority)
            .or_default()
            .insert((region.range.start(), region.id), region.range.end());
        if region.params.is_some() {
            self.mapped
                .insert((region.range.start(), Reverse(region.priority), region.id));
        }
        if region.active {
            self.active.insert(region.range.start(), region.id);
        }
    }

    fn unindex_region(&mut self, region: &Region<O>) {
        if let Some(index) = self.by_priority.get_mut(&region.priority) {
            index.remove(&(region.range.start(), region.id));
            if index.is_empty() {
                self.by_priority.remove(&region.priority);
            }
        }
        self.mapped
            .remove(&(region.range.start(), Reverse(region.priority), region.id));
        if region.active {
            self.active.remove(&region.range.start());
        }
    }

    pub(crate) fn insert_region(&mut self, region: Region<O>) {
        let id = region.id;
        self.index_region(&region);
        self.regions.insert(id, region);
        self.undo.push(Undo::RemoveRegion(id));
    }

    pub(crate) fn remove_region(&mut self, id: RegionId) -> Option<RegionId> {
        let region = self.regions.remove(&id)?;
        self.unindex_region(&region);
        self.undo.push(Undo::InsertRegion(Box::new(region)));
        Some(id)
    }

    /// Sets a region's parameters and the `mapped` index; returns the old parameters, or
    /// `None` when the region does not exist. Records nothing.
    fn raw_set_params(
        &mut self,
        id: RegionId,
        params: Option<MapParams>,
    ) -> Option<Option<MapParams>> {
        let region = self.regions.get_mut(&id)?;
        let old = std::mem::replace(&mut region.params, params);
        let key = (region.range.start(), Reverse(region.priority), id);
        if params.is_some() {
            self.mapped.insert(key);
        } else {
            self.mapped.remove(&key);
        }
        Some(old)
    }

    /// Sets a region's active flag and the `active` index; returns the old flag, or `None`
    /// when the region does not exist. Records nothing.
    fn raw_set_active(&mut self, id: RegionId, active: bool) -> Option<bool> {
        let region = self.regions.get_mut(&id)?;
        let old = std::mem::replace(&mut region.active, active);
        if active {
            self.active.insert(region.range.start(), id);
        } else if old {
            self.active.remove(&region.range.start());
        }
        Some(old)
    }

    /// Inserts a mapping under a given sequence number. Records nothing.
    fn raw_insert_mapping(&mut self, id: RegionId, seq: u64, mapping: RegionMapping<O>) {
        if let Some(region) = self.regions.get_mut(&id) {
            region
                .mappings
                .by_start
                .insert(mapping.range_in_region.start(), seq);
            region.mappings.by_seq.insert(seq, mapping);
        }
    }

    /// Removes a mapping by sequence number. Records nothing.
    fn raw_remove_mapping(&mut self, id: RegionId, seq: u64) -> Option<RegionMapping<O>> {
        let region = self.regions.get_mut(&id)?;
        let mapping = region.mappings.by_seq.remove(&seq)?;
        region
            .mappings
            .by_start
            .remove(&mapping.range_in_region.start());
        Some(mapping)
    }

    pub(crate) fn set_params(&mut self, id: RegionId, params: Option<MapParams>) {
        if let Some(old) = self.raw_set_params(id, params) {
            self.undo.push(Undo::SetParams(id, old));
        }
    }

    pub(crate) fn set_active(&mut self, id: RegionId, active: bool) {
        if let Some(old) = self.raw_set_active(id, active) {
            self.undo.push(Undo::SetActive(id, old));
        }
    }

    pub(crate) fn insert_mapping(&mut self, id: RegionId, mapping: RegionMapping<O>) {
        let Some(region) = self.regions.get_mut(&id) else {
            return;
        };
        let seq = region.mappings.next_seq;
        region.mappings.next_seq += 1;
        self.raw_insert_mapping(id, seq, mapping);
        self.undo.push(Undo::RemoveMapping(id, seq));
    }

    pub(crate) fn remove_mapping(&mut self, id: RegionId, seq: u64) {
        if let Some(mapping) = self.raw_remove_mapping(id, seq) {
            self.undo.push(Undo::InsertMapping(id, seq, mapping));
        }
    }

    pub(crate) fn allocate_id(&mut self) -> RegionId {
        let id = RegionId(self.next_id);
        self.undo.push(Undo::SetNextId(self.next_id));
        self.next_id += 1;
        id
    }

    pub(crate) fn push_partition(&mut self, info: PartitionMapperInfo) -> usize {
        self.partitions.push(info);
        self.undo.push(Undo::PopPartition);
        self.partitions.len() - 1
    }

    /// Undoes every mutation recorded after `mark`, newest first.
    pub(crate) fn rollback_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
            let Some(entry) = self.undo.pop() else {
                break;
            };
            match entry {
                Undo::RemoveRegion(id) => {
                    if let Some(region) = self.regions.remove(&id) {
                        self.unindex_region(&region);
                    }
                }
                Undo::InsertRegion(region) => {
                    self.index_region(&region);
                    self.regions.insert(region.id, *region);
                }
                Undo::SetParams(id, params) => {
                    self.raw_set_params(id, params);
                }
                Undo::SetActive(id, active) => {
                    self.raw_set_active(id, active);
                }
                Undo::RemoveMapping(id, seq) => {
                    self.raw_remove_mapping(id, seq);
                    if let Some(region) = self.regions.get_mut(&id) {
                        region.mappings.next_seq = seq;
                    }
                }
                Undo::InsertMapping(id, seq, mapping) => {
                    self.raw_insert_mapping(id, seq, mapping);
                }
                Undo::SetNextId(next_id) => self.next_id = next_id,
                Undo::PopPartition => {
                    self.partitions.pop();
                }
            }
        }
    }

    /// Forgets the undo log (the changes become permanent).
    pub(crate) fn commit_to(&mut self, mark: usize) {
        self.undo.truncate(mark);
    }
}
