//! JavaScript Promises for work that finishes on other threads: a deferred Promise settled by
//! the one executor of `js_api::executor` (where a task is polled is its `Polling`); the result
//! is converted into a JavaScript value on the JavaScript thread.

use crate::errors::internal;
use crate::errors::throw;
use js_api::executor::spawn;
use js_api::executor::Polling;
use js_api::json::json_result;
use js_api::JsError;
use js_api::ToJsError;
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

/// A Promise for a core future, resolving to the JSON `view` makes of its value (errors through
/// the table of `js_api::errors`).
pub fn json_promise<'env, T: Send + 'static, E: ToJsError + 'static>(
    env: &'env Env,
    polling: Polling,
    future: impl Future<Output = Result<T, E>> + Send + 'static,
    view: impl FnOnce(&T) -> String + Send + 'static,
) -> napi::Result<Object<'env>> {
    promise(env, polling, json_result(future, view), |_env, json| {
        Ok(json)
    })
}
