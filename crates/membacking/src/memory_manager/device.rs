//! Device memory windows at run time: [`DeviceMemoryMapper::new_region`] gives the two
//! halves of a window — [`MappableGuestMemory`] places it at a GPA, [`MappedMemoryRegion`] maps
//! objects into it — sharing one [`DeviceWindow`] record.
//!
//! Every operation runs on the manager thread as one region-manager transaction, under the
//! window's lock, so two operations on a window never interleave and a failure leaves the
//! record and the region manager consistent (the original holds the window's lock while it
//! waits for the region manager; here the caller waits asynchronously and nothing blocks).
//!
//! The window exists while either half lives. Dropping the control half alone does not unmap
//! it; dropping both requests its removal without waiting.

use super::batch::ManagerChange;
use super::region_actor::DeviceOp;
use super::region_actor::PlanPreview;
use super::region_actor::PreviewChange;
use super::region_actor::PreviewError;
use super::region_actor::RegionManagerClient;
use super::region_actor::SharedWindow;
use crate::device_memory::DeviceWindow;
use crate::region_manager::RegionManagerError;
use crate::GuestMemoryManager;
use parking_lot::Mutex;
use sparse_mmap::Mappable;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// Creates device memory windows (priority-0 regions placed in MMIO space).
#[derive(Debug, Clone)]
pub struct DeviceMemoryMapper {
    regions: RegionManagerClient,
}

impl DeviceMemoryMapper {
    pub(crate) fn new(regions: RegionManagerClient) -> Self {
        Self { regions }
    }

    /// A window of `len` bytes named `debug_name`, unplaced and empty. Never fails (the
    /// `Result` mirrors the original's signature); nothing is sent to the manager yet.
    pub fn new_region(
        &self,
        len: usize,
        debug_name: String,
    ) -> io::Result<(MappableGuestMemory, Arc<MappedMemoryRegion>)> {
        let shared = Arc::new(WindowShared {
            window: Arc::new(Mutex::new(DeviceWindow::new(len as u64, debug_name))),
            regions: self.regions.clone(),
        });
        Ok((
            MappableGuestMemory {
                shared: shared.clone(),
            },
            Arc::new(MappedMemoryRegion { shared }),
        ))
    }
}

/// A device-window operation for a batch ([`GuestMemoryManager::apply`](crate::GuestMemoryManager::apply)),
/// made by [`MappableGuestMemory::map_to_guest_change`] and the other `*_change` methods.
#[derive(Debug)]
pub struct DeviceChange {
    pub(crate) window: SharedWindow,
    /// The manager the window belongs to.
    pub(crate) regions: RegionManagerClient,
    /// The operation, or why it could not be prepared (reported with the change's index).
    pub(crate) op: io::Result<DeviceOp>,
}

/// What both halves share; the last one to go removes the window's region.
#[derive(Debug)]
struct WindowShared {
    window: SharedWindow,
    regions: RegionManagerClient,
}

impl Drop for WindowShared {
    /// Requests the window's removal whether or not it is placed now: a placement requested
    /// before the drop may not have been served yet, and is served before this removal.
    fn drop(&mut self) {
        self.regions
            .device_no_wait(self.window.clone(), DeviceOp::UnmapFromGuest);
    }
}

impl WindowShared {
    /// A round trip to the region manager: resolves once every request sent before it has been
    /// served, such as the removal the last half sends when it is dropped.
    fn settled(&self) -> impl Future<Output = ()> + Send + 'static {
        let regions = self.regions.clone();
        async move {
            // Only the ordering matters; a manager that is gone has nothing left to settle.
            let _ = regions.flat_view().await;
        }
    }

    fn preview(
        &self,
        make: impl FnOnce(SharedWindow) -> PreviewChange,
    ) -> impl Future<Output = io::Result<PlanPreview>> + Send + 'static {
        let preview = self.regions.preview(make(self.window.clone()));
        async move {
            preview.await.map_err(|error| match error {
                PreviewError::Region(error) => io::Error::other(error),
                PreviewError::Io(error) => error,
            })
        }
    }

    fn change(&self, op: io::Result<DeviceOp>) -> ManagerChange {
        ManagerChange::Device(DeviceChange {
            window: self.window.clone(),
            regions: self.regions.clone(),
            op,
        })
    }

    /// Whether `manager` made this window (its changes may be planned and applied only there).
    fn made_by(&self, manager: &GuestMemoryManager) -> bool {
        self.regions.same_manager(&manager.regions)
    }

    /// Sends `op` now (see `RegionManagerClient::device`); the future waits for its answer.
    fn run(&self, op: DeviceOp) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.regions.device(self.window.clone(), op)
    }
}

/// The placement half of a device window (the original's `MappableGuestMemory`).
#[derive(Debug)]
pub struct MappableGuestMemory {
    shared: Arc<WindowShared>,
}

impl MappableGuestMemory {
    /// Resolves once the region manager has served every request sent before this call; await
    /// it after dropping the last half to know the window's region is gone.
    pub fn settled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.settled()
    }

    /// Places the window at `[gpa, gpa + len)`, replacing an earlier placement (which is
    /// removed first; a failure from then on leaves the window unplaced). The region is mapped
    /// `{writable, executable, no prefetch}` and stays hidden where RAM is mapped.
    ///
    /// Errors: `InvalidInput` for an invalid range; kind `Other` wrapping a
    /// [`RegionManagerError`] (`OverlapError`, `RegionOutOfRange`, `RegionOverlapsPrivateRam`,
    /// `ManagerGone`, `ManagerPoisoned`).
    pub fn map_to_guest(
        &self,
        gpa: u64,
        writable: bool,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.shared.run(DeviceOp::MapToGuest { gpa, writable })
    }

    /// Removes the placement; the recorded mappings are kept for a later `map_to_guest`.
    /// Infallible: a gone or poisoned manager is ignored.
    pub fn unmap_from_guest(&self) -> impl Future<Output = ()> + Send + 'static {
        let run = self.shared.run(DeviceOp::UnmapFromGuest);
        async move {
            if let Err(error) = run.await {
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "removing a device window's placement failed; ignored"
                );
            }
        }
    }

    /// [`MappableGuestMemory::map_to_guest`] as a change of a batch.
    pub fn map_to_guest_change(&self, gpa: u64, writable: bool) -> ManagerChange {
        self.shared
            .change(Ok(DeviceOp::MapToGuest { gpa, writable }))
    }

    /// [`MappableGuestMemory::unmap_from_guest`] as a change of a batch.
    pub fn unmap_from_guest_change(&self) -> ManagerChange {
        self.shared.change(Ok(DeviceOp::UnmapFromGuest))
    }

    /// Dry run of [`MappableGuestMemory::map_to_guest`]: the operations it would carry out and
    /// the flat view it would leave; nothing is applied.
    pub fn plan_map_to_guest(
        &self,
        gpa: u64,
        writable: bool,
    ) -> impl Future<Output = io::Result<PlanPreview>> + Send + 'static {
        self.shared
            .preview(move |window| PreviewChange::DeviceMapToGuest {
                window,
                gpa,
                writable,
            })
    }

    /// Dry run of [`MappableGuestMemory::unmap_from_guest`].
    pub fn plan_unmap_from_guest(
        &self,
    ) -> impl Future<Output = io::Result<PlanPreview>> + Send + 'static {
        self.shared
            .preview(|window| PreviewChange::DeviceUnmapFromGuest { window })
    }

    /// The window's length.
    pub fn len(&self) -> u64 {
        self.shared.window.lock().len()
    }

    /// Whether `manager`'s device memory mapper made this window.
    pub fn made_by(&self, manager: &GuestMemoryManager) -> bool {
        self.shared.made_by(manager)
    }

    /// Whether the window has length zero (it can never be placed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GPA the window is placed at, if placed.
    pub fn gpa(&self) -> Option<u64> {
        self.shared
            .window
            .lock()
            .placement()
            .map(|placement| placement.gpa)
    }
}

/// The mapping half of a device window (the original's `MappedMemoryRegion`).
#[derive(Debug)]
pub struct MappedMemoryRegion {
    shared: Arc<WindowShared>,
}

impl MappedMemoryRegion {
    /// Resolves once the region manager has served every request sent before this call; await
    /// it after dropping the last half to know the window's region is gone.
    pub fn settled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.settled()
    }

    /// Maps `len` bytes of `section` from `file_offset` at window offset `offset`. The
    /// object's handle is duplicated at once (the future does not borrow it).
    ///
    /// Errors: `InvalidInput` for an unaligned range or one beyond the window; `Unsupported`
    /// for an overlap with an existing mapping; kind `Other` wrapping a
    /// [`RegionManagerError`] (`MappingBeyondObject` when the object is too small,
    /// `ManagerGone`, `ManagerPoisoned`); the OS error if the handle cannot be duplicated.
    pub fn map(
        &self,
        offset: usize,
        section: impl AsFd,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let run = duplicate(section.as_fd())
            .map(|object| self.map_object(offset, object, file_offset, len, writable));
        async move { run?.await }
    }

    /// [`MappedMemoryRegion::map`] of an object already shared by reference counting: the
    /// mapping keeps a reference to `object` instead of a duplicated descriptor, so any number
    /// of mappings of one object hold one descriptor (a window mapped page by page from one
    /// memfd would otherwise hold one descriptor per page and run into the process's limit),
    /// and adjacent mappings of it can be merged into one system call.
    pub fn map_object(
        &self,
        offset: usize,
        object: Arc<Mappable>,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let shared_run = self
            .map_op(offset, object, file_offset, len, writable)
            .map(|op| self.shared.run(op));
        async move { shared_run?.await }
    }

    /// [`MappedMemoryRegion::map`] as a change of a batch. The object's handle is duplicated
    /// at once; if that (or the check of the object's size) fails, the batch reports it as this
    /// change's error.
    pub fn map_change(
        &self,
        offset: usize,
        section: impl AsFd,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> ManagerChange {
        match duplicate(section.as_fd()) {
            Ok(object) => self.map_object_change(offset, object, file_offset, len, writable),
            Err(error) => self.shared.change(Err(error)),
        }
    }

    /// [`MappedMemoryRegion::map_object`] as a change of a batch.
    pub fn map_object_change(
        &self,
        offset: usize,
        object: Arc<Mappable>,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> ManagerChange {
        self.shared
            .change(self.map_op(offset, object, file_offset, len, writable))
    }

    /// [`MappedMemoryRegion::unmap`] as a change of a batch.
    pub fn unmap_change(&self, offset: usize, len: usize) -> ManagerChange {
        self.shared.change(Ok(DeviceOp::Unmap {
            offset: offset as u64,
            len: len as u64,
        }))
    }

    /// Dry run of [`MappedMemoryRegion::map`]: the operations it would carry out and the flat
    /// view it would leave; nothing is applied.
    pub fn plan_map(
        &self,
        offset: usize,
        section: impl AsFd,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> impl Future<Output = io::Result<PlanPreview>> + Send + 'static {
        let preview = duplicate(section.as_fd())
            .and_then(|object| self.map_op(offset, object, file_offset, len, writable))
            .map(|op| {
                self.shared
                    .preview(move |window| PreviewChange::DeviceMapping { window, op })
            });
        async move { preview?.await }
    }

    /// Dry run of [`MappedMemoryRegion::unmap`].
    pub fn plan_unmap(
        &self,
        offset: usize,
        len: usize,
    ) -> impl Future<Output = io::Result<PlanPreview>> + Send + 'static {
        self.shared
            .preview(move |window| PreviewChange::DeviceMapping {
                window,
                op: DeviceOp::Unmap {
                    offset: offset as u64,
                    len: len as u64,
                },
            })
    }

    /// The `Map` operation of [`MappedMemoryRegion::map`]: checks the object is long enough
    /// (when its size is known).
    fn map_op(
        &self,
        offset: usize,
        object: Arc<Mappable>,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<DeviceOp> {
        if let Ok(size) = sparse_mmap::object_size(object.as_fd()) {
            let end = file_offset.checked_add(len as u64);
            if sparse_mmap::is_regular_file(object.as_fd()) && end.is_none_or(|end| end > size) {
                let window = self.shared.window.lock();
                return Err(io::Error::other(RegionManagerError::MappingBeyondObject {
                    region: window.name().to_owned(),
                    file_offset,
                    len: len as u64,
                    object_size: size,
                }));
            }
        }
        Ok(DeviceOp::Map {
            offset: offset as u64,
            object,
            file_offset,
            len: len as u64,
            writable,
        })
    }

    /// Removes the mappings inside `[offset, offset + len)`, keeping the others (D2). A mapping
    /// only partly inside is `Unsupported`; errors change nothing.
    pub fn unmap(
        &self,
        offset: usize,
        len: usize,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.shared.run(DeviceOp::Unmap {
            offset: offset as u64,
            len: len as u64,
        })
    }

    /// Whether `manager`'s device memory mapper made this window.
    pub fn made_by(&self, manager: &GuestMemoryManager) -> bool {
        self.shared.made_by(manager)
    }

    /// The window's length.
    pub fn len(&self) -> u64 {
        self.shared.window.lock().len()
    }

    /// Whether the window has length zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A mapping's own reference to `section`: its descriptor duplicated (the caller keeps its own).
fn duplicate(section: BorrowedFd<'_>) -> io::Result<Arc<Mappable>> {
    sparse_mmap::mappable_from_fd(section).map(Arc::new)
}
