//! Netting the plan of a batch: operations that a later change of the same batch undoes are
//! left out, so a batch costs what its net change costs.
//!
//! The transaction groups the operations it plans by what they do to the outside world
//! ([`Effect`]): a region shown (its mappings added to the mapping manager, then mapped into
//! every partition) or hidden (unmapped from every partition, then its VA invalidated), or one
//! mapping added to or removed from a region that stays shown. Each effect is confined to a GPA
//! range. Two effects cancel when the second exactly undoes the first — a region hidden and then
//! shown again with the same image (range, permissions and mappings: the same objects at the
//! same offsets), a region shown and then hidden, a mapping added and then removed, or removed
//! and then added — and no effect left between them touches an overlapping range. Then the world
//! on that range is the same before the first and after the second, and every other effect sees
//! it as it would have: both are dropped. The groups are reduced in order with a stack, so
//! nested pairs (a lower region surfacing while RAM is hidden, and hidden again when it is
//! shown) cancel from the inside out.
//!
//! What cancels is decided on the images, not on region identity: a device window removed and
//! placed again at the same GPA (a new region with the same mappings) costs nothing either.
//! Prefetching is not part of an image (it is an optimisation of a map, not a state), so a
//! region hidden and shown again is not prefetched again.
//!
//! The groups left are then ordered in *phases*: groups on disjoint ranges commute, so within a
//! layer of pairwise disjoint groups (a group's layer is one more than that of the latest
//! earlier group it overlaps) every partition unmap comes first, then the invalidations, the
//! mapping additions, the VA populations, the maps, the prefetches and the pins. Each group
//! keeps its own order (unmap before invalidate; add, populate, map, prefetch, pin per
//! partition) and overlapping groups keep theirs. The runs of invalidations and populations
//! this makes cost one round trip to the mappers each (see the executor in
//! `memory_manager::region_actor`).

use super::plan::Plan;
use super::plan::PlanOp;
use super::types::ActiveMapping;
use memory_range::MemoryRange;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

/// Whether two handles name the same memory object, for deciding that a change undoes
/// another. It may answer `false` for handles of one object (the changes are then both
/// carried out, which is correct, only not minimal); it must never answer `true` for two
/// different objects.
pub trait SameObject {
    /// `true` only if `self` and `other` name the same object.
    fn same_object(&self, other: &Self) -> bool;
}

/// Handles shared by reference counting: the same allocation.
impl<T: ?Sized> SameObject for Arc<T> {
    fn same_object(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

/// Names (the tests' objects).
impl SameObject for &'static str {
    fn same_object(&self, other: &Self) -> bool {
        self == other
    }
}

/// What a shown region looks like from outside: its range, its permissions in the partitions
/// and the mappings the mapping manager holds for it.
#[derive(Debug, Clone)]
pub(crate) struct RegionImage<O> {
    pub range: MemoryRange,
    pub writable: bool,
    pub executable: bool,
    /// In range order.
    pub mappings: Vec<ActiveMapping<O>>,
}

impl<O: SameObject> RegionImage<O> {
    fn same(&self, other: &Self) -> bool {
        self.range == other.range
            && self.writable == other.writable
            && self.executable == other.executable
            && same_mappings(&self.mappings, &other.mappings)
    }
}

fn same_mapping<O: SameObject>(a: &ActiveMapping<O>, b: &ActiveMapping<O>) -> bool {
    a.range == b.range
        && a.file_offset == b.file_offset
        && a.writable == b.writable
        && a.dma_target == b.dma_target
        && a.object.same_object(&b.object)
}

fn same_mappings<O: SameObject>(a: &[ActiveMapping<O>], b: &[ActiveMapping<O>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_mapping(a, b))
}

/// What a group of consecutive operations does.
#[derive(Debug, Clone)]
pub(crate) enum Effect<O> {
    /// A region becomes active: its mappings are added, it is mapped into every partition.
    Shown(RegionImage<O>),
    /// A region stops being active: unmapped from every partition, its VA invalidated.
    Hidden(RegionImage<O>),
    /// A mapping is added to an active region.
    MappingAdded(ActiveMapping<O>),
    /// Mappings of an active region are removed (in range order).
    MappingsRemoved(Vec<ActiveMapping<O>>),
    /// Anything that never cancels (a partition being registered).
    Other,
}

impl<O: SameObject> Effect<O> {
    /// Whether `later` exactly undoes `self`.
    fn undone_by(&self, later: &Self) -> bool {
        match (self, later) {
            (Effect::Shown(a), Effect::Hidden(b)) | (Effect::Hidden(a), Effect::Shown(b)) => {
                a.same(b)
            }
            (Effect::MappingAdded(added), Effect::MappingsRemoved(removed))
            | (Effect::MappingsRemoved(removed), Effect::MappingAdded(added)) => {
                removed.len() == 1 && same_mapping(added, &removed[0])
            }
            _ => false,
        }
    }
}

/// The operations `ops` of a plan, with the GPA range they are confined to and what they do.
#[derive(Debug, Clone)]
pub(crate) struct OpGroup<O> {
    pub ops: Range<usize>,
    pub range: MemoryRange,
    pub effect: Effect<O>,
}

/// The kept groups by start, for finding the ones that overlap a range without visiting the
/// others: a group starting at `s` and no longer than `max_len` can only overlap `range` when
/// `range.start() - max_len <= s < range.end()`.
struct ByStart {
    starts: BTreeMap<(u64, usize), MemoryRange>,
    max_len: u64,
}

impl ByStart {
    fn new() -> Self {
        Self {
            starts: BTreeMap::new(),
            max_len: 0,
        }
    }

    fn insert(&mut self, index: usize, range: MemoryRange) {
        self.max_len = self.max_len.max(range.len());
        self.starts.insert((range.start(), index), range);
    }

    fn remove(&mut self, index: usize, range: MemoryRange) {
        self.starts.remove(&(range.start(), index));
    }

    /// The indexes of the groups overlapping `range` (`MemoryRange::overlaps`), counting each
    /// group visited in `work`.
    fn overlapping(&self, range: MemoryRange, work: &mut u64) -> Vec<usize> {
        let low = range.start().saturating_sub(self.max_len);
        let mut visited = 0;
        let found = self
            .starts
            .range((low, 0)..(range.end(), 0))
            .inspect(|_| visited += 1)
            .filter(|(_, candidate)| candidate.overlaps(&range))
            .map(|(&(_, index), _)| index)
            .collect();
        *work += visited;
        found
    }
}

/// The plan without the groups that cancel (see the module comment); operations that belong to
/// no group are kept. `affected` becomes the ranges of the groups kept. Adds to `work` the
/// groups visited (a group's overlapping groups are found by address, not by visiting them all).
pub(crate) fn net_plan<O: SameObject>(
    plan: Plan<O>,
    groups: &[OpGroup<O>],
    work: &mut u64,
) -> Plan<O> {
    // The groups kept so far (kept in index order: the latest overlapping one has the
    // largest index).
    let mut kept = ByStart::new();
    let mut is_kept = vec![false; groups.len()];
    for (index, group) in groups.iter().enumerate() {
        *work += 1;
        let last_overlapping = kept.overlapping(group.range, work).into_iter().max();
        match last_overlapping {
            Some(earlier) if groups[earlier].effect.undone_by(&group.effect) => {
                kept.remove(earlier, groups[earlier].range);
                is_kept[earlier] = false;
            }
            _ => {
                kept.insert(index, group.range);
                is_kept[index] = true;
            }
        }
    }
    let kept: Vec<usize> = (0..groups.len()).filter(|&index| is_kept[index]).collect();
    // The layer of each kept group: one more than the latest earlier kept group it overlaps.
    let mut layer = vec![0usize; groups.len()];
    let mut earlier = ByStart::new();
    for &index in &kept {
        *work += 1;
        layer[index] = earlier
            .overlapping(groups[index].range, work)
            .into_iter()
            .map(|earlier| layer[earlier] + 1)
            .max()
            .unwrap_or(0);
        earlier.insert(index, groups[index].range);
    }
    // Each operation's group, or none.
    let mut group_of: Vec<Option<usize>> = vec![None; plan.ops.len()];
    for (index, group) in groups.iter().enumerate() {
        for op in group.ops.clone() {
            group_of[op] = Some(index);
        }
    }
    let mut keep_group = vec![false; groups.len()];
    for &index in &kept {
        keep_group[index] = true;
    }
    let mut affected: Vec<MemoryRange> = Vec::new();
    for &index in &kept {
        if affected.last() != Some(&groups[index].range) {
            affected.push(groups[index].range);
        }
    }
    // Phases only when every operation belongs to a group and no partition is being attached
    // (whose failure rules follow the plan's own order).
    let reorder = plan.attaching.is_none() && group_of.iter().all(Option::is_some);
    let mut ops: Vec<(usize, usize, _)> = plan
        .ops
        .into_iter()
        .zip(group_of)
        .filter(|(_, group)| group.is_none_or(|group| keep_group[group]))
        .map(|(op, group)| {
            let key = match (reorder, group) {
                (true, Some(group)) => (layer[group], phase(&op.op)),
                _ => (0, 0),
            };
            (key.0, key.1, op)
        })
        .collect();
    // Stable: groups in their order within a phase, operations in theirs within a group.
    ops.sort_by_key(|&(layer, phase, _)| (layer, phase));
    Plan {
        ops: ops.into_iter().map(|(_, _, op)| op).collect(),
        attaching: plan.attaching,
        affected,
    }
}

/// The phase of an operation within a layer (see the module comment).
fn phase<O>(op: &PlanOp<O>) -> usize {
    match op {
        PlanOp::Unmap { .. } => 0,
        PlanOp::Invalidate { .. } => 1,
        PlanOp::AddMapping(_) => 2,
        PlanOp::PopulateVa { .. } => 3,
        PlanOp::Map { .. } => 4,
        PlanOp::Prefetch { .. } => 5,
        PlanOp::Pin { .. } => 6,
    }
}
