//! Baselines for the benchmarks (`bench/`): native functions that do nothing, with the same
//! argument and return types as the entry points they are compared with, so that a ratio
//! measures what our binding and core add on top of a plain N-API call. Not public API.

use crate::args::U64;
use napi_derive::napi;

/// An empty native call: no arguments, no result.
#[napi]
pub fn bench_noop() {}

/// Same signature as `NativeRegistrar.register`: two u64 arguments in, `null` out.
#[napi]
pub fn bench_noop_bigints(a: U64, b: U64) -> Option<u32> {
    // The arguments are converted as the real entry point converts them.
    if a.0 == u64::MAX && b.0 == u64::MAX {
        Some(0)
    } else {
        None
    }
}

/// Same argument and result types as `GuestMemory#readU32`: a u64 in, a u32 out.
#[napi(js_name = "benchNoopU32")]
pub fn bench_noop_u32(gpa: U64) -> u32 {
    gpa.0 as u32
}

/// Same argument and result types as `GuestMemory#readU64`: a u64 in, a bigint out.
#[napi(js_name = "benchNoopReadU64")]
pub fn bench_noop_read_u64(gpa: U64) -> u64 {
    gpa.0
}

/// Same argument and result types as `GuestMemory#writeU64`: two u64 in, nothing out.
#[napi(js_name = "benchNoopWriteU64")]
pub fn bench_noop_write_u64(gpa: U64, value: U64) {
    std::hint::black_box((gpa.0, value.0));
}

/// Same argument types as `GuestMemory#readAt`: a u64 and a typed array in, nothing out; it
/// touches nothing.
#[napi(js_name = "benchNoopReadAt")]
pub fn bench_noop_read_at(gpa: U64, dest: crate::args::RawBytes) {
    std::hint::black_box((gpa.0, dest.ptr, dest.len));
}
