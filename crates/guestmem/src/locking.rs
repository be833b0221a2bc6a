//! Page locking: [`GuestMemory::lock_gpns`] faults every page in through the full
//! protocol, records its host address, and asks the backing to pin the pages; the result keeps
//! the memory alive and unlocks exactly once, when the last clone is dropped (upstream unlocks
//! once per clone — a deliberate difference).
//!
//! Locking only prevents remapping when the backing implements it. Reading a locked page
//! through [`LockedPages::read_at`] stays guarded, so even an unpinned page that goes away
//! yields an error instead of a crash.

// Unsafe code: locked pages are read through the host addresses recorded when they were locked.
#![allow(unsafe_code)]

use crate::error::Cause;
use crate::error::GuestMemoryOperation;
use crate::DirtyBitmap;
use crate::GuestMemory;
use crate::GuestMemoryAccess;
use crate::GuestMemoryBackingError;
use crate::GuestMemoryError;
use crate::GuestMemoryErrorKind;
use crate::PagedRange;
use crate::PAGE_SIZE;
use crate::PAGE_SIZE64;
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use trycopy::MemoryError;

/// Backings that asked to be unlocked, with the region-relative page numbers they locked.
type Unlocks = Vec<(Arc<dyn GuestMemoryAccess>, Vec<u64>)>;

/// A locked page: 4096 atomic bytes.
pub type Page = [AtomicU8; PAGE_SIZE];

struct LockedPagesInner {
    gpns: Vec<u64>,
    /// Host addresses of the pages. The `'static` lifetime is private: the memory is kept alive
    /// by `_memory`, and `pages()` only hands out borrows tied to `&self`.
    pages: Vec<&'static Page>,
    /// Backings that asked to be unlocked, with the region-relative page numbers they locked.
    unlocks: Unlocks,
    /// Pages counted as locked in a dirty bitmap (reported as written while locked).
    dirty_locks: Vec<(Arc<DirtyBitmap>, u64)>,
    _memory: GuestMemory,
}

impl Drop for LockedPagesInner {
    fn drop(&mut self) {
        for (backing, gpns) in self.unlocks.iter().rev() {
            backing.unlock_gpns(gpns);
        }
        for (bitmap, page) in &self.dirty_locks {
            bitmap.unlock_page(*page);
        }
    }
}

/// Pages of guest memory locked by [`GuestMemory::lock_gpns`]. Clones share one lock, released
/// when the last clone is dropped.
#[derive(Clone)]
pub struct LockedPages {
    inner: Arc<LockedPagesInner>,
}

impl std::fmt::Debug for LockedPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedPages")
            .field("gpns", &self.inner.gpns)
            .finish()
    }
}

/// The valid page indexes of `count` locked pages, in words.
fn locked_indexes(count: usize) -> String {
    match count {
        0 => "no pages are locked".to_owned(),
        1 => "1 page is locked (index 0)".to_owned(),
        _ => format!("{count} pages are locked (indexes 0 to {})", count - 1),
    }
}

/// A guarded access to a locked page failed.
#[derive(Debug, thiserror::Error)]
pub enum LockedPageAccessError {
    /// The page index is not below the number of locked pages.
    #[error("page index {index} is out of range: {}", locked_indexes(*count))]
    PageIndex {
        /// The requested page index.
        index: usize,
        /// The number of locked pages.
        count: usize,
    },
    /// The byte range does not lie inside the page.
    #[error("offset {offset:#x} and length {len:#x} do not fit in a page")]
    OutOfBounds {
        /// The requested offset inside the page.
        offset: usize,
        /// The requested length.
        len: usize,
    },
    /// The page faulted (the backing does not pin pages and it was remapped).
    #[error(transparent)]
    Memory(MemoryError),
}

impl<'a> AsRef<[&'a Page]> for &'a LockedPages {
    fn as_ref(&self) -> &[&'a Page] {
        self.pages()
    }
}

impl LockedPages {
    /// The locked page numbers, in the order given.
    pub fn gpns(&self) -> &[u64] {
        &self.inner.gpns
    }

    /// The pages, in the order given.
    ///
    /// Touching a page through these references is only fault-free when the backing pins pages
    /// (its `lock_gpns` returned true); otherwise prefer [`LockedPages::read_at`].
    pub fn pages(&self) -> &[&Page] {
        &self.inner.pages
    }

    /// The number of pages.
    pub fn len(&self) -> usize {
        self.inner.pages.len()
    }

    /// Whether no page is locked.
    pub fn is_empty(&self) -> bool {
        self.inner.pages.is_empty()
    }

    fn page_address(
        &self,
        page_index: usize,
        offset: usize,
        len: usize,
    ) -> Result<*mut u8, LockedPageAccessError> {
        let page = self
            .inner
            .pages
            .get(page_index)
            .ok_or(LockedPageAccessError::PageIndex {
                index: page_index,
                count: self.inner.pages.len(),
            })?;
        if offset > PAGE_SIZE || PAGE_SIZE - offset < len {
            return Err(LockedPageAccessError::OutOfBounds { offset, len });
        }
        Ok(page.as_ptr().cast::<u8>().cast_mut().wrapping_add(offset))
    }

    /// Copies `dest.len()` bytes at `offset` of page `page_index` into `dest` (guarded).
    pub fn read_at(
        &self,
        page_index: usize,
        offset: usize,
        dest: &mut [u8],
    ) -> Result<(), LockedPageAccessError> {
        // SAFETY: `dest` is a live exclusive buffer of that length.
        unsafe { self.read_ptr(page_index, offset, dest.as_mut_ptr(), dest.len()) }
    }

    /// Copies `len` bytes at `offset` of page `page_index` to the raw buffer `dest` (guarded).
    ///
    /// # Safety
    /// `dest` is valid for writing `len` bytes for the duration of the call.
    pub unsafe fn read_ptr(
        &self,
        page_index: usize,
        offset: usize,
        dest: *mut u8,
        len: usize,
    ) -> Result<(), LockedPageAccessError> {
        let source = self.page_address(page_index, offset, len)?;
        // SAFETY: the source lies in the page, i.e. in reserved VA kept alive by `self` (faults
        // are recovered); `dest` is valid for `len` bytes (caller).
        unsafe { trycopy::try_copy(source.cast_const(), dest, len) }
            .map_err(LockedPageAccessError::Memory)
    }

    /// Copies `src` to `offset` of page `page_index` (guarded).
    pub fn write_at(
        &self,
        page_index: usize,
        offset: usize,
        src: &[u8],
    ) -> Result<(), LockedPageAccessError> {
        let destination = self.page_address(page_index, offset, src.len())?;
        // SAFETY: the destination lies in the page, i.e. in reserved VA kept alive by `self`
        // (faults are recovered).
        unsafe { trycopy::try_copy(src.as_ptr(), destination, src.len()) }
            .map_err(LockedPageAccessError::Memory)
    }
}

/// Receives the host slices of a range locked by [`GuestMemory::lock_range`].
pub trait LockedRange {
    /// One maximal run of consecutive guest pages of the range.
    fn push_sub_range(&mut self, sub_range: &[AtomicU8]);
}

/// A range locked by [`GuestMemory::lock_range`]: owns the sink and unlocks on drop.
pub struct LockedRangeImpl<T: LockedRange> {
    sink: T,
    _locked: LockedPages,
}

impl<T: LockedRange> std::fmt::Debug for LockedRangeImpl<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedRangeImpl")
            .field("locked", &self._locked)
            .finish_non_exhaustive()
    }
}

impl<T: LockedRange> LockedRangeImpl<T> {
    /// The sink that received the sub-ranges.
    pub fn get(&self) -> &T {
        &self.sink
    }

    /// The sink, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.sink
    }
}

/// A page probed for locking.
struct ProbedPage {
    gpn: u64,
    region_index: usize,
    region_gpn: u64,
    address: *mut u8,
}

impl GuestMemory {
    fn lock_error(&self, error: GuestMemoryBackingError) -> GuestMemoryError {
        self.operation_error(GuestMemoryOperation::Lock, None, error)
    }

    /// Faults in the page `gpn` through the full protocol and returns its host address.
    fn probe_for_lock(
        &self,
        gpn: u64,
        with_kernel_access: bool,
    ) -> Result<ProbedPage, GuestMemoryBackingError> {
        let gpa = Self::gpn_to_gpa(gpn)?;
        let located = self.locate(gpa, 1)?;
        let (Some(base), Some(backing)) = (located.region.mapping(), located.region.backing())
        else {
            return Err(GuestMemoryBackingError::other(gpa, Cause::NotLockable));
        };
        if with_kernel_access {
            let region_base = gpa - located.offset;
            backing
                .expose_va(located.offset, 1)
                .map_err(|error| match error.gpa() {
                    Some(address) => {
                        let translated = region_base.wrapping_add(address);
                        error.with_gpa(translated)
                    }
                    None => error,
                })?;
        }
        let region_index = located.region_index;
        let offset = located.offset;
        self.read_byte(gpa)?;
        Ok(ProbedPage {
            gpn,
            region_index,
            region_gpn: offset / PAGE_SIZE64,
            address: base.wrapping_add(crate::host_offset(offset)),
        })
    }

    /// Asks each region's backing to lock its pages; returns the locks to undo on drop.
    fn lock_probed(&self, probed: &[ProbedPage]) -> Result<Unlocks, GuestMemoryBackingError> {
        let mut groups: Vec<(usize, Vec<u64>)> = Vec::new();
        for page in probed {
            match groups
                .iter_mut()
                .find(|(index, _)| *index == page.region_index)
            {
                Some((_, gpns)) => gpns.push(page.region_gpn),
                None => groups.push((page.region_index, vec![page.region_gpn])),
            }
        }
        let mut unlocks: Unlocks = Vec::new();
        for (region_index, gpns) in groups {
            let Some(backing) = self
                .regions()
                .get(region_index)
                .and_then(|region| region.backing())
            else {
                continue;
            };
            match backing.lock_gpns(&gpns) {
                Ok(true) => unlocks.push((backing.clone(), gpns)),
                Ok(false) => {}
                Err(error) => {
                    for (backing, gpns) in unlocks.iter().rev() {
                        backing.unlock_gpns(gpns);
                    }
                    return Err(error);
                }
            }
        }
        Ok(unlocks)
    }

    fn make_locked_pages(&self, probed: &[ProbedPage], unlocks: Unlocks) -> LockedPages {
        let pages = probed
            .iter()
            .map(|page| {
                // SAFETY: the address is the start of a 4 KiB guest page inside the region's
                // reserved VA (page-aligned offset into a mapping of whole pages), which stays
                // reserved while `_memory` keeps the backing alive; atomic bytes may alias any
                // memory. The `'static` lifetime never escapes (see `LockedPagesInner`).
                unsafe { &*page.address.cast::<Page>() }
            })
            .collect();
        // Locked pages can be written through plain references: the dirty bitmap reports them
        // as written for as long as they are locked.
        let dirty_locks = probed
            .iter()
            .filter_map(|page| {
                let (bitmap, base) = self.regions().get(page.region_index)?.dirty()?;
                let bitmap_page = (base / PAGE_SIZE64).checked_add(page.region_gpn)?;
                bitmap.lock_page(bitmap_page);
                Some((bitmap.clone(), bitmap_page))
            })
            .collect();
        LockedPages {
            inner: Arc::new(LockedPagesInner {
                gpns: probed.iter().map(|page| page.gpn).collect(),
                pages,
                unlocks,
                dirty_locks,
                _memory: self.clone(),
            }),
        }
    }

    /// Locks the pages `gpns` (each faulted in with a guarded 1-byte read) so that they stay
    /// mapped while the result lives (when the backing implements locking). With
    /// `with_kernel_access`, the backing's `expose_va` is called for each page first.
    pub fn lock_gpns(
        &self,
        with_kernel_access: bool,
        gpns: &[u64],
    ) -> Result<LockedPages, GuestMemoryError> {
        let probed = gpns
            .iter()
            .map(|&gpn| self.probe_for_lock(gpn, with_kernel_access))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| self.lock_error(error))?;
        let unlocks = self
            .lock_probed(&probed)
            .map_err(|error| self.lock_error(error))?;
        Ok(self.make_locked_pages(&probed, unlocks))
    }

    /// Locks the pages of `range` and hands the host slice of each maximal run of consecutive
    /// pages to `sink`. A run that would cross a region boundary is `OutOfRange` (upstream
    /// panics).
    pub fn lock_range<T: LockedRange>(
        &self,
        range: PagedRange<'_>,
        mut sink: T,
    ) -> Result<LockedRangeImpl<T>, GuestMemoryError> {
        let probed = range
            .gpns()
            .iter()
            .map(|&gpn| self.probe_for_lock(gpn, true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| self.lock_error(error))?;

        // Maximal runs as (first chunk address, byte length).
        let mut runs: Vec<(*mut u8, usize)> = Vec::new();
        let mut previous: Option<&ProbedPage> = None;
        for (chunk, page) in range.chunks().zip(&probed) {
            let address = page.address.wrapping_add(chunk.offset_in_page);
            let continued =
                previous.filter(|previous| previous.gpn.checked_add(1) == Some(page.gpn));
            if let Some(previous) = continued {
                if previous.region_index != page.region_index {
                    let gpa = page.gpn * PAGE_SIZE64;
                    return Err(self.lock_error(GuestMemoryBackingError::new(
                        GuestMemoryErrorKind::OutOfRange,
                        gpa,
                        Cause::RunCrossesRegions,
                    )));
                }
                if let Some(run) = runs.last_mut() {
                    run.1 += chunk.len;
                }
            } else {
                runs.push((address, chunk.len));
            }
            previous = Some(page);
        }

        let unlocks = self
            .lock_probed(&probed)
            .map_err(|error| self.lock_error(error))?;
        let locked = self.make_locked_pages(&probed, unlocks);
        for (address, len) in runs {
            // SAFETY: the run lies in the reserved VA of one region (consecutive pages of one
            // region are contiguous there), kept alive by `locked`; atomic bytes may alias any
            // memory.
            let slice = unsafe { std::slice::from_raw_parts(address.cast::<AtomicU8>(), len) };
            sink.push_sub_range(slice);
        }
        Ok(LockedRangeImpl {
            sink,
            _locked: locked,
        })
    }
}
