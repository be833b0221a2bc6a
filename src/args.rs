//! JavaScript arguments as Rust values: `U64` (a `bigint` or a safe integer `number`) and
//! `RawBytes` (a typed array's bytes). The rules are `js_api::args`'; this file only reads the
//! values with N-API, with the fewest calls for the common case (the guest-memory fast paths use
//! the same readers).

// Unsafe code: N-API reads of the current call's argument values.
#![allow(unsafe_code)]

use crate::errors::OrThrow;
use js_api::args::u64_from_bigint;
use js_api::args::u64_from_number;
use js_api::JsError;
use napi::bindgen_prelude::FromNapiValue;
use napi::bindgen_prelude::TypeName;
use napi::bindgen_prelude::ValidateNapiValue;
use napi::sys;
use napi::ValueType;
use std::ptr;

/// A u64 argument. Its typings name is `U64`, declared by the `--dts-header` of the build
/// script.
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

/// The first `N` arguments of the running callback (missing ones are `undefined`), how many
/// the call had, and the callback's data; `None` when N-API cannot read them.
///
/// # Safety
/// `env` and `info` must be the arguments N-API passed to the running callback.
#[inline(always)]
pub unsafe fn callback_args<const N: usize>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Option<([sys::napi_value; N], usize, *mut std::ffi::c_void)> {
    let (mut args, mut argc, mut data) = ([ptr::null_mut(); N], N, ptr::null_mut());
    // SAFETY: `args` has room for `argc` values; `argc` receives the call's count and `data`
    // the callback data given at creation.
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
    (status == sys::Status::napi_ok).then_some((args, argc, data))
}

/// Reads a u64 argument: one N-API call for a valid number or bigint.
///
/// # Safety
/// `env` and `value` must belong to the running native call.
pub unsafe fn read_u64(env: sys::napi_env, value: sys::napi_value) -> Result<u64, JsError> {
    let mut number = 0f64;
    // SAFETY: a query on a value of the running call; a non-number fails the call.
    if unsafe { sys::napi_get_value_double(env, value, &mut number) } == sys::Status::napi_ok {
        return u64_from_number(number);
    }
    let (mut result, mut lossless) = (0u64, false);
    // SAFETY: as above; a non-bigint fails the call.
    let status =
        unsafe { sys::napi_get_value_bigint_uint64(env, value, &mut result, &mut lossless) };
    if status == sys::Status::napi_ok {
        return u64_from_bigint(result, lossless);
    }
    Err(JsError::arg_type("expected a number or a bigint"))
}

impl FromNapiValue for U64 {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        // SAFETY: napi-rs passes the values of the running call.
        unsafe { read_u64(env, value) }.map(U64).or_throw()
    }
}

/// A typed array (`Uint8Array`, `Buffer`, or any other, by its bytes) as raw memory valid for
/// the duration of the native call. It is never turned into a Rust slice: it may be a view of
/// a `SharedArrayBuffer` that other threads write meanwhile, so only the guarded copy routines
/// touch it. JavaScript that runs during the call (a memory's hooks) may detach or resize its
/// `ArrayBuffer`, after which `ptr` may point at freed memory: a call that runs hooks copies
/// through a buffer of its own and then [`RawBytes::write_back`].
pub struct RawBytes {
    pub ptr: *mut u8,
    pub len: usize,
    /// The environment and the value it was read from, to read it again.
    env: sys::napi_env,
    value: sys::napi_value,
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

/// Reads a typed-array argument with one N-API call.
///
/// # Safety
/// `env` and `value` must belong to the running native call.
pub unsafe fn read_bytes(env: sys::napi_env, value: sys::napi_value) -> Result<RawBytes, JsError> {
    // SAFETY: the caller's values.
    let Some((kind, length, data)) = (unsafe { typed_array_info(env, value) }) else {
        // SAFETY: as above.
        return unsafe { read_data_view(env, value) };
    };
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
        .ok_or_else(|| JsError::arg_value("typed array too large"))?;
    Ok(RawBytes::new(data, len, env, value))
}

/// The kind, element count and data of a typed-array argument; `None` for any other value.
///
/// # Safety
/// `env` and `value` must belong to the running native call.
unsafe fn typed_array_info(
    env: sys::napi_env,
    value: sys::napi_value,
) -> Option<(sys::napi_typedarray_type, usize, *mut std::ffi::c_void)> {
    let (mut kind, mut length, mut data) = (0, 0usize, ptr::null_mut());
    // SAFETY: a query on a value of the running call; a non-typed-array fails the call (the
    // optional outputs are not requested).
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
    (status == sys::Status::napi_ok).then_some((kind, length, data))
}

/// A `DataView` argument as raw memory (see [`read_bytes`]).
///
/// # Safety
/// As for [`read_bytes`].
unsafe fn read_data_view(env: sys::napi_env, value: sys::napi_value) -> Result<RawBytes, JsError> {
    let (mut len, mut data) = (0usize, ptr::null_mut());
    // SAFETY: a query on a value of the running call; a non-DataView fails the call.
    let status = unsafe {
        sys::napi_get_dataview_info(
            env,
            value,
            &mut len,
            &mut data,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if status != sys::Status::napi_ok {
        return Err(JsError::arg_type(
            "expected an ArrayBufferView (a Uint8Array, Buffer, other typed array or DataView)",
        ));
    }
    Ok(RawBytes::new(data, len, env, value))
}

/// The GPAs of a vectored copy: a `Float64Array` of safe integers (the common case: one N-API
/// call for them all), or an array of numbers and bigints (any u64), read one by one.
///
/// Reading an element of a JavaScript array may run JavaScript (a getter), which may detach or
/// resize any typed array; so the elements are all taken out of the array when it is read, and
/// the data of a typed array (these GPAs, a copy's buffers) must only be read after every such
/// read is done.
pub enum Gpas {
    /// The array's data; it holds at least as many numbers as there are entries.
    Numbers(*const f64),
    /// The array's elements, read (and checked) when the GPAs were read.
    Values(Vec<u64>),
}

impl Gpas {
    /// The GPAs of `count` entries in `value`. An array's elements are all read and checked
    /// now, stopping at the first bad one (reading one may run JavaScript: a getter); a
    /// `Float64Array` is checked and its data pointer taken, which stays valid only until
    /// JavaScript runs.
    ///
    /// # Safety
    /// `env` and `value` must belong to the running native call.
    pub unsafe fn of(
        env: sys::napi_env,
        value: sys::napi_value,
        count: usize,
    ) -> Result<Self, JsError> {
        // SAFETY: the caller's values.
        match unsafe { typed_array_info(env, value) } {
            Some((kind, length, data))
                if kind == sys::TypedarrayType::float64_array && length >= count =>
            {
                Ok(Gpas::Numbers(data.cast::<f64>().cast_const()))
            }
            Some(_) => Err(JsError::arg_type(format!(
                "the GPAs must be a Float64Array of at least {count} numbers"
            ))),
            None => (0..count)
                .map(|index| {
                    // SAFETY: the caller's values.
                    let gpa = match unsafe { array_element(env, value, index) } {
                        // SAFETY: `element` is a value of the running call.
                        Some(element) => unsafe { read_u64(env, element) },
                        None => Err(JsError::arg_type("the GPAs must be an array")),
                    };
                    gpa.map_err(|error| error.in_entry(index, ".gpa"))
                })
                .collect::<Result<_, _>>()
                .map(Gpas::Values),
        }
    }

    /// Whether these are a `Float64Array`'s numbers, read through its data pointer.
    pub fn is_typed_array(&self) -> bool {
        matches!(self, Gpas::Numbers(_))
    }

    /// The GPA of entry `index`. Runs no JavaScript.
    ///
    /// # Safety
    /// `index` is below the `count` given to [`Gpas::of`]; for a `Float64Array`, no JavaScript
    /// ran since `self` was read.
    pub unsafe fn get(&self, index: usize) -> Result<u64, JsError> {
        match *self {
            Gpas::Numbers(numbers) => {
                // SAFETY: `index < count <= length` elements of the live array; read one at a
                // time (never as a slice: the array could be shared with another thread).
                u64_from_number(unsafe { numbers.add(index).read_unaligned() })
                    .map_err(|error| error.in_entry(index, ".gpa"))
            }
            Gpas::Values(ref gpas) => gpas
                .get(index)
                .copied()
                .ok_or_else(|| JsError::arg_value("too many entries")),
        }
    }
}

/// Element `index` of the object `array` (which may run a getter: JavaScript); `None` when
/// N-API cannot read it (not an object, or the getter threw).
///
/// # Safety
/// `env` and `array` must belong to the running native call.
pub unsafe fn array_element(
    env: sys::napi_env,
    array: sys::napi_value,
    index: usize,
) -> Option<sys::napi_value> {
    let position = u32::try_from(index).ok()?;
    let mut element = ptr::null_mut();
    // SAFETY: a query on a value of the running call; a non-object fails it.
    let status = unsafe { sys::napi_get_element(env, array, position, &mut element) };
    (status == sys::Status::napi_ok).then_some(element)
}

impl FromNapiValue for RawBytes {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        // SAFETY: napi-rs passes the values of the running call.
        unsafe { read_bytes(env, value) }.or_throw()
    }
}

impl RawBytes {
    /// The `len` bytes at `data` (a dangling, aligned pointer when there are none) of `value`.
    fn new(
        data: *mut std::ffi::c_void,
        len: usize,
        env: sys::napi_env,
        value: sys::napi_value,
    ) -> Self {
        let ptr = if data.is_null() || len == 0 {
            ptr::NonNull::<u8>::dangling().as_ptr()
        } else {
            data.cast::<u8>()
        };
        RawBytes {
            ptr,
            len,
            env,
            value,
        }
    }

    /// Copies `staged` (as many bytes as this buffer had) into the buffer as it is now, after
    /// JavaScript that may have detached or resized it ran: read again, it must still hold
    /// `staged.len()` bytes (`js_api::args::unchanged_buffer`; `name` and `call` name it).
    pub fn write_back(&self, staged: &[u8], name: &str, call: &str) -> Result<(), JsError> {
        // SAFETY: `env` and `value` are of the native call this value was read in (its only
        // use), so they are still valid.
        let now = unsafe { read_bytes(self.env, self.value) }?;
        js_api::args::unchanged_buffer(name, call, staged.len(), now.len)?;
        // SAFETY: `now.ptr` is the buffer's current data, `staged.len()` bytes valid for
        // writing during the call; the copy is guarded (the buffer may be shared memory).
        unsafe { trycopy::try_copy(staged.as_ptr(), now.ptr, staged.len()) }
            .map_err(|error| JsError::internal(format!("cannot copy into {name}: {error}")))
    }

    /// A copy of the bytes (for work that leaves the call, or must not see later changes),
    /// made with the guarded copy like every access to them (they may be shared memory).
    pub fn to_vec(&self) -> Result<Vec<u8>, JsError> {
        let mut copy = vec![0u8; self.len];
        // SAFETY: `ptr` is the caller's typed array of `len` bytes, valid during the native call
        // this value was read in (its only use); `copy` has room for `len` bytes.
        unsafe { trycopy::try_copy(self.ptr.cast_const(), copy.as_mut_ptr(), self.len) }
            .map_err(|error| JsError::internal(format!("cannot read the buffer: {error}")))?;
        Ok(copy)
    }
}

/// A `U64` that must fit the address space (an offset or length of host memory).
pub fn host_size(value: U64, name: &str) -> napi::Result<usize> {
    js_api::args::host_size(value.0, name).or_throw()
}
