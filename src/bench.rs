//! Baselines for the benchmarks (`bench/`), built only with the `bench` feature (never in the
//! published addon): native functions that do nothing, with the argument and result types of
//! the entry points they are compared with, and the raw KVM slot churn of `virt_kvm::baseline`.

use crate::args::RawBytes;
use crate::args::U64;
use crate::errors::throw;
use crate::errors::thrown;
use crate::errors::OrThrow;
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
