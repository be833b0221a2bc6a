//! JavaScript hooks of a `GuestMemory` built from a sparse mapping (`pageFault`, the slow-path
//! fallbacks, page locking), adapted to `guestmem::GuestMemoryHooks`.
//!
//! The TypeScript layer wraps every user hook so that it never throws: it answers with a number
//! (negative = failed, `-n` being the token under which it keeps the thrown value for the
//! error's `cause`), or, for `pageFault`, with `{action, kind, message, causeToken}`. A hook runs
//! only on the JavaScript thread that created it, inside a native call of that thread; anywhere
//! else (a libuv worker, another JavaScript thread) it answers "failed" with a clear message.

use crate::js_thread::Owner;
use guestmem::{
    GuestMemoryBackingError, GuestMemoryErrorKind, GuestMemoryHooks, PageFaultAction,
    PageFaultError,
};
use napi::bindgen_prelude::{Function, FunctionRef, JsValue};
use napi::{sys, Env};
use std::ptr;

/// The error a failed JavaScript hook leaves in the source chain: its message and the token of
/// the thrown value.
#[derive(Debug)]
pub struct JsHookFailure {
    pub message: String,
    pub cause_token: u32,
}

impl std::fmt::Display for JsHookFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JsHookFailure {}

/// The cause token of the JavaScript hook failure in `error`'s source chain, if any.
pub fn cause_token(error: &(dyn std::error::Error + 'static)) -> Option<u32> {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(failure) = err.downcast_ref::<JsHookFailure>() {
            return (failure.cause_token != 0).then_some(failure.cause_token);
        }
        current = err.source();
    }
    None
}

fn unavailable(hook: &str) -> JsHookFailure {
    JsHookFailure {
        message: format!(
            "the JavaScript {hook} hook can only run on the JavaScript thread that created the \
             memory, during a synchronous operation"
        ),
        cause_token: 0,
    }
}

/// One JavaScript function, callable on its owner thread only.
struct Hook {
    function: FunctionRef<(), ()>,
    owner: Owner,
    name: &'static str,
}

// `FunctionRef` is `Send + Sync` (napi-rs releases it on its own thread), and `Hook::call`
// checks the owner thread before touching the function.
impl Hook {
    fn new(function: Function<'_, (), ()>, name: &'static str) -> napi::Result<Self> {
        Ok(Hook {
            function: function.create_ref()?,
            owner: Owner::current(),
            name,
        })
    }

    /// Calls the function with `args` built in the owner's environment; `Err` when the hook
    /// cannot run here or the call itself failed.
    fn call(
        &self,
        args: impl FnOnce(&Env) -> Option<Vec<sys::napi_value>>,
    ) -> Result<(Env, sys::napi_value), JsHookFailure> {
        let env = self.owner.env().ok_or_else(|| unavailable(self.name))?;
        let function = self
            .function
            .borrow_back(&env)
            .map_err(|_| unavailable(self.name))?;
        let args = args(&env).ok_or_else(|| unavailable(self.name))?;
        let mut undefined = ptr::null_mut();
        let mut result = ptr::null_mut();
        // SAFETY: `env` is the live environment of this thread (checked by `Owner::env`), the
        // function and the arguments are values of that environment, created in this scope.
        let status = unsafe {
            sys::napi_get_undefined(env.raw(), &mut undefined);
            sys::napi_call_function(
                env.raw(),
                undefined,
                function.raw(),
                args.len(),
                args.as_ptr(),
                &mut result,
            )
        };
        if status != sys::Status::napi_ok {
            clear_exception(&env);
            return Err(JsHookFailure {
                message: format!("the JavaScript {} hook failed", self.name),
                cause_token: 0,
            });
        }
        Ok((env, result))
    }

    /// Calls the function and reads a number answer.
    fn call_number(
        &self,
        args: impl FnOnce(&Env) -> Option<Vec<sys::napi_value>>,
    ) -> Result<f64, JsHookFailure> {
        let (env, result) = self.call(args)?;
        let mut number = 0f64;
        // SAFETY: `result` is a value of `env`; a non-number makes the call fail (checked).
        let status = unsafe { sys::napi_get_value_double(env.raw(), result, &mut number) };
        if status != sys::Status::napi_ok {
            return Err(JsHookFailure {
                message: format!("the JavaScript {} hook gave no answer", self.name),
                cause_token: 0,
            });
        }
        Ok(number)
    }
}

/// Clears a pending exception left by a failed call (the wrappers never throw; this is a guard
/// against an environment that is shutting down).
fn clear_exception(env: &Env) {
    let mut pending = false;
    // SAFETY: plain queries on the live environment of this thread.
    unsafe {
        sys::napi_is_exception_pending(env.raw(), &mut pending);
        if pending {
            let mut exception = ptr::null_mut();
            sys::napi_get_and_clear_last_exception(env.raw(), &mut exception);
        }
    }
}

fn bigint(env: &Env, value: u64) -> Option<sys::napi_value> {
    let mut out = ptr::null_mut();
    // SAFETY: creates a value in the live environment of this thread.
    (unsafe { sys::napi_create_bigint_uint64(env.raw(), value, &mut out) } == sys::Status::napi_ok)
        .then_some(out)
}

fn number(env: &Env, value: f64) -> Option<sys::napi_value> {
    let mut out = ptr::null_mut();
    // SAFETY: creates a value in the live environment of this thread.
    (unsafe { sys::napi_create_double(env.raw(), value, &mut out) } == sys::Status::napi_ok)
        .then_some(out)
}

fn boolean(env: &Env, value: bool) -> Option<sys::napi_value> {
    let mut out = ptr::null_mut();
    // SAFETY: creates a value in the live environment of this thread.
    (unsafe { sys::napi_get_boolean(env.raw(), value, &mut out) } == sys::Status::napi_ok)
        .then_some(out)
}

/// A new JavaScript Buffer holding a copy of `bytes`, and its data pointer.
fn buffer(env: &Env, bytes: &[u8]) -> Option<(sys::napi_value, *mut u8)> {
    let mut data = ptr::null_mut();
    let mut out = ptr::null_mut();
    // SAFETY: creates a Buffer of `bytes.len()` bytes in the live environment of this thread;
    // `data` then points to its storage, which stays valid while the value is reachable (it is
    // on the stack of this native call).
    let status = unsafe { sys::napi_create_buffer(env.raw(), bytes.len(), &mut data, &mut out) };
    if status != sys::Status::napi_ok {
        return None;
    }
    let data = data.cast::<u8>();
    if !bytes.is_empty() {
        // SAFETY: `data` has room for `bytes.len()` bytes (just allocated, not yet shared).
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len()) };
    }
    Some((out, data))
}

/// A new `BigUint64Array` holding `values`.
fn bigint_array(env: &Env, values: &[u64]) -> Option<sys::napi_value> {
    let mut data = ptr::null_mut();
    let mut array_buffer = ptr::null_mut();
    let mut out = ptr::null_mut();
    let byte_len = std::mem::size_of_val(values);
    // SAFETY: creates an ArrayBuffer of `byte_len` bytes in the live environment of this thread,
    // fills it (its storage is `data`, not yet shared) and makes a view over all of it.
    unsafe {
        if sys::napi_create_arraybuffer(env.raw(), byte_len, &mut data, &mut array_buffer)
            != sys::Status::napi_ok
        {
            return None;
        }
        if byte_len > 0 {
            ptr::copy_nonoverlapping(values.as_ptr().cast::<u8>(), data.cast::<u8>(), byte_len);
        }
        if sys::napi_create_typedarray(
            env.raw(),
            sys::TypedarrayType::biguint64_array,
            values.len(),
            array_buffer,
            0,
            &mut out,
        ) != sys::Status::napi_ok
        {
            return None;
        }
    }
    Some(out)
}

fn failed(answer: f64, hook: &str) -> JsHookFailure {
    JsHookFailure {
        message: format!("the JavaScript {hook} hook failed"),
        cause_token: (-answer) as u32,
    }
}

fn kind_named(name: &str) -> GuestMemoryErrorKind {
    match name {
        "OutOfRange" => GuestMemoryErrorKind::OutOfRange,
        "VtlProtected" => GuestMemoryErrorKind::VtlProtected,
        "NotPrivate" => GuestMemoryErrorKind::NotPrivate,
        "NotShared" => GuestMemoryErrorKind::NotShared,
        _ => GuestMemoryErrorKind::Other,
    }
}

/// Reads `{action, kind, message, causeToken}` from the page-fault wrapper's answer.
fn page_fault_answer(env: &Env, answer: sys::napi_value) -> Option<PageFaultAction> {
    let get = |name: &std::ffi::CStr| -> Option<sys::napi_value> {
        let mut out = ptr::null_mut();
        // SAFETY: reads a property of a value of the live environment of this thread.
        (unsafe { sys::napi_get_named_property(env.raw(), answer, name.as_ptr(), &mut out) }
            == sys::Status::napi_ok)
            .then_some(out)
    };
    let read_number = |value: sys::napi_value| -> Option<f64> {
        let mut number = 0f64;
        // SAFETY: as above; a non-number fails the call.
        (unsafe { sys::napi_get_value_double(env.raw(), value, &mut number) }
            == sys::Status::napi_ok)
            .then_some(number)
    };
    let read_string = |value: sys::napi_value| -> Option<String> {
        let mut len = 0usize;
        // SAFETY: as above; first the length, then the bytes into a buffer of that size + 1.
        unsafe {
            if sys::napi_get_value_string_utf8(env.raw(), value, ptr::null_mut(), 0, &mut len)
                != sys::Status::napi_ok
            {
                return None;
            }
            let mut bytes = vec![0u8; len + 1];
            if sys::napi_get_value_string_utf8(
                env.raw(),
                value,
                bytes.as_mut_ptr().cast(),
                bytes.len(),
                &mut len,
            ) != sys::Status::napi_ok
            {
                return None;
            }
            bytes.truncate(len);
            String::from_utf8(bytes).ok()
        }
    };
    match read_number(get(c"action")?)? as u32 {
        0 => Some(PageFaultAction::Retry),
        1 => Some(PageFaultAction::Fallback),
        _ => {
            let kind = read_string(get(c"kind")?).unwrap_or_default();
            let message = read_string(get(c"message")?).unwrap_or_default();
            let cause_token = read_number(get(c"causeToken")?).unwrap_or(0.0) as u32;
            Some(PageFaultAction::Fail(PageFaultError::new(
                kind_named(&kind),
                JsHookFailure {
                    message,
                    cause_token,
                },
            )))
        }
    }
}

/// The user's hooks, as the functions the TypeScript wrappers made of them.
#[derive(Default)]
pub struct JsHookFunctions<'a> {
    pub page_fault: Option<Function<'a, (), ()>>,
    pub read_fallback: Option<Function<'a, (), ()>>,
    pub write_fallback: Option<Function<'a, (), ()>>,
    pub fill_fallback: Option<Function<'a, (), ()>>,
    pub compare_exchange_fallback: Option<Function<'a, (), ()>>,
    pub lock_gpns: Option<Function<'a, (), ()>>,
    pub unlock_gpns: Option<Function<'a, (), ()>>,
}

/// Builds the `GuestMemoryHooks` that call the given JavaScript functions.
pub fn hooks(functions: JsHookFunctions<'_>) -> napi::Result<GuestMemoryHooks> {
    let mut hooks = GuestMemoryHooks::default();
    if let Some(f) = functions.page_fault {
        let hook = Hook::new(f, "pageFault")?;
        hooks.page_fault = Some(Box::new(move |address, len, write, _bitmap| {
            let answer = hook.call(|env| {
                Some(vec![
                    bigint(env, address)?,
                    bigint(env, len as u64)?,
                    boolean(env, write)?,
                ])
            });
            match answer {
                Ok((env, value)) => page_fault_answer(&env, value).unwrap_or_else(|| {
                    PageFaultAction::Fail(PageFaultError::other(JsHookFailure {
                        message: "the JavaScript pageFault hook gave an unreadable answer".into(),
                        cause_token: 0,
                    }))
                }),
                Err(failure) => PageFaultAction::Fail(PageFaultError::other(failure)),
            }
        }));
    }
    if let Some(f) = functions.read_fallback {
        let hook = Hook::new(f, "readFallback")?;
        hooks.read_fallback = Some(Box::new(move |address, dest| {
            let mut staging = ptr::null_mut::<u8>();
            let answer = hook.call_number(|env| {
                let (value, data) = buffer(env, &vec![0; dest.len()])?;
                staging = data;
                Some(vec![bigint(env, address)?, value])
            });
            match answer {
                Ok(answer) if answer >= 0.0 => {
                    if !dest.is_empty() {
                        // SAFETY: `staging` is the data of the Buffer passed to the hook (still
                        // alive: it is a value of this native call's scope), `dest.len()` bytes.
                        unsafe { ptr::copy_nonoverlapping(staging, dest.as_mut_ptr(), dest.len()) };
                    }
                    Ok(())
                }
                Ok(answer) => Err(GuestMemoryBackingError::other(
                    address,
                    failed(answer, "readFallback"),
                )),
                Err(failure) => Err(GuestMemoryBackingError::other(address, failure)),
            }
        }));
    }
    if let Some(f) = functions.write_fallback {
        let hook = Hook::new(f, "writeFallback")?;
        hooks.write_fallback = Some(Box::new(move |address, src| {
            match hook.call_number(|env| Some(vec![bigint(env, address)?, buffer(env, src)?.0])) {
                Ok(answer) if answer >= 0.0 => Ok(()),
                Ok(answer) => Err(GuestMemoryBackingError::other(
                    address,
                    failed(answer, "writeFallback"),
                )),
                Err(failure) => Err(GuestMemoryBackingError::other(address, failure)),
            }
        }));
    }
    if let Some(f) = functions.fill_fallback {
        let hook = Hook::new(f, "fillFallback")?;
        hooks.fill_fallback = Some(Box::new(move |address, byte, len| {
            match hook.call_number(|env| {
                Some(vec![
                    bigint(env, address)?,
                    number(env, byte.into())?,
                    bigint(env, len as u64)?,
                ])
            }) {
                Ok(answer) if answer >= 0.0 => Ok(()),
                Ok(answer) => Err(GuestMemoryBackingError::other(
                    address,
                    failed(answer, "fillFallback"),
                )),
                Err(failure) => Err(GuestMemoryBackingError::other(address, failure)),
            }
        }));
    }
    if let Some(f) = functions.compare_exchange_fallback {
        let hook = Hook::new(f, "compareExchangeFallback")?;
        hooks.compare_exchange_fallback = Some(Box::new(move |address, current, new| {
            let mut staging = ptr::null_mut::<u8>();
            let answer = hook.call_number(|env| {
                let (value, data) = buffer(env, current)?;
                staging = data;
                Some(vec![bigint(env, address)?, value, buffer(env, new)?.0])
            });
            match answer {
                Ok(answer) if answer >= 0.0 => {
                    let swapped = answer == 0.0;
                    if !swapped && !current.is_empty() {
                        // SAFETY: `staging` is the data of the `current` Buffer the hook received
                        // (alive in this call's scope), `current.len()` bytes.
                        unsafe {
                            ptr::copy_nonoverlapping(staging, current.as_mut_ptr(), current.len())
                        };
                    }
                    Ok(swapped)
                }
                Ok(answer) => Err(GuestMemoryBackingError::other(
                    address,
                    failed(answer, "compareExchangeFallback"),
                )),
                Err(failure) => Err(GuestMemoryBackingError::other(address, failure)),
            }
        }));
    }
    if let Some(f) = functions.lock_gpns {
        let hook = Hook::new(f, "lockGpns")?;
        hooks.lock_gpns = Some(Box::new(move |gpns| {
            let first = gpns.first().map_or(u64::MAX, |gpn| gpn.wrapping_mul(4096));
            match hook.call_number(|env| Some(vec![bigint_array(env, gpns)?])) {
                Ok(answer) if answer >= 0.0 => Ok(answer > 0.0),
                Ok(answer) => Err(GuestMemoryBackingError::other(
                    first,
                    failed(answer, "lockGpns"),
                )),
                Err(failure) => Err(GuestMemoryBackingError::other(first, failure)),
            }
        }));
    }
    if let Some(f) = functions.unlock_gpns {
        let hook = Hook::new(f, "unlockGpns")?;
        hooks.unlock_gpns = Some(Box::new(move |gpns| {
            // An unlock that cannot reach JavaScript (another thread) is dropped: there is
            // nothing to report it to.
            let _ = hook.call(|env| Some(vec![bigint_array(env, gpns)?]));
        }));
    }
    Ok(hooks)
}
