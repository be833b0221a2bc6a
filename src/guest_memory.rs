//! Binding of `guestmem`: `GuestMemory`, `LockedPages`, and the asynchronous copies.
//!
//! Every access is a copy between guest memory and a caller's buffer (never a view of guest
//! memory). Synchronous operations publish the JavaScript environment so that hooks of a
//! memory made from a sparse mapping can run; the asynchronous copies run on the libuv pool
//! through Rust-owned buffers.

use crate::args::{usize_arg, RawBytes, U64};
use crate::errors::{
    closed, coded_with, fault_field, hex_field, into_status_error, invalid_arg, json_string,
    screaming_snake, JsError,
};
use crate::handles::{self, Shared};
use crate::js_hooks::{self, JsHookFunctions};
use crate::js_thread::with_env;
use crate::sparse_mapping::NativeSparseMapping;
use guestmem::{GuestMemory, GuestMemoryError, LockedPageAccessError, LockedPages, PagedRange};
use napi::bindgen_prelude::{AsyncTask, BigUint64Array, Buffer, Function};
use napi::{Env, Task};
use napi_derive::napi;
use std::rc::Rc;

/// A `GuestMemoryError` as a coded error: `ERR_GUEST_MEMORY_<KIND>`, or `ERR_GUEST_MEMORY_FAULT`
/// when a hardware fault ended it; with `kind`, `op`, `gpa`, `range`, `fault` and the token of a
/// JavaScript hook's exception (`causeToken`).
pub fn guest_error(err: &GuestMemoryError) -> JsError {
    let kind = err.kind().name();
    let code = if err.fault().is_some() {
        "ERR_GUEST_MEMORY_FAULT".to_owned()
    } else {
        format!("ERR_GUEST_MEMORY_{}", screaming_snake(kind))
    };
    let mut fields = vec![
        ("kind", json_string(kind)),
        ("op", json_string(err.operation().name())),
    ];
    if let Some(gpa) = err.gpa() {
        fields.push(("gpa", hex_field(gpa)));
    }
    if let Some(range) = err.range() {
        fields.push((
            "range",
            format!(
                "{{\"start\":{},\"end\":{}}}",
                hex_field(range.start),
                hex_field(range.end)
            ),
        ));
    }
    if let Some(fault) = err.fault() {
        fields.push(("fault", fault_field(&fault)));
    }
    if let Some(token) = js_hooks::cause_token(err) {
        fields.push(("causeToken", token.to_string()));
    } else if let Some(source) = std::error::Error::source(err) {
        // A cause from the core (e.g. the memory manager's `NoMapping`), as a coded error.
        if source.downcast_ref::<membacking::NoMapping>().is_some()
            || source.downcast_ref::<membacking::ManagerGone>().is_some()
        {
            fields.push(("cause", crate::manager::cause_json(source)));
        }
    }
    let mut message = err.to_string();
    if let Some(source) = std::error::Error::source(err) {
        message = format!("{message}: {source}");
    }
    coded_with(&code, message, &fields)
}

/// A scalar argument: an integer number in `0..=max`. A number that is not an integer (or not
/// finite) has the wrong type (`TypeError`); an integer outside the range is a `RangeError`.
fn scalar(value: f64, max: u64, name: &str) -> Result<u64, JsError> {
    if !value.is_finite() || value.fract() != 0.0 {
        return Err(crate::errors::coded(
            "ERR_INVALID_ARG_TYPE",
            format!("{name} must be an integer number, got {value}"),
        ));
    }
    if !(0.0..=max as f64).contains(&value) {
        return Err(invalid_arg(format!(
            "{name} must be an integer between 0 and {max}, got {value}"
        )));
    }
    Ok(value as u64)
}

fn aligned(gpa: u64, size: u64) -> Result<u64, JsError> {
    if !gpa.is_multiple_of(size) {
        return Err(invalid_arg(format!(
            "compare-exchange of {size} bytes needs a {size}-byte aligned address, got {gpa:#x}"
        )));
    }
    Ok(gpa)
}

/// Fault-safe access to guest physical memory.
#[napi]
pub struct NativeGuestMemory {
    /// The memory, shared with the fast-path handle ([`fast`]); `close()` empties it.
    state: Rc<fast::MemoryState>,
    handles: std::cell::RefCell<Vec<u64>>,
}

impl Drop for NativeGuestMemory {
    fn drop(&mut self) {
        handles::release(&self.handles.borrow());
    }
}

impl NativeGuestMemory {
    /// Wraps a core `GuestMemory` (also used by the memory manager's binding); its operations
    /// publish the environment, for JavaScript hooks it may have.
    pub fn wrap(memory: GuestMemory) -> Self {
        Self::wrap_with(memory, true)
    }

    /// Wraps a memory; `publish_env` = false for memories known to have no JavaScript hooks.
    fn wrap_with(memory: GuestMemory, publish_env: bool) -> Self {
        NativeGuestMemory {
            state: Rc::new(fast::MemoryState::new(memory, publish_env)),
            handles: Default::default(),
        }
    }

    /// The memory (a cheap clone: operations never hold a borrow of this object, so a hook may
    /// use or close it while an operation runs).
    fn memory(&self) -> Result<GuestMemory, JsError> {
        self.state.memory()
    }

    /// Runs `f` on the memory with the environment published for hooks.
    fn run<T>(
        &self,
        env: &Env,
        f: impl FnOnce(&GuestMemory) -> Result<T, GuestMemoryError>,
    ) -> Result<T, JsError> {
        let memory = self.memory()?;
        with_env(env, || f(&memory)).map_err(|err| guest_error(&err))
    }
}

#[napi]
impl NativeGuestMemory {
    /// Heap-backed memory of `size` bytes (rounded up to 4 KiB).
    #[napi(factory)]
    pub fn allocate(size: U64) -> Result<Self, JsError> {
        let size = usize_arg(size, "size")?;
        let memory = GuestMemory::try_allocate(size).map_err(|err| {
            coded_with(
                "ERR_ALLOCATION_FAILED",
                err.to_string(),
                &[("size", hex_field(size as u64))],
            )
        })?;
        Ok(Self::wrap_with(memory, false))
    }

    /// Memory of max address 0.
    #[napi(factory)]
    pub fn empty() -> Self {
        Self::wrap_with(GuestMemory::empty(), false)
    }

    /// Guest memory whose GPA is the offset in `mapping`, with optional JavaScript hooks.
    #[allow(clippy::too_many_arguments)]
    #[napi(factory)]
    pub fn from_sparse_mapping(
        env: Env,
        mapping: &NativeSparseMapping,
        name: String,
        retry_limit: u32,
        #[napi(
            ts_arg_type = "((gpa: bigint, len: bigint, write: boolean) => { action: number; kind: string; message: string; causeToken: number }) | null"
        )]
        page_fault: Option<Function<(), ()>>,
        #[napi(ts_arg_type = "((gpa: bigint, dest: Buffer) => number) | null")]
        read_fallback: Option<Function<(), ()>>,
        #[napi(ts_arg_type = "((gpa: bigint, src: Buffer) => number) | null")]
        write_fallback: Option<Function<(), ()>>,
        #[napi(ts_arg_type = "((gpa: bigint, byte: number, len: bigint) => number) | null")]
        fill_fallback: Option<Function<(), ()>>,
        #[napi(
            ts_arg_type = "((gpa: bigint, current: Buffer, replacement: Buffer) => number) | null"
        )]
        compare_exchange_fallback: Option<Function<(), ()>>,
        #[napi(ts_arg_type = "((gpns: BigUint64Array) => number) | null")] lock_gpns: Option<
            Function<(), ()>,
        >,
        #[napi(ts_arg_type = "((gpns: BigUint64Array) => void) | null")] unlock_gpns: Option<
            Function<(), ()>,
        >,
    ) -> Result<Self, JsError> {
        let mapping = mapping.mapping()?.clone();
        let has_hooks = [
            &page_fault,
            &read_fallback,
            &write_fallback,
            &fill_fallback,
            &compare_exchange_fallback,
            &lock_gpns,
            &unlock_gpns,
        ]
        .iter()
        .any(|hook| hook.is_some());
        let hooks = js_hooks::hooks(
            &env,
            JsHookFunctions {
                page_fault,
                read_fallback,
                write_fallback,
                fill_fallback,
                compare_exchange_fallback,
                lock_gpns,
                unlock_gpns,
            },
        )
        .map_err(|err| crate::errors::coded("ERR_PANIC", err.reason))?;
        let memory =
            GuestMemory::from_sparse_mapping(name, mapping, hooks).with_retry_limit(retry_limit);
        Ok(Self::wrap_with(memory, has_hooks))
    }

    /// Reopens a memory from a handle made by `toHandle()`.
    #[napi(factory)]
    pub fn from_handle(id: U64) -> Result<Self, JsError> {
        match handles::lookup(id.0)? {
            Shared::GuestMemory(memory) => Ok(Self::wrap(memory)),
            _ => Err(invalid_arg("the handle is not a GuestMemory handle")),
        }
    }

    /// This memory's fast paths (see [`fast`]): functions that operate on this memory.
    #[napi(
        ts_return_type = "{ readAt(gpa: U64, dest: Uint8Array): void; writeAt(gpa: U64, src: Uint8Array): void; readU8(gpa: U64): number; readU16(gpa: U64): number; readU32(gpa: U64): number; readU64(gpa: U64): bigint; writeU8(gpa: U64, value: number): void; writeU16(gpa: U64, value: number): void; writeU32(gpa: U64, value: number): void; writeU64(gpa: U64, value: U64): void }"
    )]
    pub fn fast_paths(&self, env: Env) -> Result<fast::RawValue, JsError> {
        fast::functions(&env, &self.state)
    }

    /// A handle id for `fromHandle` in a worker thread.
    #[napi]
    pub fn to_handle(&self) -> Result<u64, JsError> {
        let id = handles::register(Shared::GuestMemory(self.memory()?));
        self.handles.borrow_mut().push(id);
        Ok(id)
    }

    /// The debug name.
    #[napi(getter)]
    pub fn name(&self) -> Result<String, JsError> {
        Ok(self.memory()?.debug_name().to_owned())
    }

    /// The size of the address space.
    #[napi(getter)]
    pub fn max_address(&self) -> Result<u64, JsError> {
        Ok(self.memory()?.max_address())
    }

    // readAt, writeAt and the scalar loads and stores are the fast paths (`fastPaths()`).

    /// Fills `len` bytes at `gpa` with `byte`.
    #[napi]
    pub fn fill_at(&self, env: Env, gpa: U64, byte: f64, len: U64) -> Result<(), JsError> {
        let byte = scalar(byte, 0xff, "byte")? as u8;
        let len = usize_arg(len, "len")?;
        self.run(&env, |memory| memory.fill_at(gpa.0, byte, len))
    }

    #[napi(js_name = "compareExchangeU8")]
    pub fn compare_exchange_u8(
        &self,
        env: Env,
        gpa: U64,
        expected: f64,
        replacement: f64,
    ) -> Result<u32, JsError> {
        let current = scalar(expected, u8::MAX.into(), "expected")? as u8;
        let new = scalar(replacement, u8::MAX.into(), "replacement")? as u8;
        let result = self.run(&env, |memory| memory.compare_exchange(gpa.0, current, new))?;
        Ok(result.map_or_else(u32::from, |_| u32::from(current)))
    }

    #[napi(js_name = "compareExchangeU16")]
    pub fn compare_exchange_u16(
        &self,
        env: Env,
        gpa: U64,
        expected: f64,
        replacement: f64,
    ) -> Result<u32, JsError> {
        let gpa = aligned(gpa.0, 2)?;
        let current = scalar(expected, u16::MAX.into(), "expected")? as u16;
        let new = scalar(replacement, u16::MAX.into(), "replacement")? as u16;
        let result = self.run(&env, |memory| memory.compare_exchange(gpa, current, new))?;
        Ok(result.map_or_else(u32::from, |_| u32::from(current)))
    }

    #[napi(js_name = "compareExchangeU32")]
    pub fn compare_exchange_u32(
        &self,
        env: Env,
        gpa: U64,
        expected: f64,
        replacement: f64,
    ) -> Result<u32, JsError> {
        let gpa = aligned(gpa.0, 4)?;
        let current = scalar(expected, u32::MAX.into(), "expected")? as u32;
        let new = scalar(replacement, u32::MAX.into(), "replacement")? as u32;
        let result = self.run(&env, |memory| memory.compare_exchange(gpa, current, new))?;
        Ok(match result {
            Ok(_) => current,
            Err(observed) => observed,
        })
    }

    #[napi(js_name = "compareExchangeU64")]
    pub fn compare_exchange_u64(
        &self,
        env: Env,
        gpa: U64,
        expected: U64,
        replacement: U64,
    ) -> Result<u64, JsError> {
        let gpa = aligned(gpa.0, 8)?;
        let result = self.run(&env, |memory| {
            memory.compare_exchange(gpa, expected.0, replacement.0)
        })?;
        Ok(match result {
            Ok(_) => expected.0,
            Err(observed) => observed,
        })
    }

    /// A view of `offset..offset + len` with its own GPA 0.
    #[napi]
    pub fn subrange(&self, env: Env, offset: U64, len: U64) -> Result<NativeGuestMemory, JsError> {
        self.run(&env, |memory| memory.subrange(offset.0, len.0, false))
            .map(|sub| Self::wrap_with(sub, self.state.publishes_env()))
    }

    /// Whether a 1-byte read at `gpa` succeeds.
    #[napi]
    pub fn probe_readable(&self, env: Env, gpa: U64) -> Result<bool, JsError> {
        let memory = self.memory()?;
        Ok(with_env(&env, || memory.probe_gpa_readable(gpa.0)).is_ok())
    }

    /// Whether a compare-exchange of a byte with itself at `gpa` succeeds.
    #[napi]
    pub fn probe_writable(&self, env: Env, gpa: U64) -> Result<bool, JsError> {
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
    ) -> Result<(), JsError> {
        let range = paged_range(offset, len, &gpns, dest.len)?;
        let staging = self.run(&env, |memory| {
            let mut staging = vec![0u8; range.len()];
            memory.read_range(&range, &mut staging).map(|()| staging)
        })?;
        // SAFETY: `dest.ptr` is the caller's typed array, valid during this call for
        // `dest.len == staging.len()` bytes (checked by `paged_range`).
        unsafe { std::ptr::copy_nonoverlapping(staging.as_ptr(), dest.ptr, staging.len()) };
        Ok(())
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
    ) -> Result<(), JsError> {
        let range = paged_range(offset, len, &gpns, src.len)?;
        let mut staging = vec![0u8; src.len];
        // SAFETY: `src.ptr` is the caller's typed array of `src.len` bytes, valid during this
        // call; copying it out first keeps the guest write independent of concurrent changes.
        unsafe {
            std::ptr::copy_nonoverlapping(src.ptr.cast_const(), staging.as_mut_ptr(), src.len)
        };
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
    ) -> Result<(), JsError> {
        let len_bytes = usize_arg(len, "len")?;
        let range = paged_range(offset, len, &gpns, len_bytes)?;
        self.run(&env, |memory| memory.zero_range(&range))
    }

    /// Locks 4 KiB pages by number.
    #[napi]
    pub fn lock_gpns(&self, env: Env, gpns: BigUint64Array) -> Result<NativeLockedPages, JsError> {
        let gpns: Vec<u64> = gpns.to_vec();
        let locked = self.run(&env, |memory| memory.lock_gpns(false, &gpns))?;
        Ok(NativeLockedPages {
            inner: Some(locked),
            gpns,
        })
    }

    /// `read` on the libuv pool, through a Rust-owned buffer.
    #[napi]
    pub fn read_at_async(&self, gpa: U64, len: U64) -> Result<AsyncTask<ReadTask>, JsError> {
        Ok(AsyncTask::new(ReadTask {
            memory: self.memory()?,
            gpa: gpa.0,
            len: usize_arg(len, "len")?,
        }))
    }

    /// `writeAt` on the libuv pool; `src` is copied first.
    #[napi]
    pub fn write_at_async(&self, gpa: U64, src: RawBytes) -> Result<AsyncTask<WriteTask>, JsError> {
        let mut data = vec![0u8; src.len];
        // SAFETY: `src.ptr` is the caller's typed array of `src.len` bytes, valid during this
        // call (the copy is made before the task leaves the JavaScript thread).
        unsafe { std::ptr::copy_nonoverlapping(src.ptr.cast_const(), data.as_mut_ptr(), src.len) };
        Ok(AsyncTask::new(WriteTask {
            memory: self.memory()?,
            gpa: gpa.0,
            data,
        }))
    }

    /// Whether this memory offers DMA sharing (the memory manager's file-backed accessor).
    #[napi]
    pub fn has_sharing(&self) -> Result<bool, JsError> {
        Ok(self.memory()?.sharing().is_some())
    }

    /// The shareable (file-backed) regions of guest memory; `null` without sharing.
    #[napi(ts_return_type = "Promise<ShareableRegionItem[] | null>")]
    pub fn sharing_regions<'env>(
        &self,
        env: &'env Env,
    ) -> Result<napi::bindgen_prelude::Object<'env>, JsError> {
        let sharing = self.memory()?.sharing();
        crate::promise::promise(
            env,
            async move {
                match sharing {
                    Some(sharing) => sharing
                        .get_regions()
                        .await
                        .map(Some)
                        .map_err(|err| crate::errors::coded("ERR_SHARING", err.to_string())),
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
                            object: crate::sparse_mapping::NativeMappable::from_shared(region.file),
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
        self.state.close();
        handles::release(&self.handles.take());
    }
}

/// One shareable region of guest memory.
#[napi(object, object_from_js = false)]
pub struct ShareableRegionItem {
    pub guest_address: u64,
    pub size: u64,
    pub object: crate::sparse_mapping::NativeMappable,
    pub file_offset: u64,
}

/// Validates a scatter list and the caller's buffer length.
fn paged_range<'a>(
    offset: u32,
    len: U64,
    gpns: &'a [u64],
    buffer_len: usize,
) -> Result<PagedRange<'a>, JsError> {
    let len = usize_arg(len, "len")?;
    if offset as usize >= guestmem::PAGE_SIZE && !(offset == 0 && gpns.is_empty()) {
        return Err(invalid_arg(format!(
            "offset must be below the page size, got {offset}"
        )));
    }
    if len != buffer_len {
        return Err(invalid_arg(format!(
            "the buffer holds {buffer_len} bytes but the range is {len} bytes long"
        )));
    }
    PagedRange::new(offset as usize, len, gpns).ok_or_else(|| {
        invalid_arg(format!(
            "offset {offset} + len {len} exceeds the {} listed pages",
            gpns.len()
        ))
    })
}

/// `readAtAsync`'s work.
pub struct ReadTask {
    memory: GuestMemory,
    gpa: u64,
    len: usize,
}

impl Task for ReadTask {
    type Output = Vec<u8>;
    type JsValue = Buffer;

    fn compute(&mut self) -> napi::Result<Vec<u8>> {
        let mut data = vec![0u8; self.len];
        self.memory
            .read_at(self.gpa, &mut data)
            .map_err(|err| into_status_error(guest_error(&err)))?;
        Ok(data)
    }

    fn resolve(&mut self, _env: Env, output: Vec<u8>) -> napi::Result<Buffer> {
        Ok(Buffer::from(output))
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
        self.memory
            .write_at(self.gpa, &self.data)
            .map_err(|err| into_status_error(guest_error(&err)))
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }
}

/// Locked guest pages.
#[napi(custom_finalize)]
pub struct NativeLockedPages {
    inner: Option<LockedPages>,
    gpns: Vec<u64>,
}

impl napi::bindgen_prelude::ObjectFinalize for NativeLockedPages {
    fn finalize(mut self, env: Env) -> napi::Result<()> {
        // Unlock with the environment published, so a JavaScript `unlockGpns` hook runs.
        with_env(&env, || self.inner = None);
        Ok(())
    }
}

#[napi]
impl NativeLockedPages {
    /// The number of pages.
    #[napi(getter)]
    pub fn count(&self) -> u32 {
        self.gpns.len() as u32
    }

    /// The locked page numbers.
    #[napi(getter)]
    pub fn gpns(&self) -> BigUint64Array {
        BigUint64Array::new(self.gpns.clone())
    }

    /// Copies from page `page_index` at `offset` into `dest`.
    #[napi]
    pub fn read_at(&self, page_index: u32, offset: u32, dest: RawBytes) -> Result<(), JsError> {
        let locked = self.inner.as_ref().ok_or_else(|| closed("LockedPages"))?;
        // SAFETY: `dest` is the caller's typed array, `len` bytes, valid during this call.
        unsafe { locked.read_ptr(page_index as usize, offset as usize, dest.ptr, dest.len) }
            .map_err(|err| match err {
                LockedPageAccessError::Memory(memory) => coded_with(
                    "ERR_MEMORY",
                    format!("locked page access failed: {memory}"),
                    &[
                        ("offset", hex_field(memory.offset() as u64)),
                        ("isWrite", memory.is_write().to_string()),
                        ("fault", fault_field(&memory.fault())),
                    ],
                ),
                other => invalid_arg(other.to_string()),
            })
    }

    /// Unlocks once (idempotent).
    #[napi]
    pub fn release(&mut self, env: Env) {
        with_env(&env, || self.inner = None);
    }
}

/// Fast paths for the hottest operations (`readAt`, `writeAt`, the scalar loads and stores).
///
/// napi-rs's class methods pay for its borrow tracking on every call (a hash-map insert and
/// removal and an allocation for `&self`, plus a type-tag check of `this`), which costs more
/// than the copy itself for small accesses. These operations are plain N-API callbacks instead,
/// created for each memory with the memory's state as their callback data (`fastPaths()`), so
/// a call needs no lookup or validation of the receiver: N-API hands the data back and nobody
/// can forge it. Arguments are read with the fewest N-API calls for the common case (a number
/// or bigint address, a typed array), falling back to `args.rs` to report a bad argument. They
/// follow the binding's error transport (`errors.rs`): a thrown `Error` whose `code` carries
/// the coded error.
pub mod fast {
    use super::guest_error;
    use crate::args::{RawBytes, U64};
    use crate::errors::{closed, coded, JsError};
    use crate::js_thread::with_env;
    use guestmem::{GuestMemory, GuestMemoryError};
    use napi::bindgen_prelude::{FromNapiValue, ToNapiValue, TypeName};
    use napi::{sys, Env, ValueType};
    use std::cell::RefCell;
    use std::ffi::{c_void, CString};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::ptr;
    use std::rc::Rc;

    /// A memory as the native object and its fast paths share it. Only ever touched on the
    /// JavaScript thread that owns them (N-API callbacks run there).
    pub struct MemoryState {
        memory: RefCell<Option<GuestMemory>>,
        /// Whether operations must publish the environment (the memory may have JavaScript
        /// hooks); false for memories known to have none, which saves two thread-local writes.
        publish_env: bool,
    }

    impl MemoryState {
        pub fn new(memory: GuestMemory, publish_env: bool) -> Self {
            MemoryState {
                memory: RefCell::new(Some(memory)),
                publish_env,
            }
        }

        /// A clone of the memory (one reference-count increment), or `ERR_CLOSED`. The borrow
        /// ends at once, so a hook running during the operation may close the memory.
        pub fn memory(&self) -> Result<GuestMemory, JsError> {
            self.memory
                .borrow()
                .clone()
                .ok_or_else(|| closed("GuestMemory"))
        }

        /// Whether operations of this memory (and of its subranges) may reach JavaScript hooks.
        pub fn publishes_env(&self) -> bool {
            self.publish_env
        }

        pub fn close(&self) {
            let memory = self.memory.borrow_mut().take();
            drop(memory);
        }
    }

    /// A raw N-API value returned through napi-rs unchanged.
    pub struct RawValue(sys::napi_value);

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

    /// Releases the reference a fast-path function holds when the function is collected.
    unsafe extern "C" fn release_state(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
        // SAFETY: `data` is the `Rc` leaked by `functions` for this function, released once.
        drop(unsafe { Rc::from_raw(data.cast_const().cast::<MemoryState>()) });
    }

    /// What a fast path throws: a coded error or a napi-rs conversion error.
    enum Failure {
        Coded(JsError),
        Napi(napi::Error),
    }

    impl From<JsError> for Failure {
        fn from(err: JsError) -> Self {
            Failure::Coded(err)
        }
    }

    impl From<napi::Error> for Failure {
        fn from(err: napi::Error) -> Self {
            Failure::Napi(err)
        }
    }

    fn c_string(text: &str) -> CString {
        CString::new(text.replace('\0', "\u{fffd}")).unwrap_or_default()
    }

    /// Throws `failure` as an `Error` with `code` (the coded error or napi-rs status).
    fn throw(env: sys::napi_env, failure: Failure) {
        let (code, message) = match failure {
            Failure::Coded(err) => (err.status, err.reason),
            Failure::Napi(err) => (err.status.as_ref().to_owned(), err.reason),
        };
        let (code, message) = (c_string(&code), c_string(&message));
        // SAFETY: `env` is the environment of the running callback; both strings outlive the
        // call (N-API copies them).
        unsafe { sys::napi_throw_error(env, code.as_ptr(), message.as_ptr()) };
    }

    /// Runs a fast path: reads up to `N` arguments and the memory state, runs `body`, throws
    /// what it fails with. A panic (a bug) becomes an `ERR_PANIC` error instead of unwinding
    /// into Node.
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
        ) -> Result<sys::napi_value, Failure>,
    ) -> sys::napi_value {
        let mut args = [ptr::null_mut(); N];
        let mut argc = N;
        let mut data = ptr::null_mut();
        // SAFETY: `args` has room for `argc` values (missing arguments are filled with
        // `undefined`); `data` receives the callback data given at creation.
        let status = unsafe {
            sys::napi_get_cb_info(
                env,
                info,
                &mut argc,
                args.as_mut_ptr(),
                ptr::null_mut(),
                &mut data,
            )
        };
        let result = if status == sys::Status::napi_ok && !data.is_null() {
            // SAFETY: the callback data of every function made by `functions` is a
            // `Rc<MemoryState>` that the function keeps alive (released by its finalizer, which
            // cannot run while the function is being called).
            let state = unsafe { &*data.cast_const().cast::<MemoryState>() };
            catch_unwind(AssertUnwindSafe(|| body(env, state, &args))).unwrap_or_else(|payload| {
                Err(coded("ERR_PANIC", crate::errors::panic_text(payload.as_ref())).into())
            })
        } else {
            Err(coded("ERR_PANIC", "cannot read the arguments").into())
        };
        match result {
            Ok(value) => value,
            Err(failure) => {
                throw(env, failure);
                ptr::null_mut()
            }
        }
    }

    /// The largest integer a double holds exactly (2^53 − 1).
    const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

    /// A `U64` argument: one N-API call for a valid number or bigint; anything else is
    /// reported by `args::U64`.
    ///
    /// # Safety
    /// `env` and `value` must belong to the running callback.
    unsafe fn u64_arg(env: sys::napi_env, value: sys::napi_value) -> Result<u64, Failure> {
        let mut number = 0f64;
        // SAFETY: queries on a value of the running callback; a wrong type fails the call.
        unsafe {
            if sys::napi_get_value_double(env, value, &mut number) == sys::Status::napi_ok {
                // In range, an integer exactly when the conversion round-trips (cheaper than
                // `fract`, a libm call).
                if (0.0..=MAX_SAFE_INTEGER).contains(&number) && (number as u64) as f64 == number {
                    return Ok(number as u64);
                }
            } else {
                let (mut result, mut lossless) = (0u64, false);
                if sys::napi_get_value_bigint_uint64(env, value, &mut result, &mut lossless)
                    == sys::Status::napi_ok
                    && lossless
                {
                    return Ok(result);
                }
            }
            Ok(U64::from_napi_value(env, value)?.0)
        }
    }

    /// A typed-array argument as raw bytes: one N-API call for a typed array; anything else is
    /// reported by `args::RawBytes`.
    ///
    /// # Safety
    /// As for [`u64_arg`].
    unsafe fn bytes_arg(env: sys::napi_env, value: sys::napi_value) -> Result<RawBytes, Failure> {
        let (mut kind, mut length, mut data) = (0, 0usize, ptr::null_mut());
        // SAFETY: a query on a value of the running callback; a non-typed-array fails the call
        // (the optional outputs are not requested).
        let status = unsafe {
            sys::napi_get_typedarray_info(
                env,
                value,
                &mut kind,
                &mut length,
                &mut data,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if status == sys::Status::napi_ok {
            let element_size = match kind {
                sys::TypedarrayType::int8_array
                | sys::TypedarrayType::uint8_array
                | sys::TypedarrayType::uint8_clamped_array => 1,
                sys::TypedarrayType::int16_array | sys::TypedarrayType::uint16_array => 2,
                sys::TypedarrayType::int32_array
                | sys::TypedarrayType::uint32_array
                | sys::TypedarrayType::float32_array => 4,
                _ => 8,
            };
            if let Some(len) = length.checked_mul(element_size) {
                let ptr = if data.is_null() || len == 0 {
                    ptr::NonNull::<u8>::dangling().as_ptr()
                } else {
                    data.cast::<u8>()
                };
                return Ok(RawBytes { ptr, len });
            }
        }
        // SAFETY: forwarded contract.
        Ok(unsafe { RawBytes::from_napi_value(env, value) }?)
    }

    /// # Safety
    /// As for [`u64_arg`].
    unsafe fn scalar_arg(
        env: sys::napi_env,
        value: sys::napi_value,
        max: u64,
    ) -> Result<u64, Failure> {
        let mut number = 0f64;
        // SAFETY: a query on a value of the running callback.
        if unsafe { sys::napi_get_value_double(env, value, &mut number) } != sys::Status::napi_ok {
            return Err(coded("ERR_INVALID_ARG_TYPE", "value must be an integer number").into());
        }
        Ok(super::scalar(number, max, "value")?)
    }

    /// Runs a core operation on the memory. A memory that may have JavaScript hooks gets the
    /// environment published and is used through a clone (a hook may close it meanwhile); one
    /// without hooks runs no JavaScript during the operation, so it is used in place.
    fn run<T>(
        env: sys::napi_env,
        state: &MemoryState,
        f: impl FnOnce(&GuestMemory) -> Result<T, GuestMemoryError>,
    ) -> Result<T, Failure> {
        let result = if state.publish_env {
            let memory = state.memory()?;
            with_env(&Env::from_raw(env), || f(&memory))
        } else {
            let memory = state.memory.borrow();
            f(memory.as_ref().ok_or_else(|| closed("GuestMemory"))?)
        };
        result.map_err(|err| guest_error(&err).into())
    }

    fn created(
        status: sys::napi_status,
        value: sys::napi_value,
    ) -> Result<sys::napi_value, Failure> {
        if status == sys::Status::napi_ok {
            Ok(value)
        } else {
            Err(coded("ERR_PANIC", "cannot create the result").into())
        }
    }

    /// `undefined`: a callback that returns no value (null) returns `undefined` to JavaScript.
    fn undefined(_env: sys::napi_env) -> Result<sys::napi_value, Failure> {
        Ok(ptr::null_mut())
    }

    fn number(env: sys::napi_env, x: u32) -> Result<sys::napi_value, Failure> {
        let mut value = ptr::null_mut();
        // SAFETY: as above.
        created(
            unsafe { sys::napi_create_uint32(env, x, &mut value) },
            value,
        )
    }

    fn bigint(env: sys::napi_env, x: u64) -> Result<sys::napi_value, Failure> {
        let mut value = ptr::null_mut();
        // SAFETY: as above.
        created(
            unsafe { sys::napi_create_bigint_uint64(env, x, &mut value) },
            value,
        )
    }

    /// `readAt(gpa, dest)`.
    unsafe extern "C" fn read_at(
        env: sys::napi_env,
        info: sys::napi_callback_info,
    ) -> sys::napi_value {
        // SAFETY: the arguments of this callback.
        unsafe {
            call::<2>(env, info, |env, state, args| {
                let gpa = u64_arg(env, args[0])?;
                let dest = bytes_arg(env, args[1])?;
                // SAFETY: `dest` is the caller's typed array, valid during this call; it is only
                // written through the guarded copy (it may be shared memory).
                run(env, state, |memory| {
                    memory.read_ptr(gpa, dest.ptr, dest.len)
                })?;
                undefined(env)
            })
        }
    }

    /// `writeAt(gpa, src)`.
    unsafe extern "C" fn write_at(
        env: sys::napi_env,
        info: sys::napi_callback_info,
    ) -> sys::napi_value {
        // SAFETY: the arguments of this callback.
        unsafe {
            call::<2>(env, info, |env, state, args| {
                let gpa = u64_arg(env, args[0])?;
                let src = bytes_arg(env, args[1])?;
                // SAFETY: `src` is the caller's typed array, valid during this call.
                run(env, state, |memory| {
                    memory.write_ptr(gpa, src.ptr.cast_const(), src.len)
                })?;
                undefined(env)
            })
        }
    }

    macro_rules! read_scalar {
        ($name:ident, $ty:ty, $make:ident) => {
            /// A scalar load `(gpa)`.
            unsafe extern "C" fn $name(
                env: sys::napi_env,
                info: sys::napi_callback_info,
            ) -> sys::napi_value {
                // SAFETY: the arguments of this callback.
                unsafe {
                    call::<1>(env, info, |env, state, args| {
                        let gpa = u64_arg(env, args[0])?;
                        let value = run(env, state, |memory| memory.read_plain::<$ty>(gpa))?;
                        $make(env, value.into())
                    })
                }
            }
        };
    }

    read_scalar!(read_u8, u8, number);
    read_scalar!(read_u16, u16, number);
    read_scalar!(read_u32, u32, number);
    read_scalar!(read_u64, u64, bigint);

    macro_rules! write_scalar {
        ($name:ident, $ty:ty) => {
            /// A scalar store `(gpa, value)` of a number.
            unsafe extern "C" fn $name(
                env: sys::napi_env,
                info: sys::napi_callback_info,
            ) -> sys::napi_value {
                // SAFETY: the arguments of this callback.
                unsafe {
                    call::<2>(env, info, |env, state, args| {
                        let gpa = u64_arg(env, args[0])?;
                        let value = scalar_arg(env, args[1], <$ty>::MAX.into())? as $ty;
                        run(env, state, |memory| memory.write_plain(gpa, &value))?;
                        undefined(env)
                    })
                }
            }
        };
    }

    write_scalar!(write_u8, u8);
    write_scalar!(write_u16, u16);
    write_scalar!(write_u32, u32);

    /// `writeU64(gpa, value)` (value: U64).
    unsafe extern "C" fn write_u64(
        env: sys::napi_env,
        info: sys::napi_callback_info,
    ) -> sys::napi_value {
        // SAFETY: the arguments of this callback.
        unsafe {
            call::<2>(env, info, |env, state, args| {
                let gpa = u64_arg(env, args[0])?;
                let value = u64_arg(env, args[1])?;
                run(env, state, |memory| memory.write_plain(gpa, &value))?;
                undefined(env)
            })
        }
    }

    type Callback = unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value;

    const FUNCTIONS: [(&str, Callback); 10] = [
        ("readAt", read_at),
        ("writeAt", write_at),
        ("readU8", read_u8),
        ("readU16", read_u16),
        ("readU32", read_u32),
        ("readU64", read_u64),
        ("writeU8", write_u8),
        ("writeU16", write_u16),
        ("writeU32", write_u32),
        ("writeU64", write_u64),
    ];

    /// An object holding this memory's fast-path functions, each with a reference to `state`
    /// as its callback data.
    pub fn functions(env: &Env, state: &Rc<MemoryState>) -> Result<RawValue, JsError> {
        let fail = || coded("ERR_PANIC", "cannot create the GuestMemory fast paths");
        let mut object = ptr::null_mut();
        // SAFETY: creates values in the live environment of this call. Each function gets its
        // own leaked `Rc`, owned by its finalizer once that is attached (reclaimed here when a
        // step fails before, in which case the function is never handed out).
        unsafe {
            if sys::napi_create_object(env.raw(), &mut object) != sys::Status::napi_ok {
                return Err(fail());
            }
            for (name, callback) in FUNCTIONS {
                let data = Rc::into_raw(state.clone()).cast_mut().cast::<c_void>();
                let mut function = ptr::null_mut();
                let created = sys::napi_create_function(
                    env.raw(),
                    name.as_ptr().cast(),
                    name.len() as isize,
                    Some(callback),
                    data,
                    &mut function,
                ) == sys::Status::napi_ok
                    && sys::napi_add_finalizer(
                        env.raw(),
                        function,
                        data,
                        Some(release_state),
                        ptr::null_mut(),
                        ptr::null_mut(),
                    ) == sys::Status::napi_ok;
                if !created {
                    drop(Rc::from_raw(data.cast_const().cast::<MemoryState>()));
                    return Err(fail());
                }
                let name = c_string(name);
                if sys::napi_set_named_property(env.raw(), object, name.as_ptr(), function)
                    != sys::Status::napi_ok
                {
                    return Err(fail());
                }
            }
        }
        Ok(RawValue(object))
    }
}
