//! Errors crossing into JavaScript, and the guard that keeps Rust panics out of Node.
//!
//! Native functions throw plain `Error`s whose `code` carries the stable error code, optionally
//! followed by one space and a JSON object of extra fields (`ERR_REGISTRATION_FAILED
//! {"address":"0x20000"}`). The TypeScript layer (`ts/errors.ts`) turns them into the public
//! error classes (`RangeError`/`TypeError` for argument errors, `MembackingError` subclasses
//! otherwise) and moves the extra fields onto the error object. Keeping the transport a string
//! means no native function needs a JS environment just to fail.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

/// A native function's error as it is thrown to the TypeScript layer.
pub type JsError = napi::Error<String>;

/// Builds an error with `code` and `message` and no extra fields.
pub fn coded(code: &str, message: impl Into<String>) -> JsError {
    napi::Error::new(code.to_owned(), message.into())
}

/// Builds an error with extra fields, given as `(name, JSON value)` pairs. Values are written
/// verbatim, so strings must already be JSON-quoted; u64 values go as `"0x…"` strings.
pub fn coded_with(code: &str, message: impl Into<String>, fields: &[(&str, String)]) -> JsError {
    let body: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("\"{name}\":{value}"))
        .collect();
    napi::Error::new(format!("{code} {{{}}}", body.join(",")), message.into())
}

/// A u64 as a JSON string in the `0x…` form the TypeScript layer turns back into a bigint.
pub fn hex_field(value: u64) -> String {
    format!("\"{value:#x}\"")
}

/// An argument that is well typed but invalid (including every input the core would panic on).
pub fn invalid_arg(message: impl Into<String>) -> JsError {
    coded("ERR_INVALID_ARG_VALUE", message)
}

thread_local! {
    /// Set while a guarded call runs, so that the panic hook stays silent for panics that become
    /// JS errors (they are reported to the caller, not printed).
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

/// Runs `f`, turning a panic into a `RangeError`-coded error carrying the panic text.
///
/// Every core call that a caller's input can make panic goes through this: per the spec, a core
/// panic is a bad argument value from JavaScript's point of view.
pub fn guard<T>(f: impl FnOnce() -> Result<T, JsError>) -> Result<T, JsError> {
    install_quiet_panic_hook();
    GUARDED.with(|depth| depth.set(depth.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|depth| depth.set(depth.get() - 1));
    match result {
        Ok(result) => result,
        Err(payload) => Err(invalid_arg(panic_text(payload.as_ref()))),
    }
}
