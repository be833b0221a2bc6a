//! Carrying out a plan: the failure rules (`docs/design.md`, "The planner and the applier"),
//! independent of how the operations reach the partitions and mappers.
//!
//! [`PlanExecution`] is a small state machine (no I/O of its own): the driver asks it for the
//! next operation, performs it however it likes — synchronously through a [`PlanTarget`] with
//! [`apply_plan`], or by sending messages and awaiting replies on the region-manager thread —
//! and reports the result. The execution decides what a failure means:
//!
//! | failing operation | consequence |
//! |---|---|
//! | `PopulateVa` | ignored (a hole in a device window is fine) |
//! | `Prefetch` | logged and ignored |
//! | `Map` of the partition being attached | stop; discard the partition mapper (one `unmap(offset, window length)`); `PartitionMapperError::Map` |
//! | `Pin` | first `unmap(gpa, size)` of the just-mapped range, then as for `Map` but `PartitionMapperError::Pin` |
//! | any other failure (`Map`/`Pin` at run time, `Unmap`, `Invalidate`, `AddMapping`, the `unmap` after a failed pin) | stop; fatal: the manager must be poisoned |
//!
//! A failing discard `unmap` is logged and ignored (the partition is no longer attached).

use super::error::FatalError;
use super::error::PartitionMapperError;
use super::plan::Plan;
use super::plan::PlanOp;
use super::plan::PlannedOp;
use super::types::ActiveMapping;
use memory_range::MemoryRange;
use std::collections::VecDeque;

/// Where a plan's operations go: the mapping manager (`add_mapping`, `invalidate`), the VA
/// mappers (`populate_va`) and the partitions (`map`, `prefetch`, `pin`, `unmap`).
///
/// A partition that is gone (its last strong reference dropped) must make every partition
/// operation, and `populate_va` for it, succeed without doing anything.
pub trait PlanTarget<O> {
    /// Mapping manager `AddMapping`.
    fn add_mapping(&mut self, mapping: &ActiveMapping<O>) -> Result<(), virt::Error>;
    /// Mapping manager `RemoveMappings(range)`: invalidate every VA mapper holding a mapping in
    /// `range` and wait for the acknowledgements.
    fn invalidate(&mut self, range: MemoryRange) -> Result<(), virt::Error>;
    /// Request the partition's VA mapper to populate `range` and wait.
    fn populate_va(&mut self, partition: usize, range: MemoryRange) -> Result<(), virt::Error>;
    /// `map_range(va_base + va_offset, size, gpa, writable, exec)`.
    fn map(
        &mut self,
        partition: usize,
        va_offset: u64,
        gpa: u64,
        size: u64,
        writable: bool,
        exec: bool,
    ) -> Result<(), virt::Error>;
    /// `prefetch_range(gpa, size)`.
    fn prefetch(&mut self, partition: usize, gpa: u64, size: u64) -> Result<(), virt::Error>;
    /// `pin_range(gpa, size)`.
    fn pin(&mut self, partition: usize, gpa: u64, size: u64) -> Result<(), virt::Error>;
    /// `unmap_range(gpa, size)`.
    fn unmap(&mut self, partition: usize, gpa: u64, size: u64) -> Result<(), virt::Error>;

    /// Performs one operation by calling the matching method.
    fn execute(&mut self, op: &PlanOp<O>) -> Result<(), virt::Error> {
        match *op {
            PlanOp::AddMapping(ref mapping) => self.add_mapping(mapping),
            PlanOp::Invalidate { range } => self.invalidate(range),
            PlanOp::PopulateVa { partition, range } => self.populate_va(partition, range),
            PlanOp::Map {
                partition,
                va_offset,
                gpa,
                size,
                writable,
                exec,
            } => self.map(partition, va_offset, gpa, size, writable, exec),
            PlanOp::Prefetch {
                partition,
                gpa,
                size,
            } => self.prefetch(partition, gpa, size),
            PlanOp::Pin {
                partition,
                gpa,
                size,
            } => self.pin(partition, gpa, size),
            PlanOp::Unmap {
                partition,
                gpa,
                size,
            } => self.unmap(partition, gpa, size),
        }
    }
}

/// How applying a plan failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Attaching a partition failed; its mapper was discarded. Roll the transaction back
    /// (nothing else changed).
    #[error(transparent)]
    Attach(PartitionMapperError),
    /// The partitions or mappers are now out of step: poison the manager. Commit the
    /// transaction (the state describes what was intended) or drop it; neither is trusted.
    #[error(transparent)]
    Fatal(FatalError),
}

/// Which operation was handed out last.
#[derive(Debug)]
enum Current {
    None,
    Planned(usize),
    PinUndo {
        partition: usize,
        pin_error: virt::Error,
        pin_op: String,
    },
    Discard,
}

/// The state machine that runs a plan and applies the failure rules (see the module docs).
#[derive(Debug)]
pub struct PlanExecution<'p, O> {
    plan: &'p Plan<O>,
    va_window_len: u64,
    next: usize,
    current: Current,
    compensation: VecDeque<(PlannedOp<O>, Current)>,
    current_compensation: Option<PlannedOp<O>>,
    failure: Option<ApplyError>,
    done: bool,
}

impl<'p, O: Clone> PlanExecution<'p, O> {
    /// Starts running `plan` for a manager whose VA window is `va_window_len` bytes long.
    pub fn new(plan: &'p Plan<O>, va_window_len: u64) -> Self {
        Self {
            plan,
            va_window_len,
            next: 0,
            current: Current::None,
            compensation: VecDeque::new(),
            current_compensation: None,
            failure: None,
            done: false,
        }
    }

    /// The next operation to perform, or `None` when the run is over (finished or failed).
    /// Each operation handed out must be followed by [`PlanExecution::report`].
    pub fn next_op(&mut self) -> Option<&PlannedOp<O>> {
        if self.done {
            return None;
        }
        if let Some((op, current)) = self.compensation.pop_front() {
            self.current = current;
            return Some(self.current_compensation.insert(op));
        }
        if self.failure.is_some() || self.next >= self.plan.ops.len() {
            self.done = true;
            self.current = Current::None;
            return None;
        }
        self.current = Current::Planned(self.next);
        self.next += 1;
        self.plan.ops.get(self.next - 1)
    }

    /// The index in the plan of the operation last returned by [`PlanExecution::next_op`], or
    /// `None` when that was a compensation (the unmap after a failed pin, a discard).
    pub fn current_index(&self) -> Option<usize> {
        match self.current {
            Current::Planned(index) => Some(index),
            _ => None,
        }
    }

    /// The planned operations after the one last returned, as `(index, op)`, for a driver that
    /// starts some of them early (it must still take each from [`PlanExecution::next_op`] and
    /// report it). Empty after a compensation.
    pub fn upcoming(&self) -> impl Iterator<Item = (usize, &PlannedOp<O>)> + '_ {
        let ops = match self.current {
            Current::Planned(_) => &self.plan.ops[self.next..],
            _ => &[],
        };
        ops.iter()
            .enumerate()
            .map(|(offset, op)| (self.next + offset, op))
    }

    /// Reports the outcome of the operation last returned by [`PlanExecution::next_op`].
    pub fn report(&mut self, result: Result<(), virt::Error>) {
        let current = std::mem::replace(&mut self.current, Current::None);
        let error = match result {
            Ok(()) => {
                if let Current::PinUndo {
                    partition,
                    pin_error,
                    pin_op,
                } = current
                {
                    let error = PartitionMapperError::Pin(pin_error);
                    if self.is_attaching(partition) {
                        self.attach_failed(partition, error);
                    } else {
                        self.failure = Some(ApplyError::Fatal(FatalError {
                            op: pin_op,
                            source: Box::new(error),
                        }));
                    }
                }
                return;
            }
            Err(error) => error,
        };
        match current {
            Current::None => {}
            Current::Planned(index) => {
                let planned = &self.plan.ops[index];
                match planned.op {
                    PlanOp::PopulateVa { range, .. } => {
                        tracing::debug!(%range, error = error.as_ref() as &dyn std::error::Error, "VA population failed; ignored");
                    }
                    PlanOp::Prefetch { gpa, size, .. } => {
                        tracing::warn!(
                            gpa,
                            size,
                            error = error.as_ref() as &dyn std::error::Error,
                            "partition prefetch failed; ignored"
                        );
                    }
                    PlanOp::Map { partition, .. } => {
                        let error = PartitionMapperError::Map(error);
                        if self.is_attaching(partition) {
                            self.attach_failed(partition, error);
                        } else {
                            self.fatal(planned.clone(), Box::new(error));
                        }
                    }
                    PlanOp::Pin {
                        partition,
                        gpa,
                        size,
                    } => {
                        let undo = PlannedOp {
                            op: PlanOp::Unmap {
                                partition,
                                gpa,
                                size,
                            },
                            reason: format!("pin failed: {}", planned.reason),
                        };
                        self.compensation.push_back((
                            undo,
                            Current::PinUndo {
                                partition,
                                pin_error: error,
                                pin_op: planned.to_string(),
                            },
                        ));
                    }
                    PlanOp::AddMapping(_) | PlanOp::Invalidate { .. } | PlanOp::Unmap { .. } => {
                        self.fatal(planned.clone(), error);
                    }
                }
            }
            Current::PinUndo { .. } => {
                if let Some(op) = self.current_compensation.clone() {
                    self.fatal(op, error);
                }
            }
            Current::Discard => {
                tracing::warn!(
                    error = error.as_ref() as &dyn std::error::Error,
                    "unmapping a discarded partition mapper failed; ignored"
                );
            }
        }
    }

    /// The outcome of the run.
    pub fn finish(self) -> Result<(), ApplyError> {
        match self.failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn is_attaching(&self, partition: usize) -> bool {
        self.plan
            .attaching
            .is_some_and(|attaching| attaching.partition == partition)
    }

    fn fatal(&mut self, op: PlannedOp<O>, source: virt::Error) {
        self.compensation.clear();
        self.failure = Some(ApplyError::Fatal(FatalError {
            op: op.to_string(),
            source,
        }));
    }

    /// The partition being attached refused an operation: discard its mapper.
    fn attach_failed(&mut self, partition: usize, error: PartitionMapperError) {
        let offset = self.plan.attaching.map_or(0, |attaching| attaching.offset);
        self.failure = Some(ApplyError::Attach(error));
        self.compensation.push_back((
            PlannedOp {
                op: PlanOp::Unmap {
                    partition,
                    gpa: offset,
                    size: self.va_window_len,
                },
                reason: format!("partition {partition} attach failed: mapper discarded"),
            },
            Current::Discard,
        ));
    }
}

/// Runs `plan` synchronously against `target`, applying the failure rules.
pub fn apply_plan<O: Clone, T: PlanTarget<O> + ?Sized>(
    plan: &Plan<O>,
    va_window_len: u64,
    target: &mut T,
) -> Result<(), ApplyError> {
    let mut execution = PlanExecution::new(plan, va_window_len);
    while let Some(planned) = execution.next_op() {
        let result = target.execute(&planned.op);
        execution.report(result);
    }
    execution.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region_manager::AttachingPartition;

    /// Records every operation it performs and fails those `fail` selects.
    struct ScriptedTarget<P> {
        performed: Vec<String>,
        fail: P,
    }

    impl<P: FnMut(&PlanOp<()>) -> bool> ScriptedTarget<P> {
        fn run(&mut self, op: &PlanOp<()>) -> Result<(), virt::Error> {
            self.performed.push(op.to_string());
            if (self.fail)(op) {
                Err(format!("{} refused", op.kind()).into())
            } else {
                Ok(())
            }
        }
    }

    impl<P: FnMut(&PlanOp<()>) -> bool> PlanTarget<()> for ScriptedTarget<P> {
        fn add_mapping(&mut self, mapping: &ActiveMapping<()>) -> Result<(), virt::Error> {
            self.run(&PlanOp::AddMapping(mapping.clone()))
        }
        fn invalidate(&mut self, range: MemoryRange) -> Result<(), virt::Error> {
            self.run(&PlanOp::Invalidate { range })
        }
        fn populate_va(&mut self, partition: usize, range: MemoryRange) -> Result<(), virt::Error> {
            self.run(&PlanOp::PopulateVa { partition, range })
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
            self.run(&PlanOp::Map {
                partition,
                va_offset,
                gpa,
                size,
                writable,
                exec,
            })
        }
        fn prefetch(&mut self, partition: usize, gpa: u64, size: u64) -> Result<(), virt::Error> {
            self.run(&PlanOp::Prefetch {
                partition,
                gpa,
                size,
            })
        }
        fn pin(&mut self, partition: usize, gpa: u64, size: u64) -> Result<(), virt::Error> {
            self.run(&PlanOp::Pin {
                partition,
                gpa,
                size,
            })
        }
        fn unmap(&mut self, partition: usize, gpa: u64, size: u64) -> Result<(), virt::Error> {
            self.run(&PlanOp::Unmap {
                partition,
                gpa,
                size,
            })
        }
    }

    const RANGE: MemoryRange = MemoryRange::new(0x1000..0x3000);

    /// populate, map, prefetch, pin of RANGE into partition 1 (gpa offset 0x10000), then one
    /// more map of another range.
    fn attach_plan(attaching: bool) -> Plan<()> {
        let planned = |op| PlannedOp {
            op,
            reason: "test".to_owned(),
        };
        Plan {
            ops: vec![
                planned(PlanOp::PopulateVa {
                    partition: 1,
                    range: RANGE,
                }),
                planned(PlanOp::Map {
                    partition: 1,
                    va_offset: 0x1000,
                    gpa: 0x11000,
                    size: 0x2000,
                    writable: true,
                    exec: true,
                }),
                planned(PlanOp::Prefetch {
                    partition: 1,
                    gpa: 0x11000,
                    size: 0x2000,
                }),
                planned(PlanOp::Pin {
                    partition: 1,
                    gpa: 0x11000,
                    size: 0x2000,
                }),
                planned(PlanOp::Map {
                    partition: 1,
                    va_offset: 0x8000,
                    gpa: 0x18000,
                    size: 0x1000,
                    writable: true,
                    exec: true,
                }),
            ],
            attaching: attaching.then_some(AttachingPartition {
                partition: 1,
                offset: 0x10000,
            }),
            affected: vec![RANGE],
        }
    }

    fn run(
        plan: &Plan<()>,
        fail: impl FnMut(&PlanOp<()>) -> bool,
    ) -> (Vec<String>, Result<(), ApplyError>) {
        let mut target = ScriptedTarget {
            performed: Vec::new(),
            fail,
        };
        let result = apply_plan(plan, 0x100000, &mut target);
        (target.performed, result)
    }

    #[test]
    fn success_runs_every_operation_in_order() {
        let plan = attach_plan(true);
        let (performed, result) = run(&plan, |_| false);
        assert!(result.is_ok());
        let expected: Vec<String> = plan.ops.iter().map(|op| op.op.to_string()).collect();
        assert_eq!(performed, expected);
    }

    #[test]
    fn failed_population_and_prefetch_are_ignored() {
        let plan = attach_plan(true);
        let (performed, result) = run(&plan, |op| {
            matches!(op, PlanOp::PopulateVa { .. } | PlanOp::Prefetch { .. })
        });
        assert!(result.is_ok());
        assert_eq!(performed.len(), plan.ops.len());
    }

    #[test]
    fn attach_pin_failure_unmaps_the_range_then_the_window() {
        let plan = attach_plan(true);
        let (performed, result) = run(&plan, |op| matches!(op, PlanOp::Pin { .. }));
        assert!(matches!(
            result,
            Err(ApplyError::Attach(PartitionMapperError::Pin(_)))
        ));
        assert_eq!(
            performed[3..],
            [
                "partition 1: pin(0x11000, 0x2000)",
                "partition 1: unmap(0x11000, 0x2000)",
                "partition 1: unmap(0x10000, 0x100000)",
            ]
        );
    }

    #[test]
    fn attach_discard_failure_is_ignored_but_undo_failure_is_fatal() {
        let plan = attach_plan(true);
        let (performed, result) = run(&plan, |op| {
            matches!(op, PlanOp::Map { gpa: 0x11000, .. } | PlanOp::Unmap { .. })
        });
        assert!(matches!(
            result,
            Err(ApplyError::Attach(PartitionMapperError::Map(_)))
        ));
        assert_eq!(
            performed.last().unwrap(),
            "partition 1: unmap(0x10000, 0x100000)"
        );

        let (performed, result) = run(&plan, |op| {
            matches!(op, PlanOp::Pin { .. } | PlanOp::Unmap { .. })
        });
        let Err(ApplyError::Fatal(fatal)) = result else {
            panic!("expected a fatal failure");
        };
        assert!(fatal.op.contains("unmap(0x11000, 0x2000)"), "{}", fatal.op);
        assert_eq!(performed.len(), 5, "no discard after a fatal failure");
    }

    #[test]
    fn runtime_failures_are_fatal_and_stop_the_plan() {
        let plan = attach_plan(false);
        let (performed, result) = run(&plan, |op| matches!(op, PlanOp::Map { gpa: 0x11000, .. }));
        let Err(ApplyError::Fatal(fatal)) = result else {
            panic!("expected a fatal failure");
        };
        assert_eq!(performed.len(), 2);
        assert_eq!(
            std::error::Error::source(&fatal).unwrap().to_string(),
            "failed to map range to partition"
        );

        let (performed, result) = run(&plan, |op| matches!(op, PlanOp::Pin { .. }));
        assert!(matches!(result, Err(ApplyError::Fatal(_))));
        assert_eq!(
            performed.last().unwrap(),
            "partition 1: unmap(0x11000, 0x2000)"
        );
    }

    #[test]
    fn execution_can_be_driven_step_by_step() {
        let plan = attach_plan(true);
        let mut execution = PlanExecution::new(&plan, 0x100000);
        let mut steps = 0;
        while let Some(op) = execution.next_op() {
            let fail = matches!(op.op, PlanOp::Map { gpa: 0x18000, .. });
            steps += 1;
            execution.report(if fail { Err("no".into()) } else { Ok(()) });
        }
        assert_eq!(steps, 6, "five planned operations and the discard");
        assert!(execution.next_op().is_none());
        assert!(matches!(
            execution.finish(),
            Err(ApplyError::Attach(PartitionMapperError::Map(_)))
        ));
    }
}
