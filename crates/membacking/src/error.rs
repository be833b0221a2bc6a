//! Errors of the memory manager runtime: building (`MemoryBuildError`), attaching partitions
//! (`PartitionAttachError`), creating VA mappers (`VaMapperError`) and the causes of failed
//! guest-memory accesses (`NoMapping`, `ManagerGone`). Messages are the original's where it has
//! one; extensions are worded plainly.
//!
//! The region manager's own errors (overlap, visibility, device windows, poisoning) are in
//! [`crate::region_manager::RegionManagerError`].

use crate::region_manager::PartitionMapperError;
use crate::region_manager::RegionManagerError;
use memory_range::MemoryRange;
use std::io;

/// A guest-memory access (or a partition's VA population) found no mapping in part of the
/// requested range (an MMIO gap without a device window, RAM made `Unmapped`, or past the end
/// of the layout). The cause of an `OutOfRange` access error. The message is the original's:
/// `no mapping for {range}`, the requested range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no mapping for {0}")]
pub struct NoMapping(pub MemoryRange);

/// A write found only a read-only mapping (RAM made `ReadOnly`, or a device window mapped
/// read-only) in part of the requested range. The cause of an `OutOfRange` access error; the
/// original reports it as [`NoMapping`] (and so does JavaScript, with this text as the detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} is mapped read-only, so it cannot be written: make it writable first (RAM visibility \
     ReadWrite, or a writable device mapping), or write elsewhere"
)]
pub struct ReadOnlyMapping(pub MemoryRange);

/// The memory manager has stopped (closed or dropped). The cause of an `OutOfRange` access
/// error after `close()`, and of [`VaMapperError::MemoryManagerGone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("memory manager is gone")]
pub struct ManagerGone;

/// Creating a VA mapper failed.
#[derive(Debug, thiserror::Error)]
pub enum VaMapperError {
    /// The mapping manager is gone.
    #[error("failed to communicate with the memory manager")]
    MemoryManagerGone(#[source] ManagerGone),
    /// The VA window could not be reserved.
    #[error("failed to reserve address space")]
    Reserve(#[source] io::Error),
    /// Remote mappers cannot serve private memory (Windows only upstream).
    #[error("remote mappers are not supported in private memory mode")]
    RemoteWithPrivateMemory,
    /// The mapper thread could not be started (extension).
    #[error("failed to start the VA mapper thread")]
    Thread(#[source] io::Error),
}

/// `GuestMemoryBuilder::build` failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryBuildError {
    /// The RAM backing size cannot be represented.
    #[error("ram size {0} is too large")]
    RamTooLarge(u64),
    /// The RAM object could not be allocated.
    #[error("failed to allocate memory")]
    AllocationFailed(#[source] io::Error),
    /// The VA mapper could not be created.
    #[error("failed to create VA mapper")]
    VaMapper(#[source] VaMapperError),
    /// The VTL0 alias offset lies inside the guest address space (or is unaligned, or the
    /// alias would end beyond 2^64).
    #[error("not enough guest address space available for the vtl0 alias map")]
    AliasMapWontFit,
    /// x86 legacy support needs RAM from 0 to at least 1 MiB.
    #[error("x86 support requires RAM to start at 0 and contain at least 1MB")]
    InvalidRamForX86,
    /// Private memory and x86 legacy support were both requested.
    #[error("private memory is incompatible with x86 legacy support")]
    PrivateMemoryWithLegacy,
    /// Private memory and an existing backing were both requested.
    #[error("private memory is incompatible with existing memory backing")]
    PrivateMemoryWithExistingBacking,
    /// Committing private RAM failed.
    #[error("failed to allocate private RAM range {1}")]
    PrivateRamAlloc(#[source] io::Error, MemoryRange),
    /// Transparent huge pages need private memory.
    #[error("transparent huge pages requires private memory mode")]
    ThpWithoutPrivateMemory,
    /// Transparent huge pages are a Linux feature.
    #[error("transparent huge pages is only supported on Linux")]
    ThpUnsupportedPlatform,
    /// The layout has no MMIO gap, so the guest address space cannot be sized (extension: the
    /// original aborts): the manager sizes it from the end of the last gap.
    #[error(
        "invalid memory layout: RAM ends at {end_of_ram:#x} and there is no MMIO gap; the manager \
         sizes the guest address space from the end of the last MMIO gap, so it \
         needs at least one: add a gap, e.g. {end_of_ram:#x}-{suggested_end:#x} (one page at \
         the end of RAM)"
    )]
    InvalidLayout {
        /// Where RAM ends.
        end_of_ram: u64,
        /// The end of the suggested one-page gap.
        suggested_end: u64,
    },
    /// The existing backing is shorter than the RAM it must hold (extension).
    #[error("existing memory backing of {size:#x} bytes is smaller than the {required:#x} bytes of guest RAM")]
    ExistingBackingTooSmall {
        /// The backing's size.
        size: u64,
        /// The RAM size (VTL2 RAM included).
        required: u64,
    },
    /// The existing backing's descriptor is not open for reading and writing, so guest RAM
    /// could not be mapped writable (extension: the original fails on the first access).
    #[error(
        "existing memory backing is not open for reading and writing: guest RAM is mapped \
         writable, so pass a descriptor opened read-write (O_RDWR)"
    )]
    ExistingBackingNotWritable,
    /// The memory manager thread could not be started (extension).
    #[error("failed to start the memory manager thread")]
    Thread(#[source] io::Error),
    /// Creating the RAM regions failed (extension: the original cannot fail here).
    #[error(transparent)]
    RegionManager(RegionManagerError),
}

/// `GuestMemoryManager::attach_partition` failed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionAttachError {
    /// The VA mapper for the partition could not be created.
    #[error("failed to reserve VA range for partition mapping")]
    VaMapper(#[source] VaMapperError),
    /// Mapping the active regions into the partition failed.
    #[error("failed to attach partition to memory manager")]
    PartitionMapper(#[source] PartitionMapperError),
    /// Remote-process mappers are not supported on this platform.
    #[error("remote process mappers are not supported on this platform")]
    Unsupported,
    /// The manager is gone, poisoned, or refused the partition mapper's offset.
    #[error(transparent)]
    Manager(RegionManagerError),
    /// The partition is attached already (extension: the original maps it a second time, and
    /// the failed attach's whole-window unmap then removes what the first attach mapped).
    /// Refused before any partition call.
    #[error("{}", .0.refusal())]
    AlreadyAttached(AttachedTo),
}

/// Which manager holds a partition that [`PartitionAttachError::AlreadyAttached`] refused.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum AttachedTo {
    /// The manager asked to attach it.
    ThisManager,
    /// Another manager of this process.
    AnotherManager,
}

impl AttachedTo {
    /// The refusal's message: the rule and what to do instead.
    fn refusal(self) -> &'static str {
        match self {
            AttachedTo::ThisManager => {
                "partition is already attached to this memory manager: a partition is attached \
                 once, at one VTL, and stays attached until the manager closes (also when a VTL2 \
                 attach failed after mapping the alias); attach a new partition instead"
            }
            AttachedTo::AnotherManager => {
                "partition is already attached to another memory manager: a partition is \
                 attached to one manager at a time, until that manager closes; close the other \
                 manager first, or attach a new partition"
            }
        }
    }
}
