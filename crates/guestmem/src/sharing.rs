//! Sharing guest memory with other processes (e.g. user-mode DMA): the file-backed regions that
//! make up guest memory, produced asynchronously by the backing's provider.
//!
//! Regions must be fully backed (no lazy fault-in) and the set is meant to be static for the
//! VM's lifetime. Multi-region memories and subranges report no sharing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed error of a sharing provider.
pub type ShareableRegionError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A boxed future of the shareable regions, for callers that need a nameable type.
pub type ShareableRegionsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<ShareableRegion>, ShareableRegionError>> + Send + 'a>>;

/// One file-backed region of guest memory.
#[derive(Debug, Clone)]
pub struct ShareableRegion {
    /// The guest address of the region's first byte.
    pub guest_address: u64,
    /// The region's size in bytes.
    pub size: u64,
    /// The object backing the region (shared, not duplicated).
    pub file: Arc<sparse_mmap::Mappable>,
    /// The offset of the region's first byte in `file`.
    pub file_offset: u64,
}

/// Produces the shareable regions of a guest memory.
///
/// Implemented by backings (an `async` block or any `Send` future will do); callers use
/// [`GuestMemorySharing::get_regions`].
pub trait ProvideShareableRegions: Send + Sync {
    /// The current regions.
    fn get_regions(
        &self,
    ) -> impl Future<Output = Result<Vec<ShareableRegion>, ShareableRegionError>> + Send + '_;
}

/// The object-safe form of [`ProvideShareableRegions`] that [`GuestMemorySharing`] stores.
trait BoxedProvider: Send + Sync {
    fn boxed_regions(&self) -> ShareableRegionsFuture<'_>;
}

impl<T: ProvideShareableRegions> BoxedProvider for T {
    fn boxed_regions(&self) -> ShareableRegionsFuture<'_> {
        Box::pin(self.get_regions())
    }
}

/// A cheaply clonable handle to a sharing provider.
#[derive(Clone)]
pub struct GuestMemorySharing {
    provider: Arc<dyn BoxedProvider>,
}

impl std::fmt::Debug for GuestMemorySharing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemorySharing").finish_non_exhaustive()
    }
}

impl GuestMemorySharing {
    /// Wraps `provider`.
    pub fn new(provider: impl ProvideShareableRegions + 'static) -> Self {
        Self {
            provider: Arc::new(provider),
        }
    }

    /// The current shareable regions.
    pub async fn get_regions(&self) -> Result<Vec<ShareableRegion>, ShareableRegionError> {
        self.provider.boxed_regions().await
    }
}
