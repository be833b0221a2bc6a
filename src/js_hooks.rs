//! JavaScript hooks of a `GuestMemory` built from a sparse mapping (`pageFault`, the slow-path
//! fallbacks, page locking), adapted to `guestmem::GuestMemoryHooks`.
//!
//! The TypeScript layer wraps every user hook so that it never throws and answers in JSON (or,
//! for a read or a compare-exchange that did not swap, with the bytes); the answers and their
//! meaning are `js_api::hooks`'. This file calls the functions on the right thread:
//! * on the JavaScript thread that created the memory, during a synchronous operation of that
//!   thread: directly (the operation published the environment, `js_thread`);
//! * on a thread that runs no JavaScript (a libuv pool thread doing `readAtAsync`, or any Rust
//!   thread): handed to the creating thread through a napi-rs `ThreadsafeFunction` while the
//!   calling thread waits for the answer. That thread is free then (it is not inside a
//!   synchronous operation waiting on us), so this cannot deadlock; if its environment goes
//!   away first, the hook fails;
//! * on another JavaScript thread (a worker that reopened the memory with `fromHandle`): the hook
//!   fails with a clear message. A synchronous operation never waits on another thread, so two
//!   JavaScript threads never wait on each other.

use crate::js_thread::current_env;
use crate::js_thread::Owner;
use guestmem::GuestMemoryBackingError;
use guestmem::GuestMemoryHooks;
use guestmem::PageFaultAction;
use guestmem::PageFaultError;
use js_api::hooks::compare_exchange_outcome;
use js_api::hooks::enter_hook;
use js_api::hooks::first_page_address;
use js_api::hooks::handoff;
use js_api::hooks::hook_answer;
use js_api::hooks::page_fault_action;
use js_api::hooks::read_fallback_data;
use js_api::hooks::wait_for_javascript;
use js_api::hooks::HookAnswer;
use js_api::hooks::JsHookFailure;
use js_api::hooks::DONE;
use js_api::hooks::LOCKED_OR_NOT;
use js_api::hooks::PROCESS_EXIT;
use napi::bindgen_prelude::BigUint64Array;
use napi::bindgen_prelude::Buffer;
use napi::bindgen_prelude::Either;
use napi::bindgen_prelude::FnArgs;
use napi::bindgen_prelude::FromNapiValue;
use napi::bindgen_prelude::Function;
use napi::bindgen_prelude::FunctionRef;
use napi::bindgen_prelude::JsValuesTupleIntoVec;
use napi::bindgen_prelude::Uint8Array;
use napi::threadsafe_function::ThreadsafeCallContext;
use napi::threadsafe_function::ThreadsafeFunction;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi::Env;
use napi::Status;
use napi_derive::napi;
use std::cell::RefCell;
use std::panic::catch_unwind;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

/// A hook's answer that may carry bytes (a read's data, a compare-exchange's observed value).
pub type BytesAnswer = Either<String, Uint8Array>;

pub type PageFault<'a> = Function<'a, FnArgs<(u64, u64, bool)>, String>;
pub type ReadFallback<'a> = Function<'a, FnArgs<(u64, u64)>, BytesAnswer>;
pub type WriteFallback<'a> = Function<'a, FnArgs<(u64, Buffer)>, String>;
pub type FillFallback<'a> = Function<'a, FnArgs<(u64, u8, u64)>, String>;
pub type CompareExchangeFallback<'a> = Function<'a, FnArgs<(u64, Buffer, Buffer)>, BytesAnswer>;
pub type LockGpns<'a> = Function<'a, FnArgs<(BigUint64Array,)>, String>;
pub type UnlockGpns<'a> = Function<'a, FnArgs<(BigUint64Array,)>, ()>;

/// A job for the creating JavaScript thread: runs with that thread's environment.
type Job = Box<dyn FnOnce(&Env) + Send>;

/// Runs [`Job`]s on the creating JavaScript thread. Built on an empty JavaScript function: the
/// job does its work in the call-JS callback (where napi-rs hands over the environment). Weak,
/// so that it never keeps the event loop alive by itself.
type JobRunner = ThreadsafeFunction<Job, (), (), Status, false, true>;

/// How often a waiting thread checks whether the creating environment went away.
const ABORT_POLL: Duration = Duration::from_millis(50);

struct JsThreadRunner {
    runner: JobRunner,
}

impl JsThreadRunner {
    fn new(env: &Env) -> napi::Result<Self> {
        let function =
            env.create_function_from_closure::<(), (), _>("membackingHookRunner", |_| Ok(()))?;
        let runner = function
            .build_threadsafe_function::<Job>()
            .callee_handled::<false>()
            .weak::<true>()
            .build_callback(|context: ThreadsafeCallContext<Job>| {
                // A panic must not unwind into Node; the job's channel then reports no answer.
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
        let job: Job = Box::new(move |env| {
            let _ = sender.send(job(env));
        });
        if self
            .runner
            .call(job, ThreadsafeFunctionCallMode::NonBlocking)
            != Status::Ok
        {
            return None;
        }
        // An environment being torn down drops queued jobs without running (or dropping)
        // them: stop waiting once the runner is closed, or once the process is exiting.
        wait_for_javascript(&receiver, ABORT_POLL, &PROCESS_EXIT, || {
            self.runner.aborted()
        })
    }
}

/// The main thread's `exit` event: the process is ending, and no hook will be answered any
/// more. Threads waiting for one give up, so that libuv can join its pool threads.
#[napi]
pub fn mark_process_exiting() {
    PROCESS_EXIT.mark();
}

/// The runner of this thread's JavaScript environment, if made: the environment (its address) and
/// the runner. One per environment, shared by every memory with hooks made there: a runner is
/// built on a JavaScript function, and from Node 22 on each `napi_create_function` leaves memory
/// behind in V8 that collection never returns (a runner per memory kept ~8 MiB in 18 more
/// mappings over 10,000 memories).
struct ThreadRunner(Option<(usize, Arc<JsThreadRunner>)>);

impl Drop for ThreadRunner {
    /// At thread exit the environment may be gone without its cleanup having run (a
    /// `process.exit()`): the runner is left alone then, as the process ends.
    fn drop(&mut self) {
        std::mem::forget(self.0.take());
    }
}

thread_local! {
    static THREAD_RUNNER: RefCell<ThreadRunner> = const { RefCell::new(ThreadRunner(None)) };
}

/// The runner of `env` (this thread's environment), made on first use; a new one once the
/// environment's teardown closed the old one.
fn thread_runner(env: &Env) -> napi::Result<Arc<JsThreadRunner>> {
    let key = env.raw() as usize;
    THREAD_RUNNER.with(|cell| {
        if let Some((owner, runner)) = &cell.borrow().0 {
            if *owner == key && !runner.runner.aborted() {
                return Ok(runner.clone());
            }
        }
        let runner = Arc::new(JsThreadRunner::new(env)?);
        // Released with the environment (memories still holding it keep it until they go).
        env.add_env_cleanup_hook(key, |key| {
            let _ = THREAD_RUNNER.try_with(|cell| {
                let mut cell = cell.borrow_mut();
                if matches!(&cell.0, Some((owner, _)) if *owner == key) {
                    cell.0 = None;
                }
            });
        })?;
        cell.borrow_mut().0 = Some((key, runner.clone()));
        Ok(runner)
    })
}

/// A hook: its function, the JavaScript thread that owns it, and the runner that reaches that
/// thread from threads that run no JavaScript.
struct Hook<A: JsValuesTupleIntoVec, R: FromNapiValue> {
    function: Arc<FunctionRef<A, R>>,
    name: &'static str,
    owner: Owner,
    runner: Arc<JsThreadRunner>,
}

impl<A: JsValuesTupleIntoVec + 'static, R: FromNapiValue + 'static> Hook<A, R> {
    fn new(
        function: Function<'_, A, R>,
        name: &'static str,
        runner: &Arc<JsThreadRunner>,
    ) -> napi::Result<Self> {
        Ok(Hook {
            function: Arc::new(function.create_ref()?),
            name,
            owner: Owner::current(),
            runner: runner.clone(),
        })
    }

    /// Calls the hook with the arguments `args` makes (on the thread the hook runs on) and reads
    /// its answer with `read`.
    fn call<T: Send + 'static>(
        &self,
        args: impl FnOnce() -> A + Send + 'static,
        read: impl FnOnce(R) -> Result<T, JsHookFailure> + Send + 'static,
    ) -> Result<T, JsHookFailure> {
        let (function, name) = (self.function.clone(), self.name);
        let invoke = move |env: &Env| {
            let answer = function
                .borrow_back(env)
                .and_then(|f| f.call(args()))
                .map_err(|_| JsHookFailure::failed(name, None))?;
            read(answer)
        };
        if let Some(env) = self.owner.env() {
            // A hook that accesses its memory may call a hook again: bounded (`js_api::hooks`).
            let _call = enter_hook(name)?;
            return invoke(&env);
        }
        handoff(name, self.owner.is_current(), current_env().is_some())?;
        self.runner.run_blocking(invoke).unwrap_or_else(|| {
            Err(JsHookFailure::unreachable(
                name,
                "after the JavaScript thread that created the memory stopped",
            ))
        })
    }
}

impl<A: JsValuesTupleIntoVec + 'static> Hook<A, String> {
    /// Calls a hook that answers in JSON, which must be one of `expected` (see `hook_answer`).
    fn answer(
        &self,
        args: impl FnOnce() -> A + Send + 'static,
        expected: [HookAnswer; 2],
    ) -> Result<bool, JsHookFailure> {
        let name = self.name;
        self.call(args, move |answer| hook_answer(&answer, name, expected))
    }
}

/// A hook's answer that may carry bytes, as `js_api` reads it.
fn bytes_answer(answer: BytesAnswer) -> js_api::hooks::BytesAnswer {
    match answer {
        Either::A(json) => js_api::hooks::BytesAnswer::Json(json),
        Either::B(bytes) => js_api::hooks::BytesAnswer::Bytes(bytes.to_vec()),
    }
}

/// The user's hooks, as the functions the TypeScript wrappers made of them.
pub struct JsHookFunctions<'a> {
    pub page_fault: Option<PageFault<'a>>,
    pub read_fallback: Option<ReadFallback<'a>>,
    pub write_fallback: Option<WriteFallback<'a>>,
    pub fill_fallback: Option<FillFallback<'a>>,
    pub compare_exchange_fallback: Option<CompareExchangeFallback<'a>>,
    pub lock_gpns: Option<LockGpns<'a>>,
    pub unlock_gpns: Option<UnlockGpns<'a>>,
}

/// Builds the `GuestMemoryHooks` that call the given JavaScript functions (`env` is the
/// creating thread's environment); `None` when no hook is given.
pub fn hooks(env: &Env, functions: JsHookFunctions<'_>) -> napi::Result<Option<GuestMemoryHooks>> {
    // The runner is looked up (and made, once per environment) with the first hook only.
    let mut any = false;
    let mut runner = || {
        any = true;
        thread_runner(env)
    };
    let failed = |address: u64| {
        move |failure: JsHookFailure| GuestMemoryBackingError::other(address, failure)
    };
    let mut hooks = GuestMemoryHooks::default();
    if let Some(f) = functions.page_fault {
        let hook = Hook::new(f, "pageFault", &runner()?)?;
        hooks.page_fault = Some(Box::new(move |address, len, write, _bitmap| {
            let args = move || FnArgs::from((address, len as u64, write));
            hook.call(args, |answer| Ok(page_fault_action(&answer)))
                .unwrap_or_else(|failure| PageFaultAction::Fail(PageFaultError::other(failure)))
        }));
    }
    if let Some(f) = functions.read_fallback {
        let hook = Hook::new(f, "readFallback", &runner()?)?;
        hooks.read_fallback = Some(Box::new(move |address, dest| {
            let len = dest.len();
            let read = move |answer| read_fallback_data(bytes_answer(answer), len);
            let data = hook.call(move || FnArgs::from((address, len as u64)), read);
            dest.copy_from_slice(&data.map_err(failed(address))?);
            Ok(())
        }));
    }
    if let Some(f) = functions.write_fallback {
        let hook = Hook::new(f, "writeFallback", &runner()?)?;
        hooks.write_fallback = Some(Box::new(move |address, src| {
            let src = src.to_vec();
            let args = move || FnArgs::from((address, Buffer::from(src)));
            hook.answer(args, DONE).map(drop).map_err(failed(address))
        }));
    }
    if let Some(f) = functions.fill_fallback {
        let hook = Hook::new(f, "fillFallback", &runner()?)?;
        hooks.fill_fallback = Some(Box::new(move |address, byte, len| {
            let args = move || FnArgs::from((address, byte, len as u64));
            hook.answer(args, DONE).map(drop).map_err(failed(address))
        }));
    }
    if let Some(f) = functions.compare_exchange_fallback {
        let hook = Hook::new(f, "compareExchangeFallback", &runner()?)?;
        hooks.compare_exchange_fallback = Some(Box::new(move |address, current, new| {
            let (expected, new, len) = (current.to_vec(), new.to_vec(), current.len());
            let args = move || FnArgs::from((address, Buffer::from(expected), Buffer::from(new)));
            let read = move |answer| compare_exchange_outcome(bytes_answer(answer), len);
            match hook.call(args, read).map_err(failed(address))? {
                // Not swapped: the wrapper answered with the bytes it observed.
                Some(observed) => {
                    current.copy_from_slice(&observed);
                    Ok(false)
                }
                None => Ok(true),
            }
        }));
    }
    if let Some(f) = functions.lock_gpns {
        let hook = Hook::new(f, "lockGpns", &runner()?)?;
        hooks.lock_gpns = Some(Box::new(move |gpns| {
            let first = first_page_address(gpns);
            let gpns = gpns.to_vec();
            let args = move || FnArgs::from((BigUint64Array::new(gpns),));
            hook.answer(args, LOCKED_OR_NOT).map_err(failed(first))
        }));
    }
    if let Some(f) = functions.unlock_gpns {
        let hook = Hook::new(f, "unlockGpns", &runner()?)?;
        hooks.unlock_gpns = Some(Box::new(move |gpns| {
            let gpns = gpns.to_vec();
            // An unlock that cannot reach JavaScript (another JavaScript thread, an environment
            // that is gone) is dropped: there is nothing to report it to.
            let _ = hook.call(move || FnArgs::from((BigUint64Array::new(gpns),)), Ok);
        }));
    }
    Ok(any.then_some(hooks))
}
