//! Baselines for the benchmarks (`bench/`), built only with the `bench` feature (never in the
//! published addon): native functions that do nothing, with the argument and result types of
//! the entry points they are compared with; the floors of the copy fast paths (plain N-API
//! functions that read the same arguments the same way and then only `memcpy`); and the raw
//! KVM slot churn of `virt_kvm::baseline`.

// Unsafe code: the floors are plain N-API callbacks that copy into the callers' buffers.
#![allow(unsafe_code)]

use crate::args::callback_args;
use crate::args::read_bytes;
use crate::args::read_u64;
use crate::args::Gpas;
use crate::args::RawBytes;
use crate::args::U64;
use crate::errors::throw;
use crate::errors::OrThrow;
use crate::guest_memory::fast::RawValue;
use js_api::JsError;
use napi_derive::napi;

/// An empty native call: no arguments, no result.
#[napi]
pub fn bench_noop() {}

/// The argument types of `NativeRegistrar.register`: two u64 in, `null` out.
#[napi]
pub fn bench_noop_bigints(a: U64, b: U64) -> Option<u32> {
    std::hint::black_box((a.0, b.0));
    None
}

/// The types of `GuestMemory#readU32`: a u64 in, a u32 out.
#[napi(js_name = "benchNoopU32")]
pub fn bench_noop_u32(gpa: U64) -> u32 {
    (gpa.0 & 0xffff_ffff) as u32
}

/// The types of `GuestMemory#readU64`: a u64 in, a bigint out.
#[napi(js_name = "benchNoopReadU64")]
pub fn bench_noop_read_u64(gpa: U64) -> u64 {
    gpa.0
}

/// The types of `GuestMemory#writeU64`: two u64 in, nothing out.
#[napi(js_name = "benchNoopWriteU64")]
pub fn bench_noop_write_u64(gpa: U64, value: U64) {
    std::hint::black_box((gpa.0, value.0));
}

/// The types of `GuestMemory#readAt`: a u64 and a typed array in, nothing out; touches nothing.
#[napi(js_name = "benchNoopReadAt")]
pub fn bench_noop_read_at(gpa: U64, dest: RawBytes) {
    std::hint::black_box((gpa.0, dest.ptr, dest.len));
}

/// Nanoseconds per raw `KVM_SET_USER_MEMORY_REGION` delete+create pair of a `size`-byte slot.
#[cfg(target_arch = "x86_64")]
#[napi(js_name = "benchKvmRawSlotChurn")]
pub fn bench_kvm_raw_slot_churn(size: U64, pairs: u32) -> napi::Result<f64> {
    let pairs = std::num::NonZeroU32::new(pairs)
        .ok_or_else(|| throw(JsError::arg_value("pairs must be at least 1")))?;
    let per_pair = virt_kvm::baseline::raw_slot_churn(size.0, pairs).or_throw()?;
    Ok(per_pair.as_secs_f64() * 1e9)
}

/// The bytes the copy floors read: 2 MiB of a pattern, like the benchmarks' guest memory.
fn floor_source() -> &'static [u8] {
    static SOURCE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SOURCE.get_or_init(|| vec![0x5a; 2 << 20])
}

/// Copies `dest.len` bytes of the floor source at `offset` (wrapped into the source) into
/// `dest`.
///
/// # Safety
/// `dest` is a caller's typed array valid for the running call.
unsafe fn floor_copy(offset: u64, dest: &RawBytes) {
    let source = floor_source();
    let len = dest.len.min(source.len());
    let start = usize::try_from(offset).unwrap_or(0) % (source.len() - len + 1);
    // SAFETY: `start + len <= source.len()`, and `dest` holds `dest.len >= len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(source.as_ptr().add(start), dest.ptr, len) };
}

/// The floor of `readAt(gpa, dest)`: the same two arguments read the same way, then a `memcpy`.
unsafe extern "C" fn floor_read_at(
    env: napi::sys::napi_env,
    info: napi::sys::napi_callback_info,
) -> napi::sys::napi_value {
    // SAFETY: the arguments of this callback and its values.
    unsafe {
        if let Some((args, _, _)) = callback_args::<2>(env, info) {
            if let (Ok(gpa), Ok(dest)) = (read_u64(env, args[0]), read_bytes(env, args[1])) {
                floor_copy(gpa, &dest);
            }
        }
    }
    std::ptr::null_mut()
}

/// The floor of `readv(gpas, ...buffers)`: the same arguments read the same way, then one
/// `memcpy` per buffer.
unsafe extern "C" fn floor_readv(
    env: napi::sys::napi_env,
    info: napi::sys::napi_callback_info,
) -> napi::sys::napi_value {
    // SAFETY: the arguments of this callback and its values; only the values it filled are
    // read.
    unsafe {
        let Some((args, argc, _)) = callback_args::<72>(env, info) else {
            return std::ptr::null_mut();
        };
        if let Some((&gpas, buffers)) = args[..argc.min(72)].split_first() {
            if let Ok(gpas) = Gpas::of(env, gpas, buffers.len()) {
                for (index, &buffer) in buffers.iter().enumerate() {
                    if let (Ok(gpa), Ok(dest)) = (gpas.get(index), read_bytes(env, buffer)) {
                        floor_copy(gpa, &dest);
                    }
                }
            }
        }
    }
    std::ptr::null_mut()
}

/// The copy floors as an object of plain N-API functions: `readAt(gpa, dest)` and
/// `readv(gpas, ...buffers)`.
#[napi(
    js_name = "benchCopyFloors",
    ts_return_type = "{ readAt(gpa: U64, dest: Uint8Array): void; readv(gpas: Float64Array, ...buffers: ArrayBufferView[]): void }"
)]
pub fn bench_copy_floors(env: napi::Env) -> napi::Result<RawValue> {
    type Callback = unsafe extern "C" fn(
        napi::sys::napi_env,
        napi::sys::napi_callback_info,
    ) -> napi::sys::napi_value;
    let functions: [(&str, Callback); 2] = [("readAt", floor_read_at), ("readv", floor_readv)];
    let fail = || throw(JsError::internal("cannot create the copy floors"));
    let mut object = std::ptr::null_mut();
    // SAFETY: creates values in the live environment of this call; the functions carry no data.
    unsafe {
        if napi::sys::napi_create_object(env.raw(), &mut object) != napi::sys::Status::napi_ok {
            return Err(fail());
        }
        for (name, callback) in functions {
            let mut function = std::ptr::null_mut();
            let c_name = std::ffi::CString::new(name).map_err(|_| fail())?;
            let created = napi::sys::napi_create_function(
                env.raw(),
                c_name.as_ptr(),
                name.len().try_into().unwrap_or(0),
                Some(callback),
                std::ptr::null_mut(),
                &mut function,
            ) == napi::sys::Status::napi_ok
                && napi::sys::napi_set_named_property(env.raw(), object, c_name.as_ptr(), function)
                    == napi::sys::Status::napi_ok;
            if !created {
                return Err(fail());
            }
        }
    }
    Ok(RawValue::new(object))
}
