//! The napi-rs binding of membacking: small adapters between JavaScript and the Rust core.
//!
//! Each file adapts one area of the core (`crates/`): it converts arguments (`args`), calls the
//! core, hands results and errors to `js_api` (the error table, the JSON views, the enums'
//! JavaScript values, the argument rules), and turns futures into Promises (`promise`) or
//! carries calls to the right thread (`js_thread`, `js_hooks`). Rules live in the crates, where
//! Rust tests cover them; `docs/design.md` ("The binding") describes the split. The public
//! JavaScript API is the TypeScript layer in `ts/`, which wraps these raw exports.

// napi-rs registers exports only outside `cfg(test)`; a test build of this cdylib (as
// `cargo clippy --all-targets` makes) would otherwise see every export as dead code.
#![cfg_attr(test, allow(dead_code))]

mod args;
mod batch;
#[cfg(feature = "bench")]
mod bench;
mod errors;
mod external;
mod guest_memory;
mod handles;
mod js_hooks;
mod js_thread;
mod layout;
mod manager;
mod migration;
mod partition;
mod planner;
mod progress;
mod promise;
mod range;
mod registrar;
mod snapshot;
mod sparse_mapping;
