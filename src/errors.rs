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

/// An object used after `close()`.
pub fn closed(what: &str) -> JsError {
    coded("ERR_CLOSED", format!("{what} is closed"))
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

/// A Rust name (`InvalidInput`, `OutOfRange`) in SCREAMING_SNAKE_CASE (`INVALID_INPUT`); a digit
/// stays with its word.
pub fn screaming_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.char_indices() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// An `io::Error`: with an errno, `ERR_OS_ERROR` carrying `errno` (the TypeScript layer names it,
/// `EINVAL` …, as Node does) and the failing `syscall`; without one, `ERR_` plus its kind
/// (`ERR_INVALID_INPUT` becomes a `RangeError`).
pub fn io_error(err: &std::io::Error, syscall: &str) -> JsError {
    match err.raw_os_error() {
        Some(errno) => coded_with(
            "ERR_OS_ERROR",
            format!("{syscall}: {err}"),
            &[
                ("errno", errno.to_string()),
                ("syscall", json_string(syscall)),
            ],
        ),
        None => coded(
            &format!("ERR_{}", screaming_snake(&format!("{:?}", err.kind()))),
            err.to_string(),
        ),
    }
}

/// A string as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A recovered fault as the JSON object of `FaultInfo` (`{signal, siCode, trapno}`).
pub fn fault_field(fault: &trycopy::FaultInfo) -> String {
    let signal = match fault.signal {
        libc::SIGSEGV => "SIGSEGV".to_owned(),
        libc::SIGBUS => "SIGBUS".to_owned(),
        libc::SIGILL => "SIGILL".to_owned(),
        other => format!("signal {other}"),
    };
    format!(
        "{{\"signal\":{},\"siCode\":{},\"trapno\":{}}}",
        json_string(&signal),
        fault.si_code,
        fault.trapno
    )
}

/// Carries a coded error through an API whose error type is napi-rs's own (argument conversion,
/// async tasks): the message becomes `CODE{fields}\u{1f}message`, which the TypeScript layer
/// splits again.
pub fn into_status_error(err: JsError) -> napi::Error {
    napi::Error::new(
        napi::Status::GenericFailure,
        format!("{}\u{1f}{}", err.status, err.reason),
    )
}
