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
    }
    let mut message = err.to_string();
    if let Some(source) = std::error::Error::source(err) {
        message = format!("{message}: {source}");
    }
    coded_with(&code, message, &fields)
}

/// A scalar argument: an integer number in `0..=max`.
fn scalar(value: f64, max: u64, name: &str) -> Result<u64, JsError> {
    if value.fract() != 0.0 || !(0.0..=max as f64).contains(&value) {
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
    inner: Option<GuestMemory>,
    handles: std::cell::RefCell<Vec<u64>>,
}

impl Drop for NativeGuestMemory {
    fn drop(&mut self) {
        handles::release(&self.handles.borrow());
    }
}

impl NativeGuestMemory {
    /// Wraps a core `GuestMemory` (also used by the memory manager's binding).
    pub fn wrap(memory: GuestMemory) -> Self {
        NativeGuestMemory {
            inner: Some(memory),
            handles: Default::default(),
        }
    }

    fn memory(&self) -> Result<&GuestMemory, JsError> {
        self.inner.as_ref().ok_or_else(|| closed("GuestMemory"))
    }

    /// Runs `f` on the memory with the environment published for hooks.
    fn run<T>(
        &self,
        env: &Env,
        f: impl FnOnce(&GuestMemory) -> Result<T, GuestMemoryError>,
    ) -> Result<T, JsError> {
        let memory = self.memory()?;
        with_env(env, || f(memory)).map_err(|err| guest_error(&err))
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
        Ok(Self::wrap(memory))
    }

    /// Memory of max address 0.
    #[napi(factory)]
    pub fn empty() -> Self {
        Self::wrap(GuestMemory::empty())
    }

    /// Guest memory whose GPA is the offset in `mapping`, with optional JavaScript hooks.
    #[allow(clippy::too_many_arguments)]
    #[napi(factory)]
    pub fn from_sparse_mapping(
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
        let hooks = js_hooks::hooks(JsHookFunctions {
            page_fault,
            read_fallback,
            write_fallback,
            fill_fallback,
            compare_exchange_fallback,
            lock_gpns,
            unlock_gpns,
        })
        .map_err(|err| crate::errors::coded("ERR_PANIC", err.reason))?;
        let memory =
            GuestMemory::from_sparse_mapping(name, mapping, hooks).with_retry_limit(retry_limit);
        Ok(Self::wrap(memory))
    }

    /// Reopens a memory from a handle made by `toHandle()`.
    #[napi(factory)]
    pub fn from_handle(id: U64) -> Result<Self, JsError> {
        match handles::lookup(id.0)? {
            Shared::GuestMemory(memory) => Ok(Self::wrap(memory)),
            _ => Err(invalid_arg("the handle is not a GuestMemory handle")),
        }
    }

    /// A handle id for `fromHandle` in a worker thread.
    #[napi]
    pub fn to_handle(&self) -> Result<u64, JsError> {
        let id = handles::register(Shared::GuestMemory(self.memory()?.clone()));
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

    /// Copies guest bytes at `gpa` into `dest`.
    #[napi]
    pub fn read_at(&self, env: Env, gpa: U64, dest: RawBytes) -> Result<(), JsError> {
        // SAFETY: `dest` is the caller's typed array, `len` bytes, valid during this call; it is
        // only written through the guarded copy (it may be shared memory).
        self.run(&env, |memory| unsafe {
            memory.read_ptr(gpa.0, dest.ptr, dest.len)
        })
    }

    /// Copies `src` to guest `gpa`.
    #[napi]
    pub fn write_at(&self, env: Env, gpa: U64, src: RawBytes) -> Result<(), JsError> {
        // SAFETY: `src` is the caller's typed array, `len` bytes, valid during this call.
        self.run(&env, |memory| unsafe {
            memory.write_ptr(gpa.0, src.ptr.cast_const(), src.len)
        })
    }

    /// Fills `len` bytes at `gpa` with `byte`.
    #[napi]
    pub fn fill_at(&self, env: Env, gpa: U64, byte: f64, len: U64) -> Result<(), JsError> {
        let byte = scalar(byte, 0xff, "byte")? as u8;
        let len = usize_arg(len, "len")?;
        self.run(&env, |memory| memory.fill_at(gpa.0, byte, len))
    }

    #[napi(js_name = "readU8")]
    pub fn read_u8(&self, env: Env, gpa: U64) -> Result<u32, JsError> {
        self.run(&env, |memory| memory.read_plain::<u8>(gpa.0))
            .map(u32::from)
    }

    #[napi(js_name = "readU16")]
    pub fn read_u16(&self, env: Env, gpa: U64) -> Result<u32, JsError> {
        self.run(&env, |memory| memory.read_plain::<u16>(gpa.0))
            .map(u32::from)
    }

    #[napi(js_name = "readU32")]
    pub fn read_u32(&self, env: Env, gpa: U64) -> Result<u32, JsError> {
        self.run(&env, |memory| memory.read_plain::<u32>(gpa.0))
    }

    #[napi(js_name = "readU64")]
    pub fn read_u64(&self, env: Env, gpa: U64) -> Result<u64, JsError> {
        self.run(&env, |memory| memory.read_plain::<u64>(gpa.0))
    }

    #[napi(js_name = "writeU8")]
    pub fn write_u8(&self, env: Env, gpa: U64, value: f64) -> Result<(), JsError> {
        let value = scalar(value, u8::MAX.into(), "value")? as u8;
        self.run(&env, |memory| memory.write_plain(gpa.0, &value))
    }

    #[napi(js_name = "writeU16")]
    pub fn write_u16(&self, env: Env, gpa: U64, value: f64) -> Result<(), JsError> {
        let value = scalar(value, u16::MAX.into(), "value")? as u16;
        self.run(&env, |memory| memory.write_plain(gpa.0, &value))
    }

    #[napi(js_name = "writeU32")]
    pub fn write_u32(&self, env: Env, gpa: U64, value: f64) -> Result<(), JsError> {
        let value = scalar(value, u32::MAX.into(), "value")? as u32;
        self.run(&env, |memory| memory.write_plain(gpa.0, &value))
    }

    #[napi(js_name = "writeU64")]
    pub fn write_u64(&self, env: Env, gpa: U64, value: U64) -> Result<(), JsError> {
        self.run(&env, |memory| memory.write_plain(gpa.0, &value.0))
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
            .map(Self::wrap)
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
            memory: self.memory()?.clone(),
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
            memory: self.memory()?.clone(),
            gpa: gpa.0,
            data,
        }))
    }

    /// Drops this reference.
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
        handles::release(&self.handles.take());
    }
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
