//! Progress callbacks from JavaScript (`onProgress(done, total)`, bytes) as the core's
//! `Fn(u64, u64) + Send + Sync`: each report is a fire-and-forget call of a weak thread-safe
//! function, so it may come from any thread, never blocks the reporter, and never keeps the
//! event loop alive (reports queued when the operation's Promise settles may still arrive
//! after it). Prefetch reports (`onProgress(done, total, failure)`) go the same way as JSON.

use crate::errors::internal;
use js_api::json::to_json;
use js_api::views::PrefetchReportView;
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

/// Calls `function(report)` on its JavaScript thread with the JSON of each prefetch report
/// (`js_api::views::PrefetchReportView`), fire-and-forget, from the region manager's thread or
/// the partition's prefetch threads.
pub fn prefetch_progress(
    function: Function<'_, String, ()>,
) -> napi::Result<membacking::PrefetchProgress> {
    let tsfn = function
        .build_threadsafe_function::<String>()
        .callee_handled::<false>()
        .weak::<true>()
        .build_callback(|context: ThreadsafeCallContext<String>| Ok(context.value))
        .map_err(internal)?;
    let tsfn = Arc::new(tsfn);
    Ok(Arc::new(move |report: &membacking::PrefetchReport| {
        let json = to_json(&PrefetchReportView::from(report));
        let _ = tsfn.call(json, ThreadsafeFunctionCallMode::NonBlocking);
    }))
}
