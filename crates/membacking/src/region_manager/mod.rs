//! The region manager as a pure planner plus an applier (`docs/design.md`, "The planner and the applier").
//!
//! Regions are fixed GPA ranges with a priority; at most one region is *active* at any GPA
//! (the highest-priority mapped one, the earliest created among identical equal-priority
//! ones), and a region is only ever activated or deactivated as a whole. The region manager
//! keeps partitions and VA mappers showing exactly the active regions.
//!
//! This module splits that job in two:
//!
//! - **The planner** ([`RegionManagerState`], [`Transaction`], [`Change`]) holds the regions and
//!   computes, for one change, the new state and the ordered list of operations ([`Plan`],
//!   [`PlannedOp`]) that bring partitions and mappers in step: mapping-manager additions and
//!   invalidations, VA population, partition map/prefetch/pin/unmap — each with a reason.
//!   It is pure: no threads, no OS memory, no I/O. Validation errors leave the state
//!   unchanged; a dry run ([`RegionManagerState::plan`]) leaves it unchanged too. A change
//!   costs O(log n + size of the change) for n regions: the indexes are ordered maps keyed
//!   by address, and nothing is rebuilt per change.
//! - **The applier** ([`PlanExecution`], [`apply_plan`], [`PlanTarget`]) carries out a plan and
//!   applies the failure rules (ignore a failed prefetch, undo a failed pin, discard a
//!   partition mapper whose attach failed, poison the manager on anything else). Before it,
//!   [`check_slot_capacity`] refuses a plan that needs more slots than a partition has free,
//!   which changes nothing.
//!
//! [`SyncRegionManager`] joins the two on the caller's thread for tests and as the reference
//! for the threaded driver. The [`flat view`](RegionManagerState::flat_view) shows what the
//! guest sees, piece by piece.

mod apply;
mod error;
mod flat_view;
mod net;
mod plan;
mod slot_check;
mod state;
mod sync_manager;
mod types;

#[cfg(test)]
pub(crate) mod tests;

pub use apply::apply_plan;
pub use apply::ApplyError;
pub use apply::PlanExecution;
pub use apply::PlanTarget;
pub use error::FatalError;
pub use error::InvalidRamRegion;
pub use error::OverlapError;
pub use error::PartitionMapperError;
pub use error::RegionManagerError;
pub use flat_view::FlatBacking;
pub use flat_view::FlatEntry;
pub use net::SameObject;
pub use plan::AttachingPartition;
pub use plan::Change;
pub use plan::ChangeOutcome;
pub use plan::Plan;
pub use plan::PlanOp;
pub use plan::PlannedOp;
pub use plan::Transaction;
pub use slot_check::check_slot_capacity;
#[cfg(test)]
pub(crate) use slot_check::SlotLimited;
pub use state::RegionManagerState;
pub use sync_manager::MapperRequest;
pub use sync_manager::PartitionApplier;
pub use sync_manager::RegionCommands;
pub use sync_manager::SyncRegionManager;
pub use types::ActiveMapping;
pub use types::MapParams;
pub use types::MappingInspect;
pub use types::NewRegion;
pub use types::PartitionMapperInfo;
pub use types::Region;
pub use types::RegionId;
pub use types::RegionInspect;
pub use types::RegionManagerInspect;
pub use types::RegionMapping;
pub use types::RegionRef;
pub use types::DEVICE_PRIORITY;
pub use types::RAM_PRIORITY;

pub(crate) use types::serialize_range;
