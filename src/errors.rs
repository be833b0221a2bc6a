//! How errors cross into JavaScript, and the guard that keeps Rust panics out of Node.
//!
//! Every error a native function throws is a [`JsError`] of the table in `js_api::errors`,
//! carried as JSON after a `\u{1f}` in the message of a plain `Error`. The TypeScript layer
//! (`ts/errors.ts`) builds the public error from it; an `Error` without the marker comes from
//! napi-rs's own argument conversion, which means a wrong JavaScript type.

use js_api::json::to_json;
use js_api::JsError;
use js_api::ToJsError;
use std::cell::Cell;
use std::panic::catch_unwind;
use std::panic::AssertUnwindSafe;
use std::sync::Once;

/// The message of a thrown error: the marker, then the JSON of the error.
pub fn message(error: &JsError) -> String {
    format!("\u{1f}{}", to_json(error))
}

/// `error` as what a native function throws.
pub fn throw(error: JsError) -> napi::Error {
    napi::Error::new(napi::Status::GenericFailure, message(&error))
}

/// Throws the table's row of a failed result.
pub trait OrThrow<T> {
    /// The value, or the error as thrown.
    fn or_throw(self) -> napi::Result<T>;
}

impl<T, E: ToJsError> OrThrow<T> for Result<T, E> {
    fn or_throw(self) -> napi::Result<T> {
        self.map_err(|error| throw(error.to_js_error()))
    }
}

/// A napi-rs failure of the binding itself (creating a value or a reference): a bug.
pub fn internal(error: napi::Error) -> napi::Error {
    throw(JsError::internal(error.reason))
}

thread_local! {
    /// Set while a guarded call runs, so that the panic hook stays silent for panics that become
    /// JavaScript errors (they are reported to the caller, not printed).
    static GUARDED: Cell<u32> = const { Cell::new(0) };
}

fn install_quiet_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let guarded = GUARDED.try_with(|depth| depth.get() > 0).unwrap_or(false);
            if !guarded || std::env::var_os("MEMBACKING_PRINT_PANICS").is_some() {
                default_hook(info);
            }
        }));
    });
}

/// The text of a panic payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the core panicked".to_owned())
}

/// Runs `f`; a panic becomes a `RangeError` whose message is the panic text (where the Rust
/// core panics, JavaScript gets a bad argument value).
pub fn guard<T>(f: impl FnOnce() -> napi::Result<T>) -> napi::Result<T> {
    guard_explained(f, |_| None)
}

/// [`guard`], with the `detail` that `explain` gives for the panic text (what the caller's
/// input broke and what to do); the message stays the panic text.
pub fn guard_explained<T>(
    f: impl FnOnce() -> napi::Result<T>,
    explain: impl FnOnce(&str) -> Option<String>,
) -> napi::Result<T> {
    install_quiet_panic_hook();
    GUARDED.with(|depth| depth.set(depth.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|depth| depth.set(depth.get() - 1));
    result.unwrap_or_else(|payload| {
        let text = panic_text(payload.as_ref());
        let mut error = JsError::arg_value(text.as_str());
        error.fields.detail = explain(&text);
        Err(throw(error))
    })
}
