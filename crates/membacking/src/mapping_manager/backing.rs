//! Guest memory over a VA mapper: the [`GuestMemoryAccess`] implementation that makes the
//! manager's accessor lazily mapped.
//!
//! An access to a page that is not mapped yet faults; `page_fault` requests the bounding range
//! of the rest of the access from the mapping manager, waits, and answers `Retry` (or fails
//! with kind `OutOfRange` and a [`NoMapping`](crate::NoMapping) cause). Page locking keeps the
//! locked pages of this process's window mapped until released. In file-backed mode the
//! accessor's `sharing()` reports the DMA-target mappings.

// Unsafe code: the accessor's backing implements the unsafe `GuestMemoryAccess` trait (the only
// unsafe code of this crate outside tests).
#![allow(unsafe_code)]

use super::va_mapper::RequestError;
use super::va_mapper::VaMapper;
use super::MappingManagerClient;
use guestmem::DirtyBitmap;
use guestmem::GuestMemoryAccess;
use guestmem::GuestMemoryBackingError;
use guestmem::GuestMemorySharing;
use guestmem::PageFaultAction;
use guestmem::ProvideShareableRegions;
use guestmem::ShareableRegion;
use guestmem::ShareableRegionError;
use memory_range::MemoryRange;
use std::ptr::NonNull;
use std::sync::Arc;

/// The backing of the manager's guest-memory accessor.
pub(crate) struct MapperBacking {
    mapper: Arc<VaMapper>,
    sharing: Option<GuestMemorySharing>,
    /// The manager's dirty bitmap (GPA = window offset = bitmap offset).
    dirty: Arc<DirtyBitmap>,
}

impl MapperBacking {
    /// A backing over `mapper`; with `sharing_client`, `sharing()` reports the DMA targets.
    pub(crate) fn new(
        mapper: Arc<VaMapper>,
        sharing_client: Option<MappingManagerClient>,
        dirty: Arc<DirtyBitmap>,
    ) -> Self {
        Self {
            mapper,
            sharing: sharing_client.map(|client| GuestMemorySharing::new(DmaSharing { client })),
            dirty,
        }
    }
}

// SAFETY: `mapping()` is the base of the mapper's window of `max_address()` bytes, reserved
// (never handed to anyone else) for as long as the `VaMapper` lives, which this backing keeps
// alive; pages that are not mapped are inaccessible reserved VA, so an access can only fault.
// The fallbacks are the defaults (they initialise nothing and fail). `lock_gpns` keeps the locked
// pages mapped until the matching `unlock_gpns` (the mapper defers every change to them).
unsafe impl GuestMemoryAccess for MapperBacking {
    fn mapping(&self) -> Option<NonNull<u8>> {
        NonNull::new(self.mapper.base())
    }

    fn max_address(&self) -> u64 {
        self.mapper.len()
    }

    fn page_fault(
        &self,
        address: u64,
        len: usize,
        write: bool,
        _bitmap_failure: bool,
    ) -> PageFaultAction {
        let window_len = self.mapper.len();
        if address >= window_len {
            return PageFaultAction::Fail(guestmem::PageFaultError::new(
                guestmem::GuestMemoryErrorKind::OutOfRange,
                crate::NoMapping(MemoryRange::EMPTY),
            ));
        }
        let end = address.saturating_add(len as u64).min(window_len);
        let range = MemoryRange::bounding(address..end.max(address + 1));
        match self.mapper.resolve_fault(range, write) {
            Ok(()) => PageFaultAction::Retry,
            Err(error) => PageFaultAction::Fail(error),
        }
    }

    fn check_access(
        &self,
        address: u64,
        len: u64,
        write: bool,
    ) -> Result<(), GuestMemoryBackingError> {
        let Some(end) = address
            .checked_add(len)
            .filter(|&end| end <= self.mapper.len())
        else {
            return Err(GuestMemoryBackingError::new(
                guestmem::GuestMemoryErrorKind::OutOfRange,
                address,
                crate::NoMapping(MemoryRange::EMPTY),
            ));
        };
        let range = MemoryRange::bounding(address..end);
        self.mapper
            .check_access(range, write)
            .map_err(|error| match error {
                RequestError::NoMapping(_, hole) => GuestMemoryBackingError::new(
                    guestmem::GuestMemoryErrorKind::OutOfRange,
                    hole.start().max(address),
                    crate::NoMapping(hole),
                ),
                RequestError::ReadOnly(_, hole) => GuestMemoryBackingError::new(
                    guestmem::GuestMemoryErrorKind::OutOfRange,
                    hole.start().max(address),
                    crate::ReadOnlyMapping(hole),
                ),
                RequestError::ManagerGone => GuestMemoryBackingError::new(
                    guestmem::GuestMemoryErrorKind::OutOfRange,
                    address,
                    crate::ManagerGone,
                ),
            })
    }

    fn lock_gpns(&self, gpns: &[u64]) -> Result<bool, GuestMemoryBackingError> {
        self.mapper.lock_pages(gpns)?;
        Ok(true)
    }

    fn unlock_gpns(&self, gpns: &[u64]) {
        self.mapper.unlock_pages(gpns);
    }

    fn sharing(&self) -> Option<GuestMemorySharing> {
        self.sharing.clone()
    }

    fn dirty_bitmap(&self) -> Option<(Arc<DirtyBitmap>, u64)> {
        Some((self.dirty.clone(), 0))
    }
}

/// The DMA-sharing provider of a file-backed manager.
struct DmaSharing {
    client: MappingManagerClient,
}

impl ProvideShareableRegions for DmaSharing {
    fn get_regions(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<ShareableRegion>, ShareableRegionError>> + Send + '_
    {
        let client = self.client.clone();
        async move {
            let mappings = client.dma_target_mappings().await?;
            Ok(mappings
                .into_iter()
                .map(|mapping| ShareableRegion {
                    guest_address: mapping.range.start(),
                    size: mapping.range.len(),
                    file: mapping.object,
                    file_offset: mapping.file_offset,
                })
                .collect())
        }
    }
}
