//! Guest memory backing for a virtual machine monitor: the region manager, partition
//! mapping, device memory windows and RAM visibility.
//!
//! # What is here now
//!
//! This crate currently holds the *pure core* of the memory manager (design.md, "The region
//! manager as a pure plan plus an applier"):
//!
//! - [`region_manager`]: the planner ([`RegionManagerState`](region_manager::RegionManagerState),
//!   [`Transaction`](region_manager::Transaction), [`Change`](region_manager::Change)) that turns
//!   one change into the new state plus the ordered operations, the flat view, the plan
//!   executor with the failure rules ([`PlanExecution`](region_manager::PlanExecution),
//!   [`apply_plan`](region_manager::apply_plan)), and a synchronous reference driver
//!   ([`SyncRegionManager`](region_manager::SyncRegionManager)) that applies plans to
//!   `virt::PartitionMemoryMap`s on the caller's thread.
//! - [`ram_visibility`]: RAM region creation as the builder does it, and
//!   `set_ram_visibility`.
//! - [`device_memory`]: device windows (record of mappings, placement) expressed as
//!   region-manager changes.
//!
//! # How the planner will be driven (later work)
//!
//! The region manager runs as a task on the dedicated "memory_manager" thread and handles its
//! messages (`AddRegion`, `MapRegion`, `AddPartition`, …) one at a time, to completion. For each
//! message the task will:
//!
//! 1. `state.begin()` a transaction and `apply` the message's change. A validation error is
//!    replied at once; the state is untouched.
//! 2. Run the transaction's plan with a [`PlanExecution`](region_manager::PlanExecution): take
//!    each operation, perform it, report the result. `AddMapping` and `Invalidate` become RPCs
//!    to the mapping manager (same thread, awaited); `PopulateVa` is the partition mapper's VA
//!    request to its mapper (awaited, outcome ignored); `Map`/`Prefetch`/`Pin`/`Unmap` call the
//!    partition (held weakly; a gone partition is skipped).
//! 3. Commit on success and reply. If the executor reports an attach failure, roll back (the
//!    new partition mapper disappears; its discard unmap was already issued) and reply
//!    `PartitionMapper(...)`. If it reports a fatal failure, poison the manager: reply
//!    `ManagerPoisoned` now and to every later message.
//!
//! The executor is a state machine without I/O, so the asynchronous driver and
//! [`SyncRegionManager`](region_manager::SyncRegionManager) share the failure rules exactly.
//!
//! # Where the VA mapper invalidations fit
//!
//! A plan's `Invalidate { range }` is the mapping manager's `RemoveMappings(range)`: it drops
//! the active mappings inside `range`, sends `Unmap(range)` to every VA mapper that received one
//! of them, and replies only after all of them acknowledged. The planner always emits a
//! region's partition `Unmap`s *before* its `Invalidate` (invariant I5: the hypervisor stops
//! using a VA before the VA goes away), and a region's `AddMapping`s, then per partition
//! `PopulateVa` *before* `Map` (the VA is populated before a partition maps it). Mappings
//! added to or removed from an *active* region (device DAX windows) only touch the mapping
//! manager and the VA: partitions keep mapping the whole region.
//!
//! The dry-run API (`manager.plan(change)`) is `state.plan(change)`: the same transaction,
//! rolled back, so applying the change afterwards produces exactly the planned operations.

#![forbid(unsafe_code)]

pub mod device_memory;
pub mod ram_visibility;
pub mod region_manager;
