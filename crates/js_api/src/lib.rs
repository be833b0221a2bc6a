//! The JavaScript API's model, without Node: everything the napi binding (`src/`) would
//! otherwise have to decide, here where Rust tests cover it.
//!
//! - [`errors`]: the one table from every Rust error to its JavaScript class, code, message,
//!   fields and cause ([`ToJsError`]), and the binding's own errors ([`JsError`]).
//! - [`enums`]: the enums shared with TypeScript, listed once against their Rust types;
//!   [`typescript`] writes `ts/generated/` from them and from the error codes.
//! - [`json`] and [`views`]: structured results as JSON, with u64 values as tagged bigints;
//!   [`snapshots`]: those of dirty tracking, snapshots and restores; [`migrations`]: those of
//!   live migration, and the errors a JavaScript stream or `pause` feeds into one;
//!   [`layout_json`]: a layout read back from its `toJSON` form.
//! - [`hooks`]: the typed answers of JavaScript callbacks (guest-memory hooks, the registrar);
//!   [`registration`]: what a registration callback's answer means for the registrar.
//! - [`args`]: the rules arguments from JavaScript must meet; [`ranges`]: how ranges and range
//!   algorithm items cross; [`range_panics`]: what a range algorithm's panic says about the
//!   caller's input.
//! - `kvm` (x86-64): a vCPU's options, register updates and run outcomes.
//! - [`executor`]: the one executor behind the API's Promises, and the registrar's parked
//!   tasks.
//! - [`handles`]: transfer handles for `worker_threads`; [`slots`]: the numbered slots in which
//!   the guest-memory fast paths find their memory.
//! - [`external_memory`]: what native objects tell V8 they hold, so it collects them in time.
//!
//! The binding converts JavaScript values, calls the core, and hands results and errors to
//! these functions; `docs/design.md` ("The binding") describes the split.

#![forbid(unsafe_code)]

pub mod args;
pub mod enums;
pub mod errors;
pub mod executor;
pub mod external_memory;
pub mod handles;
pub mod hooks;
pub mod json;
#[cfg(target_arch = "x86_64")]
pub mod kvm;
pub mod layout_json;
pub mod migrations;
pub mod range_panics;
pub mod ranges;
pub mod registration;
pub mod slots;
pub mod snapshots;
pub mod typescript;
pub mod views;

pub use errors::JsError;
pub use errors::ToJsError;
