//! Binding of `underhill_mem`'s `MemoryRegistrar` to a JavaScript registration callback.
//!
//! All chunk coordination is the core's asynchronous path (`register_async`), and what the
//! callback's answer means is `js_api::registration`'s: this file calls the callback, starts
//! registrations, and reports the ones that finish later to the TypeScript layer
//! (`onSettled(taskId, error)`). Everything runs on the JavaScript thread; nothing blocks.

use crate::args::U64;
use crate::errors::guard;
use crate::errors::internal;
use crate::errors::message;
use crate::errors::throw;
use crate::errors::OrThrow;
use crate::js_thread::current_env;
use crate::js_thread::with_env;
use crate::layout::NativeLayout;
use js_api::hooks::JsHookFailure;
use js_api::json::to_json;
use js_api::registration::Registrations;
use js_api::views::RegistrarView;
use js_api::JsError;
use memory_range::MemoryRange;
use napi::bindgen_prelude::FnArgs;
use napi::bindgen_prelude::Function;
use napi::bindgen_prelude::FunctionRef;
use napi::Env;
use napi_derive::napi;
use std::cell::Cell;
use std::rc::Rc;
use underhill_mem::MemoryRegistrar;
use underhill_mem::RegisterMemoryAsync;
use underhill_mem::Registration;

thread_local! {
    /// The registrations of this JavaScript thread, reported to their registrar's notifier.
    static REGISTRATIONS: Registrations<Rc<JsCallback>> = Registrations::default();
}

fn registrations() -> Registrations<Rc<JsCallback>> {
    REGISTRATIONS.with(Clone::clone)
}

/// The JavaScript side of one registrar.
struct JsCallback {
    /// `(start, end) => answer` (JSON).
    callback: FunctionRef<FnArgs<(u64, u64)>, String>,
    /// `(taskId, error | null)`: a parked registration finished.
    on_settled: FunctionRef<FnArgs<(u32, Option<String>)>, ()>,
    /// Set while the callback runs, to refuse re-entry.
    in_callback: Cell<bool>,
}

/// The registrar's callback (shared with the binding, which also needs the notifier).
struct SharedCallback(Rc<JsCallback>);

impl RegisterMemoryAsync for SharedCallback {
    type Error = JsHookFailure;

    fn start_registration(&self, range: MemoryRange) -> Registration<JsHookFailure> {
        let answer = current_env().and_then(|env| {
            let callback = self.0.callback.borrow_back(&env).ok()?;
            self.0.in_callback.set(true);
            let answer = callback.call(FnArgs::from((range.start(), range.end())));
            self.0.in_callback.set(false);
            answer.ok()
        });
        registrations().registration(answer)
    }
}

/// Finishes the woken registrations of this thread and reports them.
fn run_ready() {
    registrations().run_ready(|id, js, error| {
        let Some(env) = current_env() else { return };
        if let Ok(on_settled) = js.on_settled.borrow_back(&env) {
            // An exception of the notifier stays pending in JavaScript and surfaces there.
            let _ = on_settled.call(FnArgs::from((id, error.as_ref().map(message))));
        }
    });
}

/// Settles a pending JavaScript registration started by the callback wrapper.
#[napi]
pub fn settle_registration_callback(env: Env, token: u32, failed: bool) -> napi::Result<()> {
    guard(|| {
        with_env(&env, || {
            registrations().settle(token, failed);
            run_ready();
        });
        Ok(())
    })
}

/// `MemoryRegistrar` over a JavaScript callback.
#[napi]
pub struct NativeRegistrar {
    inner: Rc<MemoryRegistrar<SharedCallback>>,
    js: Rc<JsCallback>,
}

#[napi]
impl NativeRegistrar {
    /// `MemoryRegistrar::new_async(layout, registration_offset, callback)`.
    #[allow(
        clippy::type_complexity,
        reason = "napi-rs writes the notifier's signature into the typings"
    )]
    #[napi(constructor)]
    pub fn new(
        layout: &NativeLayout,
        registration_offset: U64,
        callback: Function<FnArgs<(u64, u64)>, String>,
        on_settled: Function<FnArgs<(u32, Option<String>)>, ()>,
    ) -> napi::Result<Self> {
        let js = Rc::new(JsCallback {
            callback: callback.create_ref().map_err(internal)?,
            on_settled: on_settled.create_ref().map_err(internal)?,
            in_callback: Cell::new(false),
        });
        let layout = layout.layout().clone();
        let shared = SharedCallback(js.clone());
        guard(|| {
            let inner = MemoryRegistrar::new_async(&layout, registration_offset.0, shared);
            Ok(NativeRegistrar {
                inner: Rc::new(inner),
                js,
            })
        })
    }

    /// Registers `[address, address + len)`: `null` when finished now, else a task id that
    /// `onSettled` reports later.
    #[napi]
    pub fn register(&self, env: Env, address: U64, len: U64) -> napi::Result<Option<u32>> {
        // The lock-free fast path needs no task and no environment.
        if self.inner.is_registered_range(address.0, len.0) {
            return Ok(None);
        }
        if self.js.in_callback.get() {
            return Err(throw(JsError::registrar_reentry()));
        }
        guard(|| {
            with_env(&env, || {
                let registrar = self.inner.clone();
                let registration = async move { registrar.register_async(address.0, len.0).await };
                let started = registrations().start(registration, self.js.clone());
                run_ready();
                started.or_throw()
            })
        })
    }

    /// `{chunksRegistered, chunkCount, registrationOffset}` (JSON).
    #[napi]
    pub fn inspect(&self) -> String {
        to_json(&RegistrarView::from(self.inner.as_ref()))
    }
}
