//! JavaScript Promises for work that finishes on other threads.
//!
//! The memory manager's operations are Rust futures that complete when the manager threads
//! answer. `promise()` runs such a future on a small executor of its own (two threads, never the
//! JavaScript thread or the libuv pool) and settles a deferred Promise when it completes; the
//! conversion of the result into a JavaScript value then runs on the JavaScript thread. A
//! rejected Promise carries the coded error, which the TypeScript layer translates.

use crate::errors::{into_status_error, JsError};
use futures::executor::ThreadPool;
use napi::bindgen_prelude::{Object, ToNapiValue};
use napi::Env;
use std::future::Future;
use std::sync::OnceLock;

fn executor() -> Result<&'static ThreadPool, JsError> {
    static POOL: OnceLock<Result<ThreadPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        ThreadPool::builder()
            .pool_size(2)
            .name_prefix("membacking-async-")
            .create()
            .map_err(|err| err.to_string())
    })
    .as_ref()
    .map_err(|err| {
        crate::errors::coded("ERR_OS_ERROR", format!("cannot start the executor: {err}"))
    })
}

/// A Promise for `future`; `convert` turns its value into a JavaScript value on the JS thread.
pub fn promise<'env, T, R>(
    env: &'env Env,
    future: impl Future<Output = Result<T, JsError>> + Send + 'static,
    convert: impl FnOnce(Env, T) -> napi::Result<R> + Send + 'static,
) -> Result<Object<'env>, JsError>
where
    T: Send + 'static,
    R: ToNapiValue + 'static,
{
    let (deferred, promise) = env
        .create_deferred()
        .map_err(|err| crate::errors::coded("ERR_PANIC", err.reason))?;
    executor()?.spawn_ok(async move {
        match future.await {
            Ok(value) => deferred.resolve(move |env| convert(env, value)),
            Err(err) => deferred.reject(into_status_error(err)),
        }
    });
    Ok(promise)
}
