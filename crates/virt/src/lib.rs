//! The seam between the memory manager and a hypervisor.
//!
//! The memory manager (`membacking`) keeps every attached partition's guest-physical-address
//! mappings in step with its region manager. It talks to a partition only through the
//! [`PartitionMemoryMap`] trait defined here: map a host virtual address range at a GPA, unmap a
//! GPA range, and optionally prefetch or pin a range. Two implementations exist in this project:
//! a KVM partition (its own crate) and [`RecordingPartition`], which records every call so tests,
//! scripts and the dry-run planner can compare the calls a change produced, exactly.
//!
//! [`Vtl`] names the virtual trust level a partition is attached for (VTL2 partitions also
//! receive the VTL0 alias map).

#![forbid(unsafe_code)]

mod partition_memory_map;
mod recording;
mod vtl;

pub use partition_memory_map::Error;
pub use partition_memory_map::PartitionMemoryMap;
pub use partition_memory_map::PlannedCall;
pub use partition_memory_map::PrefetchChunk;
pub use partition_memory_map::PrefetchFailure;
pub use partition_memory_map::SlotCapacity;
pub use recording::next_sequence_number;
pub use recording::InjectedFailure;
pub use recording::ParseRecordedOpError;
pub use recording::RecordedCall;
pub use recording::RecordedOp;
pub use recording::RecordingLog;
pub use recording::RecordingPartition;
pub use vtl::InvalidVtl;
pub use vtl::Vtl;
