//! The steps of a dry run as a user sees them: the VA-mapper invalidations and the partition
//! calls of a plan, in execution order, each with the partition it targets (by registration
//! index) and, for partitions that have them, the hypervisor slots it creates or deletes.
//!
//! The mapping manager's bookkeeping (`AddMapping`) and the VA population a map waits for
//! (`PopulateVa`) are internal steps and are not listed. Applying the previewed change next
//! makes exactly the listed partition calls, in this order (see `docs/design.md`).

use crate::region_manager::Plan;
use crate::region_manager::PlanOp;
use std::collections::BTreeMap;
use std::sync::Arc;
use virt::PartitionMemoryMap;
use virt::PlannedCall;

/// What a step does.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash)]
pub enum PreviewStepKind {
    /// The VA mappers drop the range (`gpa`, `size`).
    Invalidate,
    /// `map_range` on a partition.
    Map,
    /// `unmap_range` on a partition.
    Unmap,
    /// `prefetch_range` on a partition.
    Prefetch,
    /// `pin_range` on a partition.
    Pin,
}

/// One step of a previewed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewStep {
    /// What the step does.
    pub kind: PreviewStepKind,
    /// The partition it calls (registration index: a VTL2 partition with an alias map counts
    /// twice, alias first); `None` for invalidations.
    pub partition: Option<usize>,
    /// The guest physical address (the partition's GPA for partition calls).
    pub gpa: u64,
    /// The size in bytes.
    pub size: u64,
    /// Maps only: writable.
    pub writable: Option<bool>,
    /// Maps only: executable.
    pub exec: Option<bool>,
    /// Maps and unmaps into a partition with memory slots (KVM): the slot ids the call creates
    /// or deletes.
    pub slots: Option<Vec<u32>>,
    /// Why, in words.
    pub reason: String,
}

/// The user-visible steps of `plan`, without slot ids.
pub fn preview_steps<O>(plan: &Plan<O>) -> Vec<PreviewStep> {
    plan.ops
        .iter()
        .filter_map(|planned| {
            let step = |kind, partition, gpa, size| PreviewStep {
                kind,
                partition,
                gpa,
                size,
                writable: None,
                exec: None,
                slots: None,
                reason: planned.reason.clone(),
            };
            match planned.op {
                PlanOp::AddMapping(_) | PlanOp::PopulateVa { .. } => None,
                PlanOp::Invalidate { range } => Some(step(
                    PreviewStepKind::Invalidate,
                    None,
                    range.start(),
                    range.len(),
                )),
                PlanOp::Map {
                    partition,
                    gpa,
                    size,
                    writable,
                    exec,
                    ..
                } => Some(PreviewStep {
                    writable: Some(writable),
                    exec: Some(exec),
                    ..step(PreviewStepKind::Map, Some(partition), gpa, size)
                }),
                PlanOp::Unmap {
                    partition,
                    gpa,
                    size,
                } => Some(step(PreviewStepKind::Unmap, Some(partition), gpa, size)),
                PlanOp::Prefetch {
                    partition,
                    gpa,
                    size,
                } => Some(step(PreviewStepKind::Prefetch, Some(partition), gpa, size)),
                PlanOp::Pin {
                    partition,
                    gpa,
                    size,
                } => Some(step(PreviewStepKind::Pin, Some(partition), gpa, size)),
            }
        })
        .collect()
}

/// Fills in the slot ids of the maps and unmaps of `steps`: each partition (looked up by its
/// registration index; gone or slot-less partitions are skipped) predicts its calls in order
/// from its current state.
pub(crate) fn add_slots(
    steps: &mut [PreviewStep],
    partition: impl Fn(usize) -> Option<Arc<dyn PartitionMemoryMap>>,
) {
    let mut by_partition: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (index, step) in steps.iter().enumerate() {
        if let (Some(target), PreviewStepKind::Map | PreviewStepKind::Unmap) =
            (step.partition, step.kind)
        {
            by_partition.entry(target).or_default().push(index);
        }
    }
    for (target, indexes) in by_partition {
        let Some(partition) = partition(target) else {
            continue;
        };
        let calls: Vec<PlannedCall> = indexes
            .iter()
            .map(|&index| {
                let step = &steps[index];
                match step.kind {
                    PreviewStepKind::Map => PlannedCall::Map {
                        gpa: step.gpa,
                        size: step.size,
                    },
                    _ => PlannedCall::Unmap {
                        gpa: step.gpa,
                        size: step.size,
                    },
                }
            })
            .collect();
        if let Some(slots) = partition.plan_slots(&calls) {
            for (index, slots) in indexes.into_iter().zip(slots) {
                steps[index].slots = Some(slots);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region_manager::PlannedOp;
    use memory_range::MemoryRange;
    use parking_lot::Mutex;

    fn op(op: PlanOp<()>, reason: &str) -> PlannedOp<()> {
        PlannedOp {
            op,
            reason: reason.to_owned(),
        }
    }

    fn plan() -> Plan<()> {
        Plan {
            ops: vec![
                op(
                    PlanOp::Unmap {
                        partition: 1,
                        gpa: 0xa0000,
                        size: 0x20000,
                    },
                    "hide",
                ),
                op(
                    PlanOp::Invalidate {
                        range: MemoryRange::new(0xa0000..0xc0000),
                    },
                    "hide",
                ),
                op(
                    PlanOp::PopulateVa {
                        partition: 0,
                        range: MemoryRange::new(0xa0000..0xc0000),
                    },
                    "internal",
                ),
                op(
                    PlanOp::Map {
                        partition: 0,
                        va_offset: 0xa0000,
                        gpa: 0xa0000,
                        size: 0x20000,
                        writable: false,
                        exec: true,
                    },
                    "show read-only",
                ),
                op(
                    PlanOp::Pin {
                        partition: 0,
                        gpa: 0xa0000,
                        size: 0x20000,
                    },
                    "pin",
                ),
            ],
            ..Plan::default()
        }
    }

    #[test]
    fn internal_steps_are_left_out_and_the_order_is_kept() {
        let steps = preview_steps(&plan());
        let kinds: Vec<_> = steps.iter().map(|step| step.kind).collect();
        assert_eq!(
            kinds,
            [
                PreviewStepKind::Unmap,
                PreviewStepKind::Invalidate,
                PreviewStepKind::Map,
                PreviewStepKind::Pin
            ]
        );
        assert_eq!(steps[1].partition, None, "invalidations name no partition");
        assert_eq!(steps[2].writable, Some(false));
        assert_eq!(steps[2].exec, Some(true));
        assert_eq!(steps[3].writable, None, "only maps carry permissions");
        assert_eq!(steps[2].reason, "show read-only");
        assert!(steps.iter().all(|step| step.slots.is_none()));
    }

    /// A partition that answers slot plans with a counter and records what it was asked.
    struct Slotted(Mutex<Vec<PlannedCall>>);

    impl PartitionMemoryMap for Slotted {
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
            Ok(())
        }

        fn plan_slots(&self, calls: &[PlannedCall]) -> Option<Vec<Vec<u32>>> {
            self.0.lock().extend_from_slice(calls);
            Some((0u32..).zip(calls).map(|(id, _)| vec![id + 7]).collect())
        }
    }

    #[test]
    fn slots_come_from_the_partition_each_step_calls() {
        let mut steps = preview_steps(&plan());
        let slotted = Arc::new(Slotted(Mutex::new(Vec::new())));
        let recording: Arc<dyn PartitionMemoryMap> = Arc::new(virt::RecordingPartition::new());
        let lookup = {
            let slotted: Arc<dyn PartitionMemoryMap> = slotted.clone();
            move |index: usize| match index {
                0 => Some(slotted.clone()),
                1 => Some(recording.clone()),
                _ => None,
            }
        };
        add_slots(&mut steps, lookup);
        assert_eq!(
            *slotted.0.lock(),
            [PlannedCall::Map {
                gpa: 0xa0000,
                size: 0x20000
            }],
            "partition 0 is asked about its map only"
        );
        assert_eq!(steps[2].slots, Some(vec![7]));
        assert_eq!(steps[0].slots, None, "a recording partition has no slots");
        assert_eq!(steps[3].slots, None, "pins change no slot");
    }
}
