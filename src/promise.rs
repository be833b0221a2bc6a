//! JavaScript Promises for work that finishes on other threads: a deferred Promise settled by
//! the one executor of `js_api::executor` (where a task is polled is its `Polling`); the result
//! is converted into a JavaScript value on the JavaScript thread.

use crate::errors::internal;
use crate::errors::throw;
use js_api::executor::spawn;
use js_api::executor::Polling;
use js_api::JsError;
use napi::bindgen_prelude::Object;
use napi::bindgen_prelude::ToNapiValue;
use napi::Env;
use std::future::Future;

/// A Promise for `future`; `convert` turns its value into a JavaScript value.
pub fn promise<'env, T, R>(
    env: &'env Env,
    polling: Polling,
    future: impl Future<Output = Result<T, JsError>> + Send + 'static,
    convert: impl FnOnce(Env, T) -> napi::Result<R> + Send + 'static,
) -> napi::Result<Object<'env>>
where
    T: Send + 'static,
    R: ToNapiValue + 'static,
{
    let (deferred, promise) = env.create_deferred().map_err(internal)?;
    spawn(future, polling, move |outcome| match outcome {
        Ok(value) => deferred.resolve(move |env| convert(env, value)),
        Err(error) => deferred.reject(throw(error)),
    })
    .map_err(|error| throw(JsError::internal(error.to_string())))?;
    Ok(promise)
}
