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
