//! Which JavaScript environment is running native code on this thread right now.
//!
//! Callbacks into JavaScript (registration callbacks, page-fault hooks) happen from inside core
//! code that has no `Env` parameter. Every entry point that may reach such a callback publishes
//! its `Env` here for the duration of the call; an adapter calls a JavaScript function only when
//! it finds the environment of the thread that owns the function.

use napi::Env;
use std::cell::Cell;
use std::thread::ThreadId;

thread_local! {
    static CURRENT_ENV: Cell<Option<napi::sys::napi_env>> = const { Cell::new(None) };
}

/// Runs `f` with `env` published as this thread's current environment.
pub fn with_env<T>(env: &Env, f: impl FnOnce() -> T) -> T {
    let previous = CURRENT_ENV.with(|current| current.replace(Some(env.raw())));
    let result = f();
    CURRENT_ENV.with(|current| current.set(previous));
    result
}

/// The environment published on this thread, if any.
pub fn current_env() -> Option<Env> {
    CURRENT_ENV.with(Cell::get).map(Env::from_raw)
}

/// The JavaScript thread that created a callback, so that it is only ever called there.
#[derive(Clone, Copy, Debug)]
pub struct Owner(ThreadId);

impl Owner {
    /// The current thread.
    pub fn current() -> Self {
        Owner(std::thread::current().id())
    }

    /// Whether the current thread is the owner.
    pub fn is_current(&self) -> bool {
        std::thread::current().id() == self.0
    }

    /// The owner's environment, when native code of that thread is running right now.
    pub fn env(&self) -> Option<Env> {
        if self.is_current() {
            current_env()
        } else {
            None
        }
    }
}
