//! Guest memory backing for a virtual machine monitor: the region manager, the mapping manager
//! with lazily filled VA mappers, partition mapping, device memory windows, RAM visibility, and
//! the [`GuestMemoryBuilder`]/[`GuestMemoryManager`] runtime that ties them together.
//!
//! # Layers
//!
//! - [`region_manager`]: the *pure core*. A planner ([`RegionManagerState`](region_manager::RegionManagerState),
//!   [`Transaction`](region_manager::Transaction), [`Change`](region_manager::Change)) turns one
//!   change into the new state plus the ordered operations (mapping-manager additions and
//!   invalidations, VA population, partition map/prefetch/pin/unmap); the plan executor
//!   ([`PlanExecution`](region_manager::PlanExecution)) applies the failure rules; the flat view
//!   shows what the guest sees; [`check_slot_capacity`](region_manager::check_slot_capacity)
//!   refuses, before any call, a plan that needs more hypervisor slots than a partition has
//!   free; [`SyncRegionManager`](region_manager::SyncRegionManager) is a synchronous reference
//!   driver for tests.
//! - [`ram_visibility`] and [`device_memory`]: RAM regions and device windows expressed as
//!   region-manager changes (so the same code acts and plans).
//! - [`mapping_manager`]: the active mapping set and the VA mappers — one reserved window per
//!   process and manager, filled on demand: a guest-memory access that faults on an unmapped
//!   page asks for the mapping, waits and retries ([`VaMapper`]).
//!   Pages locked through `GuestMemory::lock_gpns` stay mapped in this process until released.
//! - The runtime ([`GuestMemoryBuilder`], [`GuestMemoryManager`], [`GuestMemoryClient`],
//!   [`RamVisibilityControl`], [`DeviceMemoryMapper`], [`SharedMemoryBacking`]): both managers
//!   run as tasks on a dedicated "memory_manager" thread and talk through `futures` channels;
//!   each VA mapper has a "mapper" thread. Every asynchronous method returns a
//!   `Send + 'static` future.
//! - [`dirty`], [`snapshot`] and [`migration`]: dirty tracking of guest RAM, snapshots and
//!   restores (`docs/snapshots.md`), and live migration (`docs/migration.md`), built on the
//!   runtime.
//!
//! # Invariants kept by the runtime
//!
//! A partition only ever maps a region after its VA mapper was asked to populate it, and
//! unmaps it before the VA is invalidated (I5); an invalidation returns only after every mapper
//! that received an affected mapping made it inaccessible (I6), except pages locked through the
//! accessor, which stay as they were until their last lock goes. Unrecoverable
//! partition or mapper failures poison the manager instead of aborting (D5).
//!
//! # For the JavaScript binding
//!
//! - Errors: build → [`MemoryBuildError`]; attach → [`PartitionAttachError`] (its
//!   `PartitionMapper` cause is a [`PartitionMapperError`]; `Manager` wraps a
//!   [`RegionManagerError`] transparently); accessor creation → [`VaMapperError`]; visibility,
//!   decommit, inspect and dry runs → [`RegionManagerError`]; device-window operations →
//!   `std::io::Error` whose kind is `InvalidInput`/`Unsupported` for bad input, or `Other`
//!   wrapping a [`RegionManagerError`] (find it with `get_ref()` and `downcast_ref`). A failed
//!   guest-memory access of the manager's accessor has kind `OutOfRange` with a [`NoMapping`]
//!   or [`ManagerGone`] source, or kind `Other` with [`UnexpectedPrivateFault`] in private mode.
//! - `RecordingPartition` `vaOffset`s: call `set_va_base(manager.va_window_base())` on the
//!   partition before attaching it.
//! - [`GuestMemoryManager::close`] consumes the manager; keep it in an `Option` to take it.
//!
//! # Unsafe code
//!
//! This crate has exactly one piece of unsafe code, an `unsafe impl`: the accessor's backing
//! implements `guestmem::GuestMemoryAccess`, whose contract (the mapping stays reserved while the
//! backing lives) the VA mapper keeps (`mapping_manager::backing`, the only module that opts in).
//! Every system call goes through a safe API of the crate that owns it: memory objects, VA
//! reservations, page bitmaps and userfaultfd through `sparse_mmap`, guest accesses through
//! `guestmem`, and what snapshot publishing and reading need beyond that (`renameat2`, the
//! `kill(pid, 0)` liveness check, clearing `O_NONBLOCK`) through `rustix`. `unsafe_code` is denied
//! everywhere else in the crate, tests included (the snapshot benchmark's raw baselines, a separate
//! target, say at their top why they opt in).

/// The guest page size in bytes: the unit of mappings, visibility changes and snapshots.
pub(crate) const PAGE_SIZE: u64 = 4096;

pub mod device_memory;
pub mod dirty;
mod error;
pub mod mapping_manager;
mod memory_manager;
pub mod migration;
pub mod ram_visibility;
pub mod region_manager;
pub mod snapshot;
#[cfg(all(test, target_arch = "x86_64"))]
mod test_guest;

pub use dirty::DirtyTracking;
pub use dirty::DirtyTrackingError;
pub use error::AttachedTo;
pub use error::ManagerGone;
pub use error::MemoryBuildError;
pub use error::NoMapping;
pub use error::PartitionAttachError;
pub use error::ReadOnlyMapping;
pub use error::VaMapperError;
pub use mapping_manager::va_mapper::MapperEvent;
pub use mapping_manager::va_mapper::UnexpectedPrivateFault;
pub use mapping_manager::va_mapper::VaMapper;
pub use mapping_manager::MapperId;
pub use mapping_manager::MappingManagerInspect;
pub use mapping_manager::MappingSnapshot;
pub use mapping_manager::SharedObject;
pub use memory_manager::preview_steps;
pub use memory_manager::AppliedBatch;
pub use memory_manager::BatchChangeError;
pub use memory_manager::BatchError;
pub use memory_manager::DeviceChange;
pub use memory_manager::DeviceMemoryMapper;
pub use memory_manager::GuestMemoryBuilder;
pub use memory_manager::GuestMemoryClient;
pub use memory_manager::GuestMemoryManager;
pub use memory_manager::ManagerChange;
pub use memory_manager::ManagerSnapshot;
pub use memory_manager::MappableGuestMemory;
pub use memory_manager::MappedMemoryRegion;
pub use memory_manager::PartitionClaim;
pub use memory_manager::PlanPreview;
pub use memory_manager::PrefetchFailureRecord;
pub use memory_manager::PrefetchFailures;
pub use memory_manager::PrefetchProgress;
pub use memory_manager::PrefetchReport;
pub use memory_manager::PreviewStep;
pub use memory_manager::PreviewStepKind;
pub use memory_manager::RamVisibilityControl;
pub use memory_manager::RemoteProcess;
pub use memory_manager::ResourceFootprint;
pub use memory_manager::SharedMemoryBacking;
pub use migration::MigrationError;
pub use ram_visibility::RamVisibility;
pub use region_manager::InvalidRamRegion;
pub use region_manager::OverlapError;
pub use region_manager::PartitionMapperError;
pub use region_manager::RegionManagerError;
pub use snapshot::SnapshotError;

/// The error of region-manager operations of a running manager (visibility, device windows,
/// decommit, inspect): the JavaScript API's `MemoryManagerError`.
pub type MemoryManagerError = RegionManagerError;
