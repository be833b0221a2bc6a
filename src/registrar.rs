//! Binding of `underhill_mem`'s `MemoryRegistrar` to a JavaScript registration callback.
//!
//! The callback may finish synchronously (return or throw) or return a Promise. All chunk
//! coordination lives in the core's async path (`MemoryRegistrar::register_async`); this file
//! only adapts the callback and drives the core's futures with a tiny executor that runs on the
//! JavaScript thread:
//!
//! * `register()` creates the future and polls it once. If every callback it ran was synchronous
//!   the future is complete after that poll and the result is returned (or thrown) at once.
//!   Otherwise the future is parked as a task and its id is returned; the TypeScript layer hands
//!   the caller a Promise for it.
//! * The TypeScript wrapper around the user's callback reports a Promise by returning a token
//!   and later calls `settleRegistrationCallback(token, failed)`. That completes a oneshot
//!   channel, whose waker queues the task; every entry point drains the queue before returning
//!   and reports finished tasks through the `onSettled` function given at construction.
//!
//! Nothing here blocks or spawns threads: every poll happens inside a call from JavaScript.

use crate::args::U64;
use crate::errors::{coded, coded_with, guard, hex_field, JsError};
use crate::js_thread::{current_env, with_env};
use crate::layout::NativeLayout;
use futures::channel::oneshot;
use memory_range::MemoryRange;
use napi::bindgen_prelude::{FnArgs, Function, FunctionRef};
use napi::Env;
use napi_derive::napi;
use parking_lot::Mutex;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use underhill_mem::{MemoryRegistrar, RegisterMemoryAsync, Registration};

/// The callback's error as the core sees it: which failure token holds the JS error value.
#[derive(Debug)]
struct CallbackFailed {
    cause_token: u32,
}

impl std::fmt::Display for CallbackFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the registration callback failed (cause {})",
            self.cause_token
        )
    }
}

impl std::error::Error for CallbackFailed {}

/// `(taskId, status, address, causeToken, panicMessage)`: status 0 = ok, 1 = registration
/// failed at `address` (cause token 0 = none), 2 = the core panicked with `panicMessage`.
type SettledArgs = FnArgs<(u32, u32, u64, u32, String)>;

/// The JavaScript side of one registrar: the wrapped callback and the settle notifier.
struct JsCallback {
    /// `(start, end) => number`: 0 = done, > 0 = pending token, < 0 = failed with token −n.
    callback: FunctionRef<FnArgs<(u64, u64)>, f64>,
    on_settled: FunctionRef<SettledArgs, ()>,
    /// Set while the callback runs, to reject re-entry.
    in_callback: Cell<bool>,
}

thread_local! {
    /// Failure token recorded by the callback adapter during the current poll.
    static POLL_CAUSE: Cell<Option<u32>> = const { Cell::new(None) };
    /// Senders of pending JavaScript registrations, by token.
    static PENDING_CALLBACKS: RefCell<HashMap<u32, oneshot::Sender<bool>>> = RefCell::new(HashMap::new());
    /// The executor of this JavaScript thread.
    static EXECUTOR: Executor = Executor::new();
}

/// The registrar's callback: shared with the binding, which also needs the notifier.
struct SharedCallback(Rc<JsCallback>);

impl RegisterMemoryAsync for SharedCallback {
    type Error = CallbackFailed;

    fn start_registration(&self, range: MemoryRange) -> Registration<CallbackFailed> {
        self.0.start(range)
    }
}

impl JsCallback {
    /// Calls the JavaScript callback for `range` and adapts its answer.
    fn start(&self, range: MemoryRange) -> Registration<CallbackFailed> {
        let answer = current_env()
            .ok_or(())
            .and_then(|env| {
                let callback = self.callback.borrow_back(&env).map_err(drop)?;
                self.in_callback.set(true);
                let answer = callback.call(FnArgs::from((range.start(), range.end())));
                self.in_callback.set(false);
                answer.map_err(drop)
            })
            // The TypeScript wrapper never throws; if the call failed anyway (no environment,
            // a terminating worker), the registration fails without a cause.
            .unwrap_or(-0.5);
        if answer == 0.0 {
            Registration::Ready(Ok(()))
        } else if answer < 0.0 {
            let cause_token = (-answer) as u32;
            POLL_CAUSE.with(|cause| cause.set(Some(cause_token)));
            Registration::Ready(Err(CallbackFailed { cause_token }))
        } else {
            let token = answer as u32;
            let (sender, receiver) = oneshot::channel();
            PENDING_CALLBACKS.with(|pending| pending.borrow_mut().insert(token, sender));
            Registration::Pending(Box::pin(async move {
                // A dropped sender (its registrar went away) counts as a failure.
                let failed = receiver.await.unwrap_or(true);
                if failed {
                    POLL_CAUSE.with(|cause| cause.set(Some(token)));
                    Err(CallbackFailed { cause_token: token })
                } else {
                    Ok(())
                }
            }))
        }
    }
}

type RegistrarRc = Rc<MemoryRegistrar<SharedCallback>>;

/// A parked registration.
struct Task {
    future: Pin<Box<dyn Future<Output = Result<(), u64>>>>,
    js: Rc<JsCallback>,
    /// The failure token recorded by the callback adapter while this task ran.
    cause: Option<u32>,
}

/// The outcome of a finished registration.
enum Outcome {
    Ok,
    Failed { address: u64, cause: Option<u32> },
    Panicked(String),
}

struct TaskWaker {
    id: u32,
    ready: Arc<Mutex<Vec<u32>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.ready.lock().push(self.id);
    }
}

/// Parked tasks of one JavaScript thread, and the queue their wakers fill.
struct Executor {
    tasks: RefCell<HashMap<u32, Task>>,
    ready: Arc<Mutex<Vec<u32>>>,
    next_id: Cell<u32>,
}

impl Executor {
    fn new() -> Self {
        Executor {
            tasks: RefCell::new(HashMap::new()),
            ready: Arc::new(Mutex::new(Vec::new())),
            next_id: Cell::new(1),
        }
    }

    fn allocate_id(&self) -> u32 {
        let id = self.next_id.get();
        self.next_id.set(id.checked_add(1).unwrap_or(1));
        id
    }

    /// Polls `task` once; `Some` when it finished. The task is never borrowed from the map while
    /// it runs, so a callback may start other registrations.
    fn poll(&self, id: u32, task: &mut Task) -> Option<Outcome> {
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            ready: self.ready.clone(),
        }));
        let mut context = Context::from_waker(&waker);
        let previous_cause = POLL_CAUSE.with(|cause| cause.replace(None));
        let polled = guard(|| Ok(task.future.as_mut().poll(&mut context)));
        if let Some(cause) = POLL_CAUSE.with(|cause| cause.replace(previous_cause)) {
            task.cause = Some(cause);
        }
        match polled {
            Ok(Poll::Pending) => None,
            Ok(Poll::Ready(Ok(()))) => Some(Outcome::Ok),
            Ok(Poll::Ready(Err(address))) => Some(Outcome::Failed {
                address,
                cause: task.cause,
            }),
            Err(err) => Some(Outcome::Panicked(err.reason)),
        }
    }

    /// Polls every woken task until none is ready, reporting finished ones.
    fn drain(&self) {
        loop {
            let ready: Vec<u32> = std::mem::take(&mut *self.ready.lock());
            if ready.is_empty() {
                return;
            }
            for id in ready {
                let Some(mut task) = self.tasks.borrow_mut().remove(&id) else {
                    continue;
                };
                match self.poll(id, &mut task) {
                    None => {
                        self.tasks.borrow_mut().insert(id, task);
                    }
                    Some(outcome) => report(id, &task.js, outcome),
                }
            }
        }
    }
}

/// Tells the TypeScript layer that task `id` finished.
fn report(id: u32, js: &JsCallback, outcome: Outcome) {
    let Some(env) = current_env() else { return };
    let Ok(on_settled) = js.on_settled.borrow_back(&env) else {
        return;
    };
    let args = match outcome {
        Outcome::Ok => (id, 0, 0, 0, String::new()),
        Outcome::Failed { address, cause } => (id, 1, address, cause.unwrap_or(0), String::new()),
        Outcome::Panicked(message) => (id, 2, 0, 0, message),
    };
    // An exception thrown by the notifier stays pending in JavaScript and surfaces there.
    let _ = on_settled.call(FnArgs::from(args));
}

fn failure_error(address: u64, cause: Option<u32>) -> crate::errors::JsError {
    let mut fields = vec![("address", hex_field(address))];
    if let Some(token) = cause {
        fields.push(("causeToken", token.to_string()));
    }
    coded_with(
        "ERR_REGISTRATION_FAILED",
        format!("failed to register guest memory at {address:#x}"),
        &fields,
    )
}

/// Settles a pending JavaScript registration started by the callback wrapper.
#[napi]
pub fn settle_registration_callback(env: Env, token: u32, failed: bool) {
    with_env(&env, || {
        if let Some(sender) = PENDING_CALLBACKS.with(|pending| pending.borrow_mut().remove(&token))
        {
            // The receiver may be gone (its task was dropped); nothing waits then.
            let _ = sender.send(failed);
        }
        EXECUTOR.with(Executor::drain);
    });
}

/// `MemoryRegistrar` over a JavaScript callback.
#[napi]
pub struct NativeRegistrar {
    inner: RegistrarRc,
    js: Rc<JsCallback>,
}

#[napi]
impl NativeRegistrar {
    /// `MemoryRegistrar::new_async(layout, registration_offset, callback)`.
    // The notifier's argument tuple is spelled out (not aliased) so that napi-rs can write its
    // JavaScript signature into the generated typings.
    #[allow(clippy::type_complexity)]
    #[napi(constructor)]
    pub fn new(
        layout: &NativeLayout,
        registration_offset: U64,
        callback: Function<FnArgs<(u64, u64)>, f64>,
        on_settled: Function<FnArgs<(u32, u32, u64, u32, String)>, ()>,
    ) -> Result<Self, JsError> {
        let offset = registration_offset.0;
        let js = Rc::new(JsCallback {
            callback: callback
                .create_ref()
                .map_err(|err| coded("ERR_PANIC", err.reason))?,
            on_settled: on_settled
                .create_ref()
                .map_err(|err| coded("ERR_PANIC", err.reason))?,
            in_callback: Cell::new(false),
        });
        let layout = layout.layout().clone();
        guard(|| {
            Ok(NativeRegistrar {
                inner: Rc::new(MemoryRegistrar::new_async(
                    &layout,
                    offset,
                    SharedCallback(js.clone()),
                )),
                js,
            })
        })
    }

    /// Registers `[address, address + len)`: `null` when finished now, else a task id whose
    /// outcome `onSettled` reports later. Throws `ERR_REGISTRATION_FAILED` (with `address` and
    /// the cause token), `ERR_REGISTRAR_REENTRY`, or a `RangeError` where the core panics.
    #[napi]
    pub fn register(&self, env: Env, address: U64, len: U64) -> Result<Option<u32>, JsError> {
        let address = address.0;
        let len = len.0;
        // The lock-free fast path needs no task, no environment and no executor.
        if self.inner.is_registered_range(address, len) {
            return Ok(None);
        }
        if self.js.in_callback.get() {
            return Err(coded(
                "ERR_REGISTRAR_REENTRY",
                "register was called from inside the registration callback",
            ));
        }
        with_env(&env, || {
            EXECUTOR.with(|executor| {
                let registrar = self.inner.clone();
                let mut task = Task {
                    future: Box::pin(async move { registrar.register_async(address, len).await }),
                    js: self.js.clone(),
                    cause: None,
                };
                let id = executor.allocate_id();
                let outcome = executor.poll(id, &mut task);
                let result = match outcome {
                    None => {
                        executor.tasks.borrow_mut().insert(id, task);
                        Ok(Some(id))
                    }
                    Some(Outcome::Ok) => Ok(None),
                    Some(Outcome::Failed { address, cause }) => Err(failure_error(address, cause)),
                    Some(Outcome::Panicked(message)) => Err(crate::errors::invalid_arg(message)),
                };
                executor.drain();
                result
            })
        })
    }

    /// `{chunksRegistered, chunkCount, registrationOffset}`.
    #[napi]
    pub fn inspect(&self) -> RegistrarInspect {
        RegistrarInspect {
            chunks_registered: self.inner.chunks_registered() as f64,
            chunk_count: self.inner.chunk_count() as f64,
            registration_offset: self.inner.registration_offset(),
        }
    }
}

/// The registrar's inspect fields.
#[napi(object, object_from_js = false)]
pub struct RegistrarInspect {
    pub chunks_registered: f64,
    pub chunk_count: f64,
    pub registration_offset: u64,
}
