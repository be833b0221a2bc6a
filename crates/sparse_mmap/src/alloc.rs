//! Plain page allocations: private anonymous read-write memory of an exact size, unmapped on drop.
//!
//! [`Allocation`] is the raw memory, also readable as atomic bytes or atomic 64-bit words (a
//! zeroed bitmap that costs nothing until touched); [`SharedMem`] exposes it as a slice of atomic
//! bytes so that several threads may access it concurrently (guest memory implements its access
//! trait for `SharedMem`: fully mapped, never faulting).

// Unsafe code: it maps and unmaps anonymous memory and hands out its address.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicU8;

/// Private anonymous read-write memory of exactly `len` bytes, mapped without reserving swap for
/// it: the kernel provides zeroed pages on first touch.
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
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
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

    /// Maps zeroed memory for `count` atomic 64-bit words ([`Self::as_atomic_words`]); at
    /// least one word.
    pub fn words(count: usize) -> io::Result<Self> {
        let bytes = count
            .max(1)
            .checked_mul(std::mem::size_of::<AtomicU64>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Self::new(bytes)
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

    /// The memory as atomic 64-bit words (the whole words it holds).
    pub fn as_atomic_words(&self) -> &[AtomicU64] {
        let count = self.len / std::mem::size_of::<AtomicU64>();
        // SAFETY: the mapping starts on a page boundary (so the words are aligned), is readable
        // and writable for `len >= count * 8` bytes while `self` lives, and all-zero (or any)
        // bytes are a valid `AtomicU64`; atomics may alias the atomic bytes view.
        unsafe { std::slice::from_raw_parts(self.address.as_ptr().cast::<AtomicU64>(), count) }
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
    fn words_are_zeroed_aligned_and_shared_with_the_bytes() {
        let memory = Allocation::words(3).unwrap();
        let words = memory.as_atomic_words();
        assert_eq!(words.len(), 3);
        assert!(words.iter().all(|word| word.load(Ordering::Relaxed) == 0));
        words[1].fetch_or(1 << 9, Ordering::Relaxed);
        // Little-endian: bit 9 of word 1 is bit 1 of byte 9.
        assert_eq!(memory.as_atomic_bytes()[9].load(Ordering::Relaxed), 2);
        assert_eq!(Allocation::words(0).unwrap().as_atomic_words().len(), 1);
        assert!(Allocation::words(usize::MAX).is_err());
    }

    #[test]
    fn zero_sized_allocation_is_an_os_error() {
        let err = Allocation::new(0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
