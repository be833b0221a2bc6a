//! Errors of the region manager, the partition mappers and the plan applier.

use super::types::RegionId;
use memory_range::MemoryRange;
use std::sync::Arc;

/// A new region violates the nesting rule against an existing one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("memory region {new} overlaps with existing region {existing}")]
pub struct OverlapError {
    /// The existing region's name.
    pub existing: String,
    /// The new region's name.
    pub new: String,
}

/// A RAM visibility change named a range that is not exactly one RAM region.
#[derive(Debug, Copy, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a controllable RAM range")]
pub struct InvalidRamRegion(pub MemoryRange);

/// Mapping a region into a partition failed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionMapperError {
    /// The partition refused the mapping.
    #[error("failed to map range to partition")]
    Map(#[source] virt::Error),
    /// The partition refused to pin the mapped range (the range was unmapped again).
    #[error("failed to pin range to partition")]
    Pin(#[source] virt::Error),
}

/// An operation failed that leaves the partitions or VA mappers out of step with the region
/// manager; the manager must be poisoned.
#[derive(Debug, thiserror::Error)]
#[error("unrecoverable failure: {op}")]
pub struct FatalError {
    /// The operation that failed, with its reason.
    pub op: String,
    /// What the partition or mapper reported.
    #[source]
    pub source: virt::Error,
}

/// Errors of region-manager operations.
///
/// The planner itself only returns the validation errors (`OverlapError` to `NoSuchRegion`);
/// a driver that applies plans adds `PartitionMapper`, `ManagerPoisoned` and `ManagerGone`.
/// Every validation error leaves the state unchanged.
#[derive(Debug, thiserror::Error)]
pub enum RegionManagerError {
    /// A new region violates the nesting rule.
    #[error(transparent)]
    OverlapError(#[from] OverlapError),
    /// A visibility change named a range that is not one RAM region.
    #[error(transparent)]
    InvalidRamRegion(#[from] InvalidRamRegion),
    /// A region would end beyond the VA window (extension: the original aborts later).
    #[error("memory region {name} {range} extends beyond the guest address space (VA window length {window_len:#x})")]
    RegionOutOfRange {
        /// The region's name.
        name: String,
        /// The rejected range.
        range: MemoryRange,
        /// The VA window length.
        window_len: u64,
    },
    /// A region with an empty range (extension: such a region could never be shown).
    #[error("memory region {name} has an empty range {range}")]
    EmptyRegion {
        /// The region's name.
        name: String,
        /// The rejected range.
        range: MemoryRange,
    },
    /// A new mapping overlaps an existing mapping of the region (extension: the original aborts).
    #[error("mapping {range} overlaps mapping {existing} in memory region {region}")]
    MappingOverlap {
        /// The region's name.
        region: String,
        /// The new mapping's range in the region.
        range: MemoryRange,
        /// The existing mapping's range in the region.
        existing: MemoryRange,
    },
    /// A mapping or unmap range ends beyond the region (extension: the original aborts).
    #[error("mapping range {range} is outside memory region {region} of length {region_len:#x}")]
    MappingOutOfRange {
        /// The region's name.
        region: String,
        /// The rejected range, relative to the region's start.
        range: MemoryRange,
        /// The region's length.
        region_len: u64,
    },
    /// An empty mapping (extension: it would map nothing and the VA mapper would reject it).
    #[error("mapping range {range} in memory region {region} is empty")]
    EmptyMapping {
        /// The region's name.
        region: String,
        /// The rejected range, relative to the region's start.
        range: MemoryRange,
    },
    /// An unmap range cuts through a mapping (extension: the original aborts).
    #[error("cannot remove {range} from memory region {region}: mapping {mapping} is only partly inside it")]
    PartialUnmap {
        /// The region's name.
        region: String,
        /// The unmap range, relative to the region's start.
        range: MemoryRange,
        /// The mapping that is cut, relative to the region's start.
        mapping: MemoryRange,
    },
    /// The region id names no region (a stale handle).
    #[error("memory region {0} does not exist")]
    NoSuchRegion(RegionId),
    /// A partition mapper's GPA offset would push addresses past 2^64.
    #[error("partition offset {offset:#x} does not fit the VA window length {window_len:#x}")]
    InvalidPartitionOffset {
        /// The rejected offset.
        offset: u64,
        /// The VA window length.
        window_len: u64,
    },
    /// A change needs more hypervisor slots (KVM memory slots) than an attached partition has
    /// free; it was refused before any call and nothing changed (extension: the original runs
    /// out part way through the change and aborts).
    #[error(
        "partition {partition} has {free} of its {max_slots} memory slots free, but the change \
         needs {needed} more at once (each region shown to a partition takes a slot), so \
         nothing was applied: show fewer regions (fewer or merged device windows; unmap \
         windows no longer needed first, before or in the same batch), or close a partition \
         that no longer needs this memory"
    )]
    NoFreeSlot {
        /// The partition (registration index, as plans name it).
        partition: usize,
        /// The most slots beyond those in use now that the change would hold at once.
        needed: u32,
        /// The partition's free slots.
        free: u32,
        /// The partition's slots in all.
        max_slots: u32,
    },
    /// Attaching a partition failed; the partition mapper was discarded.
    #[error(transparent)]
    PartitionMapper(#[from] PartitionMapperError),
    /// An earlier (or this) operation failed unrecoverably; the manager refuses all work.
    #[error("memory manager is poisoned by an earlier unrecoverable failure")]
    ManagerPoisoned {
        /// The failure that poisoned the manager.
        #[source]
        cause: Arc<FatalError>,
    },
    /// The region manager has stopped.
    #[error("memory manager is gone")]
    ManagerGone,
    /// A device region would overlap private RAM, whose VA it would overwrite (an
    /// extension of the original).
    #[error("memory region {name} {range} overlaps private guest RAM")]
    RegionOverlapsPrivateRam {
        /// The region's name.
        name: String,
        /// The rejected range.
        range: MemoryRange,
    },
    /// A device mapping would read beyond the end of its object (extension: the original maps
    /// it and the access later raises SIGBUS).
    #[error("mapping {file_offset:#x}+{len:#x} in memory region {region} lies beyond the end of its object ({object_size:#x} bytes)")]
    MappingBeyondObject {
        /// The region's (device window's) name.
        region: String,
        /// The object offset of the mapping.
        file_offset: u64,
        /// The mapping's length.
        len: u64,
        /// The object's size.
        object_size: u64,
    },
    /// Releasing guest RAM pages failed (`decommit_ram`).
    #[error("failed to decommit guest RAM {range}")]
    DecommitFailed {
        /// The range being decommitted.
        range: MemoryRange,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
