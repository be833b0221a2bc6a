//! Progress callbacks from JavaScript (`onProgress(done, total)`, bytes) as the core's
//! `Fn(u64, u64) + Send + Sync`: each report is a fire-and-forget call of a weak thread-safe
//! function, so it may come from any thread, never blocks the reporter, and never keeps the
//! event loop alive (reports queued when the operation's Promise settles may still arrive
//! after it).

use crate::errors::internal;
use napi::bindgen_prelude::FnArgs;
use napi::bindgen_prelude::Function;
use napi::threadsafe_function::ThreadsafeCallContext;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use std::sync::Arc;

/// Calls `function(done, total)` on its JavaScript thread, fire-and-forget.
pub fn progress_callback(
    function: Function<'_, FnArgs<(u64, u64)>, ()>,
) -> napi::Result<Arc<dyn Fn(u64, u64) + Send + Sync>> {
    let tsfn = function
        .build_threadsafe_function::<(u64, u64)>()
        .callee_handled::<false>()
        .weak::<true>()
        .build_callback(|context: ThreadsafeCallContext<(u64, u64)>| {
            Ok(FnArgs::from(context.value))
        })
        .map_err(internal)?;
    let tsfn = Arc::new(tsfn);
    Ok(Arc::new(move |done, total| {
        let _ = tsfn.call((done, total), ThreadsafeFunctionCallMode::NonBlocking);
    }))
}
