//! Subranges: a view of `offset..offset + len` of a guest memory with its own GPA 0.
//!
//! Unless the backing offers its own view, the generic view is a backing that refers to the
//! parent memory's region with an offset: its mapping is the region's mapping plus the offset,
//! and `page_fault`, the fallbacks, `expose_va` and (a deviation from upstream) page locking are
//! forwarded to the parent region's backing with addresses translated by the offset. A subrange
//! of a subrange refers to the root memory directly.

// Unsafe code: a subrange view implements the unsafe `GuestMemoryAccess` trait over its parent.
#![allow(unsafe_code)]

use crate::error::GuestMemoryOperation;
use crate::protocol::out_of_range;
use crate::GuestMemory;
use crate::GuestMemoryAccess;
use crate::GuestMemoryBackingError;
use crate::GuestMemoryError;
use crate::PageFaultAction;
use crate::PageFaultError;
use crate::PAGE_SIZE64;
use std::ptr::NonNull;
use std::sync::Arc;

/// The generic subrange backing.
struct GuestMemorySubrange {
    /// The root memory.
    root: GuestMemory,
    region_index: usize,
    /// Offset of the view inside the root's region.
    region_offset: u64,
    len: u64,
}

impl GuestMemorySubrange {
    fn parent_backing(&self) -> Option<&Arc<dyn GuestMemoryAccess>> {
        self.root.regions().get(self.region_index)?.backing()
    }

    /// Translates `address..address + len` of the view into the parent region.
    fn translate(&self, address: u64, len: u64) -> Result<u64, GuestMemoryBackingError> {
        match address.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.region_offset + address),
            _ => Err(out_of_range(address)),
        }
    }

    /// Translates a parent error's address back into the view.
    fn view_error(&self, error: GuestMemoryBackingError) -> GuestMemoryBackingError {
        match error.gpa() {
            Some(gpa) if gpa >= self.region_offset => {
                let translated = gpa - self.region_offset;
                error.with_gpa(translated)
            }
            _ => error,
        }
    }

    /// The parent gpns of view gpns, when the view starts on a page boundary.
    fn parent_gpns(&self, gpns: &[u64]) -> Option<Vec<u64>> {
        if !self.region_offset.is_multiple_of(PAGE_SIZE64) {
            return None;
        }
        let first = self.region_offset / PAGE_SIZE64;
        gpns.iter().map(|gpn| gpn.checked_add(first)).collect()
    }

    fn missing_backing(&self, address: u64) -> GuestMemoryBackingError {
        out_of_range(address)
    }
}

// SAFETY: the view's mapping is a sub-range of the root region's mapping, which stays reserved
// while the root memory (held here) lives; everything else forwards to the root's backing.
unsafe impl GuestMemoryAccess for GuestMemorySubrange {
    fn mapping(&self) -> Option<NonNull<u8>> {
        let base = self.root.regions().get(self.region_index)?.mapping()?;
        NonNull::new(base.wrapping_add(crate::host_offset(self.region_offset)))
    }

    fn max_address(&self) -> u64 {
        self.len
    }

    #[cfg(feature = "bitmap")]
    fn access_bitmap(&self) -> Option<crate::BitmapInfo> {
        let region = self.root.regions().get(self.region_index)?;
        Some(region.bitmaps()?.advanced(self.region_offset))
    }

    fn subrange(
        &self,
        offset: u64,
        len: u64,
        allow_preemptive_locking: bool,
    ) -> Result<Option<GuestMemory>, GuestMemoryBackingError> {
        let _ = allow_preemptive_locking;
        let region_offset = self.translate(offset, len)?;
        let view = GuestMemorySubrange {
            root: self.root.clone(),
            region_index: self.region_index,
            region_offset,
            len,
        };
        Ok(Some(
            GuestMemory::new(self.root.inner.debug_name.clone(), view)
                .with_retry_limit(self.root.retry_limit()),
        ))
    }

    fn page_fault(
        &self,
        address: u64,
        len: usize,
        write: bool,
        bitmap_failure: bool,
    ) -> PageFaultAction {
        let (Ok(parent_address), Some(backing)) =
            (self.translate(address, len as u64), self.parent_backing())
        else {
            return PageFaultAction::Fail(PageFaultError::new(
                crate::GuestMemoryErrorKind::OutOfRange,
                crate::error::Cause::OutOfRange,
            ));
        };
        backing.page_fault(parent_address, len, write, bitmap_failure)
    }

    fn check_access(
        &self,
        address: u64,
        len: u64,
        write: bool,
    ) -> Result<(), GuestMemoryBackingError> {
        let parent_address = self.translate(address, len)?;
        let backing = self
            .parent_backing()
            .ok_or_else(|| self.missing_backing(address))?;
        backing
            .check_access(parent_address, len, write)
            .map_err(|e| self.view_error(e))
    }

    unsafe fn read_fallback(
        &self,
        address: u64,
        dest: *mut u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        let parent_address = self.translate(address, len as u64)?;
        let backing = self
            .parent_backing()
            .ok_or_else(|| self.missing_backing(address))?;
        // SAFETY: the caller's contract on `dest` is forwarded unchanged.
        unsafe { backing.read_fallback(parent_address, dest, len) }.map_err(|e| self.view_error(e))
    }

    unsafe fn write_fallback(
        &self,
        address: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        let parent_address = self.translate(address, len as u64)?;
        let backing = self
            .parent_backing()
            .ok_or_else(|| self.missing_backing(address))?;
        // SAFETY: the caller's contract on `src` is forwarded unchanged.
        unsafe { backing.write_fallback(parent_address, src, len) }.map_err(|e| self.view_error(e))
    }

    fn fill_fallback(
        &self,
        address: u64,
        val: u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        let parent_address = self.translate(address, len as u64)?;
        let backing = self
            .parent_backing()
            .ok_or_else(|| self.missing_backing(address))?;
        backing
            .fill_fallback(parent_address, val, len)
            .map_err(|e| self.view_error(e))
    }

    fn compare_exchange_fallback(
        &self,
        address: u64,
        current: &mut [u8],
        new: &[u8],
    ) -> Result<bool, GuestMemoryBackingError> {
        let parent_address = self.translate(address, current.len() as u64)?;
        let backing = self
            .parent_backing()
            .ok_or_else(|| self.missing_backing(address))?;
        backing
            .compare_exchange_fallback(parent_address, current, new)
            .map_err(|e| self.view_error(e))
    }

    fn expose_va(&self, address: u64, len: u64) -> Result<(), GuestMemoryBackingError> {
        let parent_address = self.translate(address, len)?;
        let backing = self
            .parent_backing()
            .ok_or_else(|| self.missing_backing(address))?;
        backing
            .expose_va(parent_address, len)
            .map_err(|e| self.view_error(e))
    }

    fn base_iova(&self) -> Option<u64> {
        self.root
            .regions()
            .get(self.region_index)?
            .base_iova()?
            .checked_add(self.region_offset)
    }

    fn lock_gpns(&self, gpns: &[u64]) -> Result<bool, GuestMemoryBackingError> {
        match (self.parent_gpns(gpns), self.parent_backing()) {
            (Some(parent_gpns), Some(backing)) => backing.lock_gpns(&parent_gpns),
            _ => Ok(false),
        }
    }

    fn unlock_gpns(&self, gpns: &[u64]) {
        if let (Some(parent_gpns), Some(backing)) = (self.parent_gpns(gpns), self.parent_backing())
        {
            backing.unlock_gpns(&parent_gpns)
        }
    }

    fn dirty_bitmap(&self) -> Option<(Arc<crate::DirtyBitmap>, u64)> {
        let (bitmap, offset) = self.root.regions().get(self.region_index)?.dirty()?;
        Some((bitmap.clone(), offset.checked_add(self.region_offset)?))
    }
}

impl GuestMemory {
    /// A view of `offset..offset + len` with its own GPA 0.
    ///
    /// The range must lie inside one region (else `OutOfRange`, operation "subrange").
    /// `allow_preemptive_locking` is passed to the backing's own subrange hook.
    pub fn subrange(
        &self,
        offset: u64,
        len: u64,
        allow_preemptive_locking: bool,
    ) -> Result<GuestMemory, GuestMemoryError> {
        let error = |error| {
            self.operation_error(
                GuestMemoryOperation::Subrange,
                Some(offset..offset.wrapping_add(len)),
                error,
            )
        };
        let located = self.locate(offset, len).map_err(error)?;
        let backing = located
            .region
            .backing()
            .ok_or_else(|| error(out_of_range(offset)))?;
        if let Some(view) = backing
            .subrange(located.offset, len, allow_preemptive_locking)
            .map_err(error)?
        {
            return Ok(view);
        }
        let view = GuestMemorySubrange {
            root: self.clone(),
            region_index: located.region_index,
            region_offset: located.offset,
            len,
        };
        Ok(
            GuestMemory::new(self.inner.debug_name.clone(), view)
                .with_retry_limit(self.retry_limit),
        )
    }

    /// A view meant to be locked; equivalent to `subrange(offset, len, true)` (lockability is
    /// not enforced).
    pub fn lockable_subrange(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<GuestMemory, GuestMemoryError> {
        self.subrange(offset, len, true)
    }
}
