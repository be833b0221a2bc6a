//! Binding of `membacking`'s memory manager: `GuestMemoryBuilder.build`, `GuestMemoryManager`,
//! `GuestMemoryClient`, `RamVisibilityControl`, `SharedMemoryBacking` and device windows.
//!
//! Every manager operation is a future that completes when the manager's threads answer; each
//! becomes a Promise through `promise::promise`, so the JavaScript thread never waits for a
//! manager. Errors keep their whole source chain: the top error's code comes from its variant
//! name and each source becomes a nested `cause`.

use crate::args::{usize_arg, U64};
use crate::errors::{closed, coded_with, invalid_arg, json_string, screaming_snake, JsError};
use crate::guest_memory::NativeGuestMemory;
use crate::handles::{self, Shared};
use crate::layout::NativeLayout;
use crate::partition::NativeRecordingPartition;
use crate::promise::promise;
use crate::sparse_mapping::NativeMappable;
use membacking::{
    DeviceMemoryMapper, GuestMemoryBuilder, GuestMemoryClient, GuestMemoryManager,
    MappableGuestMemory, MappedMemoryRegion, MemoryBuildError, PartitionAttachError, RamVisibility,
    RamVisibilityControl, RegionManagerError, RemoteProcess, SharedMemoryBacking, VaMapperError,
};
use memory_range::MemoryRange;
use napi::bindgen_prelude::{BigUint64Array, Object};
use napi::Env;
use napi_derive::napi;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use virt::{PartitionMemoryMap, Vtl};

/// Promises for short manager requests, polled where they are woken.
///
/// `promise::promise` runs a future on its executor thread: the JavaScript thread wakes that
/// thread, which sends the request and later wakes the JavaScript thread with the answer — two
/// thread round trips for one manager request. A request whose future only sends a message and
/// awaits its reply does not need the executor: [`reply_promise`] polls it once on the
/// JavaScript thread (which sends the request) and from then on on whichever thread wakes it —
/// the manager thread, as it sends the reply — so the answer travels straight to the JavaScript
/// thread: one round trip.
///
/// Only futures whose remaining work after each wake-up is non-blocking and short (reading a
/// reply, converting an error, queueing the settlement) may use it: they then run on the
/// manager thread, which must never block (spec §1).
mod reply {
    use crate::errors::{into_status_error, JsError};
    use futures::future::BoxFuture;
    use futures::task::{waker_ref, ArcWake};
    use napi::bindgen_prelude::{Object, ToNapiValue};
    use napi::Env;
    use parking_lot::Mutex;
    use std::future::Future;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;
    use std::task::Context;

    const IDLE: u8 = 0;
    const POLLING: u8 = 1;
    const WOKEN_WHILE_POLLING: u8 = 2;

    /// A future polled by the thread that wakes it; at most one thread polls at a time.
    struct InlineTask {
        future: Mutex<Option<BoxFuture<'static, ()>>>,
        state: AtomicU8,
    }

    impl InlineTask {
        fn run(self: &Arc<Self>) {
            // Become the poller, or tell the current poller to poll once more.
            loop {
                match self.state.compare_exchange(
                    IDLE,
                    POLLING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(POLLING) => {
                        if self
                            .state
                            .compare_exchange(
                                POLLING,
                                WOKEN_WHILE_POLLING,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                        {
                            return;
                        }
                    }
                    Err(_) => return, // already marked to poll again
                }
            }
            loop {
                {
                    let waker = waker_ref(self);
                    let mut context = Context::from_waker(&waker);
                    let mut slot = self.future.lock();
                    if let Some(future) = slot.as_mut() {
                        if future.as_mut().poll(&mut context).is_ready() {
                            *slot = None;
                        }
                    }
                }
                if self
                    .state
                    .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                // Woken while polling: poll again.
                self.state.store(POLLING, Ordering::Release);
            }
        }
    }

    impl ArcWake for InlineTask {
        fn wake_by_ref(task: &Arc<Self>) {
            task.run();
        }
    }

    /// A Promise for `future`, polled inline as described in the module docs; `convert` turns
    /// its value into a JavaScript value on the JavaScript thread.
    pub fn reply_promise<'env, T, R>(
        env: &'env Env,
        future: impl Future<Output = Result<T, JsError>> + Send + 'static,
        convert: impl FnOnce(Env, T) -> napi::Result<R> + Send + 'static,
    ) -> Result<Object<'env>, JsError>
    where
        T: Send + 'static,
        R: ToNapiValue + 'static,
    {
        let (deferred, promise) = env
            .create_deferred()
            .map_err(|err| crate::errors::coded("ERR_PANIC", err.reason))?;
        let task = Arc::new(InlineTask {
            future: Mutex::new(Some(Box::pin(async move {
                match future.await {
                    Ok(value) => deferred.resolve(move |env| convert(env, value)),
                    Err(err) => deferred.reject(into_status_error(err)),
                }
            }))),
            state: AtomicU8::new(IDLE),
        });
        task.run();
        Ok(promise)
    }
}

use reply::reply_promise;

/// The class a JavaScript error of this Rust error type belongs to.
fn class_of(err: &(dyn StdError + 'static)) -> Option<&'static str> {
    if err.is::<MemoryBuildError>() {
        Some("MemoryBuildError")
    } else if err.is::<PartitionAttachError>() {
        Some("PartitionAttachError")
    } else if err.is::<membacking::PartitionMapperError>() {
        Some("PartitionMapperError")
    } else if err.is::<VaMapperError>() {
        Some("VaMapperError")
    } else if err.is::<RegionManagerError>()
        || err.is::<membacking::OverlapError>()
        || err.is::<membacking::InvalidRamRegion>()
        || err.is::<membacking::NoMapping>()
        || err.is::<membacking::ManagerGone>()
    {
        Some("MemoryManagerError")
    } else {
        #[cfg(target_arch = "x86_64")]
        if err.is::<virt_kvm::KvmError>() {
            return Some("KvmError");
        }
        None
    }
}

/// Unwraps the transparent wrapper variants, whose own message and source are the inner
/// error's.
fn unwrap_transparent<'a>(err: &'a (dyn StdError + 'static)) -> &'a (dyn StdError + 'static) {
    if let Some(MemoryBuildError::RegionManager(inner)) = err.downcast_ref::<MemoryBuildError>() {
        return inner;
    }
    if let Some(PartitionAttachError::Manager(inner)) = err.downcast_ref::<PartitionAttachError>() {
        return inner;
    }
    if let Some(RegionManagerError::OverlapError(inner)) = err.downcast_ref::<RegionManagerError>()
    {
        return inner;
    }
    if let Some(RegionManagerError::InvalidRamRegion(inner)) =
        err.downcast_ref::<RegionManagerError>()
    {
        return inner;
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            if class_of(inner).is_some() {
                return unwrap_transparent(inner);
            }
        }
    }
    err
}

/// The stable code of one error: an errno name's marker, `ERR_` + an io kind, or `ERR_` + the
/// variant (or type) name from its `Debug` form.
fn code_of(err: &(dyn StdError + 'static)) -> (String, Vec<(&'static str, String)>) {
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        if let Some(errno) = io.raw_os_error() {
            return (
                "ERR_OS_ERROR".to_owned(),
                vec![("errno", errno.to_string())],
            );
        }
        return (
            format!("ERR_{}", screaming_snake(&format!("{:?}", io.kind()))),
            Vec::new(),
        );
    }
    let debug = format!("{err:?}");
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut fields = Vec::new();
    if let Some(class) = class_of(err) {
        fields.push(("errorClass", json_string(class)));
    }
    if name.is_empty() {
        ("ERR_OTHER".to_owned(), fields)
    } else {
        (format!("ERR_{}", screaming_snake(&name)), fields)
    }
}

/// The JSON object of an error for a nested `cause`: `{"code", "message", …fields, "cause"}`.
pub(crate) fn cause_json(err: &(dyn StdError + 'static)) -> String {
    let err = unwrap_transparent(err);
    let (code, fields) = code_of(err);
    let mut parts = vec![
        format!("\"code\":{}", json_string(&code)),
        format!("\"message\":{}", json_string(&err.to_string())),
    ];
    parts.extend(
        fields
            .iter()
            .map(|(name, value)| format!("\"{name}\":{value}")),
    );
    if let Some(source) = err.source() {
        parts.push(format!("\"cause\":{}", cause_json(source)));
    }
    format!("{{{}}}", parts.join(","))
}

/// A manager error with its whole chain.
pub fn chain_error(err: &(dyn StdError + 'static)) -> JsError {
    let err = unwrap_transparent(err);
    let (code, mut fields) = code_of(err);
    if let Some(source) = err.source() {
        fields.push(("cause", cause_json(source)));
    }
    coded_with(&code, err.to_string(), &fields)
}

/// An error of a device window operation. Those are `io::Error`s as upstream; the ones the
/// window raises itself without an errno (`Unsupported`: overlapping or partial mappings) are
/// manager errors (api.md §10), so they carry the `MemoryManagerError` class. `InvalidInput`
/// stays a `RangeError` and wrapped manager errors keep their own class.
fn device_error(err: &std::io::Error) -> JsError {
    let own = err.raw_os_error().is_none()
        && err.kind() == std::io::ErrorKind::Unsupported
        && err.get_ref().is_none_or(|inner| class_of(inner).is_none());
    if own {
        return coded_with(
            "ERR_UNSUPPORTED",
            err.to_string(),
            &[("errorClass", json_string("MemoryManagerError"))],
        );
    }
    chain_error(err)
}

/// The error of an operation on a manager that was closed (`ERR_MANAGER_GONE`, as the objects
/// obtained from it report).
fn manager_closed() -> JsError {
    coded_with(
        "ERR_MANAGER_GONE",
        "the memory manager is closed",
        &[("errorClass", json_string("MemoryManagerError"))],
    )
}

fn range_of(bounds: &BigUint64Array, name: &str) -> Result<MemoryRange, JsError> {
    if bounds.len() != 2 {
        return Err(invalid_arg(format!("{name} must be one range")));
    }
    MemoryRange::try_new(bounds[0]..bounds[1]).map_err(|err| invalid_arg(format!("{name}: {err}")))
}

pub(crate) fn vtl_of(vtl: u32) -> Result<Vtl, JsError> {
    match vtl {
        0 => Ok(Vtl::Vtl0),
        1 => Ok(Vtl::Vtl1),
        2 => Ok(Vtl::Vtl2),
        other => Err(invalid_arg(format!("vtl must be 0, 1 or 2, got {other}"))),
    }
}

pub(crate) fn visibility_of(name: &str) -> Result<RamVisibility, JsError> {
    match name {
        "Unmapped" => Ok(RamVisibility::Unmapped),
        "ReadOnly" => Ok(RamVisibility::ReadOnly),
        "ReadWrite" => Ok(RamVisibility::ReadWrite),
        other => Err(invalid_arg(format!(
            "visibility must be 'Unmapped', 'ReadOnly' or 'ReadWrite', got '{other}'"
        ))),
    }
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
    pub fn from_mappable(mappable: &NativeMappable) -> Result<Self, JsError> {
        let fd = mappable.fd()?;
        let owned = fd
            .try_clone_to_owned()
            .map_err(|err| crate::errors::io_error(&err, "fcntl"))?;
        Ok(NativeSharedMemoryBacking {
            inner: Some(SharedMemoryBacking::from_mappable(owned)),
        })
    }

    /// The underlying object (the same one, not a copy).
    #[napi]
    pub fn mappable(&self) -> Result<NativeMappable, JsError> {
        let backing = self
            .inner
            .as_ref()
            .ok_or_else(|| closed("SharedMemoryBacking"))?;
        Ok(NativeMappable::from_shared(backing.shared_object()))
    }

    /// Drops this reference.
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
    }
}

/// Builds a manager (`GuestMemoryBuilder::build`) with the collected options.
#[allow(clippy::too_many_arguments)]
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
    on_prefetch_progress: Option<
        napi::bindgen_prelude::Function<'env, napi::bindgen_prelude::FnArgs<(u64, u64)>, ()>,
    >,
) -> Result<Object<'env>, JsError> {
    let progress = match on_prefetch_progress {
        Some(function) => Some(prefetch_progress(function)?),
        None => None,
    };
    let backing = match existing_backing {
        Some(backing) => Some(
            backing
                .inner
                .clone()
                .ok_or_else(|| closed("SharedMemoryBacking"))?,
        ),
        None => None,
    };
    let builder = GuestMemoryBuilder::new()
        .existing_backing(backing)
        .vtl0_alias_map(vtl0_alias_map.map(|offset| offset.0))
        .prefetch_ram(prefetch_ram)
        .pin_mappings(pin_mappings)
        .x86_legacy_support(x86_legacy_support)
        .private_memory(private_memory)
        .transparent_hugepages(transparent_hugepages)
        .prefetch_progress(progress);
    let build = builder.build(layout.layout());
    promise(
        env,
        async move { build.await.map_err(|err| chain_error(&err)) },
        |_env, manager| {
            Ok(NativeGuestMemoryManager {
                inner: Some(manager),
            })
        },
    )
}

/// Calls `function(done, total)` on its JavaScript thread, fire-and-forget, from the region
/// manager's thread (a weak thread-safe function: it never keeps the event loop alive).
fn prefetch_progress(
    function: napi::bindgen_prelude::Function<'_, napi::bindgen_prelude::FnArgs<(u64, u64)>, ()>,
) -> Result<membacking::PrefetchProgress, JsError> {
    use napi::threadsafe_function::{ThreadsafeCallContext, ThreadsafeFunctionCallMode};
    let tsfn = function
        .build_threadsafe_function::<(u64, u64)>()
        .callee_handled::<false>()
        .weak::<true>()
        .build_callback(|context: ThreadsafeCallContext<(u64, u64)>| {
            Ok(napi::bindgen_prelude::FnArgs::from(context.value))
        })
        .map_err(|err| crate::errors::coded("ERR_PANIC", err.reason))?;
    let tsfn = Arc::new(tsfn);
    Ok(Arc::new(move |done, total| {
        let _ = tsfn.call((done, total), ThreadsafeFunctionCallMode::NonBlocking);
    }))
}

/// One region of the inspect snapshot.
#[napi(object, object_from_js = false)]
pub struct RegionSnapshotItem {
    pub id: f64,
    pub name: String,
    pub range: BigUint64Array,
    pub priority: u32,
    pub dma_target: bool,
    /// `[writable, executable, prefetch]`, absent when unmapped.
    pub map_params: Option<Vec<bool>>,
    pub active: bool,
    /// `[start, end, fileOffset]` per mapping (range relative to the region).
    pub mappings: BigUint64Array,
    pub mapping_writable: Vec<bool>,
}

/// One active mapping of the inspect snapshot.
#[napi(object, object_from_js = false)]
pub struct MappingSnapshotItem {
    pub range: BigUint64Array,
    pub file_offset: u64,
    pub writable: bool,
    pub dma_target: bool,
    pub active_mappers: Vec<u32>,
}

/// The inspect snapshot (spec §8.0).
#[napi(object, object_from_js = false)]
pub struct ManagerSnapshotItem {
    pub alias_offset: Option<u64>,
    pub pin_mappings: bool,
    pub mapper_count: u32,
    pub regions: Vec<RegionSnapshotItem>,
    pub mappings: Vec<MappingSnapshotItem>,
    /// `[offset, pinMappings ? 1 : 0]` per partition mapper, in registration order.
    pub partitions: BigUint64Array,
}

fn snapshot_item(snapshot: membacking::ManagerSnapshot) -> ManagerSnapshotItem {
    ManagerSnapshotItem {
        alias_offset: snapshot.alias_offset,
        pin_mappings: snapshot.pin_mappings,
        mapper_count: snapshot.mapper_count as u32,
        regions: snapshot
            .regions
            .into_iter()
            .map(|region| RegionSnapshotItem {
                id: region.id.get() as f64,
                name: region.name,
                range: BigUint64Array::new(vec![region.range.start(), region.range.end()]),
                priority: region.priority.into(),
                dma_target: region.dma_target,
                map_params: region
                    .map_params
                    .map(|params| vec![params.writable, params.executable, params.prefetch]),
                active: region.active,
                mapping_writable: region.mappings.iter().map(|m| m.writable).collect(),
                mappings: BigUint64Array::new(
                    region
                        .mappings
                        .iter()
                        .flat_map(|m| {
                            [
                                m.range_in_region.start(),
                                m.range_in_region.end(),
                                m.file_offset,
                            ]
                        })
                        .collect(),
                ),
            })
            .collect(),
        mappings: snapshot
            .mappings
            .into_iter()
            .map(|mapping| MappingSnapshotItem {
                range: BigUint64Array::new(vec![mapping.range.start(), mapping.range.end()]),
                file_offset: mapping.file_offset,
                writable: mapping.writable,
                dma_target: mapping.dma_target,
                active_mappers: mapping.active_mappers.iter().map(|id| id.0).collect(),
            })
            .collect(),
        partitions: BigUint64Array::new(
            snapshot
                .partitions
                .iter()
                .flat_map(|p| [p.offset, u64::from(p.pin_mappings)])
                .collect(),
        ),
    }
}

/// The memory manager.
#[napi]
pub struct NativeGuestMemoryManager {
    inner: Option<GuestMemoryManager>,
}

impl NativeGuestMemoryManager {
    /// The manager, or `ERR_MANAGER_GONE` after `close()`.
    pub(crate) fn manager(&self) -> Result<&GuestMemoryManager, JsError> {
        self.inner.as_ref().ok_or_else(manager_closed)
    }
}

#[napi]
impl NativeGuestMemoryManager {
    /// A client for guest memory accessors.
    #[napi]
    pub fn client(&self) -> Result<NativeGuestMemoryClient, JsError> {
        Ok(NativeGuestMemoryClient::wrap(self.manager()?.client()))
    }

    /// A creator of device windows.
    #[napi]
    pub fn device_memory_mapper(&self) -> Result<NativeDeviceMemoryMapper, JsError> {
        Ok(NativeDeviceMemoryMapper {
            inner: Some(self.manager()?.device_memory_mapper()),
        })
    }

    /// The control of RAM visibility.
    #[napi]
    pub fn ram_visibility_control(&self) -> Result<NativeRamVisibilityControl, JsError> {
        Ok(NativeRamVisibilityControl {
            inner: Some(self.manager()?.ram_visibility_control()),
        })
    }

    /// The RAM object, or `null` in private mode.
    #[napi]
    pub fn shared_memory_backing(&self) -> Result<Option<NativeSharedMemoryBacking>, JsError> {
        Ok(self
            .manager()?
            .shared_memory_backing()
            .map(|backing| NativeSharedMemoryBacking {
                inner: Some(backing),
            }))
    }

    /// Attaches a recording partition.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn attach_recording_partition<'env>(
        &self,
        env: &'env Env,
        vtl: u32,
        partition: &NativeRecordingPartition,
        remote_process: Option<u32>,
    ) -> Result<Object<'env>, JsError> {
        let manager = self.manager()?;
        let dyn_partition = partition.partition()?;
        // Recorded VA offsets are relative to this manager's VA window.
        partition.recording().set_va_base(manager.va_window_base());
        self.attach(env, vtl, dyn_partition, remote_process)
    }

    /// Attaches a KVM partition.
    #[cfg(target_arch = "x86_64")]
    #[napi(ts_return_type = "Promise<void>")]
    pub fn attach_kvm_partition<'env>(
        &self,
        env: &'env Env,
        vtl: u32,
        partition: &crate::partition::kvm::NativeKvmPartition,
        remote_process: Option<u32>,
    ) -> Result<Object<'env>, JsError> {
        let dyn_partition = partition.partition()?;
        self.attach(env, vtl, dyn_partition, remote_process)
    }

    /// Releases the RAM pages of `range`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn decommit_ram<'env>(
        &self,
        env: &'env Env,
        range: BigUint64Array,
    ) -> Result<Object<'env>, JsError> {
        let range = range_of(&range, "range")?;
        let decommit = self.manager()?.decommit_ram(range);
        promise(
            env,
            async move { decommit.await.map_err(|err| chain_error(&err)) },
            |_env, ()| Ok(()),
        )
    }

    /// The snapshot of regions, mappings and mappers.
    #[napi(ts_return_type = "Promise<ManagerSnapshotItem>")]
    pub fn inspect<'env>(&self, env: &'env Env) -> Result<Object<'env>, JsError> {
        let inspect = self.manager()?.inspect();
        reply_promise(
            env,
            async move { inspect.await.map_err(|err| chain_error(&err)) },
            |_env, snapshot| Ok(snapshot_item(snapshot)),
        )
    }

    /// `[base, len]` of this process's VA window, and the end of the guest address space.
    #[napi]
    pub fn va_window(&self) -> Result<BigUint64Array, JsError> {
        let manager = self.manager()?;
        Ok(BigUint64Array::new(vec![
            manager.va_window_base() as u64,
            manager.va_window_len(),
            manager.max_addr(),
        ]))
    }

    /// The RAM regions as built: `[start, end, fileOffset, …]`.
    #[napi]
    pub fn ram_regions(&self) -> Result<BigUint64Array, JsError> {
        Ok(BigUint64Array::new(
            self.manager()?
                .ram_regions()
                .into_iter()
                .flat_map(|(range, offset)| [range.start(), range.end(), offset])
                .collect(),
        ))
    }

    /// Full teardown; resolves when the manager thread has exited.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&mut self, env: &'env Env) -> Result<Object<'env>, JsError> {
        let close = self.inner.take().map(GuestMemoryManager::close);
        promise(
            env,
            async move {
                if let Some(close) = close {
                    close.await;
                }
                Ok(())
            },
            |_env, ()| Ok(()),
        )
    }
}

impl NativeGuestMemoryManager {
    fn attach<'env>(
        &self,
        env: &'env Env,
        vtl: u32,
        partition: Arc<dyn PartitionMemoryMap>,
        remote_process: Option<u32>,
    ) -> Result<Object<'env>, JsError> {
        let vtl = vtl_of(vtl)?;
        let attach =
            self.manager()?
                .attach_partition(vtl, &partition, remote_process.map(RemoteProcess));
        promise(
            env,
            async move {
                let result = attach.await.map_err(|err| chain_error(&err));
                // The manager holds partitions weakly; the JavaScript object keeps it alive.
                drop(partition);
                result
            },
            |_env, ()| Ok(()),
        )
    }
}

/// A transferable handle to the mapping manager.
#[napi]
pub struct NativeGuestMemoryClient {
    inner: Option<GuestMemoryClient>,
    handles: std::cell::RefCell<Vec<u64>>,
}

impl Drop for NativeGuestMemoryClient {
    fn drop(&mut self) {
        handles::release(&self.handles.borrow());
    }
}

impl NativeGuestMemoryClient {
    fn wrap(client: GuestMemoryClient) -> Self {
        NativeGuestMemoryClient {
            inner: Some(client),
            handles: Default::default(),
        }
    }

    fn client(&self) -> Result<&GuestMemoryClient, JsError> {
        self.inner
            .as_ref()
            .ok_or_else(|| closed("GuestMemoryClient"))
    }
}

#[napi]
impl NativeGuestMemoryClient {
    /// This process's accessor over the one lazy VA mapper.
    #[napi(ts_return_type = "Promise<NativeGuestMemory>")]
    pub fn guest_memory<'env>(&self, env: &'env Env) -> Result<Object<'env>, JsError> {
        let memory = self.client()?.guest_memory();
        promise(
            env,
            async move { memory.await.map_err(|err| chain_error(&err)) },
            |_env, memory| Ok(NativeGuestMemory::wrap(memory)),
        )
    }

    /// A handle id for `fromHandle` in a worker thread.
    #[napi]
    pub fn to_handle(&self) -> Result<u64, JsError> {
        let id = handles::register(Shared::Client(self.client()?.clone()));
        self.handles.borrow_mut().push(id);
        Ok(id)
    }

    /// Reopens a client from a handle.
    #[napi(factory)]
    pub fn from_handle(id: U64) -> Result<Self, JsError> {
        match handles::lookup(id.0)? {
            Shared::Client(client) => Ok(Self::wrap(client)),
            _ => Err(invalid_arg("the handle is not a GuestMemoryClient handle")),
        }
    }

    /// Drops this reference.
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
        handles::release(&self.handles.take());
    }
}

/// Changes RAM region visibility.
#[napi]
pub struct NativeRamVisibilityControl {
    inner: Option<RamVisibilityControl>,
}

#[napi]
impl NativeRamVisibilityControl {
    /// `range` must equal one RAM region.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_ram_visibility<'env>(
        &self,
        env: &'env Env,
        range: BigUint64Array,
        visibility: String,
    ) -> Result<Object<'env>, JsError> {
        let control = self
            .inner
            .as_ref()
            .ok_or_else(|| closed("RamVisibilityControl"))?;
        let change =
            control.set_ram_visibility(range_of(&range, "range")?, visibility_of(&visibility)?);
        // Sends the request and awaits the reply: polled inline (one round trip).
        reply_promise(
            env,
            async move { change.await.map_err(|err| chain_error(&err)) },
            |_env, ()| Ok(()),
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
    ) -> Result<Vec<NativeDeviceWindowHalf>, JsError> {
        let mapper = self
            .inner
            .as_ref()
            .ok_or_else(|| closed("DeviceMemoryMapper"))?;
        let len = usize_arg(len, "len")?;
        let (control, region) = mapper
            .new_region(len, debug_name)
            .map_err(|err| chain_error(&err))?;
        Ok(vec![
            NativeDeviceWindowHalf {
                control: Some(control),
                region: None,
            },
            NativeDeviceWindowHalf {
                control: None,
                region: Some(region),
            },
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
}

impl NativeDeviceWindowHalf {
    fn control(&self) -> Result<&MappableGuestMemory, JsError> {
        self.control
            .as_ref()
            .ok_or_else(|| closed("DeviceMemoryControl"))
    }

    fn region(&self) -> Result<&Arc<MappedMemoryRegion>, JsError> {
        self.region
            .as_ref()
            .ok_or_else(|| closed("DeviceMemoryRegion"))
    }

    /// The placement half, for the planner binding.
    pub fn placement(&self) -> Result<&MappableGuestMemory, JsError> {
        self.control()
    }

    /// The mapping half, for the planner binding.
    pub fn mapping_half(&self) -> Result<&Arc<MappedMemoryRegion>, JsError> {
        self.region()
    }
}

#[napi]
impl NativeDeviceWindowHalf {
    /// The window length.
    #[napi(getter)]
    pub fn len(&self) -> Result<u64, JsError> {
        if let Some(control) = &self.control {
            return Ok(control.len());
        }
        Ok(self.region()?.len())
    }

    /// Places the window at `gpa` (replacing an earlier placement).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn map_to_guest<'env>(
        &self,
        env: &'env Env,
        gpa: U64,
        writable: bool,
    ) -> Result<Object<'env>, JsError> {
        let run = self.control()?.map_to_guest(gpa.0, writable);
        promise(
            env,
            async move { run.await.map_err(|err| device_error(&err)) },
            |_env, ()| Ok(()),
        )
    }

    /// Removes the placement; recorded mappings are kept.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn unmap_from_guest<'env>(&self, env: &'env Env) -> Result<Object<'env>, JsError> {
        let run = self.control()?.unmap_from_guest();
        promise(
            env,
            async move {
                run.await;
                Ok(())
            },
            |_env, ()| Ok(()),
        )
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
    ) -> Result<Object<'env>, JsError> {
        let offset = usize_arg(offset, "offset")?;
        let len = usize_arg(len, "len")?;
        let run = self
            .region()?
            .map(offset, object.fd()?, file_offset.0, len, writable);
        promise(
            env,
            async move { run.await.map_err(|err| device_error(&err)) },
            |_env, ()| Ok(()),
        )
    }

    /// Removes the mappings inside `[offset, offset + len)`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn unmap<'env>(
        &self,
        env: &'env Env,
        offset: U64,
        len: U64,
    ) -> Result<Object<'env>, JsError> {
        let offset = usize_arg(offset, "offset")?;
        let len = usize_arg(len, "len")?;
        let run = self.region()?.unmap(offset, len);
        promise(
            env,
            async move { run.await.map_err(|err| device_error(&err)) },
            |_env, ()| Ok(()),
        )
    }

    /// Releases this half; the window goes when both halves are closed. Resolves once the
    /// manager has served the removal (if this was the last half).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&mut self, env: &'env Env) -> Result<Object<'env>, JsError> {
        let settled: Option<Pin<Box<dyn Future<Output = ()> + Send>>> =
            match (&self.control, &self.region) {
                (Some(control), _) => Some(Box::pin(control.settled())),
                (None, Some(region)) => Some(Box::pin(region.settled())),
                (None, None) => None,
            };
        self.control = None;
        self.region = None;
        promise(
            env,
            async move {
                if let Some(settled) = settled {
                    settled.await;
                }
                Ok(())
            },
            |_env, ()| Ok(()),
        )
    }
}
