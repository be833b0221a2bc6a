//! The backing trait [`GuestMemoryAccess`] and the page-fault decision it returns.
//!
//! A backing gives guest memory an address space `[0, max_address())`, usually through a mapping
//! of reserved host VA whose pages may be inaccessible. When a guarded access through the
//! mapping faults, guest memory asks the backing's `page_fault` what to do: make the page
//! accessible and retry, fail with a kind, or use the backing's slow-path `*_fallback` methods
//! for the whole operation. All addresses a backing sees are relative to its own address space.

// Unsafe code: `GuestMemoryAccess` is an unsafe trait: a backing promises that its mapping stays
// reserved.
#![allow(unsafe_code)]

use crate::dirty::DirtyBitmap;
use crate::error::Cause;
use crate::sharing::GuestMemorySharing;
use crate::GuestMemory;
use crate::GuestMemoryBackingError;
use crate::PageFaultError;
use std::ptr::NonNull;
use std::sync::Arc;

/// What guest memory should do after a guarded access faulted.
#[derive(Debug)]
pub enum PageFaultAction {
    /// The backing made the memory accessible (e.g. mapped the page): run the access again.
    Retry,
    /// The access fails with this error (its kind reaches the caller).
    Fail(PageFaultError),
    /// Run the whole operation through the backing's `*_fallback` method.
    Fallback,
}

/// A marker for backings whose whole range is reachable through
/// [`GuestMemoryAccess::mapping`]: `mapping()` returns `Some`, and no access needs a fallback.
pub trait LinearGuestMemory: GuestMemoryAccess {}

/// A source of guest memory.
///
/// # Safety
/// Implementors promise that:
/// * if [`mapping`](Self::mapping) returns `Some(base)`, `base..base + max_address()` is
///   reserved host VA that stays reserved (never handed to another user) for the backing's
///   lifetime; its pages may be inaccessible, but an access to them may only fault, never touch
///   memory owned by someone else;
/// * the `*_fallback` methods initialise every byte they are asked to read on success;
/// * the pages returned by a successful [`lock_gpns`](Self::lock_gpns) stay mapped until the
///   matching [`unlock_gpns`](Self::unlock_gpns).
pub unsafe trait GuestMemoryAccess: 'static + Send + Sync {
    /// The base of the VA range backing `[0, max_address())`, or `None` when there is no direct
    /// mapping (every access then uses the fallbacks). Read once, when the `GuestMemory` is
    /// built.
    fn mapping(&self) -> Option<NonNull<u8>>;

    /// The size of the address space (also the bound for fallbacks).
    fn max_address(&self) -> u64;

    /// The read and write access bitmaps of the mapping (one bit per 4 KiB page), or `None`
    /// when every mapped page may be accessed. Read once, when the `GuestMemory` is built; the
    /// bitmaps must stay readable (atomically, from any thread) for the backing's lifetime.
    #[cfg(feature = "bitmap")]
    fn access_bitmap(&self) -> Option<crate::BitmapInfo> {
        None
    }

    /// An optional specialised view of `offset..offset + len`; `Ok(None)` uses the generic view.
    fn subrange(
        &self,
        offset: u64,
        len: u64,
        allow_preemptive_locking: bool,
    ) -> Result<Option<GuestMemory>, GuestMemoryBackingError> {
        let _ = (offset, len, allow_preemptive_locking);
        Ok(None)
    }

    /// Called when a guarded access through the mapping faulted at `address` (the first failing
    /// byte), with `len` bytes of the access remaining from there (not all necessarily bad).
    ///
    /// Runs synchronously on the accessing thread, with no lock of guest memory held; it may
    /// block (e.g. until a mapping arrives) and may access the same guest memory again.
    /// `bitmap_failure` is true when an access bitmap (feature `bitmap`) rather than the
    /// hardware refused the access.
    fn page_fault(
        &self,
        address: u64,
        len: usize,
        write: bool,
        bitmap_failure: bool,
    ) -> PageFaultAction {
        let _ = (address, len, write, bitmap_failure);
        PageFaultAction::Fail(PageFaultError::other(Cause::NotMapped))
    }

    /// Called before an access of `len` bytes at `address` whose buffer has yet to be allocated
    /// (a large read into a new buffer), so that an access the backing already knows cannot
    /// succeed is refused before that. It may do what the access would do anyway (map the
    /// range). The error's address is the first byte known to be inaccessible. The default
    /// knows of nothing.
    fn check_access(
        &self,
        address: u64,
        len: u64,
        write: bool,
    ) -> Result<(), GuestMemoryBackingError> {
        let _ = (address, len, write);
        Ok(())
    }

    /// Slow-path read of `len` bytes at `address` into `dest`.
    ///
    /// # Safety
    /// `dest` is valid for writing `len` bytes; it may be aliased (shared with other threads),
    /// so it must be treated as raw memory.
    unsafe fn read_fallback(
        &self,
        address: u64,
        dest: *mut u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        let _ = (dest, len);
        Err(GuestMemoryBackingError::other(address, Cause::NoFallback))
    }

    /// Slow-path write of `len` bytes from `src` to `address`.
    ///
    /// # Safety
    /// `src` is valid for reading `len` bytes; it may be aliased.
    unsafe fn write_fallback(
        &self,
        address: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        let _ = (src, len);
        Err(GuestMemoryBackingError::other(address, Cause::NoFallback))
    }

    /// Slow-path fill of `len` bytes at `address` with `val`.
    fn fill_fallback(
        &self,
        address: u64,
        val: u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        let _ = (val, len);
        Err(GuestMemoryBackingError::other(address, Cause::NoFallback))
    }

    /// Slow-path compare-exchange at `address`: if memory equals `current`, store `new` and
    /// return true; otherwise write the observed bytes into `current` and return false.
    fn compare_exchange_fallback(
        &self,
        address: u64,
        current: &mut [u8],
        new: &[u8],
    ) -> Result<bool, GuestMemoryBackingError> {
        let _ = (current, new);
        Err(GuestMemoryBackingError::other(address, Cause::NoFallback))
    }

    /// Prepares `address..address + len` to be handed to the kernel or a DMA engine.
    fn expose_va(&self, address: u64, len: u64) -> Result<(), GuestMemoryBackingError> {
        let _ = (address, len);
        Ok(())
    }

    /// The IO virtual address of the mapping base, for user-mode DMA.
    fn base_iova(&self) -> Option<u64> {
        None
    }

    /// Pins the pages against remapping and permission changes; `true` means the caller must
    /// call [`unlock_gpns`](Self::unlock_gpns) with the same list later.
    fn lock_gpns(&self, gpns: &[u64]) -> Result<bool, GuestMemoryBackingError> {
        let _ = gpns;
        Ok(false)
    }

    /// Reverses [`lock_gpns`](Self::lock_gpns) (same list, same order).
    fn unlock_gpns(&self, gpns: &[u64]) {
        let _ = gpns;
    }

    /// Describes file-backed regions that may be shared with other processes.
    fn sharing(&self) -> Option<GuestMemorySharing> {
        None
    }

    /// The bitmap that writes through this backing are recorded in, and the bitmap offset of
    /// the backing's address 0. Read once, when the `GuestMemory` is built; `None` (the
    /// default) records nothing.
    fn dirty_bitmap(&self) -> Option<(Arc<DirtyBitmap>, u64)> {
        None
    }
}

// SAFETY: forwards every method (including lock/unlock, a deliberate difference from upstream)
// to the shared backing, whose guarantees therefore carry over.
unsafe impl<T: GuestMemoryAccess> GuestMemoryAccess for Arc<T> {
    fn mapping(&self) -> Option<NonNull<u8>> {
        self.as_ref().mapping()
    }

    fn max_address(&self) -> u64 {
        self.as_ref().max_address()
    }

    #[cfg(feature = "bitmap")]
    fn access_bitmap(&self) -> Option<crate::BitmapInfo> {
        self.as_ref().access_bitmap()
    }

    fn subrange(
        &self,
        offset: u64,
        len: u64,
        allow_preemptive_locking: bool,
    ) -> Result<Option<GuestMemory>, GuestMemoryBackingError> {
        self.as_ref()
            .subrange(offset, len, allow_preemptive_locking)
    }

    fn page_fault(
        &self,
        address: u64,
        len: usize,
        write: bool,
        bitmap_failure: bool,
    ) -> PageFaultAction {
        self.as_ref()
            .page_fault(address, len, write, bitmap_failure)
    }

    fn check_access(
        &self,
        address: u64,
        len: u64,
        write: bool,
    ) -> Result<(), GuestMemoryBackingError> {
        self.as_ref().check_access(address, len, write)
    }

    unsafe fn read_fallback(
        &self,
        address: u64,
        dest: *mut u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        // SAFETY: the caller's contract is forwarded unchanged.
        unsafe { self.as_ref().read_fallback(address, dest, len) }
    }

    unsafe fn write_fallback(
        &self,
        address: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        // SAFETY: the caller's contract is forwarded unchanged.
        unsafe { self.as_ref().write_fallback(address, src, len) }
    }

    fn fill_fallback(
        &self,
        address: u64,
        val: u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        self.as_ref().fill_fallback(address, val, len)
    }

    fn compare_exchange_fallback(
        &self,
        address: u64,
        current: &mut [u8],
        new: &[u8],
    ) -> Result<bool, GuestMemoryBackingError> {
        self.as_ref()
            .compare_exchange_fallback(address, current, new)
    }

    fn expose_va(&self, address: u64, len: u64) -> Result<(), GuestMemoryBackingError> {
        self.as_ref().expose_va(address, len)
    }

    fn base_iova(&self) -> Option<u64> {
        self.as_ref().base_iova()
    }

    fn lock_gpns(&self, gpns: &[u64]) -> Result<bool, GuestMemoryBackingError> {
        self.as_ref().lock_gpns(gpns)
    }

    fn unlock_gpns(&self, gpns: &[u64]) {
        self.as_ref().unlock_gpns(gpns)
    }

    fn sharing(&self) -> Option<GuestMemorySharing> {
        self.as_ref().sharing()
    }

    fn dirty_bitmap(&self) -> Option<(Arc<DirtyBitmap>, u64)> {
        self.as_ref().dirty_bitmap()
    }
}
