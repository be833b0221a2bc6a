//! Conversion of JavaScript arguments to core types.
//!
//! The TypeScript layer validates and normalizes every `number | bigint` to a `bigint` before it
//! calls in; these conversions still check everything, so that the raw native functions cannot
//! be made to crash or to misread a value either.

use crate::errors::{invalid_arg, JsError};
use memory_range::MemoryRange;
use napi::bindgen_prelude::{BigUint64Array, FromNapiValue, TypeName, ValidateNapiValue};
use napi::{sys, Status, ValueType};

/// A u64 argument: a bigint in 0..=2^64-1, or a number that is a safe non-negative integer.
///
/// Read with `napi_get_value_bigint_uint64` / `napi_get_value_double` (no allocation, unlike
/// napi-rs's general `BigInt`). Its typings name is `U64`, declared by the `--dts-header` of the
/// build script. A failed conversion carries its code at the start of the message
/// (`ERR_INVALID_ARG_TYPE: …`), which the TypeScript layer turns into a TypeError/RangeError.
#[derive(Clone, Copy, Debug)]
pub struct U64(pub u64);

impl TypeName for U64 {
    fn type_name() -> &'static str {
        "U64"
    }

    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

impl ValidateNapiValue for U64 {}

/// The largest integer a double holds exactly (2^53 − 1).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

fn conversion_error(message: &str) -> napi::Error {
    // `CODE\u{1f}message`: see `errors::into_status_error`.
    let (code, text) = message
        .split_once(": ")
        .unwrap_or(("ERR_INVALID_ARG_TYPE", message));
    napi::Error::new(Status::InvalidArg, format!("{code}\u{1f}{text}"))
}

impl FromNapiValue for U64 {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let mut kind = 0;
        // SAFETY: `env` and `value` are the ones napi-rs received for the current call.
        let status = unsafe { sys::napi_typeof(env, value, &mut kind) };
        if status != sys::Status::napi_ok {
            return Err(conversion_error(
                "ERR_INVALID_ARG_TYPE: unreadable argument",
            ));
        }
        match kind {
            sys::ValueType::napi_bigint => {
                let mut result = 0u64;
                let mut lossless = false;
                // SAFETY: `value` is a bigint (checked above); the out-pointers are locals.
                let status = unsafe {
                    sys::napi_get_value_bigint_uint64(env, value, &mut result, &mut lossless)
                };
                if status != sys::Status::napi_ok || !lossless {
                    return Err(conversion_error(
                        "ERR_INVALID_ARG_VALUE: a bigint argument must be between 0 and 2^64-1",
                    ));
                }
                Ok(U64(result))
            }
            sys::ValueType::napi_number => {
                let mut result = 0f64;
                // SAFETY: `value` is a number (checked above); the out-pointer is a local.
                let status = unsafe { sys::napi_get_value_double(env, value, &mut result) };
                let safe = (0.0..=MAX_SAFE_INTEGER).contains(&result) && result.fract() == 0.0;
                if status != sys::Status::napi_ok || !safe {
                    return Err(conversion_error(
                        "ERR_INVALID_ARG_TYPE: a number argument must be a safe non-negative integer",
                    ));
                }
                Ok(U64(result as u64))
            }
            _ => Err(conversion_error(
                "ERR_INVALID_ARG_TYPE: expected a number or a bigint",
            )),
        }
    }
}

/// Pairs `[start0, end0, start1, end1, …]` of a flat u64 array as ranges, each validated the
/// way `MemoryRange::new` would (without panicking).
pub fn ranges_arg(flat: &[u64], name: &str) -> Result<Vec<MemoryRange>, JsError> {
    if !flat.len().is_multiple_of(2) {
        return Err(invalid_arg(format!("{name} must hold start/end pairs")));
    }
    flat.chunks_exact(2)
        .map(|pair| range_arg(pair[0], pair[1], name))
        .collect()
}

/// One range from raw bounds; unaligned or reversed bounds are a `RangeError` (where
/// `MemoryRange::new` would panic), with the core's `InvalidMemoryRange` text.
pub fn range_arg(start: u64, end: u64, name: &str) -> Result<MemoryRange, JsError> {
    MemoryRange::try_new(start..end).map_err(|err| invalid_arg(format!("{name}: {err}")))
}

/// A flat range array argument.
pub fn range_list(array: &BigUint64Array, name: &str) -> Result<Vec<MemoryRange>, JsError> {
    ranges_arg(array, name)
}

/// Ranges as a flat `[start, end, …]` list (returned to JS as a `BigUint64Array`).
pub fn flatten(ranges: impl IntoIterator<Item = MemoryRange>) -> BigUint64Array {
    let flat: Vec<u64> = ranges
        .into_iter()
        .flat_map(|range| [range.start(), range.end()])
        .collect();
    BigUint64Array::new(flat)
}

/// A JavaScript typed array (`Uint8Array`, `Buffer`, or any other typed array, by its bytes) as
/// raw memory: a pointer and a byte length, valid for the duration of the native call.
///
/// It is never turned into a Rust slice: the buffer may be a view of a `SharedArrayBuffer`
/// that other threads write concurrently, so it is only ever handed to the guarded copy
/// routines as a raw pointer (guest-memory spec, hazard N12).
pub struct RawBytes {
    pub ptr: *mut u8,
    pub len: usize,
}

impl TypeName for RawBytes {
    fn type_name() -> &'static str {
        "Uint8Array"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ValidateNapiValue for RawBytes {}

impl FromNapiValue for RawBytes {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let mut is_typed_array = false;
        // SAFETY: `env` and `value` are the ones napi-rs received for the current call.
        let status = unsafe { sys::napi_is_typedarray(env, value, &mut is_typed_array) };
        if status != sys::Status::napi_ok || !is_typed_array {
            return Err(conversion_error(
                "ERR_INVALID_ARG_TYPE: expected a Uint8Array or Buffer",
            ));
        }
        let mut kind = 0;
        let mut length = 0usize;
        let mut data = std::ptr::null_mut();
        let mut array_buffer = std::ptr::null_mut();
        let mut byte_offset = 0usize;
        // SAFETY: `value` is a typed array (checked above); the out-pointers are locals.
        let status = unsafe {
            sys::napi_get_typedarray_info(
                env,
                value,
                &mut kind,
                &mut length,
                &mut data,
                &mut array_buffer,
                &mut byte_offset,
            )
        };
        if status != sys::Status::napi_ok {
            return Err(conversion_error(
                "ERR_INVALID_ARG_TYPE: unreadable typed array",
            ));
        }
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
        let len = length
            .checked_mul(element_size)
            .ok_or_else(|| conversion_error("ERR_INVALID_ARG_VALUE: typed array too large"))?;
        let ptr = if data.is_null() || len == 0 {
            std::ptr::NonNull::<u8>::dangling().as_ptr()
        } else {
            data.cast::<u8>()
        };
        Ok(RawBytes { ptr, len })
    }
}

/// A `U64` argument as a `usize` (offsets and lengths within this process's address space).
pub fn usize_arg(value: U64, name: &str) -> Result<usize, JsError> {
    usize::try_from(value.0)
        .map_err(|_| invalid_arg(format!("{name} does not fit in the address space")))
}
