//! Binding of `guestmem`: `GuestMemory`, `LockedPages`, and the asynchronous copies.
//!
//! Every access is a copy between guest memory and a caller's buffer, never a view of guest
//! memory. Synchronous operations publish the JavaScript environment so that the hooks of a
//! memory made from a sparse mapping can run (`js_thread`); the asynchronous copies run on the
//! libuv pool through Rust-owned buffers. `readAt`, `writeAt`, `readv`, `writev` and the scalar
//! accesses are plain N-API functions ([`fast`]) for speed, shared by every memory of a
//! JavaScript thread and given the memory's id.

// Unsafe code: the caller's typed arrays are handed to the guarded copies as raw pointers, and
// the fast paths are plain N-API callbacks.
#![allow(unsafe_code)]

use crate::args::host_size;
use crate::args::RawBytes;
use crate::args::U64;
use crate::errors::internal;
use crate::errors::throw;
use crate::errors::OrThrow;
use crate::handles::open;
use crate::handles::Shared;
use crate::handles::HANDLES;
use crate::js_hooks;
use crate::js_hooks::JsHookFunctions;
use crate::js_thread::with_env;
use crate::sparse_mapping::NativeMappable;
use crate::sparse_mapping::NativeSparseMapping;
pub use fast::Hooks;
use guestmem::GuestMemory;
use guestmem::GuestMemoryError;
use guestmem::LockedPages;
use js_api::args::aligned;
use js_api::args::paged_range;
use js_api::args::read_for_buffer;
use js_api::args::scalar;
use js_api::executor::Polling;
use js_api::JsError;
use napi::bindgen_prelude::AsyncTask;
use napi::bindgen_prelude::BigUint64Array;
use napi::bindgen_prelude::Buffer;
use napi::bindgen_prelude::Either;
use napi::bindgen_prelude::FnArgs;
use napi::bindgen_prelude::Function;
use napi::bindgen_prelude::Object;
use napi::bindgen_prelude::ToNapiValue;
use napi::bindgen_prelude::TypeName;
use napi::bindgen_prelude::Uint8Array;
use napi::bindgen_prelude::ValueType;
use napi::Env;
use napi::Task;
use napi_derive::napi;
use std::cell::Cell;
use std::cell::RefCell;
use std::rc::Rc;

/// Fault-safe access to guest physical memory.
#[napi]
pub struct NativeGuestMemory {
    /// The memory, shared with the fast paths ([`fast`]); `close()` empties it.
    state: Rc<fast::MemoryState>,
    /// The fast paths' id of the memory, once asked for (`fastPathId()`).
    fast_id: Cell<Option<u64>>,
}

impl NativeGuestMemory {
    /// Wraps a core `GuestMemory` whose operations may run `hooks`.
    pub fn wrap(memory: GuestMemory, hooks: Hooks) -> Self {
        NativeGuestMemory {
            state: Rc::new(fast::MemoryState::new(memory, hooks)),
            fast_id: Cell::new(None),
        }
    }

    /// The memory (a cheap clone: an operation never holds a borrow of this object, so a hook
    /// may use or close it meanwhile).
    fn memory(&self) -> napi::Result<GuestMemory> {
        self.state.memory().or_throw()
    }

    /// Runs `f` on the memory with the environment published for hooks.
    fn run<T>(
        &self,
        env: &Env,
        f: impl FnOnce(&GuestMemory) -> Result<T, GuestMemoryError>,
    ) -> napi::Result<T> {
        let memory = self.memory()?;
        with_env(env, || f(&memory)).or_throw()
    }
}

impl NativeGuestMemory {
    /// Compare-exchange of a 1-, 2- or 4-byte value given as numbers; returns the previous
    /// value.
    fn compare_exchange_sized<T>(
        &self,
        env: Env,
        gpa: U64,
        expected: f64,
        replacement: f64,
    ) -> napi::Result<u32>
    where
        T: Copy
            + Into<u32>
            + TryFrom<u64>
            + zerocopy::IntoBytes
            + zerocopy::FromBytes
            + zerocopy::Immutable
            + zerocopy::KnownLayout,
    {
        let size = std::mem::size_of::<T>() as u64;
        let gpa = aligned(gpa.0, size).or_throw()?;
        let max = u64::MAX >> (64 - 8 * size);
        let value = |number: f64, name: &str| -> napi::Result<T> {
            let value = scalar(number, max, name).or_throw()?;
            T::try_from(value)
                .map_err(|_| throw(JsError::arg_value(format!("{name} does not fit"))))
        };
        let (current, new) = (
            value(expected, "expected")?,
            value(replacement, "replacement")?,
        );
        let result = self.run(&env, |memory| memory.compare_exchange(gpa, current, new))?;
        // The previous value: `current` when swapped, else what was there.
        Ok(result.map_or_else(|observed| observed, |_| current).into())
    }
}

#[napi]
impl NativeGuestMemory {
    /// Heap-backed memory of `size` bytes (rounded up to 4 KiB).
    #[napi(factory)]
    pub fn allocate(size: U64) -> napi::Result<Self> {
        let memory = GuestMemory::try_allocate(host_size(size, "size")?).or_throw()?;
        Ok(Self::wrap(memory, Hooks::None))
    }

    /// Memory of max address 0.
    #[napi(factory)]
    pub fn empty() -> Self {
        Self::wrap(GuestMemory::empty(), Hooks::None)
    }

    /// Guest memory whose GPA is the offset in `mapping`, with optional JavaScript hooks (the
    /// TypeScript wrappers around the user's hooks, which answer in JSON: `js_api::hooks`).
    #[allow(clippy::too_many_arguments, reason = "one argument per optional hook")]
    #[allow(
        clippy::type_complexity,
        reason = "napi-rs writes the hooks' signatures into the typings from these types"
    )]
    #[napi(factory)]
    pub fn from_sparse_mapping(
        env: Env,
        mapping: &NativeSparseMapping,
        name: String,
        retry_limit: u32,
        page_fault: Option<Function<FnArgs<(u64, u64, bool)>, String>>,
        read_fallback: Option<Function<FnArgs<(u64, u64)>, Either<String, Uint8Array>>>,
        write_fallback: Option<Function<FnArgs<(u64, Buffer)>, String>>,
        fill_fallback: Option<Function<FnArgs<(u64, u8, u64)>, String>>,
        compare_exchange_fallback: Option<
            Function<FnArgs<(u64, Buffer, Buffer)>, Either<String, Uint8Array>>,
        >,
        lock_gpns: Option<Function<FnArgs<(BigUint64Array,)>, String>>,
        unlock_gpns: Option<Function<FnArgs<(BigUint64Array,)>, ()>>,
    ) -> napi::Result<Self> {
        let mapping = mapping.mapping()?.clone();
        let functions = JsHookFunctions {
            page_fault,
            read_fallback,
            write_fallback,
            fill_fallback,
            compare_exchange_fallback,
            lock_gpns,
            unlock_gpns,
        };
        let hooks = js_hooks::hooks(&env, functions).map_err(internal)?;
        let kind = if hooks.is_some() {
            Hooks::User
        } else {
            Hooks::None
        };
        let memory = GuestMemory::from_sparse_mapping(name, mapping, hooks.unwrap_or_default())
            .with_retry_limit(retry_limit);
        Ok(Self::wrap(memory, kind))
    }

    /// Reopens a memory from a handle made by `toHandle()`.
    #[napi(factory)]
    pub fn from_handle(id: U64) -> napi::Result<Self> {
        let (memory, hooks) = open(id.0, "GuestMemory", |shared| match shared {
            Shared::GuestMemory(memory, hooks) => Some((memory, hooks)),
            _ => None,
        })?;
        Ok(Self::wrap(memory, hooks))
    }

    /// This memory's id for the fast paths (`guestMemoryFastPaths()`), the same on every call;
    /// it names nothing once the memory is closed or collected.
    #[napi]
    pub fn fast_path_id(&self) -> napi::Result<f64> {
        let id = match self.fast_id.get() {
            Some(id) => id,
            None => {
                let id = fast::register(&self.state).or_throw()?;
                self.fast_id.set(Some(id));
                id
            }
        };
        Ok(js_api::slots::id_to_number(id))
    }

    /// A handle id for `fromHandle` in a worker thread.
    #[napi]
    pub fn to_handle(&self) -> napi::Result<u64> {
        Ok(HANDLES.register(Shared::GuestMemory(self.memory()?, self.state.hooks())))
    }

    /// The debug name.
    #[napi(getter)]
    pub fn name(&self) -> napi::Result<String> {
        Ok(self.memory()?.debug_name().to_owned())
    }

    /// The size of the address space.
    #[napi(getter)]
    pub fn max_address(&self) -> napi::Result<u64> {
        Ok(self.memory()?.max_address())
    }

    /// Fills `len` bytes at `gpa` with `byte`.
    #[napi]
    pub fn fill_at(&self, env: Env, gpa: U64, byte: f64, len: U64) -> napi::Result<()> {
        let byte = js_api::args::byte(byte, "byte").or_throw()?;
        let len = host_size(len, "len")?;
        self.run(&env, |memory| memory.fill_at(gpa.0, byte, len))
    }

    /// Compare-exchange of a `size`-byte value (1, 2 or 4) given as numbers; returns the
    /// previous value.
    #[napi]
    pub fn compare_exchange_number(
        &self,
        env: Env,
        gpa: U64,
        size: u32,
        expected: f64,
        replacement: f64,
    ) -> napi::Result<u32> {
        match size {
            1 => self.compare_exchange_sized::<u8>(env, gpa, expected, replacement),
            2 => self.compare_exchange_sized::<u16>(env, gpa, expected, replacement),
            4 => self.compare_exchange_sized::<u32>(env, gpa, expected, replacement),
            _ => Err(throw(JsError::arg_value("size must be 1, 2 or 4"))),
        }
    }

    /// Compare-exchange of a u64; returns the previous value.
    #[napi(js_name = "compareExchangeU64")]
    pub fn compare_exchange_u64(
        &self,
        env: Env,
        gpa: U64,
        expected: U64,
        replacement: U64,
    ) -> napi::Result<u64> {
        let gpa = aligned(gpa.0, 8).or_throw()?;
        let result = self.run(&env, |memory| {
            memory.compare_exchange(gpa, expected.0, replacement.0)
        })?;
        Ok(result.map_or_else(|observed| observed, |_| expected.0))
    }

    /// A view of `offset..offset + len` with its own GPA 0.
    #[napi]
    pub fn subrange(&self, env: Env, offset: U64, len: U64) -> napi::Result<NativeGuestMemory> {
        self.run(&env, |memory| memory.subrange(offset.0, len.0, false))
            .map(|sub| Self::wrap(sub, self.state.hooks()))
    }

    /// Whether a 1-byte read at `gpa` succeeds.
    #[napi]
    pub fn probe_readable(&self, env: Env, gpa: U64) -> napi::Result<bool> {
        let memory = self.memory()?;
        Ok(with_env(&env, || memory.probe_gpa_readable(gpa.0)).is_ok())
    }

    /// Whether a compare-exchange of a byte with itself at `gpa` succeeds.
    #[napi]
    pub fn probe_writable(&self, env: Env, gpa: U64) -> napi::Result<bool> {
        let memory = self.memory()?;
        Ok(with_env(&env, || memory.probe_gpa_writable(gpa.0)).is_ok())
    }

    /// Scatter-list read into `dest` (whose length must equal `len`).
    #[napi]
    pub fn read_range(
        &self,
        env: Env,
        offset: u32,
        len: U64,
        gpns: BigUint64Array,
        dest: RawBytes,
    ) -> napi::Result<()> {
        let gpns = gpns.to_vec(); // Ours: a hook running during the copy could detach it.
        let range = paged_range(offset, len.0, &gpns, dest.len).or_throw()?;
        let staging = self.run(&env, |memory| {
            let mut staging = vec![0u8; range.len()];
            memory.read_range(&range, &mut staging).map(|()| staging)
        })?;
        // Into `dest` as it is now: a hook may have detached or resized it meanwhile.
        dest.write_back(&staging, "dest", "readRange").or_throw()
    }

    /// Scatter-list write from `src` (whose length must equal `len`).
    #[napi]
    pub fn write_range(
        &self,
        env: Env,
        offset: u32,
        len: U64,
        gpns: BigUint64Array,
        src: RawBytes,
    ) -> napi::Result<()> {
        let gpns = gpns.to_vec(); // Ours: a hook running during the copy could detach it.
        let range = paged_range(offset, len.0, &gpns, src.len).or_throw()?;
        // Copied first: the guest write does not see later changes of a shared buffer.
        let staging = src.to_vec().or_throw()?;
        self.run(&env, |memory| memory.write_range(&range, &staging))
    }

    /// Zeroes a scatter list.
    #[napi]
    pub fn zero_range(
        &self,
        env: Env,
        offset: u32,
        len: U64,
        gpns: BigUint64Array,
    ) -> napi::Result<()> {
        let bytes = host_size(len, "len")?;
        let gpns = gpns.to_vec(); // Ours: a hook running during the copy could detach it.
        let range = paged_range(offset, len.0, &gpns, bytes).or_throw()?;
        self.run(&env, |memory| memory.zero_range(&range))
    }

    /// Locks 4 KiB pages by number.
    #[napi]
    pub fn lock_gpns(&self, env: Env, gpns: BigUint64Array) -> napi::Result<NativeLockedPages> {
        let gpns: Vec<u64> = gpns.to_vec();
        let locked = self.run(&env, |memory| memory.lock_gpns(false, &gpns))?;
        Ok(NativeLockedPages {
            inner: RefCell::new(Some(locked)),
            gpns,
        })
    }

    /// `read` on the libuv pool, through a Rust-owned buffer.
    #[napi]
    pub fn read_at_async(
        &self,
        gpa: U64,
        len: U64,
        max_buffer: U64,
    ) -> napi::Result<AsyncTask<ReadTask>> {
        Ok(AsyncTask::new(ReadTask {
            memory: self.memory()?,
            gpa: gpa.0,
            len: len.0,
            max_buffer: max_buffer.0,
        }))
    }

    /// `read(gpa, len)` of a large length, checked as `js_api::args::read_for_buffer` says
    /// (`max_buffer`: the largest Buffer of the running Node).
    #[napi]
    pub fn read_to_buffer(
        &self,
        env: Env,
        gpa: U64,
        len: U64,
        max_buffer: U64,
    ) -> napi::Result<Buffer> {
        let memory = self.memory()?;
        let data = with_env(&env, || {
            read_for_buffer(&memory, gpa.0, len.0, max_buffer.0)
        });
        Ok(Buffer::from(data.or_throw()?))
    }

    /// `writeAt` on the libuv pool; `src` is copied first.
    #[napi]
    pub fn write_at_async(&self, gpa: U64, src: RawBytes) -> napi::Result<AsyncTask<WriteTask>> {
        Ok(AsyncTask::new(WriteTask {
            memory: self.memory()?,
            gpa: gpa.0,
            data: src.to_vec().or_throw()?,
        }))
    }

    /// Whether this memory offers DMA sharing (the memory manager's file-backed accessor).
    #[napi]
    pub fn has_sharing(&self) -> napi::Result<bool> {
        Ok(self.memory()?.sharing().is_some())
    }

    /// The shareable (file-backed) regions of guest memory; `null` without sharing.
    #[napi(ts_return_type = "Promise<ShareableRegionItem[] | null>")]
    pub fn sharing_regions<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let sharing = self.memory()?.sharing();
        crate::promise::promise(
            env,
            Polling::Pool,
            async move {
                match sharing {
                    Some(sharing) => sharing
                        .get_regions()
                        .await
                        .map(Some)
                        .map_err(|error| js_api::errors::from_boxed(error.as_ref())),
                    None => Ok(None),
                }
            },
            |_env, regions| {
                Ok(regions.map(|regions| {
                    regions
                        .into_iter()
                        .map(|region| ShareableRegionItem {
                            guest_address: region.guest_address,
                            size: region.size,
                            object: NativeMappable::from_shared(region.file),
                            file_offset: region.file_offset,
                        })
                        .collect::<Vec<_>>()
                }))
            },
        )
    }

    /// Drops this reference.
    #[napi]
    pub fn close(&self) {
        fast::unregister(self.fast_id.take());
        self.state.close();
    }
}

impl Drop for NativeGuestMemory {
    /// A memory collected without `close()` leaves the fast paths' table too.
    fn drop(&mut self) {
        fast::unregister(self.fast_id.take());
    }
}

/// The fast paths ([`fast`]) of every memory of this JavaScript thread: functions that take the
/// memory's `fastPathId()` as their first argument.
#[napi(
    ts_return_type = "{ readAt(id: number, gpa: U64, dest: Uint8Array): void; writeAt(id: number, gpa: U64, src: Uint8Array): void; readv(id: number, gpas: Float64Array | Array<U64>, ...buffers: ArrayBufferView[] | [ArrayBufferView[]]): void; writev(id: number, gpas: Float64Array | Array<U64>, ...buffers: ArrayBufferView[] | [ArrayBufferView[]]): void; readU8(id: number, gpa: U64): number; readU16(id: number, gpa: U64): number; readU32(id: number, gpa: U64): number; readU64(id: number, gpa: U64): bigint; writeU8(id: number, gpa: U64, value: number): void; writeU16(id: number, gpa: U64, value: number): void; writeU32(id: number, gpa: U64, value: number): void; writeU64(id: number, gpa: U64, value: U64): void }"
)]
pub fn guest_memory_fast_paths(env: Env) -> napi::Result<fast::RawValue> {
    fast::functions(&env).or_throw()
}

/// One shareable region of guest memory.
#[napi(object, object_from_js = false)]
pub struct ShareableRegionItem {
    pub guest_address: u64,
    pub size: u64,
    pub object: NativeMappable,
    pub file_offset: u64,
}

/// `readAtAsync`'s work.
pub struct ReadTask {
    memory: GuestMemory,
    gpa: u64,
    len: u64,
    /// The largest Buffer of the running Node.
    max_buffer: u64,
}

impl Task for ReadTask {
    type Output = Vec<u8>;
    type JsValue = OwnedBuffer;

    fn compute(&mut self) -> napi::Result<Vec<u8>> {
        read_for_buffer(&self.memory, self.gpa, self.len, self.max_buffer).or_throw()
    }

    fn resolve(&mut self, _env: Env, output: Vec<u8>) -> napi::Result<OwnedBuffer> {
        Ok(OwnedBuffer(output))
    }
}

/// Bytes handed to JavaScript as a `Buffer` over the same allocation (no copy), which the
/// `Buffer`'s finalizer frees.
///
/// napi-rs' own `Buffer` conversion leaks the bytes when the environment refuses to create the
/// `Buffer`, which it does while a worker thread is being terminated: a `readAtAsync` still in
/// flight then completes into an environment that runs no more JavaScript, and every such read
/// of a terminated worker stayed allocated for the life of the process. Here a refused `Buffer`
/// frees the bytes at once.
pub struct OwnedBuffer(Vec<u8>);

/// The finalizer of an [`OwnedBuffer`]'s `Buffer`: frees the boxed bytes.
unsafe extern "C" fn free_owned_buffer(
    _env: napi::sys::napi_env,
    _data: *mut std::ffi::c_void,
    hint: *mut std::ffi::c_void,
) {
    // SAFETY: `hint` is the `Box<Vec<u8>>` that `OwnedBuffer::to_napi_value` leaked for this
    // `Buffer`, and N-API calls the finalizer once.
    drop(unsafe { Box::from_raw(hint.cast::<Vec<u8>>()) });
}

impl TypeName for OwnedBuffer {
    fn type_name() -> &'static str {
        "Buffer"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ToNapiValue for OwnedBuffer {
    unsafe fn to_napi_value(
        env: napi::sys::napi_env,
        val: Self,
    ) -> napi::Result<napi::sys::napi_value> {
        let mut bytes = Box::new(val.0);
        let mut result = std::ptr::null_mut();
        if bytes.is_empty() {
            // An empty Vec's data pointer is dangling (V8 accepts only null for that).
            // SAFETY: `env` is the live environment this conversion is called with.
            let status =
                unsafe { napi::sys::napi_create_buffer(env, 0, std::ptr::null_mut(), &mut result) };
            return napi_status(status, "napi_create_buffer").map(|()| result);
        }
        let len = bytes.len();
        let data = bytes.as_mut_ptr().cast::<std::ffi::c_void>();
        let hint = Box::into_raw(bytes);
        // SAFETY: `data` points to `len` bytes owned by the box at `hint`, which stays allocated
        // until the finalizer frees it; on failure N-API took nothing and the box is freed here.
        let status = unsafe {
            napi::sys::napi_create_external_buffer(
                env,
                len,
                data,
                Some(free_owned_buffer),
                hint.cast(),
                &mut result,
            )
        };
        if status == napi::sys::Status::napi_ok {
            return Ok(result);
        }
        // SAFETY: N-API refused the buffer, so the finalizer will never run: the box is ours.
        let bytes = unsafe { Box::from_raw(hint) };
        if status == napi::sys::Status::napi_no_external_buffers_allowed {
            // SAFETY: `bytes` is valid for `len` bytes during the call, which copies them.
            let status = unsafe {
                napi::sys::napi_create_buffer_copy(
                    env,
                    len,
                    bytes.as_ptr().cast(),
                    std::ptr::null_mut(),
                    &mut result,
                )
            };
            return napi_status(status, "napi_create_buffer_copy").map(|()| result);
        }
        napi_status(status, "napi_create_external_buffer").map(|()| result)
    }
}

/// `Ok` for `napi_ok`, else the status as an error naming the call.
fn napi_status(status: napi::sys::napi_status, call: &str) -> napi::Result<()> {
    if status == napi::sys::Status::napi_ok {
        Ok(())
    } else {
        Err(napi::Error::new(
            napi::Status::from(status),
            format!("{call} failed"),
        ))
    }
}

/// `writeAtAsync`'s work.
pub struct WriteTask {
    memory: GuestMemory,
    gpa: u64,
    data: Vec<u8>,
}

impl Task for WriteTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        self.memory.write_at(self.gpa, &self.data).or_throw()
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }
}

/// Locked guest pages.
///
/// Releasing runs the memory's `unlockGpns` hook, which may use this object again (read from
/// it, ask for its pages, release it again): the pages are taken out first and unlocked
/// outside any borrow, so the hook finds the object released (and every method of it usable)
/// rather than in the middle of being dropped.
#[napi(custom_finalize)]
pub struct NativeLockedPages {
    inner: RefCell<Option<LockedPages>>,
    gpns: Vec<u64>,
}

impl NativeLockedPages {
    /// Unlocks (once) with the environment published, so a JavaScript `unlockGpns` hook runs.
    fn unlock(&self, env: &Env) {
        let taken = self.inner.borrow_mut().take();
        with_env(env, || drop(taken));
    }
}

impl napi::bindgen_prelude::ObjectFinalize for NativeLockedPages {
    fn finalize(self, env: Env) -> napi::Result<()> {
        self.unlock(&env);
        Ok(())
    }
}

#[napi]
impl NativeLockedPages {
    /// The number of pages.
    #[napi(getter)]
    pub fn count(&self) -> u32 {
        u32::try_from(self.gpns.len()).unwrap_or(u32::MAX)
    }

    /// The locked page numbers.
    #[napi(getter)]
    pub fn gpns(&self) -> BigUint64Array {
        BigUint64Array::new(self.gpns.clone())
    }

    /// Copies from page `page_index` at `offset` into `dest`.
    #[napi]
    pub fn read_at(&self, page_index: u32, offset: u32, dest: RawBytes) -> napi::Result<()> {
        let inner = self.inner.borrow();
        let locked = inner
            .as_ref()
            .ok_or_else(|| throw(JsError::closed("LockedPages")))?;
        let (page_index, offset) = (
            host_size(U64(page_index.into()), "pageIndex")?,
            host_size(U64(offset.into()), "offset")?,
        );
        // SAFETY: `dest` is the caller's typed array of `len` bytes, valid during this call.
        unsafe { locked.read_ptr(page_index, offset, dest.ptr, dest.len) }.or_throw()
    }

    /// Unlocks once (idempotent, also from the `unlockGpns` hook it runs).
    #[napi]
    pub fn release(&self, env: Env) {
        self.unlock(&env);
    }
}

/// Fast paths for the hottest operations (`readAt`, `writeAt`, `readv`, `writev`, the scalar
/// loads and stores).
///
/// napi-rs's class methods pay for its borrow tracking on every call (a hash-map insert and
/// removal and an allocation for `&self`, plus a type-tag check of `this`), which costs more
/// than the copy itself for small accesses. These operations are plain N-API callbacks instead,
/// made once per call of `guestMemoryFastPaths()` and shared by every memory of the JavaScript
/// thread: the first argument is the memory's id in this thread's table of memories
/// (`fastPathId()`, `js_api::slots`), an index checked against the slot's generation, so a
/// stale or made-up id finds no memory (`ERR_CLOSED`) and can reach nothing else. (Functions
/// made per memory, bound to its state, cost a table lookup less per call, but each
/// `napi_create_function` leaves memory behind in V8 from Node 22 on: 10,000 memories kept
/// ~14 MiB in ~55 more mappings after every object was collected.) They read their arguments
/// with `crate::args` and throw like every native function (`crate::errors`).
pub mod fast {
    use crate::args::callback_args;
    use crate::args::read_bytes;
    use crate::args::read_u64;
    use crate::args::Gpas;
    use crate::args::RawBytes;
    use crate::errors::message;
    use crate::errors::panic_text;
    use crate::js_thread::with_env;
    use guestmem::GuestMemory;
    use guestmem::VectoredEntry;
    use js_api::slots::id_from_number;
    use js_api::slots::Slots;
    use js_api::JsError;
    use js_api::ToJsError;
    use napi::bindgen_prelude::ToNapiValue;
    use napi::bindgen_prelude::TypeName;
    use napi::sys;
    use napi::Env;
    use napi::ValueType;
    use std::cell::RefCell;
    use std::ffi::c_void;
    use std::ffi::CString;
    use std::panic::catch_unwind;
    use std::panic::AssertUnwindSafe;
    use std::ptr;
    use std::rc::Rc;

    /// What JavaScript an operation of a memory may run on the calling thread.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Hooks {
        /// None (memory on the heap, the empty memory, the memory manager's memory, whose
        /// faults the mapping manager's threads resolve): the memory is used in place and no
        /// environment is published (an operation costs a clone and two thread-local writes
        /// less: the manager's `readAt` of 8 bytes took 67 ns instead of 52).
        None,
        /// The user's hooks (`fromSparseMapping`, and a memory reopened from one): they may
        /// detach or resize the caller's buffers while an operation runs, so the copies go
        /// through a buffer of the binding's own and then into the caller's buffer as it is
        /// after the hooks ran (`RawBytes::write_back`).
        User,
    }

    /// A memory as the native object and its fast paths share it. Only ever touched on the
    /// JavaScript thread that owns them (N-API callbacks run there).
    pub struct MemoryState {
        memory: RefCell<Option<GuestMemory>>,
        hooks: Hooks,
    }

    impl MemoryState {
        pub fn new(memory: GuestMemory, hooks: Hooks) -> Self {
            MemoryState {
                memory: RefCell::new(Some(memory)),
                hooks,
            }
        }

        /// A clone of the memory, or `ERR_CLOSED`. The borrow ends at once, so a hook running
        /// during the operation may close the memory.
        pub fn memory(&self) -> Result<GuestMemory, JsError> {
            self.memory
                .borrow()
                .clone()
                .ok_or_else(|| JsError::closed("GuestMemory"))
        }

        /// What operations of this memory (and of its subranges) may run.
        pub fn hooks(&self) -> Hooks {
            self.hooks
        }

        /// Whether the caller's buffers must be copied through a buffer of the binding's own.
        fn stages_buffers(&self) -> bool {
            self.hooks == Hooks::User
        }

        pub fn close(&self) {
            let memory = self.memory.borrow_mut().take();
            drop(memory);
        }
    }

    /// A raw N-API value returned through napi-rs unchanged.
    pub struct RawValue(sys::napi_value);

    impl RawValue {
        /// Wraps a value of the running native call.
        #[cfg(feature = "bench")]
        pub fn new(value: sys::napi_value) -> Self {
            RawValue(value)
        }
    }

    impl TypeName for RawValue {
        fn type_name() -> &'static str {
            "object"
        }

        fn value_type() -> ValueType {
            ValueType::Object
        }
    }

    impl ToNapiValue for RawValue {
        unsafe fn to_napi_value(_env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
            Ok(value.0)
        }
    }

    thread_local! {
        /// The memories of this JavaScript thread that the fast paths can reach, by id.
        static MEMORIES: Memories = const { RefCell::new(Slots::new()) };
    }

    /// Enters `state` in this thread's table; its id.
    pub fn register(state: &Rc<MemoryState>) -> Result<u64, JsError> {
        MEMORIES
            .with(|memories| memories.borrow_mut().insert(state.clone()))
            .ok_or_else(|| JsError::internal("too many GuestMemory objects are open"))
    }

    /// Removes the memory with this id (if any) from this thread's table.
    pub fn unregister(id: Option<u64>) {
        if let Some(id) = id {
            // Nothing to remove once the thread's table itself is gone (thread exit).
            let _ = MEMORIES.try_with(|memories| memories.borrow_mut().remove(id));
        }
    }

    /// This thread's table of memories, as the fast paths' callback data (saves a thread-local
    /// lookup per call).
    type Memories = RefCell<Slots<Rc<MemoryState>>>;

    /// The memory a fast path's first argument names in `memories` (its callback data).
    ///
    /// # Safety
    /// `env` and `value` must belong to the running callback, and `memories` must be the
    /// callback data of a function made by [`functions`].
    unsafe fn memory_of(
        env: sys::napi_env,
        memories: *mut c_void,
        value: sys::napi_value,
    ) -> Result<Rc<MemoryState>, JsError> {
        // SAFETY: the data of every function made by `functions` points at the table of the
        // thread that made it, the only thread that can call it; the table lives as long as
        // the thread, which outlives every JavaScript call on it.
        let memories = unsafe { &*memories.cast_const().cast::<Memories>() };
        let mut number = 0f64;
        // SAFETY: a query on a value of the running callback; a non-number fails it.
        if unsafe { sys::napi_get_value_double(env, value, &mut number) } != sys::Status::napi_ok {
            return Err(JsError::arg_type(
                "the first argument must be a GuestMemory id",
            ));
        }
        id_from_number(number)
            .and_then(|id| memories.borrow().get(id).cloned())
            .ok_or_else(|| JsError::closed("GuestMemory"))
    }

    fn c_string(text: &str) -> CString {
        CString::new(text.replace('\0', "\u{fffd}")).unwrap_or_default()
    }

    /// Runs a fast path: reads up to `N` arguments, the first naming the memory, runs `body`
    /// with the memory's state, throws what it fails with. A panic (a bug) becomes an
    /// `ERR_PANIC` error instead of unwinding into Node.
    ///
    /// # Safety
    /// `env` and `info` must be the arguments N-API passed to a callback made by [`functions`].
    unsafe fn call<const N: usize>(
        env: sys::napi_env,
        info: sys::napi_callback_info,
        body: impl FnOnce(
            sys::napi_env,
            &MemoryState,
            &[sys::napi_value; N],
        ) -> Result<sys::napi_value, JsError>,
    ) -> sys::napi_value {
        // SAFETY: the arguments of this callback.
        let result = match unsafe { callback_args::<N>(env, info) } {
            // SAFETY: values of the running callback.
            Some((args, _, data)) => unsafe {
                with_state(env, data, &args, |state| body(env, state, &args))
            },
            None => Err(JsError::internal("cannot read the arguments")),
        };
        // SAFETY: `env` is the environment of the running callback.
        unsafe { finish(env, result) }
    }

    /// [`call`] for a callback with any number of arguments (`body` gets them all).
    ///
    /// # Safety
    /// As for [`call`].
    unsafe fn call_variadic(
        env: sys::napi_env,
        info: sys::napi_callback_info,
        body: impl FnOnce(
            sys::napi_env,
            &MemoryState,
            &[sys::napi_value],
        ) -> Result<sys::napi_value, JsError>,
    ) -> sys::napi_value {
        const INLINE: usize = 72;
        // SAFETY: the arguments of this callback.
        let Some((inline, argc, data)) = (unsafe { callback_args::<INLINE>(env, info) }) else {
            let error = JsError::internal("cannot read the arguments");
            // SAFETY: `env` is the environment of the running callback.
            return unsafe { finish(env, Err(error)) };
        };
        let mut heap = Vec::new();
        let args: Result<&[sys::napi_value], JsError> = if argc <= INLINE {
            Ok(&inline[..argc])
        } else {
            heap.resize(argc, ptr::null_mut());
            let mut again = argc;
            // SAFETY: `heap` has room for all `argc` values.
            let status = unsafe {
                sys::napi_get_cb_info(
                    env,
                    info,
                    &mut again,
                    heap.as_mut_ptr(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            };
            if status == sys::Status::napi_ok {
                Ok(&heap[..argc.min(again)])
            } else {
                Err(JsError::internal("cannot read the arguments"))
            }
        };
        let result = args.and_then(|args| {
            // SAFETY: values of the running callback.
            unsafe { with_state(env, data, args, |state| body(env, state, args)) }
        });
        // SAFETY: `env` is the environment of the running callback.
        unsafe { finish(env, result) }
    }

    /// Runs `body` with the memory that the first of `args` names (held for the call: a hook
    /// may close the memory meanwhile), turning a panic (a bug) into an `ERR_PANIC` error.
    ///
    /// # Safety
    /// `env` and `args` must belong to the running callback, `memories` is its callback data.
    unsafe fn with_state(
        env: sys::napi_env,
        memories: *mut c_void,
        args: &[sys::napi_value],
        body: impl FnOnce(&MemoryState) -> Result<sys::napi_value, JsError>,
    ) -> Result<sys::napi_value, JsError> {
        let Some(&id) = args.first() else {
            return Err(JsError::arg_type(
                "the first argument must be a GuestMemory id",
            ));
        };
        // SAFETY: a value of the running callback.
        let state = unsafe { memory_of(env, memories, id) }?;
        catch_unwind(AssertUnwindSafe(|| body(&state)))
            .unwrap_or_else(|payload| Err(JsError::internal(panic_text(payload.as_ref()))))
    }

    /// The callback's return value, or `null` after throwing its error.
    ///
    /// # Safety
    /// `env` is the environment of the running callback.
    unsafe fn finish(
        env: sys::napi_env,
        result: Result<sys::napi_value, JsError>,
    ) -> sys::napi_value {
        result.unwrap_or_else(|error| {
            let (code, message) = (c_string("GenericFailure"), c_string(&message(&error)));
            // SAFETY: `env` is the environment of the running callback; both strings outlive
            // the call (N-API copies them).
            unsafe { sys::napi_throw_error(env, code.as_ptr(), message.as_ptr()) };
            ptr::null_mut()
        })
    }

    /// Runs a core operation on the memory. A memory that may have JavaScript hooks gets the
    /// environment published and is used through a clone (a hook may close it meanwhile); one
    /// without hooks runs no JavaScript during the operation, so it is used in place.
    fn run<T, E: ToJsError>(
        env: sys::napi_env,
        state: &MemoryState,
        f: impl FnOnce(&GuestMemory) -> Result<T, E>,
    ) -> Result<T, JsError> {
        let result = if state.hooks == Hooks::User {
            let memory = state.memory()?;
            with_env(&Env::from_raw(env), || f(&memory))
        } else {
            let memory = state.memory.borrow();
            f(memory
                .as_ref()
                .ok_or_else(|| JsError::closed("GuestMemory"))?)
        };
        result.map_err(|error| error.to_js_error())
    }

    /// `undefined`: a callback that returns no value (null) returns `undefined` to JavaScript.
    fn undefined() -> Result<sys::napi_value, JsError> {
        Ok(ptr::null_mut())
    }

    /// A loaded scalar as its JavaScript value (a number, or a bigint for a u64).
    fn value<T: ToNapiValue>(env: sys::napi_env, x: T) -> Result<sys::napi_value, JsError> {
        // SAFETY: creates a value in the environment of the running callback.
        unsafe { T::to_napi_value(env, x) }
            .map_err(|_| JsError::internal("cannot create the result"))
    }

    /// Declares a fast-path callback: `$name(env, info)` hands its arguments to `$runner`
    /// ([`call`] with the argument count, or [`call_variadic`]), which runs the body with the
    /// environment, the memory state and the arguments, and throws what it fails with.
    macro_rules! fast_path {
        ($(#[$doc:meta])* $name:ident, $runner:expr, |$env:ident, $state:ident, $args:ident| $body:expr) => {
            $(#[$doc])*
            unsafe extern "C" fn $name(
                env: sys::napi_env,
                info: sys::napi_callback_info,
            ) -> sys::napi_value {
                // SAFETY: the arguments of this callback, whose values the body reads.
                unsafe { $runner(env, info, |$env, $state, $args| $body) }
            }
        };
    }

    fast_path!(
        /// `readAt(id, gpa, dest)`. `dest` is the caller's typed array, valid during this call; it
        /// is only written through the guarded copy (it may be shared memory), and only through a
        /// buffer of our own when hooks may run ([`Hooks::User`]).
        read_at, call::<3>, |env, state, args| {
            let (gpa, dest) = (read_u64(env, args[1])?, read_bytes(env, args[2])?);
            if state.stages_buffers() {
                let staged = run(env, state, |memory| memory.read_to_vec(gpa, dest.len))?;
                dest.write_back(&staged, "dest", "readAt")?;
            } else {
                run(env, state, |memory| memory.read_ptr(gpa, dest.ptr, dest.len))?;
            }
            undefined()
        }
    );

    fast_path!(
        /// `writeAt(id, gpa, src)` (`src` copied first when hooks may run, [`Hooks::User`]).
        write_at, call::<3>, |env, state, args| {
            let (gpa, src) = (read_u64(env, args[1])?, read_bytes(env, args[2])?);
            if state.stages_buffers() {
                let staged = src.to_vec()?;
                run(env, state, |memory| memory.write_at(gpa, &staged))?;
            } else {
                let src_ptr = src.ptr.cast_const();
                run(env, state, |memory| memory.write_ptr(gpa, src_ptr, src.len))?;
            }
            undefined()
        }
    );

    /// The entries of `readv(id, gpas, ...buffers)`/`writev(id, gpas, ...buffers)` (`args`
    /// after the id): the GPAs (see [`Gpas`]) and one typed array or `DataView` per entry, each
    /// buffer's data read only once no more JavaScript can run (a list's getters could detach
    /// it). The buffers may instead come as one JavaScript array
    /// (`readv(id, gpas, buffers)`): a long list cannot be spread into call arguments (the
    /// engine's argument count limit), and no buffer is itself an array. The callers' buffers
    /// are also kept in `kept` when given.
    ///
    /// # Safety
    /// `env` and `args` must belong to the running callback.
    unsafe fn vectored_entries(
        env: sys::napi_env,
        args: &[sys::napi_value],
        mut kept: Option<&mut Vec<RawBytes>>,
    ) -> Result<Vec<VectoredEntry>, JsError> {
        let Some((&gpas, buffers)) = args.split_first() else {
            return Err(JsError::arg_type("the GPAs are missing"));
        };
        let listed = match buffers {
            // SAFETY: a value of the running callback.
            [single] => unsafe { array_length(env, *single) },
            _ => None,
        };
        let count = listed.unwrap_or(buffers.len());
        // First every read that may run JavaScript (an array element's getter), which may
        // detach or resize any typed array, and only then the typed arrays' data pointers:
        // the GPAs (an array's elements read and checked; a Float64Array checked), then the
        // buffers of a list (each checked as it is read, so a bad list stops at its first bad
        // element), then the data pointers.
        // SAFETY: values of the running callback.
        let mut gpas_read = unsafe { Gpas::of(env, gpas, count) }?;
        let elements: Vec<sys::napi_value>;
        let buffers = match listed {
            Some(_) => {
                elements = (0..count)
                    .map(|index| {
                        // SAFETY: `buffers[0]` is an array of the running callback.
                        let element = unsafe { array_element(env, buffers[0], index) }?;
                        // SAFETY: `element` is a value of the running callback; only checked
                        // here, its bytes are read again below.
                        unsafe { read_bytes(env, element) }
                            .map_err(|error| error.in_entry(index, ".buffer"))?;
                        Ok(element)
                    })
                    .collect::<Result<_, JsError>>()?;
                if gpas_read.is_typed_array() {
                    // The getters may have detached or resized the GPAs: read them again.
                    // SAFETY: values of the running callback.
                    gpas_read = unsafe { Gpas::of(env, gpas, count) }?;
                }
                &elements[..]
            }
            None => buffers,
        };
        let gpas = gpas_read;
        // No JavaScript runs from here on: the data pointers read below stay valid for the call
        // (until a hook runs, see `Hooks::User`).
        let mut entries = Vec::with_capacity(count);
        for (index, &buffer) in buffers.iter().enumerate() {
            // SAFETY: values of the running callback; `index` is below the count `gpas` holds,
            // and no JavaScript ran since `gpas` was read.
            let (gpa, bytes) = unsafe { (gpas.get(index)?, read_bytes(env, buffer)) };
            let bytes = bytes.map_err(|error| error.in_entry(index, ".buffer"))?;
            entries.push(VectoredEntry {
                gpa,
                buffer: bytes.ptr,
                len: bytes.len,
            });
            if let Some(kept) = kept.as_deref_mut() {
                kept.push(bytes);
            }
        }
        Ok(entries)
    }

    /// Points `entries` at one buffer of our own (`staging`) instead of the callers' buffers,
    /// for a memory whose hooks may detach or resize those meanwhile; for a write, `sources` (the
    /// callers' buffers, not yet touched by any JavaScript) are copied into it first.
    fn stage(
        entries: &mut [VectoredEntry],
        staging: &mut Vec<u8>,
        sources: Option<&[RawBytes]>,
    ) -> Result<(), JsError> {
        match sources {
            Some(sources) => {
                for bytes in sources {
                    staging.extend_from_slice(&bytes.to_vec()?);
                }
            }
            None => staging.resize(entries.iter().map(|entry| entry.len).sum(), 0),
        }
        let mut start = 0;
        for entry in entries {
            entry.buffer = staging[start..].as_mut_ptr();
            start += entry.len;
        }
        Ok(())
    }

    /// The length of `value` when it is a JavaScript array, else `None`.
    ///
    /// # Safety
    /// `env` and `value` must belong to the running callback.
    unsafe fn array_length(env: sys::napi_env, value: sys::napi_value) -> Option<usize> {
        let mut is_array = false;
        // SAFETY: a query on a value of the running callback.
        if unsafe { sys::napi_is_array(env, value, &mut is_array) } != sys::Status::napi_ok
            || !is_array
        {
            return None;
        }
        let mut length = 0u32;
        // SAFETY: `value` is an array of the running callback.
        if unsafe { sys::napi_get_array_length(env, value, &mut length) } != sys::Status::napi_ok {
            return None;
        }
        usize::try_from(length).ok()
    }

    /// Element `index` of the array `array`.
    ///
    /// # Safety
    /// `env` and `array` must belong to the running callback.
    unsafe fn array_element(
        env: sys::napi_env,
        array: sys::napi_value,
        index: usize,
    ) -> Result<sys::napi_value, JsError> {
        let position = u32::try_from(index).map_err(|_| JsError::arg_value("too many entries"))?;
        let mut element = ptr::null_mut();
        // SAFETY: a query on a value of the running callback.
        if unsafe { sys::napi_get_element(env, array, position, &mut element) }
            != sys::Status::napi_ok
        {
            return Err(JsError::internal("cannot read the buffers"));
        }
        Ok(element)
    }

    fast_path!(
        /// `readv(id, gpas, ...buffers)`. Each buffer is the caller's typed array or DataView,
        /// valid during this call; it is only written through the guarded copies (it may be
        /// shared memory), and through a buffer of our own when hooks may run ([`Hooks::User`]).
        readv, call_variadic, |env, state, args| {
            if !state.stages_buffers() {
                let entries = vectored_entries(env, &args[1..], None)?;
                run(env, state, |memory| memory.read_v_ptr(&entries))?;
                return undefined();
            }
            let mut buffers = Vec::new();
            let mut entries = vectored_entries(env, &args[1..], Some(&mut buffers))?;
            let mut staging = Vec::new();
            stage(&mut entries, &mut staging, None)?;
            let copied = run(env, state, |memory| Ok::<_, JsError>(memory.read_v_ptr(&entries)))?;
            // The entries read before a failure are filled, as without staging.
            let done = copied.as_ref().map_or_else(|error| error.index, |()| entries.len());
            let mut start = 0;
            for (index, bytes) in buffers.iter().enumerate().take(done) {
                bytes
                    .write_back(&staging[start..start + bytes.len], "the buffer", "readv")
                    .map_err(|error| error.in_entry(index, ".buffer"))?;
                start += bytes.len;
            }
            copied.map_err(|error| error.to_js_error())?;
            undefined()
        }
    );

    fast_path!(
        /// `writev(id, gpas, ...buffers)` (the buffers copied first when hooks may run).
        writev, call_variadic, |env, state, args| {
            let stages = state.stages_buffers();
            let mut buffers = Vec::new();
            let mut entries = vectored_entries(env, &args[1..], stages.then_some(&mut buffers))?;
            let mut staging = Vec::new();
            if stages {
                stage(&mut entries, &mut staging, Some(&buffers))?;
            }
            run(env, state, |memory| memory.write_v_ptr(&entries))?;
            undefined()
        }
    );

    /// Declares the scalar load `$name(gpa)` of a `$ty`, and the store `$store(gpa, value)`
    /// whose value is read by `$read_value` (with the largest value of the type).
    macro_rules! scalar_paths {
        ($name:ident, $store:ident, $ty:ty, $read_value:expr) => {
            fast_path!(
                /// A scalar load `(id, gpa)`.
                $name, call::<2>, |env, state, args| {
                    let gpa = read_u64(env, args[1])?;
                    let loaded = run(env, state, |memory| memory.read_plain::<$ty>(gpa))?;
                    value(env, loaded)
                }
            );
            fast_path!(
                /// A scalar store `(id, gpa, value)`.
                $store, call::<3>, |env, state, args| {
                    let gpa = read_u64(env, args[1])?;
                    let stored: $ty = $read_value(env, args[2], <$ty>::MAX)?;
                    run(env, state, |memory| memory.write_plain(gpa, &stored))?;
                    undefined()
                }
            );
        };
    }

    /// A store's value given as a number: an integer in range for a type whose largest value
    /// is `max`.
    ///
    /// # Safety
    /// `env` and `value` must belong to the running callback.
    unsafe fn number_value<T: TryFrom<u64> + Into<u64> + Copy>(
        env: sys::napi_env,
        value: sys::napi_value,
        max: T,
    ) -> Result<T, JsError> {
        let mut number = 0f64;
        // SAFETY: a query on a value of the running callback.
        if unsafe { sys::napi_get_value_double(env, value, &mut number) } != sys::Status::napi_ok {
            return Err(JsError::arg_type("value must be an integer number"));
        }
        let number = js_api::args::scalar(number, max.into(), "value")?;
        Ok(T::try_from(number).unwrap_or(max))
    }

    /// A u64 store's value (a number or a bigint).
    ///
    /// # Safety
    /// `env` and `value` must belong to the running callback.
    unsafe fn u64_value(
        env: sys::napi_env,
        value: sys::napi_value,
        _max: u64,
    ) -> Result<u64, JsError> {
        // SAFETY: the caller's values.
        unsafe { read_u64(env, value) }
    }

    scalar_paths!(read_u8, write_u8, u8, number_value);
    scalar_paths!(read_u16, write_u16, u16, number_value);
    scalar_paths!(read_u32, write_u32, u32, number_value);
    scalar_paths!(read_u64_value, write_u64, u64, u64_value);

    type Callback = unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value;

    const FUNCTIONS: [(&str, Callback); 12] = [
        ("readAt", read_at),
        ("writeAt", write_at),
        ("readv", readv),
        ("writev", writev),
        ("readU8", read_u8),
        ("readU16", read_u16),
        ("readU32", read_u32),
        ("readU64", read_u64_value),
        ("writeU8", write_u8),
        ("writeU16", write_u16),
        ("writeU32", write_u32),
        ("writeU64", write_u64),
    ];

    /// An object holding the fast-path functions.
    pub fn functions(env: &Env) -> Result<RawValue, JsError> {
        let fail = || JsError::internal("cannot create the GuestMemory fast paths");
        let mut object = ptr::null_mut();
        // SAFETY: creates values in the live environment of this call; the functions' data is
        // this thread's table of memories (see `memory_of`).
        unsafe {
            if sys::napi_create_object(env.raw(), &mut object) != sys::Status::napi_ok {
                return Err(fail());
            }
            let data = MEMORIES.with(|memories| ptr::from_ref(memories).cast_mut().cast());
            for (name, callback) in FUNCTIONS {
                let mut function = ptr::null_mut();
                let name_len = name.len().try_into().unwrap_or(0);
                let c_name = c_string(name);
                if sys::napi_create_function(
                    env.raw(),
                    name.as_ptr().cast(),
                    name_len,
                    Some(callback),
                    data,
                    &mut function,
                ) != sys::Status::napi_ok
                    || sys::napi_set_named_property(env.raw(), object, c_name.as_ptr(), function)
                        != sys::Status::napi_ok
                {
                    return Err(fail());
                }
            }
        }
        Ok(RawValue(object))
    }
}
