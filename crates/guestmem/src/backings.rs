//! Backings over sparse mappings and plain allocations.
//!
//! * [`SparseMapping`] itself: GPA = offset, holes fail with kind `Other` (the trait defaults).
//! * [`SharedMem`]: a fully mapped allocation.
//! * [`SparseMappingBacking`]: a shared sparse mapping whose `page_fault`, fallbacks and page
//!   locking are boxed closures ([`GuestMemoryHooks`]), so that a binding can route them to
//!   JavaScript functions. Each hook runs on the thread performing the access, with no lock held.

// Unsafe code: it implements the unsafe `GuestMemoryAccess` trait for the sparse mapping and
// allocations.
#![allow(unsafe_code)]

use crate::GuestMemoryAccess;
use crate::GuestMemoryBackingError;
use crate::PageFaultAction;
use sparse_mmap::alloc::SharedMem;
use sparse_mmap::SparseMapping;
use std::ptr::NonNull;
use std::sync::Arc;

// SAFETY: the reservation covers `len()` bytes from `as_ptr()` for the mapping's whole lifetime
// and never has holes, so accesses through it can only fault.
unsafe impl GuestMemoryAccess for SparseMapping {
    fn mapping(&self) -> Option<NonNull<u8>> {
        NonNull::new(self.as_ptr().cast::<u8>())
    }

    fn max_address(&self) -> u64 {
        self.len() as u64
    }
}

// SAFETY: the allocation is `len()` accessible bytes for its whole lifetime.
unsafe impl GuestMemoryAccess for SharedMem {
    fn mapping(&self) -> Option<NonNull<u8>> {
        NonNull::new(self.allocation().as_ptr().cast::<u8>())
    }

    fn max_address(&self) -> u64 {
        self.allocation().len() as u64
    }
}

impl crate::LinearGuestMemory for SharedMem {}

/// `page_fault(address, len, write, bitmap_failure)`.
pub type PageFaultHook = Box<dyn Fn(u64, usize, bool, bool) -> PageFaultAction + Send + Sync>;
/// `read_fallback(address, dest)`: fill all of `dest` with the bytes at `address`.
pub type ReadFallbackHook =
    Box<dyn Fn(u64, &mut [u8]) -> Result<(), GuestMemoryBackingError> + Send + Sync>;
/// `write_fallback(address, src)`.
pub type WriteFallbackHook =
    Box<dyn Fn(u64, &[u8]) -> Result<(), GuestMemoryBackingError> + Send + Sync>;
/// `fill_fallback(address, val, len)`.
pub type FillFallbackHook =
    Box<dyn Fn(u64, u8, usize) -> Result<(), GuestMemoryBackingError> + Send + Sync>;
/// `compare_exchange_fallback(address, current, new)`: on mismatch write the observed bytes into
/// `current` and return false.
pub type CompareExchangeFallbackHook =
    Box<dyn Fn(u64, &mut [u8], &[u8]) -> Result<bool, GuestMemoryBackingError> + Send + Sync>;
/// `lock_gpns(gpns)`: true = `unlock_gpns` must be called later.
pub type LockGpnsHook = Box<dyn Fn(&[u64]) -> Result<bool, GuestMemoryBackingError> + Send + Sync>;
/// `unlock_gpns(gpns)`.
pub type UnlockGpnsHook = Box<dyn Fn(&[u64]) + Send + Sync>;

/// Optional behaviour of a [`SparseMappingBacking`]; an absent hook keeps the trait's default
/// (fail with kind `Other`, no fallback, no locking).
#[derive(Default)]
pub struct GuestMemoryHooks {
    /// Decides what to do after a fault.
    pub page_fault: Option<PageFaultHook>,
    /// Slow-path read.
    pub read_fallback: Option<ReadFallbackHook>,
    /// Slow-path write.
    pub write_fallback: Option<WriteFallbackHook>,
    /// Slow-path fill.
    pub fill_fallback: Option<FillFallbackHook>,
    /// Slow-path compare-exchange.
    pub compare_exchange_fallback: Option<CompareExchangeFallbackHook>,
    /// Page locking.
    pub lock_gpns: Option<LockGpnsHook>,
    /// Page unlocking.
    pub unlock_gpns: Option<UnlockGpnsHook>,
}

impl std::fmt::Debug for GuestMemoryHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemoryHooks")
            .field("page_fault", &self.page_fault.is_some())
            .field("read_fallback", &self.read_fallback.is_some())
            .field("write_fallback", &self.write_fallback.is_some())
            .field("fill_fallback", &self.fill_fallback.is_some())
            .field(
                "compare_exchange_fallback",
                &self.compare_exchange_fallback.is_some(),
            )
            .field("lock_gpns", &self.lock_gpns.is_some())
            .field("unlock_gpns", &self.unlock_gpns.is_some())
            .finish()
    }
}

/// A shared sparse mapping (GPA = offset) with pluggable hooks.
#[derive(Debug)]
pub struct SparseMappingBacking {
    mapping: Arc<SparseMapping>,
    hooks: GuestMemoryHooks,
}

impl SparseMappingBacking {
    /// Backs guest memory with `mapping`, handling faults, fallbacks and locking with `hooks`.
    pub fn new(mapping: Arc<SparseMapping>, hooks: GuestMemoryHooks) -> Self {
        Self { mapping, hooks }
    }

    /// The sparse mapping.
    pub fn sparse_mapping(&self) -> &Arc<SparseMapping> {
        &self.mapping
    }

    fn default_backing(&self) -> &SparseMapping {
        &self.mapping
    }
}

// SAFETY: the mapping is reserved for as long as this backing holds its `Arc`; the fallbacks
// stage data through owned buffers, so a hook never sees aliased memory, and report success
// only after every byte was produced.
unsafe impl GuestMemoryAccess for SparseMappingBacking {
    fn mapping(&self) -> Option<NonNull<u8>> {
        self.default_backing().mapping()
    }

    fn max_address(&self) -> u64 {
        self.default_backing().max_address()
    }

    fn page_fault(
        &self,
        address: u64,
        len: usize,
        write: bool,
        bitmap_failure: bool,
    ) -> PageFaultAction {
        match &self.hooks.page_fault {
            Some(hook) => hook(address, len, write, bitmap_failure),
            None => self
                .default_backing()
                .page_fault(address, len, write, bitmap_failure),
        }
    }

    unsafe fn read_fallback(
        &self,
        address: u64,
        dest: *mut u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        let Some(hook) = &self.hooks.read_fallback else {
            // SAFETY: the caller's contract is forwarded unchanged.
            return unsafe { self.default_backing().read_fallback(address, dest, len) };
        };
        let mut staging = vec![0u8; len];
        hook(address, &mut staging)?;
        // SAFETY: `dest` is valid for `len` bytes (caller); `staging` is a separate buffer.
        unsafe { std::ptr::copy_nonoverlapping(staging.as_ptr(), dest, len) };
        Ok(())
    }

    unsafe fn write_fallback(
        &self,
        address: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        let Some(hook) = &self.hooks.write_fallback else {
            // SAFETY: the caller's contract is forwarded unchanged.
            return unsafe { self.default_backing().write_fallback(address, src, len) };
        };
        let mut staging = vec![0u8; len];
        // SAFETY: `src` is valid for `len` bytes (caller); `staging` is a separate buffer.
        unsafe { std::ptr::copy_nonoverlapping(src, staging.as_mut_ptr(), len) };
        hook(address, &staging)
    }

    fn fill_fallback(
        &self,
        address: u64,
        val: u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        match &self.hooks.fill_fallback {
            Some(hook) => hook(address, val, len),
            None => self.default_backing().fill_fallback(address, val, len),
        }
    }

    fn compare_exchange_fallback(
        &self,
        address: u64,
        current: &mut [u8],
        new: &[u8],
    ) -> Result<bool, GuestMemoryBackingError> {
        match &self.hooks.compare_exchange_fallback {
            Some(hook) => hook(address, current, new),
            None => self
                .default_backing()
                .compare_exchange_fallback(address, current, new),
        }
    }

    fn lock_gpns(&self, gpns: &[u64]) -> Result<bool, GuestMemoryBackingError> {
        match &self.hooks.lock_gpns {
            Some(hook) => hook(gpns),
            None => Ok(false),
        }
    }

    fn unlock_gpns(&self, gpns: &[u64]) {
        if let Some(hook) = &self.hooks.unlock_gpns {
            hook(gpns)
        }
    }
}
