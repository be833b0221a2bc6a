//! Private anonymous host memory to back memory slots: the raw-slot baseline's scratch slot and
//! the tests' guest memory. The mapping itself is `sparse_mmap`'s [`Allocation`] (zeroed, no
//! swap reserved, unmapped on drop); this wrapper hands its address to KVM as bytes.

use sparse_mmap::alloc::Allocation;
use std::io;

/// Private anonymous read/write memory, unmapped on drop.
pub(crate) struct AnonMemory(Allocation);

impl AnonMemory {
    /// Maps `len` bytes (without reserving swap for them).
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        Allocation::new(len).map(Self)
    }

    /// The start of the memory.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.0.as_ptr().cast()
    }

    /// The length in bytes.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}
