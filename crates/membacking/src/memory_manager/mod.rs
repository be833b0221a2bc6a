//! The memory manager runtime: [`GuestMemoryBuilder`], [`GuestMemoryManager`] and the
//! handles it gives out — [`GuestMemoryClient`], [`RamVisibilityControl`],
//! [`DeviceMemoryMapper`] and [`SharedMemoryBacking`].
//!
//! # Threads
//!
//! `build` starts one OS thread, "memory_manager", running a single-threaded executor with two
//! tasks: the region manager ([`region_actor`]) and the mapping manager
//! ([`crate::mapping_manager`]). Each VA mapper has its own "mapper" thread. Nothing on these
//! threads ever waits for a guest-memory access or for a caller's thread, so callers may block
//! on them (the fault path does) without deadlocking.
//!
//! # Futures
//!
//! Every asynchronous method returns a future that is `Send + 'static`: it owns clones of the
//! handles it needs, never borrows the object it was called on, and only waits on channels
//! answered by the manager threads. Any executor (or `futures::executor::block_on`) can drive
//! it.
//!
//! # Teardown
//!
//! [`GuestMemoryManager::close`] stops both actors (partitions get their whole-window unmaps,
//! VA mappers are told the manager is gone) and resolves when the manager thread has exited.
//! Dropping the manager without `close` releases its handles like the original: the RAM regions
//! are removed (asynchronously) and the actors stop once the last handle of each (controls,
//! device windows, clients, accessors) is gone. Either way the VA window of this process lives
//! until its last accessor (and lock) is gone, inaccessible except for locked pages once the
//! manager has stopped.

mod attach_claim;
mod batch;
mod device;
mod preview;
pub(crate) mod region_actor;

#[cfg(test)]
mod tests;

pub use batch::AppliedBatch;
pub use batch::BatchChangeError;
pub use batch::BatchError;
pub use batch::ManagerChange;
pub use device::DeviceChange;
pub use device::DeviceMemoryMapper;
pub use device::MappableGuestMemory;
pub use device::MappedMemoryRegion;
pub use preview::preview_steps;
pub use preview::PreviewStep;
pub use preview::PreviewStepKind;
pub use region_actor::ManagerSnapshot;
pub use region_actor::PlanPreview;
pub use region_actor::PrefetchFailureRecord;
pub use region_actor::PrefetchFailures;
pub use region_actor::PrefetchProgress;
pub use region_actor::PrefetchReport;

use crate::dirty::DirtyTracking;
use crate::error::AttachedTo;
use crate::error::MemoryBuildError;
use crate::error::PartitionAttachError;
use crate::error::VaMapperError;
use crate::mapping_manager::backing::MapperBacking;
use crate::mapping_manager::mapper_cache::process_mapper;
use crate::mapping_manager::new_mapping_manager;
use crate::mapping_manager::va_mapper::VaMapper;
use crate::mapping_manager::MappingManagerClient;
use crate::mapping_manager::MappingManagerTask;
use crate::mapping_manager::SharedObject;
use crate::ram_visibility::RamRegionSpec;
use crate::ram_visibility::RamRegions;
use crate::ram_visibility::RamVisibility;
use crate::region_manager::Change;
use crate::region_manager::FlatEntry;
use crate::region_manager::PartitionMapperInfo;
use crate::region_manager::RegionManagerError;
use crate::PAGE_SIZE;
use attach_claim::AttachClaim;
use attach_claim::ManagerId;
use futures::channel::oneshot;
use guestmem::DirtyBitmap;
use guestmem::GuestMemory;
use memory_range::MemoryRange;
use region_actor::new_region_manager;
use region_actor::PreviewChange;
use region_actor::PreviewError;
use region_actor::RegionActorConfig;
use region_actor::RegionActorTask;
use region_actor::RegionManagerClient;
use sparse_mmap::Mappable;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use virt::PartitionMemoryMap;
use virt::Vtl;
use vm_topology::memory::MemoryLayout;

/// The guest RAM object of a file-backed manager, to rebuild the same guest memory in another
/// manager (of this process, or of a child process that received its file descriptor).
///
/// Only one manager should drive a given backing at a time: two managers over the same RAM
/// each believe they own it (visibility, decommit, device surfacing), so what the guest sees
/// becomes unpredictable. Hand a backing over (close the first manager) rather than share it.
#[derive(Debug, Clone)]
pub struct SharedMemoryBacking {
    object: SharedObject,
}

impl SharedMemoryBacking {
    /// Wraps a shareable memory object (e.g. a memfd received from another process).
    pub fn from_mappable(mappable: Mappable) -> Self {
        Self {
            object: Arc::new(mappable),
        }
    }

    /// The underlying object. Its descriptor can be passed to a child process (it is opened
    /// close-on-exec; `dup2` it to the child's descriptor number), which rebuilds the memory
    /// with [`SharedMemoryBacking::from_mappable`] and [`GuestMemoryBuilder::existing_backing`].
    pub fn mappable(&self) -> &Mappable {
        &self.object
    }

    /// The object as the managers share it.
    pub fn shared_object(&self) -> SharedObject {
        self.object.clone()
    }

    /// The object's size in bytes.
    pub fn size(&self) -> io::Result<u64> {
        sparse_mmap::object_size(self.object.as_fd())
    }
}

impl AsFd for SharedMemoryBacking {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.object.as_fd()
    }
}

/// A process to host a remote VA mapper. Remote mappers exist only on Windows;
/// here every attach that names a process fails with
/// [`PartitionAttachError::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteProcess(pub u32);

/// Options for building a [`GuestMemoryManager`]. Setters are chainable; the last
/// call wins.
#[derive(Default)]
pub struct GuestMemoryBuilder {
    existing_backing: Option<SharedMemoryBacking>,
    vtl0_alias_map: Option<u64>,
    pin_mappings: bool,
    prefetch_ram: bool,
    x86_legacy_support: bool,
    private_memory: bool,
    transparent_hugepages: bool,
    prefetch_progress: Option<PrefetchProgress>,
}

impl std::fmt::Debug for GuestMemoryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemoryBuilder")
            .field("existing_backing", &self.existing_backing)
            .field("vtl0_alias_map", &self.vtl0_alias_map)
            .field("pin_mappings", &self.pin_mappings)
            .field("prefetch_ram", &self.prefetch_ram)
            .field("x86_legacy_support", &self.x86_legacy_support)
            .field("private_memory", &self.private_memory)
            .field("transparent_hugepages", &self.transparent_hugepages)
            .field("prefetch_progress", &self.prefetch_progress.is_some())
            .finish()
    }
}

impl GuestMemoryBuilder {
    /// Every option off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reuses an existing guest-RAM object instead of allocating one.
    pub fn existing_backing(mut self, backing: Option<SharedMemoryBacking>) -> Self {
        self.existing_backing = backing;
        self
    }

    /// Mirrors VTL0 memory into VTL2 partitions at this GPA offset.
    pub fn vtl0_alias_map(mut self, offset: Option<u64>) -> Self {
        self.vtl0_alias_map = offset;
        self
    }

    /// Pins every range mapped into every partition.
    pub fn pin_mappings(mut self, enable: bool) -> Self {
        self.pin_mappings = enable;
        self
    }

    /// Asks partitions to prefetch RAM when it is first mapped (ignored in private mode).
    pub fn prefetch_ram(mut self, enable: bool) -> Self {
        self.prefetch_ram = enable;
        self
    }

    /// Reports prefetch progress: after each prefetched piece of a plan that prefetches
    /// (attaching a partition with [`prefetch_ram`](Self::prefetch_ram), or mapping a region),
    /// a [`PrefetchReport`] with `done` and `total` in bytes and the
    /// piece's failure if it failed; from the region manager's thread or the partition's
    /// prefetch threads, one report at a time (keep it short). An extension of this project.
    pub fn prefetch_progress(mut self, progress: Option<PrefetchProgress>) -> Self {
        self.prefetch_progress = progress;
        self
    }

    /// Splits low RAM into separately controllable regions (VGA window, PAM areas).
    pub fn x86_legacy_support(mut self, enable: bool) -> Self {
        self.x86_legacy_support = enable;
        self
    }

    /// Backs RAM with private anonymous memory instead of a shared object.
    pub fn private_memory(mut self, enable: bool) -> Self {
        self.private_memory = enable;
        self
    }

    /// Marks private RAM eligible for transparent huge pages.
    pub fn transparent_hugepages(mut self, enable: bool) -> Self {
        self.transparent_hugepages = enable;
        self
    }

    /// Builds the manager for `layout`, checking the options in the original's order; the first
    /// failure ends the build and nothing built is kept.
    pub fn build(
        self,
        layout: &MemoryLayout,
    ) -> impl Future<Output = Result<GuestMemoryManager, MemoryBuildError>> + Send + 'static {
        let layout = layout.clone();
        async move { self.build_inner(layout).await }
    }

    async fn build_inner(
        self,
        layout: MemoryLayout,
    ) -> Result<GuestMemoryManager, MemoryBuildError> {
        let private = self.private_memory;
        // 1. Private memory excludes x86 legacy support and an existing backing.
        if private {
            if self.x86_legacy_support {
                return Err(MemoryBuildError::PrivateMemoryWithLegacy);
            }
            if self.existing_backing.is_some() {
                return Err(MemoryBuildError::PrivateMemoryWithExistingBacking);
            }
        }
        // 2. Transparent huge pages need private memory on Linux.
        if self.transparent_hugepages {
            if !private {
                return Err(MemoryBuildError::ThpWithoutPrivateMemory);
            }
            if !cfg!(target_os = "linux") {
                return Err(MemoryBuildError::ThpUnsupportedPlatform);
            }
        }
        // 3. The RAM object: none, the existing one, or a new `guest-ram` memfd.
        let vtl2_len = layout.vtl2_range().map_or(0, |range| range.len());
        let backing_size = layout
            .ram_size()
            .checked_add(vtl2_len)
            .ok_or(MemoryBuildError::RamTooLarge(u64::MAX))?;
        let ram_object = if private {
            None
        } else if let Some(existing) = self.existing_backing {
            let size = existing
                .size()
                .map_err(MemoryBuildError::AllocationFailed)?;
            if size < backing_size {
                return Err(MemoryBuildError::ExistingBackingTooSmall {
                    size,
                    required: backing_size,
                });
            }
            if !sparse_mmap::is_open_read_write(existing.object.as_fd())
                .map_err(MemoryBuildError::AllocationFailed)?
            {
                return Err(MemoryBuildError::ExistingBackingNotWritable);
            }
            Some(existing.object)
        } else {
            let size = usize::try_from(backing_size)
                .ok()
                .filter(|&size| isize::try_from(size).is_ok())
                .ok_or(MemoryBuildError::RamTooLarge(backing_size))?;
            let object = sparse_mmap::alloc_shared_memory(size, "guest-ram")
                .map_err(MemoryBuildError::AllocationFailed)?;
            Some(Arc::new(object))
        };
        // 5. The guest address space and the alias offset (checked before the thread starts
        // so that a failure leaves nothing behind; the thread cannot fail in between).
        let end_of_layout =
            layout
                .end_of_ram_or_mmio_checked()
                .ok_or(MemoryBuildError::InvalidLayout {
                    end_of_ram: layout.end_of_ram(),
                    suggested_end: layout.end_of_ram().saturating_add(PAGE_SIZE),
                })?;
        let max_addr = end_of_layout.max(layout.vtl2_range().map_or(0, |range| range.end()));
        if let Some(offset) = self.vtl0_alias_map {
            let fits = offset % PAGE_SIZE == 0
                && offset >= max_addr
                && offset.checked_add(max_addr).is_some();
            if !fits {
                return Err(MemoryBuildError::AliasMapWontFit);
            }
        }
        // 4, 6, 7. The thread, the mapping manager and the region manager.
        let (mapping, mapping_task) = new_mapping_manager();
        // The planner needs the VA window length, which the mapper's reservation decides;
        // reserve-time rounding is deterministic, so compute it the same way.
        let window_len = va_window_len(max_addr);
        // Dirty tracking is off (and allocates nothing) until started.
        let dirty_bitmap = Arc::new(DirtyBitmap::new(window_len));
        let (regions, region_task) = {
            let config = RegionActorConfig {
                va_window_len: window_len,
                alias_offset: self.vtl0_alias_map,
                pin_mappings: self.pin_mappings,
                private,
                ram_object: ram_object.clone(),
                prefetch_progress: self.prefetch_progress.clone(),
                dirty_bitmap: dirty_bitmap.clone(),
            };
            new_region_manager(config, mapping.clone())
        };
        let (thread, stopped) =
            start_manager_thread(region_task, mapping_task).map_err(MemoryBuildError::Thread)?;
        let mut running = RunningThread {
            regions: regions.clone(),
            thread: Some(thread),
            stopped: Some(stopped),
        };
        let mapper = process_mapper(&mapping, max_addr, private)
            .await
            .map_err(MemoryBuildError::VaMapper)?;
        if mapper.len() != window_len {
            return Err(MemoryBuildError::VaMapper(VaMapperError::Reserve(
                io::Error::other(format!(
                    "the VA window is {:#x} bytes, expected {window_len:#x}",
                    mapper.len()
                )),
            )));
        }
        // 8, 9. The RAM list, with the x86 legacy split.
        let specs: Vec<RamRegionSpec> =
            vm_topology::x86_legacy::x86_legacy_ram_ranges(&layout, self.x86_legacy_support)
                .map_err(|_| MemoryBuildError::InvalidRamForX86)?
                .into_iter()
                .map(|region| RamRegionSpec {
                    range: region.range,
                    file_offset: region.file_offset,
                })
                .collect();
        // 10. Private RAM is committed in the VA window.
        if private {
            for spec in &specs {
                mapper
                    .commit_private(spec.range)
                    .map_err(|error| MemoryBuildError::PrivateRamAlloc(error, spec.range))?;
                if self.transparent_hugepages {
                    if let Err(error) = mapper.advise_hugepages(spec.range) {
                        tracing::warn!(
                            range = %spec.range,
                            error = &error as &dyn std::error::Error,
                            "transparent huge page advice failed"
                        );
                    }
                }
            }
        }
        // 11. The RAM regions.
        let ram = regions
            .create_ram(
                specs.clone(),
                ram_object.clone(),
                self.prefetch_ram && !private,
                Arc::downgrade(&mapper),
            )
            .await
            .map_err(MemoryBuildError::RegionManager)?;
        let (thread, stopped) = running.release();
        Ok(GuestMemoryManager {
            ram: Arc::new(RamRegionHandles {
                regions: ram,
                client: regions.clone(),
            }),
            regions,
            mapping,
            ram_object,
            ram_specs: specs,
            mapper: Some(mapper),
            max_addr,
            alias_offset: self.vtl0_alias_map,
            pin_mappings: self.pin_mappings,
            private,
            dirty_bitmap,
            lazy_restore: Arc::default(),
            migrations: Arc::default(),
            options: BuildOptions {
                layout,
                x86_legacy_support: self.x86_legacy_support,
                prefetch_ram: self.prefetch_ram,
                transparent_hugepages: self.transparent_hugepages,
            },
            attach_lock: Arc::new(futures::lock::Mutex::new(())),
            id: ManagerId::next(),
            thread,
            stopped,
        })
    }
}

/// The VA window length a reservation of `len` bytes gets: rounded up to 4 KiB below 2 MiB,
/// to 2 MiB below 1 GiB, and to 1 GiB above.
fn va_window_len(len: u64) -> u64 {
    const TWO_MIB: u64 = 2 << 20;
    const ONE_GIB: u64 = 1 << 30;
    let alignment = if len < TWO_MIB {
        PAGE_SIZE
    } else if len < ONE_GIB {
        TWO_MIB
    } else {
        ONE_GIB
    };
    len.checked_next_multiple_of(alignment).unwrap_or(len)
}

/// The manager thread of a build in progress: shut down if the build fails.
struct RunningThread {
    regions: RegionManagerClient,
    thread: Option<JoinHandle<()>>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl RunningThread {
    fn release(&mut self) -> (Option<JoinHandle<()>>, Option<oneshot::Receiver<()>>) {
        (self.thread.take(), self.stopped.take())
    }
}

impl Drop for RunningThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.regions.shutdown(true);
        }
    }
}

/// Starts the "memory_manager" thread running both actors; the receiver resolves when it has
/// finished.
fn start_manager_thread(
    region_task: RegionActorTask,
    mapping_task: MappingManagerTask,
) -> io::Result<(JoinHandle<()>, oneshot::Receiver<()>)> {
    let (done, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("memory_manager".into())
        .spawn(move || {
            let mut pool = futures::executor::LocalPool::new();
            let spawner = pool.spawner();
            use futures::task::LocalSpawnExt;
            let spawned = spawner
                .spawn_local(region_task.run())
                .and_then(|()| spawner.spawn_local(mapping_task.run()));
            if let Err(error) = spawned {
                tracing::error!(%error, "starting the memory manager tasks failed");
            }
            pool.run();
            drop(pool);
            let _ = done.send(());
        })?;
    Ok((thread, stopped))
}

/// The RAM regions of a manager, shared by the manager and its visibility controls; when the
/// last holder goes, the regions are removed (without waiting), like the original's region
/// handles.
#[derive(Debug)]
struct RamRegionHandles {
    regions: RamRegions,
    client: RegionManagerClient,
}

impl Drop for RamRegionHandles {
    fn drop(&mut self) {
        for (_, id) in self.regions.iter() {
            self.client.change_no_wait(Change::RemoveRegion(id));
        }
    }
}

/// Owns guest RAM, the region and mapping managers and their thread.
#[derive(Debug)]
pub struct GuestMemoryManager {
    pub(crate) regions: RegionManagerClient,
    mapping: MappingManagerClient,
    ram: Arc<RamRegionHandles>,
    pub(crate) ram_object: Option<SharedObject>,
    pub(crate) ram_specs: Vec<RamRegionSpec>,
    mapper: Option<Arc<VaMapper>>,
    max_addr: u64,
    pub(crate) alias_offset: Option<u64>,
    pub(crate) pin_mappings: bool,
    pub(crate) private: bool,
    dirty_bitmap: Arc<DirtyBitmap>,
    pub(crate) options: BuildOptions,
    /// A lazy restore still filling this manager's RAM (decommits must claim their pages).
    pub(crate) lazy_restore: Arc<parking_lot::Mutex<Option<crate::snapshot::lazy::DecommitGuard>>>,
    /// The live migrations of this manager (as source), aborted by `close`.
    pub(crate) migrations: Arc<parking_lot::Mutex<Vec<std::sync::Weak<crate::migration::Cancel>>>>,
    attach_lock: Arc<futures::lock::Mutex<()>>,
    /// Which manager holds a partition's attach claim.
    id: ManagerId,
    thread: Option<JoinHandle<()>>,
    stopped: Option<oneshot::Receiver<()>>,
}

/// A partition claimed for one attach to one manager ([`GuestMemoryManager::claim_partition`]):
/// no other attach of the partition is accepted while it, or a partition mapper registered
/// with it, exists.
#[derive(Debug)]
pub struct PartitionClaim {
    claim: Arc<AttachClaim>,
}

/// What a manager holds of the process's limited resources while it is open: descriptors (the
/// RAM memfd), threads (the manager's own and its VA mapper's) and address-space reservations
/// (the VA mapper's window, and the RAM mapping in private mode). A runtime whose garbage
/// collector sees only a small handle object uses it to say what an unreachable manager costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceFootprint {
    /// Open file descriptors.
    pub descriptors: u32,
    /// Threads.
    pub threads: u32,
    /// Address-space reservations (each one or more `mmap`s).
    pub reservations: u32,
}

/// What the manager was built from, beyond what it keeps for its own work (for snapshots).
#[derive(Debug, Clone)]
pub(crate) struct BuildOptions {
    pub layout: MemoryLayout,
    pub x86_legacy_support: bool,
    pub prefetch_ram: bool,
    pub transparent_hugepages: bool,
}

impl GuestMemoryManager {
    pub(crate) fn mapper(&self) -> &Arc<VaMapper> {
        self.mapper
            .as_ref()
            .expect("the mapper is only taken by close, which consumes the manager")
    }

    /// What this manager holds of the process's limited resources (see [`ResourceFootprint`]).
    pub fn footprint(&self) -> ResourceFootprint {
        ResourceFootprint {
            descriptors: u32::from(self.ram_object.is_some()),
            threads: u32::from(self.thread.is_some()) + u32::from(self.mapper.is_some()),
            reservations: u32::from(self.mapper.is_some()) + u32::from(self.private),
        }
    }

    /// A handle from which guest-memory accessors are obtained.
    pub fn client(&self) -> GuestMemoryClient {
        GuestMemoryClient {
            mapping: self.mapping.clone(),
            max_addr: self.max_addr,
            private: self.private,
            dirty_bitmap: self.dirty_bitmap.clone(),
        }
    }

    /// Opt-in dirty tracking of guest RAM (off until started; see [`DirtyTracking`]).
    pub fn dirty_tracking(&self) -> DirtyTracking {
        DirtyTracking::new(self.regions.clone(), self.dirty_bitmap.clone())
    }

    /// A creator of device memory windows (cheap; any number).
    pub fn device_memory_mapper(&self) -> DeviceMemoryMapper {
        DeviceMemoryMapper::new(self.regions.clone())
    }

    /// The control of RAM region visibility (keeps the RAM regions alive).
    pub fn ram_visibility_control(&self) -> RamVisibilityControl {
        RamVisibilityControl {
            regions: self.regions.clone(),
            ram: self.ram.clone(),
        }
    }

    /// The RAM object (the same object, not a copy), or `None` in private mode. See
    /// [`SharedMemoryBacking`] for the one-manager-at-a-time rule.
    pub fn shared_memory_backing(&self) -> Option<SharedMemoryBacking> {
        self.ram_object.as_ref().map(|object| SharedMemoryBacking {
            object: object.clone(),
        })
    }

    /// Maps every active region into `partition` and keeps it in step from now on:
    /// for [`Vtl::Vtl2`] with an alias offset, first at the alias offset, then at offset 0. A
    /// failure of the second step leaves the first registered (no rollback, as the original).
    ///
    /// A partition is attached once: one already attached to this manager (at any VTL, also
    /// by a VTL2 attach that failed after the alias step) or to another open manager is refused
    /// with [`PartitionAttachError::AlreadyAttached`] before any partition call. A failed attach
    /// that registered nothing leaves the partition free to attach again.
    ///
    /// The manager holds the partition weakly: once the last `Arc` is dropped it is skipped.
    /// `process` names a remote process to host the VA mapper; that is unsupported here.
    pub fn attach_partition(
        &self,
        vtl: Vtl,
        partition: &Arc<dyn PartitionMemoryMap>,
        process: Option<RemoteProcess>,
    ) -> impl Future<Output = Result<(), PartitionAttachError>> + Send + 'static {
        let attach = self
            .claim_partition(partition)
            .map(|claim| self.attach_claimed_partition(vtl, claim, process));
        async move { attach?.await }
    }

    /// The first half of [`attach_partition`](Self::attach_partition): claims `partition` for
    /// this manager, or refuses it (`AlreadyAttached`) if it is attached already. Dropping the
    /// claim without attaching releases it.
    pub fn claim_partition(
        &self,
        partition: &Arc<dyn PartitionMemoryMap>,
    ) -> Result<PartitionClaim, PartitionAttachError> {
        AttachClaim::take(partition, self.id)
            .map(|claim| PartitionClaim { claim })
            .map_err(PartitionAttachError::AlreadyAttached)
    }

    /// The second half of [`attach_partition`](Self::attach_partition): attaches the partition
    /// `claim` holds (a claim of another manager is refused with `AlreadyAttached`).
    pub fn attach_claimed_partition(
        &self,
        vtl: Vtl,
        claim: PartitionClaim,
        process: Option<RemoteProcess>,
    ) -> impl Future<Output = Result<(), PartitionAttachError>> + Send + 'static {
        let claim = claim.claim;
        let foreign_claim = claim.holder() != self.id;
        let regions = self.regions.clone();
        let mapper = self.mapper().clone();
        let alias = if vtl == Vtl::Vtl2 {
            self.alias_offset
        } else {
            None
        };
        let pin_mappings = self.pin_mappings;
        let attach_lock = self.attach_lock.clone();
        async move {
            if foreign_claim {
                return Err(PartitionAttachError::AlreadyAttached(
                    AttachedTo::AnotherManager,
                ));
            }
            if process.is_some() {
                return Err(PartitionAttachError::Unsupported);
            }
            let _exclusive = attach_lock.lock().await;
            let offsets = alias.into_iter().chain([0]);
            for offset in offsets {
                let info = PartitionMapperInfo {
                    offset,
                    pin_mappings,
                };
                // Each registered mapper keeps the claim; if none is, it ends with this attach.
                regions
                    .add_partition(info, claim.clone(), mapper.clone())
                    .await
                    .map_err(|error| match error {
                        RegionManagerError::PartitionMapper(error) => {
                            PartitionAttachError::PartitionMapper(error)
                        }
                        other => PartitionAttachError::Manager(other),
                    })?;
            }
            Ok(())
        }
    }

    /// Releases the RAM pages of `range` (page-aligned, inside RAM): private RAM reads back as
    /// zeros; file-backed RAM has a hole punched in the RAM object (every view reads zeros).
    /// The request is sent when this is called: it is carried out in call order with the other
    /// requests sent that way (device-window operations, dirty tracking), whenever the future is
    /// first polled.
    pub fn decommit_ram(
        &self,
        range: MemoryRange,
    ) -> impl Future<Output = Result<(), RegionManagerError>> + Send + 'static {
        if let Some(lazy) = self.lazy_restore.lock().clone() {
            // A lazy restore must not fill these pages from the snapshot afterwards.
            lazy.claim(range);
        }
        self.regions.decommit(range)
    }

    /// The snapshot of regions, mappings and mappers.
    pub fn inspect(
        &self,
    ) -> impl Future<Output = Result<ManagerSnapshot, RegionManagerError>> + Send + 'static {
        self.regions.inspect()
    }

    /// The flat view: what the guest sees, piece by piece (the dry-run planner's view).
    pub fn flat_view(
        &self,
    ) -> impl Future<Output = Result<Vec<FlatEntry<SharedObject>>, RegionManagerError>> + Send + 'static
    {
        self.regions.flat_view()
    }

    /// Dry run of a visibility change: the operations it would carry out and the flat view it
    /// would leave; nothing is applied.
    pub fn plan_ram_visibility(
        &self,
        range: MemoryRange,
        visibility: RamVisibility,
    ) -> impl Future<Output = Result<PlanPreview, RegionManagerError>> + Send + 'static {
        let preview = self
            .ram
            .regions
            .change_for(range, visibility)
            .map(|(change, cause)| self.regions.preview(PreviewChange::Change(change, cause)));
        async move {
            preview?.await.map_err(|error| match error {
                PreviewError::Region(error) => error,
                // Only device previews produce I/O errors; a region change cannot.
                PreviewError::Io(_) => RegionManagerError::ManagerGone,
            })
        }
    }

    /// Dry run of [`GuestMemoryManager::attach_partition`]: the partition calls attaching
    /// `partition` at `vtl` would make (for VTL2 with an alias offset, the alias mapper first);
    /// the new partition's index is the number of partition mappers registered so far. The
    /// partition is only asked which slots the calls would change. A partition attached already
    /// is refused with `AlreadyAttached`, as the attach would refuse it.
    pub fn plan_attach_partition(
        &self,
        vtl: Vtl,
        partition: &Arc<dyn PartitionMemoryMap>,
    ) -> impl Future<Output = Result<PlanPreview, PartitionAttachError>> + Send + 'static {
        // A partition attached already is refused as `attach_partition` would refuse it.
        let unclaimed = AttachClaim::check(partition, self.id);
        let weak = Arc::downgrade(partition);
        let alias = if vtl == Vtl::Vtl2 {
            self.alias_offset
        } else {
            None
        };
        let infos = alias
            .into_iter()
            .chain([0])
            .map(|offset| PartitionMapperInfo {
                offset,
                pin_mappings: self.pin_mappings,
            })
            .collect();
        let preview = unclaimed.map(|()| self.regions.preview(PreviewChange::Attach(infos, weak)));
        async move {
            preview
                .map_err(PartitionAttachError::AlreadyAttached)?
                .await
                .map_err(|error| match error {
                    PreviewError::Region(error) => PartitionAttachError::Manager(error),
                    PreviewError::Io(_) => {
                        PartitionAttachError::Manager(RegionManagerError::ManagerGone)
                    }
                })
        }
    }

    /// The base address of this process's VA window (for relating partition VAs to GPAs).
    pub fn va_window_base(&self) -> usize {
        self.mapper().base() as usize
    }

    /// The length `L` of the VA window (valid accessor addresses are `[0, L)`).
    pub fn va_window_len(&self) -> u64 {
        self.mapper().len()
    }

    /// The end of the guest address space (`max_addr`).
    pub fn max_addr(&self) -> u64 {
        self.max_addr
    }

    /// The RAM regions as built: each range and its offset in the RAM object.
    pub fn ram_regions(&self) -> Vec<(MemoryRange, u64)> {
        self.ram_specs
            .iter()
            .map(|spec| (spec.range, spec.file_offset))
            .collect()
    }

    /// This process's VA mapper (the one every accessor of this manager uses).
    pub fn va_mapper(&self) -> Arc<VaMapper> {
        self.mapper().clone()
    }

    /// Full teardown: both actors stop (queued work first), every live partition gets its
    /// whole-window unmaps, VA mappers are told the manager is gone (their windows become
    /// inaccessible except locked pages), and the RAM object and threads are released. Resolves
    /// when the manager thread has exited. Objects obtained from the manager then fail with
    /// `ManagerGone` (accessors: kind `OutOfRange`).
    ///
    /// A lazy restore still filling RAM serves faults until the VA mappers have been told the
    /// manager is gone (an access racing the close reads the snapshot's data or fails, never
    /// the zeros of a page not filled yet); then it is stopped: its threads are joined and its
    /// userfaultfd and snapshot files closed before the future resolves (pages it had not
    /// filled read as zeros to whoever still holds the RAM object).
    pub fn close(mut self) -> impl Future<Output = ()> + Send + 'static {
        let lazy_restore = self.lazy_restore.lock().take();
        if let Some(lazy) = &lazy_restore {
            lazy.manager_closing();
        }
        // A migration waiting for its peer would otherwise wait for ever (or until the peer
        // answers): it fails with `ManagerGone`.
        for migration in self.migrations.lock().drain(..) {
            if let Some(cancel) = migration.upgrade() {
                cancel.manager_closed();
            }
        }
        self.regions.shutdown(true);
        let thread = self.thread.take();
        let stopped = self.stopped.take();
        drop(self);
        async move {
            if let Some(stopped) = stopped {
                let _ = stopped.await;
            }
            if let Some(thread) = thread {
                // The thread signalled that it is finishing; this join is immediate.
                let _ = thread.join();
            }
            if let Some(lazy) = lazy_restore {
                lazy.cancel().await;
            }
        }
    }
}

/// A handle to obtain guest-memory accessors (cheap to clone; `Send`).
#[derive(Debug, Clone)]
pub struct GuestMemoryClient {
    mapping: MappingManagerClient,
    max_addr: u64,
    private: bool,
    dirty_bitmap: Arc<DirtyBitmap>,
}

impl GuestMemoryClient {
    /// The accessor `ram` over this process's VA mapper for the manager, creating the mapper on
    /// first use; every call in a process shares the one mapper.
    pub fn guest_memory(
        &self,
    ) -> impl Future<Output = Result<GuestMemory, VaMapperError>> + Send + 'static {
        let mapping = self.mapping.clone();
        let max_addr = self.max_addr;
        let private = self.private;
        let dirty = self.dirty_bitmap.clone();
        async move {
            let mapper = process_mapper(&mapping, max_addr, private).await?;
            if mapper.is_closed() {
                return Err(VaMapperError::MemoryManagerGone(crate::ManagerGone));
            }
            let sharing = (!private).then_some(mapping);
            Ok(GuestMemory::new(
                "ram",
                MapperBacking::new(mapper, sharing, dirty),
            ))
        }
    }

    /// A VA mapper of its own, not shared through the per-process cache (for tests of several
    /// mappers in one process).
    #[cfg(test)]
    pub(crate) async fn uncached_mapper(&self) -> Result<Arc<VaMapper>, VaMapperError> {
        Ok(Arc::new(
            VaMapper::new(self.mapping.clone(), self.max_addr, self.private).await?,
        ))
    }
}

/// Changes the visibility of RAM regions. Holding it keeps the RAM regions alive.
#[derive(Debug, Clone)]
pub struct RamVisibilityControl {
    regions: RegionManagerClient,
    ram: Arc<RamRegionHandles>,
}

impl RamVisibilityControl {
    /// Maps the RAM region whose range equals `range` read-write or read-only, or unmaps it;
    /// anything but an exact RAM region is `InvalidRamRegion`.
    pub fn set_ram_visibility(
        &self,
        range: MemoryRange,
        visibility: RamVisibility,
    ) -> impl Future<Output = Result<(), RegionManagerError>> + Send + 'static {
        let change = self
            .ram
            .regions
            .change_for(range, visibility)
            .map(|(change, cause)| self.regions.change(change, Some(cause)));
        async move { change?.await.map(drop) }
    }
}
