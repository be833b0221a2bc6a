//! The slot check: before a plan makes any call, every partition with a limited supply of
//! slots ([`PartitionMemoryMap::slot_capacity`], KVM memory slots) must have the slots the
//! plan's maps take. Running out is foreseeable, so it is a refusal that changes nothing, not a
//! partition failure in the middle of a plan (which poisons the manager).

use super::error::RegionManagerError;
use super::plan::Plan;
use super::plan::PlanOp;
use std::sync::Arc;
use virt::PartitionMemoryMap;
use virt::PlannedCall;
use virt::SlotCapacity;

/// Checks `plan` against the slot capacity of every partition it maps into. `partition` looks
/// a registration index up; gone and unknown partitions are skipped, as the applier skips them.
///
/// Per partition (one registered twice, as a VTL2 partition with an alias map is, counts
/// once), its maps and unmaps are walked in execution order from the slots in use now: a map
/// of a non-empty range takes one slot, an unmap gives back the slots it deletes (as
/// [`PartitionMemoryMap::plan_slots`] predicts them; none without a prediction). The plan is
/// refused when the count would pass the limit at any step: the peak counts, so a batch whose
/// early unmaps free the slots its later maps take is accepted. A plan that maps no more
/// ranges into a partition than it has free slots needs no prediction.
pub fn check_slot_capacity<O>(
    plan: &Plan<O>,
    partition: impl Fn(usize) -> Option<Arc<dyn PartitionMemoryMap>>,
) -> Result<(), RegionManagerError> {
    // Maps per registration index (plans call a handful of partitions).
    let mut maps: Vec<u32> = Vec::new();
    for planned in &plan.ops {
        if let PlanOp::Map {
            partition, size, ..
        } = planned.op
        {
            if size > 0 {
                if maps.len() <= partition {
                    maps.resize(partition + 1, 0);
                }
                maps[partition] = maps[partition].saturating_add(1);
            }
        }
    }
    // The partitions mapped into, each with its registration indexes and its maps.
    let mut targets: Vec<(Arc<dyn PartitionMemoryMap>, Vec<usize>, u32)> = Vec::new();
    for (index, &count) in maps.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let Some(live) = partition(index) else {
            continue;
        };
        let same = |(other, _, _): &&mut (Arc<dyn PartitionMemoryMap>, Vec<usize>, u32)| {
            std::ptr::addr_eq(Arc::as_ptr(other), Arc::as_ptr(&live))
        };
        match targets.iter_mut().find(same) {
            Some((_, indexes, total)) => {
                indexes.push(index);
                *total = total.saturating_add(count);
            }
            None => targets.push((live, vec![index], count)),
        }
    }
    for (live, indexes, total) in targets {
        let Some(capacity) = live.slot_capacity() else {
            continue;
        };
        if total <= capacity.free() {
            continue;
        }
        let peak = peak_use(plan, &*live, &indexes, capacity);
        if peak > u64::from(capacity.max) {
            return Err(RegionManagerError::NoFreeSlot {
                partition: indexes[0],
                needed: u32::try_from(peak - u64::from(capacity.used)).unwrap_or(u32::MAX),
                free: capacity.free(),
                max_slots: capacity.max,
            });
        }
    }
    Ok(())
}

/// The most slots `live` (registered as `indexes`) would use at once while `plan` runs.
fn peak_use<O>(
    plan: &Plan<O>,
    live: &dyn PartitionMemoryMap,
    indexes: &[usize],
    capacity: SlotCapacity,
) -> u64 {
    let calls: Vec<PlannedCall> = plan
        .ops
        .iter()
        .filter_map(|planned| match planned.op {
            PlanOp::Map {
                partition,
                gpa,
                size,
                ..
            } if indexes.contains(&partition) => Some(PlannedCall::Map { gpa, size }),
            PlanOp::Unmap {
                partition,
                gpa,
                size,
            } if indexes.contains(&partition) => Some(PlannedCall::Unmap { gpa, size }),
            _ => None,
        })
        .collect();
    let predicted = live.plan_slots(&calls);
    let mut in_use = u64::from(capacity.used);
    let mut peak = in_use;
    for (position, call) in calls.iter().enumerate() {
        match *call {
            PlannedCall::Map { size, .. } => {
                if size > 0 {
                    in_use += 1;
                    peak = peak.max(in_use);
                }
            }
            PlannedCall::Unmap { .. } => {
                let freed = predicted
                    .as_ref()
                    .and_then(|slots| slots.get(position))
                    .map_or(0, Vec::len);
                in_use = in_use.saturating_sub(freed as u64);
            }
        }
    }
    peak
}

#[cfg(test)]
pub(crate) use test_partition::SlotLimited;

#[cfg(test)]
mod test_partition {
    use std::collections::BTreeMap;
    use virt::PartitionMemoryMap;

    /// A partition with a limited number of slots, as a KVM VM has: each map of a non-empty range
    /// takes one (and fails when none is free, as KVM's does), an unmap frees the slots inside its
    /// range; calls are recorded by an inner `RecordingPartition`.
    pub(crate) struct SlotLimited {
        max: u32,
        slots: parking_lot::Mutex<BTreeMap<u64, u64>>,
        /// Every call, as recorded.
        pub(crate) log: virt::RecordingPartition,
    }

    impl SlotLimited {
        /// `max` slots, none used; `vaOffset`s in the log are relative to `va_base`.
        pub(crate) fn new(max: u32, va_base: usize) -> Self {
            Self {
                max,
                slots: parking_lot::Mutex::new(Default::default()),
                log: virt::RecordingPartition::with_va_base(va_base),
            }
        }

        /// The slots inside `[gpa, gpa + size)` of `slots`.
        fn inside(slots: &BTreeMap<u64, u64>, gpa: u64, size: u64) -> Vec<u64> {
            slots
                .range(gpa..gpa.saturating_add(size))
                .filter(|(start, len)| **start + **len <= gpa.saturating_add(size))
                .map(|(start, _)| *start)
                .collect()
        }

        /// Slots in use.
        pub(crate) fn used(&self) -> usize {
            self.slots.lock().len()
        }
    }

    impl PartitionMemoryMap for SlotLimited {
        fn unmap_range(&self, addr: u64, size: u64) -> Result<(), virt::Error> {
            let mut slots = self.slots.lock();
            for start in Self::inside(&slots, addr, size) {
                slots.remove(&start);
            }
            self.log.unmap_range(addr, size)
        }

        fn map_range(
            &self,
            data: *mut u8,
            size: usize,
            addr: u64,
            writable: bool,
            exec: bool,
        ) -> Result<(), virt::Error> {
            let mut slots = self.slots.lock();
            if size > 0 && slots.len() >= self.max as usize {
                return Err("no free memory slot".into());
            }
            slots.insert(addr, size as u64);
            self.log.map_range(data, size, addr, writable, exec)
        }

        fn plan_slots(&self, calls: &[virt::PlannedCall]) -> Option<Vec<Vec<u32>>> {
            let mut slots = self.slots.lock().clone();
            let id = |gpa: u64| u32::try_from(gpa >> 12).unwrap_or(u32::MAX);
            Some(
                calls
                    .iter()
                    .map(|call| match *call {
                        virt::PlannedCall::Map { gpa, size } => {
                            slots.insert(gpa, size);
                            vec![id(gpa)]
                        }
                        virt::PlannedCall::Unmap { gpa, size } => Self::inside(&slots, gpa, size)
                            .into_iter()
                            .map(|start| {
                                slots.remove(&start);
                                id(start)
                            })
                            .collect(),
                    })
                    .collect(),
            )
        }

        fn slot_capacity(&self) -> Option<virt::SlotCapacity> {
            Some(virt::SlotCapacity {
                used: u32::try_from(self.used()).unwrap_or(u32::MAX),
                max: self.max,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region_manager::PlannedOp;
    use parking_lot::Mutex;
    use std::collections::BTreeMap;

    /// A partition with `max` slots: each map takes one, an unmap frees the slots inside its
    /// range, and `plan_slots` predicts exactly that (ids are not modelled: the id of a
    /// slot is its GPA's page number).
    struct Limited {
        max: u32,
        slots: Mutex<BTreeMap<u64, u64>>,
        predicts: bool,
    }

    impl Limited {
        fn new(max: u32, slots: &[(u64, u64)], predicts: bool) -> Arc<Self> {
            Arc::new(Self {
                max,
                slots: Mutex::new(slots.iter().copied().collect()),
                predicts,
            })
        }
    }

    impl PartitionMemoryMap for Limited {
        fn unmap_range(&self, _addr: u64, _size: u64) -> Result<(), virt::Error> {
            Ok(())
        }

        fn map_range(
            &self,
            _: *mut u8,
            _: usize,
            _: u64,
            _: bool,
            _: bool,
        ) -> Result<(), virt::Error> {
            Ok(())
        }

        fn plan_slots(&self, calls: &[PlannedCall]) -> Option<Vec<Vec<u32>>> {
            if !self.predicts {
                return None;
            }
            let mut slots = self.slots.lock().clone();
            Some(
                calls
                    .iter()
                    .map(|call| match *call {
                        PlannedCall::Map { gpa, size } => {
                            slots.insert(gpa, size);
                            vec![u32::try_from(gpa >> 12).unwrap()]
                        }
                        PlannedCall::Unmap { gpa, size } => {
                            let inside: Vec<u64> = slots
                                .range(gpa..gpa + size)
                                .filter(|(start, len)| **start + **len <= gpa + size)
                                .map(|(start, _)| *start)
                                .collect();
                            inside
                                .into_iter()
                                .map(|start| {
                                    slots.remove(&start);
                                    u32::try_from(start >> 12).unwrap()
                                })
                                .collect()
                        }
                    })
                    .collect(),
            )
        }

        fn slot_capacity(&self) -> Option<SlotCapacity> {
            Some(SlotCapacity {
                used: u32::try_from(self.slots.lock().len()).unwrap(),
                max: self.max,
            })
        }
    }

    fn map(partition: usize, gpa: u64) -> PlannedOp<()> {
        PlannedOp {
            op: PlanOp::Map {
                partition,
                va_offset: gpa,
                gpa,
                size: 0x1000,
                writable: true,
                exec: true,
            },
            reason: String::new(),
        }
    }

    fn unmap(partition: usize, gpa: u64, size: u64) -> PlannedOp<()> {
        PlannedOp {
            op: PlanOp::Unmap {
                partition,
                gpa,
                size,
            },
            reason: String::new(),
        }
    }

    fn plan(ops: Vec<PlannedOp<()>>) -> Plan<()> {
        Plan {
            ops,
            ..Plan::default()
        }
    }

    fn check(
        plan: &Plan<()>,
        partitions: &[Arc<dyn PartitionMemoryMap>],
    ) -> Result<(), RegionManagerError> {
        check_slot_capacity(plan, |index| partitions.get(index).cloned())
    }

    fn shortage(result: Result<(), RegionManagerError>) -> (usize, u32, u32, u32) {
        match result {
            Err(RegionManagerError::NoFreeSlot {
                partition,
                needed,
                free,
                max_slots,
            }) => (partition, needed, free, max_slots),
            other => panic!("expected NoFreeSlot, got {other:?}"),
        }
    }

    #[test]
    fn maps_beyond_the_free_slots_are_refused_with_the_numbers() {
        let limited: Arc<dyn PartitionMemoryMap> = Limited::new(3, &[(0, 0x1000)], true);
        let partitions = [limited];
        check(&plan(vec![map(0, 0x1000), map(0, 0x2000)]), &partitions).unwrap();
        let error = check(
            &plan(vec![map(0, 0x1000), map(0, 0x2000), map(0, 0x3000)]),
            &partitions,
        )
        .unwrap_err();
        let message = error.to_string();
        assert_eq!(shortage(Err(error)), (0, 3, 2, 3));
        assert!(
            message.starts_with(
                "partition 0 has 2 of its 3 memory slots free, but the change needs 3 more at once"
            ),
            "{message}"
        );
    }

    #[test]
    fn slots_freed_earlier_in_the_plan_count_but_the_peak_decides() {
        let limited: Arc<dyn PartitionMemoryMap> =
            Limited::new(2, &[(0, 0x1000), (0x1000, 0x1000)], true);
        let partitions = [limited];
        // Full: the unmap of both slots comes first, so two maps fit.
        check(
            &plan(vec![unmap(0, 0, 0x2000), map(0, 0x10000), map(0, 0x11000)]),
            &partitions,
        )
        .unwrap();
        // The same calls with a map before the unmap pass the limit at that map.
        assert_eq!(
            shortage(check(
                &plan(vec![map(0, 0x10000), unmap(0, 0, 0x2000), map(0, 0x11000)]),
                &partitions,
            )),
            (0, 1, 0, 2)
        );
        // An unmap that deletes one slot makes room for one map only.
        assert_eq!(
            shortage(check(
                &plan(vec![unmap(0, 0, 0x1000), map(0, 0x10000), map(0, 0x11000)]),
                &partitions,
            )),
            (0, 1, 0, 2)
        );
    }

    #[test]
    fn without_a_prediction_an_unmap_frees_nothing() {
        let limited: Arc<dyn PartitionMemoryMap> = Limited::new(1, &[(0, 0x1000)], false);
        assert_eq!(
            shortage(check(
                &plan(vec![unmap(0, 0, 0x1000), map(0, 0x10000)]),
                &[limited]
            )),
            (0, 1, 0, 1)
        );
    }

    #[test]
    fn a_partition_registered_twice_counts_once_and_is_named_by_its_first_index() {
        let limited = Limited::new(3, &[], true);
        let recording: Arc<dyn PartitionMemoryMap> = Arc::new(virt::RecordingPartition::new());
        let partitions: [Arc<dyn PartitionMemoryMap>; 3] = [recording, limited.clone(), limited];
        let alias = |gpa: u64| gpa + 0x1_0000_0000;
        check(
            &plan(vec![map(1, alias(0)), map(2, 0), map(0, 0x5000)]),
            &partitions,
        )
        .unwrap();
        assert_eq!(
            shortage(check(
                &plan(vec![
                    map(1, alias(0)),
                    map(2, 0),
                    map(1, alias(0x1000)),
                    map(2, 0x1000)
                ]),
                &partitions
            )),
            (1, 4, 3, 3)
        );
    }

    #[test]
    fn partitions_without_a_limit_and_gone_ones_are_not_checked() {
        let recording: Arc<dyn PartitionMemoryMap> = Arc::new(virt::RecordingPartition::new());
        let many: Vec<PlannedOp<()>> = (0..100).map(|i| map(0, i * 0x1000)).collect();
        check(&plan(many.clone()), &[recording]).unwrap();
        check_slot_capacity(&plan(many), |_| None).unwrap();
    }
}
