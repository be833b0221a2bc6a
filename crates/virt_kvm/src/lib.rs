//! A real KVM partition for the memory manager, and a minimal vCPU runner to execute guest code
//! against the memory it maps.
//!
//! [`KvmPartition`] implements [`virt::PartitionMemoryMap`] with KVM memory slots: one slot per
//! `map_range` (read-only slots with `KVM_MEM_READONLY`), `unmap_range` deleting whole slots,
//! `prefetch_range` populating the host pages and `pin_range` locking them. It keeps a slot
//! table for `inspect()` and a log of the slot ids each call created and deleted.
//!
//! [`Vcpu`] runs guest code in real mode or 64-bit long mode (identity-mapped 2 MiB pages
//! covering 512 GiB, CPL 3 with IOPL 3 by default) and returns each exit the caller must handle:
//! MMIO and port accesses, `hlt`, shutdown, failures, cancel and timeout. [`programs`] holds a
//! few tiny guest programs for tests and the demo.
//!
//! Everything that needs `/dev/kvm` fails with [`KvmError::KvmUnavailable`] where it cannot be
//! opened; the tests then say that they were skipped and why.

mod anon_memory;
pub mod baseline;
mod cancel_signal;
mod dirty_log;
mod error;
pub mod page_tables;
mod partition;
mod prefetch;
pub mod programs;
mod slot_memory;
mod slots;
#[cfg(test)]
mod test_support;
mod vcpu;
mod vcpu_thread;

pub use error::KvmError;
pub use page_tables::PAGE_TABLES_SIZE;
pub use partition::KvmPartition;
pub use partition::KvmPartitionInspect;
pub use partition::KvmPartitionOptions;
pub use partition::PlannedSlotCall;
pub use partition::SlotChanges;
pub use partition::SlotLogEntry;
pub use partition::SlotOp;
pub use partition::SLOT_LOG_CAPACITY;
pub use slot_memory::SlotWriteError;
pub use slots::SlotInfo;
pub use vcpu::CancelReason;
pub use vcpu::Registers;
pub use vcpu::Vcpu;
pub use vcpu::VcpuCanceller;
pub use vcpu::VcpuExit;
pub use vcpu::VcpuMode;
pub use vcpu::VcpuOptions;
pub use vcpu::WriteGuestMemory;
pub use vcpu_thread::RunRefused;
pub use vcpu_thread::VcpuThread;
