//! [`AlignedHeapMemory`]: zeroed, page-aligned heap memory used by `GuestMemory::allocate`.
//!
//! Fully accessible and never faulting, so guest memory over it needs no fault handler.

// Unsafe code: it allocates aligned heap memory and implements the unsafe `GuestMemoryAccess` trait
// for it.
#![allow(unsafe_code)]

use crate::GuestMemoryAccess;
use crate::PAGE_SIZE;
use std::alloc::Layout;
use std::ops::Deref;
use std::ops::DerefMut;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU8;

/// Page-aligned, zeroed heap memory of a whole number of 4 KiB pages.
pub struct AlignedHeapMemory {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the object owns its allocation; its contents are only reached as atomic bytes or
// through guarded raw accesses.
unsafe impl Send for AlignedHeapMemory {}
// SAFETY: as above.
unsafe impl Sync for AlignedHeapMemory {}

impl std::fmt::Debug for AlignedHeapMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedHeapMemory")
            .field("len", &self.len)
            .finish()
    }
}

impl AlignedHeapMemory {
    /// Allocates `size` bytes rounded up to 4 KiB, zeroed.
    ///
    /// # Panics
    /// If the allocation fails.
    pub fn new(size: usize) -> Self {
        Self::try_new(size)
            .unwrap_or_else(|| panic!("failed to allocate {size:#x} bytes of heap memory"))
    }

    /// Allocates `size` bytes rounded up to 4 KiB, zeroed; `None` when that is impossible.
    pub fn try_new(size: usize) -> Option<Self> {
        let len = size.checked_next_multiple_of(PAGE_SIZE)?;
        if len == 0 {
            return Some(Self {
                base: NonNull::<[u8; PAGE_SIZE]>::dangling().cast(),
                len: 0,
            });
        }
        let layout = Layout::from_size_align(len, PAGE_SIZE).ok()?;
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(Self { base, len })
    }

    /// The size in bytes (a multiple of 4 KiB).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the size is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The base address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The memory as plain bytes; takes `&mut self` so that no atomic view is in use.
    pub fn as_bytes(&mut self) -> &[u8] {
        self.as_mut_bytes()
    }

    /// The memory as plain bytes (exclusive access).
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        // SAFETY: `&mut self` gives exclusive access to the allocation of `len` bytes.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }
}

impl Deref for AlignedHeapMemory {
    type Target = [AtomicU8];

    fn deref(&self) -> &[AtomicU8] {
        // SAFETY: the allocation is `len` initialised bytes for the lifetime of `self`; atomic
        // bytes may alias any memory.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU8>(), self.len) }
    }
}

impl DerefMut for AlignedHeapMemory {
    fn deref_mut(&mut self) -> &mut [AtomicU8] {
        // SAFETY: `&mut self` gives exclusive access to the `len` initialised bytes; `AtomicU8`
        // has the layout of `u8`.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().cast::<AtomicU8>(), self.len) }
    }
}

impl AsRef<[AtomicU8]> for AlignedHeapMemory {
    fn as_ref(&self) -> &[AtomicU8] {
        self
    }
}

impl AsMut<[AtomicU8]> for AlignedHeapMemory {
    fn as_mut(&mut self) -> &mut [AtomicU8] {
        self
    }
}

impl AsMut<[u8]> for AlignedHeapMemory {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_bytes()
    }
}

impl Drop for AlignedHeapMemory {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        if let Ok(layout) = Layout::from_size_align(self.len, PAGE_SIZE) {
            // SAFETY: allocated in `try_new` with this same layout.
            unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
        }
    }
}

// SAFETY: the allocation is `len` bytes of accessible memory that lives as long as the backing.
unsafe impl GuestMemoryAccess for AlignedHeapMemory {
    fn mapping(&self) -> Option<NonNull<u8>> {
        Some(self.base)
    }

    fn max_address(&self) -> u64 {
        self.len as u64
    }
}

impl crate::LinearGuestMemory for AlignedHeapMemory {}
