//! JavaScript hooks of a `GuestMemory` built from a sparse mapping (`pageFault`, the slow-path
//! fallbacks, page locking), adapted to `guestmem::GuestMemoryHooks`.
//!
//! The TypeScript layer wraps every user hook so that it never throws: it answers with a number
//! (negative = failed, `-n` being the token under which it keeps the thrown value for the
//! error's `cause`), or, for `pageFault`, with `{action, kind, message, causeToken}`.
//!
//! Where a hook runs (spec guest-memory §3.13):
//! * on the JavaScript thread that created the memory, during a synchronous operation of that
//!   thread: called directly (the operation published the environment, `js_thread`);
//! * on a thread that runs no JavaScript (a libuv pool thread doing `readAtAsync`/`writeAtAsync`,
//!   or any Rust thread): handed to the creating thread through a napi-rs `ThreadsafeFunction`
//!   while the calling thread blocks on a channel for the answer. That thread is free then (it
//!   is not inside a synchronous operation waiting on us), so this cannot deadlock; if its
//!   environment goes away first, the hook answers "failed";
//! * on another JavaScript thread (a worker that reopened the memory with `fromHandle`): the
//!   hook answers "failed" with a clear message. A synchronous operation never waits on another
//!   thread, so two JavaScript threads can never wait on each other.

use crate::js_thread::{current_env, Owner};
use guestmem::{
    GuestMemoryBackingError, GuestMemoryErrorKind, GuestMemoryHooks, PageFaultAction,
    PageFaultError,
};
use napi::bindgen_prelude::{Function, FunctionRef, JsValue};
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode, UnknownReturnValue,
};
use napi::{sys, Env, Status};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

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

impl JsHookFailure {
    fn new(message: String) -> Self {
        JsHookFailure {
            message,
            cause_token: 0,
        }
    }
}

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

/// A job for the creating JavaScript thread: runs with that thread's environment.
type Job = Box<dyn FnOnce(&Env) + Send>;

/// The threadsafe function that runs [`Job`]s on the creating JavaScript thread. It is built on
/// an empty JavaScript function: the job itself does the work in the call-JS callback (where
/// napi-rs hands over the environment), and the empty function is what napi-rs calls after it.
/// Weak, so that it never keeps the event loop alive by itself.
type JobRunner = ThreadsafeFunction<Job, UnknownReturnValue, (), Status, false, true>;

/// How often a blocked thread checks whether the creating environment went away.
const ABORT_POLL: Duration = Duration::from_millis(50);

/// The empty JavaScript function under the job runner.
unsafe extern "C" fn empty_function(
    _env: sys::napi_env,
    _info: sys::napi_callback_info,
) -> sys::napi_value {
    ptr::null_mut()
}

/// Runs closures on the creating JavaScript thread on behalf of threads that run no JavaScript.
struct JsThreadRunner {
    runner: JobRunner,
}

impl JsThreadRunner {
    fn new(env: &Env) -> napi::Result<Self> {
        let function =
            env.create_function::<(), UnknownReturnValue>("membackingHookRunner", empty_function)?;
        let runner = function
            .build_threadsafe_function::<Job>()
            .callee_handled::<false>()
            .weak::<true>()
            .build_callback(|context: ThreadsafeCallContext<Job>| {
                // A panic must not unwind into Node (the job's own code never panics; this is a
                // guard). The job's channel then reports "no answer".
                let _ = catch_unwind(AssertUnwindSafe(|| (context.value)(&context.env)));
                Ok(())
            })?;
        Ok(JsThreadRunner { runner })
    }

    /// Runs `job` on the creating thread and waits for its result; `None` when that thread's
    /// environment is gone (or going) and the job will never run.
    fn run_blocking<R: Send + 'static>(
        &self,
        job: impl FnOnce(&Env) -> R + Send + 'static,
    ) -> Option<R> {
        let (sender, receiver) = sync_channel(1);
        let status = self.runner.call(
            Box::new(move |env: &Env| {
                let _ = sender.send(job(env));
            }),
            ThreadsafeFunctionCallMode::NonBlocking,
        );
        if status != Status::Ok {
            return None;
        }
        loop {
            match receiver.recv_timeout(ABORT_POLL) {
                Ok(result) => return Some(result),
                // The job was dropped without running.
                Err(RecvTimeoutError::Disconnected) => return None,
                // An environment being torn down drops queued jobs without running them (and
                // without dropping them): stop waiting once the runner is closed.
                Err(RecvTimeoutError::Timeout) if self.runner.aborted() => return None,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// One JavaScript function and where it may be called.
struct HookFunction {
    function: FunctionRef<(), ()>,
    name: &'static str,
}

impl HookFunction {
    /// Calls the function in `env` (its own environment, on its thread) with `args` built there.
    fn invoke(
        &self,
        env: &Env,
        args: impl FnOnce(&Env) -> Option<Vec<sys::napi_value>>,
    ) -> Result<sys::napi_value, JsHookFailure> {
        let broken = || JsHookFailure::new(format!("the JavaScript {} hook failed", self.name));
        let function = self.function.borrow_back(env).map_err(|_| broken())?;
        let args = args(env).ok_or_else(broken)?;
        let mut undefined = ptr::null_mut();
        let mut result = ptr::null_mut();
        // SAFETY: `env` is the live environment of this thread (the caller's contract), the
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
            clear_exception(env);
            return Err(broken());
        }
        Ok(result)
    }

    /// Calls the function and reads a number answer.
    fn invoke_number(
        &self,
        env: &Env,
        args: impl FnOnce(&Env) -> Option<Vec<sys::napi_value>>,
    ) -> Result<f64, JsHookFailure> {
        let result = self.invoke(env, args)?;
        let mut number = 0f64;
        // SAFETY: `result` is a value of `env`; a non-number makes the call fail (checked).
        let status = unsafe { sys::napi_get_value_double(env.raw(), result, &mut number) };
        if status != sys::Status::napi_ok {
            return Err(JsHookFailure::new(format!(
                "the JavaScript {} hook gave no answer",
                self.name
            )));
        }
        Ok(number)
    }
}

/// A hook: its function, the JavaScript thread that owns it, and the runner that reaches that
/// thread from threads that run no JavaScript.
struct Hook {
    function: Arc<HookFunction>,
    owner: Owner,
    owner_thread: ThreadId,
    runner: Arc<JsThreadRunner>,
}

impl Hook {
    fn new(
        function: Function<'_, (), ()>,
        name: &'static str,
        runner: &Arc<JsThreadRunner>,
    ) -> napi::Result<Self> {
        Ok(Hook {
            function: Arc::new(HookFunction {
                function: function.create_ref()?,
                name,
            }),
            owner: Owner::current(),
            owner_thread: std::thread::current().id(),
            runner: runner.clone(),
        })
    }

    /// Runs a hook call: `local` directly when this is the owner thread inside one of its native
    /// calls; otherwise, from a thread that runs no JavaScript, the closure `remote()` makes (it
    /// owns its data) on the owner thread through the runner, waiting for the answer.
    fn run<R, L, M, F>(&self, local: L, remote: M) -> Result<R, JsHookFailure>
    where
        R: Send + 'static,
        L: FnOnce(&Env, &HookFunction) -> Result<R, JsHookFailure>,
        M: FnOnce() -> F,
        F: FnOnce(&Env, &HookFunction) -> Result<R, JsHookFailure> + Send + 'static,
    {
        if let Some(env) = self.owner.env() {
            return local(&env, &self.function);
        }
        match current_env() {
            // The owner thread outside a native call that published its environment: waiting
            // for itself would hang, so fail (no entry point does this; a guard).
            None if std::thread::current().id() == self.owner_thread => {
                Err(self.unavailable("outside a native call"))
            }
            // Another JavaScript thread: never wait on a second JavaScript thread.
            Some(_) => Err(self.unavailable("on another JavaScript thread")),
            None => {
                let body = remote();
                let function = self.function.clone();
                self.runner
                    .run_blocking(move |env| body(env, &function))
                    .unwrap_or_else(|| {
                        Err(self.unavailable(
                            "after the JavaScript thread that created the memory stopped",
                        ))
                    })
            }
        }
    }

    /// Like [`run`](Self::run) with one closure for both paths (its captures are owned values).
    fn run_owned<R, F>(&self, body: F) -> Result<R, JsHookFailure>
    where
        R: Send + 'static,
        F: FnOnce(&Env, &HookFunction) -> Result<R, JsHookFailure> + Send + Clone + 'static,
    {
        self.run(body.clone(), || body)
    }

    fn unavailable(&self, context: &str) -> JsHookFailure {
        JsHookFailure::new(format!(
            "the JavaScript {} hook cannot run {context}: it runs on the JavaScript thread that \
             created the memory (synchronous operations of that thread, and asynchronous \
             operations of any thread)",
            self.function.name
        ))
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

impl JsHookFunctions<'_> {
    fn is_empty(&self) -> bool {
        self.page_fault.is_none()
            && self.read_fallback.is_none()
            && self.write_fallback.is_none()
            && self.fill_fallback.is_none()
            && self.compare_exchange_fallback.is_none()
            && self.lock_gpns.is_none()
            && self.unlock_gpns.is_none()
    }
}

/// A hook's numeric answer: `>= 0` is success, `-token` a failure whose thrown value is kept
/// under `token`.
fn checked(answer: Result<f64, JsHookFailure>, hook: &str) -> Result<f64, JsHookFailure> {
    match answer {
        Ok(answer) if answer >= 0.0 => Ok(answer),
        Ok(answer) => Err(failed(answer, hook)),
        Err(failure) => Err(failure),
    }
}

/// `pageFault(gpa, len, write)` → the decision.
fn page_fault_call(
    env: &Env,
    function: &HookFunction,
    address: u64,
    len: u64,
    write: bool,
) -> Result<PageFaultAction, JsHookFailure> {
    let answer = function.invoke(env, |env| {
        Some(vec![
            bigint(env, address)?,
            bigint(env, len)?,
            boolean(env, write)?,
        ])
    })?;
    Ok(page_fault_answer(env, answer).unwrap_or_else(|| {
        PageFaultAction::Fail(PageFaultError::other(JsHookFailure::new(
            "the JavaScript pageFault hook gave an unreadable answer".into(),
        )))
    }))
}

/// `readFallback(gpa, dest)`: the wrapper fills a new Buffer, copied into `dest` on success.
fn read_fallback_call(
    env: &Env,
    function: &HookFunction,
    address: u64,
    dest: &mut [u8],
) -> Result<(), JsHookFailure> {
    let mut staging = ptr::null_mut::<u8>();
    let answer = function.invoke_number(env, |env| {
        let (value, data) = buffer(env, &vec![0; dest.len()])?;
        staging = data;
        Some(vec![bigint(env, address)?, value])
    });
    checked(answer, "readFallback")?;
    if !dest.is_empty() {
        // SAFETY: `staging` is the data of the Buffer passed to the hook (still alive: it is a
        // value of the current handle scope), `dest.len()` bytes.
        unsafe { ptr::copy_nonoverlapping(staging, dest.as_mut_ptr(), dest.len()) };
    }
    Ok(())
}

/// `compareExchangeFallback(gpa, current, new)`: 0 = swapped; otherwise the wrapper wrote the
/// observed bytes into `current`.
fn compare_exchange_call(
    env: &Env,
    function: &HookFunction,
    address: u64,
    current: &mut [u8],
    new: &[u8],
) -> Result<bool, JsHookFailure> {
    let mut staging = ptr::null_mut::<u8>();
    let answer = function.invoke_number(env, |env| {
        let (value, data) = buffer(env, current)?;
        staging = data;
        Some(vec![bigint(env, address)?, value, buffer(env, new)?.0])
    });
    let swapped = checked(answer, "compareExchangeFallback")? == 0.0;
    if !swapped && !current.is_empty() {
        // SAFETY: `staging` is the data of the `current` Buffer the hook received (alive in
        // this handle scope), `current.len()` bytes.
        unsafe { ptr::copy_nonoverlapping(staging, current.as_mut_ptr(), current.len()) };
    }
    Ok(swapped)
}

/// Builds the `GuestMemoryHooks` that call the given JavaScript functions (`env` is the
/// creating thread's environment).
pub fn hooks(env: &Env, functions: JsHookFunctions<'_>) -> napi::Result<GuestMemoryHooks> {
    let mut hooks = GuestMemoryHooks::default();
    if functions.is_empty() {
        return Ok(hooks);
    }
    let runner = Arc::new(JsThreadRunner::new(env)?);
    if let Some(f) = functions.page_fault {
        let hook = Hook::new(f, "pageFault", &runner)?;
        hooks.page_fault = Some(Box::new(move |address, len, write, _bitmap| {
            hook.run_owned(move |env, function| {
                page_fault_call(env, function, address, len as u64, write)
            })
            .unwrap_or_else(|failure| PageFaultAction::Fail(PageFaultError::other(failure)))
        }));
    }
    if let Some(f) = functions.read_fallback {
        let hook = Hook::new(f, "readFallback", &runner)?;
        hooks.read_fallback = Some(Box::new(move |address, dest| {
            let len = dest.len();
            let result = hook.run(
                |env, function| read_fallback_call(env, function, address, dest).map(|()| None),
                || {
                    move |env: &Env, function: &HookFunction| {
                        let mut data = vec![0u8; len];
                        read_fallback_call(env, function, address, &mut data).map(|()| Some(data))
                    }
                },
            );
            match result {
                Ok(Some(data)) => {
                    dest.copy_from_slice(&data);
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(failure) => Err(GuestMemoryBackingError::other(address, failure)),
            }
        }));
    }
    if let Some(f) = functions.write_fallback {
        let hook = Hook::new(f, "writeFallback", &runner)?;
        hooks.write_fallback = Some(Box::new(move |address, src| {
            let call = move |env: &Env, function: &HookFunction, src: &[u8]| {
                let answer = function.invoke_number(env, |env| {
                    Some(vec![bigint(env, address)?, buffer(env, src)?.0])
                });
                checked(answer, "writeFallback").map(|_| ())
            };
            hook.run(
                |env, function| call(env, function, src),
                || {
                    let src = src.to_vec();
                    move |env: &Env, function: &HookFunction| call(env, function, &src)
                },
            )
            .map_err(|failure| GuestMemoryBackingError::other(address, failure))
        }));
    }
    if let Some(f) = functions.fill_fallback {
        let hook = Hook::new(f, "fillFallback", &runner)?;
        hooks.fill_fallback = Some(Box::new(move |address, byte, len| {
            hook.run_owned(move |env, function| {
                let answer = function.invoke_number(env, |env| {
                    Some(vec![
                        bigint(env, address)?,
                        number(env, byte.into())?,
                        bigint(env, len as u64)?,
                    ])
                });
                checked(answer, "fillFallback").map(|_| ())
            })
            .map_err(|failure| GuestMemoryBackingError::other(address, failure))
        }));
    }
    if let Some(f) = functions.compare_exchange_fallback {
        let hook = Hook::new(f, "compareExchangeFallback", &runner)?;
        hooks.compare_exchange_fallback = Some(Box::new(move |address, current, new| {
            // At most 8 bytes each: both paths work on owned copies.
            let (observed, new) = (current.to_vec(), new.to_vec());
            let result = hook.run_owned(move |env, function| {
                let mut observed = observed;
                compare_exchange_call(env, function, address, &mut observed, &new)
                    .map(|swapped| (swapped, observed))
            });
            match result {
                Ok((swapped, observed)) => {
                    current.copy_from_slice(&observed);
                    Ok(swapped)
                }
                Err(failure) => Err(GuestMemoryBackingError::other(address, failure)),
            }
        }));
    }
    if let Some(f) = functions.lock_gpns {
        let hook = Hook::new(f, "lockGpns", &runner)?;
        hooks.lock_gpns = Some(Box::new(move |gpns| {
            let first = gpns.first().map_or(u64::MAX, |gpn| gpn.wrapping_mul(4096));
            let call = move |env: &Env, function: &HookFunction, gpns: &[u64]| {
                let answer =
                    function.invoke_number(env, |env| Some(vec![bigint_array(env, gpns)?]));
                checked(answer, "lockGpns").map(|answer| answer > 0.0)
            };
            hook.run(
                |env, function| call(env, function, gpns),
                || {
                    let gpns = gpns.to_vec();
                    move |env: &Env, function: &HookFunction| call(env, function, &gpns)
                },
            )
            .map_err(|failure| GuestMemoryBackingError::other(first, failure))
        }));
    }
    if let Some(f) = functions.unlock_gpns {
        let hook = Hook::new(f, "unlockGpns", &runner)?;
        hooks.unlock_gpns = Some(Box::new(move |gpns| {
            let call = move |env: &Env, function: &HookFunction, gpns: &[u64]| {
                function
                    .invoke(env, |env| Some(vec![bigint_array(env, gpns)?]))
                    .map(|_| ())
            };
            // An unlock that cannot reach JavaScript (another JavaScript thread, or an
            // environment that is gone) is dropped: there is nothing to report it to.
            let _ = hook.run(
                |env, function| call(env, function, gpns),
                || {
                    let gpns = gpns.to_vec();
                    move |env: &Env, function: &HookFunction| call(env, function, &gpns)
                },
            );
        }));
    }
    Ok(hooks)
}
