//! Virtual address reservations with memfd/file-backed or anonymous pages placed into them.
//!
//! A [`SparseMapping`] owns one contiguous range of host virtual address space for its whole
//! lifetime. The range starts inaccessible; page-granular sub-ranges are then replaced by private
//! anonymous memory ([`SparseMapping::alloc`]), read-only zero pages
//! ([`SparseMapping::map_zero`]) or shared views of a file descriptor
//! ([`SparseMapping::map_file`]), and returned to the inaccessible state
//! ([`SparseMapping::unmap`]) without ever giving the address space back to the OS. Guest memory
//! (`guestmem`) is layered on top: because the reservation never has holes, a guarded access to
//! an unplaced page can only raise a recoverable fault, never touch unrelated memory.
//!
//! The data helpers ([`SparseMapping::read_at`] and friends) go through `trycopy`, so faults
//! become [`SparseMappingError::Memory`] errors. Shareable memory objects are plain owned file
//! descriptors ([`Mappable`]), created by [`alloc_shared_memory`] (a memfd). [`userfaultfd`]
//! serves missing-page faults of a [`SparseMapping`]'s memory from user space (its operations
//! name a mapping and a range inside it, never a raw address).
//!
//! Linux only (x86-64 and aarch64). No operation here panics on caller input: every failure is an
//! error.

#![cfg(target_os = "linux")]

pub mod alloc;
mod data_access;
mod mapping;
mod shared_memory;
mod shmem_views;
pub mod userfaultfd;

pub use data_access::SparseMappingError;
pub use mapping::SparseMapping;
pub use shared_memory::alloc_shared_memory;
pub use shared_memory::alloc_shared_memory_steps;
pub use shared_memory::is_open_read_write;
pub use shared_memory::is_regular_file;
pub use shared_memory::mappable_from_fd;
pub use shared_memory::mappable_from_raw_fd;
pub use shared_memory::new_mappable_from_file;
pub use shared_memory::object_id;
pub use shared_memory::object_name;
pub use shared_memory::object_size;
pub use shared_memory::punch_hole;
pub use shared_memory::read_exact_at;
pub use shared_memory::seek;
pub use shared_memory::write_all_at;
pub use shared_memory::AllocSharedMemoryError;
pub use shared_memory::AllocSharedMemoryStep;
pub use shared_memory::Mappable;
pub use shared_memory::MappableRef;
pub use shared_memory::Seek;
pub use trycopy::initialize_try_copy;

/// Anything that can lend a file descriptor, accepted by [`SparseMapping::map_file`] (the
/// original's name for `AsFd`).
pub use std::os::fd::AsFd as AsMappableRef;

/// The platform module, under the original's path: `sparse_mmap::unix::SparseMapping` and the
/// other Unix items name the same items as the crate root.
pub mod unix {
    pub use crate::alloc_shared_memory;
    pub use crate::new_mappable_from_file;
    pub use crate::AsMappableRef;
    pub use crate::Mappable;
    pub use crate::MappableRef;
    pub use crate::SparseMapping;
}

#[cfg(test)]
mod tests;
