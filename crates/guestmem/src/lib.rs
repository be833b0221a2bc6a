//! GuestMemory: fault-safe access to guest physical memory through a GuestMemoryAccess backing.
//!
//! [`GuestMemory`] is a cheaply clonable handle to a guest address space made of one region (or,
//! with [`GuestMemory::new_multi_region`], several equal-sized regions), each provided by a
//! backing that implements [`GuestMemoryAccess`]. Accesses go through the backing's mapping with
//! the guarded primitives of `trycopy`; when one faults, the backing's `page_fault` decides
//! whether to retry (after making the page accessible), fail with a [`GuestMemoryErrorKind`], or
//! take the backing's slow-path fallback. A retry limit (default
//! [`DEFAULT_RETRY_LIMIT`]) keeps a backing that never resolves a fault from hanging the caller.
//!
//! Provided backings: [`SparseMapping`](sparse_mmap::SparseMapping) (GPA = offset),
//! [`SparseMappingBacking`] (the same with pluggable page-fault, fallback and locking hooks, for
//! the JavaScript binding), [`AlignedHeapMemory`] (used by [`GuestMemory::allocate`]), the plain
//! shared allocation [`SharedMem`](sparse_mmap::alloc::SharedMem), and `Arc<T>` of any backing.
//!
//! The access loop runs synchronously on the calling thread, holds no lock while it calls the
//! backing, and may therefore run on the JavaScript thread (with a hook that calls JavaScript
//! directly) as well as on a worker thread (with a hook that blocks on the JavaScript thread).

// Unsafe code lives in the modules that say why at their top; this file has two items that opt in
// on their own (the empty backing's trait impl and the heap memory's plain-bytes view).
#![cfg(target_os = "linux")]

mod access;
mod backings;
#[cfg(feature = "bitmap")]
mod bitmap;
mod cursor;
mod dirty;
mod error;
mod guarded;
mod heap;
mod interfaces;
mod locking;
mod memory_ops;
mod paged_range;
mod protocol;
mod range_ops;
pub mod ranges;
mod sharing;
mod subrange;
mod vectored;

#[cfg(test)]
mod tests;

pub use access::GuestMemoryAccess;
pub use access::LinearGuestMemory;
pub use access::PageFaultAction;
pub use backings::CompareExchangeFallbackHook;
pub use backings::FillFallbackHook;
pub use backings::GuestMemoryHooks;
pub use backings::LockGpnsHook;
pub use backings::PageFaultHook;
pub use backings::ReadFallbackHook;
pub use backings::SparseMappingBacking;
pub use backings::UnlockGpnsHook;
pub use backings::WriteFallbackHook;
#[cfg(feature = "bitmap")]
pub use bitmap::BitmapInfo;
pub use cursor::AccessError;
pub use cursor::Limit;
pub use cursor::MemoryRead;
pub use cursor::MemoryWrite;
pub use cursor::PagedRangeReader;
pub use cursor::PagedRangeWriter;
pub use cursor::PagedRangesReader;
pub use cursor::PagedRangesWriter;
pub use dirty::DirtyBitmap;
pub use error::GuestMemoryBackingError;
pub use error::GuestMemoryError;
pub use error::GuestMemoryErrorKind;
pub use error::GuestMemoryOperation;
pub use error::PageFaultError;
pub use heap::AlignedHeapMemory;
pub use interfaces::MapRom;
pub use interfaces::MappableGuestMemory;
pub use interfaces::MappedMemoryRegion;
pub use interfaces::MemoryMapper;
pub use interfaces::UnmapRom;
pub use locking::LockedPageAccessError;
pub use locking::LockedPages;
pub use locking::LockedRange;
pub use locking::LockedRangeImpl;
pub use locking::Page;
pub use paged_range::AddressRange;
pub use paged_range::InvalidGpn;
pub use paged_range::PagedRange;
pub use paged_range::PagedRangeRangeIter;
pub use paged_range::PagedRanges;
pub use paged_range::PagedRangesIter;
pub use sharing::GuestMemorySharing;
pub use sharing::ProvideShareableRegions;
pub use sharing::ShareableRegion;
pub use sharing::ShareableRegionError;
pub use sharing::ShareableRegionsFuture;
pub use trycopy::FaultInfo;
pub use vectored::VectoredEntry;
pub use vectored::VectoredError;

use protocol::Decoder;
use protocol::Region;
use std::sync::Arc;

/// The guest page size (fixed, independent of the host page size).
pub const PAGE_SIZE: usize = 4096;
const PAGE_SIZE64: u64 = PAGE_SIZE as u64;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("guestmem supports 64-bit targets only: guest offsets are host offsets");

/// An offset or length inside a host mapping, as a host `usize`. Mappings live in this
/// process's address space, so such a value always fits; on the 64-bit targets this crate
/// builds for, the conversion is lossless.
#[allow(
    clippy::cast_possible_truncation,
    reason = "lossless on 64-bit targets, the only ones this crate builds for"
)]
pub(crate) const fn host_offset(offset: u64) -> usize {
    offset as usize
}

/// The default number of consecutive unproductive `Retry` answers a single access accepts from
/// `page_fault` before failing with kind `Other` (the JavaScript option `retryLimit`).
pub const DEFAULT_RETRY_LIMIT: u32 = 1000;

/// Construction errors of [`GuestMemory::new_multi_region`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultiRegionError {
    /// The region size is not a power of two.
    #[error("region size {0:#x} is not a power of 2")]
    NotPowerOfTwo(u64),
    /// The region size is below the page size.
    #[error("region size {0:#x} is smaller than a page")]
    RegionSizeTooSmall(u64),
    /// More regions than the address space can hold.
    #[error(
        "too many regions ({region_count}) for region size {region_size:#x}; max is {max_region_count}"
    )]
    TooManyRegions {
        /// The region count (rounded up to a power of two).
        region_count: usize,
        /// The largest allowed count.
        max_region_count: usize,
        /// The region size.
        region_size: u64,
    },
    /// A backing is larger than a region.
    #[error("backing size {backing_size:#x} is too large for region size {region_size:#x}")]
    BackingTooLarge {
        /// The backing's `max_address()`.
        backing_size: u64,
        /// The region size.
        region_size: u64,
    },
}

/// Could not allocate heap memory for [`GuestMemory::try_allocate`].
#[derive(Debug, thiserror::Error)]
#[error("failed to allocate {size:#x} bytes of guest memory")]
pub struct AllocationError {
    size: usize,
}

impl AllocationError {
    /// The size that could not be allocated, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Why [`GuestMemory::read_to_vec`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadToVecError {
    /// The range cannot be read (found by the check before allocating, or by the read).
    #[error(transparent)]
    Memory(#[from] GuestMemoryError),
    /// The buffer for the bytes could not be allocated.
    #[error("failed to allocate a {size:#x}-byte buffer for the read")]
    Allocation {
        /// The size asked for, in bytes.
        size: usize,
    },
}

struct GuestMemoryInner {
    debug_name: Arc<str>,
    regions: Vec<Region>,
    decoder: Decoder,
    max_address: u64,
    /// The heap backing of a memory made by `allocate` (also present in `regions`).
    heap: Option<Arc<AlignedHeapMemory>>,
}

/// A handle to guest memory. Cloning shares the same memory.
#[derive(Clone)]
pub struct GuestMemory {
    inner: Arc<GuestMemoryInner>,
    retry_limit: u32,
}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory")
            .field("debug_name", &self.inner.debug_name)
            .field("max_address", &self.inner.max_address)
            .field("regions", &self.inner.regions.len())
            .finish()
    }
}

impl Default for GuestMemory {
    fn default() -> Self {
        Self::empty()
    }
}

/// Installs the fault handler, re-arming it when something displaced it (every new guest memory
/// or sparse mapping does, so a handler displaced by another signal handler comes back).
pub fn ensure_fault_handler() {
    trycopy::initialize_try_copy();
    if trycopy::handler_status() != trycopy::HandlerStatus::Installed {
        trycopy::rearm_handler();
    }
}

/// A backing with no mapping and no addresses (for `empty()`).
struct EmptyBacking;

// SAFETY: no mapping, no addresses.
#[allow(unsafe_code, reason = "GuestMemoryAccess is an unsafe trait")]
unsafe impl GuestMemoryAccess for EmptyBacking {
    fn mapping(&self) -> Option<std::ptr::NonNull<u8>> {
        None
    }

    fn max_address(&self) -> u64 {
        0
    }
}

impl GuestMemory {
    fn from_regions(
        debug_name: Arc<str>,
        regions: Vec<Region>,
        decoder: Decoder,
        max_address: u64,
        heap: Option<Arc<AlignedHeapMemory>>,
    ) -> Self {
        Self {
            inner: Arc::new(GuestMemoryInner {
                debug_name,
                regions,
                decoder,
                max_address,
                heap,
            }),
            retry_limit: DEFAULT_RETRY_LIMIT,
        }
    }

    /// Guest memory of one region provided by `imp` (GPA = address in `imp`).
    ///
    /// Installs (or re-arms) the process-wide fault handler when `imp` has a mapping.
    pub fn new(debug_name: impl Into<Arc<str>>, imp: impl GuestMemoryAccess) -> Self {
        Self::new_dyn(debug_name.into(), Arc::new(imp))
    }

    fn new_dyn(debug_name: Arc<str>, backing: Arc<dyn GuestMemoryAccess>) -> Self {
        let region = Region::new(backing);
        if region.has_mapping() {
            ensure_fault_handler();
        }
        let max_address = region.len();
        Self::from_regions(
            debug_name,
            vec![region],
            Decoder::single(),
            max_address,
            None,
        )
    }

    /// Guest memory made of `imps.len()` regions of `region_size` bytes each (the count is
    /// rounded up to a power of two; missing and padding regions are empty).
    pub fn new_multi_region<T: GuestMemoryAccess>(
        debug_name: impl Into<Arc<str>>,
        region_size: u64,
        imps: Vec<Option<T>>,
    ) -> Result<Self, MultiRegionError> {
        ensure_fault_handler();
        if !region_size.is_power_of_two() {
            return Err(MultiRegionError::NotPowerOfTwo(region_size));
        }
        if region_size < PAGE_SIZE64 {
            return Err(MultiRegionError::RegionSizeTooSmall(region_size));
        }
        let region_bits = region_size.trailing_zeros();
        // The largest count whose region index still fits below bit 63 (saturated to what a
        // `usize` holds).
        let max_region_count = usize::try_from(1u64 << (63 - region_bits)).unwrap_or(usize::MAX);
        let too_many = |region_count| MultiRegionError::TooManyRegions {
            region_count,
            max_region_count,
            region_size,
        };
        let region_count = imps
            .len()
            .max(1)
            .checked_next_power_of_two()
            .ok_or_else(|| too_many(imps.len()))?;
        if region_count > max_region_count {
            return Err(too_many(region_count));
        }
        let mut regions = Vec::with_capacity(region_count);
        for imp in imps {
            match imp {
                Some(imp) => {
                    let backing_size = imp.max_address();
                    if backing_size > region_size {
                        return Err(MultiRegionError::BackingTooLarge {
                            backing_size,
                            region_size,
                        });
                    }
                    regions.push(Region::new(Arc::new(imp)));
                }
                None => regions.push(Region::missing()),
            }
        }
        regions.resize_with(region_count, Region::missing);
        let decoder = Decoder::multi(region_bits, region_count.trailing_zeros());
        Ok(Self::from_regions(
            debug_name.into(),
            regions,
            decoder,
            region_size * region_count as u64,
            None,
        ))
    }

    /// Heap-backed guest memory of `size` bytes rounded up to 4 KiB, zeroed. Installs no fault
    /// handler (heap memory never faults).
    ///
    /// # Panics
    /// If the memory cannot be allocated (see [`GuestMemory::try_allocate`]).
    pub fn allocate(size: usize) -> Self {
        match Self::try_allocate(size) {
            Ok(memory) => memory,
            Err(err) => panic!("{err}"),
        }
    }

    /// Like [`GuestMemory::allocate`], but reports an allocation failure as an error.
    pub fn try_allocate(size: usize) -> Result<Self, AllocationError> {
        let heap = Arc::new(AlignedHeapMemory::try_new(size).ok_or(AllocationError { size })?);
        let backing: Arc<dyn GuestMemoryAccess> = heap.clone();
        let region = Region::new(backing);
        let max_address = region.len();
        Ok(Self::from_regions(
            "heap".into(),
            vec![region],
            Decoder::single(),
            max_address,
            Some(heap),
        ))
    }

    /// Guest memory with no addresses: every non-empty access fails with `OutOfRange`.
    pub fn empty() -> Self {
        Self::new("empty", EmptyBacking)
    }

    /// Guest memory over `mapping` (GPA = offset in the mapping) whose page faults, fallbacks and
    /// locking are handled by `hooks` (absent hooks keep the trait's defaults).
    pub fn from_sparse_mapping(
        debug_name: impl Into<Arc<str>>,
        mapping: Arc<sparse_mmap::SparseMapping>,
        hooks: GuestMemoryHooks,
    ) -> Self {
        Self::new(debug_name, SparseMappingBacking::new(mapping, hooks))
    }

    /// This handle with a different retry limit: the number of consecutive `Retry` answers from
    /// `page_fault` that do not move the first faulting address forward, after which an access
    /// fails with kind `Other` ("page fault not resolved"). Clones and subranges made from the
    /// returned handle inherit it.
    pub fn with_retry_limit(mut self, retry_limit: u32) -> Self {
        self.retry_limit = retry_limit;
        self
    }

    /// The retry limit of this handle.
    pub fn retry_limit(&self) -> u32 {
        self.retry_limit
    }

    /// The debug name used in error messages.
    pub fn debug_name(&self) -> &str {
        &self.inner.debug_name
    }

    /// The size of the guest address space (for a multi-region memory: region size × region
    /// count).
    pub fn max_address(&self) -> u64 {
        self.inner.max_address
    }

    /// `(base, len)` of the whole memory when it is one region directly mapped.
    pub fn full_mapping(&self) -> Option<(*mut u8, usize)> {
        match self.inner.regions.as_slice() {
            #[cfg(feature = "bitmap")]
            [region] if region.bitmaps().is_some() => None,
            [region] => Some((region.mapping()?, usize::try_from(region.len()).ok()?)),
            _ => None,
        }
    }

    /// The IO virtual address of `gpa`, when its region's backing has one.
    pub fn iova(&self, gpa: u64) -> Option<u64> {
        let located = self.locate(gpa, 1).ok()?;
        located.region.base_iova()?.checked_add(located.offset)
    }

    /// The backing's sharing provider (single-region memories only).
    pub fn sharing(&self) -> Option<GuestMemorySharing> {
        match self.inner.regions.as_slice() {
            [region] => region.backing()?.sharing(),
            _ => None,
        }
    }

    /// The heap memory of a memory made by [`GuestMemory::allocate`], as atomic bytes.
    pub fn inner_buf(&self) -> Option<&[std::sync::atomic::AtomicU8]> {
        self.inner.heap.as_deref().map(|heap| &heap[..])
    }

    /// The heap memory of a memory made by [`GuestMemory::allocate`] as plain bytes, only while
    /// this handle is the sole owner (no clone, subrange or locked pages exist).
    #[allow(
        unsafe_code,
        reason = "hands out the heap's bytes under a unique borrow"
    )]
    pub fn inner_buf_mut(&mut self) -> Option<&mut [u8]> {
        let inner = Arc::get_mut(&mut self.inner)?;
        let heap = inner.heap.as_ref()?;
        // SAFETY: `inner` is uniquely owned through `&mut self`, so no other handle, subrange or
        // lock can reach the heap memory (the region's reference to it lives inside `inner`);
        // the returned borrow keeps `self` mutably borrowed for its whole lifetime.
        Some(unsafe { std::slice::from_raw_parts_mut(heap.as_ptr(), heap.len()) })
    }

    /// The heap backing of a memory made by [`GuestMemory::allocate`] when this handle is the
    /// sole owner; otherwise the handle is given back.
    pub fn into_inner_buf(self) -> Result<AlignedHeapMemory, Self> {
        if self.inner.heap.is_none() {
            return Err(self);
        }
        let retry_limit = self.retry_limit;
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(inner) => return Err(Self { inner, retry_limit }),
        };
        let GuestMemoryInner {
            debug_name,
            regions,
            decoder,
            max_address,
            heap,
        } = inner;
        let Some(heap) = heap else {
            // Checked above; rebuild the handle rather than panic.
            return Err(Self::from_regions(
                debug_name,
                regions,
                decoder,
                max_address,
                None,
            ));
        };
        drop(regions);
        Arc::try_unwrap(heap).map_err(|heap| {
            let backing: Arc<dyn GuestMemoryAccess> = heap.clone();
            Self::from_regions(
                debug_name,
                vec![Region::new(backing)],
                decoder,
                max_address,
                Some(heap),
            )
        })
    }
}
