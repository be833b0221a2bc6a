//! Address decoding and the access protocol with its retry loop.
//!
//! `locate` turns a GPA and length into a region and an offset inside it, or `OutOfRange`.
//! `run_access` then performs a guarded attempt through the region's mapping; when it faults,
//! the backing's `page_fault` is asked with the first failing address and the remaining length:
//! `Retry` runs the whole attempt again, `Fail` ends the access with the backing's kind at the
//! faulting GPA, `Fallback` runs the backing's slow path for the whole access. No lock is held
//! while the backing is called.
//!
//! Retry limit: the loop counts consecutive `Retry` answers that did not move the first faulting
//! address beyond every earlier one. Once that count has reached the handle's limit, the next
//! `Retry` fails the access with kind `Other`, so `page_fault` is called at most `limit + 1`
//! times for one faulting address.

// Unsafe code: the access protocol runs guarded accesses through a backing's raw mapping.
#![allow(unsafe_code)]

use crate::error::Cause;
use crate::DirtyBitmap;
use crate::GuestMemory;
use crate::GuestMemoryAccess;
use crate::GuestMemoryBackingError;
use crate::GuestMemoryErrorKind;
use crate::PageFaultAction;
use std::ptr::NonNull;
use std::sync::Arc;
use trycopy::MemoryError;

/// The base of a region's mapping.
#[derive(Copy, Clone, Debug)]
struct MappingBase(NonNull<u8>);

// SAFETY: the pointer is only an address of reserved VA; every access through it is a guarded
// access that is safe from any thread (the backing guarantees the reservation's lifetime).
unsafe impl Send for MappingBase {}
// SAFETY: as above.
unsafe impl Sync for MappingBase {}

/// One region of a guest memory.
pub(crate) struct Region {
    backing: Option<Arc<dyn GuestMemoryAccess>>,
    mapping: Option<MappingBase>,
    len: u64,
    base_iova: Option<u64>,
    #[cfg(feature = "bitmap")]
    bitmaps: Option<crate::bitmap::RegionBitmaps>,
    /// Where writes are recorded (bitmap, offset of the region's address 0 in it).
    dirty: Option<(Arc<DirtyBitmap>, u64)>,
}

impl Region {
    /// A region provided by `backing` (its mapping and size are read once, here).
    pub fn new(backing: Arc<dyn GuestMemoryAccess>) -> Self {
        Self {
            mapping: backing.mapping().map(MappingBase),
            len: backing.max_address(),
            base_iova: backing.base_iova(),
            #[cfg(feature = "bitmap")]
            bitmaps: backing
                .mapping()
                .and(backing.access_bitmap())
                .map(crate::bitmap::RegionBitmaps::new),
            dirty: backing.dirty_bitmap(),
            backing: Some(backing),
        }
    }

    /// A missing (or padding) region of length 0.
    pub fn missing() -> Self {
        Self {
            backing: None,
            mapping: None,
            len: 0,
            base_iova: None,
            #[cfg(feature = "bitmap")]
            bitmaps: None,
            dirty: None,
        }
    }

    #[inline]
    pub fn has_mapping(&self) -> bool {
        self.mapping.is_some()
    }

    #[inline]
    pub fn mapping(&self) -> Option<*mut u8> {
        self.mapping.map(|base| base.0.as_ptr())
    }

    #[inline]
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn base_iova(&self) -> Option<u64> {
        self.base_iova
    }

    #[inline]
    pub fn backing(&self) -> Option<&Arc<dyn GuestMemoryAccess>> {
        self.backing.as_ref()
    }

    #[cfg(feature = "bitmap")]
    pub fn bitmaps(&self) -> Option<&crate::bitmap::RegionBitmaps> {
        self.bitmaps.as_ref()
    }

    pub fn dirty(&self) -> Option<(&Arc<DirtyBitmap>, u64)> {
        self.dirty
            .as_ref()
            .map(|(bitmap, offset)| (bitmap, *offset))
    }

    /// Records a completed write of `len` bytes at region offset `offset` (the one place every
    /// write path reports to the dirty bitmap).
    #[inline]
    pub fn note_write(&self, offset: u64, len: u64) {
        if let Some((bitmap, base)) = &self.dirty {
            bitmap.mark(base.wrapping_add(offset), len);
        }
    }
}

/// How GPAs split into a region index and an offset.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Decoder {
    /// Bits that no valid GPA or length may have.
    invalid_mask: u64,
    /// Bits of the offset inside a region.
    region_mask: u64,
    /// Shift from GPA to region index.
    region_shift: u32,
}

impl Decoder {
    /// One region covering `[0, 2^63)`.
    pub fn single() -> Self {
        Self {
            invalid_mask: 1 << 63,
            region_mask: (1 << 63) - 1,
            region_shift: 63,
        }
    }

    /// `2^count_bits` regions of `2^region_bits` bytes (`region_bits + count_bits <= 63`).
    pub fn multi(region_bits: u32, count_bits: u32) -> Self {
        let valid_bits = region_bits + count_bits;
        Self {
            invalid_mask: !((1u64 << valid_bits) - 1),
            region_mask: (1u64 << region_bits) - 1,
            region_shift: region_bits,
        }
    }
}

/// The result of `locate`.
pub(crate) struct Located<'a> {
    pub region_index: usize,
    pub region: &'a Region,
    /// The offset inside the region.
    pub offset: u64,
}

#[cold]
pub(crate) fn out_of_range(gpa: u64) -> GuestMemoryBackingError {
    GuestMemoryBackingError::at(
        GuestMemoryErrorKind::OutOfRange,
        Some(gpa),
        Cause::OutOfRange,
    )
}

impl GuestMemory {
    /// Finds the region holding `gpa..gpa + len`; an access may never straddle regions.
    #[inline]
    pub(crate) fn locate(
        &self,
        gpa: u64,
        len: u64,
    ) -> Result<Located<'_>, GuestMemoryBackingError> {
        let decoder = &self.inner.decoder;
        if (gpa | len) & decoder.invalid_mask != 0 {
            return Err(out_of_range(gpa));
        }
        let offset = gpa & decoder.region_mask;
        if offset.wrapping_add(len) & !decoder.region_mask != 0 {
            return Err(out_of_range(gpa));
        }
        let region_index =
            usize::try_from(gpa >> decoder.region_shift).map_err(|_| out_of_range(gpa))?;
        let region = self
            .inner
            .regions
            .get(region_index)
            .ok_or_else(|| out_of_range(gpa))?;
        // Both terms are below 2^63 (the invalid mask above), so the sum is exact: no overflow
        // check is needed on this hot path.
        if offset.wrapping_add(len) > region.len {
            return Err(out_of_range(gpa));
        }
        Ok(Located {
            region_index,
            region,
            offset,
        })
    }

    pub(crate) fn regions(&self) -> &[Region] {
        &self.inner.regions
    }

    /// Runs one access of `len > 0` bytes at `gpa` through the access protocol (`docs/design.md`, "The fault path").
    ///
    /// `attempt` receives the host address of `gpa` and performs the guarded access; `fallback`
    /// receives the backing and the region offset of `gpa` and performs the slow path for the
    /// whole access. Errors carry the precise GPA (translated from region offsets).
    ///
    /// This is the fast path, inlined into every access: decode the address, make one guarded
    /// attempt through the region's mapping, return its value. Everything else (a fault, a
    /// region without a mapping) continues out of line in [`Self::access_slow`]. A check or hook
    /// that every access must pass belongs here, before the attempt.
    #[inline(always)]
    pub(crate) fn run_access<T>(
        &self,
        gpa: u64,
        len: u64,
        write: bool,
        mut attempt: impl FnMut(*mut u8) -> Result<T, MemoryError>,
        fallback: impl FnOnce(&dyn GuestMemoryAccess, u64) -> Result<T, GuestMemoryBackingError>,
    ) -> Result<T, GuestMemoryBackingError> {
        let located = self.locate(gpa, len)?;
        let first_fault = match located.region.mapping() {
            // A region with access bitmaps checks them before every access: out of line.
            #[cfg(feature = "bitmap")]
            Some(_) if located.region.bitmaps().is_some() => None,
            Some(base) => {
                // The offset is inside the region's mapping, which is at most `max_address`
                // bytes long.
                match attempt(base.wrapping_add(crate::host_offset(located.offset))) {
                    Ok(value) => {
                        if write {
                            located.region.note_write(located.offset, len);
                        }
                        return Ok(value);
                    }
                    Err(fault) => Some(fault),
                }
            }
            None => None,
        };
        self.access_slow(gpa, len, write, first_fault, attempt, fallback)
    }

    /// The rest of [`Self::run_access`]: the retry loop after a fault (`first_fault`), the
    /// access of a region with access bitmaps (no attempt yet: `first_fault` is `None`), or the
    /// backing's fallback for a region without a mapping. (It decodes the address again rather
    /// than receive the fast path's result, which keeps that result in registers.)
    #[cold]
    #[inline(never)]
    fn access_slow<T>(
        &self,
        gpa: u64,
        len: u64,
        write: bool,
        first_fault: Option<MemoryError>,
        mut attempt: impl FnMut(*mut u8) -> Result<T, MemoryError>,
        fallback: impl FnOnce(&dyn GuestMemoryAccess, u64) -> Result<T, GuestMemoryBackingError>,
    ) -> Result<T, GuestMemoryBackingError> {
        let located = self.locate(gpa, len)?;
        let region_base = gpa - located.offset;
        let Some(backing) = located.region.backing() else {
            return Err(out_of_range(gpa));
        };
        let to_gpa = |error: GuestMemoryBackingError| match error.gpa() {
            Some(address) => {
                let translated = region_base.wrapping_add(address);
                error.with_gpa(translated)
            }
            None => error,
        };
        let note_write = |value: T| {
            if write {
                located.region.note_write(located.offset, len);
            }
            value
        };
        // A write that failed after it started (a fault part-way, a fallback that gave up) may
        // have changed the bytes before the failure: they are recorded like a completed write.
        let note_failed_write = |error: GuestMemoryBackingError| {
            if write {
                located.region.note_write(located.offset, len);
            }
            error
        };
        let Some(base) = located.region.mapping() else {
            return fallback(backing.as_ref(), located.offset)
                .map(note_write)
                .map_err(|error| to_gpa(note_failed_write(error)));
        };
        let target = base.wrapping_add(crate::host_offset(located.offset));
        let mut fault = match first_fault {
            Some(fault) => fault,
            None => {
                #[cfg(feature = "bitmap")]
                if let Some(bitmaps) = located.region.bitmaps() {
                    let checked = self.check_bitmaps(
                        bitmaps,
                        backing.as_ref(),
                        gpa,
                        located.offset,
                        len,
                        write,
                    );
                    match checked {
                        Ok(true) => {}
                        Ok(false) => {
                            return fallback(backing.as_ref(), located.offset)
                                .map(note_write)
                                .map_err(|error| to_gpa(note_failed_write(error)))
                        }
                        Err(error) => return Err(error),
                    }
                }
                match attempt(target) {
                    Ok(value) => return Ok(note_write(value)),
                    Err(fault) => fault,
                }
            }
        };

        let mut unproductive_retries = 0u32;
        let mut furthest_fault: Option<u64> = None;
        loop {
            let delta = match fault.offset() as u64 {
                delta if delta < len => delta,
                _ => 0,
            };
            if furthest_fault.is_none_or(|furthest| delta > furthest) {
                furthest_fault = Some(delta);
                unproductive_retries = 0;
            }
            let fault_gpa = gpa + delta;
            let remaining = crate::host_offset(len - delta);
            match backing.page_fault(located.offset + delta, remaining, write, false) {
                PageFaultAction::Retry => {
                    if unproductive_retries >= self.retry_limit {
                        return Err(note_failed_write(
                            GuestMemoryBackingError::at(
                                GuestMemoryErrorKind::Other,
                                Some(fault_gpa),
                                Cause::RetryLimit(self.retry_limit),
                            )
                            .with_fault(fault.fault()),
                        ));
                    }
                    unproductive_retries += 1;
                }
                PageFaultAction::Fail(error) => {
                    let error = error.into_backing_error(fault_gpa);
                    return Err(note_failed_write(
                        if error.kind() == GuestMemoryErrorKind::Other {
                            error.with_fault(fault.fault())
                        } else {
                            error
                        },
                    ));
                }
                PageFaultAction::Fallback => {
                    return fallback(backing.as_ref(), located.offset)
                        .map(note_write)
                        .map_err(|error| to_gpa(note_failed_write(error)));
                }
            }
            fault = match attempt(target) {
                Ok(value) => return Ok(note_write(value)),
                Err(fault) => fault,
            };
        }
    }
}

#[cfg(feature = "bitmap")]
impl GuestMemory {
    /// Phase A of the access protocol: while a page of the access is denied by the region's
    /// bitmap in the access's direction, asks `page_fault` (with `bitmap_failure`) from the first
    /// byte of that page. `Ok(true)`: go on with the mapped access; `Ok(false)`: the backing
    /// asked for the fallback. The retry limit applies as for hardware faults.
    fn check_bitmaps(
        &self,
        bitmaps: &crate::bitmap::RegionBitmaps,
        backing: &dyn GuestMemoryAccess,
        gpa: u64,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<bool, GuestMemoryBackingError> {
        let mut retries = 0u32;
        while let Some(page) = bitmaps.first_denied_page(offset, len, write) {
            let delta = (page * crate::PAGE_SIZE64).saturating_sub(offset);
            let fault_gpa = gpa + delta;
            let remaining = crate::host_offset(len - delta);
            match backing.page_fault(offset + delta, remaining, write, true) {
                PageFaultAction::Retry => {
                    if retries >= self.retry_limit {
                        return Err(GuestMemoryBackingError::at(
                            GuestMemoryErrorKind::Other,
                            Some(fault_gpa),
                            Cause::RetryLimit(self.retry_limit),
                        ));
                    }
                    retries += 1;
                }
                PageFaultAction::Fail(error) => return Err(error.into_backing_error(fault_gpa)),
                PageFaultAction::Fallback => return Ok(false),
            }
        }
        Ok(true)
    }
}
