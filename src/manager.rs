//! Binding of `membacking`'s memory manager: `GuestMemoryBuilder.build`, `GuestMemoryManager`,
//! `GuestMemoryClient`, `RamVisibilityControl`, `SharedMemoryBacking` and device windows.
//!
//! Every manager operation is a future that completes when the manager's threads answer; each
//! becomes a Promise (`promise`). Requests that only wait for a reply are polled inline (one
//! thread round trip); the others on the executor's threads.

use crate::args::host_size;
use crate::args::U64;
use crate::errors::throw;
use crate::errors::OrThrow;
use crate::external::ExternalCharge;
use crate::guest_memory::Hooks;
use crate::guest_memory::NativeGuestMemory;
use crate::handles::open;
use crate::handles::Shared;
use crate::handles::HANDLES;
use crate::layout::NativeLayout;
use crate::partition::attachable;
use crate::partition::measure_va_from;
use crate::partition::AnyPartition;
use crate::progress::prefetch_progress;
use crate::promise::promise;
use crate::sparse_mapping::NativeMappable;
use js_api::args::number_member;
use js_api::args::one_range;
use js_api::args::string_member;
use js_api::errors::decommit_error;
use js_api::errors::memory_build_error;
use js_api::executor::Polling;
use js_api::external_memory;
use js_api::json::to_json;
use js_api::views::ManagerSnapshotView;
use js_api::views::RamRegionView;
use js_api::JsError;
use js_api::ToJsError;
use membacking::DeviceMemoryMapper;
use membacking::GuestMemoryBuilder;
use membacking::GuestMemoryClient;
use membacking::GuestMemoryManager;
use membacking::MappableGuestMemory;
use membacking::MappedMemoryRegion;
use membacking::RamVisibilityControl;
use membacking::RemoteProcess;
use membacking::SharedMemoryBacking;
use memory_range::MemoryRange;
use napi::bindgen_prelude::BigUint64Array;
use napi::bindgen_prelude::Function;
use napi::bindgen_prelude::Object;
use napi::bindgen_prelude::ObjectFinalize;
use napi::Env;
use napi_derive::napi;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A Promise for a future with a core error `E`, resolving to nothing.
pub(crate) fn settle<'env, E: ToJsError>(
    env: &'env Env,
    polling: Polling,
    future: impl Future<Output = Result<(), E>> + Send + 'static,
) -> napi::Result<Object<'env>> {
    promise(
        env,
        polling,
        async move { future.await.map_err(|error| error.to_js_error()) },
        |_env, ()| Ok(()),
    )
}

/// The guest-RAM object of a manager.
#[napi]
pub struct NativeSharedMemoryBacking {
    inner: Option<SharedMemoryBacking>,
}

#[napi]
impl NativeSharedMemoryBacking {
    /// Wraps a memory object received from another process.
    #[napi(factory)]
    pub fn from_mappable(mappable: &NativeMappable) -> napi::Result<Self> {
        let owned = sparse_mmap::mappable_from_fd(mappable.fd()?)
            .map_err(|error| throw(JsError::os(&error, "fcntl")))?;
        Ok(NativeSharedMemoryBacking {
            inner: Some(SharedMemoryBacking::from_mappable(owned)),
        })
    }

    /// The underlying object (the same one, not a copy).
    #[napi]
    pub fn mappable(&self) -> napi::Result<NativeMappable> {
        let backing = self
            .inner
            .as_ref()
            .ok_or_else(|| throw(JsError::closed("SharedMemoryBacking")))?;
        Ok(NativeMappable::from_shared(backing.shared_object()))
    }

    /// Drops this reference.
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
    }
}

/// Builds a manager (`GuestMemoryBuilder::build`) with the collected options.
#[allow(clippy::too_many_arguments, reason = "one argument per builder option")]
#[napi(ts_return_type = "Promise<NativeGuestMemoryManager>")]
pub fn build_guest_memory<'env>(
    env: &'env Env,
    layout: &NativeLayout,
    existing_backing: Option<&NativeSharedMemoryBacking>,
    vtl0_alias_map: Option<U64>,
    prefetch_ram: bool,
    pin_mappings: bool,
    x86_legacy_support: bool,
    private_memory: bool,
    transparent_hugepages: bool,
    on_prefetch_progress: Option<Function<'env, String, ()>>,
) -> napi::Result<Object<'env>> {
    let progress = on_prefetch_progress.map(prefetch_progress).transpose()?;
    let backing = existing_backing
        .map(|backing| {
            backing
                .inner
                .clone()
                .ok_or_else(|| throw(JsError::closed("SharedMemoryBacking")))
        })
        .transpose()?;
    let (alias, built_layout) = (
        vtl0_alias_map.map(|offset| offset.0),
        layout.layout().clone(),
    );
    let build = GuestMemoryBuilder::new()
        .existing_backing(backing)
        .vtl0_alias_map(alias)
        .prefetch_ram(prefetch_ram)
        .pin_mappings(pin_mappings)
        .x86_legacy_support(x86_legacy_support)
        .private_memory(private_memory)
        .transparent_hugepages(transparent_hugepages)
        .prefetch_progress(progress)
        .build(layout.layout());
    promise(
        env,
        Polling::Pool,
        async move {
            build
                .await
                .map_err(|error| memory_build_error(&error, alias, &built_layout))
        },
        |env, manager| Ok(NativeGuestMemoryManager::wrap(&env, manager)),
    )
}

/// The memory manager.
#[napi(custom_finalize)]
pub struct NativeGuestMemoryManager {
    inner: Option<GuestMemoryManager>,
    /// What V8 was told this manager holds, returned on close or finalization.
    charge: ExternalCharge,
}

impl ObjectFinalize for NativeGuestMemoryManager {
    fn finalize(self, env: Env) -> napi::Result<()> {
        self.charge.release(&env);
        Ok(())
    }
}

impl NativeGuestMemoryManager {
    /// Wraps a manager the core built (a build or a restore), telling V8 what it holds.
    pub(crate) fn wrap(env: &Env, manager: GuestMemoryManager) -> Self {
        let charge = ExternalCharge::new(env, external_memory::charge(manager.footprint()));
        NativeGuestMemoryManager {
            inner: Some(manager),
            charge,
        }
    }

    /// The manager, or `ERR_MANAGER_GONE` after `close()`.
    pub(crate) fn manager(&self) -> napi::Result<&GuestMemoryManager> {
        self.inner
            .as_ref()
            .ok_or_else(|| throw(JsError::manager_gone()))
    }
}

#[napi]
impl NativeGuestMemoryManager {
    /// A client for guest memory accessors.
    #[napi]
    pub fn client(&self) -> napi::Result<NativeGuestMemoryClient> {
        Ok(NativeGuestMemoryClient::wrap(self.manager()?.client()))
    }

    /// A creator of device windows.
    #[napi]
    pub fn device_memory_mapper(&self) -> napi::Result<NativeDeviceMemoryMapper> {
        Ok(NativeDeviceMemoryMapper {
            inner: Some(self.manager()?.device_memory_mapper()),
        })
    }

    /// The control of RAM visibility.
    #[napi]
    pub fn ram_visibility_control(&self) -> napi::Result<NativeRamVisibilityControl> {
        Ok(NativeRamVisibilityControl {
            inner: Some(self.manager()?.ram_visibility_control()),
        })
    }

    /// The RAM object, or `null` in private mode.
    #[napi]
    pub fn shared_memory_backing(&self) -> napi::Result<Option<NativeSharedMemoryBacking>> {
        Ok(self
            .manager()?
            .shared_memory_backing()
            .map(|backing| NativeSharedMemoryBacking {
                inner: Some(backing),
            }))
    }

    /// Attaches a partition (`vtl`: a `Vtl` number).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn attach_partition<'env>(
        &self,
        env: &'env Env,
        vtl: u32,
        #[napi(ts_arg_type = "NativeRecordingPartition | NativeKvmPartition")]
        partition: AnyPartition,
        remote_process: Option<u32>,
    ) -> napi::Result<Object<'env>> {
        let manager = self.manager()?;
        let vtl = number_member(vtl, "vtl").or_throw()?;
        let target = attachable(&partition)?;
        // Claimed before anything touches the partition: a refused attach changes nothing.
        let claim = manager.claim_partition(&target);
        if claim.is_ok() {
            measure_va_from(&partition, manager);
        }
        let attach = claim.map(|claim| {
            manager.attach_claimed_partition(vtl, claim, remote_process.map(RemoteProcess))
        });
        let attach = async move {
            let result = match attach {
                Ok(attach) => attach.await,
                Err(refused) => Err(refused),
            };
            // The manager holds partitions weakly; the JavaScript object keeps them alive.
            drop(target);
            result
        };
        settle(env, Polling::Pool, attach)
    }

    /// Releases the RAM pages of `range` (`[start, end]`).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn decommit_ram<'env>(
        &self,
        env: &'env Env,
        range: BigUint64Array,
    ) -> napi::Result<Object<'env>> {
        let range = one_range(&range, "range").or_throw()?;
        let manager = self.manager()?;
        let ram: Vec<MemoryRange> = manager.ram_regions().into_iter().map(|(r, _)| r).collect();
        let run = manager.decommit_ram(range);
        let run = async move {
            run.await
                .map_err(|error| decommit_error(&error, range, &ram))
        };
        promise(env, Polling::Pool, run, |_env, ()| Ok(()))
    }

    /// The snapshot of regions, mappings and mappers (JSON).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn inspect<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let inspect = self.manager()?.inspect();
        promise(
            env,
            Polling::Inline,
            async move {
                let snapshot = inspect.await.map_err(|error| error.to_js_error())?;
                Ok(to_json(&ManagerSnapshotView::from(&snapshot)))
            },
            |_env, json| Ok(json),
        )
    }

    /// The RAM regions as built (JSON `[{range, fileOffset}]`).
    #[napi]
    pub fn ram_regions(&self) -> napi::Result<String> {
        Ok(to_json(&RamRegionView::list(self.manager()?.ram_regions())))
    }

    /// Full teardown; resolves when the manager thread has exited.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&mut self, env: &'env Env) -> napi::Result<Object<'env>> {
        self.charge.release(env);
        let close = self.inner.take().map(GuestMemoryManager::close);
        let closed = async move {
            if let Some(close) = close {
                close.await;
            }
            Ok::<(), JsError>(())
        };
        promise(env, Polling::Pool, closed, |_env, ()| Ok(()))
    }
}

/// A transferable handle to the mapping manager.
#[napi]
pub struct NativeGuestMemoryClient {
    inner: Option<GuestMemoryClient>,
}

impl NativeGuestMemoryClient {
    fn wrap(client: GuestMemoryClient) -> Self {
        NativeGuestMemoryClient {
            inner: Some(client),
        }
    }

    fn client(&self) -> napi::Result<&GuestMemoryClient> {
        self.inner
            .as_ref()
            .ok_or_else(|| throw(JsError::closed("GuestMemoryClient")))
    }
}

#[napi]
impl NativeGuestMemoryClient {
    /// This process's accessor over the one lazy VA mapper.
    #[napi(ts_return_type = "Promise<NativeGuestMemory>")]
    pub fn guest_memory<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let memory = self.client()?.guest_memory();
        promise(
            env,
            Polling::Pool,
            async move { memory.await.map_err(|error| error.to_js_error()) },
            |_env, memory| Ok(NativeGuestMemory::wrap(memory, Hooks::None)),
        )
    }

    /// A handle id for `fromHandle` in a worker thread.
    #[napi]
    pub fn to_handle(&self) -> napi::Result<u64> {
        Ok(HANDLES.register(Shared::Client(self.client()?.clone())))
    }

    /// Reopens a client from a handle.
    #[napi(factory)]
    pub fn from_handle(id: U64) -> napi::Result<Self> {
        let client = open(id.0, "GuestMemoryClient", |shared| match shared {
            Shared::Client(client) => Some(client),
            _ => None,
        })?;
        Ok(Self::wrap(client))
    }

    /// Drops this reference.
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
    }
}

/// Changes RAM region visibility.
#[napi]
pub struct NativeRamVisibilityControl {
    inner: Option<RamVisibilityControl>,
}

#[napi]
impl NativeRamVisibilityControl {
    /// `range` (`[start, end]`) must equal one RAM region; `visibility` is a `RamVisibility`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_ram_visibility<'env>(
        &self,
        env: &'env Env,
        range: BigUint64Array,
        visibility: String,
    ) -> napi::Result<Object<'env>> {
        let control = self
            .inner
            .as_ref()
            .ok_or_else(|| throw(JsError::closed("RamVisibilityControl")))?;
        let range = one_range(&range, "range").or_throw()?;
        let visibility = string_member(&visibility, "visibility").or_throw()?;
        settle(
            env,
            Polling::Inline,
            control.set_ram_visibility(range, visibility),
        )
    }

    /// Drops this reference.
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
    }
}

/// Creates device windows.
#[napi]
pub struct NativeDeviceMemoryMapper {
    inner: Option<DeviceMemoryMapper>,
}

#[napi]
impl NativeDeviceMemoryMapper {
    /// A window of `len` bytes: its placement half and its mapping half.
    #[napi]
    pub fn new_region(
        &self,
        len: U64,
        debug_name: String,
    ) -> napi::Result<Vec<NativeDeviceWindowHalf>> {
        let mapper = self
            .inner
            .as_ref()
            .ok_or_else(|| throw(JsError::closed("DeviceMemoryMapper")))?;
        let (control, region) = mapper
            .new_region(host_size(len, "len")?, debug_name)
            .map_err(|error| throw(JsError::device_window(&error)))?;
        Ok(vec![
            NativeDeviceWindowHalf::control_half(control),
            NativeDeviceWindowHalf::region_half(region),
        ])
    }

    /// Drops this reference.
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
    }
}

/// One half of a device window: the placement (`control`) or the mapping half (`region`).
#[napi]
pub struct NativeDeviceWindowHalf {
    control: Option<MappableGuestMemory>,
    region: Option<Arc<MappedMemoryRegion>>,
    /// The public class of this half, for the error of a closed one.
    class: &'static str,
}

impl NativeDeviceWindowHalf {
    /// A placement half (of a window a restore recreated).
    pub(crate) fn control_half(control: MappableGuestMemory) -> Self {
        NativeDeviceWindowHalf {
            control: Some(control),
            region: None,
            class: "DeviceMemoryControl",
        }
    }

    /// A mapping half (of a window a restore recreated).
    pub(crate) fn region_half(region: Arc<MappedMemoryRegion>) -> Self {
        NativeDeviceWindowHalf {
            control: None,
            region: Some(region),
            class: "DeviceMemoryRegion",
        }
    }

    /// The placement half.
    pub(crate) fn control(&self) -> napi::Result<&MappableGuestMemory> {
        self.control
            .as_ref()
            .ok_or_else(|| throw(JsError::closed("DeviceMemoryControl")))
    }

    /// The mapping half.
    pub(crate) fn region(&self) -> napi::Result<&Arc<MappedMemoryRegion>> {
        self.region
            .as_ref()
            .ok_or_else(|| throw(JsError::closed("DeviceMemoryRegion")))
    }

    /// `ERR_CLOSED` naming this half's own class (`DeviceMemoryControl` or `DeviceMemoryRegion`).
    pub(crate) fn closed_error(&self) -> napi::Error {
        throw(JsError::closed(self.class))
    }
}

/// A Promise for a device window operation (an `io::Error` on failure).
fn device<'env>(
    env: &'env Env,
    run: impl Future<Output = std::io::Result<()>> + Send + 'static,
) -> napi::Result<Object<'env>> {
    let run = async move { run.await.map_err(|error| JsError::device_window(&error)) };
    promise(env, Polling::Pool, run, |_env, ()| Ok(()))
}

#[napi]
impl NativeDeviceWindowHalf {
    /// The window length.
    #[napi(getter)]
    pub fn len(&self) -> napi::Result<u64> {
        match (&self.control, &self.region) {
            (Some(control), _) => Ok(control.len()),
            (None, Some(region)) => Ok(region.len()),
            (None, None) => Err(throw(JsError::closed(self.class))),
        }
    }

    /// Places the window at `gpa` (replacing an earlier placement).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn map_to_guest<'env>(
        &self,
        env: &'env Env,
        gpa: U64,
        writable: bool,
    ) -> napi::Result<Object<'env>> {
        let run = self.control()?.map_to_guest(gpa.0, writable);
        let run = async move { run.await.map_err(|error| JsError::map_to_guest(&error)) };
        promise(env, Polling::Pool, run, |_env, ()| Ok(()))
    }

    /// Removes the placement; recorded mappings are kept.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn unmap_from_guest<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let run = self.control()?.unmap_from_guest();
        device(env, async move {
            run.await;
            Ok(())
        })
    }

    /// Maps `len` bytes of `object` at `file_offset` to window `offset`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn map<'env>(
        &self,
        env: &'env Env,
        offset: U64,
        object: &NativeMappable,
        file_offset: U64,
        len: U64,
        writable: bool,
    ) -> napi::Result<Object<'env>> {
        let (offset, len) = (host_size(offset, "offset")?, host_size(len, "len")?);
        device(
            env,
            self.region()?
                .map_object(offset, object.shared()?, file_offset.0, len, writable),
        )
    }

    /// Removes the mappings inside `[offset, offset + len)`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn unmap<'env>(&self, env: &'env Env, offset: U64, len: U64) -> napi::Result<Object<'env>> {
        let (offset, len) = (host_size(offset, "offset")?, host_size(len, "len")?);
        device(env, self.region()?.unmap(offset, len))
    }

    /// Releases this half; the window goes when both halves are closed. Resolves once the
    /// manager has served the removal (if this was the last half).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&mut self, env: &'env Env) -> napi::Result<Object<'env>> {
        let settled: Option<Pin<Box<dyn Future<Output = ()> + Send>>> =
            match (&self.control, &self.region) {
                (Some(control), _) => Some(Box::pin(control.settled())),
                (None, Some(region)) => Some(Box::pin(region.settled())),
                (None, None) => None,
            };
        self.control = None;
        self.region = None;
        device(env, async move {
            if let Some(settled) = settled {
                settled.await;
            }
            Ok(())
        })
    }
}
