//! Plain page allocations: private anonymous read-write memory of an exact size, unmapped on drop.
//!
//! [`Allocation`] is the raw memory; [`SharedMem`] exposes it as a slice of atomic bytes so that
//! several threads may access it concurrently (guest memory implements its access trait for
//! `SharedMem`: fully mapped, never faulting).

// Unsafe code: it maps and unmaps anonymous memory and hands out its address.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU8;

/// Private anonymous read-write memory of exactly `len` bytes.
#[derive(Debug)]
pub struct Allocation {
    address: NonNull<c_void>,
    len: usize,
}

// SAFETY: the object owns its mapping exclusively; the memory is only reached through atomic
// bytes or raw pointers whose users synchronise themselves.
unsafe impl Send for Allocation {}
// SAFETY: as above.
unsafe impl Sync for Allocation {}

impl Allocation {
    /// Maps `size` bytes of zeroed private memory (no rounding; `0` is an OS error).
    pub fn new(size: usize) -> io::Result<Self> {
        // SAFETY: a new anonymous mapping at an address of the kernel's choosing does not affect
        // any existing memory.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let address = NonNull::new(address)
            .ok_or_else(|| io::Error::other("the kernel returned a null mapping"))?;
        Ok(Self { address, len: size })
    }

    /// The base of the memory.
    pub fn as_ptr(&self) -> *mut c_void {
        self.address.as_ptr()
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the size is zero (never: `new(0)` fails).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory as atomic bytes.
    pub fn as_atomic_bytes(&self) -> &[AtomicU8] {
        // SAFETY: the mapping is readable and writable for `len` bytes while `self` lives;
        // atomic bytes may alias any memory.
        unsafe { std::slice::from_raw_parts(self.address.as_ptr().cast::<AtomicU8>(), self.len) }
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this object and unusable after drop. A failure cannot
        // be reported from drop and is ignored.
        unsafe { libc::munmap(self.address.as_ptr(), self.len) };
    }
}

/// An [`Allocation`] shared as atomic bytes.
#[derive(Debug)]
pub struct SharedMem {
    allocation: Allocation,
}

impl SharedMem {
    /// Wraps `allocation`.
    pub fn new(allocation: Allocation) -> Self {
        Self { allocation }
    }

    /// The underlying allocation.
    pub fn allocation(&self) -> &Allocation {
        &self.allocation
    }
}

impl Deref for SharedMem {
    type Target = [AtomicU8];

    fn deref(&self) -> &[AtomicU8] {
        self.allocation.as_atomic_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn allocation_is_zeroed_exact_and_writable() {
        let memory = SharedMem::new(Allocation::new(5000).unwrap());
        assert_eq!(memory.len(), 5000);
        assert!(memory.iter().all(|byte| byte.load(Ordering::Relaxed) == 0));
        memory[4999].store(7, Ordering::Relaxed);
        assert_eq!(
            memory.allocation().as_atomic_bytes()[4999].load(Ordering::Relaxed),
            7
        );
    }

    #[test]
    fn zero_sized_allocation_is_an_os_error() {
        let err = Allocation::new(0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
